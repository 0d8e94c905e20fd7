//! The uplink: the central's API as the gate uses it ([`central`]), the link's state as
//! every call sees it ([`link`]), and keeping in step with the central ([`sync`]: keys,
//! operators, the ticket feed, uploads, the history check, and the probe of a bad link),
//! and the gate's credential at start ([`enroll`]: a configured secret or a one-time code).

pub mod central;
pub mod enroll;
pub mod link;
pub mod sync;
