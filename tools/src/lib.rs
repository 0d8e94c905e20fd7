//! What the demo and the benchmark share: finding a PostgreSQL to use (the configured
//! `DATABASE_URL`, or a private cluster), and running the real `central-server` binary as
//! a child process on a free port.

pub mod baseline;

use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A binary of this workspace next to the running tool (same cargo profile), or the path in
/// the environment variable `override_var`.
pub fn sibling_binary(name: &str, override_var: &str) -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var(override_var) {
        return Ok(PathBuf::from(path));
    }
    let me = std::env::current_exe().context("locating this executable")?;
    let sibling = me
        .parent()
        .map(|dir| dir.join(name))
        .context("this executable has no directory")?;
    if !sibling.exists() {
        bail!(
            "{} not found: build it first (cargo build -p {name}, same profile as this tool)",
            sibling.display()
        );
    }
    Ok(sibling)
}

/// The `central-server` binary next to the running tool, or `STILE_CENTRAL_SERVER_BIN`.
/// The repository root a tool works in (where `marker` is): `explicit`, else the current
/// directory when it has the marker, else the source tree the tool was built from.
pub fn repository_root(explicit: Option<PathBuf>, marker: &str) -> anyhow::Result<PathBuf> {
    if let Some(root) = explicit {
        return Ok(root);
    }
    let current = std::env::current_dir().context("reading the current directory")?;
    if current.join(marker).is_file() {
        return Ok(current);
    }
    let built_from = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    if built_from.join(marker).is_file() {
        return Ok(built_from.to_path_buf());
    }
    anyhow::bail!(
        "{marker} not found in {} nor in {}: run from the repository root or pass --root",
        current.display(),
        built_from.display()
    )
}

/// Runs `central-server ARGS` against the database (migrate, seed, ...); fails with its
/// stderr. Returns what it printed.
pub fn central_server_command(database_url: &str, args: &[&str]) -> anyhow::Result<String> {
    let binary = central_server_binary()?;
    let output = Command::new(&binary)
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .output()
        .with_context(|| format!("running central-server {}", args.join(" ")))?;
    if !output.status.success() {
        anyhow::bail!(
            "central-server {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

pub fn central_server_binary() -> anyhow::Result<PathBuf> {
    sibling_binary("central-server", "STILE_CENTRAL_SERVER_BIN")
}

/// Signs one OTA QR per ticket `B1`..`B{tickets}` of `merchant_code` with the server's active
/// key and makes each the ticket's current QR (in batches). Returns the tokens, index `i` for
/// ticket `B{i+1}`.
pub async fn sign_bench_tokens(
    pool: &sqlx::PgPool,
    merchant_code: &str,
    tickets: usize,
) -> anyhow::Result<Vec<String>> {
    use stile_shared::token::{Jti, QrClaims};
    const BATCH: usize = 10_000;
    let started = Instant::now();
    // The benchmarks' databases have no key-encryption key.
    let signer =
        central_server::keys::active_signer(pool, &central_server::kek::KeyEncryption::none())
            .await
            .context("reading the active signing key")?;
    let iat = chrono::Utc::now().timestamp();
    let mut tokens = Vec::with_capacity(tickets);
    let mut codes = Vec::with_capacity(BATCH);
    let mut jtis = Vec::with_capacity(BATCH);
    for number in 1..=tickets {
        let jti = Jti::from_bytes(*uuid::Uuid::new_v4().as_bytes());
        let claims = QrClaims {
            jti: jti.clone(),
            tid: format!("B{number}"),
            mid: merchant_code.to_owned(),
            ch: stile_shared::Channel::Ota,
            iat,
            exp: None,
        };
        tokens.push(
            signer
                .issue(&claims)
                .with_context(|| format!("signing the QR of ticket B{number}"))?,
        );
        codes.push(claims.tid);
        jtis.push(jti.as_str().to_owned());
        if codes.len() == BATCH || number == tickets {
            sqlx::query(
                "UPDATE tickets t SET current_jti = u.jti \
                 FROM unnest($1::text[], $2::text[]) AS u(code, jti) WHERE t.ticket_code = u.code",
            )
            .bind(&codes)
            .bind(&jtis)
            .execute(pool)
            .await
            .context("storing current_jti")?;
            codes.clear();
            jtis.clear();
        }
    }
    println!(
        "signed {tickets} QR tokens and stored their jti in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(tokens)
}

/// A free TCP port on loopback.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Peak (`VmHWM`) and current (`VmRSS`) resident memory of a process, in KiB, from
/// `/proc/<pid>/status`.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse::<u64>().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// A `central-server serve` child process; killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    pub base_url: String,
    /// The operations listener (`/metrics`, the admin API).
    pub ops_url: String,
}

impl ServerProcess {
    /// Sends the process a signal by name (`STOP`, `CONT`): a hung central, and its return.
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        stile_testkit::send_signal(self.child.id(), name)
    }

    /// Starts `central-server serve` on a free port with these extra environment variables
    /// and waits until `/readyz` answers.
    pub async fn start(database_url: &str, env: &[(&str, &str)]) -> anyhow::Result<ServerProcess> {
        let binary = central_server_binary()?;
        let port = free_port()?;
        let ops_port = free_port()?;
        let mut command = Command::new(&binary);
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("STILE_OPS_LISTEN", format!("127.0.0.1:{ops_port}"))
            .env("DATABASE_URL", database_url)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut server = ServerProcess {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
            ops_url: format!("http://127.0.0.1:{ops_port}"),
        };
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(response) = client.get(server.url("/readyz")).send().await {
                if response.status().is_success() {
                    return Ok(server);
                }
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("central-server exited during start-up: {status}");
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("central-server did not become ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak and current resident memory of the process, in KiB (from /proc).
    pub fn memory_kib(&self) -> Option<(u64, u64)> {
        memory_kib(self.pid())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A database to use: the configured `DATABASE_URL`, or a fresh database on a private
/// cluster that lives as long as the returned guard.
pub async fn database(
    name: &str,
    options: &stile_testkit::ClusterOptions,
) -> anyhow::Result<(String, Option<stile_testkit::Cluster>)> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        if !url.is_empty() {
            return Ok((url, None));
        }
    }
    let cluster = stile_testkit::Cluster::start(options)?;
    let admin_url = cluster.admin_url().to_owned();
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    Ok((cluster.url_of(name), Some(cluster)))
}

/// The merchant the load benchmarks seed: one gate, one device, one operator.
pub mod bench {
    use anyhow::{bail, Context};
    use std::time::Instant;

    pub const MERCHANT_CODE: &str = "MB";
    pub const VENUE_CODE: &str = "GATE-1";
    pub const DEVICE_ID: &str = "bench-dev";
    pub const DEVICE_SECRET: &str = "bench-secret-1";
    pub const OPERATOR: &str = "bench-op";
    pub const PASSWORD: &str = "bench-password";
    pub const FUNCTION: &str = "ENTRY";
    /// Tickets per order in the seed.
    pub const TICKETS_PER_ORDER: i64 = 100;

    /// Ids of what [`seed`] created.
    #[derive(Debug, Clone, Copy)]
    pub struct Fixture {
        pub merchant_id: i64,
        pub operator_id: i64,
        pub device_pk: i64,
        pub location_id: i64,
    }

    /// A run of activated OTA tickets `{prefix}1`, `{prefix}2`, … with one ENTRY entitlement
    /// of `uses` uses, one order per [`TICKETS_PER_ORDER`].
    #[derive(Debug, Clone, Copy)]
    pub struct TicketRun {
        pub prefix: &'static str,
        pub count: i64,
        pub uses: i32,
    }

    /// Seeds the bench merchant and the ticket runs with SQL (the JSON seed loader is far too
    /// slow for 100,000 tickets), in one transaction. Refuses a database that already holds
    /// the bench merchant.
    pub async fn seed(pool: &sqlx::PgPool, runs: &[TicketRun]) -> anyhow::Result<Fixture> {
        let started = Instant::now();
        let password_hash = central_server::auth::hash_password(PASSWORD)?;
        let mut tx = pool.begin().await?;
        let existing: Option<(i64,)> = sqlx::query_as("SELECT id FROM merchants WHERE code = $1")
            .bind(MERCHANT_CODE)
            .fetch_optional(&mut *tx)
            .await?;
        if existing.is_some() {
            bail!("the database already holds bench data: point DATABASE_URL at an empty database");
        }
        let (merchant_id,): (i64,) = sqlx::query_as(
            "INSERT INTO merchants (code, name) VALUES ($1, 'Bench park') RETURNING id",
        )
        .bind(MERCHANT_CODE)
        .fetch_one(&mut *tx)
        .await?;
        let (location_id,): (i64,) = sqlx::query_as(
            "INSERT INTO locations (merchant_id, venue_code, name) VALUES ($1, $2, 'Gate 1') RETURNING id",
        )
        .bind(merchant_id)
        .bind(VENUE_CODE)
        .fetch_one(&mut *tx)
        .await?;
        let (device_pk,): (i64,) = sqlx::query_as(
            "INSERT INTO devices (device_id, merchant_id, location_id, secret_hash) \
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(DEVICE_ID)
        .bind(merchant_id)
        .bind(location_id)
        .bind(central_server::auth::sha256_hex(DEVICE_SECRET))
        .fetch_one(&mut *tx)
        .await?;
        let (operator_id,): (i64,) = sqlx::query_as(
            "INSERT INTO operators (merchant_id, username, password_hash, display_name) \
             VALUES ($1, $2, $3, 'Bench operator') RETURNING id",
        )
        .bind(merchant_id)
        .bind(OPERATOR)
        .bind(&password_hash)
        .fetch_one(&mut *tx)
        .await?;
        for run in runs {
            let prefix = run.prefix;
            sqlx::query(
                "INSERT INTO orders (order_code, merchant_id) \
                 SELECT 'ORD-' || $1 || g, $2 FROM generate_series(1, ($3 + $4 - 1) / $4) AS g",
            )
            .bind(prefix)
            .bind(merchant_id)
            .bind(run.count)
            .bind(TICKETS_PER_ORDER)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("seeding the orders of the {prefix} tickets"))?;
            sqlx::query(
                "INSERT INTO tickets (ticket_code, order_id, merchant_id, passenger_name, channel, status) \
                 SELECT $1 || g, o.id, $2, 'Guest ' || g, 'OTA', 'ACTIVATED' \
                 FROM generate_series(1, $3) AS g \
                 JOIN orders o ON o.order_code = 'ORD-' || $1 || ((g - 1) / $4 + 1)",
            )
            .bind(prefix)
            .bind(merchant_id)
            .bind(run.count)
            .bind(TICKETS_PER_ORDER)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("seeding the {prefix} tickets"))?;
            sqlx::query(
                "INSERT INTO entitlements (ticket_id, merchant_id, function_code, name, total_uses, remaining_uses) \
                 SELECT id, merchant_id, $3, 'Entry', $4, $4 FROM tickets \
                 WHERE merchant_id = $1 AND ticket_code LIKE $2 || '%'",
            )
            .bind(merchant_id)
            .bind(prefix)
            .bind(FUNCTION)
            .bind(run.uses)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("seeding the entitlements of the {prefix} tickets"))?;
        }
        tx.commit().await.context("committing the seed")?;
        let counts: Vec<String> = runs
            .iter()
            .map(|run| format!("{} {}…", run.count, run.prefix))
            .collect();
        println!(
            "seeded tickets {} in {:.1} s",
            counts.join(" + "),
            started.elapsed().as_secs_f64()
        );
        Ok(Fixture {
            merchant_id,
            operator_id,
            device_pk,
            location_id,
        })
    }
}
