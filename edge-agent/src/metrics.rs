//! The agent's counters and Prometheus metrics: frame counters written by the capture
//! threads, and the registry `/metrics` renders (decisions by code and mode, latency, queue,
//! clock offset, uplink state, store write failures, venue peers).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};

/// Frame and decode counters, written by the capture threads.
#[derive(Debug, Default)]
pub struct CaptureCounters {
    pub frames_seen: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub frames_decoded: AtomicU64,
    /// Frames the decoders looked at.
    pub frames_processed: AtomicU64,
    /// Frames scaled down to the capture size first.
    pub frames_scaled: AtomicU64,
    /// Time per processed frame, scaling and decoding together.
    pub frame_micros: AtomicU64,
}

/// The agent's Prometheus metrics.
pub struct AgentMetrics {
    registry: Registry,
    pub latency: Histogram,
    pub decisions: Family<Vec<(String, String)>, Counter>,
    pub outbox_depth: Gauge,
    pub oldest_unsynced_secs: Gauge,
    pub clock_offset_ms: Gauge,
    pub frames_seen: Gauge,
    pub frames_decoded: Gauge,
    pub store_failures: Counter,
    pub uplink_state: Family<Vec<(String, String)>, Gauge>,
    pub peers: PeerMetrics,
    /// What the status page grades, for dashboards and alerts: the key set's age, free
    /// disk, the ticket state's age, and the offline policy's bounds they are judged by.
    pub readings: Readings,
}

/// The status page's readings and the bounds it grades them against.
#[derive(Debug, Clone, Default)]
pub struct Readings {
    pub key_age_secs: Gauge,
    pub disk_free_bytes: Gauge,
    pub state_age_secs: Gauge,
    pub max_clock_offset_secs: Gauge,
    pub max_state_age_secs: Gauge,
}

/// The venue peers' counters.
#[derive(Debug, Clone)]
pub struct PeerMetrics {
    /// Acceptances delivered to a peer by a push.
    pub sent: Counter,
    /// Peers' acceptances taken (pushed or pulled), new ones only.
    pub received: Counter,
    /// Messages refused, by reason (`forged`, `unknown_device`, `other_merchant`, `replayed`,
    /// `malformed`, `own`, `wrong_peer`).
    pub refused: Family<Vec<(String, String)>, Counter>,
    /// Decisions refused because a peer had accepted the pair.
    pub blocks: Counter,
    /// Announcements not pushed to a peer because its queue was full (its pull catches up).
    pub dropped: Counter,
    /// From a peer's decision to its record here (both clocks; meaningful when they agree).
    pub propagation: Histogram,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentMetrics")
    }
}

impl AgentMetrics {
    pub fn new() -> AgentMetrics {
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
        let store_failures = Counter::default();
        registry.register(
            "store_write_failures",
            "Decisions the store could not record",
            store_failures.clone(),
        );
        let uplink_state = Family::<Vec<(String, String)>, Gauge>::default();
        registry.register(
            "uplink_state",
            "1 for the uplink's current state (online, suspect, offline, draining)",
            uplink_state.clone(),
        );
        let peers = PeerMetrics {
            sent: Counter::default(),
            received: Counter::default(),
            refused: Family::default(),
            blocks: Counter::default(),
            dropped: Counter::default(),
            propagation: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
        };
        registry.register(
            "peer_messages_sent",
            "Acceptances pushed to a peer",
            peers.sent.clone(),
        );
        registry.register(
            "peer_messages_received",
            "Peers' acceptances taken, pushed or pulled",
            peers.received.clone(),
        );
        registry.register(
            "peer_messages_refused",
            "Peer messages refused, by reason",
            peers.refused.clone(),
        );
        registry.register(
            "peer_blocks",
            "Scans refused because another gate accepted the pair",
            peers.blocks.clone(),
        );
        registry.register(
            "peer_push_dropped",
            "Announcements not pushed because the peer's queue was full",
            peers.dropped.clone(),
        );
        registry.register(
            "peer_propagation_seconds",
            "From a peer's decision to its record at this gate",
            peers.propagation.clone(),
        );
        let readings = Readings::default();
        registry.register(
            "key_age_seconds",
            "Seconds since the verification keys were last fetched (-1: never)",
            readings.key_age_secs.clone(),
        );
        registry.register(
            "disk_free_bytes",
            "Free bytes on the state directory's file system",
            readings.disk_free_bytes.clone(),
        );
        registry.register(
            "ticket_state_age_seconds",
            "Seconds since the last complete ticket sync (-1: never)",
            readings.state_age_secs.clone(),
        );
        registry.register(
            "offline_max_clock_offset_seconds",
            "The offline policy's largest clock offset (offline.max_clock_offset_secs)",
            readings.max_clock_offset_secs.clone(),
        );
        registry.register(
            "offline_max_state_age_seconds",
            "The offline policy's oldest ticket state (offline.max_state_age_secs)",
            readings.max_state_age_secs.clone(),
        );
        AgentMetrics {
            registry,
            readings,
            peers,
            store_failures,
            uplink_state,
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

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics::new()
    }
}

impl AgentMetrics {
    /// The registry as Prometheus text.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// Progress of the capture pipeline's stages, for systemd's watchdog: the daemon pings only
/// while no stage is stalled. A stage waiting for input is idle, not stalled; a stage busy
/// with one item (a frame in the decoders, a decision) for longer than the stall limit is
/// stalled, and so is a camera that has delivered no frame for that long.
#[derive(Debug)]
pub struct Heartbeat {
    origin: std::time::Instant,
    /// Milliseconds since `origin` (+1, so 0 means "never" or "idle").
    last_frame: AtomicU64,
    decode_busy_since: AtomicU64,
    decision_busy_since: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            origin: std::time::Instant::now(),
            last_frame: AtomicU64::new(0),
            decode_busy_since: AtomicU64::new(0),
            decision_busy_since: AtomicU64::new(0),
        }
    }
}

impl Heartbeat {
    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    pub fn frame_captured(&self) {
        self.last_frame.store(self.now(), Ordering::Relaxed);
    }

    pub fn decode_started(&self) {
        self.decode_busy_since.store(self.now(), Ordering::Relaxed);
    }

    pub fn decode_finished(&self) {
        self.decode_busy_since.store(0, Ordering::Relaxed);
    }

    pub fn decision_started(&self) {
        self.decision_busy_since
            .store(self.now(), Ordering::Relaxed);
    }

    pub fn decision_finished(&self) {
        self.decision_busy_since.store(0, Ordering::Relaxed);
    }

    /// The first stalled stage and how long it has been stuck, if any. `camera`: the source
    /// delivers frames continuously, so silence is a stall too.
    pub fn stalled(
        &self,
        limit: std::time::Duration,
        camera: bool,
    ) -> Option<(&'static str, std::time::Duration)> {
        let now = self.now();
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        let busy = |since: u64| (since != 0).then(|| now.saturating_sub(since));
        let stages = [
            (
                "decoding",
                busy(self.decode_busy_since.load(Ordering::Relaxed)),
            ),
            (
                "deciding",
                busy(self.decision_busy_since.load(Ordering::Relaxed)),
            ),
            (
                "capture",
                camera.then(|| now.saturating_sub(self.last_frame.load(Ordering::Relaxed).max(1))),
            ),
        ];
        stages.into_iter().find_map(|(stage, stuck)| {
            stuck
                .filter(|ms| *ms > limit_ms)
                .map(|ms| (stage, std::time::Duration::from_millis(ms)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Heartbeat;
    use std::time::Duration;

    #[test]
    fn idle_stages_are_healthy_and_a_busy_one_stalls_past_the_limit() {
        let beat = Heartbeat::default();
        assert_eq!(beat.stalled(Duration::ZERO, false), None, "idle");
        beat.decision_started();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(beat.stalled(Duration::from_secs(60), false), None);
        assert_eq!(
            beat.stalled(Duration::from_millis(1), false).map(|s| s.0),
            Some("deciding")
        );
        beat.decision_finished();
        assert_eq!(beat.stalled(Duration::from_millis(1), false), None);
        // a camera that never delivered a frame
        assert_eq!(
            beat.stalled(Duration::from_millis(1), true).map(|s| s.0),
            Some("capture")
        );
        beat.frame_captured();
        assert_eq!(beat.stalled(Duration::from_secs(60), true), None);
    }
}
