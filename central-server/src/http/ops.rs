//! Operations: health, readiness, metrics, the OpenAPI document and the published keys.

use crate::error::AppError;
use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use stile_shared::api::ErrorBody;
use stile_shared::token::JwkSet;

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
    responses((status = 200, description = "Ready"), (status = 503, description = "SERVICE_UNAVAILABLE: the database did not answer within db_deadline_ms, or refused", body = ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    // The database deadline of both listeners (`request_limits`) bounds the probe: a
    // database that hangs is a 503 within `db_deadline_ms` too.
    match sqlx::query("SELECT 1").execute(&state.pool).await {
        Ok(_) => Json(serde_json::json!({"status": "ready"})).into_response(),
        Err(error) => {
            tracing::warn!(error = %error, "not ready: database unreachable");
            AppError::Unavailable.into_response()
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
    match crate::occupancy::counts(&state.pool).await {
        Ok(venues) => state.metrics.set_occupancy(&venues),
        Err(error) => tracing::warn!(error = %error, "occupancy unavailable for /metrics"),
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
