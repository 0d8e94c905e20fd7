//! The daemon's wiring and lifecycle: the store and the gate, the status listener, the sync
//! loop, and the capture pipeline — a capture thread reading the frame source, a decode
//! thread, and the decision task.
//!
//! Latency first: the capture thread hands a camera frame to the decoder only when the
//! decoder is idle (a one-slot channel); camera frames that arrive while it is busy are
//! dropped and counted, never queued. A spool file is one scan: it waits for the decoder, and
//! is moved out of the spool once decided or skipped. Every frame is scaled down to the
//! capture size before decoding, and its latency counts from the capture. Decisions are taken one at a time, in order. Shutdown (SIGTERM) stops the
//! capture, lets the decision in flight (and any code already decoded) finish within the
//! grace period, and tells systemd STOPPING; READY is sent once the store is open and the
//! listener bound, and WATCHDOG pings follow while the decision task is alive.

use crate::capture::decode::Cascade;
use crate::capture::frames::{
    finish_spool_file, Capture, DirectorySource, FrameSource, LineSource, SpoolOutcome,
    DEFAULT_MAX_FRAME,
};
use crate::config::{AgentConfig, SourceConfig};
use crate::decide::{Gate, GateError};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Why the daemon stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Gate(#[from] GateError),
    #[error(transparent)]
    Enroll(#[from] crate::uplink::enroll::EnrollError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Opens the configured frame source; `Err` says why there is none (shown on the status page).
fn open_source(config: &SourceConfig) -> Result<Option<Box<dyn FrameSource>>, String> {
    match config {
        SourceConfig::None => Ok(None),
        SourceConfig::Directory {
            path,
            mode,
            fps,
            looped,
        } => {
            let source = if *mode == crate::config::DirectoryMode::Replay {
                DirectorySource::replay(path, *fps, *looped)
            } else {
                DirectorySource::watch(path, Duration::from_millis(50))
            };
            source
                .map(|s| Some(Box::new(s) as Box<dyn FrameSource>))
                .map_err(|error| error.to_string())
        }
        SourceConfig::Lines { path } => LineSource::open(path)
            .map(|s| Some(Box::new(s) as Box<dyn FrameSource>))
            .map_err(|error| error.to_string()),
        #[cfg(feature = "camera")]
        SourceConfig::Camera {
            device,
            width,
            height,
            fps,
            format,
        } => crate::capture::camera::CameraSource::open(*device, *width, *height, *fps, format)
            .map(|s| Some(Box::new(s) as Box<dyn FrameSource>))
            .map_err(|error| error.to_string()),
        #[cfg(not(feature = "camera"))]
        SourceConfig::Camera { .. } => {
            Err("no camera: this build has no camera support (build with --features camera)".into())
        }
    }
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let listen = config.listen;
    let grace = config.shutdown_grace;
    let secret = crate::uplink::enroll::device_secret(&config).await?;
    let gate = Arc::new(Gate::open(config, &secret)?);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| DaemonError::Listen {
            address: listen,
            source,
        })?;
    let (stopping_tx, stopping_rx) = watch::channel(false);

    let mut server_stop = stopping_rx.clone();
    let app = crate::pages::status::router(gate.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = server_stop.changed().await;
            })
            .await
    });
    let sync = tokio::spawn(crate::uplink::sync::run(gate.clone(), stopping_rx.clone()));
    let peer_tasks = match gate.peers.clone() {
        Some(peers) => start_peers(&gate, peers, &stopping_rx).await?,
        None => Vec::new(),
    };

    // The capture pipeline.
    let (codes_tx, mut codes_rx) = mpsc::channel::<CodeJob>(16);
    let capture_stop = Arc::new(AtomicBool::new(false));
    if matches!(gate.config.source, SourceConfig::None) {
        drop(codes_tx);
    } else {
        // Opened on the capture thread: opening a FIFO without a writer (or a slow camera)
        // blocks, and must not hold up READY, the status page or the API.
        start_capture(gate.clone(), codes_tx, capture_stop.clone());
    }
    let probe = tokio::spawn(crate::uplink::sync::probe_loop(
        gate.clone(),
        stopping_rx.clone(),
    ));
    let deciding = {
        let gate = gate.clone();
        let mut stopping = stopping_rx.clone();
        tokio::spawn(async move {
            loop {
                // Stop between decisions: a decision that started is finished (the select
                // only waits for the next code), and an idle gate stops at once.
                let code = tokio::select! {
                    code = codes_rx.recv() => code,
                    _ = stopping.changed() => None,
                };
                let Some(job) = code else { return };
                gate.heartbeat.decision_started();
                let decision = gate
                    .decide_code(
                        &job.text,
                        crate::decide::Origin::Capture {
                            captured_at: job.captured_at,
                        },
                    )
                    .await;
                gate.heartbeat.decision_finished();
                if let Some(file) = &job.file {
                    finish_spool_file(file, SpoolOutcome::Decided(decision.code.as_str()));
                }
            }
        })
    };

    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let watchdog = tokio::spawn(watchdog(gate.clone(), stopping_rx.clone()));
    tracing::info!(device = %gate.config.device_id, listen = %listen, "edge agent running");

    shutdown.await;
    tracing::info!("stopping: finishing the decision in flight");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    capture_stop.store(true, Ordering::SeqCst);
    let _ = stopping_tx.send(true);
    if tokio::time::timeout(grace, deciding).await.is_err() {
        tracing::warn!("shutdown grace period over with a decision still in flight");
    }
    let _ = tokio::time::timeout(grace, sync).await;
    let _ = tokio::time::timeout(grace, probe).await;
    for task in peer_tasks {
        let _ = tokio::time::timeout(Duration::from_millis(500), task).await;
    }
    // Open keep-alive connections (a status page in a browser) must not hold the stop.
    let _ = tokio::time::timeout(Duration::from_millis(500), server).await;
    watchdog.abort();
    Ok(())
}

/// The peer listener, the push fan-out and the pull loop.
async fn start_peers(
    gate: &Arc<Gate>,
    peers: Arc<crate::peers::Peers>,
    stopping: &watch::Receiver<bool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, DaemonError> {
    let address = peers.settings.listen;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| DaemonError::Listen { address, source })?;
    let app = crate::peers::serve::router(gate.clone());
    let mut stop = stopping.clone();
    let mut tasks = vec![tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.changed().await;
            })
            .await;
    })];
    if let Some(announcements) = peers.take_announcements() {
        tasks.push(tokio::spawn(crate::peers::exchange::fan_out(
            peers.clone(),
            announcements,
            stopping.clone(),
        )));
    }
    tasks.push(tokio::spawn(crate::peers::exchange::pull_loop(
        gate.clone(),
        peers.clone(),
        stopping.clone(),
    )));
    tracing::info!(listen = %address, key = %peers.public_key().fingerprint(), "peer listener running");
    Ok(tasks)
}

/// A frame on its way to the decoders: when it was captured, and the spool file it came
/// from (a spool file is one scan and is never dropped).
struct FrameJob {
    frame: crate::capture::frames::LumaFrame,
    file: Option<PathBuf>,
    captured_at: Instant,
}

/// A decoded code on its way to the decision.
struct CodeJob {
    text: String,
    file: Option<PathBuf>,
    captured_at: Instant,
}

/// The size frames are scaled down to before decoding: the camera's configured capture
/// size, or [`DEFAULT_MAX_FRAME`] for other sources.
fn max_frame(source: &SourceConfig) -> (u32, u32) {
    match source {
        SourceConfig::Camera { width, height, .. } => (*width, *height),
        _ => DEFAULT_MAX_FRAME,
    }
}

fn start_capture(gate: Arc<Gate>, codes: mpsc::Sender<CodeJob>, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        if let Ok(mut problem) = gate.source_error.lock() {
            *problem = Some("opening the frame source (waiting for the device)".into());
        }
        match open_source(&gate.config.source) {
            Ok(Some(source)) => {
                if let Ok(mut problem) = gate.source_error.lock() {
                    *problem = None;
                }
                if let Ok(mut info) = gate.source.lock() {
                    *info = Some(source.info());
                }
                let cascade = Arc::new(Cascade::new(&gate.config.decoders));
                let _ = gate.decoder.set(cascade.clone());
                run_capture(gate, source, cascade, codes, stop);
            }
            Ok(None) => {}
            Err(problem) => {
                tracing::error!(problem = %problem, device = %gate.config.device_id, "no frame source; the gate takes scans through /api/scan only");
                if let Ok(mut error) = gate.source_error.lock() {
                    *error = Some(problem);
                }
            }
        }
    });
}

/// The capture loop (this thread) and the decode thread, over an open source.
fn run_capture(
    gate: Arc<Gate>,
    mut source: Box<dyn FrameSource>,
    cascade: Arc<Cascade>,
    codes: mpsc::Sender<CodeJob>,
    stop: Arc<AtomicBool>,
) {
    let (frames_tx, frames_rx) = sync_channel::<FrameJob>(1);
    let decoder_codes = codes.clone();
    let decoder_gate = gate.clone();
    let (max_width, max_height) = max_frame(&gate.config.source);
    std::thread::spawn(move || {
        while let Ok(job) = frames_rx.recv() {
            decoder_gate.heartbeat.decode_started();
            let started = Instant::now();
            let (width, height) = (job.frame.width, job.frame.height);
            let frame = job.frame.fit_within(max_width, max_height);
            if (frame.width, frame.height) != (width, height) {
                decoder_gate
                    .capture
                    .frames_scaled
                    .fetch_add(1, Ordering::Relaxed);
            }
            let decoded = cascade.decode(&frame);
            decoder_gate.heartbeat.decode_finished();
            decoder_gate.capture.frame_micros.fetch_add(
                u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            decoder_gate
                .capture
                .frames_processed
                .fetch_add(1, Ordering::Relaxed);
            match decoded {
                Some(decoded) => {
                    decoder_gate
                        .capture
                        .frames_decoded
                        .fetch_add(1, Ordering::Relaxed);
                    let code = CodeJob {
                        text: decoded.text,
                        file: job.file,
                        captured_at: job.captured_at,
                    };
                    if decoder_codes.blocking_send(code).is_err() {
                        return;
                    }
                }
                None => {
                    if let Some(file) = &job.file {
                        finish_spool_file(
                            file,
                            SpoolOutcome::Skipped(&format!("no QR code found in {width}x{height}")),
                        );
                    }
                }
            }
        }
    });
    {
        while !stop.load(Ordering::SeqCst) {
            let (frame, file) = match source.next_capture() {
                Ok(Some(Capture::Frame(frame))) => (frame, None),
                Ok(Some(Capture::SpoolFrame(frame, file))) => (frame, Some(file)),
                Ok(Some(Capture::Code(text))) => {
                    let code = CodeJob {
                        text,
                        file: None,
                        captured_at: Instant::now(),
                    };
                    if codes.blocking_send(code).is_err() {
                        return;
                    }
                    continue;
                }
                Ok(None) => {
                    tracing::info!("frame source finished");
                    if let Ok(mut ended) = gate.source_ended.lock() {
                        *ended = true;
                    }
                    return;
                }
                Err(error) => {
                    tracing::warn!(error = %error, "frame source error");
                    if let Ok(mut problem) = gate.source_error.lock() {
                        *problem = Some(error.to_string());
                    }
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            };
            gate.heartbeat.frame_captured();
            if gate.capture.frames_seen.fetch_add(1, Ordering::Relaxed) == 0 {
                // The source's resolution is known for sure once a frame is in hand.
                if let Ok(mut info) = gate.source.lock() {
                    if let Some(info) = info.as_mut() {
                        info.resolution = Some((frame.width, frame.height));
                    }
                }
            }
            let job = FrameJob {
                frame,
                captured_at: Instant::now(),
                file,
            };
            if job.file.is_some() {
                // One scan per file: wait for the decoder rather than drop it.
                if frames_tx.send(job).is_err() {
                    return;
                }
                continue;
            }
            match frames_tx.try_send(job) {
                Ok(()) => {}
                // The decoder is busy: drop this camera frame, latency first.
                Err(TrySendError::Full(_)) => {
                    gate.capture.frames_dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }
}

/// Pings systemd's watchdog at half its interval (only when the unit sets `WatchdogSec`),
/// and only while the pipeline makes progress: a stalled decoder, decision or camera stops
/// the pings, so systemd restarts the gate.
async fn watchdog(gate: Arc<Gate>, mut stopping: watch::Receiver<bool>) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let camera = matches!(gate.config.source, SourceConfig::Camera { .. });
    let mut interval = tokio::time::interval(Duration::from_micros(usec / 2));
    let mut withheld = false;
    loop {
        tokio::select! {
            _ = interval.tick() => {
                match gate.heartbeat.stalled(gate.config.watchdog_stall, camera) {
                    None => {
                        if withheld {
                            tracing::info!("pipeline moving again: watchdog pings resume");
                            withheld = false;
                        }
                        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                    }
                    Some((stage, stuck)) => {
                        if !withheld {
                            tracing::error!(stage, stuck_secs = stuck.as_secs(), "pipeline stalled: watchdog pings withheld");
                            withheld = true;
                        }
                    }
                }
            }
            _ = stopping.changed() => return,
        }
    }
}
