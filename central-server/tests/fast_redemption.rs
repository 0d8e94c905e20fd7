//! The group-commit redemption (`stile_redeem_batch`, migration 0014) against the shared
//! Rust `decide`, over batches of random ticket states in a real PostgreSQL: the statement
//! redeems a scan exactly when `decide` does (otherwise it writes nothing for it), and when
//! it does, it writes what the transaction path writes. Batches also hold a second scan of
//! a QR already in the batch (redeemed once only) and a resent scan_id (replayed). The asked
//! entitlement may carry check-in rules (allowing, or refusing for each rule), with an
//! earlier use of another QR, and the scan may be an entry at a venue (with or without a
//! capacity, some of it taken, the ticket inside, left or outside): the worker decides those
//! with `decide` in the batch's transaction, and must land where `decide` over the whole
//! ticket and venue does, writing the passage and the count when it redeems.

use central_server::db;
use central_server::group_commit::{redeem_batch, BatchOutcome, BatchScan};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::sync::atomic::{AtomicU32, Ordering};
use stile_shared::decision::{decide, Decision, DecisionInput};
use stile_shared::token::{Jti, QrClaims};
use stile_shared::venue::{self, Direction, Passage, VenueSnapshot};
use stile_shared::{
    Channel, EntitlementRules, EntitlementSnapshot, FunctionCode, QrKnowledge, TicketSnapshot,
    TicketStatus, TokenPolicy,
};
use stile_testkit::Cluster;

const FUNCTIONS: [&str; 3] = ["ENTRY", "MEAL", "SHOW"];
const STATUSES: [&str; 4] = ["ACTIVATED", "USED", "VOID", "PRE_GENERATED"];

/// One random state: the ticket, its entitlements, what this jti already redeemed, and the
/// scan asked for.
#[derive(Debug, Clone)]
struct State {
    status: usize,
    /// 0: the token's jti is the current QR; 1: another QR is; 2: none is.
    current: usize,
    /// Per function: None (no entitlement) or (total, remaining, redeemed with this jti).
    entitlements: [Option<(i32, i32, bool)>; 3],
    asked: usize,
    webhook: bool,
    /// Rules on the asked entitlement: 0 none, 1 a period around now (allows), 2 not yet
    /// valid, 3 no longer valid, 4 one use a day and one a minute ago, 5 an hour between
    /// uses and one a minute ago, 6 two a day and one a minute ago (allows).
    rules: usize,
    /// An entry at a venue of its own: (capacity, inside now, the ticket's latest passage
    /// a minute ago: 0 none, 1 an entry, 2 an exit).
    venue: Option<(Option<i64>, i64, usize)>,
}

/// The rule set of [`State::rules`], and whether it comes with an earlier use.
fn rules_of(kind: usize, now: chrono::DateTime<chrono::Utc>) -> (EntitlementRules, bool) {
    let hours = chrono::Duration::hours;
    let none = EntitlementRules::default();
    match kind {
        1 => (
            EntitlementRules {
                valid_from: Some(now - hours(1)),
                valid_until: Some(now + hours(1)),
                ..none
            },
            false,
        ),
        2 => (
            EntitlementRules {
                valid_from: Some(now + hours(1)),
                ..none
            },
            false,
        ),
        3 => (
            EntitlementRules {
                valid_until: Some(now - hours(1)),
                ..none
            },
            false,
        ),
        4 => (
            EntitlementRules {
                uses_per_day: Some(1),
                ..none
            },
            true,
        ),
        5 => (
            EntitlementRules {
                min_interval_secs: Some(3600),
                ..none
            },
            true,
        ),
        6 => (
            EntitlementRules {
                uses_per_day: Some(2),
                ..none
            },
            true,
        ),
        _ => (none, false),
    }
}

fn state() -> impl Strategy<Value = State> {
    let entitlement = prop_oneof![
        1 => Just(None),
        3 => (1..=3i32)
            .prop_flat_map(|total| (Just(total), 0..=total, prop::bool::weighted(0.2)))
            .prop_map(Some),
    ];
    (
        prop_oneof![5 => Just(0usize), 2 => Just(1usize), 1 => Just(2usize), 1 => Just(3usize)],
        prop_oneof![4 => Just(0usize), 1 => Just(1usize), 1 => Just(2usize)],
        [entitlement.clone(), entitlement.clone(), entitlement],
        0..FUNCTIONS.len(),
        prop::bool::weighted(0.15),
        prop_oneof![4 => Just(0usize), 3 => 1..7usize],
        prop_oneof![
            3 => Just(None),
            2 => (
                prop_oneof![1 => Just(None), 3 => (0..4i64).prop_map(Some)],
                0..3i64,
                0..3usize
            )
                .prop_map(Some)
        ],
    )
        .prop_map(
            |(status, current, entitlements, asked, webhook, rules, venue)| State {
                status,
                current,
                entitlements,
                asked,
                webhook,
                rules,
                venue,
            },
        )
}

fn parse_status(raw: &str) -> TicketStatus {
    TicketStatus::parse(raw).expect("status")
}

#[test]
fn the_batch_redeems_exactly_when_decide_does_and_writes_what_the_transaction_path_writes() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pool = runtime.block_on(async {
        let pool = fresh_pool(2).await;
        sqlx::query("INSERT INTO merchants (code, name) VALUES ('MP', 'plain'), ('MW', 'webhook')")
            .execute(&pool)
            .await
            .expect("merchants");
        sqlx::query("UPDATE merchants SET webhook_url = 'http://127.0.0.1:9/hook', webhook_secret = 's' WHERE code = 'MW'")
            .execute(&pool)
            .await
            .expect("webhook");
        sqlx::query(
            "INSERT INTO operators (merchant_id, username, password_hash) SELECT id, 'op-' || code, 'x' FROM merchants",
        )
        .execute(&pool)
        .await
        .expect("operators");
        pool
    });
    let counter = AtomicU32::new(0);
    // A fixed seed: the same 80 batches every run, so the check below that every outcome
    // was tried cannot fail by chance.
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: 80,
            failure_persistence: None,
            ..Config::default()
        },
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let tally = Tally::default();
    let batches = (
        prop::collection::vec(state(), 1..6),
        prop_oneof![2 => Just(Extra::None), 1 => Just(Extra::SameQr), 1 => Just(Extra::SameScanId)],
    );
    let result = runner.run(&batches, |(states, extra)| {
        runtime.block_on(batch(&pool, &counter, &states, extra, &tally));
        Ok(())
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    let (redeemed, decided, replayed) = (
        tally.redeemed.into_inner(),
        tally.decided.into_inner(),
        tally.replayed.into_inner(),
    );
    let with_rules = tally.redeemed_with_rules.into_inner();
    let at_venue = tally.redeemed_at_venue.into_inner();
    println!(
        "{redeemed} redeemed ({with_rules} with rules, {at_venue} at a venue), {decided} left to the transaction path, {replayed} replayed"
    );
    assert!(
        redeemed > 10 && decided > 10 && replayed > 3 && with_rules > 3 && at_venue > 3,
        "every outcome was tried: {redeemed} ({with_rules}, {at_venue}) / {decided} / {replayed}"
    );
}

#[derive(Debug, Default)]
struct Tally {
    redeemed: AtomicU32,
    /// Redeemed with rules on the entitlement: decided by the worker in the transaction.
    redeemed_with_rules: AtomicU32,
    /// Redeemed as an entry at a venue: decided by the worker against the locked count.
    redeemed_at_venue: AtomicU32,
    decided: AtomicU32,
    replayed: AtomicU32,
}

/// What the batch holds besides one scan per state.
#[derive(Debug, Clone, Copy)]
enum Extra {
    None,
    /// A QR of the batch again, under a new scan_id: at most one of the two redeems.
    SameQr,
    /// A scan of the batch again, same scan_id: replayed if the first redeemed.
    SameScanId,
}

/// One state in the database, its scan, and what `decide` says of it.
struct Prepared {
    state: State,
    ticket_id: i64,
    entitlements: Vec<EntitlementSnapshot>,
    verdict: Decision,
    scan: BatchScan,
    /// The venue of an entry: its id, its count before, and whether the entry takes a place.
    venue: Option<(i64, i64, bool)>,
}

async fn batch(
    pool: &sqlx::PgPool,
    counter: &AtomicU32,
    states: &[State],
    extra: Extra,
    tally: &Tally,
) {
    let mut prepared = Vec::new();
    for state in states {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        prepared.push(prepare(pool, n, state).await);
    }
    let mut scans: Vec<&BatchScan> = prepared.iter().map(|p| &p.scan).collect();
    // The extra scan repeats the first scan decide would redeem (or the first scan).
    let target = prepared
        .iter()
        .position(|p| matches!(p.verdict, Decision::Redeem { .. }) && !p.state.webhook)
        .unwrap_or(0);
    let mut again = prepared[target].scan.clone();
    match extra {
        Extra::None => {}
        Extra::SameQr => {
            again.scan_id = Some(uuid::Uuid::new_v4());
            scans.push(&again);
        }
        Extra::SameScanId => scans.push(&again),
    }
    let outcomes = redeem_batch(pool, &scans).await.expect("the batch runs");
    assert_eq!(outcomes.len(), scans.len());
    for (p, outcome) in prepared.iter().zip(&outcomes) {
        let outcome = outcome.clone().expect("every scan has an outcome");
        let redeemed = check(pool, p, &outcome).await;
        if redeemed && p.state.rules > 0 && p.state.entitlements[p.state.asked].is_some() {
            tally.redeemed_with_rules.fetch_add(1, Ordering::SeqCst);
        }
        if redeemed && p.venue.is_some() {
            tally.redeemed_at_venue.fetch_add(1, Ordering::SeqCst);
        }
        let counter = if redeemed {
            &tally.redeemed
        } else {
            &tally.decided
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
    if let Some(outcome) = outcomes.get(prepared.len()) {
        let first_redeemed = matches!(outcomes[target], Some(BatchOutcome::Redeemed(_)));
        let outcome = outcome.clone().expect("the extra scan has an outcome");
        match (extra, first_redeemed, outcome) {
            (Extra::SameQr, _, BatchOutcome::Decide) => {}
            (Extra::SameScanId, true, BatchOutcome::Replay) => {
                tally.replayed.fetch_add(1, Ordering::SeqCst);
            }
            (Extra::SameScanId, false, BatchOutcome::Decide) => {}
            // A scan with rules (or at a venue) is written after the batch's loop, so its
            // resent scan_id is not seen taken there: it goes to the transaction path,
            // which replays it.
            (Extra::SameScanId, true, BatchOutcome::Decide)
                if prepared[target].state.rules > 0 || prepared[target].venue.is_some() => {}
            (extra, first, outcome) => panic!(
                "{extra:?} after a first scan that redeemed: {first}, answered {outcome:?}: {:?}",
                prepared[target].state
            ),
        }
        // Whatever the extra scan was, the first state's pair is redeemed at most once.
        let (events,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM redemption_events WHERE ticket_id = $1 AND scan_id IS NOT NULL",
        )
        .bind(prepared[target].ticket_id)
        .fetch_one(pool)
        .await
        .expect("events");
        assert_eq!(
            events,
            i64::from(first_redeemed),
            "{:?}",
            prepared[target].state
        );
    }
}

/// Sets up one state and asks `decide` about its scan.
async fn prepare(pool: &sqlx::PgPool, n: u32, state: &State) -> Prepared {
    let merchant_code = if state.webhook { "MW" } else { "MP" };
    let (merchant_id, operator_id): (i64, i64) = sqlx::query_as(
        "SELECT m.id, o.id FROM merchants m JOIN operators o ON o.merchant_id = m.id WHERE m.code = $1",
    )
    .bind(merchant_code)
    .fetch_one(pool)
    .await
    .expect("merchant");
    let jti = Jti::from_bytes(uuid::Uuid::new_v4().into_bytes());
    let other = Jti::from_bytes(uuid::Uuid::new_v4().into_bytes());
    let current = match state.current {
        0 => Some(jti.clone()),
        1 => Some(other.clone()),
        _ => None,
    };
    let ticket_code = format!("PT-{n}");
    let (ticket_id,): (i64,) = sqlx::query_as(
        "WITH o AS (INSERT INTO orders (order_code, merchant_id) VALUES ($1, $2) RETURNING id) \
         INSERT INTO tickets (ticket_code, order_id, merchant_id, passenger_name, channel, status, current_jti) \
         SELECT $1, o.id, $2, 'p', 'OTA', $3, $4 FROM o RETURNING id",
    )
    .bind(&ticket_code)
    .bind(merchant_id)
    .bind(STATUSES[state.status])
    .bind(current.as_ref().map(Jti::as_str))
    .fetch_one(pool)
    .await
    .expect("ticket");
    let mut entitlements = Vec::new();
    let mut already = Vec::new();
    let now = chrono::Utc::now();
    for (position, (function, entitlement)) in FUNCTIONS.iter().zip(&state.entitlements).enumerate()
    {
        let Some((total, remaining, redeemed)) = entitlement else {
            continue;
        };
        let (rules, earlier_use) = if position == state.asked {
            rules_of(state.rules, now)
        } else {
            (EntitlementRules::default(), false)
        };
        let (entitlement_id,): (i64,) = sqlx::query_as(
            "INSERT INTO entitlements (ticket_id, merchant_id, function_code, name, total_uses, remaining_uses, rules) \
             VALUES ($1, $2, $3, $3, $4, $5, $6) RETURNING id",
        )
        .bind(ticket_id)
        .bind(merchant_id)
        .bind(function)
        .bind(total)
        .bind(remaining)
        .bind((!rules.is_empty()).then_some(sqlx::types::Json(&rules)))
        .fetch_one(pool)
        .await
        .expect("entitlement");
        let mut recent_uses = Vec::new();
        if earlier_use {
            let at = now - chrono::Duration::seconds(60);
            sqlx::query(
                "INSERT INTO redemption_events (jti, function_code, ticket_id, entitlement_id, merchant_id, redeemed_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(format!("earlier-{ticket_id}"))
            .bind(function)
            .bind(ticket_id)
            .bind(entitlement_id)
            .bind(merchant_id)
            .bind(at)
            .execute(pool)
            .await
            .expect("earlier use");
            recent_uses.push(at.timestamp());
        }
        if *redeemed {
            sqlx::query(
                "INSERT INTO redemption_events (jti, function_code, ticket_id, entitlement_id, merchant_id, redeemed_at) \
                 VALUES ($1, $2, $3, $4, $5, now())",
            )
            .bind(jti.as_str())
            .bind(function)
            .bind(ticket_id)
            .bind(entitlement_id)
            .bind(merchant_id)
            .execute(pool)
            .await
            .expect("earlier redemption");
            already.push(FunctionCode::parse(function).expect("code"));
        }
        entitlements.push(EntitlementSnapshot {
            function_code: FunctionCode::parse(function).expect("code"),
            total_uses: *total,
            remaining_uses: *remaining,
            rules,
            recent_uses,
        });
    }
    let (venue, venue_snapshot) = match state.venue {
        None => (None, None),
        Some((capacity, inside, latest)) => {
            let (venue_id,): (i64,) = sqlx::query_as(
                "INSERT INTO venues (merchant_id, code, name, capacity, inside, inside_on) \
                 VALUES ($1, $2, $2, $3, $4, (now() AT TIME ZONE 'Asia/Shanghai')::date) RETURNING id",
            )
            .bind(merchant_id)
            .bind(format!("V-{n}"))
            .bind(capacity)
            .bind(inside)
            .fetch_one(pool)
            .await
            .expect("venue");
            let at = now - chrono::Duration::seconds(60);
            let latest = match latest {
                1 => Some(Direction::Entry),
                2 => Some(Direction::Exit),
                _ => None,
            };
            if let Some(direction) = latest {
                sqlx::query(
                    "INSERT INTO passages (merchant_id, venue_id, ticket_id, direction, delta, at, \
                     recorded_at, source) VALUES ($1, $2, $3, $4, 0, $5, $5, 'merchant')",
                )
                .bind(merchant_id)
                .bind(venue_id)
                .bind(ticket_id)
                .bind(direction.as_str())
                .bind(at)
                .execute(pool)
                .await
                .expect("passage");
            }
            let snapshot = VenueSnapshot {
                presence: venue::presence(
                    latest.map(|direction| Passage {
                        direction,
                        at: at.timestamp(),
                    }),
                    now.timestamp(),
                    Default::default(),
                ),
                inside,
                capacity,
            };
            (
                Some((venue_id, inside, snapshot.takes_place())),
                Some(snapshot),
            )
        }
    };
    let asked = FunctionCode::parse(FUNCTIONS[state.asked]).expect("code");
    let claims = QrClaims {
        jti: jti.clone(),
        tid: ticket_code.clone(),
        mid: merchant_code.to_owned(),
        ch: Channel::Ota,
        iat: now.timestamp(),
        exp: None,
    };
    let snapshot = TicketSnapshot {
        status: parse_status(STATUSES[state.status]),
        current_jti: current,
        current_issued_at: None,
        knowledge: QrKnowledge::Complete,
        entitlements: entitlements.clone(),
    };
    let verdict = decide(&DecisionInput {
        claims: &claims,
        operator_merchant: merchant_code,
        ticket: Some(&snapshot),
        redeemed_with_this_jti: &already,
        function_code: &asked,
        now: now.timestamp(),
        policy: TokenPolicy::default(),
        zone: Default::default(),
        venue: venue_snapshot.as_ref(),
    });
    let answer = serde_json::json!({"result": "SUCCESS", "code": "SUCCESS", "message": "核销成功",
        "ticket": null, "redemption": {"id": 0, "redeemed_at": "x", "operator": {"id": operator_id, "username": "u"},
        "device_id": null, "venue_code": null}});
    Prepared {
        state: state.clone(),
        ticket_id,
        entitlements,
        verdict,
        venue,
        scan: BatchScan {
            scan_id: Some(uuid::Uuid::new_v4()),
            merchant_id,
            operator_id,
            device_pk: None,
            location_id: None,
            token_sha256: [7u8; 32],
            function_code: asked.as_str().to_owned(),
            jti: jti.as_str().to_owned(),
            ticket_code,
            source: "merchant",
            now,
            answer,
            claims,
            merchant_code: merchant_code.to_owned(),
            policy: TokenPolicy::default(),
            venue_id: venue.map(|(id, _, _)| id),
        },
    }
}

/// Compares what the batch did with one scan to `decide`; returns whether it redeemed.
async fn check(pool: &sqlx::PgPool, p: &Prepared, outcome: &BatchOutcome) -> bool {
    let (state, ticket_id, entitlements, verdict) =
        (&p.state, p.ticket_id, &p.entitlements, &p.verdict);
    let scan_id = p.scan.scan_id.expect("scan_id");
    let remaining: Vec<(String, i32)> = sqlx::query_as(
        "SELECT function_code, remaining_uses FROM entitlements WHERE ticket_id = $1 ORDER BY id",
    )
    .bind(ticket_id)
    .fetch_all(pool)
    .await
    .expect("remaining");
    let (status_after,): (String,) = sqlx::query_as("SELECT status FROM tickets WHERE id = $1")
        .bind(ticket_id)
        .fetch_one(pool)
        .await
        .expect("status");
    let (stored,): (i64,) = sqlx::query_as("SELECT count(*) FROM scan_requests WHERE scan_id = $1")
        .bind(scan_id)
        .fetch_one(pool)
        .await
        .expect("stored");
    let expect_redeem = matches!(verdict, Decision::Redeem { .. }) && !state.webhook;
    match (outcome, expect_redeem) {
        (BatchOutcome::Redeemed(answer), true) => {
            // What the transaction path writes for a SUCCESS.
            let Decision::Redeem { entitlement_index } = verdict else {
                unreachable!("checked above")
            };
            let mut after = entitlements.clone();
            after[*entitlement_index].remaining_uses -= 1;
            let expected: Vec<(String, i32)> = after
                .iter()
                .map(|e| (e.function_code.to_string(), e.remaining_uses))
                .collect();
            assert_eq!(remaining, expected, "{state:?}");
            let exhausted = after.iter().all(|e| e.remaining_uses <= 0);
            let status_expected = if exhausted && STATUSES[state.status] == "ACTIVATED" {
                "USED"
            } else {
                STATUSES[state.status]
            };
            assert_eq!(status_after, status_expected, "{state:?}");
            assert_eq!(stored, 1);
            let response: stile_shared::api::ScanResponse =
                serde_json::from_value(answer.clone()).expect("the answer is a ScanResponse");
            let event = response.redemption.as_ref().expect("redemption").id;
            let rows: (i64, i64, i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM redemption_events WHERE id = $1 AND jti = $2 AND function_code = $3 AND scan_id = $4), \
                        (SELECT count(*) FROM merchant_redemptions WHERE redemption_event_id = $1 AND result = 'SUCCESS'), \
                        (SELECT count(*) FROM scan_audit WHERE scan_id = $4), \
                        (SELECT count(*) FROM scan_requests WHERE scan_id = $4 AND response = $5)",
            )
            .bind(event)
            .bind(p.scan.jti.as_str())
            .bind(p.scan.function_code.as_str())
            .bind(scan_id)
            .bind(answer)
            .fetch_one(pool)
            .await
            .expect("rows");
            // One record per redemption: the log row is its audit record; the stored
            // answer is the one given.
            assert_eq!(rows, (1, 1, 0, 1), "{state:?}");
            if let Some((venue_id, before, takes_place)) = p.venue {
                // Its passage, and the count moved by the place it took.
                let (passages, inside): (i64, i64) = sqlx::query_as(
                    "SELECT (SELECT count(*) FROM passages WHERE venue_id = $1 AND ticket_id = $2 \
                             AND redemption_event_id = $3 AND direction = 'entry' AND delta = $4 \
                             AND NOT reentry AND scan_id = $5), \
                            (SELECT inside FROM venues WHERE id = $1)",
                )
                .bind(venue_id)
                .bind(ticket_id)
                .bind(event)
                .bind(i16::from(takes_place))
                .bind(scan_id)
                .fetch_one(pool)
                .await
                .expect("passage");
                assert_eq!(
                    (passages, inside),
                    (1, before + i64::from(takes_place)),
                    "{state:?}"
                );
            }
            let ticket = response.ticket.expect("ticket view");
            assert_eq!(ticket.status.as_str(), status_expected);
            assert_eq!(
                ticket
                    .entitlements
                    .iter()
                    .map(|e| (e.function_code.to_string(), e.remaining_uses))
                    .collect::<Vec<_>>(),
                expected
            );
            true
        }
        (BatchOutcome::Decide, false) => {
            // Nothing written.
            let before: Vec<(String, i32)> = entitlements
                .iter()
                .map(|e| (e.function_code.to_string(), e.remaining_uses))
                .collect();
            assert_eq!(remaining, before, "{state:?}");
            assert_eq!(status_after, STATUSES[state.status]);
            assert_eq!(stored, 0);
            if let Some((venue_id, before, _)) = p.venue {
                let (passages, inside): (i64, i64) = sqlx::query_as(
                    "SELECT (SELECT count(*) FROM passages WHERE venue_id = $1 AND scan_id IS NOT NULL), \
                            (SELECT inside FROM venues WHERE id = $1)",
                )
                .bind(venue_id)
                .fetch_one(pool)
                .await
                .expect("passages");
                assert_eq!((passages, inside), (0, before), "{state:?}");
            }
            false
        }
        (outcome, expected) => {
            panic!("the batch answered {outcome:?} where decide says {verdict:?} (redeem expected: {expected}): {state:?}")
        }
    }
}

/// A redemption takes no lock beyond its ticket's: its records refer to the merchant,
/// operator, device, location, order, ticket, entitlement and event without foreign keys
/// (migration 0015), and those rows cannot be deleted instead.
#[tokio::test]
async fn redemption_records_take_no_lock_and_what_they_refer_to_cannot_be_deleted() {
    let pool = fresh_pool(2).await;
    let references: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.conrelid::regclass::text, c.confrelid::regclass::text FROM pg_constraint c \
         WHERE c.contype = 'f' \
           AND c.conrelid::regclass::text IN ('redemption_events', 'merchant_redemptions', 'scan_requests') \
         ORDER BY 1, 2",
    )
    .fetch_all(&pool)
    .await
    .expect("constraints");
    let references: Vec<(&str, &str)> = references
        .iter()
        .map(|(from, to)| (from.as_str(), to.as_str()))
        .collect();
    assert_eq!(references, Vec::<(&str, &str)>::new());
    sqlx::query("INSERT INTO merchants (code, name) VALUES ('MD', 'delete me')")
        .execute(&pool)
        .await
        .expect("merchant");
    let refused = sqlx::query("DELETE FROM merchants WHERE code = 'MD'")
        .execute(&pool)
        .await
        .expect_err("a merchant cannot be deleted");
    assert_eq!(
        db::sqlstate(&refused).as_deref(),
        Some("23001"),
        "{refused}"
    );
    for table in [
        "operators",
        "devices",
        "locations",
        "orders",
        "tickets",
        "entitlements",
        "redemption_events",
    ] {
        let (guarded,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = $1::regclass \
             AND tgfoid = 'stile_refuse_delete'::regproc)",
        )
        .bind(table)
        .fetch_one(&pool)
        .await
        .expect("trigger");
        assert!(guarded, "{table} rows can be deleted");
    }
}

/// No JIT in the redemption functions nor on the server's connections (migration 0022): a
/// plan whose estimate crosses `jit_above_cost` is compiled at every execution, 20 ms of a
/// batch that otherwise takes one. A later migration that restates one of these functions
/// without `SET jit = off` loses the setting: this catches it.
#[tokio::test]
async fn the_redemption_functions_and_the_servers_connections_never_compile_plans() {
    let pool = fresh_pool(1).await;
    let functions: Vec<(String, Option<Vec<String>>)> = sqlx::query_as(
        "SELECT p.oid::regprocedure::text, p.proconfig FROM pg_proc p \
         JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = 'public' AND p.prokind = 'f' \
           AND p.proname IN ('stile_redeem_batch', 'stile_redeem_writes', \
                             'stile_write_allowed', 'stile_stamp_tickets_of_changed') \
         ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("functions");
    assert_eq!(functions.len(), 4, "{functions:?}");
    for (function, config) in &functions {
        let config = config.clone().unwrap_or_default();
        assert!(
            config.iter().any(|setting| setting == "jit=off"),
            "{function} may be JIT-compiled: {config:?}"
        );
    }
    let (jit,): (String,) = sqlx::query_as("SHOW jit")
        .fetch_one(&pool)
        .await
        .expect("SHOW jit");
    assert_eq!(jit, "off", "the server's connections");
}

/// A pool of `connections` on a fresh, migrated database, opened as the server opens its own.
async fn fresh_pool(connections: u32) -> sqlx::PgPool {
    let url = Cluster::shared()
        .fresh_database(&db::MIGRATOR)
        .await
        .expect("database");
    db::connect(&url, connections).await.expect("connect")
}
