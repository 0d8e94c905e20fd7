//! `stile-schemathesis`: Schemathesis over the central server's served OpenAPI document,
//! with every check, against the real system.
//!
//! Starts a private PostgreSQL unless `DATABASE_URL` is set, migrates it and loads
//! `postman/seed.json` through the real `central-server` CLI, starts `central-server serve`
//! on a free port, logs in an operator, then runs
//! `st run http://…/openapi.json --checks all` with `schemathesis/schemathesis.toml`, which
//! gives each security scheme its credential (operator JWT, device credential, channel
//! key). The operations listener (metrics, admin API) is not in the public document.
//! Exits with Schemathesis's status: any failure fails this tool.
//!
//! Schemathesis is the pinned version in the venv `.tools/schemathesis` (`scripts/ensure-deps`
//! creates it when `STILE_NEED_SCHEMATHESIS=1`), or `STILE_SCHEMATHESIS_BIN`.
//!
//! Run: `scripts/schemathesis` (builds, installs when missing, then runs this binary).
//! `--max-examples N` (default 25) bounds the cases per operation; arguments after `--` go
//! to `st run` as they are.

use anyhow::{bail, Context};
use clap::Parser;
use std::path::PathBuf;
use std::process::Command;
use stile_testkit::ClusterOptions;
use stile_tools::ServerProcess;

const CONFIG: &str = "schemathesis/schemathesis.toml";
const SEED: &str = "postman/seed.json";
const REPORT_DIR: &str = "reports/schemathesis";
const SCHEMATHESIS: &str = ".tools/schemathesis/bin/st";

#[derive(Parser)]
#[command(
    name = "stile-schemathesis",
    about = "Run Schemathesis with every check against a freshly seeded central server"
)]
struct Args {
    /// The repository root (where schemathesis/ is); default: the current directory when it
    /// has the config, else the source tree this tool was built from.
    #[arg(long)]
    root: Option<PathBuf>,

    /// Test cases per operation and phase.
    #[arg(long, default_value_t = 25)]
    max_examples: u32,

    /// Extra arguments for `st run`, passed as they are.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    st_args: Vec<String>,
}

/// An operator JWT from the real login.
async fn operator_token(base_url: &str) -> anyhow::Result<String> {
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("{base_url}/operators/login"))
        .json(&serde_json::json!({"username": "op-east", "password": "correct horse"}))
        .send()
        .await
        .context("POST /operators/login")?
        .error_for_status()
        .context("logging in op-east")?
        .json()
        .await
        .context("reading the login answer")?;
    answer["token"]
        .as_str()
        .map(str::to_owned)
        .context("the login answer has no token")
}

async fn run(args: Args) -> anyhow::Result<i32> {
    let root = stile_tools::repository_root(args.root, CONFIG)?;
    let st = match std::env::var_os("STILE_SCHEMATHESIS_BIN") {
        Some(path) => PathBuf::from(path),
        None => root.join(SCHEMATHESIS),
    };
    if !st.exists() {
        bail!(
            "{} not found: install it with STILE_NEED_SCHEMATHESIS=1 bash scripts/ensure-deps (scripts/schemathesis does)",
            st.display()
        );
    }
    let seed = root.join(SEED);
    let seed = seed
        .to_str()
        .with_context(|| format!("{} is not valid UTF-8", seed.display()))?
        .to_owned();
    let (database_url, cluster) =
        stile_tools::database("stile_schemathesis", &ClusterOptions::default()).await?;
    for args in [vec!["migrate"], vec!["seed", seed.as_str()]] {
        let printed = stile_tools::central_server_command(&database_url, &args)?;
        println!("▶ central-server {}: {printed}", args.join(" "));
    }
    let server = ServerProcess::start(
        &database_url,
        &[
            // Schemathesis makes the server refuse thousands of requests: keep its log to
            // what is wrong with the server, not with the requests.
            ("RUST_LOG", "error"),
            // Schemathesis logs in with made-up names many times from one address.
            ("STILE_LOGIN_MAX_FAILURES_PER_ADDRESS", "1000000"),
        ],
    )
    .await?;
    println!("▶ central-server serving on {}", server.base_url);
    let operator = operator_token(&server.base_url).await?;
    let reports = root.join(REPORT_DIR);
    std::fs::create_dir_all(&reports).with_context(|| format!("creating {}", reports.display()))?;
    println!(
        "▶ st run {}/openapi.json --checks all (max {} examples per operation)\n",
        server.base_url, args.max_examples
    );
    let status = Command::new(&st)
        .current_dir(&root)
        .env("STILE_ST_OPERATOR_JWT", &operator)
        .env("STILE_ST_DEVICE_CREDENTIAL", "dev-east-1:dev-secret-1")
        .env("STILE_ST_CHANNEL_KEY", "ch-ota-secret")
        .env("NO_COLOR", "1")
        .arg("--config-file")
        .arg(root.join(CONFIG))
        .arg("run")
        .arg(format!("{}/openapi.json", server.base_url))
        .args(["--checks", "all", "--workers", "2", "--seed", "1"])
        .args(["--max-examples", &args.max_examples.to_string()])
        .args(["--generation-database", "none", "--report", "junit"])
        .arg("--report-dir")
        .arg(&reports)
        .args(&args.st_args)
        .status()
        .with_context(|| format!("running {}", st.display()))?;
    drop(server);
    drop(cluster);
    let code = status.code().unwrap_or(1);
    if code == 0 {
        println!("▶ Schemathesis found nothing; report: {REPORT_DIR}");
    } else {
        eprintln!("▶ Schemathesis failed ({status}); report: {REPORT_DIR}");
    }
    Ok(code)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let code = run(Args::parse()).await?;
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}
