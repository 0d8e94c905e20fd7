//! The sales channels' endpoint: `POST /tickets/{ticket_code}/qr`.

use crate::auth::AuthenticatedChannel;
use crate::error::{no_store, AppError};
use crate::{qr, AppState};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use stile_shared::api::{ErrorBody, IssuedQr};
use stile_shared::Identifier;

/// Issue a fresh QR token for a ticket (superseding the previous one).
#[utoipa::path(post, path = "/tickets/{ticket_code}/qr", tag = "channels",
    params(("ticket_code" = Identifier, Path, description = "The ticket's code")),
    security(("channel_key" = [])),
    responses(
        (status = 200, description = "A fresh QR token; every older token of the ticket is superseded", body = IssuedQr),
        (status = 400, description = "BAD_REQUEST: ticket_code is not 1 to 64 of A-Z, a-z, 0-9, - and _", body = ErrorBody),
        (status = 401, description = "UNAUTHORIZED: missing or unknown channel key", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: the channel does not sell for the ticket's merchant, or the ticket is of the other channel kind", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no such ticket", body = ErrorBody),
    ))]
pub async fn issue_qr(
    State(state): State<AppState>,
    channel: AuthenticatedChannel,
    Path(ticket_code): Path<String>,
) -> Result<Response, AppError> {
    let ticket_code = super::identifier("ticket_code", &ticket_code)?;
    let issued = qr::issue(
        &state.pool,
        &state.keys,
        state.settings.token_policy(),
        &channel,
        ticket_code.as_str(),
        Utc::now(),
    )
    .await?;
    tracing::info!(jti = %issued.jti, channel = channel.id, "QR issued");
    Ok(no_store(Json(issued).into_response()))
}
