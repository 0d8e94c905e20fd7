//! Operations: health, readiness, metrics, the OpenAPI document, the published keys and the
//! admin seed API.

use super::JsonBody;
use crate::auth::AdminAccess;
use crate::error::AppError;
use crate::openapi::SeedFileSchema;
use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use stile_shared::api::ErrorBody;
use stile_shared::token::JwkSet;
use stile_shared::ApiCode;

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
    request_body(content = SeedFileSchema, content_type = "application/json", description = "A seed file (format in the README; every rule is checked, and a refusal names the field); up to 16 MiB"),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Loaded; rows inserted or changed, by kind", body = serde_json::Value),
        (status = 400, description = "BAD_REQUEST: the file is refused whole; the message names the offending field's path", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED: wrong admin token", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the admin API is off (no STILE_ADMIN_TOKEN configured)", body = ErrorBody),
        (status = 413, description = "PAYLOAD_TOO_LARGE: over 16 MiB", body = ErrorBody),
        (status = 415, description = "UNSUPPORTED_MEDIA_TYPE: not application/json", body = ErrorBody),
    ))]
pub async fn admin_seed(
    State(state): State<AppState>,
    _admin: AdminAccess,
    JsonBody(tree): JsonBody<serde_json::Value>,
) -> Result<Response, AppError> {
    let file = crate::seed::parse_tree(tree).map_err(seed_error)?;
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
