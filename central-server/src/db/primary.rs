//! Following the primary of a replicated PostgreSQL: a database URL may name several hosts
//! (libpq's multi-host form, `postgres://user@h1:5432,h2:5432/db?target_session_attrs=read-write`,
//! as `pg_autoctl show uri` prints it). sqlx takes one host, so the pool is pointed at the
//! one that accepts writes, and a watcher re-points it when that changes.
//!
//! The watcher asks the pool's host every `check_interval` whether it still accepts writes
//! (`pg_is_in_recovery()` and `transaction_read_only`: a node pg_auto_failover is promoting
//! is out of recovery but still read-only). When it does not answer, or answers "read-only",
//! every host is asked on a connection of its own; the first writable one becomes the
//! pool's target, and every pooled connection opened before the switch is closed when it is
//! next acquired, so no request runs on a demoted primary; every new connection is checked
//! too, and one that finds its host read-only is refused (503) and wakes the watcher at once.
//! Until a writable host is found, requests fail fast (the pool's acquire timeout) and are
//! answered 503.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The hosts of a database URL, in the order it names them, and whether a writable one is
/// required.
#[derive(Debug, Clone)]
pub struct Targets {
    pub hosts: Vec<PgConnectOptions>,
    /// `host:port` of each, for logs and errors (never the password).
    pub names: Vec<String>,
}

impl Targets {
    /// Parses a PostgreSQL URL naming one host or several (`h1:p1,h2:p2`). With several,
    /// `target_session_attrs` may be `read-write` or `primary` (the default here: the server
    /// writes); `any`, `read-only`, `standby` and `prefer-standby` are refused.
    pub fn parse(url: &str) -> Result<Targets, sqlx::Error> {
        let bad = |why: String| sqlx::Error::Configuration(why.into());
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("DATABASE_URL must start with postgres://".into()))?;
        if scheme != "postgres" && scheme != "postgresql" {
            return Err(bad(format!(
                "DATABASE_URL scheme `{scheme}` is not postgres or postgresql"
            )));
        }
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let (userinfo, host_list) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let (path, query) = match tail.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (tail, None),
        };
        let mut kept = Vec::new();
        let mut attrs = None;
        for pair in query.into_iter().flat_map(|query| query.split('&')) {
            match pair.split_once('=') {
                Some(("target_session_attrs", value)) => attrs = Some(value.to_owned()),
                _ if pair.is_empty() => {}
                _ => kept.push(pair),
            }
        }
        let hosts: Vec<&str> = host_list.split(',').collect();
        if hosts.iter().any(|host| host.is_empty()) {
            return Err(bad("DATABASE_URL has an empty host in its host list".into()));
        }
        if hosts.len() > 1 {
            match attrs.as_deref() {
                None | Some("read-write") | Some("primary") => {}
                Some(other) => {
                    return Err(bad(format!(
                        "DATABASE_URL target_session_attrs={other}: the server writes, so a \
                         URL with several hosts takes read-write (or primary)"
                    )))
                }
            }
        }
        let query = if kept.is_empty() {
            String::new()
        } else {
            format!("?{}", kept.join("&"))
        };
        let mut options = Vec::with_capacity(hosts.len());
        let mut names = Vec::with_capacity(hosts.len());
        for host in hosts {
            let single = match userinfo {
                Some(userinfo) => format!("{scheme}://{userinfo}@{host}{path}{query}"),
                None => format!("{scheme}://{host}{path}{query}"),
            };
            let parsed = PgConnectOptions::from_str(&single)?;
            names.push(format!("{}:{}", parsed.get_host(), parsed.get_port()));
            options.push(parsed);
        }
        Ok(Targets {
            hosts: options,
            names,
        })
    }

    /// More than one host: the pool follows whichever accepts writes.
    pub fn is_replicated(&self) -> bool {
        self.hosts.len() > 1
    }

    /// Each host's options with `apply` (application name, statement timeout) applied.
    pub fn map(mut self, apply: impl Fn(PgConnectOptions) -> PgConnectOptions) -> Targets {
        self.hosts = self.hosts.into_iter().map(apply).collect();
        self
    }

    /// The first host that accepts writes, asked in order on connections of their own
    /// (each given `timeout`); the error says what each host answered.
    pub async fn find_writable(&self, timeout: Duration) -> Result<usize, sqlx::Error> {
        let mut answers = Vec::with_capacity(self.hosts.len());
        for (index, options) in self.hosts.iter().enumerate() {
            match tokio::time::timeout(timeout, accepts_writes(options)).await {
                Ok(Ok(true)) => return Ok(index),
                Ok(Ok(false)) => answers.push(format!("{}: read-only", self.names[index])),
                Ok(Err(error)) => answers.push(format!("{}: {error}", self.names[index])),
                Err(_) => answers.push(format!("{}: no answer", self.names[index])),
            }
        }
        Err(sqlx::Error::Configuration(
            format!(
                "no host of DATABASE_URL accepts writes ({})",
                answers.join("; ")
            )
            .into(),
        ))
    }
}

/// Whether the database behind `options` accepts writes now.
async fn accepts_writes(options: &PgConnectOptions) -> Result<bool, sqlx::Error> {
    let mut connection = options.connect().await?;
    let writable = query_writable(&mut connection).await;
    let _ = connection.close().await;
    writable
}

const WRITABLE: &str =
    "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'";

async fn query_writable(connection: &mut sqlx::PgConnection) -> Result<bool, sqlx::Error> {
    let (writable,): (bool,) = sqlx::query_as(WRITABLE).fetch_one(connection).await?;
    Ok(writable)
}

/// When the pool last changed hosts, so connections opened before are closed on acquire.
#[derive(Debug)]
struct Switches {
    start: Instant,
    /// Milliseconds after `start` of the last switch; 0: none yet.
    last_ms: AtomicU64,
}

impl Switches {
    /// A connection of this age was opened after the last switch.
    fn is_current(&self, age: Duration) -> bool {
        self.is_current_at(age, self.start.elapsed())
    }

    /// `elapsed`: time since `start` now.
    fn is_current_at(&self, age: Duration, elapsed: Duration) -> bool {
        let last = self.last_ms.load(Ordering::Relaxed);
        last == 0 || age < elapsed.saturating_sub(Duration::from_millis(last))
    }

    fn record(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(now.max(1), Ordering::Relaxed);
    }
}

/// A pool on the writable host of `targets`, and a watcher that moves it to another host
/// when this one stops accepting writes. The watcher ends when the pool is closed.
pub async fn connect_following(
    targets: Targets,
    options: PgPoolOptions,
    acquire_timeout: Duration,
    check_interval: Duration,
) -> Result<PgPool, sqlx::Error> {
    let current = targets.find_writable(acquire_timeout).await?;
    let switches = Arc::new(Switches {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    });
    let on_acquire = switches.clone();
    let nudge = Arc::new(tokio::sync::Notify::new());
    let on_connect = nudge.clone();
    let pool = options
        .before_acquire(move |_, meta| {
            let current = on_acquire.is_current(meta.age);
            Box::pin(async move { Ok(current) })
        })
        // Every new connection is checked, so a connection opened with the old host's
        // options around a switch never serves on a standby (reads there may be stale).
        .after_connect(move |connection, _| {
            let nudge = on_connect.clone();
            Box::pin(async move {
                if query_writable(connection).await? {
                    Ok(())
                } else {
                    nudge.notify_one();
                    Err(not_writable())
                }
            })
        })
        .connect_with(targets.hosts[current].clone())
        .await?;
    tracing::info!(
        host = targets.names[current].as_str(),
        hosts = targets.names.join(","),
        "database: following the primary"
    );
    tokio::spawn(follow(
        pool.clone(),
        targets,
        current,
        Watch {
            switches,
            nudge,
            timeout: acquire_timeout,
            interval: check_interval,
        },
    ));
    Ok(pool)
}

/// A connection refused because its host no longer accepts writes: answered like a host
/// that is away (503), since the primary is moving.
fn not_writable() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "the database host no longer accepts writes (the primary is moving)",
    ))
}

/// What the watcher needs besides the pool and the hosts.
struct Watch {
    switches: Arc<Switches>,
    /// Rung when a new connection found its host read-only: check now, not at the tick.
    nudge: Arc<tokio::sync::Notify>,
    timeout: Duration,
    interval: Duration,
}

async fn follow(pool: PgPool, targets: Targets, mut current: usize, watch: Watch) {
    let Watch {
        switches,
        nudge,
        timeout,
        interval,
    } = watch;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = nudge.notified() => {}
        }
        if pool.is_closed() {
            return;
        }
        let still = tokio::time::timeout(timeout, async {
            let mut connection = pool.acquire().await?;
            query_writable(&mut connection).await
        })
        .await;
        if matches!(still, Ok(Ok(true))) {
            continue;
        }
        match targets.find_writable(timeout).await {
            Ok(found) if found == current => {}
            Ok(found) => {
                tracing::warn!(
                    from = targets.names[current].as_str(),
                    to = targets.names[found].as_str(),
                    "database: the primary moved; connections to the old one are closed"
                );
                pool.set_connect_options(targets.hosts[found].clone());
                switches.record();
                current = found;
            }
            Err(error) => {
                tracing::warn!(%error, "database: no writable host yet");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_host_parses_as_sqlx_does() {
        let targets = Targets::parse("postgres://app:secret@db.example:6543/stile?sslmode=disable")
            .expect("parses");
        assert!(!targets.is_replicated());
        assert_eq!(targets.names, ["db.example:6543"]);
        assert_eq!(targets.hosts[0].get_database(), Some("stile"));
        assert_eq!(targets.hosts[0].get_username(), "app");
    }

    #[test]
    fn several_hosts_share_user_database_and_parameters() {
        let targets = Targets::parse(
            "postgres://app:pw@10.0.0.1:5432,10.0.0.2:5433,[::1]:5434/stile?sslmode=disable&target_session_attrs=read-write",
        )
        .expect("parses");
        assert!(targets.is_replicated());
        assert_eq!(
            targets.names,
            ["10.0.0.1:5432", "10.0.0.2:5433", "[::1]:5434"]
        );
        for host in &targets.hosts {
            assert_eq!(host.get_database(), Some("stile"));
            assert_eq!(host.get_username(), "app");
        }
    }

    #[test]
    fn several_hosts_refuse_a_read_only_target() {
        for attrs in ["any", "read-only", "standby", "prefer-standby"] {
            let url = format!("postgres://a@h1:1,h2:2/db?target_session_attrs={attrs}");
            let error = Targets::parse(&url).expect_err(attrs).to_string();
            assert!(error.contains(attrs), "{error}");
        }
        assert!(Targets::parse("postgres://a@h1:1,,h2:2/db").is_err());
        assert!(Targets::parse("mysql://a@h1/db").is_err());
        assert!(Targets::parse("h1/db").is_err());
    }

    #[test]
    fn connections_older_than_a_switch_are_not_current() {
        let switches = Switches {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        };
        let secs = Duration::from_secs;
        assert!(switches.is_current_at(secs(99), secs(100)));
        // A switch 40 s after the start; now is 100 s after it.
        switches.last_ms.store(40_000, Ordering::Relaxed);
        assert!(!switches.is_current_at(secs(61), secs(100)));
        assert!(switches.is_current_at(secs(59), secs(100)));
        switches.record();
        assert!(switches.last_ms.load(Ordering::Relaxed) >= 1);
    }
}
