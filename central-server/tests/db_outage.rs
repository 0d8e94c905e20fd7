//! The database goes away while the server runs: cut off (every connection dropped, new
//! ones closed: a stopped or crashed database, a cut link), or the whole PostgreSQL frozen
//! with SIGSTOP (a host that hangs).
//! Every request is answered `SERVICE_UNAVAILABLE` 503 with `Retry-After` and the localized
//! message, `/readyz` says 503, nothing answers 500, and the server recovers by itself when
//! the database answers again. Scans the clients saw fail are retried with their scan_id
//! afterwards: no QR is redeemed twice.
//!
//! The outage lasts `STILE_OUTAGE_SECS` (default 3; `scripts/fault-db` runs 30). Latencies
//! and the recovery time are printed, not asserted; an answer that does not come within the
//! client's 5 s is a hang, and fails.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::{Duration, Instant};
use stile_testkit::proxy::Proxy;
use stile_testkit::{Cluster, ClusterOptions};

/// How long each outage lasts.
fn outage() -> Duration {
    let secs = std::env::var("STILE_OUTAGE_SECS")
        .ok()
        .and_then(|raw| raw.parse().ok())
        .unwrap_or(3);
    Duration::from_secs(secs)
}

/// Tickets of their own for the outage scans: one QR each, ENTRY once.
fn outage_tickets(count: usize) -> String {
    let tickets: Vec<Value> = (0..count)
        .map(|i| {
            serde_json::json!({"ticket_code": format!("TK-OUT-{i}"), "channel": "OTA", "status": "ACTIVATED",
                "entitlements": [{"function_code": "ENTRY", "name": "入园", "total_uses": 1}]})
        })
        .collect();
    serde_json::json!({"orders": [{"order_id": "ORD-OUT", "merchant": "M001",
        "passengers": [{"name": "离线", "tickets": tickets}]}]})
    .to_string()
}

const TICKETS: usize = 40;

/// The server's database, by way of `url`, on a fresh seeded database of `cluster`.
async fn seeded_on(cluster: &Cluster) -> String {
    let url = cluster
        .fresh_database(&central_server::db::MIGRATOR)
        .await
        .expect("database");
    let pool = central_server::db::connect(&url, 2).await.expect("connect");
    for file in [FIXTURES.to_owned(), outage_tickets(TICKETS)] {
        let file = central_server::seed::parse(&file).expect("seed parses");
        central_server::seed::apply(&pool, &file)
            .await
            .expect("seed loads");
    }
    pool.close().await;
    url
}

struct Outage {
    server: TestServer,
    operator: String,
    qrs: Vec<String>,
    client: reqwest::Client,
    /// (scan_id, QR index) of every scan sent while the database was away.
    sent: Vec<(uuid::Uuid, usize)>,
    slowest: Duration,
    answers: usize,
}

impl Outage {
    async fn start(database_url: &str) -> Outage {
        let server = TestServer::start_on(database_url, |_| {}).await;
        let operator = server.login("op-east").await;
        let mut qrs = Vec::new();
        for i in 0..TICKETS {
            qrs.push(
                server
                    .issue_qr(&format!("TK-OUT-{i}"), OTA_KEY)
                    .await
                    .qr_token,
            );
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        Outage {
            server,
            operator,
            qrs,
            client,
            sent: Vec::new(),
            slowest: Duration::ZERO,
            answers: 0,
        }
    }

    async fn scan(
        &self,
        qr: usize,
        scan_id: uuid::Uuid,
        lang: &str,
    ) -> (StatusCode, Value, Option<String>, Duration) {
        let started = Instant::now();
        let response = self
            .client
            .post(self.server.url("/venue/scan"))
            .bearer_auth(&self.operator)
            .header("accept-language", lang)
            .json(
                &serde_json::json!({"qr_token": self.qrs[qr], "function_code": "ENTRY",
                "venue_code": "GATE-EAST", "device_id": "dev-east-1", "scan_id": scan_id}),
            )
            .send()
            .await
            .expect("an answer within 5 s, not a hang");
        let elapsed = started.elapsed();
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body: Value = response.json().await.expect("a JSON body");
        (status, body, retry_after, elapsed)
    }

    /// Requests of every kind while the database is away, for `outage()`: each must be a
    /// 503 with the contract's body.
    async fn while_away(&mut self) {
        let started = Instant::now();
        let mut round = 0usize;
        while started.elapsed() < outage() {
            // The last QR is kept for the recovery probe.
            let qr = round % (TICKETS - 1);
            let scan_id = uuid::Uuid::new_v4();
            let lang = if round % 2 == 0 { "zh-CN" } else { "en" };
            let (status, body, retry_after, elapsed) = self.scan(qr, scan_id, lang).await;
            self.sent.push((scan_id, qr));
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert_eq!(body["code"], "SERVICE_UNAVAILABLE", "{body}");
            let message = if lang == "en" {
                "Service temporarily unavailable, please retry shortly"
            } else {
                "服务暂不可用，请稍后重试"
            };
            assert_eq!(body["message"], message, "{body}");
            assert_eq!(retry_after.as_deref(), Some("1"));
            self.note(elapsed);

            for path in ["/readyz", "/merchant/redemptions"] {
                let asked = Instant::now();
                let response = self
                    .client
                    .get(self.server.url(path))
                    .bearer_auth(&self.operator)
                    .send()
                    .await
                    .expect("an answer within 5 s, not a hang");
                self.note(asked.elapsed());
                assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
                let body: Value = response.json().await.expect("JSON");
                assert_eq!(body["code"], "SERVICE_UNAVAILABLE", "{path}: {body}");
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn note(&mut self, elapsed: Duration) {
        self.slowest = self.slowest.max(elapsed);
        self.answers += 1;
    }

    /// After the database is back: the time to the first SUCCESS, then every scan sent
    /// while it was away is retried with its scan_id, and each QR ends redeemed exactly
    /// once.
    async fn after(&self, what: &str, database_url: &str) {
        let back = Instant::now();
        let spare = TICKETS - 1;
        let recovered = loop {
            let (status, body, _, _) = self.scan(spare, uuid::Uuid::new_v4(), "zh-CN").await;
            if status == StatusCode::OK {
                break back.elapsed();
            }
            assert!(
                status == StatusCode::SERVICE_UNAVAILABLE,
                "only 503 while recovering: {status} {body}"
            );
            assert!(
                back.elapsed() < Duration::from_secs(30),
                "no recovery within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let ready = self
            .client
            .get(self.server.url("/readyz"))
            .send()
            .await
            .expect("readyz");
        assert_eq!(ready.status(), StatusCode::OK);
        let mut successes = [0; TICKETS];
        for (scan_id, qr) in &self.sent {
            let (status, body, _, _) = self.scan(*qr, *scan_id, "zh-CN").await;
            match (status, body["code"].as_str()) {
                (StatusCode::OK, Some("SUCCESS")) => successes[*qr] += 1,
                (StatusCode::CONFLICT, Some("ALREADY_REDEEMED")) => {}
                other => panic!("a retried scan answered {other:?}: {body}"),
            }
        }
        let pool = central_server::db::connect(database_url, 1)
            .await
            .expect("connect");
        for (qr, succeeded) in successes.iter().enumerate().take(TICKETS - 1) {
            let sent = self.sent.iter().any(|(_, q)| *q == qr);
            let (events,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM redemption_events e JOIN tickets t ON t.id = e.ticket_id \
                 WHERE t.ticket_code = $1",
            )
            .bind(format!("TK-OUT-{qr}"))
            .fetch_one(&pool)
            .await
            .expect("events");
            assert_eq!(events, i64::from(sent), "TK-OUT-{qr}");
            assert_eq!(
                *succeeded,
                i32::from(sent),
                "TK-OUT-{qr}: one SUCCESS per QR"
            );
        }
        println!(
            "{what}: {} answers in {:.0?} of outage, slowest {:.0?} (deadline 900 ms); \
             first SUCCESS {:.0?} after the database was back; {} scans retried, none doubled",
            self.answers,
            outage(),
            self.slowest,
            recovered,
            self.sent.len()
        );
    }
}

/// The database cut off: every connection to it drops and new ones are closed at once (a
/// stopped or crashed database, a cut link).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_cut_off_is_answered_503_and_the_server_recovers_by_itself() {
    let direct = seeded_on(Cluster::shared()).await;
    let target: std::net::SocketAddr = direct
        .trim_start_matches("postgres://postgres@")
        .split('/')
        .next()
        .and_then(|host| host.parse().ok())
        .expect("host:port in the URL");
    let proxy = Proxy::start(target).await;
    let via_proxy = direct.replace(&target.to_string(), &proxy.addr.to_string());
    let mut outage = Outage::start(&via_proxy).await;

    proxy.cut();
    outage.while_away().await;
    proxy.restore();
    outage.after("cut off", &direct).await;
    outage.server.stop().await;
}

/// The whole PostgreSQL frozen (SIGSTOP): connections hang instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_database_is_answered_503_at_the_deadline_and_nothing_is_doubled() {
    let cluster = Cluster::start(&ClusterOptions::default()).expect("a private cluster");
    let url = seeded_on(&cluster).await;
    let mut outage = Outage::start(&url).await;

    cluster.freeze().expect("SIGSTOP");
    outage.while_away().await;
    cluster.thaw().expect("SIGCONT");
    outage.after("frozen", &url).await;
    outage.server.stop().await;
    cluster.stop();
}
