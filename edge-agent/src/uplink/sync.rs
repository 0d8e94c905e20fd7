//! Keeping the gate in step with the central: the key set, the ticket feed (with the venue's
//! occupancy figure), the upload of offline acceptances, and the venue's occupancy chart. Each is one step (`*_once`) that tests drive directly; [`run`] is
//! the thin loop around them that adds timing, backoff with jitter, and shutdown.

use crate::decide::Gate;
use crate::store::{now_rfc3339, StoreError};
use crate::uplink::central::{CallError, LinkSample};
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stile_shared::api::{OfflineDecision, UploadOutcome};
use stile_shared::FunctionCode;
use tokio::sync::watch;

/// Why a sync step failed, and whether it is worth retrying soon.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Central(#[from] CallError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SyncError {
    /// Transient failures (the uplink) back off and retry; others are logged loudly.
    pub fn is_transient(&self) -> bool {
        match self {
            SyncError::Central(error) => error.is_uplink_failure(),
            SyncError::Store(_) => false,
        }
    }
}

/// Fetches the key set.
pub async fn keys_once(gate: &Arc<Gate>) -> Result<usize, SyncError> {
    let result = gate.central.keys().await;
    let (jwks, sample) = match result {
        Ok(answer) => answer,
        Err(error) => {
            gate.link_failed(&error);
            return Err(error.into());
        }
    };
    gate.link_ok(Some(sample));
    let count = jwks.keys.len();
    gate.install_keys(jwks).await?;
    Ok(count)
}

/// For a new store: asks the central whether this device ran before (a lost store).
pub async fn history_once(gate: &Arc<Gate>) -> Result<(), SyncError> {
    if !gate
        .with_store(|store| store.history_check_pending())
        .await?
    {
        return Ok(());
    }
    let (history, sample) = match gate.central.history().await {
        Ok(answer) => answer,
        Err(error) => {
            gate.link_failed(&error);
            return Err(error.into());
        }
    };
    gate.link_ok(Some(sample));
    gate.check_history(&history).await?;
    Ok(())
}

/// Fetches the operators this device may log in offline (replacing the last list, so a
/// removed operator or a changed password stops working offline).
pub async fn operators_once(gate: &Arc<Gate>) -> Result<usize, SyncError> {
    let (operators, sample) = match gate.central.operators().await {
        Ok(answer) => answer,
        Err(error) => {
            gate.link_failed(&error);
            return Err(error.into());
        }
    };
    gate.link_ok(Some(sample));
    let count = operators.operators.len();
    gate.install_operators(&operators).await?;
    Ok(count)
}

/// With peers on: registers this gate's peer key and address with the central when it does
/// not hold them yet, and installs the central's list of the other gates (kept in the store,
/// so a gate rebooted while the central is away still knows its peers).
pub async fn peers_once(gate: &Arc<Gate>) -> Result<usize, SyncError> {
    let Some(peers) = gate.peers.clone() else {
        return Ok(0);
    };
    fn call<T>(gate: &Gate, result: Result<(T, LinkSample), CallError>) -> Result<T, SyncError> {
        match result {
            Ok((answer, sample)) => {
                gate.link_ok(Some(sample));
                Ok(answer)
            }
            Err(error) => {
                gate.link_failed(&error);
                Err(SyncError::Central(error))
            }
        }
    }
    let advertise = peers
        .settings
        .advertise
        .as_ref()
        .map(|a| a.as_str().to_owned());
    let mut answer = call(gate, gate.central.peers().await)?;
    if !peers.registration_current(&answer, advertise.as_deref()) {
        let registration = stile_shared::api::PeerRegistration {
            public_key: peers.public_key().encode(),
            address: advertise.clone(),
            port: advertise.is_none().then(|| peers.settings.listen.port()),
        };
        let registered = call(gate, gate.central.register_peer(&registration).await)?;
        tracing::info!(address = %registered.address, key = %peers.public_key().fingerprint(), "peer key registered with the central");
        answer = call(gate, gate.central.peers().await)?;
    }
    let directory = peers.install(&answer);
    let count = directory.peers.len();
    let text = crate::peers::Peers::directory_text(&directory);
    gate.with_store(move |store| store.set_state(crate::peers::Peers::DIRECTORY_STATE, &text))
        .await?;
    Ok(count)
}

/// Pulls the ticket feed until caught up; returns how many tickets changed.
pub async fn tickets_once(gate: &Arc<Gate>, page_size: u32) -> Result<usize, SyncError> {
    let mut changed = 0;
    loop {
        let cursor = gate
            .with_store(|store| store.get_state("ticket_cursor"))
            .await?;
        let (page, sample) = match gate.central.ticket_feed(cursor.as_deref(), page_size).await {
            Ok(answer) => answer,
            Err(error) => {
                gate.link_failed(&error);
                return Err(error.into());
            }
        };
        gate.link_ok(Some(sample));
        changed += page.tickets.len();
        let complete = page.complete;
        let synced_at = now_rfc3339();
        let epoch = page.database_epoch.clone();
        gate.with_store(move |store| store.apply_page(&page, &synced_at))
            .await?;
        if let Some(epoch) = epoch {
            let hold = chrono::Duration::seconds(
                i64::try_from(gate.config.offline.hold_online_secs).unwrap_or(i64::MAX),
            );
            let since =
                (chrono::Utc::now() - hold).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let shown = epoch.clone();
            let queued = gate
                .with_store(move |store| store.note_database_epoch(&epoch, &since))
                .await?;
            if queued > 0 {
                tracing::warn!(
                    epoch = %shown,
                    queued,
                    "the central's database changed: uploading the online successes held again"
                );
            }
        }
        if complete {
            gate.note_full_sync().await?;
            return Ok(changed);
        }
    }
}

/// Fetches the occupancy of the gate's venue today for the status page's chart; returns
/// whether there is one. A failure keeps the last chart (the page shows its age).
pub async fn occupancy_once(gate: &Arc<Gate>) -> Result<bool, SyncError> {
    if gate.with_store(|store| store.venue()).await?.is_none() {
        gate.set_occupancy_chart(None);
        return Ok(false);
    }
    match gate.central.occupancy().await {
        Ok(Some((occupancy, sample))) => {
            gate.link_ok(Some(sample));
            gate.set_occupancy_chart(Some(crate::decide::OccupancyChart {
                occupancy,
                fetched_at: now_rfc3339(),
            }));
            Ok(true)
        }
        Ok(None) => {
            gate.set_occupancy_chart(None);
            Ok(false)
        }
        Err(error) => {
            gate.link_failed(&error);
            Err(error.into())
        }
    }
}

/// What one upload step did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadReport {
    pub applied: usize,
    pub conflicts: usize,
    pub invalid: usize,
}

/// Uploads one batch of queued offline acceptances.
pub async fn upload_once(gate: &Arc<Gate>) -> Result<UploadReport, SyncError> {
    let batch = gate.config.upload_batch;
    let pending = gate
        .with_store(move |store| store.pending_uploads(batch, chrono::Utc::now().timestamp()))
        .await?;
    if pending.is_empty() {
        gate.set_draining(false);
        return Ok(UploadReport::default());
    }
    gate.set_draining(true);
    let mut decisions = Vec::with_capacity(pending.len());
    for item in &pending {
        let Ok(function_code) = FunctionCode::parse(&item.function_code) else {
            continue;
        };
        decisions.push(OfflineDecision {
            scan_id: item.scan_id.clone(),
            qr_token: item.qr_token.clone(),
            function_code,
            decided_at: item.decided_at.clone(),
            operator_id: item.operator_id,
            direction: item.direction,
        });
    }
    let answer = match gate.central.upload(decisions).await {
        Ok(answer) => answer,
        Err(error) => {
            gate.link_failed(&error);
            return Err(error.into());
        }
    };
    gate.link_ok(None);
    let mut report = UploadReport::default();
    let uploaded_at = now_rfc3339();
    for result in &answer.results {
        let state = match result.outcome {
            UploadOutcome::Applied => {
                report.applied += 1;
                "applied"
            }
            UploadOutcome::Conflict => {
                report.conflicts += 1;
                tracing::warn!(
                    device = %gate.config.device_id,
                    scan_id = %result.scan_id,
                    decision = result.code.as_str(),
                    "offline acceptance conflicts with the central: kept for reconciliation"
                );
                "conflict"
            }
            UploadOutcome::Invalid => {
                report.invalid += 1;
                tracing::error!(scan_id = %result.scan_id, message = %result.message, "upload refused as invalid");
                "invalid"
            }
        };
        let (scan_id, code, at) = (
            result.scan_id.clone(),
            result.code.as_str().to_owned(),
            uploaded_at.clone(),
        );
        gate.with_store(move |store| store.mark_uploaded(&scan_id, state, &code, &at))
            .await?;
    }
    Ok(report)
}

/// The sync loop: keys every `key_refresh`, tickets and uploads every `sync_interval`; on
/// failure, exponential backoff with jitter (capped at a minute).
pub async fn run(gate: Arc<Gate>, mut stopping: watch::Receiver<bool>) {
    let mut failures: u32 = 0;
    let mut last_keys: Option<Instant> = None;
    loop {
        let result = async {
            if let Err(error) = gate.ensure_session().await {
                tracing::warn!(error = %error, "configured operator could not log in");
            }
            if last_keys.is_none_or(|at| at.elapsed() >= gate.config.key_refresh) {
                keys_once(&gate).await?;
                last_keys = Some(Instant::now());
            }
            history_once(&gate).await?;
            operators_once(&gate).await?;
            if let Err(error) = peers_once(&gate).await {
                // The peers keep their last list; tickets and uploads go on.
                if !error.is_transient() {
                    tracing::warn!(error = %error, "peer directory sync failed");
                }
            }
            tickets_once(&gate, 2000).await?;
            if let Err(error) = occupancy_once(&gate).await {
                // The chart keeps its last answer; uploads go on.
                if !error.is_transient() {
                    tracing::warn!(error = %error, "occupancy fetch failed");
                }
            }
            loop {
                let report = upload_once(&gate).await?;
                if report.applied + report.conflicts + report.invalid < gate.config.upload_batch {
                    break;
                }
            }
            Ok::<(), SyncError>(())
        }
        .await;
        let pause = match result {
            Ok(()) => {
                failures = 0;
                gate.config.sync_interval
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                if error.is_transient() {
                    tracing::info!(error = %error, failures, "sync failed; backing off");
                } else {
                    tracing::error!(error = %error, failures, "sync failed");
                }
                backoff(gate.config.sync_interval, failures)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            // The probe heard the central again, or a token named a key not synced yet:
            // sync (and drain the queue) now, not after the backoff.
            () = gate.sync_now.notified() => { failures = 0; }
            _ = stopping.changed() => return,
        }
    }
}

/// One probe: asks the central's `/healthz` when the link is not usable.
pub async fn probe_once(gate: &Arc<Gate>) -> Option<bool> {
    if gate.uplink().state.try_online() {
        return None;
    }
    match gate.central.probe(super::link::PROBE_DEADLINE).await {
        Ok(sample) => {
            gate.link_ok(Some(sample));
            tracing::info!(device = %gate.config.device_id, "uplink back: the central answers");
            gate.sync_now.notify_one();
            Some(true)
        }
        Err(error) => {
            gate.link_failed(&error);
            Some(false)
        }
    }
}

/// Probes a suspect or offline link until it answers, every [`PROBE_INTERVAL`].
pub async fn probe_loop(gate: Arc<Gate>, mut stopping: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(super::link::PROBE_INTERVAL) => {}
            _ = stopping.changed() => return,
        }
        tokio::select! {
            _ = probe_once(&gate) => {}
            _ = stopping.changed() => return,
        }
    }
}

/// base × 2^(failures-1), capped at 60 s, with ±50 % jitter.
fn backoff(base: Duration, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(6);
    let raw = base
        .saturating_mul(1 << exponent)
        .min(Duration::from_secs(60));
    let jitter = rand::thread_rng().gen_range(0.5..1.5);
    raw.mul_f64(jitter).max(Duration::from_millis(200))
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_secs(1);
        assert!(backoff(base, 1) <= Duration::from_millis(1500));
        assert!(backoff(base, 4) >= Duration::from_secs(4));
        assert!(backoff(base, 30) <= Duration::from_secs(90));
    }
}
