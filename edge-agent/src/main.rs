//! `edge-agent` command line: `run --config FILE`, `check-config --config FILE`,
//! `status [--url URL]`, `peer-key --config FILE`. Settings are read before the runtime
//! starts; a bad setting exits 64.

use anyhow::Context;
use clap::Parser;
use edge_agent::cli::{Cli, Command};
use edge_agent::config::AgentConfig;
use std::path::PathBuf;
use std::process::ExitCode;

const EX_USAGE: u8 = 64;

fn load(path: &PathBuf) -> Result<AgentConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    AgentConfig::parse(&text, std::env::vars())
        .map_err(|error| format!("{}: {error}", path.display()))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() { EX_USAGE } else { 0 };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::CheckConfig { config } => match load(&config) {
            Ok(config) => {
                print!("{}", config.describe());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("edge-agent: bad setting: {error}");
                ExitCode::from(EX_USAGE)
            }
        },
        Command::PeerKey { config } => match load(&config) {
            Ok(config) => match edge_agent::peers::identity::load_or_create(&config.state_dir) {
                Ok(key) => {
                    println!("{}", stile_shared::peer::PeerKey::of(&key).encode());
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("edge-agent: {error}");
                    ExitCode::FAILURE
                }
            },
            Err(error) => {
                eprintln!("edge-agent: bad setting: {error}");
                ExitCode::from(EX_USAGE)
            }
        },
        Command::Run { config } => {
            let config = match load(&config) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("edge-agent: bad setting: {error}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            init_logging();
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("edge-agent: cannot start the runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(edge_agent::daemon::run(config, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("edge-agent: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status { url } => match status(&url) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("edge-agent: {error:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn status(url: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report: serde_json::Value = runtime.block_on(async {
        reqwest::get(format!("{}/api/status", url.trim_end_matches('/')))
            .await
            .context("the agent does not answer")?
            .json()
            .await
            .context("unreadable status")
    })?;
    let get = |path: &str| {
        report
            .pointer(path)
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    };
    println!(
        "device        {} at {}",
        get("/device_id"),
        get("/venue_code")
    );
    println!(
        "function      {} direction={}",
        get("/function_code"),
        get("/direction")
    );
    println!(
        "venue         {} inside={} capacity={} figure_age_s={}",
        get("/venue/venue_code"),
        get("/venue/inside"),
        get("/venue/capacity"),
        get("/venue/figure_age_secs")
    );
    println!(
        "uplink        {} rtt_ms={} clock_offset_s={}",
        get("/uplink/state"),
        get("/uplink/rtt_ms"),
        get("/uplink/clock_offset_secs")
    );
    println!(
        "camera        {} problem={}",
        get("/camera/source"),
        get("/camera/problem")
    );
    println!(
        "frames        seen={} decoded={} rate={}",
        get("/camera/frames_seen"),
        get("/camera/frames_decoded"),
        get("/camera/decode_rate")
    );
    println!(
        "sync          last={} age_s={} tickets={}",
        get("/last_sync_at"),
        get("/last_sync_age_secs"),
        get("/synced_tickets")
    );
    println!(
        "outbox        depth={} oldest_s={} conflicts={}",
        get("/outbox/depth"),
        get("/oldest_queued_age_secs"),
        get("/outbox/conflicts")
    );
    println!(
        "keys          {} (age {} s)",
        get("/keys/kids"),
        get("/keys/age_secs")
    );
    Ok(())
}

fn init_logging() {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Under systemd, structured fields go to the journal; elsewhere, readable lines.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(filter)
                .with(journald)
                .init();
            return;
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = terminate => {},
    }
}
