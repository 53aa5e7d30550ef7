//! A provider's snapshot of who is on its calls, applied to the table by the ordering rules
//! (SPEC §8): add who the table lacks, remove who it holds as present but the snapshot lacks
//! (unless an event of theirs was received after the snapshot was asked for), never revive a
//! removed participant, and end `reconciled` a call that loses its last participant this way.

use std::collections::{BTreeSet, HashSet};

use chrono::{DateTime, Utc};

use super::compact::PKey;
use super::model::{CallKey, Details, EndReason, ParticipantKey, Provider};
use super::table::{CallTable, Changes};

/// The sequence a participant added from a snapshot is held at: below any the provider sends,
/// so that every later event of it (its own insert arriving late, its remove) applies.
pub const SNAPSHOT_SEQ: i64 = i64::MIN + 1;

/// Who the provider says is on its calls, as it was between `requested_at` and the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub provider: Provider,
    /// When it was asked for: an event received at or after this may be newer than the
    /// snapshot, so a participant it names is not removed for being missing.
    pub requested_at: DateTime<Utc>,
    pub participants: Vec<(ParticipantKey, Details)>,
}

/// What applying a snapshot would do to the table as it is now.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    /// Listed by the snapshot, unknown to the table (not even as a tombstone).
    pub add: Vec<(ParticipantKey, Details)>,
    /// Present in the table, not listed, and no event of theirs received since the request.
    pub remove: Vec<ParticipantKey>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

/// What a snapshot changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Repair {
    pub added: Vec<ParticipantKey>,
    pub removed: Vec<ParticipantKey>,
    /// Calls that lost their last participant to the snapshot: ended `reconciled`.
    pub ended: Vec<CallKey>,
}

impl CallTable {
    /// What `apply_snapshot` would change now. Reads only, so it may run beside the processor
    /// (to skip journaling a snapshot that changes nothing).
    pub fn snapshot_plan(&self, snapshot: &Snapshot) -> Plan {
        let listed: HashSet<&ParticipantKey> =
            snapshot.participants.iter().map(|(k, _)| k).collect();
        let add = snapshot
            .participants
            .iter()
            .filter(|(key, _)| !self.has_participant(key))
            .cloned()
            .collect();
        let requested = snapshot.requested_at;
        let mut remove: Vec<ParticipantKey> = self
            .present(snapshot.provider)
            .into_iter()
            .filter(|(key, touched)| !listed.contains(key) && *touched < requested)
            .map(|(key, _)| key)
            .collect();
        remove.sort();
        Plan { add, remove }
    }

    /// Applies a journaled snapshot at `now` (its row's `received_at`, so a replay gives the
    /// same state). The participant's "event received after the request" is its row's
    /// `last_activity`, the time of the last journal row (or lookup answer) that touched it.
    pub fn apply_snapshot(&self, snapshot: &Snapshot, now: DateTime<Utc>) -> (Changes, Repair) {
        let plan = self.snapshot_plan(snapshot);
        let mut changes = Changes::default();
        let mut repair = Repair::default();
        for (key, details) in plan.add {
            // Held at the lowest sequence with its snapshot status as a provisional first
            // status: direction is decided from it by the same rule as from a lookup, until
            // details answering an event of its own (older or not) say how it was first seen.
            let c = self.details(&key, SNAPSHOT_SEQ, details, Some(now), now);
            self.provisional_first_status(&key);
            changes.merge(c);
            repair.added.push(key);
        }
        let mut touched: BTreeSet<CallKey> = BTreeSet::new();
        for key in plan.remove {
            let Some(t) = self.participant(&key) else {
                continue;
            };
            if let Some(call) = t.call_key() {
                touched.insert(call);
            }
            // At its own newest sequence: final, as any remove is.
            let c = self.remove(&key, t.last_seq, Some(now), now);
            if c.applied {
                repair.removed.push(key);
            }
            changes.merge(c);
        }
        for call in touched {
            if self.is_active(&call) && !self.has_present_member(&call) {
                changes.merge(self.end_call(&call, EndReason::Reconciled, Some(now), now));
                repair.ended.push(call);
            }
        }
        changes.applied = !(repair.added.is_empty() && repair.removed.is_empty());
        (changes, repair)
    }

    fn is_active(&self, call: &CallKey) -> bool {
        self.call_state(call) == Some(super::CallState::Active)
    }

    /// Lets the first details answering one of its own events decide how it was first seen.
    fn provisional_first_status(&self, key: &ParticipantKey) {
        self.with_row(&PKey::of(key), |t| t.first_details_seq = i64::MAX);
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::calls::{CallState, Direction};

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    fn key(dn: &str, id: &str) -> ParticipantKey {
        ParticipantKey::new(Provider::Jas, dn, id)
    }

    fn details(call: &str, status: &str) -> Details {
        Details {
            call_id: call.into(),
            status: status.into(),
            party_dn: "10000".into(),
            party_dn_type: "Wexternalline".into(),
            ..Default::default()
        }
    }

    /// An insert at `s`, received at `t(s)`, answered at once by its lookup.
    fn joined(table: &CallTable, k: &ParticipantKey, s: i64, status: &str) {
        table.upsert(k, s, Some(t(s)), t(s));
        table.details(k, s, details("26", status), Some(t(s)), t(s));
    }

    fn snapshot(requested: i64, listed: &[(&ParticipantKey, &str)]) -> Snapshot {
        Snapshot {
            provider: Provider::Jas,
            requested_at: t(requested),
            participants: listed
                .iter()
                .map(|(k, status)| ((*k).clone(), details("26", status)))
                .collect(),
        }
    }

    fn call(table: &CallTable) -> crate::calls::Call {
        table.call(&CallKey::new(Provider::Jas, "26")).unwrap()
    }

    #[test]
    fn a_call_whose_last_participant_is_missing_ends_reconciled() {
        let table = CallTable::new(crate::providers::DIRECTIONS);
        let (a, b) = (key("101", "1"), key("102", "2"));
        joined(&table, &a, 1, "Connected");
        joined(&table, &b, 2, "Connected");
        let (changes, repair) = table.apply_snapshot(&snapshot(10, &[(&a, "Connected")]), t(11));
        assert_eq!(repair.removed, vec![b.clone()]);
        assert!(repair.ended.is_empty());
        assert!(changes.applied);
        assert_eq!(call(&table).state, CallState::Active);

        let (_, repair) = table.apply_snapshot(&snapshot(20, &[]), t(21));
        assert_eq!(repair.removed, vec![a.clone()]);
        assert_eq!(repair.ended, vec![CallKey::new(Provider::Jas, "26")]);
        let c = call(&table);
        assert_eq!(c.state, CallState::Ended);
        assert_eq!(c.end_reason, Some(EndReason::Reconciled));
        assert_eq!(c.ended_at, Some(t(21)));
        // The lost remove arriving after changes nothing.
        assert!(!table.remove(&a, 3, Some(t(3)), t(22)).applied);
        assert_eq!(call(&table).end_reason, Some(EndReason::Reconciled));
    }

    #[test]
    fn an_event_received_after_the_request_keeps_its_participant() {
        let table = CallTable::new(crate::providers::DIRECTIONS);
        let a = key("101", "1");
        // Received at t(10), the very moment the snapshot was asked for: possibly newer.
        joined(&table, &a, 10, "Ringing");
        let plan = table.snapshot_plan(&snapshot(10, &[]));
        assert!(plan.is_empty(), "{plan:?}");
        let (changes, repair) = table.apply_snapshot(&snapshot(10, &[]), t(11));
        assert_eq!(repair, Repair::default());
        assert!(!changes.applied);
        // Asked for after it: removed.
        let (_, repair) = table.apply_snapshot(&snapshot(11, &[]), t(12));
        assert_eq!(repair.removed, vec![a]);
    }

    #[test]
    fn a_removed_participant_stays_removed() {
        let table = CallTable::new(crate::providers::DIRECTIONS);
        let (a, b) = (key("101", "1"), key("102", "2"));
        joined(&table, &a, 1, "Connected");
        joined(&table, &b, 2, "Connected");
        table.remove(&a, 3, Some(t(3)), t(3));
        let (_, repair) =
            table.apply_snapshot(&snapshot(2, &[(&a, "Connected"), (&b, "Connected")]), t(4));
        assert_eq!(repair, Repair::default());
        assert!(table.participant(&a).unwrap().is_removed());
    }

    #[test]
    fn a_participant_never_announced_is_added_with_the_snapshots_details() {
        let table = CallTable::new(crate::providers::DIRECTIONS);
        let a = key("101", "1");
        let (changes, repair) = table.apply_snapshot(&snapshot(5, &[(&a, "Ringing")]), t(6));
        assert_eq!(repair.added, vec![a.clone()]);
        assert!(changes.calls.contains(&CallKey::new(Provider::Jas, "26")));
        let c = call(&table);
        assert_eq!(c.state, CallState::Active);
        assert_eq!(c.participants[0].status, "Ringing");
        assert_eq!(c.participants[0].joined_at, Some(t(6)));
        // As a looked-up participant first seen ringing from an external line.
        assert_eq!(c.direction, Direction::Inbound);
        assert!(table.awaiting_lookup().is_empty(), "no lookup is needed");
    }

    #[test]
    fn the_late_events_of_an_added_participant_decide_as_if_it_came_in_order() {
        let table = CallTable::new(crate::providers::DIRECTIONS);
        let a = key("101", "1");
        table.apply_snapshot(&snapshot(5, &[(&a, "Connected")]), t(6));
        assert_eq!(call(&table).direction, Direction::Unknown);
        // Its own insert, delayed: applied, and its lookup says how it was first seen.
        assert!(table.upsert(&a, 1, Some(t(1)), t(7)).applied);
        table.details(&a, 1, details("26", "Dialing"), Some(t(1)), t(7));
        let c = call(&table);
        assert_eq!(c.direction, Direction::Outbound);
        assert_eq!(c.participants[0].joined_at, Some(t(1)));
        // And its remove ends the call as any remove does.
        table.remove(&a, 2, Some(t(8)), t(8));
        table.end_due(t(100));
        let c = call(&table);
        assert_eq!(c.end_reason, Some(EndReason::Completed));
    }
}
