//! The uplink as the gate sees it, and the background probe that brings it back.
//!
//! States: `online` (scans go to the central first), `suspect` (a call timed out or the
//! central answered 5xx: the link may be hanging), `offline` (nothing reached the central),
//! `draining` (back online with offline acceptances still being uploaded). While the link
//! is suspect or offline, scans are decided offline at once, with no round trip, and
//! [`super::sync::probe_loop`] asks the central's `/healthz` in the background every
//! [`PROBE_INTERVAL`]; the first answer puts the link back online and wakes the sync loop
//! so the queue drains at once instead of after its backoff.

use super::central::{CallError, LinkSample};
use crate::store::now_rfc3339;
use serde::Serialize;
use std::time::Duration;

/// How often a suspect or offline link is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How long a probe waits for the central.
pub const PROBE_DEADLINE: Duration = Duration::from_millis(400);

/// What the gate believes about its link to the central.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    Online,
    Suspect,
    /// Nothing heard from the central yet, or it cannot be reached.
    #[default]
    Offline,
    Draining,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Online => "online",
            LinkState::Suspect => "suspect",
            LinkState::Offline => "offline",
            LinkState::Draining => "draining",
        }
    }

    /// Whether a scan should try the central first.
    pub fn try_online(self) -> bool {
        matches!(self, LinkState::Online | LinkState::Draining)
    }
}

/// The uplink as the gate last saw it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Uplink {
    pub state: LinkState,
    /// `state` is online or draining (kept for readers of the status JSON).
    pub online: bool,
    pub rtt_ms: Option<f64>,
    pub last_ok_at: Option<String>,
    pub last_error: Option<String>,
    /// Since when the link has been suspect or offline.
    pub down_since: Option<String>,
    pub clock_offset_secs: Option<f64>,
    /// Offline acceptances are being uploaded.
    #[serde(skip)]
    pub draining: bool,
}

impl Uplink {
    fn settle(&mut self, state: LinkState) {
        self.state = state;
        self.online = state.try_online();
    }

    /// A call got an answer.
    pub fn ok(&mut self, sample: Option<LinkSample>) {
        self.last_ok_at = Some(now_rfc3339());
        self.last_error = None;
        self.down_since = None;
        if let Some(sample) = sample {
            self.rtt_ms = Some(sample.rtt.as_secs_f64() * 1000.0);
            if let Some(offset) = sample.clock_offset_secs {
                self.clock_offset_secs = Some(offset);
            }
        }
        let state = if self.draining {
            LinkState::Draining
        } else {
            LinkState::Online
        };
        self.settle(state);
    }

    /// A call failed. Refusals (4xx) say nothing about the link.
    pub fn failed(&mut self, error: &CallError) {
        self.last_error = Some(error.to_string());
        if !error.is_uplink_failure() {
            return;
        }
        if !matches!(self.state, LinkState::Suspect | LinkState::Offline) {
            self.down_since = Some(now_rfc3339());
        }
        let state = match error {
            CallError::Unreachable(_) => LinkState::Offline,
            _ => LinkState::Suspect,
        };
        self.settle(state);
    }

    /// The upload queue started or finished draining.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
        match (self.state, draining) {
            (LinkState::Online, true) => self.settle(LinkState::Draining),
            (LinkState::Draining, false) => self.settle(LinkState::Online),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_what_calls_say() {
        let mut uplink = Uplink::default();
        assert_eq!(uplink.state, LinkState::Offline);
        uplink.ok(None);
        assert_eq!(uplink.state, LinkState::Online);
        uplink.failed(&CallError::Refused {
            status: 403,
            code: "FORBIDDEN".into(),
            message: "not bound".into(),
        });
        assert_eq!(
            uplink.state,
            LinkState::Online,
            "a refusal is not a link failure"
        );
        uplink.failed(&CallError::Timeout);
        assert_eq!(uplink.state, LinkState::Suspect);
        assert!(uplink.down_since.is_some() && !uplink.online);
        uplink.failed(&CallError::Unreachable("refused".into()));
        assert_eq!(uplink.state, LinkState::Offline);
        uplink.set_draining(true);
        assert_eq!(uplink.state, LinkState::Offline, "draining needs the link");
        uplink.ok(None);
        assert_eq!(uplink.state, LinkState::Draining);
        assert!(uplink.online && uplink.down_since.is_none());
        uplink.set_draining(false);
        assert_eq!(uplink.state, LinkState::Online);
    }
}
