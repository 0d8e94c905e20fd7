//! Writes the man pages and shell completions the Debian packages ship, from the clap
//! definitions the binaries parse (`central_server::cli`, `edge_agent::cli`), so they cannot
//! drift from the real command lines:
//!
//! ```text
//! stile-package-docs OUT
//!   OUT/man/central-server.1, OUT/man/central-server-serve.1, ...   (one page per command)
//!   OUT/completions/central-server.bash, _central-server, central-server.fish, ...
//! ```

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;
use std::path::{Path, PathBuf};

fn main() -> anyhow::Result<()> {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .context("usage: stile-package-docs OUT_DIR")?;
    for command in [
        central_server::cli::Cli::command(),
        edge_agent::cli::Cli::command(),
    ] {
        write_pages(&out.join("man"), command.clone())?;
        write_completions(&out.join("completions"), command)?;
    }
    Ok(())
}

/// The command's page and one per subcommand (`central-server-keys-rotate.1`), as
/// `man central-server-keys` expects them.
fn write_pages(dir: &Path, command: clap::Command) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let command = command.version(env!("CARGO_PKG_VERSION"));
    let mut pending = vec![(command.get_name().to_owned(), command)];
    while let Some((name, command)) = pending.pop() {
        let mut page = Vec::new();
        clap_mangen::Man::new(command.clone())
            .title(name.to_uppercase())
            .render(&mut page)
            .with_context(|| format!("rendering the page of {name}"))?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
        for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
            pending.push((format!("{name}-{}", sub.get_name()), sub.clone()));
        }
    }
    Ok(())
}

fn write_completions(dir: &Path, mut command: clap::Command) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = command.get_name().to_owned();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut command, &name, dir)
            .with_context(|| format!("writing the {shell} completion of {name}"))?;
    }
    Ok(())
}
