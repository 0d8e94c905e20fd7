//! The agent's own HTTP listener: the technician's status page, the operator's gate display,
//! and the machine-readable endpoints (`/api/status`, `/api/scan`, `/metrics`, `/healthz`,
//! `/readyz`). Pages are plain server-rendered HTML that refresh themselves: they work on any
//! browser a technician has, with no script. Both show the gate's direction (entry or exit);
//! the status page shows its venue: the occupancy estimate by part, the age of the central's
//! figure, and the day's chart ([`super::chart`]).

use crate::decide::{age_secs, mask_ticket_code, Gate, GateDecision, OperatorSession};
use crate::pages::access;

use crate::decide::venue::{occupancy, Occupancy};
use crate::decide::OccupancyChart;
use crate::store::{DecisionRecord, QueueState};
use axum::extract::{Form, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use stile_shared::venue::Direction;
use stile_shared::{ApiCode, FunctionCode, Lang};

/// How a reading looks to a technician.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Grade {
    Ok,
    Warn,
    Bad,
}

impl Grade {
    fn class(self) -> &'static str {
        match self {
            Grade::Ok => "ok",
            Grade::Warn => "warn",
            Grade::Bad => "bad",
        }
    }

    /// `Ok` up to `warn`, `Warn` up to `bad`, `Bad` beyond; `Bad` when unknown.
    fn of(value: Option<f64>, warn: f64, bad: f64) -> Grade {
        match value {
            Some(v) if v <= warn => Grade::Ok,
            Some(v) if v <= bad => Grade::Warn,
            _ => Grade::Bad,
        }
    }
}

/// The one line at the top of the status page: is this gate fine, and can it decide
/// offline right now; if not, why.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub grade: Grade,
    pub offline_ready: bool,
    /// Why the gate could not decide a scan alone right now (empty when it can).
    pub offline_blockers: Vec<String>,
    pub text: String,
}

/// Thresholds of the status page's readings, from the offline policy.
#[derive(Debug, Clone, Serialize)]
pub struct Grades {
    pub clock: Grade,
    pub sync_age: Grade,
    pub key_age: Grade,
    pub disk: Grade,
    /// The age of the central's occupancy figure, against `offline.occupancy_max_age_secs`
    /// (`Ok` where it decides nothing: no venue, or no capacity).
    pub occupancy_age: Grade,
}

/// Free space below which the disk is a warning, and a problem.
const DISK_WARN_BYTES: f64 = 1024.0 * 1024.0 * 1024.0;
const DISK_BAD_BYTES: f64 = 100.0 * 1024.0 * 1024.0;
/// Key set age that is a warning (a day), and a problem (a week).
const KEY_WARN_SECS: f64 = 86_400.0;
const KEY_BAD_SECS: f64 = 7.0 * 86_400.0;

/// Free bytes for unprivileged writers on the file system of `dir`.
fn disk_free_bytes(dir: &std::path::Path) -> Option<u64> {
    rustix::fs::statvfs(dir)
        .ok()
        .map(|stat| stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// The verdict and grades of a report (a pure function of the report and the policy).
fn judge(report: &StatusReport, policy: &crate::config::OfflinePolicy) -> (Verdict, Grades) {
    let max_offset = policy.max_clock_offset_secs as f64;
    let max_age = policy.max_state_age_secs as f64;
    let grades = Grades {
        clock: Grade::of(
            report.uplink.clock_offset_secs.map(f64::abs),
            max_offset / 2.0,
            max_offset,
        ),
        sync_age: Grade::of(
            report.last_sync_age_secs.map(|a| a as f64),
            max_age / 2.0,
            max_age,
        ),
        key_age: Grade::of(
            report.keys.age_secs.map(|a| a as f64),
            KEY_WARN_SECS,
            KEY_BAD_SECS,
        ),
        // more free space is better: grade the shortfall
        disk: match report.disk_free_bytes.map(|b| b as f64) {
            Some(free) if free >= DISK_WARN_BYTES => Grade::Ok,
            Some(free) if free >= DISK_BAD_BYTES => Grade::Warn,
            _ => Grade::Bad,
        },
        occupancy_age: match &report.venue {
            Some(venue) if venue.capacity.is_some() => {
                let max_age = policy.occupancy_max_age_secs as f64;
                Grade::of(Some(venue.figure_age_secs as f64), max_age / 2.0, max_age)
            }
            _ => Grade::Ok,
        },
    };
    let mut blockers = Vec::new();
    if report.keys.kids.is_empty() {
        blockers.push("no verification keys yet".to_owned());
    }
    if report.operator.is_none() {
        blockers.push("no operator logged in".to_owned());
    }
    match report.last_sync_age_secs {
        None => blockers.push("no ticket sync yet".to_owned()),
        Some(age) if age as f64 > max_age => {
            blockers.push(format!("ticket state {age} s old (policy: {max_age} s)"))
        }
        _ => {}
    }
    match report.uplink.clock_offset_secs {
        None => blockers.push("clock offset from the central unknown".to_owned()),
        Some(offset) if offset.abs() > max_offset => blockers.push(format!(
            "clock {offset:+.0} s off the central (policy: ±{max_offset} s)"
        )),
        _ => {}
    }
    if let Some(error) = &report.store_alarm {
        blockers.push(format!("store cannot record: {error}"));
    }
    if report
        .store_loss
        .as_ref()
        .is_some_and(|loss| loss.resynced_at.is_none())
    {
        blockers.push("store lost: awaiting a full resync".to_owned());
    }
    let online = report.uplink.state.try_online();
    let offline_ready = blockers.is_empty();
    let mut problems = Vec::new();
    if !online {
        problems.push(format!("uplink {}", report.uplink.state.as_str()));
    }
    if report.store_alarm.is_some() || report.store_loss.is_some() {
        problems.push("store alarm".to_owned());
    }
    if report.camera.problem.is_some() || report.camera.ended {
        problems.push("frame source problem".to_owned());
    }
    if grades.disk == Grade::Bad {
        problems.push("disk nearly full".to_owned());
    }
    if report.direction == Direction::Exit
        && report.venue.is_none()
        && report.last_sync_at.is_some()
    {
        problems.push("exit gate at a location of no venue: exits cannot be recorded".to_owned());
    }
    let grade = if (!online && !offline_ready) || report.store_alarm.is_some() {
        Grade::Bad
    } else if !problems.is_empty() || !offline_ready {
        Grade::Warn
    } else {
        Grade::Ok
    };
    let text = match (online, offline_ready) {
        (true, true) if problems.is_empty() => {
            "OK: online, and able to decide offline if the uplink drops".to_owned()
        }
        (true, true) => format!(
            "Online, able to decide offline; check: {}",
            problems.join(", ")
        ),
        (true, false) => format!(
            "Online; could NOT decide offline if the uplink drops: {}",
            blockers.join("; ")
        ),
        (false, true) => format!(
            "Deciding OFFLINE ({}): scans are decided on this gate alone",
            problems.join(", ")
        ),
        (false, false) => format!(
            "CANNOT DECIDE: uplink {} and offline decisions blocked: {}",
            report.uplink.state.as_str(),
            blockers.join("; ")
        ),
    };
    (
        Verdict {
            grade,
            offline_ready,
            offline_blockers: blockers,
            text,
        },
        grades,
    )
}

/// Everything the status page shows, as `/api/status` answers it.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The one-line verdict (filled in last, from the rest of the report).
    pub verdict: Option<Verdict>,
    pub grades: Option<Grades>,
    /// Free bytes on the state directory's file system.
    pub disk_free_bytes: Option<u64>,
    pub version: &'static str,
    pub uptime_secs: u64,
    pub device_id: String,
    pub venue_code: String,
    pub function_code: String,
    /// Which way the gate lets people through.
    pub direction: Direction,
    /// The venue of the gate's location, as the feed last named it.
    pub venue: Option<VenueReport>,
    pub operator: Option<OperatorSession>,
    /// `online` (the session has a token) or `offline` (logged in against the provisioned
    /// verifier; scans are decided offline until it is exchanged for a token).
    pub operator_session: Option<&'static str>,
    pub camera: CameraReport,
    pub decoders: Vec<crate::capture::decode::DecoderStats>,
    pub last_decisions: Vec<DecisionLine>,
    pub uplink: crate::uplink::link::Uplink,
    /// The store's last write failure, while it lasts.
    pub store_alarm: Option<String>,
    /// A store found empty on a device that ran before (until the agent restarts).
    pub store_loss: Option<crate::decide::StoreLoss>,
    /// What the gate display shows now.
    pub showing: crate::decide::session::Showing,
    pub last_sync_at: Option<String>,
    pub last_sync_age_secs: Option<i64>,
    pub synced_tickets: i64,
    pub outbox: QueueState,
    pub oldest_queued_age_secs: Option<i64>,
    pub conflicts: Vec<DecisionLine>,
    pub keys: KeysReport,
    pub sqlite_bytes: u64,
    /// The venue peers: each with its link state, last message age and lag.
    pub peers: crate::peers::PeersReport,
}

/// The gate's venue: the central's figure, this gate's estimate by part, and the chart.
#[derive(Debug, Clone, Serialize)]
pub struct VenueReport {
    pub venue_code: String,
    pub name: String,
    pub entry_function: String,
    pub capacity: Option<i64>,
    /// Tickets inside as the central counted them, at `as_of` (Unix seconds, the central's
    /// clock), `figure_age_secs` ago.
    pub synced_inside: i64,
    pub as_of: i64,
    pub figure_age_secs: i64,
    /// The estimate by part (see [`crate::decide::venue`]), and in all.
    pub estimate: Occupancy,
    pub inside: i64,
    /// The day's occupancy as the central last answered it, fetched `chart_age_secs` ago.
    pub chart: Option<OccupancyChart>,
    pub chart_age_secs: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CameraReport {
    pub source: Option<crate::capture::frames::SourceInfo>,
    /// Why there is no frame source ("no camera"), if so.
    pub problem: Option<String>,
    pub frames_seen: u64,
    pub frames_dropped: u64,
    pub frames_decoded: u64,
    /// Share of processed frames in which a code was found.
    pub decode_rate: f64,
    /// Frames scaled down to the capture size before decoding.
    pub frames_scaled: u64,
    /// Average time per processed frame, scaling and decoding together.
    pub frame_ms_avg: f64,
    /// The source has nothing more (a scan engine's input closed): no scans will come.
    pub ended: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeysReport {
    pub kids: Vec<String>,
    pub fetched_at: Option<String>,
    pub age_secs: Option<i64>,
}

/// One decision as the pages list it: masked ticket code, never a token.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionLine {
    pub code: String,
    pub message: String,
    pub decided_at: String,
    pub ticket: Option<String>,
    pub function_code: String,
    pub mode: crate::store::Mode,
    pub latency_ms: f64,
    pub upload: Option<String>,
    /// For a refusal because another gate accepted the pair: that gate.
    pub accepted_at: Option<String>,
    pub direction: Direction,
    /// For a success at the venue: what it changed the occupancy by.
    pub occupancy_change: Option<i64>,
}

impl From<&DecisionRecord> for DecisionLine {
    fn from(record: &DecisionRecord) -> DecisionLine {
        let message = ApiCode::parse(&record.code)
            .map(|code| code.message(Lang::ZhCn).to_owned())
            .unwrap_or_default();
        DecisionLine {
            code: record.code.clone(),
            message,
            decided_at: record.decided_at.clone(),
            ticket: record.ticket_code.as_deref().map(mask_ticket_code),
            function_code: record.function_code.clone(),
            mode: record.mode,
            latency_ms: record.latency_ms,
            upload: match (&record.upload_state, &record.upload_code) {
                (Some(state), Some(code)) => Some(format!("{state} ({code})")),
                (Some(state), None) => Some(state.clone()),
                _ => None,
            },
            accepted_at: record.peer_device.clone(),
            direction: record.direction,
            occupancy_change: record.occupancy_change,
        }
    }
}

/// The gate's direction as staff read it.
pub fn direction_label(direction: Direction) -> &'static str {
    match direction {
        Direction::Entry => "入口 Entry",
        Direction::Exit => "出口 Exit",
    }
}

/// Gathers the report.
pub async fn report(gate: &Arc<Gate>) -> Result<StatusReport, crate::store::StoreError> {
    let since = gate
        .venue_clock(stile_shared::MerchantZone::default())
        .since_local();
    let (recent, conflicts, queue, last_sync, tickets, keys_at, (cursors, log_head), venue) = gate
        .with_store(move |store| {
            let venue = match store.venue()? {
                Some(venue) => {
                    let own = store.own_passages(None, since)?;
                    let peers = store.peer_passages(&venue, None, since)?;
                    Some((venue, own, peers, store.merchant_zone()?))
                }
                None => None,
            };
            Ok((
                store.recent(20)?,
                store.conflicts(20)?,
                store.queue_state()?,
                store.get_state("last_ticket_sync_at")?,
                store.ticket_count()?,
                store.get_state("jwks_fetched_at")?,
                (store.peer_cursors()?, store.own_log_head()?),
                venue,
            ))
        })
        .await?;
    let venue = venue.map(|(venue, own, peers, zone)| {
        let clock = gate.venue_clock(zone);
        let estimate = occupancy(&venue, &own, &peers, &clock);
        let chart = gate.occupancy_chart();
        VenueReport {
            figure_age_secs: clock.now - venue.as_of,
            inside: estimate.inside(),
            estimate,
            chart_age_secs: chart.as_ref().and_then(|c| age_secs(Some(&c.fetched_at))),
            chart,
            venue_code: venue.venue_code,
            name: venue.name,
            entry_function: venue.entry_function.to_string(),
            capacity: venue.capacity,
            synced_inside: venue.inside,
            as_of: venue.as_of,
        }
    });
    let seen = gate.capture.frames_seen.load(Ordering::Relaxed);
    let dropped = gate.capture.frames_dropped.load(Ordering::Relaxed);
    let decoded = gate.capture.frames_decoded.load(Ordering::Relaxed);
    let processed = seen.saturating_sub(dropped);
    let decoder_frames = gate.capture.frames_processed.load(Ordering::Relaxed);
    let frame_micros = gate.capture.frame_micros.load(Ordering::Relaxed);
    let sqlite_bytes = ["", "-wal"]
        .iter()
        .filter_map(|suffix| {
            let mut path = gate.config.database_path().into_os_string();
            path.push(suffix);
            std::fs::metadata(path).ok().map(|m| m.len())
        })
        .sum();
    let mut report = StatusReport {
        verdict: None,
        grades: None,
        disk_free_bytes: disk_free_bytes(&gate.config.state_dir),
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: gate.started_at.elapsed().as_secs(),
        device_id: gate.config.device_id.to_string(),
        venue_code: gate.config.venue_code.to_string(),
        function_code: gate.function_code().to_string(),
        direction: gate.direction(),
        venue,
        operator_session: gate
            .session()
            .map(|s| if s.is_offline() { "offline" } else { "online" }),
        operator: gate.session(),
        camera: CameraReport {
            source: gate.source.lock().ok().and_then(|s| s.clone()),
            problem: gate.source_error.lock().ok().and_then(|s| s.clone()),
            frames_seen: seen,
            frames_dropped: dropped,
            frames_decoded: decoded,
            decode_rate: if processed == 0 {
                0.0
            } else {
                decoded as f64 / processed as f64
            },
            frames_scaled: gate.capture.frames_scaled.load(Ordering::Relaxed),
            frame_ms_avg: if decoder_frames == 0 {
                0.0
            } else {
                frame_micros as f64 / decoder_frames as f64 / 1000.0
            },
            ended: gate.source_ended.lock().map(|e| *e).unwrap_or(false),
        },
        decoders: gate.decoder_stats(),
        last_decisions: recent.iter().map(DecisionLine::from).collect(),
        uplink: gate.uplink(),
        store_alarm: gate.store_alarm(),
        store_loss: gate.store_loss(),
        showing: gate.showing(),
        last_sync_age_secs: age_secs(last_sync.as_deref()),
        last_sync_at: last_sync,
        synced_tickets: tickets,
        oldest_queued_age_secs: age_secs(queue.oldest_decided_at.as_deref()),
        outbox: queue,
        conflicts: conflicts.iter().map(DecisionLine::from).collect(),
        keys: KeysReport {
            kids: gate.jwks().keys.iter().map(|k| k.kid.clone()).collect(),
            age_secs: age_secs(keys_at.as_deref()),
            fetched_at: keys_at,
        },
        sqlite_bytes,
        peers: gate
            .peers
            .as_ref()
            .map_or_else(crate::peers::PeersReport::off, |peers| {
                peers.report(&cursors, log_head)
            }),
    };
    let (verdict, grades) = judge(&report, &gate.config.offline);
    report.verdict = Some(verdict);
    report.grades = Some(grades);
    Ok(report)
}

/// The listener's routes.
pub fn router(gate: Arc<Gate>) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/gate", get(gate_page))
        .route("/gate/login", post(gate_login))
        .route("/gate/logout", post(gate_logout))
        .route("/gate/function", post(gate_function))
        .route("/gate/direction", post(gate_direction))
        .route("/api/status", get(api_status))
        .route("/api/scan", post(api_scan))
        .route("/api/peer-acceptances", get(api_peer_acceptances))
        .route("/metrics", get(metrics))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .with_state(gate)
}

fn internal(error: impl std::fmt::Display) -> Response {
    tracing::error!(error = %error, "status page failed");
    (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
}

async fn api_status(State(gate): State<Arc<Gate>>) -> Response {
    match report(&gate).await {
        Ok(report) => Json(report).into_response(),
        Err(error) => internal(error),
    }
}

#[derive(Debug, Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

/// The newest acceptances taken from peers (read-only, like the status): `limit` 1 to
/// 10,000, default 200.
async fn api_peer_acceptances(
    State(gate): State<Arc<Gate>>,
    axum::extract::Query(query): axum::extract::Query<LimitQuery>,
) -> Response {
    let limit = query.limit.unwrap_or(200).clamp(1, 10_000);
    match gate
        .with_store(move |store| store.recent_peer_acceptances(limit))
        .await
    {
        Ok(lines) => Json(serde_json::json!({ "acceptances": lines })).into_response(),
        Err(error) => internal(error),
    }
}

#[derive(Debug, Deserialize)]
struct ScanBody {
    code: String,
}

/// Decides a code given over HTTP (a scan engine on another process, tests), with the
/// local API token.
async fn api_scan(
    State(gate): State<Arc<Gate>>,
    headers: axum::http::HeaderMap,
    Json(body): Json<ScanBody>,
) -> Response {
    let allowed = gate
        .config
        .api_token
        .as_deref()
        .is_some_and(|token| access::bearer_is(&headers, token));
    if !allowed {
        tracing::warn!(device = %gate.config.device_id, "local scan request refused: no or wrong api_token");
        return (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({
                "code": "UNAUTHORIZED",
                "message": "POST /api/scan needs Authorization: Bearer <api_token from the settings>",
            })),
        )
            .into_response();
    }
    let decision: GateDecision = gate
        .decide_code(&body.code, crate::decide::Origin::Request)
        .await;
    Json(decision).into_response()
}

async fn metrics(State(gate): State<Arc<Gate>>) -> Response {
    let queue = gate
        .with_store(|store| store.queue_state())
        .await
        .unwrap_or_default();
    // The readings the status page grades, with the bounds it grades them by.
    let readings = &gate.metrics.readings;
    if let Ok(report) = report(&gate).await {
        readings
            .key_age_secs
            .set(report.keys.age_secs.unwrap_or(-1));
        readings
            .state_age_secs
            .set(report.last_sync_age_secs.unwrap_or(-1));
        readings.disk_free_bytes.set(
            report
                .disk_free_bytes
                .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
        );
    }
    readings
        .max_clock_offset_secs
        .set(gate.config.offline.max_clock_offset_secs);
    readings
        .max_state_age_secs
        .set(i64::try_from(gate.config.offline.max_state_age_secs).unwrap_or(i64::MAX));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gate.render_metrics(&queue),
    )
        .into_response()
}

async fn readyz(State(gate): State<Arc<Gate>>) -> Response {
    let alarm = gate.store_alarm().or_else(|| {
        gate.awaiting_resync()
            .then(|| "store lost: awaiting a full resync".to_owned())
    });
    let store_ok = gate.with_store(|store| store.queue_state()).await.is_ok() && alarm.is_none();
    if store_ok && gate.has_keys() {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not ready", "store": store_ok, "store_error": alarm, "keys": gate.has_keys()})),
        )
            .into_response()
    }
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    username: String,
    password: String,
    #[serde(default)]
    csrf: String,
}

/// A redirect to the gate page that says why a form was refused.
fn refused(reason: &str) -> Response {
    Redirect::to(&format!("/gate?error={reason}")).into_response()
}

async fn gate_login(
    State(gate): State<Arc<Gate>>,
    headers: axum::http::HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !access::csrf_ok(&headers, &form.csrf) {
        return refused("csrf");
    }
    match gate.log_in_with(&form.username, &form.password).await {
        Ok(session) => {
            gate.log_in(session);
            let session = gate.browser_sessions.open();
            (
                [(
                    header::SET_COOKIE,
                    access::set_cookie(access::SESSION_COOKIE, &session),
                )],
                Redirect::to("/gate"),
            )
                .into_response()
        }
        Err(error) => {
            tracing::info!(error = %error, "gate login failed");
            let reason = match error {
                crate::decide::LoginFailure::BadCredentials => "login",
                crate::decide::LoginFailure::Throttled => "throttled",
                crate::decide::LoginFailure::Unavailable(_) => "uplink",
            };
            refused(reason)
        }
    }
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// Whether a state-changing gate form comes from a browser logged in on this page.
fn page_session_ok(gate: &Gate, headers: &axum::http::HeaderMap, csrf: &str) -> bool {
    access::csrf_ok(headers, csrf) && gate.browser_sessions.is_valid(headers)
}

async fn gate_logout(
    State(gate): State<Arc<Gate>>,
    headers: axum::http::HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !page_session_ok(&gate, &headers, &form.csrf) {
        return refused("auth");
    }
    gate.log_out();
    gate.browser_sessions.close_all();
    Redirect::to("/gate").into_response()
}

#[derive(Debug, Deserialize)]
struct FunctionForm {
    function_code: String,
    #[serde(default)]
    csrf: String,
}

async fn gate_function(
    State(gate): State<Arc<Gate>>,
    headers: axum::http::HeaderMap,
    Form(form): Form<FunctionForm>,
) -> Response {
    if !page_session_ok(&gate, &headers, &form.csrf) {
        return refused("auth");
    }
    match FunctionCode::parse(form.function_code.trim()) {
        Ok(code) => {
            gate.set_function_code(code);
            Redirect::to("/gate").into_response()
        }
        Err(_) => refused("function"),
    }
}

#[derive(Debug, Deserialize)]
struct DirectionForm {
    direction: String,
    #[serde(default)]
    csrf: String,
}

/// The operator turns the gate into an entry or an exit gate (until the agent restarts,
/// which brings back the configured `direction`).
async fn gate_direction(
    State(gate): State<Arc<Gate>>,
    headers: axum::http::HeaderMap,
    Form(form): Form<DirectionForm>,
) -> Response {
    if !page_session_ok(&gate, &headers, &form.csrf) {
        return refused("auth");
    }
    match Direction::parse(form.direction.trim()) {
        Some(direction) => {
            gate.set_direction(direction);
            Redirect::to("/gate").into_response()
        }
        None => refused("direction"),
    }
}

/// A latency as staff read it: sub-millisecond decisions are not "0.0 ms".
fn latency(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

use stile_shared::html::escape;

fn or_dash(value: Option<impl ToString>) -> String {
    value
        .map(|v| escape(&v.to_string()))
        .unwrap_or_else(|| "—".to_owned())
}

const STYLE: &str = "body{font-family:system-ui,'Noto Sans CJK SC',sans-serif;margin:1.2em;background:#f6f7f9;color:#1b1f24}\
table{border-collapse:collapse;width:100%;background:#fff}td,th{border-bottom:1px solid #e3e6ea;padding:.35em .6em;text-align:left;font-size:14px}\
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:12px}.card{background:#fff;border-radius:8px;padding:12px;box-shadow:0 1px 2px #0002}\
.ok{color:#137333;font-weight:600}.bad{color:#c5221f;font-weight:600}.warn{color:#b06000;font-weight:600}h1{font-size:20px}h2{font-size:15px;margin:.2em 0 .5em}";

/// An offline acceptance the central did not take: never shown like a plain success.
fn is_conflict(line: &DecisionLine) -> bool {
    line.upload
        .as_deref()
        .is_some_and(|upload| upload.starts_with("conflict"))
}

async fn status_page(State(gate): State<Arc<Gate>>) -> Response {
    let report = match report(&gate).await {
        Ok(report) => report,
        Err(error) => return internal(error),
    };
    let grades = report.grades.clone().unwrap_or(Grades {
        clock: Grade::Bad,
        sync_age: Grade::Bad,
        key_age: Grade::Bad,
        disk: Grade::Bad,
        occupancy_age: Grade::Bad,
    });
    let flag = |good: bool, yes: &str, no: &str| {
        if good {
            format!("<span class=ok>{yes}</span>")
        } else {
            format!("<span class=bad>{no}</span>")
        }
    };
    let camera = match (&report.camera.source, &report.camera.problem) {
        (_, Some(problem)) => format!("<span class=bad>{}</span>", escape(problem)),
        (Some(source), None) if report.camera.ended => format!(
            "<span class=bad>{} {}: input ended, no scans can arrive</span>",
            escape(source.kind),
            escape(&source.device)
        ),
        (Some(source), None) => format!(
            "<span class=ok>{}</span> {} {} {}",
            escape(source.kind),
            escape(&source.device),
            source
                .resolution
                .map(|(w, h)| format!("{w}×{h}"))
                .unwrap_or_default(),
            source
                .fps
                .map(|fps| format!("{fps} fps"))
                .unwrap_or_default()
        ),
        (None, None) => "<span class=warn>none configured</span>".to_owned(),
    };
    let rows = |lines: &[DecisionLine]| -> String {
        lines
            .iter()
            .map(|d| {
                format!(
                    "<tr><td>{}</td><td class={}>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&d.decided_at),
                    if is_conflict(d) { "warn" } else if d.code == "SUCCESS" { "ok" } else { "bad" },
                    if is_conflict(d) {
                        format!("CONFLICT (offline {})", escape(&d.code))
                    } else {
                        escape(&d.code)
                    },
                    match &d.accepted_at {
                        Some(gate) => format!("{}（已在闸机 <b class=peer>{}</b> 核销）", escape(&d.message), escape(gate)),
                        None => escape(&d.message),
                    },
                    or_dash(d.ticket.as_ref()),
                    escape(&d.function_code),
                    d.mode.as_str(),
                    latency(d.latency_ms),
                    or_dash(d.upload.as_ref()),
                    match d.occupancy_change {
                        Some(change) => format!("{} {change:+}", d.direction.as_str()),
                        None => d.direction.as_str().to_owned(),
                    },
                )
            })
            .collect()
    };
    let body = format!(
        "<!doctype html><html lang=zh-CN><head><meta charset=utf-8><meta http-equiv=refresh content=2>\
<title>Stile gate {device} status</title><style>{STYLE}</style></head><body>\
<h1>Stile gate <b id=device>{device}</b> at <b id=venue>{venue}</b> — edge-agent {version}, up {uptime} s</h1>\
<div class=card id=verdict><span class={verdict_class}>{verdict}</span></div>\
<div class=card id=store>store {store}</div>\
<div class=grid>\
<div class=card><h2>Camera</h2><div id=camera>{camera}</div><div>frames seen <b id=frames>{frames}</b>, dropped {dropped}, with a code {decoded}</div><div>decode rate <b id=decode-rate>{rate:.1}%</b></div><div>per frame <b id=frame-ms>{frame_ms:.1} ms</b> (scaling included; {scaled} scaled down)</div>{decoders}</div>\
<div class=card><h2>Uplink</h2><div id=uplink>{uplink}</div><div>round trip {rtt}</div><div>last ok {last_ok}</div><div>last error {last_error}</div></div>\
<div class=card><h2>Sync</h2><div>last ticket sync <b id=sync-age class={sync_class}>{sync_age}</b> s ago ({tickets} tickets)</div><div>outbox <b id=outbox>{outbox}</b>, oldest {oldest} s{held}</div><div>conflicts <b id=conflicts>{conflicts}</b></div></div>\
<div class=card><h2>Keys &amp; clock</h2><div>kids <b id=kids>{kids}</b>, fetched <b id=key-age class={key_class}>{keys_age}</b> s ago</div><div>clock offset <b id=clock-offset class={clock_class}>{offset}</b> s</div><div>SQLite {sqlite} KiB, disk free <b id=disk-free class={disk_class}>{disk}</b></div></div>\
<div class=card><h2>Gate</h2><div>direction <b id=direction>{direction}</b></div><div>function <b id=function>{function}</b></div><div>operator {operator}</div></div>\
<div class=card><h2>Peers</h2><div id=peers-summary>{peers_summary}</div></div>\
</div>{venue_card}{peers_table}<h2>Last decisions</h2><table id=decisions><tr><th>time</th><th>code</th><th>message</th><th>ticket</th><th>function</th><th>mode</th><th>latency</th><th>upload</th><th>passage</th></tr>{recent}</table>\
<h2>Conflicts</h2><table id=conflict-list><tr><th>time</th><th>code</th><th>message</th><th>ticket</th><th>function</th><th>mode</th><th>latency</th><th>upload</th><th>passage</th></tr>{conflict_rows}</table>\
</body></html>",
        device = escape(&report.device_id),
        venue = escape(&report.venue_code),
        verdict_class = report.verdict.as_ref().map(|v| v.grade.class()).unwrap_or("warn"),
        verdict = report.verdict.as_ref().map(|v| escape(&v.text)).unwrap_or_default(),
        sync_class = grades.sync_age.class(),
        key_class = grades.key_age.class(),
        clock_class = grades.clock.class(),
        disk_class = grades.disk.class(),
        disk = or_dash(report.disk_free_bytes.map(|b| format!("{} MiB", b / (1024 * 1024)))),
        store = match (&report.store_alarm, &report.store_loss) {
            (Some(error), _) => flag(false, "", &format!("ALARM: decisions cannot be recorded: {}", escape(error))),
            (None, Some(loss)) => flag(false, "", &format!(
                "ALARM: STORE LOST — the store was found empty at {} although this device synced first at {} and last uploaded at {}: offline acceptances not uploaded before are gone. {}",
                escape(&loss.detected_at),
                or_dash(loss.first_synced_at.as_ref()),
                or_dash(loss.last_upload_at.as_ref()),
                match &loss.resynced_at {
                    Some(at) => format!("Resynced at {}; offline decisions allowed again.", escape(at)),
                    None => "Offline decisions are refused until a full resync.".to_owned(),
                }
            )),
            (None, None) => flag(true, "writes ok", ""),
        },
        version = report.version,
        uptime = report.uptime_secs,
        frames = report.camera.frames_seen,
        dropped = report.camera.frames_dropped,
        decoded = report.camera.frames_decoded,
        rate = report.camera.decode_rate * 100.0,
        frame_ms = report.camera.frame_ms_avg,
        scaled = report.camera.frames_scaled,
        decoders = report
            .decoders
            .iter()
            .map(|d| format!(
                "<div class=decoder>{}: {} of {} frames, {:.1} ms average</div>",
                escape(d.name),
                d.hits,
                d.attempts,
                if d.attempts == 0 { 0.0 } else { d.total_micros as f64 / d.attempts as f64 / 1000.0 }
            ))
            .collect::<String>(),
        uplink = match report.uplink.state {
            crate::uplink::link::LinkState::Online => "<span class=ok>online</span>".to_owned(),
            crate::uplink::link::LinkState::Draining => "<span class=warn>draining (uploading offline acceptances)</span>".to_owned(),
            state => format!(
                "<span class=bad>{}</span> since {}",
                state.as_str(),
                or_dash(report.uplink.down_since.as_ref())
            ),
        },
        rtt = or_dash(report.uplink.rtt_ms.map(|ms| format!("{ms:.1} ms"))),
        last_ok = or_dash(report.uplink.last_ok_at.as_ref()),
        last_error = or_dash(report.uplink.last_error.as_ref()),
        sync_age = or_dash(report.last_sync_age_secs),
        tickets = report.synced_tickets,
        outbox = report.outbox.depth,
        oldest = or_dash(report.oldest_queued_age_secs),
        held = match report.outbox.held {
            0 => String::new(),
            n => format!(
                ", {n} exits and re-entries wait until the central has the passages they rest on"
            ),
        },
        conflicts = report.outbox.conflicts,
        kids = escape(&report.keys.kids.join(", ")),
        keys_age = or_dash(report.keys.age_secs),
        offset = or_dash(report.uplink.clock_offset_secs.map(|s| format!("{s:+.1}"))),
        sqlite = report.sqlite_bytes / 1024,
        function = escape(&report.function_code),
        direction = direction_label(report.direction),
        venue_card = venue_card(
            &report,
            grades.occupancy_age,
            gate.config.offline.occupancy_max_age_secs
        ),
        operator = or_dash(report.operator.as_ref().map(|o| format!("{} ({})", o.username, o.merchant_code))),
        recent = rows(&report.last_decisions),
        conflict_rows = rows(&report.conflicts),
        peers_summary = peers_summary(&report.peers),
        peers_table = peers_table(&report.peers),
    );
    Html(body).into_response()
}

/// The venue block: the estimate by part with the age of the central's figure, the
/// capacity, and the day's chart with its age.
fn venue_card(report: &StatusReport, figure_grade: Grade, max_age_secs: u64) -> String {
    let Some(venue) = &report.venue else {
        let class = if report.direction == Direction::Exit {
            "bad"
        } else {
            "warn"
        };
        return format!(
            "<div class=card id=venue-block><h2>Venue</h2><span class={class}>this gate's location belongs to no venue (as the feed last said): no presence, occupancy or exits</span></div>"
        );
    };
    let chart = match &venue.chart {
        Some(chart) => format!(
            "<div id=chart>{}</div><div>{} of {}: {} entries, {} exits, fetched <b id=chart-age>{}</b> s ago</div>",
            super::chart::occupancy_svg(&chart.occupancy),
            escape(&chart.occupancy.name),
            escape(&chart.occupancy.date),
            chart.occupancy.entries,
            chart.occupancy.exits,
            or_dash(venue.chart_age_secs),
        ),
        None => "<div id=chart class=warn>no occupancy chart from the central yet</div>".to_owned(),
    };
    let capacity_note = match venue.capacity {
        Some(_) if figure_grade == Grade::Bad => {
            " — too old: offline, entries that need a place are refused (OFFLINE_UNVERIFIABLE)"
        }
        _ => "",
    };
    format!(
        "<div class=card id=venue-block><h2>Venue</h2>\
<div>venue <b id=venue-name>{name}</b> ({code}), entries are scans of <b>{entry}</b></div>\
<div>inside ≈ <b id=inside>{inside}</b> of capacity <b id=capacity>{capacity}</b></div>\
<div>= central's <b id=inside-synced>{synced}</b> counted <b id=figure-age class={figure_class}>{age}</b> s ago (offline policy for capacity entries: {max_age_secs} s){capacity_note}, \
this gate since <b id=inside-own>{own:+}</b>, peers' entries since <b id=inside-peers>{peers:+}</b></div>\
{chart}</div>",
        name = escape(&venue.name),
        code = escape(&venue.venue_code),
        entry = escape(&venue.entry_function),
        inside = venue.inside,
        capacity = or_dash(venue.capacity),
        synced = venue.estimate.synced,
        age = venue.figure_age_secs,
        figure_class = figure_grade.class(),
        own = venue.estimate.own,
        peers = venue.estimate.peers,
    )
}

fn peers_summary(peers: &crate::peers::PeersReport) -> String {
    use crate::peers::LinkState;
    if !peers.enabled {
        return "<span class=warn>off</span> (no [peers] in the settings: an offline ticket can enter at two gates)".to_owned();
    }
    let up = peers
        .peers
        .iter()
        .filter(|p| p.state == LinkState::Up)
        .count();
    let total = peers.peers.len();
    let state = if total == 0 {
        "<span class=warn>no peers known yet</span>".to_owned()
    } else if up == total {
        format!("<span class=ok>{up} of {total} up</span>")
    } else {
        format!("<span class=bad>{up} of {total} up</span>")
    };
    format!(
        "{state}<div>listen {}, key {}, log entries {}</div><div>blocked thanks to a peer <b id=peer-blocks>{}</b></div>",
        or_dash(peers.listen.as_ref()),
        escape(&peers.key.as_deref().map(|k| k.chars().take(16).collect::<String>()).unwrap_or_default()),
        peers.log_head,
        peers.blocks,
    )
}

fn peers_table(peers: &crate::peers::PeersReport) -> String {
    use crate::peers::LinkState;
    if !peers.enabled {
        return String::new();
    }
    let rows: String = peers
        .peers
        .iter()
        .map(|p| {
            format!(
                "<tr><td>{}</td><td>{}</td><td class={}>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {} / {}</td><td>{}</td></tr>",
                escape(&p.device_id),
                escape(&p.address),
                match p.state { LinkState::Up => "ok", LinkState::Down => "bad", LinkState::Unknown => "warn" },
                match p.state { LinkState::Up => "up", LinkState::Down => "down", LinkState::Unknown => "not contacted yet" },
                or_dash(p.last_message_age_secs.map(|s| format!("{s} s"))),
                or_dash(p.lag),
                escape(&p.key),
                p.sent,
                p.received,
                p.refused,
                or_dash(p.last_error.as_ref()),
            )
        })
        .collect();
    format!("<h2>Peers</h2><table id=peer-list><tr><th>gate</th><th>address</th><th>state</th><th>last message</th><th>lag</th><th>key</th><th>sent / received / refused</th><th>last error</th></tr>{rows}</table>")
}

#[derive(Debug, Deserialize)]
struct GateQuery {
    error: Option<String>,
}

async fn gate_page(
    State(gate): State<Arc<Gate>>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(query): axum::extract::Query<GateQuery>,
) -> Response {
    use crate::decide::session::Showing;
    let csrf = access::cookie(&headers, access::CSRF_COOKIE)
        .filter(|value| value.len() >= 32 && value.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
        .unwrap_or_else(access::random_token);
    let csrf_field = format!("<input type=hidden name=csrf value={csrf}>");
    let page_session = gate.browser_sessions.is_valid(&headers);
    let showing = gate.showing();
    let (state, color, headline, detail, entitlements) = match &showing {
        Showing::Decided { decision } => (
            if decision.is_green() { "green" } else { "red" },
            if decision.is_green() {
                "#1e8e3e"
            } else {
                "#d93025"
            },
            escape(&decision.message),
            format!(
                "{} · {} · {}{}{}",
                escape(decision.code.as_str()),
                or_dash(decision.ticket.as_ref()),
                escape(&decision.decided_at),
                decision
                    .accepted_at
                    .as_ref()
                    .map(|gate| format!(" · 已在闸机 <b id=accepted-at>{}</b> 核销", escape(gate)))
                    .unwrap_or_default(),
                match (decision.is_green(), decision.direction, decision.reentry) {
                    (true, _, true) => " · <b id=passage>再次入场 re-entry</b>（不扣次数）",
                    (true, Direction::Exit, _) => " · <b id=passage>离场 exit</b>",
                    _ => "",
                }
            ),
            decision
                .entitlements
                .iter()
                .map(|e| {
                    format!(
                        "<li>{} {}: {}/{}</li>",
                        escape(e.function_code.as_str()),
                        escape(&e.name),
                        e.remaining_uses,
                        e.total_uses
                    )
                })
                .collect::<String>(),
        ),
        Showing::Checking => (
            "checking",
            "#1a73e8",
            "正在核验…".to_owned(),
            String::new(),
            String::new(),
        ),
        Showing::LoggedOut => (
            "logged-out",
            "#5f6368",
            "未登录，暂停核销".to_owned(),
            "请操作员登录后开始扫码".to_owned(),
            String::new(),
        ),
        Showing::Waiting => (
            "waiting",
            "#5f6368",
            "请扫码".to_owned(),
            String::new(),
            String::new(),
        ),
    };
    let error = match query.error.as_deref() {
        Some("login") => "<p class=bad id=error>用户名或密码错误</p>",
        Some("function") => "<p class=bad id=error>无效的权益代码</p>",
        Some("uplink") => "<p class=bad id=error>网络异常，无法登录，请稍后重试</p>",
        Some("throttled") => "<p class=bad id=error>尝试次数过多，请稍后再试</p>",
        Some("csrf") => "<p class=bad id=error>页面已过期，请重试</p>",
        Some("auth") => "<p class=bad id=error>请先在本页登录</p>",
        _ => "",
    };
    let direction = format!(
        "<span id=direction data-direction={}>{}</span>",
        gate.direction().as_str(),
        direction_label(gate.direction())
    );
    let uplink = gate.uplink().state;
    let badge = match uplink {
        crate::uplink::link::LinkState::Online | crate::uplink::link::LinkState::Draining => {
            "<span id=badge class=online>在线 online</span>"
        }
        _ => "<span id=badge class=offline>离线 offline</span>",
    };
    // While the login form is shown the page must not reload under the operator's fingers.
    let logged_in = gate.session().is_some();
    let refresh = if logged_in {
        "<meta http-equiv=refresh content=1>"
    } else {
        ""
    };
    // Login and the function switch live below the decision screen, never on it. Changing
    // anything needs a login on this page (an auto-logged-in gate shows its operator and
    // offers the login to change settings).
    let login_form = format!(
        "<form method=post action=/gate/login id=login>{csrf_field}用户名 <input name=username> 密码 <input name=password type=password> <button>登录</button></form>"
    );
    let operator = match gate.session() {
        Some(session) if page_session => format!(
            "<form method=post action=/gate/logout>{csrf_field}操作员 <b id=operator>{}</b> <button>退出登录</button></form>\
<form method=post action=/gate/function>{csrf_field}核销权益 <input name=function_code value=\"{}\" size=10> <button>切换</button></form>\
<form method=post action=/gate/direction>{csrf_field}方向 <select name=direction><option value=entry{entry}>入口 Entry</option><option value=exit{exit}>出口 Exit</option></select> <button>切换</button></form>",
            escape(&session.username),
            escape(gate.function_code().as_str()),
            entry = if gate.direction() == Direction::Entry { " selected" } else { "" },
            exit = if gate.direction() == Direction::Exit { " selected" } else { "" },
        ),
        Some(session) => format!(
            "<div>操作员 <b id=operator>{}</b> · 核销权益 <b id=function>{}</b></div><div>登录以更改设置：</div>{login_form}",
            escape(&session.username),
            escape(gate.function_code().as_str()),
        ),
        None => login_form,
    };
    let page = format!(
        "<!doctype html><html lang=zh-CN><head><meta charset=utf-8>{refresh}\
<title>Stile 闸机</title><style>{STYLE}body{{margin:0}}\
#light{{background:{color};color:#fff;min-height:100vh;box-sizing:border-box;padding:48px 24px;text-align:center;display:flex;flex-direction:column;justify-content:center;position:relative}}\
#message{{font-size:72px;font-weight:700;line-height:1.2}}#detail{{font-size:24px;opacity:.9;margin-top:16px}}\
#entitlements{{list-style:none;padding:0;font-size:36px;margin-top:24px}}\
#badge{{position:absolute;top:16px;right:16px;font-size:24px;font-weight:700;padding:6px 14px;border-radius:8px;background:#fff}}\
#badge.online{{color:#137333}}#badge.offline{{color:#c5221f}}#controls{{margin:12px}}\
#direction{{position:absolute;bottom:16px;left:16px;font-size:24px;font-weight:700;padding:6px 14px;border-radius:8px;background:#fff;color:#1b1f24}}</style></head><body>\
<div id=light data-state={state}>{direction}{badge}<div id=message>{headline}</div><div id=detail>{detail}</div><ul id=entitlements>{entitlements}</ul></div>\
<div id=controls>{error}<div class=card>{operator}</div></div>\
</body></html>"
    );
    (
        [(
            header::SET_COOKIE,
            access::set_cookie(access::CSRF_COOKIE, &csrf),
        )],
        Html(page),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::link::{LinkState, Uplink};

    /// A healthy online gate: synced a minute ago, keys an hour old, clock 2 s off, an
    /// operator, plenty of disk.
    fn healthy() -> StatusReport {
        StatusReport {
            verdict: None,
            grades: None,
            disk_free_bytes: Some(50 << 30),
            version: "test",
            uptime_secs: 60,
            device_id: "dev-1".into(),
            venue_code: "GATE".into(),
            function_code: "ENTRY".into(),
            direction: Direction::Entry,
            venue: None,
            operator: Some(OperatorSession {
                token: Some("t".into()),
                operator_id: 1,
                username: "op".into(),
                merchant_code: "M001".into(),
                expires_at: i64::MAX,
            }),
            operator_session: Some("online"),
            camera: CameraReport {
                source: None,
                problem: None,
                frames_seen: 0,
                frames_dropped: 0,
                frames_decoded: 0,
                decode_rate: 0.0,
                frames_scaled: 0,
                frame_ms_avg: 0.0,
                ended: false,
            },
            decoders: Vec::new(),
            last_decisions: Vec::new(),
            uplink: Uplink {
                state: LinkState::Online,
                online: true,
                clock_offset_secs: Some(2.0),
                ..Uplink::default()
            },
            store_alarm: None,
            store_loss: None,
            showing: crate::decide::session::Showing::Waiting,
            last_sync_at: None,
            last_sync_age_secs: Some(60),
            synced_tickets: 10,
            outbox: QueueState::default(),
            oldest_queued_age_secs: None,
            conflicts: Vec::new(),
            keys: KeysReport {
                kids: vec!["k1".into()],
                fetched_at: None,
                age_secs: Some(3600),
            },
            sqlite_bytes: 0,
            peers: crate::peers::PeersReport::off(),
        }
    }

    #[test]
    fn the_verdict_says_whether_the_gate_can_decide_offline_and_why_not() {
        let policy = crate::config::OfflinePolicy::default(); // 3600 s state, 30 s clock
        type Tweak = fn(&mut StatusReport);
        let cases: [(&str, Tweak, Grade, bool, &str); 6] = [
            ("healthy", |_| {}, Grade::Ok, true, "OK: online"),
            (
                "clock two hours off",
                |r| r.uplink.clock_offset_secs = Some(-7200.0),
                Grade::Warn,
                false,
                "clock -7200 s off",
            ),
            (
                "offline with stale state",
                |r| {
                    r.uplink.state = LinkState::Suspect;
                    r.last_sync_age_secs = Some(7200);
                },
                Grade::Bad,
                false,
                "CANNOT DECIDE",
            ),
            (
                "offline but ready",
                |r| r.uplink.state = LinkState::Offline,
                Grade::Warn,
                true,
                "Deciding OFFLINE",
            ),
            (
                "no keys",
                |r| r.keys.kids.clear(),
                Grade::Warn,
                false,
                "no verification keys",
            ),
            (
                "store failing",
                |r| r.store_alarm = Some("disk full".into()),
                Grade::Bad,
                false,
                "store cannot record: disk full",
            ),
        ];
        for (what, tweak, grade, ready, text) in cases {
            let mut report = healthy();
            tweak(&mut report);
            let (verdict, _) = judge(&report, &policy);
            assert_eq!(verdict.grade, grade, "{what}: {}", verdict.text);
            assert_eq!(verdict.offline_ready, ready, "{what}");
            assert!(verdict.text.contains(text), "{what}: {}", verdict.text);
        }
    }

    #[test]
    fn readings_are_graded_against_the_policy() {
        let policy = crate::config::OfflinePolicy::default();
        let mut report = healthy();
        let (_, grades) = judge(&report, &policy);
        assert_eq!(
            (grades.clock, grades.sync_age, grades.key_age, grades.disk),
            (Grade::Ok, Grade::Ok, Grade::Ok, Grade::Ok)
        );
        report.uplink.clock_offset_secs = Some(-7200.0);
        report.last_sync_age_secs = Some(2000);
        report.keys.age_secs = Some(10 * 86_400);
        report.disk_free_bytes = Some(500 << 20);
        let (_, grades) = judge(&report, &policy);
        assert_eq!(
            (grades.clock, grades.sync_age, grades.key_age, grades.disk),
            (Grade::Bad, Grade::Warn, Grade::Bad, Grade::Warn)
        );
    }

    fn park(figure_age_secs: i64) -> VenueReport {
        VenueReport {
            venue_code: "PARK".into(),
            name: "<script>乐园</script>".into(),
            entry_function: "ENTRY".into(),
            capacity: Some(100),
            synced_inside: 40,
            as_of: 1_796_140_800,
            figure_age_secs,
            estimate: Occupancy {
                synced: 40,
                own: 3,
                peers: 1,
            },
            inside: 44,
            chart: None,
            chart_age_secs: None,
        }
    }

    #[test]
    fn the_venue_block_shows_the_estimate_and_grades_the_figure() {
        let policy = crate::config::OfflinePolicy::default(); // 300 s occupancy figure
        let mut report = healthy();
        report.venue = Some(park(100));
        let (_, grades) = judge(&report, &policy);
        assert_eq!(grades.occupancy_age, Grade::Ok);
        let card = venue_card(&report, grades.occupancy_age, 300);
        assert!(card.contains("<b id=inside>44</b>"), "{card}");
        assert!(card.contains("<b id=inside-own>+3</b>"), "{card}");
        assert!(card.contains("&lt;script&gt;乐园"), "escaped: {card}");
        assert!(!card.contains("<script>"), "{card}");
        report.venue = Some(park(301));
        let (_, grades) = judge(&report, &policy);
        assert_eq!(grades.occupancy_age, Grade::Bad);
        assert!(venue_card(&report, grades.occupancy_age, 300).contains("OFFLINE_UNVERIFIABLE"));
        report.venue = Some(VenueReport {
            capacity: None,
            ..park(10_000)
        });
        assert_eq!(
            judge(&report, &policy).1.occupancy_age,
            Grade::Ok,
            "without a capacity the figure decides nothing"
        );
    }

    #[test]
    fn an_exit_gate_of_no_venue_is_a_problem() {
        let policy = crate::config::OfflinePolicy::default();
        let mut report = healthy();
        report.direction = Direction::Exit;
        report.last_sync_at = Some("2026-12-02T10:00:00.000Z".into());
        let (verdict, _) = judge(&report, &policy);
        assert_eq!(verdict.grade, Grade::Warn);
        assert!(
            verdict.text.contains("exits cannot be recorded"),
            "{}",
            verdict.text
        );
        assert!(venue_card(&report, Grade::Ok, 300).contains("class=bad"));
        report.direction = Direction::Entry;
        assert_eq!(judge(&report, &policy).0.grade, Grade::Ok);
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape("<b a=\"x\">&'"),
            "&lt;b a=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
