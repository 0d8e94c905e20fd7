//! Group commit of plain successful scans: the scans that arrive while a redemption
//! statement runs are redeemed together by the next one (`stile_redeem_batch`, migrations
//! 0014, 0016, 0018, 0019 and 0021), in one commit and one WAL flush. The function works set
//! by set: a fixed number of SQL statements per batch, not per scan.
//!
//! A scan is handed to a queue; `workers` tasks each take the first waiting scan and every
//! other one queued behind it (at most `max_batch`), run one statement, and answer each
//! scan. Nobody waits for a batch to fill: under light load a batch is one scan, under
//! heavy load it is what queued during the previous statement, so the wait a scan adds is
//! at most one statement's time and the flushes per second fall as the load rises.
//!
//! A batch is one round trip ([`Commit::Statement`]): `CALL stile_redeem_batch_autocommit`,
//! a transaction of its own. That procedure starts with a `COMMIT`, which PostgreSQL refuses
//! inside a transaction block, so it can never run inside a transaction an earlier,
//! cancelled request left open on the connection (it would answer SUCCESS for writes that
//! commit later, or never): refused, it has locked and written nothing, its connection is
//! closed, and its scans are decided again on the transaction path. (Every transaction of
//! the server starts with `db::begin`, which leaves none open; this is the guard that does
//! not depend on it.)
//!
//! A scan of an entitlement with check-in rules is read by that statement without its
//! ticket's lock and not written: it answers `rules` with the state the decision needs (the
//! rules, the uses they read, the ticket's feed stamp). The worker decides it with the
//! shared `decide` (at most one scan per ticket a batch; a scan `decide` does not redeem
//! goes to the transaction path) and writes what it allows with
//! `CALL stile_write_decided_autocommit`, a second transaction of its own, which locks the
//! tickets and writes a scan only if its ticket's feed stamp has not moved since the read
//! (any change to the ticket, its entitlements or its passages moves it); a scan whose
//! ticket changed goes to the transaction path. No lock is held between the two.
//!
//! A batch with an entry at a venue runs in an explicit transaction instead
//! ([`Commit::Transaction`]): the statement locks every ticket and reads the venue entries'
//! state (the ticket's latest passage there), the worker locks the batch's venues (after
//! all of its tickets, in id order), decides each entry against the venue's running count,
//! and writes what it allows with `stile_write_allowed` (the redemption, its passage, the
//! count), before the commit: one round trip more at each end, still one WAL flush, and a
//! venue's entries of one batch take its count once.
//!
//! Exactly once holds per scan as on the one-scan path: a scan the statement does not
//! redeem writes nothing (no scan's writes depend on another's), each statement commits or
//! rolls back as a whole, and a scan is answered only after its commit. A batch that fails
//! with a transient error (deadlock, serialization) rolled back: each of its scans is
//! decided again on the transaction path. Any other failure is every scan's failure, as
//! an unknown commit outcome must be: the client retries with its scan_id.

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
    /// The ticket's feed stamp (`sync_xid`) as read: an autocommitted batch writes the scan
    /// only if it has not moved.
    #[serde(default)]
    stamp: Option<String>,
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

/// How a batch commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// `CALL stile_redeem_batch_autocommit`, then `CALL stile_write_decided_autocommit`
    /// for the scans with rules that `decide` allows, if there are any: one or two round
    /// trips, each a transaction of its own (refused inside a transaction block). The scans
    /// with rules are read without their tickets' locks (the second call writes one only if
    /// its ticket's feed stamp has not moved since). An entry at a venue is answered
    /// `Decide` (no venue is locked).
    Statement,
    /// An explicit transaction: the statement, the venues' locks, the writes of what
    /// `decide` allows, the commit.
    Transaction,
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

/// How the batch of `scans` commits: a transaction when one of them is an entry at a venue.
fn commit_for(scans: &[&BatchScan]) -> Commit {
    if scans.iter().any(|scan| scan.venue_id.is_some()) {
        Commit::Transaction
    } else {
        Commit::Statement
    }
}

async fn run_batch(pool: &PgPool, batch: Vec<Job>) {
    let scans: Vec<&BatchScan> = batch.iter().map(|job| &job.scan).collect();
    let result = redeem_batch(pool, &scans, commit_for(&scans)).await;
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
            let error = if crate::db::redemption_may_rerun(&error) || refused_in_a_block(&error) {
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

/// The statement of a batch, its rows: position (from 1), outcome, answer.
type BatchRows = Vec<(i32, String, Option<serde_json::Value>)>;

/// `stile_redeem_batch` over `scans`, in the caller's transaction (every ticket locked).
fn batch_statement<'q>(
    scans: &[&'q BatchScan],
) -> sqlx::query::QueryAs<
    'q,
    sqlx::Postgres,
    (i32, String, Option<serde_json::Value>),
    sqlx::postgres::PgArguments,
> {
    bind_scans(
        sqlx::query_as(
            "SELECT item, outcome, answer FROM stile_redeem_batch($1, $2, $3, $4, $5, $6, $7, \
             $8, $9, $10, $11, $12, $13, false)",
        ),
        scans,
    )
    .bind(scans.iter().map(|s| s.venue_id).collect::<Vec<_>>())
}

/// The procedures' answer: three arrays, one element per row (item, outcome, answer).
type ProcedureRows<I> = (Vec<I>, Vec<String>, Vec<Option<serde_json::Value>>);

/// `stile_redeem_batch` over `scans` autocommitted, scans with rules read unlocked
/// ([`Commit::Statement`]): `CALL stile_redeem_batch_autocommit` (migration 0021), which
/// PostgreSQL refuses inside a transaction block before it locks or writes anything.
async fn batch_autocommitted(
    pool: &PgPool,
    scans: &[&BatchScan],
) -> Result<BatchRows, sqlx::Error> {
    let query = bind_scans(
        sqlx::query_as(
            "CALL stile_redeem_batch_autocommit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
             $12, $13, NULL, NULL, NULL)",
        ),
        scans,
    )
    .bind(scans.iter().map(|s| s.venue_id).collect::<Vec<_>>());
    let (items, outcomes, answers): ProcedureRows<i32> = call_alone(pool, query).await?;
    rows_of(items, outcomes, answers, "stile_redeem_batch_autocommit")
}

/// Runs an autocommitting procedure on a connection of its own. A connection on which it is
/// refused (`refused_in_a_block`) was inside a transaction nobody knew of: it is closed
/// rather than handed back to the pool.
async fn call_alone<'q, O>(
    pool: &PgPool,
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
) -> Result<O, sqlx::Error>
where
    O: Send + Unpin + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    let mut connection = pool.acquire().await?;
    match query.fetch_one(&mut *connection).await {
        Err(error) if refused_in_a_block(&error) => {
            tracing::warn!(%error, "an autocommitted batch met a connection inside a transaction: closed");
            let _ = connection.close().await;
            Err(error)
        }
        result => result,
    }
}

/// The autocommitting procedures' refusal to run inside a transaction block
/// (`invalid_transaction_termination` at their first `COMMIT`): nothing was locked or
/// written, the scans can be decided again.
fn refused_in_a_block(error: &sqlx::Error) -> bool {
    crate::db::sqlstate(error).as_deref() == Some("2D000")
}

/// A procedure's three arrays as rows; they must be of one length.
fn rows_of<I>(
    items: Vec<I>,
    outcomes: Vec<String>,
    answers: Vec<Option<serde_json::Value>>,
    procedure: &str,
) -> Result<Vec<(I, String, Option<serde_json::Value>)>, sqlx::Error> {
    if items.len() != outcomes.len() || items.len() != answers.len() {
        return Err(sqlx::Error::Protocol(format!(
            "{procedure}: arrays of different lengths"
        )));
    }
    Ok(items
        .into_iter()
        .zip(outcomes)
        .zip(answers)
        .map(|((item, outcome), answer)| (item, outcome, answer))
        .collect())
}

/// One batch. With [`Commit::Transaction`] (a batch with an entry at a venue):
/// `stile_redeem_batch`, then the venues of its entries locked, then the scans with rules or
/// at a venue that `decide` allows written by `stile_write_allowed`, in one transaction.
/// With [`Commit::Statement`]: `stile_redeem_batch` autocommitted, then, when it read scans
/// with rules, what `decide` allows of them written by `stile_write_decided` (autocommitted
/// too: it writes a scan only if its ticket has not changed since it was read). The outcome
/// of each scan, by position.
pub async fn redeem_batch(
    pool: &PgPool,
    scans: &[&BatchScan],
    commit: Commit,
) -> Result<Vec<Option<BatchOutcome>>, sqlx::Error> {
    if commit == Commit::Statement {
        let rows: BatchRows = batch_autocommitted(pool, scans).await?;
        let (mut outcomes, to_decide) = read_outcomes(scans, rows)?;
        // No venue is locked: an entry at one (the caller sends none this way) goes to the
        // transaction path.
        let allowed = decide_scans(scans, to_decide, &mut HashMap::new(), &mut outcomes);
        if !allowed.is_empty() {
            let written = match write_decided(pool, scans, &allowed).await {
                Ok(written) => written,
                // Rolled back (the first statement's redemptions stand): the transaction
                // path decides these scans. Any other failure fails the whole batch, as an
                // unknown outcome must.
                Err(error)
                    if crate::db::redemption_may_rerun(&error) || refused_in_a_block(&error) =>
                {
                    for allowed in &allowed {
                        outcomes[allowed.index] = Some(BatchOutcome::Decide);
                    }
                    return Ok(outcomes);
                }
                Err(error) => return Err(error),
            };
            for (index, outcome, answer) in written {
                let outcome = match (outcome.as_str(), answer) {
                    ("redeemed", Some(answer)) => BatchOutcome::Redeemed(answer),
                    ("replay", _) => BatchOutcome::Replay,
                    _ => BatchOutcome::Decide,
                };
                set_outcome(&mut outcomes, index, outcome, "stile_write_decided")?;
            }
        }
        return Ok(outcomes);
    }
    let mut tx = crate::db::begin(pool).await?;
    let rows: BatchRows = batch_statement(scans).fetch_all(&mut *tx).await?;
    let (mut outcomes, to_decide) = read_outcomes(scans, rows)?;
    let mut venues = lock_venues(&mut tx, scans, &to_decide).await?;
    let allowed = decide_scans(scans, to_decide, &mut venues, &mut outcomes);
    if !allowed.is_empty() {
        for (index, answer) in write_allowed(&mut tx, scans, &allowed).await? {
            let outcome = match answer {
                Some(answer) => BatchOutcome::Redeemed(answer),
                None => BatchOutcome::Replay,
            };
            set_outcome(&mut outcomes, index, outcome, "stile_write_allowed")?;
        }
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// Sets the outcome of the scan at `index` (0-based, as a write statement answers it).
fn set_outcome(
    outcomes: &mut [Option<BatchOutcome>],
    index: i64,
    outcome: BatchOutcome,
    statement: &str,
) -> Result<(), sqlx::Error> {
    let slot = usize::try_from(index)
        .ok()
        .and_then(|index| outcomes.get_mut(index))
        .ok_or_else(|| sqlx::Error::Protocol(format!("{statement} item {index}")))?;
    *slot = Some(outcome);
    Ok(())
}

/// Decides the scans the statement read (`to_decide`, in its order: by ticket) with the
/// shared `decide`, entries at a venue against its running count in `venues`: what it
/// allows, at most one per ticket. Every other scan is answered `Decide` in `outcomes`.
fn decide_scans(
    scans: &[&BatchScan],
    to_decide: Vec<(usize, RulesState)>,
    venues: &mut HashMap<i64, LockedVenue>,
    outcomes: &mut [Option<BatchOutcome>],
) -> Vec<Allowed> {
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
    allowed
}

/// Each scan's outcome from the statement's rows, by position, and the `rules` rows (the
/// state `decide` needs), whose outcome is left empty, in the statement's order.
#[allow(clippy::type_complexity)]
fn read_outcomes(
    scans: &[&BatchScan],
    rows: BatchRows,
) -> Result<(Vec<Option<BatchOutcome>>, Vec<(usize, RulesState)>), sqlx::Error> {
    let mut outcomes: Vec<Option<BatchOutcome>> = vec![None; scans.len()];
    let mut to_decide = Vec::new();
    for (item, outcome, answer) in rows {
        let index = usize::try_from(item)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .filter(|index| *index < scans.len())
            .ok_or_else(|| sqlx::Error::Protocol(format!("stile_redeem_batch item {item}")))?;
        outcomes[index] = match (outcome.as_str(), answer) {
            ("redeemed", Some(answer)) => Some(BatchOutcome::Redeemed(answer)),
            ("decide", _) => Some(BatchOutcome::Decide),
            ("replay", _) => Some(BatchOutcome::Replay),
            ("rules", Some(state)) => {
                let state: RulesState = serde_json::from_value(state).map_err(|error| {
                    sqlx::Error::Protocol(format!("stile_redeem_batch rules state: {error}"))
                })?;
                to_decide.push((index, state));
                None
            }
            (other, _) => {
                return Err(sqlx::Error::Protocol(format!(
                    "stile_redeem_batch outcome {other}"
                )))
            }
        };
    }
    Ok((outcomes, to_decide))
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

/// Binds what both write statements take after the scans' twelve arrays: the ticket, the
/// entitlement, the status and the order read of each allowed scan, and its position.
fn bind_allowed<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    allowed: &'q [Allowed],
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    query
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
}

/// Writes the redemptions `decide` allowed of an autocommitted batch's scans with rules,
/// each only if its ticket's feed stamp is still the one read: each scan's position, its
/// outcome (`redeemed`, `replay`, `decide`) and its stored answer.
async fn write_decided(
    pool: &PgPool,
    scans: &[&BatchScan],
    allowed: &[Allowed],
) -> Result<Vec<(i64, String, Option<serde_json::Value>)>, sqlx::Error> {
    let allowed_scans: Vec<&BatchScan> = allowed.iter().map(|a| scans[a.index]).collect();
    let query = bind_allowed(
        bind_scans(
            sqlx::query_as(
                "CALL stile_write_decided_autocommit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
                 $11, $12, $13, $14, $15, $16, $17, $18, NULL, NULL, NULL)",
            ),
            &allowed_scans,
        ),
        allowed,
    )
    .bind(
        allowed
            .iter()
            .map(|a| a.state.stamp.as_deref())
            .collect::<Vec<_>>(),
    );
    let (items, outcomes, answers): ProcedureRows<i64> = call_alone(pool, query).await?;
    rows_of(items, outcomes, answers, "stile_write_decided_autocommit")
}

/// Writes the allowed redemptions (with their passages and changes to their venues'
/// counts): each scan's position and its stored answer (`None`: its scan_id was taken).
async fn write_allowed(
    tx: &mut sqlx::PgConnection,
    scans: &[&BatchScan],
    allowed: &[Allowed],
) -> Result<Vec<(i64, Option<serde_json::Value>)>, sqlx::Error> {
    let allowed_scans: Vec<&BatchScan> = allowed.iter().map(|a| scans[a.index]).collect();
    bind_allowed(
        bind_scans(
            sqlx::query_as(
                "SELECT item, answer FROM stile_write_allowed($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                 $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)",
            ),
            &allowed_scans,
        ),
        allowed,
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
