//! Server settings: defaults, then an optional TOML file, then `STILE_*` environment
//! variables (and `DATABASE_URL`), then command-line flags. Loading is a function over a
//! key/value source, so it is tested without touching the process environment.
//!
//! A bad setting is a [`ConfigError`] naming the setting; `main` prints it and exits 64.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines (a terminal, a developer).
    Text,
    /// One JSON object a line (journald, log shippers).
    Json,
}

/// Every setting of the central server, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// The key-encryption key file (64 hex digits) signing keys are sealed with; unset: the
    /// systemd credential `kek` when there is one, else keys are stored unencrypted.
    pub key_encryption_key_file: Option<std::path::PathBuf>,
    /// The KEK being rotated away from (opens keys it sealed until they are resealed).
    pub previous_key_encryption_key_file: Option<std::path::PathBuf>,
    /// The operations listener (`/metrics`, the admin API): a private address.
    pub ops_listen: SocketAddr,
    pub database_url: String,
    pub db_max_connections: u32,
    /// Waiting for a pooled connection fails after this (ms).
    pub db_acquire_timeout_ms: u64,
    /// PostgreSQL cancels any statement of the serving pool after this (ms).
    pub db_statement_timeout_ms: u64,
    /// A request not answered within this (ms) because the database has not answered is
    /// `SERVICE_UNAVAILABLE` 503 (offline uploads, logins and the admin API excepted).
    pub db_deadline_ms: u64,
    /// With several hosts in `database_url`: how often (ms) the server asks its host whether
    /// it still accepts writes, and looks for the new primary when not.
    pub db_primary_check_ms: u64,
    /// Lifetime of an operator JWT (`expires_in`), one shift by default.
    pub operator_token_ttl_secs: i64,
    /// HMAC key of operator JWTs; when unset, one is generated once and kept in the database
    /// so every server process on it agrees.
    pub jwt_secret: Option<String>,
    /// Bearer token of the admin API (`POST /admin/seed`); the admin API is off when unset.
    pub admin_token: Option<String>,
    pub qr_ttl_miniapp_secs: i64,
    pub clock_skew_secs: i64,
    /// How often a running server reloads the signing keys (a rotation is published within
    /// this time; the contract allows at most 60 s).
    pub key_refresh_secs: u64,
    /// Failed logins for one username within `login_window_secs` before 429.
    pub login_max_failures: i64,
    pub login_window_secs: i64,
    /// Failed logins from one source address within `login_window_secs` before 429.
    pub login_max_failures_per_address: i64,
    /// Password hashes computed at once (argon2id holds about 19 MiB each); 0 = half the
    /// cores, at least one, so scans always keep a core.
    pub login_hash_workers: usize,
    /// How far a gate's clock may be off when it uploads offline decisions.
    pub device_clock_tolerance_secs: i64,
    /// A client must send its whole request head within this time.
    pub http_header_timeout_secs: u64,
    /// A connection that moves no byte for this long is closed.
    pub http_idle_timeout_secs: u64,
    /// A request must be read and answered (up to its response head) within this time.
    pub http_request_timeout_secs: u64,
    /// Open connections at most; 0 = as many as the open-files limit leaves.
    pub max_connections: usize,
    pub shutdown_grace_secs: u64,
    pub log_format: LogFormat,
    /// Days redemption log and audit rows are kept (at least 365).
    pub retention_days: i64,
    /// How often the server runs the retention job itself; 0 = never (run
    /// `central-server retention` from a timer instead).
    pub retention_interval_secs: u64,
    /// How often the webhook worker looks for due notifications, in milliseconds.
    pub outbox_poll_ms: u64,
    /// Group commit: redemption batches running at once, each on a connection of the
    /// workers' own (besides the `db_max_connections` of the serving pool).
    pub group_commit_workers: usize,
    /// Group commit: the most scans one redemption statement takes.
    pub group_commit_max_batch: usize,
}

/// The most group-commit workers (the README's settings table has what was measured: on
/// two cores, more than two only adds batches that wait on each other).
pub const MAX_GROUP_COMMIT_WORKERS: usize = 32;

impl Settings {
    /// The serving pool's size and timeouts.
    pub fn pool_limits(&self) -> crate::db::PoolLimits {
        crate::db::PoolLimits {
            max_connections: self.db_max_connections,
            acquire_timeout: std::time::Duration::from_millis(self.db_acquire_timeout_ms),
            statement_timeout: std::time::Duration::from_millis(self.db_statement_timeout_ms),
            primary_check: std::time::Duration::from_millis(self.db_primary_check_ms),
        }
    }

    /// How long a request may wait for the database before it is answered 503.
    pub fn db_deadline(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.db_deadline_ms)
    }

    pub fn token_policy(&self) -> stile_shared::TokenPolicy {
        stile_shared::TokenPolicy {
            miniapp_ttl_secs: self.qr_ttl_miniapp_secs,
            clock_skew_secs: self.clock_skew_secs,
        }
    }

    /// How many password hashes run at once: the setting, or half the cores (at least 1).
    pub fn hash_workers(&self) -> usize {
        if self.login_hash_workers > 0 {
            return self.login_hash_workers;
        }
        std::thread::available_parallelism()
            .map(|cores| (cores.get() / 2).max(1))
            .unwrap_or(1)
    }

    pub fn key_refresh_interval(&self) -> Duration {
        Duration::from_secs(self.key_refresh_secs)
    }

    /// Defaults around a database URL: for tests and tools that only know the database.
    pub fn for_database(database_url: &str) -> Result<Settings, ConfigError> {
        SettingsLayer {
            database_url: Some(database_url.to_owned()),
            ..SettingsLayer::default()
        }
        .resolve()
    }
}

/// A bad setting, named.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    ParseFile { path: String, message: String },
    #[error("setting {name}: {message}")]
    Invalid { name: &'static str, message: String },
    #[error("environment variable {name}: {message}")]
    InvalidVariable { name: String, message: String },
    #[error("DATABASE_URL is not set (environment, `database_url` in the config file, or --database-url)")]
    MissingDatabaseUrl,
}

/// One layer of settings: every field optional, later layers override earlier ones.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsLayer {
    pub listen: Option<String>,
    pub ops_listen: Option<String>,
    pub key_encryption_key_file: Option<std::path::PathBuf>,
    pub previous_key_encryption_key_file: Option<std::path::PathBuf>,
    pub database_url: Option<String>,
    pub db_max_connections: Option<u32>,
    pub db_acquire_timeout_ms: Option<u64>,
    pub db_statement_timeout_ms: Option<u64>,
    pub db_deadline_ms: Option<u64>,
    pub db_primary_check_ms: Option<u64>,
    pub operator_token_ttl_secs: Option<i64>,
    pub jwt_secret: Option<String>,
    pub admin_token: Option<String>,
    pub qr_ttl_miniapp_secs: Option<i64>,
    pub clock_skew_secs: Option<i64>,
    pub key_refresh_secs: Option<u64>,
    pub login_max_failures: Option<i64>,
    pub login_window_secs: Option<i64>,
    pub login_max_failures_per_address: Option<i64>,
    pub login_hash_workers: Option<usize>,
    pub device_clock_tolerance_secs: Option<i64>,
    pub http_header_timeout_secs: Option<u64>,
    pub http_idle_timeout_secs: Option<u64>,
    pub http_request_timeout_secs: Option<u64>,
    pub max_connections: Option<usize>,
    pub shutdown_grace_secs: Option<u64>,
    pub log_format: Option<LogFormat>,
    pub retention_days: Option<i64>,
    pub retention_interval_secs: Option<u64>,
    pub outbox_poll_ms: Option<u64>,
    pub group_commit_workers: Option<usize>,
    pub group_commit_max_batch: Option<usize>,
}

macro_rules! merge_fields {
    ($base:ident, $over:ident, $($field:ident),*) => {
        $( if $over.$field.is_some() { $base.$field = $over.$field; } )*
    };
}

impl SettingsLayer {
    pub fn from_toml_file(path: &Path) -> Result<SettingsLayer, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|error| ConfigError::ParseFile {
            path: path.display().to_string(),
            message: error.to_string(),
        })
    }

    /// Reads `STILE_*` variables (and `DATABASE_URL`) from a key/value source.
    pub fn from_env<I, K, V>(vars: I) -> Result<SettingsLayer, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut layer = SettingsLayer::default();
        for (key, value) in vars {
            let (key, value) = (key.as_ref(), value.as_ref().to_owned());
            match key {
                "DATABASE_URL" | "STILE_DATABASE_URL" => layer.database_url = Some(value),
                "STILE_LISTEN" => layer.listen = Some(value),
                "STILE_OPS_LISTEN" => layer.ops_listen = Some(value),
                "STILE_KEY_ENCRYPTION_KEY_FILE" => {
                    layer.key_encryption_key_file = Some(value.into())
                }
                "STILE_PREVIOUS_KEY_ENCRYPTION_KEY_FILE" => {
                    layer.previous_key_encryption_key_file = Some(value.into())
                }
                "STILE_DB_MAX_CONNECTIONS" => layer.db_max_connections = Some(number(key, &value)?),
                "STILE_DB_ACQUIRE_TIMEOUT_MS" => {
                    layer.db_acquire_timeout_ms = Some(number(key, &value)?)
                }
                "STILE_DB_STATEMENT_TIMEOUT_MS" => {
                    layer.db_statement_timeout_ms = Some(number(key, &value)?)
                }
                "STILE_DB_DEADLINE_MS" => layer.db_deadline_ms = Some(number(key, &value)?),
                "STILE_DB_PRIMARY_CHECK_MS" => {
                    layer.db_primary_check_ms = Some(number(key, &value)?)
                }
                "STILE_OPERATOR_TOKEN_TTL_SECS" => {
                    layer.operator_token_ttl_secs = Some(number(key, &value)?)
                }
                "STILE_JWT_SECRET" => layer.jwt_secret = Some(value),
                "STILE_ADMIN_TOKEN" => layer.admin_token = Some(value),
                "STILE_QR_TTL_MINIAPP_SECS" => {
                    layer.qr_ttl_miniapp_secs = Some(number(key, &value)?)
                }
                "STILE_CLOCK_SKEW_SECS" => layer.clock_skew_secs = Some(number(key, &value)?),
                "STILE_KEY_REFRESH_SECS" => layer.key_refresh_secs = Some(number(key, &value)?),
                "STILE_LOGIN_MAX_FAILURES" => layer.login_max_failures = Some(number(key, &value)?),
                "STILE_LOGIN_WINDOW_SECS" => layer.login_window_secs = Some(number(key, &value)?),
                "STILE_LOGIN_MAX_FAILURES_PER_ADDRESS" => {
                    layer.login_max_failures_per_address = Some(number(key, &value)?)
                }
                "STILE_DEVICE_CLOCK_TOLERANCE_SECS" => {
                    layer.device_clock_tolerance_secs = Some(number(key, &value)?)
                }
                "STILE_HTTP_HEADER_TIMEOUT_SECS" => {
                    layer.http_header_timeout_secs = Some(number(key, &value)?)
                }
                "STILE_HTTP_IDLE_TIMEOUT_SECS" => {
                    layer.http_idle_timeout_secs = Some(number(key, &value)?)
                }
                "STILE_HTTP_REQUEST_TIMEOUT_SECS" => {
                    layer.http_request_timeout_secs = Some(number(key, &value)?)
                }
                "STILE_MAX_CONNECTIONS" => layer.max_connections = Some(number(key, &value)?),
                "STILE_LOGIN_HASH_WORKERS" => layer.login_hash_workers = Some(number(key, &value)?),
                "STILE_SHUTDOWN_GRACE_SECS" => {
                    layer.shutdown_grace_secs = Some(number(key, &value)?)
                }
                "STILE_RETENTION_DAYS" => layer.retention_days = Some(number(key, &value)?),
                "STILE_RETENTION_INTERVAL_SECS" => {
                    layer.retention_interval_secs = Some(number(key, &value)?)
                }
                "STILE_OUTBOX_POLL_MS" => layer.outbox_poll_ms = Some(number(key, &value)?),
                "STILE_GROUP_COMMIT_WORKERS" => {
                    layer.group_commit_workers = Some(number(key, &value)?)
                }
                "STILE_GROUP_COMMIT_MAX_BATCH" => {
                    layer.group_commit_max_batch = Some(number(key, &value)?)
                }
                "STILE_LOG_FORMAT" => {
                    layer.log_format = Some(match value.as_str() {
                        "text" => LogFormat::Text,
                        "json" => LogFormat::Json,
                        _ => {
                            return Err(ConfigError::Invalid {
                                name: "STILE_LOG_FORMAT",
                                message: format!("{value:?} is not \"text\" or \"json\""),
                            })
                        }
                    })
                }
                _ => {}
            }
        }
        Ok(layer)
    }

    /// This layer with `over`'s settings on top.
    pub fn merged(mut self, over: SettingsLayer) -> SettingsLayer {
        merge_fields!(
            self,
            over,
            listen,
            ops_listen,
            key_encryption_key_file,
            previous_key_encryption_key_file,
            database_url,
            db_max_connections,
            db_acquire_timeout_ms,
            db_statement_timeout_ms,
            db_deadline_ms,
            db_primary_check_ms,
            operator_token_ttl_secs,
            jwt_secret,
            admin_token,
            qr_ttl_miniapp_secs,
            clock_skew_secs,
            key_refresh_secs,
            login_max_failures,
            login_window_secs,
            login_max_failures_per_address,
            login_hash_workers,
            device_clock_tolerance_secs,
            http_header_timeout_secs,
            http_idle_timeout_secs,
            http_request_timeout_secs,
            max_connections,
            shutdown_grace_secs,
            log_format,
            retention_days,
            retention_interval_secs,
            outbox_poll_ms,
            group_commit_workers,
            group_commit_max_batch
        );
        self
    }

    /// Fills in defaults and checks every value.
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let listen_raw = self.listen.unwrap_or_else(|| "127.0.0.1:8080".to_owned());
        let listen = listen_raw
            .parse::<SocketAddr>()
            .map_err(|_| ConfigError::Invalid {
                name: "listen",
                message: format!("{listen_raw:?} is not an address like 127.0.0.1:8080"),
            })?;
        let ops_raw = self
            .ops_listen
            .unwrap_or_else(|| "127.0.0.1:9091".to_owned());
        let ops_listen = ops_raw
            .parse::<SocketAddr>()
            .map_err(|_| ConfigError::Invalid {
                name: "ops_listen",
                message: format!("{ops_raw:?} is not an address like 127.0.0.1:9091"),
            })?;
        let database_url = self.database_url.ok_or(ConfigError::MissingDatabaseUrl)?;
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(ConfigError::Invalid {
                name: "database_url",
                message: "must start with postgres:// or postgresql://".into(),
            });
        }
        let settings = Settings {
            listen,
            ops_listen,
            key_encryption_key_file: self.key_encryption_key_file,
            previous_key_encryption_key_file: self.previous_key_encryption_key_file,
            database_url,
            db_max_connections: self.db_max_connections.unwrap_or(16),
            db_acquire_timeout_ms: self.db_acquire_timeout_ms.unwrap_or(500),
            db_statement_timeout_ms: self.db_statement_timeout_ms.unwrap_or(2000),
            db_deadline_ms: self.db_deadline_ms.unwrap_or(900),
            db_primary_check_ms: self.db_primary_check_ms.unwrap_or(500),
            operator_token_ttl_secs: self.operator_token_ttl_secs.unwrap_or(43_200),
            jwt_secret: self.jwt_secret,
            admin_token: self.admin_token,
            qr_ttl_miniapp_secs: self.qr_ttl_miniapp_secs.unwrap_or(1800),
            clock_skew_secs: self.clock_skew_secs.unwrap_or(60),
            key_refresh_secs: self.key_refresh_secs.unwrap_or(30),
            login_max_failures: self.login_max_failures.unwrap_or(10),
            login_window_secs: self.login_window_secs.unwrap_or(300),
            login_max_failures_per_address: self.login_max_failures_per_address.unwrap_or(100),
            login_hash_workers: self.login_hash_workers.unwrap_or(0),
            device_clock_tolerance_secs: self.device_clock_tolerance_secs.unwrap_or(600),
            http_header_timeout_secs: self.http_header_timeout_secs.unwrap_or(10),
            http_idle_timeout_secs: self.http_idle_timeout_secs.unwrap_or(60),
            http_request_timeout_secs: self.http_request_timeout_secs.unwrap_or(30),
            max_connections: self.max_connections.unwrap_or(0),
            shutdown_grace_secs: self.shutdown_grace_secs.unwrap_or(10),
            log_format: self.log_format.unwrap_or(LogFormat::Text),
            retention_days: self.retention_days.unwrap_or(400),
            retention_interval_secs: self.retention_interval_secs.unwrap_or(0),
            outbox_poll_ms: self.outbox_poll_ms.unwrap_or(1000),
            group_commit_workers: self.group_commit_workers.unwrap_or(2),
            group_commit_max_batch: self.group_commit_max_batch.unwrap_or(32),
        };
        if settings.retention_days < crate::retention::MIN_RETENTION_DAYS {
            return Err(ConfigError::Invalid {
                name: "retention_days",
                message: format!(
                    "must be at least {} (redemption and audit rows are kept for settlement)",
                    crate::retention::MIN_RETENTION_DAYS
                ),
            });
        }
        for (name, value) in [
            (
                "http_header_timeout_secs",
                settings.http_header_timeout_secs,
            ),
            ("http_idle_timeout_secs", settings.http_idle_timeout_secs),
            (
                "http_request_timeout_secs",
                settings.http_request_timeout_secs,
            ),
        ] {
            if value == 0 || value > 3600 {
                return Err(ConfigError::Invalid {
                    name,
                    message: format!("must be 1 to 3600 seconds, got {value}"),
                });
            }
        }
        for (name, value, max) in [
            (
                "db_acquire_timeout_ms",
                settings.db_acquire_timeout_ms,
                60_000,
            ),
            ("db_deadline_ms", settings.db_deadline_ms, 60_000),
            ("db_primary_check_ms", settings.db_primary_check_ms, 60_000),
            (
                "db_statement_timeout_ms",
                settings.db_statement_timeout_ms,
                3_600_000,
            ),
        ] {
            if value == 0 || value > max {
                return Err(ConfigError::Invalid {
                    name,
                    message: format!("must be 1 to {max} ms, got {value}"),
                });
            }
        }
        if !(1..=MAX_GROUP_COMMIT_WORKERS).contains(&settings.group_commit_workers) {
            return Err(ConfigError::Invalid {
                name: "group_commit_workers",
                message: format!(
                    "must be 1 to {MAX_GROUP_COMMIT_WORKERS}, got {}: each worker holds a \
                     connection of its own",
                    settings.group_commit_workers
                ),
            });
        }
        if !(1..=1000).contains(&settings.group_commit_max_batch) {
            return Err(ConfigError::Invalid {
                name: "group_commit_max_batch",
                message: format!("must be 1 to 1000, got {}", settings.group_commit_max_batch),
            });
        }
        if settings.outbox_poll_ms == 0 {
            return Err(ConfigError::Invalid {
                name: "outbox_poll_ms",
                message: "must be greater than 0".into(),
            });
        }
        let positive = [
            ("db_max_connections", i64::from(settings.db_max_connections)),
            ("operator_token_ttl_secs", settings.operator_token_ttl_secs),
            ("qr_ttl_miniapp_secs", settings.qr_ttl_miniapp_secs),
            ("login_max_failures", settings.login_max_failures),
            ("login_window_secs", settings.login_window_secs),
            (
                "login_max_failures_per_address",
                settings.login_max_failures_per_address,
            ),
            (
                "device_clock_tolerance_secs",
                settings.device_clock_tolerance_secs,
            ),
        ];
        for (name, value) in positive {
            if value <= 0 {
                return Err(ConfigError::Invalid {
                    name,
                    message: format!("must be greater than 0, got {value}"),
                });
            }
        }
        if settings.clock_skew_secs < 0 {
            return Err(ConfigError::Invalid {
                name: "clock_skew_secs",
                message: "must not be negative".into(),
            });
        }
        if settings.key_refresh_secs == 0 || settings.key_refresh_secs > 60 {
            return Err(ConfigError::Invalid {
                name: "key_refresh_secs",
                message: "must be 1 to 60 (a rotation is published within 60 s)".into(),
            });
        }
        for (name, secret) in [
            ("jwt_secret", &settings.jwt_secret),
            ("admin_token", &settings.admin_token),
        ] {
            if secret.as_ref().is_some_and(|secret| secret.len() < 32) {
                return Err(ConfigError::Invalid {
                    name,
                    message: "must be at least 32 characters".into(),
                });
            }
        }
        Ok(settings)
    }
}

fn number<T: std::str::FromStr>(name: &str, raw: &str) -> Result<T, ConfigError> {
    raw.trim()
        .parse()
        .map_err(|_| ConfigError::InvalidVariable {
            name: name.to_owned(),
            message: format!("{raw:?} is not a valid number"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DB: &str = "postgres://stile@127.0.0.1/stile";

    #[test]
    fn defaults_then_file_then_env_then_flags() {
        let file: SettingsLayer = toml::from_str(
            "listen = \"127.0.0.1:9000\"\nqr_ttl_miniapp_secs = 900\nclock_skew_secs = 5",
        )
        .expect("toml");
        let env = SettingsLayer::from_env([
            ("DATABASE_URL", DB),
            ("STILE_CLOCK_SKEW_SECS", "30"),
            ("HOME", "/root"),
        ])
        .expect("env");
        let flags = SettingsLayer {
            listen: Some("0.0.0.0:7000".into()),
            ..SettingsLayer::default()
        };
        let settings = SettingsLayer::default()
            .merged(file)
            .merged(env)
            .merged(flags)
            .resolve()
            .expect("valid");
        assert_eq!(settings.listen.to_string(), "0.0.0.0:7000");
        assert_eq!(settings.qr_ttl_miniapp_secs, 900);
        assert_eq!(settings.clock_skew_secs, 30);
        assert_eq!(settings.operator_token_ttl_secs, 43_200);
        assert_eq!(settings.database_url, DB);
    }

    #[test]
    fn bad_settings_are_named() {
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![], "DATABASE_URL"),
            (vec![("DATABASE_URL", "mysql://x")], "database_url"),
            (
                vec![("DATABASE_URL", DB), ("STILE_LISTEN", "nowhere")],
                "listen",
            ),
            (
                vec![("DATABASE_URL", DB), ("STILE_QR_TTL_MINIAPP_SECS", "soon")],
                "STILE_QR_TTL_MINIAPP_SECS",
            ),
            (
                vec![("DATABASE_URL", DB), ("STILE_KEY_REFRESH_SECS", "120")],
                "key_refresh_secs",
            ),
            (
                vec![("DATABASE_URL", DB), ("STILE_JWT_SECRET", "short")],
                "jwt_secret",
            ),
            (
                vec![("DATABASE_URL", DB), ("STILE_LOG_FORMAT", "xml")],
                "STILE_LOG_FORMAT",
            ),
            (
                vec![("DATABASE_URL", DB), ("STILE_RETENTION_DAYS", "364")],
                "retention_days",
            ),
            (
                vec![("DATABASE_URL", DB), ("STILE_GROUP_COMMIT_WORKERS", "0")],
                "group_commit_workers",
            ),
            (
                vec![("DATABASE_URL", DB), ("STILE_GROUP_COMMIT_WORKERS", "33")],
                "group_commit_workers",
            ),
            (
                vec![("DATABASE_URL", DB), ("STILE_GROUP_COMMIT_MAX_BATCH", "0")],
                "group_commit_max_batch",
            ),
        ];
        for (vars, name) in cases {
            let error = SettingsLayer::from_env(vars.clone())
                .and_then(SettingsLayer::resolve)
                .expect_err(name);
            assert!(error.to_string().contains(name), "{vars:?}: {error}");
        }
    }

    #[test]
    fn the_shipped_example_file_is_valid() {
        let file: SettingsLayer =
            toml::from_str(include_str!("../../systemd/central-server.toml")).expect("toml");
        let settings = file
            .merged(SettingsLayer::from_env([("DATABASE_URL", DB)]).expect("env"))
            .resolve()
            .expect("valid");
        assert_eq!(settings.log_format, LogFormat::Json);
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        assert!(toml::from_str::<SettingsLayer>("lisen = \"x\"").is_err());
    }
}
