//! Logging: one JSON object per line (or `pretty`: one human line per event, colour only on a
//! terminal), filter from `log.level` unless `RUST_LOG` is set (both checked by `config`). The
//! sink is a parameter so tests can capture what an operator would read.
//!
//! JSON lines are flat: the request span's fields (`request_id`, `method`, `path`) sit next to
//! the event's own, never under a `span` object, and a field named in [`JSON_FIELDS`] (logged
//! as JSON text, see [`json_field`]) is written as the JSON value it holds, so `participants`
//! is a real array.

use std::fmt;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{LogFormat, LogSettings};

/// Fields logged as JSON text (with [`json_field`]) that a JSON line carries as JSON values.
pub const JSON_FIELDS: &[&str] = &["participants"];

/// `log.redact_numbers`, process-wide like the subscriber itself.
static REDACT_NUMBERS: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber; a second call (tests running several daemons) is a no-op.
pub fn init<W>(log: &LogSettings, sink: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    set_redact_numbers(log.redact_numbers);
    // Checked when the configuration was loaded; `off` only if that check was bypassed.
    let filter = EnvFilter::builder()
        .parse(log.directives())
        .unwrap_or_else(|_| EnvFilter::new("off"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink);
    let _ = match log.format {
        LogFormat::Json => builder
            .json()
            .with_ansi(false)
            .event_format(FlatJson(
                tracing_subscriber::fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            ))
            .try_init(),
        LogFormat::Pretty => {
            let ansi = std::io::stdout().is_terminal();
            builder
                .with_ansi(ansi)
                .event_format(RedactedPretty(
                    tracing_subscriber::fmt::format().compact().with_ansi(ansi),
                ))
                .try_init()
        }
    };
}

/// The JSON format of `tracing-subscriber` with its `span` object lifted to the top level and
/// [`JSON_FIELDS`] parsed back into JSON.
struct FlatJson(Format<Json>);

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    Format<Json>: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&flatten_line_with(&line, redacting()))
    }
}

/// The compact (one line) format; with `log.redact_numbers`, every run of 7 digits or more
/// in the line shows only its last 4 (a pretty line has no field types to go by).
struct RedactedPretty(Format<tracing_subscriber::fmt::format::Compact>);

impl<S, N> FormatEvent<S, N> for RedactedPretty
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if !redacting() {
            return self.0.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&redact_digit_runs(&line))
    }
}

/// Fields that hold one phone number; redacted wherever they appear (also inside the objects
/// of an array such as `participants`), whichever log site wrote them.
pub const NUMBER_FIELDS: &[&str] = &[
    "party_number",
    "caller_id",
    "callerid",
    "did",
    "from",
    "to",
    "number",
];

/// Fields of free text that may embed a number (a recording's name, an error naming it): runs
/// of 7 digits or more are redacted in them.
pub const TEXT_FIELDS: &[&str] = &["recording", "error", "reason", "message"];

fn redacting() -> bool {
    REDACT_NUMBERS.load(Ordering::Relaxed)
}

fn redact_fields(fields: &mut serde_json::Map<String, Value>, depth: usize) {
    for (key, value) in fields.iter_mut() {
        match value {
            Value::String(s) if NUMBER_FIELDS.contains(&key.as_str()) => *s = redact_number(s),
            Value::String(s) if TEXT_FIELDS.contains(&key.as_str()) => *s = redact_digit_runs(s),
            Value::Array(items) if depth == 0 => {
                for item in items {
                    if let Value::Object(inner) = item {
                        redact_fields(inner, depth + 1);
                    }
                }
            }
            _ => {}
        }
    }
}

/// One JSON line as `tracing-subscriber` wrote it, rewritten flat: the fields of `span` (but
/// its `name`) next to the event's own (an event field of the same name wins), the
/// [`JSON_FIELDS`] as JSON values; `timestamp`, `level`, `message`, `target` first. A line that
/// is not a JSON object is passed through.
pub fn flatten_line(line: &str) -> String {
    flatten_line_with(line, false)
}

/// [`flatten_line`], with [`NUMBER_FIELDS`] and [`TEXT_FIELDS`] redacted when `redact`.
pub fn flatten_line_with(line: &str, redact: bool) -> String {
    let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(line.trim_end()) else {
        return line.to_string();
    };
    if let Some(Value::Object(span)) = fields.remove("span") {
        for (key, value) in span {
            if key != "name" && !fields.contains_key(&key) {
                fields.insert(key, value);
            }
        }
    }
    for key in JSON_FIELDS {
        if let Some(Value::String(text)) = fields.get(*key) {
            if let Ok(value) = serde_json::from_str::<Value>(text) {
                fields.insert(key.to_string(), value);
            }
        }
    }
    if redact {
        redact_fields(&mut fields, 0);
    }
    let mut ordered: Vec<(String, Value)> = vec![];
    for key in ["timestamp", "level", "message", "target"] {
        if let Some(value) = fields.remove(key) {
            ordered.push((key.to_string(), value));
        }
    }
    // `Map` sorts its keys; the line is written by hand to keep the first four first.
    let mut out = String::with_capacity(line.len() + 16);
    out.push('{');
    for (i, (key, value)) in ordered.into_iter().chain(fields).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String(key).to_string());
        out.push(':');
        out.push_str(&value.to_string());
    }
    out.push_str("}\n");
    out
}

/// A value for one of [`JSON_FIELDS`]: JSON text, which a JSON line carries as JSON and a
/// pretty line shows as it is.
pub fn json_field(value: &Value) -> tracing::field::DisplayValue<String> {
    tracing::field::display(value.to_string())
}

pub fn set_redact_numbers(on: bool) {
    REDACT_NUMBERS.store(on, Ordering::Relaxed);
}

/// A phone number as a log line shows it: whole, or with `log.redact_numbers` only its last
/// four characters (`******8888`). Never used for the admin API or outbound events.
pub fn number(n: &str) -> String {
    if redacting() {
        redact_number(n)
    } else {
        n.to_string()
    }
}

/// Every character but the last four as `*`; a number of four characters or fewer (an
/// extension) is kept.
pub fn redact_number(n: &str) -> String {
    let count = n.chars().count();
    n.chars()
        .enumerate()
        .map(|(i, c)| if i + 4 < count { '*' } else { c })
        .collect()
}

/// Every run of 7 digits or more (a phone number inside a name or a message) with all but its
/// last 4 digits as `*`; shorter runs (extensions, times, ids) are kept.
pub fn redact_digit_runs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 7 {
            out.push_str(&redact_number(run));
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_their_last_four_digits() {
        assert_eq!(redact_number("5148888888"), "******8888");
        assert_eq!(redact_number("+919200000000"), "*********0000");
        assert_eq!(redact_number("04471000000"), "*******0000");
        assert_eq!(redact_number("101"), "101");
        assert_eq!(redact_number("1234"), "1234");
        assert_eq!(redact_number("12345"), "*2345");
        assert_eq!(redact_number(""), "");
    }

    #[test]
    fn digit_runs_of_phone_length_are_redacted_in_text() {
        assert_eq!(
            redact_digit_runs("[Bob]_5148888888-101_20250414.wav"),
            "[Bob]_******8888-101_****0414.wav"
        );
        assert_eq!(redact_digit_runs("101 123456 x"), "101 123456 x");
        assert_eq!(redact_digit_runs("+919200000000"), "+********0000");
        assert_eq!(redact_digit_runs(""), "");
    }

    #[test]
    fn json_lines_redact_number_fields_wherever_they_are() {
        let line = r#"{"message":"m","from":"5148888888","caller_id":"04471000000","dn":"101","recording":"r_5148888888.wav","participants":"[{\"party_number\":\"9200000000\",\"dn\":\"101\"}]","journal_id":12345678}"#;
        let v: Value = serde_json::from_str(&flatten_line_with(line, true)).unwrap();
        assert_eq!(v["from"], "******8888");
        assert_eq!(v["caller_id"], "*******0000");
        assert_eq!(v["dn"], "101");
        assert_eq!(v["recording"], "r_******8888.wav");
        assert_eq!(v["participants"][0]["party_number"], "******0000");
        assert_eq!(v["participants"][0]["dn"], "101");
        assert_eq!(v["journal_id"], 12345678);
        let v: Value = serde_json::from_str(&flatten_line_with(line, false)).unwrap();
        assert_eq!(v["from"], "5148888888");
    }

    #[test]
    fn json_lines_are_flat_and_carry_json_fields_as_json() {
        let line = r#"{"timestamp":"t","level":"INFO","fields":1,"message":"call started","participants":"[{\"dn\":\"101\"}]","target":"callhook::processor","span":{"method":"POST","path":"/webhooks/jas","request_id":"abc","name":"request"}}"#;
        let out = flatten_line(line);
        assert!(out.ends_with("}\n"), "{out}");
        assert!(
            out.starts_with(r#"{"timestamp":"t","level":"INFO","message":"call started","target":"callhook::processor","#),
            "{out}"
        );
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["request_id"], "abc");
        assert_eq!(v["method"], "POST");
        assert!(v.get("span").is_none() && v.get("name").is_none(), "{v}");
        assert_eq!(v["participants"][0]["dn"], "101");
        // An event field wins over a span field of the same name.
        let out = flatten_line(r#"{"path":"event","span":{"path":"span","name":"request"}}"#);
        assert_eq!(
            serde_json::from_str::<Value>(&out).unwrap()["path"],
            "event"
        );
        // Not JSON: untouched.
        assert_eq!(flatten_line("plain\n"), "plain\n");
    }
}
