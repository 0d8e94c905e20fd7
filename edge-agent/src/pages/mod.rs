//! The agent's local listener: the technician's status page, the gate display and the
//! machine endpoints ([`status`]), and who may change the gate through them ([`access`]).

pub mod access;
pub mod status;
