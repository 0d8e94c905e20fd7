//! Real QR images of real tokens, rendered clean and degraded (rotated, perspective-skewed,
//! blurred, noisy, low contrast, small in a large frame), dropped into a running agent's
//! spool directory: the agent binary decodes each one and the real central redeems it.

mod common;

use common::proxy::Proxy;
use common::{
    agent_config, bulk_fixture, free_port, is_synced, wait_status, AgentProcess, Central,
};
use std::time::Duration;
use stile_testkit::corpus::{render, save_png, FrameSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_agent_decodes_clean_and_degraded_camera_frames_and_the_central_redeems_them() {
    let central = Central::start(&[bulk_fixture(7)]).await;
    let proxy = Proxy::start(central.addr).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).expect("spool");
    let port = free_port();
    let config = dir.path().join("agent.toml");
    let source = format!(
        "[source]\nkind = \"directory\"\npath = \"{}\"\nmode = \"watch\"\n",
        spool.display()
    );
    std::fs::write(
        &config,
        agent_config(
            "dev-east-1",
            "dev-secret-1",
            "GATE-EAST",
            &proxy.url(),
            &dir.path().join("state"),
            port,
            &source,
        ),
    )
    .expect("config");
    let agent = AgentProcess::start(&config, port).await;
    wait_status(
        &agent.base,
        Duration::from_secs(45),
        "first sync",
        is_synced,
    )
    .await;

    let variants: Vec<(&str, FrameSpec)> = vec![
        ("clean 1280x720 at 4 px", FrameSpec::clean(1280, 720, 4)),
        (
            "rotated 15 degrees",
            FrameSpec {
                rotate_degrees: 15.0,
                ..FrameSpec::clean(1280, 720, 4)
            },
        ),
        (
            "perspective-skewed",
            FrameSpec {
                perspective: 0.15,
                ..FrameSpec::clean(640, 480, 5)
            },
        ),
        (
            "blurred",
            FrameSpec {
                blur_radius: 1.0,
                ..FrameSpec::clean(640, 480, 5)
            },
        ),
        (
            "noisy",
            FrameSpec {
                noise: 40,
                ..FrameSpec::clean(640, 480, 4)
            },
        ),
        (
            "low contrast",
            FrameSpec {
                contrast: 0.35,
                ..FrameSpec::clean(640, 480, 4)
            },
        ),
        (
            "small in a large frame",
            FrameSpec {
                center: (0.25, 0.3),
                ..FrameSpec::clean(1280, 720, 3)
            },
        ),
    ];
    for (i, (name, spec)) in variants.iter().enumerate() {
        let token = central.issue_qr(&format!("TK-B{i}"), "ch-ota-secret").await;
        let frame = render(&token, spec, i as u64).expect("render");
        let file = format!("frame-{i:02}.png");
        let temporary = spool.join(format!(".{file}.tmp"));
        save_png(&frame, &temporary).expect("png");
        std::fs::rename(&temporary, spool.join(&file)).expect("rename");
        let status = wait_status(&agent.base, Duration::from_secs(30), name, |s| {
            s["camera"]["frames_decoded"].as_u64() == Some(i as u64 + 1)
                && s["last_decisions"].as_array().map(Vec::len) == Some(i + 1)
        })
        .await;
        let last = &status["last_decisions"][0];
        assert_eq!(last["code"], "SUCCESS", "{name}: {last}");
        assert_eq!(last["mode"], "online", "{name}");
    }
    assert_eq!(
        central
            .count("SELECT count(*) FROM redemption_events WHERE source = 'venue'")
            .await,
        variants.len() as i64
    );
    // An image without a code decides nothing.
    let empty = stile_testkit::corpus::empty(640, 480, 7);
    save_png(&empty, &spool.join(".empty.png.tmp")).expect("png");
    std::fs::rename(spool.join(".empty.png.tmp"), spool.join("zz-empty.png")).expect("rename");
    let status = wait_status(
        &agent.base,
        Duration::from_secs(30),
        "empty frame seen",
        |s| s["camera"]["frames_seen"].as_u64() == Some(variants.len() as u64 + 1),
    )
    .await;
    assert_eq!(
        status["camera"]["frames_decoded"].as_u64(),
        Some(variants.len() as u64)
    );
}
