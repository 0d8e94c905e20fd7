//! `stile-shared`: everything the central server and the gate agent must agree on.
//!
//! - [`codes`]: the decision and error codes of the contract with their zh-CN and English
//!   messages.
//! - [`token`]: the QR token (compact JWS, EdDSA, `kid` header): issuing, verifying against
//!   a key set built from the central's JWK Set, and the TTL policy.
//! - [`decision`]: the one scan decision function, used by the central server and the agent.
//! - [`api`]: request and response bodies of the HTTP API.
//! - [`html`]: the one HTML escape of every rendered page.
//! - [`domain`]: small validated value types (function codes, ticket status, channels).
//! - [`rules`]: an entitlement's check-in rules (validity period, daily window, uses per
//!   day, least interval) and the merchant's time zone they are read in.
//! - [`venue`]: venues, passages (entries, exits), presence and occupancy: exits,
//!   re-entry and capacity.
//! - [`peer`]: the gates' signed peer messages and the trust rule a gate judges them by.
//!
//! Architecture invariant: this crate does no I/O, reads no clock and spawns nothing. Every
//! function here can only fail for reasons found in its input; `now` is always passed in.

pub mod api;
pub mod codes;
pub mod credentials;
pub mod decision;
pub mod domain;
pub mod html;
pub mod peer;
pub mod rules;
pub mod token;
pub mod venue;

pub use codes::{ApiCode, DecisionCode, Lang};
pub use decision::{
    check_token, decide, is_superseded, remaining_after, Decision, DecisionInput,
    EntitlementSnapshot, QrKnowledge, TicketSnapshot,
};
pub use domain::{Channel, FunctionCode, Identifier, TicketStatus};
pub use rules::{EntitlementRules, MerchantZone};
pub use token::{KeySet, QrClaims, TokenError, TokenPolicy, VerifiedToken};
pub use venue::{Direction, Passage, Presence, VenueSnapshot};
