//! Request and response bodies of the central server's HTTP API, shared with its clients
//! (the gate agent, tests, the load benchmark). Field names are the contract's.

use crate::codes::{ApiCode, DecisionCode};
use crate::domain::{Channel, FunctionCode, Identifier, TicketStatus};
use crate::token::Jti;
use serde::{Deserialize, Serialize};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// The body of every error answer: `{"code", "message"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ErrorBody {
    pub code: ApiCode,
    pub message: String,
}

/// `POST /operators/login`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct LoginRequest {
    pub username: Identifier,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 1024))]
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct OperatorInfo {
    pub id: i64,
    pub username: String,
    pub merchant_code: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct LoginResponse {
    /// The operator JWT, sent back as `Authorization: Bearer <token>`.
    pub token: String,
    /// Always `"Bearer"`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: i64,
    pub operator: OperatorInfo,
}

/// `POST /venue/scan`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ScanRequest {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 512))]
    pub qr_token: String,
    pub function_code: FunctionCode,
    pub venue_code: Identifier,
    pub device_id: Identifier,
    /// The client's idempotency key (a UUID): a retry with the same `scan_id` returns the
    /// original decision.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(format = Uuid))]
    pub scan_id: Option<String>,
    /// `entry` (the default) or `exit`: a gate in exit mode records exits of tickets inside
    /// its venue (`NOT_INSIDE` otherwise). An exit needs a location of a venue.
    #[serde(default)]
    pub direction: crate::venue::Direction,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct EntitlementView {
    pub function_code: FunctionCode,
    pub name: String,
    pub total_uses: i32,
    pub remaining_uses: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TicketView {
    pub ticket_code: String,
    pub status: TicketStatus,
    pub entitlements: Vec<EntitlementView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct OperatorRef {
    pub id: i64,
    pub username: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RedemptionView {
    pub id: i64,
    /// RFC 3339 with offset.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub redeemed_at: String,
    pub operator: OperatorRef,
    /// The gate's device; absent for merchant-console redemptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Where it happened; absent when a merchant-console scan names no location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub venue_code: Option<String>,
}

/// The answer to a scan: `result` and `code` are both the decision code, so every answer is
/// also a valid error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ScanResponse {
    pub result: DecisionCode,
    pub code: DecisionCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<TicketView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redemption: Option<RedemptionView>,
}

/// `POST /qr/decrypt`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct DecryptRequest {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 512))]
    pub qr_token: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum TokenState {
    Valid,
    Expired,
    Superseded,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ClaimsView {
    pub jti: Jti,
    pub ch: Channel,
    pub iat: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct DecryptResponse {
    pub token_state: TokenState,
    pub claims: ClaimsView,
    /// The ticket; null only for an expired token of another merchant (its state is told,
    /// nothing of the ticket).
    pub ticket: Option<TicketView>,
}

/// `POST /tickets/{ticket_code}/qr`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct IssuedQr {
    pub qr_token: String,
    pub jti: Jti,
    /// RFC 3339; null for `OTA` tokens, which do not expire.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub expires_at: Option<String>,
}

/// `POST /merchant/tickets/scan`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct MerchantScanRequest {
    /// A QR token, or an order code (redeems every ticket of the order that can take it).
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 1024))]
    pub code: String,
    /// Defaults to `ENTRY`.
    #[serde(default)]
    pub function_code: Option<FunctionCode>,
    /// A `venue_code` of the operator's merchant.
    #[serde(default)]
    pub location_id: Option<Identifier>,
    /// Accepted and ignored: sessions were replaced by the operator JWT.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 1024))]
    pub session_id: Option<String>,
}

/// Whether a merchant scan redeemed every selected ticket, some, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum MerchantScanResult {
    Success,
    Partial,
    Reject,
}

/// One ticket's outcome in a merchant scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct MerchantTicketOutcome {
    pub ticket_code: String,
    pub passenger_name: String,
    pub code: DecisionCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redemption: Option<RedemptionView>,
    pub entitlements: Vec<EntitlementView>,
}

/// The answer of a merchant scan. On 409 (nothing redeemable) it is also an error body:
/// `code` and `message` are set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct MerchantScanResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ApiCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub result: MerchantScanResult,
    pub tickets: Vec<MerchantTicketOutcome>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct OrderEntitlementView {
    pub function_code: FunctionCode,
    pub name: String,
    pub total_uses: i32,
    pub remaining_uses: i32,
    /// RFC 3339; null when never redeemed.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub last_redeemed_at: Option<String>,
    /// Its check-in rules; absent when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<crate::rules::EntitlementRules>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct OrderTicketView {
    pub ticket_code: String,
    pub status: TicketStatus,
    pub entitlements: Vec<OrderEntitlementView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct PassengerView {
    pub passenger_name: String,
    pub tickets: Vec<OrderTicketView>,
}

/// `GET /merchant/orders/{orderId}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct OrderView {
    pub order_id: String,
    pub passengers: Vec<PassengerView>,
}

/// One row of the reconciliation log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RedemptionItem {
    pub id: i64,
    /// When the central recorded the redemption (RFC 3339).
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub redeemed_at: String,
    pub ticket_code: String,
    pub order_id: String,
    pub function_code: String,
    pub operator: Option<OperatorRef>,
    pub venue_code: Option<String>,
    pub device_id: Option<String>,
    /// `venue`, `merchant` or `offline`.
    pub source: String,
    /// When the deciding process decided (a gate's clock for offline decisions).
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub decided_at: String,
    /// When an offline decision was uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub uploaded_at: Option<String>,
    /// `SUCCESS`, or `CONFLICT`: a gate accepted it offline but the central could not apply
    /// it (nothing was redeemed by this row).
    pub result: String,
    /// For a conflict, the central's decision code (e.g. `ALREADY_REDEEMED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict_code: Option<String>,
}

/// `GET /merchant/redemptions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RedemptionPage {
    pub items: Vec<RedemptionItem>,
    /// Opaque; null on the last page.
    pub next_cursor: Option<String>,
}

/// A ticket as a gate device keeps it for deciding offline (`GET /device/tickets`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SyncedTicket {
    pub ticket_code: String,
    pub status: TicketStatus,
    pub channel: Channel,
    /// The jti of the ticket's newest QR; older tokens are superseded.
    pub current_jti: Option<Jti>,
    /// The `iat` (Unix seconds) of `current_jti`: a token issued later is newer than what
    /// this copy knows, and a gate does not call it superseded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_issued_at: Option<i64>,
    pub entitlements: Vec<EntitlementView>,
    /// Function codes already redeemed under `current_jti`.
    pub redeemed_functions: Vec<FunctionCode>,
    /// The check-in rules of those entitlements that have any, with the uses they need.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<SyncedRules>,
    /// The ticket's latest passage (entry or exit) at the device's venue, if any: its
    /// presence there, for exits and re-entry offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passage: Option<crate::venue::Passage>,
}

/// The check-in rules of one entitlement of a synced ticket, and its newest uses: what a gate
/// needs to decide the rules offline exactly as the central does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SyncedRules {
    pub function_code: FunctionCode,
    pub rules: crate::rules::EntitlementRules,
    /// When the entitlement was used, Unix seconds, newest first: at least as many as its
    /// rules need (the day's uses up to `uses_per_day`, the last one for the interval).
    #[serde(default)]
    pub recent_uses: Vec<i64>,
}

/// One page of the device's change feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TicketFeedPage {
    pub tickets: Vec<SyncedTicket>,
    /// Where the next call resumes; store it and send it back.
    pub next_cursor: String,
    /// True when the device has caught up (for now).
    pub complete: bool,
    /// The merchant's time zone (IANA name), in which daily windows and days are read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// The venue of the device's location, with its occupancy as this page was read; absent
    /// when the location belongs to no venue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub venue: Option<SyncedVenue>,
    /// Which database answered (cluster, timeline, database): when it changes, the commits
    /// of the previous one may be lost (a restore, an asynchronous standby promoted), and a
    /// gate re-uploads the online successes it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_epoch: Option<String>,
}

/// A venue as a gate keeps it: which scans are its entries, its capacity, and the occupancy
/// the central counted at `as_of`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SyncedVenue {
    pub venue_code: String,
    pub name: String,
    /// Scans of this function at the venue's locations are its entries.
    pub entry_function: FunctionCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<i64>,
    /// Tickets inside when the central read this page.
    pub inside: i64,
    /// When that was, Unix seconds, the central's clock.
    pub as_of: i64,
}

/// Occupancy of one venue over five minutes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct OccupancyPoint {
    /// Start of the five minutes (RFC 3339, the merchant's offset).
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub at: String,
    pub entries: i64,
    pub exits: i64,
    /// Tickets inside at the end of the five minutes.
    pub inside: i64,
}

/// A venue's occupancy: now, and through one merchant-local day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct VenueOccupancy {
    pub venue_code: String,
    pub name: String,
    /// Tickets inside now (for today; at the end of the day for an earlier `date`).
    pub inside: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<i64>,
    /// Entries (first entries, re-entries and entries of tickets already inside) that day.
    pub entries: i64,
    pub exits: i64,
    /// The merchant-local day, `YYYY-MM-DD`.
    pub date: String,
    /// Every five minutes of the day with a passage, in time order.
    pub series: Vec<OccupancyPoint>,
}

/// `GET /merchant/occupancy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct OccupancyReport {
    pub venues: Vec<VenueOccupancy>,
}

/// `POST /device/enroll`: a new device exchanges its one-time code for its credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct EnrollRequest {
    pub device_id: Identifier,
    /// The code from the operations API (`POST /admin/devices/{device_id}/enrollment`).
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 128))]
    pub code: String,
}

/// The credential a device uses from now on: `Authorization: Bearer <device_id>:<secret>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct EnrollResponse {
    pub device_id: Identifier,
    pub secret: String,
}

/// An `i64` written as a JSON integer or as a number with no fraction (`12.0`): JSON Schema
/// counts both as an integer, so both are accepted.
pub fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    struct Whole;
    impl serde::de::Visitor<'_> for Whole {
        type Value = i64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a whole number")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom("a whole number out of range"))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<i64, E> {
            // Whole numbers a double holds exactly (|v| <= 2^53); beyond that a float may be
            // a rounded integer outside 64 bits.
            if v.fract() == 0.0 && v.abs() <= 9_007_199_254_740_992.0 {
                Ok(v as i64)
            } else {
                Err(E::custom("a whole number (no fraction, within 64 bits)"))
            }
        }
    }
    deserializer.deserialize_any(Whole)
}

/// A decision a gate took offline, uploaded later (`POST /device/decisions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct OfflineDecision {
    /// The scan's idempotency key, a UUID. Each decision is answered on its own: one that
    /// is not a UUID is `invalid` in the results, the others are still applied.
    pub scan_id: String,
    /// The token as scanned; one that does not verify is a conflict for this decision alone.
    pub qr_token: String,
    pub function_code: FunctionCode,
    /// When the gate decided, RFC 3339; anything else is `invalid` for this decision alone.
    pub decided_at: String,
    /// The operator logged in at the gate (a JSON integer; `12.0` is the same number).
    #[serde(deserialize_with = "crate::api::whole_number")]
    pub operator_id: i64,
    /// `entry` (the default) or `exit`, as the gate decided it.
    #[serde(default)]
    pub direction: crate::venue::Direction,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct DecisionUpload {
    pub decisions: Vec<OfflineDecision>,
}

/// What the central made of one uploaded decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum UploadOutcome {
    /// Redeemed at the central as the gate decided.
    Applied,
    /// The central could not apply it (redeemed elsewhere, superseded, exhausted, voided...):
    /// recorded for the merchant's reconciliation.
    Conflict,
    /// The upload itself was malformed (bad scan_id, unknown operator...).
    Invalid,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct UploadResult {
    pub scan_id: String,
    pub outcome: UploadOutcome,
    /// The central's decision code (or `BAD_REQUEST` for an invalid upload).
    pub code: ApiCode,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct UploadResponse {
    pub results: Vec<UploadResult>,
}

/// An operator of the device's merchant, as a gate keeps it to log the operator in while
/// the central is unreachable (`GET /device/operators`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct OfflineOperator {
    pub id: i64,
    pub username: String,
    pub merchant_code: String,
    /// The argon2id PHC string of the operator's password (a verifier, never the password).
    pub verifier: String,
}

/// Every operator a device may log in offline; operators missing from the list (removed,
/// or of another merchant) cannot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct OfflineOperators {
    pub operators: Vec<OfflineOperator>,
}

/// A gate registers the public half of its peer key, and where it serves its peers
/// (`PUT /device/peer`). The private half never leaves the gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PeerRegistration {
    /// The Ed25519 public key: 32 bytes, base64url without padding.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_-]{43}$"))]
    pub public_key: String,
    /// `host:port` the gate's peer listener is reached at on the venue's LAN. Absent: the
    /// address the central sees the request come from, with `port`.
    #[cfg_attr(feature = "openapi", schema(max_length = 255))]
    pub address: Option<String>,
    /// The peer listener's port, when `address` is absent.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65535))]
    pub port: Option<u16>,
}

/// One other gate of the merchant, as a gate sees it in `GET /device/peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct DevicePeer {
    pub device_id: String,
    pub venue_code: String,
    /// `host:port` of its peer listener.
    pub address: String,
    /// Its Ed25519 public key, base64url.
    pub public_key: String,
}

/// The gate's merchant and its other gates that registered a peer key (`GET /device/peers`);
/// revoked devices are not listed. A gate replaces its list with each answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct DevicePeers {
    pub merchant_code: String,
    /// The address and key the central holds for the asking device itself (null before it
    /// registered).
    pub registered: Option<DevicePeer>,
    pub peers: Vec<DevicePeer>,
}

/// What the central knows of a device's past (`GET /device/history`): a gate that starts
/// with an empty store while the central says it has synced before has lost local state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct DeviceHistory {
    /// When the device first completed a full ticket sync (RFC 3339); null if never.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub first_synced_at: Option<String>,
    /// When the device last uploaded offline decisions (RFC 3339); null if never.
    #[cfg_attr(feature = "openapi", schema(format = DateTime))]
    pub last_upload_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::OfflineDecision;

    fn operator_of(raw: &str) -> Result<i64, serde_json::Error> {
        let text = format!(
            r#"{{"scan_id": "s", "qr_token": "t", "function_code": "ENTRY", "decided_at": "d", "operator_id": {raw}}}"#
        );
        serde_json::from_str::<OfflineDecision>(&text).map(|d| d.operator_id)
    }

    #[test]
    fn an_operator_id_is_a_whole_number_written_either_way() {
        assert_eq!(operator_of("12").ok(), Some(12));
        assert_eq!(operator_of("12.0").ok(), Some(12));
        assert_eq!(operator_of("-9223372036854775808").ok(), Some(i64::MIN));
        for bad in [
            "12.5",
            "-9223372036854775809",
            "9223372036854775808",
            "1e300",
            "\"12\"",
            "null",
        ] {
            assert!(operator_of(bad).is_err(), "{bad}");
        }
    }
}
