//! The gate in the field: the messier faults a venue has every week, each injected by the
//! test itself into real processes: a central frozen by SIGSTOP, a store another process
//! holds locked, a gate that never got its keys, a decision left on the display, a
//! logged-out gate.

mod common;

use common::proxy::Proxy;
use common::{
    agent_config, bulk_fixture, free_port, is_synced, scan, wait_status, AgentProcess, Browser,
    Central, CentralProcess, API_TOKEN,
};
use serde_json::Value;
use std::time::{Duration, Instant};

const OTA: &str = "ch-ota-secret";
const LIMIT: Duration = Duration::from_secs(45);

/// Waits for a ticket sync that finished more than a second after now (so it started after
/// the QR issued just before: the snapshot knows the new current jti).
async fn wait_for_fresh_sync(base: &str) {
    let after = (chrono::Utc::now() + chrono::Duration::seconds(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    wait_status(base, LIMIT, "a sync after the issuance", |s| {
        s["last_sync_at"]
            .as_str()
            .is_some_and(|at| at > after.as_str())
    })
    .await;
}

fn code(decision: &Value) -> &str {
    decision["code"].as_str().unwrap_or("?")
}

/// A gate's settings for `central_url` (dev-east-1 at GATE-EAST, the fixture's operator
/// logging in by itself) in a fresh directory: the directory, the config file, the port.
fn gate_config(central_url: &str, extra: &str) -> (tempfile::TempDir, std::path::PathBuf, u16) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, port) = gate_config_in(dir.path(), central_url, extra);
    (dir, config, port)
}

/// The same in a directory the test already has (a spool or a FIFO lives there too).
fn gate_config_in(
    dir: &std::path::Path,
    central_url: &str,
    extra: &str,
) -> (std::path::PathBuf, u16) {
    let port = free_port();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        agent_config(
            "dev-east-1",
            "dev-secret-1",
            "GATE-EAST",
            central_url,
            &dir.join("state"),
            port,
            extra,
        ),
    )
    .expect("config");
    (config, port)
}

/// Rewrites a gate's settings so nobody logs in by configuration.
fn drop_configured_operator(config: &std::path::Path) {
    let text = std::fs::read_to_string(config).expect("config");
    assert!(text.contains("[operator]"), "an operator section to drop");
    std::fs::write(config, common::without_operator(&text)).expect("config");
}

/// Writes a gate's settings for `central_url` and starts the agent.
async fn start_agent(central_url: &str, extra: &str) -> (AgentProcess, tempfile::TempDir) {
    let (dir, config, port) = gate_config(central_url, extra);
    (AgentProcess::start(&config, port).await, dir)
}

/// A central frozen by SIGSTOP: the first scan learns the link is bad (and still gets a
/// decision, offline), every later one is decided offline at once while the gate probes in
/// the background; after SIGCONT the gate goes back online by itself and drains its queue,
/// and each offline acceptance is redeemed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_central_costs_one_timeout_then_the_gate_decides_offline_and_recovers() {
    let central = CentralProcess::start(&[bulk_fixture(8)]).await;
    let (agent, _dir) = start_agent(&central.base, "").await;
    wait_status(&agent.base, LIMIT, "first sync", is_synced).await;
    let mut tokens = Vec::new();
    for i in 0..6 {
        tokens.push(central.issue_qr(&format!("TK-B{i}"), OTA).await);
    }
    // the feed must know the new current jtis before the link hangs
    wait_for_fresh_sync(&agent.base).await;
    let first = scan(&agent.base, &tokens[0]).await;
    assert_eq!(
        (code(&first), first["mode"].as_str()),
        ("SUCCESS", Some("online"))
    );

    central.signal("STOP");
    let mut walls = Vec::new();
    for (i, token) in tokens[1..].iter().enumerate() {
        let started = Instant::now();
        let decision = if i == 0 {
            // The first scan waits for the hung central: meanwhile the display shows the
            // neutral "checking" state, not the previous person's green.
            let (base, token) = (agent.base.clone(), token.clone());
            let pending = tokio::spawn(async move { scan(&base, &token).await });
            let checking = wait_status(&agent.base, LIMIT, "checking while in flight", |s| {
                s["showing"]["state"] == "checking"
            })
            .await;
            assert_eq!(checking["showing"]["state"], "checking");
            let page = common::page(&format!("{}/gate", agent.base)).await;
            assert!(page.contains("data-state=checking"), "{page}");
            pending.await.expect("scan task")
        } else {
            scan(&agent.base, token).await
        };
        walls.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(
            (code(&decision), decision["mode"].as_str()),
            ("SUCCESS", Some("offline")),
            "scan {i} while the central hangs: {decision}"
        );
        if i == 0 {
            let status = wait_status(&agent.base, LIMIT, "status", |_| true).await;
            assert_eq!(
                status["uplink"]["state"], "suspect",
                "a timeout makes the link suspect: {status}"
            );
        }
    }
    println!("wall times while the central hangs (ms): {walls:.1?}");
    let status = wait_status(&agent.base, LIMIT, "status", |_| true).await;
    assert!(
        matches!(
            status["uplink"]["state"].as_str(),
            Some("suspect" | "offline")
        ),
        "{status}"
    );
    assert_eq!(status["outbox"]["depth"], 5, "{status}");
    let verdict = status["verdict"]["text"].as_str().unwrap_or_default();
    assert!(verdict.starts_with("Deciding OFFLINE"), "{verdict}");

    central.signal("CONT");
    let back = Instant::now();
    let status = wait_status(&agent.base, LIMIT, "back online and drained", |s| {
        s["uplink"]["state"] == "online" && s["outbox"]["depth"].as_i64() == Some(0)
    })
    .await;
    println!(
        "online and drained {:.1} s after SIGCONT",
        back.elapsed().as_secs_f64()
    );
    assert_eq!(status["outbox"]["conflicts"], 0, "{status}");
    assert_eq!(
        central
            .count("SELECT count(*) FROM redemption_events e JOIN tickets t ON t.id = e.ticket_id WHERE t.ticket_code LIKE 'TK-B%'")
            .await,
        6
    );
    let again = scan(&agent.base, &tokens[5]).await;
    assert_eq!(code(&again), "ALREADY_REDEEMED", "{again}");
}

/// The store refuses writes (another process holds SQLite's write lock): a decision the
/// central committed is still shown as the central made it, and the failure is an alarm on
/// the status page, in `/readyz` and `/metrics`; offline, nothing unrecorded is green.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_cannot_write_is_an_alarm_and_never_costs_a_visitor_the_central_accepted() {
    let central = Central::start(&[bulk_fixture(3)]).await;
    let proxy = Proxy::start(central.addr).await;
    let (agent, dir) = start_agent(&proxy.url(), "").await;
    wait_status(&agent.base, LIMIT, "first sync", is_synced).await;
    let online_token = central.issue_qr("TK-B0", OTA).await;
    let offline_token = central.issue_qr("TK-B1", OTA).await;
    wait_for_fresh_sync(&agent.base).await;

    let db = dir.path().join("state").join("agent.db");
    let locker = rusqlite::Connection::open(&db).expect("open the agent's store");
    locker
        .execute_batch("BEGIN EXCLUSIVE")
        .expect("take the write lock");

    let decision = scan(&agent.base, &online_token).await;
    assert_eq!(
        (code(&decision), decision["mode"].as_str()),
        ("SUCCESS", Some("online")),
        "the central redeemed it: {decision}"
    );
    assert_eq!(central.remaining("TK-B0", "ENTRY").await, 0);
    let status = wait_status(&agent.base, LIMIT, "alarm", |s| !s["store_alarm"].is_null()).await;
    assert!(status["store_alarm"].as_str().is_some(), "{status}");
    let client = reqwest::Client::new();
    let ready = client
        .get(format!("{}/readyz", agent.base))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = ready.json().await.expect("json");
    assert!(body["store_error"].is_string(), "{body}");
    let page = client
        .get(format!("{}/", agent.base))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("text");
    assert!(page.contains("ALARM"), "the status page shows the alarm");
    let metrics = client
        .get(format!("{}/metrics", agent.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let failures: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("stile_agent_store_write_failures_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(failures >= 1, "{metrics}");

    proxy.cut();
    let offline = scan(&agent.base, &offline_token).await;
    assert_eq!(
        (code(&offline), offline["mode"].as_str()),
        ("STORE_FAILED", Some("offline")),
        "nothing green that is not recorded: {offline}"
    );
    assert_eq!(
        offline["message"],
        "设备存储故障，无法离线核验，请联系技术人员"
    );

    locker.execute_batch("ROLLBACK").expect("release the lock");
    drop(locker);
    let retried = scan(&agent.base, &offline_token).await;
    assert_eq!(
        (code(&retried), retried["mode"].as_str()),
        ("SUCCESS", Some("offline")),
        "{retried}"
    );
    let status = wait_status(&agent.base, LIMIT, "status", |_| true).await;
    assert!(
        status["store_alarm"].is_null(),
        "a good write clears it: {status}"
    );
}

/// A gate that never reached the central has no keys: a valid code is "cannot verify
/// offline", not "invalid", and a garbage code is still invalid once keys are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gate_without_keys_says_it_cannot_verify_rather_than_invalid() {
    let central = Central::start(&[]).await;
    let proxy = Proxy::start(central.addr).await;
    proxy.cut();
    let token = central.issue_qr("TK-MULTI", OTA).await;
    let (agent, _dir) = start_agent(&proxy.url(), "").await;
    let decision = scan(&agent.base, &token).await;
    assert_eq!(code(&decision), "OFFLINE_UNVERIFIABLE", "{decision}");
    // what is not a token at all is invalid with or without keys
    let garbage = scan(&agent.base, "not a token").await;
    assert_eq!(code(&garbage), "INVALID_QR", "{garbage}");
    proxy.restore();
    wait_status(&agent.base, LIMIT, "first sync", is_synced).await;
    let decision = scan(&agent.base, &token).await;
    assert_eq!(code(&decision), "SUCCESS", "{decision}");
}

/// The display clears a decision after `decision_clear_secs` and says plainly when nobody is
/// logged in, also right after a decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_display_clears_after_its_timeout_and_a_logged_out_gate_says_so() {
    let central = Central::start(&[]).await;
    let (agent, _dir) = start_agent(&central.base, "decision_clear_secs = 1\n").await;
    wait_status(&agent.base, LIMIT, "first sync", is_synced).await;
    let token = central.issue_qr("TK-MULTI", OTA).await;
    let decision = scan(&agent.base, &token).await;
    assert_eq!(code(&decision), "SUCCESS", "{decision}");
    let status = wait_status(&agent.base, LIMIT, "status", |_| true).await;
    assert_eq!(status["showing"]["state"], "decided", "{status}");
    let cleared = Instant::now();
    wait_status(&agent.base, LIMIT, "cleared", |s| {
        s["showing"]["state"] == "waiting"
    })
    .await;
    println!("cleared after {:.1} s", cleared.elapsed().as_secs_f64());
    let page = common::page(&format!("{}/gate", agent.base)).await;
    assert!(
        page.contains("data-state=waiting") && !page.contains("核销成功"),
        "{page}"
    );

    let decision = scan(&agent.base, &token).await;
    assert_eq!(code(&decision), "ALREADY_REDEEMED", "{decision}");
    let mut browser = Browser::default();
    let login = format!("{}/gate/login", agent.base);
    let (_, page) = browser
        .post_form(
            &login,
            &[("username", "op-east"), ("password", "correct horse")],
        )
        .await;
    assert!(page.contains("退出登录"), "{page}");
    browser
        .post_form(&format!("{}/gate/logout", agent.base), &[])
        .await;
    let status = wait_status(&agent.base, LIMIT, "status", |_| true).await;
    assert_eq!(status["showing"]["state"], "logged_out", "{status}");
    let page = common::page(&format!("{}/gate", agent.base)).await;
    assert!(
        page.contains("未登录") && !page.contains("该权益已核销"),
        "{page}"
    );
}

/// A QR issued after the gate's last sync (the customer refreshed just before the link
/// dropped) is the ticket's newest: offline, the gate accepts it instead of calling it
/// superseded, still refuses the QR its copy knows was replaced, and the central takes the
/// upload without a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_qr_issued_after_the_last_sync_is_not_called_superseded_offline() {
    let central = Central::start(&[bulk_fixture(2)]).await;
    let proxy = Proxy::start(central.addr).await;
    let (agent, _dir) = start_agent(&proxy.url(), "").await;
    wait_status(&agent.base, LIMIT, "first sync", is_synced).await;
    // `iat` counts whole seconds: each issuance below is in a later second.
    let second = Duration::from_millis(1100);
    let replaced = central.issue_qr("TK-B0", OTA).await;
    tokio::time::sleep(second).await;
    let synced = central.issue_qr("TK-B0", OTA).await;
    wait_for_fresh_sync(&agent.base).await;
    proxy.cut();
    tokio::time::sleep(second).await;
    let newest = central.issue_qr("TK-B0", OTA).await;

    let decision = scan(&agent.base, &newest).await;
    assert_eq!(
        (code(&decision), decision["mode"].as_str()),
        ("SUCCESS", Some("offline")),
        "the newest QR, unknown to the gate's copy: {decision}"
    );
    let decision = scan(&agent.base, &replaced).await;
    assert_eq!(code(&decision), "QR_SUPERSEDED", "{decision}");
    // The copy's current QR: the one use is gone (taken by the newest), never green.
    let decision = scan(&agent.base, &synced).await;
    assert_eq!(code(&decision), "EXHAUSTED", "{decision}");

    proxy.restore();
    let status = wait_status(&agent.base, LIMIT, "drained", |s| {
        s["outbox"]["depth"].as_i64() == Some(0) && s["uplink"]["state"] == "online"
    })
    .await;
    assert_eq!(status["outbox"]["conflicts"], 0, "{status}");
    assert_eq!(central.remaining("TK-B0", "ENTRY").await, 0);
}

fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Files dropped into a spool at once are each decided once (none dropped while the decoder
/// is busy), or skipped with the reason (unreadable, too large for a 4K budget); an
/// oversized frame is scaled down and decided; finished files leave the spool, so an agent
/// restarted on the same spool reads none of them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_spool_file_is_decided_once_or_skipped_and_a_restart_rereads_none() {
    use stile_testkit::corpus::{render, save_png, FrameSpec};
    let central = Central::start(&[bulk_fixture(7)]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).expect("spool");
    let source = format!(
        "[source]\nkind = \"directory\"\nmode = \"watch\"\npath = \"{}\"\n",
        spool.display()
    );
    let (config, port) = gate_config_in(dir.path(), &central.base, &source);
    let mut agent = AgentProcess::start(&config, port).await;
    wait_status(&agent.base, LIMIT, "first sync", is_synced).await;

    // Everything is written aside first, then renamed in at once.
    let staging = dir.path().join("staging");
    std::fs::create_dir(&staging).expect("staging");
    let mut names = Vec::new();
    for i in 0..5 {
        let token = central.issue_qr(&format!("TK-B{i}"), OTA).await;
        let frame = render(&token, &FrameSpec::clean(640, 480, 4), i).expect("render");
        let name = format!("scan-{i}.png");
        save_png(&frame, &staging.join(&name)).expect("png");
        names.push(name);
    }
    // Larger than the 1920x1080 capture size: scaled down, then decoded.
    let token = central.issue_qr("TK-B5", OTA).await;
    let big = render(&token, &FrameSpec::clean(2600, 1500, 10), 5).expect("render");
    save_png(&big, &staging.join("scan-big.png")).expect("png");
    names.push("scan-big.png".into());
    // Above the 4K pixel budget: refused from the header, before any pixel is decoded.
    image::GrayImage::from_pixel(4000, 2200, image::Luma([255]))
        .save(staging.join("huge.png"))
        .expect("huge png");
    std::fs::write(staging.join("broken.png"), b"\x89PNG but not really").expect("broken");
    for name in names
        .iter()
        .map(String::as_str)
        .chain(["huge.png", "broken.png"])
    {
        std::fs::rename(staging.join(name), spool.join(name)).expect("rename in");
    }

    let status = wait_status(&agent.base, LIMIT, "six decisions, spool empty", |s| {
        s["last_decisions"].as_array().map(Vec::len) == Some(6) && files_in(&spool).is_empty()
    })
    .await;
    for decision in status["last_decisions"].as_array().expect("decisions") {
        assert_eq!(decision["code"], "SUCCESS", "{decision}");
    }
    assert_eq!(status["camera"]["frames_dropped"], 0, "{status}");
    assert!(
        status["camera"]["frames_scaled"].as_u64() >= Some(1),
        "{status}"
    );
    let done = files_in(&spool.join("done"));
    let skipped = files_in(&spool.join("skipped"));
    assert_eq!(done.len(), 6, "{done:?}");
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(
        skipped.iter().any(|n| n.ends_with("-huge.png"))
            && skipped.iter().any(|n| n.ends_with("-broken.png"))
    );
    assert_eq!(
        central
            .count("SELECT count(*) FROM redemption_events")
            .await,
        6
    );

    agent.kill();
    let agent = AgentProcess::start(&config, port).await;
    wait_status(&agent.base, LIMIT, "first sync", is_synced).await;
    // Give a re-read every chance to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = wait_status(&agent.base, LIMIT, "status", |_| true).await;
    assert_eq!(
        status["camera"]["frames_seen"], 0,
        "nothing read again: {status}"
    );
    assert_eq!(files_in(&spool.join("done")).len(), 6);
}

/// systemd's watchdog hears from the agent only while its pipeline moves: a decision stuck
/// on a store another process holds locked withholds the pings (so systemd would restart
/// the gate), and they resume when it finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_watchdog_is_pinged_only_while_the_pipeline_makes_progress() {
    use stile_testkit::corpus::{render, save_png, FrameSpec};
    let central = Central::start(&[bulk_fixture(1)]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).expect("spool");
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let pings = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let listener = {
        let pings = pings.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut buffer = [0u8; 512];
            while started.elapsed() < Duration::from_secs(90) {
                if let Ok(n) = socket.recv(&mut buffer) {
                    if String::from_utf8_lossy(&buffer[..n]).contains("WATCHDOG=1") {
                        pings.lock().expect("pings").push(Instant::now());
                    }
                    if String::from_utf8_lossy(&buffer[..n]).contains("STOPPING=1") {
                        return;
                    }
                }
            }
        })
    };
    let extra = format!(
        "watchdog_stall_secs = 1\n[source]\nkind = \"directory\"\nmode = \"watch\"\npath = \"{}\"\n",
        spool.display()
    );
    let (config, port) = gate_config_in(dir.path(), &central.base, &extra);
    let mut agent = AgentProcess::start_under_watchdog(&config, port, &socket_path, 400_000).await;
    wait_status(&agent.base, LIMIT, "first sync", is_synced).await;
    let count = || pings.lock().expect("pings").len();
    let until = Instant::now() + LIMIT;
    while count() < 3 {
        assert!(
            Instant::now() < until,
            "no watchdog pings from an idle agent"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Stall the decision stage: the store's write lock is held elsewhere, so recording the
    // decision waits for SQLite's busy timeout (5 s), well past the 1 s stall limit.
    let locker =
        rusqlite::Connection::open(dir.path().join("state").join("agent.db")).expect("open store");
    locker.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let token = central.issue_qr("TK-B0", OTA).await;
    let frame = render(&token, &FrameSpec::clean(640, 480, 4), 1).expect("render");
    save_png(&frame, &dir.path().join("scan.png")).expect("png");
    std::fs::rename(dir.path().join("scan.png"), spool.join("scan.png")).expect("rename in");
    // (The status endpoint itself waits for the store meanwhile: watch the pings only.)
    // The decision starts within a moment of the drop and is stuck for SQLite's 5 s; from
    // 1 s into it no ping may come.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let before = count();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = count() - before;
    assert_eq!(
        during, 0,
        "pings went on while the decision stage was stuck"
    );
    let status = wait_status(&agent.base, LIMIT, "the stuck decision ends", |s| {
        !s["store_alarm"].is_null()
    })
    .await;
    assert!(status["store_alarm"].is_string());
    drop(locker);
    let resumed = count();
    let until = Instant::now() + LIMIT;
    while count() < resumed + 3 {
        assert!(Instant::now() < until, "pings did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.kill();
    drop(listener);
}

/// Anyone who reaches the gate's listener can read it, but changes nothing without a
/// credential: `/api/scan` needs the API token, the gate page's forms need the page's CSRF
/// value, and logout and the function switch need a login on that page.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_local_api_and_the_gate_forms_refuse_requests_without_a_credential() {
    let central = Central::start(&[]).await;
    let (agent, _dir) = start_agent(&central.base, "").await;
    wait_status(&agent.base, LIMIT, "first sync", is_synced).await;
    let token = central.issue_qr("TK-MULTI", OTA).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let scan_url = format!("{}/api/scan", agent.base);
    for credential in [None, Some("wrong-token-wrong-token"), Some("")] {
        let mut request = client
            .post(&scan_url)
            .json(&serde_json::json!({"code": token}));
        if let Some(credential) = credential {
            request = request.bearer_auth(credential);
        }
        let response = request.send().await.expect("scan");
        assert_eq!(
            response.status(),
            reqwest::StatusCode::UNAUTHORIZED,
            "{credential:?}"
        );
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["code"], "UNAUTHORIZED");
    }
    let status = wait_status(&agent.base, LIMIT, "status", |_| true).await;
    assert_eq!(
        status["last_decisions"].as_array().map(Vec::len),
        Some(0),
        "nothing decided"
    );
    assert_eq!(central.remaining("TK-MULTI", "ENTRY").await, 100);

    // A form posted from elsewhere: no CSRF cookie, no page session.
    for (path, form) in [
        ("/gate/logout", vec![]),
        ("/gate/function", vec![("function_code", "MEAL")]),
        (
            "/gate/login",
            vec![("username", "op-east"), ("password", "correct horse")],
        ),
    ] {
        let response = client
            .post(format!("{}{path}", agent.base))
            .form(&form)
            .send()
            .await
            .expect("post");
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            location.contains("error="),
            "{path} was not refused: {location}"
        );
    }
    // The page's own CSRF value, but no login on the page: still no change.
    let mut browser = Browser::default();
    browser.get(&format!("{}/gate", agent.base)).await;
    let (landed, _) = browser
        .post_form(
            &format!("{}/gate/function", agent.base),
            &[("function_code", "MEAL")],
        )
        .await;
    assert!(landed.ends_with("error=auth"), "{landed}");
    let (landed, _) = browser
        .post_form(&format!("{}/gate/logout", agent.base), &[])
        .await;
    assert!(landed.ends_with("error=auth"), "{landed}");
    let status = wait_status(&agent.base, LIMIT, "status", |_| true).await;
    assert_eq!(status["function_code"], "ENTRY");
    assert_eq!(status["operator"]["username"], "op-east", "still logged in");

    // With the token and a page login, both work.
    let decision: Value = client
        .post(&scan_url)
        .bearer_auth(API_TOKEN)
        .json(&serde_json::json!({"code": token}))
        .send()
        .await
        .expect("scan")
        .json()
        .await
        .expect("json");
    assert_eq!(code(&decision), "SUCCESS", "{decision}");
    browser
        .post_form(
            &format!("{}/gate/login", agent.base),
            &[("username", "op-east"), ("password", "correct horse")],
        )
        .await;
    let (landed, _) = browser
        .post_form(
            &format!("{}/gate/function", agent.base),
            &[("function_code", "MEAL")],
        )
        .await;
    assert!(!landed.contains("error"), "{landed}");
    let status = wait_status(&agent.base, LIMIT, "status", |_| true).await;
    assert_eq!(status["function_code"], "MEAL");
}

/// Forgets the agent's persisted operator session, as a gate whose session expired.
fn forget_session(dir: &std::path::Path) {
    let store = rusqlite::Connection::open(dir.join("state").join("agent.db")).expect("store");
    store
        .execute("DELETE FROM sync_state WHERE name = 'operator_session'", [])
        .expect("delete");
}

/// A power cycle during an outage: the gate comes back with its operator (the session is
/// kept in the store) and keeps deciding offline; with no session left, the configured
/// operator logs in offline against the verifier the central provisioned.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gate_rebooted_during_an_outage_comes_back_deciding() {
    let central = Central::start(&[bulk_fixture(3)]).await;
    let proxy = Proxy::start(central.addr).await;
    let (dir, config, port) = gate_config(&proxy.url(), "");
    let mut agent = AgentProcess::start(&config, port).await;
    wait_status(&agent.base, LIMIT, "first sync", is_synced).await;
    let tokens = [
        central.issue_qr("TK-B0", OTA).await,
        central.issue_qr("TK-B1", OTA).await,
    ];
    wait_for_fresh_sync(&agent.base).await;

    agent.kill();
    proxy.cut();
    let mut agent = AgentProcess::start(&config, port).await;
    let status = wait_status(&agent.base, LIMIT, "operator restored", |s| {
        !s["operator"].is_null()
    })
    .await;
    assert_eq!(status["operator"]["username"], "op-east");
    assert_eq!(
        status["operator_session"], "online",
        "the restored token: {status}"
    );
    let decision = scan(&agent.base, &tokens[0]).await;
    assert_eq!(
        (code(&decision), decision["mode"].as_str()),
        ("SUCCESS", Some("offline")),
        "{decision}"
    );

    agent.kill();
    forget_session(dir.path());
    let agent = AgentProcess::start(&config, port).await;
    let status = wait_status(
        &agent.base,
        LIMIT,
        "configured operator logged in offline",
        |s| !s["operator"].is_null(),
    )
    .await;
    assert_eq!(status["operator_session"], "offline", "{status}");
    let decision = scan(&agent.base, &tokens[1]).await;
    assert_eq!(
        (code(&decision), decision["mode"].as_str()),
        ("SUCCESS", Some("offline")),
        "{decision}"
    );
    proxy.restore();
    wait_status(&agent.base, LIMIT, "token obtained, queue drained", |s| {
        s["operator_session"] == "online" && s["outbox"]["depth"].as_i64() == Some(0)
    })
    .await;
    assert_eq!(
        central
            .count("SELECT count(*) FROM redemption_events")
            .await,
        2
    );
}

/// On the gate page, an operator logs in while the central is unreachable, against the
/// provisioned verifier: a wrong password is refused, ten of them throttle the username,
/// and the session is exchanged for a token once the central is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_logs_in_on_the_page_during_an_outage() {
    let central = Central::start(&[bulk_fixture(2)]).await;
    let proxy = Proxy::start(central.addr).await;
    let (_dir, config, port) = gate_config(&proxy.url(), "");
    drop_configured_operator(&config);
    let agent = AgentProcess::start(&config, port).await;
    wait_status(&agent.base, LIMIT, "first sync", |s| {
        !s["last_sync_at"].is_null() && s["operator"].is_null()
    })
    .await;
    let token = central.issue_qr("TK-B0", OTA).await;
    wait_for_fresh_sync(&agent.base).await;
    proxy.cut();

    let login = format!("{}/gate/login", agent.base);
    let mut browser = Browser::default();
    let (landed, _) = browser
        .post_form(
            &login,
            &[("username", "op-east"), ("password", "wrong horse")],
        )
        .await;
    assert!(landed.ends_with("error=login"), "{landed}");
    let (landed, page) = browser
        .post_form(
            &login,
            &[("username", "op-east"), ("password", "correct horse")],
        )
        .await;
    assert!(!landed.contains("error"), "{landed}");
    assert!(page.contains("退出登录"), "{page}");
    let status = wait_status(&agent.base, LIMIT, "status", |_| true).await;
    assert_eq!(status["operator_session"], "offline", "{status}");
    let decision = scan(&agent.base, &token).await;
    assert_eq!(
        (code(&decision), decision["mode"].as_str()),
        ("SUCCESS", Some("offline")),
        "{decision}"
    );
    // Ten failures for another username: the eleventh attempt is throttled, right or not.
    let mut other = Browser::default();
    for _ in 0..10 {
        let (landed, _) = other
            .post_form(&login, &[("username", "op-west"), ("password", "guess")])
            .await;
        assert!(landed.ends_with("error=login"), "{landed}");
    }
    let (landed, _) = other
        .post_form(&login, &[("username", "op-west"), ("password", "guess")])
        .await;
    assert!(landed.ends_with("error=throttled"), "{landed}");

    proxy.restore();
    wait_status(
        &agent.base,
        LIMIT,
        "offline session exchanged for a token",
        |s| s["operator_session"] == "online" && s["outbox"]["depth"].as_i64() == Some(0),
    )
    .await;
    assert_eq!(central.remaining("TK-B0", "ENTRY").await, 0);
}

/// A scan engine on a FIFO: with no writer yet, the agent still reports READY to systemd
/// and serves its pages; once a writer comes its lines are decided; when the writer closes,
/// the status page says no scans can arrive; an idle agent stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scan_engine_fifo_without_a_writer_does_not_hold_up_start() {
    let central = Central::start(&[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("scanner");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let extra = format!(
        "[source]\nkind = \"lines\"\npath = \"{}\"\n",
        fifo.display()
    );
    let (config, port) = gate_config_in(dir.path(), &central.base, &extra);
    let mut agent =
        AgentProcess::start_under_watchdog(&config, port, &socket_path, 10_000_000).await;
    let mut buffer = [0u8; 512];
    let ready = loop {
        let n = socket.recv(&mut buffer).expect("READY within 20 s");
        if String::from_utf8_lossy(&buffer[..n]).contains("READY=1") {
            break true;
        }
    };
    assert!(ready);
    let status = wait_status(&agent.base, LIMIT, "first sync", is_synced).await;
    assert!(
        status["camera"]["problem"]
            .as_str()
            .is_some_and(|p| p.contains("opening")),
        "{status}"
    );

    let token = central.issue_qr("TK-MULTI", OTA).await;
    {
        use std::io::Write;
        let mut writer = std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo)
            .expect("open the FIFO for writing");
        writeln!(writer, "{token}").expect("write a code");
        let status = wait_status(&agent.base, LIMIT, "the line decided", |s| {
            s["last_decisions"].as_array().map(Vec::len) == Some(1)
        })
        .await;
        assert_eq!(status["last_decisions"][0]["code"], "SUCCESS", "{status}");
        assert!(status["camera"]["problem"].is_null(), "{status}");
    }
    let status = wait_status(&agent.base, LIMIT, "input ended", |s| {
        s["camera"]["ended"] == true
    })
    .await;
    assert_eq!(status["camera"]["ended"], true);
    let page = common::page(&format!("{}/", agent.base)).await;
    assert!(page.contains("input ended"), "the status page says so");

    let stopping = Instant::now();
    stile_testkit::send_signal(agent.child.id(), "TERM").expect("SIGTERM");
    let exit = loop {
        if let Some(exit) = agent.child.try_wait().expect("wait") {
            break exit;
        }
        assert!(stopping.elapsed() < LIMIT, "the agent did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "idle agent stopped {:.2} s after SIGTERM",
        stopping.elapsed().as_secs_f64()
    );
    assert!(exit.success(), "{exit:?}");
}

/// A deleted store on a device the central knows ran before is reported, not silently
/// started fresh: the status page says STORE LOST, `/readyz` is not ready until the resync,
/// and what the central recorded still blocks a second entry. A corrupt store stops the
/// agent with a message naming the file and what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_store_is_reported_and_a_corrupt_one_names_the_file() {
    let central = Central::start(&[bulk_fixture(2)]).await;
    let proxy = Proxy::start(central.addr).await;
    let (dir, config, port) = gate_config(&proxy.url(), "");
    let mut agent = AgentProcess::start(&config, port).await;
    wait_status(&agent.base, LIMIT, "first sync", is_synced).await;
    let status = wait_status(&agent.base, LIMIT, "status", |_| true).await;
    assert!(
        status["store_loss"].is_null(),
        "a first start is no loss: {status}"
    );
    let token = central.issue_qr("TK-B0", OTA).await;
    wait_for_fresh_sync(&agent.base).await;
    proxy.cut();
    let decision = scan(&agent.base, &token).await;
    assert_eq!(code(&decision), "SUCCESS", "{decision}");
    proxy.restore();
    wait_status(&agent.base, LIMIT, "uploaded", |s| {
        s["outbox"]["depth"].as_i64() == Some(0) && s["uplink"]["state"] == "online"
    })
    .await;
    agent.kill();

    let state = dir.path().join("state");
    for file in ["agent.db", "agent.db-wal", "agent.db-shm"] {
        let _ = std::fs::remove_file(state.join(file));
    }
    let agent = AgentProcess::start(&config, port).await;
    let status = wait_status(&agent.base, LIMIT, "loss reported and resynced", |s| {
        !s["store_loss"]["resynced_at"].is_null()
    })
    .await;
    assert!(
        status["store_loss"]["first_synced_at"].is_string(),
        "{status}"
    );
    assert!(
        status["store_loss"]["last_upload_at"].is_string(),
        "{status}"
    );
    let page = common::page(&format!("{}/", agent.base)).await;
    assert!(page.contains("STORE LOST"), "the status page says so");
    // The acceptance the lost store held was uploaded: the central still blocks it.
    let again = scan(&agent.base, &token).await;
    assert_eq!(code(&again), "ALREADY_REDEEMED", "{again}");
    drop(agent);

    std::fs::write(
        state.join("agent.db"),
        b"this is not a sqlite database at all, sorry",
    )
    .expect("corrupt");
    for file in ["agent.db-wal", "agent.db-shm"] {
        let _ = std::fs::remove_file(state.join(file));
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args(["run", "--config", config.to_str().expect("utf-8")])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&state.join("agent.db").display().to_string())
            && stderr.contains("move the file aside"),
        "{stderr}"
    );
}

/// A pair this gate accepted is decided in the contract's order of checks, by the shared
/// function: once the ticket is void, a rescan says TICKET_VOID (the status comes before
/// "already redeemed"), online and offline alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeat_of_a_voided_ticket_says_void_not_already_redeemed() {
    let central = Central::start(&[bulk_fixture(1)]).await;
    let proxy = Proxy::start(central.addr).await;
    let (agent, _dir) = start_agent(&proxy.url(), "").await;
    wait_status(&agent.base, LIMIT, "first sync", is_synced).await;
    let token = central.issue_qr("TK-B0", OTA).await;
    let first = scan(&agent.base, &token).await;
    assert_eq!(code(&first), "SUCCESS", "{first}");
    let void = bulk_fixture(1).replace("\"ACTIVATED\"", "\"VOID\"");
    let file = central_server::seed::parse(&void).expect("seed");
    central_server::seed::apply(&central.pool, &file)
        .await
        .expect("void the ticket");
    wait_for_fresh_sync(&agent.base).await;
    let online = scan(&agent.base, &token).await;
    assert_eq!(code(&online), "TICKET_VOID", "{online}");
    proxy.cut();
    let offline = scan(&agent.base, &token).await;
    assert_eq!(code(&offline), "TICKET_VOID", "{offline}");
}

/// The store on a file system that fills up (a 4 MiB tmpfs the test mounts and fills): the
/// central's decision is still shown as the central made it, the alarm is raised, an
/// offline decision is STORE_FAILED, and freeing space clears it. Needs root (to mount),
/// as CI runs; elsewhere it says so and checks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_is_an_alarm_and_the_central_decision_still_shows() {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        eprintln!("not root: cannot mount a tmpfs, the full-disk case is left to CI");
        return;
    }
    let central = Central::start(&[bulk_fixture(2)]).await;
    let proxy = Proxy::start(central.addr).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&state)
        .status()
        .expect("mount");
    assert!(mounted.success(), "mounting a tmpfs as root failed");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(state.clone());
    let (config, port) = gate_config_in(dir.path(), &proxy.url(), "");
    let mut agent = AgentProcess::start(&config, port).await;
    wait_status(&agent.base, LIMIT, "first sync", is_synced).await;
    let online_token = central.issue_qr("TK-B0", OTA).await;
    let offline_token = central.issue_qr("TK-B1", OTA).await;
    wait_for_fresh_sync(&agent.base).await;

    // Empty the WAL so the next write must grow a file, then fill the disk.
    let db = rusqlite::Connection::open(state.join("agent.db")).expect("store");
    db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("checkpoint");
    drop(db);
    let filler = state.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let decision = scan(&agent.base, &online_token).await;
    assert_eq!(
        (code(&decision), decision["mode"].as_str()),
        ("SUCCESS", Some("online")),
        "{decision}"
    );
    assert_eq!(central.remaining("TK-B0", "ENTRY").await, 0);
    let status = wait_status(&agent.base, LIMIT, "alarm", |s| !s["store_alarm"].is_null()).await;
    assert!(
        status["verdict"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("store")),
        "{status}"
    );
    let ready = reqwest::get(format!("{}/readyz", agent.base))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    proxy.cut();
    let offline = scan(&agent.base, &offline_token).await;
    assert_eq!(code(&offline), "STORE_FAILED", "{offline}");

    std::fs::remove_file(&filler).expect("free the space");
    let retried = scan(&agent.base, &offline_token).await;
    assert_eq!(code(&retried), "SUCCESS", "{retried}");
    let status = wait_status(&agent.base, LIMIT, "status", |_| true).await;
    assert!(status["store_alarm"].is_null(), "{status}");
    agent.kill();
}

/// The lost-store rule, step by step on a gate driven in this process (real central over
/// HTTP, real SQLite): a new store whose device the central knows refuses to decide offline
/// even with the ticket in its copy, until a full sync has completed after the loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_store_refuses_offline_decisions_until_it_has_resynced() {
    use edge_agent::decide::{Gate, Origin};
    use edge_agent::uplink::sync::{history_once, keys_once, tickets_once};
    let central = Central::start(&[bulk_fixture(2)]).await;
    // The device ran before: it completed a full sync with another store.
    let (first, _first_dir) = start_agent(&central.base, "").await;
    wait_status(&first.base, LIMIT, "first sync", is_synced).await;
    drop(first);

    let proxy = Proxy::start(central.addr).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (config_path, _) = gate_config_in(dir.path(), &proxy.url(), "");
    let text = std::fs::read_to_string(&config_path).expect("config");
    let config = edge_agent::config::AgentConfig::parse(&text, Vec::<(String, String)>::new())
        .expect("settings");
    let gate = std::sync::Arc::new(Gate::open(config, "dev-secret-1").expect("a new store"));
    let token = central.issue_qr("TK-B0", OTA).await;
    gate.ensure_session().await.expect("operator");
    keys_once(&gate).await.expect("keys");
    // The copy has the ticket before the central has been asked about the past.
    tickets_once(&gate, 100).await.expect("tickets");
    history_once(&gate).await.expect("history");
    let loss = gate.store_loss().expect("the loss is detected");
    assert!(
        loss.first_synced_at.is_some() && loss.resynced_at.is_none(),
        "{loss:?}"
    );
    assert!(gate.awaiting_resync());

    proxy.cut();
    let refused = gate.decide_code(&token, Origin::Request).await;
    assert_eq!(
        refused.code.as_str(),
        "OFFLINE_UNVERIFIABLE",
        "no offline decision before the resync: {refused:?}"
    );
    proxy.restore();
    tickets_once(&gate, 100).await.expect("the resync");
    assert!(!gate.awaiting_resync());
    assert!(gate.store_loss().is_some_and(|l| l.resynced_at.is_some()));
    proxy.cut();
    let accepted = gate.decide_code(&token, Origin::Request).await;
    assert_eq!(accepted.code.as_str(), "SUCCESS", "{accepted:?}");
}

/// Offline login follows what the central provisions: after the operator's password is
/// changed at the central, the next sync replaces the verifier, so the old password no
/// longer opens a session offline and the new one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_password_revokes_the_old_one_for_offline_login() {
    let central = Central::start(&[]).await;
    let proxy = Proxy::start(central.addr).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, port) = gate_config_in(dir.path(), &proxy.url(), "");
    drop_configured_operator(&config);
    let agent = AgentProcess::start(&config, port).await;
    wait_status(&agent.base, LIMIT, "first sync", |s| {
        !s["last_sync_at"].is_null()
    })
    .await;
    let changed = common::FIXTURES.replace("\"correct horse\"", "\"battery staple\"");
    let file = central_server::seed::parse(&changed).expect("seed");
    central_server::seed::apply(&central.pool, &file)
        .await
        .expect("change the password");
    wait_for_fresh_sync(&agent.base).await;
    proxy.cut();
    let login = format!("{}/gate/login", agent.base);
    let mut browser = Browser::default();
    let (landed, _) = browser
        .post_form(
            &login,
            &[("username", "op-east"), ("password", "correct horse")],
        )
        .await;
    assert!(
        landed.ends_with("error=login"),
        "the old password: {landed}"
    );
    let (landed, page) = browser
        .post_form(
            &login,
            &[("username", "op-east"), ("password", "battery staple")],
        )
        .await;
    assert!(!landed.contains("error"), "the new password: {landed}");
    assert!(page.contains("退出登录"), "{page}");
}

/// A configured operator whose password is wrong is logged as a wrong password, not as an
/// expired session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_password_is_logged_as_one() {
    let central = Central::start(&[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, port) = gate_config_in(dir.path(), &central.base, "");
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("password = \"correct horse\"", "password = \"wrong horse\"");
    std::fs::write(&config, text).expect("config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args(["run", "--config", config.to_str().expect("utf-8")])
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let base = format!("http://127.0.0.1:{port}");
    common::wait_for(&format!("{base}/healthz"), LIMIT).await;
    wait_status(&base, LIMIT, "a sync", |s| !s["last_sync_at"].is_null()).await;
    let _ = stile_testkit::send_signal(child.id(), "TERM");
    let output = tokio::task::spawn_blocking(move || {
        let _ = child.wait();
        let mut text = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            use std::io::Read;
            let _ = stderr.read_to_string(&mut text);
        }
        text
    })
    .await
    .expect("stderr");
    assert!(output.contains("wrong username or password"), "{output}");
    assert!(!output.contains("session expired"), "{output}");
}

/// A new gate gets no secret in a file: it is enrolled with a one-time code (made here the
/// way the admin API makes it), exchanges it on its first start, keeps the secret in its
/// state directory (0600), and starts again after a reboot although the code is spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gate_enrolls_with_a_one_time_code_and_keeps_its_secret() {
    use std::os::unix::fs::PermissionsExt;
    let central = CentralProcess::start(&[]).await;
    let device = stile_shared::Identifier::parse("dev-enrolled-1").expect("id");
    let (code, _) = central_server::lifecycle::create_enrollment(
        &central.pool,
        &device,
        &stile_shared::Identifier::parse("M001").expect("merchant"),
        &stile_shared::Identifier::parse("GATE-EAST").expect("venue"),
        chrono::Duration::minutes(10),
    )
    .await
    .expect("enrollment code");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = agent_config(
        "dev-enrolled-1",
        "unused",
        "GATE-EAST",
        &central.base,
        &dir.path().join("state"),
        port,
        "",
    )
    .replace(
        "device_secret = \"unused\"",
        &format!("enrollment_code = \"{code}\""),
    );
    let config_path = dir.path().join("agent.toml");
    std::fs::write(&config_path, &config).expect("config");
    let mut agent = AgentProcess::start(&config_path, port).await;
    wait_status(&agent.base, LIMIT, "first sync after enrolling", is_synced).await;
    let kept = dir.path().join("state").join("device-secret");
    let mode = std::fs::metadata(&kept)
        .expect("the secret is kept")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the kept secret is private");
    agent.kill();
    // The code is spent now; the gate restarts on the secret it kept.
    let agent = AgentProcess::start(&config_path, port).await;
    wait_status(&agent.base, LIMIT, "sync after a restart", is_synced).await;
    drop(agent);

    // A spent code on a fresh gate is refused at start, and the process says why.
    let other = tempfile::tempdir().expect("tempdir");
    let other_port = free_port();
    let other_config = config.replace(
        &dir.path().join("state").display().to_string(),
        &other.path().join("state").display().to_string(),
    );
    let other_path = other.path().join("agent.toml");
    std::fs::write(
        &other_path,
        other_config.replace(
            &format!("127.0.0.1:{port}"),
            &format!("127.0.0.1:{other_port}"),
        ),
    )
    .expect("config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args(["run", "--config", other_path.to_str().expect("utf-8")])
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("enrollment_code"), "{stderr}");
}
