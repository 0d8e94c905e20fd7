//! The redemption core of `POST /venue/scan`: one transaction per scan, under row locks,
//! deciding with the shared decision function.
//!
//! A plain successful QR scan is group-committed (`group_commit`): `stile_redeem_batch` does
//! steps 1 to 5 below for a SUCCESS, many scans to one statement, writes nothing for a scan
//! whose answer could be anything else, which is then decided on the transaction path, and
//! hands the scans of entitlements with check-in rules back to be decided with `decide` in
//! the batch's transaction. Its SQL condition for SUCCESS is `decide`'s, checked by a
//! property test.
//!
//! Inside the transaction, in this order:
//! 1. claim the `scan_id` (a retry, even one racing the first request, waits on the unique
//!    index and then gets the stored answer back — only if it comes from the same merchant
//!    and the same operator or device, [`ScanOwner::may_replay_to`]);
//! 2. the checks that need no ticket (expiry, merchant), so another merchant's ticket is
//!    never read or locked;
//! 3. lock the ticket (`FOR NO KEY UPDATE`) and its entitlement rows (`FOR UPDATE`), read
//!    this jti's redemptions, and decide;
//! 4. on success: insert the redemption event, decrement, mark the ticket `USED` when every
//!    entitlement is exhausted;
//! 5. write the audit row of a rejection (a redemption's audit record is its log row) and
//!    the stored answer; commit.
//!
//! Locking the ticket row first serialises every scan of one ticket (and QR issuance for
//! it), so "all entitlements exhausted" is judged without races; scans of different
//! tickets never wait for each other. A serialization failure, deadlock or a unique
//! violation on (jti, function_code) re-runs the whole transaction (bounded), where the
//! rerun decides `ALREADY_REDEEMED` from the committed row.

use crate::db;
use crate::error::AppError;
use crate::group_commit::{BatchError, BatchOutcome, BatchScan, GroupCommit};
use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use std::sync::Arc;
use stile_shared::api::{EntitlementView, OperatorRef, RedemptionView, ScanResponse, TicketView};
use stile_shared::decision::{check_decision_time, check_token, decide, Decision, DecisionInput};
use stile_shared::token::{Jti, QrClaims, TokenError, VerifiedToken};
use stile_shared::venue::{decide_exit, presence, Direction, ExitDecision, Passage, Presence};
use stile_shared::{
    Channel, DecisionCode, EntitlementRules, EntitlementSnapshot, FunctionCode, Lang, MerchantZone,
    TicketSnapshot, TicketStatus, TokenPolicy, VenueSnapshot,
};
use uuid::Uuid;

/// How many times a transaction is run before a transient failure is surfaced.
pub const MAX_ATTEMPTS: u32 = 8;

/// Which path a redemption came through (the reconciliation log's `source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedemptionSource {
    /// `POST /venue/scan`: a gate.
    Venue,
    /// `POST /merchant/tickets/scan`: the merchant console.
    Merchant,
    /// Decided by a gate while offline, uploaded later.
    Offline,
}

impl RedemptionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RedemptionSource::Venue => "venue",
            RedemptionSource::Merchant => "merchant",
            RedemptionSource::Offline => "offline",
        }
    }
}

/// A device and the location it is bound to.
#[derive(Debug, Clone)]
pub struct DeviceAt {
    pub device_pk: i64,
    pub device_id: String,
}

/// A location of the merchant.
#[derive(Debug, Clone)]
pub struct LocationAt {
    pub location_id: i64,
    pub venue_code: String,
    /// The venue the location belongs to, if any.
    pub venue: Option<VenueRef>,
}

/// A venue, as a scan at one of its locations needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VenueRef {
    pub venue_id: i64,
    /// Scans of this function at the venue's locations are its entries.
    pub entry_function: FunctionCode,
}

/// A device bound to a location, as [`bind_device`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundDevice {
    pub device_pk: i64,
    pub location_id: i64,
    pub venue: Option<VenueRef>,
}

/// The venue of a location, if it belongs to one.
pub async fn venue_of_location(
    pool: &PgPool,
    location_id: i64,
) -> Result<Option<VenueRef>, sqlx::Error> {
    let row: Option<(i64, String)> = sqlx::query_as(
        "SELECT v.id, v.entry_function FROM locations l JOIN venues v ON v.id = l.venue_id          WHERE l.id = $1",
    )
    .bind(location_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(venue_id, function)| venue_ref(venue_id, &function)))
}

fn venue_ref(venue_id: i64, entry_function: &str) -> Option<VenueRef> {
    Some(VenueRef {
        venue_id,
        entry_function: FunctionCode::parse(entry_function).ok()?,
    })
}

/// Who is scanning, where: the operator (from the JWT), the device (gates) and the
/// location (gates always; the merchant console when it names one).
#[derive(Debug, Clone)]
pub struct ScanContext {
    pub merchant_id: i64,
    pub merchant_code: String,
    pub operator_id: i64,
    pub operator_username: String,
    pub device: Option<DeviceAt>,
    pub location: Option<LocationAt>,
    pub source: RedemptionSource,
}

/// What is being redeemed.
#[derive(Debug, Clone)]
pub enum ScanSubject {
    /// A QR token as scanned, with the outcome of its verification.
    Token(Result<VerifiedToken, TokenError>),
    /// A ticket of the operator's merchant, redeemed under its current jti (order-code
    /// scans of the merchant console; the caller makes sure the ticket has a current QR).
    /// A QR scan and an order scan of one ticket block each other exactly as two QR
    /// scans do, because both redeem under the same (jti, function_code).
    Ticket { ticket_code: String },
}

/// One scan to decide.
#[derive(Debug, Clone)]
pub struct ScanCommand {
    /// Digest of the scanned token (or ticket code): a retried scan_id must match it.
    pub token_sha256: [u8; 32],
    pub subject: ScanSubject,
    pub function_code: FunctionCode,
    pub scan_id: Option<Uuid>,
    /// The central's clock: `redeemed_at` (and expiry, unless `decided_at` is set); never the
    /// database's clock.
    pub now: DateTime<Utc>,
    /// For an offline decision uploaded later: when the gate decided. Expiry is judged at
    /// that moment, by the clock of the process that decided.
    pub decided_at: Option<DateTime<Utc>>,
    /// How far a gate's clock may be off: an offline decision before the token's `iat` or
    /// after its upload by more than this is `IMPOSSIBLE_TIME`.
    pub clock_tolerance_secs: i64,
    /// An entry (the default) or an exit: an exit needs a location of a venue, and its
    /// `function_code` is the venue's entry function.
    pub direction: Direction,
}

impl ScanCommand {
    /// The digest a retried scan_id must match: of the token, and of the direction for an
    /// exit (a scan_id used for an entry is not an exit's).
    pub fn token_digest(token: &str, direction: Direction) -> [u8; 32] {
        let mut digest = Sha256::new();
        digest.update(token.as_bytes());
        if direction == Direction::Exit {
            digest.update(b"\0exit");
        }
        digest.finalize().into()
    }
}

/// The answer, and whether it was replayed from an earlier request with the same scan_id.
#[derive(Debug, Clone)]
pub struct ScanOutcome {
    pub response: ScanResponse,
    pub replayed: bool,
    /// The jti the decision was about, for logs.
    pub jti: Option<Jti>,
    /// Decided by the group-commit path (`stile_redeem_batch`).
    pub group_commit: bool,
}

/// How long a server trusts a device's venue binding it read: a device revoked or moved
/// by another server is refused within this time (by this server, at once).
pub const DEVICE_BINDING_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// The devices' venue bindings, as read at most [`DEVICE_BINDING_TTL`] ago: otherwise every
/// gate scan would spend a round trip on [`bind_device`].
#[derive(Debug)]
pub struct DeviceBindings {
    read: crate::recent::Recent<(i64, String, String), Option<BoundDevice>>,
}

impl Default for DeviceBindings {
    fn default() -> Self {
        DeviceBindings {
            read: crate::recent::Recent::new(DEVICE_BINDING_TTL),
        }
    }
}

impl DeviceBindings {
    /// [`bind_device`], or what it answered less than the TTL ago.
    pub async fn bind(
        &self,
        pool: &PgPool,
        merchant_id: i64,
        device_id: &str,
        venue_code: &str,
    ) -> Result<Option<BoundDevice>, sqlx::Error> {
        let key = (merchant_id, device_id.to_owned(), venue_code.to_owned());
        if let Some(binding) = self.read.get(&key) {
            return Ok(binding);
        }
        let binding = bind_device(pool, merchant_id, device_id, venue_code).await?;
        self.read.put(key, binding.clone());
        Ok(binding)
    }

    /// Forgets the bindings of a device this server just changed (revoked).
    pub fn forget_device(&self, device_id: &str) {
        self.read.forget_where(|(_, device, _)| device == device_id);
    }
}

/// Looks up the device and checks it belongs to the operator's merchant and stands at
/// `venue_code`. `None` when it does not (the caller answers 403). With it, the venue of
/// its location: a change of venues takes effect within [`DEVICE_BINDING_TTL`] too.
pub async fn bind_device(
    pool: &PgPool,
    merchant_id: i64,
    device_id: &str,
    venue_code: &str,
) -> Result<Option<BoundDevice>, sqlx::Error> {
    let row: Option<(i64, i64, Option<i64>, Option<String>)> = sqlx::query_as(
        "SELECT d.id, l.id, v.id, v.entry_function FROM devices d \
         JOIN locations l ON l.id = d.location_id LEFT JOIN venues v ON v.id = l.venue_id \
         WHERE d.device_id = $1 AND d.merchant_id = $2 AND l.venue_code = $3 AND d.revoked_at IS NULL",
    )
    .bind(device_id)
    .bind(merchant_id)
    .bind(venue_code)
    .fetch_optional(pool)
    .await?;
    Ok(
        row.map(|(device_pk, location_id, venue_id, function)| BoundDevice {
            device_pk,
            location_id,
            venue: venue_id
                .zip(function)
                .and_then(|(id, function)| venue_ref(id, &function)),
        }),
    )
}

/// Where scans are redeemed: the pool, and the group-commit queue of plain successes.
#[derive(Debug, Clone)]
pub struct Redeemer {
    pub pool: PgPool,
    pub group: GroupCommit,
}

/// Decides and applies one scan, running the transaction again on transient failures.
pub async fn redeem(
    redeemer: &Redeemer,
    policy: TokenPolicy,
    context: &ScanContext,
    command: &ScanCommand,
    on_retry: impl Fn(),
) -> Result<ScanOutcome, AppError> {
    let pool = &redeemer.pool;
    match redeem_in_group(&redeemer.group, policy, context, command).await {
        Ok(GroupOutcome::Redeemed(outcome)) => return Ok(*outcome),
        Ok(GroupOutcome::ScanIdTaken) => return replay(pool, context, command).await,
        Ok(GroupOutcome::NotPlain) => {}
        Err(BatchError::Retry(_)) => on_retry(),
        Err(BatchError::Database(error)) => return Err(AppError::SharedDatabase(error)),
        Err(BatchError::Stopped) => {
            return Err(AppError::Internal(
                "the group-commit workers stopped".into(),
            ))
        }
    }
    let mut attempt = 1;
    // A venue's count is read without its lock and changed as the transaction's last write
    // (see `VenueRead`); when a place went meanwhile, the scan is decided again under it.
    let mut venue_read = VenueRead::Snapshot;
    loop {
        let mut tx = crate::db::begin(pool).await?;
        match attempt_redeem(&mut tx, policy, context, command, venue_read).await {
            Ok(Attempt::Decided(outcome)) => match tx.commit().await {
                Ok(()) => return Ok(*outcome),
                Err(error) if db::redemption_may_rerun(&error) && attempt < MAX_ATTEMPTS => {
                    on_retry();
                    attempt += 1;
                }
                Err(error) => return Err(AppError::Database(error)),
            },
            Ok(Attempt::ScanIdTaken) => {
                drop(tx);
                return replay(pool, context, command).await;
            }
            Err(AttemptError::Database(error))
                if db::redemption_may_rerun(&error) && attempt < MAX_ATTEMPTS =>
            {
                drop(tx);
                on_retry();
                attempt += 1;
                // A short, growing pause lets the winner of the race commit first.
                tokio::time::sleep(std::time::Duration::from_millis(u64::from(attempt) * 2)).await;
            }
            Err(AttemptError::VenueFilled) if venue_read == VenueRead::Snapshot => {
                drop(tx);
                on_retry();
                attempt += 1;
                venue_read = VenueRead::Locked;
            }
            Err(AttemptError::VenueFilled) => {
                return Err(AppError::Internal(
                    "the venue's count changed under its lock".into(),
                ))
            }
            Err(AttemptError::Database(error)) => return Err(AppError::Database(error)),
            Err(AttemptError::Internal(message)) => return Err(AppError::Internal(message)),
        }
    }
}

/// How a scan reads its venue's count. The count is one row every entry of the venue
/// changes, so its lock, held to the commit, serializes the venue's entries: a scan reads
/// it without the lock (`Snapshot`), decides, and changes it as its transaction's last
/// write, on condition that the place it takes is still free. If it is not (another entry
/// took the last place meanwhile) the transaction rolls back and the scan is decided again
/// with the count read under the lock (`Locked`), as it always was before. So the venue's
/// lock is held from that last write to the commit only, and never more than `capacity`
/// are inside. A refusal for capacity rests on a count read in the scan's own transaction
/// (the venue was full at that moment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VenueRead {
    Snapshot,
    Locked,
}

/// What the group-commit path did.
enum GroupOutcome {
    Redeemed(Box<ScanOutcome>),
    /// Anything but a plain success, or a path the statement does not take: decide on the
    /// transaction path.
    NotPlain,
    /// Another request holds this scan_id: replay its answer.
    ScanIdTaken,
}

/// A plain successful scan, group-committed: `stile_redeem_batch` (migrations 0014, 0016,
/// 0018) locks, checks and writes what the transaction path writes for a SUCCESS (for an
/// entry at a venue, its passage and the venue's count too), and writes nothing for a scan
/// whose answer could be anything else. Taken for a gate's or the console's QR scan that
/// passed the ticket-free checks; an order-code scan, an offline upload, an exit and a
/// merchant with a webhook take the transaction path, and so does a scan the batch does not
/// redeem (a refusal, a re-entry).
async fn redeem_in_group(
    group: &GroupCommit,
    policy: TokenPolicy,
    context: &ScanContext,
    command: &ScanCommand,
) -> Result<GroupOutcome, BatchError> {
    let ScanSubject::Token(Ok(verified)) = &command.subject else {
        return Ok(GroupOutcome::NotPlain);
    };
    let claims = &verified.claims;
    let venue_id = context
        .location
        .as_ref()
        .and_then(|l| l.venue.as_ref())
        .filter(|v| v.entry_function == command.function_code)
        .map(|v| v.venue_id);
    if command.decided_at.is_some()
        || command.direction == Direction::Exit
        || context.source == RedemptionSource::Offline
        || check_token(
            claims,
            &context.merchant_code,
            command.now.timestamp(),
            policy,
        )
        .is_err()
    {
        return Ok(GroupOutcome::NotPlain);
    }
    let success = DecisionCode::Success;
    let template = ScanResponse {
        result: success,
        code: success,
        message: success.message(Lang::ZhCn).to_owned(),
        ticket: None,
        redemption: Some(RedemptionView {
            id: 0,
            redeemed_at: command.now.to_rfc3339_opts(SecondsFormat::Millis, false),
            operator: OperatorRef {
                id: context.operator_id,
                username: context.operator_username.clone(),
            },
            device_id: context.device.as_ref().map(|d| d.device_id.clone()),
            venue_code: context.location.as_ref().map(|l| l.venue_code.clone()),
        }),
    };
    let answer = serde_json::to_value(&template)
        .map_err(|error| BatchError::Retry(format!("serialise the answer: {error}")))?;
    let outcome = group
        .redeem(BatchScan {
            scan_id: command.scan_id,
            merchant_id: context.merchant_id,
            operator_id: context.operator_id,
            device_pk: context.device.as_ref().map(|d| d.device_pk),
            location_id: context.location.as_ref().map(|l| l.location_id),
            token_sha256: command.token_sha256,
            function_code: command.function_code.as_str().to_owned(),
            jti: claims.jti.as_str().to_owned(),
            ticket_code: claims.tid.clone(),
            source: context.source.as_str(),
            now: command.now,
            answer,
            claims: claims.clone(),
            merchant_code: context.merchant_code.clone(),
            policy,
            venue_id,
        })
        .await?;
    match outcome {
        BatchOutcome::Redeemed(answer) => {
            let response: ScanResponse = serde_json::from_value(answer).map_err(|error| {
                BatchError::Database(Arc::new(sqlx::Error::Protocol(format!(
                    "stile_redeem_batch answer: {error}"
                ))))
            })?;
            Ok(GroupOutcome::Redeemed(Box::new(ScanOutcome {
                response,
                replayed: false,
                jti: Some(claims.jti.clone()),
                group_commit: true,
            })))
        }
        BatchOutcome::Decide => Ok(GroupOutcome::NotPlain),
        BatchOutcome::Replay => Ok(GroupOutcome::ScanIdTaken),
    }
}

enum Attempt {
    Decided(Box<ScanOutcome>),
    /// Another request already claimed this scan_id and committed: replay its answer.
    ScanIdTaken,
}

enum AttemptError {
    Database(sqlx::Error),
    Internal(String),
    /// The place a passage took on a count read without the lock was gone at its write.
    VenueFilled,
}

impl From<sqlx::Error> for AttemptError {
    fn from(error: sqlx::Error) -> Self {
        AttemptError::Database(error)
    }
}

struct LockedTicket {
    id: i64,
    ticket_code: String,
    channel: Channel,
    order_id: i64,
    order_code: String,
    /// Whether the merchant wants a webhook for each redemption.
    notify: bool,
    /// The merchant's time zone, in which the check-in rules are read.
    zone: MerchantZone,
    snapshot: TicketSnapshot,
    entitlement_ids: Vec<i64>,
    names: Vec<String>,
}

async fn attempt_redeem(
    tx: &mut PgConnection,
    policy: TokenPolicy,
    context: &ScanContext,
    command: &ScanCommand,
    venue_read: VenueRead,
) -> Result<Attempt, AttemptError> {
    if let Some(scan_id) = command.scan_id {
        let claimed = sqlx::query(
            "INSERT INTO scan_requests (scan_id, merchant_id, operator_id, device_id, token_sha256, function_code, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (scan_id) DO NOTHING",
        )
        .bind(scan_id)
        .bind(context.merchant_id)
        .bind(context.operator_id)
        .bind(context.device.as_ref().map(|d| d.device_pk))
        .bind(command.token_sha256.as_slice())
        .bind(command.function_code.as_str())
        .bind(command.now)
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() == 0 {
            return Ok(Attempt::ScanIdTaken);
        }
    }

    let now = command.decided_at.unwrap_or(command.now).timestamp();
    let decided = match &command.subject {
        ScanSubject::Token(Err(_)) => Decided::without_ticket(DecisionCode::InvalidQr, None),
        ScanSubject::Token(Ok(verified)) => {
            let claims = &verified.claims;
            let checked = match command.decided_at {
                Some(_) => check_decision_time(
                    claims,
                    now,
                    command.now.timestamp(),
                    command.clock_tolerance_secs,
                ),
                None => Ok(()),
            }
            .and_then(|()| check_token(claims, &context.merchant_code, now, policy));
            match checked {
                Err(code) => Decided::without_ticket(code, Some(claims.jti.clone())),
                Ok(()) => {
                    let mut locked = lock_ticket(tx, context.merchant_id, &claims.tid).await?;
                    // An offline decision's token counts as current when it is the ticket's
                    // QR now or was when the gate decided.
                    if let (Some(decided_at), Some(ticket)) = (command.decided_at, locked.as_mut())
                    {
                        if ticket.snapshot.current_jti.as_ref() != Some(&claims.jti) {
                            ticket.snapshot.current_jti =
                                current_qr_at(tx, ticket.id, decided_at).await?;
                        }
                    }
                    decide_and_apply(tx, policy, context, command, claims, locked, venue_read)
                        .await?
                }
            }
        }
        ScanSubject::Ticket { ticket_code } => {
            let Some(locked) = lock_ticket(tx, context.merchant_id, ticket_code).await? else {
                return Err(AttemptError::Internal(format!(
                    "ticket {ticket_code} vanished before its order scan"
                )));
            };
            let Some(current_jti) = locked.snapshot.current_jti.clone() else {
                return Err(AttemptError::Internal(format!(
                    "ticket {ticket_code} has no current QR for its order scan"
                )));
            };
            // The operator is authenticated by their JWT and the ticket was chosen by its
            // order: the claims are the ticket's current QR, fresh now.
            let claims = QrClaims {
                jti: current_jti,
                tid: ticket_code.clone(),
                mid: context.merchant_code.clone(),
                ch: locked.channel,
                iat: now,
                exp: policy.expiry_for(locked.channel, now),
            };
            decide_and_apply(
                tx,
                policy,
                context,
                command,
                &claims,
                Some(locked),
                venue_read,
            )
            .await?
        }
    };
    let Decided {
        code,
        ticket,
        redemption,
        jti,
        count,
    } = decided;

    let ticket_id = ticket.as_ref().map(|(id, _)| *id);
    let ticket = ticket.map(|(_, view)| view);
    // A rejection's audit row. A redemption's audit record is its reconciliation log row
    // (who, where, when, what: written in step 4), not a second row for the same fact.
    if code != DecisionCode::Success {
        sqlx::query(
        "INSERT INTO scan_audit (merchant_id, operator_id, device_id, location_id, ticket_id, jti, \
         function_code, decision, scan_id, redemption_event_id, decided_at, source) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(context.merchant_id)
    .bind(context.operator_id)
    .bind(context.device.as_ref().map(|d| d.device_pk))
    .bind(context.location.as_ref().map(|l| l.location_id))
    .bind(ticket_id)
    .bind(jti.as_ref().map(Jti::as_str))
    .bind(command.function_code.as_str())
    .bind(code.as_str())
    .bind(command.scan_id)
    .bind(None::<i64>)
    .bind(command.now)
    .bind(context.source.as_str())
    .execute(&mut *tx)
    .await?;
    }

    let response = ScanResponse {
        result: code,
        code,
        message: code.message(Lang::ZhCn).to_owned(),
        ticket,
        redemption,
    };
    if let Some(scan_id) = command.scan_id {
        let stored = serde_json::to_value(&response)
            .map_err(|error| AttemptError::Internal(format!("serialise scan answer: {error}")))?;
        sqlx::query("UPDATE scan_requests SET response = $2, http_status = $3 WHERE scan_id = $1")
            .bind(scan_id)
            .bind(stored)
            .bind(i32::from(crate::error::status_of(code.into()).as_u16()))
            .execute(&mut *tx)
            .await?;
    }
    // The venue's count last: its row lock is held from here to the commit only.
    if let Some(count) = count {
        count_passage(tx, &count).await?;
    }
    Ok(Attempt::Decided(Box::new(ScanOutcome {
        response,
        replayed: false,
        jti,
        group_commit: false,
    })))
}

type LockedRow = (
    i64,
    String,
    String,
    Option<String>,
    String,
    i64,
    String,
    bool,
    String,
);

/// A decision and what it produced, before the audit row and the stored answer.
struct Decided {
    code: DecisionCode,
    /// The ticket's id and view, for decisions about a ticket of the operator's merchant.
    ticket: Option<(i64, TicketView)>,
    redemption: Option<RedemptionView>,
    jti: Option<Jti>,
    /// The change to the venue's running count a passage makes, written last.
    count: Option<VenueCount>,
}

impl Decided {
    fn without_ticket(code: DecisionCode, jti: Option<Jti>) -> Decided {
        Decided {
            code,
            ticket: None,
            redemption: None,
            jti,
            count: None,
        }
    }
}

/// Decides with the shared function over the locked ticket, and applies a redemption, a
/// re-entry or an exit.
async fn decide_and_apply(
    tx: &mut PgConnection,
    policy: TokenPolicy,
    context: &ScanContext,
    command: &ScanCommand,
    claims: &QrClaims,
    locked: Option<LockedTicket>,
    venue_read: VenueRead,
) -> Result<Decided, AttemptError> {
    let now = command.decided_at.unwrap_or(command.now).timestamp();
    let zone = locked.as_ref().map(|t| t.zone).unwrap_or_default();
    let venue = match (
        context.location.as_ref().and_then(|l| l.venue.as_ref()),
        locked.as_ref(),
    ) {
        (Some(venue), Some(ticket))
            if command.direction == Direction::Exit
                || venue.entry_function == command.function_code =>
        {
            Some(read_venue(tx, venue, ticket, command, (now, zone), venue_read).await?)
        }
        (None, _) if command.direction == Direction::Exit => {
            return Err(AttemptError::Internal(
                "an exit at a location of no venue".into(),
            ))
        }
        _ => None,
    };
    let redeemed = redeemed_functions(tx, &claims.jti).await?;
    let input = DecisionInput {
        claims,
        operator_merchant: &context.merchant_code,
        ticket: locked.as_ref().map(|t| &t.snapshot),
        redeemed_with_this_jti: &redeemed,
        function_code: &command.function_code,
        now,
        policy,
        zone,
        venue: venue.as_ref().map(|v| &v.snapshot),
    };
    let jti = Some(claims.jti.clone());
    if command.direction == Direction::Exit {
        let presence = venue
            .as_ref()
            .map_or(Presence::Outside, |v| v.snapshot.presence);
        let decision = decide_exit(&input, presence);
        let mut count = None;
        if let (ExitDecision::Exit, Some(venue), Some(ticket)) = (decision, &venue, &locked) {
            count =
                record_passage(tx, context, command, ticket, venue, Direction::Exit, None).await?;
        }
        return Ok(Decided {
            code: decision.code(),
            ticket: locked.as_ref().map(|t| (t.id, ticket_view(t))),
            redemption: None,
            jti,
            count,
        });
    }
    let decision = decide(&input);
    match (decision, locked) {
        (Decision::Redeem { entitlement_index }, Some(mut locked)) => {
            let redemption = apply_redemption(
                tx,
                context,
                command,
                &claims.jti,
                &mut locked,
                entitlement_index,
            )
            .await?;
            let mut count = None;
            if let Some(venue) = &venue {
                let event = Some(redemption.id);
                count = record_passage(
                    tx,
                    context,
                    command,
                    &locked,
                    venue,
                    Direction::Entry,
                    event,
                )
                .await?;
            }
            Ok(Decided {
                code: DecisionCode::Success,
                ticket: Some((locked.id, ticket_view(&locked))),
                redemption: Some(redemption),
                jti,
                count,
            })
        }
        (Decision::Reenter { .. }, Some(locked)) => {
            let Some(venue) = &venue else {
                return Err(AttemptError::Internal(
                    "a re-entry decided away from a venue".into(),
                ));
            };
            let count =
                record_passage(tx, context, command, &locked, venue, Direction::Entry, None)
                    .await?;
            Ok(Decided {
                code: DecisionCode::Success,
                ticket: Some((locked.id, ticket_view(&locked))),
                redemption: None,
                jti,
                count,
            })
        }
        (Decision::Redeem { .. } | Decision::Reenter { .. }, None) => Err(AttemptError::Internal(
            "decision redeemed a ticket that was not found".into(),
        )),
        (Decision::Reject(code), locked) => Ok(Decided {
            code,
            ticket: locked.as_ref().map(|t| (t.id, ticket_view(t))),
            redemption: None,
            jti,
            count: None,
        }),
    }
}

/// What a passage of one (locked) ticket is decided on: its presence and the venue's count.
struct VenueState {
    venue_id: i64,
    snapshot: VenueSnapshot,
    /// The merchant-local day of the central's clock: the day the running count is of.
    today: chrono::NaiveDate,
    /// Whether this passage is of that day (an offline one uploaded later may not be): only
    /// then does it change the running count.
    counts_today: bool,
}

/// Reads the venue's count (under its lock when `read` says so: after the ticket's, always
/// in this order) and the ticket's presence: its latest passage at the venue up to the
/// decision time. An offline entry uploaded later is not refused for capacity: the person
/// is in, and is counted.
async fn read_venue(
    tx: &mut PgConnection,
    venue: &VenueRef,
    ticket: &LockedTicket,
    command: &ScanCommand,
    (now, zone): (i64, MerchantZone),
    read: VenueRead,
) -> Result<VenueState, AttemptError> {
    let latest: Option<(String, i64)> = sqlx::query_as(
        "SELECT direction, floor(extract(epoch FROM at))::bigint FROM passages \
         WHERE venue_id = $1 AND ticket_id = $2 AND at <= $3 ORDER BY at DESC, id DESC LIMIT 1",
    )
    .bind(venue.venue_id)
    .bind(ticket.id)
    .bind(command.decided_at.unwrap_or(command.now))
    .fetch_optional(&mut *tx)
    .await?;
    let latest = latest.and_then(|(direction, at)| {
        Some(Passage {
            direction: Direction::parse(&direction)?,
            at,
        })
    });
    let today = zone
        .local_date(command.now.timestamp())
        .ok_or_else(|| AttemptError::Internal("the clock is beyond the calendar".into()))?;
    let (capacity, inside): (Option<i64>, i64) = sqlx::query_as(match read {
        VenueRead::Snapshot => {
            "SELECT capacity, CASE WHEN inside_on = $2 THEN inside ELSE 0 END FROM venues \
             WHERE id = $1"
        }
        VenueRead::Locked => {
            "SELECT capacity, CASE WHEN inside_on = $2 THEN inside ELSE 0 END FROM venues \
             WHERE id = $1 FOR UPDATE"
        }
    })
    .bind(venue.venue_id)
    .bind(today)
    .fetch_one(&mut *tx)
    .await?;
    Ok(VenueState {
        venue_id: venue.venue_id,
        snapshot: VenueSnapshot {
            presence: presence(latest, now, zone),
            inside,
            capacity: if command.decided_at.is_some() {
                None
            } else {
                capacity
            },
        },
        today,
        counts_today: zone.local_date(now) == Some(today),
    })
}

/// A passage's change to its venue's running count, written last ([`count_passage`]).
struct VenueCount {
    venue_id: i64,
    today: chrono::NaiveDate,
    change: i64,
    /// Whether the change may not take the count past the capacity (an entry decided now;
    /// an offline entry uploaded later is counted whatever the count: the person is in).
    within_capacity: bool,
}

/// Records a passage; returns its change to the venue's running count, if any.
async fn record_passage(
    tx: &mut PgConnection,
    context: &ScanContext,
    command: &ScanCommand,
    ticket: &LockedTicket,
    venue: &VenueState,
    direction: Direction,
    redemption_event_id: Option<i64>,
) -> Result<Option<VenueCount>, sqlx::Error> {
    let change: i16 = match direction {
        Direction::Exit => -1,
        Direction::Entry => i16::from(venue.snapshot.takes_place()),
    };
    let reentry = direction == Direction::Entry
        && redemption_event_id.is_none()
        && venue.snapshot.presence == Presence::Left;
    sqlx::query(
        "INSERT INTO passages (merchant_id, venue_id, ticket_id, direction, reentry, delta, at, \
         recorded_at, location_id, device_id, operator_id, redemption_event_id, scan_id, source) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(context.merchant_id)
    .bind(venue.venue_id)
    .bind(ticket.id)
    .bind(direction.as_str())
    .bind(reentry)
    .bind(change)
    .bind(command.decided_at.unwrap_or(command.now))
    .bind(command.now)
    .bind(context.location.as_ref().map(|l| l.location_id))
    .bind(context.device.as_ref().map(|d| d.device_pk))
    .bind(context.operator_id)
    .bind(redemption_event_id)
    .bind(command.scan_id)
    .bind(context.source.as_str())
    .execute(&mut *tx)
    .await?;
    Ok((venue.counts_today && change != 0).then(|| VenueCount {
        venue_id: venue.venue_id,
        today: venue.today,
        change: i64::from(change),
        within_capacity: venue.snapshot.capacity.is_some(),
    }))
}

/// Changes the venue's running count; an entry only while the place it takes is free.
async fn count_passage(tx: &mut PgConnection, count: &VenueCount) -> Result<(), AttemptError> {
    let changed = sqlx::query(
        "UPDATE venues SET inside = GREATEST(CASE WHEN inside_on = $2 THEN inside ELSE 0 END + $3, 0), \
         inside_on = $2 WHERE id = $1 AND (NOT $4 OR $3 <= 0 OR capacity IS NULL \
         OR CASE WHEN inside_on = $2 THEN inside ELSE 0 END + $3 <= capacity)",
    )
    .bind(count.venue_id)
    .bind(count.today)
    .bind(count.change)
    .bind(count.within_capacity)
    .execute(&mut *tx)
    .await?;
    if changed.rows_affected() == 0 {
        return Err(AttemptError::VenueFilled);
    }
    Ok(())
}

async fn lock_ticket(
    tx: &mut PgConnection,
    merchant_id: i64,
    ticket_code: &str,
) -> Result<Option<LockedTicket>, AttemptError> {
    let row: Option<LockedRow> = sqlx::query_as(
        "SELECT t.id, t.ticket_code, t.status, t.current_jti, t.channel, t.order_id, o.order_code, \
         m.webhook_url IS NOT NULL, m.timezone FROM tickets t JOIN orders o ON o.id = t.order_id \
         JOIN merchants m ON m.id = t.merchant_id \
         WHERE t.ticket_code = $1 AND t.merchant_id = $2 FOR NO KEY UPDATE OF t",
    )
    .bind(ticket_code)
    .bind(merchant_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, ticket_code, status, current_jti, channel, order_id, order_code, notify, zone)) =
        row
    else {
        return Ok(None);
    };
    let zone = MerchantZone::parse(&zone).ok_or_else(|| {
        AttemptError::Internal(format!("ticket {id}'s merchant has zone {zone:?}"))
    })?;
    let channel = Channel::parse(&channel)
        .ok_or_else(|| AttemptError::Internal(format!("ticket {id} has channel {channel:?}")))?;
    let status = TicketStatus::parse(&status)
        .ok_or_else(|| AttemptError::Internal(format!("ticket {id} has status {status:?}")))?;
    type EntitlementRow = (
        i64,
        String,
        String,
        i32,
        i32,
        Option<sqlx::types::Json<EntitlementRules>>,
    );
    let rows: Vec<EntitlementRow> = sqlx::query_as(
        "SELECT id, function_code, name, total_uses, remaining_uses, rules FROM entitlements \
         WHERE ticket_id = $1 ORDER BY id FOR UPDATE",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let mut entitlements = Vec::with_capacity(rows.len());
    let mut entitlement_ids = Vec::with_capacity(rows.len());
    let mut names = Vec::with_capacity(rows.len());
    let needs: Vec<(i64, usize)> = rows
        .iter()
        .filter_map(|row| Some((row.0, row.5.as_ref()?.0.uses_needed())))
        .collect();
    let mut uses = recent_uses(tx, &needs).await?;
    for (entitlement_id, function_code, name, total_uses, remaining_uses, rules) in rows {
        let function_code = FunctionCode::parse(&function_code).map_err(|_| {
            AttemptError::Internal(format!("entitlement {entitlement_id} has a malformed code"))
        })?;
        let rules = rules.map(|json| json.0).unwrap_or_default();
        let recent_uses = uses.remove(&entitlement_id).unwrap_or_default();
        entitlements.push(EntitlementSnapshot {
            function_code,
            total_uses,
            remaining_uses,
            rules,
            recent_uses,
        });
        entitlement_ids.push(entitlement_id);
        names.push(name);
    }
    Ok(Some(LockedTicket {
        id,
        ticket_code,
        channel,
        order_id,
        order_code,
        notify,
        zone,
        snapshot: TicketSnapshot {
            status,
            current_jti: current_jti.and_then(|jti| Jti::parse(&jti).ok()),
            // Under the row lock the central knows every QR of the ticket.
            current_issued_at: None,
            knowledge: stile_shared::QrKnowledge::Complete,
            entitlements,
        },
        entitlement_ids,
        names,
    }))
}

/// The ticket's QR that was current at `at`: an offline decision is judged against the QR
/// the customer held then too, so a QR refreshed after the gate let them in (for their next
/// use, say) does not turn that entry into a conflict. Issuance times are the central's
/// clock, `at` the gate's (corrected by the offset it measured); a token that is current
/// now is never looked up, so a gate clock a little behind costs nothing.
async fn current_qr_at(
    connection: &mut PgConnection,
    ticket_id: i64,
    at: DateTime<Utc>,
) -> Result<Option<Jti>, sqlx::Error> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT jti FROM qr_issuances WHERE ticket_id = $1 AND issued_at <= $2 \
         ORDER BY issued_at DESC, jti DESC LIMIT 1",
    )
    .bind(ticket_id)
    .bind(at)
    .fetch_optional(connection)
    .await?;
    Ok(row.and_then(|(jti,)| Jti::parse(&jti).ok()))
}

/// The newest uses of each entitlement of `needs` (`(entitlement id, how many)`, as many
/// as its check-in rules need), Unix seconds, newest first: one statement for them all.
/// Under the ticket's lock no use can be added meanwhile; the device feed reads them in
/// its snapshot.
pub async fn recent_uses(
    connection: &mut PgConnection,
    needs: &[(i64, usize)],
) -> Result<HashMap<i64, Vec<i64>>, sqlx::Error> {
    let mut uses: HashMap<i64, Vec<i64>> = HashMap::new();
    let needs: Vec<(i64, i32)> = needs
        .iter()
        .filter(|(_, needed)| *needed > 0)
        .map(|(id, needed)| (*id, i32::try_from(*needed).unwrap_or(i32::MAX)))
        .collect();
    if needs.is_empty() {
        return Ok(uses);
    }
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT x.id, floor(extract(epoch FROM r.redeemed_at))::bigint \
         FROM unnest($1::bigint[], $2::int[]) AS x(id, n) \
         CROSS JOIN LATERAL (SELECT redeemed_at FROM redemption_events \
                             WHERE entitlement_id = x.id ORDER BY redeemed_at DESC LIMIT x.n) r \
         ORDER BY x.id, r.redeemed_at DESC",
    )
    .bind(needs.iter().map(|(id, _)| *id).collect::<Vec<_>>())
    .bind(needs.iter().map(|(_, n)| *n).collect::<Vec<_>>())
    .fetch_all(connection)
    .await?;
    for (id, at) in rows {
        uses.entry(id).or_default().push(at);
    }
    Ok(uses)
}

/// One row of the reconciliation log.
pub struct LogEntry<'a> {
    pub context: &'a ScanContext,
    pub ticket_id: i64,
    pub order_id: i64,
    /// `None` for a conflict: an offline acceptance the central could not apply.
    pub redemption_event_id: Option<i64>,
    pub function_code: &'a FunctionCode,
    /// When the central recorded it.
    pub recorded_at: DateTime<Utc>,
    /// When the deciding process decided (a gate's clock for offline decisions).
    pub decided_at: DateTime<Utc>,
    pub scan_id: Option<Uuid>,
    /// `SUCCESS`, or `CONFLICT` for an offline acceptance the central refused.
    pub result: &'a str,
    pub meta: serde_json::Value,
}

/// Writes a reconciliation log row; offline rows carry their upload time and scan_id.
pub async fn record_log_row(
    tx: &mut PgConnection,
    entry: &LogEntry<'_>,
) -> Result<i64, sqlx::Error> {
    let offline = entry.context.source == RedemptionSource::Offline;
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO merchant_redemptions (merchant_id, operator_id, ticket_id, order_id, location_id, \
         device_id, redemption_event_id, function_code, redeemed_at, decided_at, uploaded_at, source, \
         result, meta, scan_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING id",
    )
    .bind(entry.context.merchant_id)
    .bind(entry.context.operator_id)
    .bind(entry.ticket_id)
    .bind(entry.order_id)
    .bind(entry.context.location.as_ref().map(|l| l.location_id))
    .bind(entry.context.device.as_ref().map(|d| d.device_pk))
    .bind(entry.redemption_event_id)
    .bind(entry.function_code.as_str())
    .bind(entry.recorded_at)
    .bind(entry.decided_at)
    .bind(offline.then_some(entry.recorded_at))
    .bind(entry.context.source.as_str())
    .bind(entry.result)
    .bind(&entry.meta)
    .bind(if offline { entry.scan_id } else { None })
    .fetch_one(&mut *tx)
    .await?;
    Ok(id)
}

async fn redeemed_functions(
    tx: &mut PgConnection,
    jti: &Jti,
) -> Result<Vec<FunctionCode>, AttemptError> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT function_code FROM redemption_events WHERE jti = $1")
            .bind(jti.as_str())
            .fetch_all(&mut *tx)
            .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(code,)| FunctionCode::parse(&code).ok())
        .collect())
}

async fn apply_redemption(
    tx: &mut PgConnection,
    context: &ScanContext,
    command: &ScanCommand,
    jti: &Jti,
    locked: &mut LockedTicket,
    index: usize,
) -> Result<RedemptionView, AttemptError> {
    let entitlement_id = locked.entitlement_ids[index];
    let (redemption_id,): (i64,) = sqlx::query_as(
        "INSERT INTO redemption_events (jti, function_code, ticket_id, entitlement_id, merchant_id, \
         operator_id, device_id, location_id, redeemed_at, scan_id, source) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
    )
    .bind(jti.as_str())
    .bind(command.function_code.as_str())
    .bind(locked.id)
    .bind(entitlement_id)
    .bind(context.merchant_id)
    .bind(context.operator_id)
    .bind(context.device.as_ref().map(|d| d.device_pk))
    .bind(context.location.as_ref().map(|l| l.location_id))
    .bind(command.now)
    .bind(command.scan_id)
    .bind(context.source.as_str())
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("UPDATE entitlements SET remaining_uses = remaining_uses - 1 WHERE id = $1")
        .bind(entitlement_id)
        .execute(&mut *tx)
        .await?;
    locked.snapshot.entitlements[index].remaining_uses -= 1;
    let exhausted = locked
        .snapshot
        .entitlements
        .iter()
        .all(|e| e.remaining_uses <= 0);
    if exhausted && locked.snapshot.status == TicketStatus::Activated {
        sqlx::query("UPDATE tickets SET status = 'USED', updated_at = $2 WHERE id = $1")
            .bind(locked.id)
            .bind(command.now)
            .execute(&mut *tx)
            .await?;
        locked.snapshot.status = TicketStatus::Used;
    }
    let log_id = record_log_row(
        tx,
        &LogEntry {
            context,
            ticket_id: locked.id,
            order_id: locked.order_id,
            redemption_event_id: Some(redemption_id),
            function_code: &command.function_code,
            recorded_at: command.now,
            decided_at: command.decided_at.unwrap_or(command.now),
            scan_id: command.scan_id,
            result: "SUCCESS",
            meta: serde_json::json!({}),
        },
    )
    .await?;
    let redeemed_at = command.now.to_rfc3339_opts(SecondsFormat::Millis, false);
    if locked.notify {
        // The outbox row commits with the redemption; delivery happens later, elsewhere, so
        // a slow or failing webhook never slows or fails a scan.
        let payload = serde_json::json!({
            "event": "redemption.succeeded",
            "redemption_id": log_id,
            "merchant_code": context.merchant_code,
            "order_id": locked.order_code,
            "ticket_code": locked.ticket_code,
            "function_code": command.function_code.as_str(),
            "redeemed_at": redeemed_at,
            "source": context.source.as_str(),
            "operator": context.operator_username,
            "venue_code": context.location.as_ref().map(|l| l.venue_code.as_str()),
        });
        sqlx::query(
            "INSERT INTO notifications (merchant_id, merchant_redemption_id, payload, next_attempt_at, created_at) \
             VALUES ($1, $2, $3, $4, $4)",
        )
        .bind(context.merchant_id)
        .bind(log_id)
        .bind(payload)
        .bind(command.now)
        .execute(&mut *tx)
        .await?;
    }
    Ok(RedemptionView {
        id: redemption_id,
        redeemed_at,
        operator: OperatorRef {
            id: context.operator_id,
            username: context.operator_username.clone(),
        },
        device_id: context.device.as_ref().map(|d| d.device_id.clone()),
        venue_code: context.location.as_ref().map(|l| l.venue_code.clone()),
    })
}

fn ticket_view(locked: &LockedTicket) -> TicketView {
    TicketView {
        ticket_code: locked.ticket_code.clone(),
        status: locked.snapshot.status,
        entitlements: locked
            .snapshot
            .entitlements
            .iter()
            .zip(&locked.names)
            .map(|(e, name)| EntitlementView {
                function_code: e.function_code.clone(),
                name: name.clone(),
                total_uses: e.total_uses,
                remaining_uses: e.remaining_uses,
            })
            .collect(),
    }
}

/// Who made a stored scan: its answer goes back to them and to nobody else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanOwner {
    pub merchant_id: i64,
    pub operator_id: i64,
    pub device_pk: Option<i64>,
}

impl ScanOwner {
    /// The owner a context stands for.
    pub fn of(context: &ScanContext) -> ScanOwner {
        ScanOwner {
            merchant_id: context.merchant_id,
            operator_id: context.operator_id,
            device_pk: context.device.as_ref().map(|d| d.device_pk),
        }
    }

    /// Whether `asking` may have this scan's stored answer: the same merchant, and the same
    /// operator or the same device (a gate replaying its own offline upload after an operator
    /// change, or an operator retrying from the console).
    pub fn may_replay_to(&self, asking: &ScanOwner) -> bool {
        self.merchant_id == asking.merchant_id
            && (self.operator_id == asking.operator_id
                || (self.device_pk.is_some() && self.device_pk == asking.device_pk))
    }
}

/// The stored answer of an earlier request with this scan_id, if it was the same scan by
/// the same owner. Anything else is refused as a reused scan_id: another merchant never sees
/// what was stored, nor learns more than that the id is taken.
async fn replay(
    pool: &PgPool,
    context: &ScanContext,
    command: &ScanCommand,
) -> Result<ScanOutcome, AppError> {
    let Some(scan_id) = command.scan_id else {
        return Err(AppError::Internal("replay without a scan_id".into()));
    };
    type StoredRow = (
        i64,
        i64,
        Option<i64>,
        Vec<u8>,
        String,
        Option<serde_json::Value>,
    );
    let row: Option<StoredRow> = sqlx::query_as(
        "SELECT merchant_id, operator_id, device_id, token_sha256, function_code, response \
         FROM scan_requests WHERE scan_id = $1",
    )
    .bind(scan_id)
    .fetch_optional(pool)
    .await?;
    let Some((merchant_id, operator_id, device_pk, token_sha256, function_code, response)) = row
    else {
        return Err(AppError::Internal("scan_id vanished during replay".into()));
    };
    let owner = ScanOwner {
        merchant_id,
        operator_id,
        device_pk,
    };
    if !owner.may_replay_to(&ScanOwner::of(context)) {
        tracing::warn!(%scan_id, merchant = context.merchant_id, operator = context.operator_id,
            "scan_id of another owner refused");
        return Err(AppError::ScanIdReused);
    }
    if token_sha256 != command.token_sha256.as_slice()
        || function_code != command.function_code.as_str()
    {
        return Err(AppError::ScanIdReused);
    }
    let response: ScanResponse = response
        .map(serde_json::from_value)
        .transpose()
        .map_err(|error| AppError::Internal(format!("stored scan answer: {error}")))?
        .ok_or_else(|| AppError::Internal("stored scan answer missing".into()))?;
    let jti = match &command.subject {
        ScanSubject::Token(Ok(verified)) => Some(verified.claims.jti.clone()),
        _ => None,
    };
    Ok(ScanOutcome {
        response,
        replayed: true,
        jti,
        group_commit: false,
    })
}

#[cfg(test)]
mod tests {
    use super::ScanOwner;

    #[test]
    fn a_stored_answer_goes_back_to_its_merchant_and_its_operator_or_device_only() {
        let owner = ScanOwner {
            merchant_id: 1,
            operator_id: 10,
            device_pk: Some(100),
        };
        let asking = |merchant_id, operator_id, device_pk| ScanOwner {
            merchant_id,
            operator_id,
            device_pk,
        };
        assert!(owner.may_replay_to(&owner));
        assert!(
            owner.may_replay_to(&asking(1, 11, Some(100))),
            "same device"
        );
        assert!(owner.may_replay_to(&asking(1, 10, None)), "same operator");
        assert!(!owner.may_replay_to(&asking(1, 11, Some(101))));
        assert!(!owner.may_replay_to(&asking(1, 11, None)));
        assert!(
            !owner.may_replay_to(&asking(2, 10, Some(100))),
            "another merchant"
        );
        let console = ScanOwner {
            device_pk: None,
            ..owner
        };
        assert!(
            !console.may_replay_to(&asking(1, 11, None)),
            "no device to match"
        );
    }
}
