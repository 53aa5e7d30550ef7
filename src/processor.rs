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
    CallKey, CallTable, Changes, Details, ParticipantKey, Provider, Recording, RecordingState,
    Transition,
};
use crate::journal::{Journal, JournalError, StoredEvent};
use crate::providers::jas::client::{JasClient, JasError, ParticipantDetails};
use crate::providers::jas::events::NewRecording;
use crate::providers::jas::events::{self as jas_events, JasEvent, ParticipantChange};
use crate::providers::telecmi::apply as telecmi_apply;
use crate::providers::telecmi::events::{self as telecmi_events, TelecmiEvent};
use crate::recordings::RecordingUpdate;
use crate::recordings::path::{DOWNLOADS_OFF, destination};

mod lookups;
mod relookup;
mod state;
pub use lookups::LOOKUP_CONCURRENCY;
use lookups::{Lookups, Queued};
use relookup::Relookups;
use state::{STATE_EVERY, STATE_MAX_KEYS, StateBuffer};

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
    outcome: Result<ParticipantDetails, JasError>,
}

pub struct Processor {
    journal: Journal,
    table: Arc<CallTable>,
    /// `None` when lookups are off or there are no credentials: participants are then tracked
    /// from the event alone.
    lookups: Option<Arc<Lookups>>,
    cursor: i64,
    answers_rx: mpsc::UnboundedReceiver<LookupAnswer>,
    /// Lookups given up while the API was unavailable, to be asked again.
    relookups: Relookups,
    pending: StateBuffer,
    /// Where each recording in progress was attached, so the worker's progress reaches that
    /// call even when its job row still names the route's first guess.
    recording_homes: HashMap<(Provider, String), CallKey>,
    /// Worker progress for a job whose journal row is not applied yet (a fast download can
    /// finish before the processor reaches the CDR that queued it): held until that row is, so
    /// it joins the call decided then, not the route's guess (which would become a phantom call).
    early_updates: Vec<RecordingUpdate>,
    /// Progress of the recording workers, applied here like lookup answers.
    recordings_tx: mpsc::Sender<RecordingUpdate>,
    recordings_rx: mpsc::Receiver<RecordingUpdate>,
    /// Wakes the recording workers; `None` when downloads are off.
    downloads: Option<Arc<Notify>>,
    /// A call started or ended since `callhook_active_calls` was last set. The count walks
    /// every call in memory, so it is taken at most once a second, not once per transition
    /// (which made applying events quadratic in the calls kept in memory).
    gauge_stale: bool,
}

impl Processor {
    pub fn new(
        journal: Journal,
        table: Arc<CallTable>,
        lookups: Option<JasClient>,
        cursor: i64,
        tasks: TaskTracker,
    ) -> Self {
        let (answers_tx, answers_rx) = mpsc::unbounded_channel();
        let (recordings_tx, recordings_rx) = mpsc::channel(1024);
        Self {
            journal,
            table,
            lookups: lookups.map(|client| Lookups::new(client, answers_tx, tasks)),
            cursor,
            answers_rx,
            relookups: Relookups::new(RELOOKUP_FIRST, RELOOKUP_MAX),
            pending: StateBuffer::default(),
            recording_homes: HashMap::new(),
            early_updates: Vec::new(),
            recordings_tx,
            recordings_rx,
            downloads: None,
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

    /// How soon lookups given up are asked again (see `RELOOKUP_FIRST`); shorter in tests.
    pub fn pace_relookups(&mut self, first: Duration, max: Duration) {
        self.relookups = Relookups::new(first, max);
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
        self.flush().await;
        // Lookups that were in flight when the last run stopped.
        for (key, seq) in self.table.awaiting_lookup() {
            if key.provider == Provider::Jas {
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
                    self.warm_for_answer(&answer).await;
                    self.apply_answer(answer);
                    while let Ok(answer) = self.answers_rx.try_recv() {
                        self.warm_for_answer(&answer).await;
                        self.apply_answer(answer);
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
                _ = sweep.tick() => {
                    let now = Utc::now();
                    let changes = self.table.sweep_stale(now, STALE_AFTER);
                    self.note(changes);
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
            // The receiver may have been marked seen while rows remain; re-check on the next turn.
            if *committed.borrow() > self.cursor {
                committed.mark_changed();
            }
        }
        self.flush().await;
    }

    /// Applies up to `BATCH` journal rows after the cursor; returns how many there were.
    async fn step(&mut self) -> Result<usize, JournalError> {
        let rows = self.journal.events_after(self.cursor, BATCH).await?;
        let n = rows.len();
        let Some(last) = rows.last().map(|r| r.id) else {
            return Ok(0);
        };
        let events: Vec<(DateTime<Utc>, Decoded)> = rows
            .iter()
            .filter_map(|row| decode_row(row).map(|event| (row.received_at, event)))
            .collect();
        self.warm_for(&events).await;
        for (received_at, event) in events {
            match event {
                Decoded::Jas(event) => self.apply_jas(event, received_at),
                Decoded::Telecmi(event) => self.apply_telecmi(*event, received_at),
            }
        }
        self.cursor = last;
        self.pending.cursor = Some(last);
        self.apply_early_updates().await;
        if self.pending.changes.len() >= STATE_MAX_KEYS {
            self.flush().await;
        }
        Ok(n)
    }

    fn apply_jas(&mut self, event: JasEvent, received_at: DateTime<Utc>) {
        let now = Utc::now();
        match event {
            JasEvent::CallStatus(cs) => {
                let key = jas_key(&cs);
                let at = cs.timestamp.or(Some(received_at));
                match cs.change {
                    ParticipantChange::Upsert => {
                        let changes = self.table.upsert(&key, cs.sequence, at, now);
                        let fresh = changes.applied;
                        self.note(changes);
                        if fresh {
                            if self.lookups.is_some() {
                                self.start_lookup(key, cs.sequence, at);
                            } else {
                                // Without lookups a participant is its own call.
                                let details = Details {
                                    call_id: format!("{}:{}", cs.dn, cs.participant_id).into(),
                                    ..Default::default()
                                };
                                let changes =
                                    self.table.details(&key, cs.sequence, details, at, now);
                                self.note(changes);
                            }
                        }
                    }
                    ParticipantChange::Remove => {
                        let changes = self.table.remove(&key, cs.sequence, at, now);
                        self.note(changes);
                    }
                    ParticipantChange::Dtmf
                    | ParticipantChange::PromptFinished
                    | ParticipantChange::Other(_) => {}
                }
            }
            JasEvent::CallSummary(summary) => {
                if let Some(call_id) = summary.call_id {
                    let changes = self.table.attach_summary(
                        &CallKey::new(Provider::Jas, call_id),
                        summary.data,
                        now,
                    );
                    self.note(changes);
                }
            }
            JasEvent::NewRecording(r) => self.attach_new_recording(r, now),
            JasEvent::Unknown(_) => {}
        }
    }

    /// Shows a new recording on its call: `pending` (the job was made with the event), or
    /// `failed` when its name was refused or downloads are off. Progress already reported by a
    /// worker (the event applied again after a restart) is kept.
    fn attach_new_recording(&mut self, r: NewRecording, now: DateTime<Utc>) {
        let key = CallKey::new(Provider::Jas, r.call_id.clone());
        let id = r.id();
        if self
            .table
            .call(&key)
            .is_some_and(|c| c.recordings.iter().any(|x| x.id == id))
        {
            return;
        }
        let (state, path, error) = match (destination("jas", &r.recording_url), &self.downloads) {
            (Err(refused), _) => {
                metrics::counter!("callhook_recordings_total", "outcome" => "refused").increment(1);
                (RecordingState::Failed, None, Some(refused))
            }
            (Ok(_), None) => (RecordingState::Failed, None, Some(DOWNLOADS_OFF.into())),
            (Ok(path), Some(_)) => (RecordingState::Pending, Some(path), None),
        };
        let recording = Recording {
            id,
            dn: r.dn().map(str::to_string),
            url: r.recording_url,
            path,
            state,
            bytes: None,
            sha256: None,
            error,
        };
        let changes = self
            .table
            .attach_recording(&key, recording, (r.start_time, r.end_time), now);
        self.note(changes);
        if let Some(nudge) = &self.downloads {
            nudge.notify_one();
        }
    }

    /// The held progress whose journal rows are applied now; its workers wait for the write.
    async fn apply_early_updates(&mut self) {
        if self.early_updates.is_empty() {
            return;
        }
        let cursor = self.cursor;
        let (due, early): (Vec<_>, Vec<_>) = std::mem::take(&mut self.early_updates)
            .into_iter()
            .partition(|u| u.event_id.is_none_or(|id| id <= cursor));
        self.early_updates = early;
        if !due.is_empty() {
            for update in due {
                self.apply_recording_update(update).await;
            }
            self.pending.urgent = true;
        }
    }

    async fn apply_recording_update(&mut self, update: RecordingUpdate) {
        if update.event_id.is_some_and(|id| id > self.cursor) {
            self.early_updates.push(update);
            return;
        }
        let RecordingUpdate {
            call,
            recording,
            times,
            job,
            event_id: _,
            done,
        } = update;
        let home = (call.provider, recording.id.clone());
        let call = match recording.state {
            RecordingState::Downloaded | RecordingState::Failed => {
                self.recording_homes.remove(&home)
            }
            _ => self.recording_homes.get(&home).cloned(),
        }
        .unwrap_or(call);
        self.warm(&call).await;
        let changes = self
            .table
            .attach_recording(&call, recording, times, Utc::now());
        self.note(changes);
        self.pending.jobs.extend(job);
        self.pending.written.extend(done);
    }

    /// Before a batch is applied, brings back into memory what its events name that lives only
    /// on disk (an ended call evicted after `KEEP_ENDED`, or left there at start-up), so a late
    /// event updates it, or is refused by its tombstone, rather than starting it afresh.
    async fn warm_for(&mut self, events: &[(DateTime<Utc>, Decoded)]) {
        let mut participants = vec![];
        let mut calls = vec![];
        for (_, event) in events {
            match event {
                Decoded::Jas(JasEvent::CallStatus(cs)) => {
                    let key = jas_key(cs);
                    if !self.table.has_participant(&key) {
                        participants.push(key);
                    }
                }
                Decoded::Jas(JasEvent::NewRecording(r)) => {
                    calls.push(CallKey::new(Provider::Jas, r.call_id.clone()));
                }
                Decoded::Jas(JasEvent::CallSummary(s)) => {
                    if let Some(id) = &s.call_id {
                        calls.push(CallKey::new(Provider::Jas, id.clone()));
                    }
                }
                Decoded::Jas(JasEvent::Unknown(_)) => {}
                Decoded::Telecmi(event) => {
                    // A CDR often names no conversation: its call is found through its leg,
                    // which must be in memory for that.
                    let leg = telecmi_apply::leg_key(event);
                    if !self.table.has_participant(&leg) {
                        participants.push(leg);
                    }
                    calls.push(CallKey::new(Provider::Telecmi, event.call_id()));
                }
            }
        }
        // A participant dropped from memory (403) whose row is not deleted yet must not come
        // back from that row.
        participants.retain(|k| !self.pending.changes.dropped_participants.contains(k));
        if !participants.is_empty() {
            match self.journal.stored_participants(participants).await {
                Ok(found) => {
                    for t in found {
                        if let Some(call) = t.call_key() {
                            // Brings the participant with the rest of its call.
                            self.warm(&call).await;
                        }
                        self.table.restore(vec![t], vec![]);
                    }
                }
                Err(e) => tracing::error!(error = %e, "reading stored participants failed"),
            }
        }
        for call in calls {
            self.warm(&call).await;
        }
    }

    /// The call a lookup answer puts its participant on may have ended and left memory.
    async fn warm_for_answer(&mut self, answer: &LookupAnswer) {
        if let Ok(p) = &answer.outcome {
            if !p.callid.is_empty() {
                self.warm(&CallKey::new(Provider::Jas, p.callid.clone()))
                    .await;
            }
        }
    }

    async fn warm(&mut self, key: &CallKey) {
        if self.table.has_call(key) {
            return;
        }
        match self.journal.stored_call(key.clone()).await {
            Ok(Some((call, activity, participants))) => {
                self.table.restore(participants, vec![(call, activity)]);
            }
            Ok(None) => {}
            Err(e) => tracing::error!(provider = %key.provider, call_id = %key.call_id,
                error = %e, "reading a stored call failed"),
        }
    }

    /// TeleCMI names every leg and ranks its statuses itself, so there is nothing to look up:
    /// the mapping onto the table lives with the provider.
    fn apply_telecmi(&mut self, event: TelecmiEvent, received_at: DateTime<Utc>) {
        // Only a CDR without `conversation_uuid` was guessed: with one, the route's call is
        // the call, and another call's recording of the same name is not moved onto it.
        if let Some(name) = telecmi_apply::recording_name(&event)
            .filter(|_| self.downloads.is_some() && event.conversation_uuid.is_none())
        {
            // The route guessed the call of a CDR without `conversation_uuid` at ack time; the
            // call decided here (after every earlier event) is the one the recording joins, and
            // the one the worker's progress must reach.
            let home = telecmi_apply::call_key(&self.table, &event);
            self.recording_homes
                .insert((Provider::Telecmi, name.to_string()), home.clone());
            self.pending
                .job_calls
                .push(("telecmi", name.to_string(), home.call_id));
        }
        let changes = telecmi_apply::apply(
            &self.table,
            &event,
            received_at,
            Utc::now(),
            self.downloads.is_some(),
        );
        if let Some(nudge) = &self.downloads {
            if changes.applied && event.kind == telecmi_events::Kind::Cdr {
                nudge.notify_one();
            }
        }
        self.note(changes);
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
                "asking the JAS API again for participant lookups it gave up"
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
            Ok(p) => {
                metrics::counter!("callhook_lookups_total", "outcome" => "ok").increment(1);
                if failures > 0 {
                    tracing::info!(dn = %key.dn, participant_id = %key.participant_id,
                        sequence = seq, failures, "participant lookup answered after giving up");
                }
                let details = details_from(&key, p);
                self.table.details(&key, seq, details, at, now)
            }
            Err(JasError::Forbidden) => {
                metrics::counter!("callhook_lookups_total", "outcome" => "forbidden").increment(1);
                tracing::warn!(dn = %key.dn, participant_id = %key.participant_id,
                    "participant is not visible to this token (403); not tracked");
                self.table.forget(&key, now)
            }
            Err(JasError::NotFound) => {
                metrics::counter!("callhook_lookups_total", "outcome" => "gone").increment(1);
                tracing::info!(dn = %key.dn, participant_id = %key.participant_id,
                    "participant already gone (404)");
                self.table.remove(&key, seq, Some(now), now)
            }
            // The API stayed unavailable through all of the client's retries: kept and asked
            // again later, as long as the participant still needs it.
            Err(e @ JasError::Transient(_)) => {
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
        self.note(changes);
    }

    fn note(&mut self, changes: Changes) {
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
            reason = call.end_reason.as_deref().unwrap_or(""),
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

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn details_from(key: &ParticipantKey, p: ParticipantDetails) -> Details {
    let call_id = if p.callid.is_empty() {
        format!("{}:{}", key.dn, key.participant_id)
    } else {
        p.callid
    };
    Details {
        call_id: call_id.into(),
        status: p.status.into(),
        dn: (!p.dn.is_empty()).then_some(p.dn.into()),
        party_number: p.party_caller_id.into(),
        party_name: p.party_caller_name.into(),
        party_dn: p.party_dn.into(),
        party_dn_type: p.party_dn_type.into(),
        leg_id: p.legid,
        did: (!p.party_did.is_empty()).then_some(p.party_did.into()),
        ..Default::default()
    }
}

/// The participant a JAS `call_status` event is about.
fn jas_key(cs: &jas_events::CallStatus) -> ParticipantKey {
    ParticipantKey::new(Provider::Jas, &cs.dn, &cs.participant_id)
}

/// A journal row decoded once, for warming and applying.
enum Decoded {
    Jas(JasEvent),
    Telecmi(Box<TelecmiEvent>),
}

fn decode_row(row: &StoredEvent) -> Option<Decoded> {
    // Journaled events were decoded once already; only a newer schema fails here.
    let undecodable = |e: &dyn std::fmt::Display| {
        tracing::warn!(journal_id = row.id, error = %e, "journal row no longer decodes");
    };
    match row.provider.as_str() {
        "jas" => match jas_events::decode(&row.body, row.received_at) {
            Ok(d) => Some(Decoded::Jas(d.event)),
            Err(e) => {
                undecodable(&e);
                None
            }
        },
        "telecmi" => match telecmi_events::decode(&row.body, row.content_type.as_deref()) {
            Ok(event) => Some(Decoded::Telecmi(Box::new(event))),
            Err(e) => {
                undecodable(&e);
                None
            }
        },
        other => {
            tracing::warn!(
                journal_id = row.id,
                provider = other,
                "journal row of unknown provider"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jas_participant_has_a_did_only_when_jas_names_one() {
        let key = ParticipantKey::new(Provider::Jas, "101", "172");
        let lookup = |did: &str| ParticipantDetails {
            callid: "26".into(),
            party_caller_id: "05148888888".into(),
            party_did: did.into(),
            ..Default::default()
        };
        let d = details_from(&key, lookup(""));
        assert_eq!((d.caller_id, d.did), (None, None));
        let d = details_from(&key, lookup("0044123"));
        assert_eq!(d.did.as_deref(), Some("0044123"));
        assert_eq!(d.party_number, "05148888888");
    }
}
