//! The gate's decision: what happens between a decoded code and the green or red light.
//!
//! [`Gate::decide_code`] runs the stages, each of which answers or hands on, then records
//! and shows the outcome in one place:
//! 1. Verify the token locally (keys from the central, pinned EdDSA). A token the gate has no
//!    key for (no keys synced yet, or an unknown kid) is `OFFLINE_UNVERIFIABLE`, not invalid.
//! 2. Debounce by meaning (capture frames only): the same (jti, function_code) seen again
//!    within `debounce_secs` re-shows the last decision (a code held in front of the camera).
//! 3. The operator session, then the checks that need no ticket (expiry, merchant).
//! 4. A (jti, function_code) this device already accepted is blocked locally, online or not.
//! 5. Online, only while the uplink is online or draining ([`crate::uplink`]): `POST
//!    /venue/scan` with a fresh scan_id and a short deadline; when the request may have been
//!    applied, a lookup by scan_id with what is left of [`DECISION_BUDGET`].
//! 6. Offline: the same shared decision function over the synced state, under the same
//!    scan_id, so the later upload reconciles with whatever the central recorded; the
//!    offline policy can refuse (`OFFLINE_UNVERIFIABLE`).
//!
//! Recording: a decision the central made is shown as the central made it even when the
//! store cannot record it (that is an alarm); a decision the gate made alone is shown only
//! once it is in SQLite, and as `STORE_FAILED` when it could not be recorded.

use crate::central::{CallError, Central, LinkSample};
use crate::config::AgentConfig;
pub use crate::metrics::{AgentMetrics, CaptureCounters, Heartbeat};
pub use crate::session::OperatorSession;
use crate::session::{Display, OfflineLoginError, OfflineLogins, Showing};
use crate::store::{snapshot_for_decision, DecisionRecord, Mode, Store, StoreError};
pub use crate::uplink::{LinkState, Uplink};
use chrono::{SecondsFormat, Utc};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use stile_shared::api::{ScanRequest, TicketView};
use stile_shared::decision::{check_token, decide, Decision, DecisionInput};
use stile_shared::token::{verify, JwkSet, QrClaims};
use stile_shared::{ApiCode, Channel, DecisionCode, FunctionCode, KeySet, Lang, TokenError};

/// The whole time a scan may take, the online attempt and the scan lookup included: the gate
/// shows a decision within 1 s whatever the uplink does.
pub const DECISION_BUDGET: Duration = Duration::from_millis(900);

/// Where a code came from: frames of the capture pipeline are debounced (a code held in
/// front of the camera is decided once); an explicit request (`POST /api/scan`) is decided
/// every time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// From the capture pipeline; latency counts from the capture.
    Capture {
        captured_at: Instant,
    },
    Request,
}

/// A decision as the gate shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GateDecision {
    pub scan_id: String,
    pub code: ApiCode,
    pub message: String,
    pub mode: Mode,
    /// Masked (`TK-1***-1`): never a full ticket code on a screen or in a log.
    pub ticket: Option<String>,
    /// The token's id, when it verified (never shown on the gate display).
    #[serde(skip)]
    pub jti: Option<String>,
    pub entitlements: Vec<stile_shared::api::EntitlementView>,
    pub function_code: String,
    pub decided_at: String,
    pub latency_ms: f64,
    /// Re-shown by the debounce, not decided again.
    pub repeated: bool,
}

impl GateDecision {
    pub fn is_green(&self) -> bool {
        self.code == ApiCode::Success
    }
}

/// Everything the gate knows and does.
pub struct Gate {
    pub config: AgentConfig,
    pub central: Central,
    store: Mutex<Store>,
    keys: RwLock<(KeySet, JwkSet)>,
    session: RwLock<Option<OperatorSession>>,
    function_code: RwLock<FunctionCode>,
    uplink: Mutex<Uplink>,
    debounce: Mutex<HashMap<(String, String), (Instant, GateDecision)>>,
    display: Mutex<Display>,
    /// The last failure to write the store, while it lasts (an alarm: status page,
    /// `/readyz`, journal, `/metrics`).
    store_alarm: Mutex<Option<String>>,
    pub capture: CaptureCounters,
    /// Progress of the pipeline's stages, for the watchdog.
    pub heartbeat: Heartbeat,
    pub metrics: AgentMetrics,
    pub started_at: Instant,
    pub source: Mutex<Option<crate::frames::SourceInfo>>,
    pub source_error: Mutex<Option<String>>,
    /// The frame source said it has nothing more (a scan engine's input closed).
    pub source_ended: Mutex<bool>,
    /// The decoder cascade of the capture pipeline, for its counters.
    pub decoder: std::sync::OnceLock<Arc<crate::decode::Cascade>>,
    /// Offline logins' failure counts.
    offline_logins: OfflineLogins,
    /// The credentials of an offline login, in memory only, to exchange the session for a
    /// token once the central answers.
    upgrade_login: Mutex<Option<(String, String)>>,
    /// A loss of the store, detected at start (see [`StoreLoss`]).
    store_loss: Mutex<Option<StoreLoss>>,
    /// The clock offset last written to the store, and when.
    clock_saved: Mutex<Option<(Instant, f64)>>,
    /// Browsers logged in on the gate page (who may log out or switch the function).
    pub browser_sessions: crate::access::BrowserSessions,
    /// Wakes the sync loop at once (the uplink came back, a token named an unknown kid).
    pub sync_now: tokio::sync::Notify,
    /// Set when the operator logged out at the gate: the configured operator is then not
    /// logged back in by the sync loop until someone logs in again.
    logged_out: std::sync::atomic::AtomicBool,
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
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `TK-1001-1` → `TK-1***-1`: enough for staff to match a ticket, not enough to copy one.
pub fn mask_ticket_code(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    if chars.len() <= 4 {
        return "*".repeat(chars.len());
    }
    let keep_start = 4.min(chars.len() / 2);
    let keep_end = 2.min(chars.len() - keep_start);
    let start: String = chars[..keep_start].iter().collect();
    let end: String = chars[chars.len() - keep_end..].iter().collect();
    format!("{start}***{end}")
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

/// What a stage of the pipeline decided, before it is recorded and shown.
#[derive(Debug)]
struct Outcome {
    code: ApiCode,
    mode: Mode,
    /// The ticket code (masked only when shown).
    ticket: Option<String>,
    entitlements: Vec<stile_shared::api::EntitlementView>,
    claims: Option<QrClaims>,
    /// The token, kept for upload (offline acceptances only).
    upload_token: Option<String>,
    operator_id: Option<i64>,
}

impl Outcome {
    fn local(code: ApiCode) -> Outcome {
        Outcome {
            code,
            mode: Mode::Local,
            ticket: None,
            entitlements: Vec::new(),
            claims: None,
            upload_token: None,
            operator_id: None,
        }
    }

    fn about(mut self, claims: &QrClaims, operator_id: Option<i64>) -> Outcome {
        self.claims = Some(claims.clone());
        self.operator_id = operator_id;
        self
    }

    fn showing_ticket(mut self, claims: &QrClaims) -> Outcome {
        self.ticket = Some(claims.tid.clone());
        self
    }

    fn in_mode(mut self, mode: Mode) -> Outcome {
        self.mode = mode;
        self
    }
}

/// The first stages' answer: a decision to record, or the debounce's re-shown one.
enum Staged {
    Decided(Outcome),
    Repeat(GateDecision),
}

impl Gate {
    pub fn open(config: AgentConfig) -> Result<Gate, GateError> {
        let store = Store::open(&config.database_path())?;
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
            &config.device_id,
            &config.device_secret,
        )?;
        Ok(Gate {
            function_code: RwLock::new(config.function_code.clone()),
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
            metrics: AgentMetrics::new(),
            started_at: Instant::now(),
            source: Mutex::new(None),
            source_error: Mutex::new(None),
            source_ended: Mutex::new(false),
            decoder: std::sync::OnceLock::new(),
            offline_logins: OfflineLogins::default(),
            upgrade_login: Mutex::new(None),
            clock_saved: Mutex::new(None),
            store_loss: Mutex::new(loss),
            browser_sessions: crate::access::BrowserSessions::default(),
            sync_now: tokio::sync::Notify::new(),
            logged_out: std::sync::atomic::AtomicBool::new(false),
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

    pub fn decoder_stats(&self) -> Vec<crate::decode::DecoderStats> {
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
                Ok(OperatorSession {
                    token: Some(answer.token),
                    operator_id: answer.operator.id,
                    username: answer.operator.username,
                    merchant_code: answer.operator.merchant_code,
                    expires_at: Utc::now().timestamp() + answer.expires_in,
                })
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

    pub fn uplink(&self) -> Uplink {
        self.uplink.lock().map(|u| u.clone()).unwrap_or_default()
    }

    /// The last decision recorded or shown (also after it cleared from the display).
    pub fn last_decision(&self) -> Option<GateDecision> {
        self.display
            .lock()
            .ok()
            .and_then(|display| display.last().cloned())
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

    fn store_result<T>(&self, result: &Result<T, StoreError>) {
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
                    self.set_session(Some(OperatorSession {
                        token: Some(answer.token),
                        operator_id: answer.operator.id,
                        username: answer.operator.username,
                        merchant_code: answer.operator.merchant_code,
                        expires_at: Utc::now().timestamp() + answer.expires_in,
                    }));
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

    /// Decides one decoded code, end to end: the stages decide, then the one place below
    /// records and shows the result.
    pub async fn decide_code(self: &Arc<Self>, text: &str, origin: Origin) -> GateDecision {
        let started = match origin {
            Origin::Capture { captured_at } => captured_at,
            Origin::Request => Instant::now(),
        };
        if let Ok(mut display) = self.display.lock() {
            display.checking();
        }
        let function_code = self.function_code();
        let scan_id = uuid::Uuid::new_v4().to_string();
        let staged = self
            .decide_stages(text, &function_code, &scan_id, origin, started)
            .await;
        let decision = match staged {
            Ok(Staged::Repeat(decision)) => decision,
            Ok(Staged::Decided(outcome)) => {
                self.record_and_show(outcome, scan_id, &function_code, text, started)
                    .await
            }
            Err(error) => {
                // A store read failed: nothing can be decided offline, nothing is green.
                self.store_result::<()>(&Err(error));
                self.shown(
                    scan_id,
                    &Outcome::local(ApiCode::StoreFailed),
                    &function_code,
                    started,
                )
            }
        };
        if matches!(origin, Origin::Capture { .. }) && !decision.repeated {
            if let Some(jti) = &decision.jti {
                if let Ok(mut debounce) = self.debounce.lock() {
                    debounce.retain(|_, (at, _)| at.elapsed() < self.config.debounce);
                    debounce.insert(
                        (jti.clone(), function_code.to_string()),
                        (Instant::now(), decision.clone()),
                    );
                }
            }
        }
        if let Ok(mut display) = self.display.lock() {
            display.decided(decision.clone());
        }
        decision
    }

    /// Records the outcome, then shows it. A decision the central made is shown as the
    /// central made it, whether or not the store took it (the failure is an alarm); one this
    /// gate made alone is shown only once it is durable, so nothing is green offline unless
    /// it was recorded first.
    async fn record_and_show(
        self: &Arc<Self>,
        outcome: Outcome,
        scan_id: String,
        function_code: &FunctionCode,
        text: &str,
        started: Instant,
    ) -> GateDecision {
        let mut decision = self.shown(scan_id, &outcome, function_code, started);
        let recorded = self.record(&decision, &outcome).await;
        self.store_result(&recorded);
        if recorded.is_err() && decision.mode != Mode::Online {
            let refused = Outcome {
                code: ApiCode::StoreFailed,
                ..outcome
            };
            decision = self.shown(decision.scan_id.clone(), &refused, function_code, started);
        }
        // From the code to the decision committed (the stored record cannot include its own
        // commit; the returned decision and the histogram do).
        decision.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.metrics.latency.observe(decision.latency_ms / 1000.0);
        self.metrics
            .decisions
            .get_or_create(&vec![
                ("code".to_owned(), decision.code.as_str().to_owned()),
                ("mode".to_owned(), decision.mode.as_str().to_owned()),
            ])
            .inc();
        tracing::info!(
            decision = decision.code.as_str(),
            mode = decision.mode.as_str(),
            latency_ms = decision.latency_ms,
            device = %self.config.device_id,
            ticket = decision.ticket.as_deref().unwrap_or("-"),
            chars = text.len(),
            "scan decided"
        );
        decision
    }

    fn shown(
        &self,
        scan_id: String,
        outcome: &Outcome,
        function_code: &FunctionCode,
        started: Instant,
    ) -> GateDecision {
        GateDecision {
            scan_id,
            code: outcome.code,
            message: outcome.code.message(Lang::ZhCn).to_owned(),
            mode: outcome.mode,
            ticket: outcome.ticket.as_deref().map(mask_ticket_code),
            jti: outcome.claims.as_ref().map(|c| c.jti.to_string()),
            entitlements: outcome.entitlements.clone(),
            function_code: function_code.to_string(),
            decided_at: now_rfc3339(),
            latency_ms: started.elapsed().as_secs_f64() * 1000.0,
            repeated: false,
        }
    }

    async fn record(
        self: &Arc<Self>,
        decision: &GateDecision,
        outcome: &Outcome,
    ) -> Result<(), StoreError> {
        let upload = decision.mode == Mode::Offline && decision.code == ApiCode::Success;
        let claims = outcome.claims.as_ref();
        let record = DecisionRecord {
            scan_id: decision.scan_id.clone(),
            jti: claims.map(|c| c.jti.to_string()),
            ticket_code: claims.map(|c| c.tid.clone()),
            function_code: decision.function_code.clone(),
            code: decision.code.as_str().to_owned(),
            mode: decision.mode,
            decided_at: decision.decided_at.clone(),
            latency_ms: decision.latency_ms,
            qr_token: upload.then(|| outcome.upload_token.clone().unwrap_or_default()),
            operator_id: outcome.operator_id,
            upload_state: upload.then(|| "pending".to_owned()),
            upload_code: None,
        };
        self.with_store(move |store| store.record(&record)).await
    }

    /// Verify → debounce → session → token checks → local block → online → lookup →
    /// offline. Each stage either answers or hands on.
    async fn decide_stages(
        self: &Arc<Self>,
        text: &str,
        function_code: &FunctionCode,
        scan_id: &str,
        origin: Origin,
        started: Instant,
    ) -> Result<Staged, StoreError> {
        let keys = self.keys.read().map(|k| k.0.clone()).unwrap_or_default();
        let token = text.trim();
        // (With no keys at all, every well-formed token names an unknown kid.)
        let claims = match verify(token, &keys) {
            Ok(verified) => verified.claims,
            Err(error) => {
                // Without the key that signed it the gate cannot tell a good code from a bad
                // one: it says so instead of calling it invalid, and fetches the keys.
                if matches!(error, TokenError::UnknownKid) {
                    self.sync_now.notify_one();
                    return Ok(Staged::Decided(Outcome::local(
                        ApiCode::OfflineUnverifiable,
                    )));
                }
                return Ok(Staged::Decided(Outcome::local(ApiCode::InvalidQr)));
            }
        };
        if matches!(origin, Origin::Capture { .. }) {
            let key = (claims.jti.to_string(), function_code.to_string());
            if let Some(previous) = self.debounced(&key) {
                return Ok(Staged::Repeat(previous));
            }
        }
        let Some(session) = self.session() else {
            return Ok(Staged::Decided(
                Outcome::local(ApiCode::Unauthorized)
                    .about(&claims, None)
                    .showing_ticket(&claims),
            ));
        };
        let operator = Some(session.operator_id);
        let now = self.trusted_now();
        if let Err(code) = check_token(
            &claims,
            &session.merchant_code,
            now,
            self.config.token_policy,
        ) {
            return Ok(Staged::Decided(
                Outcome::local(code.into()).about(&claims, operator),
            ));
        }
        let (jti, function) = (claims.jti.to_string(), function_code.to_string());
        if self
            .with_store(move |store| store.is_accepted(&jti, &function))
            .await?
        {
            return Ok(Staged::Decided(
                Outcome::local(ApiCode::AlreadyRedeemed)
                    .about(&claims, operator)
                    .showing_ticket(&claims),
            ));
        }
        if self.uplink().state.try_online() && !session.is_offline() {
            if let Some(outcome) = self
                .decide_online(token, &claims, function_code, &session, scan_id, started)
                .await
            {
                return Ok(Staged::Decided(outcome));
            }
        }
        self.decide_offline(token, &claims, function_code, &session)
            .await
            .map(Staged::Decided)
    }

    /// The central decides, within the deadline; `None` when the uplink failed (decide
    /// offline). When the request may have been applied, the scan is looked up by its
    /// scan_id with what is left of the decision budget.
    async fn decide_online(
        self: &Arc<Self>,
        token: &str,
        claims: &QrClaims,
        function_code: &FunctionCode,
        session: &OperatorSession,
        scan_id: &str,
        started: Instant,
    ) -> Option<Outcome> {
        let request = ScanRequest {
            qr_token: token.to_owned(),
            function_code: function_code.clone(),
            venue_code: self.config.venue_code.clone(),
            device_id: self.config.device_id.clone(),
            scan_id: Some(scan_id.to_owned()),
        };
        let operator = Some(session.operator_id);
        let token = session.token.as_deref()?;
        let answer = match self
            .central
            .scan(token, &request, self.config.online_deadline)
            .await
        {
            Ok((answer, sample)) => {
                self.link_ok(Some(sample));
                Ok(answer)
            }
            Err(error) => {
                self.link_failed(&error);
                let left = DECISION_BUDGET.saturating_sub(started.elapsed());
                if error.outcome_unknown() && left >= Duration::from_millis(50) {
                    match self.central.scan_by_id(token, scan_id, left).await {
                        Ok(Some(answer)) => {
                            self.link_ok(None);
                            Ok(answer)
                        }
                        _ => Err(error),
                    }
                } else {
                    Err(error)
                }
            }
        };
        let online = |code: ApiCode| {
            Outcome::local(code)
                .in_mode(Mode::Online)
                .about(claims, operator)
                .showing_ticket(claims)
        };
        match answer {
            Ok(answer) => {
                let mut outcome = online(answer.code.into());
                outcome.entitlements = answer
                    .ticket
                    .map(|t: TicketView| t.entitlements)
                    .unwrap_or_default();
                Some(outcome)
            }
            Err(CallError::Unauthorized) => {
                self.set_session(None);
                Some(online(ApiCode::Unauthorized))
            }
            Err(error) if !error.is_uplink_failure() => {
                // The central refused the request itself (e.g. this device is not bound to
                // the venue): a configuration problem, shown as such.
                tracing::warn!(error = %error, device = %self.config.device_id, "central refused the scan request");
                Some(online(ApiCode::Forbidden))
            }
            Err(_) => None,
        }
    }

    /// Now, on the central's clock when the offset is known.
    fn trusted_now(&self) -> i64 {
        let offset = self.uplink().clock_offset_secs.unwrap_or(0.0);
        Utc::now().timestamp() + offset.round() as i64
    }

    async fn decide_offline(
        self: &Arc<Self>,
        token: &str,
        claims: &QrClaims,
        function_code: &FunctionCode,
        session: &OperatorSession,
    ) -> Result<Outcome, StoreError> {
        let (ticket_code, function) = (claims.tid.clone(), function_code.to_string());
        let (ticket, unsynced, last_sync) = self
            .with_store(move |store| {
                Ok((
                    store.ticket(&ticket_code)?,
                    store.unsynced_uses(&ticket_code, &function)?,
                    store.get_state("last_ticket_sync_at")?,
                ))
            })
            .await?;
        let operator = Some(session.operator_id);
        let offline = |code: ApiCode| {
            Outcome::local(code)
                .in_mode(Mode::Offline)
                .about(claims, operator)
                .showing_ticket(claims)
        };
        let policy = &self.config.offline;
        let state_age = last_sync
            .and_then(|at| chrono::DateTime::parse_from_rfc3339(&at).ok())
            .map(|at| (Utc::now() - at.with_timezone(&Utc)).num_seconds());
        let clock_trusted = self
            .uplink()
            .clock_offset_secs
            .is_some_and(|offset| offset.abs() <= policy.max_clock_offset_secs as f64);
        let channel_allowed = match claims.ch {
            Channel::MiniApp => policy.allow_miniapp,
            Channel::Ota => policy.allow_ota,
        };
        let fresh =
            state_age.is_some_and(|age| age >= 0 && age as u64 <= policy.max_state_age_secs);
        let resynced = !self.awaiting_resync();
        let Some(ticket) = ticket.filter(|_| fresh && clock_trusted && channel_allowed && resynced)
        else {
            return Ok(offline(ApiCode::OfflineUnverifiable));
        };
        let snapshot = snapshot_for_decision(&ticket, function_code, unsynced);
        let redeemed = if ticket.current_jti.as_ref() == Some(&claims.jti) {
            ticket.redeemed_functions.clone()
        } else {
            Vec::new()
        };
        let verdict = decide(&DecisionInput {
            claims,
            operator_merchant: &session.merchant_code,
            ticket: Some(&snapshot),
            redeemed_with_this_jti: &redeemed,
            function_code,
            now: self.trusted_now(),
            policy: self.config.token_policy,
        });
        let code: ApiCode = match verdict {
            Decision::Redeem { .. } => DecisionCode::Success.into(),
            Decision::Reject(code) => code.into(),
        };
        let mut outcome = offline(code);
        outcome.entitlements = ticket.entitlements.clone();
        if code == ApiCode::Success {
            for entitlement in outcome
                .entitlements
                .iter_mut()
                .filter(|e| &e.function_code == function_code)
            {
                entitlement.remaining_uses =
                    (i64::from(entitlement.remaining_uses) - unsynced - 1).max(0) as i32;
            }
            outcome.upload_token = Some(token.to_owned());
        }
        Ok(outcome)
    }

    fn debounced(&self, key: &(String, String)) -> Option<GateDecision> {
        let debounce = self.debounce.lock().ok()?;
        let (at, decision) = debounce.get(key)?;
        (at.elapsed() < self.config.debounce).then(|| GateDecision {
            repeated: true,
            ..decision.clone()
        })
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

/// The deadline the daemon gives an in-flight decision at shutdown.
pub const DRAIN_STEP: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::mask_ticket_code;

    #[test]
    fn ticket_codes_are_masked() {
        let cases = [
            ("TK-1001-1", "TK-1***-1"),
            ("ABCDEFGHIJKL", "ABCD***KL"),
            ("AB", "**"),
            ("ABCDE", "AB***DE"),
        ];
        for (code, masked) in cases {
            assert_eq!(mask_ticket_code(code), masked, "{code}");
        }
    }
}
