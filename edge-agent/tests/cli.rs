//! The agent's command line: `check-config` resolves settings with secrets masked or exits
//! 64 naming the bad setting; `run` without a reachable listener address fails clearly; a
//! running agent stops cleanly on SIGTERM and `status` reads it.

use std::process::Command;
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_edge-agent");

fn config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "device_id = \"dev-1\"\ndevice_secret = \"very-secret-value\"\ncentral_url = \"http://127.0.0.1:9\"\n\
             venue_code = \"GATE\"\nstate_dir = \"{}\"\n{extra}",
            dir.join("state").display()
        ),
    )
    .expect("write config");
    path
}

#[test]
fn check_config_prints_masked_settings_or_names_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = config(dir.path(), "");
    let output = Command::new(BINARY)
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .expect("run");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("device_id = dev-1"), "{stdout}");
    assert!(
        !stdout.contains("very-secret-value"),
        "the secret is masked: {stdout}"
    );

    let bad = config(dir.path(), "function_code = \"lower\"\n");
    let output = Command::new(BINARY)
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("function_code"));

    let output = Command::new(BINARY)
        .args(["check-config", "--config", "/nonexistent/agent.toml"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(64));
    let output = Command::new(BINARY)
        .args(["frobnicate"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(64));
}

#[test]
fn sigterm_stops_a_running_agent_cleanly_and_status_reads_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    // No camera in this build or on this machine: the agent must still start and say so.
    let path = config(
        dir.path(),
        &format!("listen = \"127.0.0.1:{port}\"\n[source]\nkind = \"camera\"\n"),
    );
    let mut child = Command::new(BINARY)
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("spawn");
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let status = loop {
        let output = Command::new(BINARY)
            .args(["status", "--url", &url])
            .output()
            .expect("status");
        if output.status.success() {
            break String::from_utf8_lossy(&output.stdout).into_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the agent never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.contains("\"dev-1\""), "{status}");
    assert!(
        status.contains("no camera"),
        "the missing camera is reported: {status}"
    );
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the agent did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
}
