//! Test support for every Stile suite: a throwaway PostgreSQL cluster started from the
//! server binaries installed on the machine, and a fresh database per test cloned from a
//! migrated template.
//!
//! - [`Cluster::shared`] starts one cluster per test process (or uses `DATABASE_URL` when it
//!   points at a server that lets us create databases). PostgreSQL refuses to run as root:
//!   when we are root, the cluster runs as the `postgres` user (override with
//!   `STILE_PG_USER`).
//! - The postmaster runs under a tiny shell guard that holds our end of a pipe: when the
//!   test process exits, however it exits, the pipe closes and the guard stops PostgreSQL
//!   and deletes its directory. Nothing is left behind.
//! - [`Cluster::fresh_database`] gives each test its own database, cloned from a template
//!   migrated once per process, so tests never see each other's rows.
//! - [`browser`] runs headless Chromium on a page for the page tests (`--dump-dom`,
//!   screenshots).
//! - [`ha::HaCluster`] runs a replicated PostgreSQL (pg_auto_failover: a monitor, a primary
//!   and a synchronous standby) for the failover tests.
//! - [`corpus`] renders reproducible camera-like frames of QR codes (clean and degraded) for
//!   the agent's tests, the demo and the decoding benchmark.

pub mod corpus;

use anyhow::{anyhow, bail, Context};
use sqlx::migrate::Migrator;
use sqlx::Connection;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Server settings of a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `false` keeps PostgreSQL's durability settings (benchmarks); `true` turns off fsync
    /// and synchronous commit, which is fine for a throwaway test cluster.
    pub fast_and_unsafe: bool,
    pub max_connections: u32,
    /// Load `pg_stat_statements` (top-level statements), for benchmarks that count
    /// statements per transaction.
    pub stat_statements: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            fast_and_unsafe: true,
            max_connections: 400,
            stat_statements: false,
        }
    }
}

/// A running PostgreSQL server we may create databases on.
#[derive(Debug)]
pub struct Cluster {
    /// URL of the `postgres` database (for administration).
    admin_url: String,
    /// The guard process; dropping the cluster (or exiting) closes its stdin and stops it.
    guard: Mutex<Option<Child>>,
    templates: tokio::sync::Mutex<Vec<(usize, String)>>,
    /// The data directory of a cluster this process started.
    data_dir: Option<PathBuf>,
}

static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();

impl Cluster {
    /// The cluster of this test process, started on first use.
    pub fn shared() -> &'static Cluster {
        let result = SHARED.get_or_init(|| match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => Ok(Cluster::external(url)),
            _ => Cluster::start(&ClusterOptions::default()).map_err(|e| format!("{e:#}")),
        });
        match result {
            Ok(cluster) => cluster,
            Err(error) => panic!("cannot start a throwaway PostgreSQL cluster: {error}"),
        }
    }

    fn external(url: String) -> Cluster {
        Cluster {
            admin_url: url,
            guard: Mutex::new(None),
            templates: tokio::sync::Mutex::new(Vec::new()),
            data_dir: None,
        }
    }

    /// Starts a new private cluster in a temporary directory.
    pub fn start(options: &ClusterOptions) -> anyhow::Result<Cluster> {
        let bin = postgres_bindir()?;
        let run_as = run_as_user()?;
        let dir = std::env::temp_dir().join(format!(
            "stile-pg-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if let Some(user) = &run_as {
            let status = Command::new("chown")
                .arg("-R")
                .arg(format!("{user}:"))
                .arg(&dir)
                .status()
                .context("running chown")?;
            if !status.success() {
                bail!("chown {} to {user} failed", dir.display());
            }
        }
        let data = dir.join("data");
        let initdb = as_user(&run_as, &bin.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "-N",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .context("running initdb")?;
        if !initdb.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&initdb.stderr).trim()
            );
        }
        let port = free_port()?;
        let mut settings = format!(
            "-p {port} -h 127.0.0.1 -k {} -c max_connections={}",
            dir.display(),
            options.max_connections
        );
        if options.fast_and_unsafe {
            settings.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        if options.stat_statements {
            settings.push_str(
                " -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=top",
            );
        }
        // The guard: start the postmaster, wait for our stdin to close, stop it fast, clean up.
        let script = format!(
            "{postgres} -D {data} {settings} >{log} 2>&1 & pid=$!; \
             read _ignored; kill -INT $pid 2>/dev/null; wait $pid; rm -rf {dir}",
            postgres = bin.join("postgres").display(),
            data = data.display(),
            log = dir.join("postgres.log").display(),
            dir = dir.display(),
        );
        let guard = spawn_guard(&run_as, &script).context("starting postgres")?;
        let cluster = Cluster {
            admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            guard: Mutex::new(Some(guard)),
            templates: tokio::sync::Mutex::new(Vec::new()),
            data_dir: Some(data.clone()),
        };
        wait_until_ready(&bin, port, &dir.join("postgres.log"))?;
        Ok(cluster)
    }

    /// URL of the administrative `postgres` database.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// URL of database `name` on this cluster.
    pub fn url_of(&self, name: &str) -> String {
        match self.admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => format!("{}/{name}", self.admin_url),
        }
    }

    /// A new empty database, migrated with `migrator` (cloned from a template migrated once).
    pub async fn fresh_database(&self, migrator: &'static Migrator) -> anyhow::Result<String> {
        let template = self.template_for(migrator).await?;
        let name = format!("stile_test_{}", rand::random::<u64>());
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await?;
        // Cloning needs the template to be idle; another clone running at the same moment
        // makes it busy, so retry briefly.
        let started = Instant::now();
        loop {
            let created = sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
                .execute(&mut admin)
                .await;
            match created {
                Ok(_) => break,
                Err(error) if started.elapsed() < Duration::from_secs(30) => {
                    let busy = error
                        .to_string()
                        .contains("is being accessed by other users");
                    if !busy {
                        return Err(error.into());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(self.url_of(&name))
    }

    async fn template_for(&self, migrator: &'static Migrator) -> anyhow::Result<String> {
        let key = migrator as *const Migrator as usize;
        let mut templates = self.templates.lock().await;
        if let Some((_, name)) = templates.iter().find(|(k, _)| *k == key) {
            return Ok(name.clone());
        }
        let name = format!("stile_template_{}", rand::random::<u32>());
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        let mut conn = sqlx::PgConnection::connect(&self.url_of(&name)).await?;
        migrator
            .run(&mut conn)
            .await
            .context("migrating the template")?;
        conn.close().await?;
        templates.push((key, name.clone()));
        Ok(name)
    }

    /// The postmaster's process id (first line of `postmaster.pid`).
    pub fn postmaster_pid(&self) -> anyhow::Result<u32> {
        let dir = self
            .data_dir
            .as_ref()
            .context("not a cluster this process started")?;
        let text = std::fs::read_to_string(dir.join("postmaster.pid"))
            .context("reading postmaster.pid")?;
        text.lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .context("postmaster.pid has no pid")
    }

    /// The postmaster and every process it started (backends, WAL writer, ...).
    fn server_processes(&self) -> anyhow::Result<Vec<u32>> {
        let postmaster = self.postmaster_pid()?;
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").context("reading /proc")? {
            let Ok(pid) = entry?.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // The parent is the second field after the command name (which may hold spaces).
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|field| field.parse::<u32>().ok());
            if parent == Some(postmaster) {
                pids.push(pid);
            }
        }
        Ok(pids)
    }

    /// Freezes the whole server (SIGSTOP to the postmaster and all its processes): it keeps
    /// its connections and accepts new ones into the kernel's backlog, and answers nothing —
    /// a database host that hangs.
    pub fn freeze(&self) -> anyhow::Result<()> {
        for pid in self.server_processes()? {
            send_signal(pid, "STOP")?;
        }
        Ok(())
    }

    /// Resumes a frozen server.
    pub fn thaw(&self) -> anyhow::Result<()> {
        for pid in self.server_processes()? {
            send_signal(pid, "CONT")?;
        }
        Ok(())
    }

    /// Stops the cluster now (it also stops when the process exits).
    pub fn stop(&self) {
        if let Ok(mut guard) = self.guard.lock() {
            if let Some(mut child) = guard.take() {
                drop(child.stdin.take());
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The directory of the PostgreSQL server binaries: `STILE_PG_BINDIR`, else the newest
/// `/usr/lib/postgresql/*/bin`, else wherever `initdb` is on the PATH.
pub fn postgres_bindir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("STILE_PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let which = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .context("looking for initdb")?;
    let path = String::from_utf8_lossy(&which.stdout).trim().to_owned();
    let path = std::fs::canonicalize(&path).map_err(|_| {
        anyhow!("PostgreSQL server binaries not found: install postgresql (apt-get install postgresql) or set STILE_PG_BINDIR")
    })?;
    path.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("initdb has no parent directory"))
}

/// `None` when we may run PostgreSQL ourselves; the user to run it as when we are root.
fn run_as_user() -> anyhow::Result<Option<String>> {
    let output = Command::new("id")
        .arg("-u")
        .output()
        .context("running id -u")?;
    let uid = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if uid != "0" {
        return Ok(None);
    }
    Ok(Some(
        std::env::var("STILE_PG_USER").unwrap_or_else(|_| "postgres".to_owned()),
    ))
}

fn as_user(user: &Option<String>, program: &Path) -> Command {
    match user {
        None => Command::new(program),
        Some(user) => {
            let mut command = Command::new("runuser");
            command.args(["-u", user, "--"]).arg(program);
            command
        }
    }
}

/// A shell running `script` (as `user`), its stdin a pipe we hold: the script's `read`
/// returns when the test process closes it, however it exits.
fn spawn_guard(user: &Option<String>, script: &str) -> std::io::Result<Child> {
    as_user(user, Path::new("/bin/sh"))
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

fn wait_until_ready(bin: &Path, port: u16, log: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        let ready = Command::new(bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .map(|status| status.success())
            .unwrap_or(false);
        if ready {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(log).unwrap_or_default();
    bail!("PostgreSQL did not become ready within 60 s; its log:\n{log}")
}

pub mod browser;
pub mod ha;
pub mod proxy;

/// Sends signal `name` (`STOP`, `CONT`, `TERM`, ...) to process `pid`: how fault tests and
/// benchmarks freeze, resume or stop a real process.
pub fn send_signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{name} {pid} failed");
    }
    Ok(())
}
