//! The dashboards and alert rules in `ops/` name only metrics the binaries really export: a
//! real central and a real gate process are scraped after some real traffic (an online
//! scan, a venue with a capacity), and `ops/check_metric_names.py` checks every name the
//! dashboards and rules use against those scrapes. A metric renamed in the code fails here,
//! not on an operator's empty panel.

mod common;

use common::{is_synced, scan, start_agent, wait_status, Central};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn the_dashboards_and_alerts_use_only_exported_metrics() {
    let seed = json!({"merchants": [{"code": "M001", "name": "示例乐园",
        "locations": [{"venue_code": "GATE-EAST", "name": "东门"}],
        "venues": [{"code": "PARK", "name": "乐园", "capacity": 100, "locations": ["GATE-EAST"]}]}]})
    .to_string();
    let central = Central::start(&[seed]).await;
    let (agent, _dir) =
        start_agent("dev-east-1", "dev-secret-1", "GATE-EAST", &central.base, "").await;
    wait_status(
        &agent.base,
        Duration::from_secs(45),
        "first sync",
        is_synced,
    )
    .await;
    let qr = central.issue_qr("TK-MULTI", "ch-ota-secret").await;
    let decision = scan(&agent.base, &qr).await;
    assert_eq!(decision["code"], "SUCCESS", "{decision}");

    let dir = tempfile::tempdir().expect("tempdir");
    let mut scrapes = Vec::new();
    for (name, url) in [
        ("central", format!("{}/metrics", central.ops_base)),
        ("gate", format!("{}/metrics", agent.base)),
    ] {
        let text = reqwest::get(&url)
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics text");
        assert!(text.contains("# TYPE"), "{name}: {text}");
        let path = dir.path().join(format!("{name}.txt"));
        std::fs::write(&path, text).expect("write scrape");
        scrapes.push(path);
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = std::process::Command::new("python3")
        .arg(root.join("ops/check_metric_names.py"))
        .arg("--metrics")
        .args(&scrapes)
        .current_dir(&root)
        .output()
        .expect("run python3 ops/check_metric_names.py");
    assert!(
        output.status.success(),
        "names the scrapes lack:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The checker is not vacuous: it read names from the dashboards and rules.
    let listed = std::process::Command::new("python3")
        .arg(root.join("ops/check_metric_names.py"))
        .current_dir(&root)
        .output()
        .expect("list the names");
    let names = String::from_utf8_lossy(&listed.stdout);
    for name in [
        "stile_scan_decisions_total",
        "stile_agent_uplink_state",
        "stile_venue_occupancy",
    ] {
        assert!(
            names.lines().any(|l| l.trim() == name),
            "{name} in:\n{names}"
        );
    }
}
