//! The call events a call's provider events produce, whatever their order and duplication
//! (issue #13): `call.started` once and first; `call.ended` at most once, followed only by
//! `recording.*` and `call.summary`; nothing for a participant after its `participant.left`;
//! and the Call the last event carries is the final Call of in-order delivery.
//!
//! The JAS events go through the provider's own decoder and `Event::apply`, their lookups are
//! answered right after them, and the grace is ended the way the processor ends it: before each
//! row by the row's `received_at`, and by the clock once every row is applied.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::produce::{Cause, Producer};
use crate::calls::{CallKey, CallTable, Details, END_GRACE, Provider};
use crate::journal::StoredEvent;
use crate::providers::{Apply, Event};

fn t(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(1_700_000_000_000 + ms).unwrap()
}

/// One of the call's provider events.
#[derive(Debug, Clone)]
enum Input {
    /// `call_status` insert/update of participant `p` at `seq`, its lookup saying `status`.
    Upsert(usize, i64, &'static str),
    Remove(usize, i64),
    Recording,
    Summary,
}

impl Input {
    fn body(&self) -> String {
        let status = |p: usize, seq: i64, event_type: i64| {
            json!({
                "eventName": "call_status",
                "timestamp": t(seq * 1000).to_rfc3339(),
                "data": {"event": {"entity": format!("/callcontrol/10{p}/participants/{p}"),
                    "event_type": event_type}, "sequence": seq}
            })
        };
        match *self {
            // JAS `event_type` 0 is an insert or update, 1 a leave.
            Input::Upsert(p, seq, _) => status(p, seq, 0),
            Input::Remove(p, seq) => status(p, seq, 1),
            Input::Recording => json!({
                "eventName": "new_recording",
                "data": {"call_id": "26", "recording_url": "101/26.wav", "id_recording": 1}
            }),
            Input::Summary => json!({
                "eventName": "call_summary",
                "data": {"call_id": "26", "summary": "a short call"}
            }),
        }
        .to_string()
    }
}

/// The processor's part, without the journal: rows applied in the order given, each lookup
/// answered right after its row, the producer's events kept.
struct Run {
    table: CallTable,
    producer: Producer,
    events: Vec<(String, &'static str, Value)>,
    /// Participant `p` by its dn, for the lookups' answers.
    party_types: Vec<&'static str>,
}

impl Run {
    fn new(party_types: Vec<&'static str>) -> Self {
        let endpoint = crate::config::Endpoint {
            name: "crm".into(),
            url: "http://127.0.0.1:9/".parse().unwrap(),
            secrets: vec![],
            events: vec![super::Pattern::All],
            providers: vec![],
            enabled: true,
            timeout: std::time::Duration::from_secs(1),
            allow_private: true,
        };
        Run {
            table: CallTable::new(crate::providers::DIRECTIONS),
            producer: Producer::new(&[endpoint]),
            events: vec![],
            party_types,
        }
    }

    fn note(&mut self, calls: &BTreeSet<CallKey>, cause: Cause) {
        for e in self.producer.observe(&self.table, calls, &cause) {
            self.events
                .push((e.id, e.kind, serde_json::from_str(&e.body).unwrap()));
        }
    }

    fn end_due(&mut self, clock: DateTime<Utc>) {
        for (key, deadline, changes) in self.table.end_due(clock) {
            let cause = Cause::Grace(key, deadline.timestamp_millis());
            self.note(&changes.calls, cause);
        }
    }

    fn row(&mut self, id: i64, input: &Input, received_at: DateTime<Utc>) {
        self.end_due(received_at);
        let row = StoredEvent {
            id,
            provider: "jas".into(),
            name: String::new(),
            content_type: None,
            body: input.body().into_bytes(),
            received_at,
        };
        let event = crate::providers::jas::events::decode(&row.body, received_at)
            .unwrap()
            .event;
        let mut ctx = Apply::new(&self.table, &row, false);
        ctx.lookups = true;
        Box::new(event).apply(&mut ctx);
        let Apply {
            changes,
            wanted_lookups,
            ..
        } = ctx;
        self.note(&changes.calls, Cause::Row(id));
        for (key, seq, at) in wanted_lookups {
            let Input::Upsert(p, _, status) = *input else {
                unreachable!("only an upsert asks for a lookup")
            };
            let details = Details {
                call_id: "26".into(),
                status: status.into(),
                party_dn: "10000".into(),
                party_number: "5148888888".into(),
                party_dn_type: self.party_types[p].into(),
                ..Default::default()
            };
            let changes = self.table.details(&key, seq, details, at, received_at);
            let cause = Cause::Lookup(format!("{}:{}:{seq}", key.dn, key.participant_id));
            self.note(&changes.calls, cause);
        }
    }

    /// Delivers `inputs` in order, `gap` apart, then lets the clock pass every grace.
    fn deliver(&mut self, inputs: &[Input], gap: Duration) -> DateTime<Utc> {
        let mut at = t(0);
        for (i, input) in inputs.iter().enumerate() {
            self.row(i as i64 + 1, input, at);
            at += gap;
        }
        at
    }

    fn call(&self) -> Value {
        json!(self.table.call(&CallKey::new(Provider::Jas, "26")).unwrap())
    }
}

/// A call's events in order: each participant joins, changes status some times and leaves;
/// the recording and the summary come after the last leave.
fn scenario() -> impl Strategy<Value = (Vec<&'static str>, Vec<Input>)> {
    let statuses = ["Dialing", "Ringing", "Connected", "Held"];
    let types = ["Wexternalline", "Wextension"];
    (
        prop::collection::vec((0usize..4, 0usize..2, 0usize..3), 1..4),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(move |(specs, recording, summary)| {
            let mut parties = vec![];
            let mut inputs = vec![];
            let mut seq = 0;
            for (p, (first, party, updates)) in specs.into_iter().enumerate() {
                parties.push(types[party]);
                for u in 0..=updates {
                    seq += 1;
                    inputs.push(Input::Upsert(p, seq, statuses[(first + u) % 4]));
                }
                seq += 1;
                inputs.push(Input::Remove(p, seq));
            }
            if recording {
                inputs.push(Input::Recording);
            }
            if summary {
                inputs.push(Input::Summary);
            }
            (parties, inputs)
        })
}

/// The rules of issue #13 over one call's events.
fn check_consistent(events: &[(String, &'static str, Value)]) -> Result<(), TestCaseError> {
    let kinds: Vec<&str> = events.iter().map(|(_, k, _)| *k).collect();
    prop_assert_eq!(kinds.first(), Some(&"call.started"), "{:?}", kinds);
    prop_assert_eq!(kinds.iter().filter(|k| **k == "call.started").count(), 1);
    let ended: Vec<usize> = (0..kinds.len())
        .filter(|i| kinds[*i] == "call.ended")
        .collect();
    prop_assert!(ended.len() <= 1, "{:?}", kinds);
    if let Some(&at) = ended.first() {
        for k in &kinds[at + 1..] {
            prop_assert!(
                k.starts_with("recording.") || *k == "call.summary",
                "{} after call.ended: {:?}",
                k,
                kinds
            );
        }
    }
    let mut left = BTreeMap::new();
    for (i, (_, kind, body)) in events.iter().enumerate() {
        if !kind.starts_with("participant.") {
            continue;
        }
        let who = body["participant"]["participant_id"].to_string();
        prop_assert!(
            !left.contains_key(&who),
            "{} for {} after its participant.left: {:?}",
            kind,
            who,
            kinds
        );
        if *kind == "participant.left" {
            left.insert(who, i);
        }
    }
    let ids: BTreeSet<&String> = events.iter().map(|(id, _, _)| id).collect();
    prop_assert_eq!(ids.len(), events.len(), "ids are unique");
    Ok(())
}

/// A delivery of `inputs`: the participants' events interleaved at random, the recording and
/// summary anywhere, and repeats of some events anywhere after the first copy. One
/// participant's own events stay in their order: a JAS participant is placed on its call by the
/// lookup its newest insert asks for, so a remove before its inserts (the remove names no call),
/// or an older insert after a newer one (not looked up, so its status is never seen), loses
/// what in-order delivery knew. That limit is the lookups', not the grace's; the table's own
/// property test (`calls/tests.rs`) reorders one participant's inputs with their answers.
fn reorder(inputs: &[Input], seed: u64, dups: &[prop::sample::Index]) -> Vec<Input> {
    let mut state = seed | 1;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut queues: Vec<Vec<usize>> = vec![];
    let mut of: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, input) in inputs.iter().enumerate() {
        let who = match input {
            Input::Upsert(p, ..) | Input::Remove(p, _) => Some(*p),
            Input::Recording | Input::Summary => None,
        };
        match who.and_then(|p| of.get(&p).copied()) {
            Some(q) => queues[q].push(i),
            None => {
                if let Some(p) = who {
                    of.insert(p, queues.len());
                }
                queues.push(vec![i]);
            }
        }
    }
    for q in &mut queues {
        q.reverse();
    }
    let mut order: Vec<usize> = vec![];
    while queues.iter().any(|q| !q.is_empty()) {
        let open: Vec<usize> = (0..queues.len())
            .filter(|q| !queues[*q].is_empty())
            .collect();
        let q = open[next(open.len())];
        order.push(queues[q].pop().unwrap());
    }
    for d in dups {
        let i = d.index(inputs.len());
        let first = order.iter().position(|x| *x == i).unwrap();
        let at = first + 1 + next(order.len() - first);
        order.insert(at, i);
    }
    order.into_iter().map(|i| inputs[i].clone()).collect()
}

proptest! {
    #[test]
    fn any_order_and_duplication_gives_consistent_events_and_the_in_order_call(
        (parties, inputs) in scenario(),
        shuffle in any::<u64>(),
        dups in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        late in prop::collection::vec(any::<prop::sample::Index>(), 0..3),
    ) {
        let gap = Duration::milliseconds(10);
        let mut in_order = Run::new(parties.clone());
        let end = in_order.deliver(&inputs, gap);
        in_order.end_due(end + END_GRACE);
        check_consistent(&in_order.events)?;
        let expected = in_order.call();
        prop_assert_eq!(&expected["state"], "ended");

        let delivered = reorder(&inputs, shuffle, &dups);
        // Every event within the grace (10 ms apart), then, long after it, repeats of some of
        // them (a provider retrying): they find the call ended and say nothing new.
        let mut shuffled = Run::new(parties);
        let end = shuffled.deliver(&delivered, gap);
        let mut at = end + END_GRACE + Duration::seconds(1);
        for (i, l) in late.iter().enumerate() {
            shuffled.row(1000 + i as i64, &inputs[l.index(inputs.len())], at);
            at += gap;
        }
        shuffled.end_due(at + END_GRACE);
        check_consistent(&shuffled.events)?;
        prop_assert_eq!(&shuffled.events.last().unwrap().2["call"], &expected);
        prop_assert_eq!(shuffled.call(), expected);
    }
}

/// Whatever ends the grace — the next row received after it, or the clock once every row is
/// applied, in this run or after a restart from the state written in it — the `call.ended` is
/// the same event under the same id.
#[test]
fn the_end_of_a_grace_has_one_id_whatever_ends_it() {
    let inputs = [
        Input::Upsert(0, 1, "Connected"),
        Input::Remove(0, 2),
        Input::Recording,
    ];
    let ended = |run: &Run| {
        let e: Vec<_> = run
            .events
            .iter()
            .filter(|(_, k, _)| *k == "call.ended")
            .collect();
        assert_eq!(e.len(), 1, "{:?}", run.events);
        (e[0].0.clone(), e[0].2["call"]["ended_at"].clone())
    };
    // The timer, once the first two rows are applied.
    let mut timer = Run::new(vec!["Wextension"]);
    timer.deliver(&inputs[..2], Duration::milliseconds(10));
    timer.end_due(t(10) + END_GRACE + Duration::seconds(3));
    // The recording's row, received after the grace.
    let mut by_row = Run::new(vec!["Wextension"]);
    by_row.deliver(&inputs[..2], Duration::milliseconds(10));
    by_row.row(3, &inputs[2], t(10) + END_GRACE + Duration::seconds(1));
    assert_eq!(ended(&timer), ended(&by_row));
    // A restart from the state written before the grace ended: restored, then the clock.
    let mut restarted = Run::new(vec!["Wextension"]);
    restarted.deliver(&inputs[..2], Duration::milliseconds(10));
    let key = CallKey::new(Provider::Jas, "26");
    let row = restarted.table.call_row(&key).unwrap();
    let who = crate::calls::ParticipantKey::new(Provider::Jas, "100", "0");
    let participant = restarted.table.participant(&who).unwrap();
    let mut after = Run::new(vec!["Wextension"]);
    let call = row.0.clone();
    after.table.restore(vec![participant], vec![row]);
    after.producer.seed(&after.table, &call);
    after.end_due(t(10) + END_GRACE + Duration::minutes(10));
    assert_eq!(ended(&after), ended(&timer));
    assert_eq!(after.call(), timer.call());
}

/// A join inside the grace resumes the call and no `call.ended` has gone out; the one
/// `call.ended` comes at the end of the second grace.
#[test]
fn a_late_join_inside_the_grace_sends_no_call_ended() {
    let mut run = Run::new(vec!["Wextension", "Wextension"]);
    run.row(1, &Input::Upsert(0, 1, "Connected"), t(0));
    run.row(2, &Input::Remove(0, 3), t(10));
    run.row(
        3,
        &Input::Upsert(1, 2, "Connected"),
        t(10) + END_GRACE - Duration::milliseconds(1),
    );
    run.end_due(t(10) + END_GRACE + Duration::seconds(1));
    let kinds: Vec<&str> = run.events.iter().map(|(_, k, _)| *k).collect();
    assert!(!kinds.contains(&"call.ended"), "{kinds:?}");
    assert_eq!(run.call()["state"], "active");
    run.row(4, &Input::Remove(1, 4), t(20_000));
    run.end_due(t(20_000) + END_GRACE);
    let kinds: Vec<&str> = run.events.iter().map(|(_, k, _)| *k).collect();
    assert_eq!(
        kinds,
        [
            "call.started",
            "participant.joined",
            "call.answered",
            "participant.left",
            "participant.joined",
            "participant.left",
            "call.ended"
        ]
    );
}
