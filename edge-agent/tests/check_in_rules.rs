//! Check-in rules decided by a gate offline exactly as the central decides them online, with
//! real processes: a real central on a throwaway PostgreSQL, a gate agent process whose
//! uplink runs through a proxy the test cuts, and real SQLite.
//!
//! Random rule sets (fixed seed) each go on two tickets that get the same earlier uses
//! through the central. With the uplink cut, the gate decides one ticket from its synced
//! copy and the central decides the twin: the codes must agree, every rule's code among
//! them. Rules sit an hour or more from any boundary the test could cross while it runs.

mod common;

use chrono::{DateTime, Duration, NaiveTime, SecondsFormat, Timelike, Utc};
use common::proxy::Proxy;
use common::{is_synced, scan, start_agent, wait_status, Central};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

const OTA: &str = "ch-ota-secret";
const LIMIT: StdDuration = StdDuration::from_secs(45);
const PAIRS: usize = 60;

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Shanghai's local time of day `offset` from now, `HH:MM` (UTC+8 all year).
fn shanghai_hhmm(now: DateTime<Utc>, offset: Duration) -> String {
    let local = (now + Duration::hours(8) + offset).time();
    NaiveTime::from_hms_opt(local.hour(), local.minute(), 0)
        .expect("time")
        .format("%H:%M")
        .to_string()
}

/// A rule set, its entitlement's total uses, and how many earlier uses to try.
fn random_case(rng: &mut StdRng, now: DateTime<Utc>) -> (Value, i32, usize) {
    let mut rules = serde_json::Map::new();
    match rng.gen_range(0..6) {
        1 => {
            rules.insert(
                "valid_from".into(),
                json!(rfc3339(now + Duration::hours(2))),
            );
        }
        2 => {
            rules.insert(
                "valid_until".into(),
                json!(rfc3339(now - Duration::hours(1))),
            );
        }
        3 => {
            rules.insert(
                "valid_from".into(),
                json!(rfc3339(now - Duration::hours(2))),
            );
            rules.insert(
                "valid_until".into(),
                json!(rfc3339(now + Duration::hours(3))),
            );
        }
        _ => {}
    }
    match rng.gen_range(0..4) {
        // Open now (and across midnight whenever now is late or early).
        1 => {
            rules.insert(
                "daily_window".into(),
                json!({"start": shanghai_hhmm(now, Duration::hours(-1)),
                       "end": shanghai_hhmm(now, Duration::hours(2))}),
            );
        }
        2 => {
            rules.insert(
                "daily_window".into(),
                json!({"start": shanghai_hhmm(now, Duration::hours(2)),
                       "end": shanghai_hhmm(now, Duration::hours(3))}),
            );
        }
        _ => {}
    }
    if rng.gen_bool(0.5) {
        rules.insert("uses_per_day".into(), json!(rng.gen_range(1..3)));
    }
    if rng.gen_bool(0.4) {
        rules.insert("min_interval_secs".into(), json!(3600));
    }
    (
        Value::Object(rules),
        rng.gen_range(1..4),
        rng.gen_range(0..3),
    )
}

async fn login(central: &Central) -> String {
    common::operator_token(&central.client, &central.base).await
}

/// A scan decided by the central itself (at the west gate's device), not through the gate.
async fn central_scan(central: &Central, operator: &str, qr: &str) -> Value {
    central
        .client
        .post(format!("{}/venue/scan", central.base))
        .bearer_auth(operator)
        .json(&json!({"qr_token": qr, "function_code": "ENTRY",
                      "venue_code": "GATE-WEST", "device_id": "dev-west-1"}))
        .send()
        .await
        .expect("scan")
        .json()
        .await
        .expect("decision")
}

fn code(decision: &Value) -> String {
    decision["code"].as_str().unwrap_or("?").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gate_offline_and_the_central_decide_every_rule_alike() {
    let now = Utc::now();
    let mut rng = StdRng::seed_from_u64(13);
    let cases: Vec<(Value, i32, usize)> = (0..PAIRS).map(|_| random_case(&mut rng, now)).collect();
    let tickets: Vec<Value> = cases
        .iter()
        .enumerate()
        .flat_map(|(i, (rules, total, _))| {
            ["A", "B"].map(|twin| {
                json!({"ticket_code": format!("TK-R{i}{twin}"), "channel": "OTA", "status": "ACTIVATED",
                       "entitlements": [{"function_code": "ENTRY", "name": "入园",
                                         "total_uses": total, "rules": rules}]})
            })
        })
        .collect();
    let seed = json!({"orders": [{"order_id": "ORD-RULES", "merchant": "M001",
                                  "passengers": [{"name": "规则", "tickets": tickets}]}]});
    let central = Central::start(&[seed.to_string()]).await;
    let operator = login(&central).await;

    // The same earlier uses on both twins, decided by the central.
    for (i, (_, _, earlier)) in cases.iter().enumerate() {
        for _ in 0..*earlier {
            for twin in ["A", "B"] {
                let qr = central.issue_qr(&format!("TK-R{i}{twin}"), OTA).await;
                central_scan(&central, &operator, &qr).await;
            }
        }
    }
    // The QRs to decide, issued before the gate syncs so its copy knows them as current.
    let mut finals = BTreeMap::new();
    for i in 0..PAIRS {
        for twin in ["A", "B"] {
            let ticket = format!("TK-R{i}{twin}");
            finals.insert(ticket.clone(), central.issue_qr(&ticket, OTA).await);
        }
    }

    let proxy = Proxy::start(central.addr).await;
    let (gate, _dir) =
        start_agent("dev-east-1", "dev-secret-1", "GATE-EAST", &proxy.url(), "").await;
    wait_status(&gate.base, LIMIT, "first sync", is_synced).await;
    proxy.cut();
    // A QR issued in the same second as the copy's current one is not newer to the gate:
    // the second QRs below are issued at least a second after the finals.
    tokio::time::sleep(StdDuration::from_millis(1100)).await;

    let mut seen = BTreeMap::<String, usize>::new();
    let mut accepted_offline = 0;
    for (i, (rules, total, earlier)) in cases.iter().enumerate() {
        let at_gate = scan(&gate.base, &finals[&format!("TK-R{i}A")]).await;
        assert_eq!(at_gate["mode"], "offline", "pair {i}: {at_gate}");
        let at_central = central_scan(&central, &operator, &finals[&format!("TK-R{i}B")]).await;
        assert_eq!(
            code(&at_gate),
            code(&at_central),
            "pair {i}: rules {rules}, {total} uses, {earlier} earlier: gate {at_gate} central {at_central}"
        );
        assert_eq!(at_gate["message"], at_central["message"], "pair {i}");
        if code(&at_gate) == "SUCCESS" {
            accepted_offline += 1;
            // A second QR right after: the gate counts its own acceptance for the rules.
            let ticket_a = format!("TK-R{i}A");
            let ticket_b = format!("TK-R{i}B");
            let again_a = central.issue_qr(&ticket_a, OTA).await;
            let again_b = central.issue_qr(&ticket_b, OTA).await;
            let second_gate = scan(&gate.base, &again_a).await;
            let second_central = central_scan(&central, &operator, &again_b).await;
            assert_eq!(
                code(&second_gate),
                code(&second_central),
                "pair {i}, second use: rules {rules}: gate {second_gate} central {second_central}"
            );
            if code(&second_gate) == "SUCCESS" {
                accepted_offline += 1;
            }
            *seen
                .entry(format!("second {}", code(&second_gate)))
                .or_default() += 1;
        }
        *seen.entry(code(&at_gate)).or_default() += 1;
    }
    println!("codes seen: {seen:?}");
    for expected in [
        "SUCCESS",
        "NOT_YET_VALID",
        "NO_LONGER_VALID",
        "OUTSIDE_HOURS",
        "EXHAUSTED",
        "second DAILY_LIMIT",
        "second TOO_SOON",
    ] {
        assert!(
            seen.contains_key(expected),
            "the fixed seed tries {expected}: {seen:?}"
        );
    }

    // Back online, every offline acceptance is applied, none is a conflict.
    proxy.restore();
    common::wait_drained(&gate.base, LIMIT, "queue drained").await;
    assert_eq!(
        central
            .count("SELECT count(*) FROM redemption_events WHERE source = 'offline'")
            .await,
        accepted_offline
    );
    assert_eq!(
        central
            .count("SELECT count(*) FROM merchant_redemptions WHERE result = 'CONFLICT'")
            .await,
        0
    );
}
