//! `edge-agent`: the gate daemon. Camera frames (or image files, or a hardware scan engine's
//! lines) in; a green or red decision out in well under a second; every decision durable in
//! SQLite; nothing redeemed twice; nothing lost while the uplink is down.
//!
//! The folders follow the pipeline: [`capture`] (frame sources and QR decoders) →
//! [`decide`] (the gate's state and the decision stages) → [`store`] (the SQLite store) and
//! [`uplink`] (the central's API, the link state, sync); [`peers`] (the other gates of the
//! venue over the LAN); [`pages`] (status page, gate display, local API); [`config`] (settings), [`cli`] (the command line), [`metrics`], [`daemon`] (wiring and
//! lifecycle).

pub mod capture;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod decide;
pub mod metrics;
pub mod pages;
pub mod peers;
pub mod store;
pub mod uplink;
