//! An ended call as one CDR row (SPEC §1 `callhook export`): what billing and reporting want
//! from a call, flat, in a fixed column order.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::{Call, Direction};

/// The columns, in order (the CSV header).
pub const COLUMNS: &[&str] = &[
    "provider",
    "call_id",
    "direction",
    "from",
    "to",
    "started_at",
    "answered_at",
    "ended_at",
    "duration_secs",
    "end_reason",
    "recordings",
];

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cdr {
    pub provider: &'static str,
    pub call_id: String,
    pub direction: &'static str,
    pub from: String,
    pub to: String,
    pub started_at: String,
    pub answered_at: String,
    pub ended_at: String,
    pub duration_secs: Option<i64>,
    pub end_reason: String,
    /// The downloaded recordings' paths below `recordings.dir`, separated by spaces.
    pub recordings: String,
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Picked up: JAS `Connected`, TeleCMI `answered`.
fn picked_up(status: &str) -> bool {
    status.eq_ignore_ascii_case("connected") || status.eq_ignore_ascii_case("answered")
}

impl Cdr {
    pub fn of(call: &Call) -> Cdr {
        // The first leg says who is on either end: its own number (an extension or the
        // account's) and the other party's.
        let first = call.participants.first();
        let own = first.map(|p| p.dn.clone()).unwrap_or_default();
        let other = first
            .map(|p| {
                if p.party_number.is_empty() {
                    p.party_dn.clone()
                } else {
                    p.party_number.clone()
                }
            })
            .unwrap_or_default();
        let (from, to) = match call.direction {
            Direction::Inbound => (other, own),
            _ => (own, other),
        };
        // callhook keeps no answer time of its own: a picked-up leg's last status change is
        // the nearest it knows (the moment it became connected, unless it changed again).
        let answered_at = call
            .participants
            .iter()
            .filter(|p| picked_up(&p.status))
            .filter_map(|p| p.updated_at.or(p.joined_at))
            .min();
        let duration_secs = match (call.started_at, call.ended_at) {
            (Some(s), Some(e)) => Some((e - s).num_seconds().max(0)),
            _ => None,
        };
        let recordings: Vec<&str> = call
            .recordings
            .iter()
            .filter(|r| r.state == super::RecordingState::Downloaded)
            .filter_map(|r| r.path.as_deref())
            .collect();
        Cdr {
            provider: call.key.provider.as_str(),
            call_id: call.key.call_id.clone(),
            direction: call.direction.as_str(),
            from,
            to,
            started_at: time(call.started_at),
            answered_at: time(answered_at),
            ended_at: time(call.ended_at),
            duration_secs,
            end_reason: call
                .end_reason
                .as_ref()
                .map(|r| r.as_str().to_string())
                .unwrap_or_default(),
            recordings: recordings.join(" "),
        }
    }
}
