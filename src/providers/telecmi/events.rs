//! Decodes one TeleCMI webhook body (live call event or CDR, JSON or form-encoded) into a
//! typed [`TelecmiEvent`], tolerating TeleCMI's loose typing, and derives its dedupe key.
//! Pure: no I/O, no async, and nothing from the rest of the crate but the seam's
//! [`DecodeError`], which every provider's decoder fails with.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::providers::DecodeError;

/// What a webhook reports, from its `type` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Event,
    Cdr,
    /// Any other `type`, as given; empty when the body has no `type`.
    Other(String),
}

impl Kind {
    pub fn as_str(&self) -> &str {
        match self {
            Kind::Event => "event",
            Kind::Cdr => "cdr",
            Kind::Other(other) => other,
        }
    }
}

/// Which call leg an event belongs to.
pub use crate::calls::Leg;

#[derive(Debug, Clone, PartialEq)]
pub struct TelecmiEvent {
    pub kind: Kind,
    pub leg: Option<Leg>,
    /// Lower-cased: started, waiting, answered, hangup, missed, ...
    pub status: Option<String>,
    pub cmiuuid: String,
    /// The call id; when absent, [`TelecmiEvent::call_id`] falls back to `cmiuuid`.
    pub conversation_uuid: Option<String>,
    /// Lower-cased, e.g. "inbound" / "outbound".
    pub direction: Option<String>,
    /// Agent id, e.g. "109_1111113".
    pub user: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub callerid: Option<String>,
    /// The DID the call came in on, when TeleCMI names it. Kept as text (leading zeros too); a
    /// value that is no phone number is left out rather than refused, since nothing acts on it.
    pub virtual_number: Option<String>,
    /// From `app_id`, else `appid`.
    pub app_id: Option<String>,
    /// `time`, epoch milliseconds; `None` when missing or unreadable (the receive time is used).
    pub time_ms: Option<i64>,
    /// Fields that were present but unreadable and are treated as missing (`REPAIRABLE`), for
    /// the route's `warn` line and `callhook_event_field_warnings_total`.
    pub repaired: Vec<&'static str>,
    pub answeredsec: Option<i64>,
    pub waitedsec: Option<i64>,
    pub record: Option<bool>,
    pub voicemail: Option<bool>,
    pub click_to_call: Option<bool>,
    /// CDR recording file name.
    pub filename: Option<String>,
    pub hangup_reason: Option<String>,
    pub custom: Option<Value>,
    pub extra_params: Option<Value>,
    /// Every field as decoded, unknown ones included. Form bodies give string values; in JSON
    /// bodies a bare leading-zero number such as `04471000000` appears as a string.
    pub raw: Map<String, Value>,
}

/// Decodes one webhook body. `content_type` is the request's `Content-Type` header, if any.
pub fn decode(body: &[u8], content_type: Option<&str>) -> Result<TelecmiEvent, DecodeError> {
    let raw = match content_type.map(media_type) {
        Some(media) if media.eq_ignore_ascii_case("application/x-www-form-urlencoded") => {
            decode_form(body)?
        }
        Some(media) if !media.is_empty() => decode_json(body)?,
        _ => match decode_json(body) {
            Ok(raw) => raw,
            Err(_) if looks_like_form(body) => decode_form(body)?,
            Err(err) => return Err(err),
        },
    };
    from_raw(raw)
}

impl TelecmiEvent {
    /// `cmiuuid:type:status:leg`, with empty strings for missing parts.
    pub fn dedupe_key(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.cmiuuid,
            self.kind.as_str(),
            self.status.as_deref().unwrap_or(""),
            self.leg.map_or("", Leg::as_str)
        )
    }

    pub fn call_id(&self) -> &str {
        self.conversation_uuid.as_deref().unwrap_or(&self.cmiuuid)
    }

    /// The far party's number.
    pub fn far_end(&self) -> Option<&str> {
        let (from, to, callerid) = (
            self.from.as_deref(),
            self.to.as_deref(),
            self.callerid.as_deref(),
        );
        // On outbound calls `callerid` is our own virtual number, so it never names the far
        // party; leg b of an outbound call carries the dialled customer in `from`.
        let candidates = match (self.direction.as_deref(), self.leg) {
            (Some("outbound"), Some(Leg::B)) => [from, to, None],
            (Some("outbound"), _) => [to, from, None],
            _ => [from, callerid, to],
        };
        candidates.into_iter().flatten().next()
    }

    /// The DID dialled: `virtual_number`, else `to` of an inbound call.
    pub fn did(&self) -> Option<&str> {
        self.virtual_number.as_deref().or_else(|| {
            (self.direction.as_deref() == Some("inbound"))
                .then_some(self.to.as_deref())
                .flatten()
        })
    }
}

/// The media type without parameters, e.g. `application/json` from `application/json; charset=utf-8`.
fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// Without a content type, only fall back to form decoding for bodies that could plausibly be
/// form data; otherwise every garbage body would "decode" to a lone key and a confusing
/// missing-field error instead of the JSON error.
fn looks_like_form(body: &[u8]) -> bool {
    body.trim_ascii_start().first() != Some(&b'{')
        && body.contains(&b'=')
        && std::str::from_utf8(body).is_ok()
}

/// A body neither decoder reads: both are tried when the content type does not say which.
fn body_error(error: impl std::fmt::Display) -> DecodeError {
    DecodeError::Body {
        accepts: "JSON or form data",
        error: error.to_string(),
    }
}

fn decode_form(body: &[u8]) -> Result<Map<String, Value>, DecodeError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).map_err(body_error)?;
    Ok(pairs
        .into_iter()
        .map(|(key, value)| (key, Value::String(value)))
        .collect())
}

fn decode_json(body: &[u8]) -> Result<Map<String, Value>, DecodeError> {
    let text = quote_leading_zero_numbers(body);
    match serde_json::from_slice(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(DecodeError::not_object(&other)),
        Err(err) => Err(body_error(err)),
    }
}

/// TeleCMI's own samples send phone numbers as bare tokens with leading zeros
/// (`"callerid": 04471000000`), which is not JSON. Quote exactly those tokens, outside string
/// literals, so they survive as text with their zeros; every other byte is left alone so that
/// genuinely malformed JSON still fails.
fn quote_leading_zero_numbers(input: &[u8]) -> Cow<'_, [u8]> {
    // Bytes that can continue a bare token; scanning whole tokens means `-0123`, `0123.5` or
    // `a0123` are never mistaken for a leading-zero integer.
    fn is_token_byte(b: u8) -> bool {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-' | b'_')
    }

    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut in_string = false;
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if in_string {
            match b {
                // The escaped byte can never end the string, whatever it is.
                b'\\' => i += 2,
                b'"' => {
                    in_string = false;
                    i += 1;
                }
                _ => i += 1,
            }
        } else if b == b'"' {
            in_string = true;
            i += 1;
        } else if is_token_byte(b) {
            let start = i;
            while i < input.len() && is_token_byte(input[i]) {
                i += 1;
            }
            let token = &input[start..i];
            if token.len() > 1 && token[0] == b'0' && token.iter().all(u8::is_ascii_digit) {
                let buf = out.get_or_insert_with(|| Vec::with_capacity(input.len() + 8));
                buf.extend_from_slice(&input[copied..start]);
                buf.push(b'"');
                buf.extend_from_slice(token);
                buf.push(b'"');
                copied = i;
            }
        } else {
            i += 1;
        }
    }
    match out {
        Some(mut buf) => {
            buf.extend_from_slice(&input[copied..]);
            Cow::Owned(buf)
        }
        None => Cow::Borrowed(input),
    }
}

/// Fields an event can do without: unreadable, they count as missing instead of a 400.
pub const REPAIRABLE: &[&str] = &["time"];

fn from_raw(raw: Map<String, Value>) -> Result<TelecmiEvent, DecodeError> {
    let mut repaired = vec![];
    // An event time TeleCMI garbled: the receive time stands in for it, as for a missing one.
    let time_ms = integer(&raw, "time").unwrap_or_else(|_| {
        repaired.push("time");
        None
    });
    let cmiuuid = text(&raw, "cmiuuid")?.ok_or(DecodeError::Missing("cmiuuid"))?;
    let kind = match text(&raw, "type")? {
        None => Kind::Other(String::new()),
        Some(kind) => match kind.trim().to_ascii_lowercase().as_str() {
            "event" => Kind::Event,
            "cdr" => Kind::Cdr,
            _ => Kind::Other(kind),
        },
    };
    let leg = match lower_text(&raw, "leg")?.as_deref() {
        None => None,
        Some("a") => Some(Leg::A),
        Some("b") => Some(Leg::B),
        Some(_) => {
            return Err(DecodeError::Invalid {
                field: "leg",
                expected: "\"a\" or \"b\"",
            });
        }
    };
    let app_id_field = if present(&raw, "app_id").is_some() {
        "app_id"
    } else {
        "appid"
    };

    Ok(TelecmiEvent {
        kind,
        leg,
        status: lower_text(&raw, "status")?,
        cmiuuid,
        conversation_uuid: text(&raw, "conversation_uuid")?,
        direction: lower_text(&raw, "direction")?,
        user: text(&raw, "user")?,
        from: digits_text(&raw, "from", "a phone number")?,
        to: digits_text(&raw, "to", "a phone number")?,
        callerid: digits_text(&raw, "callerid", "a phone number")?,
        virtual_number: digits_text(&raw, "virtual_number", "a phone number").unwrap_or(None),
        app_id: digits_text(&raw, app_id_field, "a string or integer id")?,
        time_ms,
        repaired,
        answeredsec: integer(&raw, "answeredsec")?,
        waitedsec: integer(&raw, "waitedsec")?,
        record: boolean(&raw, "record")?,
        voicemail: boolean(&raw, "voicemail")?,
        click_to_call: boolean(&raw, "click_to_call")?,
        filename: text(&raw, "filename")?,
        hangup_reason: text(&raw, "hangup_reason")?,
        custom: json_blob(&raw, "custom")?,
        extra_params: json_blob(&raw, "extra_params")?,
        raw,
    })
}

/// The field's value, treating `null` and blank strings as absent: form posts send empty
/// values for fields that do not apply.
fn present<'a>(raw: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    match raw.get(key)? {
        Value::Null => None,
        Value::String(s) if s.trim().is_empty() => None,
        value => Some(value),
    }
}

fn text(raw: &Map<String, Value>, field: &'static str) -> Result<Option<String>, DecodeError> {
    match present(raw, field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(DecodeError::Invalid {
            field,
            expected: "a string",
        }),
    }
}

fn lower_text(
    raw: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, DecodeError> {
    Ok(text(raw, field)?.map(|s| s.trim().to_ascii_lowercase()))
}

/// Phone numbers and ids: strings are kept exactly as written; numbers must be non-negative
/// integers so they can be rendered without float formatting. Integers past 2^53 arrive from
/// serde_json as lossy floats and are rejected rather than silently corrupted.
fn digits_text(
    raw: &Map<String, Value>,
    field: &'static str,
    expected: &'static str,
) -> Result<Option<String>, DecodeError> {
    const MAX_EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    let invalid = DecodeError::Invalid { field, expected };
    match present(raw, field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => {
            if let Some(u) = n.as_u64() {
                Ok(Some(u.to_string()))
            } else {
                match n.as_f64() {
                    // The cast is exact here, and unlike formatting it cannot print "-0".
                    Some(f) if (0.0..=MAX_EXACT).contains(&f) && f.fract() == 0.0 => {
                        Ok(Some((f as u64).to_string()))
                    }
                    _ => Err(invalid),
                }
            }
        }
        Some(_) => Err(invalid),
    }
}

/// Integers that may arrive as numbers, numeric strings, or floats such as `12.0` (truncated).
fn integer(raw: &Map<String, Value>, field: &'static str) -> Result<Option<i64>, DecodeError> {
    fn truncate(f: f64) -> Option<i64> {
        // i64::MAX as f64 rounds up to 2^63, hence the strict upper bound.
        (f.is_finite() && f >= i64::MIN as f64 && f < i64::MAX as f64).then(|| f.trunc() as i64)
    }
    let parsed = match present(raw, field) {
        None => return Ok(None),
        Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().and_then(truncate)),
        Some(Value::String(s)) => {
            let s = s.trim();
            s.parse::<i64>()
                .ok()
                .or_else(|| s.parse::<f64>().ok().and_then(truncate))
        }
        Some(_) => None,
    };
    parsed.map(Some).ok_or(DecodeError::Invalid {
        field,
        expected: "an integer",
    })
}

fn boolean(raw: &Map<String, Value>, field: &'static str) -> Result<Option<bool>, DecodeError> {
    let parsed = match present(raw, field) {
        None => return Ok(None),
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.eq_ignore_ascii_case("true") || s == "1" {
                Some(true)
            } else if s.eq_ignore_ascii_case("false") || s == "0" {
                Some(false)
            } else {
                None
            }
        }
        Some(Value::Number(n)) => match n.as_u64() {
            Some(1) => Some(true),
            Some(0) => Some(false),
            _ => None,
        },
        Some(_) => None,
    };
    parsed.map(Some).ok_or(DecodeError::Invalid {
        field,
        expected: "a boolean",
    })
}

/// `custom` / `extra_params`: an object, or JSON text (always so in form bodies). Text that is
/// not JSON is kept as a string rather than rejected, since it is opaque caller data.
fn json_blob(raw: &Map<String, Value>, field: &'static str) -> Result<Option<Value>, DecodeError> {
    match present(raw, field) {
        None => Ok(None),
        Some(object @ Value::Object(_)) => Ok(Some(object.clone())),
        Some(Value::String(s)) => Ok(Some(
            serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
        )),
        Some(_) => Err(DecodeError::Invalid {
            field,
            expected: "an object or JSON text",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const LEG_A: &str = r#"{
"leg": "a",
"type": "event",
"click_to_call": "true",
"user": "109_1111113",
"cmiuuid": "d965c6e0-5493-44f8-8d7d-b9a8077013a4",
"direction": "outbound",
"callerid": 04471000000,
"app_id": 1111113,
"time": 1571122196059,
"request_id": "s96C6XK1BUHX0oVZfOo5NhoJfZZJd0y1nmrNN6dhdkW",
"status": "hangup",
"to": 9100000000,
"conversation_uuid": "d965c6e0-5493-44f8-8d7d-b9a8077013a4"
}"#;

    const LEG_B: &str = r#"{
"leg": "b",
"type": "event",
"click_to_call": "true",
"user": "109_1111113",
"cmiuuid": "1e12c087-e5bb-4e77-8e42-1249fa40a99b",
"direction": "outbound",
"callerid": 04471000000,
"app_id": 1111113,
"time": 1571122196059,
"status": "hangup",
"from": 9100000000,
"conversation_uuid": "d965c6e0-5493-44f8-8d7d-b9a8077013a4"
}"#;

    fn json_ok(body: &str) -> TelecmiEvent {
        match decode(body.as_bytes(), Some("application/json")) {
            Ok(event) => event,
            Err(err) => panic!("decode failed: {err}"),
        }
    }

    fn json_err(body: &str) -> DecodeError {
        decode(body.as_bytes(), Some("application/json")).unwrap_err()
    }

    #[test]
    fn leg_a_sample() {
        let e = json_ok(LEG_A);
        assert_eq!(e.kind, Kind::Event);
        assert_eq!(e.leg, Some(Leg::A));
        assert_eq!(e.status.as_deref(), Some("hangup"));
        assert_eq!(e.cmiuuid, "d965c6e0-5493-44f8-8d7d-b9a8077013a4");
        assert_eq!(e.direction.as_deref(), Some("outbound"));
        assert_eq!(e.user.as_deref(), Some("109_1111113"));
        assert_eq!(e.callerid.as_deref(), Some("04471000000"));
        assert_eq!(e.to.as_deref(), Some("9100000000"));
        assert_eq!(e.from, None);
        assert_eq!(e.app_id.as_deref(), Some("1111113"));
        assert_eq!(e.time_ms, Some(1_571_122_196_059));
        assert_eq!(e.click_to_call, Some(true));
        assert_eq!(
            e.raw["request_id"],
            "s96C6XK1BUHX0oVZfOo5NhoJfZZJd0y1nmrNN6dhdkW"
        );
        assert_eq!(e.raw["callerid"], "04471000000");
        assert_eq!(e.call_id(), "d965c6e0-5493-44f8-8d7d-b9a8077013a4");
        assert_eq!(e.far_end(), Some("9100000000"));
        assert_eq!(
            e.dedupe_key(),
            "d965c6e0-5493-44f8-8d7d-b9a8077013a4:event:hangup:a"
        );
    }

    #[test]
    fn leg_b_sample() {
        let e = json_ok(LEG_B);
        assert_eq!(e.leg, Some(Leg::B));
        assert_eq!(e.from.as_deref(), Some("9100000000"));
        assert_eq!(e.to, None);
        assert_eq!(e.callerid.as_deref(), Some("04471000000"));
        assert_eq!(e.app_id.as_deref(), Some("1111113"));
        assert_eq!(e.click_to_call, Some(true));
        assert!(!e.raw.contains_key("request_id"));
        assert_eq!(e.far_end(), Some("9100000000"));
        assert_eq!(e.call_id(), "d965c6e0-5493-44f8-8d7d-b9a8077013a4");
        assert_eq!(
            e.dedupe_key(),
            "1e12c087-e5bb-4e77-8e42-1249fa40a99b:event:hangup:b"
        );
    }

    #[test]
    fn samples_without_content_type_are_sniffed_as_json() {
        let e = decode(LEG_A.as_bytes(), None).unwrap();
        assert_eq!(e.callerid.as_deref(), Some("04471000000"));
    }

    const FORM: &str = "type=CDR&cmiuuid=abc-1&status=Answered&direction=Inbound&from=09100000000\
        &to=%2B919100000000&answeredsec=12.0&waitedsec=3&record=true&appid=42\
        &custom=%7B%22crm_id%22%3A7%7D&filename=abc-1.mp3&hangup_reason=recv_bye&extra=x";

    #[test]
    fn form_body() {
        let e = decode(
            FORM.as_bytes(),
            Some("Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
        )
        .unwrap();
        assert_eq!(e.kind, Kind::Cdr);
        assert_eq!(e.cmiuuid, "abc-1");
        assert_eq!(e.status.as_deref(), Some("answered"));
        assert_eq!(e.direction.as_deref(), Some("inbound"));
        assert_eq!(e.from.as_deref(), Some("09100000000"));
        assert_eq!(e.to.as_deref(), Some("+919100000000"));
        assert_eq!(e.answeredsec, Some(12));
        assert_eq!(e.waitedsec, Some(3));
        assert_eq!(e.record, Some(true));
        assert_eq!(e.app_id.as_deref(), Some("42"));
        assert_eq!(e.custom, Some(json!({"crm_id": 7})));
        assert_eq!(e.filename.as_deref(), Some("abc-1.mp3"));
        assert_eq!(e.hangup_reason.as_deref(), Some("recv_bye"));
        assert_eq!(e.raw["extra"], "x");
        assert_eq!(e.raw["custom"], r#"{"crm_id":7}"#);
        assert_eq!(e.far_end(), Some("09100000000"));
        assert_eq!(e.call_id(), "abc-1");
    }

    #[test]
    fn form_body_is_sniffed_without_content_type() {
        let e = decode(FORM.as_bytes(), None).unwrap();
        assert_eq!(e.kind, Kind::Cdr);
        assert_eq!(e.from.as_deref(), Some("09100000000"));
    }

    #[test]
    fn empty_form_values_are_absent() {
        let e = decode(
            b"cmiuuid=u&leg=&record=&time=&to=",
            Some("application/x-www-form-urlencoded"),
        )
        .unwrap();
        assert_eq!((e.leg, e.record, e.time_ms, e.to), (None, None, None, None));
    }

    #[test]
    fn strings_for_numbers() {
        let e = json_ok(
            r#"{"cmiuuid":"u","time":"1571122196059","answeredsec":"30","waitedsec":4.9,
                "app_id":"1111113","to":"+91 91000 00000","from":"0091","callerid":9100000000.0}"#,
        );
        assert_eq!(e.time_ms, Some(1_571_122_196_059));
        assert_eq!(e.answeredsec, Some(30));
        assert_eq!(e.waitedsec, Some(4));
        assert_eq!(e.app_id.as_deref(), Some("1111113"));
        assert_eq!(e.to.as_deref(), Some("+91 91000 00000"));
        assert_eq!(e.from.as_deref(), Some("0091"));
        assert_eq!(e.callerid.as_deref(), Some("9100000000"));
        assert_eq!(
            json_ok(r#"{"cmiuuid":"u","answeredsec":"12.0"}"#).answeredsec,
            Some(12)
        );
        assert_eq!(
            json_ok(r#"{"cmiuuid":"u","to":-0}"#).to.as_deref(),
            Some("0")
        );
    }

    #[test]
    fn string_booleans() {
        let e = json_ok(r#"{"cmiuuid":"u","record":"TRUE","voicemail":"0","click_to_call":"1"}"#);
        assert_eq!(
            (e.record, e.voicemail, e.click_to_call),
            (Some(true), Some(false), Some(true))
        );
        let e = json_ok(r#"{"cmiuuid":"u","record":false,"voicemail":"False"}"#);
        assert_eq!((e.record, e.voicemail), (Some(false), Some(false)));
        let err = json_err(r#"{"cmiuuid":"u","voicemail":"yes"}"#);
        assert_eq!(err.field(), Some("voicemail"));
        assert_eq!(
            err.to_string(),
            "invalid field `voicemail`: expected a boolean"
        );
    }

    #[test]
    fn custom_as_json_text_and_as_object() {
        let e = json_ok(
            r#"{"cmiuuid":"u","custom":"{\"lead\":\"0123\",\"n\":1}","extra_params":{"a":[1,2]}}"#,
        );
        assert_eq!(e.custom, Some(json!({"lead": "0123", "n": 1})));
        assert_eq!(e.extra_params, Some(json!({"a": [1, 2]})));
        let e = json_ok(r#"{"cmiuuid":"u","custom":"not json {"}"#);
        assert_eq!(e.custom, Some(json!("not json {")));
        assert_eq!(
            json_err(r#"{"cmiuuid":"u","custom":7}"#).field(),
            Some("custom")
        );
    }

    #[test]
    fn missing_cmiuuid() {
        let err = json_err(r#"{"type":"event","leg":"a"}"#);
        assert!(matches!(err, DecodeError::Missing("cmiuuid")));
        assert_eq!(err.to_string(), "missing field `cmiuuid`");
        assert_eq!(err.field(), Some("cmiuuid"));
        assert_eq!(json_err(r#"{"cmiuuid":null}"#).field(), Some("cmiuuid"));
    }

    #[test]
    fn bad_leg() {
        let err = json_err(r#"{"cmiuuid":"u","leg":"c"}"#);
        assert_eq!(err.field(), Some("leg"));
        assert!(err.to_string().contains("`leg`"), "{err}");
        assert_eq!(json_ok(r#"{"cmiuuid":"u","leg":"B"}"#).leg, Some(Leg::B));
    }

    #[test]
    fn wrong_typed_fields_name_the_field() {
        let err = json_err(r#"{"cmiuuid":"u","to":{"x":1}}"#);
        assert_eq!(
            err.to_string(),
            "invalid field `to`: expected a phone number"
        );
        assert_eq!(err.field(), Some("to"));
        // `time` can be done without: unreadable, it is missing and says so.
        let e = json_ok(r#"{"cmiuuid":"u","time":"abc"}"#);
        assert_eq!((e.time_ms, e.repaired), (None, vec!["time"]));
        assert!(
            json_ok(r#"{"cmiuuid":"u","time":"1571122196059"}"#)
                .repaired
                .is_empty()
        );
        assert_eq!(
            json_err(r#"{"cmiuuid":"u","from":-5}"#).field(),
            Some("from")
        );
        assert_eq!(
            json_err(r#"{"cmiuuid":"u","from":1.5}"#).field(),
            Some("from")
        );
        // Beyond 2^53 serde_json hands us a lossy float: refuse rather than corrupt.
        assert_eq!(
            json_err(r#"{"cmiuuid":"u","to":123456789012345678901}"#).field(),
            Some("to")
        );
        assert_eq!(
            json_err(r#"{"cmiuuid":"u","user":true}"#).field(),
            Some("user")
        );
        assert_eq!(
            json_err(r#"{"cmiuuid":"u","appid":[1]}"#).field(),
            Some("appid")
        );
        assert_eq!(json_err(r#"{"cmiuuid":["u"]}"#).field(), Some("cmiuuid"));
    }

    #[test]
    fn garbage_and_non_objects_are_body_errors() {
        for (body, content_type) in [
            (&b"\x00\xffnot json"[..], Some("application/json")),
            (&b"\x00\xffnot json"[..], None),
            (&b"hello world"[..], None),
            (&b"{\"cmiuuid\":"[..], None),
            (&b""[..], None),
        ] {
            let err = decode(body, content_type).unwrap_err();
            assert!(matches!(err, DecodeError::Body { .. }), "{body:?}: {err:?}");
            assert_eq!(err.field(), None);
            assert!(
                err.to_string()
                    .starts_with("body is not valid JSON or form data: ")
            );
        }
        for body in ["[1,2]", "9100000000", "\"x\"", "null"] {
            let err = decode(body.as_bytes(), None).unwrap_err();
            assert!(matches!(err, DecodeError::NotObject(_)), "{body}: {err:?}");
            assert!(
                err.to_string()
                    .starts_with("body must be a JSON object, got "),
                "{err}"
            );
        }
    }

    #[test]
    fn leading_zeros_inside_strings_are_untouched() {
        let body = r#"{"cmiuuid":"0123","user":"007","note":"0123 and 0456","callerid":"0044"}"#;
        assert!(matches!(
            quote_leading_zero_numbers(body.as_bytes()),
            Cow::Borrowed(_)
        ));
        let e = json_ok(body);
        assert_eq!(e.cmiuuid, "0123");
        assert_eq!(e.user.as_deref(), Some("007"));
        assert_eq!(e.raw["note"], "0123 and 0456");
        assert_eq!(e.callerid.as_deref(), Some("0044"));
    }

    #[test]
    fn escaped_quotes_do_not_confuse_the_pre_pass() {
        let body = r#"{"note":"say \"0123\" 0456 \\","callerid":0456,"to":[0789, 0]}"#;
        assert_eq!(
            quote_leading_zero_numbers(body.as_bytes()).as_ref(),
            br#"{"note":"say \"0123\" 0456 \\","callerid":"0456","to":["0789", 0]}"#
        );
        let e = json_ok(r#"{"cmiuuid":"u","note":"say \"0123\" 0456 \\","callerid":0456}"#);
        assert_eq!(e.raw["note"], r#"say "0123" 0456 \"#);
        assert_eq!(e.callerid.as_deref(), Some("0456"));
    }

    #[test]
    fn pre_pass_only_touches_leading_zero_integers() {
        for body in [
            r#"{"cmiuuid":"u","a":0123.5}"#,
            r#"{"cmiuuid":"u","a":-0123}"#,
            r#"{"cmiuuid":"u","a":0x12}"#,
            r#"{"cmiuuid":"u","a":0123e4}"#,
        ] {
            assert!(matches!(
                quote_leading_zero_numbers(body.as_bytes()),
                Cow::Borrowed(_)
            ));
            assert!(matches!(json_err(body), DecodeError::Body { .. }), "{body}");
        }
        assert_eq!(
            json_ok(r#"{"cmiuuid":"u","to":0}"#).to.as_deref(),
            Some("0")
        );
    }

    #[test]
    fn dedupe_key_format() {
        assert_eq!(json_ok(r#"{"cmiuuid":"u"}"#).dedupe_key(), "u:::");
        assert_eq!(
            json_ok(r#"{"cmiuuid":"u","type":"cdr"}"#).dedupe_key(),
            "u:cdr::"
        );
        assert_eq!(
            json_ok(r#"{"cmiuuid":"u","type":"Event","status":"MISSED","leg":"A"}"#).dedupe_key(),
            "u:event:missed:a"
        );
        let e = json_ok(r#"{"cmiuuid":"u","type":"Transfer"}"#);
        assert_eq!(e.kind, Kind::Other("Transfer".into()));
        assert_eq!(e.dedupe_key(), "u:Transfer::");
    }

    #[test]
    fn far_end_fallbacks() {
        let inbound = json_ok(r#"{"cmiuuid":"u","direction":"inbound","from":"1","to":"2"}"#);
        assert_eq!(inbound.far_end(), Some("1"));
        let inbound = json_ok(r#"{"cmiuuid":"u","direction":"inbound","callerid":"3","to":"2"}"#);
        assert_eq!(inbound.far_end(), Some("3"));
        let outbound =
            json_ok(r#"{"cmiuuid":"u","direction":"outbound","from":"1","callerid":"3"}"#);
        assert_eq!(outbound.far_end(), Some("1"));
        let outbound = json_ok(r#"{"cmiuuid":"u","direction":"outbound","callerid":"3"}"#);
        assert_eq!(outbound.far_end(), None);
        assert_eq!(json_ok(r#"{"cmiuuid":"u"}"#).far_end(), None);
    }

    #[test]
    fn app_id_prefers_app_id_over_appid() {
        let e = json_ok(r#"{"cmiuuid":"u","app_id":"1","appid":2}"#);
        assert_eq!(e.app_id.as_deref(), Some("1"));
        let e = json_ok(r#"{"cmiuuid":"u","app_id":null,"appid":2}"#);
        assert_eq!(e.app_id.as_deref(), Some("2"));
    }

    /// A phone value as it would appear in a JSON body, and the text it must decode to.
    fn phone_value() -> impl Strategy<Value = (String, Option<String>)> {
        prop_oneof![
            // Bare digits, leading zeros included: the pre-pass or a plain integer.
            "[0-9]{1,15}".prop_map(|d| (d.clone(), Some(d))),
            (0u64..=9_007_199_254_740_992).prop_map(|n| (n.to_string(), Some(n.to_string()))),
            "\\PC{0,16}".prop_map(|s| {
                let expected = (!s.trim().is_empty()).then(|| s.clone());
                (serde_json::Value::String(s).to_string(), expected)
            }),
        ]
    }

    fn extra_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            "\\PC{0,16}".prop_map(Value::from),
        ]
    }

    proptest! {
        #[test]
        fn phone_fields_round_trip_as_text(
            cmiuuid in "[a-f0-9-]{1,36}",
            from in phone_value(),
            to in phone_value(),
            callerid in phone_value(),
            extras in proptest::collection::btree_map("x_[a-z]{1,8}", extra_value(), 0..6),
        ) {
            let mut fields = vec![
                format!("\"cmiuuid\":{}", Value::from(cmiuuid.as_str())),
                format!("\"from\":{}", from.0),
                format!("\"to\":{}", to.0),
                format!("\"callerid\":{}", callerid.0),
            ];
            fields.extend(extras.iter().map(|(k, v)| format!("{}: {v}", Value::from(k.as_str()))));
            let body = format!("{{{}}}", fields.join(", "));

            let e = decode(body.as_bytes(), None).map_err(|err| TestCaseError::fail(format!("{err}: {body}")))?;
            prop_assert_eq!(&e.cmiuuid, &cmiuuid);
            prop_assert_eq!(&e.from, &from.1);
            prop_assert_eq!(&e.to, &to.1);
            prop_assert_eq!(&e.callerid, &callerid.1);
            for (k, v) in &extras {
                prop_assert_eq!(e.raw.get(k), Some(v));
            }

            // The same numbers posted as a form must come back identically.
            let mut pairs = vec![("cmiuuid", cmiuuid.clone())];
            for (key, (_, text)) in [("from", &from), ("to", &to), ("callerid", &callerid)] {
                if let Some(text) = text {
                    pairs.push((key, text.clone()));
                }
            }
            let form = serde_urlencoded::to_string(&pairs).map_err(|err| TestCaseError::fail(err.to_string()))?;
            let f = decode(form.as_bytes(), Some("application/x-www-form-urlencoded"))
                .map_err(|err| TestCaseError::fail(format!("{err}: {form}")))?;
            prop_assert_eq!((&f.from, &f.to, &f.callerid), (&from.1, &to.1, &callerid.1));
        }

        #[test]
        fn decode_never_panics(
            body in proptest::collection::vec(any::<u8>(), 0..256),
            content_type in proptest::option::of(prop_oneof![
                Just("application/json"),
                Just("application/x-www-form-urlencoded"),
                Just("text/plain; charset=utf-8"),
            ]),
        ) {
            let _ = decode(&body, content_type);
        }

        #[test]
        fn pre_pass_never_changes_valid_json(body in "[{}\\[\\]\":,0-9a-e. \\\\-]{0,48}") {
            let _ = decode(body.as_bytes(), None);
            if serde_json::from_str::<Value>(&body).is_ok() {
                let out = quote_leading_zero_numbers(body.as_bytes());
                prop_assert_eq!(out.as_ref(), body.as_bytes());
            }
        }
    }
}
