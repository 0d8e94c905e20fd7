//! Venues, passages and occupancy: the pure part of exits, re-entry and capacity.
//!
//! A **venue** is a group of locations (the gates of one park, hall or station) with an
//! entry function (`ENTRY` unless the merchant names another) and an optional `capacity`.
//! A scan of the entry function at one of its locations is an **entry**; a gate in exit mode
//! records an **exit**. A ticket's **presence** at the venue is read from its latest passage
//! of the merchant-local day ([`presence`]): inside after an entry, left after an exit,
//! outside when it has not passed today. Presence turns back to outside at local midnight,
//! so a venue without exit gates does not fill up from one day to the next.
//!
//! **Occupancy** is the number of tickets inside. An entry of a ticket already inside takes
//! no new place (and is not refused for capacity: the person is in); a first entry or a
//! re-entry takes one; an exit frees one. At a venue with a capacity, an entry that would
//! take a place beyond it is `VENUE_FULL`.
//!
//! **Exits and counts**: an exit never gives a use back. An entitlement with
//! `reentry: true` lets a ticket that left today come back in without using a count (still
//! within its validity period and daily window, and within capacity); without it, coming
//! back is an ordinary entry that uses a count and passes every rule.
//!
//! [`crate::decision::decide`] takes a [`VenueSnapshot`] for entries, and [`decide_exit`]
//! decides exits, on the central (under the ticket's and the venue's locks) and on a gate
//! offline (from its synced copy) alike.

use crate::codes::DecisionCode;
use crate::decision::{check_token, is_superseded, DecisionInput};
use crate::rules::MerchantZone;
use serde::{Deserialize, Serialize};

/// Which way a scan goes through a venue's gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// In: redeems a use of the entitlement (or re-enters).
    #[default]
    Entry,
    /// Out: records an exit of a ticket inside; uses nothing.
    Exit,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Entry => "entry",
            Direction::Exit => "exit",
        }
    }

    pub fn parse(text: &str) -> Option<Direction> {
        match text {
            "entry" => Some(Direction::Entry),
            "exit" => Some(Direction::Exit),
            _ => None,
        }
    }
}

/// One recorded passage of a ticket through a venue's gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Passage {
    pub direction: Direction,
    /// Unix seconds, the deciding process's clock.
    pub at: i64,
}

/// Where a ticket is, as far as its venue's passages of today tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// No passage today.
    Outside,
    /// Its latest passage today is an entry.
    Inside,
    /// Its latest passage today is an exit.
    Left,
}

/// The presence its latest passage gives a ticket at `now`: only a passage of the
/// merchant-local day of `now` counts. A passage later than `now` (a clock behind) counts
/// as today's.
pub fn presence(latest: Option<Passage>, now: i64, zone: MerchantZone) -> Presence {
    match latest {
        Some(passage)
            if passage.at > now || zone.local_date(passage.at) == zone.local_date(now) =>
        {
            match passage.direction {
                Direction::Entry => Presence::Inside,
                Direction::Exit => Presence::Left,
            }
        }
        _ => Presence::Outside,
    }
}

/// The latest of some passages (by time; an exit wins a tie, as it is recorded after).
pub fn latest<'a>(passages: impl IntoIterator<Item = &'a Passage>) -> Option<Passage> {
    passages
        .into_iter()
        .copied()
        .max_by_key(|p| (p.at, p.direction == Direction::Exit))
}

/// What an entry at a venue must know: the ticket's presence and the venue's occupancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VenueSnapshot {
    pub presence: Presence,
    /// Tickets inside now (the central's count under the venue's lock; a gate's estimate
    /// offline).
    pub inside: i64,
    pub capacity: Option<i64>,
}

impl VenueSnapshot {
    /// Whether this entry takes a place (a ticket already inside takes none).
    pub fn takes_place(&self) -> bool {
        self.presence != Presence::Inside
    }

    /// `VENUE_FULL` when this entry would take a place beyond the capacity.
    pub fn check_capacity(&self) -> Result<(), DecisionCode> {
        match self.capacity {
            Some(capacity) if self.takes_place() && self.inside >= capacity => {
                Err(DecisionCode::VenueFull)
            }
            _ => Ok(()),
        }
    }
}

/// Whether a gate may decide a capacity entry from an occupancy figure synced at `as_of`:
/// not when it is older than `max_age_secs` (the gate then answers `OFFLINE_UNVERIFIABLE`).
/// A figure from the future (a clock behind) counts as fresh.
pub fn occupancy_is_fresh(as_of: i64, now: i64, max_age_secs: i64) -> bool {
    now.saturating_sub(as_of) <= max_age_secs
}

/// The outcome of an exit scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitDecision {
    /// Record the exit: the ticket leaves and frees its place.
    Exit,
    Reject(DecisionCode),
}

impl ExitDecision {
    pub fn code(self) -> DecisionCode {
        match self {
            ExitDecision::Exit => DecisionCode::Success,
            ExitDecision::Reject(code) => code,
        }
    }
}

/// Decides an exit scan, `input.function_code` being the venue's entry function: the token
/// checks (expiry, merchant), the ticket exists (`INVALID_QR`), the token is not superseded
/// (a screenshot of an old QR must not let someone else out and back in), the ticket has
/// the entry entitlement (`NOT_ENTITLED`), and it is inside (`NOT_INSIDE`). The ticket's
/// status is not checked: whoever is inside may leave, a voided ticket's holder too.
pub fn decide_exit(input: &DecisionInput<'_>, presence: Presence) -> ExitDecision {
    if let Err(code) = check_token(
        input.claims,
        input.operator_merchant,
        input.now,
        input.policy,
    ) {
        return ExitDecision::Reject(code);
    }
    let Some(ticket) = input.ticket else {
        return ExitDecision::Reject(DecisionCode::InvalidQr);
    };
    if is_superseded(input.claims, ticket) {
        return ExitDecision::Reject(DecisionCode::QrSuperseded);
    }
    if !ticket
        .entitlements
        .iter()
        .any(|e| &e.function_code == input.function_code)
    {
        return ExitDecision::Reject(DecisionCode::NotEntitled);
    }
    match presence {
        Presence::Inside => ExitDecision::Exit,
        Presence::Outside | Presence::Left => ExitDecision::Reject(DecisionCode::NotInside),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shanghai() -> MerchantZone {
        MerchantZone::parse("Asia/Shanghai").expect("zone")
    }

    // 2026-12-01T16:00:00Z is 2026-12-02 00:00:00 in Shanghai.
    const MIDNIGHT: i64 = 1_796_140_800;

    #[test]
    fn presence_counts_todays_latest_passage_only() {
        let zone = shanghai();
        let entry = |at| Passage {
            direction: Direction::Entry,
            at,
        };
        let exit = |at| Passage {
            direction: Direction::Exit,
            at,
        };
        assert_eq!(presence(None, MIDNIGHT, zone), Presence::Outside);
        assert_eq!(
            presence(Some(entry(MIDNIGHT)), MIDNIGHT + 5, zone),
            Presence::Inside
        );
        assert_eq!(
            presence(Some(exit(MIDNIGHT + 1)), MIDNIGHT + 5, zone),
            Presence::Left
        );
        assert_eq!(
            presence(Some(entry(MIDNIGHT - 1)), MIDNIGHT, zone),
            Presence::Outside,
            "yesterday's entry (23:59:59) is not today's"
        );
        assert_eq!(
            presence(Some(entry(MIDNIGHT + 60)), MIDNIGHT + 30, zone),
            Presence::Inside,
            "a passage from a clock ahead counts"
        );
        let both = [entry(MIDNIGHT + 10), exit(MIDNIGHT + 10), entry(MIDNIGHT)];
        assert_eq!(latest(&both), Some(exit(MIDNIGHT + 10)));
        assert_eq!(latest(&[]), None);
    }

    #[test]
    fn capacity_refuses_a_new_place_only() {
        let at = |presence, inside| VenueSnapshot {
            presence,
            inside,
            capacity: Some(2),
        };
        assert_eq!(at(Presence::Outside, 1).check_capacity(), Ok(()));
        assert_eq!(
            at(Presence::Outside, 2).check_capacity(),
            Err(DecisionCode::VenueFull)
        );
        assert_eq!(
            at(Presence::Left, 3).check_capacity(),
            Err(DecisionCode::VenueFull)
        );
        assert_eq!(
            at(Presence::Inside, 2).check_capacity(),
            Ok(()),
            "already inside: takes no place"
        );
        let open = VenueSnapshot {
            capacity: None,
            ..at(Presence::Outside, 1_000_000)
        };
        assert_eq!(open.check_capacity(), Ok(()));
        assert!(occupancy_is_fresh(100, 400, 300));
        assert!(!occupancy_is_fresh(100, 401, 300));
        assert!(occupancy_is_fresh(500, 400, 300));
    }
}
