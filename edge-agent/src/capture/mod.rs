//! Capture: where the gate's pictures (or already-decoded codes) come from, and the QR
//! decoders that read them. [`frames`] has the `FrameSource` trait with the spool, replay
//! and scan-engine sources (and the frame bounds), [`camera`] the V4L2 camera (cargo
//! feature `camera`), [`decode`] the decoders and their cascade.

#[cfg(feature = "camera")]
pub mod camera;
pub mod decode;
pub mod frames;
