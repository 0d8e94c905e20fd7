//! Check-in rules of an entitlement: when it may be used (a validity period, a daily window
//! in the merchant's time zone) and how often (uses per merchant-local day, a least interval
//! between two uses). Pure: every function takes `now` (Unix seconds) and the merchant's
//! [`MerchantZone`]; [`crate::decision::decide`] calls them in the order of checks, so a gate
//! offline and the central decide a rule the same way.
//!
//! The rules of an entitlement travel as [`EntitlementRules`] in the seed file, the order
//! view and the device feed; the uses they need travel beside them as Unix seconds
//! ([`crate::decision::EntitlementSnapshot::recent_uses`]).

use crate::codes::DecisionCode;
use chrono::{DateTime, NaiveDate, NaiveTime, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// The merchant's time zone (an IANA name), in which daily windows and days are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MerchantZone(Tz);

impl Default for MerchantZone {
    /// The contract's default merchant time zone.
    fn default() -> Self {
        MerchantZone(Tz::Asia__Shanghai)
    }
}

impl MerchantZone {
    /// An IANA time zone name (`Asia/Shanghai`); `None` for anything else.
    pub fn parse(name: &str) -> Option<MerchantZone> {
        name.parse::<Tz>().ok().map(MerchantZone)
    }

    /// The IANA name.
    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    fn local(&self, at: i64) -> Option<chrono::DateTime<Tz>> {
        DateTime::<Utc>::from_timestamp(at, 0).map(|utc| utc.with_timezone(&self.0))
    }

    /// The merchant-local date of an instant (`None` beyond chrono's range).
    pub fn local_date(&self, at: i64) -> Option<NaiveDate> {
        self.local(at).map(|local| local.date_naive())
    }

    /// An instant as RFC 3339 with the merchant's offset (`2026-12-02T09:05:00+08:00`).
    pub fn to_local_rfc3339(&self, at: i64) -> Option<String> {
        self.local(at)
            .map(|local| local.to_rfc3339_opts(chrono::SecondsFormat::Secs, false))
    }

    /// The merchant-local time of day of an instant.
    pub fn local_time(&self, at: i64) -> Option<NaiveTime> {
        self.local(at).map(|local| local.time())
    }
}

/// Why a rule set is refused (a seed names the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("valid_until must be later than valid_from")]
    EmptyPeriod,
    #[error("a daily window must not start where it ends")]
    EmptyWindow,
    #[error("{0} must be at least 1 (leave it out for no limit)")]
    Zero(&'static str),
}

/// A time-of-day window in the merchant's time zone: from `start` (inclusive) to `end`
/// (exclusive). A window whose end is earlier than its start crosses midnight (`22:00` to
/// `02:00` is open late in the evening and early in the morning).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DailyWindow {
    /// Local time, `HH:MM` or `HH:MM:SS`.
    #[serde(with = "local_time")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "11:00"))]
    pub start: NaiveTime,
    /// Local time, `HH:MM` or `HH:MM:SS`; earlier than `start` for a window crossing midnight.
    #[serde(with = "local_time")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "14:00"))]
    pub end: NaiveTime,
}

impl DailyWindow {
    /// Whether a local time of day falls in the window.
    pub fn contains(&self, time: NaiveTime) -> bool {
        if self.start < self.end {
            self.start <= time && time < self.end
        } else {
            time >= self.start || time < self.end
        }
    }
}

/// The rules of one entitlement. Every field is optional; an empty set is the plain count of
/// uses the contract describes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EntitlementRules {
    /// The first instant a use is allowed (RFC 3339); before it: `NOT_YET_VALID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<DateTime<Utc>>,
    /// The first instant a use is no longer allowed (RFC 3339); from it on: `NO_LONGER_VALID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<DateTime<Utc>>,
    /// Local hours of use; outside them: `OUTSIDE_HOURS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_window: Option<DailyWindow>,
    /// Uses per merchant-local day (the day turns at local midnight); beyond: `DAILY_LIMIT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses_per_day: Option<u32>,
    /// Least seconds between two uses (anti-passback); sooner: `TOO_SOON`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_interval_secs: Option<u32>,
    /// After an exit today, the ticket may enter its venue again without using a count
    /// (see [`crate::venue`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reentry: bool,
}

impl EntitlementRules {
    /// No rule at all.
    pub fn is_empty(&self) -> bool {
        self == &EntitlementRules::default()
    }

    /// Refuses rule sets that could never allow a use or say nothing.
    pub fn validate(&self) -> Result<(), RuleError> {
        if let (Some(from), Some(until)) = (self.valid_from, self.valid_until) {
            if until <= from {
                return Err(RuleError::EmptyPeriod);
            }
        }
        if let Some(window) = self.daily_window {
            if window.start == window.end {
                return Err(RuleError::EmptyWindow);
            }
        }
        if self.uses_per_day == Some(0) {
            return Err(RuleError::Zero("uses_per_day"));
        }
        if self.min_interval_secs == Some(0) {
            return Err(RuleError::Zero("min_interval_secs"));
        }
        Ok(())
    }

    /// How many of an entitlement's newest uses [`EntitlementRules::check_uses`] needs to see:
    /// the day's count up to the limit, and the last one for the interval.
    pub fn uses_needed(&self) -> usize {
        let daily = self.uses_per_day.map_or(0, |n| n as usize);
        let interval = usize::from(self.min_interval_secs.is_some());
        daily.max(interval)
    }

    /// The rules about when: validity period, then daily window.
    pub fn check_time(&self, now: i64, zone: MerchantZone) -> Result<(), DecisionCode> {
        if self.valid_from.is_some_and(|from| now < from.timestamp()) {
            return Err(DecisionCode::NotYetValid);
        }
        if self
            .valid_until
            .is_some_and(|until| now >= until.timestamp())
        {
            return Err(DecisionCode::NoLongerValid);
        }
        if let Some(window) = self.daily_window {
            // An instant chrono cannot place is outside any window.
            if !zone
                .local_time(now)
                .is_some_and(|time| window.contains(time))
            {
                return Err(DecisionCode::OutsideHours);
            }
        }
        Ok(())
    }

    /// The rules about how often, over the entitlement's newest uses (Unix seconds, any
    /// order, at least [`EntitlementRules::uses_needed`] of them when there are so many):
    /// uses of the merchant-local day first, then the interval since the last use. A use
    /// later than `now` (a clock behind) counts as just now.
    pub fn check_uses(
        &self,
        recent_uses: &[i64],
        now: i64,
        zone: MerchantZone,
    ) -> Result<(), DecisionCode> {
        if let Some(limit) = self.uses_per_day {
            let today = zone.local_date(now);
            let used_today = recent_uses
                .iter()
                .filter(|at| **at > now || zone.local_date(**at) == today)
                .count();
            if used_today >= limit as usize {
                return Err(DecisionCode::DailyLimit);
            }
        }
        if let (Some(interval), Some(last)) = (self.min_interval_secs, recent_uses.iter().max()) {
            if now.saturating_sub(*last) < i64::from(interval) {
                return Err(DecisionCode::TooSoon);
            }
        }
        Ok(())
    }
}

/// `HH:MM` or `HH:MM:SS` on the wire; written as `HH:MM` when the seconds are zero.
mod local_time {
    use super::{NaiveTime, Timelike};
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &NaiveTime, serializer: S) -> Result<S::Ok, S::Error> {
        let text = if time.second() == 0 {
            time.format("%H:%M").to_string()
        } else {
            time.format("%H:%M:%S").to_string()
        };
        serializer.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<NaiveTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        NaiveTime::parse_from_str(&text, "%H:%M:%S")
            .or_else(|_| NaiveTime::parse_from_str(&text, "%H:%M"))
            .ok()
            .filter(|time| time.nanosecond() == 0)
            .ok_or_else(|| D::Error::custom(format!("{text:?} is not a local time HH:MM")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .expect("instant")
            .timestamp()
    }

    fn hm(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).expect("time")
    }

    fn shanghai() -> MerchantZone {
        MerchantZone::parse("Asia/Shanghai").expect("zone")
    }

    #[test]
    fn a_window_crossing_midnight_is_open_late_and_early() {
        let late = DailyWindow {
            start: hm(22, 0),
            end: hm(2, 0),
        };
        assert!(late.contains(hm(22, 0)));
        assert!(late.contains(hm(23, 59)));
        assert!(late.contains(hm(0, 0)));
        assert!(late.contains(hm(1, 59)));
        assert!(!late.contains(hm(2, 0)), "the end is exclusive");
        assert!(!late.contains(hm(12, 0)));
        let lunch = DailyWindow {
            start: hm(11, 0),
            end: hm(14, 0),
        };
        assert!(lunch.contains(hm(11, 0)) && lunch.contains(hm(13, 59)));
        assert!(!lunch.contains(hm(14, 0)) && !lunch.contains(hm(10, 59)));
    }

    #[test]
    fn time_rules_read_the_merchants_clock() {
        let rules = EntitlementRules {
            valid_from: Some("2026-12-01T00:00:00+08:00".parse().expect("instant")),
            valid_until: Some("2026-12-04T00:00:00+08:00".parse().expect("instant")),
            daily_window: Some(DailyWindow {
                start: hm(11, 0),
                end: hm(14, 0),
            }),
            ..EntitlementRules::default()
        };
        let zone = shanghai();
        let check = |instant: &str| rules.check_time(at(instant), zone);
        // 03:00 UTC is 11:00 in Shanghai.
        assert_eq!(check("2026-12-01T03:00:00Z"), Ok(()));
        assert_eq!(
            check("2026-11-30T03:00:00Z"),
            Err(DecisionCode::NotYetValid)
        );
        assert_eq!(
            check("2026-12-01T02:59:59Z"),
            Err(DecisionCode::OutsideHours)
        );
        assert_eq!(
            check("2026-12-03T05:59:59Z"),
            Ok(()),
            "13:59:59 on the last day"
        );
        assert_eq!(
            check("2026-12-03T16:00:00Z"),
            Err(DecisionCode::NoLongerValid),
            "midnight in Shanghai ends the period"
        );
        let utc = MerchantZone::parse("UTC").expect("zone");
        assert_eq!(
            rules.check_time(at("2026-12-01T03:00:00Z"), utc),
            Err(DecisionCode::OutsideHours),
            "03:00 is not lunch time in UTC"
        );
    }

    #[test]
    fn the_day_turns_at_local_midnight() {
        let rules = EntitlementRules {
            uses_per_day: Some(1),
            ..EntitlementRules::default()
        };
        let zone = shanghai();
        // 15:59:59 UTC is 23:59:59 in Shanghai; 16:00 UTC is the next local day.
        let used = [at("2026-12-01T15:00:00Z")];
        assert_eq!(
            rules.check_uses(&used, at("2026-12-01T15:59:59Z"), zone),
            Err(DecisionCode::DailyLimit)
        );
        assert_eq!(
            rules.check_uses(&used, at("2026-12-01T16:00:00Z"), zone),
            Ok(())
        );
        let utc = MerchantZone::parse("UTC").expect("zone");
        assert_eq!(
            rules.check_uses(&used, at("2026-12-01T16:00:00Z"), utc),
            Err(DecisionCode::DailyLimit),
            "still 1 December in UTC"
        );
    }

    #[test]
    fn daily_limit_before_interval() {
        let rules = EntitlementRules {
            uses_per_day: Some(2),
            min_interval_secs: Some(600),
            ..EntitlementRules::default()
        };
        let zone = shanghai();
        let now = at("2026-12-01T04:00:00Z");
        assert_eq!(rules.uses_needed(), 2);
        assert_eq!(rules.check_uses(&[], now, zone), Ok(()));
        assert_eq!(
            rules.check_uses(&[now - 599], now, zone),
            Err(DecisionCode::TooSoon)
        );
        assert_eq!(rules.check_uses(&[now - 600], now, zone), Ok(()));
        assert_eq!(
            rules.check_uses(&[now - 5000, now - 100], now, zone),
            Err(DecisionCode::DailyLimit)
        );
        assert_eq!(
            rules.check_uses(&[now + 30], now, zone),
            Err(DecisionCode::TooSoon),
            "a use stamped ahead of this clock is just now"
        );
    }

    #[test]
    fn wire_form_and_validation() {
        let rules: EntitlementRules = serde_json::from_str(
            r#"{"valid_from":"2026-12-01T00:00:00+08:00","daily_window":{"start":"22:00","end":"02:00:30"},"uses_per_day":1}"#,
        )
        .expect("rules");
        assert_eq!(
            rules.valid_from.map(|t| t.timestamp()),
            Some(at("2026-11-30T16:00:00Z"))
        );
        let json = serde_json::to_value(&rules).expect("json");
        assert_eq!(json["daily_window"]["start"], "22:00");
        assert_eq!(json["daily_window"]["end"], "02:00:30");
        assert!(json.get("min_interval_secs").is_none());
        assert_eq!(rules.validate(), Ok(()));
        for bad in [
            r#"{"daily_window":{"start":"25:00","end":"02:00"}}"#,
            r#"{"uses_per_day":-1}"#,
            r#"{"usesPerDay":1}"#,
            r#"{"valid_from":"tomorrow"}"#,
        ] {
            assert!(
                serde_json::from_str::<EntitlementRules>(bad).is_err(),
                "{bad}"
            );
        }
        let refused = |json: &str| {
            serde_json::from_str::<EntitlementRules>(json)
                .expect("parses")
                .validate()
        };
        assert_eq!(
            refused(
                r#"{"valid_from":"2026-12-02T00:00:00Z","valid_until":"2026-12-01T00:00:00Z"}"#
            ),
            Err(RuleError::EmptyPeriod)
        );
        assert_eq!(
            refused(r#"{"daily_window":{"start":"10:00","end":"10:00"}}"#),
            Err(RuleError::EmptyWindow)
        );
        assert_eq!(
            refused(r#"{"uses_per_day":0}"#),
            Err(RuleError::Zero("uses_per_day"))
        );
        assert!(EntitlementRules::default().is_empty());
        assert!(MerchantZone::parse("Mars/Olympus").is_none());
    }
}
