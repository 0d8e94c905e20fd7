//! The one-statement redemption (`stile_redeem`, migration 0011) against the shared Rust
//! `decide`, over random ticket states in a real PostgreSQL: the statement answers SUCCESS
//! exactly when `decide` redeems (otherwise it raises and writes nothing), and when it
//! does, it writes what the transaction path writes.

use central_server::db;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::sync::atomic::{AtomicU32, Ordering};
use stile_shared::decision::{decide, Decision, DecisionInput};
use stile_shared::token::{Jti, QrClaims};
use stile_shared::{
    Channel, EntitlementSnapshot, FunctionCode, QrKnowledge, TicketSnapshot, TicketStatus,
    TokenPolicy,
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
    )
        .prop_map(|(status, current, entitlements, asked, webhook)| State {
            status,
            current,
            entitlements,
            asked,
            webhook,
        })
}

fn parse_status(raw: &str) -> TicketStatus {
    TicketStatus::parse(raw).expect("status")
}

#[test]
fn the_one_statement_redeems_exactly_when_decide_does_and_writes_what_the_transaction_path_writes()
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pool = runtime.block_on(async {
        let url = Cluster::shared().fresh_database(&db::MIGRATOR).await.expect("database");
        let pool = db::connect(&url, 2).await.expect("connect");
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
    let mut runner = TestRunner::new(Config {
        cases: 200,
        failure_persistence: None,
        ..Config::default()
    });
    let (successes, refusals) = (AtomicU32::new(0), AtomicU32::new(0));
    let result = runner.run(&state(), |state| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let redeemed = runtime.block_on(case(&pool, n, &state));
        let tally = if redeemed { &successes } else { &refusals };
        tally.fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    let (successes, refusals) = (successes.into_inner(), refusals.into_inner());
    if let Err(error) = result {
        panic!("{error}");
    }
    println!("{successes} plain successes, {refusals} other answers");
    assert!(
        successes > 10 && refusals > 10,
        "both sides were tried: {successes} / {refusals}"
    );
}

/// Sets up one state, runs the statement and `decide`, compares; returns whether it redeemed.
async fn case(pool: &sqlx::PgPool, n: u32, state: &State) -> bool {
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
    for (function, entitlement) in FUNCTIONS.iter().zip(&state.entitlements) {
        let Some((total, remaining, redeemed)) = entitlement else {
            continue;
        };
        let (entitlement_id,): (i64,) = sqlx::query_as(
            "INSERT INTO entitlements (ticket_id, merchant_id, function_code, name, total_uses, remaining_uses) \
             VALUES ($1, $2, $3, $3, $4, $5) RETURNING id",
        )
        .bind(ticket_id)
        .bind(merchant_id)
        .bind(function)
        .bind(total)
        .bind(remaining)
        .fetch_one(pool)
        .await
        .expect("entitlement");
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
        });
    }
    let asked = FunctionCode::parse(FUNCTIONS[state.asked]).expect("code");
    let now = chrono::Utc::now();
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
    });
    let scan_id = uuid::Uuid::new_v4();
    let template = serde_json::json!({"result": "SUCCESS", "code": "SUCCESS", "message": "核销成功",
        "ticket": null, "redemption": {"id": 0, "redeemed_at": "x", "operator": {"id": operator_id, "username": "u"},
        "device_id": null, "venue_code": null}});
    let answer: Result<(i64, serde_json::Value), sqlx::Error> = sqlx::query_as(
        "SELECT redemption_id, answer FROM stile_redeem($1, $2, $3, NULL, NULL, $4, $5, $6, $7, 'merchant', $8, $9)",
    )
    .bind(scan_id)
    .bind(merchant_id)
    .bind(operator_id)
    .bind(&[7u8; 32][..])
    .bind(asked.as_str())
    .bind(jti.as_str())
    .bind(&ticket_code)
    .bind(now)
    .bind(template)
    .fetch_one(pool)
    .await;
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
    match (answer, expect_redeem) {
        (Ok((event, answer)), true) => {
            // What the transaction path writes for a SUCCESS.
            let Decision::Redeem { entitlement_index } = verdict else {
                unreachable!("checked above")
            };
            let mut after = entitlements.clone();
            after[entitlement_index].remaining_uses -= 1;
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
            let rows: (i64, i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM redemption_events WHERE id = $1 AND jti = $2 AND function_code = $3), \
                        (SELECT count(*) FROM merchant_redemptions WHERE redemption_event_id = $1 AND result = 'SUCCESS'), \
                        (SELECT count(*) FROM scan_audit WHERE scan_id = $4)",
            )
            .bind(event)
            .bind(jti.as_str())
            .bind(asked.as_str())
            .bind(scan_id)
            .fetch_one(pool)
            .await
            .expect("rows");
            // One record per redemption: the log row is its audit record.
            assert_eq!(rows, (1, 1, 0), "{state:?}");
            let response: stile_shared::api::ScanResponse =
                serde_json::from_value(answer.clone()).expect("the answer is a ScanResponse");
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
            assert_eq!(response.redemption.expect("redemption").id, event);
            true
        }
        (Err(error), false) => {
            assert_eq!(
                db::sqlstate(&error).as_deref(),
                Some("STSLW"),
                "{error} {state:?}"
            );
            // Nothing written.
            let before: Vec<(String, i32)> = entitlements
                .iter()
                .map(|e| (e.function_code.to_string(), e.remaining_uses))
                .collect();
            assert_eq!(remaining, before, "{state:?}");
            assert_eq!(status_after, STATUSES[state.status]);
            assert_eq!(stored, 0);
            false
        }
        (Ok(_), false) => panic!("the statement redeemed where decide says {verdict:?}: {state:?}"),
        (Err(error), true) => panic!("the statement refused ({error}) a plain success: {state:?}"),
    }
}
