//! Retention: removing reconciliation and audit rows once they are older than the policy.
//!
//! Four tables grow with every scan and are only needed for a while: the reconciliation log
//! (`merchant_redemptions`, by `redeemed_at`), the audit trail (`scan_audit`, by
//! `decided_at`), the idempotency answers (`scan_requests`, by `created_at`) and finished
//! webhook notifications (`notifications` that are `delivered` or `dead`, by `created_at`;
//! pending ones are never removed). Redemption and audit rows are kept for settlement, so a
//! policy shorter than [`MIN_RETENTION_DAYS`] is refused when it is built.
//!
//! **Architecture invariant: `redemption_events` is never deleted.** Its
//! `UNIQUE (jti, function_code)` is what stops a QR token from redeeming an entitlement twice,
//! and OTA tokens never expire: removing an old event would let its token redeem again.
//!
//! Rows go in batches of at most `batch_size` per table ([`purge_batch`]), each delete its own
//! short statement, so a purge never holds many locks or a long transaction next to live
//! scans; [`purge_all`] repeats batches until nothing old is left. The cutoff is computed from
//! the `now` argument, never the database clock.

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;

/// The shortest retention accepted, in days.
pub const MIN_RETENTION_DAYS: i64 = 365;

/// The largest batch accepted: bigger deletes hold their locks too long.
pub const MAX_BATCH_SIZE: i64 = 100_000;

/// Why a retention policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetentionError {
    #[error("retention must be at least {MIN_RETENTION_DAYS} days (redemption and audit rows are kept for settlement), got {days}")]
    TooShort { days: i64 },
    #[error("batch size must be between 1 and {MAX_BATCH_SIZE}, got {batch_size}")]
    BadBatch { batch_size: i64 },
}

/// How old a row must be to go, and how many rows of a table one batch removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    days: i64,
    batch_size: i64,
}

impl RetentionPolicy {
    pub fn new(days: i64, batch_size: i64) -> Result<RetentionPolicy, RetentionError> {
        if days < MIN_RETENTION_DAYS {
            return Err(RetentionError::TooShort { days });
        }
        if !(1..=MAX_BATCH_SIZE).contains(&batch_size) {
            return Err(RetentionError::BadBatch { batch_size });
        }
        Ok(RetentionPolicy { days, batch_size })
    }

    pub fn days(&self) -> i64 {
        self.days
    }

    pub fn batch_size(&self) -> i64 {
        self.batch_size
    }

    /// Rows strictly older than this go. `None` when the cutoff falls before any time we can
    /// represent: then nothing is that old.
    pub fn cutoff(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        TimeDelta::try_days(self.days).and_then(|age| now.checked_sub_signed(age))
    }
}

/// Rows removed, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    pub merchant_redemptions: u64,
    pub scan_audit: u64,
    pub scan_requests: u64,
    pub notifications: u64,
}

impl PurgeReport {
    pub fn total(&self) -> u64 {
        self.merchant_redemptions + self.scan_audit + self.scan_requests + self.notifications
    }

    fn add(&mut self, batch: &PurgeReport) {
        self.merchant_redemptions += batch.merchant_redemptions;
        self.scan_audit += batch.scan_audit;
        self.scan_requests += batch.scan_requests;
        self.notifications += batch.notifications;
    }
}

/// Removes at most `batch_size` old rows from each table. Finished notifications go first,
/// so removing their reconciliation rows does not rewrite them (`ON DELETE SET NULL`).
pub async fn purge_batch(
    pool: &PgPool,
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
) -> Result<PurgeReport, sqlx::Error> {
    let Some(cutoff) = policy.cutoff(now) else {
        return Ok(PurgeReport::default());
    };
    let delete = |sql: &'static str| async move {
        sqlx::query(sql)
            .bind(cutoff)
            .bind(policy.batch_size)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
    };
    let notifications = delete(
        "DELETE FROM notifications WHERE id IN (SELECT id FROM notifications \
         WHERE status IN ('delivered', 'dead') AND created_at < $1 ORDER BY id LIMIT $2)",
    )
    .await?;
    let merchant_redemptions = delete(
        "DELETE FROM merchant_redemptions WHERE id IN (SELECT id FROM merchant_redemptions \
         WHERE redeemed_at < $1 ORDER BY id LIMIT $2)",
    )
    .await?;
    let scan_audit = delete(
        "DELETE FROM scan_audit WHERE id IN (SELECT id FROM scan_audit \
         WHERE decided_at < $1 ORDER BY id LIMIT $2)",
    )
    .await?;
    let scan_requests = delete(
        "DELETE FROM scan_requests WHERE scan_id IN (SELECT scan_id FROM scan_requests \
         WHERE created_at < $1 ORDER BY scan_id LIMIT $2)",
    )
    .await?;
    Ok(PurgeReport {
        merchant_redemptions,
        scan_audit,
        scan_requests,
        notifications,
    })
}

/// Runs [`purge_batch`] until a batch removes nothing, calling `progress` after each batch
/// that removed rows; returns the totals.
pub async fn purge_all(
    pool: &PgPool,
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
    mut progress: impl FnMut(&PurgeReport),
) -> Result<PurgeReport, sqlx::Error> {
    let mut totals = PurgeReport::default();
    loop {
        let batch = purge_batch(pool, policy, now).await?;
        if batch.total() == 0 {
            return Ok(totals);
        }
        totals.add(&batch);
        progress(&batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_checked_when_built() {
        let cases = [
            ((364, 1000), Err(RetentionError::TooShort { days: 364 })),
            ((-1, 1000), Err(RetentionError::TooShort { days: -1 })),
            ((365, 0), Err(RetentionError::BadBatch { batch_size: 0 })),
            (
                (365, 100_001),
                Err(RetentionError::BadBatch {
                    batch_size: 100_001,
                }),
            ),
            ((365, 1), Ok((365, 1))),
            ((730, 100_000), Ok((730, 100_000))),
        ];
        for ((days, batch_size), expected) in cases {
            let built = RetentionPolicy::new(days, batch_size)
                .map(|policy| (policy.days(), policy.batch_size()));
            assert_eq!(built, expected, "new({days}, {batch_size})");
        }
    }

    #[test]
    fn a_cutoff_beyond_representable_time_is_none() {
        let policy = RetentionPolicy::new(i64::MAX, 10).expect("valid policy");
        assert_eq!(policy.cutoff(Utc::now()), None);
    }
}
