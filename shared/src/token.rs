//! The QR token: a compact JWS signed with Ed25519 (`alg` = `EdDSA`, `kid` in the header).
//!
//! Layout: `base64url(header) . base64url(claims) . base64url(signature)`, no padding.
//! The header is exactly `{"alg":"EdDSA","kid":"<kid>"}` and the claims are
//! `{"jti","tid","mid","ch","iat","exp"?}`; nothing else, so a token stays within the
//! contract's 287 characters and fits a version 12 QR code at ECC level M.
//!
//! Verification pins the algorithm: whatever a header says, only an Ed25519 signature by a
//! key of the [`KeySet`] (looked up by `kid`) is accepted, with strict (canonical)
//! signature checks and strict base64. Every failure is a [`TokenError`], which callers
//! answer with `INVALID_QR`. Expiry is not a verification failure: it is the second check
//! of the scan decision (see [`TokenPolicy::is_expired`]).

use crate::domain::Channel;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;

/// Longest input the verifier looks at. Our tokens stay within 287 characters; anything far
/// longer is refused before any decoding work.
pub const MAX_TOKEN_LEN: usize = 512;
/// Longest `kid`, merchant code and ticket code that keep a token within the QR budget.
pub const MAX_KID_LEN: usize = 4;
pub const MAX_MERCHANT_CODE_LEN: usize = 8;
pub const MAX_TICKET_CODE_LEN: usize = 12;
/// The contract's size budget for a whole token.
pub const MAX_ISSUED_TOKEN_LEN: usize = 287;

/// A token id: a UUID (the central issues random version-4 UUIDs), written as 22 characters
/// of base64url of its 16 bytes. Parsing accepts any 16 bytes, so tokens issued before the
/// central wrote UUID bits still verify.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String, example = "AQEBAQEBAQEBAQEBAQEBAQ"))]
#[serde(transparent)]
pub struct Jti(String);

impl Jti {
    pub fn from_bytes(bytes: [u8; 16]) -> Jti {
        Jti(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Accepts only the canonical 22-character base64url form of 16 bytes.
    pub fn parse(raw: &str) -> Result<Jti, TokenError> {
        if raw.len() != 22 {
            return Err(TokenError::BadClaims("jti must be 22 characters".into()));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(raw)
            .map_err(|_| TokenError::BadClaims("jti is not base64url".into()))?;
        if bytes.len() != 16 {
            return Err(TokenError::BadClaims("jti must encode 16 bytes".into()));
        }
        Ok(Jti(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 16 bytes the text stands for.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        // `parse` and `from_bytes` only ever hold the base64url of exactly 16 bytes.
        if let Ok(decoded) = URL_SAFE_NO_PAD.decode(&self.0) {
            if decoded.len() == 16 {
                bytes.copy_from_slice(&decoded);
            }
        }
        bytes
    }
}

impl fmt::Display for Jti {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Jti {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Jti::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// The claims of a QR token: only what a gate needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QrClaims {
    pub jti: Jti,
    /// Ticket code.
    pub tid: String,
    /// Merchant code.
    pub mid: String,
    pub ch: Channel,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds: `iat` + TTL for `MINIAPP`, absent for `OTA`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    kid: String,
}

/// Token lifetimes and clock tolerance, shared by the issuer and every verifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPolicy {
    /// Lifetime of a `MINIAPP` token (`STILE_QR_TTL_MINIAPP_SECS`, default 1800).
    pub miniapp_ttl_secs: i64,
    /// How far the verifier's clock may be behind the issuer's (`STILE_CLOCK_SKEW_SECS`,
    /// default 60).
    pub clock_skew_secs: i64,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        TokenPolicy {
            miniapp_ttl_secs: 1800,
            clock_skew_secs: 60,
        }
    }
}

impl TokenPolicy {
    /// The `exp` an issuer writes for a token of this channel issued at `iat`.
    pub fn expiry_for(&self, channel: Channel, iat: i64) -> Option<i64> {
        match channel {
            Channel::MiniApp => Some(iat.saturating_add(self.miniapp_ttl_secs)),
            Channel::Ota => None,
        }
    }

    /// Whether a verified token has expired at `now` (Unix seconds, the deciding process's
    /// clock). A `MINIAPP` token lives until the earlier of its `exp` and `iat` + the
    /// configured TTL (so lowering the TTL shortens tokens already out), plus the skew.
    pub fn is_expired(&self, claims: &QrClaims, now: i64) -> bool {
        match claims.ch {
            Channel::Ota => false,
            Channel::MiniApp => {
                let by_ttl = claims.iat.saturating_add(self.miniapp_ttl_secs);
                let deadline = claims.exp.map_or(by_ttl, |exp| exp.min(by_ttl));
                now > deadline.saturating_add(self.clock_skew_secs)
            }
        }
    }
}

/// Why a token was refused. Every variant is answered `INVALID_QR`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token longer than {MAX_TOKEN_LEN} characters")]
    TooLong,
    #[error("token is not three dot-separated parts")]
    Malformed,
    #[error("token part is not canonical base64url")]
    BadBase64,
    #[error("token header is not {{alg, kid}}")]
    BadHeader,
    #[error("algorithm {0:?} is not accepted (only EdDSA)")]
    AlgorithmNotAllowed(String),
    #[error("no published key has this kid")]
    UnknownKid,
    #[error("signature does not verify")]
    BadSignature,
    #[error("claims are invalid: {0}")]
    BadClaims(String),
}

/// A public key as published in the JWK Set (RFC 7517 / RFC 8037, OKP Ed25519).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub kid: String,
    pub x: String,
    #[serde(rename = "use")]
    pub use_: String,
    pub alg: String,
}

impl Jwk {
    pub fn from_ed25519(kid: &str, key: &VerifyingKey) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            kid: kid.into(),
            x: URL_SAFE_NO_PAD.encode(key.as_bytes()),
            use_: "sig".into(),
            alg: "EdDSA".into(),
        }
    }
}

/// The body of `GET /keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

/// Why a JWK Set could not be turned into a key set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    #[error("key {kid:?}: {reason}")]
    BadKey { kid: String, reason: &'static str },
}

/// The public keys a verifier trusts, by `kid`.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, VerifyingKey>,
}

impl KeySet {
    pub fn new() -> KeySet {
        KeySet::default()
    }

    pub fn insert(&mut self, kid: &str, key: VerifyingKey) {
        self.keys.insert(kid.to_owned(), key);
    }

    /// Builds the key set from a JWK Set. Keys that are not Ed25519 signing keys are left
    /// out (a verifier pinned to EdDSA has no use for them); a malformed Ed25519 key is an
    /// error, since silently dropping it would reject every token it signed.
    pub fn from_jwks(jwks: &JwkSet) -> Result<KeySet, KeySetError> {
        let mut set = KeySet::new();
        for jwk in &jwks.keys {
            if jwk.kty != "OKP" || jwk.crv != "Ed25519" || jwk.alg != "EdDSA" || jwk.use_ != "sig" {
                continue;
            }
            let bad = |reason| KeySetError::BadKey {
                kid: jwk.kid.clone(),
                reason,
            };
            let bytes = URL_SAFE_NO_PAD
                .decode(&jwk.x)
                .map_err(|_| bad("x is not base64url"))?;
            let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad("x is not 32 bytes"))?;
            let key =
                VerifyingKey::from_bytes(&bytes).map_err(|_| bad("x is not a curve point"))?;
            set.insert(&jwk.kid, key);
        }
        Ok(set)
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.get(kid)
    }
}

/// A token whose signature verified, with the key that signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub kid: String,
    pub claims: QrClaims,
}

/// Checks a token's form and signature against the trusted keys. Does not judge expiry.
pub fn verify(token: &str, keys: &KeySet) -> Result<VerifiedToken, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header_json = decode_part(header_b64)?;
    let header: Header = serde_json::from_slice(&header_json).map_err(|_| TokenError::BadHeader)?;
    if header.alg != "EdDSA" {
        return Err(TokenError::AlgorithmNotAllowed(header.alg));
    }
    let key = keys.get(&header.kid).ok_or(TokenError::UnknownKid)?;
    let signature_bytes = decode_part(signature_b64)?;
    let signature =
        Signature::from_slice(&signature_bytes).map_err(|_| TokenError::BadSignature)?;
    let signing_input_len = header_b64.len() + 1 + claims_b64.len();
    let signing_input = &token.as_bytes()[..signing_input_len];
    key.verify_strict(signing_input, &signature)
        .map_err(|_| TokenError::BadSignature)?;
    let claims_json = decode_part(claims_b64)?;
    let claims: QrClaims = serde_json::from_slice(&claims_json)
        .map_err(|error| TokenError::BadClaims(error.to_string()))?;
    check_claims(&claims)?;
    Ok(VerifiedToken {
        kid: header.kid,
        claims,
    })
}

fn decode_part(part: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::BadBase64)
}

fn check_claims(claims: &QrClaims) -> Result<(), TokenError> {
    let bad = |reason: &str| Err(TokenError::BadClaims(reason.to_owned()));
    if claims.tid.is_empty() || claims.tid.len() > 64 {
        return bad("tid must be 1 to 64 characters");
    }
    if claims.mid.is_empty() || claims.mid.len() > 64 {
        return bad("mid must be 1 to 64 characters");
    }
    match (claims.ch, claims.exp) {
        (Channel::MiniApp, None) => bad("a MINIAPP token must carry exp"),
        (Channel::Ota, Some(_)) => bad("an OTA token carries no exp"),
        (Channel::MiniApp, Some(exp)) if exp < claims.iat => bad("exp is before iat"),
        _ => Ok(()),
    }
}

/// A private signing key with its `kid`: what an issuer holds.
pub struct QrSigner {
    kid: String,
    key: SigningKey,
}

impl fmt::Debug for QrSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the private key.
        f.debug_struct("QrSigner").field("kid", &self.kid).finish()
    }
}

/// Why a token could not be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    #[error("{field} is longer than {max} characters, which breaks the QR size budget")]
    TooLong { field: &'static str, max: usize },
    #[error("{field} is empty")]
    Empty { field: &'static str },
}

impl QrSigner {
    pub fn new(kid: &str, secret_key: [u8; 32]) -> QrSigner {
        QrSigner {
            kid: kid.to_owned(),
            key: SigningKey::from_bytes(&secret_key),
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Signs `claims` into a compact JWS. Refuses codes that would push the token past the
    /// contract's size budget.
    pub fn issue(&self, claims: &QrClaims) -> Result<String, IssueError> {
        for (field, value, max) in [
            ("kid", self.kid.as_str(), MAX_KID_LEN),
            ("merchant code", claims.mid.as_str(), MAX_MERCHANT_CODE_LEN),
            ("ticket code", claims.tid.as_str(), MAX_TICKET_CODE_LEN),
        ] {
            if value.is_empty() {
                return Err(IssueError::Empty { field });
            }
            if value.len() > max {
                return Err(IssueError::TooLong { field, max });
            }
        }
        let header = Header {
            alg: "EdDSA".into(),
            kid: self.kid.clone(),
        };
        let mut token = encode_json(&header);
        token.push('.');
        token.push_str(&encode_json(claims));
        let signature = self.key.sign(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
        Ok(token)
    }
}

fn encode_json<T: Serialize>(value: &T) -> String {
    // Serialising these plain structs (strings, integers, enums) cannot fail.
    let json = serde_json::to_vec(value).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(kid: &str, seed: u8) -> QrSigner {
        QrSigner::new(kid, [seed; 32])
    }

    fn keyset(signers: &[&QrSigner]) -> KeySet {
        let mut set = KeySet::new();
        for s in signers {
            set.insert(s.kid(), s.verifying_key());
        }
        set
    }

    fn claims(ch: Channel) -> QrClaims {
        let iat = 1_764_000_000;
        QrClaims {
            jti: Jti::from_bytes([7; 16]),
            tid: "TK-1001-1".into(),
            mid: "M001".into(),
            ch,
            iat,
            exp: TokenPolicy::default().expiry_for(ch, iat),
        }
    }

    #[test]
    fn jti_bytes_round_trip_and_pre_uuid_jtis_still_parse() {
        let bytes: [u8; 16] = *b"\x01\x23\x45\x67\x89\xab\x4d\xef\x80\x11\x22\x33\x44\x55\x66\x77";
        assert_eq!(Jti::from_bytes(bytes).to_bytes(), bytes);
        // issued before the central wrote UUID bits: variant "reserved", still a valid jti
        let old = Jti::parse("9zwg_lpKM3z57FerUQZm-w").expect("any 16 bytes parse");
        assert_eq!(old.to_bytes()[8] & 0xc0, 0xc0);
    }

    #[test]
    fn issued_token_verifies_and_round_trips_claims() {
        let s = signer("k1", 1);
        let token = s.issue(&claims(Channel::MiniApp)).expect("issue");
        let verified = verify(&token, &keyset(&[&s])).expect("verify");
        assert_eq!(verified.kid, "k1");
        assert_eq!(verified.claims, claims(Channel::MiniApp));
    }

    #[test]
    fn largest_token_fits_the_qr_budget() {
        let s = signer("kzzz", 1);
        let mut c = claims(Channel::MiniApp);
        c.tid = "T".repeat(MAX_TICKET_CODE_LEN);
        c.mid = "M".repeat(MAX_MERCHANT_CODE_LEN);
        c.iat = 9_999_999_999;
        c.exp = Some(9_999_999_999 + 1800);
        let token = s.issue(&c).expect("issue");
        assert!(token.len() <= MAX_ISSUED_TOKEN_LEN, "{} chars", token.len());
    }

    #[test]
    fn codes_beyond_the_budget_are_refused() {
        let mut c = claims(Channel::Ota);
        c.tid = "T".repeat(MAX_TICKET_CODE_LEN + 1);
        assert!(matches!(
            signer("k1", 1).issue(&c),
            Err(IssueError::TooLong {
                field: "ticket code",
                ..
            })
        ));
        assert!(matches!(
            signer("k12345", 1).issue(&claims(Channel::Ota)),
            Err(IssueError::TooLong { field: "kid", .. })
        ));
    }

    #[test]
    fn refusals() {
        let s = signer("k1", 1);
        let other = signer("k1", 2);
        let keys = keyset(&[&s]);
        let good = s.issue(&claims(Channel::Ota)).expect("issue");
        let forged = other.issue(&claims(Channel::Ota)).expect("issue");
        let unknown_kid = signer("k9", 1).issue(&claims(Channel::Ota)).expect("issue");
        let parts: Vec<&str> = good.split('.').collect();
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"k1"}"#);
        let hs_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","kid":"k1"}"#);
        type Expectation = fn(&TokenError) -> bool;
        let cases: Vec<(String, Expectation)> = vec![
            (forged, |e| *e == TokenError::BadSignature),
            (unknown_kid, |e| *e == TokenError::UnknownKid),
            (
                format!("{none_header}.{}.", parts[1]),
                |e| matches!(e, TokenError::AlgorithmNotAllowed(a) if a == "none"),
            ),
            (format!("{hs_header}.{}.{}", parts[1], parts[2]), |e| {
                matches!(e, TokenError::AlgorithmNotAllowed(_))
            }),
            (good[..good.len() - 5].to_owned(), |e| {
                matches!(e, TokenError::BadSignature | TokenError::BadBase64)
            }),
            ("a.b".into(), |e| *e == TokenError::Malformed),
            ("a.b.c.d".into(), |e| *e == TokenError::Malformed),
            ("!!.??.**".into(), |e| *e == TokenError::BadBase64),
            ("x".repeat(MAX_TOKEN_LEN + 1), |e| *e == TokenError::TooLong),
            (format!("{}=.{}.{}", parts[0], parts[1], parts[2]), |e| {
                *e == TokenError::BadBase64
            }),
        ];
        for (token, expected) in cases {
            let error = verify(&token, &keys).expect_err(&token);
            assert!(expected(&error), "{token}: {error:?}");
        }
    }

    #[test]
    fn miniapp_expiry_honours_ttl_and_skew() {
        let policy = TokenPolicy::default();
        let c = claims(Channel::MiniApp);
        let deadline = c.iat + 1800;
        assert!(!policy.is_expired(&c, deadline));
        assert!(!policy.is_expired(&c, deadline + 60));
        assert!(policy.is_expired(&c, deadline + 61));
        let shorter = TokenPolicy {
            miniapp_ttl_secs: 600,
            ..policy
        };
        assert!(shorter.is_expired(&c, c.iat + 661));
        assert!(!policy.is_expired(&claims(Channel::Ota), i64::MAX));
    }

    #[test]
    fn jwks_round_trip() {
        let s = signer("k1", 3);
        let jwks = JwkSet {
            keys: vec![
                Jwk::from_ed25519("k1", &s.verifying_key()),
                Jwk {
                    kty: "RSA".into(),
                    crv: String::new(),
                    kid: "r1".into(),
                    x: String::new(),
                    use_: "sig".into(),
                    alg: "RS256".into(),
                },
            ],
        };
        let set = KeySet::from_jwks(&jwks).expect("jwks");
        assert_eq!(set.len(), 1);
        let token = s.issue(&claims(Channel::Ota)).expect("issue");
        assert!(verify(&token, &set).is_ok());
    }
}
