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
use tracing_subscriber::fmt::format::{Format, Writer};
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
            .event_format(FlatJson)
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

/// Standard output as the log's sink, written by a thread of its own: a line is handed over
/// in memory and the thread writes whatever has queued in one `write` (std's `Stdout` is line
/// buffered, so each line was a system call on the thread that logged it, under load one per
/// `info` line on the ack path). Lines are never dropped: a full queue (64 Ki lines) makes the
/// logger wait. The guard flushes what is queued when dropped, so `serve` holds it to the end;
/// a `kill -9` loses the lines of the last moment, never an event.
pub fn stdout_sink() -> (tracing_appender::non_blocking::NonBlocking, impl Drop) {
    use std::os::fd::AsFd;
    // A duplicate of fd 1 without std's line buffer, behind a `BufWriter` the thread flushes
    // each time its queue is empty.
    let out: Box<dyn std::io::Write + Send> = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => Box::new(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::fs::File::from(fd),
        )),
        Err(_) => Box::new(std::io::stdout()),
    };
    tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(64 * 1024)
        .thread_name("callhook-log")
        .finish(out)
}

/// One JSON object per line, written directly: `timestamp`, `level`, `message`, `target`, the
/// event's fields, then the current span's (`request_id`, `method`, `path`; an event field of
/// the same name wins), [`JSON_FIELDS`] as JSON values, numbers redacted by field name with
/// `log.redact_numbers`. **Why not `tracing-subscriber`'s JSON rewritten:** that formatted
/// each line, parsed it back into a `Value` and wrote it again, a tenth of the daemon's CPU
/// under load for the two `info` lines each event gets (BENCHMARKS.md, eighth round).
struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
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
        let meta = event.metadata();
        let mut fields = JsonLine::new(redacting());
        event.record(&mut fields);
        let mut line = String::with_capacity(256);
        line.push_str("{\"timestamp\":");
        push_json_str(
            &mut line,
            &chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        );
        line.push_str(",\"level\":");
        push_json_str(&mut line, meta.level().as_str());
        if let Some(message) = &fields.message {
            line.push_str(",\"message\":");
            push_json_str(&mut line, message);
        }
        line.push_str(",\"target\":");
        push_json_str(&mut line, meta.target());
        line.push_str(&fields.rest);
        // The span's fields as its field formatter (`JsonFields`) wrote them: one small object.
        if let Some(span) = ctx.lookup_current() {
            let extensions = span.extensions();
            let text = extensions
                .get::<tracing_subscriber::fmt::FormattedFields<N>>()
                .map(|f| f.fields.as_str());
            if let Some(Ok(Value::Object(map))) = text.map(serde_json::from_str::<Value>) {
                for (key, value) in map {
                    if !fields.names.contains(&key.as_str()) {
                        line.push(',');
                        push_json_str(&mut line, &key);
                        line.push(':');
                        line.push_str(&value.to_string());
                    }
                }
            }
        }
        line.push_str("}\n");
        writer.write_str(&line)
    }
}

/// An event's fields as JSON members (`,"name":value` each), the message apart.
struct JsonLine {
    redact: bool,
    message: Option<String>,
    names: Vec<&'static str>,
    rest: String,
}

impl JsonLine {
    fn new(redact: bool) -> JsonLine {
        JsonLine {
            redact,
            message: None,
            names: vec![],
            rest: String::with_capacity(192),
        }
    }

    fn key(&mut self, field: &tracing::field::Field) {
        self.names.push(field.name());
        self.rest.push(',');
        push_json_str(&mut self.rest, field.name());
        self.rest.push(':');
    }

    fn text(&mut self, field: &tracing::field::Field, value: &str) {
        let name = field.name();
        if name == "message" {
            self.message = Some(if self.redact {
                redact_digit_runs(value)
            } else {
                value.to_string()
            });
            return;
        }
        if JSON_FIELDS.contains(&name) {
            if let Ok(mut v) = serde_json::from_str::<Value>(value) {
                if self.redact {
                    let mut one = serde_json::Map::new();
                    one.insert(name.to_string(), v);
                    redact_fields(&mut one, 0);
                    v = one.remove(name).unwrap_or(Value::Null);
                }
                self.key(field);
                self.rest.push_str(&v.to_string());
                return;
            }
        }
        self.key(field);
        match () {
            () if self.redact && NUMBER_FIELDS.contains(&name) => {
                push_json_str(&mut self.rest, &redact_number(value))
            }
            () if self.redact && TEXT_FIELDS.contains(&name) => {
                push_json_str(&mut self.rest, &redact_digit_runs(value))
            }
            () => push_json_str(&mut self.rest, value),
        }
    }

    fn raw(&mut self, field: &tracing::field::Field, value: impl fmt::Display) {
        use std::fmt::Write;
        self.key(field);
        let _ = write!(self.rest, "{value}");
    }
}

impl tracing::field::Visit for JsonLine {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.text(field, value);
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.text(field, &format!("{value:?}"));
    }

    fn record_error(
        &mut self,
        field: &tracing::field::Field,
        value: &(dyn std::error::Error + 'static),
    ) {
        self.text(field, &value.to_string());
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.raw(field, value);
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.raw(field, value);
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.raw(field, value);
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        if value.is_finite() {
            self.raw(field, value);
        } else {
            self.text(field, &value.to_string());
        }
    }
}

/// `text` as a JSON string.
fn push_json_str(out: &mut String, text: &str) {
    use std::fmt::Write;
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
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

    /// The text `FlatJson` writes for what `log` does, with `redact` as `log.redact_numbers`.
    fn text(redact: bool, log: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let out = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .json()
            .event_format(FlatJson)
            .finish();
        set_redact_numbers(redact);
        tracing::subscriber::with_default(subscriber, log);
        set_redact_numbers(false);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.ends_with('\n'), "{text}");
        text
    }

    fn lines(redact: bool, log: impl FnOnce()) -> Vec<Value> {
        text(redact, log)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn json_lines_redact_number_fields_wherever_they_are() {
        let participants =
            json_field(&serde_json::json!([{"party_number": "9200000000", "dn": "101"}]));
        let log = || {
            tracing::info!(
                from = "5148888888", caller_id = %"04471000000", dn = "101",
                recording = "r_5148888888.wav", participants, journal_id = 12345678,
                "call from 5148888888"
            )
        };
        let v = &lines(true, log)[0];
        assert_eq!(v["from"], "******8888");
        assert_eq!(v["caller_id"], "*******0000");
        assert_eq!(v["dn"], "101");
        assert_eq!(v["recording"], "r_******8888.wav");
        assert_eq!(v["message"], "call from ******8888");
        assert_eq!(v["participants"][0]["party_number"], "******0000");
        assert_eq!(v["participants"][0]["dn"], "101");
        assert_eq!(v["journal_id"], 12345678);
        let v = &lines(false, log)[0];
        assert_eq!(v["from"], "5148888888");
        assert_eq!(v["participants"][0]["party_number"], "9200000000");
    }

    #[test]
    fn json_lines_are_flat_and_carry_json_fields_as_json() {
        let participants = json_field(&serde_json::json!([{"dn": "101"}]));
        let got = lines(false, || {
            let span = tracing::info_span!(
                "request",
                method = "POST",
                path = "/webhooks/jas",
                request_id = "abc"
            );
            let _in = span.enter();
            tracing::info!(
                participants,
                quote = "a \"b\"\n\u{1}",
                ok = true,
                n = -3,
                x = 1.5,
                "call started"
            );
            tracing::warn!(path = "event", "same name");
        });
        let v = &got[0];
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        // `Value`'s map sorts keys; the line's own order is checked on the text below.
        assert!(
            keys.contains(&"timestamp") && keys.contains(&"target"),
            "{v}"
        );
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "call started");
        assert_eq!(v["request_id"], "abc");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/webhooks/jas");
        assert!(v.get("span").is_none() && v.get("name").is_none(), "{v}");
        assert_eq!(v["participants"][0]["dn"], "101");
        assert_eq!(v["quote"], "a \"b\"\n\u{1}");
        assert_eq!(
            (v["ok"].clone(), v["n"].clone(), v["x"].clone()),
            (true.into(), (-3).into(), 1.5.into())
        );
        // An event field wins over a span field of the same name.
        assert_eq!(got[1]["path"], "event");
        assert_eq!(got[1]["level"], "WARN");
    }

    #[test]
    fn json_lines_start_with_time_level_message_target() {
        let line = text(false, || tracing::info!(a = 1, "m"));
        let rest = line
            .strip_prefix("{\"timestamp\":\"")
            .unwrap_or_else(|| panic!("{line}"));
        let (time, rest) = rest.split_once('"').unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok(), "{time}");
        assert_eq!(
            rest,
            ",\"level\":\"INFO\",\"message\":\"m\",\"target\":\"callhook::telemetry::tests\",\"a\":1}\n"
        );
    }
}
