//! The gate devices' endpoints under a device credential: keys, feed, operators, history,
//! offline uploads and the peer directory.

use super::ClientAddress;
use super::JsonBody;
use crate::auth::AuthenticatedDevice;
use crate::error::{no_store, AppError, RequestLang};
use crate::AppState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use stile_shared::api::{
    DecisionUpload, DeviceHistory, DevicePeer, DevicePeers, EnrollRequest, EnrollResponse,
    ErrorBody, OfflineOperators, PeerRegistration, TicketFeedPage, UploadResponse, VenueOccupancy,
};
use stile_shared::token::JwkSet;

/// The published QR verification keys, for a device.
#[utoipa::path(get, path = "/device/keys", tag = "devices",
    security(("device_credential" = [])),
    responses(
        (status = 200, description = "JWK Set of every key that still verifies tokens", body = JwkSet),
        (status = 401, description = "UNAUTHORIZED: bad device credential", body = ErrorBody),
    ))]
pub async fn device_keys(State(state): State<AppState>, _device: AuthenticatedDevice) -> Response {
    super::ops::published_keys(State(state)).await
}

/// The occupancy of the device's venue today, for the gate's status page.
#[utoipa::path(get, path = "/device/occupancy", tag = "devices",
    security(("device_credential" = [])),
    responses(
        (status = 200, description = "The venue of the device's location: inside now, capacity, today's entries and exits and five-minute series", body = VenueOccupancy),
        (status = 401, description = "UNAUTHORIZED: bad device credential", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: the device's location belongs to no venue", body = ErrorBody),
    ))]
pub async fn device_occupancy(
    State(state): State<AppState>,
    device: AuthenticatedDevice,
) -> Result<Response, AppError> {
    let venue = crate::occupancy::report(
        &state.pool,
        crate::occupancy::Venues::OfLocation {
            location_id: device.location_id,
        },
        None,
    )
    .await?
    .into_iter()
    .next()
    .ok_or(AppError::NotFound)?;
    Ok(no_store(Json(venue).into_response()))
}

/// What the central knows of the device's past.
#[utoipa::path(get, path = "/device/history", tag = "devices",
    security(("device_credential" = [])),
    responses(
        (status = 200, description = "When the device first completed a full ticket sync and last uploaded offline decisions; a gate that starts with an empty store while these are set has lost local state", body = DeviceHistory),
        (status = 401, description = "UNAUTHORIZED: bad device credential", body = ErrorBody),
    ))]
pub async fn device_history(
    State(state): State<AppState>,
    device: AuthenticatedDevice,
) -> Result<Response, AppError> {
    let history = crate::device::history(&state, &device).await?;
    Ok(no_store(Json(history).into_response()))
}

/// The operators a gate may log in while the central is unreachable.
#[utoipa::path(get, path = "/device/operators", tag = "devices",
    security(("device_credential" = [])),
    responses(
        (status = 200, description = "Every operator of the device's merchant with the verifier (argon2id PHC string) of their password. A gate replaces its copy with each answer, so a removed operator or a changed password stops working offline at the next sync", body = OfflineOperators),
        (status = 401, description = "UNAUTHORIZED: bad device credential", body = ErrorBody),
    ))]
pub async fn device_operators(
    State(state): State<AppState>,
    device: AuthenticatedDevice,
) -> Result<Response, AppError> {
    let operators = crate::device::offline_operators(&state, &device).await?;
    Ok(no_store(Json(operators).into_response()))
}

/// The device's change feed of ticket state.
#[utoipa::path(get, path = "/device/tickets", tag = "devices",
    params(
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous call; absent for a full sync"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 2000, description = "1 to 2000, default 1000"),
    ),
    security(("device_credential" = [])),
    responses(
        (status = 200, description = "Tickets of the device's merchant changed after the cursor, oldest change first", body = TicketFeedPage),
        (status = 400, description = "BAD_REQUEST: bad cursor or limit", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED: bad device credential", body = ErrorBody),
    ))]
pub async fn device_tickets(
    State(state): State<AppState>,
    device: AuthenticatedDevice,
    query: Result<Query<std::collections::HashMap<String, String>>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(query) = query.map_err(|rejection| AppError::BadRequest(rejection.body_text()))?;
    let page = crate::device::ticket_feed(
        &state,
        &device,
        query.get("cursor").map(String::as_str),
        query.get("limit").map(String::as_str),
    )
    .await?;
    Ok(no_store(Json(page).into_response()))
}

/// Upload decisions taken offline.
#[utoipa::path(post, path = "/device/decisions", tag = "devices",
    request_body = DecisionUpload,
    security(("device_credential" = [])),
    responses(
        (status = 200, description = "One result per decision, in order: applied, conflict (recorded for the merchant's reconciliation; IMPOSSIBLE_TIME when decided_at is before the token's iat or after the upload, beyond device_clock_tolerance_secs) or invalid. Idempotent by scan_id", body = UploadResponse),
        (status = 400, description = "BAD_REQUEST: malformed body or more than 500 decisions", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED: bad device credential", body = ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE: over 1 MiB", body = ErrorBody),
    ))]
pub async fn device_decisions(
    State(state): State<AppState>,
    RequestLang(lang): RequestLang,
    device: AuthenticatedDevice,
    JsonBody(upload): JsonBody<DecisionUpload>,
) -> Result<Response, AppError> {
    let results = crate::device::upload(&state, &device, &upload.decisions, lang).await?;
    Ok(no_store(Json(UploadResponse { results }).into_response()))
}

/// A new device exchanges its one-time enrollment code for its credential.
#[utoipa::path(post, path = "/device/enroll", tag = "devices",
    request_body = EnrollRequest,
    responses(
        (status = 200, description = "The device's secret: from now on it sends `Authorization: Bearer <device_id>:<secret>`. The code is spent", body = EnrollResponse),
        (status = 400, description = "BAD_REQUEST: malformed body", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED: unknown device, or a code that is wrong, spent or expired (the same answer)", body = ErrorBody),
    ))]
pub async fn device_enroll(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<EnrollRequest>,
) -> Result<Response, AppError> {
    let secret =
        crate::lifecycle::exchange_enrollment(&state.pool, &request.device_id, &request.code)
            .await?;
    Ok(no_store(
        Json(EnrollResponse {
            device_id: request.device_id,
            secret,
        })
        .into_response(),
    ))
}

/// A gate registers its peer key and the address of its peer listener.
#[utoipa::path(put, path = "/device/peer", tag = "devices",
    request_body = PeerRegistration,
    security(("device_credential" = [])),
    responses(
        (status = 200, description = "Registered (replacing any earlier key of this device): the other gates of the merchant receive it in `GET /device/peers` at their next sync", body = DevicePeer),
        (status = 400, description = "BAD_REQUEST: not a valid Ed25519 public key, or no usable address", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED: bad device credential", body = ErrorBody),
    ))]
pub async fn device_register_peer(
    State(state): State<AppState>,
    ClientAddress(source): ClientAddress,
    device: AuthenticatedDevice,
    JsonBody(registration): JsonBody<PeerRegistration>,
) -> Result<Response, AppError> {
    let registered = crate::peers::register(&state, &device, &registration, source).await?;
    Ok(no_store(Json(registered).into_response()))
}

/// The other gates of the device's merchant: who they are, where their peer listeners are
/// and the keys their messages are signed with.
#[utoipa::path(get, path = "/device/peers", tag = "devices",
    security(("device_credential" = [])),
    responses(
        (status = 200, description = "The merchant, this device's own registration, and every other unrevoked device of the merchant that registered a peer key", body = DevicePeers),
        (status = 401, description = "UNAUTHORIZED: bad device credential", body = ErrorBody),
    ))]
pub async fn device_peers(
    State(state): State<AppState>,
    device: AuthenticatedDevice,
) -> Result<Response, AppError> {
    let directory = crate::peers::directory(&state, &device).await?;
    Ok(no_store(Json(directory).into_response()))
}
