//! Operator login: `POST /operators/login`.

use super::{check_field, JsonBody};
use crate::auth::{verify_password, AuthenticatedOperator};
use crate::error::{no_store, AppError};
use crate::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use stile_shared::api::{ErrorBody, LoginRequest, LoginResponse, OperatorInfo};

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
