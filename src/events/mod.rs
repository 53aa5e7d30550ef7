//! callhook's own call events (SPEC §7), provider-neutral, for the user's systems: their types,
//! and which of them an endpoint's `events` patterns select.
//!
//! `produce.rs` turns the call table's changes into events, `deliver.rs` sends them to each
//! endpoint, signed (`outbound/signing.rs`); `config/outbound.rs` reads the endpoints.

pub mod deliver;
pub mod produce;
#[cfg(test)]
mod properties;
mod queue;
pub mod stream;

/// Every event type, in the order of SPEC §7's table.
pub const EVENT_TYPES: &[&str] = &[
    "call.started",
    "call.answered",
    "call.ended",
    "participant.joined",
    "participant.updated",
    "participant.left",
    "recording.ready",
    "recording.failed",
    "call.summary",
];

/// Why a pattern selects nothing.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an event type or a pattern like \"call.*\" or \"*\"")]
pub struct BadPattern(pub String);

/// An endpoint's `events` entry: `*` (every event), `<group>.*` (every event of a group, e.g.
/// `call.*`), or one event type. Checked at start, so a typo is refused rather than silently
/// selecting nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    All,
    Group(String),
    Exact(&'static str),
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, BadPattern> {
        let bad = || BadPattern(text.to_string());
        if text == "*" {
            return Ok(Pattern::All);
        }
        if let Some(group) = text.strip_suffix(".*") {
            let known = EVENT_TYPES
                .iter()
                .any(|t| t.split_once('.').is_some_and(|(g, _)| g == group));
            return known
                .then(|| Pattern::Group(group.to_string()))
                .ok_or_else(bad);
        }
        EVENT_TYPES
            .iter()
            .find(|t| **t == text)
            .map(|t| Pattern::Exact(t))
            .ok_or_else(bad)
    }

    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Group(group) => event_type.split_once('.').is_some_and(|(g, _)| g == group),
            Pattern::Exact(t) => *t == event_type,
        }
    }

    /// As written in the configuration.
    pub fn as_text(&self) -> String {
        match self {
            Pattern::All => "*".into(),
            Pattern::Group(group) => format!("{group}.*"),
            Pattern::Exact(t) => (*t).into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_select_what_they_say_and_typos_are_refused() {
        let all = Pattern::parse("*").unwrap();
        let calls = Pattern::parse("call.*").unwrap();
        let ended = Pattern::parse("call.ended").unwrap();
        for t in EVENT_TYPES {
            assert!(all.matches(t));
            assert_eq!(calls.matches(t), t.starts_with("call."), "{t}");
            assert_eq!(ended.matches(t), *t == "call.ended", "{t}");
        }
        // `call.*` is not a prefix match on text: `callx.started` is not a call event.
        assert!(!calls.matches("callx.started"));
        for bad in ["call.endd", "calls.*", "", "call", "*.ended", "recording"] {
            assert_eq!(Pattern::parse(bad), Err(BadPattern(bad.into())), "{bad}");
        }
        for text in ["*", "participant.*", "recording.ready"] {
            assert_eq!(Pattern::parse(text).unwrap().as_text(), text);
        }
    }

    #[test]
    fn the_published_schema_names_every_event_type_and_field() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/call-event.schema.json")).unwrap();
        let types: Vec<&str> = schema["properties"]["type"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(types, EVENT_TYPES);
        assert_eq!(schema["properties"]["schema"]["const"], produce::SCHEMA);
        let call: crate::calls::Call = crate::calls::Call::new(crate::calls::CallKey::new(
            crate::calls::Provider::Jas,
            "26",
        ));
        let call = serde_json::to_value(call).unwrap();
        for field in call.as_object().unwrap().keys() {
            assert!(
                schema["properties"]["call"]["properties"]
                    .get(field)
                    .is_some(),
                "the schema lacks call.{field}"
            );
        }
    }
}
