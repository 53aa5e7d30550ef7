//! How one JAS event changes the call table: `call_status` upserts or removes a participant
//! (ordered by its `sequence`) and asks for its details, `new_recording` attaches a recording
//! and its download job, `call_summary` attaches its `data`. Only the processor applies events.

use super::client::ParticipantDetails;
use super::events::{CallStatus, JasEvent, NewRecording, ParticipantChange};
use crate::calls::{
    CallKey, CallTable, Details, ParticipantKey, Provider, Recording, RecordingState,
};
use crate::journal::NewJob;
use crate::providers::{Apply, Event, Wants};
use crate::recordings::path::{DOWNLOADS_OFF, destination, job_destination};

impl Event for JasEvent {
    /// A participant dropped from memory (an ended call evicted, or left on disk at start)
    /// comes back before its event; a recording or summary brings its call.
    fn wants(&self, table: &CallTable, wants: &mut Wants) {
        match self {
            JasEvent::CallStatus(cs) => {
                let key = key(cs);
                if !table.has_participant(&key) {
                    wants.participants.push(key);
                }
            }
            JasEvent::NewRecording(r) => {
                wants
                    .calls
                    .push(CallKey::new(Provider::Jas, r.call_id.clone()));
            }
            JasEvent::CallSummary(s) => {
                if let Some(id) = &s.call_id {
                    wants.calls.push(CallKey::new(Provider::Jas, id.clone()));
                }
            }
            JasEvent::Unknown(_) => {}
        }
    }

    fn apply(self: Box<Self>, ctx: &mut Apply<'_>) {
        let now = ctx.now;
        match *self {
            JasEvent::CallStatus(cs) => {
                let key = key(&cs);
                let at = cs.timestamp.or(Some(ctx.received_at));
                match cs.change {
                    ParticipantChange::Upsert => {
                        let changes = ctx.table.upsert(&key, cs.sequence, at, now);
                        let fresh = changes.applied;
                        ctx.note(changes);
                        if fresh && ctx.lookups {
                            ctx.look_up(key, cs.sequence, at);
                        } else if fresh {
                            // Without lookups a participant is its own call.
                            let details = Details {
                                call_id: format!("{}:{}", cs.dn, cs.participant_id).into(),
                                ..Default::default()
                            };
                            let changes = ctx.table.details(&key, cs.sequence, details, at, now);
                            ctx.note(changes);
                        }
                    }
                    ParticipantChange::Remove => {
                        let changes = ctx.table.remove(&key, cs.sequence, at, now);
                        ctx.note(changes);
                    }
                    ParticipantChange::Dtmf
                    | ParticipantChange::PromptFinished
                    | ParticipantChange::Other(_) => {}
                }
            }
            JasEvent::CallSummary(summary) => {
                if let Some(call_id) = summary.call_id {
                    let changes = ctx.table.attach_summary(
                        &CallKey::new(Provider::Jas, call_id),
                        summary.data,
                        now,
                    );
                    ctx.note(changes);
                }
            }
            JasEvent::NewRecording(r) => attach_new_recording(r, ctx),
            JasEvent::Unknown(_) => {}
        }
    }
}

/// Shows a new recording on its call: `pending` with its download job, or `failed` when its
/// name was refused or downloads are off. Progress already reported by a worker (the event
/// applied again after a restart) is kept.
fn attach_new_recording(r: NewRecording, ctx: &mut Apply<'_>) {
    let key = CallKey::new(Provider::Jas, r.call_id.clone());
    let id = r.id();
    // Created even when the call shows the recording already: after a crash between the call's
    // row and the job's, the replayed event must still bring its job (a repeat is a no-op).
    if ctx.downloads {
        ctx.queue_download(job(&r, ctx.journal_id));
    }
    if ctx
        .table
        .call(&key)
        .is_some_and(|c| c.recordings.iter().any(|x| x.id == id))
    {
        return;
    }
    let (state, path, error) = match (destination(Provider::Jas, &r.recording_url), ctx.downloads) {
        (Err(refused), _) => {
            metrics::counter!("callhook_recordings_total", "outcome" => "refused").increment(1);
            (RecordingState::Failed, None, Some(refused))
        }
        (Ok(_), false) => (RecordingState::Failed, None, Some(DOWNLOADS_OFF.into())),
        (Ok(path), true) => (RecordingState::Pending, Some(path), None),
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
    let changes = ctx
        .table
        .attach_recording(&key, recording, (r.start_time, r.end_time), ctx.now);
    ctx.note(changes);
}

/// The download job of a `new_recording`; `failed` at once when the name is refused as a path.
fn job(r: &NewRecording, journal_id: i64) -> NewJob {
    let (rel_path, error) = job_destination(Provider::Jas, &r.call_id, &r.recording_url);
    NewJob {
        provider: Provider::Jas,
        recording_id: r.id(),
        call_id: r.call_id.clone(),
        dn: r.dn().map(str::to_string),
        source: r.recording_url.clone(),
        rel_path,
        error,
        start_time: r.start_time,
        end_time: r.end_time,
        event_id: journal_id,
    }
}

/// The participant a JAS `call_status` event is about.
fn key(cs: &CallStatus) -> ParticipantKey {
    ParticipantKey::new(Provider::Jas, &cs.dn, &cs.participant_id)
}

/// A lookup's answer as the table's details.
pub(super) fn details_from(key: &ParticipantKey, p: ParticipantDetails) -> Details {
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
