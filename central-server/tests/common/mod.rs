//! What every central-server test needs: a real server on port 0 over a fresh database of
//! the throwaway cluster, seeded with the fixtures below, and a small HTTP client.
#![allow(dead_code)] // each test binary uses its own subset of these helpers

use central_server::config::Settings;
use central_server::{db, seed, AppState};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use stile_shared::api::{IssuedQr, ScanResponse};
use stile_shared::token::{Jti, QrClaims, QrSigner};
use stile_shared::Channel;
use stile_testkit::Cluster;
use tokio::sync::oneshot;

pub const MINIAPP_KEY: &str = "ch-miniapp-secret";
pub const OTA_KEY: &str = "ch-ota-secret";
pub const PASSWORD: &str = "correct horse";

/// Two merchants with a gate, an operator and a device each, and tickets in every state.
pub const FIXTURES: &str = r#"{
  "channels": [{"name": "miniapp", "kind": "MINIAPP", "api_key": "ch-miniapp-secret", "merchants": ["M001", "M002"]},
               {"name": "ota-ctrip", "kind": "OTA", "api_key": "ch-ota-secret", "merchants": ["M001", "M002"]}],
  "merchants": [
    {"code": "M001", "name": "示例乐园", "timezone": "Asia/Shanghai",
     "locations": [{"venue_code": "GATE-EAST", "name": "东门"}, {"venue_code": "GATE-WEST", "name": "西门"}],
     "operators": [{"username": "op-east", "password": "correct horse", "display_name": "王芳"}],
     "devices": [{"device_id": "dev-east-1", "venue_code": "GATE-EAST", "secret": "dev-secret-1"},
                 {"device_id": "dev-west-1", "venue_code": "GATE-WEST", "secret": "dev-secret-2"}]},
    {"code": "M002", "name": "另一乐园",
     "locations": [{"venue_code": "GATE-MAIN", "name": "正门"}],
     "operators": [{"username": "op-other", "password": "correct horse"}],
     "devices": [{"device_id": "dev-other-1", "venue_code": "GATE-MAIN", "secret": "dev-secret-3"}]}
  ],
  "orders": [
    {"order_id": "ORD-1001", "merchant": "M001", "passengers": [
      {"name": "张三", "tickets": [{"ticket_code": "TK-1001-1", "channel": "MINIAPP", "status": "ACTIVATED",
        "entitlements": [{"function_code": "ENTRY", "name": "入园", "total_uses": 1, "remaining_uses": 1},
                         {"function_code": "MEAL", "name": "午餐", "total_uses": 2, "remaining_uses": 2}]}]},
      {"name": "李四", "tickets": [{"ticket_code": "TK-1001-2", "channel": "OTA", "status": "ACTIVATED",
        "entitlements": [{"function_code": "SHOW", "name": "演出", "total_uses": 3}]}]}]},
    {"order_id": "ORD-1002", "merchant": "M001", "passengers": [
      {"name": "王五", "tickets": [
        {"ticket_code": "TK-PRE", "channel": "MINIAPP", "status": "PRE_GENERATED",
         "entitlements": [{"function_code": "ENTRY", "name": "入园", "total_uses": 1}]},
        {"ticket_code": "TK-VOID", "channel": "OTA", "status": "VOID",
         "entitlements": [{"function_code": "ENTRY", "name": "入园", "total_uses": 1}]},
        {"ticket_code": "TK-ZERO", "channel": "OTA", "status": "ACTIVATED",
         "entitlements": [{"function_code": "ENTRY", "name": "入园", "total_uses": 1, "remaining_uses": 0},
                          {"function_code": "MEAL", "name": "午餐", "total_uses": 1}]},
        {"ticket_code": "TK-CONC", "channel": "OTA", "status": "ACTIVATED",
         "entitlements": [{"function_code": "ENTRY", "name": "入园", "total_uses": 5}]}]}]},
    {"order_id": "ORD-2001", "merchant": "M002", "passengers": [
      {"name": "赵六", "tickets": [{"ticket_code": "TK-M2", "channel": "OTA", "status": "ACTIVATED",
        "entitlements": [{"function_code": "ENTRY", "name": "入园", "total_uses": 1}]}]}]}
  ]
}"#;

/// A fresh, migrated, seeded database.
pub async fn seeded_database() -> String {
    let url = Cluster::shared()
        .fresh_database(&db::MIGRATOR)
        .await
        .expect("fresh database");
    let pool = db::connect(&url, 2).await.expect("connect");
    let file = seed::parse(FIXTURES).expect("fixtures parse");
    seed::apply(&pool, &file).await.expect("fixtures load");
    pool.close().await;
    url
}

/// A server running in this process on port 0.
pub struct TestServer {
    pub base: String,
    /// The operations listener (`/metrics`, the admin API).
    pub ops_base: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub pool: PgPool,
    pub database_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> TestServer {
        let url = seeded_database().await;
        TestServer::start_on(&url, tweak).await
    }

    pub async fn start_on(database_url: &str, tweak: impl FnOnce(&mut Settings)) -> TestServer {
        let mut settings = Settings::for_database(database_url).expect("settings");
        tweak(&mut settings);
        let state = central_server::build_state(settings).await.expect("state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ops = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind ops");
        let ops_addr = ops.local_addr().expect("ops addr");
        let (shutdown, stop) = oneshot::channel::<()>();
        let serving = state.clone();
        let task = tokio::spawn(async move {
            let stop = async move {
                let _ = stop.await;
            };
            let listeners = central_server::Listeners {
                public: listener,
                ops: Some(ops),
            };
            central_server::serve_state(serving, listeners, stop)
                .await
                .expect("server ran");
        });
        let pool = db::connect(database_url, 4).await.expect("connect");
        TestServer {
            base: format!("http://{addr}"),
            ops_base: format!("http://{ops_addr}"),
            client: reqwest::Client::new(),
            state,
            pool,
            database_url: database_url.to_owned(),
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A URL on the operations listener.
    pub fn ops_url(&self, path: &str) -> String {
        format!("{}{path}", self.ops_base)
    }

    /// The text of `/metrics` on the operations listener.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.ops_url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// Logs in; panics unless it works.
    pub async fn login(&self, username: &str) -> String {
        let (status, body) = self
            .post_json(
                "/operators/login",
                None,
                serde_json::json!({"username": username, "password": PASSWORD}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["token"].as_str().expect("token").to_owned()
    }

    pub async fn post_json(
        &self,
        path: &str,
        bearer: Option<&str>,
        body: Value,
    ) -> (StatusCode, Value) {
        let mut request = self.client.post(self.url(path)).json(&body);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let body = response.json::<Value>().await.expect("json body");
        (status, body)
    }

    /// `method path` on the public port with an optional Bearer credential and no body:
    /// the status and the JSON body (null when the body is not JSON).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
    ) -> (StatusCode, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut request = self.client.request(method, self.url(path));
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn issue_qr(&self, ticket_code: &str, channel_key: &str) -> IssuedQr {
        let response = self
            .client
            .post(self.url(&format!("/tickets/{ticket_code}/qr")))
            .bearer_auth(channel_key)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("issued qr")
    }

    /// Scans at GATE-EAST with dev-east-1.
    pub async fn scan(&self, operator: &str, qr: &str, function: &str) -> (StatusCode, Value) {
        self.scan_with(operator, qr, function, None).await
    }

    pub async fn scan_with(
        &self,
        operator: &str,
        qr: &str,
        function: &str,
        scan_id: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut body = serde_json::json!({
            "qr_token": qr, "function_code": function, "venue_code": "GATE-EAST", "device_id": "dev-east-1"
        });
        if let Some(scan_id) = scan_id {
            body["scan_id"] = Value::String(scan_id.to_owned());
        }
        self.post_json("/venue/scan", Some(operator), body).await
    }

    /// Remaining uses of one entitlement, read from the database.
    pub async fn remaining(&self, ticket_code: &str, function: &str) -> i32 {
        let (remaining,): (i32,) = sqlx::query_as(
            "SELECT e.remaining_uses FROM entitlements e JOIN tickets t ON t.id = e.ticket_id \
             WHERE t.ticket_code = $1 AND e.function_code = $2",
        )
        .bind(ticket_code)
        .bind(function)
        .fetch_one(&self.pool)
        .await
        .expect("entitlement");
        remaining
    }

    /// The active signing key, as the server holds it: for tokens a test must date itself.
    pub async fn active_signer(&self) -> QrSigner {
        let encryption = central_server::kek::KeyEncryption::load(
            self.state.settings.key_encryption_key_file.as_deref(),
            self.state
                .settings
                .previous_key_encryption_key_file
                .as_deref(),
        )
        .expect("the server's key-encryption keys");
        central_server::keys::active_signer(&self.pool, &encryption)
            .await
            .expect("active key")
    }

    /// A token signed by the server's real key, issued at `iat`, made the ticket's current QR.
    pub async fn dated_token(
        &self,
        ticket_code: &str,
        merchant: &str,
        channel: Channel,
        iat: i64,
    ) -> String {
        let signer = self.active_signer().await;
        let jti = Jti::from_bytes(rand_bytes());
        let claims = QrClaims {
            jti: jti.clone(),
            tid: ticket_code.into(),
            mid: merchant.into(),
            ch: channel,
            iat,
            exp: stile_shared::TokenPolicy::default().expiry_for(channel, iat),
        };
        sqlx::query("UPDATE tickets SET current_jti = $2 WHERE ticket_code = $1")
            .bind(ticket_code)
            .bind(jti.as_str())
            .execute(&self.pool)
            .await
            .expect("set current jti");
        signer.issue(&claims).expect("sign")
    }
}

pub fn rand_bytes() -> [u8; 16] {
    *uuid::Uuid::new_v4().as_bytes()
}

pub fn decision(body: &Value) -> ScanResponse {
    serde_json::from_value(body.clone()).expect("scan response")
}
