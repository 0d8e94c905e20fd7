//! Operator login: `POST /operators/login`.

use super::{check_field, ClientAddress, JsonBody};
use crate::auth::AuthenticatedOperator;
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
        (status = 400, description = "BAD_REQUEST: malformed body, or a username that is not 1 to 64 of A-Z, a-z, 0-9, - and _ (the message names the field)", body = ErrorBody),
        (status = 401, description = "INVALID_CREDENTIALS: unknown user or wrong password (the same answer)", body = ErrorBody),
        (status = 429, description = "TOO_MANY_REQUESTS (with Retry-After): 10 failed attempts for this username, or 100 from this address, within 5 minutes; or more logins waiting for a password check than the server queues", body = ErrorBody),
    ))]
pub async fn login(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    JsonBody(request): JsonBody<LoginRequest>,
) -> Result<Response, AppError> {
    check_field("password", &request.password, 1024)?;
    let now = Utc::now();
    let operator =
        crate::login::log_in(&state, address, &request.username, &request.password, now).await?;
    let token = state.operator_tokens.issue(&operator, now.timestamp())?;
    tracing::info!(operator = operator.id, merchant = %operator.merchant_code, "operator logged in");
    Ok(no_store(
        Json(LoginResponse {
            token,
            token_type: "Bearer".into(),
            expires_in: state.operator_tokens.ttl_secs,
            operator: OperatorInfo {
                id: operator.id,
                username: operator.username,
                merchant_code: operator.merchant_code,
            },
        })
        .into_response(),
    ))
}

/// Ends every session of the calling operator: each token issued to them so far (this one
/// included) stops working within seconds, on every server.
#[utoipa::path(post, path = "/operators/logout-everywhere", tag = "operators",
    security(("operator_jwt" = [])),
    responses(
        (status = 204, description = "Logged out everywhere"),
        (status = 401, description = "UNAUTHORIZED", body = ErrorBody),
    ))]
pub async fn logout_everywhere(
    State(state): State<AppState>,
    operator: AuthenticatedOperator,
) -> Result<Response, AppError> {
    crate::lifecycle::log_out_everywhere(&state.pool, operator.id).await?;
    state.operator_standings.forget(operator.id);
    Ok(axum::http::StatusCode::NO_CONTENT.into_response())
}
