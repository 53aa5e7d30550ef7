//! Turning the call table's changes into call events (SPEC §7). The processor hands over every
//! call a change touched, with what caused the change; each call is compared with the form it
//! had when events were last produced for it, and the difference becomes events.
//!
//! Ids come from the cause (a journal row, a lookup of one participant event, a job's
//! progress) and the event's place among that cause's events, hashed: re-applying the journal
//! after a crash produces the same ids, which the outbox refuses to store twice.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::calls::{
    Call, CallKey, CallState, CallTable, Mark, Participant, Recording, RecordingState,
};
use crate::config::Endpoint;
use crate::journal::NewCallEvent;

/// What changed the calls, for the event ids.
#[derive(Debug, Clone)]
pub enum Cause {
    /// A journal row applied.
    Row(i64),
    /// A lookup answering the event `seq` of a participant.
    Lookup(String),
    /// A recording job's progress.
    Job(i64, &'static str),
    /// The stale sweep at this time (ms).
    Sweep(i64),
    /// The end of a call's grace: the call and its deadline (ms), whatever ended it (a later
    /// row, the timer, a restart), so the one `call.ended` has the same id each time.
    Grace(CallKey, i64),
}

impl Cause {
    fn text(&self) -> String {
        match self {
            Cause::Row(id) => format!("row:{id}"),
            Cause::Lookup(what) => format!("lookup:{what}"),
            Cause::Job(id, state) => format!("job:{id}:{state}"),
            Cause::Sweep(at) => format!("sweep:{at}"),
            Cause::Grace(call, at) => format!("grace:{}:{}:{at}", call.provider, call.call_id),
        }
    }
}

/// The schema version of the event body (`schema` in every body), described by
/// `docs/call-event.schema.json` and README's table.
pub const SCHEMA: u32 = 1;

pub struct Producer {
    endpoints: Vec<Endpoint>,
    /// Where each event's body is written before it is copied out at its size.
    scratch: Vec<u8>,
}

impl Producer {
    /// Events are produced with or without an enabled endpoint: `/api/stream` shows them all,
    /// and each names the endpoints it is for (maybe none).
    pub fn new(endpoints: &[Endpoint]) -> Producer {
        Producer {
            endpoints: endpoints.iter().filter(|e| e.enabled).cloned().collect(),
            scratch: Vec::new(),
        }
    }

    /// A call restored or loaded from disk into `table`: its events were produced with that
    /// state. Each call's mark (what events were last produced from) is held in its record in
    /// the table, so it is forgotten with the call.
    pub fn seed(&self, table: &CallTable, call: &Call) {
        table.init_mark(&call.key, || Seen::pack(call));
    }

    /// The events of the changes to `calls` (sorted, so ids follow the same order each time).
    pub fn observe<'k>(
        &mut self,
        table: &CallTable,
        calls: impl IntoIterator<Item = &'k CallKey>,
        cause: &Cause,
    ) -> Vec<NewCallEvent> {
        let mut out = vec![];
        for key in calls {
            let Some(after) = table.call(key) else {
                continue;
            };
            let before = table.replace_mark(key, Seen::pack(&after));
            for (kind, field) in diff(before.as_deref().map(Seen), &after) {
                let n = out.len();
                out.push(self.event(&after, kind, field, cause, n));
            }
        }
        out
    }

    fn event(
        &mut self,
        call: &Call,
        kind: &'static str,
        subject: Option<Subject<'_>>,
        cause: &Cause,
        n: usize,
    ) -> NewCallEvent {
        let digest = Sha256::digest(format!("{}#{n}", cause.text()).as_bytes());
        let id = format!("evt_{}", &hex::encode(&digest[..12]));
        let provider = call.key.provider.as_str();
        let body = Body {
            call,
            id: &id,
            occurred_at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            participant: match subject {
                Some(Subject::Participant(p)) => Some(p),
                _ => None,
            },
            provider,
            recording: match subject {
                Some(Subject::Recording(r)) => Some(r),
                _ => None,
            },
            schema: SCHEMA,
            summary: match subject {
                Some(Subject::Summary(v)) => Some(v),
                _ => None,
            },
            kind,
        };
        NewCallEvent {
            kind,
            provider,
            call_id: call.key.call_id.clone(),
            body: serialize(&body, &mut self.scratch),
            endpoints: self
                .endpoints
                .iter()
                .filter(|e| e.wants(kind, call.key.provider))
                .map(|e| e.name.clone())
                .collect(),
            id,
        }
    }
}

/// What an event is about besides its call.
#[derive(Clone, Copy)]
enum Subject<'a> {
    Participant(&'a Participant),
    Recording(&'a Recording),
    Summary(&'a Value),
}

/// An event's body, serialized straight from the call (no `Value` tree in between), its keys
/// in the alphabetical order the earlier `json!` form had; `docs/call-event.schema.json`.
#[derive(Serialize)]
struct Body<'a> {
    call: &'a Call,
    id: &'a str,
    occurred_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    participant: Option<&'a Participant>,
    provider: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    recording: Option<&'a Recording>,
    schema: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<&'a Value>,
    #[serde(rename = "type")]
    kind: &'a str,
}

/// Connected (JAS) or answered (TeleCMI): the call has been picked up.
fn answered(call: &Call) -> bool {
    call.participants.iter().any(|p| {
        p.status.eq_ignore_ascii_case("connected") || p.status.eq_ignore_ascii_case("answered")
    })
}

/// A hash of what a participant.updated reports a change of.
fn described(p: &Participant) -> u64 {
    hash(&(
        &p.status,
        &p.party_number,
        &p.party_name,
        &p.party_dn,
        &p.caller_id,
        &p.did,
        &p.leg,
    ))
}

/// An event's JSON, written into `scratch` (kept between events) and then copied once into an
/// allocation of its exact size. Grown by doubling from empty, each body left a trail of freed
/// smaller buffers among the call table's long-lived rows.
fn serialize(body: &Body<'_>, scratch: &mut Vec<u8>) -> Arc<str> {
    scratch.clear();
    // Serializing plain structs cannot fail (no map with non-string keys).
    let _ = serde_json::to_writer(&mut *scratch, body);
    // serde_json writes only valid UTF-8.
    Arc::from(std::str::from_utf8(scratch).unwrap_or_default())
}

fn hash(value: &impl Hash) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// What `diff` needs of a call as it was when events were last produced for it, read from its
/// packed form (a [`Mark`], held in the call's record in the table). Kept for every call in
/// memory, so it holds hashes and flags, not the Call: a clone of each call doubled the daemon's
/// memory per active participant (2038 B against 834 B, `bench --only memory`). A hash collision
/// could at worst hide one participant's event: two participants of one call whose 32-bit
/// who-hashes collide (about one pair in four billion), or a description change whose 31 bits
/// do (a `participant.updated`).
///
/// The words: first the flags (bit 0 ended, 1 answered, 2 summary) with the number of
/// participants above bit 32; then a word per participant: a 32-bit hash of who it is
/// (`participant_id`, `dn`; told apart only from the call's other participants) above 31 bits of
/// its description's hash and whether it has left in bit 0; then per recording a hash of its id
/// shifted left by two with its state in bits 0–1. A call of two is three words, one 32-byte
/// allocation.
#[derive(Clone, Copy)]
pub struct Seen<'a>(&'a [u64]);

const ENDED: u64 = 1;
const ANSWERED: u64 = 2;
const SUMMARY: u64 = 4;
/// A participant word's bits for who it is.
const WHO: u64 = 0xffff_ffff << 32;

impl Seen<'_> {
    pub fn pack(call: &Call) -> Mark {
        let mut flags = (call.participants.len() as u64) << 32;
        for (set, bit) in [
            (call.state == CallState::Ended, ENDED),
            (answered(call), ANSWERED),
            (call.summary.is_some(), SUMMARY),
        ] {
            if set {
                flags |= bit;
            }
        }
        std::iter::once(flags)
            .chain(
                call.participants
                    .iter()
                    .map(|p| who(p) | described_bits(p) << 1 | u64::from(p.left_at.is_some())),
            )
            .chain(
                call.recordings
                    .iter()
                    .map(|r| recording_word(r.id.as_str(), r.state)),
            )
            .collect()
    }

    fn flag(self, bit: u64) -> bool {
        self.0.first().is_some_and(|w| w & bit != 0)
    }

    fn ended(self) -> bool {
        self.flag(ENDED)
    }

    fn answered(self) -> bool {
        self.flag(ANSWERED)
    }

    fn summary(self) -> bool {
        self.flag(SUMMARY)
    }

    fn count(self) -> usize {
        self.0.first().map_or(0, |w| (w >> 32) as usize)
    }

    /// Whether the participant had left, and its description's bits (`described_bits`).
    fn participant(self, p: &Participant) -> Option<(bool, u64)> {
        let who = who(p);
        self.0
            .get(1..1 + self.count())
            .unwrap_or_default()
            .iter()
            .find(|w| *w & WHO == who)
            .map(|w| (w & 1 == 1, (w & !WHO) >> 1))
    }

    /// Whether the recording was known with this state.
    fn has_recording(self, r: &Recording) -> bool {
        let word = recording_word(r.id.as_str(), r.state);
        self.0
            .get(1 + self.count()..)
            .unwrap_or_default()
            .contains(&word)
    }
}

fn recording_word(id: &str, state: RecordingState) -> u64 {
    let state = match state {
        RecordingState::Pending => 0,
        RecordingState::Downloading => 1,
        RecordingState::Downloaded => 2,
        RecordingState::Failed => 3,
    };
    hash(&id) << 2 | state
}

/// Who a participant is, in a participant word's top 32 bits.
fn who(p: &Participant) -> u64 {
    hash(&(&p.participant_id, &p.dn)) & WHO
}

/// A participant's description hash cut to the 31 bits a participant word holds for it.
fn described_bits(p: &Participant) -> u64 {
    described(p) & 0x7fff_ffff
}

/// The events that take `before` (none: a new call) to `after`, in the order a reader expects:
/// the call starts, legs join, it is answered, legs change, recordings and the summary come,
/// legs leave, the call ends.
fn diff<'a>(before: Option<Seen<'_>>, after: &'a Call) -> Vec<(&'static str, Option<Subject<'a>>)> {
    let mut out = vec![];
    let participant = |p: &'a Participant| Some(Subject::Participant(p));
    // Whether it had left, and its description's hash.
    let find = |seen: Option<Seen<'_>>, p: &Participant| seen.and_then(|s| s.participant(p));
    if before.is_none() {
        out.push(("call.started", None));
    }
    // `call.ended` is final: a late event updates the ended call's record (so the Call that
    // later events carry is right), but after it only recordings and the summary are news.
    let over = before.is_some_and(Seen::ended);
    let (mut updated, mut left) = (vec![], vec![]);
    for p in after.participants.iter().filter(|_| !over) {
        match find(before, p) {
            None => {
                out.push(("participant.joined", participant(p)));
                if p.left_at.is_some() {
                    left.push(("participant.left", participant(p)));
                }
            }
            Some((false, _)) if p.left_at.is_some() => {
                left.push(("participant.left", participant(p)));
            }
            Some((false, old)) if old != described_bits(p) => {
                updated.push(("participant.updated", participant(p)));
            }
            Some(_) => {}
        }
    }
    if !over && answered(after) && !before.is_some_and(Seen::answered) {
        out.push(("call.answered", None));
    }
    out.extend(updated);
    for r in &after.recordings {
        if before.is_some_and(|c| c.has_recording(r)) {
            continue;
        }
        match r.state {
            RecordingState::Downloaded => {
                out.push(("recording.ready", Some(Subject::Recording(r))))
            }
            RecordingState::Failed => out.push(("recording.failed", Some(Subject::Recording(r)))),
            RecordingState::Pending | RecordingState::Downloading => {}
        }
    }
    if after.summary.is_some() && before.is_none_or(|c| !c.summary()) {
        out.push((
            "call.summary",
            after.summary.as_deref().map(Subject::Summary),
        ));
    }
    out.extend(left);
    if after.state == CallState::Ended && !over {
        out.push(("call.ended", None));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::calls::Provider;

    /// A participant of extension 101, for tests.
    pub(crate) fn person(id: &str, status: &str) -> Participant {
        Participant {
            dn: "101".into(),
            participant_id: id.into(),
            status: status.into(),
            party_number: String::new(),
            party_name: String::new(),
            party_dn: String::new(),
            party_dn_type: String::new(),
            leg_id: None,
            leg: None,
            caller_id: None,
            did: None,
            updated_at: None,
            joined_at: None,
            left_at: None,
            extra: Default::default(),
        }
    }

    fn kinds(before: Option<&Call>, after: &Call) -> Vec<&'static str> {
        let mark = before.map(Seen::pack);
        diff(mark.as_deref().map(Seen), after)
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    #[test]
    fn a_call_seen_through_its_changes_gives_each_event_once_in_order() {
        let mut call = Call::new(CallKey::new(Provider::Jas, "26"));
        call.participants.push(person("1", "Dialing"));
        assert_eq!(kinds(None, &call), ["call.started", "participant.joined"]);
        let before = call.clone();
        call.participants[0].status = "Connected".into();
        assert_eq!(
            kinds(Some(&before), &call),
            ["call.answered", "participant.updated"]
        );
        // Nothing changed: nothing to say.
        assert!(kinds(Some(&call), &call).is_empty());
        let before = call.clone();
        call.recordings.push(Recording {
            id: "1".into(),
            url: "101/a.wav".into(),
            path: None,
            state: RecordingState::Pending,
            bytes: None,
            sha256: None,
            dn: None,
            error: None,
        });
        assert!(kinds(Some(&before), &call).is_empty());
        let before = call.clone();
        call.recordings[0].state = RecordingState::Downloaded;
        call.participants[0].left_at = Some(Utc::now());
        call.state = CallState::Ended;
        assert_eq!(
            kinds(Some(&before), &call),
            ["recording.ready", "participant.left", "call.ended"]
        );
    }

    #[test]
    fn a_call_of_two_is_marked_in_three_words_that_tell_its_participants_apart() {
        let mut call = Call::new(CallKey::new(Provider::Jas, "26"));
        call.participants.push(person("1", "Connected"));
        call.participants.push(person("2", "Dialing"));
        let mark = Seen::pack(&call);
        assert_eq!(mark.len(), 3);
        let seen = Seen(&mark);
        assert!(seen.answered() && !seen.ended() && !seen.summary());
        let (left, bits) = seen.participant(&call.participants[1]).unwrap();
        assert!(!left);
        assert_eq!(bits, described_bits(&call.participants[1]));
        assert_ne!(bits, described_bits(&call.participants[0]));
        assert!(seen.participant(&person("3", "Dialing")).is_none());
        // The second one leaves: only it is reported, once.
        let before = call.clone();
        call.participants[1].left_at = Some(Utc::now());
        assert_eq!(kinds(Some(&before), &call), ["participant.left"]);
        assert!(
            Seen(&Seen::pack(&call))
                .participant(&call.participants[1])
                .unwrap()
                .0
        );
    }

    #[test]
    fn ids_follow_the_cause_and_the_place_not_the_time() {
        let endpoint = crate::config::Endpoint {
            name: "crm".into(),
            url: "http://127.0.0.1:9/".parse().unwrap(),
            secrets: vec![],
            events: vec![crate::events::Pattern::All],
            providers: vec![],
            enabled: true,
            timeout: std::time::Duration::from_secs(1),
            allow_private: true,
        };
        let now = Utc::now();
        // A table of its own each time: the marks of what was produced are held in it.
        let ids = |cause| {
            let table = CallTable::new(crate::providers::DIRECTIONS);
            let key = crate::calls::ParticipantKey::new(Provider::Jas, "101", "1");
            let changes = table.upsert(&key, 1, Some(now), now);
            let details = crate::calls::Details {
                call_id: "26".into(),
                ..Default::default()
            };
            let changes_2 = table.details(&key, 1, details, Some(now), now);
            let mut calls = changes.calls.clone();
            calls.extend(changes_2.calls);
            let mut p = Producer::new(std::slice::from_ref(&endpoint));
            p.observe(&table, &calls, &cause)
                .into_iter()
                .map(|e| (e.id, e.kind, e.endpoints))
                .collect::<Vec<_>>()
        };
        let first = ids(Cause::Row(7));
        assert!(!first.is_empty());
        assert_eq!(first, ids(Cause::Row(7)));
        assert_ne!(first[0].0, ids(Cause::Row(8))[0].0);
        assert_eq!(first[0].1, "call.started");
        assert_eq!(first[0].2, ["crm"]);
    }
}
