//! QR signing keys: creation, rotation and retirement in the database, and the in-memory
//! key ring a running server signs and verifies with.
//!
//! States: `active` (signs new tokens; at most one, enforced by a unique index),
//! `published` (no longer signs, still verifies and is published in `GET /keys`),
//! `retired` (gone from the key set: its tokens stop verifying). A running server reloads
//! the ring every `key_refresh_secs` (at most 60 s), and at once when a token names a kid
//! it does not know yet (at most once a second).

use crate::kek::{KekError, KeyEncryption};
use rand::RngCore;
use sqlx::PgPool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use stile_shared::token::{verify, Jwk, JwkSet, QrSigner, TokenError, VerifiedToken};
use stile_shared::KeySet;

/// Serialises key creation across server processes.
const KEY_LOCK: i64 = 0x5354_494c_454b_4559; // "STILEKEY"

/// A key as `keys list` shows it.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub kid: String,
    pub state: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub retired_at: Option<chrono::DateTime<chrono::Utc>>,
}

type KeyRow = (
    String,
    String,
    chrono::DateTime<chrono::Utc>,
    Option<chrono::DateTime<chrono::Utc>>,
);

/// Why a key operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no key with kid {0:?}")]
    UnknownKid(String),
    #[error("key {0:?} is the active signing key: rotate first, then retire it")]
    RetiringActiveKey(String),
    #[error("key {0:?} is already retired")]
    AlreadyRetired(String),
    #[error("kid space exhausted (kids are at most 4 characters)")]
    KidSpaceExhausted,
    #[error("stored key {0:?} is corrupt")]
    Corrupt(String),
    #[error(transparent)]
    Kek(#[from] KekError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Creates an active key when the database has none. Idempotent and safe to race.
pub async fn ensure_active_key(pool: &PgPool, encryption: &KeyEncryption) -> Result<(), KeyError> {
    let mut tx = crate::db::begin(pool).await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(KEY_LOCK)
        .execute(&mut *tx)
        .await?;
    let active: Option<(String,)> =
        sqlx::query_as("SELECT kid FROM signing_keys WHERE state = 'active'")
            .fetch_optional(&mut *tx)
            .await?;
    if active.is_none() {
        insert_new_key(&mut tx, encryption).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Makes a new active key; the previous active key stays published for verification.
pub async fn rotate(pool: &PgPool, encryption: &KeyEncryption) -> Result<String, KeyError> {
    let mut tx = crate::db::begin(pool).await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(KEY_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE signing_keys SET state = 'published' WHERE state = 'active'")
        .execute(&mut *tx)
        .await?;
    let kid = insert_new_key(&mut tx, encryption).await?;
    tx.commit().await?;
    Ok(kid)
}

/// Seals every private key that is stored in the clear, or sealed with a KEK other than the
/// current one, with the current KEK; returns how many rows changed. Without a current KEK
/// nothing changes.
pub async fn reseal(pool: &PgPool, encryption: &KeyEncryption) -> Result<u64, KeyError> {
    let Some(current) = &encryption.current else {
        return Ok(0);
    };
    let mut tx = crate::db::begin(pool).await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(KEY_LOCK)
        .execute(&mut *tx)
        .await?;
    let rows: Vec<StoredKey> = sqlx::query_as(
        "SELECT id, kid, private_key, private_key_sealed, kek_id FROM signing_keys \
         WHERE private_key IS NOT NULL OR kek_id IS DISTINCT FROM $1",
    )
    .bind(current.id())
    .fetch_all(&mut *tx)
    .await?;
    let mut changed = 0;
    for (id, kid, plain, sealed, kek_id) in rows {
        let secret = match (&sealed, &kek_id, &plain) {
            (None, _, None) => continue, // retired long ago with nothing left to seal
            (sealed, kek_id, plain) => encryption.open(
                &kid,
                plain.as_deref(),
                sealed.as_deref().zip(kek_id.as_deref()),
            )?,
        };
        sqlx::query(
            "UPDATE signing_keys SET private_key = NULL, private_key_sealed = $2, kek_id = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(current.seal(&kid, &secret))
        .bind(current.id())
        .execute(&mut *tx)
        .await?;
        changed += 1;
    }
    tx.commit().await?;
    Ok(changed)
}

type StoredKey = (
    i64,
    String,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<String>,
);

/// The active signer as stored (opened with the server's KEKs): for tools that sign tokens
/// outside a server.
pub async fn active_signer(
    pool: &PgPool,
    encryption: &KeyEncryption,
) -> Result<QrSigner, KeyError> {
    type ActiveRow = (String, Option<Vec<u8>>, Option<Vec<u8>>, Option<String>);
    let (kid, plain, sealed, kek_id): ActiveRow =
        sqlx::query_as(
            "SELECT kid, private_key, private_key_sealed, kek_id FROM signing_keys WHERE state = 'active'",
        )
        .fetch_one(pool)
        .await?;
    let secret = encryption.open(
        &kid,
        plain.as_deref(),
        sealed.as_deref().zip(kek_id.as_deref()),
    )?;
    Ok(QrSigner::new(&kid, secret))
}

/// Stops publishing a key: tokens it signed no longer verify.
pub async fn retire(pool: &PgPool, kid: &str) -> Result<(), KeyError> {
    let mut tx = crate::db::begin(pool).await?;
    let state: Option<(String,)> =
        sqlx::query_as("SELECT state FROM signing_keys WHERE kid = $1 FOR UPDATE")
            .bind(kid)
            .fetch_optional(&mut *tx)
            .await?;
    match state.as_ref().map(|(s,)| s.as_str()) {
        None => return Err(KeyError::UnknownKid(kid.to_owned())),
        Some("active") => return Err(KeyError::RetiringActiveKey(kid.to_owned())),
        Some("retired") => return Err(KeyError::AlreadyRetired(kid.to_owned())),
        Some(_) => {}
    }
    sqlx::query("UPDATE signing_keys SET state = 'retired', retired_at = now() WHERE kid = $1")
        .bind(kid)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub async fn list(pool: &PgPool) -> Result<Vec<KeyInfo>, KeyError> {
    let rows: Vec<KeyRow> =
        sqlx::query_as("SELECT kid, state, created_at, retired_at FROM signing_keys ORDER BY id")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(kid, state, created_at, retired_at)| KeyInfo {
            kid,
            state,
            created_at,
            retired_at,
        })
        .collect())
}

async fn insert_new_key(
    tx: &mut sqlx::PgConnection,
    encryption: &KeyEncryption,
) -> Result<String, KeyError> {
    let (id,): (i64,) =
        sqlx::query_as("SELECT nextval(pg_get_serial_sequence('signing_keys', 'id'))")
            .fetch_one(&mut *tx)
            .await?;
    let kid = kid_for(id).ok_or(KeyError::KidSpaceExhausted)?;
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let public = QrSigner::new(&kid, secret).verifying_key();
    // Sealed when the server has a KEK; in the clear otherwise (and sealed at the next
    // start with one).
    let (plain, sealed, kek_id) = match &encryption.current {
        Some(kek) => (
            None,
            Some(kek.seal(&kid, &secret)),
            Some(kek.id().to_owned()),
        ),
        None => (Some(secret.to_vec()), None, None),
    };
    sqlx::query(
        "INSERT INTO signing_keys (id, kid, public_key, private_key, private_key_sealed, kek_id, state) \
         VALUES ($1, $2, $3, $4, $5, $6, 'active')",
    )
    .bind(id)
    .bind(&kid)
    .bind(public.as_bytes().as_slice())
    .bind(plain)
    .bind(sealed)
    .bind(kek_id)
    .execute(&mut *tx)
    .await?;
    Ok(kid)
}

/// `k` followed by the key's number in base 36: `k1` … `kzzz`, within the 4-character
/// budget of the QR token.
fn kid_for(id: i64) -> Option<String> {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    if !(1..36 * 36 * 36).contains(&id) {
        return None;
    }
    let mut n = id;
    let mut digits = Vec::new();
    while n > 0 {
        digits.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    digits.reverse();
    Some(format!("k{}", String::from_utf8_lossy(&digits)))
}

/// What a server signs and verifies with at one moment.
pub struct KeyRing {
    pub signer: Option<QrSigner>,
    pub keys: KeySet,
    pub jwks: JwkSet,
}

/// The key ring of a running server, reloaded from the database.
pub struct KeyStore {
    pool: PgPool,
    encryption: Arc<KeyEncryption>,
    ring: RwLock<Arc<KeyRing>>,
    last_load: Mutex<Instant>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyStore")
    }
}

impl KeyStore {
    pub async fn load(pool: PgPool, encryption: Arc<KeyEncryption>) -> Result<KeyStore, KeyError> {
        let ring = load_ring(&pool, &encryption).await?;
        Ok(KeyStore {
            pool,
            encryption,
            ring: RwLock::new(Arc::new(ring)),
            last_load: Mutex::new(Instant::now()),
        })
    }

    pub fn ring(&self) -> Arc<KeyRing> {
        match self.ring.read() {
            Ok(ring) => ring.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub async fn reload(&self) -> Result<(), KeyError> {
        let ring = load_ring(&self.pool, &self.encryption).await?;
        match self.ring.write() {
            Ok(mut guard) => *guard = Arc::new(ring),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(ring),
        }
        if let Ok(mut last) = self.last_load.lock() {
            *last = Instant::now();
        }
        Ok(())
    }

    /// Verifies a token; a kid this server has not loaded yet triggers one reload (at most
    /// once a second), so a rotation done by another process is picked up at once.
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        let result = verify(token, &self.ring().keys);
        if result != Err(TokenError::UnknownKid) {
            return result;
        }
        let stale = self
            .last_load
            .lock()
            .map(|last| last.elapsed() >= Duration::from_secs(1))
            .unwrap_or(true);
        if stale {
            if let Err(error) = self.reload().await {
                tracing::warn!(error = %error, "key reload after an unknown kid failed");
            }
            return verify(token, &self.ring().keys);
        }
        result
    }
}

type RingRow = (
    String,
    Vec<u8>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<String>,
    String,
);

async fn load_ring(pool: &PgPool, encryption: &KeyEncryption) -> Result<KeyRing, KeyError> {
    let rows: Vec<RingRow> = sqlx::query_as(
        "SELECT kid, public_key, private_key, private_key_sealed, kek_id, state FROM signing_keys \
         WHERE state <> 'retired' ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    let mut keys = KeySet::new();
    let mut jwks = JwkSet::default();
    let mut signer = None;
    for (kid, public, plain, sealed, kek_id, state) in rows {
        let public: [u8; 32] = public
            .try_into()
            .map_err(|_| KeyError::Corrupt(kid.clone()))?;
        let public = ed25519_dalek::VerifyingKey::from_bytes(&public)
            .map_err(|_| KeyError::Corrupt(kid.clone()))?;
        keys.insert(&kid, public);
        jwks.keys.push(Jwk::from_ed25519(&kid, &public));
        if state == "active" {
            let private = encryption.open(
                &kid,
                plain.as_deref(),
                sealed.as_deref().zip(kek_id.as_deref()),
            )?;
            signer = Some(QrSigner::new(&kid, private));
        }
    }
    Ok(KeyRing { signer, keys, jwks })
}

#[cfg(test)]
mod tests {
    use super::kid_for;

    #[test]
    fn kids_stay_within_four_characters() {
        let cases = [
            (0, None),
            (1, Some("k1")),
            (35, Some("kz")),
            (36, Some("k10")),
            (46_655, Some("kzzz")),
            (46_656, None),
        ];
        for (id, expected) in cases {
            assert_eq!(kid_for(id).as_deref(), expected, "{id}");
        }
    }
}
