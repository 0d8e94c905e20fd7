//! The gate's picture path end to end, on real tokens: QR codes of signed tokens rendered as
//! a camera would see them (`stile_testkit::corpus`), written as PNG files, replayed through
//! the directory source and decoded by the cascade. Every clean frame must read as exactly
//! its token and no empty frame may yield a code; degraded frames are reported, not
//! asserted (their rate is the benchmark's business: `stile-bench-decode`).

use edge_agent::capture::decode::{Cascade, DecoderKind};
use edge_agent::capture::frames::{Capture, DirectorySource, FrameSource};
use std::collections::HashMap;
use stile_shared::token::{verify, Jti, KeySet, QrClaims, QrSigner, TokenPolicy};
use stile_shared::Channel;
use stile_testkit::corpus;

/// A `MINIAPP` token (273 characters, QR version 12-M) and an `OTA` one (no `exp`), signed
/// as the central server signs them, with the key set that verifies them.
fn tokens() -> (Vec<String>, KeySet) {
    let signer = QrSigner::new("k1", [42; 32]);
    let iat = 1_764_000_000;
    let tokens = [
        (Channel::MiniApp, "TK-1001-1", 1u8),
        (Channel::Ota, "TK-2002-7", 2),
    ]
    .into_iter()
    .map(|(ch, tid, jti)| {
        let claims = QrClaims {
            jti: Jti::from_bytes([jti; 16]),
            tid: tid.into(),
            mid: "M001".into(),
            ch,
            iat,
            exp: TokenPolicy::default().expiry_for(ch, iat),
        };
        signer.issue(&claims).expect("issue")
    })
    .collect();
    let mut keys = KeySet::new();
    keys.insert(signer.kid(), signer.verifying_key());
    (tokens, keys)
}

struct Expectation {
    token: Option<String>,
    degraded: bool,
}

#[test]
fn rendered_tokens_replayed_from_png_files_decode_to_exactly_the_token() {
    let (tokens, keys) = tokens();
    assert_eq!(tokens[0].len(), 273, "the example MINIAPP token");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut expected: HashMap<String, Expectation> = HashMap::new();
    for (t, token) in tokens.iter().enumerate() {
        let plan = corpus::plan(token, 100 + t as u64);
        let mut taken: HashMap<&str, usize> = HashMap::new();
        // A debug build decodes slowly: every clean size and px-per-module, a few of each
        // other kind.
        let chosen = plan.iter().filter(|planned| {
            let seen = taken.entry(planned.category).or_default();
            *seen += 1;
            match planned.category {
                "clean" => *seen % 4 == 1,
                "empty" => *seen % 10 == 1,
                _ => *seen <= 2,
            }
        });
        for planned in chosen {
            let frame = corpus::render_planned(token, planned).expect("render");
            let file = format!("{t}-{}.png", planned.name);
            corpus::save_png(&frame, &dir.path().join(&file)).expect("save png");
            expected.insert(
                file,
                Expectation {
                    token: frame.expected.clone(),
                    degraded: frame.degraded,
                },
            );
        }
    }
    let clean_total = expected
        .values()
        .filter(|e| e.token.is_some() && !e.degraded)
        .count();
    assert!(clean_total >= 40, "{clean_total} clean frames");

    let mut source = DirectorySource::replay(dir.path(), None, false).expect("replay");
    let cascade = Cascade::new(&[DecoderKind::Rxing, DecoderKind::Rqrr]);
    let mut replayed = 0;
    let mut degraded = (0, 0);
    let mut failures = Vec::new();
    while let Some(capture) = source.next_capture().expect("capture") {
        let Capture::Frame(frame) = capture else {
            panic!("a directory source yields frames");
        };
        let file = source
            .current_file()
            .and_then(|path| path.file_name())
            .and_then(|name| name.to_str())
            .expect("file name")
            .to_owned();
        let expectation = expected.get(&file).expect("a file we wrote");
        replayed += 1;
        let decoded = cascade.decode(&frame).map(|d| d.text);
        match (&expectation.token, expectation.degraded) {
            (None, _) => {
                if decoded.is_some() {
                    failures.push(format!("{file}: a code in an empty frame"));
                }
            }
            (Some(token), false) => {
                if decoded.as_ref() != Some(token) {
                    failures.push(format!("{file}: read {decoded:?}"));
                } else {
                    assert!(verify(token, &keys).is_ok(), "{file}: does not verify");
                }
            }
            (Some(token), true) => {
                degraded.1 += 1;
                match &decoded {
                    Some(text) if text == token => degraded.0 += 1,
                    Some(text) => failures.push(format!("{file}: misread as {text:?}")),
                    None => {}
                }
            }
        }
    }
    assert_eq!(replayed, expected.len(), "every file replayed once");
    eprintln!(
        "{replayed} frames replayed; degraded frames read: {} of {}; per decoder: {:?}",
        degraded.0,
        degraded.1,
        cascade.stats()
    );
    assert!(failures.is_empty(), "{failures:#?}");
}
