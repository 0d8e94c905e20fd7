//! `central-server`: the REST API over PostgreSQL that logs operators in, issues QR tokens
//! and redeems entitlements atomically.
//!
//! Layout: [`config`] (settings), [`db`] (pool, migrations), [`keys`] (QR signing keys),
//! [`auth`] (credentials), [`scan`] (the redemption transaction), [`qr`] (issuance and
//! inspection), [`seed`] (data loading), [`http`] (routes and handlers, by family),
//! [`state`] (what handlers reach), [`error`] (the one mapping of failures to HTTP),
//! [`metrics`], [`openapi`].
//!
//! [`serve`] takes a bound listener and a shutdown future, so tests run the real server on
//! port 0; `main.rs` only parses the command line and settings.

pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
pub mod device;
pub mod error;
pub mod group_commit;
pub mod http;
pub mod kek;
pub mod keys;
pub mod lifecycle;
pub mod listener;
pub mod login;
pub mod merchant;
pub mod metrics;
pub mod occupancy;
pub mod openapi;
pub mod outbox;
pub mod params;
pub mod peers;
pub mod qr;
pub mod recent;
pub mod retention;
pub mod scan;
pub mod seed;
pub mod state;

pub use state::{build_state, AppState};

use crate::config::Settings;
use crate::keys::{KeyError, KeyStore};
use sqlx::PgPool;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("signing keys: {0}")]
    Keys(#[from] KeyError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Internal(String),
}

/// The sockets a server answers on: the public API, and the operations API (`/metrics`,
/// the admin API), which belongs on a private address.
pub struct Listeners {
    pub public: TcpListener,
    /// `None`: no operations listener (tests that do not need one).
    pub ops: Option<TcpListener>,
}

/// Runs the server on its listeners until `shutdown` resolves, then drains in-flight
/// requests for at most `shutdown_grace_secs`.
pub async fn serve(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let state = build_state(settings).await?;
    serve_state(state, listeners, shutdown).await
}

/// [`serve`] with a state built beforehand.
pub async fn serve_state(
    state: AppState,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let Listeners {
        public: listener,
        ops,
    } = listeners;
    let (stopping_tx, mut stopping_rx) = watch::channel(false);
    let refresher = tokio::spawn(refresh_keys(
        state.keys.clone(),
        state.settings.key_refresh_interval(),
        stopping_tx.subscribe(),
    ));
    let grace = std::time::Duration::from_secs(state.settings.shutdown_grace_secs);
    tracing::info!(listen = %listener.local_addr()?, "central server listening");
    let watchdog = tokio::spawn(systemd_watchdog(stopping_tx.subscribe()));
    let webhooks = match reqwest::Client::builder().no_proxy().build() {
        Ok(client) => Some(tokio::spawn(outbox::run(
            state.pool.clone(),
            client,
            outbox::OutboxSettings {
                poll_interval: std::time::Duration::from_millis(state.settings.outbox_poll_ms),
                ..outbox::OutboxSettings::default()
            },
            stopping_tx.subscribe(),
        ))),
        Err(error) => {
            tracing::error!(error = %error, "webhook client unavailable; notifications stay queued");
            None
        }
    };
    let retention = (state.settings.retention_interval_secs > 0).then(|| {
        tokio::spawn(retention_loop(
            state.pool.clone(),
            state.settings.retention_days,
            std::time::Duration::from_secs(state.settings.retention_interval_secs),
            stopping_tx.subscribe(),
        ))
    });
    let limits = listener::Limits {
        header_read_timeout: std::time::Duration::from_secs(
            state.settings.http_header_timeout_secs,
        ),
        idle_timeout: std::time::Duration::from_secs(state.settings.http_idle_timeout_secs),
        max_connections: listener::connection_limit(
            state.settings.max_connections,
            state.settings.db_max_connections as usize + 64,
        ),
    };
    tracing::info!(
        max_connections = limits.max_connections,
        header_read_timeout_secs = limits.header_read_timeout.as_secs(),
        idle_timeout_secs = limits.idle_timeout.as_secs(),
        "listener limits"
    );
    let metrics = state.metrics.clone();
    let ops_server = match ops {
        Some(ops) => {
            tracing::info!(listen = %ops.local_addr()?, "operations listener (metrics, admin API)");
            let metrics = state.metrics.clone();
            Some(tokio::spawn(listener::run(
                ops,
                http::ops_router(state.clone()),
                limits,
                stopping_tx.subscribe(),
                move || metrics.record_connection_refused(),
            )))
        }
        None => None,
    };
    let server = listener::run(
        listener,
        http::router(state),
        limits,
        stopping_tx.subscribe(),
        move || metrics.record_connection_refused(),
    );
    let stopping_for_signal = stopping_tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: draining in-flight requests");
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        let _ = stopping_for_signal.send(true);
    });
    // Under systemd (Type=notify) this says the server is up; elsewhere it does nothing.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let grace_expired = async move {
        let _ = stopping_rx.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(grace).await;
    };
    let result = tokio::select! {
        result = server => result.map_err(ServerError::from),
        () = grace_expired => {
            tracing::warn!("shutdown grace period over; dropping remaining requests");
            Ok(())
        }
    };
    refresher.abort();
    watchdog.abort();
    if let Some(ops_server) = ops_server {
        let _ = tokio::time::timeout(grace, ops_server).await;
    }
    if let Some(webhooks) = webhooks {
        // The worker stops after the POST in flight; bound the wait like the rest.
        let _ = tokio::time::timeout(grace, webhooks).await;
    }
    if let Some(retention) = retention {
        retention.abort();
    }
    result
}

/// The optional retention schedule: one full purge per interval.
async fn retention_loop(
    pool: PgPool,
    days: i64,
    every: std::time::Duration,
    mut stopping: watch::Receiver<bool>,
) {
    let policy = match retention::RetentionPolicy::new(days, 5000) {
        Ok(policy) => policy,
        Err(error) => {
            tracing::error!(error = %error, "retention schedule off");
            return;
        }
    };
    let mut interval = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                match retention::purge_all(&pool, &policy, chrono::Utc::now(), |_| {}).await {
                    Ok(report) => tracing::info!(deleted = report.total(), "retention run finished"),
                    Err(error) => tracing::warn!(error = %error, "retention run failed"),
                }
            }
            _ = stopping.changed() => return,
        }
    }
}

/// Pings systemd's watchdog at half its interval while the server runs (only when the unit
/// sets `WatchdogSec`).
async fn systemd_watchdog(mut stopping: watch::Receiver<bool>) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let mut interval = tokio::time::interval(std::time::Duration::from_micros(usec / 2));
    loop {
        tokio::select! {
            _ = interval.tick() => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
            _ = stopping.changed() => return,
        }
    }
}

/// One step: reload the key ring. The loop around it only adds timing and shutdown.
async fn refresh_keys(
    keys: Arc<KeyStore>,
    every: std::time::Duration,
    mut stopping: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                if let Err(error) = keys.reload().await {
                    tracing::warn!(error = %error, "signing key reload failed; keeping the previous keys");
                }
            }
            _ = stopping.changed() => return,
        }
    }
}
