//! QR decoding on the luma plane: two pure-Rust decoders behind [`QrDecoder`], run as a
//! [`Cascade`].
//!
//! - [`RqrrDecoder`] (rqrr, the design card's choice) and [`RxingDecoder`] (rxing, a port of
//!   ZXing) do no I/O and never panic: a malformed frame is "no code", and a panic inside a
//!   decoder crate is caught and counted as "no code" too.
//! - [`Cascade`] tries its decoders in the configured order; a later decoder sees only
//!   frames where every earlier one found nothing. It keeps per-decoder attempts, hits and
//!   time with atomics, so one cascade is shared by the decode worker and the status page.
//!
//! Which order is best is measured, not guessed: `stile-bench-decode` (in `tools/`) runs
//! both decoders and both orders on a generated corpus.

use crate::capture::frames::LumaFrame;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Finds and decodes the QR codes in a grey frame.
pub trait QrDecoder: Send + Sync {
    fn name(&self) -> &'static str;
    /// The text of every code found, in the decoder's order; empty when none (or when the
    /// frame is malformed). Never panics.
    fn decode(&self, frame: &LumaFrame) -> Vec<String>;
}

/// Runs a decoder crate on a frame, turning a panic into "no code".
fn guarded(
    name: &'static str,
    frame: &LumaFrame,
    run: impl FnOnce() -> Vec<String>,
) -> Vec<String> {
    if !frame.is_well_formed() {
        return Vec::new();
    }
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(texts) => texts.into_iter().filter(|text| !text.is_empty()).collect(),
        Err(_) => {
            tracing::warn!(
                decoder = name,
                width = frame.width,
                height = frame.height,
                "the QR decoder panicked on a frame; counted as no code"
            );
            Vec::new()
        }
    }
}

/// rqrr: finds capstones on an adaptively thresholded image, then every grid they form.
#[derive(Debug, Clone, Copy, Default)]
pub struct RqrrDecoder;

impl QrDecoder for RqrrDecoder {
    fn name(&self) -> &'static str {
        "rqrr"
    }

    fn decode(&self, frame: &LumaFrame) -> Vec<String> {
        guarded(self.name(), frame, || {
            let width = frame.width as usize;
            rqrr_read(width, frame.height as usize, |x, y| {
                frame.luma[y * width + x]
            })
        })
    }
}

/// Every code rqrr reads in a `width`×`height` grey image given pixel by pixel.
fn rqrr_read(width: usize, height: usize, pixel: impl FnMut(usize, usize) -> u8) -> Vec<String> {
    rqrr::PreparedImage::prepare_from_greyscale(width, height, pixel)
        .detect_grids()
        .into_iter()
        .filter_map(|grid| grid.decode().ok().map(|(_, text)| text))
        .collect()
}

/// rqrr on frames wider than 960 px halved first (2×2 average): a quarter of the pixels, so
/// as a cascade's second decoder it stays within the empty-frame budget on 720p cameras.
/// Smaller frames are read at full size.
#[derive(Debug, Clone, Copy, Default)]
pub struct RqrrHalfDecoder;

impl QrDecoder for RqrrHalfDecoder {
    fn name(&self) -> &'static str {
        "rqrr-half"
    }

    fn decode(&self, frame: &LumaFrame) -> Vec<String> {
        if frame.width <= 960 {
            return RqrrDecoder.decode(frame);
        }
        guarded(self.name(), frame, || {
            let width = frame.width as usize;
            let (half_width, half_height) = (width / 2, frame.height as usize / 2);
            rqrr_read(half_width, half_height, |x, y| {
                let (x, y) = (2 * x, 2 * y);
                let sum = u16::from(frame.luma[y * width + x])
                    + u16::from(frame.luma[y * width + x + 1])
                    + u16::from(frame.luma[(y + 1) * width + x])
                    + u16::from(frame.luma[(y + 1) * width + x + 1]);
                (sum / 4) as u8
            })
        })
    }
}

/// rxing: ZXing's QR reader (finder patterns on a hybrid-binarized image), QR codes only,
/// without `TRY_HARDER` (`stile-bench-decode`: it read no more codes and cost time).
#[derive(Debug, Clone, Copy, Default)]
pub struct RxingDecoder;

impl QrDecoder for RxingDecoder {
    fn name(&self) -> &'static str {
        "rxing"
    }

    fn decode(&self, frame: &LumaFrame) -> Vec<String> {
        guarded(self.name(), frame, || {
            let mut hints = rxing::DecodeHints {
                // TRY_HARDER reads no more codes on the benchmark corpus and costs ~20% per frame.
                TryHarder: Some(false),
                ..Default::default()
            };
            rxing::helpers::detect_in_luma_slice_with_hints(
                &frame.luma,
                frame.width,
                frame.height,
                Some(rxing::BarcodeFormat::QR_CODE),
                &mut hints,
            )
            .map(|result| vec![result.getText().to_owned()])
            .unwrap_or_default()
        })
    }
}

/// A decoder by name, as configured (`decoders = ["rxing", "rqrr"]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DecoderKind {
    Rqrr,
    Rxing,
    /// rqrr on half-resolution frames when they are wider than 960 px.
    #[serde(rename = "rqrr-half")]
    RqrrHalf,
}

impl DecoderKind {
    pub fn name(self) -> &'static str {
        match self {
            DecoderKind::Rqrr => "rqrr",
            DecoderKind::Rxing => "rxing",
            DecoderKind::RqrrHalf => "rqrr-half",
        }
    }

    pub fn decoder(self) -> Box<dyn QrDecoder> {
        match self {
            DecoderKind::Rqrr => Box::new(RqrrDecoder),
            DecoderKind::Rxing => Box::new(RxingDecoder),
            DecoderKind::RqrrHalf => Box::new(RqrrHalfDecoder),
        }
    }
}

impl std::fmt::Display for DecoderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A code found in a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub text: String,
    /// The decoder that found it.
    pub decoder: &'static str,
    /// Time spent on this frame by the whole cascade, up to and including the hit.
    pub elapsed: Duration,
}

/// What one decoder of a cascade has done so far.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DecoderStats {
    pub name: &'static str,
    /// Frames this decoder looked at (a later decoder only sees the earlier ones' misses).
    pub attempts: u64,
    /// Frames in which it found a code.
    pub hits: u64,
    pub total_micros: u64,
}

struct Stage {
    decoder: Box<dyn QrDecoder>,
    attempts: AtomicU64,
    hits: AtomicU64,
    micros: AtomicU64,
}

/// Decoders tried in order; a later one only for frames where the earlier found nothing.
pub struct Cascade {
    stages: Vec<Stage>,
}

impl std::fmt::Debug for Cascade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cascade")
            .field("order", &self.order())
            .finish()
    }
}

impl Cascade {
    /// The cascade of `order`, each decoder once (a repeated name is ignored).
    pub fn new(order: &[DecoderKind]) -> Cascade {
        let mut kinds: Vec<DecoderKind> = Vec::new();
        for kind in order {
            if !kinds.contains(kind) {
                kinds.push(*kind);
            }
        }
        Cascade::with_decoders(kinds.into_iter().map(DecoderKind::decoder).collect())
    }

    /// A cascade of any decoders (tests use instrumented ones).
    pub fn with_decoders(decoders: Vec<Box<dyn QrDecoder>>) -> Cascade {
        Cascade {
            stages: decoders
                .into_iter()
                .map(|decoder| Stage {
                    decoder,
                    attempts: AtomicU64::new(0),
                    hits: AtomicU64::new(0),
                    micros: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    /// The decoders' names, in the order they are tried.
    pub fn order(&self) -> Vec<&'static str> {
        self.stages
            .iter()
            .map(|stage| stage.decoder.name())
            .collect()
    }

    /// The first code found, trying each decoder in turn. When a decoder finds several codes
    /// in one frame, the first is taken.
    pub fn decode(&self, frame: &LumaFrame) -> Option<Decoded> {
        let started = Instant::now();
        for stage in &self.stages {
            let stage_started = Instant::now();
            let mut texts = stage.decoder.decode(frame);
            let micros = u64::try_from(stage_started.elapsed().as_micros()).unwrap_or(u64::MAX);
            stage.attempts.fetch_add(1, Ordering::Relaxed);
            stage.micros.fetch_add(micros, Ordering::Relaxed);
            if !texts.is_empty() {
                stage.hits.fetch_add(1, Ordering::Relaxed);
                return Some(Decoded {
                    text: texts.swap_remove(0),
                    decoder: stage.decoder.name(),
                    elapsed: started.elapsed(),
                });
            }
        }
        None
    }

    /// Each decoder's counters, in cascade order.
    pub fn stats(&self) -> Vec<DecoderStats> {
        self.stages
            .iter()
            .map(|stage| DecoderStats {
                name: stage.decoder.name(),
                attempts: stage.attempts.load(Ordering::Relaxed),
                hits: stage.hits.load(Ordering::Relaxed),
                total_micros: stage.micros.load(Ordering::Relaxed),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Renders `text` as a clean QR code, `px` pixels per module, 4 modules of quiet zone,
    /// centred in a mid-grey frame.
    fn qr_frame(text: &str, px: u32, width: u32, height: u32) -> LumaFrame {
        let code =
            qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::M).expect("qr code");
        let modules = code.width() as u32;
        let colors = code.to_colors();
        let side = (modules + 8) * px;
        let (left, top) = ((width - side) / 2, (height - side) / 2);
        let mut luma = vec![128u8; (width * height) as usize];
        for y in 0..side {
            for x in 0..side {
                let (mx, my) = ((x / px) as i64 - 4, (y / px) as i64 - 4);
                let dark = (0..modules as i64).contains(&mx)
                    && (0..modules as i64).contains(&my)
                    && colors[(my * modules as i64 + mx) as usize] == qrcode::Color::Dark;
                luma[((top + y) * width + left + x) as usize] = if dark { 20 } else { 235 };
            }
        }
        LumaFrame {
            width,
            height,
            luma,
        }
    }

    #[test]
    fn both_decoders_read_a_clean_code() {
        let frame = qr_frame("STILE-TEST-CODE-0001", 4, 320, 240);
        for decoder in [DecoderKind::Rqrr.decoder(), DecoderKind::Rxing.decoder()] {
            assert_eq!(
                decoder.decode(&frame),
                vec!["STILE-TEST-CODE-0001".to_owned()],
                "{}",
                decoder.name()
            );
        }
    }

    #[test]
    fn decoders_find_nothing_in_empty_or_malformed_frames() {
        let frames = [
            LumaFrame {
                width: 0,
                height: 0,
                luma: Vec::new(),
            },
            LumaFrame {
                width: 0,
                height: 10,
                luma: Vec::new(),
            },
            LumaFrame {
                width: 10,
                height: 10,
                luma: vec![0; 7],
            },
            LumaFrame {
                width: 1,
                height: 1,
                luma: vec![255],
            },
            LumaFrame {
                width: 640,
                height: 480,
                luma: vec![128; 640 * 480],
            },
            LumaFrame {
                width: 64,
                height: 48,
                luma: (0..64 * 48).map(|i| ((i * 7919) % 251) as u8).collect(),
            },
        ];
        for decoder in [DecoderKind::Rqrr.decoder(), DecoderKind::Rxing.decoder()] {
            for frame in &frames {
                assert!(
                    decoder.decode(frame).is_empty(),
                    "{} {frame:?}",
                    decoder.name()
                );
            }
        }
        let cascade = Cascade::new(&[DecoderKind::Rxing, DecoderKind::Rqrr]);
        assert!(frames.iter().all(|frame| cascade.decode(frame).is_none()));
    }

    /// A decoder that answers from a script and counts its calls.
    struct Scripted {
        name: &'static str,
        finds: fn(&LumaFrame) -> Vec<String>,
        calls: Arc<AtomicU64>,
    }

    impl QrDecoder for Scripted {
        fn name(&self) -> &'static str {
            self.name
        }
        fn decode(&self, frame: &LumaFrame) -> Vec<String> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            (self.finds)(frame)
        }
    }

    fn tiny(shade: u8) -> LumaFrame {
        LumaFrame {
            width: 1,
            height: 1,
            luma: vec![shade],
        }
    }

    #[test]
    fn cascade_tries_the_second_decoder_only_when_the_first_finds_nothing() {
        let first_calls = Arc::new(AtomicU64::new(0));
        let second_calls = Arc::new(AtomicU64::new(0));
        let cascade = Cascade::with_decoders(vec![
            Box::new(Scripted {
                name: "first",
                // Reads only dark frames.
                finds: |frame| {
                    if frame.luma[0] < 100 {
                        vec!["dark".into()]
                    } else {
                        vec![]
                    }
                },
                calls: first_calls.clone(),
            }),
            Box::new(Scripted {
                name: "second",
                // Reads mid-grey frames, and "finds" two codes in them.
                finds: |frame| {
                    if frame.luma[0] < 200 {
                        vec!["grey".into(), "other".into()]
                    } else {
                        vec![]
                    }
                },
                calls: second_calls.clone(),
            }),
        ]);
        assert_eq!(cascade.order(), vec!["first", "second"]);

        // shade → (text, decoder) expected
        let cases: [(u8, Option<(&str, &str)>); 4] = [
            (10, Some(("dark", "first"))),
            (150, Some(("grey", "second"))),
            (250, None),
            (20, Some(("dark", "first"))),
        ];
        for (shade, expected) in cases {
            let found = cascade.decode(&tiny(shade));
            assert_eq!(
                found.as_ref().map(|d| (d.text.as_str(), d.decoder)),
                expected,
                "shade {shade}"
            );
        }
        assert_eq!(first_calls.load(Ordering::Relaxed), 4);
        assert_eq!(second_calls.load(Ordering::Relaxed), 2);
        let stats = cascade.stats();
        let counts: Vec<(&str, u64, u64)> =
            stats.iter().map(|s| (s.name, s.attempts, s.hits)).collect();
        assert_eq!(counts, vec![("first", 4, 2), ("second", 2, 1)]);
    }

    #[test]
    fn a_panicking_decoder_counts_as_no_code() {
        struct Panics;
        impl QrDecoder for Panics {
            fn name(&self) -> &'static str {
                "panics"
            }
            fn decode(&self, frame: &LumaFrame) -> Vec<String> {
                guarded(self.name(), frame, || panic!("decoder bug"))
            }
        }
        let cascade = Cascade::with_decoders(vec![Box::new(Panics), Box::new(RqrrDecoder)]);
        let frame = qr_frame("AFTER-A-PANIC", 3, 200, 200);
        let found = cascade.decode(&frame).expect("the second decoder reads it");
        assert_eq!(
            (found.text.as_str(), found.decoder),
            ("AFTER-A-PANIC", "rqrr")
        );
        assert_eq!(cascade.stats()[0].hits, 0);
    }

    #[test]
    fn a_cascade_names_each_decoder_once() {
        let cascade = Cascade::new(&[DecoderKind::Rqrr, DecoderKind::Rxing, DecoderKind::Rqrr]);
        assert_eq!(cascade.order(), vec!["rqrr", "rxing"]);
        let parsed: Vec<DecoderKind> =
            serde_json::from_str(r#"["rxing","rqrr"]"#).expect("decoder names");
        assert_eq!(parsed, vec![DecoderKind::Rxing, DecoderKind::Rqrr]);
    }
}
