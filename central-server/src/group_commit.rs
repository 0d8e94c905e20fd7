//! Group commit of plain successful scans: the scans that arrive while a redemption
//! statement runs are redeemed together by the next one (`stile_redeem_batch`, migration
//! 0014), in one transaction, one round trip and one WAL flush.
//!
//! A scan is handed to a queue; `workers` tasks each take the first waiting scan and every
//! other one queued behind it (at most `max_batch`), run one statement, and answer each
//! scan. Nobody waits for a batch to fill: under light load a batch is one scan, under
//! heavy load it is what queued during the previous statement, so the wait a scan adds is
//! at most one statement's time and the flushes per second fall as the load rises.
//!
//! Exactly once holds per scan as on the one-scan path: a scan the statement does not
//! redeem writes nothing (no scan's writes depend on another's), the statement commits or
//! rolls back as a whole, and a scan is answered only after the commit. A batch that fails
//! with a transient error (deadlock, serialization) rolled back: each of its scans is
//! decided again on the transaction path. Any other failure is every scan's failure, as
//! an unknown commit outcome must be: the client retries with its scan_id.

use sqlx::PgPool;
use std::sync::Arc;
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

/// One `stile_redeem_batch` statement: the outcome of each scan, by position.
pub async fn redeem_batch(
    pool: &PgPool,
    scans: &[&BatchScan],
) -> Result<Vec<Option<BatchOutcome>>, sqlx::Error> {
    let rows: Vec<(i32, String, Option<serde_json::Value>)> = sqlx::query_as(
        "SELECT item, outcome, answer FROM stile_redeem_batch($1, $2, $3, $4, $5, $6, $7, $8, \
         $9, $10, $11, $12)",
    )
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
    .fetch_all(pool)
    .await?;
    let mut outcomes: Vec<Option<BatchOutcome>> = vec![None; scans.len()];
    for (item, outcome, answer) in rows {
        let slot = usize::try_from(item)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|index| outcomes.get_mut(index))
            .ok_or_else(|| sqlx::Error::Protocol(format!("stile_redeem_batch item {item}")))?;
        *slot = Some(match (outcome.as_str(), answer) {
            ("redeemed", Some(answer)) => BatchOutcome::Redeemed(answer),
            ("decide", _) => BatchOutcome::Decide,
            ("replay", _) => BatchOutcome::Replay,
            (other, _) => {
                return Err(sqlx::Error::Protocol(format!(
                    "stile_redeem_batch outcome {other}"
                )))
            }
        });
    }
    Ok(outcomes)
}
