//! Venue peers: the gates of one merchant tell each other what they accept, so a ticket let
//! in at one gate is refused at the next even while the central is unreachable, without
//! a leader.
//!
//! - [`identity`] — this gate's Ed25519 key (generated here, the private half never
//!   leaves the state directory) and its log id.
//! - this file — [`Peers`]: who the peers are (the central's list, kept in the store so a
//!   gate rebooted during an outage still knows them, plus static peers from the
//!   settings), what each peer's link looks like, and the one place a received message is
//!   judged and kept ([`Peers::take`]).
//! - [`serve`] — the peer listener: pushes in, pulls out.
//! - [`exchange`] — the outgoing side: a bounded push queue per peer and the pull loop
//!   (anti-entropy: each peer's log is pulled from the last entry held).
//!
//! An acceptance taken from a peer is an input to the shared `decide` exactly like one of
//! this gate's own (see `decide::pipeline`): a redemption blocks the pair and its use comes
//! off the copy's count; a passage at the gate's venue (an entry, a re-entry, an exit) moves
//! the ticket's presence and the occupancy estimate (see `decide::venue`). Nothing a peer
//! says is uploaded: the gate that accepted uploads.

pub mod exchange;
pub mod identity;
pub mod serve;

use crate::config::PeerSettings;
use crate::metrics::PeerMetrics;
use crate::store::{now_rfc3339, Store, StoreError};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Instant;
use stile_shared::api::DevicePeers;
use stile_shared::peer::{
    judge, sign, AcceptMode, Acceptance, LogId, PeerAddress, PeerError, PeerKey, PeerMessage,
    PeerRequest, Receiver,
};
use stile_shared::token::Jti;
use stile_shared::venue::Direction;
use stile_shared::{FunctionCode, Identifier};
use tokio::sync::mpsc;

/// The store's key of the peer directory.
const DIRECTORY_STATE: &str = "peer_directory";
/// How many announcements wait for the fan-out (each peer then has its own queue).
pub const ANNOUNCE_QUEUE: usize = 1024;

/// Where a peer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerSource {
    Central,
    Static,
}

/// One peer as this gate knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryEntry {
    pub address: PeerAddress,
    /// base64url Ed25519 public key.
    pub public_key: String,
    pub source: PeerSource,
}

/// What a gate announces of one of its successes (the [`Acceptance`] without the log's
/// numbering, which the store gives it).
#[derive(Debug, Clone)]
pub struct Announced {
    pub merchant: Identifier,
    pub jti: Jti,
    pub function_code: FunctionCode,
    pub ticket: Identifier,
    pub decided_at: String,
    pub mode: AcceptMode,
    pub direction: Direction,
    pub redeemed: bool,
    pub venue: Option<Identifier>,
    pub occupancy_change: Option<i64>,
}

/// The peers and the merchant they share.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    pub merchant: Option<Identifier>,
    pub peers: BTreeMap<Identifier, DirectoryEntry>,
}

/// A peer's link as the last exchanges saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Not contacted yet.
    Unknown,
    Up,
    Down,
}

#[derive(Debug, Clone)]
struct Health {
    state: LinkState,
    last_message: Option<Instant>,
    last_error: Option<String>,
    /// The peer's last log number, as its last pull answer said.
    head: Option<u64>,
    sent: u64,
    received: u64,
    refused: u64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            state: LinkState::Unknown,
            last_message: None,
            last_error: None,
            head: None,
            sent: 0,
            received: 0,
            refused: 0,
        }
    }
}

/// One peer on the status page and in `/api/status`.
#[derive(Debug, Clone, Serialize)]
pub struct PeerLine {
    pub device_id: String,
    pub address: String,
    pub source: PeerSource,
    pub key: String,
    pub state: LinkState,
    /// Seconds since a message from this peer was last taken (push or pull).
    pub last_message_age_secs: Option<u64>,
    /// Entries of the peer's log not held here yet (its head minus what was pulled).
    pub lag: Option<u64>,
    /// The last entry of the peer's log pulled here.
    pub pulled_seq: u64,
    pub head_seq: Option<u64>,
    pub sent: u64,
    pub received: u64,
    pub refused: u64,
    pub last_error: Option<String>,
}

/// The peers at a glance.
#[derive(Debug, Clone, Serialize)]
pub struct PeersReport {
    pub enabled: bool,
    pub listen: Option<String>,
    pub merchant: Option<String>,
    pub key: Option<String>,
    pub log: Option<String>,
    pub log_head: u64,
    /// What the central holds for this gate (address), when it said.
    pub registered_address: Option<String>,
    pub peers: Vec<PeerLine>,
    pub blocks: u64,
}

impl PeersReport {
    pub fn off() -> PeersReport {
        PeersReport {
            enabled: false,
            listen: None,
            merchant: None,
            key: None,
            log: None,
            log_head: 0,
            registered_address: None,
            peers: Vec::new(),
            blocks: 0,
        }
    }
}

/// The two requests between gates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    Push,
    Pull,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Push => "push",
            RequestKind::Pull => "pull",
        }
    }
}

/// Why a push or pull was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum PeerRefusal {
    #[error(transparent)]
    Judged(#[from] PeerError),
    #[error("a request no newer than the last of its kind from that device (a replay)")]
    Replayed,
    #[error("a request or acceptance meant for or made by another gate")]
    WrongPeer,
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl PeerRefusal {
    pub fn reason(&self) -> &'static str {
        match self {
            PeerRefusal::Judged(error) => error.reason(),
            PeerRefusal::Replayed => "replayed",
            PeerRefusal::WrongPeer => "wrong_peer",
            PeerRefusal::Store(_) => "store",
        }
    }
}

/// What this gate knows of its peers and how it talks to them.
pub struct Peers {
    pub settings: PeerSettings,
    pub device: Identifier,
    key: SigningKey,
    public: PeerKey,
    pub log: LogId,
    directory: RwLock<Directory>,
    health: Mutex<HashMap<Identifier, Health>>,
    /// The last request's nonce taken from each device, by kind (push, pull).
    nonces: Mutex<HashMap<(Identifier, RequestKind), u64>>,
    last_nonce: AtomicU64,
    announcements: mpsc::Sender<String>,
    announcements_rx: Mutex<Option<mpsc::Receiver<String>>>,
    registered: Mutex<Option<String>>,
    pub metrics: PeerMetrics,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("device", &self.device)
            .field("key", &self.public.fingerprint())
            .finish()
    }
}

impl Peers {
    /// This gate's peers: its key from the state directory (made on first use), its log id
    /// and the directory kept in the store.
    pub fn open(
        settings: PeerSettings,
        device: Identifier,
        state_dir: &std::path::Path,
        store: &mut Store,
        metrics: PeerMetrics,
    ) -> Result<Peers, identity::IdentityError> {
        let key = identity::load_or_create(state_dir)?;
        let log = identity::log_id(store)?;
        let mut directory: Directory = store
            .get_state(DIRECTORY_STATE)?
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        merge_static(&mut directory, &settings);
        if directory.merchant.is_none() {
            directory.merchant = settings.merchant.clone();
        }
        let (announcements, announcements_rx) = mpsc::channel(ANNOUNCE_QUEUE);
        Ok(Peers {
            public: PeerKey::of(&key),
            key,
            log,
            device,
            settings,
            directory: RwLock::new(directory),
            health: Mutex::new(HashMap::new()),
            nonces: Mutex::new(HashMap::new()),
            last_nonce: AtomicU64::new(0),
            announcements,
            announcements_rx: Mutex::new(Some(announcements_rx)),
            registered: Mutex::new(None),
            metrics,
        })
    }

    /// The receiving end of the announcements, for the fan-out task (once).
    pub fn take_announcements(&self) -> Option<mpsc::Receiver<String>> {
        self.announcements_rx.lock().ok()?.take()
    }

    pub fn public_key(&self) -> &PeerKey {
        &self.public
    }

    pub fn directory(&self) -> Directory {
        self.directory.read().map(|d| d.clone()).unwrap_or_default()
    }

    fn key_of(&self, device: &Identifier) -> Option<PeerKey> {
        let directory = self.directory.read().ok()?;
        PeerKey::parse(&directory.peers.get(device)?.public_key).ok()
    }

    /// Replaces the central's part of the directory with its latest answer (static peers
    /// stay); returns the directory to keep in the store.
    pub fn install(&self, answer: &DevicePeers) -> Directory {
        let mut directory = Directory {
            merchant: Identifier::parse(&answer.merchant_code)
                .ok()
                .or_else(|| self.settings.merchant.clone()),
            peers: BTreeMap::new(),
        };
        for peer in &answer.peers {
            let (Ok(device), Ok(address), Ok(key)) = (
                Identifier::parse(&peer.device_id),
                PeerAddress::parse(&peer.address),
                PeerKey::parse(&peer.public_key),
            ) else {
                tracing::warn!(peer = %peer.device_id, "the central listed a peer this gate cannot use");
                continue;
            };
            if device == self.device {
                continue;
            }
            directory.peers.insert(
                device,
                DirectoryEntry {
                    address,
                    public_key: key.encode(),
                    source: PeerSource::Central,
                },
            );
        }
        merge_static(&mut directory, &self.settings);
        if let Ok(mut current) = self.directory.write() {
            *current = directory.clone();
        }
        if let Ok(mut registered) = self.registered.lock() {
            *registered = answer.registered.as_ref().map(|r| r.address.clone());
        }
        directory
    }

    /// Whether the central holds this gate's current key and the address it should.
    pub fn registration_current(&self, answer: &DevicePeers, address: Option<&str>) -> bool {
        answer.registered.as_ref().is_some_and(|registered| {
            registered.public_key == self.public.encode()
                && address.is_none_or(|address| registered.address == address)
        })
    }

    /// The announcement of an acceptance: a closure that signs entry `seq` of this gate's log
    /// (the store numbers it inside the transaction that records the decision).
    pub fn announcement(&self, what: Announced) -> impl Fn(u64) -> String + Send + 'static {
        let key = self.key.clone();
        let device = self.device.clone();
        let log = self.log.clone();
        move |seq| {
            let what = what.clone();
            sign(
                &PeerMessage::Accept(Acceptance {
                    device: device.clone(),
                    merchant: what.merchant,
                    log: log.clone(),
                    seq,
                    jti: what.jti,
                    function_code: what.function_code,
                    ticket: what.ticket,
                    decided_at: what.decided_at,
                    mode: what.mode,
                    direction: what.direction,
                    redeemed: what.redeemed,
                    venue: what.venue,
                    occupancy_change: what.occupancy_change,
                }),
                &key,
            )
        }
    }

    /// Hands a durable announcement to the pushers; never waits (a full queue drops it:
    /// the peers' pulls catch up).
    pub fn push(&self, message: String) {
        if self.announcements.try_send(message).is_err() {
            self.metrics.dropped.inc();
        }
    }

    /// A signed request of `kind` for `peer` (the `Authorization: StilePeer` header).
    pub fn request(&self, peer: &Identifier, kind: RequestKind) -> Option<String> {
        let merchant = self.directory().merchant?;
        let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
        // Strictly increasing, even when the clock steps back.
        let previous = self
            .last_nonce
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or(0);
        let request = PeerRequest {
            device: self.device.clone(),
            merchant,
            peer: peer.clone(),
            nonce: now.max(previous + 1),
        };
        Some(sign(
            &match kind {
                RequestKind::Push => PeerMessage::Push(request),
                RequestKind::Pull => PeerMessage::Pull(request),
            },
            &self.key,
        ))
    }

    fn receiver_judge(&self, compact: &str) -> Result<PeerMessage, PeerRefusal> {
        let directory = self.directory();
        let Some(merchant) = directory.merchant.as_ref() else {
            return Err(PeerError::UnknownDevice("(no merchant known yet)".into()).into());
        };
        Ok(judge(
            compact,
            Receiver {
                device: &self.device,
                merchant,
            },
            |device| self.key_of(device),
        )?)
    }

    fn refused(&self, from: Option<&Identifier>, refusal: &PeerRefusal) {
        self.metrics
            .refused
            .get_or_create(&vec![("reason".to_owned(), refusal.reason().to_owned())])
            .inc();
        if let Some(device) = from {
            self.with_health(device, |h| h.refused += 1);
        }
        tracing::warn!(reason = refusal.reason(), error = %refusal, from = from.map(Identifier::as_str).unwrap_or("?"), "peer message refused");
    }

    /// Judges a request: of `kind`, from a known peer of this merchant, for this gate,
    /// newer than the last one of that kind from that device. Returns the asking device.
    pub fn take_request(
        &self,
        compact: &str,
        kind: RequestKind,
    ) -> Result<Identifier, PeerRefusal> {
        let result = (|| {
            let request = match (self.receiver_judge(compact)?, kind) {
                (PeerMessage::Push(request), RequestKind::Push)
                | (PeerMessage::Pull(request), RequestKind::Pull) => request,
                _ => {
                    return Err(PeerRefusal::Judged(PeerError::Malformed(format!(
                        "not a {} request",
                        kind.as_str()
                    ))))
                }
            };
            if request.peer != self.device {
                return Err(PeerRefusal::WrongPeer);
            }
            let mut nonces = self
                .nonces
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let last = nonces.entry((request.device.clone(), kind)).or_insert(0);
            if request.nonce <= *last {
                return Err(PeerRefusal::Replayed);
            }
            *last = request.nonce;
            Ok(request.device)
        })();
        if let Err(refusal) = &result {
            self.refused(None, refusal);
        }
        result
    }

    /// Judges and keeps one acceptance of `from`'s own (the peer that pushed it, or whose
    /// log is pulled, as its signed request said). An entry held already is skipped
    /// quietly: pushes and pulls overlap by design, and replays are refused at the request.
    /// Returns the acceptance and whether it was new.
    pub fn take(
        &self,
        store: &mut Store,
        compact: &str,
        from: &Identifier,
    ) -> Result<(Acceptance, bool), PeerRefusal> {
        let result = (|| {
            let PeerMessage::Accept(acceptance) = self.receiver_judge(compact)? else {
                return Err(PeerRefusal::Judged(PeerError::Malformed(
                    "not an acceptance".into(),
                )));
            };
            if *from != acceptance.device {
                return Err(PeerRefusal::WrongPeer);
            }
            let received_at = now_rfc3339();
            let new = store.insert_peer_acceptance(&acceptance, compact, &received_at)?;
            Ok((acceptance, new))
        })();
        match &result {
            Ok((acceptance, true)) => {
                self.metrics.received.inc();
                if let Ok(decided) = chrono::DateTime::parse_from_rfc3339(&acceptance.decided_at) {
                    let ms = (chrono::Utc::now() - decided.with_timezone(&chrono::Utc))
                        .num_microseconds()
                        .unwrap_or(0)
                        .max(0);
                    self.metrics.propagation.observe(ms as f64 / 1e6);
                }
                self.with_health(&acceptance.device, |h| {
                    h.received += 1;
                    h.last_message = Some(Instant::now());
                });
            }
            Ok((_, false)) => {}
            Err(refusal) => self.refused(Some(from), refusal),
        }
        result
    }

    fn with_health(&self, device: &Identifier, change: impl FnOnce(&mut Health)) {
        if let Ok(mut health) = self.health.lock() {
            change(health.entry(device.clone()).or_default());
        }
    }

    /// A push or pull to `device` went through.
    pub fn contact_ok(&self, device: &Identifier, sent: u64, head: Option<u64>) {
        self.with_health(device, |h| {
            h.state = LinkState::Up;
            h.last_error = None;
            h.sent += sent;
            if head.is_some() {
                h.head = head;
            }
        });
        self.metrics.sent.inc_by(sent);
    }

    /// A message from `device` arrived (any kind): it is up.
    pub fn heard_from(&self, device: &Identifier) {
        self.with_health(device, |h| {
            h.state = LinkState::Up;
            h.last_message = Some(Instant::now());
        });
    }

    pub fn contact_failed(&self, device: &Identifier, error: String) {
        self.with_health(device, |h| {
            if h.state != LinkState::Down {
                tracing::info!(peer = %device, error = %error, "peer unreachable");
            }
            h.state = LinkState::Down;
            h.last_error = Some(error);
        });
    }

    /// The peers at a glance; `cursors` are the last pulled entries by device.
    pub fn report(&self, cursors: &HashMap<String, u64>, log_head: u64) -> PeersReport {
        let directory = self.directory();
        let health = self.health.lock().map(|h| h.clone()).unwrap_or_default();
        let peers = directory
            .peers
            .iter()
            .map(|(device, entry)| {
                let h = health.get(device).cloned().unwrap_or_default();
                let pulled = cursors.get(device.as_str()).copied().unwrap_or(0);
                PeerLine {
                    device_id: device.to_string(),
                    address: entry.address.as_str().to_owned(),
                    source: entry.source,
                    key: PeerKey::parse(&entry.public_key)
                        .map(|k| k.fingerprint())
                        .unwrap_or_default(),
                    state: h.state,
                    last_message_age_secs: h.last_message.map(|at| at.elapsed().as_secs()),
                    lag: h.head.map(|head| head.saturating_sub(pulled)),
                    pulled_seq: pulled,
                    head_seq: h.head,
                    sent: h.sent,
                    received: h.received,
                    refused: h.refused,
                    last_error: h.last_error,
                }
            })
            .collect();
        PeersReport {
            enabled: true,
            listen: Some(self.settings.listen.to_string()),
            merchant: directory.merchant.map(|m| m.to_string()),
            key: Some(self.public.encode()),
            log: Some(self.log.as_str().to_owned()),
            log_head,
            registered_address: self.registered.lock().ok().and_then(|r| r.clone()),
            peers,
            blocks: self.metrics.blocks.get(),
        }
    }

    /// The directory as the store keeps it.
    pub fn directory_text(directory: &Directory) -> String {
        serde_json::to_string(directory).unwrap_or_default()
    }

    pub const DIRECTORY_STATE: &'static str = DIRECTORY_STATE;
}

/// Static peers are always in the directory, whatever the central says.
fn merge_static(directory: &mut Directory, settings: &PeerSettings) {
    for peer in &settings.static_peers {
        directory.peers.insert(
            peer.device_id.clone(),
            DirectoryEntry {
                address: peer.address.clone(),
                public_key: peer.key.encode(),
                source: PeerSource::Static,
            },
        );
    }
}
