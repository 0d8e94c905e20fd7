//! A throwaway replicated PostgreSQL on loopback, run by pg_auto_failover: a monitor and two
//! nodes (a primary and a synchronous standby), for the failover tests and `scripts/demo --ha`.
//!
//! - `pg_autoctl` (Debian's `postgresql-15-auto-failover`) runs each node: it starts and
//!   supervises PostgreSQL and follows the monitor's orders (promote, demote, rejoin).
//! - Each component runs in a process group of its own, so [`HaCluster::kill_node`] can
//!   kill -9 a whole node (keeper and PostgreSQL), as when its machine dies. Killing only
//!   the postmaster would not fail over: the keeper restarts it.
//! - The monitor's health checks are tightened ([`MONITOR_TUNING`]) so a dead primary is
//!   replaced in a few seconds, not the default 20 s + 30 s.
//! - As with [`crate::Cluster`], a guard process holds a pipe: when the test process exits,
//!   however it exits, every component is killed and the directory removed.

use crate::{as_user, free_port, postgres_bindir, run_as_user, spawn_guard, wait_until_ready};
use anyhow::{bail, Context};
use sqlx::Connection;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The monitor's settings for a fast failover on loopback (the defaults in brackets):
/// health checks every second (5 s), one retry (2) after 0.5 s (2 s), a node unhealthy after
/// 2 s (20 s), and an unreachable primary given 3 s to demote itself before the standby
/// takes writes (30 s). The last one is safe while replication is synchronous: a primary cut
/// off from its standby cannot acknowledge a commit.
pub const MONITOR_TUNING: &[(&str, &str)] = &[
    ("pgautofailover.health_check_period", "1000"),
    ("pgautofailover.health_check_timeout", "1000"),
    ("pgautofailover.health_check_max_retries", "1"),
    ("pgautofailover.health_check_retry_delay", "500"),
    ("pgautofailover.node_considered_unhealthy_timeout", "2000"),
    ("pgautofailover.primary_demote_timeout", "3000"),
];

/// The database the nodes serve.
pub const DATABASE: &str = "stile";

/// What a node is now, as the monitor records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub name: String,
    pub port: u16,
    pub reported: String,
    pub goal: String,
}

/// A monitor and two nodes run by pg_auto_failover.
#[derive(Debug)]
pub struct HaCluster {
    dir: PathBuf,
    bin: PathBuf,
    run_as: Option<String>,
    pub monitor_port: u16,
    pub node_ports: [u16; 2],
    guard: Mutex<Option<Child>>,
}

impl HaCluster {
    /// Starts the monitor and both nodes and waits until node 1 is primary and node 2 its
    /// synchronous standby (about 15 s).
    pub async fn start() -> anyhow::Result<HaCluster> {
        let bin = postgres_bindir()?;
        if !Path::new(&pg_autoctl()).exists() {
            bail!(
                "pg_autoctl not found: install postgresql-15-auto-failover \
                 (scripts/ensure-deps does)"
            );
        }
        let run_as = run_as_user()?;
        let dir = std::env::temp_dir().join(format!(
            "stile-ha-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(dir.join("run"))?;
        if let Some(user) = &run_as {
            let status = Command::new("chown")
                .arg("-R")
                .arg(format!("{user}:"))
                .arg(&dir)
                .status()?;
            if !status.success() {
                bail!("chown {} to {user} failed", dir.display());
            }
        }
        // The guard: wait for our stdin to close, then kill every component's group.
        let script = format!(
            "read _ignored; for f in {dir}/*.pgid; do /bin/kill -s KILL -- -$(cat $f) 2>/dev/null; done; \
             sleep 0.5; rm -rf {dir}",
            dir = dir.display()
        );
        let guard = spawn_guard(&run_as, &script).context("starting the HA guard")?;
        let cluster = HaCluster {
            dir,
            bin,
            run_as,
            monitor_port: free_port()?,
            node_ports: [free_port()?, free_port()?],
            guard: Mutex::new(Some(guard)),
        };
        let monitor = cluster.dir.join("monitor");
        cluster.launch(
            "monitor",
            &[
                "create",
                "monitor",
                "--pgdata",
                &monitor.display().to_string(),
                "--pgport",
                &cluster.monitor_port.to_string(),
                "--hostname",
                "127.0.0.1",
                "--auth",
                "trust",
                "--no-ssl",
                "--run",
            ],
        )?;
        wait_until_ready(
            &cluster.bin,
            cluster.monitor_port,
            &cluster.dir.join("monitor.log"),
        )?;
        // The monitor's database is created after PostgreSQL first answers.
        let started = Instant::now();
        while let Err(error) = cluster.tune_monitor().await {
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the monitor did not come up: {error:#}\n{}",
                    cluster.log_tail("monitor")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        cluster.create_node(1)?;
        cluster
            .wait_for(Duration::from_secs(60), |states| {
                states
                    .iter()
                    .any(|s| s.name == "node1" && s.reported == "single")
            })
            .await?;
        cluster.create_node(2)?;
        // pg_basebackup waits for a spread checkpoint on the primary (pg_autoctl asks for no
        // fast one): ask for immediate checkpoints until the standby has caught up.
        let started = Instant::now();
        loop {
            let states = cluster.states().await.unwrap_or_default();
            let ready = states
                .iter()
                .any(|s| s.name == "node1" && s.reported == "primary")
                && states
                    .iter()
                    .any(|s| s.name == "node2" && s.reported == "secondary");
            if ready {
                break;
            }
            if started.elapsed() > Duration::from_secs(120) {
                bail!(
                    "the standby did not catch up within 120 s: {states:?}\n{}",
                    cluster.log_tail("node2")
                );
            }
            if let Ok(mut primary) = sqlx::PgConnection::connect(&cluster.node_url(0)).await {
                let _ = sqlx::query("CHECKPOINT").execute(&mut primary).await;
                let _ = primary.close().await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(cluster)
    }

    /// The multi-host URL of the formation, as `pg_autoctl show uri` would give it.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{DATABASE}?target_session_attrs=read-write&sslmode=disable",
            self.node_ports[0], self.node_ports[1]
        )
    }

    /// URL of node `index` (0 or 1) alone.
    pub fn node_url(&self, index: usize) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{DATABASE}?sslmode=disable",
            self.node_ports[index]
        )
    }

    /// URL of the monitor's database.
    pub fn monitor_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/pg_auto_failover?sslmode=disable",
            self.monitor_port
        )
    }

    /// The node that accepts writes now, if any.
    pub async fn writable_node(&self) -> Option<usize> {
        for index in 0..2 {
            let Ok(mut connection) = sqlx::PgConnection::connect(&self.node_url(index)).await
            else {
                continue;
            };
            let writable: Result<(bool,), _> = sqlx::query_as(
                "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'",
            )
            .fetch_one(&mut connection)
            .await;
            let _ = connection.close().await;
            if matches!(writable, Ok((true,))) {
                return Some(index);
            }
        }
        None
    }

    /// Each node's state, from the monitor.
    pub async fn states(&self) -> anyhow::Result<Vec<NodeState>> {
        let mut monitor = sqlx::PgConnection::connect(&self.monitor_url()).await?;
        let rows: Vec<(String, i32, String, String)> = sqlx::query_as(
            "SELECT nodename, nodeport, reportedstate::text, goalstate::text \
             FROM pgautofailover.node ORDER BY nodeid",
        )
        .fetch_all(&mut monitor)
        .await?;
        let _ = monitor.close().await;
        Ok(rows
            .into_iter()
            .map(|(name, port, reported, goal)| NodeState {
                name,
                port: u16::try_from(port).unwrap_or(0),
                reported,
                goal,
            })
            .collect())
    }

    /// Waits until the monitor's states satisfy `done`.
    pub async fn wait_for(
        &self,
        within: Duration,
        done: impl Fn(&[NodeState]) -> bool,
    ) -> anyhow::Result<Vec<NodeState>> {
        let started = Instant::now();
        loop {
            let states = self.states().await.unwrap_or_default();
            if done(&states) {
                return Ok(states);
            }
            if started.elapsed() > within {
                bail!("the nodes did not reach the expected states within {within:?}: {states:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The process group of node `index` (its keeper and PostgreSQL).
    pub fn process_group(&self, index: usize) -> anyhow::Result<u32> {
        let name = format!("node{}", index + 1);
        let pgid = std::fs::read_to_string(self.dir.join(format!("{name}.pgid")))
            .with_context(|| format!("{name} has no process group"))?;
        pgid.trim()
            .parse()
            .with_context(|| format!("{name}'s process group"))
    }

    /// Kills node `index` (0 or 1) with SIGKILL, keeper and PostgreSQL at once: its machine
    /// died.
    pub fn kill_node(&self, index: usize) -> anyhow::Result<()> {
        let pgid = self.process_group(index)?;
        let status = Command::new("kill")
            .args(["-9", "--", &format!("-{pgid}")])
            .status()?;
        if !status.success() {
            bail!("kill -9 of node{}'s group failed", index + 1);
        }
        Ok(())
    }

    /// Starts node `index` again after [`Self::kill_node`]: it rejoins as a standby.
    pub fn restart_node(&self, index: usize) -> anyhow::Result<()> {
        let name = format!("node{}", index + 1);
        let pgdata = self.dir.join(&name).display().to_string();
        self.launch(&name, &["run", "--pgdata", &pgdata])
    }

    /// The last lines of a component's log (`monitor`, `node1`, `node2`).
    pub fn log_tail(&self, name: &str) -> String {
        let log = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stops every component now (they also stop when the process exits).
    pub fn stop(&self) {
        if let Ok(mut guard) = self.guard.lock() {
            if let Some(mut child) = guard.take() {
                drop(child.stdin.take());
                let _ = child.wait();
            }
        }
    }

    fn create_node(&self, number: usize) -> anyhow::Result<()> {
        let name = format!("node{number}");
        let pgdata = self.dir.join(&name).display().to_string();
        let monitor = format!(
            "postgres://autoctl_node@127.0.0.1:{}/pg_auto_failover?sslmode=disable",
            self.monitor_port
        );
        self.launch(
            &name,
            &[
                "create",
                "postgres",
                "--pgdata",
                &pgdata,
                "--pgport",
                &self.node_ports[number - 1].to_string(),
                "--hostname",
                "127.0.0.1",
                "--listen",
                "127.0.0.1",
                "--name",
                &name,
                "--monitor",
                &monitor,
                "--auth",
                "trust",
                "--no-ssl",
                "--dbname",
                DATABASE,
                "--run",
            ],
        )
    }

    /// Runs `pg_autoctl args` in a process group of its own, its group id in `<name>.pgid`
    /// and its output appended to `<name>.log`.
    fn launch(&self, name: &str, args: &[&str]) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt;
        let script = format!(
            "{} >> {}/{name}.log 2>&1 < /dev/null",
            self.autoctl_command(args),
            self.dir.display()
        );
        let mut child = as_user(&self.run_as, Path::new("/bin/sh"))
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting pg_autoctl for {name}"))?;
        std::fs::write(
            self.dir.join(format!("{name}.pgid")),
            child.id().to_string(),
        )?;
        // Reap it in the background when it ends.
        std::thread::spawn(move || child.wait());
        Ok(())
    }

    /// `exec pg_autoctl args` with this formation's environment (its configuration and
    /// state directories, the PostgreSQL binaries on the PATH), for `sh -c`.
    fn autoctl_command(&self, args: &[&str]) -> String {
        let dir = self.dir.display();
        let quoted: Vec<String> = args.iter().map(|arg| format!("'{arg}'")).collect();
        format!(
            "export PATH={bin}:/usr/bin:/bin XDG_CONFIG_HOME={dir}/config \
                    XDG_DATA_HOME={dir}/data XDG_RUNTIME_DIR={dir}/run; \
             exec {autoctl} {args}",
            bin = self.bin.display(),
            autoctl = pg_autoctl(),
            args = quoted.join(" "),
        )
    }

    /// A planned switchover (`pg_autoctl perform switchover`): the primary is demoted, alive,
    /// to a standby and the standby promoted. Returns when the monitor reports it done.
    pub fn switchover(&self) -> anyhow::Result<()> {
        let monitor = self.dir.join("monitor").display().to_string();
        let script = self.autoctl_command(&[
            "perform",
            "switchover",
            "--pgdata",
            &monitor,
            "--wait",
            "60",
        ]);
        let output = as_user(&self.run_as, Path::new("/bin/sh"))
            .args(["-c", &script])
            .stdin(Stdio::null())
            .output()
            .context("running pg_autoctl perform switchover")?;
        if !output.status.success() {
            bail!(
                "pg_autoctl perform switchover failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    async fn tune_monitor(&self) -> anyhow::Result<()> {
        let mut monitor = sqlx::PgConnection::connect(&self.monitor_url()).await?;
        for (name, value) in MONITOR_TUNING {
            sqlx::query(&format!("ALTER SYSTEM SET {name} = '{value}'"))
                .execute(&mut monitor)
                .await?;
        }
        sqlx::query("SELECT pg_reload_conf()")
            .execute(&mut monitor)
            .await?;
        let _ = monitor.close().await;
        Ok(())
    }
}

impl Drop for HaCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where Debian installs `pg_autoctl` (`STILE_PG_AUTOCTL` overrides).
fn pg_autoctl() -> String {
    std::env::var("STILE_PG_AUTOCTL").unwrap_or_else(|_| "/usr/bin/pg_autoctl".to_owned())
}
