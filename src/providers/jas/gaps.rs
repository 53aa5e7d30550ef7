//! Gaps in `data.sequence`: a number skipped that later events do not fill within a few seconds
//! may be a webhook JAS never delivered, so it asks for a reconciliation (SPEC §8). A gap only
//! ever asks for a snapshot; it changes no state. Sequences may be per connection and may
//! start over, so the rule is deliberately loose: only numbers above the highest seen open a
//! gap, a number far below it starts the count over, and the reconciler runs at most one
//! snapshot per `GAP_PAUSE` for gaps however many there are.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How long a gap may stay open before it asks for a snapshot: deliveries overtake each other
/// by a fraction of a second, so a number still missing after this is likely lost.
pub const GAP_WAIT: Duration = Duration::from_secs(3);
/// The fewest seconds between two runs a gap asks for (after any run).
pub const GAP_PAUSE: Duration = Duration::from_secs(10);
/// A number this far below the highest seen, filling no gap, starts the count over (a new
/// connection or a restarted sender).
const RESTART_BELOW: i64 = 1000;
/// Open gaps kept at most; a burst of them asks for one snapshot anyway.
const MAX_OPEN: usize = 64;

/// Sequences seen on the JAS route and the gaps among them. A std Mutex: held for a few
/// comparisons, never across an `.await`.
#[derive(Default)]
pub struct Gaps {
    state: Mutex<State>,
    /// Wakes the reconciler when a gap opens.
    opened: Notify,
}

#[derive(Default)]
struct State {
    highest: Option<i64>,
    /// Missing numbers `lo..=hi` and when they were first missed, oldest first.
    open: Vec<(i64, i64, Instant)>,
}

impl Gaps {
    /// Notes an accepted event's sequence, received at `now`.
    pub fn note(&self, seq: i64, now: Instant) {
        let opened = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            st.note(seq, now)
        };
        if opened {
            self.opened.notify_one();
        }
    }

    /// When the oldest open gap asks for a snapshot.
    pub fn due(&self) -> Option<Instant> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.open.iter().map(|(_, _, at)| *at + GAP_WAIT).min()
    }

    /// A snapshot asked for at `started` covers the gaps already open then.
    pub fn covered(&self, started: Instant) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.open.retain(|(_, _, at)| *at > started);
    }

    /// Until a gap opens.
    pub async fn opened(&self) {
        self.opened.notified().await
    }

    #[cfg(test)]
    fn open(&self) -> Vec<(i64, i64)> {
        let st = self.state.lock().unwrap();
        st.open.iter().map(|(lo, hi, _)| (*lo, *hi)).collect()
    }
}

impl State {
    /// Returns whether a gap opened.
    fn note(&mut self, seq: i64, now: Instant) -> bool {
        let Some(highest) = self.highest else {
            self.highest = Some(seq);
            return false;
        };
        if seq > highest {
            self.highest = Some(seq);
            if seq > highest.saturating_add(1) && self.open.len() < MAX_OPEN {
                self.open.push((highest + 1, seq - 1, now));
                return true;
            }
            return false;
        }
        if let Some(i) = self
            .open
            .iter()
            .position(|(lo, hi, _)| (*lo..=*hi).contains(&seq))
        {
            let (lo, hi, at) = self.open.remove(i);
            // The rest of the range stays open, as old as it was.
            if seq < hi {
                self.open.insert(i, (seq + 1, hi, at));
            }
            if lo < seq {
                self.open.insert(i, (lo, seq - 1, at));
            }
        } else if seq < highest.saturating_sub(RESTART_BELOW) {
            self.highest = Some(seq);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skipped_number_opens_a_gap_that_a_late_event_fills() {
        let gaps = Gaps::default();
        let t0 = Instant::now();
        for seq in [1, 2, 3] {
            gaps.note(seq, t0);
        }
        assert_eq!(gaps.due(), None);
        gaps.note(7, t0);
        assert_eq!(gaps.open(), vec![(4, 6)]);
        assert_eq!(gaps.due(), Some(t0 + GAP_WAIT));
        gaps.note(5, t0 + Duration::from_secs(1));
        assert_eq!(gaps.open(), vec![(4, 4), (6, 6)]);
        gaps.note(4, t0);
        gaps.note(6, t0);
        assert_eq!(gaps.open(), vec![]);
        assert_eq!(gaps.due(), None);
    }

    #[test]
    fn duplicates_and_out_of_order_numbers_open_nothing() {
        let gaps = Gaps::default();
        let t0 = Instant::now();
        for seq in [10, 12, 11, 12, 11, 13] {
            gaps.note(seq, t0);
        }
        assert_eq!(gaps.open(), vec![]);
    }

    #[test]
    fn a_restarted_count_is_followed_without_a_gap() {
        let gaps = Gaps::default();
        let t0 = Instant::now();
        gaps.note(50_000, t0);
        gaps.note(1, t0);
        gaps.note(2, t0);
        assert_eq!(gaps.open(), vec![]);
        gaps.note(4, t0);
        assert_eq!(gaps.open(), vec![(3, 3)]);
    }

    #[test]
    fn a_run_covers_the_gaps_open_when_it_started() {
        let gaps = Gaps::default();
        let t0 = Instant::now();
        gaps.note(1, t0);
        gaps.note(3, t0);
        let later = t0 + Duration::from_secs(2);
        gaps.note(5, later);
        gaps.covered(t0 + Duration::from_secs(1));
        assert_eq!(gaps.open(), vec![(4, 4)]);
        assert_eq!(gaps.due(), Some(later + GAP_WAIT));
    }

    #[test]
    fn open_gaps_are_bounded() {
        let gaps = Gaps::default();
        let t0 = Instant::now();
        for seq in (0..10_000).step_by(2) {
            gaps.note(seq, t0);
        }
        assert_eq!(gaps.open().len(), MAX_OPEN);
    }
}
