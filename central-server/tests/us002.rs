//! US-002 acceptance scenarios A-G over real HTTP against a real PostgreSQL, messages
//! included, plus the multi-entitlement and multi-QR cases around them.

mod common;

use common::{decision, TestServer, MINIAPP_KEY, OTA_KEY, PASSWORD};
use reqwest::StatusCode;
use serde_json::json;
use stile_shared::{Channel, DecisionCode, TicketStatus};

#[tokio::test]
async fn a_operator_login() {
    let server = TestServer::start().await;
    let (status, body) = server
        .post_json(
            "/operators/login",
            None,
            json!({"username": "op-east", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 43200);
    assert_eq!(body["operator"]["username"], "op-east");
    assert_eq!(body["operator"]["merchant_code"], "M001");
    assert!(body["token"].as_str().is_some_and(|t| !t.is_empty()));

    // Wrong password and unknown user: the same 401 and the same words.
    let (status, wrong) = server
        .post_json(
            "/operators/login",
            None,
            json!({"username": "op-east", "password": "nope"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        wrong,
        json!({"code": "INVALID_CREDENTIALS", "message": "用户名或密码错误"})
    );
    let (status, unknown) = server
        .post_json(
            "/operators/login",
            None,
            json!({"username": "nobody", "password": "nope"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown, wrong);
    server.stop().await;
}

#[tokio::test]
async fn a_repeated_failures_are_throttled_even_with_the_right_password() {
    let server = TestServer::start().await;
    for _ in 0..10 {
        let (status, _) = server
            .post_json(
                "/operators/login",
                None,
                json!({"username": "op-east", "password": "guess"}),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, body) = server
        .post_json(
            "/operators/login",
            None,
            json!({"username": "op-east", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["code"], "TOO_MANY_REQUESTS");
    // Another username is not affected.
    let (status, _) = server
        .post_json(
            "/operators/login",
            None,
            json!({"username": "op-other", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn b_successful_scan_redeems_one_use_and_logs_who_where_when() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    let qr = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    let (status, body) = server.scan(&operator, &qr.qr_token, "MEAL").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer = decision(&body);
    assert_eq!(answer.result, DecisionCode::Success);
    assert_eq!(answer.code, DecisionCode::Success);
    assert_eq!(answer.message, "核销成功");
    let ticket = answer.ticket.expect("ticket shown");
    assert_eq!(ticket.ticket_code, "TK-1001-1");
    assert_eq!(ticket.status, TicketStatus::Activated);
    let meal = ticket
        .entitlements
        .iter()
        .find(|e| e.function_code.as_str() == "MEAL")
        .expect("meal");
    assert_eq!((meal.total_uses, meal.remaining_uses), (2, 1));
    assert_eq!(server.remaining("TK-1001-1", "MEAL").await, 1);
    let redemption = answer.redemption.expect("redemption");
    assert_eq!(redemption.operator.username, "op-east");
    assert_eq!(redemption.device_id.as_deref(), Some("dev-east-1"));
    assert_eq!(redemption.venue_code.as_deref(), Some("GATE-EAST"));
    assert!(chrono::DateTime::parse_from_rfc3339(&redemption.redeemed_at).is_ok());

    // The log: the redemption event and the audit row say who, where, when, what.
    let (operator_name, device, venue, function): (String, String, String, String) = sqlx::query_as(
        "SELECT o.username, d.device_id, l.venue_code, r.function_code FROM redemption_events r \
         JOIN operators o ON o.id = r.operator_id JOIN devices d ON d.id = r.device_id \
         JOIN locations l ON l.id = r.location_id WHERE r.id = $1",
    )
    .bind(redemption.id)
    .fetch_one(&server.pool)
    .await
    .expect("event");
    assert_eq!(
        (
            operator_name.as_str(),
            device.as_str(),
            venue.as_str(),
            function.as_str()
        ),
        ("op-east", "dev-east-1", "GATE-EAST", "MEAL")
    );
    // The redemption's audit record (who, where, when, what) is its reconciliation log row.
    let (audits,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM merchant_redemptions WHERE redemption_event_id = $1 AND result = 'SUCCESS' \
         AND operator_id IS NOT NULL AND device_id IS NOT NULL AND location_id IS NOT NULL",
    )
    .bind(redemption.id)
    .fetch_one(&server.pool)
    .await
    .expect("audit");
    assert_eq!(audits, 1);
    server.stop().await;
}

#[tokio::test]
async fn c_same_entitlement_twice_is_blocked_but_another_entitlement_of_the_same_qr_redeems() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    let qr = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    assert_eq!(
        server.scan(&operator, &qr.qr_token, "MEAL").await.0,
        StatusCode::OK
    );
    let (status, body) = server.scan(&operator, &qr.qr_token, "MEAL").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "ALREADY_REDEEMED");
    assert_eq!(body["result"], "ALREADY_REDEEMED");
    assert_eq!(body["message"], "该权益已核销");
    assert_eq!(
        server.remaining("TK-1001-1", "MEAL").await,
        1,
        "no second decrement"
    );
    // The same QR may redeem a different entitlement.
    let (status, body) = server.scan(&operator, &qr.qr_token, "ENTRY").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Every rejection is audited too.
    let (rejections,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM scan_audit WHERE decision = 'ALREADY_REDEEMED'")
            .fetch_one(&server.pool)
            .await
            .expect("audit");
    assert_eq!(rejections, 1);
    server.stop().await;
}

#[tokio::test]
async fn d_entitlement_not_on_the_ticket() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    let qr = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    let (status, body) = server.scan(&operator, &qr.qr_token, "SHOW").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "NOT_ENTITLED");
    assert_eq!(body["message"], "票券不包含此权益");
    assert_eq!(
        body["ticket"]["ticket_code"], "TK-1001-1",
        "own merchant's ticket is shown"
    );
    server.stop().await;
}

#[tokio::test]
async fn e_no_uses_left() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    let qr = server.issue_qr("TK-ZERO", OTA_KEY).await;
    let (status, body) = server.scan(&operator, &qr.qr_token, "ENTRY").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "EXHAUSTED");
    assert_eq!(body["message"], "该权益已用完");
    server.stop().await;
}

#[tokio::test]
async fn e_three_uses_through_three_qrs_then_the_fourth_is_exhausted() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    for expected_left in [2, 1, 0] {
        let qr = server.issue_qr("TK-1001-2", OTA_KEY).await;
        let (status, body) = server.scan(&operator, &qr.qr_token, "SHOW").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(server.remaining("TK-1001-2", "SHOW").await, expected_left);
    }
    let fourth = server.issue_qr("TK-1001-2", OTA_KEY).await;
    let (status, body) = server.scan(&operator, &fourth.qr_token, "SHOW").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "EXHAUSTED");
    assert_eq!(body["message"], "该权益已用完");
    assert_eq!(body["ticket"]["status"], "USED");
    server.stop().await;
}

#[tokio::test]
async fn f_miniapp_qr_expires_after_thirty_minutes_but_ota_does_not() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    let now = chrono::Utc::now().timestamp();
    // Issued 31 minutes (+ the 60 s skew tolerance) ago, signed by the server's real key.
    let stale = server
        .dated_token("TK-1001-1", "M001", Channel::MiniApp, now - 1800 - 61 - 60)
        .await;
    let (status, body) = server.scan(&operator, &stale, "ENTRY").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "QR_EXPIRED");
    assert_eq!(body["message"], "二维码已过期，请刷新");
    assert!(body.get("ticket").is_none(), "no ticket data on QR_EXPIRED");

    // Within the TTL it is fine.
    let fresh = server
        .dated_token("TK-1001-1", "M001", Channel::MiniApp, now - 1700)
        .await;
    assert_eq!(
        server.scan(&operator, &fresh, "ENTRY").await.0,
        StatusCode::OK
    );

    // An OTA QR from a month ago still works.
    let old_ota = server
        .dated_token("TK-1001-2", "M001", Channel::Ota, now - 30 * 86_400)
        .await;
    let (status, body) = server.scan(&operator, &old_ota, "SHOW").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn g_a_superseded_qr_is_refused_and_the_new_one_works() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    let old = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    let new = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    assert_ne!(old.jti, new.jti);
    let (status, body) = server.scan(&operator, &old.qr_token, "ENTRY").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "QR_SUPERSEDED");
    assert_eq!(body["message"], "二维码已失效，请使用最新二维码");
    let (status, _) = server.scan(&operator, &new.qr_token, "ENTRY").await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn one_qr_redeems_each_of_two_entitlements_once_and_the_ticket_ends_used() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    let qr = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    assert_eq!(
        server.scan(&operator, &qr.qr_token, "ENTRY").await.0,
        StatusCode::OK
    );
    let (status, body) = server.scan(&operator, &qr.qr_token, "MEAL").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["ticket"]["status"], "ACTIVATED",
        "one MEAL use is left"
    );
    let second = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    let (status, body) = server.scan(&operator, &second.qr_token, "MEAL").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["ticket"]["status"], "USED",
        "every entitlement exhausted"
    );
    // A USED ticket goes on through the checks: same QR → ALREADY_REDEEMED, newer → EXHAUSTED.
    assert_eq!(
        server.scan(&operator, &second.qr_token, "MEAL").await.1["code"],
        "ALREADY_REDEEMED"
    );
    let third = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    assert_eq!(
        server.scan(&operator, &third.qr_token, "ENTRY").await.1["code"],
        "EXHAUSTED"
    );
    server.stop().await;
}

#[tokio::test]
async fn pre_generated_and_void_tickets_are_refused() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    let pre = server.issue_qr("TK-PRE", MINIAPP_KEY).await;
    let (status, body) = server.scan(&operator, &pre.qr_token, "ENTRY").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        (body["code"].as_str(), body["message"].as_str()),
        (Some("TICKET_NOT_ACTIVE"), Some("票券未激活"))
    );
    let void = server.issue_qr("TK-VOID", OTA_KEY).await;
    let (status, body) = server.scan(&operator, &void.qr_token, "ENTRY").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        (body["code"].as_str(), body["message"].as_str()),
        (Some("TICKET_VOID"), Some("票券已作废"))
    );
    server.stop().await;
}

#[tokio::test]
async fn another_merchants_operator_gets_wrong_merchant_and_no_ticket_data() {
    let server = TestServer::start().await;
    let other = server.login("op-other").await;
    let qr = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    let (status, body) = server
        .post_json("/venue/scan", Some(&other), json!({
            "qr_token": qr.qr_token, "function_code": "ENTRY", "venue_code": "GATE-MAIN", "device_id": "dev-other-1"
        }))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        json!({"result": "WRONG_MERCHANT", "code": "WRONG_MERCHANT", "message": "无权核销该票券"})
    );
    assert_eq!(server.remaining("TK-1001-1", "ENTRY").await, 1);
    server.stop().await;
}

#[tokio::test]
async fn english_messages_on_request() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    let qr = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    let response = server
        .client
        .post(server.url("/venue/scan"))
        .bearer_auth(&operator)
        .header("Accept-Language", "en-US,en;q=0.9")
        .json(&json!({"qr_token": qr.qr_token, "function_code": "SHOW", "venue_code": "GATE-EAST", "device_id": "dev-east-1"}))
        .send()
        .await
        .expect("request");
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(
        body["message"],
        "The ticket does not include this entitlement"
    );
    server.stop().await;
}

/// A plain success is group-committed (`stile_redeem_batch`); a rejection is decided on
/// the transaction path, by the shared `decide`. Both answer as the contract says.
#[tokio::test]
async fn a_plain_success_is_group_committed_and_a_rejection_takes_the_transaction_path() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    let qr = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    let (status, body) = server.scan(&operator, &qr.qr_token, "ENTRY").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["ticket"]["entitlements"][0]["remaining_uses"], 0,
        "{body}"
    );
    assert!(
        body["redemption"]["id"].as_i64().is_some_and(|id| id > 0),
        "{body}"
    );
    let (status, body) = server.scan(&operator, &qr.qr_token, "ENTRY").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "ALREADY_REDEEMED");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("stile_scan_paths_total{path=\"group_commit\"} 1"),
        "{metrics}"
    );
    // Both scans went through a batch: the second was left to the transaction path.
    assert!(
        metrics.contains("stile_group_commit_batch_size_count 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("stile_scan_paths_total{path=\"transaction\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}
