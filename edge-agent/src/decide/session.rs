//! The operator logged in at this gate, and the gate display's state (waiting, checking, a
//! decision until it clears, logged out).
//!
//! A session survives a reboot: it is kept in the store and restored at start while it has
//! not expired (an online session lives as long as the operator's token, an offline one
//! [`OFFLINE_SESSION_SECS`]). An operator can log in while the central is unreachable,
//! against the verifier the central provisioned to this device ([`OfflineLogins`], throttled
//! like the central's login); such a session has no token, so the gate decides offline
//! until it is exchanged for one (the sync loop does that as soon as the central answers).

use super::decision::GateDecision;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use stile_shared::api::OfflineOperator;

/// How long a session opened offline lasts (one shift, like the central's default token).
pub const OFFLINE_SESSION_SECS: i64 = 43_200;
/// Failed logins per username before the gate refuses further attempts for the window.
pub const LOGIN_MAX_FAILURES: usize = 10;
/// The window of that count.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(300);

/// The operator logged in at this gate.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OperatorSession {
    /// The operator JWT; `None` for a session opened offline (scans are then decided
    /// offline until it is exchanged for a token).
    #[serde(skip_serializing)]
    pub token: Option<String>,
    pub operator_id: i64,
    pub username: String,
    pub merchant_code: String,
    /// Unix seconds.
    pub expires_at: i64,
}

impl OperatorSession {
    /// The session a login at the central opens: its token, until the token expires.
    pub fn from_login(answer: stile_shared::api::LoginResponse, now: i64) -> OperatorSession {
        OperatorSession {
            token: Some(answer.token),
            operator_id: answer.operator.id,
            username: answer.operator.username,
            merchant_code: answer.operator.merchant_code,
            expires_at: now + answer.expires_in,
        }
    }

    pub fn is_offline(&self) -> bool {
        self.token.is_none()
    }

    pub fn is_expired(&self, now: i64) -> bool {
        now >= self.expires_at
    }

    /// The session as the store keeps it (the token included).
    pub fn to_stored(&self) -> String {
        serde_json::json!({
            "token": self.token,
            "operator_id": self.operator_id,
            "username": self.username,
            "merchant_code": self.merchant_code,
            "expires_at": self.expires_at,
        })
        .to_string()
    }

    pub fn from_stored(text: &str) -> Option<OperatorSession> {
        serde_json::from_str(text).ok()
    }
}

/// Why an offline login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineLoginError {
    /// Wrong username or password (the same answer for both, as at the central).
    BadCredentials,
    /// Too many failures for this username lately.
    Throttled,
}

/// Offline logins: the verifiers the central provisioned, and the failure counts.
#[derive(Debug, Default)]
pub struct OfflineLogins {
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl OfflineLogins {
    /// Whether `username` may try again now.
    pub fn throttled(&self, username: &str) -> bool {
        self.failures.lock().is_ok_and(|mut failures| {
            let recent = failures.entry(username.to_owned()).or_default();
            recent.retain(|at| at.elapsed() < LOGIN_WINDOW);
            recent.len() >= LOGIN_MAX_FAILURES
        })
    }

    pub fn failed(&self, username: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            // Bounded: made-up usernames cannot grow the map without end.
            if failures.len() > 1024 {
                failures.retain(|_, recent| recent.iter().any(|at| at.elapsed() < LOGIN_WINDOW));
            }
            failures
                .entry(username.to_owned())
                .or_default()
                .push(Instant::now());
        }
    }

    /// Checks `password` against `username`'s verifier among `operators`; a session of
    /// [`OFFLINE_SESSION_SECS`] when it matches. Counts and throttles failures.
    pub fn log_in(
        &self,
        operators: &[OfflineOperator],
        username: &str,
        password: &str,
        now: i64,
    ) -> Result<OperatorSession, OfflineLoginError> {
        if self.throttled(username) {
            return Err(OfflineLoginError::Throttled);
        }
        let matched = operators.iter().find(|operator| {
            operator.username == username
                && stile_shared::credentials::verify_password(&operator.verifier, password)
        });
        match matched {
            Some(operator) => Ok(OperatorSession {
                token: None,
                operator_id: operator.id,
                username: operator.username.clone(),
                merchant_code: operator.merchant_code.clone(),
                expires_at: now + OFFLINE_SESSION_SECS,
            }),
            None => {
                self.failed(username);
                Err(OfflineLoginError::BadCredentials)
            }
        }
    }
}

/// What the gate display shows.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Showing {
    /// Nobody is logged in: the gate decides nothing.
    LoggedOut,
    /// Ready for the next code.
    Waiting,
    /// A code is being decided: never the previous person's light meanwhile.
    Checking,
    /// A decision, until it clears.
    Decided { decision: Box<GateDecision> },
}

/// The display's state over time: a decision is shown for `clear_after`, then the gate
/// goes back to waiting.
#[derive(Debug, Default)]
pub struct Display {
    in_flight: usize,
    last: Option<(Instant, GateDecision)>,
}

impl Display {
    pub fn checking(&mut self) {
        self.in_flight += 1;
    }

    pub fn decided(&mut self, decision: GateDecision) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.last = Some((Instant::now(), decision));
    }

    /// Forgets the last decision (the operator logged out).
    pub fn clear(&mut self) {
        self.last = None;
    }

    pub fn showing(&self, logged_in: bool, clear_after: Duration) -> Showing {
        if self.in_flight > 0 {
            return Showing::Checking;
        }
        if !logged_in {
            return Showing::LoggedOut;
        }
        match &self.last {
            Some((at, decision)) if at.elapsed() < clear_after => Showing::Decided {
                decision: Box::new(decision.clone()),
            },
            _ => Showing::Waiting,
        }
    }
}
