//! Frame sources: where the gate's pictures (or already-decoded codes) come from.
//!
//! Everything downstream sees one blocking [`FrameSource`] that yields [`Capture`]s: a grey
//! picture ([`LumaFrame`], 8 bits per pixel, row-major) for the QR decoders, or the text a
//! hardware scan engine already decoded. Three implementations:
//!
//! - `camera::CameraSource` (cargo feature `camera`): a V4L2 camera, YUYV or MJPEG turned
//!   straight into luma.
//! - [`DirectorySource`]: image files. `replay` plays a directory (or one file) in name order,
//!   optionally paced and looped (tests, the demo, field diagnostics); `watch` is a spool
//!   directory that yields each image once as it appears.
//! - [`LineSource`]: one code per line from a device path or stdin (handhelds whose scan
//!   engine types the code as keyboard or serial input).
//!
//! A file that is not a readable image is logged and skipped, never fatal: one bad file in a
//! spool must not stop a gate. A spool file is one scan: it is never dropped while the
//! decoder is busy (camera frames are), and once decided, or skipped with its reason logged,
//! it is moved into the spool's `done/` or `skipped/` folder, so a restart reads nothing
//! twice ([`finish_spool_file`]).
//!
//! Work per frame is bounded: an image file above [`MAX_IMAGE_PIXELS`] is refused from its
//! header, before its pixels are decoded, and a frame larger than the capture size is scaled
//! down ([`LumaFrame::fit_within`]) before the QR decoders see it.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Cursor};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// An 8-bit grey picture, row-major, `luma.len() == width * height`.
#[derive(Clone, PartialEq, Eq)]
pub struct LumaFrame {
    pub width: u32,
    pub height: u32,
    pub luma: Vec<u8>,
}

impl std::fmt::Debug for LumaFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never dump a megabyte of pixels into a log line.
        f.debug_struct("LumaFrame")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("luma_len", &self.luma.len())
            .finish()
    }
}

impl LumaFrame {
    /// Whether the frame has pixels and its buffer matches its dimensions. Decoders look at
    /// nothing else.
    pub fn is_well_formed(&self) -> bool {
        self.width > 0
            && self.height > 0
            && (self.width as usize).checked_mul(self.height as usize) == Some(self.luma.len())
    }

    /// Decodes a PNG or JPEG file's bytes into luma. Colour images are converted with the
    /// usual luma weights; pictures larger than [`MAX_IMAGE_SIDE`] on a side or
    /// [`MAX_IMAGE_PIXELS`] in all are refused from the header, before any pixel is decoded.
    pub fn from_image_bytes(bytes: &[u8]) -> Result<LumaFrame, String> {
        let (width, height) = image::ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|error| error.to_string())?
            .into_dimensions()
            .map_err(|error| error.to_string())?;
        if u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS {
            return Err(format!(
                "{width}x{height} is above the {MAX_IMAGE_PIXELS}-pixel limit (a 4K frame)"
            ));
        }
        let mut reader = image::ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|error| error.to_string())?;
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(MAX_IMAGE_SIDE);
        limits.max_image_height = Some(MAX_IMAGE_SIDE);
        limits.max_alloc = Some(MAX_IMAGE_ALLOC);
        reader.limits(limits);
        let picture = reader.decode().map_err(|error| error.to_string())?;
        let grey = picture.into_luma8();
        let (width, height) = grey.dimensions();
        Ok(LumaFrame {
            width,
            height,
            luma: grey.into_raw(),
        })
    }

    /// The frame scaled down by a whole factor (each output pixel the mean of a square of
    /// input pixels) so it fits `max_width` x `max_height`; the frame itself when it fits.
    /// Linear in the input's pixels: what bounds the decoders' work on an oversized frame.
    pub fn fit_within(self, max_width: u32, max_height: u32) -> LumaFrame {
        if !self.is_well_formed()
            || max_width == 0
            || max_height == 0
            || (self.width <= max_width && self.height <= max_height)
        {
            return self;
        }
        let factor = self
            .width
            .div_ceil(max_width)
            .max(self.height.div_ceil(max_height)) as usize;
        let (width, height) = (self.width as usize / factor, self.height as usize / factor);
        let source_width = self.width as usize;
        let mut luma = Vec::with_capacity(width * height);
        let area = (factor * factor) as u32;
        for y in 0..height {
            for x in 0..width {
                let mut sum = 0u32;
                for row in 0..factor {
                    let start = (y * factor + row) * source_width + x * factor;
                    sum += self.luma[start..start + factor]
                        .iter()
                        .map(|&v| u32::from(v))
                        .sum::<u32>();
                }
                luma.push((sum / area) as u8);
            }
        }
        LumaFrame {
            width: width as u32,
            height: height as u32,
            luma,
        }
    }
}

/// Largest width or height of an image file we decode.
pub const MAX_IMAGE_SIDE: u32 = 8192;
/// Most pixels of an image file we decode: a 4K frame (a gate camera is at most 4K).
pub const MAX_IMAGE_PIXELS: u64 = 3840 * 2160;
/// The capture size frames are scaled down to when the source sets none.
pub const DEFAULT_MAX_FRAME: (u32, u32) = (1920, 1080);
/// Memory the image decoder may allocate for one file.
const MAX_IMAGE_ALLOC: u64 = 256 * 1024 * 1024;
/// Longest line a scan engine may send; longer input is cut (and then fails verification).
pub const MAX_LINE_LEN: usize = 4096;

/// One thing a source saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capture {
    /// A picture for the QR decoders (a camera frame: dropped when the decoder is busy).
    Frame(LumaFrame),
    /// A picture from a spool file: one scan, never dropped; the file is finished with
    /// [`finish_spool_file`] once decided or skipped.
    SpoolFrame(LumaFrame, PathBuf),
    /// Text a hardware scan engine already decoded.
    Code(String),
}

/// What a source is, for the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceInfo {
    /// `"camera"`, `"directory"` or `"lines"`.
    pub kind: &'static str,
    /// Device path, directory or file.
    pub device: String,
    pub resolution: Option<(u32, u32)>,
    pub fps: Option<f32>,
}

/// A blocking source of captures, read by one dedicated thread.
///
/// `Ok(None)` means the source is finished for good. An `Err` is about this attempt only
/// (a camera hiccup, a directory that vanished); the caller may call again after a pause.
pub trait FrameSource: Send {
    fn info(&self) -> SourceInfo;
    fn next_capture(&mut self) -> Result<Option<Capture>, FrameError>;
}

/// Why a source could not deliver.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// No camera could be opened; the message says which device and why.
    #[error("no camera: {0}")]
    NoCamera(String),
    /// The camera was open but stopped delivering usable frames.
    #[error("camera: {0}")]
    Camera(String),
    /// A setting the source cannot honour (unknown pixel format, a path of the wrong kind).
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that is not a readable PNG or JPEG. Directory sources log and skip these.
    #[error("{}: not a readable image: {reason}", path.display())]
    Image { path: PathBuf, reason: String },
    /// A replay directory without a single `.png`, `.jpg` or `.jpeg` file.
    #[error("{}: no image files (.png, .jpg, .jpeg)", .0.display())]
    NoImages(PathBuf),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> FrameError + '_ {
    move |source| FrameError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether a directory entry is an image this source reads: `.png`, `.jpg` or `.jpeg`
/// (any case), and not hidden. Writers into a spool write `.name.tmp` and rename, so a
/// half-written file is never considered.
fn is_image_name(name: &std::ffi::OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    if name.starts_with('.') {
        return false;
    }
    let Some((_, extension)) = name.rsplit_once('.') else {
        return false;
    };
    ["png", "jpg", "jpeg"]
        .iter()
        .any(|known| extension.eq_ignore_ascii_case(known))
}

/// The image files of `dir`, in name order.
fn list_images(dir: &Path) -> Result<Vec<(OsString, PathBuf)>, FrameError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name();
        if !is_image_name(&name) {
            continue;
        }
        // Follows symlinks: a spool may hold links to the real files.
        let is_file = std::fs::metadata(entry.path())
            .map(|meta| meta.is_file())
            .unwrap_or(false);
        if is_file {
            files.push((name, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

fn read_image(path: &Path) -> Result<LumaFrame, FrameError> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    LumaFrame::from_image_bytes(&bytes).map_err(|reason| FrameError::Image {
        path: path.to_path_buf(),
        reason,
    })
}

/// Image files from a directory: a replay (tests, demo, diagnostics) or a spool.
pub struct DirectorySource {
    device: String,
    mode: Mode,
    /// The file the last frame came from.
    current: Option<PathBuf>,
    /// Size of the last frame, for the status page.
    last_resolution: Option<(u32, u32)>,
}

enum Mode {
    Replay {
        files: Vec<PathBuf>,
        next: usize,
        looped: bool,
        /// Time between frames, when paced.
        interval: Option<Duration>,
        fps: Option<f32>,
        next_due: Option<Instant>,
        /// Whether the current pass produced a frame: a looped replay of files that are all
        /// unreadable must end instead of spinning.
        yielded_this_pass: bool,
    },
    Watch {
        dir: PathBuf,
        poll: Duration,
        /// Names already yielded (or skipped) that are still in the directory.
        seen: HashSet<OsString>,
        pending: VecDeque<(OsString, PathBuf)>,
    },
}

impl std::fmt::Debug for DirectorySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectorySource")
            .field("device", &self.device)
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl DirectorySource {
    /// Plays every `.png`/`.jpg`/`.jpeg` of `dir` in name order (or the single image file
    /// `dir` names), at `fps` frames per second when given (as fast as asked otherwise), from
    /// the start again when `looped`. The file list is read once, here.
    pub fn replay(dir: &Path, fps: Option<f32>, looped: bool) -> Result<Self, FrameError> {
        let meta = std::fs::metadata(dir).map_err(io_error(dir))?;
        let files = if meta.is_file() {
            vec![dir.to_path_buf()]
        } else {
            list_images(dir)?
                .into_iter()
                .map(|(_, path)| path)
                .collect()
        };
        if files.is_empty() {
            return Err(FrameError::NoImages(dir.to_path_buf()));
        }
        let fps = fps.filter(|fps| fps.is_finite() && *fps > 0.0);
        Ok(DirectorySource {
            device: dir.display().to_string(),
            mode: Mode::Replay {
                files,
                next: 0,
                looped,
                interval: fps.map(|fps| Duration::from_secs_f32(1.0 / fps)),
                fps,
                next_due: None,
                yielded_this_pass: false,
            },
            current: None,
            last_resolution: None,
        })
    }

    /// A spool directory: yields each image file that appears in `dir` (including those
    /// already there), once, in name order, looking again every `poll`. Never finishes.
    /// Names starting with `.` are ignored, so writers write `.name.tmp` and rename it into
    /// place when complete. Finished files move into `done/` and `skipped/` below `dir`.
    pub fn watch(dir: &Path, poll: Duration) -> Result<Self, FrameError> {
        let meta = std::fs::metadata(dir).map_err(io_error(dir))?;
        if !meta.is_dir() {
            return Err(FrameError::Unsupported(format!(
                "{} is not a directory to watch",
                dir.display()
            )));
        }
        for folder in [SPOOL_DONE, SPOOL_SKIPPED] {
            let path = dir.join(folder);
            std::fs::create_dir_all(&path).map_err(io_error(&path))?;
        }
        Ok(DirectorySource {
            device: dir.display().to_string(),
            mode: Mode::Watch {
                dir: dir.to_path_buf(),
                poll: poll.max(Duration::from_millis(1)),
                seen: HashSet::new(),
                pending: VecDeque::new(),
            },
            current: None,
            last_resolution: None,
        })
    }

    /// The file the last frame came from (for diagnostics and tests).
    pub fn current_file(&self) -> Option<&Path> {
        self.current.as_deref()
    }

    fn yielded(&mut self, path: PathBuf, frame: LumaFrame) -> Result<Option<Capture>, FrameError> {
        self.last_resolution = Some((frame.width, frame.height));
        self.current = Some(path);
        Ok(Some(Capture::Frame(frame)))
    }
}

/// Where a spool's decided files go.
pub const SPOOL_DONE: &str = "done";
/// Where a spool's files that gave no decision go (unreadable, too large, no QR code).
pub const SPOOL_SKIPPED: &str = "skipped";

/// How a spool file ended.
#[derive(Debug, Clone, Copy)]
pub enum SpoolOutcome<'a> {
    /// Decided, with this code.
    Decided(&'a str),
    /// Not decided, for this reason.
    Skipped(&'a str),
}

/// Moves a finished spool file into `done/` or `skipped/` beside it (prefixed with the time,
/// so a name used again never overwrites an earlier file), and logs how it ended: every
/// file is decided once or skipped with its reason, and a restart re-reads none of them.
pub fn finish_spool_file(path: &Path, outcome: SpoolOutcome<'_>) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let folder = match outcome {
        SpoolOutcome::Decided(_) => SPOOL_DONE,
        SpoolOutcome::Skipped(_) => SPOOL_SKIPPED,
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis())
        .unwrap_or_default();
    let mut target_name = OsString::from(format!("{stamp}-"));
    target_name.push(name);
    let target = dir.join(folder).join(target_name);
    let file = path.display().to_string();
    match outcome {
        SpoolOutcome::Decided(code) => tracing::info!(file, code, "spool file decided"),
        SpoolOutcome::Skipped(reason) => tracing::warn!(file, reason, "spool file skipped"),
    }
    if let Err(error) = std::fs::rename(path, &target) {
        tracing::error!(file, error = %error, "cannot move the finished spool file out of the spool");
    }
}

/// Reads a file for a directory source; `None` when it is to be skipped (logged here).
fn read_or_skip(path: &Path) -> Option<LumaFrame> {
    match read_image(path) {
        Ok(frame) => Some(frame),
        Err(error) => {
            tracing::warn!(%error, "skipping a file that is not a readable image");
            None
        }
    }
}

impl FrameSource for DirectorySource {
    fn info(&self) -> SourceInfo {
        let fps = match &self.mode {
            Mode::Replay { fps, .. } => *fps,
            Mode::Watch { .. } => None,
        };
        SourceInfo {
            kind: "directory",
            device: self.device.clone(),
            resolution: self.last_resolution,
            fps,
        }
    }

    fn next_capture(&mut self) -> Result<Option<Capture>, FrameError> {
        loop {
            match &mut self.mode {
                Mode::Replay {
                    files,
                    next,
                    looped,
                    interval,
                    next_due,
                    yielded_this_pass,
                    ..
                } => {
                    if *next >= files.len() {
                        if !*looped || !*yielded_this_pass {
                            return Ok(None);
                        }
                        *next = 0;
                        *yielded_this_pass = false;
                    }
                    let path = files[*next].clone();
                    *next += 1;
                    let Some(frame) = read_or_skip(&path) else {
                        continue;
                    };
                    *yielded_this_pass = true;
                    if let Some(interval) = *interval {
                        let now = Instant::now();
                        let due = next_due.unwrap_or(now);
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        // Keep the cadence, but never try to catch up after a long stall.
                        *next_due = Some(due.max(now) + interval);
                    }
                    return self.yielded(path, frame);
                }
                Mode::Watch {
                    dir,
                    poll,
                    seen,
                    pending,
                } => {
                    if let Some((_, path)) = pending.pop_front() {
                        match read_image(&path) {
                            Ok(frame) => {
                                self.last_resolution = Some((frame.width, frame.height));
                                self.current = Some(path.clone());
                                return Ok(Some(Capture::SpoolFrame(frame, path)));
                            }
                            Err(error) => {
                                finish_spool_file(&path, SpoolOutcome::Skipped(&error.to_string()));
                                continue;
                            }
                        }
                    }
                    let listed = list_images(dir)?;
                    // Forget names that left the directory, so the set stays as small as the
                    // spool (and a name that comes back is new again).
                    let present: HashSet<&OsString> = listed.iter().map(|(name, _)| name).collect();
                    seen.retain(|name| present.contains(name));
                    for (name, path) in listed {
                        if seen.insert(name.clone()) {
                            pending.push_back((name, path));
                        }
                    }
                    if pending.is_empty() {
                        std::thread::sleep(*poll);
                    }
                }
            }
        }
    }
}

/// Codes typed by a hardware scan engine: one per line, from a device path or stdin.
pub struct LineSource {
    reader: Box<dyn BufRead + Send>,
    device: String,
    finished: bool,
}

impl std::fmt::Debug for LineSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineSource")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl LineSource {
    pub fn new(reader: Box<dyn BufRead + Send>, device: String) -> Self {
        LineSource {
            reader,
            device,
            finished: false,
        }
    }

    /// Opens a device path (a serial or HID line device, or a file); `-` is stdin.
    pub fn open(path: &Path) -> Result<Self, FrameError> {
        if path == Path::new("-") {
            return Ok(LineSource::new(
                Box::new(BufReader::new(std::io::stdin())),
                "stdin".to_owned(),
            ));
        }
        let file = std::fs::File::open(path).map_err(io_error(path))?;
        Ok(LineSource::new(
            Box::new(BufReader::new(file)),
            path.display().to_string(),
        ))
    }

    /// Reads one line (without its terminator), keeping at most [`MAX_LINE_LEN`] bytes of
    /// it; `None` at end of input.
    fn read_line(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut line = Vec::new();
        let mut read_any = false;
        loop {
            let available = match self.reader.fill_buf() {
                Ok(available) => available,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            if available.is_empty() {
                return Ok(read_any.then_some(line));
            }
            read_any = true;
            let (chunk, used, complete) = match available.iter().position(|b| *b == b'\n') {
                Some(end) => (&available[..end], end + 1, true),
                None => (available, available.len(), false),
            };
            let room = MAX_LINE_LEN.saturating_sub(line.len());
            line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            self.reader.consume(used);
            if complete {
                return Ok(Some(line));
            }
        }
    }
}

impl FrameSource for LineSource {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            kind: "lines",
            device: self.device.clone(),
            resolution: None,
            fps: None,
        }
    }

    fn next_capture(&mut self) -> Result<Option<Capture>, FrameError> {
        while !self.finished {
            let line = self.read_line().map_err(|source| FrameError::Io {
                path: PathBuf::from(&self.device),
                source,
            })?;
            let Some(line) = line else {
                self.finished = true;
                break;
            };
            // A scan engine may send bytes that are not UTF-8; they become a code that fails
            // verification rather than an error that stops the source.
            let text = String::from_utf8_lossy(&line);
            let code = text.trim();
            if !code.is_empty() {
                return Ok(Some(Capture::Code(code.to_owned())));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, width: u32, height: u32, shade: u8) {
        let picture = image::GrayImage::from_pixel(width, height, image::Luma([shade]));
        picture.save(path).expect("write png");
    }

    fn frame_of(capture: Option<Capture>) -> LumaFrame {
        match capture {
            Some(Capture::Frame(frame) | Capture::SpoolFrame(frame, _)) => frame,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn replay_yields_images_in_name_order_and_skips_corrupt_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_png(&dir.path().join("b.png"), 3, 2, 20);
        write_png(&dir.path().join("a.png"), 4, 2, 10);
        std::fs::write(dir.path().join("c.png"), b"not a png at all").expect("write");
        image::RgbImage::from_pixel(2, 2, image::Rgb([200, 200, 200]))
            .save(dir.path().join("d.JPG"))
            .expect("write jpeg");
        std::fs::write(dir.path().join("notes.txt"), b"ignored").expect("write");
        write_png(&dir.path().join(".hidden.png"), 1, 1, 0);

        let mut source = DirectorySource::replay(dir.path(), None, false).expect("replay");
        let first = frame_of(source.next_capture().expect("a"));
        assert_eq!((first.width, first.height, first.luma[0]), (4, 2, 10));
        assert_eq!(
            source.current_file(),
            Some(dir.path().join("a.png").as_path())
        );
        let second = frame_of(source.next_capture().expect("b"));
        assert_eq!((second.width, second.luma[0]), (3, 20));
        // c.png is corrupt: skipped, not an error.
        let third = frame_of(source.next_capture().expect("d"));
        assert_eq!((third.width, third.height), (2, 2));
        assert!(
            third.luma.iter().all(|v| (195..=205).contains(v)),
            "{:?}",
            third.luma
        );
        assert!(source.next_capture().expect("end").is_none());
        assert!(source.next_capture().expect("still the end").is_none());
        let info = source.info();
        assert_eq!((info.kind, info.resolution), ("directory", Some((2, 2))));
    }

    #[test]
    fn replay_of_one_file_loops_and_paces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("only.png");
        write_png(&file, 2, 2, 7);
        let mut source = DirectorySource::replay(&file, Some(100.0), true).expect("replay");
        let started = Instant::now();
        for _ in 0..4 {
            assert_eq!(frame_of(source.next_capture().expect("frame")).luma[0], 7);
        }
        // Four frames at 100 fps: the first at once, then three 10 ms intervals.
        assert!(
            started.elapsed() >= Duration::from_millis(29),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn looped_replay_of_only_corrupt_files_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("bad.png"), b"junk").expect("write");
        let mut source = DirectorySource::replay(dir.path(), None, true).expect("replay");
        assert!(source.next_capture().expect("end").is_none());
    }

    #[test]
    fn replay_refuses_a_directory_without_images_and_a_missing_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            DirectorySource::replay(dir.path(), None, false),
            Err(FrameError::NoImages(_))
        ));
        assert!(matches!(
            DirectorySource::replay(&dir.path().join("missing"), None, false),
            Err(FrameError::Io { .. })
        ));
    }

    /// The next capture of a source that never ends, or a panic after a few seconds (a
    /// watch test must fail, not hang).
    fn next_within(source: DirectorySource) -> (DirectorySource, LumaFrame) {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut source = source;
            let capture = source.next_capture().expect("capture");
            let _ = sender.send((source, capture));
        });
        let (source, capture) = receiver
            .recv_timeout(Duration::from_secs(10))
            .expect("the watch source yielded nothing within 10 s");
        (source, frame_of(capture))
    }

    fn png_bytes(shade: u8) -> Vec<u8> {
        let mut bytes = Vec::new();
        image::GrayImage::from_pixel(2, 2, image::Luma([shade]))
            .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
            .expect("encode png");
        bytes
    }

    #[test]
    fn watch_yields_each_renamed_in_file_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_png(&dir.path().join("001.png"), 2, 2, 1);
        let source = DirectorySource::watch(dir.path(), Duration::from_millis(5)).expect("watch");
        let (source, first) = next_within(source);
        assert_eq!(first.luma[0], 1);

        // A writer still writing: only a hidden temporary file, half a PNG so far.
        let temporary = dir.path().join(".002.png.tmp");
        let complete = png_bytes(2);
        std::fs::write(&temporary, &complete[..complete.len() / 2]).expect("write tmp");
        let finished = dir.path().join("002.png");
        let writer = {
            let (temporary, finished) = (temporary.clone(), finished.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                std::fs::write(&temporary, &complete).expect("finish tmp");
                std::fs::rename(&temporary, &finished).expect("rename");
            })
        };
        let (source, second) = next_within(source);
        assert_eq!(second.luma[0], 2);
        assert_eq!(source.current_file(), Some(finished.as_path()));
        writer.join().expect("writer");

        // 002.png is not yielded again: the next frame is the next new file.
        std::fs::write(dir.path().join("003.png"), png_bytes(3)).expect("write");
        let (_, third) = next_within(source);
        assert_eq!(third.luma[0], 3);
    }

    #[test]
    fn finished_spool_files_move_out_and_a_new_watch_reads_none_of_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_png(&dir.path().join("001.png"), 2, 2, 1);
        std::fs::write(dir.path().join("002.png"), b"not a png").expect("write");
        write_png(&dir.path().join("003.png"), 2, 2, 3);
        let source = DirectorySource::watch(dir.path(), Duration::from_millis(5)).expect("watch");
        // 002 is unreadable: skipped (moved out) by the source itself, never yielded.
        let (source, first) = next_within(source);
        assert_eq!(first.luma[0], 1);
        let (source, third) = next_within(source);
        assert_eq!(third.luma[0], 3);
        let first_path = dir.path().join("001.png");
        finish_spool_file(&first_path, SpoolOutcome::Decided("SUCCESS"));
        assert!(!first_path.exists());
        let names = |folder: &str| -> Vec<String> {
            std::fs::read_dir(dir.path().join(folder))
                .expect("folder")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        };
        assert!(names(SPOOL_DONE).iter().any(|n| n.ends_with("-001.png")));
        assert!(names(SPOOL_SKIPPED).iter().any(|n| n.ends_with("-002.png")));
        drop(source);
        // After a restart only the file still in flight (003, not finished) is read again.
        let source = DirectorySource::watch(dir.path(), Duration::from_millis(5)).expect("watch");
        let (mut source, again) = next_within(source);
        assert_eq!(again.luma[0], 3);
        assert_eq!(
            source.current_file(),
            Some(dir.path().join("003.png").as_path())
        );
        let _ = &mut source;
    }

    #[test]
    fn oversized_images_are_refused_from_the_header_and_large_frames_scaled() {
        // 4000 x 2200 is above the 4K pixel budget: refused before the pixels are decoded.
        let mut bytes = Vec::new();
        image::GrayImage::new(4000, 2200)
            .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
            .expect("encode");
        let error = LumaFrame::from_image_bytes(&bytes).expect_err("too large");
        assert!(error.contains("4000x2200"), "{error}");

        let frame = LumaFrame {
            width: 8,
            height: 4,
            luma: (0..32).map(|i| (i % 8) as u8 * 10).collect(),
        };
        let cases = [
            ((8, 4), (8, 4)),
            ((4, 4), (4, 2)),
            ((3, 3), (2, 1)),
            ((100, 1), (2, 1)),
        ];
        for ((max_w, max_h), (w, h)) in cases {
            let scaled = frame.clone().fit_within(max_w, max_h);
            assert_eq!((scaled.width, scaled.height), (w, h), "fit {max_w}x{max_h}");
            assert!(scaled.is_well_formed());
        }
        // each output pixel is the mean of its square: columns 0,1 -> (0 + 10) / 2
        assert_eq!(frame.fit_within(4, 4).luma[0], 5);
    }

    #[test]
    fn line_source_yields_trimmed_non_empty_lines_then_ends() {
        let input = b"  first \r\n\n   \nsecond\nbad\xffbytes\nlast-without-newline".to_vec();
        let mut source = LineSource::new(Box::new(Cursor::new(input)), "test".into());
        let mut codes = Vec::new();
        while let Some(capture) = source.next_capture().expect("line") {
            match capture {
                Capture::Code(code) => codes.push(code),
                Capture::Frame(_) | Capture::SpoolFrame(..) => panic!("a line source yields codes"),
            }
        }
        assert_eq!(
            codes,
            vec![
                "first",
                "second",
                "bad\u{fffd}bytes",
                "last-without-newline"
            ]
        );
        assert!(source.next_capture().expect("after the end").is_none());
        assert_eq!(source.info().kind, "lines");
    }

    #[test]
    fn an_endless_line_is_cut() {
        let input = format!("{}\nnext\n", "x".repeat(MAX_LINE_LEN * 3));
        let reader = BufReader::with_capacity(64, Cursor::new(input.into_bytes()));
        let mut source = LineSource::new(Box::new(reader), "test".into());
        let Some(Capture::Code(long)) = source.next_capture().expect("long") else {
            panic!("expected a code");
        };
        assert_eq!(long.len(), MAX_LINE_LEN);
        assert_eq!(
            source.next_capture().expect("next"),
            Some(Capture::Code("next".into()))
        );
    }

    #[test]
    fn frame_well_formedness() {
        let frame = |width, height, len| LumaFrame {
            width,
            height,
            luma: vec![0; len],
        };
        assert!(frame(2, 3, 6).is_well_formed());
        assert!(!frame(0, 0, 0).is_well_formed());
        assert!(!frame(2, 3, 5).is_well_formed());
        assert!(!frame(u32::MAX, u32::MAX, 1).is_well_formed());
    }
}
