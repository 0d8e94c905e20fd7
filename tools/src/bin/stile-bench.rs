//! `stile-bench`: the load benchmark of `POST /venue/scan`, against the minimal transaction
//! one scan needs, run by pgbench on the same cluster.
//!
//! On a private PostgreSQL cluster with durable settings (or `DATABASE_URL`, which must name
//! an empty database) it seeds `--tickets` single-use OTA tickets by SQL, signs one QR per
//! ticket with the server's real key, starts the real `central-server` binary and, over
//! HTTP:
//! 1. **throughput**: `--concurrency` clients (then each of `--also-concurrency`) scan
//!    distinct tickets for `--duration` seconds (every scan a fresh, redeemable QR) against
//!    the server as a user starts it (default settings), printing scans/s, p50/p99/p99.9
//!    latency, the server's CPU (cores), statements per scan (`pg_stat_statements`, top
//!    level) and WAL bytes per scan (`pg_current_wal_lsn` before and after); right after
//!    the first one, at `--concurrency`, the same load with check-in rules on every
//!    entitlement (compared with the mean of the plain phase before it and one more plain
//!    phase after it) and at a venue with a capacity;
//! 2. **contention**: `--contention-qrs` QRs, each scanned by 4 clients at once; exactly one
//!    scan per QR must succeed and the others answer `ALREADY_REDEEMED` (a violation is a
//!    correctness failure: the process exits with code 1);
//! 3. **memory**: the server's peak and current resident memory after the load;
//! 4. **baseline**: at each concurrency, pgbench runs the minimal transaction one scan needs
//!    (`bench/minimal/pgbench_scan.sql`, the project's reference: lock the entitlement,
//!    insert the event, decrement, mark USED, insert the audit row) on the same cluster for
//!    `--pgbench-duration` seconds, with its statements and WAL per transaction; the ratio
//!    server/pgbench is what the job costs above what it needs. A second line runs the
//!    server's transaction path (statement for statement) at `--concurrency`.
//!
//! Figures are printed next to their targets, never asserted: timing depends on the machine.
//!
//! Run: `cargo build --release -p central-server -p stile-tools && target/release/stile-bench`
//! (smallest form: `--tickets 400 --concurrency 4 --duration 1 --contention-qrs 20
//! --pgbench-duration 1`).

use anyhow::{bail, Context};
use clap::Parser;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stile_shared::api::{LoginRequest, LoginResponse, ScanRequest};
use stile_shared::{FunctionCode, Identifier};
use stile_testkit::ClusterOptions;
use stile_tools::baseline::{DbCounters, PgbenchResult};
use stile_tools::bench::{
    self, DEVICE_ID, FUNCTION, MERCHANT_CODE, OPERATOR, PASSWORD, VENUE_CODE,
};
use stile_tools::ServerProcess;

#[derive(Parser)]
#[command(
    name = "stile-bench",
    about = "Load benchmark of POST /venue/scan, with a pgbench baseline of the same transaction"
)]
struct Args {
    /// Single-use tickets to seed (the contention phase takes the last --contention-qrs;
    /// the rest is shared by the phases, so that each one lasts --duration at about 8,000
    /// scans/s, what 128 clients reach on two cores).
    #[arg(long, default_value_t = 600_000)]
    tickets: usize,
    /// Concurrent clients of the throughput phase (and pgbench clients).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// More throughput phases (and baselines) at these concurrencies, after the first.
    #[arg(long, value_delimiter = ',', default_value = "64,128")]
    also_concurrency: Vec<usize>,
    /// Seconds of the throughput phase.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// QRs of the contention phase, each scanned by 4 clients at once.
    #[arg(long, default_value_t = 2000)]
    contention_qrs: usize,
    /// Seconds of the pgbench baseline (default: --duration).
    #[arg(long)]
    pgbench_duration: Option<u64>,
    /// Concurrent bad logins (made-up usernames) of the login-flood phase; 0 skips it.
    #[arg(long, default_value_t = 200)]
    flood_logins: usize,
    /// Gates scanning in the login-flood phase (and in its baseline without the flood).
    #[arg(long, default_value_t = 4)]
    flood_gates: usize,
}

/// Tickets of the pgbench baseline, each with a practically endless entitlement.
const PGBENCH_TICKETS: i64 = 10_000;
const PGBENCH_USES: i32 = 1_000_000;
/// Clients scanning one QR at once in the contention phase.
const RACERS: usize = 4;
/// The concurrency at which the latency target is stated.
const TARGET_CONCURRENCY: usize = 32;
const TARGET_P99_MS: f64 = 25.0;
const TARGET_RATIO: f64 = 1.0;
const TARGET_MEMORY_MB: f64 = 150.0;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    if args.concurrency == 0 || args.duration == 0 || args.contention_qrs == 0 {
        bail!("--concurrency, --duration and --contention-qrs must be at least 1");
    }
    if args.tickets <= args.contention_qrs {
        bail!(
            "--tickets ({}) must exceed --contention-qrs ({}): the contention phase takes its own tickets",
            args.tickets,
            args.contention_qrs
        );
    }
    let pgbench_secs = args.pgbench_duration.unwrap_or(args.duration).max(1);

    let options = ClusterOptions {
        fast_and_unsafe: false,
        max_connections: 300,
        stat_statements: true,
    };
    let (url, cluster) = stile_tools::database("stile_bench", &options).await?;
    let pool = central_server::db::connect(&url, 4)
        .await
        .context("connecting to the bench database")?;
    central_server::db::migrate(&pool)
        .await
        .context("migrating")?;
    central_server::keys::ensure_active_key(&pool, &central_server::kek::KeyEncryption::none())
        .await
        .context("creating the signing key")?;

    let fixture = bench::seed(
        &pool,
        &[
            bench::TicketRun {
                prefix: "B",
                count: i64::try_from(args.tickets).context("--tickets is too large")?,
                uses: 1,
            },
            bench::TicketRun {
                prefix: "P",
                count: PGBENCH_TICKETS,
                uses: PGBENCH_USES,
            },
        ],
    )
    .await?;
    let tokens = stile_tools::sign_bench_tokens(&pool, MERCHANT_CODE, args.tickets).await?;
    sqlx::query("ANALYZE")
        .execute(&pool)
        .await
        .context("ANALYZE")?;
    if let Err(error) = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&pool)
        .await
    {
        println!("pg_stat_statements unavailable ({error}): no statement counts");
    }

    // The server as a user starts it: default settings (the pool size included).
    let server = ServerProcess::start(
        &url,
        &[
            ("RUST_LOG", "warn"),
            // The flood comes from one address here; lift the per-address throttle so every
            // bad login reaches the password-check queue, as a flood from many addresses would.
            ("STILE_LOGIN_MAX_FAILURES_PER_ADDRESS", "1000000000"),
        ],
    )
    .await?;
    let gate = Arc::new(Gate::login(&server, tokens).await?);

    let split = args.tickets - args.contention_qrs;
    // The login-flood phases take the last tickets before the contention range.
    let flood_tickets = if args.flood_logins > 0 { split / 4 } else { 0 };
    let throughput_end = split - flood_tickets;
    let concurrencies: Vec<usize> = std::iter::once(args.concurrency)
        .chain(args.also_concurrency.iter().copied().filter(|c| *c > 0))
        .collect();
    // One share per concurrency, one more for the phase with check-in rules, one for the
    // plain phase after it and one for the phase at a venue with a capacity.
    let share = throughput_end / (concurrencies.len() + 3);
    // The tickets of share `k`.
    let slot = |k: usize| (k * share, (k + 1) * share);
    let rules_range = slot(concurrencies.len());
    let plain_after_range = slot(concurrencies.len() + 1);
    let venue_range = slot(concurrencies.len() + 2);
    put_rules_on(&pool, rules_range).await?;
    // The first concurrency's plain phase, then at once the same load with check-in rules
    // and at a venue (so the three are measured side by side, before the heavier phases
    // have grown the tables), then the other concurrencies.
    let mut phases = vec![
        plain_phase(
            &server,
            &pool,
            &gate,
            (concurrencies[0], slot(0), args.duration),
        )
        .await?,
    ];
    let throughput = &phases[0].result;
    // The same scans at the first concurrency, every entitlement carrying check-in rules
    // that allow the use (a period around now, a window of the whole day, one use a day, a
    // least interval): what rules cost a plain successful scan.
    let with_rules = run_throughput(&gate, phases[0].clients, rules_range, args.duration).await?;
    println!("\nwith check-in rules on every entitlement:");
    with_rules.print(phases[0].clients);
    // The plain scans again right after: the rules phase is compared with the mean of the
    // plain phases before and after it, so that what drifts over the run (the tables grow,
    // autovacuum wakes after the first phase) weighs on both sides alike.
    let plain_after =
        run_throughput(&gate, phases[0].clients, plain_after_range, args.duration).await?;
    println!("\nno rules again, right after:");
    plain_after.print(phases[0].clients);
    let plain_mean = (throughput.scans_per_sec() + plain_after.scans_per_sec()) / 2.0;
    println!(
        "  rules vs none, {} clients: {:.0} vs {:.0} scans/s (none before {:.0}, after {:.0}), ratio {:.2} (target >= 0.95); p99 {:.1} vs {:.1} and {:.1} ms",
        phases[0].clients,
        with_rules.scans_per_sec(),
        plain_mean,
        throughput.scans_per_sec(),
        plain_after.scans_per_sec(),
        with_rules.scans_per_sec() / plain_mean.max(1e-9),
        with_rules.p99_ms,
        throughput.p99_ms,
        plain_after.p99_ms
    );
    // The same scans again with the gate's location in a venue with a capacity: every
    // entry is a passage, decided on the transaction path and counted against the capacity
    // (the count that keeps two gates from letting in more than the capacity).
    put_location_in_a_venue(&pool).await?;
    // The server's device binding (with its venue) is cached for 2 s.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let at_venue = run_throughput(&gate, phases[0].clients, venue_range, args.duration).await?;
    println!("\nat a venue with a capacity (every entry a passage, counted against the capacity):");
    at_venue.print(phases[0].clients);
    println!(
        "  venue vs none, {} clients: {:.0} vs {:.0} scans/s, ratio {:.2}; p99 {:.1} vs {:.1} ms",
        phases[0].clients,
        at_venue.scans_per_sec(),
        throughput.scans_per_sec(),
        at_venue.scans_per_sec() / throughput.scans_per_sec().max(1e-9),
        at_venue.p99_ms,
        throughput.p99_ms
    );
    // The phases after this one measure what they measured before: no venue.
    sqlx::query("UPDATE locations SET venue_id = NULL WHERE venue_code = $1")
        .bind(VENUE_CODE)
        .execute(&pool)
        .await
        .context("taking the bench location out of its venue")?;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    for (i, &clients) in concurrencies.iter().enumerate().skip(1) {
        phases.push(plain_phase(&server, &pool, &gate, (clients, slot(i), args.duration)).await?);
    }
    let throughput = &phases[0].result;
    let flood = if args.flood_logins > 0 {
        let middle = throughput_end + flood_tickets / 2;
        Some(
            run_login_flood(
                &gate,
                &server,
                &args,
                (throughput_end, middle),
                (middle, split),
            )
            .await?,
        )
    } else {
        None
    };
    let contention = run_contention(
        &gate,
        (args.concurrency / RACERS).max(1),
        split,
        args.tickets,
    )
    .await?;
    contention.print();

    let memory = server.memory_kib();
    match memory {
        Some((peak, current)) => println!(
            "\nserver memory: peak {:.1} MB, now {:.1} MB (target <= {TARGET_MEMORY_MB:.0} MB)",
            mb(peak),
            mb(current)
        ),
        None => println!("\nserver memory: unavailable (no /proc/<pid>/status)"),
    }
    drop(server);

    let root = stile_tools::repository_root(None, "Cargo.toml")?;
    let minimal_dir = stile_tools::baseline::minimal_dir(&root);
    let mut minimal = Vec::new();
    for &clients in &concurrencies {
        // Each client redeems tickets of its own (c+1, c+1+C, ...): enough for the run.
        let tickets = (pgbench_secs * 20_000).max(40_000);
        stile_tools::baseline::load_minimal_schema(&minimal_dir, &url, tickets)?;
        let before = DbCounters::read(&pool).await?;
        let result = stile_tools::baseline::run_pgbench(
            &minimal_dir.join("pgbench_scan.sql"),
            &url,
            clients,
            pgbench_secs,
            &[
                ("i".to_owned(), "0".to_owned()),
                ("nclients".to_owned(), clients.to_string()),
            ],
        )
        .await?;
        let after = DbCounters::read(&pool).await?;
        let (wal, statements) = before.per(&after, result.transactions, 2);
        let records = before.records_per(&after, result.transactions);
        println!(
            "\npgbench, the minimal transaction ({}), {clients} clients, {pgbench_secs} s: {:.0} tps, latency average {}, p50 {}, p99 {}",
            minimal_dir.join("pgbench_scan.sql").display(),
            result.tps,
            ms(result.latency_average_ms),
            ms(result.latency_p50_ms),
            ms(result.latency_p99_ms),
        );
        minimal.push((clients, result, wal, statements, records));
    }
    let heavier = run_pgbench(&url, &fixture, args.concurrency, pgbench_secs).await?;
    println!(
        "\npgbench, the server's transaction path statement for statement, {} clients, {pgbench_secs} s: {:.0} tps, latency average {}",
        args.concurrency,
        heavier.tps,
        heavier
            .latency_average_ms
            .map_or("n/a".to_owned(), |ms| format!("{ms:.2} ms"))
    );

    print_summary(&args, throughput, &contention, memory, &minimal[0].1);
    print_phases(&phases, &minimal, &heavier);
    if let Some(flood) = &flood {
        flood.print_summary();
    }
    pool.close().await;
    drop(cluster);
    if contention.violations > 0 {
        eprintln!(
            "stile-bench: {} QRs did not get exactly one SUCCESS: double redemption or lost scans",
            contention.violations
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// A logged-in gate: what every scanning task shares.
struct Gate {
    client: reqwest::Client,
    scan_url: String,
    bearer: String,
    function_code: FunctionCode,
    venue_code: Identifier,
    device_id: Identifier,
    tokens: Vec<String>,
}

/// What one scan came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// An HTTP answer with its `code` (`"?"` when the body has none).
    Http { status: u16, code: String },
    /// No HTTP answer at all.
    Failed(String),
}

impl Answer {
    fn is(&self, expected_status: u16, expected_code: &str) -> bool {
        matches!(self, Answer::Http { status, code } if *status == expected_status && code == expected_code)
    }

    fn describe(&self) -> String {
        match self {
            Answer::Http { status, code } => format!("HTTP {status} {code}"),
            Answer::Failed(error) => format!("request failed: {error}"),
        }
    }
}

/// The only field of an answer the benchmark reads.
#[derive(Deserialize)]
struct CodeOnly {
    code: String,
}

impl Gate {
    async fn login(server: &ServerProcess, tokens: Vec<String>) -> anyhow::Result<Gate> {
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        let response = client
            .post(server.url("/operators/login"))
            .json(&LoginRequest {
                username: Identifier::parse(OPERATOR)?,
                password: PASSWORD.to_owned(),
            })
            .send()
            .await
            .context("POST /operators/login")?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            bail!("login answered {status}: {body}");
        }
        let login: LoginResponse = response.json().await.context("reading the login answer")?;
        Ok(Gate {
            client,
            scan_url: server.url("/venue/scan"),
            bearer: login.token,
            function_code: FunctionCode::parse(FUNCTION)
                .map_err(|_| anyhow::anyhow!("{FUNCTION} is not a function code"))?,
            venue_code: Identifier::parse(VENUE_CODE)?,
            device_id: Identifier::parse(DEVICE_ID)?,
            tokens,
        })
    }

    /// Scans ticket `index` once with a fresh scan_id; returns the latency in microseconds
    /// (request sent to body read) and the answer.
    async fn scan(&self, index: usize) -> (u64, Answer) {
        let request = ScanRequest {
            qr_token: self.tokens[index].clone(),
            function_code: self.function_code.clone(),
            venue_code: self.venue_code.clone(),
            device_id: self.device_id.clone(),
            scan_id: Some(uuid::Uuid::new_v4().to_string()),
            direction: stile_shared::Direction::Entry,
        };
        let started = Instant::now();
        let answer = match self
            .client
            .post(&self.scan_url)
            .bearer_auth(&self.bearer)
            .json(&request)
            .send()
            .await
        {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.json::<CodeOnly>().await {
                    Ok(body) => Answer::Http {
                        status,
                        code: body.code,
                    },
                    Err(_) => Answer::Http {
                        status,
                        code: "?".to_owned(),
                    },
                }
            }
            Err(error) => Answer::Failed(error.to_string()),
        };
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        (micros, answer)
    }
}

/// What one throughput task saw.
#[derive(Default)]
struct Tally {
    /// (second of the phase the scan ended in, latency in µs) of every scan.
    timeline: Vec<(usize, u64)>,
    successes: u64,
    errors: BTreeMap<String, u64>,
}

struct ThroughputResult {
    requests: usize,
    successes: u64,
    errors: BTreeMap<String, u64>,
    elapsed: Duration,
    ran_out_of_tickets: bool,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    /// p99 (ms) of the scans that ended in each second of the phase.
    p99_by_second: Vec<f64>,
}

impl ThroughputResult {
    /// Successful scans per second: what pgbench's committed transactions compare with.
    fn scans_per_sec(&self) -> f64 {
        self.successes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn print(&self, concurrency: usize) {
        println!(
            "\nthroughput, {concurrency} clients, {:.1} s: {} requests, {} SUCCESS, {} errors",
            self.elapsed.as_secs_f64(),
            self.requests,
            self.successes,
            self.error_count()
        );
        for (kind, count) in &self.errors {
            println!("  error {kind}: {count}");
        }
        if self.ran_out_of_tickets {
            println!("  (tickets ran out before --duration: raise --tickets for a full run)");
        }
        println!(
            "  {:.0} scans/s   p50 {:.2} ms   p99 {:.2} ms   p99.9 {:.2} ms",
            self.scans_per_sec(),
            self.p50_ms,
            self.p99_ms,
            self.p999_ms
        );
        let seconds: Vec<String> = self
            .p99_by_second
            .iter()
            .map(|ms| format!("{ms:.0}"))
            .collect();
        println!("  p99 ms by second: {}", seconds.join(" "));
    }
}

/// One plain phase: `clients` scanning the tickets of `range`, with the server's and the
/// database's costs around it.
async fn plain_phase(
    server: &ServerProcess,
    pool: &sqlx::PgPool,
    gate: &Arc<Gate>,
    (clients, range, duration): (usize, (usize, usize), u64),
) -> anyhow::Result<Phase> {
    use stile_tools::baseline::{cores, machine_busy_secs, process_cpu_secs};
    let cpu_now = || {
        (
            process_cpu_secs(server.pid()),
            process_cpu_secs(std::process::id()),
            machine_busy_secs(),
        )
    };
    let before = (DbCounters::read(pool).await?, cpu_now());
    let result = run_throughput(gate, clients, range, duration).await?;
    let after = (DbCounters::read(pool).await?, cpu_now());
    result.print(clients);
    let (wal, statements) = before.0.per(&after.0, result.successes, 2);
    let records = before.0.records_per(&after.0, result.successes);
    let elapsed = result.elapsed.as_secs_f64();
    let cpu = cores(before.1 .0, after.1 .0, elapsed);
    let client_cpu = cores(before.1 .1, after.1 .1, elapsed);
    let machine_cpu = cores(before.1 .2, after.1 .2, elapsed);
    println!(
            "  cores: server {}, this load generator {}, the rest of the machine (PostgreSQL) {}, of {}",
            or_na(cpu, 2),
            or_na(client_cpu, 2),
            or_na(
                machine_cpu.zip(cpu).zip(client_cpu).map(|((m, s), c)| m - s - c),
                2
            ),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
    Ok(Phase {
        clients,
        result,
        cpu_cores: cpu,
        wal_per_scan: wal,
        statements_per_scan: statements,
        wal_records_per_scan: records,
    })
}

/// Puts the bench gate's location in a venue whose capacity no phase reaches.
async fn put_location_in_a_venue(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    sqlx::query(
        "WITH v AS (INSERT INTO venues (merchant_id, code, name, capacity) \
                    SELECT merchant_id, 'BENCH-PARK', 'bench venue', 100000000 FROM locations \
                    WHERE venue_code = $1 RETURNING id, merchant_id) \
         UPDATE locations l SET venue_id = v.id FROM v \
         WHERE l.merchant_id = v.merchant_id AND l.venue_code = $1",
    )
    .bind(VENUE_CODE)
    .execute(pool)
    .await
    .context("putting the bench location in a venue")?;
    Ok(())
}

/// Puts check-in rules that allow one use now on the entitlements of the tickets of
/// `range` (token indexes; ticket `B{n}` is index n - 1).
async fn put_rules_on(pool: &sqlx::PgPool, range: (usize, usize)) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let rules = serde_json::json!({
        "valid_from": (now - chrono::Duration::days(1)).to_rfc3339(),
        "valid_until": (now + chrono::Duration::days(1)).to_rfc3339(),
        "daily_window": {"start": "00:00", "end": "23:59:59"},
        "uses_per_day": 1,
        "min_interval_secs": 60,
    });
    let (first, last) = (i64::try_from(range.0 + 1)?, i64::try_from(range.1)?);
    sqlx::query(
        "UPDATE entitlements e SET rules = $1 FROM tickets t \
         WHERE t.id = e.ticket_id AND t.ticket_code IN \
               (SELECT 'B' || g FROM generate_series($2::bigint, $3::bigint) AS g)",
    )
    .bind(&rules)
    .bind(first)
    .bind(last)
    .execute(pool)
    .await
    .context("putting rules on the rules phase's tickets")?;
    // The update stamped those tickets too: leave both tables as the seed left them.
    sqlx::query("VACUUM ANALYZE entitlements, tickets")
        .execute(pool)
        .await
        .context("VACUUM")?;
    Ok(())
}

/// `concurrency` tasks scan the tickets `start..end` of `range`, each ticket once, until
/// `secs` have passed or the tickets run out.
async fn run_throughput(
    gate: &Arc<Gate>,
    concurrency: usize,
    (start, end): (usize, usize),
    secs: u64,
) -> anyhow::Result<ThroughputResult> {
    let next = Arc::new(AtomicUsize::new(start));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (gate, next) = (gate.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= end {
                    break;
                }
                let (micros, answer) = gate.scan(index).await;
                tally
                    .timeline
                    .push((started.elapsed().as_secs() as usize, micros));
                if answer.is(200, "SUCCESS") {
                    tally.successes += 1;
                } else {
                    *tally.errors.entry(answer.describe()).or_default() += 1;
                }
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for task in tasks {
        let tally = task.await.context("a throughput task panicked")?;
        all.timeline.extend(tally.timeline);
        all.successes += tally.successes;
        for (kind, count) in tally.errors {
            *all.errors.entry(kind).or_default() += count;
        }
    }
    let elapsed = started.elapsed();
    let mut latencies_us: Vec<u64> = all.timeline.iter().map(|(_, micros)| *micros).collect();
    latencies_us.sort_unstable();
    let mut by_second: Vec<Vec<u64>> = Vec::new();
    for (second, micros) in all.timeline {
        if by_second.len() <= second {
            by_second.resize_with(second + 1, Vec::new);
        }
        by_second[second].push(micros);
    }
    let p99_by_second = by_second
        .iter_mut()
        .map(|latencies| {
            latencies.sort_unstable();
            percentile_ms(latencies, 99.0)
        })
        .collect();
    Ok(ThroughputResult {
        p99_by_second,
        requests: latencies_us.len(),
        successes: all.successes,
        errors: all.errors,
        elapsed,
        ran_out_of_tickets: next.load(Ordering::Relaxed) >= end,
        p50_ms: percentile_ms(&latencies_us, 50.0),
        p99_ms: percentile_ms(&latencies_us, 99.0),
        p999_ms: percentile_ms(&latencies_us, 99.9),
        max_ms: percentile_ms(&latencies_us, 100.0),
    })
}

struct ContentionResult {
    workers: usize,
    qrs: usize,
    violations: usize,
    /// A few violating QRs with their four answers.
    examples: Vec<String>,
    elapsed: Duration,
    p50_ms: f64,
    p99_ms: f64,
}

impl ContentionResult {
    fn print(&self) {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        println!(
            "\ncontention, {} workers x {RACERS} concurrent scans of one QR, {:.1} s: {} QRs, {} violations",
            self.workers,
            secs,
            self.qrs,
            self.violations
        );
        for example in &self.examples {
            println!("  violation: {example}");
        }
        println!(
            "  {:.0} scans/s   {:.0} QRs/s   p50 {:.2} ms   p99 {:.2} ms",
            (self.qrs * RACERS) as f64 / secs,
            self.qrs as f64 / secs,
            self.p50_ms,
            self.p99_ms
        );
    }
}

/// `workers` tasks each take the next ticket of `start..end` and scan its QR from
/// [`RACERS`] clients at once; exactly one scan must succeed and the rest answer
/// `ALREADY_REDEEMED`.
async fn run_contention(
    gate: &Arc<Gate>,
    workers: usize,
    start: usize,
    end: usize,
) -> anyhow::Result<ContentionResult> {
    const MAX_EXAMPLES: usize = 5;
    let next = Arc::new(AtomicUsize::new(start));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (gate, next) = (gate.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies_us = Vec::new();
            let mut qrs = 0usize;
            let mut violations = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= end {
                    break;
                }
                let (a, b, c, d) = tokio::join!(
                    gate.scan(index),
                    gate.scan(index),
                    gate.scan(index),
                    gate.scan(index)
                );
                let answers = [a, b, c, d];
                latencies_us.extend(answers.iter().map(|(micros, _)| *micros));
                qrs += 1;
                let successes = answers
                    .iter()
                    .filter(|(_, answer)| answer.is(200, "SUCCESS"))
                    .count();
                let refusals = answers
                    .iter()
                    .filter(|(_, answer)| answer.is(409, "ALREADY_REDEEMED"))
                    .count();
                if successes != 1 || refusals != RACERS - 1 {
                    let described: Vec<String> = answers
                        .iter()
                        .map(|(_, answer)| answer.describe())
                        .collect();
                    violations.push(format!("ticket B{}: {}", index + 1, described.join(", ")));
                }
            }
            (latencies_us, qrs, violations)
        }));
    }
    let mut latencies_us = Vec::new();
    let mut qrs = 0;
    let mut violations = Vec::new();
    for task in tasks {
        let (latencies, count, violated) = task.await.context("a contention task panicked")?;
        latencies_us.extend(latencies);
        qrs += count;
        violations.extend(violated);
    }
    let elapsed = started.elapsed();
    latencies_us.sort_unstable();
    Ok(ContentionResult {
        workers,
        qrs,
        violations: violations.len(),
        examples: violations.into_iter().take(MAX_EXAMPLES).collect(),
        elapsed,
        p50_ms: percentile_ms(&latencies_us, 50.0),
        p99_ms: percentile_ms(&latencies_us, 99.0),
    })
}

/// The server's transaction path for a SUCCESS (`central_server::scan`: `bind_device`, then
/// `attempt_redeem` with `apply_redemption`) as a pgbench script, statement for statement:
/// what a scan cost before the one-statement path, kept as a second baseline line.
/// Each transaction redeems under a jti of its own (client id and a random number), so the
/// ticket's `UNIQUE (jti, function_code)` never stops it, and the tickets carry a million
/// uses, so they never run out. The server marks a single-use ticket `USED` in the same
/// transaction; the script updates the ticket row the same way without changing its status.
const PGBENCH_SCRIPT: &str = r#"\set n random(1, :pg_tickets)
\set nonce random(1, 4000000000000000000)
SELECT d.id, l.id FROM devices d JOIN locations l ON l.id = d.location_id WHERE d.device_id = 'bench-dev' AND d.merchant_id = :merchant_id AND l.venue_code = 'GATE-1';
BEGIN;
INSERT INTO scan_requests (scan_id, merchant_id, operator_id, token_sha256, function_code, created_at) VALUES (gen_random_uuid(), :merchant_id, :operator_id, sha256(:nonce::text::bytea), 'ENTRY', now()) ON CONFLICT (scan_id) DO NOTHING RETURNING scan_id \gset
SELECT t.id AS ticket_id, t.ticket_code, t.status, t.current_jti, t.channel, t.order_id, o.order_code, m.webhook_url IS NOT NULL AS notify FROM tickets t JOIN orders o ON o.id = t.order_id JOIN merchants m ON m.id = t.merchant_id WHERE t.ticket_code = 'P' || :n AND t.merchant_id = :merchant_id FOR NO KEY UPDATE OF t \gset
SELECT id AS entitlement_id, function_code, name, total_uses, remaining_uses FROM entitlements WHERE ticket_id = :ticket_id ORDER BY id FOR UPDATE \gset
SELECT function_code FROM redemption_events WHERE jti = 'pgb' || :client_id::text || '-' || :nonce::text;
INSERT INTO redemption_events (jti, function_code, ticket_id, entitlement_id, merchant_id, operator_id, device_id, location_id, redeemed_at, scan_id, source) VALUES ('pgb' || :client_id::text || '-' || :nonce::text, 'ENTRY', :ticket_id, :entitlement_id, :merchant_id, :operator_id, :device_pk, :location_id, now(), :scan_id, 'venue') RETURNING id AS redemption_id \gset
UPDATE entitlements SET remaining_uses = remaining_uses - 1 WHERE id = :entitlement_id;
UPDATE tickets SET updated_at = now() WHERE id = :ticket_id;
INSERT INTO merchant_redemptions (merchant_id, operator_id, ticket_id, order_id, location_id, device_id, redemption_event_id, function_code, redeemed_at, decided_at, uploaded_at, source, result, meta, scan_id) VALUES (:merchant_id, :operator_id, :ticket_id, :order_id, :location_id, :device_pk, :redemption_id, 'ENTRY', now(), now(), NULL, 'venue', 'SUCCESS', '{}'::jsonb, NULL) RETURNING id AS log_id \gset
UPDATE scan_requests SET response = '{"result":"SUCCESS","code":"SUCCESS","message":"ok","ticket":{"ticket_code":"P1","status":"ACTIVATED","entitlements":[{"function_code":"ENTRY","name":"Entry","total_uses":1000000,"remaining_uses":999999}]},"redemption":{"id":1,"redeemed_at":"2026-01-01T00:00:00.000+00:00","operator":{"id":1,"username":"bench-op"},"device_id":"bench-dev","venue_code":"GATE-1"}}'::jsonb, http_status = 200 WHERE scan_id = :scan_id;
COMMIT;
"#;

/// Runs [`PGBENCH_SCRIPT`] against the bench database with `clients` clients.
async fn run_pgbench(
    url: &str,
    fixture: &bench::Fixture,
    clients: usize,
    secs: u64,
) -> anyhow::Result<PgbenchResult> {
    let script = std::env::temp_dir().join(format!("stile-bench-{}.sql", std::process::id()));
    std::fs::write(&script, PGBENCH_SCRIPT)
        .with_context(|| format!("writing {}", script.display()))?;
    let defines = [
        ("merchant_id", fixture.merchant_id.to_string()),
        ("operator_id", fixture.operator_id.to_string()),
        ("device_pk", fixture.device_pk.to_string()),
        ("location_id", fixture.location_id.to_string()),
        ("pg_tickets", PGBENCH_TICKETS.to_string()),
    ]
    .map(|(name, value)| (name.to_owned(), value));
    let result = stile_tools::baseline::run_pgbench(&script, url, clients, secs, &defines).await;
    let _ = std::fs::remove_file(&script);
    result
}

/// One pgbench run of the minimal transaction: clients, the report, WAL bytes and
/// statements per transaction, (WAL records, full-page images) per transaction.
type MinimalRun = (
    usize,
    stile_tools::baseline::PgbenchResult,
    f64,
    Option<f64>,
    (f64, f64),
);

/// One throughput phase with what it cost the server and the database.
struct Phase {
    clients: usize,
    result: ThroughputResult,
    /// Cores the server process used on average.
    cpu_cores: Option<f64>,
    wal_per_scan: f64,
    statements_per_scan: Option<f64>,
    /// WAL records and full-page images per scan.
    wal_records_per_scan: (f64, f64),
}

fn or_na(value: Option<f64>, digits: usize) -> String {
    value.map_or("n/a".to_owned(), |v| format!("{v:.digits$}"))
}

fn ms(value: Option<f64>) -> String {
    value.map_or("n/a".to_owned(), |ms| format!("{ms:.2} ms"))
}

/// The table of every concurrency: server against the minimal transaction.
fn print_phases(phases: &[Phase], minimal: &[MinimalRun], heavier: &PgbenchResult) {
    println!("\n== /venue/scan against the minimal transaction (pgbench, same cluster) ==");
    println!(
        "{:>4}  {:>9} {:>8} {:>8} {:>6} {:>10} {:>10}  |  {:>9} {:>8} {:>8} {:>10} {:>10}  | {:>6}",
        "C",
        "scans/s",
        "p50 ms",
        "p99 ms",
        "cores",
        "stmts/scan",
        "WAL B/scan",
        "pgb tps",
        "p50 ms",
        "p99 ms",
        "stmts/tx",
        "WAL B/tx",
        "ratio"
    );
    for (phase, (_, base, wal, statements, _)) in phases.iter().zip(minimal) {
        println!(
            "{:>4}  {:>9.0} {:>8.2} {:>8.2} {:>6} {:>10} {:>10.0}  |  {:>9.0} {:>8} {:>8} {:>10} {:>10.0}  | {:>6.2}",
            phase.clients,
            phase.result.scans_per_sec(),
            phase.result.p50_ms,
            phase.result.p99_ms,
            or_na(phase.cpu_cores, 2),
            or_na(phase.statements_per_scan, 1),
            phase.wal_per_scan,
            base.tps,
            or_na(base.latency_p50_ms, 2),
            or_na(base.latency_p99_ms, 2),
            or_na(*statements, 1),
            wal,
            phase.result.scans_per_sec() / base.tps.max(1e-9),
        );
    }
    for (phase, (_, _, _, _, records)) in phases.iter().zip(minimal) {
        println!(
            "C={:<4} WAL records / full-page images per scan {:.1} / {:.2}; per pgbench transaction {:.1} / {:.2} (pg_stat_wal: each backend reports at most once a second, so short phases undercount)",
            phase.clients,
            phase.wal_records_per_scan.0,
            phase.wal_records_per_scan.1,
            records.0,
            records.1
        );
    }
    println!(
        "targets at C={TARGET_CONCURRENCY}: ratio >= {TARGET_RATIO}, p99 <= {TARGET_P99_MS:.0} ms; the transaction path's SQL under pgbench: {:.0} tps at C={} (ratio {:.2})",
        heavier.tps,
        phases[0].clients,
        phases[0].result.scans_per_sec() / heavier.tps.max(1e-9)
    );
}

fn print_summary(
    args: &Args,
    throughput: &ThroughputResult,
    contention: &ContentionResult,
    memory: Option<(u64, u64)>,
    baseline: &PgbenchResult,
) {
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    let ratio = throughput.scans_per_sec() / baseline.tps.max(1e-9);
    println!("\n== stile-bench summary ({} tickets) ==", args.tickets);
    println!(
        "throughput      {:>10.0} scans/s at C={}  ({} errors)",
        throughput.scans_per_sec(),
        args.concurrency,
        throughput.error_count()
    );
    println!(
        "pgbench         {:>10.0} tps at C={} (the minimal transaction)",
        baseline.tps, args.concurrency
    );
    println!(
        "server/pgbench  {:>10.2}            target >= {TARGET_RATIO}: {}",
        ratio,
        verdict(ratio >= TARGET_RATIO)
    );
    let at_target = if args.concurrency == TARGET_CONCURRENCY {
        String::new()
    } else {
        format!(
            " (measured at C={}, target is for C={TARGET_CONCURRENCY})",
            args.concurrency
        )
    };
    println!(
        "latency p50     {:>10.2} ms   p99 {:.2} ms   p99.9 {:.2} ms",
        throughput.p50_ms, throughput.p99_ms, throughput.p999_ms
    );
    println!(
        "latency p99     {:>10.2} ms         target <= {TARGET_P99_MS:.0} ms at C={TARGET_CONCURRENCY}: {}{at_target}",
        throughput.p99_ms,
        verdict(throughput.p99_ms <= TARGET_P99_MS)
    );
    match memory {
        Some((peak, current)) => println!(
            "server memory   {:>10.1} MB peak ({:.1} MB now)  target <= {TARGET_MEMORY_MB:.0} MB: {}",
            mb(peak),
            mb(current),
            verdict(mb(peak) <= TARGET_MEMORY_MB)
        ),
        None => println!("server memory         n/a"),
    }
    println!(
        "contention      {:>10} QRs x {RACERS} scans, {} violations  target: exactly one SUCCESS per QR: {}",
        contention.qrs,
        contention.violations,
        verdict(contention.violations == 0)
    );
    println!(
        "contention      {:>10.2} ms p50   p99 {:.2} ms",
        contention.p50_ms, contention.p99_ms
    );
}

/// Scans with and without 200 concurrent bad logins: whether password hashing can slow the
/// gates down (the bound on argon2 should keep it from).
struct LoginFloodResult {
    gates: usize,
    logins: usize,
    quiet: ThroughputResult,
    flooded: ThroughputResult,
    refused: u64,
    checked: u64,
    peak_before_kib: Option<u64>,
    peak_after_kib: Option<u64>,
}

impl LoginFloodResult {
    fn print_summary(&self) {
        let max = |r: &ThroughputResult| r.max_ms;
        println!(
            "\n== login flood: /venue/scan at C={} without and during {} concurrent bad logins ==",
            self.gates, self.logins
        );
        println!(
            "without flood   p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms   {:.0} scans/s",
            self.quiet.p50_ms,
            self.quiet.p99_ms,
            max(&self.quiet),
            self.quiet.scans_per_sec()
        );
        println!(
            "during flood    p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms   {:.0} scans/s",
            self.flooded.p50_ms,
            self.flooded.p99_ms,
            max(&self.flooded),
            self.flooded.scans_per_sec()
        );
        println!(
            "flood logins    {} password checks (401), {} refused by the queue or throttle (429)",
            self.checked, self.refused
        );
        if let (Some(before), Some(after)) = (self.peak_before_kib, self.peak_after_kib) {
            println!(
                "server memory   peak {:.1} MB before the flood, {:.1} MB after",
                mb(before),
                mb(after)
            );
        }
    }
}

async fn run_login_flood(
    gate: &Arc<Gate>,
    server: &ServerProcess,
    args: &Args,
    quiet_range: (usize, usize),
    flood_range: (usize, usize),
) -> anyhow::Result<LoginFloodResult> {
    let gates = args.flood_gates.max(1);
    let quiet = run_throughput(gate, gates, quiet_range, args.duration).await?;
    let peak_before_kib = server.memory_kib().map(|(peak, _)| peak);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = reqwest::Client::new();
    let url = server.url("/operators/login");
    let mut flooders = Vec::with_capacity(args.flood_logins);
    for worker in 0..args.flood_logins {
        let (stop, client, url) = (stop.clone(), client.clone(), url.clone());
        flooders.push(tokio::spawn(async move {
            let (mut checked, mut refused) = (0u64, 0u64);
            let mut attempt = 0u64;
            while !stop.load(Ordering::Relaxed) {
                attempt += 1;
                let body = serde_json::json!({
                    "username": format!("flood-{worker}-{attempt}"),
                    "password": "not the password",
                });
                match client.post(&url).json(&body).send().await {
                    Ok(response) if response.status() == 401 => checked += 1,
                    Ok(_) => refused += 1,
                    Err(_) => refused += 1,
                }
            }
            (checked, refused)
        }));
    }
    // Let the flood fill the queue before the gates start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let flooded = run_throughput(gate, gates, flood_range, args.duration).await?;
    stop.store(true, Ordering::Relaxed);
    let (mut checked, mut refused) = (0, 0);
    for flooder in flooders {
        let (c, r) = flooder.await.context("a flood task panicked")?;
        checked += c;
        refused += r;
    }
    let peak_after_kib = server.memory_kib().map(|(peak, _)| peak);
    let result = LoginFloodResult {
        gates,
        logins: args.flood_logins,
        quiet,
        flooded,
        refused,
        checked,
        peak_before_kib,
        peak_after_kib,
    };
    result.quiet.print(gates);
    result.flooded.print(gates);
    Ok(result)
}

/// Nearest-rank percentile of sorted microsecond samples, in milliseconds.
/// [`stile_tools::baseline::percentile_ms`], 0 for a phase without scans.
fn percentile_ms(sorted_us: &[u64], pct: f64) -> f64 {
    stile_tools::baseline::percentile_ms(sorted_us, pct).unwrap_or(0.0)
}

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
