//! TeleCMI: unsigned webhooks authenticated by a secret path token (and optionally the source
//! address), live leg events and CDRs, recordings named by CDRs.

pub mod apply;
pub mod events;
pub mod routes;

/// The `api` label of TeleCMI's `/play` (recording downloads) in
/// `callhook_upstream_requests_total`.
pub const PLAY_API: crate::outbound::Api = crate::outbound::Api::new("telecmi_play");

/// Every TeleCMI `api` label, registered at zero at start.
pub const API_LABELS: &[crate::outbound::Api] = &[PLAY_API];
