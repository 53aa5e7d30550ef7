//! Reconciliation with the JAS call-control snapshot (SPEC §8): `GET /api/callcontrol` after
//! start-up, every `jas.reconcile_secs`, when asked, and a few seconds after a sequence gap.
//! A snapshot that would change something is journaled (provider `jas`, name `snapshot`) and
//! applied by the processor like any event (`SnapshotEvent`), through `CallTable::apply_snapshot`,
//! so a restart or replay gives the same result; one that would change nothing is only logged.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::apply::details_from;
use super::client::{DnState, JasClient, JasError};
use super::gaps::{GAP_PAUSE, Gaps};
use crate::calls::{CallKey, CallTable, ParticipantKey, Provider, Repair, Snapshot};
use crate::journal::{Appended, Journal, NewEvent, StoredEvent};
use crate::providers::reconcile::{Outcome, Reconcile, Report};
use crate::providers::{Apply, Event, Wants};

/// The journal row's `name`.
pub const SNAPSHOT: &str = "snapshot";
/// How long a run waits for the processor to apply the snapshot it journaled.
const APPLIED_WITHIN: Duration = Duration::from_secs(10);

/// A snapshot as journaled: when it was asked for, and the DNs as the API described them
/// (their participants in the lookup's shape; `devices` left out).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotBody {
    /// In whole milliseconds, as the journal keeps `received_at`.
    pub requested_at: DateTime<Utc>,
    pub callcontrol: Vec<DnState>,
}

impl SnapshotBody {
    /// The table's view of it: each participant keyed as its webhooks name it
    /// (`/callcontrol/{dn}/participants/{id}`), with the details a lookup would give.
    pub fn snapshot(&self) -> Snapshot {
        let mut participants: Vec<(ParticipantKey, crate::calls::Details)> = vec![];
        for entry in &self.callcontrol {
            for p in &entry.participants {
                let dn = if entry.dn.is_empty() {
                    &p.dn
                } else {
                    &entry.dn
                };
                if dn.is_empty() || p.id.is_empty() {
                    continue;
                }
                let key = ParticipantKey::new(Provider::Jas, dn.as_str(), p.id.as_str());
                if participants.iter().all(|(k, _)| *k != key) {
                    let details = details_from(&key, p.clone());
                    participants.push((key, details));
                }
            }
        }
        Snapshot {
            provider: Provider::Jas,
            requested_at: self.requested_at,
            participants,
        }
    }
}

/// A journal row named `snapshot` that callhook wrote (a webhook body always has `eventName`:
/// a JAS event of that name is decoded as the unknown event it is).
pub fn decode_row(row: &StoredEvent) -> Option<Result<SnapshotBody, String>> {
    if row.name != SNAPSHOT {
        return None;
    }
    let value: Value = serde_json::from_slice(&row.body).ok()?;
    if value.get("eventName").is_some() {
        return None;
    }
    Some(serde_json::from_value(value).map_err(|e| format!("snapshot row: {e}")))
}

/// What the processor's application of a snapshot reports back to the run that journaled it.
pub type Applied = broadcast::Sender<(i64, Repair)>;

/// A journaled snapshot, applied in journal order.
pub struct SnapshotEvent {
    pub(super) snapshot: Snapshot,
    pub(super) applied: Applied,
}

impl Event for SnapshotEvent {
    /// A participant it lists may live only on disk (a tombstone of an ended call): loaded
    /// first, so it is not added again; so is the call a new one would join.
    fn wants(&self, table: &CallTable, wants: &mut Wants) {
        for (key, details) in &self.snapshot.participants {
            if !table.has_participant(key) {
                wants.participants.push(key.clone());
                wants
                    .calls
                    .push(CallKey::new(Provider::Jas, details.call_id.as_str()));
            }
        }
    }

    fn apply(self: Box<Self>, ctx: &mut Apply<'_>) {
        let (changes, repair) = ctx.table.apply_snapshot(&self.snapshot, ctx.now);
        ctx.note(changes);
        tracing::debug!(
            journal_id = ctx.journal_id,
            added = repair.added.len(),
            removed = repair.removed.len(),
            calls_ended = repair.ended.len(),
            "snapshot applied"
        );
        // Nobody listens when it is replayed at start-up.
        let _ = self.applied.send((ctx.journal_id, repair));
    }
}

/// The JAS reconciler: its runs, one at a time, and what the last one did.
pub struct Reconciler {
    client: JasClient,
    journal: Journal,
    table: Arc<CallTable>,
    /// `jas.reconcile_secs`; `None`: no runs of its own (one asked for still runs).
    every: Option<Duration>,
    gaps: Arc<Gaps>,
    applied: Applied,
    /// One run at a time, whoever asks; a tokio Mutex, since a run awaits the API.
    running: tokio::sync::Mutex<()>,
    /// A std Mutex: held for a copy, never across an `.await`.
    status: Mutex<Status>,
}

#[derive(Default)]
struct Status {
    /// Why runs are off until the next start (the API refused the snapshot).
    refused: Option<String>,
    last: Option<Report>,
    /// When the last run asked for its snapshot, for the pause between gap runs.
    last_started: Option<Instant>,
}

impl Reconciler {
    pub fn new(
        client: JasClient,
        journal: Journal,
        table: Arc<CallTable>,
        every: Option<Duration>,
        gaps: Arc<Gaps>,
        applied: Applied,
    ) -> Reconciler {
        Reconciler {
            client,
            journal,
            table,
            every,
            gaps,
            applied,
            running: tokio::sync::Mutex::new(()),
            status: Mutex::new(Status::default()),
        }
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The start-up run at once, then one every `every`, and one for a gap that stays open
    /// (never sooner than `GAP_PAUSE` after the last run).
    async fn run_loop(self: Arc<Self>, stop: CancellationToken, every: Duration) {
        let mut next = tokio::time::Instant::now();
        let mut trigger = "start-up";
        loop {
            let gap = self.gaps.due().map(|due| {
                let paused = self
                    .status()
                    .last_started
                    .map_or(due, |last| due.max(last + GAP_PAUSE));
                tokio::time::Instant::from_std(paused)
            });
            let wake = gap.map_or(next, |gap| gap.min(next));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.gaps.opened() => continue,
                _ = tokio::time::sleep_until(wake) => {}
            }
            let periodic = tokio::time::Instant::now() >= next;
            let why = if periodic { trigger } else { "sequence gap" };
            tokio::select! {
                _ = stop.cancelled() => return,
                report = self.run_once(why) => {
                    if report.outcome == Outcome::Off || report.outcome == Outcome::Refused {
                        return;
                    }
                }
            }
            if periodic {
                next = tokio::time::Instant::now() + every;
                trigger = "interval";
            }
        }
    }

    /// One run: ask for the snapshot, journal it when it changes something, wait for the
    /// processor to apply it, log and count.
    async fn run_once(&self, trigger: &'static str) -> Report {
        let _one = self.running.lock().await;
        if let Some(why) = self.status().refused.clone() {
            return Report::nothing(Provider::Jas, Outcome::Off, Some(why));
        }
        let started = Instant::now();
        self.status().last_started = Some(started);
        self.gaps.covered(started);
        let requested_at = now_ms();
        let report = match self.client.callcontrol().await {
            Ok(dns) => self.repair(requested_at, dns, trigger).await,
            Err(e @ (JasError::Forbidden | JasError::NotFound)) => {
                let why = format!("{e}; off until the next start");
                tracing::warn!(provider = "jas", error = %e, trigger,
                    "the JAS API refused the call-control snapshot; reconciliation is off until the next start");
                self.status().refused = Some(why.clone());
                failed(requested_at, Outcome::Refused, why)
            }
            Err(e) => {
                tracing::warn!(provider = "jas", error = %e, trigger,
                    "call-control snapshot failed; reconciliation tries again at the next interval");
                failed(requested_at, Outcome::Failed, e.to_string())
            }
        };
        metrics::counter!("callhook_reconcile_runs_total", "provider" => "jas",
            "outcome" => report.outcome.as_str())
        .increment(1);
        self.status().last = Some(report.clone());
        report
    }

    async fn repair(
        &self,
        requested_at: DateTime<Utc>,
        callcontrol: Vec<DnState>,
        trigger: &'static str,
    ) -> Report {
        let body = SnapshotBody {
            requested_at,
            callcontrol,
        };
        let snapshot = body.snapshot();
        let listed = snapshot.participants.len();
        let plan = self.table.snapshot_plan(&snapshot);
        let mut report = Report {
            at: requested_at,
            ..Report::nothing(Provider::Jas, Outcome::Ok, None)
        };
        if !plan.is_empty() {
            let mut applied = self.applied.subscribe();
            let appended = self
                .journal
                .append(NewEvent {
                    provider: Provider::Jas.as_str(),
                    name: SNAPSHOT.to_string(),
                    dedupe_key: format!(
                        "snapshot:{}:{:016x}",
                        requested_at.timestamp_millis(),
                        rand::random::<u64>()
                    ),
                    content_type: None,
                    body: serde_json::to_vec(&body).unwrap_or_default().into(),
                    received_at: Utc::now(),
                })
                .await;
            let id = match appended {
                Ok(Appended::Accepted(id)) => id,
                Ok(Appended::Duplicate) => unreachable!("a snapshot's dedupe key is its own"),
                Err(e) => {
                    tracing::warn!(provider = "jas", error = %e, trigger,
                        "call-control snapshot not journaled; reconciliation tries again at the next interval");
                    return failed(requested_at, Outcome::Failed, format!("journal: {e}"));
                }
            };
            report.journal_id = Some(id);
            let repair = tokio::time::timeout(APPLIED_WITHIN, async {
                loop {
                    match applied.recv().await {
                        Ok((applied_id, repair)) if applied_id == id => return Some(repair),
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            })
            .await
            .ok()
            .flatten();
            match repair {
                Some(repair) => {
                    report.added = repair.added.len();
                    report.removed = repair.removed.len();
                    report.calls_ended = repair.ended.len();
                }
                None => {
                    // Journaled, so it will be applied; what it changes is not known here.
                    report.added = plan.add.len();
                    report.removed = plan.remove.len();
                    report.error = Some("journaled, not applied yet".into());
                }
            }
        }
        for (change, n) in [
            ("added", report.added),
            ("removed", report.removed),
            ("ended", report.calls_ended),
        ] {
            metrics::counter!("callhook_reconcile_changes_total", "provider" => "jas",
                "change" => change)
            .increment(n as u64);
        }
        tracing::info!(
            provider = "jas",
            trigger,
            listed,
            added = report.added,
            removed = report.removed,
            calls_ended = report.calls_ended,
            journal_id = report.journal_id,
            "reconciled with the call-control snapshot"
        );
        report
    }
}

fn failed(at: DateTime<Utc>, outcome: Outcome, error: String) -> Report {
    Report {
        at,
        ..Report::nothing(Provider::Jas, outcome, Some(error))
    }
}

/// Now, in whole milliseconds: the journal keeps `received_at` so, and the in-flight rule
/// compares the two.
fn now_ms() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

impl Reconcile for Reconciler {
    fn provider(&self) -> Provider {
        Provider::Jas
    }

    fn run(self: Arc<Self>, stop: CancellationToken) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Some(every) = self.every {
                self.run_loop(stop, every).await;
            }
        })
    }

    fn run_now(&self) -> BoxFuture<'_, Report> {
        Box::pin(self.run_once("asked"))
    }

    fn last_run(&self) -> Value {
        let status = self.status();
        match (&status.last, &status.refused, self.every) {
            (Some(last), _, _) => json!({
                "at": last.at,
                "result": last.summary(),
            }),
            (None, Some(why), _) => json!({ "result": format!("off: {why}") }),
            (None, None, None) => json!({ "result": "off: jas.reconcile_secs = 0" }),
            (None, None, Some(_)) => json!({ "result": "not run yet" }),
        }
    }
}
