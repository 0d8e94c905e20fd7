//! `central-server` command line: `serve`, `migrate`, `seed FILE.json`, `keys rotate|retire|list`.
//! Settings are resolved before the runtime starts; a bad setting exits 64.

use anyhow::Context;
use central_server::cli::{Cli, Command, KeysAction};
use central_server::config::{LogFormat, Settings, SettingsLayer};
use central_server::{db, keys, seed};
use clap::Parser;
use std::process::ExitCode;

/// Exit codes (sysexits.h).
const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() { EX_USAGE } else { 0 };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    if matches!(
        cli.command,
        Command::Keys {
            action: KeysAction::GenerateKek
        }
    ) {
        println!("{}", central_server::kek::Kek::generate_hex());
        return ExitCode::SUCCESS;
    }
    if matches!(cli.command, Command::Openapi) {
        let document = central_server::openapi::document();
        return match serde_json::to_string_pretty(&document) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("central-server: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let settings = match load_settings(&cli) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("central-server: bad setting: {error}");
            return ExitCode::from(EX_USAGE);
        }
    };
    init_logging(settings.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("central-server: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, settings)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("central-server: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_settings(cli: &Cli) -> Result<Settings, central_server::config::ConfigError> {
    let mut layer = SettingsLayer::default();
    if let Some(path) = &cli.config {
        layer = layer.merged(SettingsLayer::from_toml_file(path)?);
    }
    layer = layer.merged(SettingsLayer::from_env(std::env::vars())?);
    let flags = SettingsLayer {
        database_url: cli.database_url.clone(),
        listen: match &cli.command {
            Command::Serve { listen } => listen.clone(),
            _ => None,
        },
        ..SettingsLayer::default()
    };
    layer.merged(flags).resolve()
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { .. } => {
            let listener = tokio::net::TcpListener::bind(settings.listen)
                .await
                .with_context(|| format!("cannot listen on {}", settings.listen))?;
            let ops = tokio::net::TcpListener::bind(settings.ops_listen)
                .await
                .with_context(|| {
                    format!("cannot listen on {} (ops_listen)", settings.ops_listen)
                })?;
            central_server::serve(
                settings,
                central_server::Listeners {
                    public: listener,
                    ops: Some(ops),
                },
                shutdown_signal(),
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let pool = db::connect(&settings.database_url, 2)
                .await
                .context("connecting")?;
            db::migrate(&pool).await.context("migrating")?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Seed { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let parsed = match seed::parse(&text) {
                Ok(parsed) => parsed,
                Err(error) => {
                    eprintln!(
                        "central-server: seed file {} refused, nothing loaded: {error}",
                        file.display()
                    );
                    return Ok(ExitCode::from(EX_DATAERR));
                }
            };
            let pool = db::connect(&settings.database_url, 2)
                .await
                .context("connecting")?;
            db::migrate(&pool).await.context("migrating")?;
            let encryption = key_encryption(&settings)?;
            keys::ensure_active_key(&pool, &encryption)
                .await
                .context("creating a signing key")?;
            match seed::apply(&pool, &parsed).await {
                Ok(summary) => {
                    println!("seed {} loaded; {summary}", file.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(seed::SeedError::Invalid { path, message }) => {
                    eprintln!(
                        "central-server: seed file {} refused, nothing loaded: {path}: {message}",
                        file.display()
                    );
                    Ok(ExitCode::from(EX_DATAERR))
                }
                Err(error) => Err(error).context("loading the seed file"),
            }
        }
        Command::Retention { days, batch } => {
            let policy = match central_server::retention::RetentionPolicy::new(
                days.unwrap_or(settings.retention_days),
                batch,
            ) {
                Ok(policy) => policy,
                Err(error) => {
                    eprintln!("central-server: {error}");
                    return Ok(ExitCode::from(EX_USAGE));
                }
            };
            let pool = db::connect(&settings.database_url, 2)
                .await
                .context("connecting")?;
            db::migrate(&pool).await.context("migrating")?;
            let mut batches = 0u64;
            let total = central_server::retention::purge_all(&pool, &policy, chrono::Utc::now(), |report| {
                batches += 1;
                println!(
                    "batch {batches}: deleted {} log, {} audit, {} scan request, {} notification rows",
                    report.merchant_redemptions, report.scan_audit, report.scan_requests, report.notifications
                );
            })
            .await
            .context("purging")?;
            println!(
                "retention done: {} rows older than {} days deleted",
                total.total(),
                policy.days()
            );
            Ok(ExitCode::SUCCESS)
        }
        // Answered before the settings are read.
        Command::Openapi => Ok(ExitCode::SUCCESS),
        // Answered before the settings are read.
        Command::Keys {
            action: KeysAction::GenerateKek,
        } => Ok(ExitCode::SUCCESS),
        Command::Keys { action } => {
            let encryption = key_encryption(&settings)?;
            let pool = db::connect(&settings.database_url, 2)
                .await
                .context("connecting")?;
            db::migrate(&pool).await.context("migrating")?;
            match action {
                KeysAction::Rotate => {
                    let kid = keys::rotate(&pool, &encryption).await?;
                    println!(
                        "new active signing key: {kid} (running servers publish it within {} s)",
                        settings.key_refresh_secs
                    );
                }
                KeysAction::Retire { kid } => {
                    keys::retire(&pool, &kid).await?;
                    println!("key {kid} retired: tokens it signed no longer verify");
                }
                KeysAction::Reseal => {
                    let Some(kek) = &encryption.current else {
                        anyhow::bail!("no key-encryption key configured (key_encryption_key_file)");
                    };
                    let changed = keys::reseal(&pool, &encryption).await?;
                    println!(
                        "{changed} signing keys sealed with key-encryption key {}",
                        kek.id()
                    );
                }
                KeysAction::GenerateKek => {}
                KeysAction::List => {
                    for key in keys::list(&pool).await? {
                        let retired = key
                            .retired_at
                            .map(|at| format!(" retired {}", at.to_rfc3339()))
                            .unwrap_or_default();
                        println!(
                            "{}\t{}\tcreated {}{retired}",
                            key.kid,
                            key.state,
                            key.created_at.to_rfc3339()
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn key_encryption(settings: &Settings) -> anyhow::Result<central_server::kek::KeyEncryption> {
    central_server::kek::KeyEncryption::load(
        settings.key_encryption_key_file.as_deref(),
        settings.previous_key_encryption_key_file.as_deref(),
    )
    .context("reading the key-encryption key")
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
