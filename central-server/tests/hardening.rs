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
        let response = server
            .client
            .get(server.url(&format!("/venue/scan/{scan_id}")))
            .bearer_auth(&east)
            .send()
            .await
            .expect("lookup");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
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
