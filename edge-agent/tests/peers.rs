//! Venue peers with real processes: gates of the `edge-agent` binary on loopback, a real
//! central on a throwaway PostgreSQL, the uplink behind one TCP proxy and each gate's peer
//! listener behind a proxy of its own (its "LAN cable"), so the test cuts the uplink, the
//! LAN of one gate, or stops a gate with SIGSTOP.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::proxy::Proxy;
use common::{
    agent_config, bulk_fixture, free_port, is_synced, scan, wait_status, AgentProcess, Central,
};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use stile_shared::peer::{sign, AcceptMode, Acceptance, LogId, PeerKey, PeerMessage, PeerRequest};
use stile_shared::token::Jti;
use stile_shared::{FunctionCode, Identifier};

const OTA: &str = "ch-ota-secret";
const LIMIT: Duration = Duration::from_secs(45);

/// A third gate of M001, and a gate of another merchant.
const MORE_DEVICES: &str = r#"{"merchants": [
  {"code": "M001", "name": "示例乐园",
   "locations": [{"venue_code": "GATE-NORTH", "name": "北门"}],
   "devices": [{"device_id": "dev-north-1", "venue_code": "GATE-NORTH", "secret": "dev-secret-3"}]},
  {"code": "M002", "name": "别家乐园",
   "locations": [{"venue_code": "M2-GATE", "name": "大门"}],
   "devices": [{"device_id": "dev-m2-1", "venue_code": "M2-GATE", "secret": "dev-secret-m2"}]}]}"#;

struct PeerGate {
    agent: AgentProcess,
    config: PathBuf,
    port: u16,
    /// In front of the gate's peer listener: the address its peers reach it at.
    lan: Proxy,
    _dir: tempfile::TempDir,
}

impl PeerGate {
    async fn start(uplink: &Proxy, device: &str, secret: &str, venue: &str) -> PeerGate {
        PeerGate::start_with(uplink, device, secret, venue, "").await
    }

    /// `extra`: more of the `[peers]` section (static peers).
    async fn start_with(
        uplink: &Proxy,
        device: &str,
        secret: &str,
        venue: &str,
        extra: &str,
    ) -> PeerGate {
        PeerGate::start_configured(uplink, device, secret, venue, "", extra).await
    }

    /// `top`: more top-level settings (before the `[peers]` section).
    async fn start_configured(
        uplink: &Proxy,
        device: &str,
        secret: &str,
        venue: &str,
        top: &str,
        extra: &str,
    ) -> PeerGate {
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, peer_port) = (free_port(), free_port());
        let lan = Proxy::start(format!("127.0.0.1:{peer_port}").parse().expect("addr")).await;
        let config = dir.path().join("agent.toml");
        let peers = format!(
            "{top}\n[peers]\nlisten = \"127.0.0.1:{peer_port}\"\nadvertise = \"{}\"\npull_interval_ms = 500\npush_timeout_ms = 300\n{extra}",
            lan.addr
        );
        std::fs::write(
            &config,
            agent_config(
                device,
                secret,
                venue,
                &uplink.url(),
                &dir.path().join("state"),
                port,
                &peers,
            ),
        )
        .expect("config");
        let agent = AgentProcess::start(&config, port).await;
        wait_status(&agent.base, LIMIT, "first sync", is_synced).await;
        PeerGate {
            agent,
            config,
            port,
            lan,
            _dir: dir,
        }
    }

    fn base(&self) -> &str {
        &self.agent.base
    }

    async fn restart(&mut self) {
        self.agent.kill();
        self.agent = AgentProcess::start(&self.config, self.port).await;
    }

    fn signal(&self, name: &str) {
        stile_testkit::send_signal(self.agent.child.id(), name).expect("signal the agent");
    }

    /// The peer listener itself (not through the LAN proxy).
    async fn peer_url(&self) -> String {
        let status = wait_status(self.base(), LIMIT, "status", |_| true).await;
        format!(
            "http://{}/peer/v1/acceptances",
            status["peers"]["listen"].as_str().expect("listen")
        )
    }
}

fn peer<'a>(status: &'a Value, device: &str) -> Option<&'a Value> {
    status["peers"]["peers"]
        .as_array()?
        .iter()
        .find(|p| p["device_id"] == device)
}

/// Waits until the gate lists `devices` as peers that are up.
async fn wait_peers_up(gate: &PeerGate, devices: &[&str]) {
    wait_status(gate.base(), LIMIT, "peers up", |s| {
        devices
            .iter()
            .all(|d| peer(s, d).is_some_and(|p| p["state"] == "up"))
    })
    .await;
}

/// Waits until the gate has pulled `device`'s log up to at least `seq`.
async fn wait_pulled(gate: &PeerGate, device: &str, seq: u64) -> Value {
    wait_status(gate.base(), LIMIT, "caught up with a peer", |s| {
        peer(s, device).is_some_and(|p| p["pulled_seq"].as_u64() >= Some(seq) && p["lag"] == 0)
    })
    .await
}

fn code(decision: &Value) -> (&str, &str) {
    (
        decision["code"].as_str().unwrap_or("?"),
        decision["mode"].as_str().unwrap_or("?"),
    )
}

async fn metric(base: &str, name: &str) -> f64 {
    let text = common::page(&format!("{base}/metrics")).await;
    text.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ticket_let_in_at_one_gate_is_refused_at_the_others_while_the_central_is_away() {
    let central = Central::start(&[MORE_DEVICES.to_owned(), bulk_fixture(6)]).await;
    let uplink = Proxy::start(central.addr).await;
    let tokens: Vec<String> = {
        let mut tokens = Vec::new();
        for i in 0..3 {
            tokens.push(central.issue_qr(&format!("TK-B{i}"), OTA).await);
        }
        tokens
    };
    let east = PeerGate::start(&uplink, "dev-east-1", "dev-secret-1", "GATE-EAST").await;
    let west = PeerGate::start(&uplink, "dev-west-1", "dev-secret-2", "GATE-WEST").await;
    let mut north = PeerGate::start(&uplink, "dev-north-1", "dev-secret-3", "GATE-NORTH").await;
    // Everyone has synced the latest QRs and knows the two others.
    let all = ["dev-east-1", "dev-west-1", "dev-north-1"];
    for (gate, me) in [(&east, all[0]), (&west, all[1]), (&north, all[2])] {
        let others: Vec<&str> = all.into_iter().filter(|d| *d != me).collect();
        wait_peers_up(gate, &others).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    uplink.cut();

    // Accepted at east; refused at west 200 ms later, naming east.
    let first = scan(east.base(), &tokens[0]).await;
    assert_eq!(code(&first), ("SUCCESS", "offline"), "{first}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = scan(west.base(), &tokens[0]).await;
    assert_eq!(code(&again), ("ALREADY_REDEEMED", "local"), "{again}");
    assert_eq!(again["message"], "该权益已核销");
    assert_eq!(again["accepted_at"], "dev-east-1", "{again}");
    let page = common::page(&format!("{}/", west.base())).await;
    assert!(
        page.contains("已在闸机 <b class=peer>dev-east-1</b> 核销"),
        "the status page names the gate"
    );
    assert_eq!(
        metric(west.base(), "stile_agent_peer_blocks_total").await,
        1.0
    );

    // North is down while east lets the next one in; after its restart (still without the
    // central) it catches up and refuses it.
    north.agent.kill();
    let second = scan(east.base(), &tokens[1]).await;
    assert_eq!(code(&second), ("SUCCESS", "offline"), "{second}");
    north.restart().await;
    wait_pulled(&north, "dev-east-1", 2).await;
    for token in &tokens[..2] {
        let refused = scan(north.base(), token).await;
        assert_eq!(code(&refused), ("ALREADY_REDEEMED", "local"), "{refused}");
        assert_eq!(refused["accepted_at"], "dev-east-1");
    }
    // North holds both of east's entries, each once: one pushed before its restart, one
    // pulled after it.
    let held: Value = reqwest::get(format!("{}/api/peer-acceptances", north.base()))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let from_east: Vec<&Value> = held["acceptances"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|a| a["device"] == "dev-east-1")
        .collect();
    assert_eq!(from_east.len(), 2, "{held}");

    // The LAN splits east from west too: then both accept the third ticket.
    east.lan.cut();
    west.lan.cut();
    assert_eq!(
        code(&scan(east.base(), &tokens[2]).await),
        ("SUCCESS", "offline")
    );
    assert_eq!(
        code(&scan(west.base(), &tokens[2]).await),
        ("SUCCESS", "offline")
    );
    east.lan.restore();
    west.lan.restore();

    // The central is back: one redemption per ticket; a conflict only for the partitioned one.
    uplink.restore();
    for gate in [&east, &west, &north] {
        common::wait_drained(gate.base(), LIMIT, "drained").await;
    }
    assert_eq!(
        central
            .count("SELECT count(*) FROM redemption_events")
            .await,
        3
    );
    assert_eq!(
        central
            .count("SELECT count(*) FROM merchant_redemptions WHERE result = 'CONFLICT'")
            .await,
        1,
        "only the ticket accepted on both sides of the split conflicts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_peer_costs_no_scan_and_catches_up_when_it_resumes() {
    let central = Central::start(&[bulk_fixture(8)]).await;
    let uplink = Proxy::start(central.addr).await;
    let mut tokens = Vec::new();
    for i in 0..8 {
        tokens.push(central.issue_qr(&format!("TK-B{i}"), OTA).await);
    }
    let east = PeerGate::start(&uplink, "dev-east-1", "dev-secret-1", "GATE-EAST").await;
    let west = PeerGate::start(&uplink, "dev-west-1", "dev-secret-2", "GATE-WEST").await;
    wait_peers_up(&east, &["dev-west-1"]).await;
    wait_peers_up(&west, &["dev-east-1"]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    uplink.cut();
    west.signal("STOP");
    let mut walls = Vec::new();
    for token in &tokens {
        let started = Instant::now();
        let decision = scan(east.base(), token).await;
        walls.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(code(&decision), ("SUCCESS", "offline"), "{decision}");
    }
    // Printed, not asserted (no timed assertions): the figure is for the reader.
    println!("scans at east with west stopped, wall ms: {walls:.1?}");
    let status = wait_status(east.base(), LIMIT, "west seen down", |s| {
        peer(s, "dev-west-1").is_some_and(|p| p["state"] == "down")
    })
    .await;
    assert!(peer(&status, "dev-west-1").expect("west")["last_error"].is_string());
    west.signal("CONT");
    wait_pulled(&west, "dev-east-1", tokens.len() as u64).await;
    for token in &tokens {
        let refused = scan(west.base(), token).await;
        assert_eq!(code(&refused), ("ALREADY_REDEEMED", "local"), "{refused}");
        assert_eq!(refused["accepted_at"], "dev-east-1");
    }
}

/// The jti inside a QR token (its claims, read without verifying).
/// The fixtures' east and west gates grouped into the venue `PARK` with room for two, and
/// one-use OTA tickets: `TK-V1`, `TK-V2` plain, `TK-R1` with `reentry`.
fn park_of_two() -> String {
    let ticket = |code: &str, rules: Value| {
        json!({"ticket_code": code, "channel": "OTA", "status": "ACTIVATED",
               "entitlements": [{"function_code": "ENTRY", "name": "入园", "total_uses": 1, "rules": rules}]})
    };
    json!({
        "merchants": [{"code": "M001", "name": "示例乐园",
                       "locations": [{"venue_code": "GATE-EAST", "name": "东门"},
                                     {"venue_code": "GATE-WEST", "name": "西门"}],
                       "venues": [{"code": "PARK", "name": "示例乐园", "capacity": 2,
                                   "locations": ["GATE-EAST", "GATE-WEST"]}]}],
        "orders": [{"order_id": "ORD-PARK", "merchant": "M001",
                    "passengers": [{"name": "游客", "tickets": [
                        ticket("TK-V1", json!({})), ticket("TK-V2", json!({})),
                        ticket("TK-R1", json!({"reentry": true}))]}]}]
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exit_at_a_peer_frees_a_place_and_lets_the_ticket_back_in_while_the_central_is_away() {
    let central = Central::start(&[park_of_two()]).await;
    let (uplink, west_uplink) = (
        Proxy::start(central.addr).await,
        Proxy::start(central.addr).await,
    );
    let (v1, v2, r1) = (
        central.issue_qr("TK-V1", OTA).await,
        central.issue_qr("TK-V2", OTA).await,
        central.issue_qr("TK-R1", OTA).await,
    );
    let east = PeerGate::start(&uplink, "dev-east-1", "dev-secret-1", "GATE-EAST").await;
    let west = PeerGate::start_configured(
        &west_uplink,
        "dev-west-1",
        "dev-secret-2",
        "GATE-WEST",
        "direction = \"exit\"",
        "",
    )
    .await;
    wait_peers_up(&east, &["dev-west-1"]).await;
    wait_peers_up(&west, &["dev-east-1"]).await;

    // Two in, online: the venue is full.
    for qr in [&v1, &r1] {
        assert_eq!(code(&scan(east.base(), qr).await), ("SUCCESS", "online"));
    }
    common::wait_figure(east.base(), LIMIT, 2, chrono::Utc::now().timestamp() + 2).await;
    uplink.cut();
    west_uplink.cut();
    let full = scan(east.base(), &v2).await;
    assert_eq!(code(&full), ("VENUE_FULL", "offline"), "{full}");

    // The re-entry ticket leaves at the west gate: east hears of the exit from its peer.
    let out = scan(west.base(), &r1).await;
    assert_eq!(code(&out), ("SUCCESS", "offline"), "{out}");
    wait_pulled(&east, "dev-west-1", 1).await;
    let status = wait_status(east.base(), LIMIT, "the peer's exit counted", |s| {
        s["venue"]["inside"].as_i64() == Some(1)
    })
    .await;
    assert_eq!(status["venue"]["estimate"]["peers"], -1, "{status}");

    // Its place goes to the next guest; coming back, the ticket that left finds it full.
    let next = scan(east.base(), &v2).await;
    assert_eq!(code(&next), ("SUCCESS", "offline"), "{next}");
    let back = scan(east.base(), &r1).await;
    assert_eq!(
        code(&back),
        ("VENUE_FULL", "offline"),
        "the ticket left (not a rescan of one inside), and there is no room: {back}"
    );
    // A second exit at the peer: now it comes back in without using a count.
    let out = scan(west.base(), &v1).await;
    assert_eq!(code(&out), ("SUCCESS", "offline"), "{out}");
    wait_pulled(&east, "dev-west-1", 2).await;
    wait_status(east.base(), LIMIT, "the second exit counted", |s| {
        s["venue"]["inside"].as_i64() == Some(1)
    })
    .await;
    let back = scan(east.base(), &r1).await;
    assert_eq!(code(&back), ("SUCCESS", "offline"), "{back}");
    assert_eq!(back["reentry"], true, "{back}");
    // A peer's exit is no redemption: it blocks no pair at the exit gate's peers.
    let held: Value = reqwest::get(format!("{}/api/peer-acceptances", east.base()))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let exits = held["acceptances"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|a| a["direction"] == "exit")
        .count();
    assert_eq!(exits, 2, "{held}");
    // V2, let in offline at east, leaves by west: west knows it is inside from its peer.
    wait_pulled(&west, "dev-east-1", 3).await;
    let out = scan(west.base(), &v2).await;
    assert_eq!(code(&out), ("SUCCESS", "offline"), "{out}");

    // East's re-entry waits in its queue for the exit it rests on, which is west's to upload;
    // west's exit of V2 waits for the entry it rests on, which is east's.
    for gate in [&east, &west] {
        let waiting = wait_status(gate.base(), LIMIT, "status", |_| true).await;
        assert_eq!(waiting["outbox"]["held"], 1, "{waiting}");
    }
    // The central is back for east first: its entry goes, its re-entry stays (uploaded now,
    // before the exit it rests on, the central would find the ticket inside: a conflict).
    uplink.restore();
    let synced = wait_status(east.base(), LIMIT, "east's entry uploaded", |s| {
        s["outbox"]["depth"] == 1 && s["uplink"]["online"] == true
    })
    .await;
    wait_status(east.base(), LIMIT, "one more sync", |s| {
        s["last_sync_at"] != synced["last_sync_at"]
    })
    .await;
    let held = wait_status(east.base(), LIMIT, "status", |_| true).await;
    assert_eq!(
        (&held["outbox"]["depth"], &held["outbox"]["held"]),
        (&json!(1), &json!(1)),
        "{held}"
    );
    // Then for west: its exits go (V2's once the feed shows east's entry), the feed shows
    // them, and east's re-entry follows.
    west_uplink.restore();
    for gate in [&west, &east] {
        common::wait_drained(gate.base(), LIMIT, "drained").await;
    }
    central
        .expect_counts(&[
            (
                "SELECT count(*) FROM passages WHERE direction = 'exit' AND source = 'offline'",
                3,
            ),
            (
                "SELECT count(*) FROM passages WHERE reentry AND source = 'offline'",
                1,
            ),
            (
                "SELECT count(*) FROM merchant_redemptions WHERE result = 'CONFLICT'",
                0,
            ),
            // R1 inside, V1 and V2 gone.
            ("SELECT inside FROM venues WHERE code = 'PARK'", 1),
        ])
        .await;
}

fn jti_of(token: &str) -> Jti {
    let payload = token.split('.').nth(1).expect("payload");
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json");
    Jti::parse(claims["jti"].as_str().expect("jti")).expect("jti")
}

fn id(raw: &str) -> Identifier {
    Identifier::parse(raw).expect("identifier")
}

fn acceptance(device: &str, merchant: &str, seq: u64, token: &str, ticket: &str) -> PeerMessage {
    PeerMessage::Accept(Acceptance {
        device: id(device),
        merchant: id(merchant),
        log: LogId::from_bytes([9; 16]),
        seq,
        jti: jti_of(token),
        function_code: FunctionCode::parse("ENTRY").expect("code"),
        ticket: id(ticket),
        decided_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        mode: AcceptMode::Offline,
        direction: Default::default(),
        redeemed: true,
        venue: None,
        occupancy_change: None,
    })
}

/// One gate the test speaks as: its device id, merchant and key.
struct Speaker<'a> {
    device: &'a str,
    merchant: &'a str,
    key: &'a ed25519_dalek::SigningKey,
}

/// A growing nonce for the test's requests.
fn nonce() -> u64 {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = chrono::Utc::now().timestamp_millis() as u64;
    let previous = LAST
        .fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |l| Some(now.max(l + 1)),
        )
        .unwrap_or(0);
    now.max(previous + 1)
}

impl Speaker<'_> {
    /// The signed `Authorization` value of a request to `peer`.
    fn request(&self, peer: &str, push: bool) -> String {
        let request = PeerRequest {
            device: id(self.device),
            merchant: id(self.merchant),
            peer: id(peer),
            nonce: nonce(),
        };
        let message = if push {
            PeerMessage::Push(request)
        } else {
            PeerMessage::Pull(request)
        };
        format!("StilePeer {}", sign(&message, self.key))
    }
}

/// A push to east with this exact `Authorization` value (so a test can replay one).
async fn push_as(url: &str, authorization: &str, message: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .header("authorization", authorization)
        .json(&json!({"messages": [message]}))
        .send()
        .await
        .expect("push");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn push(url: &str, from: &Speaker<'_>, message: &str) -> (u16, Value) {
    push_as(url, &from.request("dev-east-1", true), message).await
}

/// Pushes one message and expects it taken.
async fn taken(url: &str, from: &Speaker<'_>, message: &str) {
    let (status, answer) = push(url, from, message).await;
    assert_eq!(
        (status, answer["taken"].as_u64()),
        (200, Some(1)),
        "{answer}"
    );
}

/// Why a push was refused: the request as a whole, or its first message.
fn reason(answer: &Value) -> Option<&str> {
    answer["refused"][0]["reason"]
        .as_str()
        .or(answer["message"].as_str())
}

/// Pushes one message and expects it refused for `expected`.
async fn refused_as(url: &str, from: &Speaker<'_>, message: &str, expected: &str) {
    let (status, answer) = push(url, from, message).await;
    assert_eq!((status, reason(&answer)), (403, Some(expected)), "{answer}");
}

/// Registers a key at the central for a device whose credential the test holds.
async fn register(central: &Central, device: &str, secret: &str, key: &ed25519_dalek::SigningKey) {
    let response = central
        .client
        .put(format!("{}/device/peer", central.base))
        .bearer_auth(format!("{device}:{secret}"))
        .json(&json!({"public_key": PeerKey::of(key).encode(), "address": "127.0.0.1:9"}))
        .send()
        .await
        .expect("register");
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_replayed_and_foreign_messages_are_refused_counted_and_change_nothing() {
    let central = Central::start(&[MORE_DEVICES.to_owned(), bulk_fixture(4)]).await;
    let uplink = Proxy::start(central.addr).await;
    let mut tokens = Vec::new();
    for i in 0..3 {
        tokens.push(central.issue_qr(&format!("TK-B{i}"), OTA).await);
    }
    // The test is gate north (it holds north's device credential and key) and a gate of M002.
    let north = ed25519_dalek::SigningKey::from_bytes(&[31; 32]);
    let foreign = ed25519_dalek::SigningKey::from_bytes(&[32; 32]);
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[33; 32]);
    register(&central, "dev-north-1", "dev-secret-3", &north).await;
    register(&central, "dev-m2-1", "dev-secret-m2", &foreign).await;
    // A bad key is refused by the central.
    let bad = central
        .client
        .put(format!("{}/device/peer", central.base))
        .bearer_auth("dev-north-1:dev-secret-3")
        .json(&json!({"public_key": "AAAA", "port": 9092}))
        .send()
        .await
        .expect("register");
    assert_eq!(bad.status(), 400);
    let east = PeerGate::start(&uplink, "dev-east-1", "dev-secret-1", "GATE-EAST").await;
    let listed = wait_status(east.base(), LIMIT, "north listed", |s| {
        peer(s, "dev-north-1").is_some()
    })
    .await;
    assert!(
        peer(&listed, "dev-m2-1").is_none(),
        "another merchant's gate is never a peer: {listed}"
    );
    let url = east.peer_url().await;

    let as_north = Speaker {
        device: "dev-north-1",
        merchant: "M001",
        key: &north,
    };
    let as_impostor = Speaker {
        device: "dev-north-1",
        merchant: "M001",
        key: &stranger,
    };
    let as_foreign = Speaker {
        device: "dev-m2-1",
        merchant: "M002",
        key: &foreign,
    };
    let foreign_in_our_name = Speaker {
        device: "dev-m2-1",
        merchant: "M001",
        key: &foreign,
    };

    // An acceptance signed by someone else in north's name, inside north's own request.
    let forged = sign(
        &acceptance("dev-north-1", "M001", 1, &tokens[0], "TK-B0"),
        &stranger,
    );
    refused_as(&url, &as_north, &forged, "forged").await;
    // Requests: in north's name with another key, from another merchant's gate, from that
    // gate claiming to be ours, unsigned, and garbage inside a good request.
    let genuine = sign(
        &acceptance("dev-north-1", "M001", 1, &tokens[1], "TK-B1"),
        &north,
    );
    refused_as(&url, &as_impostor, &genuine, "forged").await;
    let theirs = sign(
        &acceptance("dev-m2-1", "M002", 1, &tokens[0], "TK-B0"),
        &foreign,
    );
    refused_as(&url, &as_foreign, &theirs, "other_merchant").await;
    refused_as(&url, &foreign_in_our_name, &theirs, "unknown_device").await;
    let (status, _) = push_as(&url, "", &genuine).await;
    assert_eq!(status, 401, "a push without a signed request");
    let (status, answer) = push(&url, &as_north, "not.a-message").await;
    assert_eq!((status, reason(&answer)), (403, Some("malformed")));
    // Another merchant's acceptance inside a good request of north.
    refused_as(&url, &as_north, &theirs, "other_merchant").await;

    // A real push of north is taken once; the same request again is a replay.
    let authorization = as_north.request("dev-east-1", true);
    let (status, answer) = push_as(&url, &authorization, &genuine).await;
    assert_eq!(
        (status, answer["taken"].as_u64()),
        (200, Some(1)),
        "{answer}"
    );
    let (status, answer) = push_as(&url, &authorization, &genuine).await;
    assert_eq!(
        (status, reason(&answer)),
        (403, Some("replayed")),
        "{answer}"
    );
    // A new request with an entry held already: nothing refused, nothing new.
    let (status, answer) = push(&url, &as_north, &genuine).await;
    assert_eq!(
        (status, answer["taken"].as_u64(), answer["held"].as_u64()),
        (200, Some(0), Some(1))
    );

    // Pulls: unsigned, forged, for another gate, or replayed are refused; a fresh one is served.
    let client = reqwest::Client::new();
    let pull = |authorization: Option<String>| {
        let mut request = client.get(&url);
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        request.send()
    };
    assert_eq!(pull(None).await.expect("pull").status(), 401);
    let forged_pull = as_impostor.request("dev-east-1", false);
    assert_eq!(pull(Some(forged_pull)).await.expect("pull").status(), 403);
    let misdirected = as_north.request("dev-west-1", false);
    assert_eq!(pull(Some(misdirected)).await.expect("pull").status(), 403);
    let push_as_pull = as_north.request("dev-east-1", true);
    assert_eq!(
        pull(Some(push_as_pull)).await.expect("pull").status(),
        403,
        "a push request is no pull"
    );
    let good = as_north.request("dev-east-1", false);
    let served = pull(Some(good.clone())).await.expect("pull");
    assert_eq!(served.status(), 200);
    let served: Value = served.json().await.expect("json");
    assert_eq!(served["device"], "dev-east-1");
    assert_eq!(
        pull(Some(good)).await.expect("pull").status(),
        403,
        "a replayed pull"
    );

    let refused = |reason: &str| {
        let base = east.base().to_owned();
        let name = format!("stile_agent_peer_messages_refused_total{{reason=\"{reason}\"}}");
        async move { metric(&base, &name).await }
    };
    assert_eq!(refused("forged").await, 3.0);
    assert_eq!(refused("other_merchant").await, 2.0);
    assert_eq!(refused("unknown_device").await, 1.0);
    assert_eq!(refused("replayed").await, 2.0);
    assert_eq!(refused("malformed").await, 2.0);
    assert_eq!(refused("wrong_peer").await, 1.0);

    // None of the refused messages changed a decision; the genuine one did.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    uplink.cut();
    let first = scan(east.base(), &tokens[0]).await;
    assert_eq!(code(&first), ("SUCCESS", "offline"), "{first}");
    let second = scan(east.base(), &tokens[1]).await;
    assert_eq!(code(&second), ("ALREADY_REDEEMED", "local"), "{second}");
    assert_eq!(second["accepted_at"], "dev-north-1");
    // Peers' records are evidence, not uploads: east uploads only its own acceptance.
    uplink.restore();
    common::wait_drained(east.base(), LIMIT, "drained").await;
    assert_eq!(
        central
            .count("SELECT count(*) FROM redemption_events")
            .await,
        1
    );

    // Revoking north at the central takes it out of east's list at the next sync: its
    // messages, correctly signed, are then from an unknown device.
    central_server::lifecycle::revoke_device(&central.pool, &id("dev-north-1"))
        .await
        .expect("revoke");
    wait_status(east.base(), LIMIT, "north gone", |s| {
        s["peers"]["peers"].as_array().is_some() && peer(s, "dev-north-1").is_none()
    })
    .await;
    let after_revocation = sign(
        &acceptance("dev-north-1", "M001", 2, &tokens[2], "TK-B2"),
        &north,
    );
    refused_as(&url, &as_north, &after_revocation, "unknown_device").await;
}

/// A peer named in the settings is trusted without the central: its key was never
/// registered there, yet its signed acceptance blocks the ticket.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_static_peer_is_trusted_without_the_central_knowing_its_key() {
    let central = Central::start(&[MORE_DEVICES.to_owned(), bulk_fixture(2)]).await;
    let uplink = Proxy::start(central.addr).await;
    let token = central.issue_qr("TK-B0", OTA).await;
    let north = ed25519_dalek::SigningKey::from_bytes(&[41; 32]);
    let extra = format!(
        "[[peers.static]]\ndevice_id = \"dev-north-1\"\naddress = \"127.0.0.1:9\"\npublic_key = \"{}\"\n",
        PeerKey::of(&north).encode()
    );
    let east =
        PeerGate::start_with(&uplink, "dev-east-1", "dev-secret-1", "GATE-EAST", &extra).await;
    let status = wait_status(east.base(), LIMIT, "synced with its static peer", |s| {
        peer(s, "dev-north-1").is_some_and(|p| p["source"] == "static")
    })
    .await;
    assert_eq!(
        status["peers"]["merchant"], "M001",
        "the central said the merchant"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    uplink.cut();
    let url = east.peer_url().await;
    let genuine = sign(
        &acceptance("dev-north-1", "M001", 1, &token, "TK-B0"),
        &north,
    );
    let as_north = Speaker {
        device: "dev-north-1",
        merchant: "M001",
        key: &north,
    };
    taken(&url, &as_north, &genuine).await;
    let refused = scan(east.base(), &token).await;
    assert_eq!(code(&refused), ("ALREADY_REDEEMED", "local"), "{refused}");
    assert_eq!(refused["accepted_at"], "dev-north-1");
}
