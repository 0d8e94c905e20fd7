//! Small validated value types of the domain, parsed at the edge (requests, seed files,
//! tokens) so the rest of the code never sees a malformed one.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An entitlement's function code (`ENTRY`, `MEAL`, ...): 1 to 32 characters of `A-Z`,
/// `0-9`, `_` and `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct FunctionCode(String);

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for FunctionCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[A-Z0-9_-]{1,32}$"))
            .min_length(Some(1))
            .max_length(Some(FunctionCode::MAX_LEN))
            .examples(["ENTRY"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for FunctionCode {}

/// Why a function code was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("function_code must be 1 to 32 characters of A-Z, 0-9, '_' or '-'")]
pub struct InvalidFunctionCode;

impl FunctionCode {
    pub const MAX_LEN: usize = 32;

    pub fn parse(raw: &str) -> Result<FunctionCode, InvalidFunctionCode> {
        let valid = !raw.is_empty()
            && raw.len() <= Self::MAX_LEN
            && raw
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if valid {
            Ok(FunctionCode(raw.to_owned()))
        } else {
            Err(InvalidFunctionCode)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FunctionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for FunctionCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        FunctionCode::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// The rule every code and identifier of the domain follows (merchant, venue, ticket and
/// order codes, device ids, usernames): 1 to `max` characters of ASCII letters, digits,
/// `-` and `_`. The seed loader, the server's request parsing and the gate's settings all
/// apply this one rule.
pub fn check_code(raw: &str, max: usize) -> Result<(), InvalidCode> {
    if raw.is_empty() || raw.len() > max {
        return Err(InvalidCode::Length { max });
    }
    if !raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(InvalidCode::Characters);
    }
    Ok(())
}

/// The longest venue code, device id, username or order code.
pub const MAX_IDENTIFIER_LEN: usize = 64;

/// The shortest machine secret (device secret, channel key) accepted anywhere.
pub const MIN_SECRET_LEN: usize = 8;

/// Why a code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCode {
    #[error("must be 1 to {max} characters")]
    Length { max: usize },
    #[error("may hold only letters, digits, '-' and '_'")]
    Characters,
}

/// A code or identifier of the domain as it arrives from outside (venue codes, device ids,
/// usernames, order and ticket codes): [`check_code`] with [`MAX_IDENTIFIER_LEN`], so no
/// control character, NUL or newline ever reaches SQL or a log line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Identifier(String);

impl Identifier {
    /// The pattern, for the OpenAPI document.
    pub const PATTERN: &'static str = "^[A-Za-z0-9_-]{1,64}$";

    pub fn parse(raw: &str) -> Result<Identifier, InvalidCode> {
        check_code(raw, MAX_IDENTIFIER_LEN)?;
        Ok(Identifier(raw.to_owned()))
    }

    /// Parses a named input; the error names the field (`device_id must be ...`).
    pub fn parse_field(field: &str, raw: &str) -> Result<Identifier, String> {
        Identifier::parse(raw).map_err(|error| format!("{field} {error}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Identifier {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Identifier {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Identifier::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Identifier {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(Identifier::PATTERN))
            .min_length(Some(1))
            .max_length(Some(MAX_IDENTIFIER_LEN))
            .examples(["GATE-EAST"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Identifier {}

/// A ticket's life: `PRE_GENERATED` → `ACTIVATED` → `USED`; `VOID` is terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TicketStatus {
    PreGenerated,
    Activated,
    Used,
    Void,
}

impl TicketStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TicketStatus::PreGenerated => "PRE_GENERATED",
            TicketStatus::Activated => "ACTIVATED",
            TicketStatus::Used => "USED",
            TicketStatus::Void => "VOID",
        }
    }

    pub fn parse(raw: &str) -> Option<TicketStatus> {
        match raw {
            "PRE_GENERATED" => Some(TicketStatus::PreGenerated),
            "ACTIVATED" => Some(TicketStatus::Activated),
            "USED" => Some(TicketStatus::Used),
            "VOID" => Some(TicketStatus::Void),
            _ => None,
        }
    }
}

/// The kind of sales channel a ticket came through; decides the QR token's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Channel {
    /// The mini-program: QR tokens expire (30 minutes by default).
    #[serde(rename = "MINIAPP")]
    MiniApp,
    /// Online travel agencies: QR tokens are long-lived (no `exp`).
    #[serde(rename = "OTA")]
    Ota,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::MiniApp => "MINIAPP",
            Channel::Ota => "OTA",
        }
    }

    pub fn parse(raw: &str) -> Option<Channel> {
        match raw {
            "MINIAPP" => Some(Channel::MiniApp),
            "OTA" => Some(Channel::Ota),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_codes() {
        let cases = [
            ("ENTRY", true),
            ("MEAL_2", true),
            ("SHOW-A", true),
            ("", false),
            ("entry", false),
            ("ENTRY ", false),
            ("入园", false),
            (&"A".repeat(32), true),
            (&"A".repeat(33), false),
        ];
        for (raw, ok) in cases {
            assert_eq!(FunctionCode::parse(raw).is_ok(), ok, "{raw:?}");
        }
    }

    #[test]
    fn codes() {
        let cases = [
            ("GATE-E", Ok(())),
            ("dev_e_1", Ok(())),
            ("GATE E!", Err(InvalidCode::Characters)),
            ("GATE\u{0}", Err(InvalidCode::Characters)),
            ("a\nb", Err(InvalidCode::Characters)),
            ("东门", Err(InvalidCode::Characters)),
            ("", Err(InvalidCode::Length { max: 8 })),
            ("ABCDEFGHI", Err(InvalidCode::Length { max: 8 })),
            ("ABCDEFGH", Ok(())),
        ];
        for (raw, expected) in cases {
            assert_eq!(check_code(raw, 8), expected, "{raw:?}");
        }
    }

    #[test]
    fn statuses_round_trip() {
        for status in [
            TicketStatus::PreGenerated,
            TicketStatus::Activated,
            TicketStatus::Used,
            TicketStatus::Void,
        ] {
            assert_eq!(TicketStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(TicketStatus::parse("activated"), None);
    }
}
