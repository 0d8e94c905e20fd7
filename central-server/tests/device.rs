//! The gate devices' endpoints over real HTTP: device credentials, the change feed (paging,
//! resuming, scoped to the device's merchant), offline uploads (applied, idempotent,
//! conflicts recorded for reconciliation) and resolving a scan by its scan_id.

mod common;

use common::{TestServer, MINIAPP_KEY, OTA_KEY};
use reqwest::StatusCode;
use serde_json::{json, Value};
use stile_shared::Channel;

const EAST: &str = "dev-east-1:dev-secret-1";
const WEST: &str = "dev-west-1:dev-secret-2";

async fn device_get(server: &TestServer, credential: &str, path: &str) -> (StatusCode, Value) {
    let response = server
        .client
        .get(server.url(path))
        .bearer_auth(credential)
        .send()
        .await
        .expect("request");
    (response.status(), response.json().await.expect("json"))
}

async fn feed_all(
    server: &TestServer,
    credential: &str,
    cursor: Option<String>,
    limit: usize,
) -> (Vec<Value>, String) {
    let mut cursor = cursor;
    let mut tickets = Vec::new();
    loop {
        let mut path = format!("/device/tickets?limit={limit}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let (status, page) = device_get(server, credential, &path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        tickets.extend(page["tickets"].as_array().expect("tickets").iter().cloned());
        cursor = Some(page["next_cursor"].as_str().expect("cursor").to_owned());
        if page["complete"] == true {
            return (tickets, cursor.unwrap_or_default());
        }
    }
}

/// Reads the feed from `cursor` until it has handed out at least `expected` changes. A change
/// is handed out once every older transaction in the cluster has finished (other tests'
/// transactions included), so it may take a moment to appear.
async fn changes_after(
    server: &TestServer,
    credential: &str,
    cursor: Option<String>,
    expected: usize,
) -> (Vec<Value>, String) {
    let started = std::time::Instant::now();
    let mut cursor = cursor;
    let mut changed = Vec::new();
    loop {
        let (page, next) = feed_all(server, credential, cursor, 4).await;
        changed.extend(page);
        if changed.len() >= expected || started.elapsed() > std::time::Duration::from_secs(10) {
            return (changed, next);
        }
        cursor = Some(next);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn operator_id(server: &TestServer, username: &str) -> i64 {
    let (id,): (i64,) = sqlx::query_as("SELECT id FROM operators WHERE username = $1")
        .bind(username)
        .fetch_one(&server.pool)
        .await
        .expect("operator");
    id
}

async fn upload(server: &TestServer, credential: &str, decisions: Value) -> (StatusCode, Value) {
    let response = server
        .client
        .post(server.url("/device/decisions"))
        .bearer_auth(credential)
        .json(&json!({"decisions": decisions}))
        .send()
        .await
        .expect("request");
    (response.status(), response.json().await.expect("json"))
}

fn decision(
    scan_id: &str,
    token: &str,
    function: &str,
    decided_at: chrono::DateTime<chrono::Utc>,
    operator: i64,
) -> Value {
    json!({"scan_id": scan_id, "qr_token": token, "function_code": function,
           "decided_at": decided_at.to_rfc3339(), "operator_id": operator})
}

#[tokio::test]
async fn device_credentials_are_checked() {
    let server = TestServer::start().await;
    for credential in [
        "dev-east-1:wrong-secret",
        "nobody:dev-secret-1",
        "dev-east-1",
        "",
    ] {
        let (status, body) = device_get(&server, credential, "/device/tickets").await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("UNAUTHORIZED")),
            "{credential}"
        );
    }
    let (status, keys) = device_get(&server, EAST, "/device/keys").await;
    assert_eq!(status, StatusCode::OK);
    let public: Value = server
        .client
        .get(server.url("/keys"))
        .send()
        .await
        .expect("keys")
        .json()
        .await
        .expect("json");
    assert_eq!(keys, public);
    server.stop().await;
}

#[tokio::test]
async fn the_feed_pages_resumes_and_shows_only_the_devices_merchant() {
    let server = TestServer::start().await;
    let (tickets, cursor) = changes_after(&server, EAST, None, 6).await;
    let mut codes: Vec<&str> = tickets
        .iter()
        .filter_map(|t| t["ticket_code"].as_str())
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            "TK-1001-1",
            "TK-1001-2",
            "TK-CONC",
            "TK-PRE",
            "TK-VOID",
            "TK-ZERO"
        ]
    );
    // Nothing changed: an empty, complete page, and the cursor holds.
    let (status, page) =
        device_get(&server, EAST, &format!("/device/tickets?cursor={cursor}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["tickets"], json!([]));
    assert_eq!(page["complete"], true);

    // A QR and a redemption change TK-1001-1: only it comes next, with its new state.
    let operator = server.login("op-east").await;
    let qr = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    assert_eq!(
        server.scan(&operator, &qr.qr_token, "MEAL").await.0,
        StatusCode::OK
    );
    let (changed, cursor) = changes_after(&server, EAST, Some(cursor), 1).await;
    assert_eq!(changed.len(), 1, "{changed:?}");
    let ticket = &changed[0];
    assert_eq!(ticket["ticket_code"], "TK-1001-1");
    assert_eq!(ticket["current_jti"], qr.jti.as_str());
    assert_eq!(ticket["redeemed_functions"], json!(["MEAL"]));
    assert_eq!(ticket["entitlements"][1]["remaining_uses"], 1);
    assert_eq!(ticket["channel"], "MINIAPP");

    // Voiding through the seed loader shows up too.
    let voided = common::FIXTURES.replace(
        r#""ticket_code": "TK-1001-2", "channel": "OTA", "status": "ACTIVATED""#,
        r#""ticket_code": "TK-1001-2", "channel": "OTA", "status": "VOID""#,
    );
    central_server::seed::apply(
        &server.pool,
        &central_server::seed::parse(&voided).expect("parse"),
    )
    .await
    .expect("apply");
    let (changed, _) = changes_after(&server, EAST, Some(cursor), 1).await;
    assert_eq!(changed.len(), 1);
    assert_eq!(
        (
            changed[0]["ticket_code"].as_str(),
            changed[0]["status"].as_str()
        ),
        (Some("TK-1001-2"), Some("VOID"))
    );

    // Another merchant's device sees only its own ticket.
    let (other, _) = changes_after(&server, "dev-other-1:dev-secret-3", None, 1).await;
    assert_eq!(other.len(), 1);
    assert_eq!(other[0]["ticket_code"], "TK-M2");
    let (status, _) = device_get(&server, EAST, "/device/tickets?cursor=@@@").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = device_get(&server, EAST, "/device/tickets?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    server.stop().await;
}

#[tokio::test]
async fn offline_decisions_apply_once_and_appear_in_the_merchants_log() {
    let server = TestServer::start().await;
    let operator = operator_id(&server, "op-east").await;
    let qr = server.issue_qr("TK-CONC", OTA_KEY).await;
    let scan_id = uuid::Uuid::new_v4().to_string();
    let decided_at = chrono::Utc::now() - chrono::Duration::seconds(90);
    let one = json!([decision(
        &scan_id,
        &qr.qr_token,
        "ENTRY",
        decided_at,
        operator
    )]);
    let (status, body) = upload(&server, EAST, one.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["outcome"], "applied");
    assert_eq!(body["results"][0]["code"], "SUCCESS");
    assert_eq!(server.remaining("TK-CONC", "ENTRY").await, 4);
    // The same upload again (the gate never saw the answer): applied, once.
    let (_, again) = upload(&server, EAST, one).await;
    assert_eq!(again["results"][0]["outcome"], "applied");
    assert_eq!(server.remaining("TK-CONC", "ENTRY").await, 4);

    let login = server.login("op-east").await;
    let response = server
        .client
        .get(server.url("/merchant/redemptions"))
        .bearer_auth(&login)
        .send()
        .await
        .expect("log");
    let log: Value = response.json().await.expect("json");
    let item = &log["items"][0];
    assert_eq!(item["source"], "offline");
    assert_eq!(item["device_id"], "dev-east-1");
    assert_eq!(item["result"], "SUCCESS");
    let decided =
        chrono::DateTime::parse_from_rfc3339(item["decided_at"].as_str().expect("decided_at"))
            .expect("time");
    let uploaded =
        chrono::DateTime::parse_from_rfc3339(item["uploaded_at"].as_str().expect("uploaded_at"))
            .expect("time");
    assert!((decided.timestamp() - decided_at.timestamp()).abs() <= 1);
    assert!(uploaded > decided);
    assert_eq!(log["items"].as_array().map(Vec::len), Some(1));
    server.stop().await;
}

#[tokio::test]
async fn two_gates_accepting_the_same_qr_offline_leave_one_redemption_and_one_visible_conflict() {
    let server = TestServer::start().await;
    let operator = operator_id(&server, "op-east").await;
    let qr = server.issue_qr("TK-CONC", OTA_KEY).await;
    let at = chrono::Utc::now() - chrono::Duration::seconds(30);
    let east_scan = uuid::Uuid::new_v4().to_string();
    let west_scan = uuid::Uuid::new_v4().to_string();
    let (_, east) = upload(
        &server,
        EAST,
        json!([decision(&east_scan, &qr.qr_token, "ENTRY", at, operator)]),
    )
    .await;
    let west_upload = json!([decision(&west_scan, &qr.qr_token, "ENTRY", at, operator)]);
    let (_, west) = upload(&server, WEST, west_upload.clone()).await;
    assert_eq!(east["results"][0]["outcome"], "applied");
    assert_eq!(west["results"][0]["outcome"], "conflict");
    assert_eq!(west["results"][0]["code"], "ALREADY_REDEEMED");
    assert_eq!(server.remaining("TK-CONC", "ENTRY").await, 4);
    // Retried: still a conflict, recorded once.
    let (_, retried) = upload(&server, WEST, west_upload).await;
    assert_eq!(retried["results"][0]["outcome"], "conflict");
    let rows: Vec<(String, Option<String>, String)> = sqlx::query_as(
        "SELECT mr.result, mr.meta->>'code', d.device_id FROM merchant_redemptions mr JOIN devices d ON d.id = mr.device_id ORDER BY mr.id",
    )
    .fetch_all(&server.pool).await.expect("rows");
    assert_eq!(
        rows,
        vec![
            ("SUCCESS".to_owned(), None, "dev-east-1".to_owned()),
            (
                "CONFLICT".to_owned(),
                Some("ALREADY_REDEEMED".to_owned()),
                "dev-west-1".to_owned()
            ),
        ]
    );
    let login = server.login("op-east").await;
    let log: Value = server
        .client
        .get(server.url("/merchant/redemptions"))
        .bearer_auth(&login)
        .send()
        .await
        .expect("log")
        .json()
        .await
        .expect("json");
    assert_eq!(log["items"][0]["result"], "CONFLICT");
    assert_eq!(log["items"][0]["conflict_code"], "ALREADY_REDEEMED");
    server.stop().await;
}

#[tokio::test]
async fn uploads_are_judged_at_the_gates_decision_time_and_report_every_kind_of_conflict() {
    let server = TestServer::start().await;
    let operator = operator_id(&server, "op-east").await;
    let now = chrono::Utc::now();
    // A MINIAPP QR that was fresh when the gate accepted it, stale by upload time.
    let token = server
        .dated_token(
            "TK-1001-1",
            "M001",
            Channel::MiniApp,
            now.timestamp() - 2500,
        )
        .await;
    let ok = uuid::Uuid::new_v4().to_string();
    // A superseded QR.
    let old = server.issue_qr("TK-1001-2", OTA_KEY).await;
    server.issue_qr("TK-1001-2", OTA_KEY).await;
    let superseded = uuid::Uuid::new_v4().to_string();
    let (status, body) = upload(
        &server,
        EAST,
        json!([
            decision(
                &ok,
                &token,
                "ENTRY",
                now - chrono::Duration::seconds(1500),
                operator
            ),
            decision(
                &superseded,
                &old.qr_token,
                "SHOW",
                now - chrono::Duration::seconds(10),
                operator
            ),
            decision("not-a-uuid", &old.qr_token, "SHOW", now, operator),
            decision(
                &uuid::Uuid::new_v4().to_string(),
                &old.qr_token,
                "SHOW",
                now,
                operator_id(&server, "op-other").await
            ),
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let outcomes: Vec<(&str, &str)> = body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                r["outcome"].as_str().unwrap_or("?"),
                r["code"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("applied", "SUCCESS"),
            ("conflict", "QR_SUPERSEDED"),
            ("invalid", "BAD_REQUEST"),
            ("invalid", "BAD_REQUEST")
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_scan_can_be_looked_up_by_its_scan_id() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    let qr = server.issue_qr("TK-CONC", OTA_KEY).await;
    let scan_id = uuid::Uuid::new_v4().to_string();
    let (_, original) = server
        .scan_with(&operator, &qr.qr_token, "ENTRY", Some(&scan_id))
        .await;
    let response = server
        .client
        .get(server.url(&format!("/venue/scan/{scan_id}")))
        .bearer_auth(&operator)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.expect("json"), original);
    let unknown = uuid::Uuid::new_v4();
    let response = server
        .client
        .get(server.url(&format!("/venue/scan/{unknown}")))
        .bearer_auth(&operator)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let other = server.login("op-other").await;
    let response = server
        .client
        .get(server.url(&format!("/venue/scan/{scan_id}")))
        .bearer_auth(&other)
        .send()
        .await
        .expect("request");
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "another merchant's scan is not found"
    );
    server.stop().await;
}
