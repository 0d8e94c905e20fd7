//! The webhook outbox: delivers the `notifications` rows that redemptions enqueue to the
//! merchant's `webhook_url`.
//!
//! This is a transactional outbox. `scan.rs` inserts a row into `notifications` inside the
//! redemption's own transaction, so a notification exists exactly when its redemption
//! committed, and nothing here runs while a gate waits: a failing, slow or unreachable
//! webhook never slows or fails a redemption. Delivery happens later, in this worker.
//!
//! Layout, after "background work is one step plus a thin loop":
//! - [`deliver_once`] is the step: in one transaction it claims one due row
//!   (`FOR UPDATE OF n SKIP LOCKED`, so any number of workers in any number of server
//!   processes share the queue without sending one row twice at the same time), POSTs it
//!   and records the outcome — `delivered`, retried later with exponential backoff and
//!   jitter, or parked as `dead` after [`OutboxSettings::max_attempts`]. Time is its `now`
//!   argument, never the database clock, so tests drive retries without sleeping.
//! - [`run`] is the loop: it only adds polling and shutdown.
//! - [`signature`] is the `X-Stile-Signature` a receiver checks; [`depth`] feeds metrics.
//!
//! Delivery is at least once: if the commit after a successful POST fails, the row is sent
//! again. Receivers deduplicate on `X-Stile-Delivery` (the row id, stable across attempts).
//! The body is the stored payload serialized once per attempt, and the signature is over
//! exactly those bytes. Neither the secret nor the webhook URL is ever logged or stored in
//! `last_error`.

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use sqlx::PgPool;
use std::time::Duration;
use tokio::sync::watch;

/// The only event the outbox carries today (see `scan.rs`).
const EVENT: &str = "redemption.succeeded";

/// How the worker retries and how long it waits.
#[derive(Debug, Clone)]
pub struct OutboxSettings {
    /// Attempts before a notification is parked as `dead`.
    pub max_attempts: i32,
    /// Wait after the first failed attempt; doubles with every further failure.
    pub base_backoff: Duration,
    /// Upper bound of the wait between two attempts.
    pub max_backoff: Duration,
    /// Bound of one POST, connection included. The row stays locked meanwhile.
    pub request_timeout: Duration,
    /// How long [`run`] waits when nothing is due.
    pub poll_interval: Duration,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        OutboxSettings {
            max_attempts: 8,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5 * 60),
            request_timeout: Duration::from_secs(5),
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// What one [`deliver_once`] step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// No notification was due.
    Idle,
    /// The receiver answered 2xx.
    Delivered { id: i64 },
    /// The attempt failed; the row is due again at `next_attempt_at`.
    Retrying {
        id: i64,
        attempts: i32,
        next_attempt_at: DateTime<Utc>,
    },
    /// The row is parked for good: its last attempt failed, or it cannot be sent at all.
    Dead { id: i64, error: String },
}

/// A due notification and where it goes, as claimed under its row lock.
#[derive(sqlx::FromRow)]
struct DueNotification {
    id: i64,
    payload: serde_json::Value,
    attempts: i32,
    webhook_url: Option<String>,
    webhook_secret: Option<String>,
}

/// Delivers at most one due notification and records what happened, in one transaction.
///
/// Fails only when the database does; every HTTP failure is an outcome.
pub async fn deliver_once(
    pool: &PgPool,
    client: &reqwest::Client,
    settings: &OutboxSettings,
    now: DateTime<Utc>,
) -> Result<DeliveryOutcome, sqlx::Error> {
    let mut tx = crate::db::begin(pool).await?;
    let due: Option<DueNotification> = sqlx::query_as(
        "SELECT n.id, n.payload, n.attempts, m.webhook_url, m.webhook_secret \
         FROM notifications n JOIN merchants m ON m.id = n.merchant_id \
         WHERE n.status = 'pending' AND n.next_attempt_at <= $1 \
         ORDER BY n.next_attempt_at, n.id LIMIT 1 FOR UPDATE OF n SKIP LOCKED",
    )
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(due) = due else {
        tx.rollback().await?;
        return Ok(DeliveryOutcome::Idle);
    };

    let Some(url) = due.webhook_url.as_deref() else {
        // The merchant removed its webhook after the redemption: nobody to tell, ever.
        let error = "merchant has no webhook_url".to_owned();
        sqlx::query("UPDATE notifications SET status = 'dead', last_error = $2 WHERE id = $1")
            .bind(due.id)
            .bind(&error)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        return Ok(DeliveryOutcome::Dead { id: due.id, error });
    };

    let body =
        serde_json::to_vec(&due.payload).map_err(|error| sqlx::Error::Decode(error.into()))?;
    let mut request = client
        .post(url)
        .timeout(settings.request_timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Stile-Event", EVENT)
        .header("X-Stile-Delivery", due.id.to_string());
    if let Some(secret) = due.webhook_secret.as_deref() {
        request = request.header("X-Stile-Signature", signature(secret.as_bytes(), &body));
    }
    let failure = match request.body(body).send().await {
        Ok(response) if response.status().is_success() => None,
        Ok(response) => Some(format!("HTTP {}", response.status().as_u16())),
        Err(error) => Some(describe(&error).to_owned()),
    };
    let attempts = due.attempts.saturating_add(1);

    let outcome = match failure {
        None => {
            sqlx::query(
                "UPDATE notifications SET status = 'delivered', delivered_at = $2, attempts = $3 \
                 WHERE id = $1",
            )
            .bind(due.id)
            .bind(now)
            .bind(attempts)
            .execute(&mut *tx)
            .await?;
            DeliveryOutcome::Delivered { id: due.id }
        }
        Some(error) if attempts >= settings.max_attempts => {
            sqlx::query(
                "UPDATE notifications SET status = 'dead', attempts = $2, last_error = $3 \
                 WHERE id = $1",
            )
            .bind(due.id)
            .bind(attempts)
            .bind(&error)
            .execute(&mut *tx)
            .await?;
            DeliveryOutcome::Dead { id: due.id, error }
        }
        Some(error) => {
            let wait = backoff(settings, attempts, &mut rand::thread_rng());
            let next_attempt_at = TimeDelta::from_std(wait)
                .ok()
                .and_then(|wait| now.checked_add_signed(wait))
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
                // What PostgreSQL stores, so the outcome names the stored instant.
                .trunc_subsecs(6);
            sqlx::query(
                "UPDATE notifications SET attempts = $2, last_error = $3, next_attempt_at = $4 \
                 WHERE id = $1",
            )
            .bind(due.id)
            .bind(attempts)
            .bind(&error)
            .bind(next_attempt_at)
            .execute(&mut *tx)
            .await?;
            DeliveryOutcome::Retrying {
                id: due.id,
                attempts,
                next_attempt_at,
            }
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

/// `sha256=` and the lowercase hex HMAC-SHA256 of `body` under `secret`: the value of
/// `X-Stile-Signature`, for the worker and for receivers checking it.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256=");
    // HMAC takes keys of any length, so this constructor cannot fail.
    if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) {
        mac.update(body);
        for byte in mac.finalize().into_bytes() {
            hex.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
            hex.push(char::from(HEX_DIGITS[usize::from(byte & 0x0f)]));
        }
    }
    hex
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The wait after `attempts` failed attempts: `base · 2^(attempts−1)`, capped at
/// `max_backoff`, then drawn uniformly between half of it and all of it ("full jitter"
/// bounded below, so retries of many rows spread out yet still back off).
fn backoff(settings: &OutboxSettings, attempts: i32, rng: &mut impl Rng) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 31)).unwrap_or(31);
    let full = settings
        .base_backoff
        .saturating_mul(1u32 << doublings)
        .min(settings.max_backoff);
    rng.gen_range(full / 2..=full)
}

/// A short, secret-free description of a failed request (reqwest's own text names the URL,
/// which may carry credentials).
fn describe(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_builder() {
        "invalid webhook_url"
    } else if error.is_redirect() {
        "too many redirects"
    } else {
        "request failed"
    }
}

/// The worker: [`deliver_once`] back to back while there is work; when nothing is due (or
/// the database failed), waits `poll_interval` or until `stopping` changes. Returns when
/// `stopping` is `true` or its sender is gone. A stop waits for at most the POST in flight.
pub async fn run(
    pool: PgPool,
    client: reqwest::Client,
    settings: OutboxSettings,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        if *stopping.borrow_and_update() {
            return;
        }
        let wait = match deliver_once(&pool, &client, &settings, Utc::now()).await {
            Ok(DeliveryOutcome::Idle) => true,
            Ok(DeliveryOutcome::Delivered { id }) => {
                tracing::debug!(notification = id, "webhook delivered");
                false
            }
            Ok(DeliveryOutcome::Retrying {
                id,
                attempts,
                next_attempt_at,
            }) => {
                tracing::info!(notification = id, attempts, %next_attempt_at, "webhook failed; will retry");
                false
            }
            Ok(DeliveryOutcome::Dead { id, error }) => {
                tracing::warn!(notification = id, error = %error, "webhook parked as dead");
                false
            }
            Err(error) => {
                tracing::warn!(error = %error, "webhook outbox step failed; retrying after the poll interval");
                true
            }
        };
        if wait {
            tokio::select! {
                () = tokio::time::sleep(settings.poll_interval) => {}
                changed = stopping.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// `(pending, dead)` notification counts, for the outbox gauges.
pub async fn depth(pool: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'dead') \
         FROM notifications",
    )
    .fetch_one(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn backoff_doubles_within_jitter_and_stops_at_the_cap() {
        let settings = OutboxSettings {
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            ..OutboxSettings::default()
        };
        let mut rng = StdRng::seed_from_u64(7);
        // attempts → full wait before jitter
        let cases = [
            (1, 1),
            (2, 2),
            (3, 4),
            (4, 8),
            (5, 10),
            (40, 10),
            (0, 1),
            (-3, 1),
        ];
        for (attempts, full_secs) in cases {
            let full = Duration::from_secs(full_secs);
            for _ in 0..100 {
                let wait = backoff(&settings, attempts, &mut rng);
                assert!(
                    wait >= full / 2 && wait <= full,
                    "attempts {attempts}: {wait:?} not in [{:?}, {full:?}]",
                    full / 2
                );
            }
        }
    }

    #[test]
    fn signature_is_the_hex_hmac_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
