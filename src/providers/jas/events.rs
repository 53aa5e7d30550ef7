//! JAS Connect webhook payloads: decoding a verified body into a typed event and its dedupe key.
//! Every failure names the field, because the 400 reply is all an integrator sees.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::providers::DecodeError;

/// What a `call_status` event says happened to a participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParticipantChange {
    /// `event_type` 0: inserted or updated; the details come from a lookup.
    Upsert,
    /// `event_type` 1: the participant left.
    Remove,
    /// `event_type` 2.
    Dtmf,
    /// `event_type` 3.
    PromptFinished,
    Other(i64),
}

impl ParticipantChange {
    fn from_code(code: i64) -> Self {
        match code {
            0 => Self::Upsert,
            1 => Self::Remove,
            2 => Self::Dtmf,
            3 => Self::PromptFinished,
            other => Self::Other(other),
        }
    }

    pub fn code(self) -> i64 {
        match self {
            Self::Upsert => 0,
            Self::Remove => 1,
            Self::Dtmf => 2,
            Self::PromptFinished => 3,
            Self::Other(c) => c,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CallStatus {
    pub dn: String,
    pub participant_id: String,
    pub change: ParticipantChange,
    pub sequence: i64,
    pub timestamp: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewRecording {
    pub call_id: String,
    pub recording_url: String,
    pub id_recording: Option<String>,
    pub cdr_id: Option<String>,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    pub timestamp: Option<DateTime<Utc>>,
}

impl NewRecording {
    /// The DN the recording belongs to: the part of the URL before the first `/`.
    pub fn dn(&self) -> Option<&str> {
        self.recording_url
            .split_once('/')
            .map(|(dn, _)| dn)
            .filter(|dn| !dn.is_empty())
    }

    /// The recording's own id, for the Call JSON and the download job.
    pub fn id(&self) -> String {
        self.id_recording
            .clone()
            .or_else(|| self.cdr_id.clone())
            .unwrap_or_else(|| self.recording_url.clone())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CallSummary {
    /// The call it names, when it names one.
    pub call_id: Option<String>,
    /// `data` kept verbatim.
    pub data: Value,
    pub timestamp: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JasEvent {
    CallStatus(CallStatus),
    NewRecording(NewRecording),
    CallSummary(CallSummary),
    /// Journaled and answered `ignored`.
    Unknown(String),
}

impl JasEvent {
    pub fn name(&self) -> &str {
        match self {
            JasEvent::CallStatus(_) => "call_status",
            JasEvent::NewRecording(_) => "new_recording",
            JasEvent::CallSummary(_) => "call_summary",
            JasEvent::Unknown(name) => name,
        }
    }

    /// A stable label for metrics: unknown event names are not echoed into label values.
    pub fn metric_name(&self) -> &'static str {
        match self {
            JasEvent::CallStatus(_) => "call_status",
            JasEvent::NewRecording(_) => "new_recording",
            JasEvent::CallSummary(_) => "call_summary",
            JasEvent::Unknown(_) => "unknown",
        }
    }
}

/// A decoded event and the key the journal dedupes it by.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub event: JasEvent,
    pub dedupe_key: String,
    /// Time fields that were missing or unreadable and now hold the receive time, for the
    /// route's `warn` line and `callhook_event_field_warnings_total` (named as in `REPAIRABLE`).
    pub repaired: Vec<&'static str>,
}

/// The fields an authentic event can do without: a missing or unreadable one is replaced by the
/// time callhook received the event (SPEC §3), never a 400.
pub const REPAIRABLE: &[&str] = &["timestamp", "start_time", "end_time"];

/// Decodes a verified body received at `received_at`. Only what the event cannot be acted on
/// without (`entity`, `event_type`, `sequence`, `recording_url`, `call_id`) makes it an error.
pub fn decode(body: &[u8], received_at: DateTime<Utc>) -> Result<Decoded, DecodeError> {
    let root: Value = serde_json::from_slice(body).map_err(|e| DecodeError::Body {
        accepts: "JSON",
        error: e.to_string(),
    })?;
    let root = root
        .as_object()
        .ok_or_else(|| DecodeError::not_object(&root))?;
    let name = non_empty_string(root.get("eventName"), "eventName")?;
    let mut times = Times {
        received_at,
        repaired: vec![],
    };
    let data = root.get("data");
    let event = match name {
        "call_status" => {
            JasEvent::CallStatus(call_status(root, object(data, "data")?, &mut times)?)
        }
        "new_recording" => {
            JasEvent::NewRecording(new_recording(root, object(data, "data")?, &mut times)?)
        }
        "call_summary" | "call_analysis" => {
            JasEvent::CallSummary(call_summary(root, data, &mut times)?)
        }
        other => JasEvent::Unknown(other.to_string()),
    };
    Ok(Decoded {
        dedupe_key: dedupe_key(&event, body),
        event,
        repaired: times.repaired,
    })
}

type Object = serde_json::Map<String, Value>;

/// Reads the time fields an event can do without, noting each one replaced by the receive time.
struct Times {
    received_at: DateTime<Utc>,
    repaired: Vec<&'static str>,
}

impl Times {
    fn read(&mut self, value: Option<&Value>, field: &'static str) -> Option<DateTime<Utc>> {
        match value.and_then(Value::as_str).and_then(parse_time) {
            Some(t) => Some(t),
            None => {
                self.repaired.push(field);
                Some(self.received_at)
            }
        }
    }
}

fn call_status(root: &Object, data: &Object, times: &mut Times) -> Result<CallStatus, DecodeError> {
    let event = object(data.get("event"), "data.event")?;
    let entity = string(event.get("entity"), "data.event.entity")?;
    let (dn, participant_id) = parse_entity(entity)?;
    let code = integer(event.get("event_type"), "data.event.event_type")?;
    let sequence = integer(data.get("sequence"), "data.sequence")?;
    Ok(CallStatus {
        dn,
        participant_id,
        change: ParticipantChange::from_code(code),
        sequence,
        timestamp: times.read(root.get("timestamp"), "timestamp"),
    })
}

fn new_recording(
    root: &Object,
    data: &Object,
    times: &mut Times,
) -> Result<NewRecording, DecodeError> {
    let call_id = id_text(data.get("call_id"), "data.call_id")?
        .ok_or(DecodeError::Missing("data.call_id"))?;
    let recording_url = non_empty_string(data.get("recording_url"), "data.recording_url")?;
    Ok(NewRecording {
        call_id,
        recording_url: recording_url.to_string(),
        id_recording: id_text(data.get("id_recording"), "data.id_recording")?,
        cdr_id: id_text(data.get("cdr_id"), "data.cdr_id")?,
        start_time: times.read(data.get("start_time"), "start_time"),
        end_time: times.read(data.get("end_time"), "end_time"),
        timestamp: times.read(root.get("timestamp"), "timestamp"),
    })
}

/// A summary is kept whatever its `data` holds; the call it names, if any, under one of the
/// names JAS has used for it.
fn call_summary(
    root: &Object,
    data: Option<&Value>,
    times: &mut Times,
) -> Result<CallSummary, DecodeError> {
    let data = data.cloned().unwrap_or(Value::Null);
    let call_id = match data.as_object() {
        Some(obj) => ["call_id", "callid", "callId"]
            .iter()
            .find_map(|k| obj.get(*k))
            .map(|v| id_text(Some(v), "data.call_id"))
            .transpose()?
            .flatten(),
        None => None,
    };
    Ok(CallSummary {
        call_id,
        timestamp: times.read(root.get("timestamp"), "timestamp"),
        data,
    })
}

/// What names an event once: a participant's change at its sequence, a recording's id, else
/// the body itself.
fn dedupe_key(event: &JasEvent, body: &[u8]) -> String {
    match event {
        JasEvent::CallStatus(cs) => format!(
            "jas:call_status:/callcontrol/{}/participants/{}:{}:{}",
            cs.dn,
            cs.participant_id,
            cs.change.code(),
            cs.sequence
        ),
        JasEvent::NewRecording(r) => format!("jas:new_recording:{}", r.id()),
        _ => format!("jas:sha256:{}", hex::encode(Sha256::digest(body))),
    }
}

/// `/callcontrol/{dn}/participants/{id}` → (dn, id). Anything else is a 400 naming the field.
pub fn parse_entity(entity: &str) -> Result<(String, String), DecodeError> {
    let bad = DecodeError::Invalid {
        field: "data.event.entity",
        expected: "/callcontrol/{dn}/participants/{id}",
    };
    let rest = entity.strip_prefix("/callcontrol/").ok_or(bad.clone())?;
    let (dn, rest) = rest.split_once('/').ok_or(bad.clone())?;
    let id = rest.strip_prefix("participants/").ok_or(bad.clone())?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && !s.chars().all(|c| c == '.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.*#+@".contains(c))
    };
    if !valid(dn) || !valid(id) {
        return Err(bad);
    }
    Ok((dn.to_string(), id.to_string()))
}

/// A field the event cannot do without, as `pick` reads it; `expected` says what it must be.
fn required<'a, T: ?Sized>(
    value: Option<&'a Value>,
    field: &'static str,
    expected: &'static str,
    pick: impl Fn(&'a Value) -> Option<&'a T>,
) -> Result<&'a T, DecodeError> {
    let value = value.ok_or(DecodeError::Missing(field))?;
    pick(value).ok_or(DecodeError::Invalid { field, expected })
}

fn object<'a>(value: Option<&'a Value>, field: &'static str) -> Result<&'a Object, DecodeError> {
    required(value, field, "an object", Value::as_object)
}

fn string<'a>(value: Option<&'a Value>, field: &'static str) -> Result<&'a str, DecodeError> {
    required(value, field, "a string", Value::as_str)
}

fn non_empty_string<'a>(
    value: Option<&'a Value>,
    field: &'static str,
) -> Result<&'a str, DecodeError> {
    required(value, field, "a non-empty string", |v| {
        v.as_str().filter(|s| !s.is_empty())
    })
}

fn integer(value: Option<&Value>, field: &'static str) -> Result<i64, DecodeError> {
    let invalid = DecodeError::Invalid {
        field,
        expected: "an integer",
    };
    match value {
        Some(Value::Number(n)) => n.as_i64().ok_or(invalid),
        Some(Value::String(s)) => s.trim().parse().map_err(|_| invalid),
        Some(_) => Err(invalid),
        None => Err(DecodeError::Missing(field)),
    }
}

/// Ids arrive as numbers or strings (`"call_id": "26"`, `"id_recording": 1`); kept as text.
fn id_text(value: Option<&Value>, field: &'static str) -> Result<Option<String>, DecodeError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(DecodeError::Invalid {
            field,
            expected: "a string or a number",
        }),
    }
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    const CALL_STATUS: &str = r#"{"eventName":"call_status","timestamp":"2025-04-14T15:04:23.161Z","data":{"event":{"entity":"/callcontrol/101/participants/172","event_type":0},"sequence":518}}"#;
    const NEW_RECORDING: &str = r#"{"eventName":"new_recording","timestamp":"2025-04-14T15:04:23.161Z","data":{"call_id":"26","start_time":"2025-04-14T15:04:23.161Z","end_time":"2025-04-14T15:04:23.161Z","recording_url":"101/[John Doe]_101-5148888888_20250603153720(26).wav","id_recording":1,"cdr_id":"61f450de-8b46-4326-a306-32eb6ad5e534"}}"#;

    #[test]
    fn decodes_the_guide_call_status() {
        let d = decode(CALL_STATUS.as_bytes(), now()).unwrap();
        let JasEvent::CallStatus(cs) = d.event else {
            panic!("not call_status")
        };
        assert_eq!(cs.dn, "101");
        assert_eq!(cs.participant_id, "172");
        assert_eq!(cs.change, ParticipantChange::Upsert);
        assert_eq!(cs.sequence, 518);
        assert_eq!(
            d.dedupe_key,
            "jas:call_status:/callcontrol/101/participants/172:0:518"
        );
    }

    #[test]
    fn decodes_the_guide_new_recording() {
        let d = decode(NEW_RECORDING.as_bytes(), now()).unwrap();
        let JasEvent::NewRecording(r) = d.event else {
            panic!("not new_recording")
        };
        assert_eq!(r.call_id, "26");
        assert_eq!(r.dn(), Some("101"));
        assert_eq!(r.id_recording.as_deref(), Some("1"));
        assert_eq!(d.dedupe_key, "jas:new_recording:1");
    }

    #[test]
    fn recording_dedupe_falls_back_to_cdr_then_url() {
        let body = r#"{"eventName":"new_recording","data":{"call_id":26,"recording_url":"101/a.wav","cdr_id":"c-1"}}"#;
        assert_eq!(
            decode(body.as_bytes(), now()).unwrap().dedupe_key,
            "jas:new_recording:c-1"
        );
        let body =
            r#"{"eventName":"new_recording","data":{"call_id":26,"recording_url":"101/a.wav"}}"#;
        assert_eq!(
            decode(body.as_bytes(), now()).unwrap().dedupe_key,
            "jas:new_recording:101/a.wav"
        );
    }

    #[test]
    fn entity_parsing() {
        assert_eq!(
            parse_entity("/callcontrol/101/participants/172").unwrap(),
            ("101".to_string(), "172".to_string())
        );
        for bad in [
            "",
            "/callcontrol/101",
            "/callcontrol//participants/1",
            "/callcontrol/101/participants/",
            "/callcontrol/101/people/1",
            "callcontrol/101/participants/1",
            "/callcontrol/101/participants/1/extra",
            "/callcontrol/../participants/1",
            "/callcontrol/10 1/participants/1",
        ] {
            let err = parse_entity(bad).unwrap_err();
            assert_eq!(err.field(), Some("data.event.entity"), "{bad}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"data":{}}"#, "eventName"),
            (r#"{"eventName":"call_status"}"#, "data"),
            (
                r#"{"eventName":"call_status","data":{"sequence":1}}"#,
                "data.event",
            ),
            (
                r#"{"eventName":"call_status","data":{"event":{"event_type":0},"sequence":1}}"#,
                "data.event.entity",
            ),
            (
                r#"{"eventName":"call_status","data":{"event":{"entity":"/x","event_type":0},"sequence":1}}"#,
                "data.event.entity",
            ),
            (
                r#"{"eventName":"call_status","data":{"event":{"entity":"/callcontrol/1/participants/2"},"sequence":1}}"#,
                "data.event.event_type",
            ),
            (
                r#"{"eventName":"call_status","data":{"event":{"entity":"/callcontrol/1/participants/2","event_type":0}}}"#,
                "data.sequence",
            ),
            (
                r#"{"eventName":"call_status","data":{"event":{"entity":"/callcontrol/1/participants/2","event_type":0},"sequence":"x"}}"#,
                "data.sequence",
            ),
            (
                r#"{"eventName":"new_recording","data":{"recording_url":"a/b"}}"#,
                "data.call_id",
            ),
            (
                r#"{"eventName":"new_recording","data":{"call_id":1}}"#,
                "data.recording_url",
            ),
        ];
        for (body, field) in cases {
            let err = decode(body.as_bytes(), now()).unwrap_err();
            assert_eq!(err.field(), Some(field), "{body}: {err}");
            assert!(err.to_string().contains(field));
        }
        assert!(matches!(
            decode(b"not json", now()),
            Err(DecodeError::Body {
                accepts: "JSON",
                ..
            })
        ));
        assert_eq!(
            decode(b"[1]", now()).unwrap_err().to_string(),
            "body must be a JSON object, got an array"
        );
    }

    #[test]
    fn summary_and_analysis_and_unknown() {
        let d = decode(
            br#"{"eventName":"call_analysis","data":{"call_id":26,"summary":"hi"}}"#,
            now(),
        )
        .unwrap();
        let JasEvent::CallSummary(s) = &d.event else {
            panic!()
        };
        assert_eq!(s.call_id.as_deref(), Some("26"));
        assert!(d.dedupe_key.starts_with("jas:sha256:"));
        let d = decode(br#"{"eventName":"something_new"}"#, now()).unwrap();
        assert_eq!(d.event, JasEvent::Unknown("something_new".into()));
        assert_eq!(d.event.metric_name(), "unknown");
    }

    #[test]
    fn missing_or_unreadable_times_are_repaired_with_the_receive_time() {
        let at = now();
        // The guide's sample keeps its own times, nothing repaired.
        let d = decode(NEW_RECORDING.as_bytes(), at).unwrap();
        assert!(d.repaired.is_empty());
        let JasEvent::NewRecording(r) = d.event else {
            panic!()
        };
        assert_eq!(r.start_time, parse_time("2025-04-14T15:04:23.161Z"));

        let body = r#"{"eventName":"new_recording","timestamp":"yesterday","data":{"call_id":"26","start_time":17,"end_time":"2025-13-01","recording_url":"101/a.wav","id_recording":1}}"#;
        let d = decode(body.as_bytes(), at).unwrap();
        assert_eq!(d.repaired, ["start_time", "end_time", "timestamp"]);
        assert_eq!(d.dedupe_key, "jas:new_recording:1");
        let JasEvent::NewRecording(r) = d.event else {
            panic!()
        };
        assert_eq!(
            (r.start_time, r.end_time, r.timestamp),
            (Some(at), Some(at), Some(at))
        );

        let body = r#"{"eventName":"call_summary","timestamp":null,"data":{"call_id":26}}"#;
        let d = decode(body.as_bytes(), at).unwrap();
        assert_eq!(d.repaired, ["timestamp"]);
        let body = r#"{"eventName":"call_status","data":{"event":{"entity":"/callcontrol/1/participants/2","event_type":1},"sequence":3}}"#;
        let d = decode(body.as_bytes(), at).unwrap();
        assert_eq!(d.repaired, ["timestamp"]);
        let JasEvent::CallStatus(cs) = d.event else {
            panic!()
        };
        assert_eq!(cs.timestamp, Some(at));
        // An unknown event's times are never looked at.
        let d = decode(br#"{"eventName":"x","timestamp":"yesterday"}"#, at).unwrap();
        assert!(d.repaired.is_empty());
    }
}
