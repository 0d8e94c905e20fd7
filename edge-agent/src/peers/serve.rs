//! The peer listener (`[peers] listen`, separate from the status page): peers push their
//! acceptances in, and pull this gate's own log out from where they stopped. Every request
//! carries a signed `Authorization: StilePeer` header (asker, this gate, a growing nonce),
//! and every acceptance its maker's signature; both are judged by [`super::Peers`] before
//! anything has an effect. Nothing here trusts the LAN.

use super::RequestKind;
use crate::decide::Gate;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Most messages in one push.
pub const MAX_PUSH: usize = 256;
/// Most entries in one pull answer.
pub const MAX_PULL: usize = 500;

/// A push: signed acceptances, oldest first.
#[derive(Debug, Serialize, Deserialize)]
pub struct Push {
    pub messages: Vec<String>,
}

/// One refused message of a push.
#[derive(Debug, Serialize, Deserialize)]
pub struct Refused {
    pub index: usize,
    pub reason: String,
}

/// What a push did.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PushAnswer {
    pub taken: usize,
    /// Entries held already (pulled before the push arrived).
    pub held: usize,
    pub refused: Vec<Refused>,
}

/// A pull answer: entries of this gate's log `log` after the asked point.
#[derive(Debug, Serialize, Deserialize)]
pub struct PullAnswer {
    pub device: String,
    pub log: String,
    /// The log's last entry.
    pub head: u64,
    pub messages: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct PullQuery {
    /// The log the asker's cursor is in; another (or none) means from the start.
    log: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

/// The scheme of the pull request's `Authorization` header.
pub const AUTH_SCHEME: &str = "StilePeer ";

pub fn router(gate: Arc<Gate>) -> Router {
    Router::new()
        .route(
            "/peer/v1/acceptances",
            post(push)
                .get(pull)
                .layer(DefaultBodyLimit::max(512 * 1024)),
        )
        .route("/peer/v1/healthz", get(|| async { "ok" }))
        .with_state(gate)
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"code": status.as_u16(), "message": message})),
    )
        .into_response()
}

/// The asking gate, from the request's signed `Authorization: StilePeer` header.
fn asker(
    peers: &super::Peers,
    headers: &HeaderMap,
    kind: RequestKind,
) -> Result<stile_shared::Identifier, (StatusCode, &'static str)> {
    let Some(signed) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix(AUTH_SCHEME))
    else {
        return Err((StatusCode::UNAUTHORIZED, "a signed request is required"));
    };
    let asker = peers
        .take_request(signed, kind)
        .map_err(|refusal| (StatusCode::FORBIDDEN, refusal.reason()))?;
    peers.heard_from(&asker);
    Ok(asker)
}

async fn push(
    State(gate): State<Arc<Gate>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(peers) = gate.peers.clone() else {
        return error(StatusCode::NOT_FOUND, "peers are off");
    };
    let asker = match asker(&peers, &headers, RequestKind::Push) {
        Ok(asker) => asker,
        Err((status, why)) => return error(status, why),
    };
    let Ok(push) = serde_json::from_slice::<Push>(&body) else {
        peers
            .metrics
            .refused
            .get_or_create(&vec![("reason".to_owned(), "malformed".to_owned())])
            .inc();
        return error(StatusCode::BAD_REQUEST, "expected {\"messages\": [...]}");
    };
    if push.messages.len() > MAX_PUSH {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "more than 256 messages");
    }
    let taking = peers.clone();
    let answer = gate
        .with_store(move |store| {
            let mut answer = PushAnswer::default();
            for (index, message) in push.messages.iter().enumerate() {
                match taking.take(store, message, &asker) {
                    Ok((_, true)) => answer.taken += 1,
                    Ok((_, false)) => answer.held += 1,
                    Err(refusal) => answer.refused.push(Refused {
                        index,
                        reason: refusal.reason().to_owned(),
                    }),
                }
            }
            Ok(answer)
        })
        .await;
    match answer {
        Ok(answer) if answer.refused.is_empty() => Json(answer).into_response(),
        Ok(answer) => (StatusCode::FORBIDDEN, Json(answer)).into_response(),
        Err(store) => {
            gate.store_result::<()>(&Err(store));
            error(StatusCode::SERVICE_UNAVAILABLE, "the store cannot take it")
        }
    }
}

async fn pull(
    State(gate): State<Arc<Gate>>,
    headers: HeaderMap,
    Query(query): Query<PullQuery>,
) -> Response {
    let Some(peers) = gate.peers.clone() else {
        return error(StatusCode::NOT_FOUND, "peers are off");
    };
    if let Err((status, why)) = asker(&peers, &headers, RequestKind::Pull) {
        return error(status, why);
    }
    let after = match query.log.as_deref() {
        Some(log) if log == peers.log.as_str() => query.after.unwrap_or(0),
        _ => 0,
    };
    let limit = query.limit.unwrap_or(MAX_PULL).clamp(1, MAX_PULL);
    match gate
        .with_store(move |store| store.own_log_after(after, limit))
        .await
    {
        Ok((messages, head)) => Json(PullAnswer {
            device: peers.device.to_string(),
            log: peers.log.as_str().to_owned(),
            head,
            messages,
        })
        .into_response(),
        Err(store) => {
            gate.store_result::<()>(&Err(store));
            error(StatusCode::SERVICE_UNAVAILABLE, "the store cannot be read")
        }
    }
}
