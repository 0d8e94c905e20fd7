//! The gate's state and what changes it: the store, the keys, the operator session (kept
//! across reboots, opened offline against provisioned verifiers), the uplink as calls see
//! it, the store alarm and a detected store loss, the venue's occupancy chart as the central
//! last answered it, and the metrics. The decision pipeline
//! over this state is [`super::pipeline`].

use super::decision::GateDecision;
use super::session::{Display, OfflineLoginError, OfflineLogins, OperatorSession, Showing};
use crate::config::AgentConfig;
use crate::metrics::{AgentMetrics, CaptureCounters, Heartbeat};
use crate::store::{now_rfc3339, Store, StoreError};
use crate::uplink::central::{CallError, Central, LinkSample};
use crate::uplink::link::{LinkState, Uplink};
use chrono::Utc;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use stile_shared::token::JwkSet;
use stile_shared::{Direction, FunctionCode, KeySet};

/// Everything the gate knows and does.
pub struct Gate {
    pub config: AgentConfig,
    pub central: Central,
    pub(super) store: Mutex<Store>,
    pub(super) keys: RwLock<(KeySet, JwkSet)>,
    pub(super) session: RwLock<Option<OperatorSession>>,
    pub(super) function_code: RwLock<FunctionCode>,
    /// Entry or exit: the configured direction until the operator switches it on the gate
    /// page.
    pub(super) direction: RwLock<Direction>,
    pub(super) uplink: Mutex<Uplink>,
    pub(super) debounce: Mutex<HashMap<(String, String), (Instant, GateDecision)>>,
    pub(super) display: Mutex<Display>,
    /// The last failure to write the store, while it lasts (an alarm: status page,
    /// `/readyz`, journal, `/metrics`).
    pub(super) store_alarm: Mutex<Option<String>>,
    pub capture: CaptureCounters,
    /// Progress of the pipeline's stages, for the watchdog.
    pub heartbeat: Heartbeat,
    pub metrics: AgentMetrics,
    pub started_at: Instant,
    pub source: Mutex<Option<crate::capture::frames::SourceInfo>>,
    pub source_error: Mutex<Option<String>>,
    /// The frame source said it has nothing more (a scan engine's input closed).
    pub source_ended: Mutex<bool>,
    /// The decoder cascade of the capture pipeline, for its counters.
    pub decoder: std::sync::OnceLock<Arc<crate::capture::decode::Cascade>>,
    /// Offline logins' failure counts.
    pub(super) offline_logins: OfflineLogins,
    /// The credentials of an offline login, in memory only, to exchange the session for a
    /// token once the central answers.
    pub(super) upgrade_login: Mutex<Option<(String, String)>>,
    /// A loss of the store, detected at start (see [`StoreLoss`]).
    pub(super) store_loss: Mutex<Option<StoreLoss>>,
    /// The clock offset last written to the store, and when.
    pub(super) clock_saved: Mutex<Option<(Instant, f64)>>,
    /// Browsers logged in on the gate page (who may log out or switch the function).
    pub browser_sessions: crate::pages::access::BrowserSessions,
    /// Wakes the sync loop at once (the uplink came back, a token named an unknown kid).
    pub sync_now: tokio::sync::Notify,
    /// Set when the operator logged out at the gate: the configured operator is then not
    /// logged back in by the sync loop until someone logs in again.
    pub(super) logged_out: std::sync::atomic::AtomicBool,
    /// The venue peers, when `[peers]` is on.
    pub peers: Option<Arc<crate::peers::Peers>>,
    /// The venue's occupancy of today, as the central last answered (in memory: fetched
    /// again every sync).
    pub(super) occupancy: Mutex<Option<OccupancyChart>>,
}

/// The occupancy of the gate's venue today as `GET /device/occupancy` answered it, for the
/// status page's chart.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OccupancyChart {
    pub occupancy: stile_shared::api::VenueOccupancy,
    /// When it was fetched (RFC 3339, this gate's clock).
    pub fetched_at: String,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("device", &self.config.device_id)
            .finish()
    }
}

/// Why the gate could not start.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Central(#[from] CallError),
    #[error(transparent)]
    Peers(#[from] crate::peers::identity::IdentityError),
}

/// The store's key of the operator session.
const SESSION_STATE: &str = "operator_session";
/// The store's key of a detected loss of the store.
const STORE_LOSS_STATE: &str = "store_loss";

/// A store found empty on a device the central knows ran before: offline acceptances not
/// uploaded yet are gone. Reported until the agent restarts after the resync; offline
/// decisions are refused until the resync.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreLoss {
    pub detected_at: String,
    pub first_synced_at: Option<String>,
    pub last_upload_at: Option<String>,
    /// When a full ticket sync completed after the loss; offline decisions are allowed again.
    pub resynced_at: Option<String>,
}

/// The store's key of the last measured clock offset from the central (seconds).
const CLOCK_STATE: &str = "clock_offset_secs";
/// The store's key of the operators this device may log in offline.
const OPERATORS_STATE: &str = "offline_operators";

/// Why a login failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginFailure {
    #[error("wrong username or password")]
    BadCredentials,
    #[error("too many failed logins for this username; try again later")]
    Throttled,
    #[error("login unavailable: {0}")]
    Unavailable(String),
}

impl Gate {
    /// Opens the gate's store and state; `device_secret` is the credential it authenticates
    /// with (see [`crate::uplink::enroll`]).
    pub fn open(config: AgentConfig, device_secret: &str) -> Result<Gate, GateError> {
        let mut store = Store::open(&config.database_path())?;
        let metrics = AgentMetrics::new();
        let peers = match &config.peers {
            Some(settings) => Some(Arc::new(crate::peers::Peers::open(
                settings.clone(),
                config.device_id.clone(),
                &config.state_dir,
                &mut store,
                metrics.peers.clone(),
            )?)),
            None => None,
        };
        let jwks = store.keys()?.unwrap_or_default();
        // A gate rebooted during an outage keeps its operator (until the session expires).
        let restored = store
            .get_state(SESSION_STATE)?
            .and_then(|text| OperatorSession::from_stored(&text))
            .filter(|session| !session.is_expired(Utc::now().timestamp()));
        let loss = store
            .get_state(STORE_LOSS_STATE)?
            .and_then(|text| serde_json::from_str::<StoreLoss>(&text).ok());
        let uplink = Uplink {
            clock_offset_secs: store
                .get_state(CLOCK_STATE)?
                .and_then(|text| text.parse::<f64>().ok())
                .filter(|offset| offset.is_finite()),
            ..Uplink::default()
        };
        let keys = KeySet::from_jwks(&jwks).unwrap_or_default();
        let central = Central::new(
            &config.central_url,
            config.device_id.as_str(),
            device_secret,
        )?;
        Ok(Gate {
            function_code: RwLock::new(config.function_code.clone()),
            direction: RwLock::new(config.direction),
            config,
            central,
            store: Mutex::new(store),
            keys: RwLock::new((keys, jwks)),
            session: RwLock::new(restored),
            uplink: Mutex::new(uplink),
            debounce: Mutex::new(HashMap::new()),
            display: Mutex::new(Display::default()),
            store_alarm: Mutex::new(None),
            capture: CaptureCounters::default(),
            heartbeat: Heartbeat::default(),
            metrics,
            started_at: Instant::now(),
            source: Mutex::new(None),
            source_error: Mutex::new(None),
            source_ended: Mutex::new(false),
            decoder: std::sync::OnceLock::new(),
            offline_logins: OfflineLogins::default(),
            upgrade_login: Mutex::new(None),
            clock_saved: Mutex::new(None),
            store_loss: Mutex::new(loss),
            browser_sessions: crate::pages::access::BrowserSessions::default(),
            sync_now: tokio::sync::Notify::new(),
            logged_out: std::sync::atomic::AtomicBool::new(false),
            peers,
            occupancy: Mutex::new(None),
        })
    }

    /// Runs `work` on the store on a blocking thread (SQLite writes wait for the disk).
    pub async fn with_store<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let gate = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut store = gate
                .store
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut store)
        })
        .await
        .map_err(|error| StoreError::Malformed(format!("store task: {error}")))?
    }

    pub fn decoder_stats(&self) -> Vec<crate::capture::decode::DecoderStats> {
        self.decoder
            .get()
            .map(|cascade| cascade.stats())
            .unwrap_or_default()
    }

    /// The operator session, while it has not expired.
    pub fn session(&self) -> Option<OperatorSession> {
        let session = self.session.read().ok().and_then(|s| s.clone())?;
        if session.is_expired(Utc::now().timestamp()) {
            tracing::info!(device = %self.config.device_id, operator = %session.username, "operator session expired");
            self.set_session(None);
            return None;
        }
        Some(session)
    }

    /// Sets (or ends) the session, and keeps it in the store so it survives a reboot.
    pub fn set_session(&self, session: Option<OperatorSession>) {
        let stored = {
            let mut store = self
                .store
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match &session {
                Some(session) => store.set_state(SESSION_STATE, &session.to_stored()),
                None => store.delete_state(SESSION_STATE),
            }
        };
        self.store_result(&stored);
        if session.is_none() {
            if let Ok(mut upgrade) = self.upgrade_login.lock() {
                *upgrade = None;
            }
        }
        if let Ok(mut guard) = self.session.write() {
            *guard = session;
        }
    }

    /// Logs an operator in: at the central when it answers, else against the verifier the
    /// central provisioned (an offline session, exchanged for a token once the central
    /// answers again).
    pub async fn log_in_with(
        self: &Arc<Self>,
        username: &str,
        password: &str,
    ) -> Result<OperatorSession, LoginFailure> {
        if self.offline_logins.throttled(username) {
            return Err(LoginFailure::Throttled);
        }
        match self.central.login(username, password).await {
            Ok(answer) => {
                self.link_ok(None);
                Ok(OperatorSession::from_login(answer, Utc::now().timestamp()))
            }
            Err(CallError::BadCredentials) => {
                self.offline_logins.failed(username);
                Err(LoginFailure::BadCredentials)
            }
            Err(CallError::Refused { status: 429, .. }) => Err(LoginFailure::Throttled),
            Err(error) if error.is_uplink_failure() => {
                self.link_failed(&error);
                let operators = self.offline_operators().await;
                if operators.is_empty() {
                    return Err(LoginFailure::Unavailable(
                        "the central is unreachable and no operators are provisioned for offline login yet".into(),
                    ));
                }
                let (name, secret) = (username.to_owned(), password.to_owned());
                let gate = self.clone();
                let checked = tokio::task::spawn_blocking(move || {
                    gate.offline_logins
                        .log_in(&operators, &name, &secret, Utc::now().timestamp())
                })
                .await
                .map_err(|error| LoginFailure::Unavailable(error.to_string()))?;
                match checked {
                    Ok(session) => {
                        tracing::info!(device = %self.config.device_id, operator = %session.username, "operator logged in offline");
                        if let Ok(mut upgrade) = self.upgrade_login.lock() {
                            *upgrade = Some((username.to_owned(), password.to_owned()));
                        }
                        Ok(session)
                    }
                    Err(OfflineLoginError::BadCredentials) => Err(LoginFailure::BadCredentials),
                    Err(OfflineLoginError::Throttled) => Err(LoginFailure::Throttled),
                }
            }
            Err(error) => Err(LoginFailure::Unavailable(error.to_string())),
        }
    }

    /// The operators this device may log in offline (from the last sync).
    async fn offline_operators(self: &Arc<Self>) -> Vec<stile_shared::api::OfflineOperator> {
        self.with_store(|store| store.get_state(OPERATORS_STATE))
            .await
            .ok()
            .flatten()
            .and_then(|text| {
                serde_json::from_str::<stile_shared::api::OfflineOperators>(&text).ok()
            })
            .map(|list| list.operators)
            .unwrap_or_default()
    }

    /// Keeps the verifiers the central provisioned; a session of an operator no longer
    /// among them ends (revoked).
    pub async fn install_operators(
        self: &Arc<Self>,
        operators: &stile_shared::api::OfflineOperators,
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(operators)
            .map_err(|error| StoreError::Malformed(error.to_string()))?;
        self.with_store(move |store| store.set_state(OPERATORS_STATE, &text))
            .await?;
        if let Some(session) = self.session() {
            let known = operators
                .operators
                .iter()
                .any(|o| o.id == session.operator_id && o.username == session.username);
            if !known {
                tracing::warn!(device = %self.config.device_id, operator = %session.username, "operator no longer provisioned: session ended");
                self.set_session(None);
            }
        }
        Ok(())
    }

    /// The operator logged out at the gate (stays out until someone logs in); the last
    /// decision is no longer shown.
    pub fn log_out(&self) {
        self.logged_out.store(true, Ordering::SeqCst);
        self.set_session(None);
        if let Ok(mut display) = self.display.lock() {
            display.clear();
        }
    }

    /// An operator logged in at the gate.
    pub fn log_in(&self, session: OperatorSession) {
        self.logged_out.store(false, Ordering::SeqCst);
        self.set_session(Some(session));
    }

    pub fn function_code(&self) -> FunctionCode {
        self.function_code
            .read()
            .map(|f| f.clone())
            .unwrap_or_else(|_| self.config.function_code.clone())
    }

    pub fn set_function_code(&self, code: FunctionCode) {
        if let Ok(mut guard) = self.function_code.write() {
            *guard = code;
        }
    }

    /// Which way this gate lets people through now.
    pub fn direction(&self) -> Direction {
        self.direction
            .read()
            .map(|d| *d)
            .unwrap_or(self.config.direction)
    }

    pub fn set_direction(&self, direction: Direction) {
        if let Ok(mut guard) = self.direction.write() {
            *guard = direction;
        }
    }

    /// The venue's occupancy chart as last fetched.
    pub fn occupancy_chart(&self) -> Option<OccupancyChart> {
        self.occupancy.lock().ok().and_then(|chart| chart.clone())
    }

    /// Keeps the central's latest answer (`None`: the gate's location belongs to no venue).
    pub fn set_occupancy_chart(&self, chart: Option<OccupancyChart>) {
        if let Ok(mut guard) = self.occupancy.lock() {
            *guard = chart;
        }
    }

    pub fn uplink(&self) -> Uplink {
        self.uplink.lock().map(|u| u.clone()).unwrap_or_default()
    }

    /// What the gate display shows now.
    pub fn showing(&self) -> Showing {
        let logged_in = self.session().is_some();
        self.display
            .lock()
            .map(|display| display.showing(logged_in, self.config.decision_clear))
            .unwrap_or(Showing::Waiting)
    }

    /// A loss of the store detected at start, if any.
    pub fn store_loss(&self) -> Option<StoreLoss> {
        self.store_loss.lock().ok().and_then(|loss| loss.clone())
    }

    /// Whether offline decisions are refused because the store was lost and the gate has
    /// not resynced since.
    pub fn awaiting_resync(&self) -> bool {
        self.store_loss()
            .is_some_and(|loss| loss.resynced_at.is_none())
    }

    /// The central's word on a new store: when the device synced or uploaded before, the
    /// store it had is lost. Reported loudly and kept in the store.
    pub async fn check_history(
        self: &Arc<Self>,
        history: &stile_shared::api::DeviceHistory,
    ) -> Result<(), StoreError> {
        let ran_before = history.first_synced_at.is_some() || history.last_upload_at.is_some();
        let loss = ran_before.then(|| StoreLoss {
            detected_at: now_rfc3339(),
            first_synced_at: history.first_synced_at.clone(),
            last_upload_at: history.last_upload_at.clone(),
            resynced_at: None,
        });
        if let Some(loss) = &loss {
            tracing::error!(
                device = %self.config.device_id,
                path = %self.config.database_path().display(),
                first_synced_at = loss.first_synced_at.as_deref().unwrap_or("-"),
                last_upload_at = loss.last_upload_at.as_deref().unwrap_or("-"),
                "ALARM: the store is new but this device ran before: offline acceptances not \
                 uploaded are lost; deciding offline is refused until a full resync"
            );
        }
        let text = loss
            .as_ref()
            .map(|loss| serde_json::to_string(loss).unwrap_or_default());
        self.with_store(move |store| {
            if let Some(text) = text {
                store.set_state(STORE_LOSS_STATE, &text)?;
            }
            store.delete_state(crate::store::HISTORY_CHECK_STATE)
        })
        .await?;
        if let Ok(mut guard) = self.store_loss.lock() {
            if loss.is_some() {
                *guard = loss;
            }
        }
        Ok(())
    }

    /// A full ticket sync completed: after a loss, offline decisions may resume.
    pub async fn note_full_sync(self: &Arc<Self>) -> Result<(), StoreError> {
        let Some(mut loss) = self.store_loss().filter(|loss| loss.resynced_at.is_none()) else {
            return Ok(());
        };
        loss.resynced_at = Some(now_rfc3339());
        let text = serde_json::to_string(&loss).unwrap_or_default();
        self.with_store(move |store| store.set_state(STORE_LOSS_STATE, &text))
            .await?;
        tracing::warn!(device = %self.config.device_id, "resynced after the store loss: offline decisions allowed again");
        if let Ok(mut guard) = self.store_loss.lock() {
            *guard = Some(loss);
        }
        Ok(())
    }

    /// The store's last write failure, while no write has succeeded since.
    pub fn store_alarm(&self) -> Option<String> {
        self.store_alarm.lock().ok().and_then(|alarm| alarm.clone())
    }

    pub(crate) fn store_result<T>(&self, result: &Result<T, StoreError>) {
        let Ok(mut alarm) = self.store_alarm.lock() else {
            return;
        };
        match result {
            Ok(_) => {
                if alarm.take().is_some() {
                    tracing::info!(device = %self.config.device_id, "store writes work again");
                }
            }
            Err(error) => {
                self.metrics.store_failures.inc();
                tracing::error!(
                    error = %error,
                    device = %self.config.device_id,
                    "ALARM: the store cannot record decisions"
                );
                *alarm = Some(error.to_string());
            }
        }
    }

    pub fn jwks(&self) -> JwkSet {
        self.keys.read().map(|k| k.1.clone()).unwrap_or_default()
    }

    pub fn has_keys(&self) -> bool {
        self.keys.read().map(|k| !k.0.is_empty()).unwrap_or(false)
    }

    /// Installs a key set fetched from the central (and keeps it in the store).
    pub async fn install_keys(self: &Arc<Self>, jwks: JwkSet) -> Result<(), StoreError> {
        let keys =
            KeySet::from_jwks(&jwks).map_err(|error| StoreError::Malformed(error.to_string()))?;
        let text = serde_json::to_string(&jwks)
            .map_err(|error| StoreError::Malformed(error.to_string()))?;
        let fetched_at = now_rfc3339();
        self.with_store(move |store| {
            store.set_state("jwks", &text)?;
            store.set_state("jwks_fetched_at", &fetched_at)
        })
        .await?;
        if let Ok(mut guard) = self.keys.write() {
            *guard = (keys, jwks);
        }
        Ok(())
    }

    fn update_uplink(&self, change: impl FnOnce(&mut Uplink)) {
        if let Ok(mut uplink) = self.uplink.lock() {
            let before = uplink.state;
            change(&mut uplink);
            if let Some(offset) = uplink.clock_offset_secs {
                self.metrics.clock_offset_ms.set((offset * 1000.0) as i64);
            }
            if before != uplink.state {
                tracing::info!(
                    device = %self.config.device_id,
                    from = before.as_str(),
                    to = uplink.state.as_str(),
                    reason = uplink.last_error.as_deref().unwrap_or("-"),
                    "uplink state changed"
                );
            }
            for state in [
                LinkState::Online,
                LinkState::Suspect,
                LinkState::Offline,
                LinkState::Draining,
            ] {
                self.metrics
                    .uplink_state
                    .get_or_create(&vec![("state".to_owned(), state.as_str().to_owned())])
                    .set(i64::from(state == uplink.state));
            }
        }
    }

    /// Notes a successful exchange with the central.
    pub fn link_ok(&self, sample: Option<LinkSample>) {
        self.update_uplink(|uplink| uplink.ok(sample));
        if let Some(offset) = sample.and_then(|sample| sample.clock_offset_secs) {
            self.keep_clock_offset(offset);
        }
    }

    /// Keeps the central's clock offset in the store (when it moved, or once a minute), so
    /// a gate rebooted during an outage still knows how far its clock is from the central's.
    fn keep_clock_offset(&self, offset: f64) {
        let Ok(mut saved) = self.clock_saved.lock() else {
            return;
        };
        if saved.is_some_and(|(at, value): (Instant, f64)| {
            at.elapsed() < Duration::from_secs(60) && (value - offset).abs() < 0.5
        }) {
            return;
        }
        let written = self
            .store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .set_state(CLOCK_STATE, &offset.to_string());
        self.store_result(&written);
        *saved = Some((Instant::now(), offset));
    }

    /// Notes a failed exchange.
    pub fn link_failed(&self, error: &CallError) {
        self.update_uplink(|uplink| uplink.failed(error));
    }

    /// The upload queue started or finished draining.
    pub fn set_draining(&self, draining: bool) {
        self.update_uplink(|uplink| uplink.set_draining(draining));
    }

    /// Logs the configured operator in when nobody is (offline too), and exchanges an
    /// offline session for a token once the central answers.
    pub async fn ensure_session(self: &Arc<Self>) -> Result<(), LoginFailure> {
        if self.logged_out.load(Ordering::SeqCst) {
            return Ok(());
        }
        let configured = self
            .config
            .operator
            .as_ref()
            .map(|login| (login.username.clone(), login.password.clone()));
        match self.session() {
            Some(session) if session.is_offline() => {
                let remembered = self.upgrade_login.lock().ok().and_then(|u| u.clone());
                let Some((username, password)) = remembered
                    .or(configured)
                    .filter(|(username, _)| *username == session.username)
                else {
                    return Ok(());
                };
                if !self.uplink().state.try_online() {
                    return Ok(());
                }
                if let Ok(answer) = self.central.login(&username, &password).await {
                    self.set_session(Some(OperatorSession::from_login(
                        answer,
                        Utc::now().timestamp(),
                    )));
                    tracing::info!(device = %self.config.device_id, "offline session exchanged for a token");
                }
                Ok(())
            }
            Some(_) => Ok(()),
            None => {
                let Some((username, password)) = configured else {
                    return Ok(());
                };
                let session = self.log_in_with(&username, &password).await?;
                tracing::info!(device = %self.config.device_id, offline = session.is_offline(), "operator session started");
                self.set_session(Some(session));
                Ok(())
            }
        }
    }

    /// Refreshes the gauges and renders the metrics.
    pub fn render_metrics(&self, queue: &crate::store::QueueState) -> String {
        self.metrics.outbox_depth.set(queue.depth);
        let oldest = queue
            .oldest_decided_at
            .as_deref()
            .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
            .map(|at| (Utc::now() - at.with_timezone(&Utc)).num_seconds())
            .unwrap_or(0);
        self.metrics.oldest_unsynced_secs.set(oldest);
        self.metrics
            .frames_seen
            .set(self.capture.frames_seen.load(Ordering::Relaxed) as i64);
        self.metrics
            .frames_decoded
            .set(self.capture.frames_decoded.load(Ordering::Relaxed) as i64);
        self.metrics.encode()
    }
}

/// How long ago an RFC 3339 time was, in seconds.
pub fn age_secs(at: Option<&str>) -> Option<i64> {
    at.and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
        .map(|at| (Utc::now() - at.with_timezone(&Utc)).num_seconds())
}
