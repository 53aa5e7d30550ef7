//! How the table holds participants in memory: the facts of `Tracked` and `ParticipantKey`,
//! with short provider strings stored inline. The public shapes (and so the persisted JSON and
//! the API) are built from these when read; nothing here is serialized.

use chrono::{DateTime, Utc};
use compact_str::CompactString;
use serde_json::{Map, Value};

use super::direction::Side;
use super::model::{CallKey, Details, Participant, ParticipantKey, Provider, Tracked};

/// DNs, ids, statuses, phone numbers and call ids nearly always fit in 24 bytes: stored inline
/// rather than as an allocation of their own each (which costs 32 bytes or more on top).
pub(super) type Text = CompactString;

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

/// `Details` as held.
#[derive(Debug, Clone)]
pub(super) struct HeldDetails {
    pub call_id: Text,
    pub status: Text,
    pub dn: Option<Text>,
    pub party_number: Text,
    pub party_name: Text,
    pub party_dn: Text,
    pub party_dn_type: Text,
    pub leg_id: Option<i64>,
    pub leg: Option<Text>,
    pub leg_direction: Option<Text>,
    /// `caller_id` and `did`, unknown for most JAS participants: `None` when both are.
    pub numbers: Option<Box<Numbers>>,
    /// Empty for JAS participants, so not worth 24 bytes inline each: `None` stands for empty.
    pub extra: Option<Box<Map<String, Value>>>,
}

/// `Details::caller_id` and `Details::did` as held.
#[derive(Debug, Clone)]
pub(super) struct Numbers {
    pub caller_id: Option<Text>,
    pub did: Option<Text>,
}

impl From<Details> for HeldDetails {
    fn from(d: Details) -> Self {
        Self {
            call_id: d.call_id.into(),
            status: d.status.into(),
            dn: d.dn.map(Text::from),
            party_number: d.party_number.into(),
            party_name: d.party_name.into(),
            party_dn: d.party_dn.into(),
            party_dn_type: d.party_dn_type.into(),
            leg_id: d.leg_id,
            leg: d.leg.map(Text::from),
            leg_direction: d.leg_direction.map(Text::from),
            numbers: (d.caller_id.is_some() || d.did.is_some()).then(|| {
                Box::new(Numbers {
                    caller_id: d.caller_id.map(Text::from),
                    did: d.did.map(Text::from),
                })
            }),
            extra: (!d.extra.is_empty()).then(|| Box::new(d.extra)),
        }
    }
}

impl HeldDetails {
    fn to_details(&self) -> Details {
        Details {
            call_id: self.call_id.to_string(),
            status: self.status.to_string(),
            dn: self.dn.as_ref().map(Text::to_string),
            party_number: self.party_number.to_string(),
            party_name: self.party_name.to_string(),
            party_dn: self.party_dn.to_string(),
            party_dn_type: self.party_dn_type.to_string(),
            leg_id: self.leg_id,
            leg: self.leg.as_ref().map(Text::to_string),
            leg_direction: self.leg_direction.as_ref().map(Text::to_string),
            caller_id: self.caller_id(),
            did: self.did(),
            extra: self.extra(),
        }
    }

    fn caller_id(&self) -> Option<String> {
        let n = self.numbers.as_deref()?;
        n.caller_id.as_ref().map(Text::to_string)
    }

    fn did(&self) -> Option<String> {
        let n = self.numbers.as_deref()?;
        n.did.as_ref().map(Text::to_string)
    }

    fn extra(&self) -> Map<String, Value> {
        self.extra.as_deref().cloned().unwrap_or_default()
    }
}

/// `Tracked` as held: its key is the map's key, not repeated here. The fields mean what they
/// mean there.
#[derive(Debug, Clone)]
pub(super) struct Held {
    pub last_seq: i64,
    pub removed_seq: Option<i64>,
    pub joined_at: Option<DateTime<Utc>>,
    pub left_at: Option<DateTime<Utc>>,
    pub details: Option<HeldDetails>,
    pub details_seq: i64,
    pub first_status: Option<Text>,
    pub first_details_seq: i64,
    pub updated_at: Option<DateTime<Utc>>,
    pub last_activity: DateTime<Utc>,
    pub swept: bool,
}

impl Held {
    /// As `Tracked::new`.
    pub fn new(now: DateTime<Utc>) -> Self {
        Self::from_tracked(Tracked::new(
            ParticipantKey::new(Provider::Jas, "", ""),
            now,
        ))
        .1
    }

    pub fn from_tracked(t: Tracked) -> (PKey, Self) {
        let held = Self {
            last_seq: t.last_seq,
            removed_seq: t.removed_seq,
            joined_at: t.joined_at,
            left_at: t.left_at,
            details: t.details.map(HeldDetails::from),
            details_seq: t.details_seq,
            first_status: t.first_status.map(Text::from),
            first_details_seq: t.first_details_seq,
            updated_at: t.updated_at,
            last_activity: t.last_activity,
            swept: t.swept,
        };
        (PKey::of(&t.key), held)
    }

    pub fn to_tracked(&self, key: ParticipantKey) -> Tracked {
        Tracked {
            key,
            last_seq: self.last_seq,
            removed_seq: self.removed_seq,
            joined_at: self.joined_at,
            left_at: self.left_at,
            details: self.details.as_ref().map(HeldDetails::to_details),
            details_seq: self.details_seq,
            first_status: self.first_status.as_ref().map(Text::to_string),
            first_details_seq: self.first_details_seq,
            updated_at: self.updated_at,
            last_activity: self.last_activity,
            swept: self.swept,
        }
    }

    pub fn call_key(&self, provider: Provider) -> Option<CKey> {
        self.details.as_ref().map(|d| CKey {
            provider,
            call_id: d.call_id.clone(),
        })
    }

    pub fn is_removed(&self) -> bool {
        self.removed_seq.is_some()
    }

    /// The same view as `Tracked::view` gives, without building the `Tracked` first.
    pub fn view(&self, key: &MemberKey) -> Participant {
        let d = self.details.as_ref();
        let text = |f: fn(&HeldDetails) -> &Text| d.map(|d| f(d).to_string()).unwrap_or_default();
        let status = d.map_or("", |d| d.status.as_str());
        Participant {
            dn: d
                .and_then(|d| d.dn.as_deref())
                .unwrap_or(&key.dn)
                .to_string(),
            participant_id: key.participant_id.to_string(),
            status: if status.is_empty() { "unknown" } else { status }.to_string(),
            party_number: text(|d| &d.party_number),
            party_name: text(|d| &d.party_name),
            party_dn: text(|d| &d.party_dn),
            party_dn_type: text(|d| &d.party_dn_type),
            leg_id: d.and_then(|d| d.leg_id),
            leg: d.and_then(|d| d.leg.as_ref().map(Text::to_string)),
            caller_id: d.and_then(HeldDetails::caller_id),
            did: d.and_then(HeldDetails::did),
            updated_at: self.updated_at,
            joined_at: self.joined_at,
            left_at: self.left_at,
            extra: d.map(HeldDetails::extra).unwrap_or_default(),
        }
    }

    /// What the direction of its call is decided from.
    pub fn side<'a>(&'a self, key: &'a MemberKey) -> Side<'a> {
        let d = self.details.as_ref();
        let status = d.map_or("", |d| d.status.as_str());
        Side {
            status,
            first_status: self.first_status.as_deref().unwrap_or(status),
            dn: d.and_then(|d| d.dn.as_deref()).unwrap_or(&key.dn),
            party_dn: d.map_or("", |d| &d.party_dn),
            party_dn_type: d.map_or("", |d| &d.party_dn_type),
            leg: d.and_then(|d| d.leg.as_deref()),
            leg_direction: d.and_then(|d| d.leg_direction.as_deref()),
        }
    }
}
