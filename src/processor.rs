//! The single consumer of accepted events. It tails the journal (the journal *is* the queue, so
//! a restart resumes from the applied cursor with no separate hand-off to lose), applies each
//! event to the call table, starts participant lookups off the ack path, feeds their answers
//! back through the same loop, and writes the changed state with the cursor.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::calls::{
    CallKey, CallTable, Changes, Details, EndReason, ParticipantKey, Provider, Transition,
};
use crate::config::Endpoint;
use crate::events::deliver::Nudge;
use crate::events::produce::{Cause, Producer};
use crate::events::stream::Hub;
use crate::journal::{Journal, JournalError, StoredEvent};
use crate::providers::{Apply, Event, LookupError, Providers, Wants};
use crate::recordings::RecordingUpdate;

mod lookups;
mod relookup;
mod state;
pub use lookups::LOOKUP_CONCURRENCY;
use lookups::{Lookups, Queued};
use relookup::Relookups;
use state::{STATE_EVERY, StateBuffer};

/// Rows read from the journal per step.
const BATCH: usize = 512;
/// How long the processor lets newly committed events gather before applying them.
const LINGER: Duration = Duration::from_millis(10);
/// How soon a lookup given up is asked again; defined with the JAS settings.
pub use crate::config::{RELOOKUP_FIRST, RELOOKUP_MAX};
/// A call with no event for this long is ended as `stale`.
pub const STALE_AFTER: chrono::Duration = chrono::Duration::hours(6);
/// Ended calls stay in memory this long for late events, then live only in the database.
pub const KEEP_ENDED: chrono::Duration = chrono::Duration::hours(6);

/// What came back from a lookup, carrying the sequence of the event that asked, so that
/// `CallTable` can order it against everything else.
#[derive(Debug)]
struct LookupAnswer {
    key: ParticipantKey,
    seq: i64,
    at: Option<DateTime<Utc>>,
    /// How many lookups of this participant were given up in a row before this one.
    failures: u32,
    outcome: Result<Details, LookupError>,
}

pub struct Processor {
    journal: Journal,
    table: Arc<CallTable>,
    /// Every provider, to decode and apply its journal rows.
    providers: Arc<Providers>,
    /// A journal row that names no provider this version knows: the cursor stays before it
    /// (reported once) rather than skip an event it cannot apply.
    stuck_at: Option<i64>,
    /// `None` when lookups are off or there are no credentials: participants are then tracked
    /// from the event alone.
    lookups: Option<Arc<Lookups>>,
    cursor: i64,
    answers_rx: mpsc::UnboundedReceiver<LookupAnswer>,
    /// Lookups given up while the API was unavailable, to be asked again.
    relookups: Relookups,
    pending: StateBuffer,
    /// Progress of the recording workers, applied here like lookup answers.
    recordings_tx: mpsc::Sender<RecordingUpdate>,
    recordings_rx: mpsc::Receiver<RecordingUpdate>,
    /// Wakes the recording workers; `None` when downloads are off.
    downloads: Option<Arc<Notify>>,
    /// Turns applied changes into call events; `None` until `produce_events`.
    producer: Option<Producer>,
    /// Wakes the delivery workers once new call events are written; `None` without an
    /// enabled outbound endpoint.
    deliveries: Option<Nudge>,
    /// Where committed call events are published for `/api/stream`.
    stream: Option<Arc<Hub>>,
    /// A call started or ended since `callhook_active_calls` was last set. The count walks
    /// every call in memory, so it is taken at most once a second, not once per transition
    /// (which made applying events quadratic in the calls kept in memory).
    gauge_stale: bool,
}

impl Processor {
    pub fn new(
        journal: Journal,
        table: Arc<CallTable>,
        providers: Arc<Providers>,
        cursor: i64,
        tasks: TaskTracker,
    ) -> Self {
        let (answers_tx, answers_rx) = mpsc::unbounded_channel();
        let (recordings_tx, recordings_rx) = mpsc::channel(1024);
        let clients: HashMap<_, _> = providers
            .iter()
            .filter_map(|p| Some((p.id(), p.lookup()?)))
            .collect();
        // One set of rounds for every provider's given-up lookups, at the quickest pace asked.
        let (first, max) = clients
            .values()
            .map(|c| c.relookup_pauses())
            .min()
            .unwrap_or((RELOOKUP_FIRST, RELOOKUP_MAX));
        Self {
            journal,
            table,
            providers,
            stuck_at: None,
            lookups: (!clients.is_empty()).then(|| Lookups::new(clients, answers_tx, tasks)),
            cursor,
            answers_rx,
            relookups: Relookups::new(first, max),
            pending: StateBuffer::default(),
            recordings_tx,
            recordings_rx,
            downloads: None,
            producer: None,
            deliveries: None,
            stream: None,
            gauge_stale: false,
        }
    }

    /// Where the recording workers send their progress.
    pub fn recording_updates(&self) -> mpsc::Sender<RecordingUpdate> {
        self.recordings_tx.clone()
    }

    /// Recordings are downloaded: new ones are `pending` and wake the workers. Set before
    /// `catch_up`, which may apply `new_recording` events.
    pub fn wake_downloads(&mut self, nudge: Arc<Notify>) {
        self.downloads = Some(nudge);
    }

    /// Call events are produced, published to `stream` once committed, and kept in the outbox
    /// for those of `endpoints` they match; `nudge` wakes their delivery. Set before
    /// `catch_up`: the calls in memory now are the state events were last produced for.
    pub fn produce_events(
        &mut self,
        endpoints: &[Endpoint],
        nudge: Option<Nudge>,
        stream: Arc<Hub>,
    ) {
        let producer = Producer::new(endpoints);
        for call in self.table.active_calls() {
            producer.seed(&self.table, &call);
        }
        self.producer = Some(producer);
        self.deliveries = nudge;
        self.stream = Some(stream);
    }

    /// Applies the journal tail left unapplied by the last run. Called before the daemon
    /// reports ready, so `/api/calls` is right from the first request.
    pub async fn catch_up(&mut self) -> Result<(), JournalError> {
        loop {
            let n = self.step().await?;
            if n < BATCH {
                break;
            }
        }
        // Graces that ran out while the daemon was stopped.
        self.end_due(Utc::now());
        self.flush().await;
        // Lookups that were in flight when the last run stopped.
        for (key, seq) in self.table.awaiting_lookup() {
            if self.looks_up(key.provider) {
                self.start_lookup(key, seq, None);
            }
        }
        Ok(())
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut committed = self.journal.committed();
        let mut sweep = tokio::time::interval(Duration::from_secs(60));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut state = tokio::time::interval(STATE_EVERY);
        state.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gauges = tokio::time::interval(Duration::from_secs(1));
        gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = gauges.tick() => self.update_gauges(),
                _ = state.tick() => {
                    if self.pending.is_dirty() {
                        self.flush().await;
                    }
                }
                Some(answer) = self.answers_rx.recv() => {
                    let mut answers = vec![answer];
                    while answers.len() < BATCH {
                        match self.answers_rx.try_recv() {
                            Ok(answer) => answers.push(answer),
                            Err(_) => break,
                        }
                    }
                    self.warm_for_answers(&answers).await;
                    for answer in answers {
                        self.apply_answer(answer);
                        if self.pending.is_full() {
                            self.flush().await;
                        }
                    }
                }
                _ = sleep_until_some(self.relookups.next_round()) => self.relookup_round(),
                Some(update) = self.recordings_rx.recv() => {
                    self.apply_recording_update(update).await;
                    while let Ok(update) = self.recordings_rx.try_recv() {
                        self.apply_recording_update(update).await;
                    }
                    // A worker waits for its job row to be written before it goes on.
                    self.flush().await;
                }
                changed = committed.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    // Let a burst gather: one state write then covers many events instead of
                    // one per group commit (the ack path never waits for this).
                    tokio::time::sleep(LINGER).await;
                    loop {
                        match self.step().await {
                            Ok(n) if n == BATCH => continue,
                            Ok(_) => break,
                            Err(e) => {
                                tracing::error!(error = %e, "reading the journal failed; retrying");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                break;
                            }
                        }
                    }
                }
                _ = sleep_until_wall(self.table.next_end()) => {
                    // Only once every committed row is applied: a row received before the
                    // deadline but not applied yet still counts as inside the grace.
                    let caught_up = *committed.borrow() <= self.cursor || self.stuck_at.is_some();
                    if caught_up {
                        self.end_due(Utc::now());
                    }
                }
                _ = sweep.tick() => {
                    let now = Utc::now();
                    let changes = self.table.sweep_stale(now, STALE_AFTER);
                    self.note(changes, Cause::Sweep(now.timestamp_millis()));
                    self.flush().await;
                    self.table.evict_ended(now - KEEP_ENDED);
                    // Only needed if a lookup worker panicked with lookups still queued.
                    if let Some(lookups) = &self.lookups {
                        lookups.start_workers();
                    }
                }
            }
            if self.pending.urgent {
                self.flush().await;
            }
            // The receiver may have been marked seen while rows remain; re-check on the next turn
            // (not while a row of an unknown provider holds the cursor: that waits for a fix).
            if *committed.borrow() > self.cursor && self.stuck_at.is_none() {
                committed.mark_changed();
            }
        }
        self.flush().await;
    }

    /// Applies up to `BATCH` journal rows after the cursor; returns how many there were.
    async fn step(&mut self) -> Result<usize, JournalError> {
        let rows = self.journal.events_after(self.cursor, BATCH).await?;
        let n = rows.len();
        let mut events: Vec<(&StoredEvent, Box<dyn Event>)> = Vec::with_capacity(n);
        let mut last = None;
        for row in &rows {
            let Some(source) = self.providers.get(&row.provider) else {
                self.stuck(row);
                break;
            };
            last = Some(row.id);
            match source.decode(row) {
                Ok(event) => events.push((row, event)),
                // Journaled events were decoded once already; only a newer schema fails here.
                Err(e) => tracing::warn!(journal_id = row.id, provider = %row.provider,
                    error = %e, "journal row no longer decodes"),
            }
        }
        let Some(last) = last else {
            return Ok(0);
        };
        self.warm_for(&events).await;
        for (row, event) in events {
            // A row received after a call's grace finds it ended, live or replayed alike.
            self.end_due(row.received_at);
            let provider = Provider::parse(&row.provider);
            let mut ctx = Apply::new(&self.table, row, self.downloads.is_some());
            ctx.lookups = provider.is_some_and(|p| self.looks_up(p));
            event.apply(&mut ctx);
            let Apply {
                changes,
                wanted_lookups,
                jobs,
                ..
            } = ctx;
            self.note(changes, Cause::Row(row.id));
            for (key, seq, at) in wanted_lookups {
                self.start_lookup(key, seq, at);
            }
            self.pending.urgent |= !jobs.is_empty();
            self.pending.new_jobs.extend(jobs);
        }
        self.cursor = last;
        self.pending.cursor = Some(last);
        if self.pending.is_full() {
            self.flush().await;
        }
        Ok(if self.stuck_at.is_some() { 0 } else { n })
    }

    /// A row of a provider this version does not know: reported once, and nothing after it is
    /// applied until a version that knows it runs (skipping it would lose the event for good).
    fn stuck(&mut self, row: &StoredEvent) {
        if self.stuck_at != Some(row.id) {
            tracing::error!(journal_id = row.id, provider = %row.provider.escape_debug(),
                "journal row of an unknown provider; applying stops before it");
            self.stuck_at = Some(row.id);
        }
    }

    /// Whether `provider`'s participants are looked up.
    fn looks_up(&self, provider: Provider) -> bool {
        self.lookups.as_ref().is_some_and(|l| l.serves(provider))
    }

    async fn apply_recording_update(&mut self, update: RecordingUpdate) {
        let RecordingUpdate {
            call,
            recording,
            times,
            job,
            done,
        } = update;
        self.warm(vec![call.clone()]).await;
        let cause = match &job {
            Some(job) => Cause::Job(job.id, job.state.as_str()),
            None => Cause::Job(0, recording.state.as_str()),
        };
        let changes = self
            .table
            .attach_recording(&call, recording, times, Utc::now());
        self.note(changes, cause);
        self.pending.jobs.extend(job);
        self.pending.written.extend(done);
    }

    /// Before a batch is applied, brings back into memory what its events name that lives only
    /// on disk (an ended call evicted after `KEEP_ENDED`, or left there at start-up), so a late
    /// event updates it, or is refused by its tombstone, rather than starting it afresh.
    async fn warm_for(&mut self, events: &[(&StoredEvent, Box<dyn Event>)]) {
        let mut wants = Wants::default();
        for (_, event) in events {
            event.wants(&self.table, &mut wants);
        }
        let Wants {
            mut participants,
            calls,
        } = wants;
        let mut calls: Vec<CallKey> = calls.into_iter().collect();
        // A participant dropped from memory (403) whose row is not deleted yet must not come
        // back from that row.
        participants.retain(|k| !self.pending.changes.dropped_participants.contains(k));
        let mut stored = vec![];
        if !participants.is_empty() {
            match self.journal.stored_participants(participants).await {
                // Each participant comes with the rest of its call, read with the batch's.
                Ok(found) => {
                    calls.extend(found.iter().filter_map(|t| t.call_key()));
                    stored = found;
                }
                Err(e) => tracing::error!(error = %e, "reading stored participants failed"),
            }
        }
        self.warm(calls).await;
        for t in stored {
            self.table.restore(vec![t], vec![]);
        }
    }

    /// The call a lookup answer puts its participant on may have ended and left memory.
    /// Brings back from the state file the calls the answers name that are not in memory.
    async fn warm_for_answers(&mut self, answers: &[LookupAnswer]) {
        let calls = answers.iter().filter_map(|a| {
            let details = a.outcome.as_ref().ok()?;
            Some(CallKey::new(a.key.provider, details.call_id.clone()))
        });
        self.warm(calls.collect()).await;
    }

    /// Brings back the calls of `keys` that are stored but not in memory, in one read.
    async fn warm(&mut self, mut keys: Vec<CallKey>) {
        keys.retain(|k| !self.table.has_call(k));
        keys.sort_unstable();
        keys.dedup();
        if keys.is_empty() {
            return;
        }
        match self.journal.stored_calls(keys).await {
            Ok(found) => {
                for (call, activity, participants) in found {
                    // Its events were produced with the state it was stored in (not the
                    // table's view after the restore, which links participants newer than the
                    // row).
                    let stored = self.producer.is_some().then(|| call.clone());
                    self.table.restore(participants, vec![(call, activity)]);
                    if let (Some(producer), Some(stored)) = (&self.producer, stored) {
                        producer.seed(&self.table, &stored);
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "reading stored calls failed"),
        }
    }

    /// A lookup for the participant's newest event; one given up for an older event is
    /// superseded by it.
    fn start_lookup(&mut self, key: ParticipantKey, seq: i64, at: Option<DateTime<Utc>>) {
        let failures = self.relookups.supersede(&key);
        self.queue_lookup(key, seq, at, failures);
    }

    fn queue_lookup(
        &self,
        key: ParticipantKey,
        seq: i64,
        at: Option<DateTime<Utc>>,
        failures: u32,
    ) {
        if let Some(lookups) = &self.lookups {
            lookups.push(Queued {
                key,
                seq,
                at,
                failures,
            });
        }
    }

    /// Whether a lookup answering the event at `seq` is still wanted: the participant is
    /// tracked and present, `seq` is its newest event, and no details answer it yet.
    fn lookup_wanted(&self, key: &ParticipantKey, seq: i64) -> bool {
        self.table
            .participant(key)
            .is_some_and(|t| !t.is_removed() && t.last_seq == seq && t.details_seq < seq)
    }

    /// Asks again for the lookups given up whose pause is over, unless no longer wanted.
    fn relookup_round(&mut self) {
        let (mut asked, mut dropped) = (0usize, 0usize);
        for (key, w) in self.relookups.round(tokio::time::Instant::now()) {
            if self.lookup_wanted(&key, w.seq) {
                self.queue_lookup(key, w.seq, w.at, w.failures);
                asked += 1;
            } else {
                dropped += 1;
            }
        }
        if asked + dropped > 0 {
            tracing::info!(
                asked,
                no_longer_needed = dropped,
                still_waiting = self.relookups.len(),
                "asking the provider's API again for participant lookups it gave up"
            );
        }
    }

    fn apply_answer(&mut self, answer: LookupAnswer) {
        let now = Utc::now();
        let LookupAnswer {
            key,
            seq,
            at,
            failures,
            outcome,
        } = answer;
        let changes = match outcome {
            Ok(details) => {
                metrics::counter!("callhook_lookups_total", "outcome" => "ok").increment(1);
                if failures > 0 {
                    tracing::info!(dn = %key.dn, participant_id = %key.participant_id,
                        sequence = seq, failures, "participant lookup answered after giving up");
                }
                self.table.details(&key, seq, details, at, now)
            }
            Err(LookupError::Forbidden) => {
                metrics::counter!("callhook_lookups_total", "outcome" => "forbidden").increment(1);
                tracing::warn!(dn = %key.dn, participant_id = %key.participant_id,
                    "participant is not visible to this token (403); not tracked");
                self.table.forget(&key, now)
            }
            Err(LookupError::NotFound) => {
                metrics::counter!("callhook_lookups_total", "outcome" => "gone").increment(1);
                tracing::info!(dn = %key.dn, participant_id = %key.participant_id,
                    "participant already gone (404)");
                self.table.remove(&key, seq, Some(now), now)
            }
            // The API stayed unavailable through all of the client's retries: kept and asked
            // again later, as long as the participant still needs it.
            Err(e @ LookupError::Transient(_)) => {
                metrics::counter!("callhook_lookups_total", "outcome" => "failed").increment(1);
                let failures = failures.saturating_add(1);
                if !self.lookup_wanted(&key, seq) {
                    tracing::debug!(dn = %key.dn, participant_id = %key.participant_id,
                        sequence = seq, error = %e, "participant lookup gave up; no longer needed");
                } else {
                    // Warned once per participant; the rounds that follow log a summary each.
                    if failures == 1 {
                        tracing::warn!(dn = %key.dn, participant_id = %key.participant_id,
                            sequence = seq, error = %e,
                            "participant lookup gave up; it will be asked again");
                    } else {
                        tracing::debug!(dn = %key.dn, participant_id = %key.participant_id,
                            sequence = seq, failures, error = %e, "participant lookup gave up again");
                    }
                    self.relookups
                        .gave_up(key, seq, at, failures, tokio::time::Instant::now());
                }
                return;
            }
            // Refused credentials or a request the API rejects: asking again would not help.
            Err(e) => {
                metrics::counter!("callhook_lookups_total", "outcome" => "failed").increment(1);
                tracing::warn!(dn = %key.dn, participant_id = %key.participant_id, sequence = seq,
                    error = %e, "participant lookup gave up");
                return;
            }
        };
        let cause = format!("{}:{}:{}:{seq}", key.provider, key.dn, key.participant_id);
        self.note(changes, Cause::Lookup(cause));
    }

    /// Ends the calls whose grace is over by `clock`, each under its own cause.
    fn end_due(&mut self, clock: DateTime<Utc>) {
        for (key, deadline, changes) in self.table.end_due(clock) {
            self.note(changes, Cause::Grace(key, deadline.timestamp_millis()));
        }
    }

    fn note(&mut self, changes: Changes, cause: Cause) {
        if let Some(producer) = &mut self.producer {
            let events = producer.observe(&self.table, &changes.calls, &cause);
            // An event an endpoint waits for is written (and so sent) at once, not at the
            // next tick: the time from a webhook's ack to its delivery is mostly this.
            self.pending.urgent |= events.iter().any(|e| !e.endpoints.is_empty());
            self.pending.add_call_events(events);
        }
        for t in &changes.transitions {
            self.log_transition(t);
            self.pending.urgent |= matches!(t, Transition::Ended(_));
        }
        // A call can also vanish without a transition (its only participant turned out to be
        // invisible to this token).
        self.gauge_stale |=
            !changes.transitions.is_empty() || !changes.dropped_participants.is_empty();
        self.pending.changes.merge(Changes {
            transitions: vec![],
            ..changes
        });
    }

    fn log_transition(&self, t: &Transition) {
        let (key, what) = match t {
            Transition::Started(k) => (k, "call started"),
            Transition::Ended(k) => (k, "call ended"),
            Transition::Resumed(k) => (k, "call resumed"),
        };
        let Some(call) = self.table.call(key) else {
            return;
        };
        // An array in the JSON line (telemetry::JSON_FIELDS); numbers as log.redact_numbers says.
        let participants: Vec<serde_json::Value> = call
            .participants
            .iter()
            .map(|p| {
                serde_json::json!({
                    "dn": p.dn,
                    "participant_id": p.participant_id,
                    "party_number": crate::telemetry::number(&p.party_number),
                    "status": p.status,
                })
            })
            .collect();
        tracing::info!(
            provider = %key.provider,
            call_id = %key.call_id,
            direction = call.direction.as_str(),
            state = call.state.as_str(),
            reason = call.end_reason.as_ref().map_or("", EndReason::as_str),
            participants = crate::telemetry::json_field(&serde_json::Value::Array(participants)),
            "{what}"
        );
    }

    fn update_gauges(&mut self) {
        let queued = self.lookups.as_ref().map_or(0, |lookups| lookups.waiting());
        metrics::gauge!("callhook_lookups_waiting", "reason" => "slot").set(queued as f64);
        metrics::gauge!("callhook_lookups_waiting", "reason" => "retry")
            .set(self.relookups.len() as f64);
        if std::mem::take(&mut self.gauge_stale) {
            for provider in Provider::ALL {
                metrics::gauge!("callhook_active_calls", "provider" => provider.as_str())
                    .set(self.table.active_count(provider) as f64);
            }
        }
    }
}

/// Sleeps until the wall clock reaches `at` (at once when it has), or forever without one.
async fn sleep_until_wall(at: Option<DateTime<Utc>>) {
    match at {
        Some(at) => {
            let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::time::sleep(wait).await
        }
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
