//! The gate's decision: what happens between a decoded code and the green or red light.
//!
//! 1. Debounce by meaning: the same (jti, function_code) seen again within a few seconds
//!    re-shows the last decision (a code held in front of the camera).
//! 2. Verify the token locally (keys from the central, pinned EdDSA), then the checks that
//!    need no ticket (expiry, merchant): invalid or expired codes are decided here, with no
//!    round trip.
//! 3. A (jti, function_code) this device already accepted is blocked locally, online or not.
//! 4. Online: `POST /venue/scan` with a fresh scan_id and a short deadline.
//! 5. No answer: when the request may have been applied, ask the central for that scan_id;
//!    failing that — and whenever the central is unreachable — decide offline with the same
//!    shared decision function over the synced state, under the same scan_id, so the later
//!    upload reconciles with whatever the central recorded. An offline acceptance is in
//!    SQLite (synchronous) before the gate shows green; the offline policy can refuse
//!    (`OFFLINE_UNVERIFIABLE`).

use crate::central::{CallError, Central, LinkSample};
use crate::config::AgentConfig;
use crate::store::{snapshot_for_decision, DecisionRecord, Mode, Store, StoreError};
use chrono::{SecondsFormat, Utc};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use stile_shared::api::{ScanRequest, TicketView};
use stile_shared::decision::{check_token, decide, Decision, DecisionInput};
use stile_shared::token::{verify, JwkSet, QrClaims};
use stile_shared::{ApiCode, Channel, DecisionCode, FunctionCode, KeySet, Lang};

/// The operator logged in at this gate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OperatorSession {
    #[serde(skip)]
    pub token: String,
    pub operator_id: i64,
    pub username: String,
    pub merchant_code: String,
}

/// The uplink as the gate last saw it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Uplink {
    pub online: bool,
    pub rtt_ms: Option<f64>,
    pub last_ok_at: Option<String>,
    pub last_error: Option<String>,
    pub clock_offset_secs: Option<f64>,
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

/// Frame and decode counters, written by the capture threads.
#[derive(Debug, Default)]
pub struct CaptureCounters {
    pub frames_seen: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub frames_decoded: AtomicU64,
}

/// The agent's Prometheus metrics.
pub struct AgentMetrics {
    registry: Registry,
    latency: Histogram,
    decisions: Family<Vec<(String, String)>, Counter>,
    outbox_depth: Gauge,
    oldest_unsynced_secs: Gauge,
    clock_offset_ms: Gauge,
    frames_seen: Gauge,
    frames_decoded: Gauge,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentMetrics")
    }
}

impl AgentMetrics {
    fn new() -> AgentMetrics {
        let mut registry = Registry::with_prefix("stile_agent");
        let latency = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "scan_to_decision_seconds",
            "From a decoded code to the decision shown",
            latency.clone(),
        );
        let decisions = Family::<Vec<(String, String)>, Counter>::default();
        registry.register("decisions", "Decisions by code and mode", decisions.clone());
        let outbox_depth = Gauge::default();
        registry.register(
            "outbox_depth",
            "Offline acceptances waiting for upload",
            outbox_depth.clone(),
        );
        let oldest_unsynced_secs = Gauge::default();
        registry.register(
            "oldest_unsynced_seconds",
            "Age of the oldest offline acceptance not uploaded yet",
            oldest_unsynced_secs.clone(),
        );
        let clock_offset_ms = Gauge::default();
        registry.register(
            "clock_offset_milliseconds",
            "Central clock minus this device's clock",
            clock_offset_ms.clone(),
        );
        let frames_seen = Gauge::default();
        registry.register(
            "frames_seen",
            "Frames read from the source",
            frames_seen.clone(),
        );
        let frames_decoded = Gauge::default();
        registry.register(
            "frames_decoded",
            "Frames in which a code was decoded",
            frames_decoded.clone(),
        );
        AgentMetrics {
            registry,
            latency,
            decisions,
            outbox_depth,
            oldest_unsynced_secs,
            clock_offset_ms,
            frames_seen,
            frames_decoded,
        }
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
    last_decision: Mutex<Option<GateDecision>>,
    pub capture: CaptureCounters,
    pub metrics: AgentMetrics,
    pub started_at: Instant,
    pub source: Mutex<Option<crate::frames::SourceInfo>>,
    pub source_error: Mutex<Option<String>>,
    /// The decoder cascade of the capture pipeline, for its counters.
    pub decoder: std::sync::OnceLock<Arc<crate::decode::Cascade>>,
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

impl Gate {
    pub fn open(config: AgentConfig) -> Result<Gate, GateError> {
        let store = Store::open(&config.database_path())?;
        let jwks = store.keys()?.unwrap_or_default();
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
            session: RwLock::new(None),
            uplink: Mutex::new(Uplink::default()),
            debounce: Mutex::new(HashMap::new()),
            last_decision: Mutex::new(None),
            capture: CaptureCounters::default(),
            metrics: AgentMetrics::new(),
            started_at: Instant::now(),
            source: Mutex::new(None),
            source_error: Mutex::new(None),
            decoder: std::sync::OnceLock::new(),
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

    pub fn session(&self) -> Option<OperatorSession> {
        self.session.read().ok().and_then(|s| s.clone())
    }

    pub fn set_session(&self, session: Option<OperatorSession>) {
        if let Ok(mut guard) = self.session.write() {
            *guard = session;
        }
    }

    /// The operator logged out at the gate (stays out until someone logs in).
    pub fn log_out(&self) {
        self.logged_out.store(true, Ordering::SeqCst);
        self.set_session(None);
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

    pub fn last_decision(&self) -> Option<GateDecision> {
        self.last_decision.lock().ok().and_then(|d| d.clone())
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

    /// Notes a successful exchange with the central.
    pub fn link_ok(&self, sample: Option<LinkSample>) {
        if let Ok(mut uplink) = self.uplink.lock() {
            uplink.online = true;
            uplink.last_ok_at = Some(now_rfc3339());
            uplink.last_error = None;
            if let Some(sample) = sample {
                uplink.rtt_ms = Some(sample.rtt.as_secs_f64() * 1000.0);
                if let Some(offset) = sample.clock_offset_secs {
                    uplink.clock_offset_secs = Some(offset);
                    self.metrics.clock_offset_ms.set((offset * 1000.0) as i64);
                }
            }
        }
    }

    /// Notes a failed exchange.
    pub fn link_failed(&self, error: &CallError) {
        if let Ok(mut uplink) = self.uplink.lock() {
            if error.is_uplink_failure() {
                uplink.online = false;
            }
            uplink.last_error = Some(error.to_string());
        }
    }

    /// Logs the configured operator in when nobody is.
    pub async fn ensure_session(&self) -> Result<(), CallError> {
        if self.session().is_some() || self.logged_out.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some(login) = &self.config.operator else {
            return Ok(());
        };
        let answer = self.central.login(&login.username, &login.password).await?;
        self.set_session(Some(OperatorSession {
            token: answer.token,
            operator_id: answer.operator.id,
            username: answer.operator.username,
            merchant_code: answer.operator.merchant_code,
        }));
        tracing::info!(device = %self.config.device_id, "operator session started");
        Ok(())
    }

    /// Decides one decoded code, end to end.
    pub async fn decide_code(self: &Arc<Self>, text: &str) -> GateDecision {
        let started = Instant::now();
        let function_code = self.function_code();
        let decision = match self.decide_inner(text, &function_code, started).await {
            Ok(decision) => decision,
            Err(error) => {
                // The store failed: nothing durable, so nothing green.
                tracing::error!(error = %error, device = %self.config.device_id, "decision not recorded");
                self.shown(
                    uuid::Uuid::new_v4().to_string(),
                    ApiCode::OfflineUnverifiable,
                    Mode::Local,
                    None,
                    Vec::new(),
                    &function_code,
                    started,
                )
            }
        };
        let mut decision = decision;
        if !decision.repeated {
            // From the code to the decision committed (the stored record cannot include its
            // own commit; the returned decision and the histogram do).
            decision.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            self.metrics.latency.observe(decision.latency_ms / 1000.0);
            self.metrics
                .decisions
                .get_or_create(&vec![
                    ("code".to_owned(), decision.code.as_str().to_owned()),
                    (
                        "mode".to_owned(),
                        format!("{:?}", decision.mode).to_lowercase(),
                    ),
                ])
                .inc();
            tracing::info!(
                decision = decision.code.as_str(),
                mode = ?decision.mode,
                latency_ms = decision.latency_ms,
                device = %self.config.device_id,
                ticket = decision.ticket.as_deref().unwrap_or("-"),
                "scan decided"
            );
        }
        if let Ok(mut last) = self.last_decision.lock() {
            *last = Some(decision.clone());
        }
        decision
    }

    #[allow(clippy::too_many_arguments)]
    fn shown(
        &self,
        scan_id: String,
        code: ApiCode,
        mode: Mode,
        ticket: Option<&str>,
        entitlements: Vec<stile_shared::api::EntitlementView>,
        function_code: &FunctionCode,
        started: Instant,
    ) -> GateDecision {
        GateDecision {
            scan_id,
            code,
            message: code.message(Lang::ZhCn).to_owned(),
            mode,
            ticket: ticket.map(mask_ticket_code),
            entitlements,
            function_code: function_code.to_string(),
            decided_at: now_rfc3339(),
            latency_ms: started.elapsed().as_secs_f64() * 1000.0,
            repeated: false,
        }
    }

    async fn record(
        self: &Arc<Self>,
        decision: &GateDecision,
        claims: Option<&QrClaims>,
        qr_token: Option<&str>,
        operator_id: Option<i64>,
    ) -> Result<(), StoreError> {
        let upload = decision.mode == Mode::Offline && decision.code == ApiCode::Success;
        let record = DecisionRecord {
            scan_id: decision.scan_id.clone(),
            jti: claims.map(|c| c.jti.to_string()),
            ticket_code: claims.map(|c| c.tid.clone()),
            function_code: decision.function_code.clone(),
            code: decision.code.as_str().to_owned(),
            mode: decision.mode,
            decided_at: decision.decided_at.clone(),
            latency_ms: decision.latency_ms,
            qr_token: upload.then(|| qr_token.unwrap_or_default().to_owned()),
            operator_id,
            upload_state: upload.then(|| "pending".to_owned()),
            upload_code: None,
        };
        self.with_store(move |store| store.record(&record)).await
    }

    async fn decide_inner(
        self: &Arc<Self>,
        text: &str,
        function_code: &FunctionCode,
        started: Instant,
    ) -> Result<GateDecision, StoreError> {
        let scan_id = uuid::Uuid::new_v4().to_string();
        let keys = self.keys.read().map(|k| k.0.clone()).unwrap_or_default();
        let verified = match verify(text.trim(), &keys) {
            Ok(verified) => verified,
            Err(_) => {
                let decision = self.shown(
                    scan_id,
                    ApiCode::InvalidQr,
                    Mode::Local,
                    None,
                    Vec::new(),
                    function_code,
                    started,
                );
                self.record(&decision, None, None, None).await?;
                return Ok(decision);
            }
        };
        let claims = verified.claims;
        let debounce_key = (claims.jti.to_string(), function_code.to_string());
        if let Some(previous) = self.debounced(&debounce_key) {
            return Ok(previous);
        }
        let decision = self
            .decide_verified(text.trim(), &claims, function_code, scan_id, started)
            .await?;
        if let Ok(mut debounce) = self.debounce.lock() {
            debounce.retain(|_, (at, _)| at.elapsed() < self.config.debounce);
            debounce.insert(debounce_key, (Instant::now(), decision.clone()));
        }
        Ok(decision)
    }

    fn debounced(&self, key: &(String, String)) -> Option<GateDecision> {
        let debounce = self.debounce.lock().ok()?;
        let (at, decision) = debounce.get(key)?;
        (at.elapsed() < self.config.debounce).then(|| GateDecision {
            repeated: true,
            ..decision.clone()
        })
    }

    async fn decide_verified(
        self: &Arc<Self>,
        token: &str,
        claims: &QrClaims,
        function_code: &FunctionCode,
        scan_id: String,
        started: Instant,
    ) -> Result<GateDecision, StoreError> {
        let Some(session) = self.session() else {
            let decision = self.shown(
                scan_id,
                ApiCode::Unauthorized,
                Mode::Local,
                Some(&claims.tid),
                Vec::new(),
                function_code,
                started,
            );
            self.record(&decision, Some(claims), None, None).await?;
            return Ok(decision);
        };
        let now = self.trusted_now();
        if let Err(code) = check_token(
            claims,
            &session.merchant_code,
            now,
            self.config.token_policy,
        ) {
            let decision = self.shown(
                scan_id,
                code.into(),
                Mode::Local,
                None,
                Vec::new(),
                function_code,
                started,
            );
            self.record(&decision, Some(claims), None, Some(session.operator_id))
                .await?;
            return Ok(decision);
        }
        let (jti, function) = (claims.jti.to_string(), function_code.to_string());
        if self
            .with_store(move |store| store.is_accepted(&jti, &function))
            .await?
        {
            let decision = self.shown(
                scan_id,
                ApiCode::AlreadyRedeemed,
                Mode::Local,
                Some(&claims.tid),
                Vec::new(),
                function_code,
                started,
            );
            self.record(&decision, Some(claims), None, Some(session.operator_id))
                .await?;
            return Ok(decision);
        }

        let request = ScanRequest {
            qr_token: token.to_owned(),
            function_code: function_code.clone(),
            venue_code: self.config.venue_code.clone(),
            device_id: self.config.device_id.clone(),
            scan_id: Some(scan_id.clone()),
        };
        let online = self
            .central
            .scan(&session.token, &request, self.config.online_deadline)
            .await;
        let online = match online {
            Ok((answer, sample)) => {
                self.link_ok(Some(sample));
                Ok(answer)
            }
            Err(error) => {
                self.link_failed(&error);
                if error.outcome_unknown() {
                    // The scan may have been applied: ask for it by its scan_id.
                    match self
                        .central
                        .scan_by_id(&session.token, &scan_id, self.config.online_deadline)
                        .await
                    {
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
        match online {
            Ok(answer) => {
                let code: ApiCode = answer.code.into();
                let entitlements = answer
                    .ticket
                    .map(|t: TicketView| t.entitlements)
                    .unwrap_or_default();
                let decision = self.shown(
                    scan_id,
                    code,
                    Mode::Online,
                    Some(&claims.tid),
                    entitlements,
                    function_code,
                    started,
                );
                self.record(&decision, Some(claims), None, Some(session.operator_id))
                    .await?;
                Ok(decision)
            }
            Err(CallError::Unauthorized) => {
                self.set_session(None);
                let decision = self.shown(
                    scan_id,
                    ApiCode::Unauthorized,
                    Mode::Online,
                    Some(&claims.tid),
                    Vec::new(),
                    function_code,
                    started,
                );
                self.record(&decision, Some(claims), None, Some(session.operator_id))
                    .await?;
                Ok(decision)
            }
            Err(error) if !error.is_uplink_failure() => {
                // The central refused the request itself (e.g. this device is not bound to
                // the venue): a configuration problem, shown as such.
                tracing::warn!(error = %error, device = %self.config.device_id, "central refused the scan request");
                let decision = self.shown(
                    scan_id,
                    ApiCode::Forbidden,
                    Mode::Online,
                    Some(&claims.tid),
                    Vec::new(),
                    function_code,
                    started,
                );
                self.record(&decision, Some(claims), None, Some(session.operator_id))
                    .await?;
                Ok(decision)
            }
            Err(_) => {
                self.decide_offline(token, claims, function_code, &session, scan_id, started)
                    .await
            }
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
        scan_id: String,
        started: Instant,
    ) -> Result<GateDecision, StoreError> {
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
        let Some(ticket) = ticket.filter(|_| fresh && clock_trusted && channel_allowed) else {
            let decision = self.shown(
                scan_id,
                ApiCode::OfflineUnverifiable,
                Mode::Offline,
                Some(&claims.tid),
                Vec::new(),
                function_code,
                started,
            );
            self.record(&decision, Some(claims), None, Some(session.operator_id))
                .await?;
            return Ok(decision);
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
        let mut entitlements = ticket.entitlements.clone();
        if code == ApiCode::Success {
            for entitlement in entitlements
                .iter_mut()
                .filter(|e| &e.function_code == function_code)
            {
                entitlement.remaining_uses =
                    (i64::from(entitlement.remaining_uses) - unsynced - 1).max(0) as i32;
            }
        }
        let decision = self.shown(
            scan_id,
            code,
            Mode::Offline,
            Some(&claims.tid),
            entitlements,
            function_code,
            started,
        );
        // Durable before the gate shows it: recorded (and queued) first, returned after.
        self.record(
            &decision,
            Some(claims),
            Some(token),
            Some(session.operator_id),
        )
        .await?;
        Ok(decision)
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
        let mut text = String::new();
        let _ = encode(&mut text, &self.metrics.registry);
        text
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
