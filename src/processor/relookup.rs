//! Participant lookups the JAS client gave up on (the API stayed unavailable through all of one
//! call's retries), kept to be asked again later. Without this a participant whose lookup failed
//! during an outage longer than the client's retries stayed without details until its next event
//! or a restart.
//!
//! Entries are asked again in rounds: one timer for all of them, at most one round per `first`,
//! so an outage costs one summary log line per round rather than one per participant. Each
//! round makes one attempt per lookup (the rounds are the backoff) through the same 32 lookup
//! slots as fresh lookups (`lookups.rs`), so a round opens no more connections at once.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::calls::ParticipantKey;

/// A lookup waiting to be asked again.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Waiting {
    /// The sequence of the event the lookup answers: only the newest one matters.
    pub seq: i64,
    pub at: Option<DateTime<Utc>>,
    /// How many times in a row this participant's lookups were given up.
    pub failures: u32,
    due: Instant,
}

pub(super) struct Relookups {
    first: Duration,
    max: Duration,
    waiting: HashMap<ParticipantKey, Waiting>,
    /// When the next round starts; `None` while nothing waits.
    next_round: Option<Instant>,
    last_round: Option<Instant>,
}

impl Relookups {
    /// Asked again `first` after the first give-up, the pause doubling with each further one up
    /// to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max: max.max(first),
            waiting: HashMap::new(),
            next_round: None,
            last_round: None,
        }
    }

    /// The pause after the `failures`-th give-up in a row.
    pub fn pause(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.first.saturating_mul(1 << doublings).min(self.max)
    }

    /// A lookup of `key` for the event at `seq` was given up for the `failures`-th time in a
    /// row: it is asked again after the pause. A wait for a newer event of the same participant
    /// is kept instead.
    pub fn gave_up(
        &mut self,
        key: ParticipantKey,
        seq: i64,
        at: Option<DateTime<Utc>>,
        failures: u32,
        now: Instant,
    ) {
        let due = now + self.pause(failures);
        let waiting = Waiting {
            seq,
            at,
            failures,
            due,
        };
        match self.waiting.entry(key) {
            Entry::Occupied(e) if e.get().seq > seq => return,
            Entry::Occupied(mut e) => {
                e.insert(waiting);
            }
            Entry::Vacant(e) => {
                e.insert(waiting);
            }
        }
        // Rounds are at least `first` apart, so lookups given up at scattered times are asked
        // again together.
        let due = self
            .last_round
            .map_or(due, |last| due.max(last + self.first));
        self.next_round = Some(self.next_round.map_or(due, |next| next.min(due)));
    }

    /// A lookup of `key` is starting for a newer event: a wait for an older one is pointless.
    /// Returns how many times in a row the participant's lookups were given up, so that the
    /// pause keeps growing through an outage and the give-up is logged once.
    pub fn supersede(&mut self, key: &ParticipantKey) -> u32 {
        self.waiting.remove(key).map_or(0, |w| w.failures)
    }

    /// When the next round is due, if anything waits.
    pub fn next_round(&self) -> Option<Instant> {
        self.next_round
    }

    /// Starts a round: takes every lookup due by `now`.
    pub fn round(&mut self, now: Instant) -> Vec<(ParticipantKey, Waiting)> {
        self.last_round = Some(now);
        let due: Vec<ParticipantKey> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.due <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let taken = due
            .into_iter()
            .filter_map(|k| self.waiting.remove_entry(&k))
            .collect();
        self.next_round = self
            .waiting
            .values()
            .map(|w| w.due)
            .min()
            .map(|due| due.max(now + self.first));
        taken
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::Provider;

    fn key(id: &str) -> ParticipantKey {
        ParticipantKey::new(Provider::Jas, "101", id)
    }

    fn relookups() -> Relookups {
        Relookups::new(Duration::from_secs(5), Duration::from_secs(30))
    }

    #[test]
    fn the_pause_doubles_up_to_the_cap() {
        let r = relookups();
        let pauses: Vec<u64> = (1..=6).map(|n| r.pause(n).as_secs()).collect();
        assert_eq!(pauses, [5, 10, 20, 30, 30, 30]);
        assert_eq!(r.pause(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn a_lookup_is_due_after_its_pause_and_taken_once() {
        let mut r = relookups();
        let t0 = Instant::now();
        r.gave_up(key("1"), 7, None, 2, t0);
        assert_eq!(r.next_round(), Some(t0 + Duration::from_secs(10)));
        assert!(r.round(t0 + Duration::from_secs(9)).is_empty());
        let taken = r.round(t0 + Duration::from_secs(10));
        assert_eq!(taken.len(), 1);
        assert_eq!((taken[0].1.seq, taken[0].1.failures), (7, 2));
        assert_eq!((r.len(), r.next_round()), (0, None));
    }

    #[test]
    fn only_the_newest_sequence_waits() {
        let mut r = relookups();
        let t0 = Instant::now();
        r.gave_up(key("1"), 9, None, 1, t0);
        // The answer for an older event comes back later: it does not replace the newer wait.
        r.gave_up(key("1"), 8, None, 1, t0);
        assert_eq!(r.len(), 1);
        let taken = r.round(t0 + Duration::from_secs(5));
        assert_eq!(taken[0].1.seq, 9);
        // A lookup started by a newer event takes over the wait and its failure count.
        r.gave_up(key("1"), 9, None, 3, t0);
        assert_eq!(r.supersede(&key("1")), 3);
        assert_eq!(r.supersede(&key("1")), 0);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn rounds_are_at_least_the_first_pause_apart() {
        let mut r = relookups();
        let t0 = Instant::now();
        r.gave_up(key("1"), 1, None, 1, t0);
        assert_eq!(r.round(t0 + Duration::from_secs(5)).len(), 1);
        // Given up again a moment after that round: due in 5 s anyway.
        r.gave_up(key("2"), 1, None, 1, t0 + Duration::from_secs(1));
        r.gave_up(key("3"), 1, None, 1, t0 + Duration::from_secs(3));
        assert_eq!(r.next_round(), Some(t0 + Duration::from_secs(10)));
        let mut taken: Vec<String> = r
            .round(t0 + Duration::from_secs(10))
            .into_iter()
            .map(|(k, _)| k.participant_id)
            .collect();
        taken.sort();
        // Due at 6 s and 8 s, both are asked in the round at 10 s.
        assert_eq!(taken, ["2", "3"]);
    }
}
