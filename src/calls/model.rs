//! The shapes of the call table: what is tracked per participant, and the Call the API shows.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::compact::{Extra, RareText, Text};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Jas,
    Telecmi,
}

impl Provider {
    pub const ALL: [Provider; 2] = [Provider::Jas, Provider::Telecmi];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Jas => "jas",
            Provider::Telecmi => "telecmi",
        }
    }

    pub fn parse(s: &str) -> Option<Provider> {
        match s {
            "jas" => Some(Provider::Jas),
            "telecmi" => Some(Provider::Telecmi),
            _ => None,
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CallKey {
    pub provider: Provider,
    pub call_id: String,
}

impl CallKey {
    pub fn new(provider: Provider, call_id: impl Into<String>) -> Self {
        Self {
            provider,
            call_id: call_id.into(),
        }
    }
}

/// A participant as the provider names it: JAS `(dn, participant id)`, TeleCMI `("", cmiuuid)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ParticipantKey {
    pub provider: Provider,
    pub dn: String,
    pub participant_id: String,
}

impl ParticipantKey {
    pub fn new(provider: Provider, dn: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            provider,
            dn: dn.into(),
            participant_id: id.into(),
        }
    }
}

/// What a lookup (JAS) or the event itself (TeleCMI) says about a participant, in the form the
/// table holds it (`compact.rs`): texts inline, what most participants lack behind a pointer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Details {
    /// The call it is on; its membership follows the newest details.
    pub call_id: Text,
    pub status: Text,
    #[serde(default)]
    pub dn: Option<Text>,
    #[serde(default)]
    pub party_number: Text,
    #[serde(default)]
    pub party_name: Text,
    #[serde(default)]
    pub party_dn: Text,
    #[serde(default)]
    pub party_dn_type: Text,
    #[serde(default)]
    pub leg_id: Option<i64>,
    /// Which leg of the call it is (TeleCMI's); the call's direction comes from leg a.
    #[serde(default)]
    pub leg: Option<Leg>,
    #[serde(default)]
    pub leg_direction: Option<Text>,
    /// The number shown to the far end (TeleCMI `callerid`), as text with its leading zeros.
    #[serde(default)]
    pub caller_id: Option<RareText>,
    /// The DID dialled on an inbound call (TeleCMI `virtual_number`, else `to`; JAS `party_did`).
    #[serde(default)]
    pub did: Option<RareText>,
    /// Provider-specific facts worth keeping (hang-up reason, answered seconds, ...).
    #[serde(default, skip_serializing_if = "Extra::is_empty")]
    pub extra: Extra,
}

/// The ordering state of one participant. Kept after its removal as a tombstone, so that late or
/// duplicated deliveries cannot bring it back.
///
/// `K` names it: a `ParticipantKey` where it stands alone (persisted, restored, read out of the
/// table); nothing in the table itself, whose map key names it (`compact::Held`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tracked<K = ParticipantKey> {
    pub key: K,
    /// Highest sequence seen for this participant.
    pub last_seq: i64,
    /// Set by the first remove: final.
    pub removed_seq: Option<i64>,
    pub joined_at: Option<DateTime<Utc>>,
    pub left_at: Option<DateTime<Utc>>,
    /// The newest details (by sequence) and the sequence they answer.
    pub details: Option<Details>,
    pub details_seq: i64,
    /// The status of the oldest details, which is what direction is decided from.
    pub first_status: Option<Text>,
    pub first_details_seq: i64,
    pub updated_at: Option<DateTime<Utc>>,
    /// Wall-clock time of the last event that touched it, for the stale sweep.
    pub last_activity: DateTime<Utc>,
    /// Removed by the stale sweep rather than by the provider: a newer event brings it back,
    /// since the provider never said it left.
    #[serde(default)]
    pub swept: bool,
}

impl<K> Tracked<K> {
    pub fn new(key: K, now: DateTime<Utc>) -> Self {
        Self {
            key,
            last_seq: i64::MIN,
            removed_seq: None,
            joined_at: None,
            left_at: None,
            details: None,
            details_seq: i64::MIN,
            first_status: None,
            first_details_seq: i64::MAX,
            updated_at: None,
            last_activity: now,
            swept: false,
        }
    }

    pub fn is_removed(&self) -> bool {
        self.removed_seq.is_some()
    }

    /// The same state under another name: the table's row given its key, or the reverse.
    pub fn keyed<J>(self, key: J) -> Tracked<J> {
        Tracked {
            key,
            last_seq: self.last_seq,
            removed_seq: self.removed_seq,
            joined_at: self.joined_at,
            left_at: self.left_at,
            details: self.details,
            details_seq: self.details_seq,
            first_status: self.first_status,
            first_details_seq: self.first_details_seq,
            updated_at: self.updated_at,
            last_activity: self.last_activity,
            swept: self.swept,
        }
    }

    /// The participant as the API shows it, given the DN and id of its key.
    pub(super) fn view_as(&self, dn: &str, participant_id: &str) -> Participant {
        let d = self.details.as_ref();
        let text = |f: fn(&Details) -> &Text| d.map(|d| f(d).to_string()).unwrap_or_default();
        let rare = |f: fn(&Details) -> &Option<RareText>| d.and_then(|d| f(d).as_deref());
        let status = d.map_or("", |d| d.status.as_str());
        Participant {
            dn: d.and_then(|d| d.dn.as_deref()).unwrap_or(dn).to_string(),
            participant_id: participant_id.to_string(),
            status: if status.is_empty() { "unknown" } else { status }.to_string(),
            party_number: text(|d| &d.party_number),
            party_name: text(|d| &d.party_name),
            party_dn: text(|d| &d.party_dn),
            party_dn_type: text(|d| &d.party_dn_type),
            leg_id: d.and_then(|d| d.leg_id),
            leg: d.and_then(|d| d.leg).map(|l| l.as_str().to_string()),
            caller_id: rare(|d| &d.caller_id).map(str::to_string),
            did: rare(|d| &d.did).map(str::to_string),
            updated_at: self.updated_at,
            joined_at: self.joined_at,
            left_at: self.left_at,
            extra: d.map(|d| Map::clone(&d.extra)).unwrap_or_default(),
        }
    }
}

impl Tracked {
    pub fn call_key(&self) -> Option<CallKey> {
        self.details
            .as_ref()
            .map(|d| CallKey::new(self.key.provider, d.call_id.as_str()))
    }

    /// The participant as the API shows it (what a call's `participants` list).
    pub fn view(&self) -> Participant {
        self.view_as(&self.key.dn, &self.key.participant_id)
    }
}

/// Which call leg a participant is: `a` the caller's, `b` the called party's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Leg {
    A,
    B,
}

impl Leg {
    pub fn as_str(self) -> &'static str {
        match self {
            Leg::A => "a",
            Leg::B => "b",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallState {
    Active,
    Ended,
}

impl CallState {
    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Active => "active",
            CallState::Ended => "ended",
        }
    }
}

/// Why a call ended. Every reason is callhook's own name for what ended it, never a provider's
/// text (TeleCMI's hang-up reason, such as `recv_bye`, stays in the leg's `extra`); it is text
/// only in the Call's JSON, which is also how the database keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The last participant left and nobody came back within the grace.
    Completed,
    /// No event for 6 hours (the stale sweep).
    Stale,
    /// TeleCMI: leg a hung up.
    Hangup,
    /// TeleCMI: a CDR arrived, which comes only once the call is over.
    Cdr,
    /// The provider's snapshot no longer listed its last participants (SPEC §8): their
    /// remove webhooks never came.
    Reconciled,
    /// A reason this version does not name, read from a row a newer version wrote: kept as
    /// written, so that such a row loads and is written back unchanged rather than failing the
    /// restore or the history. Nothing here creates one.
    Other(Text),
}

impl EndReason {
    pub fn as_str(&self) -> &str {
        match self {
            EndReason::Completed => "completed",
            EndReason::Stale => "stale",
            EndReason::Hangup => "hangup",
            EndReason::Cdr => "cdr",
            EndReason::Reconciled => "reconciled",
            EndReason::Other(text) => text,
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "completed" => EndReason::Completed,
            "stale" => EndReason::Stale,
            "hangup" => EndReason::Hangup,
            "cdr" => EndReason::Cdr,
            "reconciled" => EndReason::Reconciled,
            other => EndReason::Other(other.into()),
        }
    }
}

impl Serialize for EndReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EndReason {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(EndReason::parse(&Text::deserialize(deserializer)?))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
    Internal,
    Unknown,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
            Direction::Internal => "internal",
            Direction::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Participant {
    pub dn: String,
    pub participant_id: String,
    pub status: String,
    pub party_number: String,
    pub party_name: String,
    pub party_dn: String,
    pub party_dn_type: String,
    pub leg_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leg: Option<String>,
    /// The number shown to the far end (TeleCMI `callerid`); null when unknown.
    #[serde(default)]
    pub caller_id: Option<String>,
    /// The DID an inbound call dialled; null when unknown.
    #[serde(default)]
    pub did: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
    pub joined_at: Option<DateTime<Utc>>,
    /// Set once the participant has left; an active call lists who left too.
    pub left_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordingState {
    Pending,
    Downloading,
    Downloaded,
    Failed,
}

impl RecordingState {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingState::Pending => "pending",
            RecordingState::Downloading => "downloading",
            RecordingState::Downloaded => "downloaded",
            RecordingState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "downloading" => Some(Self::Downloading),
            "downloaded" => Some(Self::Downloaded),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recording {
    pub id: String,
    /// The provider's name for it (JAS `recording_url`, TeleCMI `filename`).
    pub url: String,
    /// Relative to `recordings.dir`; absent when the name was refused.
    pub path: Option<String>,
    pub state: RecordingState,
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A call. One form for both of its uses, as `Tracked` is for a participant:
///
/// - `Call` (`Call<CallKey, Participant>`) is what the admin API shows, the history keeps (as
///   JSON) and the call events carry: its key and its participants' views.
/// - `Call<(), MemberKey>` is what the table holds (in `table.rs`'s `CallRecord`): the map's key
///   names it, and its members' keys stand where the views go, which are built from their rows
///   when read (`CallTable::call`). So the fields are declared once, and the compact parts
///   (`EndReason`, the boxed summary) are the API's too, as `Tracked`'s are.
///
/// The key is flattened so that the JSON keeps its shape (`provider` and `call_id` first, then
/// the fields in this order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call<K = CallKey, M = Participant> {
    #[serde(flatten)]
    pub key: K,
    pub state: CallState,
    pub direction: Direction,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Set once the call has ended: `completed`, `stale`, `reconciled`, or TeleCMI's `hangup`
    /// (leg a) or `cdr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<EndReason>,
    /// Only while the call looks over (active, nobody present): when it ends unless someone
    /// joins first (the grace, `calls.end_grace_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<DateTime<Utc>>,
    /// Views sorted by `joined_at`. In the table, member keys sorted and without duplicates: the
    /// order a `BTreeSet<ParticipantKey>` had, which is the order direction is decided in; a
    /// `Vec` because calls have a handful of members, and a B-tree node is sized for eleven.
    pub participants: Vec<M>,
    pub recordings: Vec<Recording>,
    /// The provider's summary as it sent it; boxed, since most calls have none (8 bytes, not 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Box<Value>>,
}

impl<K, M> Call<K, M> {
    /// A call nobody is on yet.
    pub fn new(key: K) -> Self {
        Self {
            key,
            state: CallState::Active,
            direction: Direction::Unknown,
            started_at: None,
            ended_at: None,
            end_reason: None,
            ends_at: None,
            participants: vec![],
            recordings: vec![],
            summary: None,
        }
    }

    /// The same call under another key with other participants: the table's record given its
    /// key and its members' views, or a stored call as the table holds it. The one place that
    /// copies the fields from one form to the other.
    pub fn keyed<J, N>(self, key: J, participants: Vec<N>) -> Call<J, N> {
        Call {
            key,
            state: self.state,
            direction: self.direction,
            started_at: self.started_at,
            ended_at: self.ended_at,
            end_reason: self.end_reason,
            ends_at: self.ends_at,
            participants,
            recordings: self.recordings,
            summary: self.summary,
        }
    }
}
