//! The database's primary dies under load and pg_auto_failover promotes its synchronous
//! standby: real processes on loopback (a monitor and two PostgreSQL nodes run by
//! `pg_autoctl`, the `central-server` binary given the multi-host URL, a real gate), the
//! primary's machine killed by the test (SIGKILL to its keeper and PostgreSQL at once).
//!
//! - 16 clients scan distinct QRs at `/venue/scan` throughout; a scan that gets no decision
//!   (503, a dropped connection, a timeout) is sent again with its scan_id until it does.
//!   Afterwards every SUCCESS a client saw is in `redemption_events` exactly once, no
//!   entitlement is used twice, and every replay answered SUCCESS, never ALREADY_REDEEMED.
//! - A gate scans throughout: online before the kill, offline (or online again) during the
//!   failover. Its offline decisions upload once; the online successes it held are uploaded
//!   again when it sees the new timeline in the feed and are not counted twice.
//! - Then a planned switchover under the same load: the old primary stays up, demoted to a
//!   standby, and no connection of the central is left on it.
//! - `STILE_FAILOVER_ROUNDS` failovers in a row (default 1), each old primary rejoining as the
//!   standby before the next.
//! - The failover time (the longest time without a SUCCESS answer around the kill) and the errors
//!   clients saw meanwhile are printed, not asserted; the test fails only when there is no
//!   new primary within a minute.

mod common;

use common::{
    is_synced, issue_qr_at, operator_token, scan, start_agent, wait_drained, wait_status,
    CentralProcess, FIXTURES,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stile_testkit::ha::HaCluster;

const OTA: &str = "ch-ota-secret";
/// Distinct tickets per round: more than 16 clients scan in one (about 3,300 here, with a
/// 6 s failover).
const LOAD_PER_ROUND: usize = 6000;
const GATE_PER_ROUND: usize = 30;
const CLIENTS: usize = 16;
const LIMIT: Duration = Duration::from_secs(60);

fn tickets(prefix: &str, order: &str, count: usize) -> String {
    let tickets: Vec<Value> = (0..count)
        .map(|i| {
            json!({"ticket_code": format!("{prefix}{i}"), "channel": "OTA", "status": "ACTIVATED",
            "entitlements": [{"function_code": "ENTRY", "name": "入园", "total_uses": 1}]})
        })
        .collect();
    json!({"orders": [{"order_id": order, "merchant": "M001",
        "passengers": [{"name": "团体", "tickets": tickets}]}]})
    .to_string()
}

/// What one client's scan ended as.
#[derive(Debug)]
struct Outcome {
    ticket: usize,
    code: String,
    /// When the scan was first sent.
    sent_at: Instant,
    answered_at: Instant,
    attempts: usize,
    redemption_id: Option<String>,
}

#[derive(Default)]
struct Load {
    next: AtomicUsize,
    stop: AtomicBool,
    outcomes: Mutex<Vec<Outcome>>,
    /// Failed attempts by what the client saw (`503 SERVICE_UNAVAILABLE`, `transport`, ...).
    errors: Mutex<BTreeMap<String, usize>>,
}

impl Load {
    /// The 16 clients, from the next unscanned ticket on.
    fn start(
        self: &Arc<Self>,
        base: &str,
        token: &str,
        qrs: &Arc<Vec<String>>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        self.stop.store(false, Ordering::Relaxed);
        self.errors.lock().expect("errors").clear();
        (0..CLIENTS)
            .map(|_| {
                tokio::spawn(client_loop(
                    self.clone(),
                    base.to_owned(),
                    token.to_owned(),
                    qrs.clone(),
                ))
            })
            .collect()
    }

    /// Stops the clients (each finishes its scan), checks that another node than
    /// `old_primary` took over, and takes what they got.
    async fn finish(
        &self,
        clients: Vec<tokio::task::JoinHandle<()>>,
        ha: &HaCluster,
        old_primary: usize,
    ) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        for client in clients {
            client.await.expect("client");
        }
        let primary = ha.writable_node().await.expect("a primary afterwards");
        assert_ne!(primary, old_primary, "the standby took over");
        std::mem::take(&mut *self.outcomes.lock().expect("outcomes"))
    }
}

async fn client_loop(load: Arc<Load>, base: String, token: String, qrs: Arc<Vec<String>>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    while !load.stop.load(Ordering::Relaxed) {
        let ticket = load.next.fetch_add(1, Ordering::Relaxed);
        if ticket >= qrs.len() {
            return;
        }
        let scan_id = uuid::Uuid::new_v4();
        let mut attempts = 0;
        let sent_at = Instant::now();
        loop {
            attempts += 1;
            let sent = client
                .post(format!("{base}/venue/scan"))
                .bearer_auth(&token)
                .json(&json!({"qr_token": qrs[ticket], "function_code": "ENTRY",
                    "venue_code": "GATE-WEST", "device_id": "dev-west-1", "scan_id": scan_id}))
                .send()
                .await;
            let failure = match sent {
                Ok(response) => {
                    let status = response.status();
                    match response.json::<Value>().await {
                        Ok(body) if status.is_success() || status.as_u16() == 409 => {
                            load.outcomes.lock().expect("outcomes").push(Outcome {
                                ticket,
                                code: body["code"].as_str().unwrap_or("?").to_owned(),
                                sent_at,
                                answered_at: Instant::now(),
                                attempts,
                                redemption_id: body["redemption"]["id"]
                                    .as_str()
                                    .map(str::to_owned)
                                    .or_else(|| {
                                        body["redemption"]["id"].as_i64().map(|n| n.to_string())
                                    }),
                            });
                            break;
                        }
                        Ok(body) => format!("{} {}", status.as_u16(), body["code"]),
                        Err(_) => format!("{} (no body)", status.as_u16()),
                    }
                }
                Err(error) if error.is_timeout() => "timeout".to_owned(),
                Err(_) => "transport".to_owned(),
            };
            *load
                .errors
                .lock()
                .expect("errors")
                .entry(failure)
                .or_default() += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn redemptions_by_ticket(pool: &sqlx::PgPool, prefix: &str) -> BTreeMap<String, i64> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT t.ticket_code, count(r.id) FROM tickets t \
         LEFT JOIN redemption_events r ON r.ticket_id = t.id \
         WHERE t.ticket_code LIKE $1 GROUP BY t.ticket_code",
    )
    .bind(format!("{prefix}%"))
    .fetch_all(pool)
    .await
    .expect("redemptions");
    rows.into_iter().collect()
}

/// Failovers in one run: `STILE_FAILOVER_ROUNDS` (default 1; `scripts/fault-db --failover`
/// runs 5), each killing whichever node is primary then and letting it rejoin.
fn rounds() -> usize {
    std::env::var("STILE_FAILOVER_ROUNDS")
        .ok()
        .and_then(|raw| raw.parse().ok())
        .unwrap_or(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_killed_under_load_loses_and_doubles_no_redemption() {
    let rounds = rounds();
    // One share more for the switchover.
    let load_tickets = LOAD_PER_ROUND * (rounds + 1);
    let gate_tickets = GATE_PER_ROUND * rounds;
    let ha = HaCluster::start().await.expect("a replicated PostgreSQL");
    let url = ha.url();
    let pool = central_server::db::connect(&url, 4).await.expect("connect");
    central_server::db::migrate(&pool).await.expect("migrate");
    for text in [
        FIXTURES.to_owned(),
        tickets("TK-L", "ORD-LOAD", load_tickets),
        tickets("TK-G", "ORD-GATE", gate_tickets),
    ] {
        let file = central_server::seed::parse(&text).expect("seed parses");
        central_server::seed::apply(&pool, &file)
            .await
            .expect("seed loads");
    }

    // The central as a real process, on the multi-host URL.
    let central = CentralProcess::serve(&url, pool.clone()).await;
    let base = central.base.clone();
    let http = reqwest::Client::new();
    let load_qrs = issue_all(&http, &base, "TK-L", load_tickets).await;
    let gate_qrs = issue_all(&http, &base, "TK-G", gate_tickets).await;
    let token = operator_token(&http, &base).await;

    let (agent, _dir) = start_agent("dev-east-1", "dev-secret-1", "GATE-EAST", &base, "").await;
    wait_status(&agent.base, LIMIT, "first sync", is_synced).await;
    // A complete sync after the QRs, so the gate knows the tickets and the database epoch.
    let seen = wait_status(&agent.base, LIMIT, "a sync after the QRs", is_synced).await;
    wait_status(&agent.base, LIMIT, "one more sync", |s| {
        s["last_sync_at"] != seen["last_sync_at"]
    })
    .await;

    let load = Arc::new(Load::default());
    let qrs = Arc::new(load_qrs);
    let mut gate_decisions: Vec<(usize, String, String)> = Vec::new();
    let mut outcomes: Vec<Outcome> = Vec::new();
    for round in 1..=rounds {
        // The gate online first (after a failover it may take a scan or two to see that
        // the uplink is back).
        let mut gate_next = (round - 1) * GATE_PER_ROUND;
        let gate_end = round * GATE_PER_ROUND;
        for _ in 0..3 {
            let decision = scan(&agent.base, &gate_qrs[gate_next]).await;
            if round == 1 {
                assert_eq!(decision["mode"], "online", "{decision}");
            }
            gate_decisions.push((
                gate_next,
                decision["code"].as_str().unwrap_or("?").to_owned(),
                decision["mode"].as_str().unwrap_or("?").to_owned(),
            ));
            gate_next += 1;
        }

        // The load.
        let clients = load.start(&base, &token, &qrs);
        tokio::time::sleep(Duration::from_millis(1500)).await;

        let primary = ha.writable_node().await.expect("a primary before the kill");
        // Replication is synchronous: a commit is acknowledged once the standby has it.
        let (standbys,): (String,) = sqlx::query_as("SHOW synchronous_standby_names")
            .fetch_one(&pool)
            .await
            .expect("synchronous_standby_names");
        assert!(
            standbys.contains("pgautofailover_standby"),
            "the primary waits for its standby: {standbys:?}"
        );
        let killed_at = Instant::now();
        ha.kill_node(primary).expect("kill the primary");
        let mut first_after: Option<Instant> = None;
        loop {
            if gate_next < gate_end {
                let decision = scan(&agent.base, &gate_qrs[gate_next]).await;
                gate_decisions.push((
                    gate_next,
                    decision["code"].as_str().unwrap_or("?").to_owned(),
                    decision["mode"].as_str().unwrap_or("?").to_owned(),
                ));
                gate_next += 1;
            }
            if first_after.is_none() {
                first_after = load
                    .outcomes
                    .lock()
                    .expect("outcomes")
                    .iter()
                    // First sent well after the kill: only the new primary can have committed
                    // it (a backend of the killed one may commit for a few milliseconds).
                    .filter(|o| {
                        o.code == "SUCCESS" && o.sent_at > killed_at + Duration::from_millis(500)
                    })
                    .map(|o| o.answered_at)
                    .min();
            }
            if first_after.is_some_and(|at| at.elapsed() > Duration::from_secs(2)) {
                break;
            }
            assert!(
                killed_at.elapsed() < LIMIT,
                "round {round}: no scan succeeded within {LIMIT:?} of the kill; monitor: {:?}\n{}",
                ha.states().await,
                ha.log_tail("monitor")
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let this_round = load.finish(clients, &ha, primary).await;
        // The failover time: the longest stretch without a SUCCESS answer from a second
        // before the kill on.
        let mut answered: Vec<Instant> = this_round
            .iter()
            .filter(|o| o.code == "SUCCESS" && o.answered_at + Duration::from_secs(1) > killed_at)
            .map(|o| o.answered_at)
            .collect();
        answered.sort();
        let (gap, gap_end) = answered
            .windows(2)
            .map(|pair| (pair[1] - pair[0], pair[1]))
            .max()
            .unwrap_or((Duration::ZERO, killed_at));
        let replayed = this_round.iter().filter(|o| o.attempts > 1).count();
        println!(
            "failover round {round}: {} scans answered ({replayed} after a retry by scan_id); \
             failover time {:.2} s (the longest time without a SUCCESS around the kill), \
             service back {:.2} s after the kill; errors clients saw: {:?}",
            this_round.len(),
            gap.as_secs_f64(),
            gap_end.saturating_duration_since(killed_at).as_secs_f64(),
            load.errors.lock().expect("errors"),
        );
        outcomes.extend(this_round);
        check_load(&on_primary(&ha).await, &outcomes).await;

        // The old primary comes back as the new standby.
        let rejoin_started = Instant::now();
        ha.restart_node(primary).expect("restart the old primary");
        let states = ha
            .wait_for(LIMIT, |states| {
                states.iter().filter(|s| s.reported == "secondary").count() == 1
                    && states.iter().filter(|s| s.reported == "primary").count() == 1
            })
            .await
            .expect("the old primary rejoins");
        println!(
            "failover round {round}: the old primary rejoined as a standby in {:.1} s: {:?}",
            rejoin_started.elapsed().as_secs_f64(),
            states
                .iter()
                .map(|s| format!("{} {}", s.name, s.reported))
                .collect::<Vec<_>>()
        );
    }

    // A planned switchover under load: the old primary stays up as a standby, and the
    // central leaves it.
    let clients = load.start(&base, &token, &qrs);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = ha
        .writable_node()
        .await
        .expect("a primary before the switchover");
    let switch_started = Instant::now();
    // pg_autoctl blocks until it is done; the clients go on on the other worker.
    tokio::task::block_in_place(|| ha.switchover()).expect("switchover");
    let switched = Instant::now();
    loop {
        let served = load
            .outcomes
            .lock()
            .expect("outcomes")
            .iter()
            .any(|o| o.code == "SUCCESS" && o.sent_at > switched);
        if served {
            break;
        }
        assert!(
            switched.elapsed() < LIMIT,
            "no scan succeeded within {LIMIT:?} of the switchover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let this_round = load.finish(clients, &ha, before).await;
    println!(
        "switchover: {} scans answered ({} after a retry by scan_id), pg_autoctl took {:.1} s; \
         errors clients saw: {:?}",
        this_round.len(),
        this_round.iter().filter(|o| o.attempts > 1).count(),
        (switched - switch_started).as_secs_f64(),
        load.errors.lock().expect("errors"),
    );
    outcomes.extend(this_round);
    check_load(&on_primary(&ha).await, &outcomes).await;
    // No connection of the central is left on the demoted node, which still runs.
    let demoted = sqlx::PgPool::connect(&ha.node_url(before))
        .await
        .expect("the demoted node still answers");
    let started = Instant::now();
    loop {
        let (left,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'stile-central'",
        )
        .fetch_one(&demoted)
        .await
        .expect("pg_stat_activity");
        if left == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{left} connections of the central stay on the demoted primary"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    demoted.close().await;

    // The gate: what it decided offline uploads once, what it held online is not doubled.
    let status = wait_drained(&agent.base, LIMIT, "uploads drained").await;
    assert_eq!(status["outbox"]["conflicts"], 0, "{status}");
    let gate_counts = redemptions_by_ticket(&on_primary(&ha).await, "TK-G").await;
    for (ticket, code, mode) in &gate_decisions {
        let expected = i64::from(code == "SUCCESS");
        let name = format!("TK-G{ticket}");
        assert_eq!(
            gate_counts.get(&name),
            Some(&expected),
            "{name} decided {code} {mode}"
        );
    }
    for (ticket, code, _) in &gate_decisions {
        if code == "SUCCESS" {
            let qr = issue_qr_at(&http, &base, &format!("TK-G{ticket}"), OTA).await;
            let again = scan(&agent.base, &qr).await;
            assert_eq!(again["code"], "EXHAUSTED", "TK-G{ticket}: {again}");
        }
    }
    let mut modes: BTreeMap<String, usize> = BTreeMap::new();
    for (_, code, mode) in &gate_decisions {
        *modes.entry(format!("{mode} {code}")).or_default() += 1;
    }
    println!("failover: gate decisions {modes:?}, each uploaded once");
    drop(central);
}

/// A pool on the node that accepts writes now, for the checks: a pool following the
/// primary may still hold a connection to a node just demoted, whose reads can be stale.
async fn on_primary(ha: &HaCluster) -> sqlx::PgPool {
    let node = ha.writable_node().await.expect("a primary");
    sqlx::PgPool::connect(&ha.node_url(node))
        .await
        .expect("connect to the primary")
}

/// A QR for each of `prefix`0 .. `prefix`count-1, issued by 8 clients at once.
async fn issue_all(http: &reqwest::Client, base: &str, prefix: &str, count: usize) -> Vec<String> {
    const ISSUERS: usize = 8;
    let issuers: Vec<_> = (0..ISSUERS)
        .map(|first| {
            let (http, base, prefix) = (http.clone(), base.to_owned(), prefix.to_owned());
            tokio::spawn(async move {
                let mut issued = Vec::new();
                for i in (first..count).step_by(ISSUERS) {
                    let qr = issue_qr_at(&http, &base, &format!("{prefix}{i}"), OTA).await;
                    issued.push((i, qr));
                }
                issued
            })
        })
        .collect();
    let mut all = Vec::with_capacity(count);
    for issuer in issuers {
        all.extend(issuer.await.expect("issuer"));
    }
    all.sort();
    all.into_iter().map(|(_, qr)| qr).collect()
}

/// Every SUCCESS a client saw is in `redemption_events` exactly once, every replay answered
/// the first decision, nothing was redeemed without a SUCCESS answer, no use was spent twice.
async fn check_load(pool: &sqlx::PgPool, outcomes: &[Outcome]) {
    let counts = redemptions_by_ticket(pool, "TK-L").await;
    for outcome in outcomes {
        assert_eq!(
            outcome.code, "SUCCESS",
            "a fresh ticket answered otherwise (a replay must give the first answer): {outcome:?}"
        );
        let ticket = format!("TK-L{}", outcome.ticket);
        assert_eq!(counts.get(&ticket), Some(&1), "{ticket}: {outcome:?}");
    }
    let answered: std::collections::HashSet<String> = outcomes
        .iter()
        .map(|o| format!("TK-L{}", o.ticket))
        .collect();
    for (ticket, count) in &counts {
        assert!(*count <= 1, "{ticket} redeemed {count} times");
        if !answered.contains(ticket) {
            assert_eq!(*count, 0, "{ticket} was redeemed without a SUCCESS answer");
        }
    }
    let ids: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.redemption_id.clone())
        .collect();
    let (found,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM redemption_events WHERE id::text = ANY($1)")
            .bind(&ids)
            .fetch_one(pool)
            .await
            .expect("ids");
    assert_eq!(
        found as usize,
        ids.len(),
        "every redemption a client was told of exists"
    );
    let (overused,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM entitlements WHERE remaining_uses < 0 OR remaining_uses > total_uses",
    )
    .fetch_one(pool)
    .await
    .expect("entitlements");
    assert_eq!(overused, 0);
}
