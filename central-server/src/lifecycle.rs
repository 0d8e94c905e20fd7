//! Withdrawing and issuing credentials: what the operations API (and an operator's own "log
//! out everywhere") does to them.
//!
//! - **Operators**: disabling one, or bumping their token generation, makes every JWT issued
//!   before fail within [`OPERATOR_STANDING_TTL`](crate::auth::OPERATOR_STANDING_TTL); a
//!   disabled operator cannot log in, and gates drop them from their offline logins at the
//!   next sync.
//! - **Devices**: a revoked device's credential stops working on every endpoint at once
//!   (the credential check reads the row on each request), so it stops receiving the feed
//!   and cannot upload; a rotated secret leaves the previous one valid for an overlap, so a
//!   gate can be given its new secret without downtime; a new device is enrolled with a
//!   one-time, expiring code that it exchanges for its credential on first start.

use crate::auth::sha256_hex;
use crate::error::AppError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use sqlx::PgPool;
use stile_shared::Identifier;

/// A fresh high-entropy machine secret (32 random bytes, base64url).
fn fresh_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Disables (or enables again) an operator; returns their id.
pub async fn set_operator_disabled(
    pool: &PgPool,
    username: &Identifier,
    disabled: bool,
) -> Result<i64, AppError> {
    let row: Option<(i64,)> = sqlx::query_as(
        "UPDATE operators SET disabled_at = CASE WHEN $2 THEN COALESCE(disabled_at, now()) END \
         WHERE username = $1 RETURNING id",
    )
    .bind(username.as_str())
    .bind(disabled)
    .fetch_optional(pool)
    .await?;
    let (id,) = row.ok_or(AppError::NotFound)?;
    tracing::warn!(operator = id, disabled, "operator standing changed");
    Ok(id)
}

/// Makes every token issued to the operator so far invalid ("log out everywhere").
pub async fn log_out_everywhere(pool: &PgPool, operator_id: i64) -> Result<i64, AppError> {
    let row: Option<(i64,)> = sqlx::query_as(
        "UPDATE operators SET token_generation = token_generation + 1 WHERE id = $1 \
         RETURNING token_generation",
    )
    .bind(operator_id)
    .fetch_optional(pool)
    .await?;
    let (generation,) = row.ok_or(AppError::NotFound)?;
    tracing::warn!(
        operator = operator_id,
        generation,
        "operator logged out everywhere"
    );
    Ok(generation)
}

/// Revokes a device: its credential stops working on every endpoint.
pub async fn revoke_device(
    pool: &PgPool,
    device_id: &Identifier,
) -> Result<DateTime<Utc>, AppError> {
    let row: Option<(DateTime<Utc>,)> = sqlx::query_as(
        "UPDATE devices SET revoked_at = COALESCE(revoked_at, now()), \
         previous_secret_hash = NULL, previous_secret_valid_until = NULL \
         WHERE device_id = $1 RETURNING revoked_at",
    )
    .bind(device_id.as_str())
    .fetch_optional(pool)
    .await?;
    let (at,) = row.ok_or(AppError::NotFound)?;
    tracing::warn!(device = %device_id, "device revoked");
    Ok(at)
}

/// A new secret for a device; the one it had stays valid until the returned time.
pub async fn rotate_device_secret(
    pool: &PgPool,
    device_id: &Identifier,
    overlap: Duration,
) -> Result<(String, DateTime<Utc>), AppError> {
    let secret = fresh_secret();
    let until = Utc::now() + overlap;
    let row: Option<(i64,)> = sqlx::query_as(
        "UPDATE devices SET previous_secret_hash = secret_hash, previous_secret_valid_until = $3, \
         secret_hash = $2 WHERE device_id = $1 AND revoked_at IS NULL RETURNING id",
    )
    .bind(device_id.as_str())
    .bind(sha256_hex(&secret))
    .bind(until)
    .fetch_optional(pool)
    .await?;
    row.ok_or(AppError::NotFound)?;
    tracing::warn!(device = %device_id, previous_valid_until = %until, "device secret rotated");
    Ok((secret, until))
}

/// A one-time enrollment code for a device of `merchant_code` at `venue_code` (the device
/// row is created when it does not exist, without any credential until the code is
/// exchanged).
pub async fn create_enrollment(
    pool: &PgPool,
    device_id: &Identifier,
    merchant_code: &Identifier,
    venue_code: &Identifier,
    ttl: Duration,
) -> Result<(String, DateTime<Utc>), AppError> {
    let mut tx = crate::db::begin(pool).await?;
    let location: Option<(i64, i64)> = sqlx::query_as(
        "SELECT m.id, l.id FROM merchants m JOIN locations l ON l.merchant_id = m.id \
         WHERE m.code = $1 AND l.venue_code = $2",
    )
    .bind(merchant_code.as_str())
    .bind(venue_code.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    let (merchant_id, location_id) = location.ok_or_else(|| {
        AppError::BadRequest("venue_code is not a location of merchant_code".into())
    })?;
    let device: Option<(i64, i64)> = sqlx::query_as(
        "INSERT INTO devices (device_id, merchant_id, location_id, secret_hash) VALUES ($1, $2, $3, NULL) \
         ON CONFLICT (device_id) DO UPDATE SET location_id = EXCLUDED.location_id \
         RETURNING id, merchant_id",
    )
    .bind(device_id.as_str())
    .bind(merchant_id)
    .bind(location_id)
    .fetch_optional(&mut *tx)
    .await?;
    let (device_pk, owner) =
        device.ok_or_else(|| AppError::Internal("device upsert returned nothing".into()))?;
    if owner != merchant_id {
        return Err(AppError::Forbidden(
            "device_id belongs to another merchant".into(),
        ));
    }
    let code = fresh_secret();
    let expires_at = Utc::now() + ttl;
    // One open code per device: a new one replaces what was not used.
    sqlx::query("DELETE FROM device_enrollments WHERE device_id = $1 AND used_at IS NULL")
        .bind(device_pk)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO device_enrollments (code_hash, device_id, expires_at) VALUES ($1, $2, $3)",
    )
    .bind(sha256_hex(&code))
    .bind(device_pk)
    .bind(expires_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(device = %device_id, %expires_at, "enrollment code created");
    Ok((code, expires_at))
}

/// Exchanges an enrollment code for the device's credential secret: once, before it
/// expires. Any other case (unknown device, wrong, used or expired code) is the same 401.
pub async fn exchange_enrollment(
    pool: &PgPool,
    device_id: &Identifier,
    code: &str,
) -> Result<String, AppError> {
    let mut tx = crate::db::begin(pool).await?;
    let used: Option<(i64,)> = sqlx::query_as(
        "UPDATE device_enrollments e SET used_at = now() FROM devices d \
         WHERE e.device_id = d.id AND d.device_id = $1 AND e.code_hash = $2 \
         AND e.used_at IS NULL AND e.expires_at > now() RETURNING d.id",
    )
    .bind(device_id.as_str())
    .bind(sha256_hex(code))
    .fetch_optional(&mut *tx)
    .await?;
    let Some((device_pk,)) = used else {
        tracing::warn!(device = %device_id, "enrollment refused");
        return Err(AppError::Unauthorized);
    };
    let secret = fresh_secret();
    sqlx::query(
        "UPDATE devices SET secret_hash = $2, previous_secret_hash = NULL, \
         previous_secret_valid_until = NULL, revoked_at = NULL WHERE id = $1",
    )
    .bind(device_pk)
    .bind(sha256_hex(&secret))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(device = %device_id, "device enrolled");
    Ok(secret)
}
