//! Reconciliation as a provider capability (SPEC §8): a provider that can say who is on its
//! calls gives a [`Reconcile`]. The daemon runs it beside serving (start-up, interval, what it
//! decides itself), `POST /api/reconcile` asks it for one run now, and `/readyz` shows its last.
//! What a run changes goes through the journal and the processor like any event.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::calls::Provider;

/// How a run went, also the `outcome` label of `callhook_reconcile_runs_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The snapshot was read and applied (or there was nothing to change).
    Ok,
    /// The API was unavailable or answered something unusable: tried again next interval.
    Failed,
    /// The API refused the snapshot (403/404): off until the next start.
    Refused,
    /// Not run: reconciliation is off (refused earlier, or turned off).
    Off,
}

impl Outcome {
    /// The label values counted, registered at zero (`Off` is no run).
    pub const COUNTED: [Outcome; 3] = [Outcome::Ok, Outcome::Failed, Outcome::Refused];
    pub const CHANGES: [&'static str; 3] = ["added", "removed", "ended"];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
            Outcome::Off => "off",
        }
    }
}

/// One run, as the admin API answers it and `/readyz` shows the last.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub provider: Provider,
    pub outcome: Outcome,
    /// When the snapshot was asked for (or the run refused).
    pub at: DateTime<Utc>,
    /// Participants added from the snapshot, participants removed, calls ended `reconciled`.
    pub added: usize,
    pub removed: usize,
    pub calls_ended: usize,
    /// The journal row the snapshot was kept as; none when it changed nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub journal_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Report {
    pub fn nothing(provider: Provider, outcome: Outcome, error: Option<String>) -> Report {
        Report {
            provider,
            outcome,
            at: Utc::now(),
            added: 0,
            removed: 0,
            calls_ended: 0,
            journal_id: None,
            error,
        }
    }

    /// `ok: 1 added, 2 removed, 1 call ended` (or the reason), for a person.
    pub fn summary(&self) -> String {
        match (&self.error, self.outcome) {
            (Some(error), outcome) => format!("{}: {error}", outcome.as_str()),
            (None, outcome) => format!(
                "{}: {} added, {} removed, {} {} ended",
                outcome.as_str(),
                self.added,
                self.removed,
                self.calls_ended,
                if self.calls_ended == 1 {
                    "call"
                } else {
                    "calls"
                }
            ),
        }
    }
}

/// A provider's reconciler.
pub trait Reconcile: Send + Sync {
    fn provider(&self) -> Provider;

    /// Its own runs until `stop` (none when the provider's setting turns them off).
    fn run(self: Arc<Self>, stop: CancellationToken) -> BoxFuture<'static, ()>;

    /// One run now, after any in progress; never an error, the report says what happened.
    fn run_now(&self) -> BoxFuture<'_, Report>;

    /// The last run's time and result (or why there is none), for `/readyz`.
    fn last_run(&self) -> serde_json::Value;
}
