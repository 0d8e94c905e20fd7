//! `edge-agent`: the gate daemon. This is the skeleton the foundation lands; the camera,
//! decoder cascade, SQLite store and sync loops are built in the edge-agent issue.

use std::process::ExitCode;

fn main() -> ExitCode {
    let codes: Vec<&str> = stile_shared::DecisionCode::ALL
        .iter()
        .map(|code| code.as_str())
        .collect();
    eprintln!(
        "edge-agent {}: not implemented yet; it will decide scans with the shared decision codes {}",
        env!("CARGO_PKG_VERSION"),
        codes.join(", ")
    );
    ExitCode::from(69)
}
