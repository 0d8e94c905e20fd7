//! The central under attack (issue 15): what an attacker with one merchant's credentials,
//! bad bytes, floods or slow sockets gets, over real HTTP against a real PostgreSQL.

mod common;

use common::{TestServer, MINIAPP_KEY, OTA_KEY};
use reqwest::StatusCode;
use serde_json::{json, Value};

const EAST_DEVICE: &str = "dev-east-1:dev-secret-1";
const OTHER_DEVICE: &str = "dev-other-1:dev-secret-3";

async fn operator_id(server: &TestServer, username: &str) -> i64 {
    let (id,): (i64,) = sqlx::query_as("SELECT id FROM operators WHERE username = $1")
        .bind(username)
        .fetch_one(&server.pool)
        .await
        .expect("operator");
    id
}

fn offline(scan_id: &str, token: &str, operator: i64) -> Value {
    json!({"decisions": [{"scan_id": scan_id, "qr_token": token, "function_code": "ENTRY",
           "decided_at": chrono::Utc::now().to_rfc3339(), "operator_id": operator}]})
}

/// Merchant A resending merchant B's scan_id (with B's token) never gets B's stored answer:
/// not over `/venue/scan`, not for a scan B's device uploaded, not through an upload of A's
/// device. The body carries nothing of B's.
#[tokio::test]
async fn a_stored_answer_is_never_replayed_to_another_merchant() {
    let server = TestServer::start().await;
    let east = server.login("op-east").await;
    let other = server.login("op-other").await;
    let other_qr = server.issue_qr("TK-M2", OTA_KEY).await;

    // B scans online with scan_id S.
    let online = uuid::Uuid::new_v4().to_string();
    let (status, body) = server
        .post_json(
            "/venue/scan",
            Some(&other),
            json!({"qr_token": other_qr.qr_token, "function_code": "ENTRY",
                   "venue_code": "GATE-MAIN", "device_id": "dev-other-1", "scan_id": online}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // B's own retry still gets its answer back.
    let (status, _) = server
        .post_json(
            "/venue/scan",
            Some(&other),
            json!({"qr_token": other_qr.qr_token, "function_code": "ENTRY",
                   "venue_code": "GATE-MAIN", "device_id": "dev-other-1", "scan_id": online}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // A resends it from A's gate.
    let (status, body) = server
        .scan_with(&east, &other_qr.qr_token, "ENTRY", Some(&online))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["code"], "SCAN_ID_REUSED");
    let text = body.to_string();
    for leaked in [
        "TK-M2",
        "op-other",
        "dev-other-1",
        "GATE-MAIN",
        "ticket",
        "redemption",
    ] {
        assert!(!text.contains(leaked), "leaked {leaked}: {text}");
    }

    // A scan_id B's device uploaded offline.
    let uploaded = uuid::Uuid::new_v4().to_string();
    let other_qr = server.issue_qr("TK-M2", OTA_KEY).await;
    let other_op = operator_id(&server, "op-other").await;
    let (status, body) = server
        .post_json(
            "/device/decisions",
            Some(OTHER_DEVICE),
            offline(&uploaded, &other_qr.qr_token, other_op),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .scan_with(&east, &other_qr.qr_token, "ENTRY", Some(&uploaded))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(!body.to_string().contains("TK-M2"), "{body}");

    // A's device uploads B's scan_id: refused, never `applied`.
    let east_op = operator_id(&server, "op-east").await;
    for scan_id in [&online, &uploaded] {
        let (status, body) = server
            .post_json(
                "/device/decisions",
                Some(EAST_DEVICE),
                offline(scan_id, &other_qr.qr_token, east_op),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let result = &body["results"][0];
        assert_eq!(result["outcome"], "invalid", "{body}");
        assert_ne!(result["code"], "SUCCESS");
    }

    // A's lookup by id does not find B's scans.
    for scan_id in [&online, &uploaded] {
        let path = format!("/venue/scan/{scan_id}");
        let (status, _) = server.call("GET", &path, Some(&east)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    // A's own scans still replay to A.
    let own = uuid::Uuid::new_v4().to_string();
    let qr = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    let (first, _) = server
        .scan_with(&east, &qr.qr_token, "ENTRY", Some(&own))
        .await;
    let (again, body) = server
        .scan_with(&east, &qr.qr_token, "ENTRY", Some(&own))
        .await;
    assert_eq!((first, again), (StatusCode::OK, StatusCode::OK), "{body}");
    server.stop().await;
}

fn message(body: &Value) -> String {
    body["message"].as_str().unwrap_or_default().to_owned()
}

/// PostgreSQL refuses `\u0000` in text: every identifier is parsed at the edge, so a NUL
/// byte or a newline is a 400 naming the field, never a 500.
#[tokio::test]
async fn bad_bytes_in_identifiers_are_a_400_naming_the_field() {
    let server = TestServer::start_with(|s| s.admin_token = Some(ADMIN.to_owned())).await;
    let east = server.login("op-east").await;
    let qr = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    let (status, body) = server
        .post_json(
            "/operators/login",
            None,
            json!({"username": "op\u{0}east", "password": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(message(&body).contains("username"), "{body}");
    for (field, bad) in [
        ("venue_code", "GATE\u{0}EAST"),
        ("device_id", "dev-east-1\nINFO forged log line"),
    ] {
        let mut request = json!({"qr_token": qr.qr_token, "function_code": "ENTRY",
                                 "venue_code": "GATE-EAST", "device_id": "dev-east-1"});
        request[field] = json!(bad);
        let (status, body) = server.post_json("/venue/scan", Some(&east), request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {body}");
        assert!(message(&body).contains(field), "{body}");
    }
    for (field, request) in [
        ("code", json!({"code": "ORD\u{0}1001"})),
        (
            "location_id",
            json!({"code": "ORD-1001", "location_id": "GATE\u{0}"}),
        ),
    ] {
        let (status, body) = server
            .post_json("/merchant/tickets/scan", Some(&east), request)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {body}");
        assert!(message(&body).contains(field), "{body}");
    }
    for (method, path, bearer, field) in [
        (
            "GET",
            "/merchant/orders/ORD%00-1001",
            east.as_str(),
            "orderId",
        ),
        ("POST", "/tickets/TK%00/qr", MINIAPP_KEY, "ticket_code"),
    ] {
        let (status, body) = server.call(method, path, Some(bearer)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert!(message(&body).contains(field), "{body}");
    }
    let response = server
        .client
        .post(server.ops_url("/admin/seed"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(r#"{"merchants": [{"code": "M9", "name": "bad\u0000name"}]}"#)
        .send()
        .await
        .expect("seed");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.expect("json");
    assert!(message(&body).contains("merchants[0].name"), "{body}");
    server.stop().await;
}

const ADMIN: &str = "admin-token-for-the-hardening-tests-0123456789";

/// Arbitrary strings into every string field of every endpoint (bodies, paths, queries):
/// never a 5xx.
#[test]
fn arbitrary_strings_in_any_field_never_get_a_5xx() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (server, east, device_op) = runtime.block_on(async {
        let server = TestServer::start_with(|s| s.admin_token = Some(ADMIN.to_owned())).await;
        let east = server.login("op-east").await;
        let device_op = operator_id(&server, "op-east").await;
        (server, east, device_op)
    });
    let hostile = prop_oneof![
        any::<String>(),
        "[\\x00-\\x1f\"%\\\\/.:;,?#&= A-Za-z0-9_-]{0,40}",
        "[\u{0}-\u{7f}\u{80}-\u{10ffff}]{0,8}",
        Just("9".repeat(70)),
        Just("x".repeat(5000)),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&hostile, |text| {
        runtime.block_on(async {
            let encoded: String = url_encode(&text);
            let mut statuses = Vec::new();
            let body_cases = [
                ("/operators/login", None, json!({"username": text, "password": text})),
                ("/operators/login", None, json!({"username": "op-east", "password": text})),
                ("/venue/scan", Some(east.as_str()), json!({"qr_token": text, "function_code": "ENTRY", "venue_code": "GATE-EAST", "device_id": "dev-east-1", "scan_id": text})),
                ("/venue/scan", Some(east.as_str()), json!({"qr_token": "a.b.c", "function_code": text, "venue_code": text, "device_id": text})),
                ("/qr/decrypt", Some(east.as_str()), json!({"qr_token": text})),
                ("/merchant/tickets/scan", Some(east.as_str()), json!({"code": text, "function_code": text})),
                ("/merchant/tickets/scan", Some(east.as_str()), json!({"code": "ORD-1001", "location_id": text, "session_id": text})),
                ("/device/decisions", Some(EAST_DEVICE), json!({"decisions": [{"scan_id": text, "qr_token": text, "function_code": "ENTRY", "decided_at": text, "operator_id": device_op}]})),
                ("/device/decisions", Some(EAST_DEVICE), json!({"decisions": [{"scan_id": uuid::Uuid::new_v4().to_string(), "qr_token": text, "function_code": "ENTRY", "decided_at": "2026-01-01T00:00:00Z", "operator_id": device_op}]})),
                ("/device/enroll", None, json!({"device_id": text, "code": text})),
                ("/device/enroll", None, json!({"device_id": "dev-east-1", "code": text})),
            ];
            for (path, bearer, body) in body_cases {
                let (status, _) = server.post_json(path, bearer, body).await;
                statuses.push((path.to_owned(), status));
            }
            let seed = json!({"merchants": [{"code": text, "name": text, "timezone": text,
                "locations": [{"venue_code": text, "name": text}],
                "operators": [{"username": text, "password": text, "display_name": text}]}]});
            let response = server
                .client
                .post(server.ops_url("/admin/seed"))
                .bearer_auth(ADMIN)
                .json(&seed)
                .send()
                .await
                .expect("seed");
            statuses.push(("/admin/seed".into(), response.status()));
            let gets = [
                (format!("/merchant/orders/{encoded}"), east.as_str()),
                (format!("/venue/scan/{encoded}"), east.as_str()),
                (format!("/merchant/redemptions?date={encoded}"), east.as_str()),
                (format!("/merchant/redemptions?cursor={encoded}"), east.as_str()),
                (format!("/merchant/redemptions?limit={encoded}"), east.as_str()),
                (format!("/merchant/redemptions.csv?date={encoded}"), east.as_str()),
                (format!("/device/tickets?cursor={encoded}"), EAST_DEVICE),
                (format!("/device/tickets?limit={encoded}"), EAST_DEVICE),
            ];
            for (path, bearer) in gets {
                let response = server
                    .client
                    .get(server.url(&path))
                    .bearer_auth(bearer)
                    .send()
                    .await
                    .expect("get");
                statuses.push((path, response.status()));
            }
            let response = server
                .client
                .post(server.url(&format!("/tickets/{encoded}/qr")))
                .bearer_auth(OTA_KEY)
                .send()
                .await
                .expect("issue");
            statuses.push(("/tickets/{}/qr".into(), response.status()));
            for (path, status) in statuses {
                prop_assert!(
                    !status.is_server_error(),
                    "{path} answered {status} for {text:?}"
                );
            }
            Ok(())
        })
    });
    runtime.block_on(server.stop());
    if let Err(error) = result {
        panic!("{error}");
    }
}

/// Percent-encodes every byte but unreserved ones, so any string fits a path or a query.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// An expired token of another merchant is QR_EXPIRED everywhere (expiry is checked first,
/// once, in the shared code), and nothing of the ticket is shown anywhere.
#[tokio::test]
async fn the_order_of_checks_is_the_same_at_the_gate_the_console_and_decrypt() {
    let server = TestServer::start().await;
    let east = server.login("op-east").await;
    let long_ago = chrono::Utc::now().timestamp() - 24 * 3600;
    let expired = server
        .dated_token("TK-M2", "M002", stile_shared::Channel::MiniApp, long_ago)
        .await;
    let (status, body) = server.scan(&east, &expired, "ENTRY").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "QR_EXPIRED");
    assert!(body.get("ticket").is_none_or(Value::is_null), "{body}");

    let (status, body) = server
        .post_json(
            "/merchant/tickets/scan",
            Some(&east),
            json!({"code": expired}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "QR_EXPIRED");
    assert_eq!(body["tickets"], json!([]), "{body}");

    let (status, body) = server
        .post_json("/qr/decrypt", Some(&east), json!({"qr_token": expired}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_state"], "expired");
    assert!(body["ticket"].is_null(), "{body}");

    // A fresh token of another merchant is WRONG_MERCHANT at all three, without data.
    let fresh = server.issue_qr("TK-M2", OTA_KEY).await.qr_token;
    let (status, body) = server.scan(&east, &fresh, "ENTRY").await;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::FORBIDDEN, json!("WRONG_MERCHANT"))
    );
    for (path, request) in [
        ("/merchant/tickets/scan", json!({"code": fresh})),
        ("/qr/decrypt", json!({"qr_token": fresh})),
    ] {
        let (status, body) = server.post_json(path, Some(&east), request).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert_eq!(body["code"], "WRONG_MERCHANT");
        assert!(!body.to_string().contains("赵六"), "{body}");
    }
    // An expired token of the operator's own merchant still shows its ticket at decrypt.
    let own = server
        .dated_token(
            "TK-1001-1",
            "M001",
            stile_shared::Channel::MiniApp,
            long_ago,
        )
        .await;
    let (status, body) = server
        .post_json("/qr/decrypt", Some(&east), json!({"qr_token": own}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_state"], "expired");
    assert_eq!(body["ticket"]["ticket_code"], "TK-1001-1");
    server.stop().await;
}

async fn login_status(server: &TestServer, username: &str, password: &str) -> (StatusCode, bool) {
    let response = server
        .client
        .post(server.url("/operators/login"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .expect("login");
    let retry_after = response.headers().contains_key("retry-after");
    (response.status(), retry_after)
}

/// 100 simultaneous wrong passwords for one user get exactly `login_max_failures` password
/// checks; the right password afterwards is still refused (the count is checked and bumped
/// in one statement, before the hash).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_wrong_passwords_cannot_get_past_the_lockout() {
    let server = TestServer::start_with(|s| s.login_hash_workers = 2).await;
    let attempts = (0..100)
        .map(|i| {
            let (client, url) = (server.client.clone(), server.url("/operators/login"));
            tokio::spawn(async move {
                client
                    .post(url)
                    .json(&json!({"username": "op-east", "password": format!("wrong-{i}")}))
                    .send()
                    .await
                    .expect("login")
                    .status()
            })
        })
        .collect::<Vec<_>>();
    let mut evaluated = 0;
    let mut throttled = 0;
    for attempt in attempts {
        match attempt.await.expect("task") {
            StatusCode::UNAUTHORIZED => evaluated += 1,
            StatusCode::TOO_MANY_REQUESTS => throttled += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(evaluated <= 10, "{evaluated} wrong passwords were checked");
    assert_eq!(evaluated + throttled, 100);
    let (status, retry_after) = login_status(&server, "op-east", common::PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after, "429 carries Retry-After");
    server.stop().await;
}

/// Made-up usernames write no row, are throttled per source address, and a flood is held
/// to a bounded queue of password checks (429 with Retry-After beyond it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_made_up_usernames_is_bounded_and_leaves_no_rows() {
    let server = TestServer::start_with(|s| {
        s.login_hash_workers = 1;
        s.login_max_failures_per_address = 1_000_000;
    })
    .await;
    let (operators_before,): (i64,) = sqlx::query_as("SELECT count(*) FROM operators")
        .fetch_one(&server.pool)
        .await
        .expect("count");
    let flood = (0..200)
        .map(|i| {
            let (client, url) = (server.client.clone(), server.url("/operators/login"));
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .json(&json!({"username": format!("made-up-{i}"), "password": "x"}))
                    .send()
                    .await
                    .expect("login");
                (
                    response.status(),
                    response.headers().contains_key("retry-after"),
                )
            })
        })
        .collect::<Vec<_>>();
    let mut refused_busy = 0;
    let started = std::time::Instant::now();
    for attempt in flood {
        let (status, retry_after) = attempt.await.expect("task");
        match status {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(retry_after);
                refused_busy += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    // One worker and a queue of 8: most of 200 simultaneous logins cannot wait.
    assert!(
        refused_busy > 0,
        "the hashing queue never filled ({:?})",
        started.elapsed()
    );
    let (operators_after,): (i64,) = sqlx::query_as("SELECT count(*) FROM operators")
        .fetch_one(&server.pool)
        .await
        .expect("count");
    assert_eq!(operators_before, operators_after);
    let (tables,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'login_failures'",
    )
    .fetch_one(&server.pool)
    .await
    .expect("tables");
    assert_eq!(tables, 0, "no table of failures per username");
    // The right password still works: made-up names do not lock real ones.
    assert_eq!(
        login_status(&server, "op-east", common::PASSWORD).await.0,
        StatusCode::OK
    );
    server.stop().await;
}

#[tokio::test]
async fn one_address_is_throttled_across_usernames() {
    let server = TestServer::start_with(|s| s.login_max_failures_per_address = 5).await;
    for i in 0..5 {
        let (status, _) = login_status(&server, &format!("nobody-{i}"), "x").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, retry_after) = login_status(&server, "nobody-else", "x").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after);
    // A real operator from that address too: the address is over its limit.
    let (status, _) = login_status(&server, "op-east", common::PASSWORD).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    server.stop().await;
}

/// An offline decision dated before its token existed, or after its own upload (beyond the
/// gate clock tolerance), is not applied: it is a conflict with its own code, recorded for
/// reconciliation.
#[tokio::test]
async fn offline_decisions_at_impossible_times_are_recorded_conflicts() {
    let server = TestServer::start_with(|s| s.device_clock_tolerance_secs = 600).await;
    let op = operator_id(&server, "op-east").await;
    let now = chrono::Utc::now();
    for (label, decided_at) in [
        ("years before iat", now - chrono::Duration::days(3 * 365)),
        ("an hour in the future", now + chrono::Duration::hours(1)),
    ] {
        let qr = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
        let scan_id = uuid::Uuid::new_v4().to_string();
        let body = json!({"decisions": [{"scan_id": scan_id, "qr_token": qr.qr_token,
            "function_code": "MEAL", "decided_at": decided_at.to_rfc3339(), "operator_id": op}]});
        let (status, answer) = server
            .post_json("/device/decisions", Some(EAST_DEVICE), body.clone())
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let result = &answer["results"][0];
        assert_eq!(result["outcome"], "conflict", "{label}: {answer}");
        assert_eq!(result["code"], "IMPOSSIBLE_TIME", "{label}: {answer}");
        assert_eq!(server.remaining("TK-1001-1", "MEAL").await, 2, "{label}");
        let (recorded,): (serde_json::Value,) = sqlx::query_as(
            "SELECT meta FROM merchant_redemptions WHERE scan_id = $1::uuid AND result = 'CONFLICT'",
        )
        .bind(&scan_id)
        .fetch_one(&server.pool)
        .await
        .expect("conflict row");
        assert_eq!(recorded["code"], "IMPOSSIBLE_TIME");
        // Uploaded again: the same answer, one row.
        let (_, again) = server
            .post_json("/device/decisions", Some(EAST_DEVICE), body)
            .await;
        assert_eq!(again["results"][0]["code"], "IMPOSSIBLE_TIME");
    }
    // A decision within the tolerance applies.
    let qr = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    let decided_at = now - chrono::Duration::seconds(30);
    let (_, answer) = server
        .post_json(
            "/device/decisions",
            Some(EAST_DEVICE),
            json!({"decisions": [{"scan_id": uuid::Uuid::new_v4().to_string(), "qr_token": qr.qr_token,
                "function_code": "MEAL", "decided_at": decided_at.to_rfc3339(), "operator_id": op}]}),
        )
        .await;
    assert_eq!(answer["results"][0]["outcome"], "applied", "{answer}");
    server.stop().await;
}

/// A channel issues (and so supersedes) QR codes only for the merchants it sells for.
#[tokio::test]
async fn a_channel_cannot_issue_for_another_merchants_ticket() {
    let server = TestServer::start_with(|s| s.admin_token = Some(ADMIN.to_owned())).await;
    let east = server.login("op-east").await;
    let qr = server.issue_qr("TK-1001-2", OTA_KEY).await;
    // The OTA channel now sells for M002 only.
    let seed = json!({"channels": [{"name": "ota-ctrip", "kind": "OTA", "api_key": OTA_KEY,
                                    "merchants": ["M002"]}]});
    let response = server
        .client
        .post(server.ops_url("/admin/seed"))
        .bearer_auth(ADMIN)
        .json(&seed)
        .send()
        .await
        .expect("seed");
    assert_eq!(response.status(), StatusCode::OK);
    let (status, body) = server
        .call("POST", "/tickets/TK-1001-2/qr", Some(OTA_KEY))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "FORBIDDEN");
    // Nothing was superseded: the QR M001's customer holds still redeems.
    let (status, body) = server.scan(&east, &qr.qr_token, "SHOW").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Its own merchant's tickets still issue.
    server.issue_qr("TK-M2", OTA_KEY).await;
    // A seed naming an unknown merchant, or none at all, is refused with the path.
    for (seed, path) in [
        (
            json!({"channels": [{"name": "x", "kind": "OTA", "api_key": "0123456789", "merchants": ["M404"]}]}),
            "channels[0].merchants[0]",
        ),
        (
            json!({"channels": [{"name": "x", "kind": "OTA", "api_key": "0123456789"}]}),
            "merchants",
        ),
    ] {
        let response = server
            .client
            .post(server.ops_url("/admin/seed"))
            .bearer_auth(ADMIN)
            .json(&seed)
            .send()
            .await
            .expect("seed");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: Value = response.json().await.expect("json");
        assert!(message(&body).contains(path), "{body}");
    }
    server.stop().await;
}

/// Sends `bytes` on a fresh connection and reads until the server closes it (or 20 s pass:
/// a bound so a broken server fails the test instead of hanging it).
async fn raw_exchange(server: &TestServer, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        stream.read_to_end(&mut answer),
    )
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn body_of(answer: &str) -> Value {
    let (_, body) = answer.split_once("\r\n\r\n").unwrap_or(("", ""));
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// Whether the server closes `stream` (read gives EOF or an error) within 20 s.
async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Slow and idle clients are disconnected, the number of connections is bounded (the one
/// over the limit gets a 503 with a body), and a huge announced body is 413 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_idle_and_surplus_connections_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start_with(|s| {
        s.http_header_timeout_secs = 1;
        s.http_idle_timeout_secs = 2;
        s.max_connections = 8;
    })
    .await;
    let address = server.base.trim_start_matches("http://").to_owned();
    // Slowloris: heads that never finish.
    let mut slow = Vec::new();
    for _ in 0..6 {
        let mut stream = tokio::net::TcpStream::connect(&address)
            .await
            .expect("connect");
        stream
            .write_all(b"POST /venue/scan HTTP/1.1\r\nHost: stile\r\nX-Slow: a")
            .await
            .expect("write");
        slow.push(stream);
    }
    for stream in &mut slow {
        assert!(closed_by_server(stream).await, "a slow head was left open");
    }
    // Idle keep-alive: one request, then silence.
    let mut idle = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: stile\r\n\r\n")
        .await
        .expect("write");
    assert!(
        closed_by_server(&mut idle).await,
        "an idle connection was left open"
    );

    // The limit: 8 open connections, the 9th is answered 503 and closed.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(
            tokio::net::TcpStream::connect(&address)
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let answer = raw_exchange(&server, b"GET /healthz HTTP/1.1\r\nHost: stile\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    assert_eq!(body_of(&answer)["code"], "TOO_MANY_REQUESTS", "{answer}");
    drop(held);
    // Freed slots serve again.
    let mut served = false;
    for _ in 0..50 {
        let answer = raw_exchange(
            &server,
            b"GET /healthz HTTP/1.1\r\nHost: stile\r\nConnection: close\r\n\r\n",
        )
        .await;
        if answer.starts_with("HTTP/1.1 200") {
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(served, "slots were not freed");

    // 10 GB announced, nothing sent: 413 now, not after the body.
    let answer = raw_exchange(
        &server,
        b"POST /venue/scan HTTP/1.1\r\nHost: stile\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(body_of(&answer)["code"], "PAYLOAD_TOO_LARGE", "{answer}");
    server.stop().await;
}

/// Refusals at the HTTP layer carry `{code, message}` like every other error: a malformed
/// request line, a target or headers too long (ours and hyper's own limits), a body that
/// trickles in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_layer_refusals_have_contract_bodies() {
    let server = TestServer::start_with(|s| s.http_request_timeout_secs = 1).await;
    let long_target = format!(
        "GET /healthz?{} HTTP/1.1\r\nHost: stile\r\n\r\n",
        "a".repeat(10_000)
    );
    let huge_target = format!(
        "GET /healthz?{} HTTP/1.1\r\nHost: stile\r\n\r\n",
        "a".repeat(100_000)
    );
    let long_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: stile\r\nX-Big: {}\r\n\r\n",
        "b".repeat(40_000)
    );
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("malformed request line", b"GARBAGE\r\n\r\n".to_vec(), "400"),
        ("target over 8 KiB", long_target.into_bytes(), "414"),
        ("target over hyper's buffer", huge_target.into_bytes(), "4"),
        ("headers over 32 KiB", long_header.into_bytes(), "431"),
        (
            "a body that never completes",
            b"POST /operators/login HTTP/1.1\r\nHost: stile\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user".to_vec(),
            "408",
        ),
    ];
    for (label, request, status) in cases {
        let answer = raw_exchange(&server, &request).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{label}: {answer}"
        );
        let body = body_of(&answer);
        assert_eq!(body["code"], "BAD_REQUEST", "{label}: {answer}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{label}"
        );
    }
    server.stop().await;
}

/// Query values have one spelling; the admin API takes JSON only.
#[tokio::test]
async fn loose_query_values_and_other_media_types_are_refused() {
    let server = TestServer::start_with(|s| s.admin_token = Some(ADMIN.to_owned())).await;
    let east = server.login("op-east").await;
    let get = |path: String, bearer: &'static str| {
        let server = &server;
        let bearer = if bearer == "operator" {
            east.clone()
        } else {
            bearer.to_owned()
        };
        async move {
            let response = server
                .client
                .get(server.url(&path))
                .bearer_auth(bearer)
                .send()
                .await
                .expect("get");
            (
                response.status(),
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    for query in [
        "limit=",
        "limit=+5",
        "limit=05",
        "date=-0001-01-01",
        "date=2026-1-1",
        "date=2026-02-30",
    ] {
        for path in ["/merchant/redemptions", "/merchant/redemptions.csv"] {
            if path.ends_with(".csv") && query.starts_with("limit") {
                continue;
            }
            let (status, body) = get(format!("{path}?{query}"), "operator").await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}?{query}: {body}");
            assert_eq!(body["code"], "BAD_REQUEST");
        }
    }
    for query in ["limit=", "limit=+5", "limit=1e3"] {
        let (status, body) = get(format!("/device/tickets?{query}"), EAST_DEVICE).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
    }
    // The spellings that are right still work, and an empty cursor is the first page.
    let (status, body) = get(
        "/merchant/redemptions?date=2026-12-02&limit=5&cursor=".into(),
        "operator",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let response = server
        .client
        .post(server.ops_url("/admin/seed"))
        .bearer_auth(ADMIN)
        .header("content-type", "text/plain")
        .body(common::FIXTURES)
        .send()
        .await
        .expect("seed");
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["code"], "UNSUPPORTED_MEDIA_TYPE");
    server.stop().await;
}

async fn admin(server: &TestServer, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = server.client.post(server.ops_url(path)).bearer_auth(ADMIN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("admin call");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls `check` for up to 10 s: revocations take effect within seconds, not at once on
/// every server (the standing cache lives 2 s).
async fn within_seconds<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

async fn scan_status(server: &TestServer, token: &str) -> StatusCode {
    server
        .post_json(
            "/venue/scan",
            Some(token),
            json!({"qr_token": "a.b.c", "function_code": "ENTRY", "venue_code": "GATE-EAST", "device_id": "dev-east-1"}),
        )
        .await
        .0
}

/// `/metrics` and the admin API answer on the operations listener only.
#[tokio::test]
async fn metrics_and_admin_are_off_the_public_port() {
    let server = TestServer::start_with(|s| s.admin_token = Some(ADMIN.to_owned())).await;
    for (method, path) in [
        ("GET", "/metrics"),
        ("POST", "/admin/seed"),
        ("POST", "/admin/devices/dev-east-1/revoke"),
    ] {
        let request = match method {
            "GET" => server.client.get(server.url(path)),
            _ => server
                .client
                .post(server.url(path))
                .bearer_auth(ADMIN)
                .json(&json!({})),
        };
        let response = request.send().await.expect("public");
        assert_eq!(
            response.status(),
            StatusCode::NOT_FOUND,
            "{path} on the public port"
        );
    }
    let response = server
        .client
        .get(server.ops_url("/metrics"))
        .send()
        .await
        .expect("ops");
    assert_eq!(response.status(), StatusCode::OK);
    let document: Value = server
        .client
        .get(server.url("/openapi.json"))
        .send()
        .await
        .expect("doc")
        .json()
        .await
        .expect("json");
    assert!(document["paths"]["/metrics"].is_null() && document["paths"]["/admin/seed"].is_null());
    server.stop().await;
}

/// Disabling an operator, or "log out everywhere", ends their tokens within seconds.
#[tokio::test]
async fn operator_tokens_can_be_revoked() {
    let server = TestServer::start_with(|s| s.admin_token = Some(ADMIN.to_owned())).await;
    let first = server.login("op-east").await;
    let second = server.login("op-east").await;
    assert_eq!(
        scan_status(&server, &first).await,
        StatusCode::BAD_REQUEST,
        "INVALID_QR: the token works"
    );
    // The operator logs out everywhere with one of their tokens: both stop working.
    let (status, _) = server
        .call("POST", "/operators/logout-everywhere", Some(&first))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for token in [&first, &second] {
        assert!(
            within_seconds(|| async {
                scan_status(&server, token).await == StatusCode::UNAUTHORIZED
            })
            .await,
            "a token outlived log out everywhere"
        );
    }
    let fresh = server.login("op-east").await;
    assert_eq!(scan_status(&server, &fresh).await, StatusCode::BAD_REQUEST);

    // Disabled: the token dies, the password no longer logs in, gates drop the operator.
    let (status, _) = admin(&server, "/admin/operators/op-east/disable", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        within_seconds(|| async { scan_status(&server, &fresh).await == StatusCode::UNAUTHORIZED })
            .await,
        "a disabled operator's token still works"
    );
    let (status, _) = login_status(&server, "op-east", common::PASSWORD).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, offline) = server
        .call("GET", "/device/operators", Some(EAST_DEVICE))
        .await;
    assert!(!offline.to_string().contains("op-east"), "{offline}");
    let (status, _) = admin(&server, "/admin/operators/op-east/enable", None).await;
    assert_eq!(status, StatusCode::OK);
    server.login("op-east").await;
    let (status, _) = admin(&server, "/admin/operators/nobody/disable", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}

async fn device_status(server: &TestServer, credential: &str, path: &str) -> StatusCode {
    server.call("GET", path, Some(credential)).await.0
}

/// A lost handheld is revoked at once everywhere; a secret rotates with an overlap; a new
/// device enrolls with a one-time, expiring code.
#[tokio::test]
async fn device_credentials_are_revoked_rotated_and_enrolled() {
    let server = TestServer::start_with(|s| s.admin_token = Some(ADMIN.to_owned())).await;
    let east = server.login("op-east").await;
    let qr = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;

    // Rotation: the new secret works at once, the old one until the overlap ends.
    let (status, rotated) = admin(
        &server,
        "/admin/devices/dev-west-1/rotate-secret",
        Some(json!({"overlap_secs": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let fresh = format!("dev-west-1:{}", rotated["secret"].as_str().expect("secret"));
    assert_eq!(
        device_status(&server, &fresh, "/device/keys").await,
        StatusCode::OK
    );
    assert!(
        within_seconds(|| async {
            device_status(&server, "dev-west-1:dev-secret-2", "/device/keys").await
                == StatusCode::UNAUTHORIZED
        })
        .await,
        "the old secret outlived its overlap"
    );
    assert_eq!(
        device_status(&server, &fresh, "/device/keys").await,
        StatusCode::OK
    );

    // Revocation: every endpoint refuses the device at once.
    assert_eq!(
        device_status(&server, EAST_DEVICE, "/device/tickets").await,
        StatusCode::OK
    );
    let (status, _) = admin(&server, "/admin/devices/dev-east-1/revoke", None).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/device/tickets",
        "/device/keys",
        "/device/operators",
        "/device/history",
    ] {
        assert_eq!(
            device_status(&server, EAST_DEVICE, path).await,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    let (status, _) = server
        .post_json(
            "/device/decisions",
            Some(EAST_DEVICE),
            json!({"decisions": []}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = server.scan(&east, &qr.qr_token, "ENTRY").await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a scan from a revoked device: {body}"
    );

    // Enrollment of a new device: one exchange, then the code is spent.
    let (status, enrollment) = admin(
        &server,
        "/admin/devices/dev-new-1/enrollment",
        Some(json!({"merchant_code": "M001", "venue_code": "GATE-EAST"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{enrollment}");
    let code = enrollment["code"].as_str().expect("code").to_owned();
    let exchange = json!({"device_id": "dev-new-1", "code": code});
    let (status, enrolled) = server
        .post_json("/device/enroll", None, exchange.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{enrolled}");
    let credential = format!("dev-new-1:{}", enrolled["secret"].as_str().expect("secret"));
    assert_eq!(
        device_status(&server, &credential, "/device/tickets").await,
        StatusCode::OK
    );
    let (status, _) = server.post_json("/device/enroll", None, exchange).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a spent code");
    // An expired code, a wrong code and another merchant's device are refused.
    let (_, short) = admin(
        &server,
        "/admin/devices/dev-new-2/enrollment",
        Some(json!({"merchant_code": "M001", "venue_code": "GATE-WEST", "ttl_secs": 1})),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (status, _) = server
        .post_json(
            "/device/enroll",
            None,
            json!({"device_id": "dev-new-2", "code": short["code"]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "an expired code");
    let (status, _) = server
        .post_json(
            "/device/enroll",
            None,
            json!({"device_id": "dev-new-1", "code": "guessed-code"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = admin(
        &server,
        "/admin/devices/dev-other-1/enrollment",
        Some(json!({"merchant_code": "M001", "venue_code": "GATE-EAST"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "another merchant's device");
    server.stop().await;
}

async fn plaintext_keys(server: &TestServer) -> i64 {
    let (count,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM signing_keys WHERE private_key IS NOT NULL")
            .fetch_one(&server.pool)
            .await
            .expect("count");
    count
}

/// Signing keys are sealed with the key-encryption key: a database dump alone cannot sign,
/// a server without the KEK cannot start, and the KEK rotates (old and new given for one
/// restart) without a token going invalid.
#[tokio::test]
async fn signing_keys_are_sealed_at_rest_and_the_kek_rotates() {
    use central_server::kek::{Kek, KeyEncryption};
    let dir = tempfile::tempdir().expect("dir");
    let (old_kek, new_kek) = (dir.path().join("kek-old"), dir.path().join("kek-new"));
    std::fs::write(&old_kek, Kek::generate_hex()).expect("write");
    std::fs::write(&new_kek, Kek::generate_hex()).expect("write");

    // Before encryption: the key is stored in the clear.
    let server = TestServer::start().await;
    let url = server.database_url.clone();
    let east = server.login("op-east").await;
    let before = server.issue_qr("TK-1001-2", OTA_KEY).await;
    assert_eq!(plaintext_keys(&server).await, 1);
    server.stop().await;

    // With a KEK: sealed at start, nothing in the clear, a dump alone cannot sign.
    let kek = old_kek.clone();
    let server = TestServer::start_on(&url, |s| s.key_encryption_key_file = Some(kek)).await;
    assert_eq!(plaintext_keys(&server).await, 0);
    assert!(
        central_server::keys::active_signer(&server.pool, &KeyEncryption::none())
            .await
            .is_err(),
        "the database alone opened the key"
    );
    let (status, body) = server.scan(&east, &before.qr_token, "SHOW").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a token from before still redeems: {body}"
    );
    let during = server.issue_qr("TK-1001-2", OTA_KEY).await;
    server.stop().await;

    // Without the KEK the server refuses to start, naming the missing key.
    let settings = central_server::config::Settings::for_database(&url).expect("settings");
    let refused = central_server::build_state(settings).await;
    let error = refused.err().expect("started without its KEK").to_string();
    assert!(error.contains("key-encryption key"), "{error}");

    // Rotation: new as current, old as previous for one start; then the new one alone.
    let (current, previous) = (new_kek.clone(), old_kek.clone());
    let server = TestServer::start_on(&url, |s| {
        s.key_encryption_key_file = Some(current);
        s.previous_key_encryption_key_file = Some(previous);
    })
    .await;
    server.stop().await;
    let current = new_kek.clone();
    let server = TestServer::start_on(&url, |s| s.key_encryption_key_file = Some(current)).await;
    let (status, body) = server.scan(&east, &during.qr_token, "SHOW").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.issue_qr("TK-1001-2", OTA_KEY).await;
    let (kek_ids,): (i64,) = sqlx::query_as("SELECT count(DISTINCT kek_id) FROM signing_keys")
        .fetch_one(&server.pool)
        .await
        .expect("kek ids");
    assert_eq!(kek_ids, 1, "every key resealed with the new KEK");
    server.stop().await;
    // The old KEK alone no longer opens anything.
    let old = old_kek.clone();
    let mut settings = central_server::config::Settings::for_database(&url).expect("settings");
    settings.key_encryption_key_file = Some(old);
    assert!(central_server::build_state(settings).await.is_err());
}

/// Nothing a client sends can forge a log line: identifiers with a newline are refused
/// before anything is logged, and the text log of the real binary has no line the client
/// wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_write_a_line_into_the_log() {
    let url = common::seeded_database().await;
    let dir = tempfile::tempdir().expect("dir");
    let log_path = dir.path().join("central.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_central-server"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &url)
        .env("STILE_OPS_LISTEN", "127.0.0.1:0")
        .env("STILE_LOG_FORMAT", "text")
        .env("RUST_LOG", "debug,sqlx=warn")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..300 {
        if client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "server did not start");
    const FORGED: &str = "FORGED-LOG-LINE";
    let inject = format!("x\nINFO central_server: {FORGED}");
    let login: Value = client
        .post(format!("{base}/operators/login"))
        .json(&json!({"username": "op-east", "password": common::PASSWORD}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    let token = login["token"].as_str().expect("token").to_owned();
    let attempts = [
        json!({"username": inject, "password": "x"}),
        json!({"username": "op-east", "password": inject}),
    ];
    for body in attempts {
        client
            .post(format!("{base}/operators/login"))
            .json(&body)
            .send()
            .await
            .expect("login");
    }
    for field in [
        "device_id",
        "venue_code",
        "function_code",
        "scan_id",
        "qr_token",
    ] {
        let mut body = json!({"qr_token": "a.b.c", "function_code": "ENTRY",
                              "venue_code": "GATE-EAST", "device_id": "dev-east-1"});
        body[field] = json!(inject);
        client
            .post(format!("{base}/venue/scan"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .expect("scan");
    }
    for path in [
        "/merchant/orders/x%0AINFO%20FORGED-LOG-LINE",
        "/venue/scan/x%0AFORGED-LOG-LINE",
    ] {
        client
            .get(format!("{base}{path}"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("get");
    }
    client
        .get(format!("{base}/device/tickets"))
        .bearer_auth(format!("dev{FORGED}:secret"))
        .send()
        .await
        .expect("device");
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log_path).expect("log");
    assert!(
        text.contains("operator logged in"),
        "the log was written: {text}"
    );
    for line in text.lines() {
        assert!(
            !line.trim_start().starts_with("INFO central_server: FORGED"),
            "a forged line: {line}"
        );
        assert!(!line.contains(FORGED), "client text in the log: {line}");
    }
}
