//! TeleCMI: unsigned webhooks authenticated by a secret path token (and optionally the source
//! address), live leg events and CDRs, recordings named by CDRs.

pub mod apply;
pub mod events;
pub mod routes;
