//! The operator logged in at this gate, and the gate display's state (waiting, checking, a
//! decision until it clears, logged out).

use crate::engine::GateDecision;
use std::time::{Duration, Instant};

/// The operator logged in at this gate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OperatorSession {
    #[serde(skip)]
    pub token: String,
    pub operator_id: i64,
    pub username: String,
    pub merchant_code: String,
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

    pub fn last(&self) -> Option<&GateDecision> {
        self.last.as_ref().map(|(_, decision)| decision)
    }
}
