//! The HTTP surface: routes, handlers and the request-level concerns around them (JSON
//! bodies with contract error bodies, body size cap, metrics and access logs).
//!
//! Handlers parse and check input, call the domain modules (`scan`, `qr`, `auth`, `keys`)
//! and shape answers; they hold no business rule of their own.

use crate::auth::{verify_password, AuthenticatedChannel, AuthenticatedOperator};
use crate::error::{localize, no_store, status_of, AppError, RequestLang};
use crate::scan::{
    self, DeviceAt, LocationAt, RedemptionSource, ScanCommand, ScanContext, ScanSubject,
};
use crate::{qr, AppState};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::de::DeserializeOwned;
use std::time::Instant;
use stile_shared::api::{
    DecisionUpload, DecryptRequest, DecryptResponse, DeviceHistory, ErrorBody, IssuedQr,
    LoginRequest, LoginResponse, MerchantScanRequest, MerchantScanResponse, OfflineOperators,
    OperatorInfo, OrderView, RedemptionPage, ScanRequest, ScanResponse, TicketFeedPage,
    UploadResponse,
};
use stile_shared::token::JwkSet;
use stile_shared::ApiCode;
use uuid::Uuid;

/// Largest request body accepted (contract: 413 above 64 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest batch of offline decisions (500 decisions of a few hundred bytes each).
pub const MAX_UPLOAD_BYTES: usize = 1024 * 1024;
/// Largest seed file the admin API accepts.
pub const MAX_SEED_BYTES: usize = 16 * 1024 * 1024;

/// The whole API, testable without a socket.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/operators/login", post(login))
        .route("/venue/scan", post(venue_scan))
        .route("/qr/decrypt", post(qr_decrypt))
        .route("/tickets/{ticket_code}/qr", post(issue_qr))
        .route("/merchant/tickets/scan", post(merchant_scan))
        .route("/merchant/orders/{orderId}", get(merchant_order))
        .route("/merchant/redemptions", get(merchant_redemptions))
        .route("/merchant/redemptions.csv", get(merchant_redemptions_csv))
        .route("/venue/scan/{scan_id}", get(venue_scan_by_id))
        .route("/device/keys", get(device_keys))
        .route("/device/tickets", get(device_tickets))
        .route("/device/operators", get(device_operators))
        .route("/device/history", get(device_history))
        .route(
            "/device/decisions",
            post(device_decisions).layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES)),
        )
        .route("/keys", get(published_keys))
        .route(
            "/admin/seed",
            post(admin_seed).layer(DefaultBodyLimit::max(MAX_SEED_BYTES)),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(middleware::from_fn(localize))
        .with_state(state)
}

/// A JSON body whose every rejection is a contract error body: 400 naming the field, 413,
/// or 415.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &S) -> Result<Self, AppError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> AppError {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => AppError::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => AppError::UnsupportedMediaType,
        _ => {
            let text = rejection.body_text();
            // Keep serde's own words (they name the field and position), drop the framework's
            // preamble.
            let detail = text
                .split_once(": ")
                .map(|(_, rest)| rest.to_owned())
                .unwrap_or(text);
            AppError::BadRequest(detail)
        }
    }
}

async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().clone();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state
        .metrics
        .record_request(&route, status, elapsed.as_secs_f64());
    tracing::debug!(%method, route, status, latency_ms = elapsed.as_secs_f64() * 1000.0, "request");
    response
}

async fn not_found() -> AppError {
    AppError::NotFound
}

fn check_field(name: &str, value: &str, max: usize) -> Result<(), AppError> {
    if value.is_empty() || value.chars().count() > max {
        return Err(AppError::BadRequest(format!(
            "{name} must be 1 to {max} characters"
        )));
    }
    Ok(())
}

/// Operator login.
#[utoipa::path(post, path = "/operators/login", tag = "operators",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = LoginResponse),
        (status = 400, description = "Malformed body (the message names the field)", body = ErrorBody),
        (status = 401, description = "INVALID_CREDENTIALS: unknown user or wrong password (the same answer)", body = ErrorBody),
        (status = 429, description = "TOO_MANY_REQUESTS: 10 failed attempts for this username within 5 minutes", body = ErrorBody),
    ))]
pub async fn login(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<LoginRequest>,
) -> Result<Response, AppError> {
    check_field("username", &request.username, 64)?;
    check_field("password", &request.password, 1024)?;
    let now = Utc::now();
    let window_start = now - chrono::Duration::seconds(state.settings.login_window_secs);
    let (failures,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM login_failures WHERE username = $1 AND failed_at > $2",
    )
    .bind(&request.username)
    .bind(window_start)
    .fetch_one(&state.pool)
    .await?;
    if failures >= state.settings.login_max_failures {
        tracing::warn!(username = %request.username, "login throttled");
        return Err(AppError::TooManyRequests);
    }
    let operator: Option<(i64, String, i64, String)> = sqlx::query_as(
        "SELECT o.id, o.password_hash, m.id, m.code FROM operators o \
         JOIN merchants m ON m.id = o.merchant_id WHERE o.username = $1",
    )
    .bind(&request.username)
    .fetch_optional(&state.pool)
    .await?;
    // An unknown user is checked against a dummy hash, so both failures take as long.
    let stored_hash = operator
        .as_ref()
        .map(|(_, hash, _, _)| hash.clone())
        .unwrap_or_else(|| state.dummy_hash.to_string());
    let password = request.password.clone();
    let password_ok = tokio::task::spawn_blocking(move || verify_password(&stored_hash, &password))
        .await
        .map_err(|error| AppError::Internal(format!("password check: {error}")))?;
    let operator = match operator {
        Some(operator) if password_ok => operator,
        _ => {
            sqlx::query("DELETE FROM login_failures WHERE username = $1 AND failed_at <= $2")
                .bind(&request.username)
                .bind(window_start)
                .execute(&state.pool)
                .await?;
            sqlx::query("INSERT INTO login_failures (username, failed_at) VALUES ($1, $2)")
                .bind(&request.username)
                .bind(now)
                .execute(&state.pool)
                .await?;
            state.metrics.record_login_failure();
            tracing::info!(username = %request.username, "login failed");
            return Err(AppError::InvalidCredentials);
        }
    };
    let (operator_id, _, merchant_id, merchant_code) = operator;
    let authenticated = AuthenticatedOperator {
        id: operator_id,
        username: request.username.clone(),
        merchant_id,
        merchant_code: merchant_code.clone(),
    };
    let token = state
        .operator_tokens
        .issue(&authenticated, now.timestamp())?;
    tracing::info!(operator = operator_id, merchant = %merchant_code, "operator logged in");
    Ok(no_store(
        Json(LoginResponse {
            token,
            token_type: "Bearer".into(),
            expires_in: state.operator_tokens.ttl_secs,
            operator: OperatorInfo {
                id: operator_id,
                username: request.username,
                merchant_code,
            },
        })
        .into_response(),
    ))
}

/// Scan a QR token and redeem one entitlement, atomically.
#[utoipa::path(post, path = "/venue/scan", tag = "venue",
    request_body = ScanRequest,
    security(("operator_jwt" = [])),
    params(("Accept-Language" = Option<String>, Header, description = "`en*` for English messages; zh-CN otherwise")),
    responses(
        (status = 200, description = "SUCCESS: one use redeemed", body = ScanResponse),
        (status = 400, description = "INVALID_QR (a decision body), or BAD_REQUEST for a malformed body", body = ScanResponse),
        (status = 401, description = "UNAUTHORIZED: missing, invalid or expired operator token", body = ErrorBody),
        (status = 403, description = "WRONG_MERCHANT (a decision body), or FORBIDDEN: the device is not registered to the operator's merchant at venue_code", body = ScanResponse),
        (status = 409, description = "A refusal: ALREADY_REDEEMED, NOT_ENTITLED, EXHAUSTED, QR_EXPIRED, QR_SUPERSEDED, TICKET_NOT_ACTIVE, TICKET_VOID", body = ScanResponse),
        (status = 413, description = "PAYLOAD_TOO_LARGE: body over 64 KiB", body = ErrorBody),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE: not application/json", body = ErrorBody),
        (status = 422, description = "SCAN_ID_REUSED: this scan_id was used for a different token or function", body = ErrorBody),
    ))]
pub async fn venue_scan(
    State(state): State<AppState>,
    RequestLang(lang): RequestLang,
    operator: AuthenticatedOperator,
    JsonBody(request): JsonBody<ScanRequest>,
) -> Result<Response, AppError> {
    let started = Instant::now();
    check_field("venue_code", &request.venue_code, 64)?;
    check_field("device_id", &request.device_id, 64)?;
    let scan_id = request
        .scan_id
        .as_deref()
        .map(Uuid::parse_str)
        .transpose()
        .map_err(|_| AppError::BadRequest("scan_id must be a UUID".into()))?;
    let Some((device_pk, location_id)) = scan::bind_device(
        &state.pool,
        operator.merchant_id,
        &request.device_id,
        &request.venue_code,
    )
    .await?
    else {
        tracing::warn!(operator = operator.id, device = %request.device_id, venue = %request.venue_code,
            "scan refused: device not registered to the operator's merchant at this venue");
        return Err(AppError::Forbidden(
            "device is not registered to your merchant at this venue_code".into(),
        ));
    };
    let verified = state.keys.verify(&request.qr_token).await;
    let context = ScanContext {
        merchant_id: operator.merchant_id,
        merchant_code: operator.merchant_code.clone(),
        operator_id: operator.id,
        operator_username: operator.username.clone(),
        device: Some(DeviceAt {
            device_pk,
            device_id: request.device_id.clone(),
        }),
        location: Some(LocationAt {
            location_id,
            venue_code: request.venue_code.clone(),
        }),
        source: RedemptionSource::Venue,
    };
    let command = ScanCommand {
        token_sha256: ScanCommand::token_digest(&request.qr_token),
        subject: ScanSubject::Token(verified),
        function_code: request.function_code.clone(),
        scan_id,
        now: Utc::now(),
        decided_at: None,
    };
    let metrics = state.metrics.clone();
    let outcome = scan::redeem(
        &state.pool,
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
    }
    tracing::info!(
        decision = code.as_str(),
        jti = outcome.jti.as_ref().map(|j| j.as_str()).unwrap_or("-"),
        device = %request.device_id,
        operator = context.operator_id,
        function = %command.function_code,
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

/// Issue a fresh QR token for a ticket (superseding the previous one).
#[utoipa::path(post, path = "/tickets/{ticket_code}/qr", tag = "channels",
    params(("ticket_code" = String, Path, description = "The ticket's code")),
    security(("channel_key" = [])),
    responses(
        (status = 200, description = "A fresh QR token; every older token of the ticket is superseded", body = IssuedQr),
        (status = 401, description = "UNAUTHORIZED: missing or unknown channel key", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the ticket is of the other channel kind", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no such ticket", body = ErrorBody),
    ))]
pub async fn issue_qr(
    State(state): State<AppState>,
    channel: AuthenticatedChannel,
    Path(ticket_code): Path<String>,
) -> Result<Response, AppError> {
    let issued = qr::issue(
        &state.pool,
        &state.keys,
        state.settings.token_policy(),
        &channel,
        &ticket_code,
        Utc::now(),
    )
    .await?;
    tracing::info!(jti = %issued.jti, channel = channel.id, "QR issued");
    Ok(no_store(Json(issued).into_response()))
}

/// The published QR verification keys (JWK Set, RFC 7517/8037).
#[utoipa::path(get, path = "/keys", tag = "keys",
    responses((status = 200, description = "Every key that still verifies tokens", body = JwkSet)))]
pub async fn published_keys(State(state): State<AppState>) -> Response {
    let mut response = Json(state.keys.ring().jwks.clone()).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    response
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Ready"), (status = 503, description = "Database unreachable", body = ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    match sqlx::query("SELECT 1").execute(&state.pool).await {
        Ok(_) => Json(serde_json::json!({"status": "ready"})).into_response(),
        Err(error) => {
            tracing::warn!(error = %error, "not ready: database unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(ErrorBody {
                    code: ApiCode::Internal,
                    message: "database unreachable".into(),
                }),
            )
                .into_response()
        }
    }
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Metrics", content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    match crate::outbox::depth(&state.pool).await {
        Ok((pending, dead)) => state.metrics.set_outbox(pending, dead),
        Err(error) => tracing::warn!(error = %error, "outbox depth unavailable for /metrics"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document")))]
pub async fn openapi(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json((*state.openapi).clone())
}

/// Load a seed file (the same format and rules as `central-server seed`).
#[utoipa::path(post, path = "/admin/seed", tag = "admin",
    request_body(content = String, content_type = "application/json", description = "A seed file (format in the README); up to 16 MiB"),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Loaded; rows inserted or changed, by kind", body = serde_json::Value),
        (status = 400, description = "BAD_REQUEST: the file is refused whole; the message names the offending field's path", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED: wrong admin token", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the admin API is off (no STILE_ADMIN_TOKEN configured)", body = ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE: over 16 MiB", body = ErrorBody),
    ))]
pub async fn admin_seed(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Result<String, axum::extract::rejection::StringRejection>,
) -> Result<Response, AppError> {
    let Some(expected) = state.settings.admin_token.as_deref() else {
        return Err(AppError::Forbidden("the admin API is off".into()));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Compare digests, so the comparison takes the same time wherever the strings differ.
    if crate::auth::sha256_hex(presented) != crate::auth::sha256_hex(expected) {
        return Err(AppError::Unauthorized);
    }
    let text = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => AppError::PayloadTooLarge,
        _ => AppError::BadRequest(rejection.body_text()),
    })?;
    let file = crate::seed::parse(&text).map_err(seed_error)?;
    let summary = crate::seed::apply(&state.pool, &file)
        .await
        .map_err(seed_error)?;
    tracing::info!(%summary, "seed loaded through the admin API");
    let changed: serde_json::Map<String, serde_json::Value> = summary
        .changed
        .iter()
        .map(|(kind, n)| ((*kind).to_owned(), serde_json::Value::from(*n)))
        .collect();
    Ok(Json(serde_json::json!({ "changed": changed })).into_response())
}

fn seed_error(error: crate::seed::SeedError) -> AppError {
    match error {
        crate::seed::SeedError::Invalid { path, message } => {
            AppError::BadRequest(format!("{path}: {message}"))
        }
        crate::seed::SeedError::Database(error) => AppError::Database(error),
        crate::seed::SeedError::Hash(error) => AppError::Internal(error),
    }
}

/// Scan a QR token or an order code from the merchant console and redeem.
#[utoipa::path(post, path = "/merchant/tickets/scan", tag = "merchant",
    request_body = MerchantScanRequest,
    security(("operator_jwt" = [])),
    responses(
        (status = 200, description = "`success`: every selected ticket redeemed; `partial`: some, each ticket says why not", body = MerchantScanResponse),
        (status = 400, description = "INVALID_QR (`result: reject`), or BAD_REQUEST for a malformed body", body = MerchantScanResponse),
        (status = 401, description = "UNAUTHORIZED: missing, invalid or expired operator token", body = ErrorBody),
        (status = 403, description = "WRONG_MERCHANT: another merchant's ticket or order (no data about it); FORBIDDEN: location_id is not the merchant's", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no order with this code", body = ErrorBody),
        (status = 409, description = "Nothing redeemable: `{code, message, result: reject, tickets}`; a repeated scan says ALREADY_REDEEMED or EXHAUSTED per ticket and writes no log row", body = MerchantScanResponse),
    ))]
pub async fn merchant_scan(
    State(state): State<AppState>,
    RequestLang(lang): RequestLang,
    operator: AuthenticatedOperator,
    JsonBody(request): JsonBody<MerchantScanRequest>,
) -> Result<Response, AppError> {
    let answer = crate::merchant::scan(&state, &operator, &request, lang).await?;
    Ok(no_store((answer.status, Json(answer.body)).into_response()))
}

/// An order's entitlements, grouped by passenger.
#[utoipa::path(get, path = "/merchant/orders/{orderId}", tag = "merchant",
    params(("orderId" = String, Path, description = "The order's code (the card's name for it)")),
    security(("operator_jwt" = [])),
    responses(
        (status = 200, description = "Entitlements by passenger with remaining uses and the last redemption of each", body = OrderView),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no such order for this merchant (another merchant's order answers the same)", body = ErrorBody),
    ))]
pub async fn merchant_order(
    State(state): State<AppState>,
    operator: AuthenticatedOperator,
    Path(order_id): Path<String>,
) -> Result<Response, AppError> {
    let view = crate::merchant::order_view(&state, &operator, &order_id).await?;
    Ok(no_store(Json(view).into_response()))
}

fn redemption_query(
    query: Result<Query<crate::merchant::RedemptionQuery>, QueryRejection>,
) -> Result<crate::merchant::RedemptionQuery, AppError> {
    query
        .map(|Query(query)| query)
        .map_err(|rejection| AppError::BadRequest(rejection.body_text()))
}

/// The merchant's redemption log for one day, newest first, keyset-paged.
#[utoipa::path(get, path = "/merchant/redemptions", tag = "merchant",
    params(
        ("date" = Option<String>, Query, description = "YYYY-MM-DD in the merchant's time zone; default today there"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<i64>, Query, description = "1 to 200, default 50"),
    ),
    security(("operator_jwt" = [])),
    responses(
        (status = 200, description = "One page; `next_cursor` is null on the last. Stable and gap-free while new redemptions arrive (they are newer than every page)", body = RedemptionPage),
        (status = 400, description = "BAD_REQUEST: bad date or limit, or a cursor that is tampered, another merchant's or another day's", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody),
    ))]
pub async fn merchant_redemptions(
    State(state): State<AppState>,
    operator: AuthenticatedOperator,
    query: Result<Query<crate::merchant::RedemptionQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let query = redemption_query(query)?;
    let request = crate::merchant::page_request(&state, &operator, &query).await?;
    let page = crate::merchant::redemptions(&state, &operator, &request).await?;
    Ok(no_store(Json(page).into_response()))
}

/// The same day's log as CSV, streamed.
#[utoipa::path(get, path = "/merchant/redemptions.csv", tag = "merchant",
    params(("date" = Option<String>, Query, description = "YYYY-MM-DD in the merchant's time zone; default today there")),
    security(("operator_jwt" = [])),
    responses(
        (status = 200, description = "CSV with a header row; the same rows as the JSON pages, newest first", content_type = "text/csv"),
        (status = 400, description = "BAD_REQUEST: bad date", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody),
    ))]
pub async fn merchant_redemptions_csv(
    State(state): State<AppState>,
    operator: AuthenticatedOperator,
    query: Result<Query<crate::merchant::RedemptionQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let mut query = redemption_query(query)?;
    query.cursor = None;
    query.limit = None;
    let request = crate::merchant::page_request(&state, &operator, &query).await?;
    let filename = format!(
        "redemptions-{}-{}.csv",
        operator.merchant_code, request.date
    );
    let (lines, receiver) = tokio::sync::mpsc::channel(4);
    tokio::spawn(crate::merchant::stream_csv(state, operator, request, lines));
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    let mut response = axum::body::Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(no_store(response))
}

/// The answer to an earlier scan, by its scan_id: how a gate resolves a scan whose answer
/// it never received.
#[utoipa::path(get, path = "/venue/scan/{scan_id}", tag = "venue",
    params(("scan_id" = String, Path, description = "The scan_id the gate sent")),
    security(("operator_jwt" = [])),
    responses(
        (status = 200, description = "The stored decision (SUCCESS)", body = ScanResponse),
        (status = 400, description = "INVALID_QR stored, or BAD_REQUEST: scan_id is not a UUID", body = ScanResponse),
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

/// The published QR verification keys, for a device.
#[utoipa::path(get, path = "/device/keys", tag = "devices",
    security(("device_credential" = [])),
    responses(
        (status = 200, description = "JWK Set of every key that still verifies tokens", body = JwkSet),
        (status = 401, description = "UNAUTHORIZED: bad device credential", body = ErrorBody),
    ))]
pub async fn device_keys(
    State(state): State<AppState>,
    _device: crate::device::AuthenticatedDevice,
) -> Response {
    published_keys(State(state)).await
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
    device: crate::device::AuthenticatedDevice,
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
    device: crate::device::AuthenticatedDevice,
) -> Result<Response, AppError> {
    let operators = crate::device::offline_operators(&state, &device).await?;
    Ok(no_store(Json(operators).into_response()))
}

/// The device's change feed of ticket state.
#[utoipa::path(get, path = "/device/tickets", tag = "devices",
    params(
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous call; absent for a full sync"),
        ("limit" = Option<i64>, Query, description = "1 to 2000, default 1000"),
    ),
    security(("device_credential" = [])),
    responses(
        (status = 200, description = "Tickets of the device's merchant changed after the cursor, oldest change first", body = TicketFeedPage),
        (status = 400, description = "BAD_REQUEST: bad cursor or limit", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED: bad device credential", body = ErrorBody),
    ))]
pub async fn device_tickets(
    State(state): State<AppState>,
    device: crate::device::AuthenticatedDevice,
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
        (status = 200, description = "One result per decision, in order: applied, conflict (recorded for the merchant's reconciliation) or invalid. Idempotent by scan_id", body = UploadResponse),
        (status = 400, description = "BAD_REQUEST: malformed body or more than 500 decisions", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED: bad device credential", body = ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE: over 1 MiB", body = ErrorBody),
    ))]
pub async fn device_decisions(
    State(state): State<AppState>,
    RequestLang(lang): RequestLang,
    device: crate::device::AuthenticatedDevice,
    JsonBody(upload): JsonBody<DecisionUpload>,
) -> Result<Response, AppError> {
    let results = crate::device::upload(&state, &device, &upload.decisions, lang).await?;
    Ok(no_store(Json(UploadResponse { results }).into_response()))
}
