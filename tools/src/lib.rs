//! What the demo and the benchmark share: finding a PostgreSQL to use (the configured
//! `DATABASE_URL`, or a private cluster), and running the real `central-server` binary as
//! a child process on a free port.

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
    use stile_shared::token::{Jti, QrClaims, QrSigner};
    const BATCH: usize = 10_000;
    let started = Instant::now();
    let (kid, private_key): (String, Vec<u8>) =
        sqlx::query_as("SELECT kid, private_key FROM signing_keys WHERE state = 'active'")
            .fetch_one(pool)
            .await
            .context("reading the active signing key")?;
    let private_key: [u8; 32] = private_key
        .try_into()
        .map_err(|_| anyhow::anyhow!("signing key {kid} is not 32 bytes"))?;
    let signer = QrSigner::new(&kid, private_key);
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

/// A `central-server serve` child process; killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    pub base_url: String,
}

impl ServerProcess {
    /// Starts `central-server serve` on a free port with these extra environment variables
    /// and waits until `/readyz` answers.
    pub async fn start(database_url: &str, env: &[(&str, &str)]) -> anyhow::Result<ServerProcess> {
        let binary = central_server_binary()?;
        let port = free_port()?;
        let mut command = Command::new(&binary);
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
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
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|value| value.parse::<u64>().ok())
        };
        Some((field("VmHWM:")?, field("VmRSS:")?))
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
