//! Test harness of the gate agent: a real central server on a fresh database of the
//! throwaway PostgreSQL, a TCP proxy between agent and central that tests cut and restore,
//! and agents run in-process or as real processes of the `edge-agent` binary.
#![allow(dead_code)] // each test binary uses its own subset

#[allow(unused_imports)] // not every test binary cuts its uplink
pub use stile_testkit::proxy;

use central_server::{db, seed, AppState};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use stile_testkit::Cluster;
use tokio::sync::oneshot;

pub const FIXTURES: &str = r#"{
  "channels": [{"name": "miniapp", "kind": "MINIAPP", "api_key": "ch-miniapp-secret", "merchants": ["M001"]},
               {"name": "ota", "kind": "OTA", "api_key": "ch-ota-secret", "merchants": ["M001"]}],
  "merchants": [{"code": "M001", "name": "示例乐园",
     "locations": [{"venue_code": "GATE-EAST", "name": "东门"}, {"venue_code": "GATE-WEST", "name": "西门"}],
     "operators": [{"username": "op-east", "password": "correct horse"}],
     "devices": [{"device_id": "dev-east-1", "venue_code": "GATE-EAST", "secret": "dev-secret-1"},
                 {"device_id": "dev-west-1", "venue_code": "GATE-WEST", "secret": "dev-secret-2"}]}],
  "orders": [{"order_id": "ORD-1", "merchant": "M001", "passengers": [{"name": "张三", "tickets": [
     {"ticket_code": "TK-MINI", "channel": "MINIAPP", "status": "ACTIVATED",
      "entitlements": [{"function_code": "ENTRY", "name": "入园", "total_uses": 1}, {"function_code": "MEAL", "name": "午餐", "total_uses": 2}]},
     {"ticket_code": "TK-MULTI", "channel": "OTA", "status": "ACTIVATED",
      "entitlements": [{"function_code": "ENTRY", "name": "入园", "total_uses": 100}]}]}]}]
}"#;

/// `count` more one-use OTA tickets `TK-Bn` for bulk tests.
pub fn bulk_fixture(count: usize) -> String {
    let tickets: Vec<Value> = (0..count)
        .map(|i| {
            json!({"ticket_code": format!("TK-B{i}"), "channel": "OTA", "status": "ACTIVATED",
            "entitlements": [{"function_code": "ENTRY", "name": "入园", "total_uses": 1}]})
        })
        .collect();
    json!({"orders": [{"order_id": "ORD-BULK", "merchant": "M001", "passengers": [{"name": "团体", "tickets": tickets}]}]}).to_string()
}

/// A fresh database of the throwaway PostgreSQL with the fixtures (and `extra_seed`) loaded.
async fn seeded_database(extra_seed: &[String], connections: u32) -> (String, sqlx::PgPool) {
    let url = Cluster::shared()
        .fresh_database(&db::MIGRATOR)
        .await
        .expect("database");
    let pool = db::connect(&url, connections).await.expect("connect");
    for text in std::iter::once(FIXTURES.to_owned()).chain(extra_seed.iter().cloned()) {
        let file = seed::parse(&text).expect("fixture parses");
        seed::apply(&pool, &file).await.expect("fixture loads");
    }
    (url, pool)
}

/// `POST /tickets/{ticket}/qr` at `base` with a channel key: the new token.
pub async fn issue_qr_at(
    client: &reqwest::Client,
    base: &str,
    ticket: &str,
    channel_key: &str,
) -> String {
    let issued: Value = client
        .post(format!("{base}/tickets/{ticket}/qr"))
        .bearer_auth(channel_key)
        .send()
        .await
        .expect("issue")
        .json()
        .await
        .expect("json");
    issued["qr_token"].as_str().expect("token").to_owned()
}

/// `op-east`'s operator token from the central at `base`.
pub async fn operator_token(client: &reqwest::Client, base: &str) -> String {
    let body: Value = client
        .post(format!("{base}/operators/login"))
        .json(&json!({"username": "op-east", "password": "correct horse"}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("login body");
    body["token"].as_str().expect("token").to_owned()
}

async fn count_in(pool: &sqlx::PgPool, sql: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(pool).await.expect("count");
    n
}

/// A central server running in this process.
pub struct Central {
    pub base: String,
    /// The database the central serves from (a test may replace it under the server).
    pub database_url: String,
    /// The operations listener (`/metrics`, the admin API).
    pub ops_base: String,
    pub addr: std::net::SocketAddr,
    pub state: AppState,
    pub pool: sqlx::PgPool,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
}

impl Central {
    pub async fn start(extra_seed: &[String]) -> Central {
        let (url, pool) = seeded_database(extra_seed, 4).await;
        let settings = central_server::config::Settings::for_database(&url).expect("settings");
        let state = central_server::build_state(settings).await.expect("state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ops = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind ops");
        let ops_base = format!("http://{}", ops.local_addr().expect("ops addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = state.clone();
        tokio::spawn(async move {
            let listeners = central_server::Listeners {
                public: listener,
                ops: Some(ops),
            };
            let _ = central_server::serve_state(serving, listeners, async move {
                let _ = stopped.await;
            })
            .await;
        });
        Central {
            base: format!("http://{addr}"),
            database_url: url,
            ops_base,
            addr,
            state,
            pool,
            client: reqwest::Client::new(),
            stop: Some(stop),
        }
    }

    pub async fn issue_qr(&self, ticket: &str, channel_key: &str) -> String {
        issue_qr_at(&self.client, &self.base, ticket, channel_key).await
    }

    pub async fn count(&self, sql: &str) -> i64 {
        count_in(&self.pool, sql).await
    }

    /// Asserts what each query counts (the query names the failure).
    pub async fn expect_counts(&self, expected: &[(&str, i64)]) {
        for (sql, want) in expected {
            assert_eq!(count_in(&self.pool, sql).await, *want, "{sql}");
        }
    }

    pub async fn remaining(&self, ticket: &str, function: &str) -> i32 {
        let (n,): (i32,) = sqlx::query_as(
            "SELECT e.remaining_uses FROM entitlements e JOIN tickets t ON t.id = e.ticket_id WHERE t.ticket_code = $1 AND e.function_code = $2",
        ).bind(ticket).bind(function).fetch_one(&self.pool).await.expect("remaining");
        n
    }
}

impl Drop for Central {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The TOML of an agent that talks to `central_url`.
pub fn agent_config(
    device: &str,
    secret: &str,
    venue: &str,
    central_url: &str,
    state_dir: &Path,
    listen_port: u16,
    extra: &str,
) -> String {
    format!(
        r#"device_id = "{device}"
device_secret = "{secret}"
central_url = "{central_url}"
venue_code = "{venue}"
state_dir = "{state}"
listen = "127.0.0.1:{listen_port}"
online_deadline_ms = 700
sync_interval_secs = 1
key_refresh_secs = 60
debounce_secs = 1
shutdown_grace_secs = 3
api_token = "{API_TOKEN}"
{extra}
[operator]
username = "op-east"
password = "correct horse"
"#,
        state = state_dir.display()
    )
}

/// An agent process for `device` at `venue` talking to `central_url`, with `extra` settings,
/// its state in a temporary directory kept as long as the returned guard lives.
pub async fn start_agent(
    device: &str,
    secret: &str,
    venue: &str,
    central_url: &str,
    extra: &str,
) -> (AgentProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        agent_config(
            device,
            secret,
            venue,
            central_url,
            &dir.path().join("state"),
            port,
            extra,
        ),
    )
    .expect("config");
    (AgentProcess::start(&config, port).await, dir)
}

/// An agent config without its `[operator]` section: nobody logs in by configuration.
pub fn without_operator(config: &str) -> &str {
    config
        .split_once("[operator]")
        .map_or(config, |(settings, _)| settings)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// An agent process of the real binary.
pub struct AgentProcess {
    pub child: std::process::Child,
    pub base: String,
    pub config_path: PathBuf,
}

impl AgentProcess {
    pub async fn start(config_path: &Path, port: u16) -> AgentProcess {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_edge-agent"));
        command.args(["run", "--config", config_path.to_str().expect("utf-8 path")]);
        AgentProcess::spawn(command, config_path, port).await
    }

    /// Starts the agent as systemd would with `WatchdogSec=` and a notify socket: the shell
    /// exports its own pid as `WATCHDOG_PID`, then becomes the agent (same pid).
    pub async fn start_under_watchdog(
        config_path: &Path,
        port: u16,
        notify_socket: &Path,
        watchdog_usec: u64,
    ) -> AgentProcess {
        let mut command = std::process::Command::new("sh");
        command
            .args(["-c", "export WATCHDOG_PID=$$; exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_edge-agent"))
            .args(["run", "--config", config_path.to_str().expect("utf-8 path")])
            .env("NOTIFY_SOCKET", notify_socket)
            .env("WATCHDOG_USEC", watchdog_usec.to_string());
        AgentProcess::spawn(command, config_path, port).await
    }

    async fn spawn(
        mut command: std::process::Command,
        config_path: &Path,
        port: u16,
    ) -> AgentProcess {
        let child = command
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn edge-agent");
        let agent = AgentProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
            config_path: config_path.to_owned(),
        };
        wait_for(&format!("{}/healthz", agent.base), Duration::from_secs(30)).await;
        agent
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The text of a page (status page, gate display) as any client gets it.
pub async fn page(url: &str) -> String {
    reqwest::get(url)
        .await
        .expect("get the page")
        .text()
        .await
        .expect("the page's text")
}

pub async fn wait_for(url: &str, limit: Duration) {
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(response) = client.get(url).send().await {
            if response.status().is_success() {
                return;
            }
        }
        assert!(
            started.elapsed() < limit,
            "{url} did not answer within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the agent's status until `ready` holds (bounded).
pub async fn wait_status(
    base: &str,
    limit: Duration,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(response) = client.get(format!("{base}/api/status")).send().await {
            if let Ok(status) = response.json::<Value>().await {
                if ready(&status) {
                    return status;
                }
                assert!(
                    started.elapsed() < limit,
                    "agent never reached: {what}; last status {status}"
                );
            }
        }
        assert!(started.elapsed() < limit, "agent never reached: {what}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Waits until the gate's upload queue is empty; returns that status.
pub async fn wait_drained(base: &str, limit: Duration, what: &str) -> Value {
    wait_status(base, limit, what, |s| {
        s["outbox"]["depth"].as_i64() == Some(0)
    })
    .await
}

/// Waits until the gate holds the central's occupancy figure `inside`, counted at or after
/// `counted_after` (Unix seconds), and then for one more complete sync (so the tickets the
/// passages stamped are in its copy too).
pub async fn wait_figure(base: &str, limit: Duration, inside: i64, counted_after: i64) {
    let status = wait_status(base, limit, "the venue's figure", |s| {
        s["venue"]["synced_inside"].as_i64() == Some(inside)
            && s["venue"]["as_of"].as_i64() >= Some(counted_after)
    })
    .await;
    let synced = status["last_sync_at"].clone();
    wait_status(base, limit, "one more ticket sync", |s| {
        s["last_sync_at"] != synced
    })
    .await;
}

/// Synced at least once, keys loaded, an operator logged in.
pub fn is_synced(status: &Value) -> bool {
    !status["last_sync_at"].is_null()
        && status["keys"]["kids"]
            .as_array()
            .is_some_and(|k| !k.is_empty())
        && !status["operator"].is_null()
}

/// The agents' local API token in these tests.
pub const API_TOKEN: &str = "test-local-api-token";

pub async fn scan(base: &str, code: &str) -> Value {
    reqwest::Client::new()
        .post(format!("{base}/api/scan"))
        .bearer_auth(API_TOKEN)
        .json(&json!({"code": code}))
        .send()
        .await
        .expect("scan")
        .json()
        .await
        .expect("decision")
}

/// The `central-server` binary of this workspace (beside this test's own target directory),
/// built first when a narrower `cargo test` did not build it.
pub fn central_server_binary() -> PathBuf {
    let me = std::env::current_exe().expect("test executable");
    let profile_dir = me
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let binary = profile_dir.join("central-server");
    if !binary.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--quiet", "-p", "central-server"])
            .status()
            .expect("cargo build -p central-server");
        assert!(status.success(), "building central-server failed");
    }
    binary
}

/// A central server as a real process (so a test can SIGSTOP it), on a fresh seeded
/// database of the throwaway PostgreSQL.
pub struct CentralProcess {
    pub child: std::process::Child,
    pub base: String,
    pub addr: std::net::SocketAddr,
    pub pool: sqlx::PgPool,
    pub client: reqwest::Client,
}

impl CentralProcess {
    pub async fn start(extra_seed: &[String]) -> CentralProcess {
        let (url, pool) = seeded_database(extra_seed, 2).await;
        CentralProcess::serve(&url, pool).await
    }

    /// `central-server serve` on a database of the test's own (`pool` is the test's way in).
    pub async fn serve(url: &str, pool: sqlx::PgPool) -> CentralProcess {
        let port = free_port();
        let child = std::process::Command::new(central_server_binary())
            .args(["--database-url", url, "serve", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .env("STILE_OPS_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn central-server");
        let base = format!("http://127.0.0.1:{port}");
        let central = CentralProcess {
            child,
            addr: format!("127.0.0.1:{port}").parse().expect("addr"),
            base,
            pool,
            client: reqwest::Client::new(),
        };
        wait_for(
            &format!("{}/healthz", central.base),
            Duration::from_secs(30),
        )
        .await;
        central
    }

    /// Sends a signal to the process (`STOP`, `CONT`, `KILL`).
    pub fn signal(&self, name: &str) {
        stile_testkit::send_signal(self.child.id(), name).expect("signal the central");
    }

    pub async fn issue_qr(&self, ticket: &str, channel_key: &str) -> String {
        issue_qr_at(&self.client, &self.base, ticket, channel_key).await
    }

    pub async fn count(&self, sql: &str) -> i64 {
        count_in(&self.pool, sql).await
    }
}

impl Drop for CentralProcess {
    fn drop(&mut self) {
        // A stopped process must be continued to die cleanly of SIGKILL's reaping.
        let _ = stile_testkit::send_signal(self.child.id(), "CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser on the gate page: keeps its cookies, sends the page's CSRF value with every
/// form, and follows redirects itself (so the cookies they set are kept).
pub struct Browser {
    client: reqwest::Client,
    cookies: std::collections::BTreeMap<String, String>,
}

impl Default for Browser {
    fn default() -> Self {
        Browser {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            cookies: Default::default(),
        }
    }
}

impl Browser {
    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all(reqwest::header::SET_COOKIE) {
            if let Some((pair, _)) = value.to_str().unwrap_or_default().split_once(';') {
                if let Some((name, value)) = pair.split_once('=') {
                    self.cookies
                        .insert(name.trim().to_owned(), value.to_owned());
                }
            }
        }
    }

    /// GET, following redirects; returns the final URL and the page.
    pub async fn get(&mut self, url: &str) -> (String, String) {
        let mut url = url.to_owned();
        for _ in 0..5 {
            let response = self
                .client
                .get(&url)
                .header(reqwest::header::COOKIE, self.cookie_header())
                .send()
                .await
                .expect("get");
            self.keep_cookies(&response);
            if let Some(next) = redirect_target(&response) {
                url = next;
                continue;
            }
            assert!(
                response.status().is_success(),
                "{url}: {}",
                response.status()
            );
            return (url, response.text().await.expect("page"));
        }
        panic!("too many redirects from {url}");
    }

    /// Posts a form as the page would (its CSRF value included unless `csrf` is given),
    /// then follows the redirect; returns the final URL and page.
    pub async fn post_form(&mut self, url: &str, form: &[(&str, &str)]) -> (String, String) {
        if !self.cookies.contains_key("stile_csrf") {
            let origin = url.split("/gate").next().unwrap_or(url).to_owned();
            self.get(&format!("{origin}/gate")).await;
        }
        let mut fields: Vec<(String, String)> = form
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        if !fields.iter().any(|(k, _)| k == "csrf") {
            let csrf = self.cookies.get("stile_csrf").cloned().unwrap_or_default();
            fields.push(("csrf".into(), csrf));
        }
        let response = self
            .client
            .post(url)
            .header(reqwest::header::COOKIE, self.cookie_header())
            .form(&fields)
            .send()
            .await
            .expect("post form");
        self.keep_cookies(&response);
        let next = redirect_target(&response)
            .unwrap_or_else(|| panic!("{url} answered {} without a redirect", response.status()));
        self.get(&next).await
    }
}

fn redirect_target(response: &reqwest::Response) -> Option<String> {
    if !response.status().is_redirection() {
        return None;
    }
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)?
        .to_str()
        .ok()?;
    let mut url = response.url().clone();
    url.set_query(None);
    url.join(location).ok().map(|u| u.to_string())
}
