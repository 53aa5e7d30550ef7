//! callhook: a self-hosted receiver for JAS Connect (3CX) and TeleCMI telephony webhooks.
//! The event path is verify → parse → journal → ack → apply; see ARCHITECTURE.md.
#![forbid(unsafe_code)]

mod admin_cli;
pub mod app;
pub mod calls;
pub mod cli;
pub mod config;
pub mod demo;
pub mod events;
pub mod http;
pub mod journal;
pub mod metrics;
pub mod outbound;
pub mod processor;
pub mod providers;
pub mod recordings;
pub mod sim;
pub mod systemd;
pub mod telemetry;
