//! The merchant redemption console: scanning a QR token or an order code, the order view,
//! and the reconciliation log (keyset-paged JSON and a streamed CSV of one day).
//!
//! Every redemption goes through the one redemption core ([`crate::scan::redeem`]); this
//! module only chooses what to redeem and shapes the answers. Another merchant's data is
//! never shown: another merchant's ticket or order scans as 403 with no data, another
//! merchant's order reads exactly like a missing one (404), and a cursor is signed and bound
//! to the merchant and the day it was made for.

use crate::auth::AuthenticatedOperator;
use crate::error::AppError;
use crate::qr;
use crate::scan::{self, LocationAt, RedemptionSource, ScanCommand, ScanContext, ScanSubject};
use crate::AppState;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use stile_shared::api::{
    EntitlementView, MerchantScanRequest, MerchantScanResponse, MerchantScanResult,
    MerchantTicketOutcome, OperatorRef, OrderEntitlementView, OrderTicketView, OrderView,
    PassengerView, RedemptionItem, RedemptionPage,
};
use stile_shared::decision::{check_token, is_own_ticket};
use stile_shared::{
    ApiCode, DecisionCode, Direction, FunctionCode, Identifier, Lang, TicketStatus,
};

/// Largest page of the reconciliation log.
pub const MAX_PAGE: i64 = 200;
pub const DEFAULT_PAGE: i64 = 50;

/// How a merchant scan went: the HTTP status and the body.
#[derive(Debug)]
pub struct MerchantScanAnswer {
    pub status: axum::http::StatusCode,
    pub body: MerchantScanResponse,
}

/// Redeems what `request.code` names.
pub async fn scan(
    state: &AppState,
    operator: &AuthenticatedOperator,
    request: &MerchantScanRequest,
    lang: Lang,
) -> Result<MerchantScanAnswer, AppError> {
    if request.code.is_empty() || request.code.len() > 1024 {
        return Err(AppError::BadRequest(
            "code must be 1 to 1024 characters".into(),
        ));
    }
    let function_code = match &request.function_code {
        Some(code) => code.clone(),
        None => FunctionCode::parse("ENTRY")
            .map_err(|_| AppError::Internal("ENTRY is not a function code".into()))?,
    };
    let location = match &request.location_id {
        None => None,
        Some(venue_code) => {
            let row: Option<(i64, Option<i64>, Option<String>)> = sqlx::query_as(
                "SELECT l.id, v.id, v.entry_function FROM locations l \
                 LEFT JOIN venues v ON v.id = l.venue_id \
                 WHERE l.merchant_id = $1 AND l.venue_code = $2",
            )
            .bind(operator.merchant_id)
            .bind(venue_code.as_str())
            .fetch_optional(&state.pool)
            .await?;
            let (location_id, venue_id, entry_function) = row.ok_or_else(|| {
                AppError::Forbidden("location_id is not a location of your merchant".into())
            })?;
            Some(LocationAt {
                location_id,
                venue_code: venue_code.to_string(),
                venue: venue_id
                    .zip(entry_function)
                    .and_then(|(venue_id, function)| {
                        Some(crate::scan::VenueRef {
                            venue_id,
                            entry_function: FunctionCode::parse(&function).ok()?,
                        })
                    }),
            })
        }
    };
    let context = ScanContext {
        merchant_id: operator.merchant_id,
        merchant_code: operator.merchant_code.clone(),
        operator_id: operator.id,
        operator_username: operator.username.clone(),
        device: None,
        location,
        source: RedemptionSource::Merchant,
    };
    let policy = state.settings.token_policy();
    let now = Utc::now();
    let looks_like_token = request.code.split('.').count() == 3;
    let mut outcomes = Vec::new();
    if looks_like_token {
        let verified = match state.keys.verify(&request.code).await {
            Ok(verified) => verified,
            Err(error) => {
                tracing::info!(operator = operator.id, error = %error, "merchant scan: invalid QR");
                return Ok(reject(
                    axum::http::StatusCode::BAD_REQUEST,
                    ApiCode::InvalidQr,
                    lang,
                    Vec::new(),
                ));
            }
        };
        // The shared order of checks (expiry, then merchant), as at /venue/scan.
        match check_token(
            &verified.claims,
            &operator.merchant_code,
            now.timestamp(),
            policy,
        ) {
            Err(DecisionCode::WrongMerchant) => {
                tracing::warn!(operator = operator.id, merchant = %operator.merchant_code,
                    "merchant scan refused: another merchant's ticket");
                return Err(AppError::WrongMerchant);
            }
            // Expired and not ours: say so, and nothing of the ticket.
            Err(code) if !is_own_ticket(&verified.claims, &operator.merchant_code) => {
                return Ok(reject(
                    crate::error::status_of(code.into()),
                    code.into(),
                    lang,
                    Vec::new(),
                ));
            }
            // Ours: the redemption core decides (and says QR_EXPIRED with the ticket).
            Err(_) | Ok(()) => {}
        }
        let ticket_code = verified.claims.tid.clone();
        let subject = ScanSubject::Token(Ok(verified));
        let digest = ScanCommand::token_digest(&request.code, Direction::Entry);
        outcomes.push(
            redeem_one(
                state,
                operator,
                &context,
                subject,
                digest,
                &function_code,
                &ticket_code,
                lang,
            )
            .await?,
        );
    } else {
        let order_code =
            Identifier::parse_field("code", &request.code).map_err(AppError::BadRequest)?;
        let order: Option<(i64, i64)> =
            sqlx::query_as("SELECT id, merchant_id FROM orders WHERE order_code = $1")
                .bind(order_code.as_str())
                .fetch_optional(&state.pool)
                .await?;
        let (order_id, owner) = order.ok_or(AppError::NotFound)?;
        if owner != operator.merchant_id {
            tracing::warn!(operator = operator.id, merchant = %operator.merchant_code,
                "merchant scan refused: another merchant's order");
            return Err(AppError::WrongMerchant);
        }
        let tickets: Vec<(String,)> =
            sqlx::query_as("SELECT ticket_code FROM tickets WHERE order_id = $1 ORDER BY id")
                .bind(order_id)
                .fetch_all(&state.pool)
                .await?;
        for (ticket_code,) in tickets {
            qr::ensure_current(&state.pool, &state.keys, policy, &ticket_code, now).await?;
            let subject = ScanSubject::Ticket {
                ticket_code: ticket_code.clone(),
            };
            let digest = ScanCommand::token_digest(&ticket_code, Direction::Entry);
            outcomes.push(
                redeem_one(
                    state,
                    operator,
                    &context,
                    subject,
                    digest,
                    &function_code,
                    &ticket_code,
                    lang,
                )
                .await?,
            );
        }
    }
    let redeemed = outcomes
        .iter()
        .filter(|o| o.code == DecisionCode::Success)
        .count();
    let answer = if redeemed > 0 && redeemed == outcomes.len() {
        MerchantScanAnswer {
            status: axum::http::StatusCode::OK,
            body: MerchantScanResponse {
                code: None,
                message: None,
                result: MerchantScanResult::Success,
                tickets: outcomes,
            },
        }
    } else if redeemed > 0 {
        MerchantScanAnswer {
            status: axum::http::StatusCode::OK,
            body: MerchantScanResponse {
                code: None,
                message: None,
                result: MerchantScanResult::Partial,
                tickets: outcomes,
            },
        }
    } else {
        // Nothing redeemable: the first ticket's reason is the answer's code.
        let code = outcomes
            .first()
            .map(|o| ApiCode::from(o.code))
            .unwrap_or(ApiCode::NotEntitled);
        reject(axum::http::StatusCode::CONFLICT, code, lang, outcomes)
    };
    let result = answer.body.result;
    state.metrics.record_merchant_scan(result);
    tracing::info!(
        operator = operator.id,
        merchant = %operator.merchant_code,
        location = context.location.as_ref().map(|l| l.venue_code.as_str()).unwrap_or("-"),
        function = %function_code,
        result = ?result,
        tickets = answer.body.tickets.len(),
        redeemed,
        "merchant scan"
    );
    Ok(answer)
}

/// Redeems one subject through the redemption core and shapes its ticket's outcome.
#[allow(clippy::too_many_arguments)]
async fn redeem_one(
    state: &AppState,
    operator: &AuthenticatedOperator,
    context: &ScanContext,
    subject: ScanSubject,
    token_sha256: [u8; 32],
    function_code: &FunctionCode,
    ticket_code: &str,
    lang: Lang,
) -> Result<MerchantTicketOutcome, AppError> {
    let command = ScanCommand {
        token_sha256,
        subject,
        function_code: function_code.clone(),
        scan_id: None,
        now: Utc::now(),
        decided_at: None,
        clock_tolerance_secs: state.settings.device_clock_tolerance_secs,
        direction: Direction::Entry,
    };
    let outcome = scan::redeem(
        &state.redeemer,
        state.settings.token_policy(),
        context,
        &command,
        || state.metrics.record_transaction_retry(),
    )
    .await?;
    ticket_outcome(state, operator, ticket_code, outcome.response, lang).await
}

fn reject(
    status: axum::http::StatusCode,
    code: ApiCode,
    lang: Lang,
    tickets: Vec<MerchantTicketOutcome>,
) -> MerchantScanAnswer {
    MerchantScanAnswer {
        status,
        body: MerchantScanResponse {
            code: Some(code),
            message: Some(code.message(lang).to_owned()),
            result: MerchantScanResult::Reject,
            tickets,
        },
    }
}

async fn ticket_outcome(
    state: &AppState,
    operator: &AuthenticatedOperator,
    ticket_code: &str,
    response: stile_shared::api::ScanResponse,
    lang: Lang,
) -> Result<MerchantTicketOutcome, AppError> {
    // The ticket is the operator's merchant's (checked before): show it even when the core
    // answered without it (an expired QR).
    let (passenger_name,): (String,) = sqlx::query_as(
        "SELECT passenger_name FROM tickets WHERE ticket_code = $1 AND merchant_id = $2",
    )
    .bind(ticket_code)
    .bind(operator.merchant_id)
    .fetch_optional(&state.pool)
    .await?
    .unwrap_or_default();
    let entitlements: Vec<EntitlementView> = match response.ticket {
        Some(ticket) => ticket.entitlements,
        None => qr::load_ticket_view(&state.pool, operator.merchant_id, ticket_code)
            .await?
            .map(|(_, _, view)| view.entitlements)
            .unwrap_or_default(),
    };
    Ok(MerchantTicketOutcome {
        ticket_code: ticket_code.to_owned(),
        passenger_name,
        code: response.code,
        message: response.code.message(lang).to_owned(),
        redemption: response.redemption,
        entitlements,
    })
}

/// (ticket id, function code, name, total, remaining, last redeemed at).
type OrderEntitlementRow = (
    i64,
    String,
    String,
    i32,
    i32,
    Option<DateTime<Utc>>,
    Option<sqlx::types::Json<stile_shared::EntitlementRules>>,
);

/// An order's entitlements grouped by passenger. Another merchant's order is `NotFound`,
/// exactly like a missing one.
pub async fn order_view(
    state: &AppState,
    operator: &AuthenticatedOperator,
    order_code: &str,
) -> Result<OrderView, AppError> {
    let order: Option<(i64,)> =
        sqlx::query_as("SELECT id FROM orders WHERE order_code = $1 AND merchant_id = $2")
            .bind(order_code)
            .bind(operator.merchant_id)
            .fetch_optional(&state.pool)
            .await?;
    let (order_id,) = order.ok_or(AppError::NotFound)?;
    let tickets: Vec<(i64, String, String, String)> = sqlx::query_as(
        "SELECT id, ticket_code, status, passenger_name FROM tickets WHERE order_id = $1 ORDER BY id",
    )
    .bind(order_id)
    .fetch_all(&state.pool)
    .await?;
    let ids: Vec<i64> = tickets.iter().map(|t| t.0).collect();
    let entitlements: Vec<OrderEntitlementRow> = sqlx::query_as(
        "SELECT e.ticket_id, e.function_code, e.name, e.total_uses, e.remaining_uses, \
         (SELECT max(r.redeemed_at) FROM redemption_events r WHERE r.entitlement_id = e.id), e.rules \
         FROM entitlements e WHERE e.ticket_id = ANY($1) ORDER BY e.ticket_id, e.id",
    )
    .bind(&ids)
    .fetch_all(&state.pool)
    .await?;
    let mut passengers: Vec<PassengerView> = Vec::new();
    for (ticket_id, ticket_code, status, passenger_name) in tickets {
        let status = TicketStatus::parse(&status).ok_or_else(|| {
            AppError::Internal(format!("ticket {ticket_id} has status {status:?}"))
        })?;
        let ticket = OrderTicketView {
            ticket_code,
            status,
            entitlements: entitlements
                .iter()
                .filter(|e| e.0 == ticket_id)
                .map(|(_, code, name, total, remaining, last, rules)| {
                    FunctionCode::parse(code)
                        .map(|function_code| OrderEntitlementView {
                            function_code,
                            name: name.clone(),
                            total_uses: *total,
                            remaining_uses: *remaining,
                            last_redeemed_at: last.map(rfc3339),
                            rules: rules.as_ref().map(|rules| rules.0.clone()),
                        })
                        .map_err(|_| {
                            AppError::Internal(format!("ticket {ticket_id}: bad function code"))
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        match passengers
            .iter_mut()
            .find(|p| p.passenger_name == passenger_name)
        {
            Some(passenger) => passenger.tickets.push(ticket),
            None => passengers.push(PassengerView {
                passenger_name,
                tickets: vec![ticket],
            }),
        }
    }
    Ok(OrderView {
        order_id: order_code.to_owned(),
        passengers,
    })
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, false)
}

/// The query of `GET /merchant/redemptions` (and `.csv`), as sent.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RedemptionQuery {
    pub date: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<String>,
}

/// Where the next page starts: after (`redeemed_at`, `id`) of the last row shown, within one
/// merchant and one day. Signed, so a client cannot forge or retarget it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    /// Merchant id.
    m: i64,
    /// The day, as requested.
    d: NaiveDate,
    /// `redeemed_at` of the last row, microseconds since the epoch.
    t: i64,
    /// `id` of the last row.
    i: i64,
}

type HmacSha256 = Hmac<Sha256>;

fn sign_cursor(key: &[u8], cursor: &Cursor) -> Result<String, AppError> {
    let payload = serde_json::to_vec(cursor)
        .map_err(|error| AppError::Internal(format!("cursor: {error}")))?;
    let mut mac = HmacSha256::new_from_slice(key)
        .map_err(|error| AppError::Internal(format!("cursor key: {error}")))?;
    mac.update(&payload);
    let tag = mac.finalize().into_bytes();
    Ok(format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&payload),
        URL_SAFE_NO_PAD.encode(&tag[..16])
    ))
}

fn open_cursor(key: &[u8], raw: &str) -> Option<Cursor> {
    let (payload, tag) = raw.split_once('.')?;
    let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    mac.update(&payload);
    mac.verify_truncated_left(&tag).ok()?;
    serde_json::from_slice(&payload).ok()
}

/// A validated request for one page (or the whole day, for CSV).
#[derive(Debug, Clone)]
pub struct PageRequest {
    pub date: NaiveDate,
    after: Option<(DateTime<Utc>, i64)>,
    pub limit: i64,
    day_start: DateTime<Utc>,
    day_end: DateTime<Utc>,
}

/// Checks the query: the date, the limit, and a cursor made for this merchant and day.
pub async fn page_request(
    state: &AppState,
    operator: &AuthenticatedOperator,
    query: &RedemptionQuery,
) -> Result<PageRequest, AppError> {
    let limit = crate::params::limit(query.limit.as_deref(), DEFAULT_PAGE, MAX_PAGE)
        .map_err(AppError::BadRequest)?;
    let date = crate::params::date(query.date.as_deref()).map_err(AppError::BadRequest)?;
    // The day's bounds in the merchant's time zone (and "today" there when no date is given).
    let (date, day_start, day_end): (NaiveDate, DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
        "WITH d AS (SELECT COALESCE($2::date, (now() AT TIME ZONE m.timezone)::date) AS day, m.timezone \
         FROM merchants m WHERE m.id = $1) \
         SELECT day, day::timestamp AT TIME ZONE timezone, (day + 1)::timestamp AT TIME ZONE timezone FROM d",
    )
    .bind(operator.merchant_id)
    .bind(date)
    .fetch_one(&state.pool)
    .await?;
    let after = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(raw) => {
            let cursor = open_cursor(state.cursor_key.as_slice(), raw)
                .filter(|c| c.m == operator.merchant_id && c.d == date)
                .ok_or_else(|| {
                    AppError::BadRequest(
                        "cursor is not one this server gave for this merchant and date".into(),
                    )
                })?;
            let at = DateTime::<Utc>::from_timestamp_micros(cursor.t)
                .ok_or_else(|| AppError::BadRequest("cursor is malformed".into()))?;
            Some((at, cursor.i))
        }
    };
    Ok(PageRequest {
        date,
        after,
        limit,
        day_start,
        day_end,
    })
}

type LogRow = (
    i64,
    DateTime<Utc>,
    String,
    String,
    String,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    String,
    Option<String>,
);

/// The log query: `$1` merchant, `$2`/`$3` the day's bounds, then either `$4` limit, or
/// `$4`/`$5` the cursor's (`redeemed_at`, `id`) and `$6` limit. Public so the benchmark can
/// `EXPLAIN` exactly what the server runs.
pub fn page_sql(after_cursor: bool) -> String {
    if after_cursor {
        format!(
            "{LOG_COLUMNS} AND (mr.redeemed_at, mr.id) < ($4, $5) \
             ORDER BY mr.redeemed_at DESC, mr.id DESC LIMIT $6"
        )
    } else {
        format!("{LOG_COLUMNS} ORDER BY mr.redeemed_at DESC, mr.id DESC LIMIT $4")
    }
}

const LOG_COLUMNS: &str = "SELECT mr.id, mr.redeemed_at, t.ticket_code, o.order_code, mr.function_code, \
     mr.operator_id, op.username, l.venue_code, d.device_id, mr.source, mr.decided_at, mr.uploaded_at, \
     mr.result, mr.meta->>'code' \
     FROM merchant_redemptions mr \
     JOIN tickets t ON t.id = mr.ticket_id \
     JOIN orders o ON o.id = mr.order_id \
     LEFT JOIN operators op ON op.id = mr.operator_id \
     LEFT JOIN locations l ON l.id = mr.location_id \
     LEFT JOIN devices d ON d.id = mr.device_id \
     WHERE mr.merchant_id = $1 AND mr.redeemed_at >= $2 AND mr.redeemed_at < $3";

/// One page of the merchant's log, newest first, keyset-paged on (`redeemed_at`, `id`).
pub async fn redemptions(
    state: &AppState,
    operator: &AuthenticatedOperator,
    request: &PageRequest,
) -> Result<RedemptionPage, AppError> {
    let rows: Vec<LogRow> = match request.after {
        None => {
            sqlx::query_as(&page_sql(false))
                .bind(operator.merchant_id)
                .bind(request.day_start)
                .bind(request.day_end)
                .bind(request.limit + 1)
                .fetch_all(&state.pool)
                .await?
        }
        Some((at, id)) => {
            sqlx::query_as(&page_sql(true))
                .bind(operator.merchant_id)
                .bind(request.day_start)
                .bind(request.day_end)
                .bind(at)
                .bind(id)
                .bind(request.limit + 1)
                .fetch_all(&state.pool)
                .await?
        }
    };
    let more = rows.len() as i64 > request.limit;
    let rows = &rows[..rows.len().min(request.limit as usize)];
    let next_cursor = match (more, rows.last()) {
        (true, Some(last)) => Some(sign_cursor(
            state.cursor_key.as_slice(),
            &Cursor {
                m: operator.merchant_id,
                d: request.date,
                t: last.1.timestamp_micros(),
                i: last.0,
            },
        )?),
        _ => None,
    };
    Ok(RedemptionPage {
        items: rows.iter().cloned().map(log_item).collect(),
        next_cursor,
    })
}

fn log_item(row: LogRow) -> RedemptionItem {
    let (
        id,
        redeemed_at,
        ticket_code,
        order_code,
        function_code,
        operator_id,
        username,
        venue_code,
        device_id,
        source,
        decided_at,
        uploaded_at,
        result,
        conflict_code,
    ) = row;
    RedemptionItem {
        id,
        redeemed_at: rfc3339(redeemed_at),
        ticket_code,
        order_id: order_code,
        function_code,
        operator: operator_id.map(|id| OperatorRef {
            id,
            username: username.unwrap_or_default(),
        }),
        venue_code,
        device_id,
        source,
        decided_at: rfc3339(decided_at),
        uploaded_at: uploaded_at.map(rfc3339),
        result,
        conflict_code,
    }
}

/// The CSV header of `GET /merchant/redemptions.csv`.
pub const CSV_HEADER: &str = "id,redeemed_at,ticket_code,order_id,function_code,operator_id,operator_username,venue_code,device_id,source,decided_at,uploaded_at,result,conflict_code\n";

/// The day's log as CSV lines, page by page, sent into `lines` (the HTTP body streams them).
pub async fn stream_csv(
    state: AppState,
    operator: AuthenticatedOperator,
    mut request: PageRequest,
    lines: tokio::sync::mpsc::Sender<Result<String, std::io::Error>>,
) {
    request.limit = MAX_PAGE;
    if lines.send(Ok(CSV_HEADER.to_owned())).await.is_err() {
        return;
    }
    loop {
        let page = match redemptions(&state, &operator, &request).await {
            Ok(page) => page,
            Err(error) => {
                tracing::error!(error = %error, "CSV export failed midway");
                let _ = lines
                    .send(Err(std::io::Error::other("export failed")))
                    .await;
                return;
            }
        };
        let mut chunk = String::new();
        for item in &page.items {
            chunk.push_str(&csv_line(item));
        }
        if lines.send(Ok(chunk)).await.is_err() {
            return;
        }
        let Some(cursor) = page
            .next_cursor
            .as_deref()
            .and_then(|c| open_cursor(state.cursor_key.as_slice(), c))
        else {
            return;
        };
        let Some(at) = DateTime::<Utc>::from_timestamp_micros(cursor.t) else {
            return;
        };
        request.after = Some((at, cursor.i));
    }
}

/// One CSV record (RFC 4180 quoting).
pub fn csv_line(item: &RedemptionItem) -> String {
    let operator_id = item
        .operator
        .as_ref()
        .map(|o| o.id.to_string())
        .unwrap_or_default();
    let username = item
        .operator
        .as_ref()
        .map(|o| o.username.clone())
        .unwrap_or_default();
    let fields = [
        item.id.to_string(),
        item.redeemed_at.clone(),
        item.ticket_code.clone(),
        item.order_id.clone(),
        item.function_code.clone(),
        operator_id,
        username,
        item.venue_code.clone().unwrap_or_default(),
        item.device_id.clone().unwrap_or_default(),
        item.source.clone(),
        item.decided_at.clone(),
        item.uploaded_at.clone().unwrap_or_default(),
        item.result.clone(),
        item.conflict_code.clone().unwrap_or_default(),
    ];
    let quoted: Vec<String> = fields
        .iter()
        .map(|field| {
            if field.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", field.replace('"', "\"\""))
            } else {
                field.clone()
            }
        })
        .collect();
    format!("{}\n", quoted.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_tampering() {
        let key = [7u8; 32];
        let cursor = Cursor {
            m: 1,
            d: NaiveDate::from_ymd_opt(2026, 11, 24).expect("date"),
            t: 1_764_000_000_000_000,
            i: 42,
        };
        let signed = sign_cursor(&key, &cursor).expect("sign");
        assert_eq!(open_cursor(&key, &signed), Some(cursor.clone()));
        assert_eq!(open_cursor(&[8u8; 32], &signed), None, "another key");
        let (payload, tag) = signed.split_once('.').expect("two parts");
        let forged_payload = URL_SAFE_NO_PAD.encode(br#"{"m":2,"d":"2026-11-24","t":1,"i":1}"#);
        assert_eq!(open_cursor(&key, &format!("{forged_payload}.{tag}")), None);
        assert_eq!(open_cursor(&key, payload), None);
        assert_eq!(open_cursor(&key, "garbage"), None);
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let item = RedemptionItem {
            id: 1,
            redeemed_at: "2026-11-24T10:00:00.000+00:00".into(),
            ticket_code: "TK-1".into(),
            order_id: "ORD-1".into(),
            function_code: "ENTRY".into(),
            operator: Some(OperatorRef {
                id: 3,
                username: "a,\"b\"".into(),
            }),
            venue_code: None,
            device_id: None,
            source: "merchant".into(),
            decided_at: "2026-11-24T10:00:00.000+00:00".into(),
            uploaded_at: None,
            result: "SUCCESS".into(),
            conflict_code: None,
        };
        assert_eq!(
            csv_line(&item),
            "1,2026-11-24T10:00:00.000+00:00,TK-1,ORD-1,ENTRY,3,\"a,\"\"b\"\"\",,,merchant,2026-11-24T10:00:00.000+00:00,,SUCCESS,\n"
        );
    }
}
