//! `stile-newman`: the merchant redemption console's Postman collection, run with newman
//! against the real system.
//!
//! Starts a private PostgreSQL unless `DATABASE_URL` is set, migrates it and loads
//! `postman/seed.json` through the real `central-server` CLI, starts `central-server serve`
//! on a free port, then runs
//! `newman run postman/merchant-redemption-console.postman_collection.json` with
//! `base_url` pointing at that server, the CLI reporter on the terminal and the JSON report
//! written to `reports/newman/merchant-redemption-console.json`. Exits with newman's status:
//! a failed assertion makes this tool fail.
//!
//! newman is the local install under `.tools/newman` (`scripts/ensure-deps` puts it there
//! when `STILE_NEED_NEWMAN=1`), or `STILE_NEWMAN_BIN`. With `DATABASE_URL` set, give it an
//! empty database: the collection expects the seed data as loaded, unused.
//!
//! Run: `scripts/newman` (builds, installs newman when missing, then runs this binary).
//! Arguments after the options go to newman as they are (e.g. `--bail`).

use anyhow::{bail, Context};
use clap::Parser;
use std::path::PathBuf;
use std::process::Command;
use stile_testkit::ClusterOptions;
use stile_tools::ServerProcess;

const COLLECTION: &str = "postman/merchant-redemption-console.postman_collection.json";
const SEED: &str = "postman/seed.json";
const REPORT: &str = "reports/newman/merchant-redemption-console.json";
const NEWMAN: &str = ".tools/newman/node_modules/.bin/newman";

#[derive(Parser)]
#[command(
    name = "stile-newman",
    about = "Run the merchant redemption console's Postman collection with newman against a freshly seeded central server"
)]
struct Args {
    /// The repository root (where postman/ is); default: the current directory when it has
    /// the collection, else the source tree this tool was built from.
    #[arg(long)]
    root: Option<PathBuf>,

    /// Extra arguments for `newman run`, passed as they are.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    newman_args: Vec<String>,
}

/// Newman's exit code; a run ended by a signal counts as a failure.
async fn run(args: Args) -> anyhow::Result<i32> {
    let root = stile_tools::repository_root(args.root, COLLECTION)?;
    let newman = match std::env::var_os("STILE_NEWMAN_BIN") {
        Some(path) => PathBuf::from(path),
        None => root.join(NEWMAN),
    };
    if !newman.exists() {
        bail!(
            "{} not found: install it with STILE_NEED_NEWMAN=1 bash scripts/ensure-deps (scripts/newman does)",
            newman.display()
        );
    }
    let seed = root.join(SEED);
    let seed = seed
        .to_str()
        .with_context(|| format!("{} is not valid UTF-8", seed.display()))?
        .to_owned();

    let (database_url, cluster) =
        stile_tools::database("stile_newman", &ClusterOptions::default()).await?;
    match &cluster {
        Some(_) => println!("▶ private PostgreSQL started (DATABASE_URL not set)"),
        None => println!("▶ using DATABASE_URL"),
    }
    for args in [vec!["migrate"], vec!["seed", seed.as_str()]] {
        let printed = stile_tools::central_server_command(&database_url, &args)?;
        println!("▶ central-server {}: {printed}", args.join(" "));
    }

    let server = ServerProcess::start(&database_url, &[("RUST_LOG", "warn")]).await?;
    println!("▶ central-server serving on {}", server.base_url);

    let report = root.join(REPORT);
    if let Some(dir) = report.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    println!("▶ newman run {COLLECTION}\n");
    let status = Command::new(&newman)
        .current_dir(&root)
        .arg("run")
        .arg(COLLECTION)
        .arg("--env-var")
        .arg(format!("base_url={}", server.base_url))
        .args(["--reporters", "cli,json", "--reporter-json-export"])
        .arg(&report)
        .args(&args.newman_args)
        .status()
        .with_context(|| format!("running {}", newman.display()))?;
    drop(server);
    drop(cluster);
    let code = status.code().unwrap_or(1);
    if code == 0 {
        println!("▶ every assertion passed; report: {REPORT}");
    } else {
        eprintln!("▶ newman failed ({status}); report: {REPORT}");
    }
    Ok(code)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let code = run(Args::parse()).await?;
    if code != 0 {
        // Everything with a destructor (the server, the cluster) is gone by now.
        std::process::exit(code);
    }
    Ok(())
}
