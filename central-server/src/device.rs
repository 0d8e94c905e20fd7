//! The gate devices' endpoints (device credential `Bearer <device_id>:<secret>`): the
//! published keys, a commit-ordered change feed of the ticket state a device needs to decide
//! offline, and the upload of decisions taken offline, answered one by one as applied or as
//! a conflict and recorded in the merchant's reconciliation log either way.
//!
//! The feed pages on (`sync_xid`, `id`): every change to a ticket or its entitlements stamps
//! the ticket with its transaction id (migration 0003), and a page only contains rows whose
//! transaction id is below the reading snapshot's xmin, so every transaction that could
//! still commit behind the cursor has already finished. A device's cursor never skips a change.

use crate::auth::AuthenticatedDevice;
use crate::error::AppError;
use crate::scan::{
    self, DeviceAt, LocationAt, LogEntry, RedemptionSource, ScanCommand, ScanContext, ScanSubject,
};
use crate::AppState;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use std::collections::HashMap;
use stile_shared::api::{
    DeviceHistory, EntitlementView, OfflineDecision, OfflineOperator, OfflineOperators,
    SyncedRules, SyncedTicket, SyncedVenue, TicketFeedPage, UploadOutcome, UploadResult,
};
use stile_shared::token::Jti;
use stile_shared::Passage;
use stile_shared::{
    ApiCode, Channel, DecisionCode, Direction, EntitlementRules, FunctionCode, Lang, TicketStatus,
};
use uuid::Uuid;

/// Most tickets in one feed page.
pub const MAX_FEED_PAGE: i64 = 2000;
/// Most decisions in one upload.
pub const MAX_UPLOAD: usize = 500;

/// A feed position: the last (`sync_xid`, `id`) handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FeedCursor {
    xid: u64,
    id: i64,
}

impl FeedCursor {
    const START: FeedCursor = FeedCursor { xid: 0, id: 0 };

    fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}.{}", self.xid, self.id))
    }

    fn decode(raw: &str) -> Option<FeedCursor> {
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(raw).ok()?).ok()?;
        let (xid, id) = text.split_once('.')?;
        Some(FeedCursor {
            xid: xid.parse().ok()?,
            id: id.parse().ok()?,
        })
    }
}

/// One page of ticket changes for the device's merchant, after `cursor`.
pub async fn ticket_feed(
    state: &AppState,
    device: &AuthenticatedDevice,
    cursor: Option<&str>,
    limit: Option<&str>,
) -> Result<TicketFeedPage, AppError> {
    // Read before the page: a database replaced after this read shows on the next page.
    let database_epoch = crate::db::epoch(&state.pool).await?;
    let after = match cursor {
        None | Some("") => FeedCursor::START,
        Some(raw) => FeedCursor::decode(raw)
            .ok_or_else(|| AppError::BadRequest("cursor is not one this server gave".into()))?,
    };
    let limit = crate::params::limit(limit, 1000, MAX_FEED_PAGE).map_err(AppError::BadRequest)?;
    // One snapshot for the horizon and every read, so the page is consistent and the
    // horizon is exactly the one the rows were filtered by.
    let mut tx = crate::db::begin(&state.pool).await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let (horizon,): (String,) =
        sqlx::query_as("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
            .fetch_one(&mut *tx)
            .await?;
    let horizon = parse_xid(&horizon)?;
    #[allow(clippy::type_complexity)]
    let rows: Vec<(i64, String, String, String, Option<String>, String, Option<i64>)> = sqlx::query_as(
        "SELECT t.id, t.ticket_code, t.status, t.channel, t.current_jti, t.sync_xid::text, \
                floor(extract(epoch FROM q.issued_at))::bigint \
         FROM tickets t LEFT JOIN qr_issuances q ON q.jti = t.current_jti \
         WHERE t.merchant_id = $1 AND (t.sync_xid, t.id) > ($2::text::xid8, $3) AND t.sync_xid < $4::text::xid8 \
         ORDER BY t.sync_xid, t.id LIMIT $5",
    )
    .bind(device.merchant_id)
    .bind(after.xid.to_string())
    .bind(after.id)
    .bind(horizon.to_string())
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let complete = (rows.len() as i64) < limit;
    let next = match rows.last() {
        Some(last) if !complete => FeedCursor {
            xid: parse_xid(&last.5)?,
            id: last.0,
        },
        // Caught up: every change below the horizon has been handed out.
        _ => FeedCursor {
            xid: horizon,
            id: 0,
        }
        .max_with(after),
    };
    let ids: Vec<i64> = rows.iter().map(|row| row.0).collect();
    type EntitlementRow = (
        i64,
        String,
        String,
        i32,
        i32,
        i64,
        Option<sqlx::types::Json<EntitlementRules>>,
    );
    let entitlements: Vec<EntitlementRow> = sqlx::query_as(
        "SELECT ticket_id, function_code, name, total_uses, remaining_uses, id, rules FROM entitlements \
         WHERE ticket_id = ANY($1) ORDER BY ticket_id, id",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    // The newest uses each rule set needs, as the central's decision reads them.
    let needs: Vec<(i64, usize)> = entitlements
        .iter()
        .filter_map(|e| Some((e.5, e.6.as_ref()?.0.uses_needed())))
        .collect();
    let mut uses = crate::scan::recent_uses(&mut tx, &needs).await?;
    #[allow(clippy::type_complexity)]
    let (time_zone, venue_id, venue_code, venue_name, entry_function, capacity, inside, inside_on): (
        String,
        Option<i64>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<i64>,
        Option<chrono::NaiveDate>,
    ) = sqlx::query_as(
        "SELECT m.timezone, v.id, v.code, v.name, v.entry_function, v.capacity, v.inside, v.inside_on \
         FROM merchants m LEFT JOIN locations l ON l.id = $2 LEFT JOIN venues v ON v.id = l.venue_id \
         WHERE m.id = $1",
    )
    .bind(device.merchant_id)
    .bind(device.location_id)
    .fetch_one(&mut *tx)
    .await?;
    let as_of = Utc::now().timestamp();
    let zone = stile_shared::MerchantZone::parse(&time_zone)
        .ok_or_else(|| AppError::Internal(format!("merchant zone {time_zone:?}")))?;
    let venue = match (venue_code, venue_name, entry_function) {
        (Some(venue_code), Some(name), Some(entry_function)) => Some(SyncedVenue {
            venue_code,
            name,
            entry_function: FunctionCode::parse(&entry_function)
                .map_err(|_| AppError::Internal("venue entry function".into()))?,
            capacity,
            // The running count is of its day; another day's is 0.
            inside: match inside_on {
                Some(day) if zone.local_date(as_of) == Some(day) => inside.unwrap_or(0),
                _ => 0,
            },
            as_of,
        }),
        _ => None,
    };
    // Each ticket's latest passage at the device's venue: its presence there.
    let passages: Vec<(i64, String, i64)> = match venue_id {
        Some(venue_id) => {
            sqlx::query_as(
                "SELECT DISTINCT ON (ticket_id) ticket_id, direction, floor(extract(epoch FROM at))::bigint \
                 FROM passages WHERE venue_id = $1 AND ticket_id = ANY($2) \
                 ORDER BY ticket_id, at DESC, id DESC",
            )
            .bind(venue_id)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?
        }
        None => Vec::new(),
    };
    let mut passages: HashMap<i64, Passage> = passages
        .into_iter()
        .filter_map(|(ticket, direction, at)| {
            Some((
                ticket,
                Passage {
                    direction: Direction::parse(&direction)?,
                    at,
                },
            ))
        })
        .collect();
    let redeemed: Vec<(i64, String)> = sqlx::query_as(
        "SELECT t.id, r.function_code FROM tickets t \
         JOIN redemption_events r ON r.jti = t.current_jti AND r.ticket_id = t.id \
         WHERE t.id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut tickets = Vec::with_capacity(rows.len());
    for (id, ticket_code, status, channel, current_jti, _, current_issued_at) in rows {
        let bad = |what: &str| AppError::Internal(format!("ticket {id}: malformed {what}"));
        tickets.push(SyncedTicket {
            ticket_code,
            status: TicketStatus::parse(&status).ok_or_else(|| bad("status"))?,
            channel: Channel::parse(&channel).ok_or_else(|| bad("channel"))?,
            current_jti: current_jti
                .map(|jti| Jti::parse(&jti))
                .transpose()
                .map_err(|_| bad("jti"))?,
            current_issued_at,
            entitlements: entitlements
                .iter()
                .filter(|e| e.0 == id)
                .map(|(_, code, name, total, remaining, _, _)| {
                    Ok(EntitlementView {
                        function_code: FunctionCode::parse(code)
                            .map_err(|_| bad("function code"))?,
                        name: name.clone(),
                        total_uses: *total,
                        remaining_uses: *remaining,
                    })
                })
                .collect::<Result<_, AppError>>()?,
            redeemed_functions: redeemed
                .iter()
                .filter(|r| r.0 == id)
                .map(|(_, code)| FunctionCode::parse(code).map_err(|_| bad("function code")))
                .collect::<Result<_, _>>()?,
            rules: entitlements
                .iter()
                .filter(|e| e.0 == id)
                .filter_map(|(_, code, _, _, _, entitlement, rules)| {
                    let rules = rules.as_ref()?.0.clone();
                    let recent_uses = uses.remove(entitlement).unwrap_or_default();
                    Some(
                        FunctionCode::parse(code)
                            .map_err(|_| bad("function code"))
                            .map(|function_code| SyncedRules {
                                function_code,
                                rules,
                                recent_uses,
                            }),
                    )
                })
                .collect::<Result<_, _>>()?,
            passage: passages.remove(&id),
        });
    }
    if complete {
        // The device holds the whole state now: from here on it has a past to lose.
        note_synced(state, device).await?;
    }
    Ok(TicketFeedPage {
        tickets,
        next_cursor: next.encode(),
        complete,
        time_zone: Some(time_zone),
        venue,
        database_epoch: Some(database_epoch),
    })
}

impl FeedCursor {
    /// Never move a cursor backwards.
    fn max_with(self, other: FeedCursor) -> FeedCursor {
        if (self.xid, self.id) >= (other.xid, other.id) {
            self
        } else {
            other
        }
    }
}

fn parse_xid(raw: &str) -> Result<u64, AppError> {
    raw.parse()
        .map_err(|_| AppError::Internal(format!("xid8 {raw:?} is not a number")))
}

/// Applies a batch of offline decisions, one by one.
pub async fn upload(
    state: &AppState,
    device: &AuthenticatedDevice,
    decisions: &[OfflineDecision],
    lang: Lang,
) -> Result<Vec<UploadResult>, AppError> {
    if decisions.len() > MAX_UPLOAD {
        return Err(AppError::BadRequest(format!(
            "decisions: at most {MAX_UPLOAD} per upload"
        )));
    }
    if !decisions.is_empty() {
        sqlx::query("UPDATE devices SET last_upload_at = now() WHERE id = $1")
            .bind(device.device_pk)
            .execute(&state.pool)
            .await?;
    }
    let mut results = Vec::with_capacity(decisions.len());
    for decision in decisions {
        let result = upload_one(state, device, decision, lang).await?;
        results.push(result);
    }
    Ok(results)
}

fn invalid(decision: &OfflineDecision, why: &str, lang: Lang) -> UploadResult {
    UploadResult {
        scan_id: decision.scan_id.clone(),
        outcome: UploadOutcome::Invalid,
        code: ApiCode::BadRequest,
        message: format!("{}: {why}", ApiCode::BadRequest.message(lang)),
    }
}

async fn upload_one(
    state: &AppState,
    device: &AuthenticatedDevice,
    decision: &OfflineDecision,
    lang: Lang,
) -> Result<UploadResult, AppError> {
    let Ok(scan_id) = Uuid::parse_str(&decision.scan_id) else {
        return Ok(invalid(decision, "scan_id must be a UUID", lang));
    };
    let Ok(decided_at) = DateTime::parse_from_rfc3339(&decision.decided_at) else {
        return Ok(invalid(decision, "decided_at must be RFC 3339", lang));
    };
    let decided_at = decided_at.with_timezone(&Utc);
    let operator: Option<(String,)> =
        sqlx::query_as("SELECT username FROM operators WHERE id = $1 AND merchant_id = $2")
            .bind(decision.operator_id)
            .bind(device.merchant_id)
            .fetch_optional(&state.pool)
            .await?;
    let Some((operator_username,)) = operator else {
        return Ok(invalid(
            decision,
            "operator_id is not an operator of this merchant",
            lang,
        ));
    };
    let venue = scan::venue_of_location(&state.pool, device.location_id).await?;
    let function_code = match (decision.direction, &venue) {
        (Direction::Entry, _) => decision.function_code.clone(),
        (Direction::Exit, Some(venue)) => venue.entry_function.clone(),
        (Direction::Exit, None) => {
            return Ok(invalid(
                decision,
                "direction: exit needs a location of a venue",
                lang,
            ))
        }
    };
    let context = ScanContext {
        merchant_id: device.merchant_id,
        merchant_code: device.merchant_code.clone(),
        operator_id: decision.operator_id,
        operator_username,
        device: Some(DeviceAt {
            device_pk: device.device_pk,
            device_id: device.device_id.clone(),
        }),
        location: Some(LocationAt {
            location_id: device.location_id,
            venue_code: device.venue_code.clone(),
            venue,
        }),
        source: RedemptionSource::Offline,
    };
    let verified = state.keys.verify(&decision.qr_token).await;
    let ticket_code = verified.as_ref().ok().map(|v| v.claims.tid.clone());
    let command = ScanCommand {
        token_sha256: ScanCommand::token_digest(&decision.qr_token, decision.direction),
        subject: ScanSubject::Token(verified),
        function_code,
        scan_id: Some(scan_id),
        now: Utc::now(),
        decided_at: Some(decided_at),
        clock_tolerance_secs: state.settings.device_clock_tolerance_secs,
        direction: decision.direction,
    };
    let outcome = match scan::redeem(
        &state.redeemer,
        state.settings.token_policy(),
        &context,
        &command,
        || state.metrics.record_transaction_retry(),
    )
    .await
    {
        Ok(outcome) => outcome,
        Err(AppError::ScanIdReused) => {
            return Ok(invalid(
                decision,
                "scan_id was already used for a different scan",
                lang,
            ))
        }
        Err(error) => return Err(error),
    };
    let code = outcome.response.code;
    // A refused exit redeemed nothing: it is no conflict of the redemption log.
    if code != DecisionCode::Success && !outcome.replayed && decision.direction == Direction::Entry
    {
        record_conflict(state, &context, &command, ticket_code.as_deref(), code).await?;
    }
    tracing::info!(
        device = %device.device_id,
        decision = code.as_str(),
        replayed = outcome.replayed,
        "offline decision uploaded"
    );
    Ok(UploadResult {
        scan_id: decision.scan_id.clone(),
        outcome: if code == DecisionCode::Success {
            UploadOutcome::Applied
        } else {
            UploadOutcome::Conflict
        },
        code: code.into(),
        message: code.message(lang).to_owned(),
    })
}

/// Records an offline acceptance the central refused, for the merchant's reconciliation.
async fn record_conflict(
    state: &AppState,
    context: &ScanContext,
    command: &ScanCommand,
    ticket_code: Option<&str>,
    code: DecisionCode,
) -> Result<(), AppError> {
    let ticket: Option<(i64, i64)> = match ticket_code {
        Some(ticket_code) => {
            sqlx::query_as(
                "SELECT id, order_id FROM tickets WHERE ticket_code = $1 AND merchant_id = $2",
            )
            .bind(ticket_code)
            .bind(context.merchant_id)
            .fetch_optional(&state.pool)
            .await?
        }
        None => None,
    };
    let Some((ticket_id, order_id)) = ticket else {
        // An upload naming no ticket of this merchant has nothing to reconcile; the audit
        // trail has the decision.
        tracing::warn!(
            decision = code.as_str(),
            "offline decision for no ticket of this merchant"
        );
        return Ok(());
    };
    let mut tx = crate::db::begin(&state.pool).await?;
    let entry = LogEntry {
        context,
        ticket_id,
        order_id,
        redemption_event_id: None,
        function_code: &command.function_code,
        recorded_at: command.now,
        decided_at: command.decided_at.unwrap_or(command.now),
        scan_id: command.scan_id,
        result: "CONFLICT",
        meta: serde_json::json!({"code": code.as_str()}),
    };
    match scan::record_log_row(&mut tx, &entry).await {
        Ok(_) => tx.commit().await?,
        // Recorded already by a concurrent retry of the same upload.
        Err(error) if crate::db::is_unique_violation(&error, "merchant_redemptions_scan_idx") => {}
        Err(error) => return Err(error.into()),
    }
    tracing::warn!(
        device = context
            .device
            .as_ref()
            .map(|d| d.device_id.as_str())
            .unwrap_or("-"),
        decision = code.as_str(),
        "offline acceptance could not be applied: conflict recorded"
    );
    Ok(())
}

/// The stored answer to a scan, by its scan_id (for a gate resolving an unknown outcome).
pub async fn scan_by_id(
    state: &AppState,
    merchant_id: i64,
    scan_id: &str,
) -> Result<stile_shared::api::ScanResponse, AppError> {
    let scan_id = Uuid::parse_str(scan_id)
        .map_err(|_| AppError::BadRequest("scan_id must be a UUID".into()))?;
    let row: Option<(Option<serde_json::Value>,)> = sqlx::query_as(
        "SELECT response FROM scan_requests WHERE scan_id = $1 AND merchant_id = $2",
    )
    .bind(scan_id)
    .bind(merchant_id)
    .fetch_optional(&state.pool)
    .await?;
    let response = row
        .and_then(|(response,)| response)
        .ok_or(AppError::NotFound)?;
    serde_json::from_value(response)
        .map_err(|error| AppError::Internal(format!("stored scan answer: {error}")))
}

/// The device's merchant's operators with their password verifiers, for offline login.
pub async fn offline_operators(
    state: &AppState,
    device: &AuthenticatedDevice,
) -> Result<OfflineOperators, AppError> {
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT id, username, password_hash FROM operators WHERE merchant_id = $1 AND disabled_at IS NULL ORDER BY id",
    )
    .bind(device.merchant_id)
    .fetch_all(&state.pool)
    .await?;
    Ok(OfflineOperators {
        operators: rows
            .into_iter()
            .map(|(id, username, verifier)| OfflineOperator {
                id,
                username,
                merchant_code: device.merchant_code.clone(),
                verifier,
            })
            .collect(),
    })
}

/// What the central knows of the device's past; a first full sync is recorded here too.
pub async fn history(
    state: &AppState,
    device: &AuthenticatedDevice,
) -> Result<DeviceHistory, AppError> {
    let (first_synced_at, last_upload_at): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT first_synced_at, last_upload_at FROM devices WHERE id = $1")
            .bind(device.device_pk)
            .fetch_one(&state.pool)
            .await?;
    let at = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true));
    Ok(DeviceHistory {
        first_synced_at: at(first_synced_at),
        last_upload_at: at(last_upload_at),
    })
}

/// Notes the device's first full sync (a no-op after the first).
pub async fn note_synced(state: &AppState, device: &AuthenticatedDevice) -> Result<(), AppError> {
    sqlx::query(
        "UPDATE devices SET first_synced_at = now() WHERE id = $1 AND first_synced_at IS NULL",
    )
    .bind(device.device_pk)
    .execute(&state.pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::FeedCursor;

    #[test]
    fn feed_cursors_round_trip() {
        let cursor = FeedCursor { xid: 12_345, id: 7 };
        assert_eq!(FeedCursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(FeedCursor::decode("garbage!"), None);
        assert_eq!(
            FeedCursor::decode(&base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                "1.x"
            )),
            None
        );
    }
}
