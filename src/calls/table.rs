//! `CallTable`: participants by key, calls by id, and `apply`-style methods that hold every
//! ordering rule. Each method returns what it changed so the processor can persist exactly that.

use std::collections::BTreeSet;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use dashmap::DashMap;
use dashmap::mapref::one::RefMut;
use serde_json::Value;

use super::compact::{CKey, Held, MemberKey, PKey};
use super::direction::{DirectionRule, decide};
use super::model::{
    Call, CallKey, CallState, Details, EndReason, Participant, ParticipantKey, Recording, Tracked,
};

/// How long a call that looks over (nobody present, no provider saying it ended) waits before
/// it is ended. Out of order, a call can look over before its last participant has even joined
/// (A joins, A leaves, then B's join arrives); inside the grace such a late event resumes it and
/// no `call.ended` has gone out. 5 s: a provider sends one call's webhooks within milliseconds of
/// each other over separate connections, so the reordering seen is a fraction of a second, and
/// one quick retry of a refused delivery fits too; longer would hold back `call.ended`, which a
/// CRM waits for to close its ticket, for no gain. An event later than this still updates the
/// ended call's record (participants, details, recordings) but never reopens it.
pub const END_GRACE: Duration = Duration::seconds(5);

/// A call started, ended, or came back (a participant joined during its grace: events
/// delivered out of order).
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Started(CallKey),
    Ended(CallKey),
    Resumed(CallKey),
}

/// What one input changed: the rows to persist and the transitions to log.
#[derive(Debug, Default)]
pub struct Changes {
    /// Whether the input was applied at all (false: older than what is known, or tombstoned).
    pub applied: bool,
    pub participants: BTreeSet<ParticipantKey>,
    pub calls: BTreeSet<CallKey>,
    /// Removed from memory (evicted or never tracked); their rows are deleted or left as they are.
    pub dropped_participants: BTreeSet<ParticipantKey>,
    pub transitions: Vec<Transition>,
}

impl Changes {
    /// Rows to write (participants, dropped or not, and calls).
    pub fn len(&self) -> usize {
        self.participants.len() + self.calls.len() + self.dropped_participants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn merge(&mut self, other: Changes) {
        self.applied |= other.applied;
        self.participants.extend(other.participants);
        self.calls.extend(other.calls);
        self.dropped_participants.extend(other.dropped_participants);
        self.transitions.extend(other.transitions);
    }
}

/// A call's own start and end times when no participant supplies them (a recording's).
type OwnTimes = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// A call as held: its `Call` without its id (the map's key) and with its members' keys where
/// the participants' views go (built from their rows when read), and what only the table needs.
struct CallRecord {
    call: Call<(), MemberKey>,
    /// Wall clock of the last change, for the stale sweep and eviction.
    last_activity: DateTime<Utc>,
    /// Why and when the call was ended by something other than its last participant leaving.
    forced_end: Option<(EndReason, DateTime<Utc>)>,
    /// When it came from a recording of a call never seen (no participants): its own times.
    recording_times: Option<OwnTimes>,
    /// What the call-event producer last made events from (see [`Mark`]).
    mark: Option<Mark>,
}

/// What the call-event producer (`events/produce.rs`) saw of a call when it last made events
/// for it, packed by the producer; the table only holds it. **Why here:** in a map of the
/// producer's own it cost a second copy of every call's key, the map's slots and a `Vec` per
/// call, about 90 B per active participant (BENCHMARKS.md, tenth round); in the record it
/// costs one boxed slice and goes when the call does.
pub type Mark = Box<[u64]>;

// Memory per active participant counts the calls too (a call for every two in the bench), so the
// record holding a `Call` is no larger than the struct of its own it replaced (200 bytes) plus
// the producer's mark, and an end reason no larger than the text it was.
const _: () =
    assert!(std::mem::size_of::<CallRecord>() <= 200 + std::mem::size_of::<Option<Mark>>());
const _: () =
    assert!(std::mem::size_of::<Option<EndReason>>() == std::mem::size_of::<Option<super::Text>>());

/// Written only by the processor; read by the admin API. No guard is ever held across an
/// `.await` (nothing here is async), and no method holds a guard of one map while locking the
/// same map again, nor a guard of either map while locking the other.
///
/// Values are boxed: a map keeps up to half its slots empty, and an empty slot costs the size of
/// a value, so slots hold a pointer rather than a few hundred bytes.
#[derive(Default)]
pub struct CallTable {
    participants: DashMap<PKey, Box<Held>>,
    calls: DashMap<CKey, Box<CallRecord>>,
    /// Each provider's direction rule (`providers::DIRECTIONS`).
    directions: &'static [(super::Provider, DirectionRule)],
    /// How long a call that looks over waits before it is ended (`END_GRACE` unless configured).
    grace: Duration,
    /// The calls in their grace, by deadline, so finding the due ones costs no walk of every
    /// call. Locked only by the processor, never while a guard of either map is held.
    ending: Mutex<BTreeSet<(DateTime<Utc>, CallKey)>>,
}

impl CallTable {
    pub fn new(directions: &'static [(super::Provider, DirectionRule)]) -> Self {
        Self {
            directions,
            grace: END_GRACE,
            ..Self::default()
        }
    }

    /// The same table with another grace (`calls.end_grace_ms`; tests use a short one).
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The earliest deadline of a call in its grace.
    pub fn next_end(&self) -> Option<DateTime<Utc>> {
        self.ending_index().first().map(|(at, _)| *at)
    }

    /// Ends every call whose grace is over by `clock` (a journal row's `received_at`, or the
    /// wall clock once every committed row is applied), each with its deadline and changes. The
    /// change is dated at the deadline, not at `clock`, so whatever ends it (a later row, the
    /// timer, a restart) the call comes out the same.
    pub fn end_due(&self, clock: DateTime<Utc>) -> Vec<(CallKey, DateTime<Utc>, Changes)> {
        let mut due = vec![];
        loop {
            let next = {
                let mut ending = self.ending_index();
                match ending.first() {
                    Some((at, _)) if *at <= clock => ending.pop_first(),
                    _ => None,
                }
            };
            let Some((deadline, key)) = next else {
                break;
            };
            let ckey = CKey::of(&key);
            let mut changes = Changes::default();
            match self.calls.get_mut(&ckey) {
                Some(mut rec) if rec.call.ends_at == Some(deadline) => {
                    rec.call.ends_at = None;
                    rec.call.state = CallState::Ended;
                }
                _ => continue,
            }
            changes.applied = true;
            self.refresh(&ckey, deadline, &mut changes);
            changes.transitions.push(Transition::Ended(key.clone()));
            due.push((key, deadline, changes));
        }
        due
    }

    fn ending_index(&self) -> std::sync::MutexGuard<'_, BTreeSet<(DateTime<Utc>, CallKey)>> {
        // Nothing panics while holding it; a poisoned lock still holds a whole set.
        self.ending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves a call's entry in `ending` from `old` to `new` deadline.
    fn reindex(&self, key: &CKey, old: Option<DateTime<Utc>>, new: Option<DateTime<Utc>>) {
        if old == new {
            return;
        }
        let mut ending = self.ending_index();
        if let Some(old) = old {
            ending.remove(&(old, key.to_key()));
        }
        if let Some(new) = new {
            ending.insert((new, key.to_key()));
        }
    }

    /// An insert or update event at `seq`. Returns `applied = true` when it is the newest thing
    /// known about a participant that has not left, which is when a lookup is worth starting.
    pub fn upsert(
        &self,
        key: &ParticipantKey,
        seq: i64,
        at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Changes {
        let mut changes = Changes::default();
        let mut t = self.row(PKey::of(key), now);
        t.seen_at(at);
        t.last_activity = now;
        if t.swept && seq > t.last_seq {
            // The stale sweep ended it, yet the provider is still talking about it.
            t.swept = false;
            t.removed_seq = None;
            t.left_at = None;
        }
        if !t.is_removed() && seq >= t.last_seq {
            t.last_seq = seq;
            changes.applied = true;
        } else {
            t.last_seq = t.last_seq.max(seq);
        }
        let call = t.call_key(key.provider);
        drop(t);
        self.participant_changed(key, call, now, &mut changes);
        changes
    }

    /// A remove at `seq`: final, unless it is older than an event already applied.
    pub fn remove(
        &self,
        key: &ParticipantKey,
        seq: i64,
        at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Changes {
        let mut changes = Changes::default();
        let mut t = self.row(PKey::of(key), now);
        t.last_activity = now;
        if t.is_removed() || seq < t.last_seq {
            return changes;
        }
        t.last_seq = seq;
        t.removed_seq = Some(seq);
        t.left_at = Some(at.unwrap_or(now));
        let call = t.call_key(key.provider);
        drop(t);
        changes.applied = true;
        self.participant_changed(key, call, now, &mut changes);
        changes
    }

    /// Notes a participant's row as changed and refreshes the call it is on.
    fn participant_changed(
        &self,
        key: &ParticipantKey,
        call: Option<CKey>,
        now: DateTime<Utc>,
        changes: &mut Changes,
    ) {
        changes.participants.insert(key.clone());
        if let Some(call) = call {
            self.refresh(&call, now, changes);
        }
    }

    /// Details that answer the event at `seq` (a lookup, or the event itself). The newest
    /// details say which call the participant is on; the oldest say how it was first seen. A
    /// participant that already left stays gone, but its details still say which call it was on.
    pub fn details(
        &self,
        key: &ParticipantKey,
        seq: i64,
        details: Details,
        at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Changes {
        let mut changes = Changes::default();
        let pkey = PKey::of(key);
        let mut t = self.row(pkey.clone(), now);
        t.last_activity = now;
        t.seen_at(at);
        if seq < t.first_details_seq {
            t.first_details_seq = seq;
            t.first_status = Some(details.status.clone());
            changes.applied = true;
        }
        let old_call = t.call_key(key.provider);
        if seq >= t.details_seq {
            t.details_seq = seq;
            t.updated_at = at.or(Some(now));
            t.details = Some(details);
            changes.applied = true;
        }
        t.last_seq = t.last_seq.max(seq);
        let new_call = t.call_key(key.provider);
        drop(t);
        if !changes.applied {
            return changes;
        }
        changes.participants.insert(key.clone());
        if let Some(old) = old_call.filter(|old| Some(old) != new_call.as_ref()) {
            if let Some(mut rec) = self.calls.get_mut(&old) {
                rec.remove_member(&pkey.member);
            }
            self.refresh(&old, now, &mut changes);
        }
        if let Some(call) = new_call {
            let created = !self.calls.contains_key(&call);
            // A call first known from its recording or summary has no members yet: its first
            // present participant starts it rather than resuming it.
            let memberless = self
                .calls
                .get(&call)
                .is_some_and(|r| r.call.participants.is_empty());
            self.calls
                .entry(call.clone())
                .or_insert_with(|| Box::new(CallRecord::new(now)))
                .add_member(pkey.member);
            self.refresh(&call, now, &mut changes);
            let call = call.to_key();
            if memberless {
                // Its first present participant starts it rather than resuming it.
                for t in changes.transitions.iter_mut() {
                    if *t == Transition::Resumed(call.clone()) {
                        *t = Transition::Started(call.clone());
                    }
                }
            } else if created {
                // Seen first (even already gone: it then ends when its grace is over).
                changes.transitions.push(Transition::Started(call));
            }
        }
        changes
    }

    /// A participant's row, a new one if it has none.
    fn row(&self, key: PKey, now: DateTime<Utc>) -> RefMut<'_, PKey, Box<Held>> {
        self.participants
            .entry(key)
            .or_insert_with(|| Box::new(Held::new((), now)))
    }

    /// A participant that is not visible to this token (403): not tracked at all.
    pub fn forget(&self, key: &ParticipantKey, now: DateTime<Utc>) -> Changes {
        let mut changes = Changes::default();
        let pkey = PKey::of(key);
        let Some((_, t)) = self.participants.remove(&pkey) else {
            return changes;
        };
        changes.applied = true;
        changes.dropped_participants.insert(key.clone());
        if let Some(call) = t.call_key(key.provider) {
            if let Some(mut rec) = self.calls.get_mut(&call) {
                rec.remove_member(&pkey.member);
            }
            self.refresh(&call, now, &mut changes);
        }
        changes
    }

    /// Ends a call whatever its participants say (TeleCMI leg a hang-up or CDR, stale sweep):
    /// every member becomes a tombstone.
    pub fn end_call(
        &self,
        call: &CallKey,
        reason: EndReason,
        at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Changes {
        self.end(&CKey::of(call), reason, at, now)
    }

    fn end(
        &self,
        call: &CKey,
        reason: EndReason,
        at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Changes {
        let mut changes = Changes::default();
        let at = at.unwrap_or(now);
        let members: Vec<MemberKey> = match self.calls.get_mut(call) {
            Some(mut rec) => {
                if rec.forced_end.is_none() && rec.call.state == CallState::Active {
                    rec.forced_end = Some((reason.clone(), at));
                }
                rec.call.participants.clone()
            }
            None => {
                let mut rec = CallRecord::ended(now);
                rec.forced_end = Some((reason.clone(), at));
                self.calls.insert(call.clone(), Box::new(rec));
                vec![]
            }
        };
        for member in members {
            let key = PKey {
                provider: call.provider,
                member,
            };
            if let Some(mut t) = self.participants.get_mut(&key) {
                if !t.is_removed() {
                    t.removed_seq = Some(t.last_seq);
                    t.left_at = Some(at);
                    t.swept = reason == EndReason::Stale;
                    changes.participants.insert(key.to_key());
                }
            }
        }
        changes.applied = true;
        self.refresh(call, now, &mut changes);
        changes
    }

    /// Adds or updates a recording on its call; a call never seen is created with the
    /// recording's own times and nobody on it, so it ends when its grace is over unless its
    /// participants' events come in the meantime.
    pub fn attach_recording(
        &self,
        call: &CallKey,
        recording: Recording,
        times: OwnTimes,
        now: DateTime<Utc>,
    ) -> Changes {
        let mut changes = Changes::default();
        let call = CKey::of(call);
        {
            let mut rec = self.calls.entry(call.clone()).or_insert_with(|| {
                let mut rec = CallRecord::new(now);
                rec.recording_times = Some(times);
                Box::new(rec)
            });
            match rec
                .call
                .recordings
                .iter_mut()
                .find(|r| r.id == recording.id)
            {
                Some(existing) => *existing = recording,
                None => rec.call.recordings.push(recording),
            }
        }
        changes.applied = true;
        self.refresh(&call, now, &mut changes);
        changes
    }

    /// Keeps a call summary verbatim on the call it names.
    pub fn attach_summary(&self, call: &CallKey, summary: Value, now: DateTime<Utc>) -> Changes {
        let mut changes = Changes::default();
        let call = CKey::of(call);
        {
            let mut rec = self.calls.entry(call.clone()).or_insert_with(|| {
                let mut rec = CallRecord::new(now);
                rec.recording_times = Some((None, None));
                Box::new(rec)
            });
            rec.call.summary = Some(Box::new(summary));
        }
        changes.applied = true;
        self.refresh(&call, now, &mut changes);
        changes
    }

    /// Ends every active call without an event for `idle`, and forgets participants that never
    /// joined a call (their lookup never answered) after the same time.
    pub fn sweep_stale(&self, now: DateTime<Utc>, idle: Duration) -> Changes {
        let cutoff = now - idle;
        let stale: Vec<CKey> = self
            .calls
            .iter()
            .filter(|r| r.call.state == CallState::Active && r.last_activity < cutoff)
            .map(|r| r.key().clone())
            .collect();
        let mut changes = Changes::default();
        for call in stale {
            changes.merge(self.end(&call, EndReason::Stale, Some(now), now));
        }
        let orphans: Vec<PKey> = self
            .participants
            .iter()
            .filter(|t| t.details.is_none() && t.last_activity < cutoff)
            .map(|t| t.key().clone())
            .collect();
        for key in orphans {
            self.participants.remove(&key);
            changes.dropped_participants.insert(key.to_key());
        }
        changes
    }

    /// Drops ended calls (and their participants' tombstones) untouched since `before` from
    /// memory; they stay in the database's history.
    pub fn evict_ended(&self, before: DateTime<Utc>) -> usize {
        let old: Vec<CKey> = self
            .calls
            .iter()
            .filter(|r| r.call.state == CallState::Ended && r.last_activity < before)
            .map(|r| r.key().clone())
            .collect();
        for call in &old {
            if let Some((_, rec)) = self.calls.remove(call) {
                for member in rec.call.participants {
                    self.participants.remove(&PKey {
                        provider: call.provider,
                        member,
                    });
                }
            }
        }
        old.len()
    }

    /// Active calls, oldest first.
    pub fn active_calls(&self) -> Vec<Call> {
        // Copied out first: the views read the participants map, and no guard of the calls map
        // may be held meanwhile.
        let shells: Vec<(Call, Vec<MemberKey>)> = self
            .calls
            .iter()
            .filter(|r| r.call.state == CallState::Active)
            .map(|r| r.shell(r.key()))
            .collect();
        let mut calls: Vec<Call> = shells
            .into_iter()
            .map(|(call, members)| self.with_participants(call, &members))
            .collect();
        calls.sort_by(|a, b| {
            a.started_at
                .cmp(&b.started_at)
                .then_with(|| a.key.call_id.cmp(&b.key.call_id))
        });
        calls
    }

    pub fn active_count(&self, provider: super::Provider) -> usize {
        self.calls
            .iter()
            .filter(|r| r.call.state == CallState::Active && r.key().provider == provider)
            .count()
    }

    pub fn call(&self, key: &CallKey) -> Option<Call> {
        self.call_row(key).map(|(call, _)| call)
    }

    /// Sets the producer's mark of a call in memory and returns the one it replaces, if any.
    pub fn replace_mark(&self, key: &CallKey, mark: Mark) -> Option<Mark> {
        self.calls
            .get_mut(&CKey::of(key))
            .and_then(|mut rec| rec.mark.replace(mark))
    }

    /// Sets the producer's mark of a call in memory that has none yet.
    pub fn init_mark(&self, key: &CallKey, mark: impl FnOnce() -> Mark) {
        if let Some(mut rec) = self.calls.get_mut(&CKey::of(key)) {
            if rec.mark.is_none() {
                rec.mark = Some(mark());
            }
        }
    }

    pub fn participant(&self, key: &ParticipantKey) -> Option<Tracked> {
        self.participants
            .get(&PKey::of(key))
            .map(|t| Held::clone(&t).keyed(key.clone()))
    }

    /// The persisted form of a call: its JSON and the wall clock of its last change.
    pub fn call_row(&self, key: &CallKey) -> Option<(Call, DateTime<Utc>)> {
        let ckey = CKey::of(key);
        let (shell, members, last_activity) = {
            let r = self.calls.get(&ckey)?;
            let (shell, members) = r.shell(&ckey);
            (shell, members, r.last_activity)
        };
        Some((self.with_participants(shell, &members), last_activity))
    }

    pub fn len(&self) -> (usize, usize) {
        (self.participants.len(), self.calls.len())
    }

    /// Participants whose newest event was not answered by a lookup yet (the process stopped
    /// while it was in flight): the processor asks again after a restart.
    pub fn awaiting_lookup(&self) -> Vec<(ParticipantKey, i64)> {
        self.participants
            .iter()
            .filter(|t| !t.is_removed() && t.last_seq > t.details_seq)
            .map(|t| (t.key().to_key(), t.last_seq))
            .collect()
    }

    /// Rebuilds the table from persisted rows (restart).
    pub fn restore(&self, participants: Vec<Tracked>, calls: Vec<(Call, DateTime<Utc>)>) {
        for (call, last_activity) in calls {
            let key = CKey::of(&call.key);
            let ending = call.ends_at.filter(|_| call.state == CallState::Active);
            let forced_end = match (&call.end_reason, call.ended_at) {
                (Some(reason), Some(at)) if *reason != EndReason::Completed => {
                    Some((reason.clone(), at))
                }
                _ => None,
            };
            let recording_times = call
                .participants
                .is_empty()
                .then_some((call.started_at, call.ended_at));
            // The participants' views are dropped: they are rebuilt from the members' rows.
            // A call already in memory is newer than its row: kept as it is.
            let mut restored = false;
            self.calls.entry(key.clone()).or_insert_with(|| {
                restored = true;
                let mut call = call.keyed((), vec![]);
                call.ends_at = ending;
                Box::new(CallRecord {
                    call,
                    last_activity,
                    forced_end,
                    recording_times,
                    mark: None,
                })
            });
            if let Some(at) = ending.filter(|_| restored) {
                self.ending_index().insert((at, key.to_key()));
            }
        }
        for t in participants {
            // A participant already in memory is newer than its row (state is written a moment
            // after it changes), so a call loaded late never overwrites one: it is only linked
            // to the call its in-memory version names.
            let key = PKey::of(&t.key);
            let held = t.keyed(());
            let in_memory = self
                .participants
                .get(&key)
                .map(|current| current.call_key(key.provider));
            let known = in_memory.is_some();
            let call = match in_memory {
                Some(call) => call,
                None => held.call_key(key.provider),
            };
            if let Some(call) = call {
                if let Some(mut rec) = self.calls.get_mut(&call) {
                    rec.add_member(key.member.clone());
                }
            }
            if !known {
                self.participants.insert(key, Box::new(held));
            }
        }
    }

    /// Every participant of `provider` held as present, with the wall clock of the last change
    /// that touched it (for a snapshot's "received after it was asked for").
    pub(super) fn present(
        &self,
        provider: super::Provider,
    ) -> Vec<(ParticipantKey, DateTime<Utc>)> {
        self.participants
            .iter()
            .filter(|t| t.key().provider == provider && !t.is_removed())
            .map(|t| (t.key().to_key(), t.last_activity))
            .collect()
    }

    /// Whether any member of the call is present.
    pub(super) fn has_present_member(&self, call: &CallKey) -> bool {
        let ckey = CKey::of(call);
        let Some(members) = self.calls.get(&ckey).map(|r| r.call.participants.clone()) else {
            return false;
        };
        members.into_iter().any(|member| {
            let key = PKey {
                provider: ckey.provider,
                member,
            };
            self.participants.get(&key).is_some_and(|t| !t.is_removed())
        })
    }

    pub(super) fn call_state(&self, call: &CallKey) -> Option<CallState> {
        self.calls.get(&CKey::of(call)).map(|r| r.call.state)
    }

    /// Changes a participant's row in place (no refresh: for what no call is decided from).
    pub(super) fn with_row(&self, key: &PKey, change: impl FnOnce(&mut Held)) {
        if let Some(mut t) = self.participants.get_mut(key) {
            change(&mut t);
        }
    }

    pub fn has_participant(&self, key: &ParticipantKey) -> bool {
        self.participants.contains_key(&PKey::of(key))
    }

    pub fn has_call(&self, key: &CallKey) -> bool {
        self.calls.contains_key(&CKey::of(key))
    }

    /// A call's participants, as views of its members' current rows. The one change to a row that
    /// does not refresh its call is a details answer too old to apply moving `joined_at` earlier:
    /// the view shows it at once, the call's `started_at` at its next refresh. (When `Call` held
    /// copies, the copy lagged too.) Readers other than the processor may also see a row a
    /// moment before its call is refreshed; the processor, the only writer, never does.
    fn with_participants(&self, mut call: Call, members: &[MemberKey]) -> Call {
        let mut participants: Vec<Participant> = members
            .iter()
            .filter_map(|member| {
                let key = PKey {
                    provider: call.key.provider,
                    member: member.clone(),
                };
                self.participants
                    .get(&key)
                    .map(|t| t.view_as(&member.dn, &member.participant_id))
            })
            .collect();
        participants.sort_by(|a, b| {
            a.joined_at
                .cmp(&b.joined_at)
                .then_with(|| a.dn.cmp(&b.dn))
                .then_with(|| a.participant_id.cmp(&b.participant_id))
        });
        call.participants = participants;
        call
    }

    /// Recomputes a call from its members: state, times, direction. Every rule that depends on
    /// more than one participant lives here.
    fn refresh(&self, key: &CKey, now: DateTime<Utc>, changes: &mut Changes) {
        let Some(members) = self.calls.get(key).map(|r| r.call.participants.clone()) else {
            return;
        };
        // Copies, so that no participant guard is held while the call's guard is.
        let tracked: Vec<(MemberKey, Held)> = members
            .into_iter()
            .filter_map(|member| {
                let pkey = PKey {
                    provider: key.provider,
                    member,
                };
                let held = self.participants.get(&pkey).map(|t| Held::clone(&t))?;
                Some((pkey.member, held))
            })
            .collect();
        let Some(mut rec) = self.calls.get_mut(key) else {
            return;
        };
        let before = rec.call.state;
        let was_ending = rec.call.ends_at;
        let any_present = tracked.iter().any(|(_, t)| !t.is_removed());

        if tracked.is_empty()
            && rec.call.recordings.is_empty()
            && rec.call.summary.is_none()
            && rec.forced_end.is_none()
        {
            // A call that only existed through a participant that moved elsewhere.
            drop(rec);
            self.calls.remove(key);
            self.reindex(key, was_ending, None);
            changes.calls.insert(key.to_key());
            return;
        }

        let sides: Vec<_> = tracked.iter().map(|(k, t)| t.side(&k.dn)).collect();
        let direction = decide(self.directions, key.provider, &sides);
        let joined = tracked.iter().filter_map(|(_, t)| t.joined_at).min();
        let left = tracked.iter().filter_map(|(_, t)| t.left_at).max();
        let (rec_start, rec_end) = rec.recording_times.unwrap_or((None, None));
        let forced_end = rec.forced_end.clone();
        rec.call.direction = direction;
        rec.call.started_at = joined.or(rec_start);
        // Ended is final: a later event updates the record (participants, times, recordings)
        // but never reopens it, so `call.ended` goes out once and nothing is said after it but
        // recordings and the summary.
        let ends = before == CallState::Ended || (!any_present && forced_end.is_some());
        if ends {
            rec.call.state = CallState::Ended;
            rec.call.ends_at = None;
            match forced_end {
                Some((reason, at)) if tracked.is_empty() || left.is_none_or(|l| l <= at) => {
                    rec.call.end_reason = Some(reason);
                    rec.call.ended_at = Some(at);
                }
                _ => {
                    rec.call.end_reason = Some(EndReason::Completed);
                    rec.call.ended_at = left.or(rec_end).or(rec.call.started_at);
                }
            }
        } else {
            rec.call.state = CallState::Active;
            rec.call.ended_at = None;
            rec.call.end_reason = None;
            // Looks over: ended once the grace passes with nobody back (`end_due`). A deadline
            // already running stays; someone present again clears it. It counts from the change
            // that made the call look over, so replaying the journal (rows applied at their
            // `received_at`) gives the same deadline.
            rec.call.ends_at = if any_present {
                None
            } else {
                Some(was_ending.unwrap_or(now + self.grace))
            };
            // A participant present again after a forced end means the end was premature.
            if any_present {
                rec.forced_end = None;
            }
        }
        rec.last_activity = now;
        let after = rec.call.state;
        let ends_at = rec.call.ends_at;
        drop(rec);
        self.reindex(key, was_ending, ends_at);
        changes.calls.insert(key.to_key());
        if before == CallState::Active && after == CallState::Ended {
            changes.transitions.push(Transition::Ended(key.to_key()));
        } else if was_ending.is_some() && any_present && after == CallState::Active {
            changes.transitions.push(Transition::Resumed(key.to_key()));
        }
    }
}

impl CallRecord {
    fn new(now: DateTime<Utc>) -> Self {
        Self {
            call: Call::new(()),
            last_activity: now,
            forced_end: None,
            recording_times: None,
            mark: None,
        }
    }

    /// A call first heard of from the provider saying it is over (a TeleCMI CDR).
    fn ended(now: DateTime<Utc>) -> Self {
        let mut rec = Self::new(now);
        rec.call.state = CallState::Ended;
        rec
    }

    fn add_member(&mut self, member: MemberKey) {
        let members = &mut self.call.participants;
        if let Err(at) = members.binary_search(&member) {
            members.insert(at, member);
        }
    }

    fn remove_member(&mut self, member: &MemberKey) {
        let members = &mut self.call.participants;
        if let Ok(at) = members.binary_search(member) {
            members.remove(at);
        }
    }

    /// The call without its participants' views, and the members they are built from.
    fn shell(&self, key: &CKey) -> (Call, Vec<MemberKey>) {
        let mut call = self.call.clone();
        let members = std::mem::take(&mut call.participants);
        (call.keyed(key.to_key(), vec![]), members)
    }
}
