//! Deciding: what happens between a decoded code and the green or red light.
//!
//! [`Gate::decide_code`] (in [`pipeline`]) runs the stages, each of which answers or hands on, then records
//! and shows the outcome in one place:
//! 1. Verify the token locally (keys from the central, pinned EdDSA). A token the gate has no
//!    key for (no keys synced yet, or an unknown kid) is `OFFLINE_UNVERIFIABLE`, not invalid.
//! 2. Debounce by meaning (capture frames only): the same (jti, function_code) seen again
//!    within `debounce_secs` re-shows the last decision (a code held in front of the camera).
//! 3. The operator session, then the checks that need no ticket (expiry, merchant).
//! 4. A (jti, function_code) this device already accepted is blocked locally, online or not
//!    (unless the shared decision on the copy says otherwise, e.g. a re-entry; exit gates
//!    redeem nothing and skip this).
//! 5. Online, only while the uplink is online or draining ([`crate::uplink`]): `POST
//!    /venue/scan` with a fresh scan_id and a short deadline; when the request may have been
//!    applied, a lookup by scan_id with what is left of [`DECISION_BUDGET`].
//! 6. Offline: the same shared decision function over the synced state, under the same
//!    scan_id, so the later upload reconciles with whatever the central recorded; the
//!    offline policy can refuse (`OFFLINE_UNVERIFIABLE`, also for an entry that needs room
//!    at a venue with a capacity when the occupancy figure is older than
//!    `offline.occupancy_max_age_secs`). At a venue ([`venue`]): entries with the ticket's
//!    presence and the estimated occupancy, exits with `decide_exit`.
//!
//! Recording: a decision the central made is shown as the central made it even when the
//! store cannot record it (that is an alarm); a decision the gate made alone is shown only
//! once it is in SQLite, and as `STORE_FAILED` when it could not be recorded.

//!
//! Layout: [`gate`] (the state), [`pipeline`] (the stages), [`decision`] (what they hand
//! around), [`session`] (the operator and the display), [`venue`] (presence and occupancy
//! as the gate knows them).

pub mod decision;
pub mod gate;
pub mod pipeline;
pub mod session;
pub mod venue;

pub use decision::{mask_ticket_code, GateDecision, Origin, DECISION_BUDGET};
pub use gate::{age_secs, Gate, GateError, LoginFailure, OccupancyChart, StoreLoss};
pub use session::OperatorSession;
