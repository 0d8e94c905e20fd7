//! `stile-demo`: the whole system on this machine, in one command.
//!
//! Starts a private PostgreSQL unless `DATABASE_URL` is set, migrates and seeds it with
//! `examples/seed.json` through the real `central-server` CLI, starts `central-server serve`,
//! then plays a few real scans at the gate over HTTP and prints each decision with its
//! zh-CN message. Without `--smoke` it then keeps the server running until Ctrl-C.
//!
//! Run: `scripts/demo` (builds, then runs this binary).

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};
use std::process::Command;
use stile_testkit::ClusterOptions;
use stile_tools::{central_server_binary, ServerProcess};

const SEED: &str = include_str!("../../../examples/seed.json");

#[derive(Parser)]
#[command(name = "stile-demo", about = "Run Stile locally and show real scans")]
struct Args {
    /// Stop after the scans instead of serving until Ctrl-C.
    #[arg(long)]
    smoke: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (database_url, cluster) =
        stile_tools::database("stile_demo", &ClusterOptions::default()).await?;
    match &cluster {
        Some(_) => println!("▶ private PostgreSQL started (DATABASE_URL not set)"),
        None => println!("▶ using DATABASE_URL"),
    }

    let seed_file =
        std::env::temp_dir().join(format!("stile-demo-seed-{}.json", std::process::id()));
    std::fs::write(&seed_file, SEED).context("writing the demo seed file")?;
    let binary = central_server_binary()?;
    for step in [
        vec!["migrate".to_owned()],
        vec!["seed".to_owned(), seed_file.display().to_string()],
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
    let _ = std::fs::remove_file(&seed_file);

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

    println!(
        "\n▶ API:     {}  (OpenAPI: {}/openapi.json, metrics: {}/metrics)",
        server.base_url, server.base_url, server.base_url
    );
    println!("▶ database: {database_url}");
    if args.smoke {
        println!("▶ smoke run finished");
        return Ok(());
    }
    println!("▶ serving until Ctrl-C");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    println!("\n▶ stopping");
    drop(server);
    drop(cluster);
    Ok(())
}
