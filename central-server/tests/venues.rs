//! Venues over real HTTP against a real PostgreSQL: exits, re-entry and capacity at
//! `/venue/scan`, exits uploaded by a gate, two gates racing for the last places, the day
//! turning over in Asia/Shanghai, and what `/merchant/occupancy`, `/device/occupancy`, the
//! device feed and `/metrics` say of it.

mod common;

use common::{TestServer, OTA_KEY};
use reqwest::StatusCode;
use serde_json::{json, Value};

const OPERATOR: &str = "op-east";

fn ticket(code: &str, total: i32, rules: Value) -> Value {
    json!({"ticket_code": code, "channel": "OTA", "status": "ACTIVATED",
           "entitlements": [{"function_code": "ENTRY", "name": "入园", "total_uses": total,
                             "rules": rules},
                            {"function_code": "MEAL", "name": "午餐", "total_uses": 1}]})
}

/// M001's gates become a venue `PARK` of `capacity` (an exit gate `GATE-OUT` joins them;
/// `SHOP` stays outside any venue), and M002 gets a venue of its own.
fn venue_seed(capacity: i64, tickets: Vec<Value>) -> Value {
    json!({"merchants": [
        {"code": "M001", "name": "示例乐园", "timezone": "Asia/Shanghai",
         "locations": [{"venue_code": "GATE-EAST", "name": "东门"}, {"venue_code": "GATE-WEST", "name": "西门"},
                       {"venue_code": "GATE-OUT", "name": "出口"}, {"venue_code": "SHOP", "name": "商店"}],
         "devices": [{"device_id": "dev-out-1", "venue_code": "GATE-OUT", "secret": "dev-secret-out"},
                     {"device_id": "dev-shop-1", "venue_code": "SHOP", "secret": "dev-secret-shop"}],
         "venues": [{"code": "PARK", "name": "乐园", "capacity": capacity,
                     "locations": ["GATE-EAST", "GATE-WEST", "GATE-OUT"]}]},
        {"code": "M002", "name": "另一乐园",
         "locations": [{"venue_code": "GATE-MAIN", "name": "正门"}],
         "venues": [{"code": "OTHER", "name": "另一园", "locations": ["GATE-MAIN"]}]}],
      "orders": [{"order_id": "ORD-VENUE", "merchant": "M001",
                  "passengers": [{"name": "游客", "tickets": tickets}]}]})
}

async fn load(server: &TestServer, file: &Value) {
    let parsed = central_server::seed::parse(&file.to_string()).expect("venue seed parses");
    central_server::seed::apply(&server.pool, &parsed)
        .await
        .expect("venue seed loads");
}

/// A scan at `gate` by its device, `direction` entry or exit.
async fn pass(
    server: &TestServer,
    token: &str,
    qr: &str,
    gate: (&str, &str),
    direction: &str,
) -> (StatusCode, Value) {
    server
        .post_json(
            "/venue/scan",
            Some(token),
            json!({"qr_token": qr, "function_code": "ENTRY", "venue_code": gate.0,
                   "device_id": gate.1, "direction": direction}),
        )
        .await
}

const EAST: (&str, &str) = ("GATE-EAST", "dev-east-1");
const WEST: (&str, &str) = ("GATE-WEST", "dev-west-1");
const OUT: (&str, &str) = ("GATE-OUT", "dev-out-1");

fn code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or("")
}

async fn occupancy(server: &TestServer, token: &str, query: &str) -> (StatusCode, Value) {
    server
        .call("GET", &format!("/merchant/occupancy{query}"), Some(token))
        .await
}

async fn inside(server: &TestServer, token: &str) -> i64 {
    let (status, body) = occupancy(server, token, "?venue=PARK").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["venues"][0]["inside"].as_i64().expect("inside")
}

#[tokio::test]
async fn exits_reentry_and_capacity_online() {
    let server = TestServer::start().await;
    load(
        &server,
        &venue_seed(
            2,
            vec![
                ticket("TK-IN1", 1, json!({"reentry": true})),
                ticket("TK-IN2", 1, json!({})),
                ticket("TK-IN3", 2, json!({})),
            ],
        ),
    )
    .await;
    let token = server.login(OPERATOR).await;
    let qr = |t: &'static str| {
        let server = &server;
        async move { server.issue_qr(t, OTA_KEY).await.qr_token }
    };
    let (one, two, three) = (qr("TK-IN1").await, qr("TK-IN2").await, qr("TK-IN3").await);

    // An exit of a ticket that never came in.
    let (status, body) = pass(&server, &token, &one, OUT, "exit").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "NOT_INSIDE"),
        "{body}"
    );
    assert_eq!(body["message"], "未入场，无法离场");
    assert_eq!(body["ticket"]["ticket_code"], "TK-IN1");

    // Two places: the third ticket waits, and keeps its uses.
    for (qr, gate) in [(&one, EAST), (&two, WEST)] {
        let (status, body) = pass(&server, &token, qr, gate, "entry").await;
        assert_eq!((status, code(&body)), (StatusCode::OK, "SUCCESS"), "{body}");
    }
    let (status, body) = pass(&server, &token, &three, EAST, "entry").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "VENUE_FULL"),
        "{body}"
    );
    assert_eq!(body["message"], "场馆已满，请稍候");
    assert_eq!(server.remaining("TK-IN3", "ENTRY").await, 2);
    let (_, english) = {
        let response = server
            .client
            .post(server.url("/venue/scan"))
            .bearer_auth(&token)
            .header("Accept-Language", "en")
            .json(
                &json!({"qr_token": three, "function_code": "ENTRY", "venue_code": "GATE-EAST",
                          "device_id": "dev-east-1"}),
            )
            .send()
            .await
            .expect("request");
        (
            response.status(),
            response.json::<Value>().await.expect("json"),
        )
    };
    assert_eq!(english["message"], "The venue is full, please wait");
    assert_eq!(inside(&server, &token).await, 2);

    // A scan of another function at the venue is no entry: capacity does not apply.
    let (status, body) = pass_function(&server, &token, &three, "MEAL").await;
    assert_eq!((status, code(&body)), (StatusCode::OK, "SUCCESS"), "{body}");

    // Out goes the first: a place frees, the third comes in.
    let (status, body) = pass(&server, &token, &one, OUT, "exit").await;
    assert_eq!((status, code(&body)), (StatusCode::OK, "SUCCESS"), "{body}");
    assert!(body.get("redemption").is_none(), "an exit redeems nothing");
    assert_eq!(server.remaining("TK-IN1", "ENTRY").await, 0);
    let (_, body) = pass(&server, &token, &one, OUT, "exit").await;
    assert_eq!(code(&body), "NOT_INSIDE", "out already: {body}");
    assert_eq!(inside(&server, &token).await, 1);
    let (status, body) = pass(&server, &token, &three, EAST, "entry").await;
    assert_eq!((status, code(&body)), (StatusCode::OK, "SUCCESS"), "{body}");

    // Re-entry: the first ticket has no uses left but may come back once there is room.
    let (_, body) = pass(&server, &token, &one, EAST, "entry").await;
    assert_eq!(code(&body), "VENUE_FULL", "{body}");
    let (status, body) = pass(&server, &token, &two, OUT, "exit").await;
    assert_eq!((status, code(&body)), (StatusCode::OK, "SUCCESS"), "{body}");
    let (status, body) = pass(&server, &token, &one, WEST, "entry").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::OK, "SUCCESS"),
        "re-entry: {body}"
    );
    assert_eq!(server.remaining("TK-IN1", "ENTRY").await, 0, "nothing used");
    // Inside again, a rescan is a rescan.
    let (_, body) = pass(&server, &token, &one, EAST, "entry").await;
    assert_eq!(code(&body), "ALREADY_REDEEMED", "{body}");
    // Without re-entry, the second ticket's one use is gone: it cannot come back.
    let (_, body) = pass(&server, &token, &two, EAST, "entry").await;
    assert_eq!(code(&body), "ALREADY_REDEEMED", "{body}");
    let fresh_two = qr("TK-IN2").await;
    let (_, body) = pass(&server, &token, &fresh_two, EAST, "entry").await;
    assert_eq!(code(&body), "EXHAUSTED", "{body}");

    // The occupancy report: inside 2 (ONE back in, THREE), capacity 2; entries 4 successful
    // passages in (ONE, TWO, THREE, ONE again), exits 2.
    let (status, body) = occupancy(&server, &token, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let venues = body["venues"].as_array().expect("venues");
    assert_eq!(venues.len(), 1, "only this merchant's venues: {body}");
    let park = &venues[0];
    assert_eq!(park["venue_code"], "PARK");
    assert_eq!(
        (
            park["inside"].as_i64(),
            park["capacity"].as_i64(),
            park["entries"].as_i64(),
            park["exits"].as_i64()
        ),
        (Some(2), Some(2), Some(4), Some(2)),
        "{park}"
    );
    let series = park["series"].as_array().expect("series");
    let last = series.last().expect("a point");
    assert_eq!(last["inside"], 2, "{park}");
    assert!(
        last["at"].as_str().expect("at").ends_with("+08:00"),
        "{last}"
    );
    let summed: i64 = series
        .iter()
        .map(|p| p["entries"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(summed, 4);

    // Errors: a bad date, an unknown venue, an exit where there is no venue, a scan_id of an
    // entry reused for an exit.
    assert_eq!(
        occupancy(&server, &token, "?date=2026-13-01").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        occupancy(&server, &token, "?venue=OTHER").await.0,
        StatusCode::NOT_FOUND,
        "another merchant's venue is as missing as a missing one"
    );
    let (_, past) = occupancy(&server, &token, "?date=2020-01-01").await;
    assert_eq!(past["venues"][0]["inside"], 0, "{past}");
    assert_eq!(past["venues"][0]["series"], json!([]), "{past}");
    let (status, body) = pass(&server, &token, &three, ("SHOP", "dev-shop-1"), "exit").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
        "{body}"
    );
    let scan_id = uuid::Uuid::new_v4().to_string();
    let fresh_three = qr("TK-IN3").await;
    let entry = json!({"qr_token": fresh_three, "function_code": "ENTRY", "venue_code": "GATE-OUT",
                       "device_id": "dev-out-1", "scan_id": scan_id, "direction": "exit"});
    let (status, body) = server
        .post_json("/venue/scan", Some(&token), entry.clone())
        .await;
    assert_eq!((status, code(&body)), (StatusCode::OK, "SUCCESS"), "{body}");
    let (status, replay) = server
        .post_json("/venue/scan", Some(&token), entry.clone())
        .await;
    assert_eq!(
        (status, code(&replay)),
        (StatusCode::OK, "SUCCESS"),
        "replayed"
    );
    let mut as_entry = entry;
    as_entry["direction"] = json!("entry");
    let (status, body) = server
        .post_json("/venue/scan", Some(&token), as_entry)
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "SCAN_ID_REUSED"),
        "{body}"
    );
    assert_eq!(inside(&server, &token).await, 1, "one exit, replayed once");

    // The gauge.
    let metrics = server.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"stile_venue_occupancy{merchant="M001",venue="PARK"} 1"#),
        "{metrics}"
    );
    assert!(metrics
        .lines()
        .any(|l| l == r#"stile_venue_capacity{merchant="M001",venue="PARK"} 2"#));
    server.stop().await;
}

async fn pass_function(
    server: &TestServer,
    token: &str,
    qr: &str,
    function: &str,
) -> (StatusCode, Value) {
    server.scan(token, qr, function).await
}

/// Reads the device feed from `cursor` until the tickets handed out so far satisfy `done`
/// (a page only holds commits older than every open transaction of the cluster, and the
/// other tests' transactions share it): the tickets and the last page.
async fn feed_until(
    server: &TestServer,
    device: &str,
    mut cursor: Option<String>,
    done: impl Fn(&[Value]) -> bool,
) -> (Vec<Value>, Value) {
    let started = std::time::Instant::now();
    let mut seen: Vec<Value> = Vec::new();
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/device/tickets?limit=2000&cursor={cursor}"),
            None => "/device/tickets?limit=2000".to_owned(),
        };
        let (status, page) = server.call("GET", &path, Some(device)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for ticket in page["tickets"].as_array().expect("tickets") {
            seen.retain(|t| t["ticket_code"] != ticket["ticket_code"]);
            seen.push(ticket.clone());
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if done(&seen) {
            return (seen, page);
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the feed never handed out what was expected: {seen:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn device(id: &str, secret: &str) -> String {
    format!("{id}:{secret}")
}

#[tokio::test]
async fn the_feed_and_the_device_see_presence_and_occupancy() {
    let server = TestServer::start().await;
    load(
        &server,
        &venue_seed(
            5,
            vec![
                ticket("TK-F1", 1, json!({"reentry": true})),
                ticket("TK-F2", 1, json!({})),
            ],
        ),
    )
    .await;
    let token = server.login(OPERATOR).await;
    let one = server.issue_qr("TK-F1", OTA_KEY).await.qr_token;
    let (_, body) = pass(&server, &token, &one, EAST, "entry").await;
    assert_eq!(code(&body), "SUCCESS", "{body}");
    let (_, body) = pass(&server, &token, &one, OUT, "exit").await;
    assert_eq!(code(&body), "SUCCESS", "{body}");

    let out = device("dev-out-1", "dev-secret-out");
    let (tickets, page) = feed_until(&server, &out, None, |tickets| {
        tickets.iter().any(|t| t["ticket_code"] == "TK-F1")
            && tickets.iter().any(|t| t["ticket_code"] == "TK-F2")
    })
    .await;
    assert_eq!(page["venue"]["venue_code"], "PARK", "{page}");
    assert_eq!(page["venue"]["capacity"], 5);
    assert_eq!(page["venue"]["inside"], 0);
    assert_eq!(page["venue"]["entry_function"], "ENTRY");
    assert!(page["venue"]["as_of"].as_i64().is_some());
    assert!(page["database_epoch"].as_str().is_some(), "{page}");
    let f1 = tickets
        .iter()
        .find(|t| t["ticket_code"] == "TK-F1")
        .expect("TK-F1 in the feed");
    assert_eq!(f1["passage"]["direction"], "exit", "{f1}");
    let f2 = tickets
        .iter()
        .find(|t| t["ticket_code"] == "TK-F2")
        .expect("TK-F2");
    assert!(f2.get("passage").is_none(), "{f2}");

    // The exit re-stamped the ticket: a device that had caught up gets it again.
    let cursor = page["next_cursor"].as_str().expect("cursor").to_owned();
    let (_, body) = pass(&server, &token, &one, WEST, "entry").await;
    assert_eq!(code(&body), "SUCCESS", "re-entry: {body}");
    let (changed, delta) = feed_until(&server, &out, Some(cursor), |tickets| {
        tickets.iter().any(|t| t["ticket_code"] == "TK-F1")
    })
    .await;
    let changed: Vec<&Value> = changed.iter().collect();
    assert_eq!(changed.len(), 1, "{delta}");
    assert_eq!(changed[0]["passage"]["direction"], "entry");
    assert_eq!(delta["venue"]["inside"], 1);

    let (status, venue) = server.call("GET", "/device/occupancy", Some(&out)).await;
    assert_eq!(status, StatusCode::OK, "{venue}");
    assert_eq!(
        (
            venue["inside"].as_i64(),
            venue["entries"].as_i64(),
            venue["exits"].as_i64()
        ),
        (Some(1), Some(2), Some(1))
    );
    let shop = device("dev-shop-1", "dev-secret-shop");
    let (status, body) = server.call("GET", "/device/occupancy", Some(&shop)).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "NOT_FOUND"),
        "{body}"
    );
    let (_, page) = server.call("GET", "/device/tickets", Some(&shop)).await;
    assert!(page.get("venue").is_none(), "no venue at the shop: {page}");

    // An exit decided offline, uploaded: applied once, replayed, and an exit of a ticket
    // not inside is a conflict that writes no redemption log row.
    let decided_at = chrono::Utc::now().to_rfc3339();
    let operator_id: (i64,) = sqlx::query_as("SELECT id FROM operators WHERE username = $1")
        .bind(OPERATOR)
        .fetch_one(&server.pool)
        .await
        .expect("operator");
    let two = server.issue_qr("TK-F2", OTA_KEY).await.qr_token;
    let upload = json!({"decisions": [
        {"scan_id": uuid::Uuid::new_v4().to_string(), "qr_token": one, "function_code": "ENTRY",
         "decided_at": decided_at, "operator_id": operator_id.0, "direction": "exit"},
        {"scan_id": uuid::Uuid::new_v4().to_string(), "qr_token": two, "function_code": "ENTRY",
         "decided_at": decided_at, "operator_id": operator_id.0, "direction": "exit"}]});
    let (status, answer) = server
        .post_json("/device/decisions", Some(&out), upload.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["results"][0]["outcome"], "applied", "{answer}");
    assert_eq!(answer["results"][1]["outcome"], "conflict", "{answer}");
    assert_eq!(answer["results"][1]["code"], "NOT_INSIDE", "{answer}");
    let (_, again) = server
        .post_json("/device/decisions", Some(&out), upload)
        .await;
    assert_eq!(
        again["results"][0]["outcome"], "applied",
        "replayed: {again}"
    );
    let (exits,): (i64,) = sqlx::query_as("SELECT count(*) FROM passages WHERE direction = 'exit'")
        .fetch_one(&server.pool)
        .await
        .expect("count");
    assert_eq!(exits, 2, "the online exit and the uploaded one, once");
    let (conflicts,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM merchant_redemptions WHERE result = 'CONFLICT'")
            .fetch_one(&server.pool)
            .await
            .expect("count");
    assert_eq!(conflicts, 0);
    // An upload of an exit from a gate of no venue is invalid.
    let (_, answer) = server
        .post_json(
            "/device/decisions",
            Some(&shop),
            json!({"decisions": [{"scan_id": uuid::Uuid::new_v4().to_string(), "qr_token": two,
                   "function_code": "ENTRY", "decided_at": decided_at, "operator_id": operator_id.0,
                   "direction": "exit"}]}),
        )
        .await;
    assert_eq!(answer["results"][0]["outcome"], "invalid", "{answer}");
    server.stop().await;
}

/// The park of `capacity` with `count` one-use tickets `{prefix}00`, `{prefix}01`, ...: the
/// operator's token and a QR of each.
async fn park_of_one_use_tickets(
    server: &TestServer,
    capacity: i64,
    prefix: &str,
    count: usize,
) -> (String, Vec<String>) {
    let codes: Vec<String> = (0..count).map(|i| format!("{prefix}{i:02}")).collect();
    load(
        server,
        &venue_seed(
            capacity,
            codes.iter().map(|c| ticket(c, 1, json!({}))).collect(),
        ),
    )
    .await;
    let token = server.login(OPERATOR).await;
    let mut qrs = Vec::new();
    for code in &codes {
        qrs.push(server.issue_qr(code, OTA_KEY).await.qr_token);
    }
    (token, qrs)
}

#[tokio::test]
async fn two_gates_never_let_in_more_than_capacity() {
    const CAPACITY: i64 = 5;
    const TICKETS: usize = 24;
    let server = TestServer::start().await;
    let (token, qrs) = park_of_one_use_tickets(&server, CAPACITY, "TK-R", TICKETS).await;
    let scans = qrs.iter().enumerate().map(|(i, qr)| {
        let gate = if i % 2 == 0 { EAST } else { WEST };
        pass(&server, &token, qr, gate, "entry")
    });
    let answers = futures_util::future::join_all(scans).await;
    let admitted = answers.iter().filter(|(_, b)| code(b) == "SUCCESS").count();
    let full = answers
        .iter()
        .filter(|(_, b)| code(b) == "VENUE_FULL")
        .count();
    assert_eq!(admitted as i64, CAPACITY, "{answers:?}");
    assert_eq!(admitted + full, TICKETS, "{answers:?}");
    assert_eq!(inside(&server, &token).await, CAPACITY);
    let (redeemed,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM redemption_events r JOIN tickets t ON t.id = r.ticket_id \
         WHERE t.ticket_code LIKE 'TK-R%'",
    )
    .fetch_one(&server.pool)
    .await
    .expect("count");
    assert_eq!(redeemed, CAPACITY, "a refused entry uses nothing");
    server.stop().await;
}

/// Entries of one batch take the venue's count once, under its lock: while the test holds
/// the venue's row, six entries wait at the batch's read of the count; four came in
/// meanwhile, so one place is left for them.
#[tokio::test]
async fn a_batch_of_entries_decides_on_the_count_under_the_venues_lock() {
    let server = TestServer::start().await;
    race_for_the_last_place(&server, Path::Batch).await;
    server.stop().await;
}

/// On the transaction path (here: the merchant has a webhook) the count is read without the
/// venue's lock and changed last, on condition: entries that decided on a count that filled
/// meanwhile are decided again, under the lock.
#[tokio::test]
async fn entries_decided_on_a_count_that_filled_meanwhile_are_decided_again() {
    let server = TestServer::start().await;
    race_for_the_last_place(&server, Path::Transaction).await;
    server.stop().await;
}

/// Which way the racing entries go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Group-committed: a batch waits at its read of the count.
    Batch,
    /// The merchant has a webhook: each entry waits at its write of the count.
    Transaction,
}

/// Six entries race for the last place of five while the test holds the venue's row: once
/// they wait at the venue's row, four come in by other gates.
async fn race_for_the_last_place(server: &TestServer, path: Path) {
    const CAPACITY: i64 = 5;
    const RACERS: usize = 6;
    let (waits_at, waiting) = match path {
        Path::Batch => ("SELECT v.id, v.capacity%", 1),
        Path::Transaction => ("UPDATE venues SET inside%", RACERS as i64),
    };
    let (token, qrs) = park_of_one_use_tickets(server, CAPACITY, "TK-F", RACERS).await;
    if path == Path::Transaction {
        sqlx::query(
            "UPDATE merchants SET webhook_url = 'http://127.0.0.1:9/hook', webhook_secret = 's' \
             WHERE code = 'M001'",
        )
        .execute(&server.pool)
        .await
        .expect("webhook");
    }
    let mut holder = central_server::db::begin(&server.pool)
        .await
        .expect("begin");
    sqlx::query("SELECT 1 FROM venues WHERE code = 'PARK' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .expect("lock the venue");
    let scans = futures_util::future::join_all(
        qrs.iter().map(|qr| pass(server, &token, qr, EAST, "entry")),
    );
    let fill = async {
        let started = std::time::Instant::now();
        loop {
            let (now_waiting,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND query LIKE $1",
            )
            .bind(waits_at)
            .fetch_one(&server.pool)
            .await
            .expect("waiting");
            if now_waiting >= waiting {
                break;
            }
            if started.elapsed() >= std::time::Duration::from_millis(1500) {
                let waits: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
                    "SELECT wait_event_type, left(query, 60) FROM pg_stat_activity \
                     WHERE datname = current_database() AND state <> 'idle'",
                )
                .fetch_all(&server.pool)
                .await
                .expect("activity");
                panic!("the entries never waited at {waits_at} ({now_waiting} did): {waits:?}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // Let every entry reach the venue's row (in a batch, or queued behind one).
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        sqlx::query(
            "UPDATE venues SET inside = 4, inside_on = (now() AT TIME ZONE 'Asia/Shanghai')::date \
             WHERE code = 'PARK'",
        )
        .execute(&mut *holder)
        .await
        .expect("fill");
        holder.commit().await.expect("commit");
    };
    let (answers, ()) = tokio::join!(scans, fill);
    let admitted = answers.iter().filter(|(_, b)| code(b) == "SUCCESS").count();
    let full = answers
        .iter()
        .filter(|(_, b)| code(b) == "VENUE_FULL")
        .count();
    assert_eq!((admitted, full), (1, RACERS - 1), "{answers:?}");
    assert_eq!(inside(server, &token).await, CAPACITY);
    let (redeemed, passages): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM redemption_events r JOIN tickets t ON t.id = r.ticket_id \
                 WHERE t.ticket_code LIKE 'TK-F%'), \
                (SELECT count(*) FROM passages p JOIN tickets t ON t.id = p.ticket_id \
                 WHERE t.ticket_code LIKE 'TK-F%')",
    )
    .fetch_one(&server.pool)
    .await
    .expect("count");
    assert_eq!(
        (redeemed, passages),
        (1, 1),
        "a refused entry redeemed nothing and passed nowhere"
    );
}

#[tokio::test]
async fn presence_and_occupancy_turn_over_at_local_midnight() {
    let server = TestServer::start().await;
    load(
        &server,
        &venue_seed(
            1,
            vec![ticket("TK-D1", 2, json!({})), ticket("TK-D2", 2, json!({}))],
        ),
    )
    .await;
    let token = server.login(OPERATOR).await;
    let one = server.issue_qr("TK-D1", OTA_KEY).await.qr_token;
    let (_, body) = pass(&server, &token, &one, EAST, "entry").await;
    assert_eq!(code(&body), "SUCCESS", "{body}");
    let two = server.issue_qr("TK-D2", OTA_KEY).await.qr_token;
    let (_, body) = pass(&server, &token, &two, EAST, "entry").await;
    assert_eq!(code(&body), "VENUE_FULL", "{body}");
    // Move the entry, and the count, to yesterday in Shanghai (one second before today's
    // local midnight): nobody is inside today.
    sqlx::query(
        "UPDATE passages SET at = (((now() AT TIME ZONE 'Asia/Shanghai')::date)::timestamp \
                                   AT TIME ZONE 'Asia/Shanghai') - interval '1 second'",
    )
    .execute(&server.pool)
    .await
    .expect("backdate");
    sqlx::query("UPDATE venues SET inside_on = inside_on - 1")
        .execute(&server.pool)
        .await
        .expect("backdate count");
    assert_eq!(inside(&server, &token).await, 0);
    let (_, body) = pass(&server, &token, &one, OUT, "exit").await;
    assert_eq!(code(&body), "NOT_INSIDE", "yesterday's entry: {body}");
    let (_, body) = pass(&server, &token, &two, EAST, "entry").await;
    assert_eq!(code(&body), "SUCCESS", "a new day has room: {body}");
    assert_eq!(inside(&server, &token).await, 1);
    server.stop().await;
}
