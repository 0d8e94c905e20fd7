//! QR issuance (`POST /tickets/{ticket_code}/qr`: a fresh token that supersedes every older
//! one of the ticket) and inspection (`POST /qr/decrypt`: what a token says, without
//! redeeming).

use crate::auth::{AuthenticatedChannel, AuthenticatedOperator};
use crate::error::AppError;
use crate::keys::KeyStore;
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use sqlx::PgPool;
use stile_shared::api::{ClaimsView, DecryptResponse, EntitlementView, IssuedQr, TicketView};
use stile_shared::decision::{is_own_ticket, token_state};
use stile_shared::token::{Jti, QrClaims};
use stile_shared::{Channel, DecisionCode, FunctionCode, TicketStatus, TokenPolicy};

/// Issues a fresh QR for a ticket of the channel's kind and makes it the ticket's current
/// one, under the ticket's row lock (so it serialises with scans of the ticket).
pub async fn issue(
    pool: &PgPool,
    keys: &KeyStore,
    policy: TokenPolicy,
    channel: &AuthenticatedChannel,
    ticket_code: &str,
    now: DateTime<Utc>,
) -> Result<IssuedQr, AppError> {
    issue_for(pool, keys, policy, Some(channel), ticket_code, now).await
}

/// Gives a ticket a current QR when it has none (an order-code scan redeems under the
/// ticket's current jti). A ticket that already has one is left alone.
pub async fn ensure_current(
    pool: &PgPool,
    keys: &KeyStore,
    policy: TokenPolicy,
    ticket_code: &str,
    now: DateTime<Utc>,
) -> Result<(), AppError> {
    let (has_current,): (bool,) =
        sqlx::query_as("SELECT current_jti IS NOT NULL FROM tickets WHERE ticket_code = $1")
            .bind(ticket_code)
            .fetch_optional(pool)
            .await?
            .ok_or(AppError::NotFound)?;
    if !has_current {
        issue_for(pool, keys, policy, None, ticket_code, now).await?;
    }
    Ok(())
}

async fn issue_for(
    pool: &PgPool,
    keys: &KeyStore,
    policy: TokenPolicy,
    channel: Option<&AuthenticatedChannel>,
    ticket_code: &str,
    now: DateTime<Utc>,
) -> Result<IssuedQr, AppError> {
    let mut tx = crate::db::begin(pool).await?;
    let row: Option<(i64, String, i64, String, bool)> = sqlx::query_as(
        "SELECT t.id, t.channel, t.merchant_id, m.code, \
         EXISTS (SELECT 1 FROM channel_merchants cm WHERE cm.channel_id = $2 AND cm.merchant_id = t.merchant_id) \
         FROM tickets t JOIN merchants m ON m.id = t.merchant_id WHERE t.ticket_code = $1 FOR NO KEY UPDATE OF t",
    )
    .bind(ticket_code)
    .bind(channel.map(|c| c.id))
    .fetch_optional(&mut *tx)
    .await?;
    let (ticket_id, ticket_channel, merchant_id, merchant_code, sells_for) =
        row.ok_or(AppError::NotFound)?;
    let kind = Channel::parse(&ticket_channel).ok_or_else(|| {
        AppError::Internal(format!("ticket {ticket_id} has channel {ticket_channel:?}"))
    })?;
    if let Some(channel) = channel {
        if !sells_for {
            tracing::warn!(channel = channel.id, merchant = %merchant_code,
                "QR issuance refused: the channel does not sell for this merchant");
            return Err(AppError::Forbidden(
                "this channel does not sell for the ticket's merchant".into(),
            ));
        }
        if channel.kind != kind {
            return Err(AppError::Forbidden(format!(
                "a {} channel cannot issue QR codes for a {ticket_channel} ticket",
                channel.kind.as_str()
            )));
        }
    }
    let ring = keys.ring();
    let signer = ring
        .signer
        .as_ref()
        .ok_or_else(|| AppError::Internal("no active signing key".into()))?;
    let iat = now.timestamp();
    let claims = QrClaims {
        // A random (version 4, RFC 4122 variant) UUID, as the contract says a jti is.
        jti: Jti::from_bytes(*uuid::Uuid::new_v4().as_bytes()),
        tid: ticket_code.to_owned(),
        mid: merchant_code,
        ch: kind,
        iat,
        exp: policy.expiry_for(kind, iat),
    };
    let token = signer
        .issue(&claims)
        .map_err(|error| AppError::Internal(format!("issue token: {error}")))?;
    let expires_at = claims
        .exp
        .and_then(|exp| Utc.timestamp_opt(exp, 0).single());
    sqlx::query(
        "INSERT INTO qr_issuances (jti, ticket_id, merchant_id, channel_id, kid, issued_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(claims.jti.as_str())
    .bind(ticket_id)
    .bind(merchant_id)
    .bind(channel.map(|c| c.id))
    .bind(signer.kid())
    .bind(now)
    .bind(expires_at)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE tickets SET current_jti = $2, updated_at = $3 WHERE id = $1")
        .bind(ticket_id)
        .bind(claims.jti.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(IssuedQr {
        qr_token: token,
        jti: claims.jti,
        expires_at: expires_at.map(|at| at.to_rfc3339_opts(SecondsFormat::Secs, false)),
    })
}

/// Says what a token is worth to this operator, without redeeming anything.
pub async fn decrypt(
    pool: &PgPool,
    keys: &KeyStore,
    policy: TokenPolicy,
    operator: &AuthenticatedOperator,
    token: &str,
    now: DateTime<Utc>,
) -> Result<DecryptResponse, AppError> {
    let verified = keys
        .verify(token)
        .await
        .map_err(|error| AppError::InvalidQr(error.to_string()))?;
    let claims = verified.claims;
    // Only a ticket of the operator's merchant is read at all.
    let ticket = if is_own_ticket(&claims, &operator.merchant_code) {
        Some(
            load_ticket_view(pool, operator.merchant_id, &claims.tid)
                .await?
                .ok_or_else(|| AppError::InvalidQr("no such ticket".into()))?,
        )
    } else {
        None
    };
    let current_jti = ticket
        .as_ref()
        .and_then(|(_, current, _)| current.as_deref())
        .and_then(|jti| Jti::parse(jti).ok());
    let token_state = match token_state(
        &claims,
        &operator.merchant_code,
        current_jti.as_ref(),
        now.timestamp(),
        policy,
    ) {
        Ok(state) => state,
        Err(DecisionCode::WrongMerchant) => return Err(AppError::WrongMerchant),
        Err(code) => return Err(AppError::Internal(format!("token_state answered {code:?}"))),
    };
    let (ticket_id, ticket) = match ticket {
        Some((id, _, view)) => (Some(id), Some(view)),
        None => (None, None),
    };
    tracing::debug!(?ticket_id, state = ?token_state, "token inspected");
    Ok(DecryptResponse {
        token_state,
        claims: ClaimsView {
            jti: claims.jti,
            ch: claims.ch,
            iat: claims.iat,
            exp: claims.exp,
        },
        ticket,
    })
}

/// A ticket of the merchant with its entitlements, unlocked: (id, current_jti, view).
pub async fn load_ticket_view(
    pool: &PgPool,
    merchant_id: i64,
    ticket_code: &str,
) -> Result<Option<(i64, Option<String>, TicketView)>, AppError> {
    let row: Option<(i64, String, String, Option<String>)> = sqlx::query_as(
        "SELECT id, ticket_code, status, current_jti FROM tickets WHERE ticket_code = $1 AND merchant_id = $2",
    )
    .bind(ticket_code)
    .bind(merchant_id)
    .fetch_optional(pool)
    .await?;
    let Some((id, ticket_code, status, current_jti)) = row else {
        return Ok(None);
    };
    let status = TicketStatus::parse(&status)
        .ok_or_else(|| AppError::Internal(format!("ticket {id} has status {status:?}")))?;
    let rows: Vec<(String, String, i32, i32)> = sqlx::query_as(
        "SELECT function_code, name, total_uses, remaining_uses FROM entitlements WHERE ticket_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let entitlements = rows
        .into_iter()
        .map(|(function_code, name, total_uses, remaining_uses)| {
            FunctionCode::parse(&function_code)
                .map(|function_code| EntitlementView {
                    function_code,
                    name,
                    total_uses,
                    remaining_uses,
                })
                .map_err(|_| AppError::Internal(format!("ticket {id}: malformed function code")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some((
        id,
        current_jti,
        TicketView {
            ticket_code,
            status,
            entitlements,
        },
    )))
}
