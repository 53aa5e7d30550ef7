//! What keeps the table small in memory: texts stored inline, fields most participants lack
//! behind a pointer, and the map keys. `Details` and `Tracked` are built of these, so the form
//! the table holds is the form that is persisted and read; only the keys differ (`Held`).

use std::ops::{Deref, DerefMut};
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::model::{CallKey, ParticipantKey, Provider, Tracked};

/// DNs, ids, statuses, phone numbers and call ids nearly always fit in 24 bytes: stored inline
/// rather than as an allocation of their own each (which costs 32 bytes or more on top).
pub type Text = CompactString;

/// A text most participants lack (TeleCMI's caller id, a DID, unknown for most JAS
/// participants): 8 bytes when absent, where an `Option<Text>` takes 24.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RareText(Box<Text>);

impl Deref for RareText {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl<T: Into<Text>> From<T> for RareText {
    fn from(s: T) -> Self {
        Self(Box::new(s.into()))
    }
}

/// Provider-specific facts (`Details::extra`), empty for JAS participants: 8 bytes while empty,
/// where a map takes 24. Reads and writes as a map; the first write allocates it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Extra(Option<Box<Map<String, Value>>>);

static NO_EXTRA: LazyLock<Map<String, Value>> = LazyLock::new(Map::new);

impl Extra {
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|m| m.is_empty())
    }
}

impl Deref for Extra {
    type Target = Map<String, Value>;

    fn deref(&self) -> &Map<String, Value> {
        self.0.as_deref().unwrap_or(&NO_EXTRA)
    }
}

impl DerefMut for Extra {
    fn deref_mut(&mut self) -> &mut Map<String, Value> {
        self.0.get_or_insert_with(Box::default)
    }
}

impl From<Map<String, Value>> for Extra {
    fn from(map: Map<String, Value>) -> Self {
        Self((!map.is_empty()).then(|| Box::new(map)))
    }
}

/// Equal when the maps are: an allocated empty map is no map.
impl PartialEq for Extra {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

/// A participant as the table holds it: its key is the map's key, not repeated in the value.
pub(super) type Held = Tracked<()>;

impl Held {
    /// When it joined is the oldest event's time, whatever order they arrive in.
    pub(super) fn seen_at(&mut self, at: Option<DateTime<Utc>>) {
        if let Some(at) = at {
            if self.joined_at.is_none_or(|j| at < j) {
                self.joined_at = Some(at);
            }
        }
    }

    pub(super) fn call_key(&self, provider: Provider) -> Option<CKey> {
        self.details.as_ref().map(|d| CKey {
            provider,
            call_id: d.call_id.clone(),
        })
    }
}

/// `ParticipantKey` without its provider: the members of a call share the call's provider.
/// Ordered as `ParticipantKey` is among keys of one provider.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct MemberKey {
    pub dn: Text,
    pub participant_id: Text,
}

/// The participants map's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct PKey {
    pub provider: Provider,
    pub member: MemberKey,
}

impl PKey {
    pub fn of(key: &ParticipantKey) -> Self {
        Self {
            provider: key.provider,
            member: MemberKey {
                dn: Text::new(&key.dn),
                participant_id: Text::new(&key.participant_id),
            },
        }
    }

    pub fn to_key(&self) -> ParticipantKey {
        ParticipantKey::new(
            self.provider,
            self.member.dn.as_str(),
            self.member.participant_id.as_str(),
        )
    }
}

/// The calls map's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct CKey {
    pub provider: Provider,
    pub call_id: Text,
}

impl CKey {
    pub fn of(key: &CallKey) -> Self {
        Self {
            provider: key.provider,
            call_id: Text::new(&key.call_id),
        }
    }

    pub fn to_key(&self) -> CallKey {
        CallKey::new(self.provider, self.call_id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::Details;

    /// The budget is 1 KiB per active participant (the bench's memory scenario), and each byte
    /// of a row shows there: 8 more bytes, even within the same malloc size class, measured
    /// 7.5 B more per participant (`callhook-bench table`). 368 is what the row was while the
    /// table had a form of its own; a field that grows it fails here first.
    #[test]
    fn a_held_participant_is_no_larger_than_before() {
        assert!(
            std::mem::size_of::<Held>() <= 368,
            "{}",
            std::mem::size_of::<Held>()
        );
        assert_eq!(std::mem::size_of::<Option<RareText>>(), 8);
        assert_eq!(std::mem::size_of::<Extra>(), 8);
    }

    #[test]
    fn details_read_as_they_were_written() {
        let empty: Details = serde_json::from_str(r#"{"call_id":"1","status":"","extra":{}}"#)
            .expect("old rows decode");
        assert!(empty.extra.is_empty() && empty.caller_id.is_none());
        let mut d = Details {
            call_id: "26".into(),
            caller_id: Some("0044".into()),
            ..Default::default()
        };
        d.extra.insert("answeredsec".into(), Value::from(6));
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["caller_id"], "0044");
        assert_eq!(json["did"], Value::Null);
        assert_eq!(json["extra"]["answeredsec"], 6);
        assert_eq!(serde_json::from_value::<Details>(json).unwrap(), d);
        let plain = serde_json::to_value(Details::default()).unwrap();
        assert!(plain.get("extra").is_none(), "{plain}");
    }
}
