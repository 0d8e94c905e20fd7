//! The V4L2 camera source (cargo feature `camera`): nokhwa opens `/dev/videoN` with the
//! configured resolution, frame rate and pixel format, and each frame becomes luma without a
//! detour through RGB: YUYV keeps its Y bytes, MJPEG is decoded straight to grey.
//!
//! Opening fails with [`FrameError::NoCamera`] and a message a technician can act on (which
//! device, what the kernel said, the `video` group), so the daemon starts without a camera
//! and says so instead of crashing.

use crate::capture::frames::{Capture, FrameError, FrameSource, LumaFrame, SourceInfo};
use nokhwa::backends::capture::V4LCaptureDevice;
use nokhwa::camera_traits::CaptureBackendTrait;
use nokhwa::utils::{CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType};
use std::path::PathBuf;

/// Consecutive unusable frames (corrupt MJPEG, short buffers) after which the source reports
/// an error instead of silently trying forever.
const MAX_BAD_FRAMES_IN_A_ROW: u32 = 30;

/// A V4L2 camera. nokhwa's V4L2 device is used directly rather than through its `Camera`
/// wrapper, which is not `Send` (it boxes a backend trait object) and whose `Drop` unwraps.
pub struct CameraSource {
    camera: V4LCaptureDevice<'static>,
    format: FrameFormat,
    info: SourceInfo,
    bad_frames: u32,
}

impl std::fmt::Debug for CameraSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CameraSource")
            .field("info", &self.info)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

/// Parses the configured pixel format.
fn frame_format(format: &str) -> Result<FrameFormat, FrameError> {
    match format.to_ascii_lowercase().as_str() {
        "mjpeg" | "mjpg" => Ok(FrameFormat::MJPEG),
        "yuyv" => Ok(FrameFormat::YUYV),
        other => Err(FrameError::Unsupported(format!(
            "camera pixel format {other:?} (use \"mjpeg\" or \"yuyv\")"
        ))),
    }
}

impl CameraSource {
    /// Opens `/dev/video{device_index}` at the closest mode to `width`×`height` at `fps` in
    /// `format` (`"mjpeg"` or `"yuyv"`), and starts streaming.
    pub fn open(
        device_index: u32,
        width: u32,
        height: u32,
        fps: u32,
        format: &str,
    ) -> Result<Self, FrameError> {
        let fourcc = frame_format(format)?;
        let device = PathBuf::from(format!("/dev/video{device_index}"));
        if !device.exists() {
            return Err(FrameError::NoCamera(format!(
                "{} does not exist: is the camera plugged in (see `ls /dev/video*`)?",
                device.display()
            )));
        }
        let no_camera = |what: &str, error: nokhwa::NokhwaError| {
            FrameError::NoCamera(format!(
                "{} {what}: {error} (is another program using it, and is this user in group `video`?)",
                device.display()
            ))
        };
        let wanted = [fourcc];
        let requested = RequestedFormat::with_formats(
            RequestedFormatType::Closest(CameraFormat::new_from(width, height, fourcc, fps)),
            &wanted,
        );
        let mut camera = V4LCaptureDevice::new(&CameraIndex::Index(device_index), requested)
            .map_err(|error| no_camera("cannot be opened", error))?;
        camera
            .open_stream()
            .map_err(|error| no_camera("cannot start streaming", error))?;
        let actual = camera.camera_format();
        let info = SourceInfo {
            kind: "camera",
            device: device.display().to_string(),
            resolution: Some((actual.width(), actual.height())),
            fps: Some(actual.frame_rate() as f32),
        };
        tracing::info!(
            device = %info.device,
            width = actual.width(),
            height = actual.height(),
            fps = actual.frame_rate(),
            format = %actual.format(),
            "camera streaming"
        );
        Ok(CameraSource {
            camera,
            format: actual.format(),
            info,
            bad_frames: 0,
        })
    }
}

/// Turns one raw camera buffer into luma.
fn to_luma(format: FrameFormat, width: u32, height: u32, data: &[u8]) -> Result<LumaFrame, String> {
    let pixels = (width as usize)
        .checked_mul(height as usize)
        .filter(|pixels| *pixels > 0)
        .ok_or_else(|| format!("frame size {width}x{height}"))?;
    let luma = match format {
        // Y0 U Y1 V: every even byte is a luma sample.
        FrameFormat::YUYV => {
            let bytes = data
                .get(..pixels * 2)
                .ok_or_else(|| format!("short YUYV frame: {} bytes", data.len()))?;
            bytes.iter().step_by(2).copied().collect()
        }
        // NV12 and GRAY start with the full-resolution luma plane.
        FrameFormat::NV12 | FrameFormat::GRAY => data
            .get(..pixels)
            .ok_or_else(|| format!("short {format} frame: {} bytes", data.len()))?
            .to_vec(),
        // The JPEG knows its own size; zune-jpeg copes with MJPEG's missing Huffman tables.
        FrameFormat::MJPEG => return LumaFrame::from_image_bytes(data),
        FrameFormat::RAWRGB | FrameFormat::RAWBGR => {
            return Err(format!("pixel format {format} is not supported"));
        }
    };
    Ok(LumaFrame {
        width,
        height,
        luma,
    })
}

impl FrameSource for CameraSource {
    fn info(&self) -> SourceInfo {
        self.info.clone()
    }

    fn next_capture(&mut self) -> Result<Option<Capture>, FrameError> {
        loop {
            let buffer = self
                .camera
                .frame()
                .map_err(|error| FrameError::Camera(format!("{}: {error}", self.info.device)))?;
            let resolution = buffer.resolution();
            match to_luma(
                self.format,
                resolution.width(),
                resolution.height(),
                buffer.buffer(),
            ) {
                Ok(frame) => {
                    self.bad_frames = 0;
                    return Ok(Some(Capture::Frame(frame)));
                }
                Err(reason) => {
                    self.bad_frames += 1;
                    tracing::debug!(device = %self.info.device, %reason, "dropping an unusable camera frame");
                    if self.bad_frames >= MAX_BAD_FRAMES_IN_A_ROW {
                        self.bad_frames = 0;
                        return Err(FrameError::Camera(format!(
                            "{}: {MAX_BAD_FRAMES_IN_A_ROW} unusable frames in a row, the last: {reason}",
                            self.info.device
                        )));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuyv_keeps_the_y_bytes() {
        let data = [10, 200, 20, 100, 30, 200, 40, 100];
        let frame = to_luma(FrameFormat::YUYV, 2, 2, &data).expect("yuyv");
        assert_eq!(frame.luma, vec![10, 20, 30, 40]);
        assert!(to_luma(FrameFormat::YUYV, 4, 2, &data).is_err());
        assert!(to_luma(FrameFormat::YUYV, 0, 2, &data).is_err());
    }

    #[test]
    fn mjpeg_decodes_to_grey() {
        let mut jpeg = Vec::new();
        image::GrayImage::from_pixel(16, 8, image::Luma([90]))
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .expect("encode");
        let frame = to_luma(FrameFormat::MJPEG, 16, 8, &jpeg).expect("mjpeg");
        assert_eq!((frame.width, frame.height), (16, 8));
        assert!(frame.luma.iter().all(|v| v.abs_diff(90) <= 2));
        assert!(to_luma(FrameFormat::MJPEG, 16, 8, b"not a jpeg").is_err());
    }

    #[test]
    fn unknown_formats_and_missing_devices_are_clear_errors() {
        assert!(matches!(
            CameraSource::open(0, 640, 480, 30, "h264"),
            Err(FrameError::Unsupported(_))
        ));
        match CameraSource::open(250, 640, 480, 30, "yuyv") {
            Err(FrameError::NoCamera(message)) => {
                assert!(message.contains("/dev/video250"), "{message}")
            }
            other => panic!("expected NoCamera, got {:?}", other.map(|_| ())),
        }
    }
}
