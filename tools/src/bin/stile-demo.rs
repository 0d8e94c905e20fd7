//! `stile-demo`: the whole system on this machine, in one command.
//!
//! Starts a private PostgreSQL unless `DATABASE_URL` is set, migrates and seeds it with
//! `examples/seed.json` (and a second gate with a few more tickets) through the real
//! `central-server` CLI, starts `central-server serve`, plays a few real scans over HTTP,
//! then starts two gate agents (`edge-agent run`) fed by the directory source: the demo
//! renders real QR images of freshly issued tokens into each gate's spool directory and
//! prints each decision as the gate takes it, then prints the status page URLs. Without
//! `--smoke` it keeps everything running until Ctrl-C.
//!
//! `--ha` runs the central on a replicated PostgreSQL instead (pg_auto_failover: a monitor,
//! a primary and a synchronous standby on loopback, as the failover test runs it), gives the
//! central the multi-host URL, and prints each node's role, how to kill the primary, and how
//! to watch the roles change.
//!
//! Run: `scripts/demo` (builds, then runs this binary).

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};
use std::process::Command;
use stile_testkit::ha::HaCluster;
use stile_testkit::ClusterOptions;
use stile_tools::{central_server_binary, ServerProcess};

const SEED: &str = include_str!("../../../examples/seed.json");

/// A second gate and more tickets for the agents' part of the demo.
const DEMO_EXTRA: &str = r#"{
  "merchants": [{"code": "M001", "name": "示例乐园", "timezone": "Asia/Shanghai",
    "locations": [{"venue_code": "GATE-EAST", "name": "东门"}, {"venue_code": "GATE-WEST", "name": "西门"}],
    "operators": [{"username": "op-east", "password": "correct horse", "display_name": "王芳"}],
    "devices": [{"device_id": "dev-east-1", "venue_code": "GATE-EAST", "secret": "dev-secret-1"},
                {"device_id": "dev-west-1", "venue_code": "GATE-WEST", "secret": "dev-secret-2"}]}],
  "orders": [{"order_id": "ORD-2001", "merchant": "M001", "passengers": [
    {"name": "李雷", "tickets": [{"ticket_code": "TK-2001-1", "channel": "OTA", "status": "ACTIVATED",
      "entitlements": [{"function_code": "ENTRY", "name": "入园", "total_uses": 1}]}]},
    {"name": "韩梅梅", "tickets": [{"ticket_code": "TK-2001-2", "channel": "MINIAPP", "status": "ACTIVATED",
      "entitlements": [{"function_code": "ENTRY", "name": "入园", "total_uses": 1}]}]},
    {"name": "王小明", "tickets": [{"ticket_code": "TK-2001-3", "channel": "OTA", "status": "PRE_GENERATED",
      "entitlements": [{"function_code": "ENTRY", "name": "入园", "total_uses": 1}]}]}]}]
}"#;

#[derive(Parser)]
#[command(name = "stile-demo", about = "Run Stile locally and show real scans")]
struct Args {
    /// Stop after the scans instead of serving until Ctrl-C.
    #[arg(long)]
    smoke: bool,
    /// Run on a replicated PostgreSQL (a monitor and two nodes, pg_auto_failover) started
    /// for the demo; DATABASE_URL is not used.
    #[arg(long)]
    ha: bool,
}

/// Each node's role, as the monitor and the node itself say.
async fn print_roles(ha: &HaCluster) -> anyhow::Result<()> {
    let writable = ha.writable_node().await;
    for (index, state) in ha.states().await?.iter().enumerate() {
        let role = if writable == Some(index) {
            "primary (accepts writes)"
        } else {
            "standby (synchronous)"
        };
        println!(
            "▶   {} 127.0.0.1:{}  {role}  [monitor: {} → {}]",
            state.name, state.port, state.reported, state.goal
        );
    }
    println!("▶   monitor 127.0.0.1:{}", ha.monitor_port);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (database_url, cluster, ha) = if args.ha {
        println!(
            "▶ starting a replicated PostgreSQL: a pg_auto_failover monitor, a primary and a \
             synchronous standby (about 15 s)"
        );
        let ha = HaCluster::start().await?;
        print_roles(&ha).await?;
        (ha.url(), None, Some(ha))
    } else {
        let (url, cluster) =
            stile_tools::database("stile_demo", &ClusterOptions::default()).await?;
        match &cluster {
            Some(_) => println!("▶ private PostgreSQL started (DATABASE_URL not set)"),
            None => println!("▶ using DATABASE_URL"),
        }
        (url, cluster, None)
    };

    let work = std::env::temp_dir().join(format!("stile-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work).context("creating the demo directory")?;
    let seed_file = work.join("seed.json");
    std::fs::write(&seed_file, SEED).context("writing the demo seed file")?;
    let extra_file = work.join("demo-gates.json");
    std::fs::write(&extra_file, DEMO_EXTRA).context("writing the demo seed file")?;
    let binary = central_server_binary()?;
    for step in [
        vec!["migrate".to_owned()],
        vec!["seed".to_owned(), seed_file.display().to_string()],
        vec!["seed".to_owned(), extra_file.display().to_string()],
    ] {
        let output = Command::new(&binary)
            .args(&step)
            .env("DATABASE_URL", &database_url)
            .env("RUST_LOG", "warn")
            .output()
            .with_context(|| format!("running central-server {}", step[0]))?;
        if !output.status.success() {
            bail!(
                "central-server {} failed: {}",
                step[0],
                String::from_utf8_lossy(&output.stderr)
            );
        }
        println!(
            "▶ central-server {}: {}",
            step.join(" "),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }

    let server = ServerProcess::start(&database_url, &[("RUST_LOG", "warn")]).await?;
    println!("▶ central-server serving on {}", server.base_url);
    let client = reqwest::Client::new();

    let login: Value = client
        .post(server.url("/operators/login"))
        .json(&json!({"username": "op-east", "password": "correct horse"}))
        .send()
        .await?
        .json()
        .await?;
    let operator = login["token"]
        .as_str()
        .context("login answered no token")?
        .to_owned();
    println!(
        "▶ 操作员 op-east 登录成功 (merchant {})",
        login["operator"]["merchant_code"]
    );

    let issue = |client: reqwest::Client, url: String| async move {
        let issued: Value = client
            .post(url)
            .bearer_auth("ch-miniapp-secret")
            .send()
            .await?
            .json()
            .await?;
        let token = issued["qr_token"]
            .as_str()
            .context("no qr_token")?
            .to_owned();
        anyhow::Ok(token)
    };
    let qr_url = server.url("/tickets/TK-1001-1/qr");
    let first = issue(client.clone(), qr_url.clone()).await?;
    println!("▶ 小程序为 TK-1001-1 生成二维码 ({} 字符)\n", first.len());

    let scan = |token: String, function: &'static str, label: &'static str| {
        let (client, url, operator) = (client.clone(), server.url("/venue/scan"), operator.clone());
        async move {
            let response = client
                .post(url)
                .bearer_auth(operator)
                .json(&json!({"qr_token": token, "function_code": function, "venue_code": "GATE-EAST",
                              "device_id": "dev-east-1", "scan_id": uuid::Uuid::new_v4().to_string()}))
                .send()
                .await?;
            let status = response.status().as_u16();
            let body: Value = response.json().await?;
            let entitlements: Vec<String> = body["ticket"]["entitlements"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .map(|e| {
                            format!(
                                "{} {}/{}",
                                e["function_code"].as_str().unwrap_or("?"),
                                e["remaining_uses"],
                                e["total_uses"]
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mark = if status == 200 { "🟢" } else { "🔴" };
            println!(
                "  {mark} {label:<28} {function:<6} → {status} {:<18} {}{}",
                body["code"].as_str().unwrap_or("?"),
                body["message"].as_str().unwrap_or("?"),
                if entitlements.is_empty() {
                    String::new()
                } else {
                    format!(
                        "   [{}; {}]",
                        body["ticket"]["status"].as_str().unwrap_or("?"),
                        entitlements.join(", ")
                    )
                }
            );
            anyhow::Ok(())
        }
    };
    scan(first.clone(), "ENTRY", "入园").await?;
    scan(first.clone(), "ENTRY", "同一二维码再次入园").await?;
    scan(first.clone(), "SHOW", "核销不包含的权益").await?;
    scan(first.clone(), "MEAL", "同一二维码核销午餐").await?;
    let second = issue(client.clone(), qr_url).await?;
    scan(first, "MEAL", "旧二维码（已重新生成）").await?;
    scan(second.clone(), "MEAL", "新二维码核销第二次午餐").await?;
    scan(second, "MEAL", "新二维码再次核销午餐").await?;
    scan("not-a-token".into(), "ENTRY", "伪造的二维码").await?;

    let gates = run_gates(&server, &work).await?;

    println!(
        "\n▶ API:     {}  (OpenAPI: {}/openapi.json, metrics: {}/metrics)",
        server.base_url, server.base_url, server.base_url
    );
    for gate in &gates {
        println!(
            "▶ gate {}: status page {}/  gate display {}/gate  metrics {}/metrics",
            gate.device, gate.base, gate.base, gate.base
        );
    }
    println!("▶ database: {database_url}");
    if let Some(ha) = &ha {
        println!("▶ database roles now:");
        print_roles(ha).await?;
        if let Some(primary) = ha.writable_node().await {
            println!(
                "▶ fail over by killing the primary's machine (its keeper and PostgreSQL): \
                 kill -9 -- -{}\n▶ the standby takes over within seconds and the central \
                 follows it (its log says \"the primary moved\"); the roles: \
                 psql '{}' -c 'SELECT nodename, reportedstate FROM pgautofailover.node'",
                ha.process_group(primary)?,
                ha.monitor_url()
            );
        }
    }
    if args.smoke {
        println!("▶ smoke run finished");
        drop(gates);
        let _ = std::fs::remove_dir_all(&work);
        return Ok(());
    }
    println!("▶ serving until Ctrl-C");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    println!("\n▶ stopping");
    drop(gates);
    drop(server);
    drop(cluster);
    drop(ha);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// A running gate agent of the demo.
struct DemoGate {
    device: &'static str,
    base: String,
    spool: std::path::PathBuf,
    child: std::process::Child,
}

impl Drop for DemoGate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts two gates fed by spool directories and plays QR images through them.
async fn run_gates(
    server: &ServerProcess,
    work: &std::path::Path,
) -> anyhow::Result<Vec<DemoGate>> {
    let client = reqwest::Client::new();
    let mut gates = Vec::new();
    for (device, secret, venue) in [
        ("dev-east-1", "dev-secret-1", "GATE-EAST"),
        ("dev-west-1", "dev-secret-2", "GATE-WEST"),
    ] {
        let dir = work.join(device);
        let spool = dir.join("spool");
        std::fs::create_dir_all(&spool)?;
        let port = stile_tools::free_port()?;
        // The two gates are venue peers: what one lets in, the other refuses, central or not.
        let peer_port = stile_tools::free_port()?;
        let config = format!(
            "device_id = \"{device}\"\ndevice_secret = \"{secret}\"\ncentral_url = \"{}\"\nvenue_code = \"{venue}\"\n\
             state_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\nsync_interval_secs = 1\ndebounce_secs = 1\n\
             [source]\nkind = \"directory\"\npath = \"{}\"\nmode = \"watch\"\n\
             [peers]\nlisten = \"127.0.0.1:{peer_port}\"\nadvertise = \"127.0.0.1:{peer_port}\"\n\
             [operator]\nusername = \"op-east\"\npassword = \"correct horse\"\n",
            server.base_url,
            dir.join("state").display(),
            spool.display()
        );
        let config_path = dir.join("agent.toml");
        std::fs::write(&config_path, config)?;
        let child = Command::new(stile_tools::sibling_binary(
            "edge-agent",
            "STILE_EDGE_AGENT_BIN",
        )?)
        .args(["run", "--config", &config_path.display().to_string()])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting edge-agent")?;
        gates.push(DemoGate {
            device,
            base: format!("http://127.0.0.1:{port}"),
            spool,
            child,
        });
    }
    for gate in &gates {
        wait_ready(&client, &gate.base).await?;
        println!("▶ gate {} running, synced with the central", gate.device);
    }
    println!();
    let issue = |ticket: &'static str, key: &'static str| {
        let (client, url) = (client.clone(), server.url(&format!("/tickets/{ticket}/qr")));
        async move {
            let issued: Value = client
                .post(url)
                .bearer_auth(key)
                .send()
                .await?
                .json()
                .await?;
            anyhow::Ok(
                issued["qr_token"]
                    .as_str()
                    .context("no qr_token")?
                    .to_owned(),
            )
        }
    };
    let first = issue("TK-2001-1", "ch-ota-secret").await?;
    let second = issue("TK-2001-2", "ch-miniapp-secret").await?;
    let pre = issue("TK-2001-3", "ch-ota-secret").await?;
    let plays: Vec<(usize, &str, String)> = vec![
        (0, "东门扫码 TK-2001-1", first.clone()),
        (1, "西门扫同一张码", first),
        (1, "西门扫码 TK-2001-2", second),
        (0, "东门扫未激活的票", pre),
    ];
    for (number, (gate_index, label, token)) in plays.into_iter().enumerate() {
        let gate = &gates[gate_index];
        let before = decisions_seen(&client, &gate.base).await?;
        let frame = stile_testkit::corpus::render(
            &token,
            &stile_testkit::corpus::FrameSpec::clean(640, 480, 4),
            number as u64,
        )
        .context("rendering a QR image")?;
        let name = format!("scan-{number:03}.png");
        let temporary = gate.spool.join(format!(".{name}.tmp"));
        stile_testkit::corpus::save_png(&frame, &temporary)?;
        std::fs::rename(&temporary, gate.spool.join(&name))?;
        let decision = wait_decision(&client, &gate.base, before).await?;
        let green = decision["code"] == "SUCCESS";
        println!(
            "  {} {:<8} {label:<20} → {:<18} {}  ({}, {:.1} ms)",
            if green { "🟢" } else { "🔴" },
            gate.device,
            decision["code"].as_str().unwrap_or("?"),
            decision["message"].as_str().unwrap_or("?"),
            decision["mode"].as_str().unwrap_or("?"),
            decision["latency_ms"].as_f64().unwrap_or(0.0),
        );
    }
    Ok(gates)
}

async fn wait_ready(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        if let Ok(response) = client.get(format!("{base}/api/status")).send().await {
            if let Ok(status) = response.json::<Value>().await {
                if !status["last_sync_at"].is_null() && !status["operator"].is_null() {
                    return Ok(());
                }
            }
        }
        if started.elapsed() > std::time::Duration::from_secs(60) {
            bail!("the gate at {base} did not sync within 60 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The newest decision's scan id at a gate (decisions are taken one at a time).
async fn decisions_seen(client: &reqwest::Client, base: &str) -> anyhow::Result<Option<String>> {
    let status: Value = client
        .get(format!("{base}/api/status"))
        .send()
        .await?
        .json()
        .await?;
    Ok(newest(&status))
}

fn newest(status: &Value) -> Option<String> {
    status["last_decisions"]
        .get(0)
        .map(|d| format!("{}{}", d["decided_at"], d["code"]))
}

/// Waits until the gate shows a decision newer than `before`.
async fn wait_decision(
    client: &reqwest::Client,
    base: &str,
    before: Option<String>,
) -> anyhow::Result<Value> {
    let started = std::time::Instant::now();
    loop {
        let status: Value = client
            .get(format!("{base}/api/status"))
            .send()
            .await?
            .json()
            .await?;
        if newest(&status).is_some() && newest(&status) != before {
            return Ok(status["last_decisions"][0].clone());
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            bail!("the gate at {base} decided nothing within 30 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
