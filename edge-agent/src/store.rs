//! The agent's local SQLite store: every decision (with its direction and, for a passage at
//! the venue, the occupancy change it made), the (jti, function_code) pairs this device
//! accepted, the synced ticket state and venue, the key set, the upload queue, and for the
//! venue peers this gate's own signed log, what its peers announced and how far each
//! peer's log has been pulled.
//!
//! Opened in WAL mode with `synchronous = FULL`: an offline acceptance is on disk before the
//! gate shows green, and survives a SIGKILL or a power cut. The schema is brought up to date
//! at open, one step per version ([`MIGRATIONS`]; `PRAGMA user_version` tracks it), so a
//! gate updated in the field upgrades the store it has.

use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use stile_shared::api::{EntitlementView, SyncedTicket, SyncedVenue, TicketFeedPage};
use stile_shared::token::JwkSet;
use stile_shared::venue::Direction;
use stile_shared::FunctionCode;

/// What went wrong with the local store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored data is malformed: {0}")]
    Malformed(String),
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the store {path} cannot be read ({reason}). Stop the agent, move the file aside (keep \
         it: it may hold offline acceptances not uploaded yet) and start again: the agent \
         starts a new store, resyncs from the central and reports the loss on its status page"
    )]
    Unreadable { path: String, reason: String },
}

/// Now, as the store writes times: RFC 3339 UTC with milliseconds (so they also sort as text).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The upload state of an online success that keeps its token until `hold_online_secs` have
/// passed: uploaded again (as `pending`) when the central's database epoch changes.
pub const HELD: &str = "held";
/// The store's key of the central's database epoch as the feed last named it.
const DATABASE_EPOCH_STATE: &str = "database_epoch";

/// The store's key of the device's venue as the feed last named it.
const VENUE_STATE: &str = "venue";

/// Present while a new store waits for the central's word on the device's past.
pub const HISTORY_CHECK_STATE: &str = "history_check";

/// How a decision was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// By the central server.
    Online,
    /// By this device alone, with its synced state (uploaded later when accepted).
    Offline,
    /// By this device before any call: invalid, expired, another merchant's, or a
    /// (jti, function_code) this device already accepted.
    Local,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Online => "online",
            Mode::Offline => "offline",
            Mode::Local => "local",
        }
    }

    fn parse(raw: &str) -> Mode {
        match raw {
            "online" => Mode::Online,
            "offline" => Mode::Offline,
            _ => Mode::Local,
        }
    }
}

/// One decision as the store keeps it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DecisionRecord {
    pub scan_id: String,
    pub jti: Option<String>,
    pub ticket_code: Option<String>,
    pub function_code: String,
    pub code: String,
    pub mode: Mode,
    /// RFC 3339.
    pub decided_at: String,
    pub latency_ms: f64,
    /// Kept only for offline acceptances, which must be uploaded.
    #[serde(skip)]
    pub qr_token: Option<String>,
    pub operator_id: Option<i64>,
    pub upload_state: Option<String>,
    pub upload_code: Option<String>,
    /// For a refusal because another gate accepted the pair: that gate.
    pub peer_device: Option<String>,
    /// Which way the scan went (the gate's direction).
    pub direction: Direction,
    /// For a success at the venue (an entry of its entry function, or an exit): what it
    /// changed its occupancy by: +1 an entry that took a place, 0 an entry of a ticket
    /// already inside, -1 an exit. `None` for anything else.
    pub occupancy_change: Option<i64>,
    /// Whether this success used a count of its entitlement: what blocks the
    /// (jti, function_code) here, goes to the peers and comes off the counts offline. An exit
    /// and a re-entry use none.
    pub redeemed: bool,
}

/// One of this gate's passages at its venue (a success with an occupancy change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnPassage {
    pub ticket_code: Option<String>,
    pub direction: Direction,
    /// Unix seconds, this gate's clock.
    pub at: i64,
    pub change: i64,
    /// Since when the central has it (Unix seconds, this gate's clock): an online passage
    /// from its decision, an offline one from its upload; `None` while it waits for upload.
    pub central_since: Option<i64>,
}

/// A passage at a peer gate of this gate's venue, as the peer announced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPassage {
    pub ticket_code: String,
    pub direction: Direction,
    /// Unix seconds, the peer's clock; `None` when its time cannot be read.
    pub at: Option<i64>,
    /// What it changed the occupancy by (+1 for what a peer of an older version announced).
    pub change: i64,
}

/// Who accepted a (jti, function_code) before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptedBy {
    Here,
    /// Another gate of the venue, by its device id.
    Peer(String),
}

/// A peer's acceptance as the status API lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerAcceptanceLine {
    pub device: String,
    pub seq: u64,
    pub jti: String,
    pub function_code: String,
    pub ticket_code: String,
    pub decided_at: String,
    pub mode: String,
    pub received_at: String,
    /// `entry` or `exit`.
    pub direction: String,
    /// Whether it used a count (an exit or a re-entry uses none).
    pub redeemed: bool,
}

/// An offline acceptance waiting for upload.
#[derive(Debug, Clone)]
pub struct PendingUpload {
    pub scan_id: String,
    pub qr_token: String,
    pub function_code: String,
    pub decided_at: String,
    pub operator_id: i64,
    pub direction: Direction,
}

/// The upload queue at a glance.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct QueueState {
    pub depth: i64,
    pub oldest_decided_at: Option<String>,
    pub conflicts: i64,
    /// Of `depth`, the exits and re-entries that wait until the feed shows the passage they
    /// rest on (at most [`PASSAGE_UPLOAD_HOLD_SECS`]).
    pub held: i64,
}

/// How long an offline exit's or re-entry's upload waits, from its first chance to go, for
/// the feed to show the passage it rests on (then it goes anyway, and the central decides it
/// on what it has).
pub const PASSAGE_UPLOAD_HOLD_SECS: i64 = 1800;

/// An offline passage that used no count among the decisions: an exit (it rests on an
/// entry) or a re-entry (it rests on an exit).
const RESTING: &str = "(redeemed = 0 AND occupancy_change IS NOT NULL)";

/// For a [`RESTING`] decision: the feed does not show the ticket's latest passage as the one
/// it rests on yet.
const NOT_SHOWN: &str =
    "coalesce((SELECT json_extract(t.body, '$.passage.direction') FROM tickets t \
     WHERE t.ticket_code = decisions.ticket_code), '') \
     <> CASE decisions.direction WHEN 'exit' THEN 'entry' ELSE 'exit' END";

pub struct Store {
    connection: Connection,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// The schema, one step per version: step `i` brings a store of version `i` to `i + 1`, in
/// one transaction with the version it reaches, so a step is applied once and whole. A landed
/// step is never edited; every change is a new step.
pub const MIGRATIONS: [&str; 4] = [
    // 1: decisions, accepted pairs, synced tickets, small state.
    "CREATE TABLE IF NOT EXISTS decisions (
         scan_id TEXT PRIMARY KEY,
         jti TEXT,
         ticket_code TEXT,
         function_code TEXT NOT NULL,
         code TEXT NOT NULL,
         mode TEXT NOT NULL,
         decided_at TEXT NOT NULL,
         latency_ms REAL NOT NULL,
         qr_token TEXT,
         operator_id INTEGER,
         upload_state TEXT,
         upload_code TEXT,
         uploaded_at TEXT
     );
     CREATE INDEX IF NOT EXISTS decisions_pending ON decisions (decided_at) WHERE upload_state = 'pending';
     CREATE INDEX IF NOT EXISTS decisions_ticket ON decisions (ticket_code, function_code);
     CREATE TABLE IF NOT EXISTS accepted (
         jti TEXT NOT NULL,
         function_code TEXT NOT NULL,
         scan_id TEXT NOT NULL,
         PRIMARY KEY (jti, function_code)
     );
     CREATE TABLE IF NOT EXISTS tickets (
         ticket_code TEXT PRIMARY KEY,
         body TEXT NOT NULL
     );
     CREATE TABLE IF NOT EXISTS sync_state (
         name TEXT PRIMARY KEY,
         value TEXT NOT NULL
     );",
    // 2: venue peers: this gate's own signed log of acceptances, what its peers announced,
    // and how far each peer's log has been pulled.
    "ALTER TABLE decisions ADD COLUMN peer_device TEXT;
     CREATE TABLE peer_log (
         seq INTEGER PRIMARY KEY,
         message TEXT NOT NULL
     );
     CREATE TABLE peer_acceptances (
         device TEXT NOT NULL,
         log TEXT NOT NULL,
         seq INTEGER NOT NULL,
         jti TEXT NOT NULL,
         function_code TEXT NOT NULL,
         ticket_code TEXT NOT NULL,
         decided_at TEXT NOT NULL,
         mode TEXT NOT NULL,
         received_at TEXT NOT NULL,
         message TEXT NOT NULL,
         PRIMARY KEY (device, log, seq)
     );
     CREATE INDEX peer_acceptances_pair ON peer_acceptances (jti, function_code);
     CREATE INDEX peer_acceptances_ticket ON peer_acceptances (ticket_code, function_code);
     CREATE TABLE peer_cursors (
         device TEXT PRIMARY KEY,
         log TEXT NOT NULL,
         seq INTEGER NOT NULL
     );",
    // 3: venues: each decision's direction, the occupancy change of a passage, and whether
    // a success used a count (every success before venues did).
    "ALTER TABLE decisions ADD COLUMN direction TEXT NOT NULL DEFAULT 'entry';
     ALTER TABLE decisions ADD COLUMN occupancy_change INTEGER;
     ALTER TABLE decisions ADD COLUMN redeemed INTEGER NOT NULL DEFAULT 0;
     UPDATE decisions SET redeemed = 1 WHERE code = 'SUCCESS';
     CREATE INDEX decisions_passages ON decisions (decided_at) WHERE occupancy_change IS NOT NULL;
     CREATE INDEX peer_acceptances_received ON peer_acceptances (received_at);",
    // 4: peers announce passages too: which way, whether a count was used, at which venue
    // and what it changed the occupancy by (what peers sent before is a redeeming entry of
    // no venue named); and since when an offline exit's or re-entry's upload waits for the
    // passage it rests on.
    "ALTER TABLE peer_acceptances ADD COLUMN direction TEXT NOT NULL DEFAULT 'entry';
     ALTER TABLE peer_acceptances ADD COLUMN redeemed INTEGER NOT NULL DEFAULT 1;
     ALTER TABLE peer_acceptances ADD COLUMN venue_code TEXT;
     ALTER TABLE peer_acceptances ADD COLUMN occupancy_change INTEGER;
     ALTER TABLE decisions ADD COLUMN upload_held_since TEXT;",
];

impl Store {
    /// Opens (creating if needed) the store at `path`, bringing its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::StateDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let unreadable = |error: rusqlite::Error| StoreError::Unreadable {
            path: path.display().to_string(),
            reason: error.to_string(),
        };
        let connection = Connection::open(path).map_err(unreadable)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(unreadable)?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(unreadable)?;
        let created = version == 0;
        for (from, step) in MIGRATIONS.iter().enumerate() {
            let to = from as i64 + 1;
            if version < to {
                connection.execute_batch(&format!(
                    "BEGIN;\n{step}\nPRAGMA user_version = {to};\nCOMMIT;"
                ))?;
            }
        }
        let mut store = Store { connection };
        if created {
            // A new store: whether this device had one before is for the central to say.
            store.set_state(HISTORY_CHECK_STATE, "pending")?;
        }
        Ok(store)
    }

    /// Whether this store is new and the central has not yet said whether the device ran
    /// before.
    pub fn history_check_pending(&self) -> Result<bool, StoreError> {
        Ok(self.get_state(HISTORY_CHECK_STATE)?.is_some())
    }

    /// Whether this device already accepted this (jti, function_code).
    pub fn is_accepted(&self, jti: &str, function_code: &str) -> Result<bool, StoreError> {
        Ok(self
            .connection
            .query_row(
                "SELECT 1 FROM accepted WHERE jti = ?1 AND function_code = ?2",
                params![jti, function_code],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Records a decision. A redemption (online or offline) also blocks its
    /// (jti, function_code) on this device from now on; an offline success (exits and
    /// re-entries too) is queued for upload. One transaction, durable on return.
    pub fn record(&mut self, decision: &DecisionRecord) -> Result<(), StoreError> {
        self.record_announced(decision, None).map(|_| ())
    }

    /// [`Store::record`], and for a redemption or a passage with an `announce`, the next
    /// entry of this gate's peer log in the same transaction: `announce(seq)` signs the
    /// message. Returns the message for the peers (only once it is durable).
    pub fn record_announced(
        &mut self,
        decision: &DecisionRecord,
        announce: Option<&dyn Fn(u64) -> String>,
    ) -> Result<Option<String>, StoreError> {
        let tx = self.connection.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO decisions (scan_id, jti, ticket_code, function_code, code, mode, decided_at, \
             latency_ms, qr_token, operator_id, upload_state, upload_code, peer_device, direction, \
             occupancy_change, redeemed) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            params![
                decision.scan_id,
                decision.jti,
                decision.ticket_code,
                decision.function_code,
                decision.code,
                decision.mode.as_str(),
                decision.decided_at,
                decision.latency_ms,
                decision.qr_token,
                decision.operator_id,
                decision.upload_state,
                decision.upload_code,
                decision.peer_device,
                decision.direction.as_str(),
                decision.occupancy_change,
                decision.redeemed && decision.code == "SUCCESS",
            ],
        )?;
        let mut message = None;
        // A redemption is announced once per pair (when it is first accepted here); a
        // passage that used no count (an exit, a re-entry) every time it happens.
        let mut announced = false;
        if decision.code == "SUCCESS" && decision.redeemed {
            if let Some(jti) = &decision.jti {
                announced = tx.execute(
                    "INSERT OR IGNORE INTO accepted (jti, function_code, scan_id) VALUES (?1, ?2, ?3)",
                    params![jti, decision.function_code, decision.scan_id],
                )? == 1;
            }
        } else if decision.code == "SUCCESS" && decision.occupancy_change.is_some() {
            announced = decision.jti.is_some();
        }
        if let (true, Some(announce)) = (announced, announce) {
            let seq: i64 = tx.query_row(
                "SELECT coalesce(max(seq), 0) + 1 FROM peer_log",
                [],
                |row| row.get(0),
            )?;
            let signed = announce(seq as u64);
            tx.execute(
                "INSERT INTO peer_log (seq, message) VALUES (?1, ?2)",
                params![seq, signed],
            )?;
            message = Some(signed);
        }
        tx.commit()?;
        Ok(message)
    }

    /// This gate's peer log after `seq`, oldest first, and its last number.
    pub fn own_log_after(&self, seq: u64, limit: usize) -> Result<(Vec<String>, u64), StoreError> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT message FROM peer_log WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
        let rows = statement.query_map(params![seq as i64, limit as i64], |row| row.get(0))?;
        let messages = rows.collect::<Result<Vec<String>, _>>()?;
        Ok((messages, self.own_log_head()?))
    }

    pub fn own_log_head(&self) -> Result<u64, StoreError> {
        let head: i64 =
            self.connection
                .query_row("SELECT coalesce(max(seq), 0) FROM peer_log", [], |row| {
                    row.get(0)
                })?;
        Ok(head as u64)
    }

    /// Keeps a peer's acceptance (already judged); `false` when this entry of that peer's
    /// log was held already.
    pub fn insert_peer_acceptance(
        &mut self,
        acceptance: &stile_shared::peer::Acceptance,
        message: &str,
        received_at: &str,
    ) -> Result<bool, StoreError> {
        let new = self.connection.execute(
            "INSERT OR IGNORE INTO peer_acceptances (device, log, seq, jti, function_code, ticket_code, \
             decided_at, mode, received_at, message, direction, redeemed, venue_code, occupancy_change) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                acceptance.device.as_str(),
                acceptance.log.as_str(),
                acceptance.seq as i64,
                acceptance.jti.as_str(),
                acceptance.function_code.as_str(),
                acceptance.ticket.as_str(),
                acceptance.decided_at,
                acceptance.mode.as_str(),
                received_at,
                message,
                acceptance.direction.as_str(),
                acceptance.redeemed,
                acceptance.venue.as_ref().map(|v| v.as_str()),
                acceptance.occupancy_change,
            ],
        )?;
        Ok(new == 1)
    }

    /// How far a peer's log has been pulled: its log and the last entry taken.
    pub fn peer_cursor(&self, device: &str) -> Result<Option<(String, u64)>, StoreError> {
        Ok(self
            .connection
            .query_row(
                "SELECT log, seq FROM peer_cursors WHERE device = ?1",
                params![device],
                |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)),
            )
            .optional()?)
    }

    pub fn set_peer_cursor(&mut self, device: &str, log: &str, seq: u64) -> Result<(), StoreError> {
        self.connection.execute(
            "INSERT INTO peer_cursors (device, log, seq) VALUES (?1, ?2, ?3) \
             ON CONFLICT (device) DO UPDATE SET log = excluded.log, seq = excluded.seq",
            params![device, log, seq as i64],
        )?;
        Ok(())
    }

    /// Every peer's pull cursor: the last entry taken, by device.
    pub fn peer_cursors(&self) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT device, seq FROM peer_cursors")?;
        let rows =
            statement.query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Who accepted this (jti, function_code): this gate, or the first peer that announced it.
    pub fn accepted_by(
        &self,
        jti: &str,
        function_code: &str,
    ) -> Result<Option<AcceptedBy>, StoreError> {
        if self.is_accepted(jti, function_code)? {
            return Ok(Some(AcceptedBy::Here));
        }
        let peer: Option<String> = self
            .connection
            .query_row(
                "SELECT device FROM peer_acceptances WHERE jti = ?1 AND function_code = ?2 \
                 AND redeemed = 1 ORDER BY received_at LIMIT 1",
                params![jti, function_code],
                |row| row.get(0),
            )
            .optional()?;
        Ok(peer.map(AcceptedBy::Peer))
    }

    /// Uses of this ticket's entitlement that the synced copy may not show yet, as the Unix
    /// seconds they were decided at: this gate's own ([`Store::unsynced_uses`]) and its peers'
    /// acceptances of other jtis than this gate's, except those the copy shows redeemed (its
    /// current jti with the function among `redeemed_functions`).
    pub fn uses_not_in_copy(
        &self,
        ticket_code: &str,
        function_code: &str,
        copy: Option<&SyncedTicket>,
    ) -> Result<Vec<i64>, StoreError> {
        let mut uses = self.unsynced_uses(ticket_code, function_code)?;
        let mut statement = self.connection.prepare_cached(
            "SELECT p.jti, min(p.decided_at) FROM peer_acceptances p WHERE p.ticket_code = ?1 AND p.function_code = ?2 \
             AND p.redeemed = 1 AND NOT EXISTS (SELECT 1 FROM accepted a WHERE a.jti = p.jti AND a.function_code = p.function_code) \
             GROUP BY p.jti",
        )?;
        let peers = statement
            .query_map(params![ticket_code, function_code], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let shown = |jti: &str| {
            copy.is_some_and(|ticket| {
                ticket
                    .current_jti
                    .as_ref()
                    .is_some_and(|current| current.as_str() == jti)
                    && ticket
                        .redeemed_functions
                        .iter()
                        .any(|f| f.as_str() == function_code)
            })
        };
        for (jti, decided_at) in peers {
            if !shown(&jti) {
                uses.push(unix_seconds(&decided_at)?);
            }
        }
        Ok(uses)
    }

    /// What this gate holds of each peer's log: entries and the highest number.
    pub fn peer_holdings(&self) -> Result<Vec<(String, i64, u64)>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT device, count(*), max(seq) FROM peer_acceptances GROUP BY device ORDER BY device",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get::<_, i64>(2)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest acceptances received from peers, newest first.
    pub fn recent_peer_acceptances(
        &self,
        limit: usize,
    ) -> Result<Vec<PeerAcceptanceLine>, StoreError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT device, seq, jti, function_code, ticket_code, decided_at, mode, received_at, \
             direction, redeemed FROM peer_acceptances ORDER BY received_at DESC LIMIT ?1",
        )?;
        let rows = statement.query_map(params![limit as i64], |row| {
            Ok(PeerAcceptanceLine {
                device: row.get(0)?,
                seq: row.get::<_, i64>(1)? as u64,
                jti: row.get(2)?,
                function_code: row.get(3)?,
                ticket_code: row.get(4)?,
                decided_at: row.get(5)?,
                mode: row.get(6)?,
                received_at: row.get(7)?,
                direction: row.get(8)?,
                redeemed: row.get(9)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Uses of this ticket's entitlement accepted here that the synced state may not show
    /// yet: queued, or uploaded after the last ticket sync.
    pub fn unsynced_uses(
        &self,
        ticket_code: &str,
        function_code: &str,
    ) -> Result<Vec<i64>, StoreError> {
        let last_sync = self.get_state("last_ticket_sync_at")?.unwrap_or_default();
        let mut statement = self.connection.prepare_cached(
            "SELECT decided_at FROM decisions WHERE ticket_code = ?1 AND function_code = ?2 AND code = 'SUCCESS' \
             AND redeemed = 1 AND mode = 'offline' AND (upload_state = 'pending' OR uploaded_at > ?3)",
        )?;
        let times = statement
            .query_map(params![ticket_code, function_code, last_sync], |row| {
                row.get::<_, String>(0)
            })?
            .collect::<Result<Vec<_>, _>>()?;
        times.iter().map(|at| unix_seconds(at)).collect()
    }

    /// The synced state of one ticket.
    pub fn ticket(&self, ticket_code: &str) -> Result<Option<SyncedTicket>, StoreError> {
        let body: Option<String> = self
            .connection
            .query_row(
                "SELECT body FROM tickets WHERE ticket_code = ?1",
                params![ticket_code],
                |row| row.get(0),
            )
            .optional()?;
        body.map(|body| {
            serde_json::from_str(&body).map_err(|error| StoreError::Malformed(error.to_string()))
        })
        .transpose()
    }

    /// Applies one page of the central's feed and moves the cursor, in one transaction.
    pub fn apply_feed(
        &mut self,
        tickets: &[SyncedTicket],
        next_cursor: &str,
        synced_at: &str,
        complete: bool,
    ) -> Result<(), StoreError> {
        let tx = self.connection.transaction()?;
        upsert_tickets(&tx, tickets)?;
        set_state(&tx, "ticket_cursor", next_cursor)?;
        if complete {
            set_state(&tx, "last_ticket_sync_at", synced_at)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Applies one page of the central's feed as [`Store::apply_feed`] does, and in the same
    /// transaction the merchant's time zone and the device's venue it names (the latest page
    /// wins: a page without a venue says the device's location belongs to none).
    pub fn apply_page(&mut self, page: &TicketFeedPage, synced_at: &str) -> Result<(), StoreError> {
        let venue = page
            .venue
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|error| StoreError::Malformed(error.to_string()))?;
        let tx = self.connection.transaction()?;
        upsert_tickets(&tx, &page.tickets)?;
        if let Some(zone) = &page.time_zone {
            set_state(&tx, "merchant_time_zone", zone)?;
        }
        match venue {
            Some(venue) => set_state(&tx, VENUE_STATE, &venue)?,
            None => {
                tx.execute(
                    "DELETE FROM sync_state WHERE name = ?1",
                    params![VENUE_STATE],
                )?;
            }
        }
        set_state(&tx, "ticket_cursor", &page.next_cursor)?;
        if page.complete {
            set_state(&tx, "last_ticket_sync_at", synced_at)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Notes the central's database epoch a feed page named. When it differs from the one
    /// noted before, the online successes held since `held_since` (RFC 3339) are queued for
    /// upload again: they were committed to a database that is no longer the one answering.
    /// Held successes older than that give their token up. Returns how many were queued.
    pub fn note_database_epoch(
        &mut self,
        epoch: &str,
        held_since: &str,
    ) -> Result<usize, StoreError> {
        let tx = self.connection.transaction()?;
        let previous: Option<String> = tx
            .query_row(
                "SELECT value FROM sync_state WHERE name = ?1",
                params![DATABASE_EPOCH_STATE],
                |row| row.get(0),
            )
            .optional()?;
        let queued = match previous {
            Some(previous) if previous != epoch => tx.execute(
                "UPDATE decisions SET upload_state = 'pending' \
                 WHERE upload_state = ?1 AND decided_at >= ?2",
                params![HELD, held_since],
            )?,
            _ => 0,
        };
        tx.execute(
            "UPDATE decisions SET upload_state = NULL, qr_token = NULL \
             WHERE upload_state = ?1 AND decided_at < ?2",
            params![HELD, held_since],
        )?;
        set_state(&tx, DATABASE_EPOCH_STATE, epoch)?;
        tx.commit()?;
        Ok(queued)
    }

    /// The device's venue with the occupancy the central counted, as the feed last named it.
    pub fn venue(&self) -> Result<Option<SyncedVenue>, StoreError> {
        self.get_state(VENUE_STATE)?
            .map(|text| {
                serde_json::from_str(&text)
                    .map_err(|error| StoreError::Malformed(format!("venue: {error}")))
            })
            .transpose()
    }

    /// This gate's passages at its venue decided at or after `since` (Unix seconds, this
    /// gate's clock), of one ticket or of all, oldest first.
    pub fn own_passages(
        &self,
        ticket_code: Option<&str>,
        since: i64,
    ) -> Result<Vec<OwnPassage>, StoreError> {
        // (One statement each way, so that one ticket's passages are found by its index.)
        let mut statement = self.connection.prepare_cached(match ticket_code {
            Some(_) => {
                "SELECT ticket_code, direction, decided_at, occupancy_change, mode, upload_state, uploaded_at \
                 FROM decisions WHERE ticket_code = ?2 AND occupancy_change IS NOT NULL AND code = 'SUCCESS' \
                 AND decided_at >= ?1 ORDER BY decided_at"
            }
            None => {
                "SELECT ticket_code, direction, decided_at, occupancy_change, mode, upload_state, uploaded_at \
                 FROM decisions WHERE occupancy_change IS NOT NULL AND code = 'SUCCESS' AND decided_at >= ?1 \
                 AND ?2 IS NULL ORDER BY decided_at"
            }
        })?;
        let rows = statement
            .query_map(params![rfc3339_at(since), ticket_code], |row| {
                Ok((
                    row.get::<_, Option<String>>(0)?,
                    direction_column(row, 1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, Option<String>>(5)?,
                    row.get::<_, Option<String>>(6)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(
                |(ticket_code, direction, decided_at, change, mode, upload_state, uploaded_at)| {
                    let at = unix_seconds(&decided_at)?;
                    let central_since = match (Mode::parse(&mode), upload_state.as_deref()) {
                        (Mode::Offline, Some("pending")) => None,
                        (Mode::Offline, _) => {
                            uploaded_at.as_deref().map(unix_seconds).transpose()?
                        }
                        _ => Some(at),
                    };
                    Ok(OwnPassage {
                        ticket_code,
                        direction,
                        at,
                        change,
                        central_since,
                    })
                },
            )
            .collect()
    }

    /// Peers' passages at `venue` (entries, re-entries and exits at their gates), received
    /// at or after `since` (Unix seconds, this gate's clock), of one ticket or of all. An
    /// acceptance that names no venue (a peer of an older version, or one whose location is
    /// in none) counts as an entry that took a place when it is of the venue's entry
    /// function.
    pub fn peer_passages(
        &self,
        venue: &SyncedVenue,
        ticket_code: Option<&str>,
        since: i64,
    ) -> Result<Vec<PeerPassage>, StoreError> {
        // (One statement each way, so that one ticket's passages are found by its index.)
        let mut statement = self.connection.prepare_cached(match ticket_code {
            Some(_) => {
                "SELECT ticket_code, direction, decided_at, coalesce(occupancy_change, 1) FROM peer_acceptances \
                 WHERE ticket_code = ?3 AND received_at >= ?2 \
                 AND ((venue_code = ?4 AND occupancy_change IS NOT NULL) \
                      OR (venue_code IS NULL AND function_code = ?1 AND direction = 'entry'))"
            }
            None => {
                "SELECT ticket_code, direction, decided_at, coalesce(occupancy_change, 1) FROM peer_acceptances \
                 WHERE received_at >= ?2 AND ?3 IS NULL \
                 AND ((venue_code = ?4 AND occupancy_change IS NOT NULL) \
                      OR (venue_code IS NULL AND function_code = ?1 AND direction = 'entry'))"
            }
        })?;
        let rows = statement.query_map(
            params![
                venue.entry_function.as_str(),
                rfc3339_at(since),
                ticket_code,
                venue.venue_code
            ],
            |row| {
                Ok(PeerPassage {
                    ticket_code: row.get(0)?,
                    direction: direction_column(row, 1)?,
                    at: unix_seconds(&row.get::<_, String>(2)?).ok(),
                    change: row.get(3)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Keeps the merchant's time zone the feed named.
    pub fn set_merchant_zone(&self, name: &str) -> Result<(), StoreError> {
        set_state(&self.connection, "merchant_time_zone", name)
    }

    /// The merchant's time zone as the feed last named it; the contract's default
    /// (`Asia/Shanghai`) before any feed named one. A name this build does not know is the
    /// store's fault to report, not a zone to guess.
    pub fn merchant_zone(&self) -> Result<stile_shared::MerchantZone, StoreError> {
        match self.get_state("merchant_time_zone")? {
            None => Ok(stile_shared::MerchantZone::default()),
            Some(name) => stile_shared::MerchantZone::parse(&name)
                .ok_or_else(|| StoreError::Malformed(format!("time zone {name:?}"))),
        }
    }

    pub fn ticket_count(&self) -> Result<i64, StoreError> {
        Ok(self
            .connection
            .query_row("SELECT count(*) FROM tickets", [], |row| row.get(0))?)
    }

    pub fn get_state(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .connection
            .query_row(
                "SELECT value FROM sync_state WHERE name = ?1",
                params![name],
                |row| row.get(0),
            )
            .optional()?)
    }

    pub fn set_state(&mut self, name: &str, value: &str) -> Result<(), StoreError> {
        set_state(&self.connection, name, value)
    }

    pub fn delete_state(&mut self, name: &str) -> Result<(), StoreError> {
        self.connection
            .execute("DELETE FROM sync_state WHERE name = ?1", params![name])?;
        Ok(())
    }

    /// The key set last fetched from the central.
    pub fn keys(&self) -> Result<Option<JwkSet>, StoreError> {
        self.get_state("jwks")?
            .map(|text| {
                serde_json::from_str(&text)
                    .map_err(|error| StoreError::Malformed(error.to_string()))
            })
            .transpose()
    }

    /// The oldest queued offline acceptances.
    pub fn pending_uploads(
        &mut self,
        limit: usize,
        now: i64,
    ) -> Result<Vec<PendingUpload>, StoreError> {
        // An offline exit rests on an entry, a re-entry on an exit, often a peer's: the
        // central decides an upload on what it holds when it arrives, so each waits until the
        // feed shows the passage it rests on (the central has it), for at most
        // PASSAGE_UPLOAD_HOLD_SECS from its first chance to go.
        self.connection.execute(
            &format!(
                "UPDATE decisions SET upload_held_since = ?1 WHERE upload_state = 'pending' \
                 AND upload_held_since IS NULL AND {RESTING}"
            ),
            params![rfc3339_at(now)],
        )?;
        let mut statement = self.connection.prepare_cached(&format!(
            "SELECT scan_id, qr_token, function_code, decided_at, operator_id, direction FROM decisions \
             WHERE upload_state = 'pending' AND NOT ({RESTING} AND upload_held_since > ?2 AND {NOT_SHOWN}) \
             ORDER BY decided_at LIMIT ?1"
        ))?;
        let hold_from = rfc3339_at(now - PASSAGE_UPLOAD_HOLD_SECS);
        let rows = statement.query_map(params![limit as i64, hold_from], |row| {
            Ok(PendingUpload {
                scan_id: row.get(0)?,
                qr_token: row.get::<_, Option<String>>(1)?.unwrap_or_default(),
                function_code: row.get(2)?,
                decided_at: row.get(3)?,
                operator_id: row.get::<_, Option<i64>>(4)?.unwrap_or_default(),
                direction: direction_column(row, 5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records the central's answer to an upload. The token is dropped once the decision is
    /// settled.
    pub fn mark_uploaded(
        &mut self,
        scan_id: &str,
        state: &str,
        code: &str,
        uploaded_at: &str,
    ) -> Result<(), StoreError> {
        self.connection.execute(
            "UPDATE decisions SET upload_state = ?2, upload_code = ?3, uploaded_at = ?4, qr_token = NULL \
             WHERE scan_id = ?1",
            params![scan_id, state, code, uploaded_at],
        )?;
        Ok(())
    }

    pub fn queue_state(&self) -> Result<QueueState, StoreError> {
        let (depth, oldest, held): (i64, Option<String>, i64) = self.connection.query_row(
            &format!(
                "SELECT count(*), min(decided_at), count(*) FILTER (WHERE {RESTING} AND {NOT_SHOWN}) \
                 FROM decisions WHERE upload_state = 'pending'"
            ),
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )?;
        let conflicts: i64 = self.connection.query_row(
            "SELECT count(*) FROM decisions WHERE upload_state = 'conflict'",
            [],
            |row| row.get(0),
        )?;
        Ok(QueueState {
            depth,
            oldest_decided_at: oldest,
            conflicts,
            held,
        })
    }

    /// The newest decisions, newest first.
    pub fn recent(&self, limit: usize) -> Result<Vec<DecisionRecord>, StoreError> {
        self.decisions_where("1 = 1", limit)
    }

    /// Offline acceptances the central could not apply, newest first.
    pub fn conflicts(&self, limit: usize) -> Result<Vec<DecisionRecord>, StoreError> {
        self.decisions_where("upload_state = 'conflict'", limit)
    }

    fn decisions_where(
        &self,
        filter: &str,
        limit: usize,
    ) -> Result<Vec<DecisionRecord>, StoreError> {
        let mut statement = self.connection.prepare(&format!(
            "SELECT scan_id, jti, ticket_code, function_code, code, mode, decided_at, latency_ms, operator_id, \
             upload_state, upload_code, peer_device, direction, occupancy_change, redeemed FROM decisions \
             WHERE {filter} ORDER BY decided_at DESC, rowid DESC LIMIT ?1"
        ))?;
        let rows = statement.query_map(params![limit as i64], |row| {
            Ok(DecisionRecord {
                scan_id: row.get(0)?,
                jti: row.get(1)?,
                ticket_code: row.get(2)?,
                function_code: row.get(3)?,
                code: row.get(4)?,
                mode: Mode::parse(&row.get::<_, String>(5)?),
                decided_at: row.get(6)?,
                latency_ms: row.get(7)?,
                qr_token: None,
                operator_id: row.get(8)?,
                upload_state: row.get(9)?,
                upload_code: row.get(10)?,
                peer_device: row.get(11)?,
                direction: direction_column(row, 12)?,
                occupancy_change: row.get(13)?,
                redeemed: row.get(14)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Counts of decisions by mode and code (for reconciliation in tests and the status page).
    pub fn accepted_count(&self) -> Result<i64, StoreError> {
        Ok(self
            .connection
            .query_row("SELECT count(*) FROM accepted", [], |row| row.get(0))?)
    }
}

fn upsert_tickets(connection: &Connection, tickets: &[SyncedTicket]) -> Result<(), StoreError> {
    let mut upsert = connection.prepare_cached(
        "INSERT INTO tickets (ticket_code, body) VALUES (?1, ?2) \
         ON CONFLICT (ticket_code) DO UPDATE SET body = excluded.body",
    )?;
    for ticket in tickets {
        let body = serde_json::to_string(ticket)
            .map_err(|error| StoreError::Malformed(error.to_string()))?;
        upsert.execute(params![ticket.ticket_code, body])?;
    }
    Ok(())
}

/// A direction column (written by this store as `entry` or `exit`).
fn direction_column(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Direction> {
    let text: String = row.get(index)?;
    Direction::parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            format!("direction {text:?}").into(),
        )
    })
}

/// Unix seconds as the store writes times (RFC 3339 UTC with milliseconds, so a bound
/// compares as text with the stored times).
fn rfc3339_at(at: i64) -> String {
    chrono::DateTime::from_timestamp(at, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn set_state(connection: &Connection, name: &str, value: &str) -> Result<(), StoreError> {
    connection.execute(
        "INSERT INTO sync_state (name, value) VALUES (?1, ?2) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        params![name, value],
    )?;
    Ok(())
}

/// An RFC 3339 instant this store wrote, as Unix seconds.
fn unix_seconds(at: &str) -> Result<i64, StoreError> {
    chrono::DateTime::parse_from_rfc3339(at)
        .map(|at| at.timestamp())
        .map_err(|error| StoreError::Malformed(format!("instant {at:?}: {error}")))
}

/// A synced ticket's snapshot for the shared decision function, with the uses the copy does
/// not show yet (this device's own and its peers', Unix seconds) applied: taken off the
/// counts, and added to the entitlement's recent uses its rules read.
pub fn snapshot_for_decision(
    ticket: &SyncedTicket,
    function_code: &FunctionCode,
    unsynced_uses: &[i64],
) -> stile_shared::TicketSnapshot {
    stile_shared::TicketSnapshot {
        status: ticket.status,
        current_jti: ticket.current_jti.clone(),
        current_issued_at: ticket.current_issued_at,
        knowledge: stile_shared::QrKnowledge::AsSynced,
        entitlements: ticket
            .entitlements
            .iter()
            .map(|e: &EntitlementView| {
                let chosen = &e.function_code == function_code;
                let synced = ticket
                    .rules
                    .iter()
                    .find(|rules| rules.function_code == e.function_code);
                let mut recent_uses = synced.map(|r| r.recent_uses.clone()).unwrap_or_default();
                if chosen {
                    recent_uses.extend_from_slice(unsynced_uses);
                }
                let unsynced = if chosen { unsynced_uses.len() } else { 0 };
                stile_shared::EntitlementSnapshot {
                    function_code: e.function_code.clone(),
                    total_uses: e.total_uses,
                    remaining_uses: (i64::from(e.remaining_uses) - unsynced as i64).max(0) as i32,
                    rules: synced.map(|r| r.rules.clone()).unwrap_or_default(),
                    recent_uses,
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stile_shared::token::Jti;
    use stile_shared::{Channel, TicketStatus};

    /// A venue `code` with the entry function `ENTRY`, room for 500, 42 inside.
    fn venue(code: &str) -> SyncedVenue {
        SyncedVenue {
            venue_code: code.into(),
            name: "乐园".into(),
            entry_function: FunctionCode::parse("ENTRY").expect("code"),
            capacity: Some(500),
            inside: 42,
            as_of: 1_796_180_000,
        }
    }

    fn record(scan_id: &str, mode: Mode, code: &str, upload: Option<&str>) -> DecisionRecord {
        DecisionRecord {
            scan_id: scan_id.into(),
            jti: Some("AQEBAQEBAQEBAQEBAQEBAQ".into()),
            ticket_code: Some("TK-1".into()),
            function_code: "ENTRY".into(),
            code: code.into(),
            mode,
            decided_at: format!("2026-11-24T10:00:0{}Z", scan_id.len() % 10),
            latency_ms: 1.0,
            qr_token: Some("token".into()),
            operator_id: Some(1),
            upload_state: upload.map(str::to_owned),
            upload_code: None,
            peer_device: None,
            direction: Direction::Entry,
            occupancy_change: None,
            redeemed: true,
        }
    }

    #[test]
    fn held_online_successes_go_again_when_the_database_epoch_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("agent.db")).expect("open");
        let mut old = record("old", Mode::Online, "SUCCESS", Some(HELD));
        old.decided_at = "2026-11-20T10:00:00.000Z".into();
        let mut recent = record("recent", Mode::Online, "SUCCESS", Some(HELD));
        recent.decided_at = "2026-11-24T10:00:00.000Z".into();
        store.record(&old).expect("record");
        store.record(&recent).expect("record");
        let since = "2026-11-23T10:00:00.000Z";
        let held = |store: &Store, scan_id: &str| {
            store
                .connection
                .query_row(
                    "SELECT upload_state, qr_token FROM decisions WHERE scan_id = ?1",
                    params![scan_id],
                    |row| {
                        Ok((
                            row.get::<_, Option<String>>(0)?,
                            row.get::<_, Option<String>>(1)?,
                        ))
                    },
                )
                .expect("row")
        };
        // The first epoch a gate sees is noted, nothing is sent; the old one lets its token go.
        assert_eq!(store.note_database_epoch("A", since).expect("note"), 0);
        assert_eq!(held(&store, "old"), (None, None));
        assert_eq!(
            held(&store, "recent"),
            (Some(HELD.into()), Some("token".into()))
        );
        assert_eq!(store.note_database_epoch("A", since).expect("note"), 0);
        assert!(store
            .pending_uploads(10, chrono::Utc::now().timestamp())
            .expect("pending")
            .is_empty());
        // Another database answers: the held one goes again, with its token and scan_id.
        assert_eq!(store.note_database_epoch("B", since).expect("note"), 1);
        let pending = store
            .pending_uploads(10, chrono::Utc::now().timestamp())
            .expect("pending");
        assert_eq!(pending.len(), 1);
        assert_eq!(
            (pending[0].scan_id.as_str(), pending[0].qr_token.as_str()),
            ("recent", "token")
        );
        // An online success is no use this gate must take off its copy's counts.
        assert!(store
            .unsynced_uses("TK-1", "ENTRY")
            .expect("uses")
            .is_empty());
    }

    #[test]
    fn an_offline_acceptance_is_durable_blocks_and_queues() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state/agent.db");
        {
            let mut store = Store::open(&path).expect("open");
            store
                .record(&record("s1", Mode::Offline, "SUCCESS", Some("pending")))
                .expect("record");
            store
                .record(&record("s2", Mode::Local, "INVALID_QR", None))
                .expect("record");
        }
        // Reopened: still there.
        let mut store = Store::open(&path).expect("reopen");
        assert!(store
            .is_accepted("AQEBAQEBAQEBAQEBAQEBAQ", "ENTRY")
            .expect("query"));
        assert!(!store
            .is_accepted("AQEBAQEBAQEBAQEBAQEBAQ", "MEAL")
            .expect("query"));
        let pending = store
            .pending_uploads(10, chrono::Utc::now().timestamp())
            .expect("pending");
        assert_eq!(pending.len(), 1);
        assert_eq!(store.unsynced_uses("TK-1", "ENTRY").expect("uses").len(), 1);
        store
            .mark_uploaded("s1", "conflict", "ALREADY_REDEEMED", "2026-11-24T10:01:00Z")
            .expect("mark");
        assert!(store
            .pending_uploads(10, chrono::Utc::now().timestamp())
            .expect("pending")
            .is_empty());
        assert_eq!(store.queue_state().expect("queue").conflicts, 1);
        assert_eq!(
            store.conflicts(5).expect("conflicts")[0]
                .upload_code
                .as_deref(),
            Some("ALREADY_REDEEMED")
        );
        assert_eq!(store.recent(5).expect("recent").len(), 2);
    }

    #[test]
    fn a_store_of_an_earlier_version_is_upgraded_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.db");
        {
            // A gate's store as the previous release left it: schema 2, an offline
            // acceptance waiting for upload and a refusal.
            let old = Connection::open(&path).expect("open");
            for (from, step) in MIGRATIONS[..2].iter().enumerate() {
                old.execute_batch(&format!(
                    "BEGIN;\n{step}\nPRAGMA user_version = {};\nCOMMIT;",
                    from + 1
                ))
                .expect("old schema");
            }
            old.execute_batch(
                "INSERT INTO decisions (scan_id, jti, ticket_code, function_code, code, mode, decided_at, latency_ms, \
                 qr_token, operator_id, upload_state) VALUES \
                 ('old-1', 'J1', 'TK-1', 'ENTRY', 'SUCCESS', 'offline', '2026-11-24T10:00:00.000Z', 1.0, 'token', 7, 'pending'), \
                 ('old-2', 'J2', 'TK-2', 'ENTRY', 'EXHAUSTED', 'offline', '2026-11-24T10:00:01.000Z', 1.0, NULL, 7, NULL);
                 INSERT INTO accepted (jti, function_code, scan_id) VALUES ('J1', 'ENTRY', 'old-1');
                 INSERT INTO peer_acceptances (device, log, seq, jti, function_code, ticket_code, decided_at, mode, \
                 received_at, message) VALUES ('dev-w', 'L', 1, 'J9', 'ENTRY', 'TK-9', '2026-11-24T10:00:00.000Z', \
                 'offline', '2026-11-24T10:00:00.100Z', 'm');",
            )
            .expect("old rows");
        }
        for _ in 0..2 {
            // Opened twice: the upgrade runs once, the second open finds it done.
            let mut store = Store::open(&path).expect("upgrade");
            let version: i64 = store
                .connection
                .pragma_query_value(None, "user_version", |row| row.get(0))
                .expect("version");
            assert_eq!(version, MIGRATIONS.len() as i64);
            let recent = store.recent(5).expect("recent");
            let old = recent.iter().find(|r| r.scan_id == "old-1").expect("kept");
            assert_eq!(
                (old.direction, old.occupancy_change, old.redeemed),
                (Direction::Entry, None, true),
                "an old success was a redemption, and no passage"
            );
            assert_eq!(
                store.accepted_by("J9", "ENTRY").expect("query"),
                Some(AcceptedBy::Peer("dev-w".into())),
                "a peer's old acceptance still blocks its pair"
            );
            let passages = store
                .peer_passages(&venue("PARK"), Some("TK-9"), 0)
                .expect("passages");
            assert_eq!(
                passages
                    .iter()
                    .map(|p| (p.direction, p.change))
                    .collect::<Vec<_>>(),
                [(Direction::Entry, 1)],
                "and counts as an entry that took a place"
            );
            let refusal = recent.iter().find(|r| r.scan_id == "old-2").expect("kept");
            assert!(!refusal.redeemed);
            assert_eq!(store.unsynced_uses("TK-1", "ENTRY").expect("uses").len(), 1);
            let pending = store
                .pending_uploads(5, chrono::Utc::now().timestamp())
                .expect("pending");
            assert_eq!((pending.len(), pending[0].direction), (1, Direction::Entry));
            assert!(store.own_passages(None, 0).expect("passages").is_empty());
        }
    }

    #[test]
    fn exits_and_reentries_are_passages_that_use_no_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("agent.db")).expect("open");
        let at = |s: &str| format!("2026-12-02T04:00:{s}.000Z");
        let passage = |scan_id: &str, mode, direction, change, redeemed, second: &str| {
            let mut r = record(
                scan_id,
                mode,
                "SUCCESS",
                (mode == Mode::Offline).then_some("pending"),
            );
            r.decided_at = at(second);
            r.direction = direction;
            r.occupancy_change = Some(change);
            r.redeemed = redeemed;
            r.jti = Some(format!("J-{scan_id}"));
            r
        };
        let announce = |seq: u64| format!("signed {seq}");
        // An online first entry, an offline exit, an offline re-entry: each a peer message
        // (the peers' presence and occupancy need all three), a refusal none.
        for (decision, announced) in [
            (
                passage("in", Mode::Online, Direction::Entry, 1, true, "10"),
                true,
            ),
            (
                passage("out", Mode::Offline, Direction::Exit, -1, false, "20"),
                true,
            ),
            (
                passage("back", Mode::Offline, Direction::Entry, 1, false, "30"),
                true,
            ),
        ] {
            let message = store
                .record_announced(&decision, Some(&announce))
                .expect("record");
            assert_eq!(message.is_some(), announced, "{}", decision.scan_id);
        }
        let mut refusal = record("no", Mode::Offline, "NOT_INSIDE", None);
        refusal.direction = Direction::Exit;
        assert_eq!(
            store
                .record_announced(&refusal, Some(&announce))
                .expect("record"),
            None
        );
        assert_eq!(store.own_log_head().expect("head"), 3);
        assert!(store.is_accepted("J-in", "ENTRY").expect("query"));
        assert!(!store.is_accepted("J-out", "ENTRY").expect("query"));
        assert!(!store.is_accepted("J-back", "ENTRY").expect("query"));
        assert!(
            store
                .unsynced_uses("TK-1", "ENTRY")
                .expect("uses")
                .is_empty(),
            "neither the exit nor the re-entry comes off the counts"
        );
        let now = chrono::Utc::now().timestamp();
        let due = |store: &mut Store, now: i64| {
            store
                .pending_uploads(10, now)
                .expect("pending")
                .into_iter()
                .map(|p| (p.scan_id, p.direction))
                .collect::<Vec<_>>()
        };
        // The feed shows the ticket's latest passage as `direction` (at second `second`).
        let feed_shows = |store: &mut Store, direction: Direction, second: &str| {
            let ticket = SyncedTicket {
                ticket_code: "TK-1".into(),
                status: TicketStatus::Used,
                channel: Channel::Ota,
                current_jti: None,
                current_issued_at: None,
                entitlements: vec![],
                redeemed_functions: vec![],
                rules: vec![],
                passage: Some(stile_shared::venue::Passage {
                    direction,
                    at: unix_seconds(&at(second)).expect("time"),
                }),
            };
            upsert_tickets(&store.connection, &[ticket]).expect("feed");
        };
        assert!(
            due(&mut store, now).is_empty(),
            "the feed shows no entry for the exit to rest on, nor an exit for the re-entry"
        );
        assert_eq!(store.queue_state().expect("queue").held, 2);
        assert_eq!(
            due(&mut store, now + PASSAGE_UPLOAD_HOLD_SECS + 1),
            [
                ("out".to_owned(), Direction::Exit),
                ("back".to_owned(), Direction::Entry)
            ],
            "past the hold both go anyway, with their direction"
        );
        feed_shows(&mut store, Direction::Entry, "10");
        assert_eq!(
            due(&mut store, now),
            [("out".to_owned(), Direction::Exit)],
            "the feed shows the entry: the exit goes; the re-entry waits for the exit"
        );
        assert_eq!(store.queue_state().expect("queue").held, 1);
        store
            .mark_uploaded("out", "applied", "SUCCESS", &at("25"))
            .expect("mark");
        assert!(
            due(&mut store, now).is_empty(),
            "the feed shows no exit yet"
        );
        feed_shows(&mut store, Direction::Exit, "20");
        assert_eq!(
            due(&mut store, now),
            [("back".to_owned(), Direction::Entry)],
            "the feed shows the exit: the re-entry goes"
        );
        let t = |s: &str| unix_seconds(&at(s)).expect("time");
        let passages = store.own_passages(Some("TK-1"), t("15")).expect("passages");
        assert_eq!(
            passages,
            [
                OwnPassage {
                    ticket_code: Some("TK-1".into()),
                    direction: Direction::Exit,
                    at: t("20"),
                    change: -1,
                    central_since: Some(t("25")),
                },
                OwnPassage {
                    ticket_code: Some("TK-1".into()),
                    direction: Direction::Entry,
                    at: t("30"),
                    change: 1,
                    central_since: None,
                },
            ],
            "since a bound, in time order; the refusal is no passage"
        );
        let all = store.own_passages(None, 0).expect("passages");
        assert_eq!(all.len(), 3);
        assert_eq!(
            all[0].central_since,
            Some(t("10")),
            "online: from its decision"
        );
        assert!(store
            .own_passages(Some("TK-2"), 0)
            .expect("passages")
            .is_empty());
    }

    #[test]
    fn the_latest_feed_page_names_the_venue_and_peers_entries_are_read_by_function() {
        use stile_shared::peer::{AcceptMode, Acceptance, LogId};
        use stile_shared::Identifier;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("agent.db")).expect("open");
        let park = venue("PARK");
        let page = |venue: Option<SyncedVenue>| TicketFeedPage {
            tickets: vec![],
            next_cursor: "c1".into(),
            complete: true,
            time_zone: Some("Asia/Shanghai".into()),
            venue,
            database_epoch: None,
        };
        assert_eq!(store.venue().expect("venue"), None);
        store
            .apply_page(&page(Some(park.clone())), "2026-12-02T04:00:00.000Z")
            .expect("apply");
        assert_eq!(store.venue().expect("venue"), Some(park.clone()));
        let later = SyncedVenue {
            inside: 43,
            as_of: park.as_of + 5,
            ..park.clone()
        };
        store
            .apply_page(&page(Some(later.clone())), "2026-12-02T04:00:05.000Z")
            .expect("apply");
        assert_eq!(
            store.venue().expect("venue"),
            Some(later),
            "the latest page wins"
        );
        assert_eq!(
            store
                .get_state("last_ticket_sync_at")
                .expect("state")
                .as_deref(),
            Some("2026-12-02T04:00:05.000Z")
        );
        store
            .apply_page(&page(None), "2026-12-02T04:00:10.000Z")
            .expect("apply");
        assert_eq!(
            store.venue().expect("venue"),
            None,
            "the location left its venue"
        );

        let acceptance = |seq: u64, function: &str, ticket: &str, decided_at: &str| Acceptance {
            device: Identifier::parse("dev-west-1").expect("id"),
            merchant: Identifier::parse("M001").expect("id"),
            log: LogId::from_bytes([2; 16]),
            seq,
            jti: Jti::from_bytes([seq as u8; 16]),
            function_code: FunctionCode::parse(function).expect("code"),
            ticket: Identifier::parse(ticket).expect("id"),
            decided_at: decided_at.into(),
            mode: AcceptMode::Offline,
            direction: Direction::Entry,
            redeemed: true,
            venue: None,
            occupancy_change: None,
        };
        let park = Some(Identifier::parse("PARK").expect("id"));
        let zoo = Some(Identifier::parse("ZOO").expect("id"));
        let passed =
            |mut a: Acceptance, direction, redeemed, venue: &Option<Identifier>, change| {
                a.direction = direction;
                a.redeemed = redeemed;
                a.venue = venue.clone();
                a.occupancy_change = Some(change);
                a
            };
        let t = "2026-12-02T04:00:00.000Z";
        for (n, acceptance) in [
            // a peer of an older version: no venue named
            acceptance(1, "ENTRY", "TK-1", t),
            acceptance(2, "MEAL", "TK-1", "2026-12-02T04:00:01.000Z"),
            acceptance(3, "ENTRY", "TK-2", "garbled"),
            // this venue's: an exit, a re-entry, an entry of a ticket inside
            passed(
                acceptance(4, "ENTRY", "TK-3", t),
                Direction::Exit,
                false,
                &park,
                -1,
            ),
            passed(
                acceptance(5, "ENTRY", "TK-3", t),
                Direction::Entry,
                false,
                &park,
                1,
            ),
            passed(
                acceptance(6, "ENTRY", "TK-4", t),
                Direction::Entry,
                true,
                &park,
                0,
            ),
            // another venue's entry
            passed(
                acceptance(7, "ENTRY", "TK-5", t),
                Direction::Entry,
                true,
                &zoo,
                1,
            ),
        ]
        .into_iter()
        .enumerate()
        {
            store
                .insert_peer_acceptance(&acceptance, &format!("m{n}"), "2026-12-02T04:00:02.000Z")
                .expect("insert");
        }
        let all = store
            .peer_passages(&venue("PARK"), None, 0)
            .expect("passages");
        let mut seen: Vec<(String, Direction, i64)> = all
            .iter()
            .map(|p| (p.ticket_code.clone(), p.direction, p.change))
            .collect();
        seen.sort_by(|a, b| a.0.cmp(&b.0).then(a.2.cmp(&b.2)));
        assert_eq!(
            seen,
            [
                ("TK-1".into(), Direction::Entry, 1),
                ("TK-2".into(), Direction::Entry, 1),
                ("TK-3".into(), Direction::Exit, -1),
                ("TK-3".into(), Direction::Entry, 1),
                ("TK-4".into(), Direction::Entry, 0),
            ],
            "this venue's passages and the entries of no venue, not the zoo's nor a meal"
        );
        assert_eq!(
            store
                .peer_passages(&venue("PARK"), Some("TK-1"), 0)
                .expect("passages"),
            [PeerPassage {
                ticket_code: "TK-1".into(),
                direction: Direction::Entry,
                at: unix_seconds(t).ok(),
                change: 1,
            }]
        );
        assert_eq!(
            store
                .peer_passages(&venue("PARK"), Some("TK-2"), 0)
                .expect("passages")[0]
                .at,
            None,
            "an unreadable time is kept as unknown"
        );
        assert_eq!(
            store
                .peer_passages(&venue("ZOO"), Some("TK-5"), 0)
                .expect("passages")
                .len(),
            1
        );
        // A passage that used no count neither blocks its pair nor comes off the counts.
        assert_eq!(
            store
                .accepted_by(Jti::from_bytes([4; 16]).as_str(), "ENTRY")
                .expect("query"),
            None
        );
        assert!(store
            .uses_not_in_copy("TK-3", "ENTRY", None)
            .expect("uses")
            .is_empty());
        let received = unix_seconds("2026-12-02T04:00:02.000Z").expect("time");
        assert!(store
            .peer_passages(&venue("PARK"), None, received + 1)
            .expect("passages")
            .is_empty());
    }

    #[test]
    fn the_feed_moves_the_cursor_with_the_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("agent.db")).expect("open");
        let ticket = SyncedTicket {
            ticket_code: "TK-1".into(),
            status: TicketStatus::Activated,
            channel: Channel::Ota,
            current_jti: Some(Jti::from_bytes([1; 16])),
            current_issued_at: Some(1_764_000_000),
            entitlements: vec![EntitlementView {
                function_code: FunctionCode::parse("ENTRY").expect("code"),
                name: "入园".into(),
                total_uses: 2,
                remaining_uses: 2,
            }],
            redeemed_functions: vec![],
            rules: vec![stile_shared::api::SyncedRules {
                function_code: FunctionCode::parse("ENTRY").expect("code"),
                rules: stile_shared::EntitlementRules {
                    uses_per_day: Some(1),
                    ..Default::default()
                },
                recent_uses: vec![1_763_000_000],
            }],
            passage: None,
        };
        store
            .apply_feed(
                std::slice::from_ref(&ticket),
                "c1",
                "2026-11-24T10:00:00Z",
                true,
            )
            .expect("apply");
        assert_eq!(store.ticket("TK-1").expect("ticket"), Some(ticket.clone()));
        assert_eq!(
            store.get_state("ticket_cursor").expect("cursor").as_deref(),
            Some("c1")
        );
        let snapshot = snapshot_for_decision(
            &ticket,
            &FunctionCode::parse("ENTRY").expect("code"),
            &[1_764_000_100],
        );
        assert_eq!(snapshot.entitlements[0].remaining_uses, 1);
        assert_eq!(snapshot.entitlements[0].rules.uses_per_day, Some(1));
        assert_eq!(
            snapshot.entitlements[0].recent_uses,
            [1_763_000_000, 1_764_000_100],
            "the synced uses and this gate's own"
        );
    }

    #[test]
    fn peer_acceptances_count_like_this_gates_own_until_the_copy_shows_them() {
        use stile_shared::peer::{AcceptMode, Acceptance, LogId};
        use stile_shared::Identifier;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("agent.db")).expect("open");
        let jti = |b: u8| Jti::from_bytes([b; 16]);
        let acceptance = |seq: u64, j: Jti| Acceptance {
            device: Identifier::parse("dev-west-1").expect("id"),
            merchant: Identifier::parse("M001").expect("id"),
            log: LogId::from_bytes([2; 16]),
            seq,
            jti: j,
            function_code: FunctionCode::parse("ENTRY").expect("code"),
            ticket: Identifier::parse("TK-1").expect("id"),
            decided_at: "2026-12-02T10:00:00.000Z".into(),
            mode: AcceptMode::Offline,
            direction: Direction::Entry,
            redeemed: true,
            venue: None,
            occupancy_change: None,
        };
        assert!(store
            .insert_peer_acceptance(&acceptance(1, jti(1)), "m1", "2026-12-02T10:00:00.010Z")
            .expect("insert"));
        assert!(
            !store
                .insert_peer_acceptance(&acceptance(1, jti(1)), "m1", "2026-12-02T10:00:01Z")
                .expect("insert"),
            "the same entry of a peer's log is held once"
        );
        assert_eq!(
            store.accepted_by(jti(1).as_str(), "ENTRY").expect("query"),
            Some(AcceptedBy::Peer("dev-west-1".into()))
        );
        assert_eq!(
            store.accepted_by(jti(1).as_str(), "MEAL").expect("query"),
            None
        );
        let mut copy = SyncedTicket {
            ticket_code: "TK-1".into(),
            status: TicketStatus::Activated,
            channel: Channel::Ota,
            current_jti: Some(jti(1)),
            current_issued_at: Some(1_764_000_000),
            entitlements: vec![],
            redeemed_functions: vec![],
            rules: vec![],
            passage: None,
        };
        assert_eq!(
            store
                .uses_not_in_copy("TK-1", "ENTRY", Some(&copy))
                .expect("uses")
                .len(),
            1
        );
        // Once the synced copy shows the pair redeemed, the central has counted it.
        copy.redeemed_functions = vec![FunctionCode::parse("ENTRY").expect("code")];
        assert_eq!(
            store
                .uses_not_in_copy("TK-1", "ENTRY", Some(&copy))
                .expect("uses")
                .len(),
            0
        );
        // This gate's own acceptance of the same pair is counted once, not twice.
        copy.redeemed_functions.clear();
        let mut own = record("s9", Mode::Offline, "SUCCESS", Some("pending"));
        own.jti = Some(jti(1).as_str().to_owned());
        let announced = store
            .record_announced(&own, Some(&|seq| format!("signed {seq}")))
            .expect("record");
        assert_eq!(announced.as_deref(), Some("signed 1"));
        assert_eq!(
            store
                .uses_not_in_copy("TK-1", "ENTRY", Some(&copy))
                .expect("uses")
                .len(),
            1
        );
        assert_eq!(
            store.accepted_by(jti(1).as_str(), "ENTRY").expect("query"),
            Some(AcceptedBy::Here)
        );
        // The own log: numbered without gaps, served after a point; a refusal is not logged.
        let mut refusal = record("s10", Mode::Local, "INVALID_QR", None);
        refusal.jti = Some(jti(5).as_str().to_owned());
        assert_eq!(
            store
                .record_announced(&refusal, Some(&|seq| format!("signed {seq}")))
                .expect("record"),
            None
        );
        let mut second = record("s11", Mode::Online, "SUCCESS", None);
        second.jti = Some(jti(6).as_str().to_owned());
        store
            .record_announced(&second, Some(&|seq| format!("signed {seq}")))
            .expect("record");
        assert_eq!(
            store.own_log_after(0, 10).expect("log"),
            (vec!["signed 1".to_owned(), "signed 2".to_owned()], 2)
        );
        assert_eq!(
            store.own_log_after(1, 10).expect("log").0,
            vec!["signed 2".to_owned()]
        );
    }
}
