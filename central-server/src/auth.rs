//! Credentials: operator passwords (argon2id), operator JWTs, channel API keys and device
//! secrets, and the request extractors that check them.
//!
//! Operator JWTs are HS256 with a server key (from settings, or generated once and kept in
//! `server_secrets` so every server process on the database agrees); verification pins the
//! algorithm, issuer and audience. Channel keys and device secrets are high-entropy machine
//! credentials, stored as SHA-256 so they can be looked up; passwords are argon2id.

use crate::error::AppError;
use crate::AppState;
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use stile_shared::Channel;

const ISSUER: &str = "stile-central";
const AUDIENCE: &str = "stile-operator";

/// An argon2id PHC string for `password`.
pub fn hash_password(password: &str) -> Result<String, AppError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| AppError::Internal(format!("argon2: {error}")))
}

/// Whether `password` matches the stored hash (the shared check a gate runs offline too).
pub use stile_shared::credentials::verify_password;

/// Hex SHA-256 of a machine credential.
pub fn sha256_hex(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The claims of an operator JWT.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OperatorClaims {
    /// Operator id.
    pub sub: String,
    pub usr: String,
    /// Merchant code and id.
    pub mid: String,
    pub mer: i64,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    /// The operator's token generation when this token was issued (absent in tokens from
    /// before generations: 0).
    #[serde(default)]
    pub gen: i64,
}

/// Issues and checks operator JWTs.
pub struct OperatorTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub ttl_secs: i64,
}

impl std::fmt::Debug for OperatorTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OperatorTokens")
    }
}

impl OperatorTokens {
    pub fn new(secret: &[u8], ttl_secs: i64) -> OperatorTokens {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        OperatorTokens {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_secs,
        }
    }

    pub fn issue(&self, operator: &AuthenticatedOperator, now: i64) -> Result<String, AppError> {
        let claims = OperatorClaims {
            sub: operator.id.to_string(),
            usr: operator.username.clone(),
            mid: operator.merchant_code.clone(),
            mer: operator.merchant_id,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: now,
            exp: now + self.ttl_secs,
            gen: operator.generation,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|error| AppError::Internal(format!("jwt encode: {error}")))
    }

    pub fn check(&self, token: &str) -> Result<AuthenticatedOperator, AppError> {
        let data = jsonwebtoken::decode::<OperatorClaims>(token, &self.decoding, &self.validation)
            .map_err(|_| AppError::Unauthorized)?;
        let id = data
            .claims
            .sub
            .parse()
            .map_err(|_| AppError::Unauthorized)?;
        Ok(AuthenticatedOperator {
            id,
            username: data.claims.usr,
            merchant_id: data.claims.mer,
            merchant_code: data.claims.mid,
            generation: data.claims.gen,
        })
    }
}

/// The operator JWT key: the configured one, or the one kept in the database (created on
/// first start).
pub async fn operator_jwt_secret(
    pool: &PgPool,
    configured: Option<&str>,
) -> Result<Vec<u8>, sqlx::Error> {
    if let Some(secret) = configured {
        return Ok(secret.as_bytes().to_vec());
    }
    let mut fresh = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut fresh);
    sqlx::query("INSERT INTO server_secrets (name, value) VALUES ('operator_jwt', $1) ON CONFLICT (name) DO NOTHING")
        .bind(fresh.as_slice())
        .execute(pool)
        .await?;
    let (value,): (Vec<u8>,) =
        sqlx::query_as("SELECT value FROM server_secrets WHERE name = 'operator_jwt'")
            .fetch_one(pool)
            .await?;
    Ok(value)
}

/// An operator whose Bearer JWT checked out.
#[derive(Debug, Clone)]
pub struct AuthenticatedOperator {
    pub id: i64,
    pub username: String,
    pub merchant_id: i64,
    pub merchant_code: String,
    /// The token generation the operator's JWT was issued under.
    pub generation: i64,
}

/// How long a server trusts what it read of an operator's standing (generation, disabled):
/// a disabled operator or "log out everywhere" takes effect within this time.
pub const OPERATOR_STANDING_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// Each operator's current token generation and whether they are disabled, as read at most
/// [`OPERATOR_STANDING_TTL`] ago.
#[derive(Debug)]
pub struct OperatorStandings {
    read: crate::recent::Recent<i64, Standing>,
}

impl Default for OperatorStandings {
    fn default() -> Self {
        OperatorStandings {
            read: crate::recent::Recent::new(OPERATOR_STANDING_TTL),
        }
    }
}

/// What decides whether an operator's token still counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub generation: i64,
    pub disabled: bool,
}

impl OperatorStandings {
    /// Whether a token of `generation` for operator `id` still counts.
    pub async fn admits(&self, pool: &PgPool, id: i64, generation: i64) -> Result<bool, AppError> {
        let standing = match self.read.get(&id) {
            Some(standing) => standing,
            None => {
                let row: Option<(i64, bool)> = sqlx::query_as(
                    "SELECT token_generation, disabled_at IS NOT NULL FROM operators WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(pool)
                .await?;
                // A deleted operator is as good as disabled.
                let standing = row
                    .map(|(generation, disabled)| Standing {
                        generation,
                        disabled,
                    })
                    .unwrap_or(Standing {
                        generation: i64::MAX,
                        disabled: true,
                    });
                self.read.put(id, standing);
                standing
            }
        };
        Ok(!standing.disabled && standing.generation == generation)
    }

    /// Forgets what was read of `id` (this server changed it).
    pub fn forget(&self, id: i64) {
        self.read.forget_where(|key| *key == id);
    }
}

/// The credential of an `Authorization: Bearer <credential>` header (the scheme in any case),
/// the one parser every extractor uses.
fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|token| !token.is_empty())
}

impl FromRequestParts<AppState> for AuthenticatedOperator {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let token = bearer(parts).ok_or(AppError::Unauthorized)?;
        let operator = state.operator_tokens.check(token)?;
        if !state
            .operator_standings
            .admits(&state.pool, operator.id, operator.generation)
            .await?
        {
            return Err(AppError::Unauthorized);
        }
        Ok(operator)
    }
}

/// A sales channel whose Bearer API key checked out.
#[derive(Debug, Clone)]
pub struct AuthenticatedChannel {
    pub id: i64,
    pub kind: Channel,
}

impl FromRequestParts<AppState> for AuthenticatedChannel {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let key = bearer(parts).ok_or(AppError::Unauthorized)?;
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT id, kind FROM channels WHERE api_key_hash = $1")
                .bind(sha256_hex(key))
                .fetch_optional(&state.pool)
                .await?;
        let (id, kind) = row.ok_or(AppError::Unauthorized)?;
        let kind = Channel::parse(&kind)
            .ok_or_else(|| AppError::Internal(format!("channel {id} has kind {kind:?}")))?;
        Ok(AuthenticatedChannel { id, kind })
    }
}

/// A device whose credential checked out, with its merchant and location.
#[derive(Debug, Clone)]
pub struct AuthenticatedDevice {
    pub device_pk: i64,
    pub device_id: String,
    pub merchant_id: i64,
    pub merchant_code: String,
    pub location_id: i64,
    pub venue_code: String,
}

impl FromRequestParts<AppState> for AuthenticatedDevice {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let credential = bearer(parts).ok_or(AppError::Unauthorized)?;
        let (device_id, secret) = credential.split_once(':').ok_or(AppError::Unauthorized)?;
        let device_id =
            stile_shared::Identifier::parse(device_id).map_err(|_| AppError::Unauthorized)?;
        // A revoked device is not found at all; a rotated secret's predecessor still counts
        // until its overlap ends.
        type DeviceRow = (
            i64,
            Option<String>,
            Option<String>,
            i64,
            String,
            i64,
            String,
        );
        let row: Option<DeviceRow> = sqlx::query_as(
            "SELECT d.id, d.secret_hash, \
                    CASE WHEN d.previous_secret_valid_until > now() THEN d.previous_secret_hash END, \
                    m.id, m.code, l.id, l.venue_code FROM devices d \
             JOIN merchants m ON m.id = d.merchant_id JOIN locations l ON l.id = d.location_id \
             WHERE d.device_id = $1 AND d.revoked_at IS NULL",
        )
        .bind(device_id.as_str())
        .fetch_optional(&state.pool)
        .await?;
        // Compare digests of digests, so the comparison time says nothing about the secret.
        let presented = sha256_hex(&sha256_hex(secret));
        let matches = |hash: &Option<String>| {
            hash.as_deref()
                .is_some_and(|hash| sha256_hex(hash) == presented)
        };
        match row {
            Some((
                device_pk,
                current,
                previous,
                merchant_id,
                merchant_code,
                location_id,
                venue_code,
            )) if matches(&current) || matches(&previous) => Ok(AuthenticatedDevice {
                device_pk,
                device_id: device_id.into_string(),
                merchant_id,
                merchant_code,
                location_id,
                venue_code,
            }),
            _ => Err(AppError::Unauthorized),
        }
    }
}

/// A caller that presented the configured admin token (`STILE_ADMIN_TOKEN`); the admin API
/// answers 403 while none is configured.
#[derive(Debug, Clone, Copy)]
pub struct AdminAccess;

impl FromRequestParts<AppState> for AdminAccess {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let Some(expected) = state.settings.admin_token.as_deref() else {
            return Err(AppError::Forbidden("the admin API is off".into()));
        };
        let presented = bearer(parts).unwrap_or_default();
        // Compare digests, so the comparison takes the same time wherever the strings differ.
        if sha256_hex(presented) != sha256_hex(expected) {
            return Err(AppError::Unauthorized);
        }
        Ok(AdminAccess)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let hash = hash_password("correct horse").expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "correct horse "));
        assert!(!verify_password("not a hash", "correct horse"));
    }

    #[test]
    fn operator_tokens_pin_key_issuer_and_audience() {
        let tokens = OperatorTokens::new(&[1; 32], 3600);
        let operator = AuthenticatedOperator {
            id: 7,
            username: "op".into(),
            merchant_id: 3,
            merchant_code: "M001".into(),
            generation: 4,
        };
        let now = chrono::Utc::now().timestamp();
        let token = tokens.issue(&operator, now).expect("issue");
        let checked = tokens.check(&token).expect("valid");
        assert_eq!((checked.id, checked.generation), (7, 4));
        let other = OperatorTokens::new(&[2; 32], 3600);
        assert!(other.check(&token).is_err());
        let expired = tokens.issue(&operator, now - 7200).expect("issue");
        assert!(tokens.check(&expired).is_err());
        assert!(tokens.check("garbage").is_err());
    }

    #[test]
    fn sha256_is_hex() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
