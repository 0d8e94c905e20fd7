//! Headless Chromium for page tests: Debian's `chromium` (installed by
//! `STILE_NEED_CHROMIUM=1 scripts/ensure-deps`), run in a fresh profile with the flags this
//! sandbox needs (no background networking: the machine's network is closed), and killed
//! with its helper processes after [`LIMIT_SECS`] (coreutils `timeout` signals the whole
//! process group, not just the browser).

use std::path::Path;

/// Where Debian installs Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Seconds after which a Chromium run is killed, with its helper processes.
pub const LIMIT_SECS: u32 = 60;

/// Runs Chromium on `url` with `mode` (`--dump-dom`, or `--screenshot=...` and a window
/// size). Panics (it is for tests) when Chromium is missing, fails or runs too long.
pub async fn run(url: &str, mode: &[String]) -> std::process::Output {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run `STILE_NEED_CHROMIUM=1 scripts/ensure-deps` (as root) to install Debian's chromium"
    );
    let profile = tempfile::tempdir().expect("profile dir");
    let output = tokio::process::Command::new("timeout")
        .arg("--kill-after=5")
        .arg(LIMIT_SECS.to_string())
        .arg(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(mode)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("start chromium (through coreutils timeout)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !matches!(output.status.code(), Some(124 | 137)),
        "chromium on {url} did not finish within {LIMIT_SECS} s; stderr:\n{stderr}"
    );
    assert!(
        output.status.success(),
        "chromium on {url} failed ({}); stderr:\n{stderr}",
        output.status
    );
    output
}

/// The DOM Chromium built for `url`, serialized.
pub async fn dump_dom(url: &str) -> String {
    let output = run(url, &["--dump-dom".to_owned()]).await;
    let dom = String::from_utf8(output.stdout).expect("utf-8 DOM");
    assert!(
        dom.contains("</html>"),
        "chromium printed no page for {url}: {dom:?}"
    );
    dom
}
