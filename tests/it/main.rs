//! Every integration test in one binary (one link instead of one per file, so touching a source
//! file rebuilds the suite in a fraction of the time). `tests/lookup_backlog.rs` stays apart: it
//! asserts on process-wide metrics that other tests in this process would move.
// Test and benchmark clients talk to loopback servers of their own and build reqwest clients
// directly; the daemon's own go through `callhook::outbound` (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod common;

mod browse;
mod browser;
mod cli;
mod config;
mod crash;
mod delivery_faults;
mod events_out;
mod faults;
mod history;
mod ingest;
mod jas_webhooks;
mod lifecycle;
mod listener;
mod observability;
mod page;
mod properties;
mod readme;
mod reconcile;
mod recordings;
mod seam;
mod stream;
mod systemd;
mod telecmi;
