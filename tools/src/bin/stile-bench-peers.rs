//! `stile-bench-peers`: a simulated crowd at three gates of one venue while the central is
//! down, with venue peers off (the baseline) and on, on real processes.
//!
//! On a private PostgreSQL cluster (or `DATABASE_URL`, an empty database) it seeds the
//! bench merchant with three gate devices and `2 × --tickets` one-use OTA tickets, signs
//! one QR per ticket, starts the real `central-server`, then three real `edge-agent`
//! processes (peers off for the first run, on for the second, each run with fresh state and
//! its own half of the tickets). Once every gate has synced (and, with peers, sees both
//! others), the central is killed and the crowd arrives: each ticket is presented once at a
//! random gate, spread over `--arrival-secs`; `--repeat-percent` of them are presented
//! again at a random *other* gate `--min-delay-secs` to `--max-delay-secs` later.
//!
//! Printed per run: the double entries (a second presentation that got `SUCCESS`), the
//! decision latency each gate reported for first presentations (p50/p99) and the HTTP
//! round trip; with peers, the propagation from a gate's decision to the record at each
//! peer (`received_at − decided_at`, one host clock on loopback), and the messages each
//! gate refused (must be 0). The peers-off run is the baseline of the latency figures:
//! the same gates, machine and crowd shape in the same run.
//!
//! Run: `scripts/bench-peers` (1,000 tickets, 1-60 s repeats). Smallest form:
//! `scripts/bench-peers --smoke`.

use anyhow::{bail, Context};
use clap::Parser;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stile_testkit::ClusterOptions;
use stile_tools::bench::{self, FUNCTION, MERCHANT_CODE, OPERATOR, PASSWORD, VENUE_CODE};
use stile_tools::ServerProcess;

#[derive(Parser)]
#[command(
    name = "stile-bench-peers",
    about = "Double entries at three offline gates with venue peers off and on"
)]
struct Args {
    /// Tickets in each run's crowd (default 1,000; 60 with --smoke).
    #[arg(long)]
    tickets: Option<usize>,
    /// Share of tickets presented a second time at another gate.
    #[arg(long, default_value_t = 5.0)]
    repeat_percent: f64,
    /// The earliest a ticket comes back (default 1 s; 0.2 with --smoke).
    #[arg(long)]
    min_delay_secs: Option<f64>,
    /// The latest a ticket comes back (default 60 s; 1 with --smoke).
    #[arg(long)]
    max_delay_secs: Option<f64>,
    /// Over how long the first presentations arrive (default 30 s; 3 with --smoke).
    #[arg(long)]
    arrival_secs: Option<f64>,
    /// Seed of the crowd's randomness (the same crowd in both runs).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Everything small, to check the benchmark itself in seconds.
    #[arg(long)]
    smoke: bool,
}

const DEVICES: [&str; 3] = ["bench-dev", "bench-dev-2", "bench-dev-3"];
const SECRETS: [&str; 3] = ["bench-secret-1", "bench-secret-2", "bench-secret-3"];
const API_TOKEN: &str = "bench-local-api-token";
const LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy)]
struct Plan {
    tickets: usize,
    repeats: usize,
    min_delay: f64,
    max_delay: f64,
    arrival: f64,
}

/// One presentation of a ticket at a gate, at an offset from the start.
#[derive(Debug, Clone)]
struct Presentation {
    at: f64,
    gate: usize,
    token: usize,
    repeat: bool,
}

/// The crowd: every ticket once at a random gate, some again at another gate later.
fn crowd(plan: &Plan, seed: u64) -> Vec<Presentation> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut events: Vec<Presentation> = (0..plan.tickets)
        .map(|token| Presentation {
            at: rng.gen_range(0.0..plan.arrival.max(0.001)),
            gate: rng.gen_range(0..DEVICES.len()),
            token,
            repeat: false,
        })
        .collect();
    let mut chosen: Vec<usize> = (0..plan.tickets).collect();
    chosen.shuffle(&mut rng);
    for &token in &chosen[..plan.repeats] {
        let first = events[token].clone();
        let other = (first.gate + rng.gen_range(1..DEVICES.len())) % DEVICES.len();
        events.push(Presentation {
            at: first.at + rng.gen_range(plan.min_delay..=plan.max_delay),
            gate: other,
            token,
            repeat: true,
        });
    }
    events.sort_by(|a, b| a.at.total_cmp(&b.at));
    events
}

struct Agent {
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Deserialize)]
struct Decision {
    code: String,
    #[serde(default)]
    latency_ms: f64,
    #[serde(default)]
    accepted_at: Option<String>,
}

impl Agent {
    fn start(
        binary: &Path,
        dir: &Path,
        index: usize,
        central: &str,
        peers: bool,
    ) -> anyhow::Result<Agent> {
        let port = stile_tools::free_port()?;
        let peer_port = stile_tools::free_port()?;
        let state = dir.join(format!("gate-{index}"));
        std::fs::create_dir_all(&state)?;
        let peer_section = if peers {
            format!("[peers]\nlisten = \"127.0.0.1:{peer_port}\"\nadvertise = \"127.0.0.1:{peer_port}\"\npull_interval_ms = 1000\n")
        } else {
            String::new()
        };
        let config = format!(
            "device_id = \"{}\"\ndevice_secret = \"{}\"\ncentral_url = \"{central}\"\nvenue_code = \"{VENUE_CODE}\"\n\
             function_code = \"{FUNCTION}\"\nstate_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\nsync_interval_secs = 1\n\
             api_token = \"{API_TOKEN}\"\ndebounce_secs = 1\n[source]\nkind = \"none\"\n{peer_section}[operator]\nusername = \"{OPERATOR}\"\npassword = \"{PASSWORD}\"\n",
            DEVICES[index],
            SECRETS[index],
            state.display()
        );
        let path = dir.join(format!("gate-{index}.toml"));
        std::fs::write(&path, config)?;
        let log = std::fs::File::create(dir.join(format!("gate-{index}.log")))?;
        let child = Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Agent {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder()
                .tcp_nodelay(true)
                .timeout(Duration::from_secs(30))
                .build()?,
        })
    }

    async fn status(&self) -> anyhow::Result<serde_json::Value> {
        Ok(self
            .client
            .get(format!("{}/api/status", self.base))
            .send()
            .await?
            .json()
            .await?)
    }

    /// Waits until the gate synced `tickets`, has an operator, and sees `peers` peers up.
    async fn wait_ready(&self, tickets: i64, peers: usize) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Ok(status) = self.status().await {
                let up = status["peers"]["peers"]
                    .as_array()
                    .map_or(0, |list| list.iter().filter(|p| p["state"] == "up").count());
                if status["synced_tickets"].as_i64() >= Some(tickets)
                    && !status["operator"].is_null()
                    && status["uplink"]["clock_offset_secs"].is_number()
                    && up >= peers
                {
                    return Ok(());
                }
            }
            if started.elapsed() > LIMIT {
                bail!("{} was not ready within {LIMIT:?}", self.base);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn scan(&self, token: &str) -> anyhow::Result<(f64, Decision)> {
        let started = Instant::now();
        let response = self
            .client
            .post(format!("{}/api/scan", self.base))
            .bearer_auth(API_TOKEN)
            .json(&serde_json::json!({ "code": token }))
            .send()
            .await?;
        let decision = response.json().await?;
        Ok((started.elapsed().as_secs_f64() * 1000.0, decision))
    }
}

/// What one run saw.
#[derive(Debug, Default)]
struct RunReport {
    first_success: usize,
    first_other: usize,
    repeats: usize,
    double_entries: usize,
    blocked_by_peer: usize,
    latency_ms: Vec<f64>,
    rtt_ms: Vec<f64>,
    propagation_ms: Vec<f64>,
    refused: f64,
    elapsed: Duration,
}

fn percentile(values: &[f64], pct: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((pct / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn run(
    agent_binary: &Path,
    url: &str,
    work: &Path,
    plan: &Plan,
    tokens: &[String],
    events: &[Presentation],
    peers: bool,
) -> anyhow::Result<RunReport> {
    let server = ServerProcess::start(url, &[("RUST_LOG", "warn")]).await?;
    let dir = work.join(if peers { "peers-on" } else { "peers-off" });
    std::fs::create_dir_all(&dir)?;
    let agents: Vec<Agent> = (0..DEVICES.len())
        .map(|i| Agent::start(agent_binary, &dir, i, &server.base_url, peers))
        .collect::<anyhow::Result<_>>()?;
    let total_tickets = (plan.tickets * 2) as i64;
    for agent in &agents {
        agent
            .wait_ready(total_tickets, if peers { DEVICES.len() - 1 } else { 0 })
            .await?;
    }
    let refused_before = refused_total(&agents).await?;
    drop(server);
    println!(
        "  {}: three gates synced; central killed; the crowd arrives",
        if peers { "peers on" } else { "peers off" }
    );
    let agents = Arc::new(agents);
    let tokens = Arc::new(tokens.to_vec());
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(events.len());
    for event in events.iter().cloned() {
        let (agents, tokens) = (agents.clone(), tokens.clone());
        tasks.push(tokio::spawn(async move {
            let due = started + Duration::from_secs_f64(event.at);
            tokio::time::sleep_until(due.into()).await;
            let answer = agents[event.gate].scan(&tokens[event.token]).await;
            (event, answer)
        }));
    }
    let mut report = RunReport::default();
    for task in tasks {
        let (event, answer) = task.await?;
        let (rtt, decision) = answer.context("a scan failed")?;
        if event.repeat {
            report.repeats += 1;
            if decision.code == "SUCCESS" {
                report.double_entries += 1;
            }
            if decision.accepted_at.is_some() {
                report.blocked_by_peer += 1;
            }
        } else {
            if decision.code == "SUCCESS" {
                report.first_success += 1;
            } else {
                report.first_other += 1;
            }
            report.latency_ms.push(decision.latency_ms);
            report.rtt_ms.push(rtt);
        }
    }
    report.elapsed = started.elapsed();
    if peers {
        // Let the last pushes land, then read every gate's records.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for agent in agents.iter() {
            let held: serde_json::Value = agent
                .client
                .get(format!("{}/api/peer-acceptances?limit=10000", agent.base))
                .send()
                .await?
                .json()
                .await?;
            for line in held["acceptances"].as_array().into_iter().flatten() {
                let at = |field: &str| {
                    line[field]
                        .as_str()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                };
                if let (Some(decided), Some(received)) = (at("decided_at"), at("received_at")) {
                    report
                        .propagation_ms
                        .push((received - decided).num_microseconds().unwrap_or(0) as f64 / 1000.0);
                }
            }
        }
        report.refused = refused_total(&agents).await? - refused_before;
    }
    Ok(report)
}

/// Peer messages the gates refused so far (while the directories converge at start a gate
/// may refuse a pull from a gate it does not list yet; the crowd's figure is the difference).
async fn refused_total(agents: &[Agent]) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for agent in agents {
        let metrics = agent
            .client
            .get(format!("{}/metrics", agent.base))
            .send()
            .await?
            .text()
            .await?;
        total += metrics
            .lines()
            .filter(|l| l.starts_with("stile_agent_peer_messages_refused_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    Ok(total)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let smoke = args.smoke;
    let plan = Plan {
        tickets: args.tickets.unwrap_or(if smoke { 60 } else { 1_000 }),
        repeats: 0,
        min_delay: args.min_delay_secs.unwrap_or(if smoke { 0.2 } else { 1.0 }),
        max_delay: args
            .max_delay_secs
            .unwrap_or(if smoke { 1.0 } else { 60.0 }),
        arrival: args.arrival_secs.unwrap_or(if smoke { 3.0 } else { 30.0 }),
    };
    if !(0.0..=100.0).contains(&args.repeat_percent)
        || plan.min_delay > plan.max_delay
        || plan.min_delay < 0.0
    {
        bail!("--repeat-percent must be 0 to 100 and 0 <= --min-delay-secs <= --max-delay-secs");
    }
    let plan = Plan {
        repeats: ((plan.tickets as f64) * args.repeat_percent / 100.0).round() as usize,
        ..plan
    };
    let agent_binary = stile_tools::sibling_binary("edge-agent", "STILE_EDGE_AGENT_BIN")?;
    let work = tempfile::Builder::new()
        .prefix("stile-bench-peers-")
        .tempdir()?;
    println!(
        "stile-bench-peers: {} tickets per run at 3 gates, {} presented again at another gate {:.1}-{:.1} s later, arrivals over {:.0} s; {} build",
        plan.tickets,
        plan.repeats,
        plan.min_delay,
        plan.max_delay,
        plan.arrival,
        if cfg!(debug_assertions) { "DEBUG (timings not representative)" } else { "release" }
    );
    let options = ClusterOptions {
        fast_and_unsafe: false,
        max_connections: 100,
        stat_statements: false,
    };
    let (url, _cluster) = stile_tools::database("stile_bench_peers", &options).await?;
    let pool = central_server::db::connect(&url, 4).await?;
    central_server::db::migrate(&pool).await?;
    central_server::keys::ensure_active_key(&pool, &central_server::kek::KeyEncryption::none())
        .await?;
    let fixture = bench::seed(
        &pool,
        &[bench::TicketRun {
            prefix: "B",
            count: (plan.tickets * 2) as i64,
            uses: 1,
        }],
    )
    .await?;
    for (device, secret) in DEVICES.iter().zip(SECRETS).skip(1) {
        sqlx::query(
            "INSERT INTO devices (device_id, merchant_id, location_id, secret_hash) VALUES ($1, $2, $3, $4)",
        )
        .bind(device)
        .bind(fixture.merchant_id)
        .bind(fixture.location_id)
        .bind(central_server::auth::sha256_hex(secret))
        .execute(&pool)
        .await?;
    }
    let tokens = stile_tools::sign_bench_tokens(&pool, MERCHANT_CODE, plan.tickets * 2).await?;
    pool.close().await;
    let events = crowd(&plan, args.seed);

    let off = run(
        &agent_binary,
        &url,
        work.path(),
        &plan,
        &tokens[..plan.tickets],
        &events,
        false,
    )
    .await?;
    let on = run(
        &agent_binary,
        &url,
        work.path(),
        &plan,
        &tokens[plan.tickets..],
        &events,
        true,
    )
    .await?;

    println!();
    for (name, report) in [("peers off (baseline)", &off), ("peers on", &on)] {
        println!(
            "{name:<22} first presentations: {} SUCCESS, {} other; second presentations: {}, double entries {}, blocked naming a peer {}; {:.1} s",
            report.first_success,
            report.first_other,
            report.repeats,
            report.double_entries,
            report.blocked_by_peer,
            report.elapsed.as_secs_f64()
        );
    }
    println!(
        "{:<50} {:>8} {:>8}   baseline (peers off): {:>8} {:>8}",
        "decision latency ms (agent's own), p50 p99",
        format!("{:.2}", percentile(&on.latency_ms, 50.0)),
        format!("{:.2}", percentile(&on.latency_ms, 99.0)),
        format!("{:.2}", percentile(&off.latency_ms, 50.0)),
        format!("{:.2}", percentile(&off.latency_ms, 99.0)),
    );
    println!(
        "{:<50} {:>8} {:>8}   baseline (peers off): {:>8} {:>8}",
        "scan round trip ms (HTTP, loopback), p50 p99",
        format!("{:.2}", percentile(&on.rtt_ms, 50.0)),
        format!("{:.2}", percentile(&on.rtt_ms, 99.0)),
        format!("{:.2}", percentile(&off.rtt_ms, 50.0)),
        format!("{:.2}", percentile(&off.rtt_ms, 99.0)),
    );
    println!(
        "{:<50} {:>8} {:>8}   ({} records at the peers; target p99 < 50 ms)",
        "peer propagation ms (decided → held by a peer), p50 p99",
        format!("{:.2}", percentile(&on.propagation_ms, 50.0)),
        format!("{:.2}", percentile(&on.propagation_ms, 99.0)),
        on.propagation_ms.len(),
    );
    println!(
        "{:<50} {:>8}   baseline (peers off): {}; target 0 with peers while the LAN is up",
        "double entries", on.double_entries, off.double_entries
    );
    println!(
        "{:<50} {:>8}   (while the crowd arrived; must be 0)",
        "peer messages refused", on.refused
    );
    Ok(())
}
