//! The central server's API as the gate uses it: operator login, online scans with a short
//! deadline, scan lookup by scan_id, and the device endpoints (keys, ticket feed, uploads,
//! the venue's occupancy).
//!
//! Every failure says whether the request may have reached the server
//! ([`CallError::outcome_unknown`]): a scan that timed out after it was sent may have been
//! redeemed, and the gate must never show red for it.

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use std::time::{Duration, Instant};
use stile_shared::api::{
    DecisionUpload, EnrollRequest, EnrollResponse, ErrorBody, LoginRequest, LoginResponse,
    OfflineDecision, ScanRequest, ScanResponse, TicketFeedPage, UploadResponse,
};
use stile_shared::token::JwkSet;
use stile_shared::Identifier;

/// Why a call to the central did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing reached the server (connection refused, no route, DNS).
    #[error("central unreachable: {0}")]
    Unreachable(String),
    /// The request went out but no answer came in time: it may have been applied.
    #[error("no answer within the deadline")]
    Timeout,
    /// The operator's token was refused.
    #[error("operator session expired")]
    Unauthorized,
    /// A login's username or password was wrong.
    #[error("wrong username or password")]
    BadCredentials,
    /// Another answer the caller did not expect, with the server's error body when it sent one.
    #[error("central answered {status}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// The answer could not be read.
    #[error("unreadable answer: {0}")]
    Unreadable(String),
}

impl CallError {
    /// Whether the request may have been applied by the server.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            CallError::Unreachable(_) | CallError::Unauthorized | CallError::BadCredentials => {
                false
            }
            CallError::Refused { status, .. } => *status >= 500,
            CallError::Timeout | CallError::Unreadable(_) => true,
        }
    }

    /// Whether the uplink itself is down (as opposed to a refusal).
    pub fn is_uplink_failure(&self) -> bool {
        matches!(
            self,
            CallError::Unreachable(_) | CallError::Timeout | CallError::Unreadable(_)
        ) || matches!(self, CallError::Refused { status, .. } if *status >= 500)
    }
}

fn classify(error: reqwest::Error) -> CallError {
    if error.is_timeout() {
        CallError::Timeout
    } else if error.is_connect() {
        // Nothing was sent: the connection was never made.
        CallError::Unreachable(error.to_string())
    } else {
        CallError::Unreadable(error.to_string())
    }
}

/// What one call taught about the link: round-trip time and the central's clock.
#[derive(Debug, Clone, Copy)]
pub struct LinkSample {
    pub rtt: Duration,
    /// Central clock minus local clock, seconds (from the `Date` header, ±1 s).
    pub clock_offset_secs: Option<f64>,
}

/// A client of the central server for one device.
#[derive(Debug, Clone)]
pub struct Central {
    client: reqwest::Client,
    base: String,
    device_credential: String,
}

/// `POST /device/enroll`: exchanges a one-time enrollment code for the device's secret.
pub async fn enroll(base: &str, device_id: &Identifier, code: &str) -> Result<String, CallError> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|error| CallError::Unreadable(error.to_string()))?;
    let response = client
        .post(format!("{}/device/enroll", base.trim_end_matches('/')))
        .json(&EnrollRequest {
            device_id: device_id.clone(),
            code: code.to_owned(),
        })
        .send()
        .await
        .map_err(classify)?;
    if response.status() == reqwest::StatusCode::UNAUTHORIZED {
        return Err(CallError::Unauthorized);
    }
    let response = response
        .error_for_status()
        .map_err(|error| CallError::Unreadable(error.to_string()))?;
    let answer: EnrollResponse = response
        .json()
        .await
        .map_err(|error| CallError::Unreadable(error.to_string()))?;
    Ok(answer.secret)
}

impl Central {
    pub fn new(base: &str, device_id: &str, device_secret: &str) -> Result<Central, CallError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|error| CallError::Unreadable(error.to_string()))?;
        Ok(Central {
            client,
            base: base.trim_end_matches('/').to_owned(),
            device_credential: format!("{device_id}:{device_secret}"),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        deadline: Duration,
    ) -> Result<(reqwest::Response, LinkSample), CallError> {
        let started = Instant::now();
        let sent_at = Utc::now();
        let response = request.timeout(deadline).send().await.map_err(classify)?;
        let rtt = started.elapsed();
        let clock_offset_secs = response
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| DateTime::parse_from_rfc2822(value).ok())
            .map(|central| {
                let local_mid = sent_at + chrono::Duration::from_std(rtt / 2).unwrap_or_default();
                // The header has whole seconds: add half a second to centre the estimate.
                (central.with_timezone(&Utc) - local_mid).num_milliseconds() as f64 / 1000.0 + 0.5
            });
        Ok((
            response,
            LinkSample {
                rtt,
                clock_offset_secs,
            },
        ))
    }

    async fn error_of(response: reqwest::Response) -> CallError {
        let status = response.status();
        let bytes = response.bytes().await.unwrap_or_default();
        refusal(status, &bytes)
    }

    pub async fn login(&self, username: &str, password: &str) -> Result<LoginResponse, CallError> {
        // A username the central could never know is a wrong username, asked of nobody.
        let username =
            stile_shared::Identifier::parse(username).map_err(|_| CallError::BadCredentials)?;
        let request = self
            .client
            .post(self.url("/operators/login"))
            .json(&LoginRequest {
                username,
                password: password.to_owned(),
            });
        match self.fetch(request, Duration::from_secs(10)).await {
            Ok((answer, _)) => Ok(answer),
            Err(CallError::Unauthorized) => Err(CallError::BadCredentials),
            Err(error) => Err(error),
        }
    }

    /// `GET /healthz` with a short deadline: is the central answering at all?
    pub async fn probe(&self, deadline: Duration) -> Result<LinkSample, CallError> {
        let builder = self.client.get(self.url("/healthz"));
        let (response, sample) = self.send(builder, deadline).await?;
        if response.status() != StatusCode::OK {
            return Err(Self::error_of(response).await);
        }
        Ok(sample)
    }

    /// `POST /venue/scan`. Every decision (200, 400, 403 WRONG_MERCHANT, 409) is an answer.
    pub async fn scan(
        &self,
        operator_token: &str,
        request: &ScanRequest,
        deadline: Duration,
    ) -> Result<(ScanResponse, LinkSample), CallError> {
        let builder = self
            .client
            .post(self.url("/venue/scan"))
            .bearer_auth(operator_token)
            .json(request);
        let (response, sample) = self.send(builder, deadline).await?;
        decision_answer(response, sample).await
    }

    /// `GET /venue/scan/{scan_id}`: `None` when the central has no record of it.
    pub async fn scan_by_id(
        &self,
        operator_token: &str,
        scan_id: &str,
        deadline: Duration,
    ) -> Result<Option<ScanResponse>, CallError> {
        let builder = self
            .client
            .get(self.url(&format!("/venue/scan/{scan_id}")))
            .bearer_auth(operator_token);
        let (response, sample) = self.send(builder, deadline).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        decision_answer(response, sample)
            .await
            .map(|(answer, _)| Some(answer))
    }

    /// Sends a request whose only good answer is 200 with a JSON body of type `T`.
    async fn fetch<T: serde::de::DeserializeOwned>(
        &self,
        builder: reqwest::RequestBuilder,
        deadline: Duration,
    ) -> Result<(T, LinkSample), CallError> {
        let (response, sample) = self.send(builder, deadline).await?;
        if response.status() != StatusCode::OK {
            return Err(Self::error_of(response).await);
        }
        let body = response
            .json()
            .await
            .map_err(|error| CallError::Unreadable(error.to_string()))?;
        Ok((body, sample))
    }

    pub async fn keys(&self) -> Result<(JwkSet, LinkSample), CallError> {
        let builder = self
            .client
            .get(self.url("/device/keys"))
            .bearer_auth(&self.device_credential);
        self.fetch(builder, Duration::from_secs(10)).await
    }

    /// `GET /device/history`: what the central knows of this device's past.
    pub async fn history(
        &self,
    ) -> Result<(stile_shared::api::DeviceHistory, LinkSample), CallError> {
        let builder = self
            .client
            .get(self.url("/device/history"))
            .bearer_auth(&self.device_credential);
        self.fetch(builder, Duration::from_secs(10)).await
    }

    /// `GET /device/operators`: the verifiers for offline login.
    pub async fn operators(
        &self,
    ) -> Result<(stile_shared::api::OfflineOperators, LinkSample), CallError> {
        let builder = self
            .client
            .get(self.url("/device/operators"))
            .bearer_auth(&self.device_credential);
        self.fetch(builder, Duration::from_secs(10)).await
    }

    pub async fn ticket_feed(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<(TicketFeedPage, LinkSample), CallError> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(cursor) = cursor {
            query.push(("cursor", cursor.to_owned()));
        }
        let builder = self
            .client
            .get(self.url("/device/tickets"))
            .query(&query)
            .bearer_auth(&self.device_credential);
        self.fetch(builder, Duration::from_secs(30)).await
    }

    /// `PUT /device/peer`: registers this gate's peer key and address.
    pub async fn register_peer(
        &self,
        registration: &stile_shared::api::PeerRegistration,
    ) -> Result<(stile_shared::api::DevicePeer, LinkSample), CallError> {
        let builder = self
            .client
            .put(self.url("/device/peer"))
            .bearer_auth(&self.device_credential)
            .json(registration);
        self.fetch(builder, Duration::from_secs(10)).await
    }

    /// `GET /device/peers`: the merchant's other gates.
    pub async fn peers(&self) -> Result<(stile_shared::api::DevicePeers, LinkSample), CallError> {
        let builder = self
            .client
            .get(self.url("/device/peers"))
            .bearer_auth(&self.device_credential);
        self.fetch(builder, Duration::from_secs(10)).await
    }

    /// `GET /device/occupancy`: the occupancy of the device's venue today; `None` when its
    /// location belongs to no venue (404).
    pub async fn occupancy(
        &self,
    ) -> Result<Option<(stile_shared::api::VenueOccupancy, LinkSample)>, CallError> {
        let builder = self
            .client
            .get(self.url("/device/occupancy"))
            .bearer_auth(&self.device_credential);
        match self.fetch(builder, Duration::from_secs(10)).await {
            Ok(answer) => Ok(Some(answer)),
            Err(CallError::Refused { status: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    pub async fn upload(
        &self,
        decisions: Vec<OfflineDecision>,
    ) -> Result<UploadResponse, CallError> {
        let builder = self
            .client
            .post(self.url("/device/decisions"))
            .bearer_auth(&self.device_credential)
            .json(&DecisionUpload { decisions });
        self.fetch(builder, Duration::from_secs(30))
            .await
            .map(|(answer, _)| answer)
    }
}

async fn decision_answer(
    response: reqwest::Response,
    sample: LinkSample,
) -> Result<(ScanResponse, LinkSample), CallError> {
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED {
        return Err(CallError::Unauthorized);
    }
    let decision_status = matches!(status.as_u16(), 200 | 400 | 403 | 409);
    let bytes = response.bytes().await.map_err(classify)?;
    if decision_status {
        if let Ok(answer) = serde_json::from_slice::<ScanResponse>(&bytes) {
            return Ok((answer, sample));
        }
    }
    Err(refusal(status, &bytes))
}

/// An answer that is not what the caller wanted: the session expired, or a refusal with the
/// server's error body when it sent one.
fn refusal(status: StatusCode, body: &[u8]) -> CallError {
    if status == StatusCode::UNAUTHORIZED {
        return CallError::Unauthorized;
    }
    let body: Option<ErrorBody> = serde_json::from_slice(body).ok();
    CallError::Refused {
        status: status.as_u16(),
        code: body
            .as_ref()
            .map(|b| b.code.as_str().to_owned())
            .unwrap_or_default(),
        message: body.map(|b| b.message).unwrap_or_default(),
    }
}
