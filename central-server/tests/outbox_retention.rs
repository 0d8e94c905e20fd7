//! The webhook outbox against real PostgreSQL and a real HTTP receiver on port 0 (retries
//! with backoff, signatures, dead letters, timeouts, two workers sharing the queue), and
//! retention purging old rows in batches without touching `redemption_events`.
//!
//! Time is passed in: each step gets an explicit `now`, advanced past `next_attempt_at`
//! instead of sleeping.

mod common;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use central_server::db;
use central_server::outbox::{self, deliver_once, DeliveryOutcome, OutboxSettings};
use central_server::retention::{self, PurgeReport, RetentionError, RetentionPolicy};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &str = "whsec-m001";

/// What the test receiver answers.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// 500 for the first `n` requests, then 200.
    FailFirst(usize),
    /// 500 to every request.
    AlwaysFail,
    /// Never answers within the test.
    Hang,
    /// Answers 200 only once two requests are in flight at the same time (503 after 5 s).
    MeetInPairs,
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// A webhook receiver on 127.0.0.1:0 that records every request.
struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(behaviour: Behaviour) -> Receiver {
        let seen = Arc::new(Mutex::new(Vec::<Received>::new()));
        let pair = Arc::new(tokio::sync::Barrier::new(2));
        let recorder = seen.clone();
        let hook = move |headers: HeaderMap, body: Bytes| {
            let recorder = recorder.clone();
            let pair = pair.clone();
            async move {
                let number = {
                    let mut seen = recorder.lock().expect("receiver log");
                    seen.push(Received { headers, body });
                    seen.len()
                };
                match behaviour {
                    Behaviour::FailFirst(n) if number <= n => StatusCode::INTERNAL_SERVER_ERROR,
                    Behaviour::FailFirst(_) => StatusCode::OK,
                    Behaviour::AlwaysFail => StatusCode::INTERNAL_SERVER_ERROR,
                    Behaviour::Hang => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        StatusCode::OK
                    }
                    Behaviour::MeetInPairs => {
                        match tokio::time::timeout(Duration::from_secs(5), pair.wait()).await {
                            Ok(_) => StatusCode::OK,
                            Err(_) => StatusCode::SERVICE_UNAVAILABLE,
                        }
                    }
                }
            }
        };
        let app = Router::new().route("/hook", post(hook));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            seen,
        }
    }

    fn seen(&self) -> Vec<Received> {
        self.seen.lock().expect("receiver log").clone()
    }
}

/// A fresh seeded database whose merchant M001 posts its webhooks to `url`.
async fn database_with_webhook(url: &str, secret: Option<&str>) -> PgPool {
    let database_url = common::seeded_database().await;
    let pool = db::connect(&database_url, 4).await.expect("connect");
    sqlx::query("UPDATE merchants SET webhook_url = $1, webhook_secret = $2 WHERE code = 'M001'")
        .bind(url)
        .bind(secret)
        .execute(&pool)
        .await
        .expect("set webhook");
    pool
}

/// Enqueues a notification for `merchant`, due at `at`, as `scan.rs` does.
async fn enqueue(pool: &PgPool, merchant: &str, payload: &Value, at: DateTime<Utc>) -> i64 {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO notifications (merchant_id, payload, next_attempt_at, created_at) \
         SELECT id, $2, $3, $3 FROM merchants WHERE code = $1 RETURNING id",
    )
    .bind(merchant)
    .bind(payload)
    .bind(at)
    .fetch_one(pool)
    .await
    .expect("enqueue");
    id
}

#[derive(Debug, sqlx::FromRow)]
struct NotificationRow {
    status: String,
    attempts: i32,
    last_error: Option<String>,
    delivered_at: Option<DateTime<Utc>>,
    next_attempt_at: DateTime<Utc>,
}

async fn notification(pool: &PgPool, id: i64) -> NotificationRow {
    sqlx::query_as(
        "SELECT status, attempts, last_error, delivered_at, next_attempt_at \
         FROM notifications WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("notification row")
}

fn at(rfc3339: &str) -> DateTime<Utc> {
    rfc3339.parse().expect("timestamp")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client")
}

fn redemption_payload(ticket: &str) -> Value {
    json!({
        "event": "redemption.succeeded", "redemption_id": 41, "merchant_code": "M001",
        "order_id": "ORD-1001", "ticket_code": ticket, "function_code": "ENTRY",
        "redeemed_at": "2025-06-01T08:00:00.000+00:00", "source": "venue",
        "operator": "op-east", "venue_code": "GATE-EAST", "note": "入园 ✓"
    })
}

/// Asserts `outcome` is a retry of `id` after `attempts` attempts, scheduled between half and
/// all of `full` after `now`; returns when it is due.
fn expect_retry(
    outcome: DeliveryOutcome,
    id: i64,
    attempts: i32,
    now: DateTime<Utc>,
    full: Duration,
) -> DateTime<Utc> {
    let DeliveryOutcome::Retrying {
        id: retried,
        attempts: counted,
        next_attempt_at,
    } = outcome
    else {
        panic!("expected a retry after attempt {attempts}, got {outcome:?}");
    };
    assert_eq!((retried, counted), (id, attempts));
    let wait = (next_attempt_at - now)
        .to_std()
        .expect("retry in the future");
    assert!(
        wait >= full / 2 && wait <= full,
        "attempt {attempts}: waits {wait:?}, expected between {:?} and {full:?}",
        full / 2
    );
    next_attempt_at
}

#[tokio::test]
async fn a_failing_receiver_gets_the_same_signed_body_until_it_answers_2xx() {
    let receiver = Receiver::start(Behaviour::FailFirst(2)).await;
    let pool = database_with_webhook(&receiver.url, Some(SECRET)).await;
    let client = client();
    let settings = OutboxSettings::default();
    let payload = redemption_payload("TK-1001-1");
    let t0 = at("2025-06-01T08:00:00Z");
    let id = enqueue(&pool, "M001", &payload, t0).await;

    let step = |now| deliver_once(&pool, &client, &settings, now);
    let t1 = expect_retry(
        step(t0).await.expect("step 1"),
        id,
        1,
        t0,
        Duration::from_secs(1),
    );
    let row = notification(&pool, id).await;
    assert_eq!(
        (row.status.as_str(), row.attempts, row.next_attempt_at),
        ("pending", 1, t1),
        "the outcome names the stored retry time"
    );
    assert_eq!(
        step(t1 - TimeDelta::milliseconds(1))
            .await
            .expect("early step"),
        DeliveryOutcome::Idle,
        "not due before its backoff"
    );
    let t2 = expect_retry(
        step(t1).await.expect("step 2"),
        id,
        2,
        t1,
        Duration::from_secs(2),
    );
    assert!(t2 - t1 >= t1 - t0, "backoff grows");
    assert_eq!(
        step(t2).await.expect("step 3"),
        DeliveryOutcome::Delivered { id }
    );
    assert_eq!(step(t2).await.expect("step 4"), DeliveryOutcome::Idle);

    let row = notification(&pool, id).await;
    assert_eq!(
        (row.status.as_str(), row.attempts, row.delivered_at),
        ("delivered", 3, Some(t2))
    );
    assert_eq!(row.last_error.as_deref(), Some("HTTP 500"));

    let seen = receiver.seen();
    assert_eq!(seen.len(), 3);
    for request in &seen {
        assert_eq!(
            request.body, seen[0].body,
            "every attempt sends the same bytes"
        );
        let signed = outbox::signature(SECRET.as_bytes(), &request.body);
        assert_eq!(request.header("x-stile-signature"), Some(signed.as_str()));
        assert_eq!(
            request.header("x-stile-delivery"),
            Some(id.to_string().as_str())
        );
        assert_eq!(
            request.header("x-stile-event"),
            Some("redemption.succeeded")
        );
        assert_eq!(request.header("content-type"), Some("application/json"));
    }
    let body: Value = serde_json::from_slice(&seen[0].body).expect("json body");
    assert_eq!(body, payload);
    assert_ne!(
        outbox::signature(b"another secret", &seen[0].body),
        outbox::signature(SECRET.as_bytes(), &seen[0].body)
    );
}

#[tokio::test]
async fn a_receiver_that_always_fails_parks_the_notification_as_dead() {
    let receiver = Receiver::start(Behaviour::AlwaysFail).await;
    let pool = database_with_webhook(&receiver.url, Some(SECRET)).await;
    let client = client();
    let settings = OutboxSettings {
        max_backoff: Duration::from_secs(4),
        ..OutboxSettings::default()
    };
    let t0 = at("2025-06-01T08:00:00Z");
    let id = enqueue(&pool, "M001", &redemption_payload("TK-1001-1"), t0).await;

    // attempt → longest wait before the next: 1 s doubling, capped at 4 s.
    let waits = [1, 2, 4, 4, 4, 4, 4];
    let mut now = t0;
    for (attempt, full_secs) in (1..).zip(waits) {
        let outcome = deliver_once(&pool, &client, &settings, now)
            .await
            .expect("step");
        now = expect_retry(outcome, id, attempt, now, Duration::from_secs(full_secs));
    }
    assert_eq!(
        deliver_once(&pool, &client, &settings, now)
            .await
            .expect("last step"),
        DeliveryOutcome::Dead {
            id,
            error: "HTTP 500".into()
        }
    );
    let row = notification(&pool, id).await;
    assert_eq!(
        (row.status.as_str(), row.attempts, row.last_error.as_deref()),
        ("dead", settings.max_attempts, Some("HTTP 500"))
    );
    assert_eq!(row.delivered_at, None);

    let much_later = now + TimeDelta::days(365);
    assert_eq!(
        deliver_once(&pool, &client, &settings, much_later)
            .await
            .expect("step after death"),
        DeliveryOutcome::Idle
    );
    assert_eq!(receiver.seen().len(), 8);
}

#[tokio::test]
async fn a_receiver_slower_than_the_request_timeout_is_a_failed_attempt() {
    let receiver = Receiver::start(Behaviour::Hang).await;
    let pool = database_with_webhook(&receiver.url, Some(SECRET)).await;
    let client = client();
    let settings = OutboxSettings {
        request_timeout: Duration::from_millis(300),
        ..OutboxSettings::default()
    };
    let t0 = at("2025-06-01T08:00:00Z");
    let id = enqueue(&pool, "M001", &redemption_payload("TK-1001-1"), t0).await;

    let started = Instant::now();
    let outcome = deliver_once(&pool, &client, &settings, t0)
        .await
        .expect("step");
    let took = started.elapsed();
    expect_retry(outcome, id, 1, t0, Duration::from_secs(1));
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "gave up after {took:?}"
    );
    let row = notification(&pool, id).await;
    assert_eq!(
        (row.status.as_str(), row.attempts, row.last_error.as_deref()),
        ("pending", 1, Some("timeout"))
    );
}

#[tokio::test]
async fn two_workers_deliver_two_due_notifications_once_each() {
    // The receiver answers only while both POSTs are in flight together: a worker that
    // waited for the other's row lock instead of skipping it would make both time out.
    let receiver = Receiver::start(Behaviour::MeetInPairs).await;
    let pool = database_with_webhook(&receiver.url, Some(SECRET)).await;
    let client = client();
    let settings = OutboxSettings::default();
    let t0 = at("2025-06-01T08:00:00Z");
    let first = enqueue(&pool, "M001", &redemption_payload("TK-1001-1"), t0).await;
    let second = enqueue(&pool, "M001", &redemption_payload("TK-1001-2"), t0).await;

    let (a, b) = tokio::join!(
        deliver_once(&pool, &client, &settings, t0),
        deliver_once(&pool, &client, &settings, t0)
    );
    let mut delivered = [a.expect("worker a"), b.expect("worker b")]
        .into_iter()
        .map(|outcome| match outcome {
            DeliveryOutcome::Delivered { id } => id,
            other => panic!("expected a delivery, got {other:?}"),
        })
        .collect::<Vec<_>>();
    delivered.sort_unstable();
    assert_eq!(delivered, vec![first, second]);

    let mut ids = receiver
        .seen()
        .iter()
        .map(|request| request.header("x-stile-delivery").unwrap_or("").to_owned())
        .collect::<Vec<_>>();
    ids.sort();
    let mut expected = vec![first.to_string(), second.to_string()];
    expected.sort();
    assert_eq!(ids, expected, "each notification posted exactly once");
    assert_eq!(
        deliver_once(&pool, &client, &settings, t0)
            .await
            .expect("step"),
        DeliveryOutcome::Idle
    );
}

#[tokio::test]
async fn a_merchant_without_a_secret_gets_unsigned_posts() {
    let receiver = Receiver::start(Behaviour::FailFirst(0)).await;
    let pool = database_with_webhook(&receiver.url, None).await;
    let client = client();
    let t0 = at("2025-06-01T08:00:00Z");
    let id = enqueue(&pool, "M001", &redemption_payload("TK-1001-1"), t0).await;

    assert_eq!(
        deliver_once(&pool, &client, &OutboxSettings::default(), t0)
            .await
            .expect("step"),
        DeliveryOutcome::Delivered { id }
    );
    let seen = receiver.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-stile-signature"), None);
}

#[tokio::test]
async fn depth_counts_pending_and_dead_notifications() {
    let receiver = Receiver::start(Behaviour::FailFirst(0)).await;
    let pool = database_with_webhook(&receiver.url, Some(SECRET)).await;
    let client = client();
    let settings = OutboxSettings::default();
    let t0 = at("2025-06-01T08:00:00Z");
    assert_eq!(outbox::depth(&pool).await.expect("depth"), (0, 0));

    // M002 has no webhook: its notification can only die.
    let orphan = enqueue(&pool, "M002", &redemption_payload("TK-M2"), t0).await;
    assert_eq!(
        deliver_once(&pool, &client, &settings, t0)
            .await
            .expect("step"),
        DeliveryOutcome::Dead {
            id: orphan,
            error: "merchant has no webhook_url".into()
        }
    );
    let delivered = enqueue(&pool, "M001", &redemption_payload("TK-1001-1"), t0).await;
    assert_eq!(
        deliver_once(&pool, &client, &settings, t0)
            .await
            .expect("step"),
        DeliveryOutcome::Delivered { id: delivered }
    );
    let later = t0 + TimeDelta::hours(1);
    enqueue(&pool, "M001", &redemption_payload("TK-1001-1"), later).await;
    enqueue(&pool, "M001", &redemption_payload("TK-1001-2"), later).await;

    assert_eq!(outbox::depth(&pool).await.expect("depth"), (2, 1));
    assert_eq!(receiver.seen().len(), 1);
}

#[test]
fn retention_shorter_than_a_year_is_refused() {
    let cases: [((i64, i64), Result<(), RetentionError>); 5] = [
        ((364, 1000), Err(RetentionError::TooShort { days: 364 })),
        ((365, 1000), Ok(())),
        ((3650, 1), Ok(())),
        ((365, 0), Err(RetentionError::BadBatch { batch_size: 0 })),
        (
            (365, 100_001),
            Err(RetentionError::BadBatch {
                batch_size: 100_001,
            }),
        ),
    ];
    for ((days, batch_size), expected) in cases {
        assert_eq!(
            RetentionPolicy::new(days, batch_size).map(|_| ()),
            expected,
            "new({days}, {batch_size})"
        );
    }
    assert_eq!(
        RetentionError::TooShort { days: 364 }.to_string(),
        "retention must be at least 365 days (redemption and audit rows are kept for settlement), got 364"
    );
    assert_eq!(retention::MIN_RETENTION_DAYS, 365);
}

/// `count` redemption events of TK-1001-1's ENTRY (jtis `prefix-1`…) at `at`, each with its
/// reconciliation row.
async fn redemptions(pool: &PgPool, prefix: &str, count: i32, at: DateTime<Utc>) {
    sqlx::query(
        "INSERT INTO redemption_events (jti, function_code, ticket_id, entitlement_id, merchant_id, redeemed_at) \
         SELECT $1 || '-' || g, e.function_code, t.id, e.id, t.merchant_id, $3 \
         FROM tickets t JOIN entitlements e ON e.ticket_id = t.id AND e.function_code = 'ENTRY', \
              generate_series(1, $2) g \
         WHERE t.ticket_code = 'TK-1001-1'",
    )
    .bind(prefix)
    .bind(count)
    .bind(at)
    .execute(pool)
    .await
    .expect("redemption events");
    sqlx::query(
        "INSERT INTO merchant_redemptions (merchant_id, ticket_id, order_id, redemption_event_id, \
                                           function_code, redeemed_at, decided_at, source) \
         SELECT r.merchant_id, r.ticket_id, t.order_id, r.id, r.function_code, r.redeemed_at, r.redeemed_at, 'venue' \
         FROM redemption_events r JOIN tickets t ON t.id = r.ticket_id \
         WHERE r.jti LIKE $1 || '-%'",
    )
    .bind(prefix)
    .execute(pool)
    .await
    .expect("reconciliation rows");
}

async fn audit_rows(pool: &PgPool, count: i32, at: DateTime<Utc>) {
    sqlx::query(
        "INSERT INTO scan_audit (merchant_id, function_code, decision, decided_at) \
         SELECT m.id, 'ENTRY', 'SUCCESS', $2 FROM merchants m, generate_series(1, $1) \
         WHERE m.code = 'M001'",
    )
    .bind(count)
    .bind(at)
    .execute(pool)
    .await
    .expect("audit rows");
}

async fn scan_requests(pool: &PgPool, count: i32, at: DateTime<Utc>) {
    sqlx::query(
        "INSERT INTO scan_requests (scan_id, merchant_id, operator_id, token_sha256, function_code, created_at) \
         SELECT gen_random_uuid(), m.id, 0, sha256('token'::bytea), 'ENTRY', $2 \
         FROM merchants m, generate_series(1, $1) WHERE m.code = 'M001'",
    )
    .bind(count)
    .bind(at)
    .execute(pool)
    .await
    .expect("scan requests");
}

async fn finished_notification(pool: &PgPool, status: &str, at: DateTime<Utc>) {
    sqlx::query(
        "INSERT INTO notifications (merchant_id, payload, status, next_attempt_at, created_at) \
         SELECT id, '{}'::jsonb, $1, $2, $2 FROM merchants WHERE code = 'M001'",
    )
    .bind(status)
    .bind(at)
    .execute(pool)
    .await
    .expect("notification");
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(pool).await.expect("count");
    n
}

#[tokio::test]
async fn purge_removes_only_rows_past_retention_in_batches() {
    let database_url = common::seeded_database().await;
    let pool = db::connect(&database_url, 4).await.expect("connect");
    let now = at("2026-03-01T12:00:00Z");
    let old = now - TimeDelta::days(400);
    let boundary = now - TimeDelta::days(365); // exactly at the cutoff: kept
    let recent = now - TimeDelta::days(1);

    redemptions(&pool, "old", 3, old).await;
    redemptions(&pool, "new", 1, recent).await;
    audit_rows(&pool, 5, old).await;
    audit_rows(&pool, 1, boundary).await;
    audit_rows(&pool, 2, recent).await;
    scan_requests(&pool, 3, old).await;
    scan_requests(&pool, 1, recent).await;
    finished_notification(&pool, "delivered", old).await;
    finished_notification(&pool, "delivered", old).await;
    finished_notification(&pool, "dead", old).await;
    finished_notification(&pool, "pending", old).await; // still owed: kept
    finished_notification(&pool, "delivered", recent).await;

    let policy = RetentionPolicy::new(365, 2).expect("policy");
    let mut batches = Vec::<PurgeReport>::new();
    let totals = retention::purge_all(&pool, &policy, now, |batch| batches.push(*batch))
        .await
        .expect("purge");

    assert_eq!(
        totals,
        PurgeReport {
            merchant_redemptions: 3,
            scan_audit: 5,
            scan_requests: 3,
            notifications: 3,
        }
    );
    assert_eq!(totals.total(), 14);
    // 5 old audit rows at 2 a batch: 2 + 2 + 1.
    assert_eq!(batches.len(), 3, "{batches:?}");
    for batch in &batches {
        let per_table = [
            batch.merchant_redemptions,
            batch.scan_audit,
            batch.scan_requests,
            batch.notifications,
        ];
        assert!(per_table.iter().all(|&n| n <= 2), "{batch:?}");
    }
    assert_eq!(batches.iter().map(PurgeReport::total).sum::<u64>(), 14);

    let remaining = [
        count(&pool, "SELECT count(*) FROM merchant_redemptions").await,
        count(&pool, "SELECT count(*) FROM scan_audit").await,
        count(&pool, "SELECT count(*) FROM scan_requests").await,
        count(&pool, "SELECT count(*) FROM notifications").await,
        count(
            &pool,
            "SELECT count(*) FROM notifications WHERE status = 'pending'",
        )
        .await,
    ];
    assert_eq!(remaining, [1, 3, 1, 2, 1]);
    let oldest_audit: DateTime<Utc> = sqlx::query_scalar("SELECT min(decided_at) FROM scan_audit")
        .fetch_one(&pool)
        .await
        .expect("oldest audit row");
    assert_eq!(oldest_audit, boundary);

    // Every redemption event survives, old ones included: they keep each jti from
    // redeeming again.
    assert_eq!(
        count(&pool, "SELECT count(*) FROM redemption_events").await,
        4
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM redemption_events WHERE jti LIKE 'old-%'"
        )
        .await,
        3
    );

    let mut called = false;
    let again = retention::purge_all(&pool, &policy, now, |_| called = true)
        .await
        .expect("second purge");
    assert_eq!((again, called), (PurgeReport::default(), false));
}
