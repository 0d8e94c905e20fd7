//! The gate's endpoints under an operator token: `POST /venue/scan`, `GET /venue/scan/{scan_id}`
//! and `POST /qr/decrypt`.

use super::JsonBody;
use crate::auth::AuthenticatedOperator;
use crate::error::{no_store, status_of, AppError, RequestLang};
use crate::openapi::DecisionOrError;
use crate::scan::{
    self, DeviceAt, LocationAt, RedemptionSource, ScanCommand, ScanContext, ScanSubject,
};
use crate::{qr, AppState};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use std::time::Instant;
use stile_shared::api::{DecryptRequest, DecryptResponse, ErrorBody, ScanRequest, ScanResponse};
use stile_shared::{ApiCode, Direction};
use uuid::Uuid;

/// Scan a QR token and redeem one entitlement, atomically.
#[utoipa::path(post, path = "/venue/scan", tag = "venue",
    request_body = ScanRequest,
    security(("operator_jwt" = [])),
    params(("Accept-Language" = Option<String>, Header, description = "`en*` for English messages; zh-CN otherwise")),
    responses(
        (status = 200, description = "SUCCESS: one use redeemed (an entry), a re-entry, or an exit recorded (`direction: exit`)", body = ScanResponse),
        (status = 400, description = "INVALID_QR (a decision body), or BAD_REQUEST for a malformed body or an exit at a location of no venue (an error body)", body = DecisionOrError),
        (status = 401, description = "UNAUTHORIZED: missing, invalid or expired operator token", body = ErrorBody),
        (status = 403, description = "WRONG_MERCHANT (a decision body), or FORBIDDEN (an error body): the device is not registered to the operator's merchant at venue_code", body = DecisionOrError),
        (status = 409, description = "A refusal: ALREADY_REDEEMED, NOT_ENTITLED, EXHAUSTED, QR_EXPIRED, QR_SUPERSEDED, TICKET_NOT_ACTIVE, TICKET_VOID, NOT_YET_VALID, NO_LONGER_VALID, OUTSIDE_HOURS, DAILY_LIMIT, TOO_SOON, VENUE_FULL (an entry at a venue at capacity), NOT_INSIDE (an exit of a ticket not inside)", body = ScanResponse),
        (status = 413, description = "PAYLOAD_TOO_LARGE: body over 64 KiB", body = ErrorBody),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE: not application/json", body = ErrorBody),
        (status = 422, description = "SCAN_ID_REUSED: this scan_id was used for a different token or function, or by another merchant, operator and device (its stored answer is only replayed to whoever made it)", body = ErrorBody),
    ))]
pub async fn venue_scan(
    State(state): State<AppState>,
    RequestLang(lang): RequestLang,
    operator: AuthenticatedOperator,
    JsonBody(request): JsonBody<ScanRequest>,
) -> Result<Response, AppError> {
    let started = Instant::now();
    let scan_id = request
        .scan_id
        .as_deref()
        .map(Uuid::parse_str)
        .transpose()
        .map_err(|_| AppError::BadRequest("scan_id must be a UUID".into()))?;
    let Some(bound) = state
        .device_bindings
        .bind(
            &state.pool,
            operator.merchant_id,
            request.device_id.as_str(),
            request.venue_code.as_str(),
        )
        .await?
    else {
        tracing::warn!(operator = operator.id, device = %request.device_id, venue = %request.venue_code,
            "scan refused: device not registered to the operator's merchant at this venue");
        return Err(AppError::Forbidden(
            "device is not registered to your merchant at this venue_code".into(),
        ));
    };
    let direction = request.direction;
    // An exit redeems nothing: it is a passage of the venue's entry entitlement.
    let function_code = match (direction, &bound.venue) {
        (Direction::Entry, _) => request.function_code.clone(),
        (Direction::Exit, Some(venue)) => venue.entry_function.clone(),
        (Direction::Exit, None) => {
            return Err(AppError::BadRequest(format!(
                "direction: exit needs a location of a venue; {} belongs to none",
                request.venue_code
            )))
        }
    };
    let verified = state.keys.verify(&request.qr_token).await;
    let context = ScanContext {
        merchant_id: operator.merchant_id,
        merchant_code: operator.merchant_code.clone(),
        operator_id: operator.id,
        operator_username: operator.username.clone(),
        device: Some(DeviceAt {
            device_pk: bound.device_pk,
            device_id: request.device_id.to_string(),
        }),
        location: Some(LocationAt {
            location_id: bound.location_id,
            venue_code: request.venue_code.to_string(),
            venue: bound.venue.clone(),
        }),
        source: RedemptionSource::Venue,
    };
    let command = ScanCommand {
        token_sha256: ScanCommand::token_digest(&request.qr_token, direction),
        subject: ScanSubject::Token(verified),
        function_code,
        scan_id,
        now: Utc::now(),
        decided_at: None,
        clock_tolerance_secs: state.settings.device_clock_tolerance_secs,
        direction,
    };
    let metrics = state.metrics.clone();
    let outcome = scan::redeem(
        &state.redeemer,
        state.settings.token_policy(),
        &context,
        &command,
        move || metrics.record_transaction_retry(),
    )
    .await?;
    let mut response = outcome.response;
    response.message = response.code.message(lang).to_owned();
    let code = response.code;
    if !outcome.replayed {
        state.metrics.record_decision(code.as_str());
        state.metrics.record_scan_path(outcome.group_commit);
    }
    tracing::info!(
        decision = code.as_str(),
        jti = outcome.jti.as_ref().map(|j| j.as_str()).unwrap_or("-"),
        device = %request.device_id,
        operator = context.operator_id,
        function = %command.function_code,
        direction = direction.as_str(),
        replayed = outcome.replayed,
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        "scan decided"
    );
    Ok(no_store(
        (status_of(ApiCode::from(code)), Json(response)).into_response(),
    ))
}

/// What a QR token says, without redeeming.
#[utoipa::path(post, path = "/qr/decrypt", tag = "venue",
    request_body = DecryptRequest,
    security(("operator_jwt" = [])),
    responses(
        (status = 200, description = "The token's state, claims and ticket", body = DecryptResponse),
        (status = 400, description = "INVALID_QR, or BAD_REQUEST for a malformed body", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody),
        (status = 403, description = "WRONG_MERCHANT: another merchant's token (no ticket data)", body = ErrorBody),
    ))]
pub async fn qr_decrypt(
    State(state): State<AppState>,
    operator: AuthenticatedOperator,
    JsonBody(request): JsonBody<DecryptRequest>,
) -> Result<Response, AppError> {
    let answer = qr::decrypt(
        &state.pool,
        &state.keys,
        state.settings.token_policy(),
        &operator,
        &request.qr_token,
        Utc::now(),
    )
    .await?;
    Ok(no_store(Json(answer).into_response()))
}

/// The answer to an earlier scan, by its scan_id: how a gate resolves a scan whose answer
/// it never received.
#[utoipa::path(get, path = "/venue/scan/{scan_id}", tag = "venue",
    params(("scan_id" = uuid::Uuid, Path, description = "The scan_id the gate sent")),
    security(("operator_jwt" = [])),
    responses(
        (status = 200, description = "The stored decision (SUCCESS)", body = ScanResponse),
        (status = 400, description = "INVALID_QR stored (a decision body), or BAD_REQUEST: scan_id is not a UUID (an error body)", body = DecisionOrError),
        (status = 403, description = "WRONG_MERCHANT stored", body = ScanResponse),
        (status = 409, description = "A stored refusal", body = ScanResponse),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no scan with this id for the operator's merchant (it never reached the server, or has not committed)", body = ErrorBody),
    ))]
pub async fn venue_scan_by_id(
    State(state): State<AppState>,
    RequestLang(lang): RequestLang,
    operator: AuthenticatedOperator,
    Path(scan_id): Path<String>,
) -> Result<Response, AppError> {
    let mut response = crate::device::scan_by_id(&state, operator.merchant_id, &scan_id).await?;
    response.message = response.code.message(lang).to_owned();
    Ok(no_store(
        (status_of(ApiCode::from(response.code)), Json(response)).into_response(),
    ))
}
