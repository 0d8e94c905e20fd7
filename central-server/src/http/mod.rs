//! The HTTP surface: routes, handlers and the request-level concerns around them (JSON
//! bodies with contract error bodies, body size cap, metrics and access logs).
//!
//! Handlers parse and check input, call the domain modules (`scan`, `qr`, `auth`, `keys`)
//! and shape answers; they hold no business rule of their own. One file per handler family:
//! [`operator`] (login), [`venue`] (gate scans), [`channel`] (QR issuance), [`merchant`] (the
//! console), [`device`] (the gates' device-credential API), [`ops`] (health, metrics, admin).

pub mod admin;
pub mod channel;
pub mod device;
pub mod docs;
pub mod merchant;
pub mod operator;
pub mod ops;
pub mod venue;

use crate::error::{localize, AppError};
use crate::AppState;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use std::time::Instant;

/// Largest request body accepted (contract: 413 above 64 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest batch of offline decisions (500 decisions of a few hundred bytes each).
pub const MAX_UPLOAD_BYTES: usize = 1024 * 1024;
/// Largest seed file the admin API accepts.
pub const MAX_SEED_BYTES: usize = 16 * 1024 * 1024;
/// Longest request target (path and query) answered; longer is 414.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;
/// Most bytes of request headers answered; more is 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The body limit of a route: the one number both the early `Content-Length` check and the
/// route's `DefaultBodyLimit` use.
pub fn body_limit(path: &str) -> usize {
    match path {
        "/device/decisions" => MAX_UPLOAD_BYTES,
        "/admin/seed" => MAX_SEED_BYTES,
        _ => MAX_BODY_BYTES,
    }
}

/// The whole API, testable without a socket.
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/operators/login", post(operator::login))
        .route("/venue/scan", post(venue::venue_scan))
        .route("/qr/decrypt", post(venue::qr_decrypt))
        .route("/tickets/{ticket_code}/qr", post(channel::issue_qr))
        .route("/merchant/tickets/scan", post(merchant::merchant_scan))
        .route("/merchant/orders/{orderId}", get(merchant::merchant_order))
        .route("/merchant/redemptions", get(merchant::merchant_redemptions))
        .route("/merchant/occupancy", get(merchant::merchant_occupancy))
        .route(
            "/merchant/redemptions.csv",
            get(merchant::merchant_redemptions_csv),
        )
        .route("/venue/scan/{scan_id}", get(venue::venue_scan_by_id))
        .route("/device/keys", get(device::device_keys))
        .route("/device/tickets", get(device::device_tickets))
        .route("/device/operators", get(device::device_operators))
        .route("/device/history", get(device::device_history))
        .route("/device/occupancy", get(device::device_occupancy))
        .route(
            "/device/peer",
            axum::routing::put(device::device_register_peer),
        )
        .route("/device/peers", get(device::device_peers))
        .route(
            "/device/decisions",
            post(device::device_decisions)
                .layer(DefaultBodyLimit::max(body_limit("/device/decisions"))),
        )
        .route("/device/enroll", post(device::device_enroll))
        .route(
            "/operators/logout-everywhere",
            post(operator::logout_everywhere),
        )
        .route("/keys", get(ops::published_keys))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/openapi.json", get(ops::openapi))
        .route("/docs", get(docs::docs));
    with_layers(routes, state)
}

/// The operations listener's API, never on the public port: `/metrics`, the admin API and
/// health. Bind it to a private address (`ops_listen`, default 127.0.0.1:9091).
pub fn ops_router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/metrics", get(ops::metrics))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route(
            "/admin/seed",
            post(admin::admin_seed).layer(DefaultBodyLimit::max(body_limit("/admin/seed"))),
        )
        .route(
            "/admin/devices/{device_id}/revoke",
            post(admin::revoke_device),
        )
        .route(
            "/admin/devices/{device_id}/rotate-secret",
            post(admin::rotate_device_secret),
        )
        .route(
            "/admin/devices/{device_id}/enrollment",
            post(admin::create_enrollment),
        )
        .route(
            "/admin/operators/{username}/disable",
            post(admin::disable_operator),
        )
        .route(
            "/admin/operators/{username}/enable",
            post(admin::enable_operator),
        )
        .route(
            "/admin/operators/{username}/logout-everywhere",
            post(admin::log_operator_out),
        );
    with_layers(routes, state)
}

/// What both listeners share: contract 404s, body limits, request limits, metrics, language.
fn with_layers(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_limits,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(middleware::from_fn(localize))
        .with_state(state)
}

/// The client's address (the peer of the connection); unspecified when the router runs
/// without a socket.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub std::net::IpAddr);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let address = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0.ip())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        Ok(ClientAddress(address))
    }
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

/// What is refused before a handler runs, each with the contract's error body: a target or
/// headers over their limits (414, 431), a body whose announced `Content-Length` is over the
/// route's limit (413 at once, before a byte of it arrives), a request not answered within
/// `http_request_timeout_secs` (408: a body that trickles in, say), and a handler that
/// waited `db_deadline_ms` for the database (503 `SERVICE_UNAVAILABLE`).
async fn request_limits(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, AppError> {
    let target = request
        .uri()
        .path_and_query()
        .map(|target| target.as_str().len())
        .unwrap_or(0);
    if target > MAX_TARGET_BYTES {
        return Err(AppError::Http {
            status: StatusCode::URI_TOO_LONG,
            detail: format!("the request target is over {MAX_TARGET_BYTES} bytes"),
        });
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Err(AppError::Http {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            detail: format!("the request headers are over {MAX_HEADER_BYTES} bytes"),
        });
    }
    if let Some(length) = request.headers().get(axum::http::header::CONTENT_LENGTH) {
        let announced = length.to_str().ok().and_then(|raw| raw.parse::<u64>().ok());
        match announced {
            Some(length) if length <= body_limit(request.uri().path()) as u64 => {}
            Some(_) => return Err(AppError::PayloadTooLarge),
            None => {
                return Err(AppError::BadRequest(
                    "Content-Length is not a number".into(),
                ))
            }
        }
    }
    let path = request.uri().path().to_owned();
    if path.starts_with("/admin/") {
        // A seed load of 16 MiB may take longer; the admin API is behind its own token.
        return Ok(next.run(request).await);
    }
    // First the body, within the request timeout (408: a body that trickles in), so that
    // the database deadline below counts only the handler's own time.
    let started = Instant::now();
    let request_deadline = std::time::Duration::from_secs(state.settings.http_request_timeout_secs);
    let (parts, body) = request.into_parts();
    let too_slow = || AppError::Http {
        status: StatusCode::REQUEST_TIMEOUT,
        detail: "the request was not complete in time".into(),
    };
    let bytes = match tokio::time::timeout(
        request_deadline,
        axum::body::to_bytes(body, body_limit(&path)),
    )
    .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => return Err(AppError::PayloadTooLarge),
        Err(_) => return Err(too_slow()),
    };
    let request = Request::from_parts(parts, axum::body::Body::from(bytes));
    let left = request_deadline.saturating_sub(started.elapsed());
    // A handler waiting on the database answers 503 at the deadline, so a gate decides
    // offline within its budget. Offline uploads (long batches, idempotent by scan_id) and
    // logins (a queue for the password hash) keep the request timeout.
    let own_pace = path == "/device/decisions" || path == "/operators/login";
    let deadline = if own_pace {
        left
    } else {
        left.min(state.settings.db_deadline())
    };
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => Ok(response),
        Err(_) if deadline < left => Err(AppError::Unavailable),
        Err(_) => Err(too_slow()),
    }
}

async fn not_found() -> AppError {
    AppError::NotFound
}

/// A path or query value that must be an identifier: 400 naming the field otherwise, before
/// any SQL sees it.
fn identifier(field: &str, raw: &str) -> Result<stile_shared::Identifier, AppError> {
    stile_shared::Identifier::parse_field(field, raw).map_err(AppError::BadRequest)
}

fn check_field(name: &str, value: &str, max: usize) -> Result<(), AppError> {
    if value.is_empty() || value.chars().count() > max {
        return Err(AppError::BadRequest(format!(
            "{name} must be 1 to {max} characters"
        )));
    }
    Ok(())
}
