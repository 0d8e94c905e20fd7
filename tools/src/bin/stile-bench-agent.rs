//! `stile-bench-agent`: the gate agent's speed and memory figures (issue 5, "Speed and
//! memory"), measured on real processes.
//!
//! On a private PostgreSQL cluster with durable settings (or `DATABASE_URL`, which must name
//! an empty database) it seeds by SQL one merchant with a gate, the device `bench-dev`, an
//! operator and `--tickets` activated OTA tickets of three ENTRY uses each, signs one QR per
//! ticket with the server's active key (the tokens stay in memory), starts the real
//! `central-server` binary, then the real `edge-agent` binary (no frame source, operator
//! login configured, state in a temporary directory), and measures:
//! 1. **initial sync**: from spawning the agent until its `/api/status` shows every ticket
//!    and a completed sync (polled every 100 ms). To show where the time goes, the bench
//!    then walks the same feed with a bare HTTP client (the central's answers apart from
//!    the JSON decode) and pulls it into a fresh [`Gate`] in this process (the pages apart
//!    from their application to SQLite);
//! 2. **online scans**: `--online-scans` distinct QRs through the agent's `POST /api/scan`,
//!    one after another: the agent's reported `latency_ms` and the HTTP round trip;
//! 3. **offline decisions**: the central process is killed (the agent's calls are refused at
//!    once), then `--offline-scans` distinct QRs go through `/api/scan`. The agent's
//!    `latency_ms` is taken when the decision is formed, *before* it is written to SQLite, so
//!    it leaves the commit out; the round trip has it (plus loopback HTTP). The exact
//!    "code → decision committed" time is measured on the in-process [`Gate`] over the same
//!    synced state and the same dead uplink: the wall time of [`Gate::decide_code`], which
//!    returns after the commit. Baseline: `--baseline-commits` bare single-row SQLite
//!    transactions (WAL, `synchronous = FULL`) in the same directory, on a fresh file and
//!    on one whose WAL was grown first (as the agent's is by its initial sync), since on
//!    ext4 a growing WAL pays a journal commit per fsync;
//!
//!    Before that, **a hanging central**: the central is stopped with SIGSTOP (the kernel
//!    still accepts connections, nothing answers), `--offline-scans` more distinct QRs go
//!    through `/api/scan`, then SIGCONT: scans decided per second and the p99 round trip,
//!    printed against the same figures with the central killed;
//! 4. **memory**: VmRSS and VmHWM of the agent process (from `/proc`) after each phase and
//!    during `--soak-secs` of continuous offline scanning that cycles through every token
//!    (fresh ones are accepted offline and queued; scanned ones are blocked locally, or
//!    re-shown by the agent's 3 s debounce when seen again that soon).
//!
//! Figures are printed next to their targets, never asserted: timing depends on the machine
//! (the load average is printed with them; on a shared two-core machine it moves p99s).
//! The binaries are found next to this one (same cargo profile), or through
//! `STILE_CENTRAL_SERVER_BIN` and `STILE_EDGE_AGENT_BIN`.
//!
//! Run: `cargo build --release -p central-server -p edge-agent -p stile-tools &&
//! target/release/stile-bench-agent`. Smallest form, well under a minute even unoptimised:
//! `cargo build -p central-server -p edge-agent -p stile-tools &&
//! target/debug/stile-bench-agent --smoke`.

use anyhow::{bail, Context};
use clap::Parser;
use edge_agent::config::AgentConfig;
use edge_agent::decide::Gate;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stile_testkit::ClusterOptions;
use stile_tools::bench::{
    self, DEVICE_ID, DEVICE_SECRET, FUNCTION, MERCHANT_CODE, OPERATOR, PASSWORD, VENUE_CODE,
};
use stile_tools::ServerProcess;

#[derive(Parser)]
#[command(
    name = "stile-bench-agent",
    about = "Initial sync, online and offline scan latency, and memory of the real edge-agent"
)]
struct Args {
    /// Tickets of the merchant (default 100,000; 500 with --smoke).
    #[arg(long)]
    tickets: Option<usize>,
    /// Distinct QRs scanned while the central is up (default 500; 50 with --smoke).
    #[arg(long)]
    online_scans: Option<usize>,
    /// Distinct QRs scanned after the central is killed (default 1,000; 50 with --smoke).
    #[arg(long)]
    offline_scans: Option<usize>,
    /// Seconds of continuous offline scanning before the last memory reading (default 20;
    /// 2 with --smoke).
    #[arg(long)]
    soak_secs: Option<u64>,
    /// Everything tiny, to check the benchmark itself in seconds.
    #[arg(long)]
    smoke: bool,
    /// Where the agents' SQLite files go (a temporary directory is made inside it): put it
    /// on the disk whose fsync you want to measure.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// `RUST_LOG` of the agent process; its log goes to a file in the work directory.
    #[arg(long, default_value = "info")]
    agent_log: String,
    /// Give up on the initial sync after this many seconds.
    #[arg(long, default_value_t = 300)]
    sync_timeout_secs: u64,
}

/// The run's sizes, `--smoke` and explicit flags resolved.
#[derive(Debug, Clone, Copy)]
struct Plan {
    tickets: usize,
    online_scans: usize,
    offline_scans: usize,
    soak: Duration,
}

impl Plan {
    fn from_args(args: &Args) -> anyhow::Result<Plan> {
        let pick = |explicit: Option<usize>, smoke: usize, full: usize| {
            explicit.unwrap_or(if args.smoke { smoke } else { full })
        };
        let plan = Plan {
            tickets: pick(args.tickets, 500, 100_000),
            online_scans: pick(args.online_scans, 50, 500),
            offline_scans: pick(args.offline_scans, 50, 1_000),
            soak: Duration::from_secs(args.soak_secs.unwrap_or(if args.smoke { 2 } else { 20 })),
        };
        if plan.online_scans == 0 || plan.offline_scans == 0 {
            bail!("--online-scans and --offline-scans must be at least 1");
        }
        if plan.tickets < plan.online_scans + plan.offline_scans {
            bail!(
                "--tickets ({}) must cover --online-scans + --offline-scans ({}): every measured scan takes a fresh QR",
                plan.tickets,
                plan.online_scans + plan.offline_scans
            );
        }
        Ok(plan)
    }
}

const USES_PER_TICKET: i32 = 3;
/// The agent's feed page (`sync::run` asks for 1000).
const FEED_PAGE: u32 = 1000;
const STATUS_POLL: Duration = Duration::from_millis(100);
const TARGET_SYNC_TICKETS: usize = 100_000;
const TARGET_SYNC_SECS: f64 = 10.0;
const TARGET_OFFLINE_P99_MS: f64 = 5.0;
const TARGET_RSS_MB: f64 = 40.0;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let plan = Plan::from_args(&args)?;
    let agent_binary = stile_tools::sibling_binary("edge-agent", "STILE_EDGE_AGENT_BIN")?;
    let work = match &args.work_dir {
        Some(dir) => tempfile::Builder::new()
            .prefix("stile-bench-agent-")
            .tempdir_in(dir),
        None => tempfile::Builder::new()
            .prefix("stile-bench-agent-")
            .tempdir(),
    }
    .context("creating the work directory")?;
    println!(
        "stile-bench-agent: {} tickets, {} online + {} offline scans, {} s soak, {} build; work dir {}; load average {}",
        plan.tickets,
        plan.online_scans,
        plan.offline_scans,
        plan.soak.as_secs(),
        if cfg!(debug_assertions) {
            "DEBUG (timings not representative)"
        } else {
            "release"
        },
        work.path().display(),
        load_average()
    );

    let options = ClusterOptions {
        fast_and_unsafe: false,
        max_connections: 100,
        stat_statements: false,
    };
    let (url, cluster) = stile_tools::database("stile_bench_agent", &options).await?;
    let pool = central_server::db::connect(&url, 4)
        .await
        .context("connecting to the bench database")?;
    central_server::db::migrate(&pool)
        .await
        .context("migrating")?;
    central_server::keys::ensure_active_key(&pool, &central_server::kek::KeyEncryption::none())
        .await
        .context("creating the signing key")?;
    bench::seed(
        &pool,
        &[bench::TicketRun {
            prefix: "B",
            count: i64::try_from(plan.tickets).context("--tickets is too large")?,
            uses: USES_PER_TICKET,
        }],
    )
    .await?;
    let tokens = stile_tools::sign_bench_tokens(&pool, MERCHANT_CODE, plan.tickets).await?;
    sqlx::query("ANALYZE")
        .execute(&pool)
        .await
        .context("ANALYZE")?;
    pool.close().await;

    let server = ServerProcess::start(&url, &[("RUST_LOG", "warn")]).await?;

    // 1. Initial sync of the real agent process.
    let port = stile_tools::free_port()?;
    let config_path = work.path().join("agent.toml");
    std::fs::write(
        &config_path,
        agent_toml(&server.base_url, &work.path().join("agent-state"), port),
    )
    .context("writing the agent's config")?;
    let log_path = work.path().join("agent.log");
    let mut agent = AgentProcess::spawn(
        &agent_binary,
        &config_path,
        &log_path,
        &args.agent_log,
        port,
    )?;
    let timeline = agent
        .wait_for_sync(
            plan.tickets as i64,
            Duration::from_secs(args.sync_timeout_secs),
        )
        .await?;
    let after_sync = agent.memory();
    timeline.print(plan.tickets);

    // Where the sync's time goes: the same feed walked with a bare client, then pulled and
    // applied in this process exactly as the agent's sync loop does.
    let raw_feed = probe_feed(&server.base_url).await?;
    raw_feed.print();
    let local = LocalGate::open(&server.base_url, &work.path().join("inproc-state"))?;
    let breakdown = local.pull_feed().await?;
    breakdown.print();

    // 2. Online scans.
    let online = agent
        .scan_phase(&tokens[..plan.online_scans])
        .await
        .context("online scans")?;
    online.print("online scans through the agent (central up)");
    let after_online = agent.memory();

    // 3b. A hanging central: SIGSTOP, distinct QRs, SIGCONT; the agent must notice the hang
    // after one timeout and decide the rest offline at once.
    let hang_first = plan.online_scans + plan.offline_scans;
    let hang_count = plan
        .offline_scans
        .min(tokens.len().saturating_sub(hang_first));
    server.signal("STOP")?;
    println!(
        "
central stopped with SIGSTOP; load average {}",
        load_average()
    );
    let hang = agent
        .scan_phase(&tokens[hang_first..hang_first + hang_count])
        .await
        .context("scans while the central hangs")?;
    server.signal("CONT")?;
    hang.print("scans through the agent while the central hangs (SIGSTOP)");

    // 3. Offline decisions: the central goes away; connections are refused from now on.
    drop(server);
    println!("\ncentral killed; load average {}", load_average());
    // Each QR is decided by the agent process, then by the in-process gate, then a bare
    // commit is timed: the three series see the same moments of the (shared) disk and CPUs.
    let mut grown = tokio::task::block_in_place(|| {
        CommitProbe::open(&work.path().join("baseline-grown.db"), true)
    })?;
    let mut offline = ScanPhase::default();
    let mut committed = Committed::default();
    let mut grown_ms = Vec::with_capacity(plan.offline_scans);
    let mut round_trips = Duration::ZERO;
    for token in &tokens[plan.online_scans..plan.online_scans + plan.offline_scans] {
        let (rtt_ms, decision) = agent.scan(token).await.context("offline scan")?;
        offline.add(rtt_ms, &decision);
        round_trips += Duration::from_secs_f64(rtt_ms / 1000.0);
        committed.add(&local.gate, token).await?;
        grown_ms.push(tokio::task::block_in_place(|| grown.commit())?);
    }
    offline.finish(round_trips);
    committed.finish();
    let after_offline = agent.memory();
    offline.print("offline scans through the agent (central killed)");
    committed.print();
    let mut fresh = tokio::task::block_in_place(|| {
        CommitProbe::open(&work.path().join("baseline-fresh.db"), false)
    })?;
    let fresh_ms = tokio::task::block_in_place(|| {
        (0..plan.offline_scans)
            .map(|_| fresh.commit())
            .collect::<anyhow::Result<Vec<f64>>>()
    })?;
    let baseline = Baseline::new(fresh_ms, grown_ms);
    baseline.print();

    // 4. Memory under continuous scanning.
    let soak = agent
        .soak(&tokens, hang_first + hang_count, plan.soak)
        .await?;
    soak.print();

    let memory = MemoryReport {
        after_sync,
        after_online,
        after_offline,
        soak_samples: soak.rss_samples_kib.clone(),
        after_soak: agent.memory(),
    };
    memory.print();
    print_summary(
        &plan, &timeline, &raw_feed, &breakdown, &online, &offline, &committed, &baseline, &memory,
    );
    let rate = |phase: &ScanPhase| phase.scans() as f64 / phase.elapsed.as_secs_f64().max(1e-9);
    println!(
        "{:<50} {:>22}   baseline (central killed): {:.0}/s, p99 {:.1} ms; target: every scan <= 1000 ms, after the first <= 300 ms",
        "hanging central (SIGSTOP): scans/s, p99 round trip",
        format!(
            "{:.0}/s, p99 {:.1} ms",
            rate(&hang),
            percentile(&hang.rtt_ms, 99.0)
        ),
        rate(&offline),
        percentile(&offline.rtt_ms, 99.0)
    );
    println!(
        "{:<50} {:>22}",
        "hanging central: slowest scan, slowest after the first",
        format!(
            "{:.1} ms, {:.1} ms",
            percentile(&hang.rtt_ms, 100.0),
            hang.after_first_max_ms
        )
    );
    println!("load average at the end: {}", load_average());
    drop(agent);
    drop(local);
    drop(cluster);
    Ok(())
}

/// The agent's settings: scans only through `/api/scan`, syncing every second, the operator
/// logged in at start; everything else at its default (online deadline 800 ms, debounce 3 s,
/// offline policy: state up to an hour old, OTA and MINIAPP allowed).
/// The agent's local API token (`POST /api/scan`).
const API_TOKEN: &str = "bench-local-api-token";

fn agent_toml(central_url: &str, state_dir: &Path, port: u16) -> String {
    format!(
        r#"device_id = "{DEVICE_ID}"
device_secret = "{DEVICE_SECRET}"
central_url = "{central_url}"
venue_code = "{VENUE_CODE}"
function_code = "{FUNCTION}"
state_dir = "{state}"
listen = "127.0.0.1:{port}"
sync_interval_secs = 1
api_token = "{API_TOKEN}"

[source]
kind = "none"

[operator]
username = "{OPERATOR}"
password = "{PASSWORD}"
"#,
        state = state_dir.display()
    )
}

/// Resident memory of a process, KiB, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
}

fn memory_of(pid: u32) -> Option<Memory> {
    let (hwm_kib, rss_kib) = stile_tools::memory_kib(pid)?;
    Some(Memory { rss_kib, hwm_kib })
}

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn describe_memory(memory: Option<Memory>) -> String {
    match memory {
        Some(m) => format!("RSS {:.1} MB, HWM {:.1} MB", mb(m.rss_kib), mb(m.hwm_kib)),
        None => "n/a (no /proc/<pid>/status)".to_owned(),
    }
}

/// The fields of `/api/status` the benchmark reads.
#[derive(Debug, Deserialize)]
struct AgentStatus {
    synced_tickets: i64,
    last_sync_at: Option<String>,
    operator: Option<serde_json::Value>,
    keys: KeysStatus,
    uplink: UplinkStatus,
    outbox: OutboxStatus,
}

#[derive(Debug, Deserialize)]
struct KeysStatus {
    kids: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct UplinkStatus {
    online: bool,
}

#[derive(Debug, Deserialize)]
struct OutboxStatus {
    depth: i64,
}

/// The fields of a `/api/scan` answer the benchmark reads.
#[derive(Debug, Deserialize)]
struct AgentDecision {
    code: String,
    mode: String,
    latency_ms: f64,
    #[serde(default)]
    repeated: bool,
}

/// An `edge-agent run` child process; killed when dropped. Its log goes to a file.
struct AgentProcess {
    child: Child,
    base_url: String,
    log_path: PathBuf,
    client: reqwest::Client,
    started: Instant,
}

impl AgentProcess {
    fn spawn(
        binary: &Path,
        config: &Path,
        log_path: &Path,
        rust_log: &str,
        port: u16,
    ) -> anyhow::Result<AgentProcess> {
        let log = std::fs::File::create(log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        let started = Instant::now();
        let child = Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", rust_log)
            // Readable lines into the log file, not the journal.
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(AgentProcess {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            log_path: log_path.to_owned(),
            client,
            started,
        })
    }

    fn memory(&self) -> Option<Memory> {
        memory_of(self.child.id())
    }

    /// The last lines of the agent's log, to explain a failure.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "edge-agent exited: {status}; its log ends:\n{}",
                self.log_tail()
            );
        }
        Ok(())
    }

    async fn status(&self) -> anyhow::Result<AgentStatus> {
        let response = self
            .client
            .get(format!("{}/api/status", self.base_url))
            .timeout(Duration::from_secs(5))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("/api/status answered {}", response.status());
        }
        Ok(response.json().await?)
    }

    /// Polls `/api/status` until every ticket is synced and a sync completed, noting when
    /// each milestone was first seen (times from spawning the process).
    async fn wait_for_sync(
        &mut self,
        expected: i64,
        limit: Duration,
    ) -> anyhow::Result<SyncTimeline> {
        let mut timeline = SyncTimeline::default();
        loop {
            self.ensure_running()?;
            let at = self.started.elapsed();
            if let Ok(status) = self.status().await {
                timeline.answering.get_or_insert(at);
                if status.operator.is_some() && !status.keys.kids.is_empty() {
                    timeline.logged_in_with_keys.get_or_insert(at);
                }
                if status.synced_tickets > 0 {
                    timeline.first_tickets.get_or_insert(at);
                }
                if status.synced_tickets >= expected && status.last_sync_at.is_some() {
                    timeline.complete = at;
                    timeline.synced_tickets = status.synced_tickets;
                    timeline.memory = self.memory();
                    return Ok(timeline);
                }
                timeline.last_seen = status.synced_tickets;
            }
            if at > limit {
                bail!(
                    "the agent synced {} of {expected} tickets within {limit:?}; its log ends:\n{}",
                    timeline.last_seen,
                    self.log_tail()
                );
            }
            tokio::time::sleep(STATUS_POLL).await;
        }
    }

    /// One `POST /api/scan`; returns the round trip in milliseconds and the decision.
    async fn scan(&self, code: &str) -> anyhow::Result<(f64, AgentDecision)> {
        let started = Instant::now();
        let response = self
            .client
            .post(format!("{}/api/scan", self.base_url))
            .bearer_auth(API_TOKEN)
            .json(&serde_json::json!({ "code": code }))
            .send()
            .await
            .context("POST /api/scan")?;
        if !response.status().is_success() {
            bail!("/api/scan answered {}", response.status());
        }
        let decision: AgentDecision = response.json().await.context("reading the decision")?;
        Ok((started.elapsed().as_secs_f64() * 1000.0, decision))
    }

    /// Scans each token once, one after another.
    async fn scan_phase(&mut self, tokens: &[String]) -> anyhow::Result<ScanPhase> {
        self.ensure_running()?;
        let started = Instant::now();
        let mut phase = ScanPhase::default();
        for token in tokens {
            let (rtt_ms, decision) = self.scan(token).await?;
            phase.add(rtt_ms, &decision);
        }
        phase.finish(started.elapsed());
        Ok(phase)
    }

    /// Scans continuously for `length`, cycling through every token from `first`, and samples
    /// the agent's resident memory every second.
    async fn soak(
        &mut self,
        tokens: &[String],
        first: usize,
        length: Duration,
    ) -> anyhow::Result<Soak> {
        self.ensure_running()?;
        let started = Instant::now();
        let mut phase = ScanPhase::default();
        let mut rss_samples_kib = Vec::new();
        let mut next_sample = started + Duration::from_secs(1);
        let mut index = first;
        while started.elapsed() < length {
            let (rtt_ms, decision) = self.scan(&tokens[index % tokens.len()]).await?;
            phase.add(rtt_ms, &decision);
            index += 1;
            if Instant::now() >= next_sample {
                if let Some(memory) = self.memory() {
                    rss_samples_kib.push(memory.rss_kib);
                }
                next_sample += Duration::from_secs(1);
            }
        }
        phase.finish(started.elapsed());
        let status = self.status().await.ok();
        let outbox_depth = status.as_ref().map(|s| s.outbox.depth);
        let uplink_online = status.as_ref().map(|s| s.uplink.online);
        Ok(Soak {
            phase,
            rss_samples_kib,
            outbox_depth,
            uplink_online,
        })
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// When the initial sync reached each milestone, from spawning the agent.
#[derive(Debug, Default)]
struct SyncTimeline {
    answering: Option<Duration>,
    logged_in_with_keys: Option<Duration>,
    first_tickets: Option<Duration>,
    complete: Duration,
    synced_tickets: i64,
    last_seen: i64,
    memory: Option<Memory>,
}

impl SyncTimeline {
    fn print(&self, tickets: usize) {
        let secs = |at: Option<Duration>| {
            at.map(|d| format!("{:.2} s", d.as_secs_f64()))
                .unwrap_or_else(|| "not seen".to_owned())
        };
        println!(
            "\ninitial sync of {tickets} tickets (agent process, status polled every {} ms):",
            STATUS_POLL.as_millis()
        );
        println!("  status page answering     {}", secs(self.answering));
        println!(
            "  operator and keys in      {}",
            secs(self.logged_in_with_keys)
        );
        println!("  first tickets stored      {}", secs(self.first_tickets));
        println!(
            "  all {} tickets, sync done {:.2} s   ({:.0} tickets/s; agent {})",
            self.synced_tickets,
            self.complete.as_secs_f64(),
            self.synced_tickets as f64 / self.complete.as_secs_f64().max(1e-9),
            describe_memory(self.memory)
        );
    }
}

/// Decisions of one scan phase.
#[derive(Debug, Default)]
struct ScanPhase {
    agent_ms: Vec<f64>,
    rtt_ms: Vec<f64>,
    /// "CODE mode" → count.
    outcomes: BTreeMap<String, usize>,
    repeated: usize,
    elapsed: Duration,
    /// The slowest round trip after the phase's first scan.
    after_first_max_ms: f64,
}

impl ScanPhase {
    fn add(&mut self, rtt_ms: f64, decision: &AgentDecision) {
        if !self.rtt_ms.is_empty() {
            self.after_first_max_ms = self.after_first_max_ms.max(rtt_ms);
        }
        self.rtt_ms.push(rtt_ms);
        if decision.repeated {
            // Re-shown by the debounce: its latency is the original decision's.
            self.repeated += 1;
        } else {
            self.agent_ms.push(decision.latency_ms);
        }
        *self
            .outcomes
            .entry(format!("{} {}", decision.code, decision.mode))
            .or_default() += 1;
    }

    fn finish(&mut self, elapsed: Duration) {
        self.elapsed = elapsed;
        sort(&mut self.agent_ms);
        sort(&mut self.rtt_ms);
    }

    fn scans(&self) -> usize {
        self.rtt_ms.len()
    }

    fn count(&self, code: &str, mode: &str) -> usize {
        self.outcomes
            .get(&format!("{code} {mode}"))
            .copied()
            .unwrap_or(0)
    }

    fn share(&self, code: &str, mode: &str) -> f64 {
        100.0 * self.count(code, mode) as f64 / self.scans().max(1) as f64
    }

    fn print(&self, title: &str) {
        println!(
            "\n{title}: {} scans in {:.2} s ({:.0}/s)",
            self.scans(),
            self.elapsed.as_secs_f64(),
            self.scans() as f64 / self.elapsed.as_secs_f64().max(1e-9)
        );
        for (outcome, count) in &self.outcomes {
            println!("  {outcome}: {count}");
        }
        if self.repeated > 0 {
            println!("  (of which re-shown by the debounce: {})", self.repeated);
        }
        println!(
            "  agent latency_ms (code to committed)      p50 {:.3}  p99 {:.3}  max {:.3} ms",
            percentile(&self.agent_ms, 50.0),
            percentile(&self.agent_ms, 99.0),
            percentile(&self.agent_ms, 100.0)
        );
        println!(
            "  HTTP round trip (decision committed)        p50 {:.3}  p99 {:.3}  max {:.3} ms",
            percentile(&self.rtt_ms, 50.0),
            percentile(&self.rtt_ms, 99.0),
            percentile(&self.rtt_ms, 100.0)
        );
    }
}

struct Soak {
    phase: ScanPhase,
    rss_samples_kib: Vec<u64>,
    outbox_depth: Option<i64>,
    uplink_online: Option<bool>,
}

impl Soak {
    fn print(&self) {
        self.phase.print("soak: continuous offline scanning");
        println!(
            "  outbox depth afterwards {}   uplink online {}",
            self.outbox_depth
                .map_or_else(|| "n/a".to_owned(), |d| d.to_string()),
            self.uplink_online
                .map_or_else(|| "n/a".to_owned(), |o| o.to_string())
        );
    }
}

struct MemoryReport {
    after_sync: Option<Memory>,
    after_online: Option<Memory>,
    after_offline: Option<Memory>,
    soak_samples: Vec<u64>,
    after_soak: Option<Memory>,
}

impl MemoryReport {
    fn print(&self) {
        println!("\nagent memory:");
        println!(
            "  after the initial sync    {}",
            describe_memory(self.after_sync)
        );
        println!(
            "  after the online scans    {}",
            describe_memory(self.after_online)
        );
        println!(
            "  after the offline scans   {}",
            describe_memory(self.after_offline)
        );
        if let (Some(low), Some(high)) = (
            self.soak_samples.iter().min(),
            self.soak_samples.iter().max(),
        ) {
            println!(
                "  during the soak           RSS {:.1} to {:.1} MB ({} samples, one a second)",
                mb(*low),
                mb(*high),
                self.soak_samples.len()
            );
        }
        println!(
            "  after the soak            {}",
            describe_memory(self.after_soak)
        );
    }

    /// The steady state under scanning: the highest RSS seen during or after the soak.
    fn steady_rss_kib(&self) -> Option<u64> {
        self.soak_samples
            .iter()
            .copied()
            .chain(self.after_soak.map(|m| m.rss_kib))
            .max()
    }
}

/// The 1-, 5- and 15-minute load averages: the figures are only as quiet as the machine.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "n/a".to_owned())
}

/// The feed walked with a bare HTTP client, page by page as the agent asks for it.
struct RawFeed {
    pages: usize,
    tickets: usize,
    bytes: usize,
    /// Request sent to response headers: the central's queries and JSON encoding (axum
    /// answers a `Json` body whole, with its length).
    to_headers: Duration,
    body: Duration,
    decode: Duration,
}

impl RawFeed {
    fn print(&self) {
        let per_page = |d: Duration| d.as_secs_f64() * 1000.0 / self.pages.max(1) as f64;
        println!(
            "\nthe feed walked with a bare HTTP client: {} pages, {} tickets, {:.1} MB ({} bytes a ticket)",
            self.pages,
            self.tickets,
            self.bytes as f64 / 1_048_576.0,
            self.bytes / self.tickets.max(1)
        );
        println!(
            "  central, request to headers (queries + JSON encode)  {:.2} s  ({:.1} ms a page)",
            self.to_headers.as_secs_f64(),
            per_page(self.to_headers)
        );
        println!(
            "  body transfer                                        {:.2} s  ({:.1} ms a page)",
            self.body.as_secs_f64(),
            per_page(self.body)
        );
        println!(
            "  JSON decode into TicketFeedPage                      {:.2} s  ({:.1} ms a page)",
            self.decode.as_secs_f64(),
            per_page(self.decode)
        );
    }
}

async fn probe_feed(base_url: &str) -> anyhow::Result<RawFeed> {
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")?;
    let credential = format!("{DEVICE_ID}:{DEVICE_SECRET}");
    let mut raw = RawFeed {
        pages: 0,
        tickets: 0,
        bytes: 0,
        to_headers: Duration::ZERO,
        body: Duration::ZERO,
        decode: Duration::ZERO,
    };
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("limit", FEED_PAGE.to_string())];
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let started = Instant::now();
        let response = client
            .get(format!("{base_url}/device/tickets"))
            .query(&query)
            .bearer_auth(&credential)
            .send()
            .await
            .context("GET /device/tickets")?;
        raw.to_headers += started.elapsed();
        if !response.status().is_success() {
            bail!("GET /device/tickets answered {}", response.status());
        }
        let started = Instant::now();
        let bytes = response.bytes().await.context("reading a feed page")?;
        raw.body += started.elapsed();
        let started = Instant::now();
        let page: stile_shared::api::TicketFeedPage =
            serde_json::from_slice(&bytes).context("decoding a feed page")?;
        raw.decode += started.elapsed();
        raw.pages += 1;
        raw.tickets += page.tickets.len();
        raw.bytes += bytes.len();
        if page.complete {
            return Ok(raw);
        }
        cursor = Some(page.next_cursor);
    }
}

/// A gate in this process over its own store, with the same code as the agent: it shows
/// where the initial sync's time goes, and times offline decisions up to the commit.
struct LocalGate {
    gate: Arc<Gate>,
}

/// The feed pulled and applied in this process.
struct FeedBreakdown {
    pages: usize,
    tickets: usize,
    login_and_keys: Duration,
    fetch: Duration,
    apply: Duration,
}

impl FeedBreakdown {
    fn print(&self) {
        println!(
            "\nthe same feed pulled in this process ({} pages of {FEED_PAGE}, {} tickets), as the agent's sync loop does it:",
            self.pages, self.tickets
        );
        println!(
            "  operator login + key set            {:.2} s",
            self.login_and_keys.as_secs_f64()
        );
        println!(
            "  GET /device/tickets pages (central, HTTP, JSON decode)  {:.2} s  ({:.1} ms a page)",
            self.fetch.as_secs_f64(),
            self.fetch.as_secs_f64() * 1000.0 / self.pages.max(1) as f64
        );
        println!(
            "  Store::apply_feed (JSON encode, SQLite upserts, commit) {:.2} s  ({:.1} ms a page)",
            self.apply.as_secs_f64(),
            self.apply.as_secs_f64() * 1000.0 / self.pages.max(1) as f64
        );
    }
}

/// Offline decisions taken by the in-process gate.
#[derive(Default)]
struct Committed {
    /// Wall time of `Gate::decide_code`: code in, decision committed in SQLite.
    wall_ms: Vec<f64>,
    /// The decision's own `latency_ms` (code to committed decision).
    reported_ms: Vec<f64>,
    /// Wall time minus `latency_ms`: recording the decision (the store task, its commit).
    write_ms: Vec<f64>,
    outcomes: BTreeMap<String, usize>,
}

impl Committed {
    /// Decides `token` on `gate`, timing it up to the commit.
    async fn add(&mut self, gate: &Arc<Gate>, token: &str) -> anyhow::Result<()> {
        let started = Instant::now();
        let decision = gate
            .decide_code(token, edge_agent::decide::Origin::Request)
            .await;
        let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.wall_ms.push(wall_ms);
        self.reported_ms.push(decision.latency_ms);
        self.write_ms.push(wall_ms - decision.latency_ms);
        let mode = serde_json::to_value(decision.mode)?;
        *self
            .outcomes
            .entry(format!(
                "{} {}",
                decision.code.as_str(),
                mode.as_str().unwrap_or("?")
            ))
            .or_default() += 1;
        Ok(())
    }

    fn finish(&mut self) {
        sort(&mut self.wall_ms);
        sort(&mut self.reported_ms);
        sort(&mut self.write_ms);
    }

    fn print(&self) {
        println!(
            "\nthe same QRs decided by an in-process Gate (same code, own store, central dead): {} scans",
            self.wall_ms.len()
        );
        for (outcome, count) in &self.outcomes {
            println!("  {outcome}: {count}");
        }
        println!(
            "  Gate::decide_code wall time (code → committed)     p50 {:.3}  p99 {:.3}  max {:.3} ms",
            percentile(&self.wall_ms, 50.0),
            percentile(&self.wall_ms, 99.0),
            percentile(&self.wall_ms, 100.0)
        );
        println!(
            "  its latency_ms (code to committed)                  p50 {:.3}  p99 {:.3}  max {:.3} ms",
            percentile(&self.reported_ms, 50.0),
            percentile(&self.reported_ms, 99.0),
            percentile(&self.reported_ms, 100.0)
        );
        println!(
            "  the difference: recording it (store task + commit)  p50 {:.3}  p99 {:.3}  max {:.3} ms",
            percentile(&self.write_ms, 50.0),
            percentile(&self.write_ms, 99.0),
            percentile(&self.write_ms, 100.0)
        );
    }
}

impl LocalGate {
    fn open(central_url: &str, state_dir: &Path) -> anyhow::Result<LocalGate> {
        // The listener is never bound: this gate is driven by calls, not HTTP.
        let text = agent_toml(central_url, state_dir, 9);
        let config = AgentConfig::parse(&text, Vec::<(String, String)>::new())
            .context("the in-process gate's settings")?;
        let gate = Gate::open(config, DEVICE_SECRET).context("opening the in-process gate")?;
        Ok(LocalGate {
            gate: Arc::new(gate),
        })
    }

    /// Logs in, fetches the keys, and pulls the whole feed page by page, timing the
    /// central's answers apart from their application to the store.
    async fn pull_feed(&self) -> anyhow::Result<FeedBreakdown> {
        let gate = &self.gate;
        let started = Instant::now();
        gate.ensure_session().await.context("operator login")?;
        edge_agent::uplink::sync::keys_once(gate)
            .await
            .context("fetching the key set")?;
        let login_and_keys = started.elapsed();
        let mut breakdown = FeedBreakdown {
            pages: 0,
            tickets: 0,
            login_and_keys,
            fetch: Duration::ZERO,
            apply: Duration::ZERO,
        };
        let mut cursor: Option<String> = None;
        loop {
            let fetching = Instant::now();
            let (page, sample) = gate
                .central
                .ticket_feed(cursor.as_deref(), FEED_PAGE)
                .await
                .context("GET /device/tickets")?;
            breakdown.fetch += fetching.elapsed();
            gate.link_ok(Some(sample));
            breakdown.pages += 1;
            breakdown.tickets += page.tickets.len();
            let complete = page.complete;
            cursor = Some(page.next_cursor.clone());
            let synced_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let applying = Instant::now();
            gate.with_store(move |store| {
                store.apply_feed(&page.tickets, &page.next_cursor, &synced_at, page.complete)
            })
            .await
            .context("applying a feed page")?;
            breakdown.apply += applying.elapsed();
            if complete {
                return Ok(breakdown);
            }
        }
    }
}

/// Bare single-row transactions, WAL mode, `synchronous = FULL`: the floor of any durable
/// decision on this disk. Measured twice, because on ext4 the cost depends on whether the
/// WAL file grows: appending past its end makes every fsync commit file metadata too (a
/// journal commit, which waits for every other writer of the file system), while a WAL that
/// already reached its working size is overwritten in place after each checkpoint (a
/// data-only fsync). A running agent is in the second regime: its initial sync grew its WAL.
struct Baseline {
    /// A fresh database: the WAL grows with each commit.
    fresh_ms: Vec<f64>,
    /// The WAL first grown by one bulk transaction; timed between the offline scans.
    grown_ms: Vec<f64>,
}

impl Baseline {
    fn new(mut fresh_ms: Vec<f64>, mut grown_ms: Vec<f64>) -> Baseline {
        sort(&mut fresh_ms);
        sort(&mut grown_ms);
        Baseline { fresh_ms, grown_ms }
    }

    fn p99(&self) -> f64 {
        percentile(&self.grown_ms, 99.0)
    }

    fn print(&self) {
        println!(
            "\nSQLite baseline: single-row INSERT + COMMIT, WAL, synchronous=FULL, same directory"
        );
        for (label, samples) in [
            (
                "WAL already grown, between the offline scans",
                &self.grown_ms,
            ),
            (
                "fresh file (WAL growing), afterwards        ",
                &self.fresh_ms,
            ),
        ] {
            println!(
                "  {label}  {} commits  p50 {:.3}  p99 {:.3}  max {:.3} ms",
                samples.len(),
                percentile(samples, 50.0),
                percentile(samples, 99.0),
                percentile(samples, 100.0)
            );
        }
    }
}

/// Rows (of [`PAD_ROW_BYTES`]) of the bulk transaction that grows a baseline's WAL past
/// SQLite's auto-checkpoint size (1000 pages, 4 MB).
const PAD_ROWS: usize = 12_000;
const PAD_ROW_BYTES: usize = 500;

/// A bare SQLite database for the baseline commits.
struct CommitProbe {
    connection: rusqlite::Connection,
    /// About the size of an offline acceptance's row (its QR token is ~250 characters).
    body: String,
}

impl CommitProbe {
    /// Opens a new database at `path`; `grow` first writes one bulk transaction, which
    /// leaves the WAL file at its working size.
    fn open(path: &Path, grow: bool) -> anyhow::Result<CommitProbe> {
        let mut connection = rusqlite::Connection::open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.execute_batch(
            "CREATE TABLE decisions (scan_id TEXT PRIMARY KEY, decided_at TEXT NOT NULL, body TEXT NOT NULL);
             CREATE TABLE pad (body TEXT NOT NULL);",
        )?;
        if grow {
            let tx = connection.transaction()?;
            {
                let mut insert = tx.prepare("INSERT INTO pad (body) VALUES (?1)")?;
                let row = "p".repeat(PAD_ROW_BYTES);
                for _ in 0..PAD_ROWS {
                    insert.execute([&row])?;
                }
            }
            tx.commit()?;
        }
        Ok(CommitProbe {
            connection,
            body: "x".repeat(300),
        })
    }

    /// One single-row transaction; its time in milliseconds.
    fn commit(&mut self) -> anyhow::Result<f64> {
        let scan_id = uuid::Uuid::new_v4().to_string();
        let decided_at = chrono::Utc::now().to_rfc3339();
        let started = Instant::now();
        let tx = self.connection.transaction()?;
        tx.execute(
            "INSERT INTO decisions (scan_id, decided_at, body) VALUES (?1, ?2, ?3)",
            rusqlite::params![scan_id, decided_at, self.body],
        )?;
        tx.commit()?;
        Ok(started.elapsed().as_secs_f64() * 1000.0)
    }
}

fn sort(samples: &mut [f64]) {
    samples.sort_unstable_by(f64::total_cmp);
}

/// Nearest-rank percentile of sorted samples (100 is the maximum).
fn percentile(sorted: &[f64], pct: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[allow(clippy::too_many_arguments)]
fn print_summary(
    plan: &Plan,
    timeline: &SyncTimeline,
    raw_feed: &RawFeed,
    breakdown: &FeedBreakdown,
    online: &ScanPhase,
    offline: &ScanPhase,
    committed: &Committed,
    baseline: &Baseline,
    memory: &MemoryReport,
) {
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    let row = |figure: &str, measured: String, target: String| {
        println!("{figure:<50} {measured:>22}   {target}");
    };
    println!(
        "\n== stile-bench-agent summary ({} tickets, {} build) ==",
        plan.tickets,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    row("figure", "measured".into(), "target".into());
    let sync_secs = timeline.complete.as_secs_f64();
    let scale = if plan.tickets == TARGET_SYNC_TICKETS {
        String::new()
    } else {
        format!(" (stated for {TARGET_SYNC_TICKETS} tickets)")
    };
    row(
        &format!(
            "initial sync, {} tickets, process start → done",
            plan.tickets
        ),
        format!("{sync_secs:.2} s"),
        format!(
            "<= {TARGET_SYNC_SECS:.0} s{scale}: {}",
            verdict(sync_secs <= TARGET_SYNC_SECS)
        ),
    );
    row(
        "  central's answers (to headers) / JSON decode",
        format!(
            "{:.2} / {:.2} s",
            raw_feed.to_headers.as_secs_f64(),
            raw_feed.decode.as_secs_f64()
        ),
        String::new(),
    );
    row(
        "  in-process: login + keys / fetch / apply",
        format!(
            "{:.2} / {:.2} / {:.2} s",
            breakdown.login_and_keys.as_secs_f64(),
            breakdown.fetch.as_secs_f64(),
            breakdown.apply.as_secs_f64()
        ),
        String::new(),
    );
    row(
        "online scan, agent latency_ms p50 / p99",
        format!(
            "{:.2} / {:.2} ms",
            percentile(&online.agent_ms, 50.0),
            percentile(&online.agent_ms, 99.0)
        ),
        format!(
            "well under 1 s; {:.0}% SUCCESS online",
            online.share("SUCCESS", "online")
        ),
    );
    row(
        "online scan, HTTP round trip p50 / p99",
        format!(
            "{:.2} / {:.2} ms",
            percentile(&online.rtt_ms, 50.0),
            percentile(&online.rtt_ms, 99.0)
        ),
        String::new(),
    );
    let exact_p99 = percentile(&committed.wall_ms, 99.0);
    row(
        "offline, code → committed p99 (in-process Gate)",
        format!("{exact_p99:.3} ms"),
        format!(
            "<= {TARGET_OFFLINE_P99_MS:.0} ms: {}",
            verdict(exact_p99 <= TARGET_OFFLINE_P99_MS)
        ),
    );
    let rtt_p99 = percentile(&offline.rtt_ms, 99.0);
    row(
        "offline, /api/scan round trip p99 (commit + HTTP)",
        format!("{rtt_p99:.3} ms"),
        format!(
            "<= {TARGET_OFFLINE_P99_MS:.0} ms (upper bound): {}",
            verdict(rtt_p99 <= TARGET_OFFLINE_P99_MS)
        ),
    );
    let agent_p99 = percentile(&offline.agent_ms, 99.0);
    row(
        "offline, agent latency_ms p50 / p99 / max",
        format!(
            "{:.3} / {agent_p99:.3} / {:.3} ms",
            percentile(&offline.agent_ms, 50.0),
            percentile(&offline.agent_ms, 100.0)
        ),
        "(code to committed, as reported)".into(),
    );
    row(
        "offline, SUCCESS in mode offline",
        format!(
            "{:.1}% of {}",
            offline.share("SUCCESS", "offline"),
            offline.scans()
        ),
        "100% (fresh, synced, OTA)".into(),
    );
    let floor = baseline.p99();
    row(
        "SQLite bare commit p99, WAL grown / fresh file",
        format!(
            "{floor:.3} / {:.3} ms",
            percentile(&baseline.fresh_ms, 99.0)
        ),
        String::new(),
    );
    row(
        "  ratio to grown: code → committed / trip / agent",
        format!(
            "{:.2} / {:.2} / {:.2}",
            exact_p99 / floor,
            rtt_p99 / floor,
            agent_p99 / floor
        ),
        String::new(),
    );
    match memory.steady_rss_kib() {
        Some(rss) => row(
            &format!(
                "agent RSS under scanning ({} s soak, max)",
                plan.soak.as_secs()
            ),
            format!("{:.1} MB", mb(rss)),
            format!(
                "<= {TARGET_RSS_MB:.0} MB: {}",
                verdict(mb(rss) <= TARGET_RSS_MB)
            ),
        ),
        None => row("agent RSS under scanning", "n/a".into(), String::new()),
    }
    if let Some(after) = memory.after_soak {
        row(
            "agent VmHWM (peak since start, sync included)",
            format!("{:.1} MB", mb(after.hwm_kib)),
            String::new(),
        );
    }
}
