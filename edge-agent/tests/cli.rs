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

/// What a field technician typed, each accepted before: `check-config` exits 64 and names
/// the key (the base file is valid, so the named key is the only problem).
#[test]
fn check_config_refuses_each_bad_setting_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).expect("spool");
    let base = std::fs::read_to_string(config(dir.path(), "")).expect("read");
    let cases = [
        (
            format!(
                "[source]\nkind = \"directory\"\npath = \"{}\"\nmode = \"wtach\"\n",
                spool.display()
            ),
            "mode",
        ),
        (
            "[offline]\nmax_clock_offset_secs = -5\n".to_owned(),
            "max_clock_offset_secs",
        ),
        ("debounce_secs = 0\n".to_owned(), "debounce_secs"),
        (
            "[source]\nkind = \"directory\"\npath = \"/nonexistent/spool\"\n".to_owned(),
            "source.path",
        ),
    ];
    let replaced = [
        (base.replace("very-secret-value", "x"), "device_secret"),
        (base.replace("http://127.0.0.1:9", "http://"), "central_url"),
        (base.replace("\"GATE\"", "\"GATE EAST!\""), "venue_code"),
    ];
    let all = cases
        .into_iter()
        .map(|(extra, key)| (format!("{base}{extra}"), key))
        .chain(replaced);
    for (text, key) in all {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, &text).expect("write");
        let output = Command::new(BINARY)
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{key}: {stderr}");
        assert!(stderr.contains(key), "{key} not named: {stderr}");
    }
    // the spool that exists is fine
    let path = dir.path().join("good.toml");
    std::fs::write(
        &path,
        format!(
            "{base}[source]\nkind = \"directory\"\npath = \"{}\"\n",
            spool.display()
        ),
    )
    .expect("write");
    let output = Command::new(BINARY)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
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

/// `peer-key` makes the gate's peer key once (0600 in the state directory) and prints the
/// public half the other gates' static lists take.
#[test]
fn peer_key_prints_the_same_public_key_every_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config(dir.path(), "[peers]\nlisten = \"127.0.0.1:0\"\n");
    let run = || {
        let output = Command::new(BINARY)
            .args(["peer-key", "--config"])
            .arg(&path)
            .output()
            .expect("run peer-key");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    };
    let first = run();
    assert!(
        stile_shared::peer::PeerKey::parse(&first).is_ok(),
        "{first}"
    );
    assert_eq!(run(), first);
    let key_file = dir.path().join("state/peer-key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file)
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The private half is not what is printed.
    let private = std::fs::read_to_string(&key_file).expect("read");
    assert_ne!(private.trim(), first);
}
