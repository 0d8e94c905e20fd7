//! What the pipeline hands around: where a code came from ([`Origin`]), what a stage
//! decided before it is recorded ([`Outcome`]), and the decision as the gate shows it
//! ([`GateDecision`]).

use crate::store::Mode;
use std::time::{Duration, Instant};
use stile_shared::token::QrClaims;
use stile_shared::venue::Direction;
use stile_shared::ApiCode;

/// The whole time a scan may take, the online attempt and the scan lookup included: the gate
/// shows a decision within 1 s whatever the uplink does.
pub const DECISION_BUDGET: Duration = Duration::from_millis(900);

/// Where a code came from: frames of the capture pipeline are debounced (a code held in
/// front of the camera is decided once); an explicit request (`POST /api/scan`) is decided
/// every time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// From the capture pipeline; latency counts from the capture.
    Capture {
        captured_at: Instant,
    },
    Request,
}

/// A decision as the gate shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GateDecision {
    pub scan_id: String,
    pub code: ApiCode,
    pub message: String,
    pub mode: Mode,
    /// Masked (`TK-1***-1`): never a full ticket code on a screen or in a log.
    pub ticket: Option<String>,
    /// The token's id, when it verified (never shown on the gate display).
    #[serde(skip)]
    pub jti: Option<String>,
    pub entitlements: Vec<stile_shared::api::EntitlementView>,
    pub function_code: String,
    pub decided_at: String,
    pub latency_ms: f64,
    /// Re-shown by the debounce, not decided again.
    pub repeated: bool,
    /// For a refusal because another gate of the venue accepted the pair: that gate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted_at: Option<String>,
    /// Which way the gate lets people through (its setting).
    pub direction: Direction,
    /// A success that let a ticket back in after it left today, using no count.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reentry: bool,
}

impl GateDecision {
    pub fn is_green(&self) -> bool {
        self.code == ApiCode::Success
    }
}

/// `TK-1001-1` → `TK-1***-1`: enough for staff to match a ticket, not enough to copy one.
pub fn mask_ticket_code(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    if chars.len() <= 4 {
        return "*".repeat(chars.len());
    }
    let keep_start = 4.min(chars.len() / 2);
    let keep_end = 2.min(chars.len() - keep_start);
    let start: String = chars[..keep_start].iter().collect();
    let end: String = chars[chars.len() - keep_end..].iter().collect();
    format!("{start}***{end}")
}

/// What a stage of the pipeline decided, before it is recorded and shown.
#[derive(Debug)]
pub(super) struct Outcome {
    pub(super) code: ApiCode,
    pub(super) mode: Mode,
    /// The ticket code (masked only when shown).
    pub(super) ticket: Option<String>,
    pub(super) entitlements: Vec<stile_shared::api::EntitlementView>,
    pub(super) claims: Option<QrClaims>,
    /// The token, kept for upload (offline acceptances only).
    pub(super) upload_token: Option<String>,
    pub(super) operator_id: Option<i64>,
    /// The peer gate whose acceptance this refusal rests on.
    pub(super) peer: Option<String>,
    /// For a success at the venue: what it changed the occupancy by (see
    /// [`crate::store::DecisionRecord::occupancy_change`]).
    pub(super) passage: Option<i64>,
    /// Whether a success used a count (not an exit, not a re-entry).
    pub(super) redeemed: bool,
    /// For a passage: the venue's code (what the peers are told it passed).
    pub(super) venue: Option<String>,
}

impl Outcome {
    pub(super) fn local(code: ApiCode) -> Outcome {
        Outcome {
            code,
            mode: Mode::Local,
            ticket: None,
            entitlements: Vec::new(),
            claims: None,
            upload_token: None,
            operator_id: None,
            peer: None,
            passage: None,
            redeemed: true,
            venue: None,
        }
    }

    pub(super) fn about(mut self, claims: &QrClaims, operator_id: Option<i64>) -> Outcome {
        self.claims = Some(claims.clone());
        self.operator_id = operator_id;
        self
    }

    pub(super) fn showing_ticket(mut self, claims: &QrClaims) -> Outcome {
        self.ticket = Some(claims.tid.clone());
        self
    }

    pub(super) fn in_mode(mut self, mode: Mode) -> Outcome {
        self.mode = mode;
        self
    }
}

/// The first stages' answer: a decision to record, or the debounce's re-shown one.
pub(super) enum Staged {
    Decided(Outcome),
    Repeat(GateDecision),
}

#[cfg(test)]
mod tests {
    use super::mask_ticket_code;

    #[test]
    fn ticket_codes_are_masked() {
        let cases = [
            ("TK-1001-1", "TK-1***-1"),
            ("ABCDEFGHIJKL", "ABCD***KL"),
            ("AB", "**"),
            ("ABCDE", "AB***DE"),
        ];
        for (code, masked) in cases {
            assert_eq!(mask_ticket_code(code), masked, "{code}");
        }
    }
}
