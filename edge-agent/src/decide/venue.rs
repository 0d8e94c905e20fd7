//! The gate's view of its venue for one scan: whether the scan is one of the venue's
//! passages, the ticket's presence there, and the venue's occupancy as far as this gate can
//! tell. The rules are shared's ([`stile_shared::venue`]); this module only gathers their
//! inputs from what the store holds, and is pure (time and the clock offset are passed in).
//!
//! - **Presence**: the latest of the ticket's synced passage (the central's), this gate's
//!   own latest passage of it (entries and exits, online and offline) and its peers' latest
//!   passage of it at this venue (entries, re-entries and exits they announced), read by
//!   [`stile_shared::venue::presence`]: today's only.
//! - **Occupancy estimate**: the feed's figure (`venue.inside` at `as_of`; none when it is
//!   of an earlier merchant-local day, as the central's count starts again each day), plus
//!   the changes of this gate's own passages of today the figure cannot include (decided
//!   after it, or offline and not uploaded before it), plus the changes of its peers'
//!   passages of today decided at or after it.
//! - **Limits**: a peer's offline passage decided before the figure but uploaded after it is
//!   missing (until the next figure: low after an entry, high after an exit); a peer's
//!   online passage decided just before the figure was counted may be in it and counted
//!   again (the peers' clocks are not moved onto the central's); a peer of an older version
//!   announces redemptions only, named by no venue: each of its acceptances of the entry
//!   function counts as an entry that took a place (high: the safe side for a capacity).
//!
//! Clocks: the feed's times are the central's; this gate's decisions carry its own clock,
//! moved onto the central's by the measured offset (central minus local).

use crate::store::{OwnPassage, PeerPassage, Store, StoreError};
use stile_shared::api::SyncedVenue;
use stile_shared::venue::{self, Direction, Passage, Presence, VenueSnapshot};
use stile_shared::{FunctionCode, MerchantZone};

/// How far back the store is read for today's passages (a merchant-local day is at most 25
/// hours; clocks may be off).
pub const LOOKBACK_SECS: i64 = 2 * 86_400;

/// The clock a venue is read by: now on the central's clock, the offset of this gate's
/// clock from it, and the merchant's zone.
#[derive(Debug, Clone, Copy)]
pub struct VenueClock {
    /// Unix seconds, the central's clock.
    pub now: i64,
    /// Central minus local, whole seconds.
    pub offset: i64,
    pub zone: MerchantZone,
}

impl VenueClock {
    /// The bound of the store's reads, on this gate's clock.
    pub fn since_local(&self) -> i64 {
        self.now - self.offset - LOOKBACK_SECS
    }

    fn today(&self, at: i64) -> bool {
        at > self.now || self.zone.local_date(at) == self.zone.local_date(self.now)
    }
}

/// Whether a scan at this venue is one of its passages: every scan of an exit gate, and an
/// entry gate's scans of the venue's entry function.
pub fn is_passage(venue: &SyncedVenue, function_code: &FunctionCode, direction: Direction) -> bool {
    direction == Direction::Exit || &venue.entry_function == function_code
}

/// The ticket's presence: the latest of its synced passage, this gate's own passages of it
/// and its peers' passages of it.
pub fn presence(
    synced: Option<Passage>,
    own: &[OwnPassage],
    peers: &[PeerPassage],
    clock: &VenueClock,
) -> Presence {
    let own = own.iter().map(|p| Passage {
        direction: p.direction,
        at: p.at + clock.offset,
    });
    let peers = peers.iter().filter_map(|p| {
        p.at.map(|at| Passage {
            direction: p.direction,
            at,
        })
    });
    let passages: Vec<Passage> = synced.into_iter().chain(own).chain(peers).collect();
    venue::presence(venue::latest(&passages), clock.now, clock.zone)
}

/// The venue's occupancy as this gate estimates it, by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Occupancy {
    /// The feed's figure, when it is of today (else 0).
    pub synced: i64,
    /// This gate's own passages the figure cannot include.
    pub own: i64,
    /// Peers' passages since the figure.
    pub peers: i64,
}

impl Occupancy {
    pub fn inside(&self) -> i64 {
        (self.synced + self.own + self.peers).max(0)
    }
}

/// The estimate from the feed's figure and every passage of this gate and of its peers read
/// since [`VenueClock::since_local`].
pub fn occupancy(
    venue: &SyncedVenue,
    own: &[OwnPassage],
    peers: &[PeerPassage],
    clock: &VenueClock,
) -> Occupancy {
    let as_of_local = venue.as_of - clock.offset;
    let synced = if clock.today(venue.as_of) {
        venue.inside
    } else {
        0
    };
    let own = own
        .iter()
        .filter(|p| clock.today(p.at + clock.offset))
        // Not in the figure: the central had it only at or after the figure was counted.
        .filter(|p| p.central_since.is_none_or(|since| since >= as_of_local))
        .map(|p| p.change)
        .sum();
    let peers = peers
        .iter()
        .filter(|p| {
            // A passage whose time cannot be read counts when it takes a place (the safe
            // side), not when it frees one.
            match p.at {
                Some(at) => clock.today(at) && at >= venue.as_of,
                None => p.change > 0,
            }
        })
        .map(|p| p.change)
        .sum();
    Occupancy { synced, own, peers }
}

/// What a passage changes the occupancy by: an exit frees a place, an entry takes one unless
/// the ticket is inside already.
pub fn occupancy_change(direction: Direction, snapshot: &VenueSnapshot) -> i64 {
    match direction {
        Direction::Exit => -1,
        Direction::Entry => i64::from(snapshot.takes_place()),
    }
}

/// What the store holds of the venue for one scan of one ticket.
#[derive(Debug, Clone)]
pub struct VenueRecords {
    pub venue: SyncedVenue,
    /// This gate's passages of the ticket, and its peers' (for presence).
    pub own: Vec<OwnPassage>,
    pub peers: Vec<PeerPassage>,
    /// Every passage of this gate and of its peers (for the estimate): read only for an
    /// entry at a venue with a capacity.
    pub everyone: Option<(Vec<OwnPassage>, Vec<PeerPassage>)>,
}

impl VenueRecords {
    /// Reads what a scan of `ticket_code` at this gate needs; `None` when the device's
    /// location belongs to no venue, or the scan is no passage of it.
    pub fn read(
        store: &Store,
        ticket_code: &str,
        function_code: &FunctionCode,
        direction: Direction,
        since_local: i64,
    ) -> Result<Option<VenueRecords>, StoreError> {
        let Some(venue) = store.venue()? else {
            return Ok(None);
        };
        if !is_passage(&venue, function_code, direction) {
            return Ok(None);
        }
        let own = store.own_passages(Some(ticket_code), since_local)?;
        let peers = store.peer_passages(&venue, Some(ticket_code), since_local)?;
        let everyone = if direction == Direction::Entry && venue.capacity.is_some() {
            Some((
                store.own_passages(None, since_local)?,
                store.peer_passages(&venue, None, since_local)?,
            ))
        } else {
            None
        };
        Ok(Some(VenueRecords {
            venue,
            own,
            peers,
            everyone,
        }))
    }

    /// The snapshot an entry is decided on, with the ticket's synced passage.
    pub fn snapshot(&self, synced: Option<Passage>, clock: &VenueClock) -> VenueSnapshot {
        let inside = match &self.everyone {
            Some((own, peers)) => occupancy(&self.venue, own, peers, clock).inside(),
            None => self.venue.inside,
        };
        VenueSnapshot {
            presence: presence(synced, &self.own, &self.peers, clock),
            inside,
            capacity: self.venue.capacity,
        }
    }

    /// Whether the feed's figure is recent enough to decide on the room left.
    pub fn figure_is_fresh(&self, clock: &VenueClock, max_age_secs: u64) -> bool {
        venue::occupancy_is_fresh(
            self.venue.as_of,
            clock.now,
            i64::try_from(max_age_secs).unwrap_or(i64::MAX),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-12-02 00:00:00 in Shanghai.
    const MIDNIGHT: i64 = 1_796_140_800;
    const NOON: i64 = MIDNIGHT + 12 * 3600;

    fn clock(offset: i64) -> VenueClock {
        VenueClock {
            now: NOON,
            offset,
            zone: MerchantZone::default(),
        }
    }

    fn park(inside: i64, as_of: i64) -> SyncedVenue {
        SyncedVenue {
            venue_code: "PARK".into(),
            name: "乐园".into(),
            entry_function: FunctionCode::parse("ENTRY").expect("code"),
            capacity: Some(10),
            inside,
            as_of,
        }
    }

    fn own(direction: Direction, at: i64, change: i64, central_since: Option<i64>) -> OwnPassage {
        OwnPassage {
            ticket_code: Some("TK-1".into()),
            direction,
            at,
            change,
            central_since,
        }
    }

    fn entry(at: i64) -> Passage {
        Passage {
            direction: Direction::Entry,
            at,
        }
    }

    #[test]
    fn presence_is_the_latest_of_the_synced_own_and_peer_passages() {
        use Direction::{Entry, Exit};
        let peer = |direction, at| PeerPassage {
            ticket_code: "TK-1".into(),
            direction,
            at: Some(at),
            change: if direction == Exit { -1 } else { 1 },
        };
        let c = clock(0);
        type Case<'a> = (
            &'a str,
            Option<Passage>,
            Vec<OwnPassage>,
            Vec<PeerPassage>,
            Presence,
        );
        let cases: Vec<Case> = vec![
            ("nothing", None, vec![], vec![], Presence::Outside),
            (
                "synced entry",
                Some(entry(NOON - 60)),
                vec![],
                vec![],
                Presence::Inside,
            ),
            (
                "own exit after the synced entry",
                Some(entry(NOON - 60)),
                vec![own(Exit, NOON - 30, -1, None)],
                vec![],
                Presence::Left,
            ),
            (
                "a synced entry after the own exit",
                Some(entry(NOON - 10)),
                vec![own(Exit, NOON - 30, -1, None)],
                vec![],
                Presence::Inside,
            ),
            (
                "a peer's entry after the own exit",
                None,
                vec![own(Exit, NOON - 30, -1, None)],
                vec![peer(Entry, NOON - 5)],
                Presence::Inside,
            ),
            (
                "a peer's exit after the synced entry",
                Some(entry(NOON - 60)),
                vec![],
                vec![peer(Exit, NOON - 5)],
                Presence::Left,
            ),
            (
                "own re-entry after a peer's exit",
                Some(entry(NOON - 60)),
                vec![own(Entry, NOON - 2, 1, None)],
                vec![peer(Exit, NOON - 5)],
                Presence::Inside,
            ),
            (
                "yesterday's entry",
                Some(entry(MIDNIGHT - 1)),
                vec![own(Entry, MIDNIGHT - 5, 1, None)],
                vec![],
                Presence::Outside,
            ),
        ];
        for (what, synced, own, peers, expected) in cases {
            assert_eq!(presence(synced, &own, &peers, &c), expected, "{what}");
        }
        // This gate's clock 20 s behind the central's: its exit at local NOON-30 is at
        // NOON-10 on the central's clock, after a synced entry at NOON-20.
        assert_eq!(
            presence(
                Some(entry(NOON - 20)),
                &[own(Exit, NOON - 30, -1, None)],
                &[],
                &clock(20)
            ),
            Presence::Left
        );
    }

    #[test]
    fn the_estimate_adds_what_the_figure_cannot_include() {
        use Direction::{Entry, Exit};
        let as_of = NOON - 100;
        let passages = [
            // online before the figure: the central counted it
            own(Entry, NOON - 200, 1, Some(NOON - 200)),
            // offline before the figure, uploaded before it: counted
            own(Entry, NOON - 300, 1, Some(NOON - 150)),
            // offline before the figure, uploaded after it: not counted yet
            own(Entry, NOON - 250, 1, Some(NOON - 50)),
            // offline, still waiting for upload
            own(Exit, NOON - 400, -1, None),
            // online after the figure
            own(Entry, NOON - 20, 1, Some(NOON - 20)),
            // an entry of a ticket already inside
            own(Entry, NOON - 10, 0, None),
            // yesterday's, not uploaded: another day's count
            own(Entry, MIDNIGHT - 60, 1, None),
        ];
        let peer = |ticket: &str, direction, at, change| PeerPassage {
            ticket_code: ticket.into(),
            direction,
            at,
            change,
        };
        let peers = [
            // after the figure: an entry, a re-entry and an exit
            peer("TK-2", Entry, Some(NOON - 30), 1),
            peer("TK-5", Entry, Some(NOON - 25), 1),
            peer("TK-6", Exit, Some(NOON - 20), -1),
            // an entry of a ticket inside takes no place
            peer("TK-7", Entry, Some(NOON - 15), 0),
            // before the figure: in it
            peer("TK-3", Entry, Some(NOON - 500), 1),
            peer("TK-8", Exit, Some(NOON - 400), -1),
            // unreadable times: an entry counts, an exit does not
            peer("TK-4", Entry, None, 1),
            peer("TK-9", Exit, None, -1),
        ];
        let estimate = occupancy(&park(5, as_of), &passages, &peers, &clock(0));
        assert_eq!(
            estimate,
            Occupancy {
                synced: 5,
                own: 1,   // +1 uploaded after the figure, -1 pending, +1 after it, 0
                peers: 2  // +1 +1 -1 +0 after the figure, +1 unreadable
            }
        );
        assert_eq!(estimate.inside(), 8);
        // A figure of yesterday counts nothing today; today's passages all count.
        let stale = occupancy(&park(50, MIDNIGHT - 10), &passages, &[], &clock(0));
        assert_eq!(stale.synced, 0);
        assert_eq!(stale.own, 1 + 1 + 1 - 1 + 1);
        // The gate's clock 100 s ahead of the central's (offset -100): the figure at
        // central NOON-100 is at local NOON; the online entry at local NOON-20 is before it.
        let ahead = occupancy(
            &park(5, as_of),
            &[own(Entry, NOON - 20, 1, Some(NOON - 20))],
            &[],
            &VenueClock {
                now: NOON - 100,
                ..clock(-100)
            },
        );
        assert_eq!(ahead.own, 0);
    }

    #[test]
    fn passages_change_the_occupancy_by_what_they_take() {
        let at = |presence| VenueSnapshot {
            presence,
            inside: 0,
            capacity: None,
        };
        assert_eq!(
            occupancy_change(Direction::Entry, &at(Presence::Outside)),
            1
        );
        assert_eq!(occupancy_change(Direction::Entry, &at(Presence::Left)), 1);
        assert_eq!(occupancy_change(Direction::Entry, &at(Presence::Inside)), 0);
        assert_eq!(occupancy_change(Direction::Exit, &at(Presence::Inside)), -1);
        let venue = park(0, NOON);
        let meal = FunctionCode::parse("MEAL").expect("code");
        assert!(!is_passage(&venue, &meal, Direction::Entry));
        assert!(is_passage(&venue, &venue.entry_function, Direction::Entry));
        assert!(is_passage(&venue, &meal, Direction::Exit));
    }
}
