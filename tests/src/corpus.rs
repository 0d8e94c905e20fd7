//! Synthetic camera frames of QR codes: what the gate's decoders are tested and measured on.
//!
//! [`render`] draws one code the way a gate camera would see it: the code (ECC level M, a
//! quiet zone of 4 modules, dark modules on a white card or screen) on a mid-grey scene,
//! placed, rotated and perspective-skewed by inverse mapping with bilinear sampling, then
//! its contrast compressed towards mid-grey, box-blurred and given additive noise.
//! [`empty`] draws a textured scene without a code. [`corpus`] is the standard set (see
//! [`plan`] for its composition), reproducible from a seed: the same text and seed give
//! the same pixels on every machine (a local SplitMix64 generator, not a library RNG whose
//! stream may change between versions).

use std::path::Path;

/// How one frame is drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameSpec {
    pub width: u32,
    pub height: u32,
    /// Size of one module of the code, in pixels (before any skew).
    pub px_per_module: u32,
    /// Rotation of the code in the image plane, counter-clockwise.
    pub rotate_degrees: f32,
    /// Tilt of the code away from the camera: 0 is face-on; at 0.2 the near edge of the code
    /// looks 1.5 times as long as the far one. Kept within 0..=0.6.
    pub perspective: f32,
    /// Radius of a box blur in pixels (fractions weigh the outermost taps partially).
    pub blur_radius: f32,
    /// Peak amplitude of additive (triangular) noise, in grey levels.
    pub noise: u8,
    /// 1 is full contrast; 0.3 squeezes every grey level to 30% of its distance from mid-grey.
    pub contrast: f32,
    /// Where the code's centre is, as fractions of the frame's width and height.
    pub center: (f32, f32),
}

impl FrameSpec {
    /// An upright, sharp, noise-free code of `px` pixels per module in the frame's centre.
    pub fn clean(width: u32, height: u32, px: u32) -> FrameSpec {
        FrameSpec {
            width,
            height,
            px_per_module: px,
            rotate_degrees: 0.0,
            perspective: 0.0,
            blur_radius: 0.0,
            noise: 0,
            contrast: 1.0,
            center: (0.5, 0.5),
        }
    }

    /// Whether anything makes this frame harder than a clean one.
    pub fn is_degraded(&self) -> bool {
        self.rotate_degrees != 0.0
            || self.perspective != 0.0
            || self.blur_radius > 0.0
            || self.noise > 0
            || self.contrast < 1.0
    }
}

/// A rendered frame: 8-bit grey, row-major.
#[derive(Clone, PartialEq, Eq)]
pub struct CorpusFrame {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub luma: Vec<u8>,
    /// The text of the code in the frame; `None` for a frame without a code.
    pub expected: Option<String>,
    pub degraded: bool,
}

impl std::fmt::Debug for CorpusFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CorpusFrame")
            .field("name", &self.name)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("has_code", &self.expected.is_some())
            .field("degraded", &self.degraded)
            .finish()
    }
}

/// Grey of the scene behind the code.
const MID_GREY: f32 = 128.0;
/// Grey of a dark and a light module (a printed card or a phone screen under gate lights).
const DARK: u8 = 25;
const LIGHT: u8 = 230;
const QUIET_ZONE: u32 = 4;

/// SplitMix64: tiny, fast, and its stream never changes.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    fn range(&mut self, low: f32, high: f32) -> f32 {
        low + (high - low) * self.unit()
    }

    fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }

    fn sign(&mut self) -> f32 {
        if self.next_u64() & 1 == 0 {
            1.0
        } else {
            -1.0
        }
    }
}

/// A seed for frame `index` of a corpus seeded with `seed`.
fn derive_seed(seed: u64, index: u64) -> u64 {
    Rng::new(seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64()
}

/// The code's modules: `size` × `size`, `true` = dark.
struct Modules {
    size: u32,
    dark: Vec<bool>,
}

fn modules(text: &str) -> Option<Modules> {
    let code = qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::M).ok()?;
    let size = u32::try_from(code.width()).ok()?;
    let dark = code
        .to_colors()
        .into_iter()
        .map(|color| color == qrcode::Color::Dark)
        .collect();
    Some(Modules { size, dark })
}

/// Side of `text`'s code at ECC level M in modules, without the quiet zone (21 for
/// version 1, 4 more per version); `None` when the text does not fit a QR code.
pub fn modules_per_side(text: &str) -> Option<u32> {
    modules(text).map(|m| m.size)
}

/// Side of the code with its quiet zone, in modules.
fn side_in_modules(text: &str) -> Option<u32> {
    modules_per_side(text).map(|size| size + 2 * QUIET_ZONE)
}

/// The mid-grey scene: a gentle diagonal light gradient, as under a gate's lamp.
fn scene(width: u32, height: u32) -> Vec<f32> {
    let mut out = Vec::with_capacity((width as usize) * (height as usize));
    for y in 0..height {
        for x in 0..width {
            let gx = x as f32 / width.max(1) as f32 - 0.5;
            let gy = y as f32 / height.max(1) as f32 - 0.5;
            out.push(MID_GREY + 14.0 * gx + 8.0 * gy);
        }
    }
    out
}

/// Maps frame points to the code's raster: the inverse of "tilt, then rotate, then place".
struct Placement {
    /// Centre of the code in the frame, in pixels.
    cx: f32,
    cy: f32,
    cos: f32,
    sin: f32,
    /// Projective tilt: a point (u, v) of the code (from its centre) appears at
    /// (u, v) / (1 + a·u + b·v) before rotation.
    a: f32,
    b: f32,
    /// Half the raster's side.
    half: f32,
}

impl Placement {
    fn new(spec: &FrameSpec, raster_side: u32) -> Placement {
        let half = raster_side as f32 / 2.0;
        let p = if spec.perspective.is_finite() {
            spec.perspective.clamp(0.0, 0.6)
        } else {
            0.0
        };
        let angle = if spec.rotate_degrees.is_finite() {
            spec.rotate_degrees.to_radians()
        } else {
            0.0
        };
        Placement {
            cx: spec.center.0 * spec.width as f32,
            cy: spec.center.1 * spec.height as f32,
            cos: angle.cos(),
            sin: angle.sin(),
            a: p / half,
            b: 0.5 * p / half,
            half,
        }
    }

    /// Where raster point (s, t) lands in the frame.
    fn forward(&self, s: f32, t: f32) -> (f32, f32) {
        let (u, v) = (s - self.half, t - self.half);
        let d = 1.0 + self.a * u + self.b * v;
        let (u, v) = (u / d, v / d);
        // Counter-clockwise on screen (y grows downwards).
        (
            self.cx + u * self.cos + v * self.sin,
            self.cy - u * self.sin + v * self.cos,
        )
    }

    /// The raster point seen at frame point (x, y); `None` beyond the tilt's horizon.
    fn inverse(&self, x: f32, y: f32) -> Option<(f32, f32)> {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let u = dx * self.cos - dy * self.sin;
        let v = dx * self.sin + dy * self.cos;
        let denominator = 1.0 - self.a * u - self.b * v;
        if denominator <= 1e-6 {
            return None;
        }
        let d = 1.0 / denominator;
        Some((u * d + self.half, v * d + self.half))
    }
}

/// Draws `text` as a QR code into a frame described by `spec`; `None` when the text does
/// not fit a QR code or the frame has no pixels. `rng_seed` drives the noise.
pub fn render(text: &str, spec: &FrameSpec, rng_seed: u64) -> Option<CorpusFrame> {
    let modules = modules(text)?;
    let (width, height) = (spec.width, spec.height);
    if width == 0 || height == 0 || spec.px_per_module == 0 {
        return None;
    }
    let px = spec.px_per_module;
    let side_modules = modules.size + 2 * QUIET_ZONE;
    let side = side_modules.checked_mul(px)?;
    let raster_at = |s: u32, t: u32| -> u8 {
        let in_code = |m: u32| (QUIET_ZONE..QUIET_ZONE + modules.size).contains(&m);
        let (mx, my) = (s / px, t / px);
        if in_code(mx) && in_code(my) {
            let index = ((my - QUIET_ZONE) * modules.size + mx - QUIET_ZONE) as usize;
            if modules.dark[index] {
                return DARK;
            }
        }
        LIGHT
    };

    let mut pixels = scene(width, height);
    let placement = Placement::new(spec, side);
    // Only pixels under the code's footprint need the inverse mapping.
    let corners = [
        (0.0, 0.0),
        (side as f32, 0.0),
        (0.0, side as f32),
        (side as f32, side as f32),
    ]
    .map(|(s, t)| placement.forward(s, t));
    let clamp_x = |v: f32| v.clamp(0.0, width as f32) as u32;
    let clamp_y = |v: f32| v.clamp(0.0, height as f32) as u32;
    let x0 = clamp_x(corners.iter().map(|c| c.0).fold(f32::INFINITY, f32::min) - 2.0);
    let x1 = clamp_x(
        corners
            .iter()
            .map(|c| c.0)
            .fold(f32::NEG_INFINITY, f32::max)
            + 2.0,
    );
    let y0 = clamp_y(corners.iter().map(|c| c.1).fold(f32::INFINITY, f32::min) - 2.0);
    let y1 = clamp_y(
        corners
            .iter()
            .map(|c| c.1)
            .fold(f32::NEG_INFINITY, f32::max)
            + 2.0,
    );
    for y in y0..y1 {
        for x in x0..x1 {
            let index = (y * width + x) as usize;
            let Some((s, t)) = placement.inverse(x as f32 + 0.5, y as f32 + 0.5) else {
                continue;
            };
            // Bilinear between raster pixel centres; outside the raster, the scene shows.
            let (fs, ft) = (s - 0.5, t - 0.5);
            let (s0, t0) = (fs.floor(), ft.floor());
            let (ws, wt) = (fs - s0, ft - t0);
            let background = pixels[index];
            let sample = |si: f32, ti: f32| -> f32 {
                if si < 0.0 || ti < 0.0 || si >= side as f32 || ti >= side as f32 {
                    background
                } else {
                    f32::from(raster_at(si as u32, ti as u32))
                }
            };
            let top = sample(s0, t0) * (1.0 - ws) + sample(s0 + 1.0, t0) * ws;
            let bottom = sample(s0, t0 + 1.0) * (1.0 - ws) + sample(s0 + 1.0, t0 + 1.0) * ws;
            pixels[index] = top * (1.0 - wt) + bottom * wt;
        }
    }

    let luma = finish(pixels, width, height, spec, rng_seed);
    Some(CorpusFrame {
        name: describe(spec),
        width,
        height,
        luma,
        expected: Some(text.to_owned()),
        degraded: spec.is_degraded(),
    })
}

fn describe(spec: &FrameSpec) -> String {
    let mut name = format!("{}x{}-p{}", spec.width, spec.height, spec.px_per_module);
    if spec.rotate_degrees != 0.0 {
        name.push_str(&format!("-rot{:.1}", spec.rotate_degrees));
    }
    if spec.perspective != 0.0 {
        name.push_str(&format!("-persp{:.2}", spec.perspective));
    }
    if spec.blur_radius > 0.0 {
        name.push_str(&format!("-blur{:.2}", spec.blur_radius));
    }
    if spec.noise > 0 {
        name.push_str(&format!("-noise{}", spec.noise));
    }
    if spec.contrast < 1.0 {
        name.push_str(&format!("-contrast{:.2}", spec.contrast));
    }
    name
}

/// Contrast, blur and noise, in the order a camera applies them (optics, then sensor).
fn finish(mut pixels: Vec<f32>, width: u32, height: u32, spec: &FrameSpec, seed: u64) -> Vec<u8> {
    let contrast = if spec.contrast.is_finite() {
        spec.contrast.clamp(0.0, 1.0)
    } else {
        1.0
    };
    if contrast < 1.0 {
        for value in &mut pixels {
            *value = MID_GREY + (*value - MID_GREY) * contrast;
        }
    }
    if spec.blur_radius.is_finite() && spec.blur_radius > 0.0 {
        pixels = box_blur(&pixels, width as usize, height as usize, spec.blur_radius);
    }
    let mut rng = Rng::new(seed);
    let amplitude = f32::from(spec.noise);
    pixels
        .into_iter()
        .map(|value| {
            let noise = if spec.noise > 0 {
                (rng.unit() - rng.unit()) * amplitude
            } else {
                0.0
            };
            (value + noise).round().clamp(0.0, 255.0) as u8
        })
        .collect()
}

/// Separable box blur of radius `radius` (taps at distance `floor(radius) + 1` weigh the
/// fractional part); edges repeat the border pixel.
fn box_blur(pixels: &[f32], width: usize, height: usize, radius: f32) -> Vec<f32> {
    let whole = radius.floor() as usize;
    let fraction = radius - radius.floor();
    let mut weights = vec![1.0f32; 2 * whole + 1];
    if fraction > 0.0 {
        weights.insert(0, fraction);
        weights.push(fraction);
    }
    let reach = (weights.len() / 2) as isize;
    let total: f32 = weights.iter().sum();
    let pass = |input: &[f32], along_x: bool| -> Vec<f32> {
        let mut output = vec![0.0; input.len()];
        for y in 0..height {
            for x in 0..width {
                let mut sum = 0.0;
                for (k, weight) in weights.iter().enumerate() {
                    let offset = k as isize - reach;
                    let (sx, sy) = if along_x {
                        (
                            (x as isize + offset).clamp(0, width as isize - 1) as usize,
                            y,
                        )
                    } else {
                        (
                            x,
                            (y as isize + offset).clamp(0, height as isize - 1) as usize,
                        )
                    };
                    sum += weight * input[sy * width + sx];
                }
                output[y * width + x] = sum / total;
            }
        }
        output
    };
    let horizontal = pass(pixels, true);
    pass(&horizontal, false)
}

/// A frame without a code: the mid-grey scene with rectangles, stripes and checkered patches
/// of assorted greys (clothes, signage, turnstile bars), slightly blurred, with noise.
pub fn empty(width: u32, height: u32, seed: u64) -> CorpusFrame {
    let mut rng = Rng::new(seed);
    let mut pixels = scene(width, height);
    if width > 0 && height > 0 {
        let shapes = 25 + rng.below(20);
        for _ in 0..shapes {
            let w = 8 + rng.below((width / 4).max(1));
            let h = 8 + rng.below((height / 4).max(1));
            let left = rng.below(width);
            let top = rng.below(height);
            let grey = rng.range(10.0, 245.0);
            let other = rng.range(10.0, 245.0);
            let pattern = rng.below(3);
            let period = 2 + rng.below(12);
            for y in top..(top + h).min(height) {
                for x in left..(left + w).min(width) {
                    let alternate = match pattern {
                        0 => false,
                        1 => ((x - left) / period) % 2 == 1,
                        _ => ((x - left) / period + (y - top) / period) % 2 == 1,
                    };
                    pixels[(y * width + x) as usize] = if alternate { other } else { grey };
                }
            }
        }
    }
    let spec = FrameSpec {
        blur_radius: 0.7,
        noise: 6,
        ..FrameSpec::clean(width, height, 1)
    };
    let luma = finish(pixels, width, height, &spec, rng.next_u64());
    CorpusFrame {
        name: format!("{width}x{height}-empty"),
        width,
        height,
        luma,
        expected: None,
        degraded: false,
    }
}

/// One frame of the standard corpus, before rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedFrame {
    /// Unique within the corpus, sorts in corpus order (`0042-rotated-1280x720-p5-rot17.3`).
    pub name: String,
    /// `clean`, `small`, `rotated`, `perspective`, `blurred`, `noisy`, `low-contrast`,
    /// `mixed` or `empty`.
    pub category: &'static str,
    /// `None` for an empty frame (its size is in `empty_size`).
    pub spec: Option<FrameSpec>,
    pub empty_size: (u32, u32),
    /// Seed of this frame's noise and texture.
    pub seed: u64,
}

impl PlannedFrame {
    pub fn degraded(&self) -> bool {
        self.spec.as_ref().is_some_and(FrameSpec::is_degraded)
    }
}

/// The two frame sizes of the corpus: a 720p gate camera and a VGA one.
pub const FRAME_SIZES: [(u32, u32); 2] = [(1280, 720), (640, 480)];

/// What [`corpus`] renders, frame by frame (so a caller can render a subset):
///
/// - `clean`: upright, sharp codes at 2..=7 px per module in both frame sizes (7 px only
///   where the code fits: not in 640x480), 12 positions each, half of them on the pixel grid
///   and half at sub-pixel offsets;
/// - `small`: 2 px per module near the edges and corners of a 1280x720 frame (clean);
/// - degraded, at 3..=6 px per module in both sizes, 3 random variants each: `rotated`
///   (5 to 45 degrees), `perspective` (tilt 0.08 to 0.2, up to 5 degrees of rotation),
///   `blurred` (box radius 0.2 to 0.4 of a module), `noisy` (amplitude 12 to 40),
///   `low-contrast` (0.25 to 0.45), `mixed` (a little of each);
/// - `empty`: 20 textured frames without a code in each size.
///
/// A degraded code too large for its frame is drawn one px per module smaller.
pub fn plan(text: &str, seed: u64) -> Vec<PlannedFrame> {
    // A 273-character token is version 12 (65 modules) at ECC level M.
    let side = side_in_modules(text).unwrap_or(65 + 2 * QUIET_ZONE) as f32;
    let mut rng = Rng::new(seed);
    let mut frames: Vec<PlannedFrame> = Vec::new();
    let push = |frames: &mut Vec<PlannedFrame>, category, spec: Option<FrameSpec>, size| {
        let index = frames.len();
        let label = match &spec {
            Some(spec) => describe(spec),
            None => {
                let (w, h): (u32, u32) = size;
                format!("{w}x{h}-empty")
            }
        };
        frames.push(PlannedFrame {
            name: format!("{index:04}-{category}-{label}"),
            category,
            spec,
            empty_size: size,
            seed: derive_seed(seed, index as u64),
        });
    };

    // Footprint of a code in the frame (its bounding box), for placement.
    let footprint = |ppm: u32, degrees: f32, perspective: f32| -> f32 {
        let radians = degrees.to_radians();
        let stretch = 1.0 / (1.0 - 0.75 * perspective);
        side * ppm as f32 * (radians.cos().abs() + radians.sin().abs()) * stretch
    };
    // A centre (as fractions) that keeps a footprint inside the frame, or `None`.
    let place = |rng: &mut Rng, (w, h): (u32, u32), extent: f32, snap: bool| {
        let margin = extent / 2.0 + 2.0;
        if 2.0 * margin > w as f32 || 2.0 * margin > h as f32 {
            return None;
        }
        let mut x = rng.range(margin, w as f32 - margin);
        let mut y = rng.range(margin, h as f32 - margin);
        if snap {
            // The code's edges on the pixel grid: a perfectly sharp code.
            x = x.floor() + (extent / 2.0).fract();
            y = y.floor() + (extent / 2.0).fract();
        }
        Some((x / w as f32, y / h as f32))
    };

    for size in FRAME_SIZES {
        for ppm in 2..=7 {
            for k in 0..12 {
                let extent = side * ppm as f32;
                let Some(center) = place(&mut rng, size, extent, k % 2 == 0) else {
                    continue;
                };
                let spec = FrameSpec {
                    center,
                    ..FrameSpec::clean(size.0, size.1, ppm)
                };
                push(&mut frames, "clean", Some(spec), size);
            }
        }
    }

    let (w, h) = FRAME_SIZES[0];
    let extent = side * 2.0;
    let (ex, ey) = (
        (extent / 2.0 + 3.0) / w as f32,
        (extent / 2.0 + 3.0) / h as f32,
    );
    for k in 0..12u32 {
        let center = match k % 4 {
            0 => (ex, ey),
            1 => (1.0 - ex, ey),
            2 => (ex, 1.0 - ey),
            _ => (1.0 - ex, 1.0 - ey),
        };
        // Slide along the edge a little for the second and third round.
        let slide = (k / 4) as f32 * 0.15;
        let center = (
            if center.0 < 0.5 {
                center.0 + slide
            } else {
                center.0 - slide
            },
            center.1,
        );
        let spec = FrameSpec {
            center,
            ..FrameSpec::clean(w, h, 2)
        };
        push(&mut frames, "small", Some(spec), (w, h));
    }

    let categories = [
        "rotated",
        "perspective",
        "blurred",
        "noisy",
        "low-contrast",
        "mixed",
    ];
    for category in categories {
        for size in FRAME_SIZES {
            for ppm in 3..=6u32 {
                for _ in 0..3 {
                    let mut spec = FrameSpec::clean(size.0, size.1, ppm);
                    match category {
                        "rotated" => spec.rotate_degrees = rng.sign() * rng.range(5.0, 45.0),
                        "perspective" => {
                            spec.perspective = rng.range(0.08, 0.2);
                            spec.rotate_degrees = rng.range(-5.0, 5.0);
                        }
                        "blurred" => spec.blur_radius = ppm as f32 * rng.range(0.2, 0.4),
                        "noisy" => spec.noise = rng.range(12.0, 40.0) as u8,
                        "low-contrast" => spec.contrast = rng.range(0.25, 0.45),
                        _ => {
                            spec.rotate_degrees = rng.sign() * rng.range(3.0, 20.0);
                            spec.perspective = rng.range(0.0, 0.1);
                            spec.blur_radius = ppm as f32 * rng.range(0.15, 0.25);
                            spec.noise = rng.range(6.0, 15.0) as u8;
                            spec.contrast = rng.range(0.6, 0.9);
                        }
                    }
                    loop {
                        let extent =
                            footprint(spec.px_per_module, spec.rotate_degrees, spec.perspective);
                        if let Some(center) = place(&mut rng, size, extent, false) {
                            spec.center = center;
                            push(&mut frames, category, Some(spec), size);
                            break;
                        }
                        if spec.px_per_module <= 3 {
                            break;
                        }
                        spec.px_per_module -= 1;
                    }
                }
            }
        }
    }

    for size in FRAME_SIZES {
        for _ in 0..20 {
            push(&mut frames, "empty", None, size);
        }
    }
    frames
}

/// Renders one planned frame of `text`; its name is the plan's.
pub fn render_planned(text: &str, planned: &PlannedFrame) -> Option<CorpusFrame> {
    let mut frame = match &planned.spec {
        Some(spec) => render(text, spec, planned.seed)?,
        None => empty(planned.empty_size.0, planned.empty_size.1, planned.seed),
    };
    frame.name.clone_from(&planned.name);
    Some(frame)
}

/// The standard corpus of `text` (over 300 frames; see [`plan`]), the same for the same
/// text and seed.
pub fn corpus(text: &str, seed: u64) -> Vec<CorpusFrame> {
    plan(text, seed)
        .iter()
        .filter_map(|planned| render_planned(text, planned))
        .collect()
}

/// Writes a frame as an 8-bit grey PNG.
pub fn save_png(frame: &CorpusFrame, path: &Path) -> std::io::Result<()> {
    let picture = image::GrayImage::from_raw(frame.width, frame.height, frame.luma.clone())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "frame buffer does not match its size",
            )
        })?;
    picture
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIn0.test-token-for-the-corpus";

    #[test]
    fn the_corpus_is_large_varied_and_reproducible() {
        let planned = plan(TEXT, 7);
        assert!(planned.len() >= 300, "{} frames", planned.len());
        for category in [
            "clean",
            "small",
            "rotated",
            "perspective",
            "blurred",
            "noisy",
            "low-contrast",
            "mixed",
            "empty",
        ] {
            assert!(
                planned.iter().filter(|p| p.category == category).count() >= 12,
                "{category}"
            );
        }
        for (w, h) in FRAME_SIZES {
            assert!(planned.iter().any(|p| p
                .spec
                .as_ref()
                .is_some_and(|s| (s.width, s.height) == (w, h))));
        }
        let ppms: std::collections::BTreeSet<u32> = planned
            .iter()
            .filter_map(|p| p.spec.as_ref().map(|s| s.px_per_module))
            .collect();
        assert_eq!(ppms.into_iter().collect::<Vec<_>>(), vec![2, 3, 4, 5, 6, 7]);
        let names: std::collections::HashSet<&str> =
            planned.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names.len(), planned.len());
        assert_eq!(plan(TEXT, 7), planned);
        assert_ne!(plan(TEXT, 8), planned);

        // Same seed, same pixels (one frame of each kind keeps the test fast).
        let noisy = planned
            .iter()
            .find(|p| p.category == "mixed")
            .expect("a mixed frame");
        assert_eq!(render_planned(TEXT, noisy), render_planned(TEXT, noisy));
        let blank = planned
            .iter()
            .find(|p| p.category == "empty")
            .expect("empty");
        let frame = render_planned(TEXT, blank).expect("empty frame");
        assert_eq!(frame.expected, None);
        assert_eq!(Some(frame), render_planned(TEXT, blank));
    }

    #[test]
    fn a_clean_code_is_drawn_exactly() {
        let spec = FrameSpec {
            center: (0.5, 0.5),
            ..FrameSpec::clean(200, 200, 2)
        };
        let frame = render("HELLO", &spec, 1).expect("frame");
        assert_eq!(
            (frame.width, frame.height, frame.luma.len()),
            (200, 200, 40_000)
        );
        assert!(!frame.degraded);
        // Version 1: 21 modules + 8 of quiet zone = 58 px, from 71 to 129.
        let at = |x: u32, y: u32| frame.luma[(y * 200 + x) as usize];
        assert_eq!(at(71, 71), LIGHT, "quiet zone");
        assert_eq!(at(79, 79), DARK, "top-left finder pattern");
        assert_eq!(at(80, 80), DARK);
        assert_eq!(at(81, 81), LIGHT, "inside the finder's ring");
        assert!(at(0, 0).abs_diff(MID_GREY as u8) < 15, "scene");
        assert!(frame
            .luma
            .iter()
            .all(|v| *v == DARK || *v == LIGHT || v.abs_diff(128) < 15));
    }

    #[test]
    fn degradations_change_the_picture_and_mark_the_frame() {
        let clean = render(TEXT, &FrameSpec::clean(320, 240, 2), 1).expect("clean");
        let cases = [
            FrameSpec {
                rotate_degrees: 20.0,
                ..FrameSpec::clean(320, 240, 2)
            },
            FrameSpec {
                perspective: 0.2,
                ..FrameSpec::clean(320, 240, 2)
            },
            FrameSpec {
                blur_radius: 1.5,
                ..FrameSpec::clean(320, 240, 2)
            },
            FrameSpec {
                noise: 20,
                ..FrameSpec::clean(320, 240, 2)
            },
            FrameSpec {
                contrast: 0.3,
                ..FrameSpec::clean(320, 240, 2)
            },
        ];
        for spec in cases {
            let frame = render(TEXT, &spec, 1).expect("frame");
            assert!(frame.degraded, "{spec:?}");
            assert_ne!(frame.luma, clean.luma, "{spec:?}");
        }
        let low = render(
            TEXT,
            &FrameSpec {
                contrast: 0.3,
                ..FrameSpec::clean(320, 240, 2)
            },
            1,
        )
        .expect("low contrast");
        let (min, max) = low
            .luma
            .iter()
            .fold((255u8, 0u8), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        assert!(min > 80 && max < 175, "{min}..{max}");
    }

    #[test]
    fn impossible_codes_and_frames_render_nothing() {
        assert!(render(&"x".repeat(3000), &FrameSpec::clean(640, 480, 2), 1).is_none());
        assert!(render("ok", &FrameSpec::clean(0, 480, 2), 1).is_none());
        assert!(render("ok", &FrameSpec::clean(640, 480, 0), 1).is_none());
        let frame = empty(0, 0, 1);
        assert!(frame.luma.is_empty());
    }

    #[test]
    fn save_png_writes_a_grey_image() {
        let dir = tempfile::tempdir().expect("tempdir");
        let frame = empty(64, 48, 3);
        let path = dir.path().join("empty.png");
        save_png(&frame, &path).expect("save");
        let read = image::open(&path).expect("open").into_luma8();
        assert_eq!(read.dimensions(), (64, 48));
        assert_eq!(read.into_raw(), frame.luma);
    }
}
