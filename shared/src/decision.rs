//! The scan decision: one pure function that both the central server (inside its row-locked
//! transaction) and the gate agent (offline, against its synced state) call, so the two can
//! never disagree because they run different code.
//!
//! Order of checks (contract, then the check-in rules of [`crate::rules`]): token format and
//! signature (`INVALID_QR`, done by [`crate::token::verify`] before this) → expiry → merchant
//! → ticket status → supersession → entitlement present → this (`jti`, `function_code`)
//! already redeemed → validity period (`NOT_YET_VALID`, `NO_LONGER_VALID`) → daily window
//! (`OUTSIDE_HOURS`) → remaining uses (`EXHAUSTED`) → uses today (`DAILY_LIMIT`) → interval
//! since the last use (`TOO_SOON`) → room at the venue (`VENUE_FULL`) → redeem.
//!
//! An entry at a venue ([`crate::venue`]) of a ticket that left today, with an entitlement
//! that allows `reentry`, re-enters instead, right after the entitlement is found: validity
//! period, daily window, then room at the venue, and nothing is used. Exits are decided by
//! [`crate::venue::decide_exit`].
//!
//! Why this order: a rescan of a QR just redeemed says `ALREADY_REDEEMED` whatever the hour;
//! a ticket outside its period or hours says so before it says anything about counts; a
//! ticket with no uses left says `EXHAUSTED`, truer than "today's are used up"; and
//! `TOO_SOON` ("try again later") and `VENUE_FULL` ("please wait") come last, when waiting
//! would really help; `VENUE_FULL` last of all, as it is the one check that depends on other
//! tickets.

use crate::api::TokenState;
use crate::codes::DecisionCode;
use crate::domain::{FunctionCode, TicketStatus};
use crate::rules::{EntitlementRules, MerchantZone};
use crate::token::{Jti, QrClaims, TokenPolicy};
use crate::venue::{Presence, VenueSnapshot};

/// One entitlement of a ticket as the decider sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntitlementSnapshot {
    pub function_code: FunctionCode,
    pub total_uses: i32,
    pub remaining_uses: i32,
    /// Its check-in rules (empty: a plain count of uses).
    pub rules: EntitlementRules,
    /// When it was used (Unix seconds, any order): at least its newest
    /// [`EntitlementRules::uses_needed`] uses, when there are so many.
    pub recent_uses: Vec<i64>,
}

/// The ticket's state at decision time (under the row lock on the central server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketSnapshot {
    pub status: TicketStatus,
    /// The jti of the ticket's newest QR as far as this snapshot knows.
    pub current_jti: Option<Jti>,
    /// The `iat` of `current_jti`, when known.
    pub current_issued_at: Option<i64>,
    /// How far the snapshot knows about QR issuance: see [`is_superseded`].
    pub knowledge: QrKnowledge,
    pub entitlements: Vec<EntitlementSnapshot>,
}

/// Whether a snapshot can know every QR issued for its ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QrKnowledge {
    /// The central's locked row: `current_jti` is the newest QR, always.
    Complete,
    /// A synced copy (the gate's): QRs issued after the copy was taken are not in it.
    AsSynced,
}

/// The supersession rule (一码失效), for the central and the gate alike. A token is
/// superseded when it is not the ticket's current QR, and the snapshot can tell that it is
/// older: on the central's row always; on a synced copy only when the token was issued no
/// later than the copy's current QR (same second included). A validly signed token issued
/// after that (the customer refreshed while the gate's copy lagged, or the uplink dropped)
/// is newer than anything the copy knows, so the gate cannot call it superseded; the
/// central re-decides the upload against its own row. A copy that knows no QR for the
/// ticket takes any token as newer; a copy whose current QR has no known `iat` (synced
/// before the feed carried it) treats every other token as superseded, as before.
pub fn is_superseded(claims: &QrClaims, ticket: &TicketSnapshot) -> bool {
    match (&ticket.current_jti, ticket.knowledge) {
        (Some(current), _) if current == &claims.jti => false,
        (_, QrKnowledge::Complete) => true,
        (None, QrKnowledge::AsSynced) => false,
        (Some(_), QrKnowledge::AsSynced) => ticket
            .current_issued_at
            .is_none_or(|current_iat| claims.iat <= current_iat),
    }
}

/// Everything the decision depends on: plain data, time included.
#[derive(Debug, Clone)]
pub struct DecisionInput<'a> {
    /// Claims of a token whose signature already verified.
    pub claims: &'a QrClaims,
    /// The merchant code of the operator (or device) asking.
    pub operator_merchant: &'a str,
    /// The ticket the token names, looked up within the token's merchant; `None` when no
    /// such ticket exists.
    pub ticket: Option<&'a TicketSnapshot>,
    /// Function codes already redeemed under this token's `jti`.
    pub redeemed_with_this_jti: &'a [FunctionCode],
    /// The entitlement the operator chose.
    pub function_code: &'a FunctionCode,
    /// The deciding process's clock, Unix seconds.
    pub now: i64,
    pub policy: TokenPolicy,
    /// The ticket's merchant's time zone: daily windows and days are read in it.
    pub zone: MerchantZone,
    /// For an entry at a venue (the venue's entry function at one of its locations): the
    /// ticket's presence there and the venue's occupancy. `None` anywhere else.
    pub venue: Option<&'a VenueSnapshot>,
}

/// What to do with a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Redeem one use of `ticket.entitlements[entitlement_index]`.
    Redeem {
        entitlement_index: usize,
    },
    /// Let a ticket that left its venue today back in, using nothing.
    Reenter {
        entitlement_index: usize,
    },
    Reject(DecisionCode),
}

impl Decision {
    pub fn code(self) -> DecisionCode {
        match self {
            Decision::Redeem { .. } | Decision::Reenter { .. } => DecisionCode::Success,
            Decision::Reject(code) => code,
        }
    }
}

/// The checks that need no ticket state: expiry, then merchant. A caller runs them before
/// looking a ticket up, so it never locks or reads another merchant's ticket; [`decide`]
/// runs them again, so the order of checks lives in this module alone.
pub fn check_token(
    claims: &QrClaims,
    operator_merchant: &str,
    now: i64,
    policy: TokenPolicy,
) -> Result<(), DecisionCode> {
    if policy.is_expired(claims, now) {
        return Err(DecisionCode::QrExpired);
    }
    if !is_own_ticket(claims, operator_merchant) {
        return Err(DecisionCode::WrongMerchant);
    }
    Ok(())
}

/// Whether a decision a gate took offline can have happened when it says: not before the
/// token was issued, and not after it was uploaded, each with `tolerance_secs` for the
/// gate's clock offset. Anything else is [`DecisionCode::ImpossibleTime`] (an upload the
/// central records as a conflict instead of applying).
pub fn check_decision_time(
    claims: &QrClaims,
    decided_at: i64,
    uploaded_at: i64,
    tolerance_secs: i64,
) -> Result<(), DecisionCode> {
    if decided_at < claims.iat.saturating_sub(tolerance_secs)
        || decided_at > uploaded_at.saturating_add(tolerance_secs)
    {
        return Err(DecisionCode::ImpossibleTime);
    }
    Ok(())
}

/// Whether the token names a ticket of the asking merchant: only then may anything about the
/// ticket be read or shown.
pub fn is_own_ticket(claims: &QrClaims, operator_merchant: &str) -> bool {
    claims.mid == operator_merchant
}

/// What `POST /qr/decrypt` says of a token, in the order [`check_token`] checks: expired
/// first (whoever's it is), then another merchant's (refused), then superseded against the
/// ticket's current QR as the central knows it.
pub fn token_state(
    claims: &QrClaims,
    operator_merchant: &str,
    current_jti: Option<&Jti>,
    now: i64,
    policy: TokenPolicy,
) -> Result<TokenState, DecisionCode> {
    match check_token(claims, operator_merchant, now, policy) {
        Err(DecisionCode::QrExpired) => Ok(TokenState::Expired),
        Err(code) => Err(code),
        Ok(()) if current_jti == Some(&claims.jti) => Ok(TokenState::Valid),
        Ok(()) => Ok(TokenState::Superseded),
    }
}

/// Decides a scan. See the module doc for the order of checks.
pub fn decide(input: &DecisionInput<'_>) -> Decision {
    use DecisionCode::*;
    let claims = input.claims;
    if let Err(code) = check_token(claims, input.operator_merchant, input.now, input.policy) {
        return Decision::Reject(code);
    }
    let Some(ticket) = input.ticket else {
        // A correctly signed token for a ticket that does not exist: nothing to redeem.
        return Decision::Reject(InvalidQr);
    };
    match ticket.status {
        TicketStatus::Void => return Decision::Reject(TicketVoid),
        TicketStatus::PreGenerated => return Decision::Reject(TicketNotActive),
        // A USED ticket goes on through the checks: a rescan answers ALREADY_REDEEMED or
        // EXHAUSTED, as US-002 C and E expect.
        TicketStatus::Activated | TicketStatus::Used => {}
    }
    if is_superseded(claims, ticket) {
        return Decision::Reject(QrSuperseded);
    }
    let Some(entitlement_index) = ticket
        .entitlements
        .iter()
        .position(|e| &e.function_code == input.function_code)
    else {
        return Decision::Reject(NotEntitled);
    };
    let entitlement = &ticket.entitlements[entitlement_index];
    if let Some(venue) = input.venue {
        if venue.presence == Presence::Left && entitlement.rules.reentry {
            if let Err(code) = entitlement
                .rules
                .check_time(input.now, input.zone)
                .and_then(|()| venue.check_capacity())
            {
                return Decision::Reject(code);
            }
            return Decision::Reenter { entitlement_index };
        }
    }
    if input.redeemed_with_this_jti.contains(input.function_code) {
        return Decision::Reject(AlreadyRedeemed);
    }
    if let Err(code) = entitlement.rules.check_time(input.now, input.zone) {
        return Decision::Reject(code);
    }
    if entitlement.remaining_uses <= 0 {
        return Decision::Reject(Exhausted);
    }
    if let Err(code) = entitlement
        .rules
        .check_uses(&entitlement.recent_uses, input.now, input.zone)
    {
        return Decision::Reject(code);
    }
    if let Err(code) = input.venue.map_or(Ok(()), VenueSnapshot::check_capacity) {
        return Decision::Reject(code);
    }
    Decision::Redeem { entitlement_index }
}

/// Each entitlement's remaining uses once `decision` is applied to `ticket` (one use fewer
/// on the redeemed entitlement; none below zero). What a gate shows after deciding alone.
pub fn remaining_after(ticket: &TicketSnapshot, decision: Decision) -> Vec<i32> {
    ticket
        .entitlements
        .iter()
        .enumerate()
        .map(|(index, entitlement)| match decision {
            Decision::Redeem { entitlement_index } if entitlement_index == index => {
                (entitlement.remaining_uses - 1).max(0)
            }
            _ => entitlement.remaining_uses.max(0),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Channel;
    use proptest::prelude::*;

    const NOW: i64 = 1_764_000_000;

    fn fc(code: &str) -> FunctionCode {
        FunctionCode::parse(code).expect("valid function code")
    }

    fn claims() -> QrClaims {
        QrClaims {
            jti: Jti::from_bytes([1; 16]),
            tid: "TK-1".into(),
            mid: "M001".into(),
            ch: Channel::MiniApp,
            iat: NOW - 10,
            exp: Some(NOW - 10 + 1800),
        }
    }

    fn ticket() -> TicketSnapshot {
        TicketSnapshot {
            status: TicketStatus::Activated,
            current_jti: Some(Jti::from_bytes([1; 16])),
            current_issued_at: None,
            knowledge: QrKnowledge::Complete,
            entitlements: vec![
                EntitlementSnapshot {
                    function_code: fc("ENTRY"),
                    total_uses: 1,
                    remaining_uses: 1,
                    rules: EntitlementRules::default(),
                    recent_uses: vec![],
                },
                EntitlementSnapshot {
                    function_code: fc("MEAL"),
                    total_uses: 2,
                    remaining_uses: 0,
                    rules: EntitlementRules::default(),
                    recent_uses: vec![],
                },
            ],
        }
    }

    #[test]
    fn an_offline_decision_must_fall_between_issue_and_upload() {
        let claims = claims();
        let upload = NOW + 3600;
        let check = |decided| check_decision_time(&claims, decided, upload, 600);
        assert_eq!(check(claims.iat), Ok(()));
        assert_eq!(
            check(claims.iat - 600),
            Ok(()),
            "within the clock tolerance"
        );
        assert_eq!(check(claims.iat - 601), Err(DecisionCode::ImpossibleTime));
        assert_eq!(
            check(claims.iat - 5 * 365 * 86_400),
            Err(DecisionCode::ImpossibleTime)
        );
        assert_eq!(check(upload + 600), Ok(()));
        assert_eq!(
            check(upload + 601),
            Err(DecisionCode::ImpossibleTime),
            "from the future"
        );
        assert_eq!(
            check_decision_time(&claims, i64::MIN, i64::MAX, i64::MAX),
            Err(DecisionCode::ImpossibleTime)
        );
    }

    #[test]
    fn token_state_checks_expiry_then_merchant_then_supersession() {
        let policy = TokenPolicy::default();
        let fresh = claims();
        let current = Some(&fresh.jti);
        assert_eq!(
            token_state(&fresh, "M001", current, NOW, policy),
            Ok(TokenState::Valid)
        );
        let other = Jti::from_bytes([2; 16]);
        assert_eq!(
            token_state(&fresh, "M001", Some(&other), NOW, policy),
            Ok(TokenState::Superseded)
        );
        assert_eq!(
            token_state(&fresh, "M002", current, NOW, policy),
            Err(DecisionCode::WrongMerchant)
        );
        let late = NOW + 7200;
        // Expired first, whoever's it is, exactly as check_token and decide order it.
        assert_eq!(
            token_state(&fresh, "M002", None, late, policy),
            Ok(TokenState::Expired)
        );
        assert_eq!(
            check_token(&fresh, "M002", late, policy),
            Err(DecisionCode::QrExpired)
        );
    }

    struct Case {
        name: &'static str,
        claims: QrClaims,
        merchant: &'static str,
        ticket: Option<TicketSnapshot>,
        redeemed: Vec<FunctionCode>,
        function: &'static str,
        expected: Decision,
    }

    fn base(name: &'static str, expected: Decision) -> Case {
        Case {
            name,
            claims: claims(),
            merchant: "M001",
            ticket: Some(ticket()),
            redeemed: vec![],
            function: "ENTRY",
            expected,
        }
    }

    fn run(case: &Case) -> Decision {
        let function = fc(case.function);
        decide(&DecisionInput {
            claims: &case.claims,
            operator_merchant: case.merchant,
            ticket: case.ticket.as_ref(),
            redeemed_with_this_jti: &case.redeemed,
            function_code: &function,
            now: NOW,
            policy: TokenPolicy::default(),
            zone: MerchantZone::default(),
            venue: None,
        })
    }

    #[test]
    fn remaining_after_takes_one_use_of_the_redeemed_entitlement_only() {
        let t = ticket(); // ENTRY 1 left, MEAL 0 left
        assert_eq!(
            remaining_after(
                &t,
                Decision::Redeem {
                    entitlement_index: 0
                }
            ),
            [0, 0]
        );
        assert_eq!(
            remaining_after(&t, Decision::Reject(DecisionCode::Exhausted)),
            [1, 0]
        );
    }

    #[test]
    fn supersession_depends_on_what_the_snapshot_can_know() {
        let token = claims(); // iat NOW - 10, jti [1; 16]
        let other = Some(Jti::from_bytes([2; 16]));
        let mine = Some(token.jti.clone());
        type Case = (&'static str, Option<Jti>, Option<i64>, QrKnowledge, bool);
        let cases: [Case; 9] = [
            (
                "central: the current qr",
                mine.clone(),
                None,
                QrKnowledge::Complete,
                false,
            ),
            (
                "central: another qr is current",
                other.clone(),
                Some(NOW - 100),
                QrKnowledge::Complete,
                true,
            ),
            (
                "central: no qr at all",
                None,
                None,
                QrKnowledge::Complete,
                true,
            ),
            (
                "gate: the current qr",
                mine,
                Some(NOW - 10),
                QrKnowledge::AsSynced,
                false,
            ),
            (
                "gate: older than the synced current",
                other.clone(),
                Some(NOW - 5),
                QrKnowledge::AsSynced,
                true,
            ),
            (
                "gate: same second as the synced current",
                other.clone(),
                Some(NOW - 10),
                QrKnowledge::AsSynced,
                true,
            ),
            (
                "gate: issued after the synced current",
                other.clone(),
                Some(NOW - 11),
                QrKnowledge::AsSynced,
                false,
            ),
            (
                "gate: the copy knows no qr",
                None,
                None,
                QrKnowledge::AsSynced,
                false,
            ),
            (
                "gate: current's iat unknown",
                other,
                None,
                QrKnowledge::AsSynced,
                true,
            ),
        ];
        for (what, current_jti, current_issued_at, knowledge, superseded) in cases {
            let snapshot = TicketSnapshot {
                current_jti,
                current_issued_at,
                knowledge,
                ..ticket()
            };
            assert_eq!(is_superseded(&token, &snapshot), superseded, "{what}");
        }
    }

    fn instant(at: i64) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(at, 0).expect("instant")
    }

    fn window(start: u32, end: u32) -> crate::rules::DailyWindow {
        let time = |h| chrono::NaiveTime::from_hms_opt(h, 0, 0).expect("time");
        crate::rules::DailyWindow {
            start: time(start),
            end: time(end),
        }
    }

    /// The ticket with rules (and past uses) on its ENTRY entitlement.
    fn with_rules(rules: EntitlementRules, uses: &[i64]) -> Option<TicketSnapshot> {
        let mut t = ticket();
        t.entitlements[0].rules = rules;
        t.entitlements[0].recent_uses = uses.to_vec();
        Some(t)
    }

    #[test]
    fn table() {
        use DecisionCode::*;
        let expired = {
            let mut c = claims();
            c.iat = NOW - 4000;
            c.exp = Some(NOW - 2200);
            c
        };
        let other_jti = Some(Jti::from_bytes([2; 16]));
        let with_status = |status| {
            let mut t = ticket();
            t.status = status;
            Some(t)
        };
        let cases = vec![
            base(
                "redeems",
                Decision::Redeem {
                    entitlement_index: 0,
                },
            ),
            Case {
                claims: expired.clone(),
                ..base("expired", Decision::Reject(QrExpired))
            },
            Case {
                claims: expired,
                merchant: "M002",
                ..base("expiry before merchant", Decision::Reject(QrExpired))
            },
            Case {
                merchant: "M002",
                ..base("other merchant", Decision::Reject(WrongMerchant))
            },
            Case {
                merchant: "M002",
                ticket: with_status(TicketStatus::Void),
                ..base("merchant before status", Decision::Reject(WrongMerchant))
            },
            Case {
                ticket: None,
                ..base("unknown ticket", Decision::Reject(InvalidQr))
            },
            Case {
                ticket: with_status(TicketStatus::Void),
                ..base("void", Decision::Reject(TicketVoid))
            },
            Case {
                ticket: with_status(TicketStatus::PreGenerated),
                ..base("pre-generated", Decision::Reject(TicketNotActive))
            },
            Case {
                ticket: Some(TicketSnapshot {
                    current_jti: other_jti.clone(),
                    status: TicketStatus::Void,
                    ..ticket()
                }),
                ..base("status before supersession", Decision::Reject(TicketVoid))
            },
            Case {
                ticket: Some(TicketSnapshot {
                    current_jti: other_jti.clone(),
                    ..ticket()
                }),
                ..base("superseded", Decision::Reject(QrSuperseded))
            },
            Case {
                ticket: Some(TicketSnapshot {
                    current_jti: None,
                    ..ticket()
                }),
                ..base("no current qr", Decision::Reject(QrSuperseded))
            },
            Case {
                function: "SHOW",
                ..base("not entitled", Decision::Reject(NotEntitled))
            },
            Case {
                redeemed: vec![fc("ENTRY")],
                ..base("already redeemed", Decision::Reject(AlreadyRedeemed))
            },
            Case {
                redeemed: vec![fc("MEAL")],
                ..base(
                    "other function redeemed",
                    Decision::Redeem {
                        entitlement_index: 0,
                    },
                )
            },
            Case {
                function: "MEAL",
                ..base("exhausted", Decision::Reject(Exhausted))
            },
            Case {
                function: "MEAL",
                redeemed: vec![fc("MEAL")],
                ..base(
                    "already redeemed before exhausted",
                    Decision::Reject(AlreadyRedeemed),
                )
            },
            Case {
                ticket: with_status(TicketStatus::Used),
                redeemed: vec![fc("ENTRY")],
                ..base("used ticket, same qr", Decision::Reject(AlreadyRedeemed))
            },
            Case {
                ticket: with_status(TicketStatus::Used),
                function: "MEAL",
                ..base("used ticket, newer qr", Decision::Reject(Exhausted))
            },
            Case {
                ticket: with_rules(
                    EntitlementRules {
                        valid_from: Some(instant(NOW + 1)),
                        ..EntitlementRules::default()
                    },
                    &[],
                ),
                ..base("not yet valid", Decision::Reject(NotYetValid))
            },
            Case {
                ticket: with_rules(
                    EntitlementRules {
                        valid_from: Some(instant(NOW + 1)),
                        ..EntitlementRules::default()
                    },
                    &[],
                ),
                redeemed: vec![fc("ENTRY")],
                ..base(
                    "already redeemed before the period",
                    Decision::Reject(AlreadyRedeemed),
                )
            },
            Case {
                ticket: with_rules(
                    EntitlementRules {
                        valid_until: Some(instant(NOW)),
                        ..EntitlementRules::default()
                    },
                    &[],
                ),
                ..base(
                    "the end of the period is exclusive",
                    Decision::Reject(NoLongerValid),
                )
            },
            Case {
                ticket: with_rules(
                    EntitlementRules {
                        valid_from: Some(instant(NOW)),
                        valid_until: Some(instant(NOW + 1)),
                        ..EntitlementRules::default()
                    },
                    &[],
                ),
                ..base(
                    "inside the period",
                    Decision::Redeem {
                        entitlement_index: 0,
                    },
                )
            },
            Case {
                // NOW is 2025-11-24 16:00 UTC, 00:00 in Shanghai.
                ticket: with_rules(
                    EntitlementRules {
                        daily_window: Some(window(11, 14)),
                        ..EntitlementRules::default()
                    },
                    &[],
                ),
                ..base("outside hours", Decision::Reject(OutsideHours))
            },
            Case {
                ticket: with_rules(
                    EntitlementRules {
                        daily_window: Some(window(22, 2)),
                        ..EntitlementRules::default()
                    },
                    &[],
                ),
                ..base(
                    "a window across midnight",
                    Decision::Redeem {
                        entitlement_index: 0,
                    },
                )
            },
            Case {
                ticket: {
                    let mut t = ticket();
                    t.entitlements[1].rules.valid_until = Some(instant(NOW));
                    Some(t)
                },
                function: "MEAL",
                ..base("period before exhausted", Decision::Reject(NoLongerValid))
            },
            Case {
                ticket: with_rules(
                    EntitlementRules {
                        uses_per_day: Some(1),
                        ..EntitlementRules::default()
                    },
                    &[NOW],
                ),
                ..base("daily limit", Decision::Reject(DailyLimit))
            },
            Case {
                ticket: with_rules(
                    EntitlementRules {
                        uses_per_day: Some(1),
                        ..EntitlementRules::default()
                    },
                    &[NOW - 1],
                ),
                ..base(
                    "yesterday's use in Shanghai",
                    Decision::Redeem {
                        entitlement_index: 0,
                    },
                )
            },
            Case {
                ticket: with_rules(
                    EntitlementRules {
                        uses_per_day: Some(2),
                        min_interval_secs: Some(300),
                        ..EntitlementRules::default()
                    },
                    &[NOW - 120],
                ),
                ..base("too soon", Decision::Reject(TooSoon))
            },
            Case {
                ticket: with_rules(
                    EntitlementRules {
                        uses_per_day: Some(1),
                        min_interval_secs: Some(300),
                        ..EntitlementRules::default()
                    },
                    &[NOW],
                ),
                ..base("daily limit before too soon", Decision::Reject(DailyLimit))
            },
        ];
        for case in &cases {
            assert_eq!(run(case), case.expected, "{}", case.name);
        }
    }

    #[test]
    fn entries_at_a_venue_reenter_or_wait_for_room() {
        use crate::venue::{decide_exit, ExitDecision};
        let venue = |presence, inside| VenueSnapshot {
            presence,
            inside,
            capacity: Some(10),
        };
        let reentry = EntitlementRules {
            reentry: true,
            ..EntitlementRules::default()
        };
        let with_rules = |rules: EntitlementRules, remaining| {
            let mut t = ticket();
            t.entitlements[0].rules = rules;
            t.entitlements[0].remaining_uses = remaining;
            t
        };
        let entry = fc("ENTRY");
        let at = |t: &TicketSnapshot, redeemed: &[FunctionCode], v: Option<&VenueSnapshot>| {
            decide(&DecisionInput {
                claims: &claims(),
                operator_merchant: "M001",
                ticket: Some(t),
                redeemed_with_this_jti: redeemed,
                function_code: &entry,
                now: NOW,
                policy: TokenPolicy::default(),
                zone: MerchantZone::default(),
                venue: v,
            })
        };
        let used = [entry.clone()];
        let back = Decision::Reenter {
            entitlement_index: 0,
        };
        let redeem = Decision::Redeem {
            entitlement_index: 0,
        };
        let plain = with_rules(EntitlementRules::default(), 1);
        let full = DecisionCode::VenueFull;
        let cases: [(
            &str,
            TicketSnapshot,
            &[FunctionCode],
            VenueSnapshot,
            Decision,
        ); 9] = [
            (
                "first entry",
                plain.clone(),
                &[],
                venue(Presence::Outside, 9),
                redeem,
            ),
            (
                "full",
                plain.clone(),
                &[],
                venue(Presence::Outside, 10),
                Decision::Reject(full),
            ),
            (
                "already inside takes no place",
                plain.clone(),
                &[],
                venue(Presence::Inside, 10),
                redeem,
            ),
            (
                "left, no reentry: same qr",
                plain.clone(),
                &used,
                venue(Presence::Left, 0),
                Decision::Reject(DecisionCode::AlreadyRedeemed),
            ),
            (
                "left, reentry: same qr, nothing left",
                with_rules(reentry.clone(), 0),
                &used,
                venue(Presence::Left, 0),
                back,
            ),
            (
                "left, reentry, full",
                with_rules(reentry.clone(), 0),
                &used,
                venue(Presence::Left, 10),
                Decision::Reject(full),
            ),
            (
                "inside, reentry: a rescan is still a rescan",
                with_rules(reentry.clone(), 0),
                &used,
                venue(Presence::Inside, 0),
                Decision::Reject(DecisionCode::AlreadyRedeemed),
            ),
            (
                "outside, reentry: a first entry uses a count",
                with_rules(reentry.clone(), 0),
                &[],
                venue(Presence::Outside, 0),
                Decision::Reject(DecisionCode::Exhausted),
            ),
            (
                "left, reentry, past its period",
                with_rules(
                    EntitlementRules {
                        valid_until: Some(instant(NOW)),
                        ..reentry.clone()
                    },
                    0,
                ),
                &used,
                venue(Presence::Left, 0),
                Decision::Reject(DecisionCode::NoLongerValid),
            ),
        ];
        for (name, t, redeemed, v, expected) in &cases {
            assert_eq!(at(t, redeemed, Some(v)), *expected, "{name}");
        }
        assert_eq!(at(&plain, &[], None), redeem, "no venue: no capacity");
        let exit = |t: &TicketSnapshot, presence| {
            decide_exit(
                &DecisionInput {
                    claims: &claims(),
                    operator_merchant: "M001",
                    ticket: Some(t),
                    redeemed_with_this_jti: &[],
                    function_code: &entry,
                    now: NOW,
                    policy: TokenPolicy::default(),
                    zone: MerchantZone::default(),
                    venue: None,
                },
                presence,
            )
        };
        assert_eq!(exit(&plain, Presence::Inside), ExitDecision::Exit);
        assert_eq!(
            exit(&plain, Presence::Left),
            ExitDecision::Reject(DecisionCode::NotInside)
        );
        assert_eq!(
            exit(&plain, Presence::Outside),
            ExitDecision::Reject(DecisionCode::NotInside)
        );
        let mut void = plain.clone();
        void.status = TicketStatus::Void;
        assert_eq!(
            exit(&void, Presence::Inside),
            ExitDecision::Exit,
            "whoever is inside may leave"
        );
        let mut superseded = plain.clone();
        superseded.current_jti = Some(Jti::from_bytes([7; 16]));
        assert_eq!(
            exit(&superseded, Presence::Inside),
            ExitDecision::Reject(DecisionCode::QrSuperseded)
        );
    }

    fn arb_status() -> impl Strategy<Value = TicketStatus> {
        prop_oneof![
            Just(TicketStatus::PreGenerated),
            Just(TicketStatus::Activated),
            Just(TicketStatus::Used),
            Just(TicketStatus::Void),
        ]
    }

    fn arb_function() -> impl Strategy<Value = FunctionCode> {
        prop_oneof![Just(fc("ENTRY")), Just(fc("MEAL")), Just(fc("SHOW"))]
    }

    proptest! {
        /// Whatever the state, a redemption is only ever decided for an ACTIVATED or USED
        /// ticket of the operator's merchant, under the current QR, for an entitlement with
        /// uses left that this jti has not redeemed yet.
        #[test]
        fn redeem_only_when_every_rule_allows(
            status in arb_status(),
            current_is_token in any::<bool>(),
            merchant_matches in any::<bool>(),
            age in 0i64..4000,
            remaining in proptest::collection::vec(-1i32..3, 0..3),
            redeemed in proptest::collection::vec(arb_function(), 0..3),
            function in arb_function(),
        ) {
            let mut c = claims();
            c.iat = NOW - age;
            c.exp = Some(c.iat + 1800);
            let codes = ["ENTRY", "MEAL", "SHOW"];
            let t = TicketSnapshot {
                status,
                current_jti: if current_is_token { Some(c.jti.clone()) } else { Some(Jti::from_bytes([9; 16])) },
                current_issued_at: None,
                knowledge: QrKnowledge::Complete,
                entitlements: remaining.iter().enumerate().map(|(i, r)| EntitlementSnapshot {
                    function_code: fc(codes[i]), total_uses: 2, remaining_uses: *r,
                    rules: EntitlementRules::default(), recent_uses: vec![],
                }).collect(),
            };
            let decision = decide(&DecisionInput {
                claims: &c,
                operator_merchant: if merchant_matches { "M001" } else { "M002" },
                ticket: Some(&t),
                redeemed_with_this_jti: &redeemed,
                function_code: &function,
                now: NOW,
                policy: TokenPolicy::default(),
                zone: MerchantZone::default(),
                venue: None,
            });
            if let Decision::Redeem { entitlement_index } = decision {
                prop_assert!(matches!(status, TicketStatus::Activated | TicketStatus::Used));
                prop_assert!(current_is_token && merchant_matches);
                prop_assert!(age <= 1800 + 60);
                prop_assert_eq!(&t.entitlements[entitlement_index].function_code, &function);
                prop_assert!(t.entitlements[entitlement_index].remaining_uses > 0);
                prop_assert!(!redeemed.contains(&function));
            }
        }
    }
}
