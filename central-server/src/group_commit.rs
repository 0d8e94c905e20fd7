//! Group commit of plain successful scans: the scans that arrive while a redemption
//! statement runs are redeemed together by the next one (`stile_redeem_batch`, migrations
//! 0014 and 0016), in one transaction and one WAL flush.
//!
//! A scan is handed to a queue; `workers` tasks each take the first waiting scan and every
//! other one queued behind it (at most `max_batch`), run one statement, and answer each
//! scan. Nobody waits for a batch to fill: under light load a batch is one scan, under
//! heavy load it is what queued during the previous statement, so the wait a scan adds is
//! at most one statement's time and the flushes per second fall as the load rises.
//!
//! A scan of an entitlement with check-in rules is locked and read by the statement but not
//! written: it answers `rules` with the state the rules need, the worker decides it with the
//! shared `decide` (at most one scan per entitlement a batch; any other goes to the
//! transaction path) and redeems what it allows with `stile_redeem_write`, in the same
//! transaction, before the commit. So the batch runs in an explicit transaction: one round
//! trip more at each end, still one WAL flush.
//!
//! Exactly once holds per scan as on the one-scan path: a scan the statement does not
//! redeem writes nothing (no scan's writes depend on another's), the statement commits or
//! rolls back as a whole, and a scan is answered only after the commit. A batch that fails
//! with a transient error (deadlock, serialization) rolled back: each of its scans is
//! decided again on the transaction path. Any other failure is every scan's failure, as
//! an unknown commit outcome must be: the client retries with its scan_id.

use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::Arc;
use stile_shared::decision::{decide, Decision, DecisionInput};
use stile_shared::token::QrClaims;
use stile_shared::{
    EntitlementRules, EntitlementSnapshot, FunctionCode, MerchantZone, QrKnowledge, TicketSnapshot,
    TicketStatus, TokenPolicy,
};
use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

/// One plain scan, as `stile_redeem_batch` takes it.
#[derive(Debug, Clone)]
pub struct BatchScan {
    pub scan_id: Option<Uuid>,
    pub merchant_id: i64,
    pub operator_id: i64,
    pub device_pk: Option<i64>,
    pub location_id: Option<i64>,
    pub token_sha256: [u8; 32],
    pub function_code: String,
    pub jti: String,
    pub ticket_code: String,
    pub source: &'static str,
    pub now: chrono::DateTime<chrono::Utc>,
    /// The SUCCESS answer without its ticket view and redemption id.
    pub answer: serde_json::Value,
    /// The verified token's claims, the asking merchant and the token policy: what `decide`
    /// needs for a scan of an entitlement with rules.
    pub claims: QrClaims,
    pub merchant_code: String,
    pub policy: TokenPolicy,
}

/// What the statement read, under the ticket's lock, of a scan of an entitlement with rules.
#[derive(Debug, serde::Deserialize)]
struct RulesState {
    ticket: i64,
    entitlement: i64,
    order: i64,
    status: String,
    remaining_uses: i32,
    rules: EntitlementRules,
    time_zone: String,
    recent_uses: Vec<i64>,
}

impl RulesState {
    /// The shared decision over what was read: the statement has already found the ticket's
    /// current QR to be this token, the entitlement present with uses left and this jti not
    /// redeemed, so the snapshot holds just that entitlement. `None` when the state cannot
    /// be read as a snapshot (the transaction path decides then).
    fn decide(&self, scan: &BatchScan) -> Option<Decision> {
        let function_code = FunctionCode::parse(&scan.function_code).ok()?;
        let snapshot = TicketSnapshot {
            status: TicketStatus::parse(&self.status)?,
            current_jti: Some(scan.claims.jti.clone()),
            current_issued_at: None,
            knowledge: QrKnowledge::Complete,
            entitlements: vec![EntitlementSnapshot {
                function_code: function_code.clone(),
                total_uses: self.remaining_uses,
                remaining_uses: self.remaining_uses,
                rules: self.rules.clone(),
                recent_uses: self.recent_uses.clone(),
            }],
        };
        Some(decide(&DecisionInput {
            claims: &scan.claims,
            operator_merchant: &scan.merchant_code,
            ticket: Some(&snapshot),
            redeemed_with_this_jti: &[],
            function_code: &function_code,
            now: scan.now.timestamp(),
            policy: scan.policy,
            zone: MerchantZone::parse(&self.time_zone)?,
            // Passages of a venue never join a batch.
            venue: None,
        }))
    }
}

/// What the statement did with one scan.
#[derive(Debug, Clone)]
pub enum BatchOutcome {
    /// Redeemed: the stored answer.
    Redeemed(serde_json::Value),
    /// Nothing written: decide it on the transaction path.
    Decide,
    /// Its scan_id is taken: nothing written, replay the stored answer.
    Replay,
}

/// Why a scan's batch did not answer it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    /// The batch rolled back and can be decided again (deadlock, serialization failure, a
    /// race on a unique key).
    #[error("the batch rolled back: {0}")]
    Retry(String),
    /// The database failed the batch; its outcome may be unknown.
    #[error("database: {0}")]
    Database(Arc<sqlx::Error>),
    /// The group-commit workers are gone (the server is shutting down).
    #[error("the group-commit workers stopped")]
    Stopped,
}

struct Job {
    scan: BatchScan,
    reply: oneshot::Sender<Result<BatchOutcome, BatchError>>,
}

/// The queue in front of the group-commit workers.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    jobs: mpsc::Sender<Job>,
}

/// How many scans a batch takes at most, and how many batches run at once.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommitSettings {
    pub workers: usize,
    pub max_batch: usize,
}

impl GroupCommit {
    /// Starts the workers on `pool`; `on_batch` is told each batch's size.
    pub fn start(
        pool: PgPool,
        settings: GroupCommitSettings,
        on_batch: impl Fn(usize) + Send + Sync + 'static,
    ) -> GroupCommit {
        let max_batch = settings.max_batch.max(1);
        let (jobs, receiver) = mpsc::channel::<Job>(max_batch * settings.workers.max(1) * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let on_batch = Arc::new(on_batch);
        for _ in 0..settings.workers.max(1) {
            let receiver = receiver.clone();
            let pool = pool.clone();
            let on_batch = on_batch.clone();
            tokio::spawn(async move {
                loop {
                    let mut batch = Vec::with_capacity(max_batch);
                    {
                        let mut receiver = receiver.lock().await;
                        match receiver.recv().await {
                            Some(job) => batch.push(job),
                            None => return,
                        }
                        while batch.len() < max_batch {
                            match receiver.try_recv() {
                                Ok(job) => batch.push(job),
                                Err(_) => break,
                            }
                        }
                    }
                    on_batch(batch.len());
                    run_batch(&pool, batch).await;
                }
            });
        }
        GroupCommit { jobs }
    }

    /// Redeems `scan` with whichever scans share its batch.
    pub async fn redeem(&self, scan: BatchScan) -> Result<BatchOutcome, BatchError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { scan, reply })
            .await
            .map_err(|_| BatchError::Stopped)?;
        answer.await.map_err(|_| BatchError::Stopped)?
    }
}

async fn run_batch(pool: &PgPool, batch: Vec<Job>) {
    let scans: Vec<&BatchScan> = batch.iter().map(|job| &job.scan).collect();
    let result = redeem_batch(pool, &scans).await;
    match result {
        Ok(mut outcomes) => {
            for (index, job) in batch.into_iter().enumerate() {
                let outcome = outcomes
                    .get_mut(index)
                    .and_then(Option::take)
                    .ok_or_else(|| BatchError::Retry("no answer for a scan".to_owned()));
                let _ = job.reply.send(outcome);
            }
        }
        Err(error) => {
            let error = if crate::db::redemption_may_rerun(&error) {
                BatchError::Retry(error.to_string())
            } else {
                BatchError::Database(Arc::new(error))
            };
            for job in batch {
                let _ = job.reply.send(Err(error.clone()));
            }
        }
    }
}

/// Binds the scans as the first twelve parameters, one array each, in the order both
/// `stile_redeem_batch` and `stile_redeem_write` take them.
fn bind_scans<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    scans: &[&'q BatchScan],
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    query
        .bind(scans.iter().map(|s| s.scan_id).collect::<Vec<_>>())
        .bind(scans.iter().map(|s| s.merchant_id).collect::<Vec<_>>())
        .bind(scans.iter().map(|s| s.operator_id).collect::<Vec<_>>())
        .bind(scans.iter().map(|s| s.device_pk).collect::<Vec<_>>())
        .bind(scans.iter().map(|s| s.location_id).collect::<Vec<_>>())
        .bind(
            scans
                .iter()
                .map(|s| s.token_sha256.to_vec())
                .collect::<Vec<_>>(),
        )
        .bind(
            scans
                .iter()
                .map(|s| s.function_code.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(scans.iter().map(|s| s.jti.as_str()).collect::<Vec<_>>())
        .bind(
            scans
                .iter()
                .map(|s| s.ticket_code.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(scans.iter().map(|s| s.source).collect::<Vec<_>>())
        .bind(scans.iter().map(|s| s.now).collect::<Vec<_>>())
        .bind(scans.iter().map(|s| s.answer.clone()).collect::<Vec<_>>())
}

/// One batch: `stile_redeem_batch`, then the scans with rules that `decide` allows written
/// by `stile_redeem_write`, in one transaction. The outcome of each scan, by position.
pub async fn redeem_batch(
    pool: &PgPool,
    scans: &[&BatchScan],
) -> Result<Vec<Option<BatchOutcome>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(i32, String, Option<serde_json::Value>)> = bind_scans(
        sqlx::query_as(
            "SELECT item, outcome, answer FROM stile_redeem_batch($1, $2, $3, $4, $5, $6, $7, \
             $8, $9, $10, $11, $12)",
        ),
        scans,
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut outcomes: Vec<Option<BatchOutcome>> = vec![None; scans.len()];
    let mut allowed: Vec<(usize, RulesState)> = Vec::new();
    let mut entitlements_taken = HashSet::new();
    for (item, outcome, answer) in rows {
        let index = usize::try_from(item)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .filter(|index| *index < scans.len())
            .ok_or_else(|| sqlx::Error::Protocol(format!("stile_redeem_batch item {item}")))?;
        outcomes[index] = Some(match (outcome.as_str(), answer) {
            ("redeemed", Some(answer)) => BatchOutcome::Redeemed(answer),
            ("decide", _) => BatchOutcome::Decide,
            ("replay", _) => BatchOutcome::Replay,
            ("rules", Some(state)) => {
                let state: RulesState = serde_json::from_value(state).map_err(|error| {
                    sqlx::Error::Protocol(format!("stile_redeem_batch rules state: {error}"))
                })?;
                // One decision per entitlement a batch: a second scan of it would be decided
                // on a state the first one changes.
                let first = entitlements_taken.insert(state.entitlement);
                match state.decide(scans[index]) {
                    Some(Decision::Redeem { .. }) if first => {
                        allowed.push((index, state));
                        continue;
                    }
                    // A refusal is decided and recorded on the transaction path.
                    _ => BatchOutcome::Decide,
                }
            }
            (other, _) => {
                return Err(sqlx::Error::Protocol(format!(
                    "stile_redeem_batch outcome {other}"
                )))
            }
        });
    }
    if !allowed.is_empty() {
        let allowed_scans: Vec<&BatchScan> = allowed.iter().map(|(i, _)| scans[*i]).collect();
        let written: Vec<(i64, Option<serde_json::Value>)> = bind_scans(
            sqlx::query_as(
                "SELECT x.i, stile_redeem_write(x.scan_id, x.merchant_id, x.operator_id, \
                        x.device_pk, x.location_id, x.token_sha256, x.function_code, x.jti, \
                        x.ticket_code, x.source, x.now, x.answer, x.ticket, x.entitlement, \
                        x.status, x.order_id) \
                 FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], \
                             $6::bytea[], $7::text[], $8::text[], $9::text[], $10::text[], \
                             $11::timestamptz[], $12::jsonb[], $13::bigint[], $14::bigint[], \
                             $15::text[], $16::bigint[], $17::bigint[]) \
                      AS x(scan_id, merchant_id, operator_id, device_pk, location_id, \
                           token_sha256, function_code, jti, ticket_code, source, now, answer, \
                           ticket, entitlement, status, order_id, i)",
            ),
            &allowed_scans,
        )
        .bind(allowed.iter().map(|(_, s)| s.ticket).collect::<Vec<_>>())
        .bind(
            allowed
                .iter()
                .map(|(_, s)| s.entitlement)
                .collect::<Vec<_>>(),
        )
        .bind(
            allowed
                .iter()
                .map(|(_, s)| s.status.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(allowed.iter().map(|(_, s)| s.order).collect::<Vec<_>>())
        .bind(
            allowed
                .iter()
                .map(|(i, _)| i64::try_from(*i).unwrap_or(i64::MAX))
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await?;
        for (index, answer) in written {
            let slot = usize::try_from(index)
                .ok()
                .and_then(|index| outcomes.get_mut(index))
                .ok_or_else(|| sqlx::Error::Protocol(format!("stile_redeem_write item {index}")))?;
            *slot = Some(match answer {
                Some(answer) => BatchOutcome::Redeemed(answer),
                None => BatchOutcome::Replay,
            });
        }
    }
    tx.commit().await?;
    Ok(outcomes)
}
