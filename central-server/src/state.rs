//! What every handler can reach ([`AppState`]) and how it is built at start-up.

use crate::auth::{hash_password, operator_jwt_secret, OperatorTokens};
use crate::config::Settings;
use crate::keys::{self, KeyStore};
use crate::login::LoginGuard;
use crate::metrics::Metrics;
use crate::{db, openapi, ServerError};
use sqlx::PgPool;
use std::sync::Arc;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// The pool and the group-commit queue redemptions go through.
    pub redeemer: crate::scan::Redeemer,
    pub settings: Arc<Settings>,
    pub keys: Arc<KeyStore>,
    pub operator_tokens: Arc<OperatorTokens>,
    pub metrics: Arc<Metrics>,
    /// Operators' token generations and disabled flags, cached briefly.
    pub operator_standings: Arc<crate::auth::OperatorStandings>,
    /// Devices' venue bindings, cached briefly.
    pub device_bindings: Arc<crate::scan::DeviceBindings>,
    /// Login throttles and the bound on password hashing.
    pub login: Arc<LoginGuard>,
    /// An argon2id hash of nothing in particular: unknown usernames are checked against it
    /// so they take as long as wrong passwords.
    pub dummy_hash: Arc<str>,
    pub openapi: Arc<serde_json::Value>,
    /// HMAC key of the reconciliation log's cursors (derived from the JWT key, so every
    /// server process accepts every other's cursors).
    pub cursor_key: Arc<[u8; 32]>,
}

/// Connects, migrates, makes sure a signing key exists, and loads what handlers need.
pub async fn build_state(settings: Settings) -> Result<AppState, ServerError> {
    // Migrations may run longer than any request may wait: their own connection, without
    // the serving pool's statement timeout.
    let migrations = db::connect(&settings.database_url, 1).await?;
    db::migrate(&migrations).await?;
    migrations.close().await;
    let pool = db::connect_with(&settings.database_url, settings.pool_limits()).await?;
    let encryption = crate::kek::KeyEncryption::load(
        settings.key_encryption_key_file.as_deref(),
        settings.previous_key_encryption_key_file.as_deref(),
    )
    .map_err(keys::KeyError::from)?;
    match &encryption.current {
        Some(kek) => {
            let resealed = keys::reseal(&pool, &encryption).await?;
            tracing::info!(
                kek = kek.id(),
                resealed,
                "signing keys are sealed with the key-encryption key"
            );
        }
        None => tracing::warn!(
            "no key-encryption key (key_encryption_key_file, or the systemd credential kek): \
             QR signing keys are stored unencrypted, and a database dump can mint tickets"
        ),
    }
    keys::ensure_active_key(&pool, &encryption).await?;
    let keys = KeyStore::load(pool.clone(), Arc::new(encryption)).await?;
    let secret = operator_jwt_secret(&pool, settings.jwt_secret.as_deref()).await?;
    let dummy_hash = tokio::task::spawn_blocking(|| hash_password("stile-dummy-password"))
        .await
        .map_err(|error| ServerError::Internal(error.to_string()))?
        .map_err(|error| ServerError::Internal(error.to_string()))?;
    let cursor_key = derive_key(&secret, b"stile reconciliation cursor v1");
    let metrics = Arc::new(Metrics::new());
    let batch_metrics = metrics.clone();
    let group = crate::group_commit::GroupCommit::start(
        &settings.database_url,
        settings.pool_limits(),
        crate::group_commit::GroupCommitSettings {
            workers: settings.group_commit_workers,
            max_batch: settings.group_commit_max_batch,
        },
        move |scans| batch_metrics.record_batch(scans),
    )
    .await?;
    Ok(AppState {
        redeemer: crate::scan::Redeemer {
            pool: pool.clone(),
            group,
        },
        cursor_key: Arc::new(cursor_key),
        pool,
        operator_tokens: Arc::new(OperatorTokens::new(
            &secret,
            settings.operator_token_ttl_secs,
        )),
        login: Arc::new(LoginGuard::new(&settings)),
        operator_standings: Arc::new(crate::auth::OperatorStandings::default()),
        device_bindings: Arc::new(crate::scan::DeviceBindings::default()),
        settings: Arc::new(settings),
        keys: Arc::new(keys),
        metrics,
        dummy_hash: dummy_hash.into(),
        openapi: Arc::new(openapi::document()),
    })
}

/// A purpose-bound key derived from a server secret (HMAC-SHA256 of the label).
fn derive_key(secret: &[u8], label: &[u8]) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    match Hmac::<sha2::Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(label);
            mac.finalize().into_bytes().into()
        }
        // HMAC takes keys of any length; this arm cannot run.
        Err(_) => [0; 32],
    }
}
