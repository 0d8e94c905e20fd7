//! The merchant redemption console over real HTTP: every acceptance line of the card, the
//! merchant boundary on every endpoint, partial order redemption, stable paging while
//! redemptions arrive, and the CSV matching the JSON.

mod common;

use common::{TestServer, MINIAPP_KEY, OTA_KEY};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashSet;

async fn merchant_scan(server: &TestServer, operator: &str, body: Value) -> (StatusCode, Value) {
    server
        .post_json("/merchant/tickets/scan", Some(operator), body)
        .await
}

async fn get(server: &TestServer, operator: Option<&str>, path: &str) -> (StatusCode, Value) {
    let mut request = server.client.get(server.url(path));
    if let Some(token) = operator {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    (response.status(), response.json().await.expect("json"))
}

async fn log_rows(server: &TestServer) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM merchant_redemptions")
        .fetch_one(&server.pool)
        .await
        .expect("count");
    n
}

/// Adds an order of `n` one-use ENTRY tickets to M001.
async fn bulk_order(server: &TestServer, order: &str, n: usize) {
    let tickets: Vec<Value> = (0..n)
        .map(|i| {
            json!({"ticket_code": format!("B{order}-{i}"), "channel": "OTA", "status": "ACTIVATED",
            "entitlements": [{"function_code": "ENTRY", "name": "入园", "total_uses": 1}]})
        })
        .collect();
    let file = json!({"orders": [{"order_id": order, "merchant": "M001",
        "passengers": [{"name": "团体", "tickets": tickets}]}]});
    let parsed = central_server::seed::parse(&file.to_string()).expect("bulk order parses");
    central_server::seed::apply(&server.pool, &parsed)
        .await
        .expect("bulk order loads");
}

#[tokio::test]
async fn a_valid_ticket_redeems_with_success_and_a_log_row() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    let qr = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    let (status, body) = merchant_scan(
        &server,
        &operator,
        json!({"code": qr.qr_token, "location_id": "GATE-EAST", "session_id": "ignored"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"], "success");
    let ticket = &body["tickets"][0];
    assert_eq!(ticket["ticket_code"], "TK-1001-1");
    assert_eq!(ticket["passenger_name"], "张三");
    assert_eq!(ticket["code"], "SUCCESS");
    assert_eq!(ticket["message"], "核销成功");
    assert_eq!(ticket["redemption"]["venue_code"], "GATE-EAST");
    assert_eq!(ticket["redemption"]["operator"]["username"], "op-east");
    assert!(ticket["redemption"].get("device_id").is_none());
    assert_eq!(
        server.remaining("TK-1001-1", "ENTRY").await,
        0,
        "function_code defaults to ENTRY"
    );
    let (source, location): (String, Option<i64>) =
        sqlx::query_as("SELECT source, location_id FROM merchant_redemptions")
            .fetch_one(&server.pool)
            .await
            .expect("log row");
    assert_eq!(source, "merchant");
    assert!(location.is_some());

    // 重复扫码: already redeemed, no second log row.
    let (status, body) = merchant_scan(&server, &operator, json!({"code": qr.qr_token})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["result"], "reject");
    assert_eq!(body["code"], "ALREADY_REDEEMED");
    assert_eq!(body["message"], "该权益已核销");
    assert_eq!(body["tickets"][0]["code"], "ALREADY_REDEEMED");
    assert_eq!(log_rows(&server).await, 1);

    let metrics = server.metrics().await;
    assert!(
        metrics.contains("merchant_scan_success_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("merchant_scan_reject_total 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn another_merchants_ticket_or_order_is_refused_with_no_data() {
    let server = TestServer::start().await;
    let other = server.login("op-other").await;
    let qr = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    let (status, body) = merchant_scan(&server, &other, json!({"code": qr.qr_token})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        json!({"code": "WRONG_MERCHANT", "message": "无权核销该票券"})
    );
    let (status, body) = merchant_scan(&server, &other, json!({"code": "ORD-1001"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        json!({"code": "WRONG_MERCHANT", "message": "无权核销该票券"})
    );
    assert_eq!(server.remaining("TK-1001-1", "ENTRY").await, 1);
    // The order view: another merchant's order reads exactly like a missing one.
    let (status_other, body_other) = get(&server, Some(&other), "/merchant/orders/ORD-1001").await;
    let (status_missing, body_missing) =
        get(&server, Some(&other), "/merchant/orders/ORD-NOPE").await;
    assert_eq!(
        (status_other, &body_other),
        (StatusCode::NOT_FOUND, &body_missing)
    );
    assert_eq!(status_missing, StatusCode::NOT_FOUND);
    // Missing credentials: 401 on every merchant endpoint.
    for path in [
        "/merchant/orders/ORD-1001",
        "/merchant/redemptions",
        "/merchant/redemptions.csv",
    ] {
        let (status, body) = get(&server, None, path).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("UNAUTHORIZED")),
            "{path}"
        );
    }
    let (status, _) = server
        .post_json("/merchant/tickets/scan", None, json!({"code": "ORD-1001"}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    server.stop().await;
}

#[tokio::test]
async fn an_order_code_redeems_every_ticket_that_can_take_it() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    // ORD-1002: TK-PRE (not active), TK-VOID, TK-ZERO (ENTRY used up), TK-CONC (5 uses).
    let (status, body) = merchant_scan(
        &server,
        &operator,
        json!({"code": "ORD-1002", "function_code": "ENTRY"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"], "partial");
    let codes: Vec<(&str, &str)> = body["tickets"]
        .as_array()
        .expect("tickets")
        .iter()
        .map(|t| {
            (
                t["ticket_code"].as_str().unwrap_or("?"),
                t["code"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            ("TK-PRE", "TICKET_NOT_ACTIVE"),
            ("TK-VOID", "TICKET_VOID"),
            ("TK-ZERO", "EXHAUSTED"),
            ("TK-CONC", "SUCCESS")
        ]
    );
    // Only the selected ticket changed.
    assert_eq!(server.remaining("TK-CONC", "ENTRY").await, 4);
    assert_eq!(server.remaining("TK-PRE", "ENTRY").await, 1);
    assert_eq!(log_rows(&server).await, 1);
    // The same order again: nothing redeemable, and no log row.
    let (status, body) = merchant_scan(&server, &operator, json!({"code": "ORD-1002"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["result"], "reject");
    assert_eq!(body["tickets"][3]["code"], "ALREADY_REDEEMED");
    assert_eq!(log_rows(&server).await, 1);
    // A whole order that can take it: success.
    bulk_order(&server, "ORD-G", 3).await;
    let (status, body) = merchant_scan(&server, &operator, json!({"code": "ORD-G"})).await;
    assert_eq!(
        (status, body["result"].as_str()),
        (StatusCode::OK, Some("success")),
        "{body}"
    );
    assert_eq!(body["tickets"].as_array().map(Vec::len), Some(3));
    server.stop().await;
}

#[tokio::test]
async fn a_qr_scan_and_an_order_scan_of_one_ticket_block_each_other() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    let qr = server.issue_qr("TK-CONC", OTA_KEY).await;
    assert_eq!(
        server.scan(&operator, &qr.qr_token, "ENTRY").await.0,
        StatusCode::OK
    );
    let (status, body) = merchant_scan(&server, &operator, json!({"code": "ORD-1002"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["tickets"][3]["code"], "ALREADY_REDEEMED");
    // And the other way round: an order scan first, then the QR at a gate.
    bulk_order(&server, "ORD-X", 1).await;
    assert_eq!(
        merchant_scan(&server, &operator, json!({"code": "ORD-X"}))
            .await
            .0,
        StatusCode::OK
    );
    let (current,): (String,) =
        sqlx::query_as("SELECT current_jti FROM tickets WHERE ticket_code = 'BORD-X-0'")
            .fetch_one(&server.pool)
            .await
            .expect("issued on demand");
    assert_eq!(current.len(), 22);
    server.stop().await;
}

#[tokio::test]
async fn bad_merchant_scans() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    let (status, body) = merchant_scan(&server, &operator, json!({"code": "ORD-NOPE"})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("NOT_FOUND"))
    );
    let (status, body) = merchant_scan(&server, &operator, json!({"code": "aaa.bbb.ccc"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        (body["code"].as_str(), body["result"].as_str()),
        (Some("INVALID_QR"), Some("reject"))
    );
    let (status, body) = merchant_scan(
        &server,
        &operator,
        json!({"code": "ORD-1001", "location_id": "GATE-MAIN"}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("FORBIDDEN"))
    );
    let (status, body) = merchant_scan(&server, &operator, json!({"function_code": "ENTRY"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains("code")),
        "{body}"
    );
    let (status, _) = merchant_scan(
        &server,
        &operator,
        json!({"code": "ORD-1001", "function_code": "entry"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = merchant_scan(&server, &operator, json!({"code": ""})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(log_rows(&server).await, 0);
    server.stop().await;
}

#[tokio::test]
async fn the_order_view_groups_by_passenger_with_remaining_and_last_redemption() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    let qr = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    server.scan(&operator, &qr.qr_token, "MEAL").await;
    let (status, body) = get(&server, Some(&operator), "/merchant/orders/ORD-1001").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["order_id"], "ORD-1001");
    let passengers = body["passengers"].as_array().expect("passengers");
    assert_eq!(passengers.len(), 2);
    assert_eq!(passengers[0]["passenger_name"], "张三");
    let entitlements = &passengers[0]["tickets"][0]["entitlements"];
    assert_eq!(entitlements[0]["function_code"], "ENTRY");
    assert!(entitlements[0]["last_redeemed_at"].is_null());
    assert_eq!(entitlements[1]["function_code"], "MEAL");
    assert_eq!(entitlements[1]["remaining_uses"], 1);
    assert!(chrono::DateTime::parse_from_rfc3339(
        entitlements[1]["last_redeemed_at"].as_str().expect("time")
    )
    .is_ok());
    assert_eq!(passengers[1]["tickets"][0]["ticket_code"], "TK-1001-2");
    server.stop().await;
}

async fn all_pages(server: &TestServer, operator: &str, query: &str, limit: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/merchant/redemptions?limit={limit}{query}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let (status, body) = get(server, Some(operator), &path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let page = body["items"].as_array().expect("items").clone();
        assert!(page.len() <= limit);
        items.extend(page);
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return items,
        }
    }
}

#[tokio::test]
async fn the_log_pages_newest_first_and_guards_its_cursor() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    bulk_order(&server, "ORD-P", 7).await;
    assert_eq!(
        merchant_scan(
            &server,
            &operator,
            json!({"code": "ORD-P", "location_id": "GATE-EAST"})
        )
        .await
        .0,
        StatusCode::OK
    );
    let qr = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    server.scan(&operator, &qr.qr_token, "ENTRY").await;

    let items = all_pages(&server, &operator, "", 3).await;
    assert_eq!(items.len(), 8);
    let ids: HashSet<i64> = items
        .iter()
        .map(|i| i["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids.len(), 8, "no duplicates");
    let keys: Vec<(String, i64)> = items
        .iter()
        .map(|i| {
            (
                i["redeemed_at"].as_str().unwrap_or_default().to_owned(),
                i["id"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(keys, sorted, "newest first");
    assert_eq!(items[0]["source"], "venue");
    assert_eq!(items[0]["device_id"], "dev-east-1");
    assert_eq!(items[1]["source"], "merchant");
    assert_eq!(items[1]["order_id"], "ORD-P");
    assert_eq!(items[1]["operator"]["username"], "op-east");

    // The default date is today in the merchant's time zone; another day is empty.
    let (_, today) = get(&server, Some(&operator), "/merchant/redemptions").await;
    assert_eq!(today["items"].as_array().map(Vec::len), Some(8));
    let (_, old) = get(
        &server,
        Some(&operator),
        "/merchant/redemptions?date=2020-01-01",
    )
    .await;
    assert_eq!(old, json!({"items": [], "next_cursor": null}));

    // Cursors: tampered, another merchant's, another day's → 400.
    let (_, first) = get(&server, Some(&operator), "/merchant/redemptions?limit=3").await;
    let cursor = first["next_cursor"].as_str().expect("cursor").to_owned();
    let mut tampered = cursor.clone().into_bytes();
    tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    let other = server.login("op-other").await;
    for (who, path) in [
        (
            &operator,
            format!("/merchant/redemptions?limit=3&cursor={tampered}"),
        ),
        (
            &other,
            format!("/merchant/redemptions?limit=3&cursor={cursor}"),
        ),
        (
            &operator,
            format!("/merchant/redemptions?limit=3&date=2020-01-01&cursor={cursor}"),
        ),
        (&operator, "/merchant/redemptions?cursor=garbage".to_owned()),
        (&operator, "/merchant/redemptions?limit=0".to_owned()),
        (&operator, "/merchant/redemptions?limit=201".to_owned()),
        (&operator, "/merchant/redemptions?limit=ten".to_owned()),
        (
            &operator,
            "/merchant/redemptions?date=2026-13-01".to_owned(),
        ),
    ] {
        let (status, body) = get(&server, Some(who), &path).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("BAD_REQUEST")),
            "{path}: {body}"
        );
    }
    // The other merchant sees none of these rows.
    let (_, theirs) = get(&server, Some(&other), "/merchant/redemptions").await;
    assert_eq!(theirs["items"].as_array().map(Vec::len), Some(0));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paging_while_redemptions_arrive_returns_every_row_exactly_once() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    bulk_order(&server, "ORD-A", 20).await;
    bulk_order(&server, "ORD-B", 20).await;
    assert_eq!(
        merchant_scan(&server, &operator, json!({"code": "ORD-A"}))
            .await
            .0,
        StatusCode::OK
    );
    let before: HashSet<i64> = sqlx::query_as::<_, (i64,)>("SELECT id FROM merchant_redemptions")
        .fetch_all(&server.pool)
        .await
        .expect("ids")
        .into_iter()
        .map(|(id,)| id)
        .collect();
    assert_eq!(before.len(), 20);

    // Another task redeems ORD-B's tickets one by one while we page.
    let (client, base, writer) = (server.client.clone(), server.base.clone(), operator.clone());
    let redeeming = tokio::spawn(async move {
        for i in 0..20 {
            let issued: Value = client
                .post(format!("{base}/tickets/BORD-B-{i}/qr"))
                .bearer_auth(OTA_KEY)
                .send()
                .await
                .expect("issue")
                .json()
                .await
                .expect("json");
            client.post(format!("{base}/venue/scan")).bearer_auth(&writer)
                .json(&json!({"qr_token": issued["qr_token"], "function_code": "ENTRY", "venue_code": "GATE-EAST", "device_id": "dev-east-1"}))
                .send().await.expect("scan");
        }
    });
    let items = all_pages(&server, &operator, "", 3).await;
    redeeming.await.expect("writer");
    let seen: Vec<i64> = items
        .iter()
        .map(|i| i["id"].as_i64().expect("id"))
        .collect();
    let unique: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "a row appeared twice: {seen:?}");
    assert!(
        before.is_subset(&unique),
        "a row that existed before paging was skipped"
    );
    // After the writer is done, a fresh pass sees all 40 exactly once.
    let all = all_pages(&server, &operator, "", 7).await;
    assert_eq!(all.len(), 40);
    server.stop().await;
}

#[tokio::test]
async fn the_csv_matches_the_json() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    bulk_order(&server, "ORD-C", 5).await;
    merchant_scan(
        &server,
        &operator,
        json!({"code": "ORD-C", "location_id": "GATE-EAST"}),
    )
    .await;
    let qr = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    server.scan(&operator, &qr.qr_token, "MEAL").await;
    let items = all_pages(&server, &operator, "", 2).await;
    let response = server
        .client
        .get(server.url("/merchant/redemptions.csv"))
        .bearer_auth(&operator)
        .send()
        .await
        .expect("csv");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .starts_with("text/csv"));
    let csv = response.text().await.expect("text");
    let mut expected = central_server::merchant::CSV_HEADER.to_owned();
    for item in &items {
        let item: stile_shared::api::RedemptionItem =
            serde_json::from_value(item.clone()).expect("item");
        expected.push_str(&central_server::merchant::csv_line(&item));
    }
    assert_eq!(csv, expected);
    assert_eq!(csv.lines().count(), 7);
    server.stop().await;
}

/// Requests a webhook receiver saw: headers and body.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>;

/// A local webhook receiver: records every request; hangs when told to.
async fn webhook_receiver(hang: bool) -> (String, Received) {
    use std::sync::{Arc, Mutex};
    let seen: Received = Arc::new(Mutex::new(Vec::new()));
    let recorder = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let recorder = recorder.clone();
                async move {
                    recorder
                        .lock()
                        .expect("lock")
                        .push((headers, body.to_vec()));
                    if hang {
                        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                    }
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redemption_reaches_the_merchants_webhook_signed_and_a_hanging_webhook_slows_nothing() {
    let server = TestServer::start_with(|s| s.outbox_poll_ms = 50).await;
    let (url, seen) = webhook_receiver(false).await;
    sqlx::query(
        "UPDATE merchants SET webhook_url = $1, webhook_secret = 'hook-secret' WHERE code = 'M001'",
    )
    .bind(&url)
    .execute(&server.pool)
    .await
    .expect("webhook");
    let operator = server.login("op-east").await;
    let qr = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    assert_eq!(
        server.scan(&operator, &qr.qr_token, "ENTRY").await.0,
        StatusCode::OK
    );
    let started = std::time::Instant::now();
    while seen.lock().expect("lock").is_empty() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "no webhook arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (headers, body) = seen.lock().expect("lock")[0].clone();
    let signature = headers["x-stile-signature"].to_str().expect("ascii");
    assert_eq!(
        signature,
        central_server::outbox::signature(b"hook-secret", &body)
    );
    let payload: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(payload["event"], "redemption.succeeded");
    assert_eq!(payload["ticket_code"], "TK-1001-1");
    assert_eq!(payload["function_code"], "ENTRY");
    assert_eq!(payload["source"], "venue");
    let (status,): (String,) = sqlx::query_as("SELECT status FROM notifications")
        .fetch_one(&server.pool)
        .await
        .expect("notification");
    assert!(status == "delivered" || status == "pending", "{status}");

    // A webhook that hangs: scans still answer at once and the notification waits.
    let (hanging, _) = webhook_receiver(true).await;
    sqlx::query("UPDATE merchants SET webhook_url = $1 WHERE code = 'M001'")
        .bind(&hanging)
        .execute(&server.pool)
        .await
        .expect("webhook");
    let qr = server.issue_qr("TK-1001-2", OTA_KEY).await;
    for _ in 0..3 {
        let (status, body) = server.scan(&operator, &qr.qr_token, "SHOW").await;
        assert!(
            status == StatusCode::OK || body["code"] == "ALREADY_REDEEMED",
            "{body}"
        );
    }
    let metrics = server.metrics().await;
    assert!(metrics.contains("stile_outbox_pending"), "{metrics}");
    server.stop().await;
}
