//! The API's edges: every kind of bad input gets the contract's error body with the right
//! 4xx, operations endpoints answer, seeding is idempotent, and the CLI refuses bad settings
//! and bad seed files with the documented exit codes.

mod common;

use common::{seeded_database, TestServer, FIXTURES, MINIAPP_KEY};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::process::Command;

async fn raw(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    bearer: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut request = server.client.request(method, server.url(path)).body(body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
    (status, body)
}

fn assert_error(
    case: &str,
    (status, body): &(StatusCode, Value),
    expected_status: StatusCode,
    code: &str,
) {
    assert_eq!(*status, expected_status, "{case}: {body}");
    assert_eq!(body["code"], code, "{case}: {body}");
    let message = body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{case}: no message in {body}"));
    for leak in ["sqlx", "panicked", "/src/", "SELECT", "postgres"] {
        assert!(
            !message.contains(leak),
            "{case}: message leaks {leak:?}: {message}"
        );
    }
}

#[tokio::test]
async fn bad_input_gets_a_contract_error_body_never_a_500() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    let qr = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    let json_type = Some("application/json");
    let post = reqwest::Method::POST;
    let good = |extra: Value| {
        let mut body = json!({"qr_token": qr.qr_token, "function_code": "ENTRY", "venue_code": "GATE-EAST", "device_id": "dev-east-1"});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                body.insert(k.clone(), v.clone());
            }
        }
        serde_json::to_vec(&body).expect("json")
    };

    let case = raw(
        &server,
        post.clone(),
        "/venue/scan",
        Some(&operator),
        json_type,
        b"{not json".to_vec(),
    )
    .await;
    assert_error(
        "malformed json",
        &case,
        StatusCode::BAD_REQUEST,
        "BAD_REQUEST",
    );

    let case = raw(
        &server,
        post.clone(),
        "/venue/scan",
        Some(&operator),
        json_type,
        br#"{"function_code": "ENTRY", "venue_code": "GATE-EAST", "device_id": "dev-east-1"}"#
            .to_vec(),
    )
    .await;
    assert_error(
        "missing field",
        &case,
        StatusCode::BAD_REQUEST,
        "BAD_REQUEST",
    );
    assert!(
        case.1["message"]
            .as_str()
            .is_some_and(|m| m.contains("qr_token")),
        "{}",
        case.1
    );

    let case = raw(
        &server,
        post.clone(),
        "/venue/scan",
        Some(&operator),
        json_type,
        good(json!({"venue_code": 42})),
    )
    .await;
    assert_error("wrong type", &case, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    assert!(
        case.1["message"]
            .as_str()
            .is_some_and(|m| m.contains("venue_code")),
        "{}",
        case.1
    );

    let case = raw(
        &server,
        post.clone(),
        "/venue/scan",
        Some(&operator),
        json_type,
        good(json!({"function_code": "entry; drop"})),
    )
    .await;
    assert_error(
        "malformed function code",
        &case,
        StatusCode::BAD_REQUEST,
        "BAD_REQUEST",
    );
    assert!(
        case.1["message"]
            .as_str()
            .is_some_and(|m| m.contains("function_code")),
        "{}",
        case.1
    );

    let case = raw(
        &server,
        post.clone(),
        "/venue/scan",
        Some(&operator),
        json_type,
        good(json!({"venue_code": ""})),
    )
    .await;
    assert_error("empty venue", &case, StatusCode::BAD_REQUEST, "BAD_REQUEST");

    let huge = good(json!({"padding": "x".repeat(70 * 1024)}));
    let case = raw(
        &server,
        post.clone(),
        "/venue/scan",
        Some(&operator),
        json_type,
        huge,
    )
    .await;
    assert_error(
        "oversized body",
        &case,
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
    );

    let case = raw(
        &server,
        post.clone(),
        "/venue/scan",
        Some(&operator),
        Some("text/plain"),
        good(json!({})),
    )
    .await;
    assert_error(
        "wrong content type",
        &case,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UNSUPPORTED_MEDIA_TYPE",
    );

    let case = raw(
        &server,
        post.clone(),
        "/venue/scan",
        None,
        json_type,
        good(json!({})),
    )
    .await;
    assert_error(
        "no credential",
        &case,
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
    );
    assert_eq!(case.1["message"], "登录已失效，请重新登录");
    let case = raw(
        &server,
        post.clone(),
        "/venue/scan",
        Some("not.a.jwt"),
        json_type,
        good(json!({})),
    )
    .await;
    assert_error(
        "bad credential",
        &case,
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
    );

    let case = raw(
        &server,
        post.clone(),
        "/venue/scan",
        Some(&operator),
        json_type,
        good(json!({"device_id": "dev-other-1"})),
    )
    .await;
    assert_error(
        "device of another merchant",
        &case,
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
    );
    let case = raw(
        &server,
        post.clone(),
        "/venue/scan",
        Some(&operator),
        json_type,
        good(json!({"device_id": "dev-west-1"})),
    )
    .await;
    assert_error(
        "device bound to another venue",
        &case,
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
    );

    let case = raw(
        &server,
        reqwest::Method::GET,
        "/no/such/path",
        None,
        None,
        vec![],
    )
    .await;
    assert_error("unknown path", &case, StatusCode::NOT_FOUND, "NOT_FOUND");
    let case = raw(
        &server,
        reqwest::Method::GET,
        "/venue/scan",
        None,
        None,
        vec![],
    )
    .await;
    assert_error(
        "wrong method",
        &case,
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
    );
    let case = raw(
        &server,
        reqwest::Method::DELETE,
        "/keys",
        None,
        None,
        vec![],
    )
    .await;
    assert_error(
        "wrong method on keys",
        &case,
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
    );

    let case = raw(
        &server,
        post.clone(),
        "/operators/login",
        None,
        json_type,
        br#"{"username": "", "password": "x"}"#.to_vec(),
    )
    .await;
    assert_error(
        "empty username",
        &case,
        StatusCode::BAD_REQUEST,
        "BAD_REQUEST",
    );
    let case = raw(
        &server,
        post.clone(),
        "/operators/login",
        None,
        json_type,
        br#"[1, 2]"#.to_vec(),
    )
    .await;
    assert_error("array body", &case, StatusCode::BAD_REQUEST, "BAD_REQUEST");

    // English, when asked.
    let response = server
        .client
        .get(server.url("/nowhere"))
        .header("Accept-Language", "en")
        .send()
        .await
        .expect("request");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body, json!({"code": "NOT_FOUND", "message": "Not found"}));

    // Nothing above redeemed anything.
    assert_eq!(server.remaining("TK-1001-1", "ENTRY").await, 1);
    server.stop().await;
}

#[tokio::test]
async fn operations_endpoints_answer() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    let qr = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    server.scan(&operator, &qr.qr_token, "ENTRY").await;
    server.scan(&operator, &qr.qr_token, "ENTRY").await;
    let get = |path: &'static str| {
        let server = &server;
        async move {
            let response = server
                .client
                .get(server.url(path))
                .send()
                .await
                .expect("request");
            (response.status(), response.text().await.expect("text"))
        }
    };
    let (status, body) = get("/healthz").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"status":"ok"}"#)
    );
    let (status, body) = get("/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"status":"ready"}"#)
    );
    // Metrics are on the operations listener only, never on the public port.
    let (status, _) = get("/metrics").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let response = server
        .client
        .get(server.ops_url("/metrics"))
        .send()
        .await
        .expect("ops metrics");
    let status = response.status();
    let metrics = response.text().await.expect("text");
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics.contains(r#"stile_scan_decisions_total{code="SUCCESS"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"stile_scan_decisions_total{code="ALREADY_REDEEMED"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("stile_http_request_duration_seconds_bucket"),
        "{metrics}"
    );
    let (status, keys) = get("/keys").await;
    assert_eq!(status, StatusCode::OK);
    let keys: Value = serde_json::from_str(&keys).expect("jwks");
    assert_eq!(keys["keys"][0]["kty"], "OKP");
    assert_eq!(keys["keys"][0]["crv"], "Ed25519");
    assert_eq!(keys["keys"][0]["alg"], "EdDSA");
    assert_eq!(keys["keys"][0]["use"], "sig");
    let (status, doc) = get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_str(&doc).expect("openapi");
    for path in [
        "/operators/login",
        "/venue/scan",
        "/qr/decrypt",
        "/tickets/{ticket_code}/qr",
        "/keys",
        "/healthz",
        "/readyz",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    // The merchant console's paths exactly as its card names them (generated clients and
    // the card's Postman collection use these names), path parameters included.
    let card = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/docs/seeds/merchant-redemption-console.md");
    let mut console_paths = vec![
        "/merchant/tickets/scan".to_owned(),
        "/merchant/orders/{orderId}".to_owned(),
        "/merchant/redemptions".to_owned(),
    ];
    if let Ok(text) = std::fs::read_to_string(&card) {
        let line = text
            .lines()
            .find(|line| line.starts_with("oas_paths:"))
            .expect("the card lists its oas_paths");
        let listed: Vec<String> =
            serde_json::from_str(line.trim_start_matches("oas_paths:").trim()).expect("a list");
        assert_eq!(listed, console_paths, "the card's paths changed");
        console_paths = listed;
    }
    for path in &console_paths {
        let item = &doc["paths"][path.as_str()];
        assert!(item.is_object(), "{path} missing from the OpenAPI document");
        let template: Vec<String> = path
            .split('/')
            .filter_map(|part| part.strip_prefix('{')?.strip_suffix('}'))
            .map(str::to_owned)
            .collect();
        let declared: Vec<String> = item
            .as_object()
            .into_iter()
            .flat_map(|ops| ops.values())
            .flat_map(|op| op["parameters"].as_array().cloned().unwrap_or_default())
            .filter(|p| p["in"] == "path")
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(declared, template, "path parameters of {path}");
    }
    let merchant_paths: Vec<&String> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .filter(|p| p.starts_with("/merchant/") && !p.ends_with(".csv"))
        .collect();
    assert_eq!(merchant_paths.len(), 4, "{merchant_paths:?}");
    for status in ["200", "400", "401", "403", "409", "413", "415", "422"] {
        assert!(
            doc["paths"]["/venue/scan"]["post"]["responses"][status].is_object(),
            "/venue/scan {status}"
        );
    }
    server.stop().await;
}

async fn dump(pool: &sqlx::PgPool) -> Vec<String> {
    let mut rows = Vec::new();
    for table in [
        "merchants",
        "locations",
        "operators",
        "devices",
        "channels",
        "orders",
        "tickets",
        "entitlements",
        "signing_keys",
    ] {
        let table_rows: Vec<(String,)> = sqlx::query_as(&format!(
            "SELECT row_to_json(t)::text FROM {table} t ORDER BY id"
        ))
        .fetch_all(pool)
        .await
        .expect("dump");
        rows.extend(
            table_rows
                .into_iter()
                .map(|(row,)| format!("{table}: {row}")),
        );
    }
    rows
}

#[tokio::test]
async fn seeding_the_same_file_twice_changes_nothing_and_use_is_never_rewound() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    let qr = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    server.scan(&operator, &qr.qr_token, "ENTRY").await;
    server.scan(&operator, &qr.qr_token, "MEAL").await;
    let before = dump(&server.pool).await;
    let file = central_server::seed::parse(FIXTURES).expect("parse");
    let summary = central_server::seed::apply(&server.pool, &file)
        .await
        .expect("apply");
    assert!(summary.changed.iter().all(|(_, n)| *n == 0), "{summary}");
    assert_eq!(
        dump(&server.pool).await,
        before,
        "a second load changed rows"
    );

    // A changed file: new name and password apply, a VOID applies, use is kept.
    let changed = FIXTURES
        .replace("示例乐园", "示例乐园（新）")
        .replace(
            r#""ticket_code": "TK-1001-1", "channel": "MINIAPP", "status": "ACTIVATED""#,
            r#""ticket_code": "TK-1001-1", "channel": "MINIAPP", "status": "VOID""#,
        )
        .replace(
            r#"{"username": "op-other", "password": "correct horse"}"#,
            r#"{"username": "op-other", "password": "battery staple"}"#,
        );
    let summary = central_server::seed::apply(
        &server.pool,
        &central_server::seed::parse(&changed).expect("parse"),
    )
    .await
    .expect("apply");
    assert!(summary.to_string().contains("merchants: 1"), "{summary}");
    let (name,): (String,) = sqlx::query_as("SELECT name FROM merchants WHERE code = 'M001'")
        .fetch_one(&server.pool)
        .await
        .expect("merchant");
    assert_eq!(name, "示例乐园（新）");
    let (status, current_jti): (String, Option<String>) =
        sqlx::query_as("SELECT status, current_jti FROM tickets WHERE ticket_code = 'TK-1001-1'")
            .fetch_one(&server.pool)
            .await
            .expect("ticket");
    assert_eq!(status, "VOID");
    assert_eq!(
        current_jti.as_deref(),
        Some(qr.jti.as_str()),
        "current_jti kept"
    );
    assert_eq!(
        server.remaining("TK-1001-1", "MEAL").await,
        1,
        "remaining_uses kept"
    );
    let (status, _) = server
        .post_json(
            "/operators/login",
            None,
            json!({"username": "op-other", "password": "battery staple"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn a_bad_seed_file_is_refused_whole() {
    let url = seeded_database().await;
    let pool = central_server::db::connect(&url, 2).await.expect("connect");
    let before = dump(&pool).await;
    // Valid JSON, valid shape, but a device names a venue the merchant does not have: found
    // only while applying, after the merchant rename was already written in the transaction.
    let bad = FIXTURES.replace("示例乐园", "改名").replace(
        r#""device_id": "dev-west-1", "venue_code": "GATE-WEST""#,
        r#""device_id": "dev-west-1", "venue_code": "GATE-NOWHERE""#,
    );
    let file = central_server::seed::parse(&bad).expect("shape is valid");
    match central_server::seed::apply(&pool, &file).await {
        Err(central_server::seed::SeedError::Invalid { path, .. }) => {
            assert_eq!(path, "merchants[0].devices[1].venue_code")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        dump(&pool).await,
        before,
        "nothing of a refused file is loaded"
    );
    let bad_zone = FIXTURES.replace(
        r#""timezone": "Asia/Shanghai""#,
        r#""timezone": "Mars/Olympus""#,
    );
    let file = central_server::seed::parse(&bad_zone).expect("shape is valid");
    match central_server::seed::apply(&pool, &file).await {
        Err(central_server::seed::SeedError::Invalid { path, .. }) => {
            assert_eq!(path, "merchants[0].timezone")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn the_cli_exits_64_on_a_bad_setting_and_65_on_a_bad_seed_file() {
    let binary = env!("CARGO_BIN_EXE_central-server");
    let output = Command::new(binary)
        .args(["serve"])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("STILE_LISTEN", "not-an-address")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("listen"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let output = Command::new(binary)
        .args(["serve"])
        .env_remove("DATABASE_URL")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("DATABASE_URL"));

    let output = Command::new(binary)
        .args(["frobnicate"])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(64));

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.json");
    std::fs::write(
        &file,
        r#"{"merchants": [{"code": "WAY-TOO-LONG", "name": "x"}]}"#,
    )
    .expect("write");
    let output = Command::new(binary)
        .args(["seed", file.to_str().expect("path")])
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(65));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("merchants[0].code") && stderr.contains("nothing loaded"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_cli_seeds_and_rotates_keys_against_a_real_database() {
    let url = stile_testkit::Cluster::shared()
        .fresh_database(&central_server::db::MIGRATOR)
        .await
        .expect("db");
    let binary = env!("CARGO_BIN_EXE_central-server");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seed.json");
    for _ in 0..2 {
        let output = Command::new(binary)
            .args(["seed", example])
            .env("DATABASE_URL", &url)
            .output()
            .expect("run");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let second = Command::new(binary)
        .args(["seed", example])
        .env("DATABASE_URL", &url)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(
        stdout.contains("merchants: 0") && stdout.contains("tickets: 0"),
        "{stdout}"
    );
    let rotate = Command::new(binary)
        .args(["keys", "rotate"])
        .env("DATABASE_URL", &url)
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&rotate.stdout).contains("k2"));
    let list = Command::new(binary)
        .args(["keys", "list"])
        .env("DATABASE_URL", &url)
        .output()
        .expect("run");
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains("k1\tpublished") && list.contains("k2\tactive"),
        "{list}"
    );
}

#[tokio::test]
async fn the_admin_api_loads_seed_files_with_the_same_rules() {
    const ADMIN: &str = "admin-token-admin-token-admin-token";
    let server = TestServer::start_with(|s| s.admin_token = Some(ADMIN.to_owned())).await;
    let post = |token: &'static str, body: String| {
        let server = &server;
        async move {
            let response = server
                .client
                .post(server.ops_url("/admin/seed"))
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("request");
            (
                response.status(),
                response.json::<Value>().await.expect("json"),
            )
        }
    };
    let (status, body) = post(ADMIN, FIXTURES.to_owned()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["changed"]
            .as_object()
            .expect("changed")
            .values()
            .all(|n| n == 0),
        "already loaded: {body}"
    );
    let added = FIXTURES.replace(r#"{"name": "王五", "tickets": ["#, r#"{"name": "王五", "tickets": [
        {"ticket_code": "TK-NEW", "channel": "OTA", "status": "ACTIVATED", "entitlements": [{"function_code": "ENTRY", "name": "入园", "total_uses": 1}]},"#);
    let (status, body) = post(ADMIN, added).await;
    assert_eq!(
        (status, body["changed"]["tickets"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{body}"
    );
    let (status, body) = post(
        ADMIN,
        r#"{"orders": [{"order_id": "O9", "merchant": "NOPE"}]}"#.to_owned(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("orders[0].merchant")),
        "{body}"
    );
    let (status, _) = post("wrong-token", FIXTURES.to_owned()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    server.stop().await;

    let off = TestServer::start().await;
    let response = off
        .client
        .post(off.ops_url("/admin/seed"))
        .bearer_auth(ADMIN)
        .body(FIXTURES)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    off.stop().await;
}

#[test]
fn the_openapi_document_describes_the_check_in_rules() {
    let doc = central_server::openapi::document();
    let schemas = &doc["components"]["schemas"];
    for name in ["EntitlementRules", "DailyWindow", "SyncedRules"] {
        assert!(schemas.get(name).is_some(), "{name} in the document");
    }
    let codes = doc.to_string();
    for code in [
        "NOT_YET_VALID",
        "NO_LONGER_VALID",
        "OUTSIDE_HOURS",
        "DAILY_LIMIT",
        "TOO_SOON",
    ] {
        assert!(codes.contains(code), "{code} in the document");
    }
    assert!(schemas["TicketFeedPage"]["properties"]
        .get("time_zone")
        .is_some());
    assert!(schemas["OrderEntitlementView"]["properties"]
        .get("rules")
        .is_some());
}

#[test]
fn the_openapi_document_describes_venues_exits_and_occupancy() {
    let doc = central_server::openapi::document();
    let schemas = &doc["components"]["schemas"];
    for name in [
        "Direction",
        "Passage",
        "SyncedVenue",
        "VenueOccupancy",
        "OccupancyPoint",
        "OccupancyReport",
    ] {
        assert!(schemas.get(name).is_some(), "{name} in the document");
    }
    let text = doc.to_string();
    for code in ["VENUE_FULL", "NOT_INSIDE"] {
        assert!(text.contains(code), "{code} in the document");
    }
    for (schema, field) in [
        ("ScanRequest", "direction"),
        ("OfflineDecision", "direction"),
        ("TicketFeedPage", "venue"),
        ("SyncedTicket", "passage"),
        ("EntitlementRules", "reentry"),
    ] {
        assert!(
            schemas[schema]["properties"].get(field).is_some(),
            "{schema}.{field}"
        );
    }
    for path in ["/merchant/occupancy", "/device/occupancy"] {
        assert!(doc["paths"][path]["get"].is_object(), "{path}");
    }
}

#[test]
fn the_readme_code_table_is_the_codes() {
    use stile_shared::{DecisionCode, Lang};
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README");
    let section = readme
        .split("## Decision codes")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Decision codes section");
    for code in DecisionCode::ALL {
        let row = format!("| `{}` |", code.as_str());
        let line = section
            .lines()
            .find(|line| line.starts_with(&row))
            .unwrap_or_else(|| panic!("{code} has no row"));
        assert!(
            line.contains(&format!(
                "| {} | {} |",
                code.message(Lang::ZhCn),
                code.message(Lang::En)
            )),
            "{line}"
        );
    }
    let rows = section.lines().filter(|l| l.starts_with("| `")).count();
    assert_eq!(
        rows,
        DecisionCode::ALL.len(),
        "no row for a code that does not exist"
    );
}
