//! The PostgreSQL connection pool, the embedded migrations, and the translation of
//! database failures that mean something to the domain. [`primary`] follows the writable
//! host of a URL that names several.

pub mod primary;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::time::Duration;

/// The migrations in `migrations/` at the repository root, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// How the server's pool meets a database that is away.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    pub max_connections: u32,
    /// Waiting for a connection (opening one included) fails after this.
    pub acquire_timeout: Duration,
    /// Each statement is cancelled by PostgreSQL after this (`statement_timeout`); zero:
    /// no limit.
    pub statement_timeout: Duration,
    /// With several hosts in the URL: how often the pool's host is asked whether it still
    /// accepts writes.
    pub primary_check: Duration,
}

impl PoolLimits {
    /// `max_connections`, the defaults otherwise (tests and tools).
    pub fn with_connections(max_connections: u32) -> PoolLimits {
        PoolLimits {
            max_connections,
            acquire_timeout: Duration::from_secs(10),
            statement_timeout: Duration::ZERO,
            primary_check: Duration::from_millis(500),
        }
    }
}

/// Opens a pool on `database_url` with the default limits.
pub async fn connect(database_url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    connect_with(database_url, PoolLimits::with_connections(max_connections)).await
}

/// Opens a pool on `database_url` (one connection at once, the rest when needed; a
/// connection found broken is replaced on the next acquire, so the pool recovers by itself
/// once the database answers again). A URL with several hosts gets a pool on the one that
/// accepts writes, which follows the primary when it moves ([`primary`]).
pub async fn connect_with(database_url: &str, limits: PoolLimits) -> Result<PgPool, sqlx::Error> {
    let targets = primary::Targets::parse(database_url)?.map(|options| {
        // No JIT: the server's statements are lookups by key over a few rows, and a plan
        // whose estimate crosses `jit_above_cost` is compiled anew at every execution (20 ms
        // for a redemption batch that otherwise takes 1: migration 0022).
        let options = options
            .application_name("stile-central")
            .options([("jit", "off")]);
        if limits.statement_timeout.is_zero() {
            options
        } else {
            options.options([(
                "statement_timeout",
                limits.statement_timeout.as_millis().to_string(),
            )])
        }
    });
    let pool = PgPoolOptions::new()
        .max_connections(limits.max_connections)
        .acquire_timeout(limits.acquire_timeout);
    if targets.is_replicated() {
        primary::connect_following(targets, pool, limits.acquire_timeout, limits.primary_check)
            .await
    } else {
        pool.connect_with(targets.hosts[0].clone()).await
    }
}

/// Starts a transaction on a connection of `pool`, in a task of its own, so that cancelling
/// the caller (a request past its deadline, a dropped future) cannot stop it halfway. sqlx
/// (0.8) counts a transaction only once PostgreSQL has answered its `BEGIN`: a `begin()`
/// cancelled after sending it hands the connection back to the pool inside a transaction
/// nobody will end, and the next autocommitted statement on that connection would answer
/// for writes that commit only with someone else's `COMMIT`, or never, holding its locks
/// meanwhile. Here the task always finishes: a transaction nobody takes any more is dropped,
/// which rolls it back before the connection is used again. Every transaction of the server
/// starts here (`clippy.toml` forbids `Pool::begin`).
pub async fn begin(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let pool = pool.clone();
    #[allow(clippy::disallowed_methods)]
    let started = tokio::spawn(async move { pool.begin().await });
    started.await.map_err(|_| sqlx::Error::WorkerCrashed)?
}

/// The database is away rather than refusing this statement: it cannot be reached, is
/// shutting down or starting, is a standby (read-only), or cancelled the statement at
/// `statement_timeout`. Answered 503: retrying shortly may succeed.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(_) => matches!(
            sqlstate(error).as_deref(),
            Some(code) if code.starts_with("08")
                || matches!(code, "57P01" | "57P02" | "57P03" | "57014" | "53300" | "25006")
        ),
        _ => false,
    }
}

/// Applies every embedded migration not applied yet. Safe to run from several processes at
/// once: sqlx takes an advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Which database this is, as far as a lost commit is concerned: the cluster's system
/// identifier, its timeline (a promoted standby or a point-in-time restore starts a new one;
/// read from the WAL being written, since the control file's checkpoint keeps the old
/// timeline until the first checkpoint after a promotion)
/// and the database's oid (a restore from a dump into a new database gets a new one). A gate
/// that sees it change re-uploads the online successes it holds: they may be gone with the
/// database they were committed to. A role that may not read the control file (it needs
/// superuser: pg_control_* are restricted by default) gets the timeline
/// and the oid, which still change with a promotion, a point-in-time restore and a restore
/// from a dump.
pub async fn epoch(pool: &PgPool) -> Result<String, sqlx::Error> {
    let full = sqlx::query_as::<_, (String,)>(
        "SELECT (SELECT system_identifier::text FROM pg_control_system()) || '.' || \
                substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) || '.' || \
                (SELECT oid::text FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await;
    match full {
        Ok((epoch,)) => Ok(epoch),
        Err(error) if sqlstate(&error).as_deref() == Some("42501") => {
            let (epoch,): (String,) = sqlx::query_as(
                "SELECT 'tl.' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) || '.' || \
                        oid::text FROM pg_database WHERE datname = current_database()",
            )
            .fetch_one(pool)
            .await?;
            Ok(epoch)
        }
        Err(error) => Err(error),
    }
}

/// PostgreSQL's SQLSTATE of a failure, if it came from the server.
pub fn sqlstate(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
        _ => None,
    }
}

/// A serialization failure or a deadlock: the transaction did nothing and can be run again.
pub fn is_transient(error: &sqlx::Error) -> bool {
    matches!(sqlstate(error).as_deref(), Some("40001") | Some("40P01"))
}

/// A redemption that failed with this rolled back whole and can be run again: a transient
/// failure, or a race on `(jti, function_code)` (the rerun sees the winner's event). The
/// one rule of the transaction path and of the group-commit batches.
pub fn redemption_may_rerun(error: &sqlx::Error) -> bool {
    is_transient(error) || is_unique_violation(error, "redemption_events_jti_function_code_key")
}

/// A unique violation on the named constraint.
pub fn is_unique_violation(error: &sqlx::Error, constraint: &str) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            db.code().as_deref() == Some("23505") && db.constraint() == Some(constraint)
        }
        _ => false,
    }
}
