//! Prometheus metrics of the central server, served on `GET /metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// The server's metrics, one registry per server instance (tests run several at once).
pub struct Metrics {
    registry: Registry,
    decisions: Family<Labels, Counter>,
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram>,
    login_failures: Counter,
    connections_refused: Counter,
    transaction_retries: Counter,
    scan_paths: Family<Labels, Counter>,
    batch_sizes: Histogram,
    merchant_scan_success: Counter,
    merchant_scan_partial: Counter,
    merchant_scan_reject: Counter,
    outbox_pending: Gauge,
    outbox_dead: Gauge,
    venue_inside: Family<Labels, Gauge>,
    venue_capacity: Family<Labels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        // No prefix: the merchant console card names its counters `merchant_scan_*`; the
        // rest carry `stile_` in their names.
        let mut registry = Registry::default();
        let decisions = Family::<Labels, Counter>::default();
        registry.register(
            "stile_scan_decisions",
            "Scan decisions of POST /venue/scan, by decision code",
            decisions.clone(),
        );
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "stile_http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        let latency = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "stile_http_request_duration_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        let login_failures = Counter::default();
        registry.register(
            "stile_login_failures",
            "Failed operator logins",
            login_failures.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "stile_http_connections_refused",
            "Connections answered 503 and closed because the connection limit was reached",
            connections_refused.clone(),
        );
        let scan_paths = Family::<Labels, Counter>::default();
        registry.register(
            "stile_scan_paths",
            "Scans decided by the group-commit path (a plain SUCCESS, many scans to one statement and one commit) or the transaction path",
            scan_paths.clone(),
        );
        let batch_sizes = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        registry.register(
            "stile_group_commit_batch_size",
            "Scans per group-commit redemption statement",
            batch_sizes.clone(),
        );
        let transaction_retries = Counter::default();
        registry.register(
            "stile_transaction_retries",
            "Redemption transactions run again after a serialization failure or deadlock",
            transaction_retries.clone(),
        );
        let merchant_scan = |registry: &mut Registry, result: &str| {
            let counter = Counter::default();
            registry.register(
                format!("merchant_scan_{result}"),
                format!("Merchant console scans answered {result}"),
                counter.clone(),
            );
            counter
        };
        let merchant_scan_success = merchant_scan(&mut registry, "success");
        let merchant_scan_partial = merchant_scan(&mut registry, "partial");
        let merchant_scan_reject = merchant_scan(&mut registry, "reject");
        let outbox_pending = Gauge::default();
        registry.register(
            "stile_outbox_pending",
            "Webhook notifications waiting for delivery",
            outbox_pending.clone(),
        );
        let outbox_dead = Gauge::default();
        registry.register(
            "stile_outbox_dead",
            "Webhook notifications parked as dead after their last attempt",
            outbox_dead.clone(),
        );
        let venue_inside = Family::<Labels, Gauge>::default();
        registry.register(
            "stile_venue_occupancy",
            "Tickets inside a venue now, by merchant and venue code",
            venue_inside.clone(),
        );
        let venue_capacity = Family::<Labels, Gauge>::default();
        registry.register(
            "stile_venue_capacity",
            "A venue's capacity, for venues that have one",
            venue_capacity.clone(),
        );
        Metrics {
            registry,
            venue_inside,
            venue_capacity,
            merchant_scan_success,
            merchant_scan_partial,
            merchant_scan_reject,
            outbox_pending,
            outbox_dead,
            decisions,
            scan_paths,
            batch_sizes,
            requests,
            latency,
            login_failures,
            connections_refused,
            transaction_retries,
        }
    }

    pub fn record_decision(&self, code: &str) {
        self.decisions
            .get_or_create(&vec![("code".to_owned(), code.to_owned())])
            .inc();
    }

    pub fn record_request(&self, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&vec![
                ("route".to_owned(), route.to_owned()),
                ("status".to_owned(), status.to_string()),
            ])
            .inc();
        self.latency
            .get_or_create(&vec![("route".to_owned(), route.to_owned())])
            .observe(seconds);
    }

    pub fn record_connection_refused(&self) {
        self.connections_refused.inc();
    }

    pub fn record_login_failure(&self) {
        self.login_failures.inc();
    }

    pub fn record_merchant_scan(&self, result: stile_shared::api::MerchantScanResult) {
        use stile_shared::api::MerchantScanResult::*;
        match result {
            Success => self.merchant_scan_success.inc(),
            Partial => self.merchant_scan_partial.inc(),
            Reject => self.merchant_scan_reject.inc(),
        };
    }

    pub fn set_outbox(&self, pending: i64, dead: i64) {
        self.outbox_pending.set(pending);
        self.outbox_dead.set(dead);
    }

    /// Each venue's occupancy as `/metrics` is scraped.
    pub fn set_occupancy(&self, venues: &[crate::occupancy::VenueCount]) {
        for venue in venues {
            let labels = vec![
                ("merchant".to_owned(), venue.merchant_code.clone()),
                ("venue".to_owned(), venue.venue_code.clone()),
            ];
            self.venue_inside.get_or_create(&labels).set(venue.inside);
            if let Some(capacity) = venue.capacity {
                self.venue_capacity.get_or_create(&labels).set(capacity);
            }
        }
    }

    /// Which path decided a scan: `group_commit` or `transaction`.
    pub fn record_scan_path(&self, group_commit: bool) {
        let path = if group_commit {
            "group_commit"
        } else {
            "transaction"
        };
        self.scan_paths
            .get_or_create(&vec![("path".to_owned(), path.to_owned())])
            .inc();
    }

    /// The size of one group-commit batch.
    pub fn record_batch(&self, scans: usize) {
        self.batch_sizes.observe(scans as f64);
    }

    pub fn record_transaction_retry(&self) {
        self.transaction_retries.inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
