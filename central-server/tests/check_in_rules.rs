//! Check-in rules over real HTTP against a real PostgreSQL: every rule's code at
//! `/venue/scan`, the day boundary in Asia/Shanghai, a window across midnight, the rules in
//! the order view and the device feed, and seed files with bad rules refused by path.

mod common;

use chrono::{DateTime, Duration, NaiveTime, SecondsFormat, Timelike, Utc};
use common::{TestServer, OTA_KEY};
use reqwest::StatusCode;
use serde_json::{json, Value};

const OPERATOR: &str = "op-east";

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Shanghai's local time of day `offset` from now, as `HH:MM` (Shanghai is UTC+8 all year).
fn shanghai_hhmm(now: DateTime<Utc>, offset: Duration) -> String {
    let local = (now + Duration::hours(8) + offset).time();
    let minute = NaiveTime::from_hms_opt(local.hour(), local.minute(), 0).expect("time");
    minute.format("%H:%M").to_string()
}

fn ticket(code: &str, total: i32, rules: Value) -> Value {
    json!({"ticket_code": code, "channel": "OTA", "status": "ACTIVATED",
           "entitlements": [{"function_code": "ENTRY", "name": "入园", "total_uses": total,
                             "rules": rules}]})
}

/// Tickets whose rules are set relative to the real clock, far from any boundary the test
/// could cross while it runs.
fn rules_seed(now: DateTime<Utc>) -> Value {
    json!({"orders": [{"order_id": "ORD-RULES", "merchant": "M001", "passengers": [
    {"name": "规则", "tickets": [
        ticket("TK-FUT", 1, json!({"valid_from": rfc3339(now + Duration::days(1))})),
        ticket("TK-PAST", 1, json!({"valid_until": rfc3339(now - Duration::hours(1))})),
        ticket("TK-SPAN", 1, json!({"valid_from": rfc3339(now - Duration::hours(1)),
                                    "valid_until": rfc3339(now + Duration::hours(1))})),
        // Opens two hours from now and closes an hour later: closed now.
        ticket("TK-SHUT", 1, json!({"daily_window": {
            "start": shanghai_hhmm(now, Duration::hours(2)),
            "end": shanghai_hhmm(now, Duration::hours(3))}})),
        // Opens an hour ago, closes two hours ago: a 23-hour window across midnight.
        ticket("TK-NIGHT", 1, json!({"daily_window": {
            "start": shanghai_hhmm(now, Duration::hours(-1)),
            "end": shanghai_hhmm(now, Duration::hours(-2))}})),
        ticket("TK-DAY", 3, json!({"uses_per_day": 1})),
        ticket("TK-EDGE", 3, json!({"uses_per_day": 1})),
        ticket("TK-SOON", 3, json!({"min_interval_secs": 3600})),
    ]}]}]})
}

async fn load(server: &TestServer, file: &Value) {
    let parsed = central_server::seed::parse(&file.to_string()).expect("rules seed parses");
    central_server::seed::apply(&server.pool, &parsed)
        .await
        .expect("rules seed loads");
}

async fn scan_fresh(server: &TestServer, token: &str, ticket: &str) -> (StatusCode, Value) {
    let qr = server.issue_qr(ticket, OTA_KEY).await;
    server.scan(token, &qr.qr_token, "ENTRY").await
}

fn code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn every_rule_answers_its_code_online() {
    let server = TestServer::start().await;
    let now = Utc::now();
    load(&server, &rules_seed(now)).await;
    let token = server.login(OPERATOR).await;

    let cases = [
        (
            "TK-FUT",
            StatusCode::CONFLICT,
            "NOT_YET_VALID",
            "未到可用时间",
        ),
        (
            "TK-PAST",
            StatusCode::CONFLICT,
            "NO_LONGER_VALID",
            "已过有效期",
        ),
        ("TK-SPAN", StatusCode::OK, "SUCCESS", "核销成功"),
        (
            "TK-SHUT",
            StatusCode::CONFLICT,
            "OUTSIDE_HOURS",
            "不在可用时段",
        ),
        ("TK-NIGHT", StatusCode::OK, "SUCCESS", "核销成功"),
    ];
    for (ticket, status, expected, message) in cases {
        let (got, body) = scan_fresh(&server, &token, ticket).await;
        assert_eq!((got, code(&body)), (status, expected), "{ticket}: {body}");
        assert_eq!(body["message"], message, "{ticket}");
        if expected != "SUCCESS" {
            assert_eq!(
                server.remaining(ticket, "ENTRY").await,
                1,
                "{ticket}: nothing taken"
            );
        }
    }

    // Once a day: a second QR the same day is refused, the count kept.
    let (status, body) = scan_fresh(&server, &token, "TK-DAY").await;
    assert_eq!((status, code(&body)), (StatusCode::OK, "SUCCESS"), "{body}");
    let (status, body) = scan_fresh(&server, &token, "TK-DAY").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "DAILY_LIMIT"),
        "{body}"
    );
    assert_eq!(body["message"], "今日次数已用完");
    assert_eq!(server.remaining("TK-DAY", "ENTRY").await, 2);

    // The same QR again is still ALREADY_REDEEMED, before any rule.
    let qr = server.issue_qr("TK-SOON", OTA_KEY).await;
    let (status, body) = server.scan(&token, &qr.qr_token, "ENTRY").await;
    assert_eq!((status, code(&body)), (StatusCode::OK, "SUCCESS"), "{body}");
    let (_, body) = server.scan(&token, &qr.qr_token, "ENTRY").await;
    assert_eq!(code(&body), "ALREADY_REDEEMED", "{body}");
    let (status, body) = scan_fresh(&server, &token, "TK-SOON").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "TOO_SOON"),
        "{body}"
    );
    assert_eq!(body["message"], "刚刚已核销，请稍后再试");
    assert_eq!(server.remaining("TK-SOON", "ENTRY").await, 2);

    // The four successes above were group-committed, rules and all: decided by `decide`
    // in the batch's transaction. The refusals were decided on the transaction path.
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("stile_scan_paths_total{path=\"group_commit\"} 4"),
        "{metrics}"
    );

    // English, on request.
    let qr = server.issue_qr("TK-FUT", OTA_KEY).await;
    let response = server
        .client
        .post(server.url("/venue/scan"))
        .bearer_auth(&token)
        .header("Accept-Language", "en")
        .json(&json!({"qr_token": qr.qr_token, "function_code": "ENTRY",
                      "venue_code": "GATE-EAST", "device_id": "dev-east-1"}))
        .send()
        .await
        .expect("scan");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["message"], "Not valid yet");
    server.stop().await;
}

/// A use at 23:59:59 Shanghai time yesterday does not count today; one at 00:00:00 today
/// does. The uses are written as a gate's earlier redemptions would be.
#[tokio::test]
async fn the_day_turns_at_midnight_in_shanghai() {
    let server = TestServer::start().await;
    let now = Utc::now();
    load(&server, &rules_seed(now)).await;
    let token = server.login(OPERATOR).await;
    let local_midnight = {
        let local = now + Duration::hours(8);
        let midnight = local.date_naive().and_hms_opt(0, 0, 0).expect("midnight");
        midnight.and_utc() - Duration::hours(8)
    };
    let earlier_use = |ticket: &'static str, at: DateTime<Utc>| {
        let pool = server.pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO redemption_events (jti, function_code, ticket_id, entitlement_id, merchant_id, redeemed_at) \
                 SELECT $2, 'ENTRY', t.id, e.id, t.merchant_id, $3 FROM tickets t \
                 JOIN entitlements e ON e.ticket_id = t.id AND e.function_code = 'ENTRY' \
                 WHERE t.ticket_code = $1",
            )
            .bind(ticket)
            .bind(format!("earlier-{}", at.timestamp()))
            .bind(at)
            .execute(&pool)
            .await
            .expect("earlier use");
        }
    };
    earlier_use("TK-DAY", local_midnight - Duration::seconds(1)).await;
    let (status, body) = scan_fresh(&server, &token, "TK-DAY").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::OK, "SUCCESS"),
        "yesterday's use: {body}"
    );
    earlier_use("TK-EDGE", local_midnight).await;
    let (status, body) = scan_fresh(&server, &token, "TK-EDGE").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "DAILY_LIMIT"),
        "a use at local midnight is today's: {body}"
    );
    server.stop().await;
}

#[tokio::test]
async fn rules_show_in_the_order_view_and_travel_in_the_feed() {
    let server = TestServer::start().await;
    let now = Utc::now();
    load(&server, &rules_seed(now)).await;
    let token = server.login(OPERATOR).await;
    let (status, _) = scan_fresh(&server, &token, "TK-SOON").await;
    assert_eq!(status, StatusCode::OK);

    let (status, order) = server
        .call("GET", "/merchant/orders/ORD-RULES", Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{order}");
    let tickets = order["passengers"][0]["tickets"]
        .as_array()
        .expect("tickets");
    let soon = tickets
        .iter()
        .find(|t| t["ticket_code"] == "TK-SOON")
        .expect("TK-SOON");
    assert_eq!(
        soon["entitlements"][0]["rules"],
        json!({"min_interval_secs": 3600})
    );
    let night = tickets
        .iter()
        .find(|t| t["ticket_code"] == "TK-NIGHT")
        .expect("TK-NIGHT");
    assert!(night["entitlements"][0]["rules"]["daily_window"]["start"].is_string());
    // A ticket without rules shows none.
    let (_, plain) = server
        .call("GET", "/merchant/orders/ORD-1001", Some(&token))
        .await;
    assert!(plain["passengers"][0]["tickets"][0]["entitlements"][0]
        .get("rules")
        .is_none());

    let mut cursor = String::new();
    let mut synced: Vec<Value> = Vec::new();
    let mut zones: Vec<Value> = Vec::new();
    loop {
        let response = server
            .client
            .get(server.url(&format!("/device/tickets?cursor={cursor}")))
            .bearer_auth("dev-east-1:dev-secret-1")
            .send()
            .await
            .expect("feed");
        assert_eq!(response.status(), StatusCode::OK);
        let page: Value = response.json().await.expect("page");
        zones.push(page["time_zone"].clone());
        synced.extend(page["tickets"].as_array().cloned().unwrap_or_default());
        cursor = page["next_cursor"].as_str().expect("cursor").to_owned();
        if page["complete"] == true {
            break;
        }
    }
    assert!(
        zones.iter().all(|zone| zone == "Asia/Shanghai"),
        "every page names the zone: {zones:?}"
    );
    let soon = synced
        .iter()
        .rev()
        .find(|t| t["ticket_code"] == "TK-SOON")
        .expect("TK-SOON in the feed");
    let rules = &soon["rules"][0];
    assert_eq!(rules["function_code"], "ENTRY");
    assert_eq!(rules["rules"], json!({"min_interval_secs": 3600}));
    let uses = rules["recent_uses"].as_array().expect("uses");
    assert_eq!(uses.len(), 1, "the one use the interval needs: {soon}");
    assert!((uses[0].as_i64().expect("unix") - now.timestamp()).abs() < 120);
    let plain = synced
        .iter()
        .find(|t| t["ticket_code"] == "TK-1001-1")
        .expect("TK-1001-1");
    assert!(plain.get("rules").is_none(), "{plain}");
    server.stop().await;
}

#[test]
fn bad_rules_are_refused_by_path() {
    let now = Utc::now();
    let cases = [
        (
            json!({"valid_from": rfc3339(now), "valid_until": rfc3339(now)}),
            "valid_until must be later",
        ),
        (
            json!({"daily_window": {"start": "10:00", "end": "10:00"}}),
            "must not start where it ends",
        ),
        (
            json!({"uses_per_day": 0}),
            "uses_per_day must be at least 1",
        ),
        (
            json!({"daily_window": {"start": "24:00", "end": "10:00"}}),
            "not a local time",
        ),
        (json!({"per_day": 1}), "unknown field"),
    ];
    for (rules, expected) in cases {
        let file = json!({"orders": [{"order_id": "O1", "merchant": "M001", "passengers": [
            {"name": "a", "tickets": [ticket("T1", 1, rules.clone())]}]}]});
        let error = central_server::seed::parse(&file.to_string())
            .expect_err("bad rules refused")
            .to_string();
        assert!(
            error.contains("orders[0].passengers[0].tickets[0].entitlements[0].rules"),
            "{rules}: {error}"
        );
        assert!(error.contains(expected), "{rules}: {error}");
    }
}
