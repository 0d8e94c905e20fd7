//! The command line of `central-server` (`serve`, `migrate`, `seed`, `retention`, `openapi`,
//! `keys ...`), in the library so that the man page and the shell completions the packages
//! ship are generated from the very definitions the binary parses.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "central-server", version, about = "Stile central server")]
pub struct Cli {
    /// TOML settings file (keys as in the README; environment and flags override it).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// PostgreSQL URL (overrides DATABASE_URL).
    #[arg(long, global = true)]
    pub database_url: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Apply migrations, then serve the API.
    Serve {
        /// Address to listen on (overrides STILE_LISTEN; default 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Apply the embedded migrations and exit.
    Migrate,
    /// Load a seed file (idempotent).
    Seed { file: PathBuf },
    /// Delete redemption log, audit and idempotency rows older than the retention period,
    /// in bounded batches (never the redemption events that keep a QR from being redeemed
    /// twice).
    Retention {
        /// Keep this many days (at least 365; default: the `retention_days` setting).
        #[arg(long)]
        days: Option<i64>,
        /// Rows per table per batch.
        #[arg(long, default_value_t = 5000)]
        batch: i64,
    },
    /// Print the OpenAPI document (as served on `/openapi.json`) and exit; needs no
    /// database.
    Openapi,
    /// Manage QR signing keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Subcommand)]
pub enum KeysAction {
    /// Create a new active signing key; the previous one stays published.
    Rotate,
    /// Stop publishing a key: tokens it signed stop verifying.
    Retire { kid: String },
    /// List every key with its state.
    List,
    /// Seal every signing key with the current key-encryption key (a server does it at start
    /// too): after turning encryption on, or rotating the KEK.
    Reseal,
    /// Print a fresh key-encryption key (64 hex digits) for `key_encryption_key_file`.
    GenerateKek,
}
