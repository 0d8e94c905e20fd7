//! Group commit of plain successful scans: the scans that arrive while a redemption
//! statement runs are redeemed together by the next one (`stile_redeem_batch`, migrations
//! 0014, 0016, 0018, 0019, 0021 and 0022), in one transaction and one WAL flush. The
//! function works set by set: a fixed number of SQL statements per batch, not per scan.
//!
//! A scan is handed to a queue; `workers` tasks each take the first waiting scan and every
//! other one queued behind it (at most `max_batch`), run one statement, and answer each
//! scan. Nobody waits for a batch to fill: under light load a batch is one scan, under
//! heavy load it is what queued during the previous statement, so the wait a scan adds is
//! at most one statement's time and the flushes per second fall as the load rises. The
//! workers run on a thread of their own, with a runtime and connections of their own
//! ([`GroupCommit::start`] says why).
//!
//! A scan of an entitlement with check-in rules, and an entry at a venue, is locked and
//! read by the statement but not written: it answers `rules` with the state the decision
//! needs (the rules, the uses they read, the ticket's latest passage at the venue). The
//! worker locks the batch's venues (after all of its tickets, in id order), decides each
//! such scan with the shared `decide` against the venue's running count (at most one scan
//! per ticket a batch; a scan `decide` does not redeem, or a second one of a ticket, goes
//! to the transaction path), and writes what it allows with
//! `stile_write_allowed` (migration 0018: the redemption, its passage, the count), in the
//! same transaction, before the commit. So the batch runs in an explicit transaction: one
//! round trip more at each end, still one WAL flush, and a venue's entries of one batch
//! take its count once. (Migration 0021 made a batch one autocommitted `CALL`, its scans
//! with rules read unlocked and written by a second call if their tickets had not changed;
//! once JIT compilation was off (0022) it measured no faster for plain scans and slower
//! with rules than this transaction, so the batch is a transaction again and 0023 drops
//! those procedures.)
//!
//! Exactly once holds per scan as on the one-scan path: a scan the statement does not
//! redeem writes nothing (no scan's writes depend on another's), the statement commits or
//! rolls back as a whole, and a scan is answered only after the commit. A batch that fails
//! with a transient error (deadlock, serialization) rolled back: each of its scans is
//! decided again on the transaction path. Any other failure is every scan's failure, as
//! an unknown commit outcome must be: the client retries with its scan_id.

use crate::db::PoolLimits;
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use stile_shared::decision::{decide, Decision, DecisionInput};
use stile_shared::token::QrClaims;
use stile_shared::venue::{self, Passage, VenueSnapshot};
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
    /// For an entry at a venue (a scan of its entry function at one of its locations): the
    /// venue, whose capacity the scan is decided against.
    pub venue_id: Option<i64>,
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
    /// For an entry at a venue: the venue, and the ticket's latest passage there.
    #[serde(default)]
    venue: Option<i64>,
    #[serde(default)]
    passage: Option<Passage>,
}

impl RulesState {
    /// The shared decision over what was read: the statement has already found the ticket's
    /// current QR to be this token, the entitlement present with uses left and this jti not
    /// redeemed, so the snapshot holds just that entitlement. `None` when the state cannot
    /// be read as a snapshot (the transaction path decides then).
    fn decide(&self, scan: &BatchScan, venue: Option<&VenueSnapshot>) -> Option<Decision> {
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
            zone: self.zone()?,
            venue,
        }))
    }

    fn zone(&self) -> Option<MerchantZone> {
        MerchantZone::parse(&self.time_zone)
    }
}

/// A venue of the batch under its lock: its capacity and its count of the day `today`.
struct LockedVenue {
    today: chrono::NaiveDate,
    capacity: Option<i64>,
    inside: i64,
}

/// A redemption the worker allows: its scan, what was read, and for an entry at a venue
/// its change to the count on the venue's day.
struct Allowed {
    index: usize,
    state: RulesState,
    passage: Option<(i64, chrono::NaiveDate)>,
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
    /// Starts the workers on a thread of their own, with a runtime and connections of their
    /// own (`limits`, one connection per worker, on `database_url`); `on_batch` is told each
    /// batch's size. Returns once that pool has opened its first connection.
    ///
    /// Why a thread: the workers are the serial part of every redemption, and each batch
    /// is three or four round trips. On the server's runtime a worker woken by its
    /// connection's answer waits behind the HTTP tasks of busy worker threads, which look
    /// at their sockets only every few dozen tasks. On its own thread, with its connections'
    /// I/O on its own runtime, it is woken at once (measured with `scripts/bench`, 32
    /// clients: 3,369 to 4,806 scans/s, p99 20.0 to 10.7 ms; ARCHITECTURE.md).
    pub async fn start(
        database_url: &str,
        limits: PoolLimits,
        settings: GroupCommitSettings,
        on_batch: impl Fn(usize) + Send + Sync + 'static,
    ) -> Result<GroupCommit, sqlx::Error> {
        let workers = settings.workers.max(1);
        let max_batch = settings.max_batch.max(1);
        let (jobs, receiver) = mpsc::channel::<Job>(max_batch * workers * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let on_batch: Arc<dyn Fn(usize) + Send + Sync> = Arc::new(on_batch);
        let limits = PoolLimits {
            max_connections: u32::try_from(workers).unwrap_or(u32::MAX),
            ..limits
        };
        let database_url = database_url.to_owned();
        let (ready, opened) = oneshot::channel::<Result<(), sqlx::Error>>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(sqlx::Error::Io)?;
        std::thread::Builder::new()
            .name("group-commit".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let pool = match crate::db::connect_with(&database_url, limits).await {
                        Ok(pool) => {
                            let _ = ready.send(Ok(()));
                            pool
                        }
                        Err(error) => {
                            let _ = ready.send(Err(error));
                            return;
                        }
                    };
                    let mut running = Vec::with_capacity(workers);
                    for _ in 0..workers {
                        running.push(tokio::spawn(work(
                            pool.clone(),
                            receiver.clone(),
                            max_batch,
                            on_batch.clone(),
                        )));
                    }
                    // Until the queue's last sender is gone (the server stopped serving).
                    for worker in running {
                        let _ = worker.await;
                    }
                    pool.close().await;
                })
            })
            .map_err(sqlx::Error::Io)?;
        match opened.await {
            Ok(result) => result.map(|()| GroupCommit { jobs }),
            Err(_) => Err(sqlx::Error::PoolClosed),
        }
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

/// One worker: takes the first waiting scan and every one queued behind it (at most
/// `max_batch`), redeems them as one batch, answers each, and again, until the queue closes.
async fn work(
    pool: PgPool,
    receiver: Arc<Mutex<mpsc::Receiver<Job>>>,
    max_batch: usize,
    on_batch: Arc<dyn Fn(usize) + Send + Sync>,
) {
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
/// `stile_redeem_batch` and `stile_write_allowed` take them.
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

/// One batch: `stile_redeem_batch`, then the venues of its entries locked, then the scans
/// with rules or at a venue that `decide` allows written by `stile_write_allowed`, in one
/// transaction. The outcome of each scan, by position.
pub async fn redeem_batch(
    pool: &PgPool,
    scans: &[&BatchScan],
) -> Result<Vec<Option<BatchOutcome>>, sqlx::Error> {
    let mut tx = crate::db::begin(pool).await?;
    let rows: Vec<(i32, String, Option<serde_json::Value>)> = bind_scans(
        sqlx::query_as(
            "SELECT item, outcome, answer FROM stile_redeem_batch($1, $2, $3, $4, $5, $6, $7, \
             $8, $9, $10, $11, $12, $13, false)",
        ),
        scans,
    )
    .bind(scans.iter().map(|s| s.venue_id).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    let mut outcomes: Vec<Option<BatchOutcome>> = vec![None; scans.len()];
    // The scans to decide here, in the statement's order (by ticket).
    let mut to_decide: Vec<(usize, RulesState)> = Vec::new();
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
                to_decide.push((index, state));
                continue;
            }
            (other, _) => {
                return Err(sqlx::Error::Protocol(format!(
                    "stile_redeem_batch outcome {other}"
                )))
            }
        });
    }
    let mut venues = lock_venues(&mut tx, scans, &to_decide).await?;
    let mut allowed: Vec<Allowed> = Vec::new();
    let mut tickets_taken = HashSet::new();
    for (index, state) in to_decide {
        let scan = scans[index];
        // One decision per ticket a batch: a second scan of it would be decided on a state
        // the first one changes, and `stile_redeem_writes` writes a ticket once.
        let first = tickets_taken.insert(state.ticket);
        let at_venue = match state.venue {
            None => None,
            Some(venue_id) => {
                let today = state
                    .zone()
                    .and_then(|zone| Some((zone, zone.local_date(scan.now.timestamp())?)));
                match (venues.get_mut(&venue_id), today) {
                    // The scan is of the day the venue's count was read for.
                    (Some(locked), Some((zone, today))) if locked.today == today => {
                        let now = scan.now.timestamp();
                        let snapshot = VenueSnapshot {
                            presence: venue::presence(state.passage, now, zone),
                            inside: locked.inside,
                            capacity: locked.capacity,
                        };
                        Some((locked, snapshot))
                    }
                    _ => {
                        outcomes[index] = Some(BatchOutcome::Decide);
                        continue;
                    }
                }
            }
        };
        let decision = state.decide(scan, at_venue.as_ref().map(|(_, snapshot)| snapshot));
        match decision {
            Some(Decision::Redeem { .. }) if first => {
                let passage = at_venue.map(|(locked, snapshot)| {
                    let change = i64::from(snapshot.takes_place());
                    locked.inside += change;
                    (change, locked.today)
                });
                allowed.push(Allowed {
                    index,
                    state,
                    passage,
                });
            }
            // A refusal (and a re-entry) is decided and recorded on the transaction path.
            _ => outcomes[index] = Some(BatchOutcome::Decide),
        }
    }
    if !allowed.is_empty() {
        for (index, answer) in write_allowed(&mut tx, scans, &allowed).await? {
            let slot = usize::try_from(index)
                .ok()
                .and_then(|index| outcomes.get_mut(index))
                .ok_or_else(|| {
                    sqlx::Error::Protocol(format!("stile_write_allowed item {index}"))
                })?;
            *slot = Some(match answer {
                Some(answer) => BatchOutcome::Redeemed(answer),
                None => BatchOutcome::Replay,
            });
        }
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// Locks the venues of the batch's entries (after every ticket of the batch, in id order:
/// the transaction path, too, takes a venue's row only after its ticket's) and reads each
/// one's capacity and its count of the merchant-local day of the batch's first entry there.
async fn lock_venues(
    tx: &mut sqlx::PgConnection,
    scans: &[&BatchScan],
    to_decide: &[(usize, RulesState)],
) -> Result<HashMap<i64, LockedVenue>, sqlx::Error> {
    let mut days: Vec<(i64, chrono::NaiveDate)> = Vec::new();
    for (index, state) in to_decide {
        let (Some(venue_id), Some(zone)) = (state.venue, state.zone()) else {
            continue;
        };
        if days.iter().any(|(id, _)| *id == venue_id) {
            continue;
        }
        if let Some(today) = zone.local_date(scans[*index].now.timestamp()) {
            days.push((venue_id, today));
        }
    }
    if days.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(i64, Option<i64>, i64)> = sqlx::query_as(
        "SELECT v.id, v.capacity, CASE WHEN v.inside_on = x.today THEN v.inside ELSE 0 END \
         FROM venues v JOIN unnest($1::bigint[], $2::date[]) AS x(id, today) ON x.id = v.id \
         ORDER BY v.id FOR UPDATE OF v",
    )
    .bind(days.iter().map(|(id, _)| *id).collect::<Vec<_>>())
    .bind(days.iter().map(|(_, today)| *today).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, capacity, inside)| {
            let today = days.iter().find(|(venue, _)| *venue == id)?.1;
            Some((
                id,
                LockedVenue {
                    today,
                    capacity,
                    inside,
                },
            ))
        })
        .collect())
}

/// Writes the allowed redemptions (with their passages and changes to their venues'
/// counts): each scan's position and its stored answer (`None`: its scan_id was taken).
async fn write_allowed(
    tx: &mut sqlx::PgConnection,
    scans: &[&BatchScan],
    allowed: &[Allowed],
) -> Result<Vec<(i64, Option<serde_json::Value>)>, sqlx::Error> {
    let allowed_scans: Vec<&BatchScan> = allowed.iter().map(|a| scans[a.index]).collect();
    bind_scans(
        sqlx::query_as(
            "SELECT item, answer FROM stile_write_allowed($1, $2, $3, $4, $5, $6, $7, $8, $9, \
             $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)",
        ),
        &allowed_scans,
    )
    .bind(allowed.iter().map(|a| a.state.ticket).collect::<Vec<_>>())
    .bind(
        allowed
            .iter()
            .map(|a| a.state.entitlement)
            .collect::<Vec<_>>(),
    )
    .bind(
        allowed
            .iter()
            .map(|a| a.state.status.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(allowed.iter().map(|a| a.state.order).collect::<Vec<_>>())
    .bind(
        allowed
            .iter()
            .map(|a| i64::try_from(a.index).unwrap_or(i64::MAX))
            .collect::<Vec<_>>(),
    )
    .bind(
        allowed
            .iter()
            .map(|a| a.passage.and(a.state.venue))
            .collect::<Vec<_>>(),
    )
    .bind(
        allowed
            .iter()
            .map(|a| {
                a.passage
                    .map(|(change, _)| i32::try_from(change).unwrap_or(0))
            })
            .collect::<Vec<_>>(),
    )
    .bind(
        allowed
            .iter()
            .map(|a| a.passage.map(|(_, today)| today))
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *tx)
    .await
}
