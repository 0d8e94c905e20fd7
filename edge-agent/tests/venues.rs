//! Exits, re-entry and capacity at a venue, with real processes: a real central on a
//! throwaway PostgreSQL whose merchant groups both gates' locations into one venue, an entry
//! gate and an exit gate (agent processes of the `edge-agent` binary, each behind its own
//! proxy the test cuts and restores), and real SQLite.
//!
//! Every wait is for a state the gate reports (`/api/status`), bounded; nothing asserts on
//! how long anything took.

mod common;

use common::proxy::Proxy;
use common::{is_synced, scan, start_agent, wait_status, AgentProcess, Central};
use serde_json::{json, Value};
use std::time::Duration;

const OTA: &str = "ch-ota-secret";
const LIMIT: Duration = Duration::from_secs(45);

/// The fixtures' merchant with both gates' locations in the venue `PARK`, and one-use OTA
/// tickets: `TK-V*` plain, `TK-R*` with `reentry`.
fn venue_seed(capacity: Option<i64>) -> String {
    let ticket = |code: &str, rules: Value| {
        json!({"ticket_code": code, "channel": "OTA", "status": "ACTIVATED",
               "entitlements": [{"function_code": "ENTRY", "name": "入园", "total_uses": 1, "rules": rules}]})
    };
    let mut venue =
        json!({"code": "PARK", "name": "示例乐园", "locations": ["GATE-EAST", "GATE-WEST"]});
    if let Some(capacity) = capacity {
        venue["capacity"] = json!(capacity);
    }
    let mut tickets: Vec<Value> = (1..=4)
        .map(|i| ticket(&format!("TK-V{i}"), json!({})))
        .collect();
    tickets.push(ticket("TK-R1", json!({"reentry": true})));
    json!({
        "merchants": [{"code": "M001", "name": "示例乐园",
                       "locations": [{"venue_code": "GATE-EAST", "name": "东门"},
                                     {"venue_code": "GATE-WEST", "name": "西门"}],
                       "venues": [venue]}],
        "orders": [{"order_id": "ORD-VENUE", "merchant": "M001",
                    "passengers": [{"name": "游客", "tickets": tickets}]}]
    })
    .to_string()
}

struct Gate {
    agent: AgentProcess,
    proxy: Proxy,
    _dir: tempfile::TempDir,
}

impl Gate {
    fn base(&self) -> &str {
        &self.agent.base
    }
}

/// The entry gate (east) and, with `extra` settings, behind a proxy of its own.
async fn start_gate(
    central: &Central,
    device: &str,
    secret: &str,
    venue: &str,
    extra: &str,
) -> Gate {
    let proxy = Proxy::start(central.addr).await;
    let (agent, dir) = start_agent(device, secret, venue, &proxy.url(), extra).await;
    wait_status(&agent.base, LIMIT, "first sync", is_synced).await;
    Gate {
        agent,
        proxy,
        _dir: dir,
    }
}

async fn entry_gate(central: &Central, extra: &str) -> Gate {
    start_gate(central, "dev-east-1", "dev-secret-1", "GATE-EAST", extra).await
}

async fn exit_gate(central: &Central) -> Gate {
    start_gate(
        central,
        "dev-west-1",
        "dev-secret-2",
        "GATE-WEST",
        "direction = \"exit\"",
    )
    .await
}

fn code(decision: &Value) -> &str {
    decision["code"].as_str().unwrap_or("?")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn wait_figure(gate: &Gate, inside: i64, counted_after: i64) {
    common::wait_figure(gate.base(), LIMIT, inside, counted_after).await;
}

fn remaining(decision: &Value) -> Vec<(String, i64)> {
    decision["entitlements"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|e| {
                    (
                        e["function_code"].as_str().unwrap_or("?").to_owned(),
                        e["remaining_uses"].as_i64().unwrap_or(-1),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exits_are_recorded_online_and_offline_and_the_offline_ones_uploaded() {
    let central = Central::start(&[venue_seed(None)]).await;
    let first = central.issue_qr("TK-V1", OTA).await;
    let second = central.issue_qr("TK-V2", OTA).await;
    let east = entry_gate(&central, "").await;
    let west = exit_gate(&central).await;

    // Online: in at the entry, out at the exit, and not out twice.
    let entered = scan(east.base(), &first).await;
    assert_eq!(
        (
            code(&entered),
            entered["mode"].as_str(),
            entered["direction"].as_str()
        ),
        ("SUCCESS", Some("online"), Some("entry")),
        "{entered}"
    );
    let left = scan(west.base(), &first).await;
    assert_eq!(
        (
            code(&left),
            left["mode"].as_str(),
            left["direction"].as_str()
        ),
        ("SUCCESS", Some("online"), Some("exit")),
        "{left}"
    );
    let again = scan(west.base(), &first).await;
    assert_eq!(
        (code(&again), again["mode"].as_str()),
        ("NOT_INSIDE", Some("online")),
        "{again}"
    );
    let never_in = scan(west.base(), &second).await;
    assert_eq!(code(&never_in), "NOT_INSIDE", "{never_in}");

    // Offline: the exit gate lets out a ticket its copy shows inside, once.
    let before = now();
    let entered = scan(east.base(), &second).await;
    assert_eq!(code(&entered), "SUCCESS", "{entered}");
    wait_figure(&west, 1, before).await;
    west.proxy.cut();
    let out = scan(west.base(), &second).await;
    assert_eq!(
        (code(&out), out["mode"].as_str(), out["direction"].as_str()),
        ("SUCCESS", Some("offline"), Some("exit")),
        "{out}"
    );
    assert_eq!(
        remaining(&out),
        [("ENTRY".to_owned(), 0)],
        "an exit gives no use back"
    );
    let twice = scan(west.base(), &second).await;
    assert_eq!(
        (code(&twice), twice["mode"].as_str()),
        ("NOT_INSIDE", Some("offline")),
        "this gate's own exit counts: {twice}"
    );
    let status = wait_status(west.base(), LIMIT, "the exit queued", |s| {
        s["outbox"]["depth"].as_i64() == Some(1)
    })
    .await;
    assert_eq!(status["direction"], "exit");
    assert_eq!(status["venue"]["estimate"]["own"], -1, "{status}");
    let page = common::page(&format!("{}/", west.base())).await;
    assert!(page.contains("<b id=direction>出口 Exit</b>"), "{page}");
    let display = common::page(&format!("{}/gate", west.base())).await;
    assert!(display.contains("出口 Exit"), "{display}");

    west.proxy.restore();
    common::wait_drained(west.base(), LIMIT, "the exit uploaded").await;
    assert_eq!(
        central
            .count("SELECT count(*) FROM passages WHERE direction = 'exit' AND source = 'offline'")
            .await,
        1
    );
    assert_eq!(
        central
            .count("SELECT count(*) FROM merchant_redemptions WHERE result = 'CONFLICT'")
            .await,
        0
    );
    assert_eq!(central.remaining("TK-V2", "ENTRY").await, 0);
    assert_eq!(
        central
            .count("SELECT inside FROM venues WHERE code = 'PARK'")
            .await,
        0,
        "both tickets in and out"
    );
    // The chart of the day reaches the status page.
    let status = wait_status(west.base(), LIMIT, "the occupancy chart", |s| {
        s["venue"]["chart"]["occupancy"]["exits"].as_i64() == Some(2)
    })
    .await;
    assert_eq!(status["venue"]["chart"]["occupancy"]["entries"], 2);
    let page = common::page(&format!("{}/", west.base())).await;
    assert!(page.contains("<svg"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ticket_that_left_reenters_offline_without_using_a_count() {
    let central = Central::start(&[venue_seed(None)]).await;
    let reentry = central.issue_qr("TK-R1", OTA).await;
    let plain = central.issue_qr("TK-V1", OTA).await;
    let east = entry_gate(&central, "").await;
    let west = exit_gate(&central).await;
    for qr in [&reentry, &plain] {
        assert_eq!(code(&scan(east.base(), qr).await), "SUCCESS");
    }
    let before = now();
    for qr in [&reentry, &plain] {
        assert_eq!(code(&scan(west.base(), qr).await), "SUCCESS");
    }
    wait_figure(&east, 0, before).await;

    east.proxy.cut();
    let back = scan(east.base(), &reentry).await;
    assert_eq!(
        (
            code(&back),
            back["mode"].as_str(),
            back["reentry"].as_bool()
        ),
        ("SUCCESS", Some("offline"), Some(true)),
        "{back}"
    );
    assert_eq!(
        remaining(&back),
        [("ENTRY".to_owned(), 0)],
        "a re-entry uses no count"
    );
    let display = common::page(&format!("{}/gate", east.base())).await;
    assert!(display.contains("再次入场"), "{display}");
    let rescan = scan(east.base(), &reentry).await;
    assert_eq!(
        code(&rescan),
        "ALREADY_REDEEMED",
        "inside again: a rescan is a rescan: {rescan}"
    );
    let no_reentry = scan(east.base(), &plain).await;
    assert_eq!(
        code(&no_reentry),
        "ALREADY_REDEEMED",
        "without reentry, coming back needs a use: {no_reentry}"
    );

    east.proxy.restore();
    common::wait_drained(east.base(), LIMIT, "the re-entry uploaded").await;
    central
        .expect_counts(&[
            (
                "SELECT count(*) FROM passages WHERE reentry AND source = 'offline'",
                1,
            ),
            (
                "SELECT count(*) FROM merchant_redemptions WHERE result = 'CONFLICT'",
                0,
            ),
        ])
        .await;
    assert_eq!(central.remaining("TK-R1", "ENTRY").await, 0);
    assert_eq!(
        central
            .count("SELECT count(*) FROM redemption_events WHERE source = 'offline'")
            .await,
        0,
        "nothing redeemed offline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_capacity_a_fresh_figure_and_the_gates_own_entries_fill_the_venue() {
    let central = Central::start(&[venue_seed(Some(2))]).await;
    let qrs: Vec<String> = {
        let mut qrs = Vec::new();
        for i in 1..=3 {
            qrs.push(central.issue_qr(&format!("TK-V{i}"), OTA).await);
        }
        qrs
    };
    let east = entry_gate(&central, "[offline]\noccupancy_max_age_secs = 3600").await;
    assert_eq!(code(&scan(east.base(), &qrs[0]).await), "SUCCESS");
    // A figure counted two seconds after the entry at least: a passage of the figure's own
    // second (or one clock rounding away) counts on top of it, the safe side for capacity.
    wait_figure(&east, 1, now() + 2).await;

    east.proxy.cut();
    let second = scan(east.base(), &qrs[1]).await;
    assert_eq!(
        (code(&second), second["mode"].as_str()),
        ("SUCCESS", Some("offline")),
        "one place left: {second}"
    );
    let third = scan(east.base(), &qrs[2]).await;
    assert_eq!(
        (code(&third), third["mode"].as_str()),
        ("VENUE_FULL", Some("offline")),
        "the figure and this gate's own entry fill it: {third}"
    );
    assert_eq!(third["message"], "场馆已满，请稍候");
    let status = wait_status(east.base(), LIMIT, "the estimate", |s| {
        s["venue"]["inside"].as_i64() == Some(2)
    })
    .await;
    assert_eq!(status["venue"]["estimate"]["synced"], 1, "{status}");
    assert_eq!(status["venue"]["estimate"]["own"], 1, "{status}");
    assert_eq!(status["venue"]["capacity"], 2);

    east.proxy.restore();
    common::wait_drained(east.base(), LIMIT, "the entry uploaded").await;
    assert_eq!(
        central
            .count("SELECT count(*) FROM redemption_events WHERE source = 'offline'")
            .await,
        1
    );
    assert_eq!(
        central
            .count("SELECT inside FROM venues WHERE code = 'PARK'")
            .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_capacity_a_stale_figure_leaves_the_room_unverifiable_offline() {
    let central = Central::start(&[venue_seed(Some(2))]).await;
    let first = central.issue_qr("TK-V1", OTA).await;
    let second = central.issue_qr("TK-V2", OTA).await;
    let east = entry_gate(&central, "[offline]\noccupancy_max_age_secs = 1").await;
    let west = exit_gate(&central).await;
    let before = now();
    assert_eq!(code(&scan(east.base(), &first).await), "SUCCESS");
    wait_figure(&west, 1, before).await;

    east.proxy.cut();
    west.proxy.cut();
    // Let the east gate's figure grow older than its 1 s bound (its uplink is cut: no new
    // figure comes).
    let cut_at = wait_status(east.base(), LIMIT, "the figure aged", |s| {
        s["venue"]["figure_age_secs"].as_i64() >= Some(2)
    })
    .await;
    assert_eq!(cut_at["grades"]["occupancy_age"], "bad", "{cut_at}");
    let refused = scan(east.base(), &second).await;
    assert_eq!(
        (code(&refused), refused["mode"].as_str()),
        ("OFFLINE_UNVERIFIABLE", Some("offline")),
        "the gate cannot know whether there is room: {refused}"
    );
    // An exit needs no figure.
    let out = scan(west.base(), &first).await;
    assert_eq!(
        (code(&out), out["mode"].as_str()),
        ("SUCCESS", Some("offline")),
        "{out}"
    );
    let page = common::page(&format!("{}/", east.base())).await;
    assert!(page.contains("OFFLINE_UNVERIFIABLE"), "{page}");
}

#[tokio::test]
async fn the_operator_turns_an_entry_gate_into_an_exit_gate_on_the_gate_page() {
    let central = Central::start(&[venue_seed(None)]).await;
    let gate = entry_gate(&central, "").await;
    let qr = central.issue_qr("TK-V1", OTA).await;
    let decision = scan(gate.base(), &qr).await;
    assert_eq!(code(&decision), "SUCCESS", "in: {decision}");

    // A form without the page's login changes nothing.
    let mut browser = common::Browser::default();
    browser.get(&format!("{}/gate", gate.base())).await;
    let (landed, _) = browser
        .post_form(
            &format!("{}/gate/direction", gate.base()),
            &[("direction", "exit")],
        )
        .await;
    assert!(landed.ends_with("error=auth"), "{landed}");
    browser
        .post_form(
            &format!("{}/gate/login", gate.base()),
            &[("username", "op-east"), ("password", "correct horse")],
        )
        .await;
    let (landed, page) = browser
        .post_form(
            &format!("{}/gate/direction", gate.base()),
            &[("direction", "sideways")],
        )
        .await;
    assert!(landed.ends_with("error=direction"), "{landed}: {page}");
    let (landed, page) = browser
        .post_form(
            &format!("{}/gate/direction", gate.base()),
            &[("direction", "exit")],
        )
        .await;
    assert!(!landed.contains("error"), "{landed}");
    assert!(page.contains("data-direction=exit"), "{page}");
    let status = wait_status(gate.base(), LIMIT, "status", |_| true).await;
    assert_eq!(status["direction"], "exit", "{status}");

    // Now it lets the ticket out, once.
    let decision = scan(gate.base(), &qr).await;
    assert_eq!(code(&decision), "SUCCESS", "out: {decision}");
    let decision = scan(gate.base(), &central.issue_qr("TK-V1", OTA).await).await;
    assert_eq!(code(&decision), "NOT_INSIDE", "{decision}");
    assert_eq!(
        central
            .count("SELECT count(*) FROM passages WHERE direction = 'exit'")
            .await,
        1
    );
}
