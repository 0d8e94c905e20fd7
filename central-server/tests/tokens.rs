//! QR tokens against the real server: forgeries and garbage give INVALID_QR, rotation keeps
//! old tokens valid until their key is retired, a standard JOSE library verifies our tokens
//! against `GET /keys`, and `/qr/decrypt` tells a token's state.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{TestServer, MINIAPP_KEY, OTA_KEY};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use stile_shared::token::{Jti, QrClaims, QrSigner};
use stile_shared::Channel;

fn header_kid(token: &str) -> String {
    let header = token.split('.').next().expect("header");
    let json: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("b64")).expect("json");
    json["kid"].as_str().expect("kid").to_owned()
}

#[tokio::test]
async fn forged_and_malformed_tokens_are_invalid_qr_and_show_nothing() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    let genuine = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    let kid = header_kid(&genuine.qr_token);
    let parts: Vec<&str> = genuine.qr_token.split('.').collect();
    let claims: QrClaims =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("claims");

    // Signed by a key the server never published, under the real kid.
    let forged = QrSigner::new(&kid, [9; 32]).issue(&claims).expect("forge");
    // alg: none.
    let none_header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","kid":"{kid}"}}"#));
    let alg_none = format!("{none_header}.{}.", parts[1]);
    // HS256 keyed with the published public key (algorithm confusion).
    let jwks: Value = server
        .client
        .get(server.url("/keys"))
        .send()
        .await
        .expect("keys")
        .json()
        .await
        .expect("json");
    let public = URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["x"].as_str().expect("x"))
        .expect("b64");
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some(kid.clone());
    let hs256 = jsonwebtoken::encode(
        &hs_header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&public),
    )
    .expect("hs256");
    // A kid nobody published.
    let unknown_kid = QrSigner::new("k999", [9; 32]).issue(&claims).expect("sign");
    let truncated = genuine.qr_token[..genuine.qr_token.len() - 10].to_owned();
    let oversized = "A".repeat(10_000);

    for (name, token) in [
        ("forged", forged),
        ("alg none", alg_none),
        ("hs256 with public key", hs256),
        ("unknown kid", unknown_kid),
        ("truncated", truncated),
        ("garbage", "not a token".to_owned()),
        ("empty", String::new()),
        ("oversized", oversized),
    ] {
        let (status, body) = server.scan(&operator, &token, "ENTRY").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {body}");
        assert_eq!(
            body,
            json!({"result": "INVALID_QR", "code": "INVALID_QR", "message": "无效二维码"}),
            "{name}"
        );
    }
    assert_eq!(server.remaining("TK-1001-1", "ENTRY").await, 1);
    // The genuine token still works.
    assert_eq!(
        server.scan(&operator, &genuine.qr_token, "ENTRY").await.0,
        StatusCode::OK
    );
    server.stop().await;
}

async fn wait_for_kids(server: &TestServer, expected: &[&str]) {
    let started = Instant::now();
    loop {
        let jwks: Value = server
            .client
            .get(server.url("/keys"))
            .send()
            .await
            .expect("keys")
            .json()
            .await
            .expect("json");
        let mut kids: Vec<String> = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["kid"].as_str().unwrap_or_default().to_owned())
            .collect();
        kids.sort();
        if kids == expected {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "published kids {kids:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn rotation_keeps_old_tokens_valid_until_the_old_key_is_retired() {
    let server = TestServer::start_with(|s| s.key_refresh_secs = 1).await;
    let operator = server.login("op-east").await;
    let old_show = server.issue_qr("TK-1001-2", OTA_KEY).await;
    let old_entry = server.issue_qr("TK-CONC", OTA_KEY).await;
    assert_eq!(header_kid(&old_show.qr_token), "k1");

    let new_kid =
        central_server::keys::rotate(&server.pool, &central_server::kek::KeyEncryption::none())
            .await
            .expect("rotate");
    assert_eq!(new_kid, "k2");
    // The running server publishes and signs with the new key on its own (refresh loop).
    wait_for_kids(&server, &["k1", "k2"]).await;
    let fresh = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    assert_eq!(header_kid(&fresh.qr_token), "k2");
    assert_eq!(
        server.scan(&operator, &fresh.qr_token, "ENTRY").await.0,
        StatusCode::OK
    );
    // A token signed by the previous key still redeems.
    assert_eq!(
        server.scan(&operator, &old_show.qr_token, "SHOW").await.0,
        StatusCode::OK
    );

    // The active key cannot be retired; the old one can, and its tokens stop verifying.
    assert!(central_server::keys::retire(&server.pool, "k2")
        .await
        .is_err());
    central_server::keys::retire(&server.pool, "k1")
        .await
        .expect("retire");
    wait_for_kids(&server, &["k2"]).await;
    let (status, body) = server.scan(&operator, &old_entry.qr_token, "ENTRY").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_QR"))
    );
    server.stop().await;
}

#[tokio::test]
async fn a_standard_jose_library_verifies_our_tokens_against_the_published_jwks() {
    let server = TestServer::start().await;
    let issued = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    let ota = server.issue_qr("TK-1001-2", OTA_KEY).await;
    assert!(
        issued.qr_token.len() <= 287,
        "{} characters",
        issued.qr_token.len()
    );
    assert!(issued.expires_at.is_some() && ota.expires_at.is_none());
    let jwks: jsonwebtoken::jwk::JwkSet = server
        .client
        .get(server.url("/keys"))
        .send()
        .await
        .expect("keys")
        .json()
        .await
        .expect("jwks");
    for token in [&issued.qr_token, &ota.qr_token] {
        let kid = header_kid(token);
        let jwk = jwks.find(&kid).expect("kid published");
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("key from jwk");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).expect("verifies");
        assert_eq!(data.header.alg, jsonwebtoken::Algorithm::EdDSA);
        assert!(data.header.typ.is_none(), "no typ: every byte counts");
        assert_eq!(data.claims["mid"], "M001");
    }
    let claims = jsonwebtoken::decode::<Value>(
        &issued.qr_token,
        &jsonwebtoken::DecodingKey::from_jwk(jwks.find("k1").expect("k1")).expect("key"),
        &jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA),
    )
    .expect("valid now")
    .claims;
    assert_eq!(claims["jti"], issued.jti.as_str());
    assert_eq!(
        claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"),
        1800
    );
    server.stop().await;
}

#[tokio::test]
async fn decrypt_tells_valid_expired_superseded_and_guards_other_merchants() {
    let server = TestServer::start().await;
    let operator = server.login("op-east").await;
    let first = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    let second = server.issue_qr("TK-1001-1", MINIAPP_KEY).await;
    let decrypt = |token: String, bearer: String| {
        let server = &server;
        async move {
            server
                .post_json("/qr/decrypt", Some(&bearer), json!({"qr_token": token}))
                .await
        }
    };
    let (status, body) = decrypt(second.qr_token.clone(), operator.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["token_state"], "valid");
    assert_eq!(body["claims"]["jti"], second.jti.as_str());
    assert_eq!(body["claims"]["ch"], "MINIAPP");
    assert_eq!(
        body["ticket"]["entitlements"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(
        decrypt(first.qr_token.clone(), operator.clone()).await.1["token_state"],
        "superseded"
    );
    let stale = server
        .dated_token(
            "TK-1001-1",
            "M001",
            Channel::MiniApp,
            chrono::Utc::now().timestamp() - 4000,
        )
        .await;
    assert_eq!(
        decrypt(stale, operator.clone()).await.1["token_state"],
        "expired"
    );
    // Nothing was redeemed.
    assert_eq!(server.remaining("TK-1001-1", "ENTRY").await, 1);

    let other = server.login("op-other").await;
    let (status, body) = decrypt(second.qr_token.clone(), other).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        json!({"code": "WRONG_MERCHANT", "message": "无权核销该票券"})
    );
    let (status, body) = decrypt("garbage".into(), operator.clone()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_QR"))
    );
    let (status, _) = server
        .post_json("/qr/decrypt", None, json!({"qr_token": second.qr_token}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    server.stop().await;
}

#[tokio::test]
async fn qr_issuance_checks_the_channel_and_the_ticket() {
    let server = TestServer::start().await;
    let post = |path: String, key: Option<&'static str>| {
        let server = &server;
        async move {
            let mut request = server.client.post(server.url(&path));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let response = request.send().await.expect("request");
            (
                response.status(),
                response.json::<Value>().await.expect("json"),
            )
        }
    };
    let (status, body) = post("/tickets/NO-SUCH/qr".into(), Some(OTA_KEY)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("NOT_FOUND"))
    );
    let (status, body) = post("/tickets/TK-1001-1/qr".into(), Some(OTA_KEY)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("FORBIDDEN"))
    );
    let (status, body) = post("/tickets/TK-1001-1/qr".into(), Some("wrong-key")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("UNAUTHORIZED"))
    );
    let (status, _) = post("/tickets/TK-1001-1/qr".into(), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A QR may be issued for a ticket in any status; the gate decides.
    let (status, body) = post("/tickets/TK-VOID/qr".into(), Some(OTA_KEY)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["expires_at"].is_null());
    let jti = Jti::parse(body["jti"].as_str().expect("jti")).expect("22-char jti");
    let (current,): (Option<String>,) =
        sqlx::query_as("SELECT current_jti FROM tickets WHERE ticket_code = 'TK-VOID'")
            .fetch_one(&server.pool)
            .await
            .expect("ticket");
    assert_eq!(current.as_deref(), Some(jti.as_str()));
    server.stop().await;
}

/// The contract's jti is a UUID: every issued one (both channels, in the response and in the
/// signed claims alike) has the version-4 and RFC 4122 variant bits, and no two repeat.
#[tokio::test]
async fn issued_jtis_are_random_uuids() {
    let server = TestServer::start().await;
    let mut seen = std::collections::HashSet::new();
    for round in 0..20 {
        for (ticket, key) in [("TK-1001-1", MINIAPP_KEY), ("TK-1001-2", OTA_KEY)] {
            let issued = server.issue_qr(ticket, key).await;
            let payload = issued.qr_token.split('.').nth(1).expect("payload");
            let claims: Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64"))
                    .expect("claims json");
            assert_eq!(claims["jti"], issued.jti.as_str());
            let uuid = uuid::Uuid::from_bytes(issued.jti.to_bytes());
            assert_eq!(
                uuid.get_version(),
                Some(uuid::Version::Random),
                "round {round}: {} is {uuid}",
                issued.jti
            );
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{uuid}");
            assert!(seen.insert(uuid), "{uuid} issued twice");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn tokens_fit_the_qr_size_budget_at_the_longest_codes() {
    // The seed loader caps codes (merchant 8, ticket 12) so the token stays within 287 chars.
    let signer = QrSigner::new("kzzz", [1; 32]);
    let claims = QrClaims {
        jti: Jti::from_bytes([255; 16]),
        tid: "T".repeat(12),
        mid: "M".repeat(8),
        ch: Channel::MiniApp,
        iat: 4_102_444_800,
        exp: Some(4_102_444_800 + 1800),
    };
    assert!(signer.issue(&claims).expect("issue").len() <= 287);
}
