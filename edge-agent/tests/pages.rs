//! The agent's pages as a browser shows them: a real central, a real agent process and a
//! real headless Chromium (Debian's `chromium`, installed by `STILE_NEED_CHROMIUM=1
//! scripts/ensure-deps`). Chromium loads the status page and the gate display, the test
//! checks the DOM the browser built against the agent's `/api/status`, and the screenshots
//! are kept under `target/test-artifacts/` for people to look at.
//!
//! The pages refresh themselves with `<meta http-equiv=refresh>` and have no script, so the
//! DOM at the load event is the final one. Chromium runs without `--virtual-time-budget`:
//! with a budget at least as long as the refresh interval, headless Chromium follows the
//! refresh under virtual time and never exits; with one just under it, `--dump-dom` can
//! print nothing at all.

mod common;

use common::proxy::Proxy;
use common::{
    agent_config, free_port, is_synced, scan, wait_status, AgentProcess, Browser, Central,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const OTA: &str = "ch-ota-secret";
const MINIAPP: &str = "ch-miniapp-secret";
const LIMIT: Duration = Duration::from_secs(45);
/// Ticket codes of the fixture: never shown in full on a page.
const FULL_TICKET_CODES: [&str; 2] = ["TK-MULTI", "TK-MINI"];
/// The gate light's colours (the page's `#1e8e3e`, `#d93025`, `#5f6368`).
const GREEN: [u8; 3] = [0x1e, 0x8e, 0x3e];
const RED: [u8; 3] = [0xd9, 0x30, 0x25];
const GREY: [u8; 3] = [0x5f, 0x63, 0x68];

struct Gate {
    agent: AgentProcess,
    spool: PathBuf,
    _dir: tempfile::TempDir,
}

/// An agent process behind `proxy`, fed by a spool directory (the camera stand-in), with the
/// fixture's operator logged in by configuration or, with `operator: false`, nobody.
async fn start_gate(proxy: &Proxy, operator: bool) -> Gate {
    start_gate_clearing_after(proxy, operator, 120).await
}

/// The same, with the display clearing a decision after `clear_secs`.
async fn start_gate_clearing_after(proxy: &Proxy, operator: bool, clear_secs: u64) -> Gate {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).expect("spool dir");
    let port = free_port();
    let source = format!(
        // The decision stays on the display long enough for Chromium to see it.
        "decision_clear_secs = {clear_secs}\n[source]\nkind = \"directory\"\nmode = \"watch\"\npath = \"{}\"\n",
        spool.display()
    );
    let mut text = agent_config(
        "dev-east-1",
        "dev-secret-1",
        "GATE-EAST",
        &proxy.url(),
        &dir.path().join("state"),
        port,
        &source,
    );
    if !operator {
        assert!(text.contains("[operator]"), "an operator section to drop");
        text = common::without_operator(&text).to_owned();
    }
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, text).expect("config");
    let agent = AgentProcess::start(&config, port).await;
    if operator {
        wait_status(&agent.base, LIMIT, "first sync", is_synced).await;
    } else {
        wait_status(&agent.base, LIMIT, "first sync, nobody logged in", |s| {
            !s["last_sync_at"].is_null()
                && s["keys"]["kids"].as_array().is_some_and(|k| !k.is_empty())
                && s["operator"].is_null()
        })
        .await;
    }
    Gate {
        agent,
        spool,
        _dir: dir,
    }
}

/// Puts a 640×480 camera frame holding `token` as a QR code (4 px per module) into the spool,
/// written aside and renamed into place so the agent never reads half a file.
fn drop_qr_frame(spool: &Path, token: &str) {
    let code =
        qrcode::QrCode::with_error_correction_level(token, qrcode::EcLevel::M).expect("qr code");
    let modules = code.width() as u32;
    let colors = code.to_colors();
    let (px, width, height) = (4u32, 640u32, 480u32);
    let side = (modules + 8) * px;
    assert!(side <= height, "the code fits the frame");
    let (left, top) = ((width - side) / 2, (height - side) / 2);
    let frame = image::GrayImage::from_fn(width, height, |x, y| {
        let inside = (left..left + side).contains(&x) && (top..top + side).contains(&y);
        if !inside {
            return image::Luma([128u8]);
        }
        let (mx, my) = (((x - left) / px) as i64 - 4, ((y - top) / px) as i64 - 4);
        let modules = modules as i64;
        let dark = (0..modules).contains(&mx)
            && (0..modules).contains(&my)
            && colors[(my * modules + mx) as usize] == qrcode::Color::Dark;
        image::Luma([if dark { 20u8 } else { 235u8 }])
    });
    let aside = spool.join(".frame-0001.png.part");
    frame
        .save_with_format(&aside, image::ImageFormat::Png)
        .expect("write frame");
    std::fs::rename(&aside, spool.join("frame-0001.png")).expect("publish frame");
}

use stile_testkit::browser::{dump_dom, run as chromium};

/// Screenshots `url` at 1280×900 into `target/test-artifacts/<name>` and returns the picture.
async fn screenshot(url: &str, name: &str) -> image::RgbImage {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path); // a stale picture must not pass for a new one
    chromium(
        url,
        &[
            format!("--screenshot={}", path.display()),
            "--window-size=1280,900".to_owned(),
        ],
    )
    .await;
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|error| panic!("chromium wrote no screenshot {}: {error}", path.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        path.display()
    );
    assert!(
        bytes.len() > 10_000,
        "{} is only {} bytes: an empty page?",
        path.display(),
        bytes.len()
    );
    let picture = image::load_from_memory(&bytes)
        .expect("decode the screenshot")
        .to_rgb8();
    assert_eq!(picture.dimensions(), (1280, 900), "{}", path.display());
    let colors: std::collections::HashSet<[u8; 3]> = picture.pixels().map(|p| p.0).collect();
    assert!(
        colors.len() > 16,
        "{} has {} colours: an empty page?",
        path.display(),
        colors.len()
    );
    picture
}

/// Asserts that the gate's light (the big box at the top) is `expected` in `picture`.
fn assert_light(picture: &image::RgbImage, expected: [u8; 3], what: &str) {
    // Inside the box, left of the centred text.
    let seen = picture.get_pixel(60, 60).0;
    let close = seen.iter().zip(expected).all(|(&s, e)| s.abs_diff(e) <= 8);
    assert!(
        close,
        "the light should be {what} {expected:?}, is {seen:?}"
    );
}

/// The inner HTML of the element with `id="{id}"` in a DOM serialized by Chromium.
fn inner_html<'a>(dom: &'a str, id: &str) -> &'a str {
    let marker = format!(" id=\"{id}\"");
    let at = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no element id={id} in the page:\n{dom}"));
    let open = dom[..at].rfind('<').expect("start of the tag");
    let tag: String = dom[open + 1..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let start = at + dom[at..].find('>').expect("end of the tag") + 1;
    let (opening, closing) = (format!("<{tag}"), format!("</{tag}>"));
    let (mut depth, mut cursor) = (1usize, start);
    loop {
        let next_close = dom[cursor..]
            .find(&closing)
            .unwrap_or_else(|| panic!("element id={id} is not closed"))
            + cursor;
        let nested_open = dom[cursor..next_close]
            .match_indices(&opening)
            .filter(|(i, _)| {
                let after = dom[cursor + i + opening.len()..].chars().next();
                matches!(after, Some(' ' | '>'))
            })
            .count();
        depth += nested_open;
        depth -= 1;
        if depth == 0 {
            return &dom[start..next_close];
        }
        cursor = next_close + closing.len();
    }
}

/// Text of an HTML fragment: tags dropped, entities decoded, white space collapsed.
fn text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let out = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&");
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn text_of(dom: &str, id: &str) -> String {
    text(inner_html(dom, id))
}

/// The data rows of the table `id`, as cell texts (the header row left out).
fn table_rows(dom: &str, id: &str) -> Vec<Vec<String>> {
    inner_html(dom, id)
        .split("<tr>")
        .filter(|row| row.contains("<td"))
        .map(|row| {
            row.split("</td>")
                .filter(|cell| cell.contains("<td"))
                .map(text)
                .collect()
        })
        .collect()
}

fn assert_no_full_ticket_code(dom: &str, page: &str) {
    for code in FULL_TICKET_CODES {
        assert!(
            !dom.contains(code),
            "{page} shows the full ticket code {code}:\n{dom}"
        );
    }
}

fn code(decision: &Value) -> &str {
    decision["code"].as_str().unwrap_or("?")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chromium_shows_the_status_page_and_the_gate_with_real_values() {
    let central = Central::start(&[]).await;
    let proxy = Proxy::start(central.addr).await;
    let mini = central.issue_qr("TK-MINI", MINIAPP).await;
    let multi = central.issue_qr("TK-MULTI", OTA).await;
    let gate = start_gate(&proxy, true).await;
    let base = gate.agent.base.clone();

    // A camera frame: decoded, decided online.
    drop_qr_frame(&gate.spool, &mini);
    let seen = wait_status(&base, LIMIT, "the frame decided", |s| {
        s["camera"]["frames_decoded"] == 1
            && s["last_decisions"].as_array().is_some_and(|d| d.len() == 1)
    })
    .await;
    assert_eq!(code(&seen["last_decisions"][0]), "SUCCESS", "{seen}");
    // Scans through the device API.
    assert_eq!(code(&scan(&base, "not a token").await), "INVALID_QR");
    let first = scan(&base, &multi).await;
    assert_eq!(code(&first), "SUCCESS", "{first}");

    // The gate right after an acceptance: green, with what the ticket has left.
    let green = dump_dom(&format!("{base}/gate")).await;
    assert_eq!(text_of(&green, "message"), "核销成功");
    let detail = text_of(&green, "detail");
    assert!(
        detail.starts_with("SUCCESS · TK-M***TI · "),
        "detail: {detail}"
    );
    assert_eq!(text_of(&green, "entitlements"), "ENTRY 入园: 99/100");
    assert!(green.contains("#light{background:#1e8e3e"), "green light");
    assert_no_full_ticket_code(&green, "/gate");
    let picture = screenshot(&format!("{base}/gate"), "agent-gate-success.png").await;
    assert_light(&picture, GREEN, "green");

    let again = scan(&base, &multi).await;
    assert_eq!(code(&again), "ALREADY_REDEEMED", "{again}");
    let status = wait_status(&base, LIMIT, "four decisions, online, outbox empty", |s| {
        s["last_decisions"].as_array().is_some_and(|d| d.len() == 4)
            && s["uplink"]["online"] == true
            && s["outbox"]["depth"] == 0
    })
    .await;

    // The status page.
    let dom = dump_dom(&format!("{base}/")).await;
    assert_eq!(text_of(&dom, "device"), "dev-east-1");
    assert_eq!(text_of(&dom, "venue"), "GATE-EAST");
    assert_eq!(text_of(&dom, "function"), "ENTRY");
    assert_eq!(status["function_code"], "ENTRY");
    assert_eq!(text_of(&dom, "uplink"), "online");
    assert!(
        inner_html(&dom, "uplink").contains("class=\"ok\""),
        "uplink shown as good"
    );
    let camera = text_of(&dom, "camera");
    assert!(
        camera.starts_with(&format!("directory {}", gate.spool.display())),
        "camera: {camera}"
    );
    assert_eq!(text_of(&dom, "frames"), "1");
    assert_eq!(status["camera"]["frames_seen"], 1);
    assert_eq!(text_of(&dom, "decode-rate"), "100.0%");
    assert_eq!(status["camera"]["decode_rate"], 1.0);
    assert_eq!(text_of(&dom, "outbox"), "0");
    assert_eq!(status["outbox"]["depth"], 0);
    assert_eq!(text_of(&dom, "conflicts"), "0");
    let kids: Vec<&str> = status["keys"]["kids"]
        .as_array()
        .expect("kids")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(!kids.is_empty());
    assert_eq!(text_of(&dom, "kids"), kids.join(", "));
    // Newest first: code, message, masked ticket, function; the mode as the agent recorded it
    // (an acceptance is online unless the central missed the deadline).
    let rows = table_rows(&dom, "decisions");
    let shown: Vec<[&str; 4]> = rows
        .iter()
        .map(|cells| {
            assert_eq!(cells.len(), 9, "a decision row has 9 cells: {cells:?}");
            [&*cells[1], &*cells[2], &*cells[3], &*cells[4]]
        })
        .collect();
    let expected = [
        ["ALREADY_REDEEMED", "该权益已核销", "TK-M***TI", "ENTRY"],
        ["SUCCESS", "核销成功", "TK-M***TI", "ENTRY"],
        ["INVALID_QR", "无效二维码", "—", "ENTRY"],
        ["SUCCESS", "核销成功", "TK-***NI", "ENTRY"],
    ];
    assert_eq!(shown, expected);
    let modes: Vec<String> = rows.iter().map(|cells| cells[5].to_lowercase()).collect();
    let recorded: Vec<&str> = status["last_decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .filter_map(|d| d["mode"].as_str())
        .collect();
    assert_eq!(modes, recorded);
    assert_eq!(
        (&*modes[0], &*modes[2]),
        ("local", "local"),
        "decided on the device"
    );
    assert!(table_rows(&dom, "conflict-list").is_empty());
    assert_no_full_ticket_code(&dom, "/");
    assert!(!dom.contains(&multi) && !dom.contains(&mini), "no token");
    screenshot(&format!("{base}/"), "agent-status.png").await;

    // The gate after a repeat: red, the contract's message, the operator, the function.
    let dom = dump_dom(&format!("{base}/gate")).await;
    assert_eq!(text_of(&dom, "message"), "该权益已核销");
    let detail = text_of(&dom, "detail");
    assert!(
        detail.starts_with("ALREADY_REDEEMED · TK-M***TI · "),
        "detail: {detail}"
    );
    assert!(dom.contains("#light{background:#d93025"), "red light");
    assert_eq!(text_of(&dom, "operator"), "op-east");
    // Logged in by the configuration: the operator and the function are shown; changing
    // them needs a login on this page (nobody walking up can switch or log out).
    assert_eq!(text_of(&dom, "function"), "ENTRY");
    assert!(
        !dom.contains(r#"action="/gate/function""#) && !dom.contains(r#"action="/gate/logout""#),
        "no change without a page login:\n{dom}"
    );
    assert!(
        dom.contains(r#"id="login""#),
        "the login to change settings"
    );
    assert_no_full_ticket_code(&dom, "/gate");
    assert!(!dom.contains(&multi), "no token");
    let picture = screenshot(&format!("{base}/gate"), "agent-gate.png").await;
    assert_light(&picture, RED, "red");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_operator_logs_in_and_out_and_switches_the_function_on_the_gate_page() {
    let central = Central::start(&[]).await;
    let proxy = Proxy::start(central.addr).await;
    // No operator in the configuration: the sync loop would log it back in after a logout.
    let gate = start_gate(&proxy, false).await;
    let base = gate.agent.base.clone();
    let mut client = Browser::default();
    let login = format!("{base}/gate/login");
    let logout = format!("{base}/gate/logout");
    let right = [("username", "op-east"), ("password", "correct horse")];
    let wrong = [("username", "op-east"), ("password", "wrong horse")];
    let operator_shown = "操作员 <b id=operator>op-east</b>";
    let login_form =
        "<form method=post action=/gate/login id=login><input type=hidden name=csrf value=";

    let (landed, page) = client.post_form(&login, &right).await;
    assert_eq!(landed, format!("{base}/gate"));
    assert!(page.contains(operator_shown), "{page}");
    let status = wait_status(&base, LIMIT, "status", |_| true).await;
    assert_eq!(status["operator"]["username"], "op-east");

    let (landed, page) = client.post_form(&logout, &[]).await;
    assert_eq!(landed, format!("{base}/gate"));
    assert!(
        page.contains(login_form) && !page.contains("id=operator"),
        "{page}"
    );
    let status = wait_status(&base, LIMIT, "status", |_| true).await;
    assert!(status["operator"].is_null(), "{status}");

    let (landed, page) = client.post_form(&login, &wrong).await;
    assert_eq!(landed, format!("{base}/gate?error=login"));
    assert!(
        page.contains("<p class=bad id=error>用户名或密码错误</p>") && page.contains(login_form),
        "{page}"
    );
    assert!(!page.contains("wrong horse"), "the password is not echoed");

    let (_, page) = client.post_form(&login, &right).await;
    assert!(page.contains(operator_shown), "{page}");

    let function = format!("{base}/gate/function");
    let (landed, page) = client
        .post_form(&function, &[("function_code", "MEAL")])
        .await;
    assert_eq!(landed, format!("{base}/gate"));
    assert!(page.contains("name=function_code value=\"MEAL\""), "{page}");
    let status = wait_status(&base, LIMIT, "status", |_| true).await;
    assert_eq!(status["function_code"], "MEAL");
    let (landed, page) = client
        .post_form(&function, &[("function_code", "meal!")])
        .await;
    assert_eq!(landed, format!("{base}/gate?error=function"));
    assert!(page.contains("无效的权益代码"), "{page}");
    let status = wait_status(&base, LIMIT, "status", |_| true).await;
    assert_eq!(
        status["function_code"], "MEAL",
        "a bad code changes nothing"
    );

    // Logged out again: Chromium renders the login form.
    client.post_form(&logout, &[]).await;
    let dom = dump_dom(&format!("{base}/gate")).await;
    let form = inner_html(&dom, "login");
    assert!(
        form.contains(r#"<input name="username">"#)
            && form.contains(r#"<input name="password" type="password">"#)
            && text(form).contains("登录"),
        "login form: {form}"
    );
    assert!(!dom.contains(r#"id="operator""#), "nobody logged in");
    assert_eq!(
        text_of(&dom, "message"),
        "未登录，暂停核销",
        "a logged-out gate says so"
    );
    assert!(
        !dom.contains("function_code"),
        "nothing to switch while logged out"
    );
    let picture = screenshot(&format!("{base}/gate"), "agent-gate-login.png").await;
    assert_light(&picture, GREY, "grey (logged out)");
}

/// What gate staff see when the uplink is down: the offline badge on a green offline
/// acceptance, then the cleared display (no previous person's light) after the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chromium_shows_the_offline_badge_and_the_cleared_display() {
    let central = Central::start(&[]).await;
    let proxy = Proxy::start(central.addr).await;
    // Long enough for two Chromium runs while the other Chromium tests of this binary run
    // too on a 2-core CI machine (20 s was not), short enough to wait for.
    let gate = start_gate_clearing_after(&proxy, true, 50).await;
    let base = gate.agent.base.clone();
    let token = central.issue_qr("TK-MULTI", OTA).await;
    let after = (chrono::Utc::now() + chrono::Duration::seconds(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    wait_status(&base, LIMIT, "a sync after the issuance", |s| {
        s["last_sync_at"]
            .as_str()
            .is_some_and(|at| at > after.as_str())
    })
    .await;
    proxy.cut();
    // The gate notices the cut at its next sync; only then the scan, so the 50 s the
    // display shows it are left for Chromium (it cleared before on a loaded machine).
    wait_status(&base, LIMIT, "uplink down", |s| {
        s["uplink"]["online"] == false
    })
    .await;
    let decision = scan(&base, &token).await;
    assert_eq!(decision["code"], "SUCCESS", "{decision}");
    assert_eq!(decision["mode"], "offline", "{decision}");
    let dom = dump_dom(&format!("{base}/gate")).await;
    assert_eq!(text_of(&dom, "message"), "核销成功");
    assert_eq!(text_of(&dom, "badge"), "离线 offline");
    let picture = screenshot(&format!("{base}/gate"), "agent-gate-offline.png").await;
    assert_light(&picture, GREEN, "green (accepted offline)");
    wait_status(&base, std::time::Duration::from_secs(120), "cleared", |s| {
        s["showing"]["state"] == "waiting"
    })
    .await;
    let dom = dump_dom(&format!("{base}/gate")).await;
    assert_eq!(text_of(&dom, "message"), "请扫码", "the cleared display");
    assert_eq!(text_of(&dom, "badge"), "离线 offline");
    let picture = screenshot(&format!("{base}/gate"), "agent-gate-cleared.png").await;
    assert_light(&picture, GREY, "grey (cleared)");
}
