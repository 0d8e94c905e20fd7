//! The redemption core under retries and races: scan_id idempotency, 64 concurrent scans of
//! one (jti, function_code), and the same race across two server processes.

mod common;

use common::{seeded_database, TestServer, OTA_KEY};
use reqwest::StatusCode;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_retried_scan_id_gets_the_original_decision_not_already_redeemed() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    let qr = server.issue_qr("TK-CONC", OTA_KEY).await;
    let scan_id = uuid::Uuid::new_v4().to_string();
    let (first_status, first) = server
        .scan_with(&operator, &qr.qr_token, "ENTRY", Some(&scan_id))
        .await;
    assert_eq!(first_status, StatusCode::OK);
    let (again_status, again) = server
        .scan_with(&operator, &qr.qr_token, "ENTRY", Some(&scan_id))
        .await;
    assert_eq!(again_status, StatusCode::OK);
    assert_eq!(again, first, "the retry returns the original answer");
    assert_eq!(
        server.remaining("TK-CONC", "ENTRY").await,
        4,
        "one decrement"
    );
    // A new scan_id for the same QR and function is a new scan: ALREADY_REDEEMED.
    let (status, body) = server
        .scan_with(
            &operator,
            &qr.qr_token,
            "ENTRY",
            Some(&uuid::Uuid::new_v4().to_string()),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("ALREADY_REDEEMED"))
    );
    // The same scan_id for a different function or token: 422.
    let (status, body) = server
        .scan_with(&operator, &qr.qr_token, "MEAL", Some(&scan_id))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["code"], "SCAN_ID_REUSED");
    let other = server.issue_qr("TK-1001-2", OTA_KEY).await;
    let (status, _) = server
        .scan_with(&operator, &other.qr_token, "ENTRY", Some(&scan_id))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // A scan_id that is not a UUID.
    let (status, body) = server
        .scan_with(&operator, &qr.qr_token, "ENTRY", Some("abc"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["message"]
        .as_str()
        .is_some_and(|m| m.contains("scan_id")));
    server.stop().await;
}

#[tokio::test]
async fn retries_racing_the_first_request_get_its_answer() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    let qr = server.issue_qr("TK-CONC", OTA_KEY).await;
    let scan_id = uuid::Uuid::new_v4().to_string();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (client, url, operator, token, scan_id) = (
            server.client.clone(),
            server.url("/venue/scan"),
            operator.clone(),
            qr.qr_token.clone(),
            scan_id.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(operator)
                .json(
                    &json!({"qr_token": token, "function_code": "ENTRY", "venue_code": "GATE-EAST",
                              "device_id": "dev-east-1", "scan_id": scan_id}),
                )
                .send()
                .await
                .expect("request");
            (
                response.status(),
                response.json::<serde_json::Value>().await.expect("json"),
            )
        }));
    }
    for task in tasks {
        let (status, body) = task.await.expect("task");
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["code"], "SUCCESS");
    }
    assert_eq!(server.remaining("TK-CONC", "ENTRY").await, 4);
    server.stop().await;
}

async fn race(
    client: &reqwest::Client,
    urls: &[String],
    operator: &str,
    token: &str,
    n: usize,
) -> Vec<String> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let (client, url, operator, token) = (
            client.clone(),
            urls[i % urls.len()].clone(),
            operator.to_owned(),
            token.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let response = client.post(format!("{url}/venue/scan")).bearer_auth(operator)
                .json(&json!({"qr_token": token, "function_code": "ENTRY", "venue_code": "GATE-EAST", "device_id": "dev-east-1"}))
                .send().await.expect("request");
            let body: serde_json::Value = response.json().await.expect("json");
            body["code"].as_str().unwrap_or("?").to_owned()
        }));
    }
    let mut codes = Vec::new();
    for task in tasks {
        codes.push(task.await.expect("task"));
    }
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_scans_of_one_qr_redeem_exactly_once() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    let qr = server.issue_qr("TK-CONC", OTA_KEY).await;
    let codes = race(
        &server.client,
        std::slice::from_ref(&server.base),
        &operator,
        &qr.qr_token,
        64,
    )
    .await;
    let successes = codes.iter().filter(|c| *c == "SUCCESS").count();
    let already = codes.iter().filter(|c| *c == "ALREADY_REDEEMED").count();
    assert_eq!((successes, already), (1, 63), "{codes:?}");
    assert_eq!(
        server.remaining("TK-CONC", "ENTRY").await,
        4,
        "exactly one decrement"
    );
    let (events,): (i64,) = sqlx::query_as("SELECT count(*) FROM redemption_events WHERE jti = $1")
        .bind(qr.jti.as_str())
        .fetch_one(&server.pool)
        .await
        .expect("count");
    assert_eq!(events, 1);
    server.stop().await;
}

/// A `central-server serve` process of the binary under test.
struct ServerProcess {
    child: Child,
    base: String,
}

impl ServerProcess {
    async fn start(database_url: &str) -> ServerProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_central-server"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("STILE_OPS_LISTEN", "127.0.0.1:0")
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn central-server");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(response) = client.get(format!("{base}/readyz")).send().await {
                if response.status().is_success() {
                    break;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "server process did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ServerProcess { child, base }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_server_processes_on_one_database_redeem_exactly_once() {
    let url = seeded_database().await;
    let first = ServerProcess::start(&url).await;
    let second = ServerProcess::start(&url).await;
    let client = reqwest::Client::new();
    // Log in on one process, use the token on both: they share the JWT key via the database.
    let login: serde_json::Value = client
        .post(format!("{}/operators/login", first.base))
        .json(&json!({"username": "op-east", "password": common::PASSWORD}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    let operator = login["token"].as_str().expect("token").to_owned();
    let pool = central_server::db::connect(&url, 2).await.expect("connect");
    for round in 0..3 {
        let qr: stile_shared::api::IssuedQr = client
            .post(format!("{}/tickets/TK-CONC/qr", second.base))
            .bearer_auth(OTA_KEY)
            .send()
            .await
            .expect("issue")
            .json()
            .await
            .expect("json");
        let codes = race(
            &client,
            &[first.base.clone(), second.base.clone()],
            &operator,
            &qr.qr_token,
            32,
        )
        .await;
        let successes = codes.iter().filter(|c| *c == "SUCCESS").count();
        assert_eq!(successes, 1, "round {round}: {codes:?}");
        assert!(
            codes
                .iter()
                .all(|c| c == "SUCCESS" || c == "ALREADY_REDEEMED"),
            "{codes:?}"
        );
    }
    let (remaining,): (i32,) = sqlx::query_as(
        "SELECT remaining_uses FROM entitlements e JOIN tickets t ON t.id = e.ticket_id WHERE t.ticket_code = 'TK-CONC'",
    )
    .fetch_one(&pool)
    .await
    .expect("remaining");
    assert_eq!(remaining, 2, "three rounds, three decrements");
    drop((first, second));
}
