//! The agent's counters and Prometheus metrics: frame counters written by the capture
//! threads, and the registry `/metrics` renders (decisions by code and mode, latency, queue,
//! clock offset, uplink state, store write failures).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Frame and decode counters, written by the capture threads.
#[derive(Debug, Default)]
pub struct CaptureCounters {
    pub frames_seen: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub frames_decoded: AtomicU64,
}

/// The agent's Prometheus metrics.
pub struct AgentMetrics {
    registry: Registry,
    pub latency: Histogram,
    pub decisions: Family<Vec<(String, String)>, Counter>,
    pub outbox_depth: Gauge,
    pub oldest_unsynced_secs: Gauge,
    pub clock_offset_ms: Gauge,
    pub frames_seen: Gauge,
    pub frames_decoded: Gauge,
    pub store_failures: Counter,
    pub uplink_state: Family<Vec<(String, String)>, Gauge>,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentMetrics")
    }
}

impl AgentMetrics {
    pub fn new() -> AgentMetrics {
        let mut registry = Registry::with_prefix("stile_agent");
        let latency = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "scan_to_decision_seconds",
            "From a decoded code to the decision shown",
            latency.clone(),
        );
        let decisions = Family::<Vec<(String, String)>, Counter>::default();
        registry.register("decisions", "Decisions by code and mode", decisions.clone());
        let outbox_depth = Gauge::default();
        registry.register(
            "outbox_depth",
            "Offline acceptances waiting for upload",
            outbox_depth.clone(),
        );
        let oldest_unsynced_secs = Gauge::default();
        registry.register(
            "oldest_unsynced_seconds",
            "Age of the oldest offline acceptance not uploaded yet",
            oldest_unsynced_secs.clone(),
        );
        let clock_offset_ms = Gauge::default();
        registry.register(
            "clock_offset_milliseconds",
            "Central clock minus this device's clock",
            clock_offset_ms.clone(),
        );
        let frames_seen = Gauge::default();
        registry.register(
            "frames_seen",
            "Frames read from the source",
            frames_seen.clone(),
        );
        let frames_decoded = Gauge::default();
        registry.register(
            "frames_decoded",
            "Frames in which a code was decoded",
            frames_decoded.clone(),
        );
        let store_failures = Counter::default();
        registry.register(
            "store_write_failures",
            "Decisions the store could not record",
            store_failures.clone(),
        );
        let uplink_state = Family::<Vec<(String, String)>, Gauge>::default();
        registry.register(
            "uplink_state",
            "1 for the uplink's current state (online, suspect, offline, draining)",
            uplink_state.clone(),
        );
        AgentMetrics {
            registry,
            store_failures,
            uplink_state,
            latency,
            decisions,
            outbox_depth,
            oldest_unsynced_secs,
            clock_offset_ms,
            frames_seen,
            frames_decoded,
        }
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics::new()
    }
}

impl AgentMetrics {
    /// The registry as Prometheus text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = encode(&mut text, &self.registry);
        text
    }
}
