//! The single consumer of accepted events. It tails the journal (the journal *is* the queue, so
//! a restart resumes from the applied cursor with no separate hand-off to lose), applies each
//! event to the call table, starts participant lookups off the ack path, feeds their answers
//! back through the same loop, and writes the changed state with the cursor.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::calls::{CallKey, CallTable, Changes, Details, ParticipantKey, Provider, Transition};
use crate::journal::{Journal, JournalError, StateWrite, StoredEvent};
use crate::providers::jas::client::{JasClient, JasError, ParticipantDetails};
use crate::providers::jas::events::{self as jas_events, JasEvent, ParticipantChange};

/// Rows read from the journal per step.
const BATCH: usize = 512;
/// Lookups in flight at once, so a burst of events cannot open a connection storm upstream.
const LOOKUP_CONCURRENCY: usize = 32;
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
    outcome: Result<ParticipantDetails, JasError>,
}

pub struct Processor {
    journal: Journal,
    table: Arc<CallTable>,
    /// `None` when lookups are off or there are no credentials: participants are then tracked
    /// from the event alone.
    lookups: Option<JasClient>,
    cursor: i64,
    answers_tx: mpsc::Sender<LookupAnswer>,
    answers_rx: mpsc::Receiver<LookupAnswer>,
    limit: Arc<Semaphore>,
    tasks: TaskTracker,
    pending: StateBuffer,
    /// A call started or ended since `callhook_active_calls` was last set. The count walks
    /// every call in memory, so it is taken at most once a second, not once per transition
    /// (which made applying events quadratic in the calls kept in memory).
    gauge_stale: bool,
}

/// Keys changed since the last write.
#[derive(Default)]
struct StateBuffer {
    changes: Changes,
}

impl Processor {
    pub fn new(
        journal: Journal,
        table: Arc<CallTable>,
        lookups: Option<JasClient>,
        cursor: i64,
        tasks: TaskTracker,
    ) -> Self {
        let (answers_tx, answers_rx) = mpsc::channel(1024);
        Self {
            journal,
            table,
            lookups,
            cursor,
            answers_tx,
            answers_rx,
            limit: Arc::new(Semaphore::new(LOOKUP_CONCURRENCY)),
            tasks,
            pending: StateBuffer::default(),
            gauge_stale: false,
        }
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
        let mut gauges = tokio::time::interval(Duration::from_secs(1));
        gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = gauges.tick() => self.update_gauges(),
                Some(answer) = self.answers_rx.recv() => {
                    self.apply_answer(answer);
                    // Drain what else has arrived so their writes share one transaction.
                    while let Ok(answer) = self.answers_rx.try_recv() {
                        self.apply_answer(answer);
                    }
                    self.flush(None).await;
                }
                changed = committed.changed() => {
                    if changed.is_err() {
                        break;
                    }
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
                    self.flush(None).await;
                    self.table.evict_ended(now - KEEP_ENDED);
                }
            }
            // The receiver may have been marked seen while rows remain; re-check on the next turn.
            if *committed.borrow() > self.cursor {
                committed.mark_changed();
            }
        }
        self.flush(None).await;
    }

    /// Applies up to `BATCH` journal rows after the cursor; returns how many there were.
    async fn step(&mut self) -> Result<usize, JournalError> {
        let rows = self.journal.events_after(self.cursor, BATCH).await?;
        let n = rows.len();
        let Some(last) = rows.last().map(|r| r.id) else {
            return Ok(0);
        };
        for row in rows {
            self.apply_row(row);
        }
        self.cursor = last;
        self.flush(Some(last)).await;
        Ok(n)
    }

    fn apply_row(&mut self, row: StoredEvent) {
        match row.provider.as_str() {
            "jas" => match jas_events::decode(&row.body) {
                Ok(decoded) => self.apply_jas(decoded.event, row.received_at),
                // Journaled events were decoded once already; only a newer schema gets here.
                Err(e) => {
                    tracing::warn!(journal_id = row.id, error = %e, "journal row no longer decodes")
                }
            },
            other => tracing::warn!(
                journal_id = row.id,
                provider = other,
                "journal row of unknown provider"
            ),
        }
    }

    fn apply_jas(&mut self, event: JasEvent, received_at: DateTime<Utc>) {
        let now = Utc::now();
        match event {
            JasEvent::CallStatus(cs) => {
                let key = ParticipantKey::new(Provider::Jas, &cs.dn, &cs.participant_id);
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
                                    call_id: format!("{}:{}", cs.dn, cs.participant_id),
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
            JasEvent::NewRecording(_) | JasEvent::Unknown(_) => {}
        }
    }

    fn start_lookup(&self, key: ParticipantKey, seq: i64, at: Option<DateTime<Utc>>) {
        let Some(client) = self.lookups.clone() else {
            return;
        };
        let limit = self.limit.clone();
        let answers = self.answers_tx.clone();
        self.tasks.spawn(async move {
            let Ok(_permit) = limit.acquire_owned().await else {
                return;
            };
            let outcome = client.participant(&key.dn, &key.participant_id).await;
            let _ = answers
                .send(LookupAnswer {
                    key,
                    seq,
                    at,
                    outcome,
                })
                .await;
        });
    }

    fn apply_answer(&mut self, answer: LookupAnswer) {
        let now = Utc::now();
        let LookupAnswer {
            key,
            seq,
            at,
            outcome,
        } = answer;
        let changes = match outcome {
            Ok(p) => {
                metrics::counter!("callhook_lookups_total", "outcome" => "ok").increment(1);
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
        }
        self.gauge_stale |= !changes.transitions.is_empty();
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
        let participants: Vec<String> = call
            .participants
            .iter()
            .map(|p| format!("{}<->{} ({})", p.dn, p.party_number, p.status))
            .collect();
        tracing::info!(
            provider = %key.provider,
            call_id = %key.call_id,
            direction = call.direction.as_str(),
            state = call.state.as_str(),
            reason = call.end_reason.as_deref().unwrap_or(""),
            participants = ?participants,
            "{what}"
        );
    }

    fn update_gauges(&mut self) {
        if std::mem::take(&mut self.gauge_stale) {
            for provider in [Provider::Jas, Provider::Telecmi] {
                metrics::gauge!("callhook_active_calls", "provider" => provider.as_str())
                    .set(self.table.active_count(provider) as f64);
            }
        }
    }

    /// Writes every changed row (and the cursor) through the journal's writer.
    async fn flush(&mut self, cursor: Option<i64>) {
        let changes = std::mem::take(&mut self.pending.changes);
        let mut state = StateWrite {
            cursor,
            ..Default::default()
        };
        for key in changes.participants.union(&changes.dropped_participants) {
            state
                .participants
                .push((key.clone(), self.table.participant(key)));
        }
        for key in changes.calls {
            state.calls.push((key.clone(), self.table.call_row(&key)));
        }
        if let Err(e) = self.journal.write_state(state).await {
            // The events stay in the journal after the persisted cursor, so a restart re-applies
            // them; nothing acknowledged is lost.
            tracing::error!(error = %e, "writing call state failed");
        }
    }
}

fn details_from(key: &ParticipantKey, p: ParticipantDetails) -> Details {
    let call_id = if p.callid.is_empty() {
        format!("{}:{}", key.dn, key.participant_id)
    } else {
        p.callid
    };
    Details {
        call_id,
        status: p.status,
        dn: (!p.dn.is_empty()).then_some(p.dn),
        party_number: p.party_caller_id,
        party_name: p.party_caller_name,
        party_dn: p.party_dn,
        party_dn_type: p.party_dn_type,
        leg_id: p.legid,
        ..Default::default()
    }
}
