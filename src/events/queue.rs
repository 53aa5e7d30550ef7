//! One endpoint's pending deliveries, held in memory by its delivery loop so that choosing the
//! next attempt costs no query. The `deliveries` table stays the record: the queue is loaded
//! from it (at start, after each state write that added events, after a replay or a retry) and
//! every outcome is written back to it, so a crash loses at most the outcomes not yet written,
//! whose attempts are then made again with the same ids.
//!
//! The order rule is the table's: per call, only the oldest pending event is due, and it stays
//! the call's head while it is in flight or waiting for a retry; other calls go on.

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::journal::Due;

/// A call, as the queue orders its events.
type CallRef = (String, String);

/// What an attempt's outcome does to its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Delivered, or failed for good: the call's next event becomes due.
    Done,
    /// Pending again, due at `next_ms`, with the version its outcome write leaves on the row.
    Again { next_ms: i64, version: i64 },
}

#[derive(Default)]
pub struct Queue {
    items: HashMap<i64, Due>,
    calls: HashMap<CallRef, VecDeque<i64>>,
    /// The heads of calls that are not in flight, by (due time, event seq).
    ready: BTreeSet<(i64, i64)>,
    /// Each attempt in flight, with the version of the row it read.
    in_flight: HashMap<i64, i64>,
    /// The highest event seq read from the table; the next load reads after it.
    loaded_to: i64,
}

impl Queue {
    /// The rows read from the table after [`Queue::loaded_to`], oldest first. A row in flight
    /// across a reload ([`Queue::clear`]) is held as the table has it, so an attempt whose row a
    /// replay changed meanwhile is not settled from what it read.
    pub fn load(&mut self, rows: Vec<Due>) {
        for row in rows {
            let seq = row.event_seq;
            self.loaded_to = self.loaded_to.max(seq);
            if self.items.contains_key(&seq) {
                continue;
            }
            self.items.insert(seq, row.clone());
            let call = self
                .calls
                .entry((row.provider.clone(), row.call_id.clone()))
                .or_default();
            call.push_back(seq);
            if call.len() == 1 && !self.in_flight.contains_key(&seq) {
                self.ready.insert((row.next_attempt_ms, seq));
            }
        }
    }

    pub fn loaded_to(&self) -> i64 {
        self.loaded_to
    }

    /// Deliveries held (in flight or not).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Forgets everything but the attempts in flight, to load the table again from the start
    /// (after a replay or a retry changed rows behind the queue's back).
    pub fn clear(&mut self) {
        self.items.clear();
        self.calls.clear();
        self.ready.clear();
        self.loaded_to = 0;
    }

    /// The next delivery due by `now_ms`, now in flight.
    pub fn take_due(&mut self, now_ms: i64) -> Option<Due> {
        let &(at, seq) = self.ready.first()?;
        if at > now_ms {
            return None;
        }
        self.ready.pop_first();
        let due = self.items.get(&seq)?.clone();
        self.in_flight.insert(seq, due.version);
        Some(due)
    }

    /// When the next delivery not in flight is due.
    pub fn next_due_ms(&self) -> Option<i64> {
        self.ready.first().map(|&(at, _)| at)
    }

    /// An attempt that ended without an outcome (its task failed): due again as it was.
    pub fn release(&mut self, seq: i64) {
        if self.in_flight.remove(&seq).is_some()
            && let Some(item) = self.items.get(&seq)
        {
            self.ready.insert((item.next_attempt_ms, seq));
        }
    }

    /// An attempt ended. Returns whether its outcome stands: `false` when a reload found its row
    /// changed meanwhile (a replay or a retry), so the outcome must not be written and the
    /// delivery is due as the table now has it.
    pub fn settle(&mut self, seq: i64, settled: Settled) -> bool {
        let Some(read) = self.in_flight.remove(&seq) else {
            return false;
        };
        let Some(item) = self.items.get_mut(&seq) else {
            // Cleared and not pending any more in the table: nothing to schedule.
            return false;
        };
        if item.version != read {
            self.ready.insert((item.next_attempt_ms, seq));
            return false;
        }
        match settled {
            Settled::Again { next_ms, version } => {
                item.attempts += 1;
                item.next_attempt_ms = next_ms;
                item.version = version;
                self.ready.insert((next_ms, seq));
            }
            Settled::Done => {
                let key = (item.provider.clone(), item.call_id.clone());
                self.items.remove(&seq);
                if let Some(call) = self.calls.get_mut(&key) {
                    call.retain(|&s| s != seq);
                    match call.front() {
                        Some(&next) => {
                            let at = self.items.get(&next).map_or(0, |d| d.next_attempt_ms);
                            self.ready.insert((at, next));
                        }
                        None => {
                            self.calls.remove(&key);
                        }
                    }
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(seq: i64, call: &str) -> Due {
        Due {
            event_seq: seq,
            id: format!("evt_{seq}"),
            kind: "call.started".into(),
            provider: "jas".into(),
            call_id: call.into(),
            attempts: 0,
            body: "{}".into(),
            version: 1,
            next_attempt_ms: 0,
        }
    }

    fn drain(q: &mut Queue, now: i64) -> Vec<i64> {
        std::iter::from_fn(|| q.take_due(now))
            .map(|d| d.event_seq)
            .collect()
    }

    #[test]
    fn one_call_goes_one_event_at_a_time_and_other_calls_go_on() {
        let mut q = Queue::default();
        q.load(vec![due(1, "a"), due(2, "a"), due(3, "b"), due(4, "a")]);
        assert_eq!(drain(&mut q, 10), [1, 3]);
        assert!(q.settle(3, Settled::Done));
        assert_eq!(drain(&mut q, 10), Vec::<i64>::new());
        assert!(q.settle(1, Settled::Done));
        assert_eq!(drain(&mut q, 10), [2]);
        assert!(q.settle(2, Settled::Done));
        assert_eq!(drain(&mut q, 10), [4]);
        assert!(q.settle(4, Settled::Done));
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_retried_event_holds_its_call_until_it_is_due_again() {
        let mut q = Queue::default();
        q.load(vec![due(1, "a"), due(2, "a"), due(3, "b")]);
        assert_eq!(drain(&mut q, 0), [1, 3]);
        let again = Settled::Again {
            next_ms: 50,
            version: 7,
        };
        assert!(q.settle(1, again));
        assert_eq!(q.next_due_ms(), Some(50));
        assert_eq!(drain(&mut q, 49), Vec::<i64>::new());
        let retried = q.take_due(50).unwrap();
        assert_eq!(
            (retried.event_seq, retried.attempts, retried.version),
            (1, 1, 7)
        );
    }

    #[test]
    fn an_attempt_whose_row_a_reload_found_changed_does_not_settle() {
        let mut q = Queue::default();
        q.load(vec![due(1, "a"), due(2, "a")]);
        assert_eq!(drain(&mut q, 0), [1]);
        // A replay changed the row while its attempt was out; the reload reads it again.
        q.clear();
        let mut replayed = due(1, "a");
        replayed.version = 9;
        q.load(vec![replayed, due(2, "a")]);
        assert_eq!(
            drain(&mut q, 0),
            Vec::<i64>::new(),
            "the head is still in flight"
        );
        assert!(!q.settle(1, Settled::Done), "the stale outcome stands");
        let again = q.take_due(0).unwrap();
        assert_eq!((again.event_seq, again.version), (1, 9));
        // Read again at the same version, an attempt in flight across a reload settles.
        q.clear();
        let mut same = due(1, "a");
        same.version = 9;
        q.load(vec![same, due(2, "a")]);
        assert!(q.settle(1, Settled::Done));
        assert_eq!(drain(&mut q, 0), [2]);
    }

    #[test]
    fn rows_loaded_twice_are_held_once() {
        let mut q = Queue::default();
        q.load(vec![due(1, "a"), due(2, "b")]);
        q.load(vec![due(2, "b"), due(3, "b")]);
        assert_eq!(q.len(), 3);
        assert_eq!(q.loaded_to(), 3);
        assert_eq!(drain(&mut q, 0), [1, 2]);
    }
}
