//! The gates' peer protocol: how the gates of one merchant tell each other what they let
//! in, so that a second gate refuses a ticket the first one just accepted while the central
//! is unreachable.
//!
//! Every message is signed by the device that sends it with its own Ed25519 key (the
//! private half never leaves the device; the public half is registered with the central
//! through the device credential and handed to the other gates in the device feed). The
//! wire form is compact: `base64url(payload JSON) "." base64url(signature)`, the signature
//! taken over [`DOMAIN`] and the encoded payload, so a peer signature can never pass for a
//! QR token or the other way round. The payload names its kind, so a signed request
//! cannot be replayed as an acceptance, nor a pull as a push.
//!
//! Every request between gates (a push of acceptances, a pull of a log) carries a signed
//! [`PeerRequest`]: who asks, whom, and a nonce that grows with every request, so a request
//! seen once is refused when it comes again (a replay) and a request meant for one gate is
//! refused by another. The acceptances inside are signed by the gate that made them.
//!
//! [`judge`] is the one trust rule a receiving gate applies before a message has any
//! effect: well-formed, not its own, from its merchant, from a device it knows, signed by
//! that device's key. Whether a nonce is new is for the receiver's memory to say.

use crate::domain::{FunctionCode, Identifier};
use crate::token::Jti;
use crate::venue::Direction;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// What every peer signature covers before the payload.
pub const DOMAIN: &[u8] = b"stile-peer-v1.";

/// The longest message a gate accepts (an acceptance is about 400 characters).
pub const MAX_MESSAGE_LEN: usize = 2048;

/// How an acceptance was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AcceptMode {
    /// By the central: the redemption is already there.
    Online,
    /// By the gate alone: the gate uploads it later.
    Offline,
}

impl AcceptMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AcceptMode::Online => "online",
            AcceptMode::Offline => "offline",
        }
    }
}

/// One acceptance as a gate announces it: entry `seq` of the device's log `log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acceptance {
    /// The gate that accepted.
    pub device: Identifier,
    pub merchant: Identifier,
    /// The device's log: a new store starts a new log, so its numbers start again at 1
    /// without colliding with what peers hold of the old one.
    pub log: LogId,
    /// 1, 2, 3, ... within the log, without gaps.
    pub seq: u64,
    pub jti: Jti,
    pub function_code: FunctionCode,
    pub ticket: Identifier,
    /// RFC 3339, the accepting gate's clock.
    pub decided_at: String,
    pub mode: AcceptMode,
    /// Which way the scan went: an exit gate announces its exits too. Absent: an entry
    /// (every acceptance before venues was one).
    #[serde(default, skip_serializing_if = "is_entry")]
    pub direction: Direction,
    /// Whether the acceptance used a count of the entitlement (what blocks the pair at the
    /// peers and comes off their counts): an exit and a re-entry use none. Absent: `true`.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub redeemed: bool,
    /// The venue of the accepting gate's location, when it has one: a peer counts only
    /// passages of its own venue into its presence and occupancy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub venue: Option<Identifier>,
    /// What the passage changed the venue's occupancy by (+1 an entry that took a place,
    /// 0 an entry of a ticket inside, -1 an exit); absent when the scan was no passage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occupancy_change: Option<i64>,
}

fn is_entry(direction: &Direction) -> bool {
    *direction == Direction::Entry
}

fn yes() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

/// A request of one gate to another (the `Authorization: StilePeer` header of a push or a
/// pull).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRequest {
    /// Who asks.
    pub device: Identifier,
    pub merchant: Identifier,
    /// Whom it asks (a request signed for one peer is refused by another).
    pub peer: Identifier,
    /// Grows with every request of the asker (its clock in milliseconds, or one more than
    /// the last): each peer takes a request only when it is newer than the last one of that
    /// kind it took from that device.
    pub nonce: u64,
}

/// What a signed payload says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PeerMessage {
    Accept(Acceptance),
    /// "Take these acceptances of mine" (the body of the request).
    Push(PeerRequest),
    /// "Give me your log after this point".
    Pull(PeerRequest),
}

impl PeerMessage {
    /// The device the payload says sent it.
    pub fn device(&self) -> &Identifier {
        match self {
            PeerMessage::Accept(a) => &a.device,
            PeerMessage::Push(r) | PeerMessage::Pull(r) => &r.device,
        }
    }

    pub fn merchant(&self) -> &Identifier {
        match self {
            PeerMessage::Accept(a) => &a.merchant,
            PeerMessage::Push(r) | PeerMessage::Pull(r) => &r.merchant,
        }
    }
}

/// A device log's name: 16 random bytes, base64url.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct LogId(String);

impl LogId {
    pub fn from_bytes(bytes: [u8; 16]) -> LogId {
        LogId(URL_SAFE_NO_PAD.encode(bytes))
    }

    pub fn parse(raw: &str) -> Result<LogId, PeerError> {
        match URL_SAFE_NO_PAD.decode(raw) {
            Ok(bytes) if bytes.len() == 16 && raw.len() == 22 => Ok(LogId(raw.to_owned())),
            _ => Err(PeerError::Malformed(
                "log must be 16 bytes of base64url".into(),
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for LogId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        LogId::parse(&String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// A device's public key as the API and settings carry it: the 32 bytes, base64url.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerKey(VerifyingKey);

impl PeerKey {
    pub fn parse(raw: &str) -> Result<PeerKey, PeerError> {
        let bytes: [u8; 32] = URL_SAFE_NO_PAD
            .decode(raw.trim())
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| PeerError::BadKey("must be 32 bytes of base64url".into()))?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| PeerError::BadKey("not a point of the curve".into()))?;
        if key.is_weak() {
            return Err(PeerError::BadKey("a weak key".into()));
        }
        Ok(PeerKey(key))
    }

    pub fn of(signing: &SigningKey) -> PeerKey {
        PeerKey(signing.verifying_key())
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0.as_bytes())
    }

    /// A short name of the key for pages and logs (the first 8 bytes, hex).
    pub fn fingerprint(&self) -> String {
        self.0.as_bytes()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Where a gate serves its peers: `host:port`, the host an IP address or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct PeerAddress(String);

impl PeerAddress {
    pub fn parse(raw: &str) -> Result<PeerAddress, PeerError> {
        let bad = |why: &str| PeerError::BadAddress(format!("{raw:?} {why}"));
        if raw.len() > 255 {
            return Err(bad("is longer than 255 characters"));
        }
        if raw.parse::<std::net::SocketAddr>().is_ok() {
            return Ok(PeerAddress(raw.to_owned()));
        }
        let (host, port) = raw
            .rsplit_once(':')
            .ok_or_else(|| bad("is not host:port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad("has no port from 1 to 65535"))?;
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if host.is_empty() || !host.split('.').all(label_ok) {
            return Err(bad("has no host name or IP address"));
        }
        if host.parse::<std::net::Ipv4Addr>().is_err()
            && host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        {
            return Err(bad("has no host name or IP address"));
        }
        Ok(PeerAddress(format!("{host}:{port}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for PeerAddress {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        PeerAddress::parse(&String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// Why a message was not taken. [`PeerError::reason`] is the label it is counted under.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("malformed peer message: {0}")]
    Malformed(String),
    #[error("the message comes from this device itself")]
    Own,
    #[error("the message is from merchant {0}, not this gate's")]
    OtherMerchant(String),
    #[error("device {0} is not a known peer")]
    UnknownDevice(String),
    #[error("the signature does not verify with {0}'s key")]
    Forged(String),
    #[error("bad peer key: {0}")]
    BadKey(String),
    #[error("bad peer address: {0}")]
    BadAddress(String),
}

impl PeerError {
    pub fn reason(&self) -> &'static str {
        match self {
            PeerError::Malformed(_) | PeerError::BadKey(_) | PeerError::BadAddress(_) => {
                "malformed"
            }
            PeerError::Own => "own",
            PeerError::OtherMerchant(_) => "other_merchant",
            PeerError::UnknownDevice(_) => "unknown_device",
            PeerError::Forged(_) => "forged",
        }
    }
}

fn signed_bytes(encoded_payload: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(DOMAIN.len() + encoded_payload.len());
    bytes.extend_from_slice(DOMAIN);
    bytes.extend_from_slice(encoded_payload.as_bytes());
    bytes
}

/// The compact signed form of a message.
pub fn sign(message: &PeerMessage, key: &SigningKey) -> String {
    // Serializing these plain structs cannot fail.
    let payload = serde_json::to_vec(message).unwrap_or_default();
    let encoded = URL_SAFE_NO_PAD.encode(payload);
    let signature = key.sign(&signed_bytes(&encoded));
    format!("{encoded}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// What the receiving gate knows when it judges a message.
#[derive(Debug, Clone, Copy)]
pub struct Receiver<'a> {
    pub device: &'a Identifier,
    pub merchant: &'a Identifier,
}

/// The trust rule: the message, when it is well formed, not this gate's own, from this
/// gate's merchant, from a known device (`key_of` gives its registered key) and signed with
/// that key — in that order, so the reason counted is the first that fails.
pub fn judge(
    compact: &str,
    receiver: Receiver<'_>,
    key_of: impl Fn(&Identifier) -> Option<PeerKey>,
) -> Result<PeerMessage, PeerError> {
    if compact.len() > MAX_MESSAGE_LEN {
        return Err(PeerError::Malformed(format!(
            "longer than {MAX_MESSAGE_LEN} characters"
        )));
    }
    let (encoded, signature) = compact
        .split_once('.')
        .ok_or_else(|| PeerError::Malformed("not payload.signature".into()))?;
    let payload = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| PeerError::Malformed("payload is not base64url".into()))?;
    let signature: [u8; 64] = URL_SAFE_NO_PAD
        .decode(signature)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| PeerError::Malformed("signature is not 64 bytes of base64url".into()))?;
    let message: PeerMessage = serde_json::from_slice(&payload)
        .map_err(|error| PeerError::Malformed(error.to_string()))?;
    if message.device() == receiver.device {
        return Err(PeerError::Own);
    }
    if message.merchant() != receiver.merchant {
        return Err(PeerError::OtherMerchant(message.merchant().to_string()));
    }
    let key = key_of(message.device())
        .ok_or_else(|| PeerError::UnknownDevice(message.device().to_string()))?;
    key.0
        .verify_strict(&signed_bytes(encoded), &Signature::from_bytes(&signature))
        .map_err(|_| PeerError::Forged(message.device().to_string()))?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(raw: &str) -> Identifier {
        Identifier::parse(raw).expect("identifier")
    }

    fn acceptance(device: &str, merchant: &str) -> PeerMessage {
        PeerMessage::Accept(Acceptance {
            device: id(device),
            merchant: id(merchant),
            log: LogId::from_bytes([7; 16]),
            seq: 1,
            jti: Jti::from_bytes([1; 16]),
            function_code: FunctionCode::parse("ENTRY").expect("code"),
            ticket: id("TK-1"),
            decided_at: "2026-12-02T10:00:00.000Z".into(),
            mode: AcceptMode::Offline,
            direction: Direction::Entry,
            redeemed: true,
            venue: None,
            occupancy_change: None,
        })
    }

    #[test]
    fn an_acceptance_without_the_venue_fields_is_a_redeeming_entry() {
        // The form every gate sent before exits travelled between peers.
        let old = r#"{"kind":"accept","device":"dev-west","merchant":"M001","log":"BwcHBwcHBwcHBwcHBwcHBw","seq":1,"jti":"AQEBAQEBAQEBAQEBAQEBAQ","function_code":"ENTRY","ticket":"TK-1","decided_at":"2026-12-02T10:00:00.000Z","mode":"offline"}"#;
        let message: PeerMessage = serde_json::from_str(old).expect("old form");
        assert_eq!(message, acceptance("dev-west", "M001"));
        // A redeeming entry without a venue is still written in that form.
        let encoded = serde_json::to_string(&message).expect("json");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&encoded).expect("json"),
            serde_json::from_str::<serde_json::Value>(old).expect("json")
        );
        // An exit carries what makes it one, and reads back the same.
        let mut exit = message.clone();
        if let PeerMessage::Accept(a) = &mut exit {
            a.direction = Direction::Exit;
            a.redeemed = false;
            a.venue = Some(id("PARK"));
            a.occupancy_change = Some(-1);
        }
        let encoded = serde_json::to_string(&exit).expect("json");
        for field in [
            r#""direction":"exit""#,
            r#""redeemed":false"#,
            r#""venue":"PARK""#,
            r#""occupancy_change":-1"#,
        ] {
            assert!(encoded.contains(field), "{encoded}");
        }
        assert_eq!(
            serde_json::from_str::<PeerMessage>(&encoded).expect("exit"),
            exit
        );
        // A field nobody knows is still refused.
        let unknown = old.replace(r#""mode":"offline""#, r#""mode":"offline","extra":1"#);
        assert!(serde_json::from_str::<PeerMessage>(&unknown).is_err());
    }

    #[test]
    fn a_signed_message_is_judged_by_its_senders_key_only() {
        let west = SigningKey::from_bytes(&[3; 32]);
        let stranger = SigningKey::from_bytes(&[4; 32]);
        let message = acceptance("dev-west", "M001");
        let signed = sign(&message, &west);
        assert!(signed.len() < 600, "{}", signed.len());
        let (me, merchant) = (id("dev-east"), id("M001"));
        let receiver = Receiver {
            device: &me,
            merchant: &merchant,
        };
        let known = |d: &Identifier| (d.as_str() == "dev-west").then(|| PeerKey::of(&west));
        assert_eq!(judge(&signed, receiver, known), Ok(message.clone()));
        // Signed by someone else in west's name.
        let forged = sign(&message, &stranger);
        assert_eq!(
            judge(&forged, receiver, known).map_err(|e| e.reason()),
            Err("forged")
        );
        // A payload changed under a good signature.
        let (_, signature) = signed.split_once('.').expect("compact");
        let mut other = message.clone();
        if let PeerMessage::Accept(a) = &mut other {
            a.ticket = id("TK-2");
        }
        let changed = format!(
            "{}.{signature}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).expect("json"))
        );
        assert_eq!(
            judge(&changed, receiver, known).map_err(|e| e.reason()),
            Err("forged")
        );
        // Unknown device, other merchant, own message, garbage.
        let north = sign(&acceptance("dev-north", "M001"), &stranger);
        assert_eq!(
            judge(&north, receiver, known).map_err(|e| e.reason()),
            Err("unknown_device")
        );
        let m2 = sign(&acceptance("dev-west", "M002"), &west);
        assert_eq!(
            judge(&m2, receiver, known).map_err(|e| e.reason()),
            Err("other_merchant")
        );
        let own = sign(&acceptance("dev-east", "M001"), &west);
        assert_eq!(
            judge(&own, receiver, known).map_err(|e| e.reason()),
            Err("own")
        );
        for garbage in ["", "abc", "a.b", &"x".repeat(3000)] {
            assert_eq!(
                judge(garbage, receiver, known).map_err(|e| e.reason()),
                Err("malformed")
            );
        }
    }

    #[test]
    fn keys_and_addresses_parse_strictly() {
        let key = PeerKey::of(&SigningKey::from_bytes(&[9; 32]));
        assert_eq!(PeerKey::parse(&key.encode()), Ok(key.clone()));
        assert_eq!(key.fingerprint().len(), 16);
        assert!(PeerKey::parse("AAAA").is_err());
        assert!(
            PeerKey::parse(&URL_SAFE_NO_PAD.encode([0u8; 32])).is_err(),
            "weak key"
        );
        for good in [
            "127.0.0.1:9092",
            "[::1]:9092",
            "gate-east.local:9092",
            "10.0.0.5:1",
        ] {
            assert!(PeerAddress::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "gate",
            "gate:0",
            "gate:70000",
            ":9092",
            "-x:1",
            "a..b:1",
            "a b:1",
            "300.1.1.1:9",
        ] {
            assert!(PeerAddress::parse(bad).is_err(), "{bad}");
        }
    }
}
