//! Persisting what the processor changed: the keys changed since the last write, written
//! every `STATE_EVERY` (at once when a call ends) in chunks, with the applied cursor last.

use std::time::Duration;

use tokio::sync::oneshot;

use super::Processor;
use crate::calls::{CallKey, Changes, ParticipantKey};
use crate::journal::{JobUpdate, JournalError, NewCallEvent, NewJob, StateWrite};

/// How often changed state is written. Coalescing matters: a participant's events of one
/// interval become one row write, and a burst becomes one transaction instead of one per group
/// commit. A crash loses at most this much applied state, which the journal replays.
pub(super) const STATE_EVERY: Duration = Duration::from_millis(100);
/// Rows per state transaction.
const STATE_CHUNK: usize = 128;
/// Changed keys that force a write before the interval is up (bounds memory during catch-up).
const STATE_MAX_KEYS: usize = 16 * 1024;
/// Bytes of call-event bodies that force a write before the interval is up. Bounded by keys
/// alone, a catch-up held tens of MB of bodies until its write, and once freed they were left
/// as fragments among the call table's rows allocated meanwhile (BENCHMARKS.md, ninth round).
const STATE_MAX_EVENT_BYTES: usize = 1 << 20;

/// A changed row to write.
enum Row<'a> {
    Participant(&'a ParticipantKey),
    Call(&'a CallKey),
}

/// Keys changed since the last write.
#[derive(Default)]
pub(super) struct StateBuffer {
    pub(super) changes: Changes,
    /// Job rows to write with the calls they show on, and who waits for that write.
    pub(super) jobs: Vec<JobUpdate>,
    pub(super) written: Vec<oneshot::Sender<bool>>,
    /// Download jobs the applied events created; the workers are woken once they are written.
    pub(super) new_jobs: Vec<NewJob>,
    /// Call events the applied changes produced; the delivery workers are woken once written.
    pub(super) call_events: Vec<NewCallEvent>,
    /// The bodies' length in `call_events`.
    pub(super) call_event_bytes: usize,
    /// The applied cursor not yet persisted: it only moves on disk together with the state it
    /// covers, so a failed write never lets a restart skip events whose effects were lost.
    pub(super) cursor: Option<i64>,
    /// A call ended: written at once rather than at the next tick, so `/api/history` (read
    /// from the database) shows it within milliseconds of `/api/calls` showing it ended.
    pub(super) urgent: bool,
}

impl StateBuffer {
    /// Whether to write now rather than at the next tick.
    pub(super) fn is_full(&self) -> bool {
        self.changes.len() >= STATE_MAX_KEYS || self.call_event_bytes >= STATE_MAX_EVENT_BYTES
    }

    pub(super) fn add_call_events(&mut self, events: Vec<NewCallEvent>) {
        self.call_event_bytes += events.iter().map(|e| e.body.len()).sum::<usize>();
        self.call_events.extend(events);
    }

    pub(super) fn is_dirty(&self) -> bool {
        !self.changes.is_empty()
            || !self.jobs.is_empty()
            || !self.written.is_empty()
            || !self.new_jobs.is_empty()
            || !self.call_events.is_empty()
            || self.cursor.is_some()
    }
}

impl Processor {
    /// Writes every changed row (and the cursor) through the journal's writer.
    pub(super) async fn flush(&mut self) {
        self.pending.urgent = false;
        let changes = std::mem::take(&mut self.pending.changes);
        let written = std::mem::take(&mut self.pending.written);
        let jobs = std::mem::take(&mut self.pending.jobs);
        let new_jobs = std::mem::take(&mut self.pending.new_jobs);
        let streamed = std::mem::take(&mut self.pending.call_events);
        self.pending.call_event_bytes = 0;
        // Only events some endpoint wants go to the outbox; the stream shows all of them.
        let call_events: Vec<NewCallEvent> = streamed
            .iter()
            .filter(|e| !e.endpoints.is_empty())
            .cloned()
            .collect();
        // Rows go in chunks, each its own transaction, so that event batches committed in
        // between never wait behind one large state write (one of a whole burst held the
        // writer for up to 10 ms).
        // The cursor, job updates and new jobs go with the last chunk: the cursor only moves once
        // every row it covers is written.
        // Calls before participants: if a crash comes between chunks, the participants' rows
        // are the ones behind, and replaying their events (the cursor has not moved) changes
        // them again and so refreshes their calls. The other way round, a replayed remove of a
        // participant already written as gone would change nothing, and its call, written as
        // active, would stay so until the stale sweep.
        let rows: Vec<Row<'_>> = changes
            .calls
            .iter()
            .map(Row::Call)
            .chain(
                changes
                    .participants
                    .union(&changes.dropped_participants)
                    .map(Row::Participant),
            )
            .collect();
        let chunks: Vec<&[Row<'_>]> = if rows.is_empty() {
            vec![&[]]
        } else {
            rows.chunks(STATE_CHUNK).collect()
        };
        let mut ok = true;
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            ok = self
                .write_chunk(
                    chunk,
                    last.then(|| (jobs.clone(), new_jobs.clone(), call_events.clone())),
                )
                .await;
            if !ok {
                break;
            }
        }
        if ok {
            self.pending.cursor = None;
            if let Some(nudge) = self.downloads.as_ref().filter(|_| !new_jobs.is_empty()) {
                nudge.notify_one();
            }
            if let Some(nudge) = self.deliveries.as_ref().filter(|_| !call_events.is_empty()) {
                nudge.ring();
            }
            if let Some(stream) = &self.stream {
                stream.publish(&streamed);
            }
        } else {
            // Keep the changed keys (and the unpersisted cursor) for the next write: the
            // journal rows behind them are not behind the persisted cursor, so a restart would
            // re-apply them too. A worker told `false` retries its own job update.
            tracing::error!("call state not written; it will be written with the next batch");
            self.pending.changes.merge(changes);
            self.pending.new_jobs.extend(new_jobs);
            self.pending.add_call_events(streamed);
        }
        for done in written {
            let _ = done.send(ok);
        }
    }

    /// Writes one chunk of rows, read from the table at each attempt so a retry writes current
    /// state; `last` carries what goes with the final chunk (then also the cursor).
    async fn write_chunk(
        &self,
        rows: &[Row<'_>],
        last: Option<(Vec<JobUpdate>, Vec<NewJob>, Vec<NewCallEvent>)>,
    ) -> bool {
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=5 {
            let mut state = StateWrite::default();
            if let Some((jobs, new_jobs, call_events)) = &last {
                state.cursor = self.pending.cursor;
                state.jobs = jobs.clone();
                state.new_jobs = new_jobs.clone();
                state.call_events = call_events.clone();
            }
            for row in rows {
                match row {
                    Row::Participant(key) => state
                        .participants
                        .push(((*key).clone(), self.table.participant(key))),
                    Row::Call(key) => state.calls.push(((*key).clone(), self.table.call_row(key))),
                }
            }
            match self.journal.write_state(state).await {
                Ok(()) => return true,
                Err(JournalError::Closed) => return false,
                Err(e) => {
                    tracing::error!(error = %e, attempt, "writing call state failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(bytes: usize) -> NewCallEvent {
        NewCallEvent {
            id: "evt_1".into(),
            kind: "call.started",
            provider: "jas",
            call_id: "1".into(),
            body: "x".repeat(bytes).into(),
            endpoints: vec![],
        }
    }

    #[test]
    fn bodies_past_the_bound_ask_for_a_write_before_the_tick() {
        let mut buffer = StateBuffer::default();
        buffer.add_call_events(vec![event(1000); 1000]);
        assert!(!buffer.is_full(), "1 MB of bodies is under the bound");
        assert!(buffer.is_dirty());
        buffer.add_call_events(vec![event(100_000)]);
        assert!(buffer.is_full());
        assert_eq!(buffer.call_event_bytes, 1_100_000);
    }
}
