//! The agent's local listener: the technician's status page, the gate display and the
//! machine endpoints ([`status`]), the venue's occupancy chart on the status page
//! ([`chart`]), and who may change the gate through them ([`access`]).

pub mod access;
pub mod chart;
pub mod status;
