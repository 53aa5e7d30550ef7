//! Ordering rules of the call table: unit cases, and a property test that any permutation and
//! duplication of a call's inputs, delivered within the end grace, ends in the same table as the
//! in-order delivery once the grace is over.

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;

use super::*;

fn t(s: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
}

fn key(dn: &str, id: &str) -> ParticipantKey {
    ParticipantKey::new(Provider::Jas, dn, id)
}

/// An insert at `s` that its lookup answers at once with `d`.
fn joined(table: &CallTable, k: &ParticipantKey, s: i64, d: Details) {
    table.upsert(k, s, Some(t(s)), t(s));
    table.details(k, s, d, Some(t(s)), t(s));
}

/// Recording 1 of its call, at `url`, not downloaded yet.
fn pending_recording(url: &str) -> Recording {
    Recording {
        id: "1".into(),
        url: url.into(),
        path: None,
        state: RecordingState::Pending,
        bytes: None,
        sha256: None,
        dn: None,
        error: None,
    }
}

fn details(call: &str, status: &str, party_type: &str) -> Details {
    Details {
        call_id: call.into(),
        status: status.into(),
        party_dn: "10000".into(),
        party_number: "5148888888".into(),
        party_dn_type: party_type.into(),
        ..Default::default()
    }
}

#[test]
fn older_event_changes_nothing() {
    let table = CallTable::new(crate::providers::DIRECTIONS);
    let k = key("101", "1");
    assert!(table.upsert(&k, 5, Some(t(5)), t(5)).applied);
    assert!(!table.upsert(&k, 4, Some(t(4)), t(6)).applied);
    table.details(
        &k,
        5,
        details("26", "Connected", "Wexternalline"),
        Some(t(5)),
        t(6),
    );
    table.details(
        &k,
        4,
        details("26", "Dialing", "Wexternalline"),
        Some(t(4)),
        t(6),
    );
    let p = table.participant(&k).unwrap();
    assert_eq!(
        p.details.unwrap().status,
        "Connected",
        "older details must not win"
    );
    assert_eq!(p.first_status.as_deref(), Some("Dialing"));
    assert_eq!(
        table
            .call(&CallKey::new(Provider::Jas, "26"))
            .unwrap()
            .direction,
        Direction::Outbound
    );
}

#[test]
fn remove_is_final() {
    let table = CallTable::new(crate::providers::DIRECTIONS);
    let k = key("101", "1");
    joined(&table, &k, 1, details("26", "Dialing", "Wexternalline"));
    assert!(table.remove(&k, 2, Some(t(2)), t(2)).applied);
    // A later insert, a late lookup answer, a duplicate remove: none revives it.
    assert!(!table.upsert(&k, 3, Some(t(3)), t(3)).applied);
    table.details(
        &k,
        3,
        details("26", "Connected", "Wexternalline"),
        Some(t(3)),
        t(3),
    );
    assert!(!table.remove(&k, 2, Some(t(2)), t(3)).applied);
    table.end_due(t(3) + END_GRACE);
    let call = table.call(&CallKey::new(Provider::Jas, "26")).unwrap();
    assert_eq!(call.state, CallState::Ended);
    assert_eq!(call.ended_at, Some(t(2)));
    assert!(table.active_calls().is_empty());
}

#[test]
fn call_ends_when_its_last_participant_leaves() {
    let table = CallTable::new(crate::providers::DIRECTIONS);
    let (a, b) = (key("101", "1"), key("102", "2"));
    for (k, s) in [(&a, 1), (&b, 2)] {
        joined(&table, k, s, details("7", "Connected", "Wextension"));
    }
    let changes = table.remove(&a, 3, Some(t(3)), t(3));
    assert!(changes.transitions.is_empty());
    assert_eq!(table.active_calls().len(), 1);
    // It looks over, but ends only when its grace is over.
    let changes = table.remove(&b, 4, Some(t(4)), t(4));
    assert!(changes.transitions.is_empty());
    let call = table.call(&CallKey::new(Provider::Jas, "7")).unwrap();
    assert_eq!(
        (call.state, call.ends_at, call.ended_at),
        (CallState::Active, Some(t(4) + END_GRACE), None)
    );
    assert_eq!(table.next_end(), Some(t(4) + END_GRACE));
    assert!(
        table
            .end_due(t(4) + END_GRACE - Duration::milliseconds(1))
            .is_empty()
    );
    let due = table.end_due(t(4) + END_GRACE);
    assert_eq!(due.len(), 1);
    let (key, deadline, changes) = &due[0];
    assert_eq!((key.call_id.as_str(), *deadline), ("7", t(4) + END_GRACE));
    assert_eq!(
        changes.transitions,
        vec![Transition::Ended(CallKey::new(Provider::Jas, "7"))]
    );
    assert_eq!(table.next_end(), None);
    let call = table.call(&CallKey::new(Provider::Jas, "7")).unwrap();
    assert_eq!(
        (call.state, call.ended_at, call.started_at, call.ends_at),
        (CallState::Ended, Some(t(4)), Some(t(1)), None)
    );
    assert_eq!(call.end_reason.clone(), Some(EndReason::Completed));
}

#[test]
fn a_late_join_inside_the_grace_resumes_the_call() {
    // A joins and leaves; B's join, older than A's leave, arrives after it.
    let table = CallTable::new(crate::providers::DIRECTIONS);
    let call = CallKey::new(Provider::Jas, "7");
    let (a, b) = (key("101", "1"), key("102", "2"));
    joined(&table, &a, 1, details("7", "Connected", "Wextension"));
    table.remove(&a, 3, Some(t(3)), t(3));
    assert_eq!(table.call(&call).unwrap().ends_at, Some(t(3) + END_GRACE));
    let inside = t(3) + END_GRACE - Duration::milliseconds(1);
    table.upsert(&b, 2, Some(t(2)), inside);
    let changes = table.details(
        &b,
        2,
        details("7", "Connected", "Wextension"),
        Some(t(2)),
        inside,
    );
    assert_eq!(changes.transitions, vec![Transition::Resumed(call.clone())]);
    let c = table.call(&call).unwrap();
    assert_eq!((c.state, c.ends_at), (CallState::Active, None));
    // The old deadline is gone: nothing ends it until B leaves and B's own grace passes.
    assert!(table.end_due(t(3) + Duration::hours(1)).is_empty());
    table.remove(&b, 4, Some(t(4)), t(10));
    assert_eq!(table.call(&call).unwrap().ends_at, Some(t(10) + END_GRACE));
    assert_eq!(table.end_due(t(10) + END_GRACE).len(), 1);
    let c = table.call(&call).unwrap();
    assert_eq!((c.state, c.ended_at), (CallState::Ended, Some(t(4))));
}

#[test]
fn an_event_after_the_grace_updates_the_ended_call_without_reopening_it() {
    let table = CallTable::new(crate::providers::DIRECTIONS);
    let call = CallKey::new(Provider::Jas, "7");
    let (a, b) = (key("101", "1"), key("102", "2"));
    joined(&table, &a, 1, details("7", "Connected", "Wextension"));
    table.remove(&a, 3, Some(t(3)), t(3));
    table.end_due(t(3) + END_GRACE);
    let late = t(3) + END_GRACE + Duration::seconds(1);
    table.upsert(&b, 2, Some(t(2)), late);
    let changes = table.details(
        &b,
        2,
        details("7", "Connected", "Wextension"),
        Some(t(2)),
        late,
    );
    assert!(changes.transitions.is_empty(), "{:?}", changes.transitions);
    let c = table.call(&call).unwrap();
    assert_eq!((c.state, c.ends_at), (CallState::Ended, None));
    assert_eq!(c.participants.len(), 2, "the record shows B");
    // B's leave, later still, moves the end to it; the call stays ended, nothing is due.
    let changes = table.remove(&b, 5, Some(t(5)), late);
    assert!(changes.transitions.is_empty());
    let c = table.call(&call).unwrap();
    assert_eq!(
        (c.state, c.ended_at, c.end_reason.clone()),
        (CallState::Ended, Some(t(5)), Some(EndReason::Completed))
    );
    assert_eq!(table.next_end(), None);
}

#[test]
fn a_call_in_its_grace_is_restored_with_its_deadline() {
    let table = CallTable::new(crate::providers::DIRECTIONS);
    let call = CallKey::new(Provider::Jas, "7");
    let a = key("101", "1");
    joined(&table, &a, 1, details("7", "Connected", "Wextension"));
    table.remove(&a, 2, Some(t(2)), t(2));
    let (doc, at) = table.call_row(&call).unwrap();
    let restored = CallTable::new(crate::providers::DIRECTIONS);
    restored.restore(vec![table.participant(&a).unwrap()], vec![(doc, at)]);
    assert_eq!(restored.next_end(), Some(t(2) + END_GRACE));
    let due = restored.end_due(t(2) + Duration::hours(1));
    assert_eq!(
        due[0].1,
        t(2) + END_GRACE,
        "dated at the deadline, not the clock"
    );
    table.end_due(t(2) + END_GRACE);
    assert_eq!(restored.call_row(&call), table.call_row(&call));
}

#[test]
fn stale_calls_end_and_stay_ended() {
    let table = CallTable::new(crate::providers::DIRECTIONS);
    let k = key("101", "1");
    joined(&table, &k, 1, details("9", "Connected", "Wextension"));
    let later = t(1) + Duration::hours(7);
    let changes = table.sweep_stale(later, Duration::hours(6));
    assert_eq!(
        changes.transitions,
        vec![Transition::Ended(CallKey::new(Provider::Jas, "9"))]
    );
    let call = table.call(&CallKey::new(Provider::Jas, "9")).unwrap();
    assert_eq!(call.end_reason.clone(), Some(EndReason::Stale));
    // A duplicate of an old event changes nothing; the call stays ended and is evicted.
    assert!(!table.upsert(&k, 1, Some(later), later).applied);
    assert_eq!(table.evict_ended(later + Duration::hours(1)), 1);
    assert!(table.call(&CallKey::new(Provider::Jas, "9")).is_none());
}

#[test]
fn a_stale_call_stays_ended_when_the_provider_speaks_of_it_again() {
    let table = CallTable::new(crate::providers::DIRECTIONS);
    let k = key("101", "1");
    let call = CallKey::new(Provider::Jas, "9");
    joined(&table, &k, 1, details("9", "Connected", "Wextension"));
    let later = t(1) + Duration::hours(7);
    table.sweep_stale(later, Duration::hours(6));
    assert_eq!(table.call(&call).unwrap().state, CallState::Ended);
    // A newer event: the provider never said it left, so the participant's own record takes
    // it, but the call stays ended (ended is final).
    let changes = table.upsert(&k, 2, Some(later), later);
    assert!(changes.applied);
    assert!(changes.transitions.is_empty());
    assert_eq!(table.call(&call).unwrap().state, CallState::Ended);
    assert!(!table.participant(&k).unwrap().is_removed());
    // A real remove is final for the participant; the call's end stays the sweep's.
    let after = later + Duration::seconds(1);
    table.remove(&k, 3, Some(after), after);
    assert!(!table.upsert(&k, 4, Some(after), after).applied);
    let c = table.call(&call).unwrap();
    assert_eq!(
        (c.state, c.end_reason.clone()),
        (CallState::Ended, Some(EndReason::Completed))
    );
    assert_eq!(c.ended_at, Some(after));
}

#[test]
fn forget_untracks_a_forbidden_participant() {
    let table = CallTable::new(crate::providers::DIRECTIONS);
    let k = key("101", "1");
    table.upsert(&k, 1, Some(t(1)), t(1));
    let changes = table.forget(&k, t(2));
    assert!(changes.dropped_participants.contains(&k));
    assert!(table.participant(&k).is_none());
}

#[test]
fn recording_for_a_call_never_seen_makes_a_call_that_ends_after_its_grace() {
    let table = CallTable::new(crate::providers::DIRECTIONS);
    let call = CallKey::new(Provider::Jas, "99");
    let rec = Recording {
        id: "1".into(),
        url: "101/a.wav".into(),
        path: Some("jas/101/a.wav".into()),
        state: RecordingState::Pending,
        bytes: None,
        sha256: None,
        dn: Some("101".into()),
        error: None,
    };
    let changes = table.attach_recording(&call, rec, (Some(t(1)), Some(t(9))), t(10));
    assert!(changes.transitions.is_empty());
    // Nobody is on it: its participants' events may still come, within the grace.
    let c = table.call(&call).unwrap();
    assert_eq!(
        (c.state, c.ends_at),
        (CallState::Active, Some(t(10) + END_GRACE))
    );
    table.end_due(t(10) + END_GRACE);
    let c = table.call(&call).unwrap();
    assert_eq!(
        (c.state, c.direction),
        (CallState::Ended, Direction::Unknown)
    );
    assert_eq!((c.started_at, c.ended_at), (Some(t(1)), Some(t(9))));
}

/// One input to the table, as the processor would feed it.
#[derive(Debug, Clone)]
enum Input {
    Upsert(usize, i64),
    Answer(usize, i64, &'static str),
    Remove(usize, i64),
}

fn apply(table: &CallTable, parts: &[(ParticipantKey, &'static str, &'static str)], input: &Input) {
    let now = t(1000);
    match *input {
        Input::Upsert(p, seq) => {
            table.upsert(&parts[p].0, seq, Some(t(seq)), now);
        }
        Input::Answer(p, seq, status) => {
            let (k, call, party_type) = &parts[p];
            table.details(k, seq, details(call, status, party_type), Some(t(seq)), now);
        }
        Input::Remove(p, seq) => {
            table.remove(&parts[p].0, seq, Some(t(seq)), now);
        }
    }
}

/// A call's inputs in delivery order: each participant is inserted, updated some times, and
/// (maybe) removed; every insert/update is answered by a lookup right after it.
fn scenario() -> impl Strategy<
    Value = (
        Vec<(ParticipantKey, &'static str, &'static str)>,
        Vec<Input>,
    ),
> {
    let statuses = ["Dialing", "Ringing", "Connected", "Held"];
    let types = ["Wexternalline", "Wextension"];
    (
        1usize..4,
        prop::collection::vec(
            (0usize..4, 0usize..2, 0usize..3, any::<bool>(), 0usize..2),
            4,
        ),
    )
        .prop_map(move |(n, specs)| {
            let mut parts = vec![];
            let mut inputs = vec![];
            let mut seq = 0;
            for (i, (first, party, updates, removed, call)) in specs.into_iter().take(n).enumerate()
            {
                let call_id: &'static str = ["26", "27"][call];
                parts.push((
                    key(&format!("10{i}"), &i.to_string()),
                    call_id,
                    types[party],
                ));
                seq += 1;
                inputs.push(Input::Upsert(i, seq));
                inputs.push(Input::Answer(i, seq, statuses[first]));
                for u in 0..updates {
                    seq += 1;
                    inputs.push(Input::Upsert(i, seq));
                    inputs.push(Input::Answer(i, seq, statuses[(first + u + 1) % 4]));
                }
                if removed {
                    seq += 1;
                    inputs.push(Input::Remove(i, seq));
                }
            }
            (parts, inputs)
        })
}

fn snapshot(table: &CallTable) -> Vec<Call> {
    ["26", "27"]
        .iter()
        .filter_map(|c| table.call(&CallKey::new(Provider::Jas, *c)))
        .collect()
}

proptest! {
    #[test]
    fn any_order_and_duplication_gives_the_in_order_table(
        (parts, inputs) in scenario(),
        shuffle in any::<prop::sample::Index>().prop_map(|i| i.index(usize::MAX)),
        dups in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let in_order = CallTable::new(crate::providers::DIRECTIONS);
        for i in &inputs {
            apply(&in_order, &parts, i);
        }

        let mut delivered = inputs.clone();
        for d in &dups {
            delivered.push(inputs[d.index(inputs.len())].clone());
        }
        // A deterministic Fisher–Yates from the drawn seed.
        let mut state = shuffle as u64 | 1;
        for i in (1..delivered.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            delivered.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let shuffled = CallTable::new(crate::providers::DIRECTIONS);
        for i in &delivered {
            apply(&shuffled, &parts, i);
        }

        // Every input came within the grace; once it is over, both have ended what they end.
        for table in [&in_order, &shuffled] {
            table.end_due(t(1000) + END_GRACE);
        }
        prop_assert_eq!(snapshot(&in_order), snapshot(&shuffled));
        for (k, _, _) in &parts {
            let a = in_order.participant(k).unwrap();
            let b = shuffled.participant(k).unwrap();
            prop_assert_eq!(a.removed_seq, b.removed_seq);
            prop_assert_eq!(a.details, b.details);
            prop_assert_eq!(a.first_status, b.first_status);
        }
        // Calls build their participants' views when read: each is the view of that
        // participant's own row, as `Tracked::view` gives it.
        for call in snapshot(&in_order) {
            for p in &call.participants {
                let t = in_order.participant(&key(&p.dn, &p.participant_id)).unwrap();
                prop_assert_eq!(&t.view(), p);
            }
        }
    }
}

#[test]
fn a_call_first_known_from_its_recording_is_started_by_its_first_participant() {
    let table = CallTable::new(crate::providers::DIRECTIONS);
    let call = CallKey::new(Provider::Jas, "26");
    let rec = pending_recording("101/a.wav");
    table.attach_recording(&call, rec, (None, None), t(1));
    let k = key("101", "1");
    table.upsert(&k, 1, Some(t(2)), t(2));
    let changes = table.details(
        &k,
        1,
        details("26", "Dialing", "Wexternalline"),
        Some(t(2)),
        t(2),
    );
    assert_eq!(changes.transitions, vec![Transition::Started(call.clone())]);
    assert_eq!(table.call(&call).unwrap().recordings.len(), 1);
}

/// The table holds its rows compactly (texts inline or boxed, optional fields behind pointers):
/// what it gives back, and so the JSON persisted and served, must be what it was given, whatever
/// the strings' lengths and the optional fields.
#[test]
fn restore_gives_back_the_same_documents() {
    let table = CallTable::new(crate::providers::DIRECTIONS);
    let long = "d965c6e0-5493-44f8-8d7d-b9a8077013a4";
    let call = CallKey::new(Provider::Telecmi, long);
    let a = ParticipantKey::new(Provider::Telecmi, "", format!("{long}-a"));
    let b = ParticipantKey::new(Provider::Telecmi, "202_2222223", "b");
    let mut extra = serde_json::Map::new();
    extra.insert("hangup_reason".into(), serde_json::json!("NORMAL_CLEARING"));
    extra.insert("answered_sec".into(), serde_json::json!(12));
    table.upsert(&a, 1, Some(t(1)), t(1));
    table.details(
        &a,
        1,
        Details {
            call_id: long.into(),
            status: "started".into(),
            dn: Some("".into()),
            party_number: "+91 98765 43210 extension 4455".into(),
            party_name: "A name longer than twenty-four bytes".into(),
            party_dn: "".into(),
            party_dn_type: "".into(),
            leg_id: Some(-1),
            leg: Some(Leg::A),
            leg_direction: Some("inbound".into()),
            caller_id: Some("04471000000".into()),
            did: Some("+44 0000 000000 a DID longer than 24 bytes".into()),
            extra: extra.into(),
        },
        Some(t(1)),
        t(1),
    );
    table.upsert(&b, 2, Some(t(2)), t(2));
    table.details(
        &b,
        2,
        Details {
            call_id: long.into(),
            status: "".into(),
            leg: Some(Leg::B),
            ..Default::default()
        },
        None,
        t(2),
    );
    table.remove(&b, 3, Some(t(3)), t(3));
    let rec = pending_recording("a.wav");
    table.attach_recording(&call, rec, (None, None), t(4));
    table.attach_summary(&call, serde_json::json!({"text": "hello"}), t(4));
    table.end_call(&call, EndReason::Hangup, Some(t(5)), t(5));
    let lone = key("101", "1");
    table.upsert(&lone, 4, Some(t(4)), t(4));

    let keys = [a, b, lone];
    let docs = |table: &CallTable| {
        let (call, at) = table.call_row(&call).unwrap();
        let people: Vec<String> = keys
            .iter()
            .map(|k| serde_json::to_string(&table.participant(k).unwrap()).unwrap())
            .collect();
        (serde_json::to_string(&call).unwrap(), at, people)
    };
    let before = docs(&table);
    let (doc, at, people) = before.clone();
    let restored = CallTable::new(crate::providers::DIRECTIONS);
    restored.restore(
        people
            .iter()
            .map(|p| serde_json::from_str(p).unwrap())
            .collect(),
        vec![(serde_json::from_str(&doc).unwrap(), at)],
    );
    assert_eq!(docs(&restored), before);
    let call_doc: serde_json::Value = serde_json::from_str(&before.0).unwrap();
    assert_eq!(call_doc["participants"].as_array().unwrap().len(), 2);
    assert_eq!(call_doc["end_reason"], "hangup");
}

#[test]
fn a_call_loaded_late_never_overwrites_a_newer_participant_in_memory() {
    // Rows are written a moment after they change, so a stored call can name a participant in
    // an older version than memory holds (here: before it moved to call 27).
    let table = CallTable::new(crate::providers::DIRECTIONS);
    let k = key("101", "1");
    joined(&table, &k, 5, details("27", "Connected", "Wexternalline"));
    let mut stale = table.participant(&k).unwrap();
    stale.last_seq = 1;
    stale.details = Some(details("26", "Dialing", "Wexternalline"));
    let mut old_call = Call::new(CallKey::new(Provider::Jas, "26"));
    old_call.state = CallState::Ended;
    table.restore(vec![stale], vec![(old_call, t(2))]);

    let p = table.participant(&k).unwrap();
    assert_eq!(p.last_seq, 5);
    assert_eq!(p.details.unwrap().call_id, "27");
    assert!(table.has_call(&CallKey::new(Provider::Jas, "26")));
    let old = table.call(&CallKey::new(Provider::Jas, "26")).unwrap();
    assert!(old.participants.is_empty(), "{old:#?}");
    let current = table.call(&CallKey::new(Provider::Jas, "27")).unwrap();
    assert_eq!(current.participants.len(), 1);
}

/// The Call's JSON is what the API shows, the call events carry and the database keeps: one
/// written before `Call` and the table's record became one type reads back to the same bytes,
/// key order included.
#[test]
fn a_call_writes_the_json_it_always_had() {
    let doc = concat!(
        r#"{"provider":"telecmi","call_id":"26","state":"ended","direction":"inbound","#,
        r#""started_at":"2025-04-14T15:04:23.161Z","ended_at":"2025-04-14T15:05:02Z","#,
        r#""end_reason":"hangup","participants":[{"dn":"","participant_id":"A","#,
        r#""status":"hangup","party_number":"","party_name":"","party_dn":"","#,
        r#""party_dn_type":"","leg_id":null,"leg":"a","caller_id":"0044","did":null,"#,
        r#""updated_at":null,"joined_at":null,"left_at":null,"extra":{"reason":"recv_bye"}}],"#,
        r#""recordings":[{"id":"a.wav","url":"a.wav","path":null,"state":"pending","#,
        r#""bytes":null,"sha256":null}],"summary":{"text":"hello"}}"#
    );
    let call: Call = serde_json::from_str(doc).unwrap();
    assert_eq!(call.end_reason, Some(EndReason::Hangup));
    assert_eq!(serde_json::to_string(&call).unwrap(), doc);
    let active = concat!(
        r#"{"provider":"jas","call_id":"27","state":"active","direction":"unknown","#,
        r#""started_at":null,"ended_at":null,"ends_at":"2025-04-14T15:05:07Z","#,
        r#""participants":[],"recordings":[]}"#
    );
    let call: Call = serde_json::from_str(active).unwrap();
    assert_eq!(serde_json::to_string(&call).unwrap(), active);
}

/// Every reason reads and writes as the text stored before it was an enum; one this version
/// does not name (a newer version's) is kept as written rather than failing the row.
#[test]
fn end_reasons_are_the_texts_they_were() {
    for (reason, text) in [
        (EndReason::Completed, "completed"),
        (EndReason::Stale, "stale"),
        (EndReason::Hangup, "hangup"),
        (EndReason::Cdr, "cdr"),
        (EndReason::Reconciled, "reconciled"),
        (EndReason::Other("transferred".into()), "transferred"),
    ] {
        let json = serde_json::to_string(&reason).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<EndReason>(&json).unwrap(), reason);
        assert_eq!(EndReason::parse(text), reason);
    }
    // An unknown reason restores as the forced end it was: a late participant who left before
    // it joins the call without turning it into `completed`.
    let table = CallTable::new(crate::providers::DIRECTIONS);
    let call = CallKey::new(Provider::Jas, "26");
    let mut stored: Call = Call::new(call.clone());
    stored.state = CallState::Ended;
    stored.ended_at = Some(t(5));
    stored.end_reason = Some(EndReason::Other("transferred".into()));
    table.restore(vec![], vec![(stored.clone(), t(5))]);
    assert_eq!(table.call(&call), Some(stored));
    let late = key("101", "1");
    joined(
        &table,
        &late,
        3,
        details("26", "Connected", "Wexternalline"),
    );
    table.remove(&late, 4, Some(t(4)), t(6));
    let c = table.call(&call).unwrap();
    assert_eq!(
        (c.state, c.ended_at, c.end_reason, c.participants.len()),
        (
            CallState::Ended,
            Some(t(5)),
            Some(EndReason::Other("transferred".into())),
            1
        )
    );
}
