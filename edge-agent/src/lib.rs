//! `edge-agent`: the gate daemon. Camera frames (or image files, or a hardware scan engine's
//! lines) in; a green or red decision out in well under a second; every decision durable in
//! SQLite; nothing redeemed twice; nothing lost while the uplink is down.
//!
//! Layout: [`config`] (settings), [`frames`] (frame sources), [`decode`] (QR decoders),
//! [`store`] (the SQLite store), [`central`] (the central server's API), [`engine`] (the
//! decision: local checks, online, offline), [`session`] (the operator and what the gate
//! display shows), [`uplink`] (link states and the probe), [`metrics`], [`sync`] (keys,
//! ticket feed, uploads),
//! [`status`] (the technician's status page, the gate display, metrics), [`daemon`] (wiring
//! and lifecycle).

pub mod access;
#[cfg(feature = "camera")]
pub mod camera;
pub mod central;
pub mod config;
pub mod daemon;
pub mod decode;
pub mod engine;
pub mod frames;
pub mod metrics;
pub mod session;
pub mod status;
pub mod store;
pub mod sync;
pub mod uplink;
