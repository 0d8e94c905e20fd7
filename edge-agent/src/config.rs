//! Agent settings: a TOML file, then `STILE_AGENT_*` environment variables. Parsing is a
//! function over the file's text and a key/value source, so it is tested without touching
//! the process environment. `edge-agent check-config` prints the resolved settings (secrets
//! masked) or the first problem, naming the setting.

use crate::capture::decode::DecoderKind;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use stile_shared::peer::{PeerAddress, PeerKey};
use stile_shared::venue::Direction;
use stile_shared::Identifier;

/// Where frames come from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceConfig {
    /// A V4L2 camera (needs the `camera` build feature).
    Camera {
        #[serde(default)]
        device: u32,
        #[serde(default = "default_width")]
        width: u32,
        #[serde(default = "default_height")]
        height: u32,
        #[serde(default = "default_fps")]
        fps: u32,
        #[serde(default = "default_format")]
        format: String,
    },
    /// Image files: `watch` a spool directory, or `replay` a directory once (or looped).
    Directory {
        path: PathBuf,
        #[serde(default)]
        mode: DirectoryMode,
        #[serde(default)]
        fps: Option<f32>,
        #[serde(default)]
        looped: bool,
    },
    /// Lines from a hardware scan engine (a device path, or `-` for stdin).
    Lines { path: PathBuf },
    /// No frame source: scans come only through the local API (`POST /api/scan`).
    None,
}

fn default_width() -> u32 {
    1280
}
fn default_height() -> u32 {
    720
}
fn default_fps() -> u32 {
    30
}
fn default_format() -> String {
    "mjpeg".into()
}

/// How a directory source reads its files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DirectoryMode {
    /// A spool: files appear (renamed in), each is read once.
    #[default]
    Watch,
    /// The files there now, in name order, once or looped.
    Replay,
}

impl<'de> Deserialize<'de> for DirectoryMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // The message names the key: inside the tagged `[source]` table the TOML error
        // would otherwise point only at the table.
        match String::deserialize(deserializer)?.as_str() {
            "watch" => Ok(DirectoryMode::Watch),
            "replay" => Ok(DirectoryMode::Replay),
            other => Err(serde::de::Error::custom(format!(
                "source.mode {other:?} is neither \"watch\" nor \"replay\""
            ))),
        }
    }
}

/// When the gate may decide alone while the central is unreachable.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OfflinePolicy {
    /// Oldest synced ticket state still trusted.
    pub max_state_age_secs: u64,
    pub allow_miniapp: bool,
    pub allow_ota: bool,
    /// Largest |clock offset| from the central still trusted to judge expiry.
    pub max_clock_offset_secs: i64,
    /// Oldest occupancy figure of the venue (the feed's `venue.as_of`) on which an entry
    /// that takes a place at a venue with a capacity is still decided offline; older, such
    /// an entry is `OFFLINE_UNVERIFIABLE` (the gate cannot know whether there is room).
    pub occupancy_max_age_secs: u64,
    /// How long an online `SUCCESS` keeps its token in the store, to be uploaded again if
    /// the central's database changes (a restore, a standby promoted) within that time.
    pub hold_online_secs: u64,
}

impl Default for OfflinePolicy {
    fn default() -> Self {
        OfflinePolicy {
            max_state_age_secs: 3600,
            allow_miniapp: true,
            allow_ota: true,
            max_clock_offset_secs: 30,
            occupancy_max_age_secs: 300,
            hold_online_secs: 86_400,
        }
    }
}

/// Operator credentials for a gate that logs in by itself at start (optional; otherwise the
/// operator logs in on the gate display page).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorLogin {
    pub username: String,
    pub password: String,
}

/// How the gate proves to the central that it is itself.
#[derive(Clone)]
pub enum DeviceCredential {
    /// A secret configured as it is (`device_secret`).
    Secret(String),
    /// A one-time enrollment code (`enrollment_code`): exchanged at the first start for the
    /// secret, which is kept in the state directory from then on.
    Enrollment(String),
}

impl std::fmt::Debug for DeviceCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceCredential::Secret(secret) => {
                write!(
                    f,
                    "device_secret (set, {} characters)",
                    secret.chars().count()
                )
            }
            DeviceCredential::Enrollment(_) => f.write_str("enrollment_code (set)"),
        }
    }
}

/// `[peers]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeersFile {
    listen: Option<String>,
    advertise: Option<String>,
    merchant: Option<String>,
    pull_interval_ms: Option<u64>,
    push_timeout_ms: Option<u64>,
    #[serde(default, rename = "static")]
    static_peers: Vec<StaticPeerFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticPeerFile {
    device_id: String,
    address: String,
    public_key: String,
}

/// A peer named in the settings (for a site without a central yet, or beside the central's
/// list).
#[derive(Debug, Clone, PartialEq)]
pub struct StaticPeer {
    pub device_id: Identifier,
    pub address: PeerAddress,
    pub key: PeerKey,
}

/// The venue peers (see [`crate::peers`]): on when `[peers]` names a `listen` address.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerSettings {
    /// Where this gate serves its peers (separate from the status page's `listen`).
    pub listen: SocketAddr,
    /// The address registered with the central for the other gates; without it the
    /// central takes the address it sees this gate's requests come from, with the port of
    /// `listen`.
    pub advertise: Option<PeerAddress>,
    /// The merchant, for a site that has only static peers (otherwise the central says).
    pub merchant: Option<Identifier>,
    /// How often each peer's log is pulled (catch-up after a partition or a restart).
    pub pull_interval: Duration,
    /// How long one push or pull may take before the peer counts as down.
    pub push_timeout: Duration,
    pub static_peers: Vec<StaticPeer>,
}

impl PeersFile {
    fn resolve(self) -> Result<Option<PeerSettings>, ConfigError> {
        let Some(listen_raw) = self.listen else {
            if !self.static_peers.is_empty() {
                return Err(invalid("peers.listen", "static peers need a peer listener"));
            }
            return Ok(None);
        };
        let listen = listen_raw.parse().map_err(|_| {
            invalid(
                "peers.listen",
                format!("{listen_raw:?} is not an address like 0.0.0.0:9092"),
            )
        })?;
        let advertise = self
            .advertise
            .map(|raw| {
                PeerAddress::parse(&raw)
                    .map_err(|error| invalid("peers.advertise", error.to_string()))
            })
            .transpose()?;
        let merchant = self
            .merchant
            .map(|raw| {
                Identifier::parse(&raw)
                    .map_err(|error| invalid("peers.merchant", format!("{raw:?} {error}")))
            })
            .transpose()?;
        let mut static_peers = Vec::new();
        for peer in self.static_peers {
            static_peers.push(StaticPeer {
                device_id: Identifier::parse(&peer.device_id).map_err(|error| {
                    invalid(
                        "peers.static.device_id",
                        format!("{:?} {error}", peer.device_id),
                    )
                })?,
                address: PeerAddress::parse(&peer.address)
                    .map_err(|error| invalid("peers.static.address", error.to_string()))?,
                key: PeerKey::parse(&peer.public_key)
                    .map_err(|error| invalid("peers.static.public_key", error.to_string()))?,
            });
        }
        Ok(Some(PeerSettings {
            listen,
            advertise,
            merchant,
            pull_interval: Duration::from_millis(in_range(
                self.pull_interval_ms.unwrap_or(2000),
                100,
                60_000,
                "peers.pull_interval_ms",
            )?),
            push_timeout: Duration::from_millis(in_range(
                self.push_timeout_ms.unwrap_or(300),
                20,
                5000,
                "peers.push_timeout_ms",
            )?),
            static_peers,
        }))
    }
}

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    device_id: Option<String>,
    device_secret: Option<String>,
    enrollment_code: Option<String>,
    central_url: Option<String>,
    venue_code: Option<String>,
    function_code: Option<String>,
    direction: Option<String>,
    state_dir: Option<PathBuf>,
    listen: Option<String>,
    online_deadline_ms: Option<u64>,
    sync_interval_secs: Option<u64>,
    key_refresh_secs: Option<u64>,
    upload_batch: Option<usize>,
    debounce_secs: Option<u64>,
    decision_clear_secs: Option<u64>,
    watchdog_stall_secs: Option<u64>,
    api_token: Option<String>,
    shutdown_grace_secs: Option<u64>,
    miniapp_ttl_secs: Option<i64>,
    clock_skew_secs: Option<i64>,
    decoders: Option<Vec<DecoderKind>>,
    source: Option<SourceConfig>,
    offline: Option<OfflinePolicy>,
    operator: Option<OperatorLogin>,
    peers: Option<PeersFile>,
}

/// Every setting of the agent, resolved.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub device_id: Identifier,
    pub credential: DeviceCredential,
    pub central_url: String,
    pub venue_code: Identifier,
    /// The gate's entitlement (switchable on the device).
    pub function_code: stile_shared::FunctionCode,
    /// Which way this gate lets people through its venue (`direction = "entry"`, the
    /// default, or `"exit"`): an exit gate records exits of tickets inside and redeems
    /// nothing.
    pub direction: Direction,
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub online_deadline: Duration,
    pub sync_interval: Duration,
    pub key_refresh: Duration,
    pub upload_batch: usize,
    pub debounce: Duration,
    /// How long the gate display shows a decision before it clears.
    pub decision_clear: Duration,
    /// A pipeline stage busy this long with one item stops the watchdog pings.
    pub watchdog_stall: Duration,
    /// The Bearer token of `POST /api/scan`; without one that endpoint is closed.
    pub api_token: Option<String>,
    pub shutdown_grace: Duration,
    pub token_policy: stile_shared::TokenPolicy,
    pub decoders: Vec<DecoderKind>,
    pub source: SourceConfig,
    pub offline: OfflinePolicy,
    pub operator: Option<OperatorLogin>,
    /// The venue peers; `None` when off.
    pub peers: Option<PeerSettings>,
}

/// A bad setting, named.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file: {0}")]
    Parse(String),
    #[error("setting {name}: {message}")]
    Invalid { name: &'static str, message: String },
    #[error("setting {0} is required (config file or STILE_AGENT_{1})")]
    Missing(&'static str, &'static str),
}

fn invalid(name: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        message: message.into(),
    }
}

/// `value` when `min <= value <= max`, else a refusal naming the setting and the range.
fn in_range<T: PartialOrd + std::fmt::Display>(
    value: T,
    min: T,
    max: T,
    name: &'static str,
) -> Result<T, ConfigError> {
    if value < min || value > max {
        return Err(invalid(
            name,
            format!("{value} is out of range: {min} to {max}"),
        ));
    }
    Ok(value)
}

/// An http(s) URL with a host; the path (if any) is kept without its trailing slash.
fn parse_central_url(raw: &str) -> Result<String, ConfigError> {
    let url = reqwest::Url::parse(raw)
        .map_err(|error| invalid("central_url", format!("{raw:?} is not a URL: {error}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(
            "central_url",
            "must start with http:// or https://",
        ));
    }
    // (The URL parser reads "http:///x" as host "x": a host must follow "//" directly.)
    let after_scheme = raw
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    if url.host_str().is_none_or(str::is_empty) || after_scheme.starts_with('/') {
        return Err(invalid("central_url", format!("{raw:?} names no host")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("central_url", "must not carry a query or fragment"));
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

/// A directory source's path must be there (a spool must be a directory); a scan engine's
/// device must exist unless it is `-` (stdin).
fn check_source(source: &SourceConfig) -> Result<(), ConfigError> {
    match source {
        SourceConfig::Directory {
            path, mode, fps, ..
        } => {
            let meta = std::fs::metadata(path)
                .map_err(|error| invalid("source.path", format!("{}: {error}", path.display())))?;
            if *mode == DirectoryMode::Watch && !meta.is_dir() {
                return Err(invalid(
                    "source.path",
                    format!(
                        "{} is not a directory (a watched spool must be)",
                        path.display()
                    ),
                ));
            }
            if let Some(fps) = fps {
                if !(*fps > 0.0 && *fps <= 120.0) {
                    return Err(invalid(
                        "source.fps",
                        format!("{fps} is out of range: above 0 to 120"),
                    ));
                }
            }
            Ok(())
        }
        SourceConfig::Lines { path } if path.as_os_str() != "-" => std::fs::metadata(path)
            .map(|_| ())
            .map_err(|error| invalid("source.path", format!("{}: {error}", path.display()))),
        SourceConfig::Camera {
            width, height, fps, ..
        } => {
            in_range(*width, 160, 7680, "source.width")?;
            in_range(*height, 120, 4320, "source.height")?;
            in_range(*fps, 1, 120, "source.fps")?;
            Ok(())
        }
        _ => Ok(()),
    }
}

impl AgentConfig {
    /// Resolves the file's text with environment overrides on top.
    pub fn parse<I, K, V>(text: &str, env: I) -> Result<AgentConfig, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut file: FileConfig =
            toml::from_str(text).map_err(|error| ConfigError::Parse(error.to_string()))?;
        for (key, value) in env {
            let value = value.as_ref().to_owned();
            match key.as_ref() {
                "STILE_AGENT_DEVICE_ID" => file.device_id = Some(value),
                "STILE_AGENT_DEVICE_SECRET" => file.device_secret = Some(value),
                "STILE_AGENT_ENROLLMENT_CODE" => file.enrollment_code = Some(value),
                "STILE_AGENT_CENTRAL_URL" => file.central_url = Some(value),
                "STILE_AGENT_VENUE_CODE" => file.venue_code = Some(value),
                "STILE_AGENT_FUNCTION_CODE" => file.function_code = Some(value),
                "STILE_AGENT_DIRECTION" => file.direction = Some(value),
                "STILE_AGENT_STATE_DIR" => file.state_dir = Some(value.into()),
                "STILE_AGENT_LISTEN" => file.listen = Some(value),
                "STILE_AGENT_API_TOKEN" => file.api_token = Some(value),
                "STILE_AGENT_OPERATOR_PASSWORD" => {
                    if let Some(operator) = file.operator.as_mut() {
                        operator.password = value;
                    }
                }
                _ => {}
            }
        }
        let required = |value: Option<String>, name, env| {
            value
                .filter(|v| !v.trim().is_empty())
                .ok_or(ConfigError::Missing(name, env))
        };
        let central_url =
            parse_central_url(&required(file.central_url, "central_url", "CENTRAL_URL")?)?;
        let identifier = |value: String, name: &'static str| {
            Identifier::parse(&value).map_err(|error| invalid(name, format!("{value:?} {error}")))
        };
        let device_id = identifier(
            required(file.device_id, "device_id", "DEVICE_ID")?,
            "device_id",
        )?;
        let venue_code = identifier(
            required(file.venue_code, "venue_code", "VENUE_CODE")?,
            "venue_code",
        )?;
        let min_secret = stile_shared::domain::MIN_SECRET_LEN;
        let secret = file.device_secret.filter(|v| !v.trim().is_empty());
        let code = file.enrollment_code.filter(|v| !v.trim().is_empty());
        let credential = match (secret, code) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "device_secret",
                    "set device_secret or enrollment_code, not both",
                ))
            }
            (Some(secret), None) if secret.chars().count() < min_secret => {
                return Err(invalid(
                    "device_secret",
                    format!("must be at least {min_secret} characters"),
                ))
            }
            (Some(secret), None) => DeviceCredential::Secret(secret),
            (None, Some(code)) if code.chars().count() < min_secret => {
                return Err(invalid(
                    "enrollment_code",
                    format!("must be at least {min_secret} characters"),
                ))
            }
            (None, Some(code)) => DeviceCredential::Enrollment(code),
            (None, None) => return Err(ConfigError::Missing("device_secret", "DEVICE_SECRET")),
        };
        let function_raw = file.function_code.unwrap_or_else(|| "ENTRY".into());
        let function_code = stile_shared::FunctionCode::parse(&function_raw)
            .map_err(|error| invalid("function_code", error.to_string()))?;
        let direction = match file.direction.as_deref().map(str::trim) {
            None => Direction::Entry,
            Some(raw) => Direction::parse(raw).ok_or_else(|| {
                invalid(
                    "direction",
                    format!("{raw:?} is neither \"entry\" nor \"exit\""),
                )
            })?,
        };
        let listen_raw = file.listen.unwrap_or_else(|| "127.0.0.1:9090".into());
        let listen = listen_raw.parse().map_err(|_| {
            invalid(
                "listen",
                format!("{listen_raw:?} is not an address like 127.0.0.1:9090"),
            )
        })?;
        let decoders = file
            .decoders
            .unwrap_or_else(|| vec![DecoderKind::Rxing, DecoderKind::RqrrHalf]);
        if decoders.is_empty() {
            return Err(invalid("decoders", "name at least one decoder"));
        }
        let offline = file.offline.unwrap_or_default();
        in_range(
            offline.max_clock_offset_secs,
            0,
            3600,
            "offline.max_clock_offset_secs",
        )?;
        in_range(
            offline.max_state_age_secs,
            1,
            30 * 86_400,
            "offline.max_state_age_secs",
        )?;
        in_range(
            offline.occupancy_max_age_secs,
            1,
            86_400,
            "offline.occupancy_max_age_secs",
        )?;
        in_range(
            offline.hold_online_secs,
            60,
            30 * 86_400,
            "offline.hold_online_secs",
        )?;
        let source = file.source.unwrap_or(SourceConfig::None);
        check_source(&source)?;
        let api_token = file.api_token.filter(|token| !token.is_empty());
        if let Some(token) = &api_token {
            if token.chars().count() < 16 || token.chars().any(char::is_whitespace) {
                return Err(invalid(
                    "api_token",
                    "must be at least 16 characters, without spaces",
                ));
            }
        }
        let config = AgentConfig {
            device_id,
            credential,
            central_url,
            venue_code,
            function_code,
            direction,
            state_dir: file
                .state_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/stile-agent")),
            listen,
            // Within the gate's 1 s promise, whatever the uplink does.
            online_deadline: Duration::from_millis(in_range(
                file.online_deadline_ms.unwrap_or(800),
                50,
                900,
                "online_deadline_ms",
            )?),
            sync_interval: Duration::from_secs(in_range(
                file.sync_interval_secs.unwrap_or(5),
                1,
                3600,
                "sync_interval_secs",
            )?),
            key_refresh: Duration::from_secs(in_range(
                file.key_refresh_secs.unwrap_or(60),
                1,
                86_400,
                "key_refresh_secs",
            )?),
            upload_batch: in_range(file.upload_batch.unwrap_or(200), 1, 500, "upload_batch")?,
            debounce: Duration::from_secs(in_range(
                file.debounce_secs.unwrap_or(3),
                1,
                60,
                "debounce_secs",
            )?),
            decision_clear: Duration::from_secs(in_range(
                file.decision_clear_secs.unwrap_or(5),
                1,
                600,
                "decision_clear_secs",
            )?),
            watchdog_stall: Duration::from_secs(in_range(
                file.watchdog_stall_secs.unwrap_or(20),
                1,
                300,
                "watchdog_stall_secs",
            )?),
            api_token,
            shutdown_grace: Duration::from_secs(in_range(
                file.shutdown_grace_secs.unwrap_or(5),
                1,
                60,
                "shutdown_grace_secs",
            )?),
            token_policy: stile_shared::TokenPolicy {
                miniapp_ttl_secs: in_range(
                    file.miniapp_ttl_secs.unwrap_or(1800),
                    1,
                    86_400,
                    "miniapp_ttl_secs",
                )?,
                clock_skew_secs: in_range(
                    file.clock_skew_secs.unwrap_or(60),
                    0,
                    600,
                    "clock_skew_secs",
                )?,
            },
            decoders,
            source,
            offline,
            operator: file.operator,
            peers: file.peers.map(PeersFile::resolve).transpose()?.flatten(),
        };
        Ok(config)
    }

    /// The SQLite file.
    pub fn database_path(&self) -> PathBuf {
        self.state_dir.join("agent.db")
    }

    /// The settings as `check-config` prints them, secrets masked.
    pub fn describe(&self) -> String {
        format!(
            "device_id = {}\ncredential = {:?}\napi_token = {}\ncentral_url = {}\nvenue_code = {}\nfunction_code = {}\ndirection = {}\nstate_dir = {}\nlisten = {}\nonline_deadline_ms = {}\nsync_interval_secs = {}\ndecoders = {:?}\nsource = {:?}\noffline = {:?}\noperator = {}\npeers = {}\n",
            self.device_id,
            self.credential,
            if self.api_token.is_some() { "(set)" } else { "(unset: POST /api/scan is closed)" },
            self.central_url,
            self.venue_code,
            self.function_code,
            self.direction.as_str(),
            self.state_dir.display(),
            self.listen,
            self.online_deadline.as_millis(),
            self.sync_interval.as_secs(),
            self.decoders,
            self.source,
            self.offline,
            self.operator.as_ref().map(|o| o.username.as_str()).unwrap_or("(logs in on the gate page)"),
            self.peers.as_ref().map_or_else(
                || "(off)".to_owned(),
                |p| format!(
                    "listen {}, advertise {}, {} static",
                    p.listen,
                    p.advertise.as_ref().map_or("(the address the central sees)", |a| a.as_str()),
                    p.static_peers.len()
                )
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        device_id = "dev-east-1"
        device_secret = "dev-secret-1"
        central_url = "http://127.0.0.1:8080/"
        venue_code = "GATE-EAST"
    "#;

    #[test]
    fn minimal_file_gets_defaults_and_env_overrides() {
        let config =
            AgentConfig::parse(MINIMAL, [("STILE_AGENT_FUNCTION_CODE", "MEAL")]).expect("valid");
        assert_eq!(config.central_url, "http://127.0.0.1:8080");
        assert_eq!(config.function_code.as_str(), "MEAL");
        assert_eq!(config.online_deadline, Duration::from_millis(800));
        assert_eq!(config.source, SourceConfig::None);
        assert_eq!(
            config.decoders,
            vec![DecoderKind::Rxing, DecoderKind::RqrrHalf]
        );
        assert!(
            !config.describe().contains("dev-secret-1"),
            "secrets are masked"
        );
        assert_eq!(config.direction, Direction::Entry);
        assert_eq!(config.offline.occupancy_max_age_secs, 300);
        assert!(config.describe().contains("direction = entry\n"));
        assert!(config.describe().contains("occupancy_max_age_secs: 300"));
    }

    #[test]
    fn an_exit_gate_is_set_in_the_file_or_the_environment() {
        let cases = [
            (
                format!("{MINIMAL}\ndirection = \"exit\""),
                None,
                Direction::Exit,
            ),
            (
                format!("{MINIMAL}\ndirection = \"exit\""),
                Some("entry"),
                Direction::Entry,
            ),
            (MINIMAL.to_owned(), Some("exit"), Direction::Exit),
        ];
        for (text, env, expected) in cases {
            let env: Vec<(&str, &str)> = env
                .map(|value| ("STILE_AGENT_DIRECTION", value))
                .into_iter()
                .collect();
            let config = AgentConfig::parse(&text, env).expect("valid");
            assert_eq!(config.direction, expected, "{text}");
        }
        let config = AgentConfig::parse(
            &format!("{MINIMAL}\n[offline]\noccupancy_max_age_secs = 60"),
            Vec::<(String, String)>::new(),
        )
        .expect("valid");
        assert_eq!(config.offline.occupancy_max_age_secs, 60);
        assert_eq!(config.offline.max_state_age_secs, 3600, "the rest defaults");
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let config = AgentConfig::parse(
            include_str!("../../systemd/edge-agent.toml"),
            Vec::<(String, String)>::new(),
        )
        .expect("systemd/edge-agent.toml is valid");
        assert!(matches!(config.source, SourceConfig::Camera { .. }));
    }

    #[test]
    fn problems_are_named() {
        let cases = [
            ("device_id = \"x\"", "central_url"),
            (
                &format!("{MINIMAL}\nfunction_code = \"entry\""),
                "function_code",
            ),
            (&format!("{MINIMAL}\nlisten = \"nowhere\""), "listen"),
            (&format!("{MINIMAL}\ndecoders = []"), "decoders"),
            (&format!("{MINIMAL}\ndecoders = [\"zxing\"]"), "config file"),
            (&format!("{MINIMAL}\nsurprise = 1"), "config file"),
            (&MINIMAL.replace("http://", "ftp://"), "central_url"),
            // what a field technician typed (all accepted before)
            (
                &format!(
                    "{MINIMAL}\n[source]\nkind = \"directory\"\npath = \"/tmp\"\nmode = \"wtach\""
                ),
                "wtach",
            ),
            (
                &format!("{MINIMAL}\n[offline]\nmax_clock_offset_secs = -5"),
                "offline.max_clock_offset_secs",
            ),
            (&format!("{MINIMAL}\ndebounce_secs = 0"), "debounce_secs"),
            (
                &format!("{MINIMAL}\ndirection = \"out\""),
                "setting direction: \"out\" is neither",
            ),
            (
                &format!("{MINIMAL}\n[offline]\noccupancy_max_age_secs = 0"),
                "offline.occupancy_max_age_secs",
            ),
            (&MINIMAL.replace("dev-secret-1", "x"), "device_secret"),
            (
                &MINIMAL.replace(
                    "device_secret = \"dev-secret-1\"",
                    "device_secret = \"dev-secret-1\"\nenrollment_code = \"0123456789\"",
                ),
                "not both",
            ),
            (
                &MINIMAL.replace(
                    "device_secret = \"dev-secret-1\"",
                    "enrollment_code = \"short\"",
                ),
                "enrollment_code",
            ),
            (
                &MINIMAL.replace("http://127.0.0.1:8080/", "http://"),
                "central_url",
            ),
            (
                &MINIMAL.replace("http://127.0.0.1:8080/", "http:///x"),
                "central_url",
            ),
            (
                &MINIMAL.replace("\"GATE-EAST\"", "\"GATE EAST!\""),
                "venue_code",
            ),
            (
                &MINIMAL.replace("\"dev-east-1\"", "\"dev\\neast\""),
                "device_id",
            ),
            (
                &format!(
                    "{MINIMAL}\n[source]\nkind = \"directory\"\npath = \"/nonexistent/spool\""
                ),
                "source.path",
            ),
            (
                &format!("{MINIMAL}\nonline_deadline_ms = 5000"),
                "online_deadline_ms",
            ),
            (&format!("{MINIMAL}\nupload_batch = 0"), "upload_batch"),
            (
                &format!("{MINIMAL}\ndecision_clear_secs = 0"),
                "decision_clear_secs",
            ),
            (
                &format!("{MINIMAL}\nclock_skew_secs = -1"),
                "clock_skew_secs",
            ),
            (&format!("{MINIMAL}\n[peers]\nlisten = \"lan\""), "peers.listen"),
            (
                &format!("{MINIMAL}\n[peers]\nlisten = \"0.0.0.0:9092\"\nadvertise = \"gate\""),
                "peers.advertise",
            ),
            (
                &format!("{MINIMAL}\n[peers]\nlisten = \"0.0.0.0:9092\"\npull_interval_ms = 5"),
                "peers.pull_interval_ms",
            ),
            (
                &format!("{MINIMAL}\n[peers]\nlisten = \"0.0.0.0:9092\"\n[[peers.static]]\ndevice_id = \"dev-west-1\"\naddress = \"10.0.0.6:9092\"\npublic_key = \"AAAA\""),
                "peers.static.public_key",
            ),
            (
                &format!("{MINIMAL}\n[[peers.static]]\ndevice_id = \"dev-west-1\"\naddress = \"10.0.0.6:9092\"\npublic_key = \"AAAA\""),
                "peers.listen",
            ),
        ];
        for (text, name) in cases {
            let error = AgentConfig::parse(text, Vec::<(String, String)>::new()).expect_err(name);
            assert!(error.to_string().contains(name), "{text}: {error}");
            assert!(!error.to_string().contains("dev-secret-1"), "{error}");
        }
    }
}
