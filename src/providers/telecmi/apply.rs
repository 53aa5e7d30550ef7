//! How one TeleCMI event changes the call table. TeleCMI numbers nothing, so a status rank stands
//! in for a sequence (started/waiting < answered < hangup < CDR) and `CallTable`'s rules do the
//! rest: an older rank changes nothing, a hang-up is final. Only the processor calls [`apply`].

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

use super::events::{Kind, Leg, TelecmiEvent};
use crate::calls::{
    CallKey, CallState, CallTable, Changes, Details, EndReason, ParticipantKey, Provider,
    Recording, RecordingState,
};
use crate::journal::NewJob;
use crate::providers::{DecodeError, Event, Wants};
use crate::recordings::path::{DOWNLOADS_OFF, destination, job_destination};

const RANK_STARTED: i64 = 1;
const RANK_ANSWERED: i64 = 2;
const RANK_HANGUP: i64 = 3;
/// A CDR is the last word on a leg.
const RANK_CDR: i64 = 4;

/// What an event asks for, decided the same way when it is acknowledged and when it is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A live event of one leg, ranked by its status.
    Leg { leg: Leg, rank: i64 },
    /// A call detail record: the call is over.
    Cdr,
    /// An unknown `type` or `status`: journaled and answered `ignored`, nothing to apply.
    Ignore,
}

/// Checks that the event has what its kind needs (a 400 names the missing field) and says what to
/// do with it.
pub fn classify(event: &TelecmiEvent) -> Result<Action, DecodeError> {
    match &event.kind {
        Kind::Other(kind) if kind.trim().is_empty() => Err(DecodeError::Missing("type")),
        Kind::Other(_) => Ok(Action::Ignore),
        Kind::Event => {
            let status = event
                .status
                .as_deref()
                .ok_or(DecodeError::Missing("status"))?;
            let leg = event.leg.ok_or(DecodeError::Missing("leg"))?;
            let rank = match status {
                "started" | "waiting" => RANK_STARTED,
                "answered" => RANK_ANSWERED,
                "hangup" => RANK_HANGUP,
                _ => return Ok(Action::Ignore),
            };
            Ok(Action::Leg { leg, rank })
        }
        Kind::Cdr => match event.status.as_deref() {
            None => Err(DecodeError::Missing("status")),
            Some("answered" | "missed") => Ok(Action::Cdr),
            Some(_) => Ok(Action::Ignore),
        },
    }
}

/// The metric label of an event: never an id or a number.
pub fn metric_name(event: &TelecmiEvent) -> &'static str {
    match event.kind {
        Kind::Event => "event",
        Kind::Cdr => "cdr",
        Kind::Other(_) => "unknown",
    }
}

/// Each leg is a participant named by its `cmiuuid`.
pub fn leg_key(event: &TelecmiEvent) -> ParticipantKey {
    ParticipantKey::new(Provider::Telecmi, "", &event.cmiuuid)
}

/// The call an event belongs to: its `conversation_uuid`; without one (CDRs often have none), the
/// call its leg is already known on; else its own `cmiuuid`.
pub fn call_key(table: &CallTable, event: &TelecmiEvent) -> CallKey {
    let call_id = match &event.conversation_uuid {
        Some(id) => id.clone(),
        None => table
            .participant(&leg_key(event))
            .and_then(|t| t.details)
            .map(|d| d.call_id.into())
            .unwrap_or_else(|| event.cmiuuid.clone()),
    };
    CallKey::new(Provider::Telecmi, call_id)
}

/// The file a CDR says was recorded, if any. `record: true` without a `filename` names nothing
/// that could be downloaded.
pub fn recording_name(event: &TelecmiEvent) -> Option<&str> {
    if event.kind != Kind::Cdr {
        return None;
    }
    event.filename.as_deref().filter(|f| !f.trim().is_empty())
}

/// When it happened: TeleCMI's `time` (epoch ms), else when we received it.
fn event_time(event: &TelecmiEvent, received_at: DateTime<Utc>) -> DateTime<Utc> {
    event
        .time_ms
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .unwrap_or(received_at)
}

impl Event for TelecmiEvent {
    fn wants(&self, table: &CallTable, wants: &mut Wants) {
        // A CDR often names no conversation: its call is found through its leg, which must be
        // in memory for that.
        let leg = leg_key(self);
        if !table.has_participant(&leg) {
            wants.participants.push(leg);
        }
        wants
            .calls
            .push(CallKey::new(Provider::Telecmi, self.call_id().to_string()));
    }

    fn apply(self: Box<Self>, ctx: &mut crate::providers::Apply<'_>) {
        // The call is decided here, after every earlier event, so the job names the call the
        // recording joins (before `apply`, which keeps the leg on the call it names now).
        if ctx.downloads {
            let call = call_key(ctx.table, &self);
            if let Some(job) = recording_job(&self, &call.call_id, ctx.journal_id) {
                ctx.queue_download(job);
            }
        }
        let changes = apply(ctx.table, &self, ctx.received_at, ctx.now, ctx.downloads);
        ctx.note(changes);
    }
}

/// The download job of a recorded CDR; `failed` at once when the name is refused as a path.
fn recording_job(event: &TelecmiEvent, call_id: &str, journal_id: i64) -> Option<NewJob> {
    if !matches!(classify(event), Ok(Action::Cdr)) {
        return None;
    }
    let Some(name) = recording_name(event) else {
        if event.record == Some(true) {
            tracing::warn!(provider = "telecmi", call_id = %call_id.escape_debug(),
                participant_id = %event.cmiuuid.escape_debug(),
                "CDR says the call was recorded but names no file; nothing to download");
        }
        return None;
    };
    let (rel_path, error) = job_destination(Provider::Telecmi, call_id, name);
    // `time` is when the call was answered and `answeredsec` how long it lasted.
    let start_time = event
        .time_ms
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single());
    let end_time = start_time.zip(event.answeredsec).and_then(|(start, secs)| {
        start.checked_add_signed(chrono::Duration::try_seconds(secs.max(0))?)
    });
    Some(NewJob {
        provider: Provider::Telecmi,
        recording_id: name.to_string(),
        call_id: call_id.to_string(),
        dn: event.user.clone(),
        source: name.to_string(),
        rel_path,
        error,
        start_time,
        end_time,
        event_id: journal_id,
    })
}

/// Applies one journaled event. `recordings` says whether downloads are on, that is whether a
/// recorded CDR's recording is `pending` with a job.
pub fn apply(
    table: &CallTable,
    event: &TelecmiEvent,
    received_at: DateTime<Utc>,
    now: DateTime<Utc>,
    recordings: bool,
) -> Changes {
    let mut changes = Changes::default();
    // Journaled rows were classified once already; an error here means nothing to apply.
    let Ok(action) = classify(event) else {
        return changes;
    };
    let key = leg_key(event);
    let call = call_key(table, event);
    let at = event_time(event, received_at);
    let known = table.participant(&key).and_then(|t| t.details);
    match action {
        Action::Ignore => {}
        Action::Leg { leg, rank } => {
            let status = event.status.clone().unwrap_or_default();
            let details = leg_details(event, Some(leg), &call, known, status);
            let ended_at = table
                .call(&call)
                .filter(|c| c.state == CallState::Ended)
                .map(|c| c.ended_at.unwrap_or(at));
            if let Some(ended_at) = ended_at {
                // A TeleCMI call that has ended stays ended: a late event still says what it knows
                // about its leg, but the leg is already gone. Removing before the details join the
                // call keeps it from looking active, even for a moment.
                changes.merge(table.upsert(&key, rank, Some(at), now));
                changes.merge(table.remove(&key, rank, Some(at.min(ended_at)), now));
                changes.merge(table.details(&key, rank, details, Some(at), now));
            } else {
                changes.merge(table.upsert(&key, rank, Some(at), now));
                changes.merge(table.details(&key, rank, details, Some(at), now));
                if rank == RANK_HANGUP {
                    if leg == Leg::A {
                        // Before the leg's own removal, so that the call ends as `hangup` even
                        // when leg a was the last one on it.
                        changes.merge(table.end_call(&call, EndReason::Hangup, Some(at), now));
                    }
                    changes.merge(table.remove(&key, rank, Some(at), now));
                }
            }
        }
        Action::Cdr => {
            // Ending first records `cdr` as the reason (or creates the call already ended when
            // the CDR is all we hear of it); the leg then joins it as already gone.
            changes.merge(table.end_call(&call, EndReason::Cdr, Some(at), now));
            changes.merge(table.upsert(&key, RANK_CDR, Some(at), now));
            changes.merge(table.remove(&key, RANK_CDR, Some(at), now));
            // The CDR's verdict (`answered`, `missed`) is the leg's final status; the live
            // hang-up's reason and timings stay in `extra`. A CDR without `leg` whose cmiuuid is
            // the call's own id is leg a's.
            let status = event.status.clone().unwrap_or_default();
            let leg = event.leg.or_else(|| {
                (known.as_ref().and_then(|d| d.leg).is_none() && event.cmiuuid == call.call_id)
                    .then_some(Leg::A)
            });
            let details = leg_details(event, leg, &call, known, status);
            changes.merge(table.details(&key, RANK_CDR, details, Some(at), now));
            if let Some(name) = recording_name(event) {
                let already = table
                    .call(&call)
                    .is_some_and(|c| c.recordings.iter().any(|r| r.id == name));
                // Replayed or repeated on the other leg's CDR: keep whatever progress the
                // download has made.
                if !already {
                    changes.merge(table.attach_recording(
                        &call,
                        recording(event, name, recordings),
                        (Some(at), Some(at)),
                        now,
                    ));
                }
            }
        }
    }
    changes
}

/// The participant as this event describes it, on top of what was known: a later event that
/// leaves a field out does not erase it.
fn leg_details(
    event: &TelecmiEvent,
    leg: Option<Leg>,
    call: &CallKey,
    known: Option<Details>,
    status: String,
) -> Details {
    let known = known.unwrap_or_default();
    let mut extra = known.extra;
    if let Some(reason) = &event.hangup_reason {
        extra.insert("hangup_reason".into(), Value::from(reason.clone()));
    }
    if let Some(secs) = event.answeredsec {
        extra.insert("answeredsec".into(), Value::from(secs));
    }
    if let Some(secs) = event.waitedsec {
        extra.insert("waitedsec".into(), Value::from(secs));
    }
    Details {
        call_id: call.call_id.as_str().into(),
        status: status.into(),
        dn: event.user.as_deref().map(Into::into).or(known.dn),
        party_number: event
            .far_end()
            .map(Into::into)
            .unwrap_or(known.party_number),
        leg: leg.or(known.leg),
        leg_direction: event
            .direction
            .as_deref()
            .map(Into::into)
            .or(known.leg_direction),
        caller_id: event
            .callerid
            .as_deref()
            .map(Into::into)
            .or(known.caller_id),
        did: event.did().map(Into::into).or(known.did),
        extra,
        ..Default::default()
    }
}

/// The recording a CDR names, as the route queued its download: `pending`, or `failed` when the
/// name is refused as a path or downloads are off (shown all the same, as for JAS: the provider
/// has the recording, and the call says why callhook does not).
fn recording(event: &TelecmiEvent, name: &str, downloads: bool) -> Recording {
    let (state, path, error) = match destination(Provider::Telecmi, name) {
        Err(refused) => (RecordingState::Failed, None, Some(refused)),
        Ok(_) if !downloads => (RecordingState::Failed, None, Some(DOWNLOADS_OFF.into())),
        Ok(path) => (RecordingState::Pending, Some(path), None),
    };
    Recording {
        id: name.to_string(),
        url: name.to_string(),
        path,
        state,
        bytes: None,
        sha256: None,
        dn: event.user.clone(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::{Call, Direction, Participant};
    use crate::providers::telecmi::events::decode;
    use serde_json::json;

    const CONV: &str = "conv-1";

    fn event(fields: Value) -> TelecmiEvent {
        decode(fields.to_string().as_bytes(), Some("application/json")).unwrap()
    }

    fn leg_event(leg: &str, cmiuuid: &str, status: &str, direction: &str, t: i64) -> TelecmiEvent {
        event(json!({
            "type": "event", "leg": leg, "cmiuuid": cmiuuid, "status": status,
            "direction": direction, "conversation_uuid": CONV, "user": "101_1111113",
            "from": "9200000000", "to": "9100000000", "time": 1_700_000_000_000i64 + t * 1000,
        }))
    }

    fn run(table: &CallTable, events: &[TelecmiEvent]) {
        for e in events {
            apply(table, e, Utc::now(), Utc::now(), true);
        }
    }

    fn call(table: &CallTable, id: &str) -> Call {
        table
            .call(&CallKey::new(Provider::Telecmi, id))
            .expect("call exists")
    }

    fn leg<'a>(call: &'a Call, cmiuuid: &str) -> &'a Participant {
        call.participants
            .iter()
            .find(|p| p.participant_id == cmiuuid)
            .expect("participant")
    }

    #[test]
    fn classify_requires_what_each_kind_needs() {
        let ok = |v: Value| classify(&event(v));
        assert_eq!(
            ok(json!({"cmiuuid": "u", "type": "event", "leg": "a", "status": "waiting"})).unwrap(),
            Action::Leg {
                leg: Leg::A,
                rank: RANK_STARTED
            }
        );
        assert_eq!(
            ok(json!({"cmiuuid": "u", "type": "event", "leg": "b", "status": "Hangup"})).unwrap(),
            Action::Leg {
                leg: Leg::B,
                rank: RANK_HANGUP
            }
        );
        assert_eq!(
            ok(json!({"cmiuuid": "u", "type": "event", "leg": "a", "status": "transfer"})).unwrap(),
            Action::Ignore
        );
        assert_eq!(
            ok(json!({"cmiuuid": "u", "type": "cdr", "status": "missed"})).unwrap(),
            Action::Cdr
        );
        assert_eq!(
            ok(json!({"cmiuuid": "u", "type": "cdr", "status": "voicemail"})).unwrap(),
            Action::Ignore
        );
        assert_eq!(
            ok(json!({"cmiuuid": "u", "type": "sms"})).unwrap(),
            Action::Ignore
        );
        for (v, field) in [
            (json!({"cmiuuid": "u"}), "type"),
            (
                json!({"cmiuuid": "u", "type": "event", "leg": "a"}),
                "status",
            ),
            (
                json!({"cmiuuid": "u", "type": "event", "status": "answered"}),
                "leg",
            ),
            (json!({"cmiuuid": "u", "type": "cdr"}), "status"),
        ] {
            assert_eq!(ok(v).unwrap_err().field(), Some(field));
        }
    }

    #[test]
    fn inbound_answered_call() {
        let table = CallTable::new(crate::providers::DIRECTIONS);
        run(
            &table,
            &[
                leg_event("a", "A", "waiting", "inbound", 0),
                leg_event("b", "B", "started", "outbound", 1),
                leg_event("b", "B", "answered", "outbound", 5),
                leg_event("a", "A", "answered", "inbound", 5),
            ],
        );
        let c = call(&table, CONV);
        assert_eq!(c.state, CallState::Active);
        assert_eq!(c.direction, Direction::Inbound);
        assert_eq!(leg(&c, "A").status, "answered");
        assert_eq!(leg(&c, "A").party_number, "9200000000");
        assert_eq!(leg(&c, "B").leg.as_deref(), Some("b"));

        let mut hangup = leg_event("b", "B", "hangup", "outbound", 60);
        hangup.hangup_reason = Some("sent_bye".into());
        hangup.answeredsec = Some(55);
        run(&table, &[hangup]);
        let c = call(&table, CONV);
        assert_eq!(c.state, CallState::Active, "leg b leaving does not end it");
        assert_eq!(leg(&c, "B").extra["hangup_reason"], "sent_bye");
        assert_eq!(leg(&c, "B").extra["answeredsec"], 55);
        assert!(leg(&c, "B").left_at.is_some());

        run(&table, &[leg_event("a", "A", "hangup", "inbound", 61)]);
        let c = call(&table, CONV);
        assert_eq!(c.state, CallState::Ended);
        assert_eq!(c.end_reason.clone(), Some(EndReason::Hangup));
        assert_eq!(
            c.ended_at,
            Utc.timestamp_millis_opt(1_700_000_061_000).single()
        );
        assert_eq!(
            c.started_at,
            Utc.timestamp_millis_opt(1_700_000_000_000).single()
        );
    }

    #[test]
    fn leg_a_hangup_ends_the_call_with_leg_b_still_on_it() {
        let table = CallTable::new(crate::providers::DIRECTIONS);
        run(
            &table,
            &[
                leg_event("a", "A", "started", "outbound", 0),
                leg_event("b", "B", "answered", "outbound", 3),
                leg_event("a", "A", "hangup", "outbound", 9),
            ],
        );
        let c = call(&table, CONV);
        assert_eq!(
            (c.state, c.direction, c.end_reason.clone()),
            (
                CallState::Ended,
                Direction::Outbound,
                Some(EndReason::Hangup)
            )
        );
        assert!(c.participants.iter().all(|p| p.left_at.is_some()));
        // Leg b's own hang-up arrives afterwards: recorded, the call stays ended.
        run(&table, &[leg_event("b", "B", "hangup", "outbound", 9)]);
        let c = call(&table, CONV);
        assert_eq!(c.state, CallState::Ended);
        assert_eq!(leg(&c, "B").status, "hangup");
    }

    #[test]
    fn late_answered_after_hangup_changes_nothing() {
        let table = CallTable::new(crate::providers::DIRECTIONS);
        run(
            &table,
            &[
                leg_event("a", "A", "waiting", "inbound", 0),
                leg_event("b", "B", "hangup", "outbound", 20),
                leg_event("b", "B", "answered", "outbound", 5),
            ],
        );
        let c = call(&table, CONV);
        assert_eq!(c.state, CallState::Active);
        assert_eq!(leg(&c, "B").status, "hangup");
        assert!(leg(&c, "B").left_at.is_some());

        run(
            &table,
            &[
                leg_event("a", "A", "hangup", "inbound", 21),
                leg_event("a", "A", "answered", "inbound", 5),
                // A leg first heard of after the end does not reopen the call either.
                leg_event("b", "C", "started", "outbound", 6),
            ],
        );
        let c = call(&table, CONV);
        assert_eq!(c.state, CallState::Ended);
        assert_eq!(c.end_reason.clone(), Some(EndReason::Hangup));
        assert_eq!(leg(&c, "A").status, "hangup");
        assert!(leg(&c, "C").left_at.is_some());
        assert_eq!(c.participants.len(), 3);
    }

    #[test]
    fn missed_call_known_only_from_its_cdr() {
        let table = CallTable::new(crate::providers::DIRECTIONS);
        run(
            &table,
            &[event(json!({
                "appid": 1111113, "type": "cdr", "direction": "inbound", "cmiuuid": "M",
                "status": "missed", "from": 9110000000u64, "time": 1570114018000i64, "waitedsec": 119,
            }))],
        );
        let c = call(&table, "M");
        assert_eq!(
            (c.state, c.direction, c.end_reason.clone()),
            (CallState::Ended, Direction::Inbound, Some(EndReason::Cdr))
        );
        let a = leg(&c, "M");
        assert_eq!((a.status.as_str(), a.leg.as_deref()), ("missed", Some("a")));
        assert_eq!(a.party_number, "9110000000");
        assert_eq!(a.extra["waitedsec"], 119);
        assert!(c.recordings.is_empty());
    }

    #[test]
    fn cdr_ends_an_active_call_and_attaches_its_recording_once() {
        let table = CallTable::new(crate::providers::DIRECTIONS);
        run(
            &table,
            &[
                leg_event("a", "A", "answered", "outbound", 0),
                leg_event("b", "B", "answered", "outbound", 2),
            ],
        );
        // The leg b CDR names neither the conversation nor the call: its leg is known already.
        let cdr = event(json!({
            "type": "cdr", "leg": "b", "cmiuuid": "B", "status": "answered", "direction": "outbound",
            "user": "202_2222223", "answeredsec": 6, "hangup_reason": "sent_bye", "record": true,
            "filename": "1650_2222223.mp3", "time": 1_700_000_010_000i64,
        }));
        run(&table, std::slice::from_ref(&cdr));
        let c = call(&table, CONV);
        assert_eq!(
            (c.state, c.end_reason.clone()),
            (CallState::Ended, Some(EndReason::Cdr))
        );
        let b = leg(&c, "B");
        assert_eq!(b.status, "answered");
        assert_eq!(b.dn, "202_2222223");
        assert_eq!(b.extra["hangup_reason"], "sent_bye");
        assert_eq!(c.recordings.len(), 1);
        let r = &c.recordings[0];
        assert_eq!(r.state, RecordingState::Pending);
        assert_eq!(r.path.as_deref(), Some("telecmi/1650_2222223.mp3"));
        assert_eq!(r.dn.as_deref(), Some("202_2222223"));

        // Progress made by the download is not reset by the same name arriving again.
        let mut progressed = r.clone();
        progressed.state = RecordingState::Downloaded;
        table.attach_recording(&c.key, progressed, (None, None), Utc::now());
        let mut again = cdr;
        again.leg = Some(Leg::A);
        again.cmiuuid = "A".into();
        run(&table, &[again]);
        let c = call(&table, CONV);
        assert_eq!(c.recordings.len(), 1);
        assert_eq!(c.recordings[0].state, RecordingState::Downloaded);
    }

    #[test]
    fn refused_recording_names_and_recordings_while_downloads_are_off_are_failed() {
        let cdr = event(json!({
            "type": "cdr", "cmiuuid": "R", "status": "answered", "record": "true",
            "filename": "../etc/passwd",
        }));
        let table = CallTable::new(crate::providers::DIRECTIONS);
        apply(&table, &cdr, Utc::now(), Utc::now(), true);
        let r = &call(&table, "R").recordings[0];
        assert_eq!((r.state, r.path.as_deref()), (RecordingState::Failed, None));
        assert!(r.error.as_deref().unwrap().starts_with("refused: "));

        let cdr = event(json!({
            "type": "cdr", "cmiuuid": "R", "status": "answered", "record": "true",
            "filename": "rec-R.mp3",
        }));
        let table = CallTable::new(crate::providers::DIRECTIONS);
        apply(&table, &cdr, Utc::now(), Utc::now(), false);
        let r = &call(&table, "R").recordings[0];
        assert_eq!((r.state, r.path.as_deref()), (RecordingState::Failed, None));
        assert_eq!(r.error.as_deref(), Some("recording downloads are disabled"));
    }

    #[test]
    fn any_order_gives_the_same_call() {
        let events = [
            leg_event("a", "A", "waiting", "inbound", 0),
            leg_event("b", "B", "started", "outbound", 1),
            leg_event("b", "B", "answered", "outbound", 2),
            leg_event("a", "A", "answered", "inbound", 2),
            leg_event("b", "B", "hangup", "outbound", 30),
            leg_event("a", "A", "hangup", "inbound", 30),
        ];
        let summary = |order: &[usize]| {
            let table = CallTable::new(crate::providers::DIRECTIONS);
            for &i in order {
                run(&table, std::slice::from_ref(&events[i]));
            }
            let c = call(&table, CONV);
            let statuses: Vec<_> = c
                .participants
                .iter()
                .map(|p| {
                    (
                        p.participant_id.clone(),
                        p.status.clone(),
                        p.left_at.is_some(),
                    )
                })
                .collect();
            (c.state, c.direction, c.end_reason, statuses)
        };
        let expected = summary(&[0, 1, 2, 3, 4, 5]);
        assert_eq!(expected.0, CallState::Ended);
        for order in [[5, 4, 3, 2, 1, 0], [5, 0, 1, 2, 3, 4], [2, 3, 4, 1, 0, 5]] {
            assert_eq!(summary(&order), expected, "{order:?}");
        }
    }
}
