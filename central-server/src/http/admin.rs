//! The operations listener's admin API (Bearer `STILE_ADMIN_TOKEN`), never on the public
//! port: seed loading, and withdrawing or issuing credentials (see [`crate::lifecycle`]).
//!
//! - `POST /admin/seed` — load a seed file.
//! - `POST /admin/devices/{device_id}/revoke` — the device's credential stops working.
//! - `POST /admin/devices/{device_id}/rotate-secret` `{overlap_secs?}` — a new secret; the
//!   old one stays valid for the overlap (default 86,400 s).
//! - `POST /admin/devices/{device_id}/enrollment` `{merchant_code, venue_code, ttl_secs?}` —
//!   a one-time code (default 900 s) the device exchanges at `POST /device/enroll`.
//! - `POST /admin/operators/{username}/disable`, `…/enable`, `…/logout-everywhere`.

use super::{identifier, JsonBody};
use crate::auth::AdminAccess;
use crate::error::AppError;
use crate::{lifecycle, AppState};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{Duration, SecondsFormat};
use serde::Deserialize;
use stile_shared::Identifier;

/// Longest overlap of a rotated secret, and longest life of an enrollment code.
const MAX_OVERLAP_SECS: i64 = 30 * 86_400;
const MAX_ENROLLMENT_SECS: i64 = 7 * 86_400;

fn seconds(field: &str, value: Option<i64>, default: i64, max: i64) -> Result<Duration, AppError> {
    let value = value.unwrap_or(default);
    if !(1..=max).contains(&value) {
        return Err(AppError::BadRequest(format!(
            "{field} must be 1 to {max} seconds"
        )));
    }
    Ok(Duration::seconds(value))
}

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

pub async fn revoke_device(
    State(state): State<AppState>,
    _admin: AdminAccess,
    Path(device_id): Path<String>,
) -> Result<Response, AppError> {
    let device_id = identifier("device_id", &device_id)?;
    let at = lifecycle::revoke_device(&state.pool, &device_id).await?;
    state.device_bindings.forget_device(device_id.as_str());
    Ok(Json(serde_json::json!({
        "device_id": device_id,
        "revoked_at": at.to_rfc3339_opts(SecondsFormat::Millis, false),
    }))
    .into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    overlap_secs: Option<i64>,
}

pub async fn rotate_device_secret(
    State(state): State<AppState>,
    _admin: AdminAccess,
    Path(device_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, AppError> {
    let device_id = identifier("device_id", &device_id)?;
    // The body is optional: none means the default overlap.
    let request: RotateRequest = if body.is_empty() {
        RotateRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|error| AppError::BadRequest(error.to_string()))?
    };
    let overlap = seconds(
        "overlap_secs",
        request.overlap_secs,
        86_400,
        MAX_OVERLAP_SECS,
    )?;
    let (secret, until) = lifecycle::rotate_device_secret(&state.pool, &device_id, overlap).await?;
    Ok(crate::error::no_store(
        Json(serde_json::json!({
            "device_id": device_id,
            "secret": secret,
            "previous_secret_valid_until": until.to_rfc3339_opts(SecondsFormat::Secs, false),
        }))
        .into_response(),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentRequest {
    merchant_code: Identifier,
    venue_code: Identifier,
    ttl_secs: Option<i64>,
}

pub async fn create_enrollment(
    State(state): State<AppState>,
    _admin: AdminAccess,
    Path(device_id): Path<String>,
    JsonBody(request): JsonBody<EnrollmentRequest>,
) -> Result<Response, AppError> {
    let device_id = identifier("device_id", &device_id)?;
    let ttl = seconds("ttl_secs", request.ttl_secs, 900, MAX_ENROLLMENT_SECS)?;
    let (code, expires_at) = lifecycle::create_enrollment(
        &state.pool,
        &device_id,
        &request.merchant_code,
        &request.venue_code,
        ttl,
    )
    .await?;
    Ok(crate::error::no_store(
        Json(serde_json::json!({
            "device_id": device_id,
            "code": code,
            "expires_at": expires_at.to_rfc3339_opts(SecondsFormat::Secs, false),
        }))
        .into_response(),
    ))
}

pub async fn disable_operator(
    State(state): State<AppState>,
    _admin: AdminAccess,
    Path(username): Path<String>,
) -> Result<Response, AppError> {
    set_disabled(state, username, true).await
}

pub async fn enable_operator(
    State(state): State<AppState>,
    _admin: AdminAccess,
    Path(username): Path<String>,
) -> Result<Response, AppError> {
    set_disabled(state, username, false).await
}

async fn set_disabled(
    state: AppState,
    username: String,
    disabled: bool,
) -> Result<Response, AppError> {
    let username = identifier("username", &username)?;
    let id = lifecycle::set_operator_disabled(&state.pool, &username, disabled).await?;
    state.operator_standings.forget(id);
    Ok(Json(serde_json::json!({"username": username, "disabled": disabled})).into_response())
}

pub async fn log_operator_out(
    State(state): State<AppState>,
    _admin: AdminAccess,
    Path(username): Path<String>,
) -> Result<Response, AppError> {
    let username = identifier("username", &username)?;
    let row: Option<(i64,)> = sqlx::query_as("SELECT id FROM operators WHERE username = $1")
        .bind(username.as_str())
        .fetch_optional(&state.pool)
        .await?;
    let (id,) = row.ok_or(AppError::NotFound)?;
    let generation = lifecycle::log_out_everywhere(&state.pool, id).await?;
    state.operator_standings.forget(id);
    Ok(
        Json(serde_json::json!({"username": username, "token_generation": generation}))
            .into_response(),
    )
}
