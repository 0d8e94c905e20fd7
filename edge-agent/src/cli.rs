//! The command line of `edge-agent` (`run`, `check-config`, `peer-key`, `status`), in the
//! library so that the man page and the shell completions the package ships are generated
//! from the very definitions the binary parses.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "edge-agent", version, about = "Stile gate agent")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the gate daemon.
    Run {
        #[arg(long, default_value = "/etc/stile/edge-agent.toml")]
        config: PathBuf,
    },
    /// Check the settings and print them (secrets masked).
    CheckConfig {
        #[arg(long, default_value = "/etc/stile/edge-agent.toml")]
        config: PathBuf,
    },
    /// Print this gate's peer public key (made on first use), for the other gates' static
    /// peer lists at a site without a central.
    PeerKey {
        #[arg(long, default_value = "/etc/stile/edge-agent.toml")]
        config: PathBuf,
    },
    /// Print a running agent's status.
    Status {
        /// The agent's listener.
        #[arg(long, default_value = "http://127.0.0.1:9090")]
        url: String,
    },
}
