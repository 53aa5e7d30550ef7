//! Which way a call goes, decided from its participants (SPEC §4). Pure, so that the same set of
//! participants gives the same answer whatever order their events arrived in.

use super::model::{Direction, Leg, Provider, Tracked};

const EXTERNAL_LINE: &str = "wexternalline";

/// What the direction is decided from, about one participant: borrowed from its row
/// (`Tracked::side`). Empty strings where it has no details.
pub(super) struct Side<'a> {
    pub status: &'a str,
    /// The status it was first seen in (the oldest details by sequence), else its status.
    pub first_status: &'a str,
    /// Its DN as the details say, else as its key says.
    pub dn: &'a str,
    pub party_dn: &'a str,
    pub party_dn_type: &'a str,
    pub leg: Option<Leg>,
    pub leg_direction: Option<&'a str>,
}

impl<K> Tracked<K> {
    /// What the direction of its call is decided from; `dn` is its key's.
    pub(super) fn side<'a>(&'a self, dn: &'a str) -> Side<'a> {
        let d = self.details.as_ref();
        let status = d.map_or("", |d| d.status.as_str());
        Side {
            status,
            first_status: self.first_status.as_deref().unwrap_or(status),
            dn: d.and_then(|d| d.dn.as_deref()).unwrap_or(dn),
            party_dn: d.map_or("", |d| &d.party_dn),
            party_dn_type: d.map_or("", |d| &d.party_dn_type),
            leg: d.and_then(|d| d.leg),
            leg_direction: d.and_then(|d| d.leg_direction.as_deref()),
        }
    }
}

impl Side<'_> {
    fn far_side_external(&self) -> bool {
        self.party_dn_type.eq_ignore_ascii_case(EXTERNAL_LINE)
    }
}

pub(super) fn decide(provider: Provider, members: &[Side]) -> Direction {
    match provider {
        Provider::Telecmi => telecmi_direction(members),
        Provider::Jas => jas_direction(members),
    }
}

fn telecmi_direction(members: &[Side]) -> Direction {
    let leg_a = members.iter().find(|s| s.leg == Some(Leg::A));
    match leg_a.and_then(|s| s.leg_direction) {
        Some(d) if d.eq_ignore_ascii_case("inbound") => Direction::Inbound,
        Some(d) if d.eq_ignore_ascii_case("outbound") => Direction::Outbound,
        _ => Direction::Unknown,
    }
}

fn jas_direction(members: &[Side]) -> Direction {
    // Details with no status come from the event alone (lookups off): they say nothing about
    // which way the call goes.
    let known: Vec<&Side> = members.iter().filter(|s| !s.status.is_empty()).collect();
    if known.is_empty() {
        return Direction::Unknown;
    }
    // A local DN that dialled out toward an external party.
    if known
        .iter()
        .any(|s| s.far_side_external() && s.first_status.eq_ignore_ascii_case("dialing"))
    {
        return Direction::Outbound;
    }
    // DNs the call shows to be external lines (someone's far side is that DN).
    let external_dns: Vec<&str> = known
        .iter()
        .filter(|s| s.far_side_external())
        .map(|s| s.party_dn)
        .filter(|dn| !dn.is_empty())
        .collect();
    // An external party reached a local DN that did not dial.
    if known.iter().any(|s| {
        (s.far_side_external() && s.first_status.eq_ignore_ascii_case("ringing"))
            || external_dns.contains(&s.dn)
    }) {
        return Direction::Inbound;
    }
    if !known.iter().any(|s| s.far_side_external()) {
        return Direction::Internal;
    }
    Direction::Unknown
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::model::{Details, ParticipantKey};
    use chrono::Utc;

    /// The direction of a call of these participants, through the same `Side`s the table
    /// builds from its rows.
    fn direction_of(provider: Provider, members: &[&Tracked]) -> Direction {
        let sides: Vec<Side> = members.iter().map(|t| t.side(&t.key.dn)).collect();
        decide(provider, &sides)
    }

    fn member(dn: &str, first: &str, now: &str, party_dn: &str, party_type: &str) -> Tracked {
        let mut t = Tracked::new(ParticipantKey::new(Provider::Jas, dn, "1"), Utc::now());
        t.first_status = Some(first.into());
        t.details = Some(Details {
            call_id: "26".into(),
            status: now.into(),
            party_dn: party_dn.into(),
            party_dn_type: party_type.into(),
            ..Default::default()
        });
        t
    }

    #[test]
    fn dialing_toward_an_external_line_is_outbound() {
        let a = member("101", "Dialing", "Connected", "10000", "Wexternalline");
        assert_eq!(direction_of(Provider::Jas, &[&a]), Direction::Outbound);
    }

    #[test]
    fn ringing_from_an_external_line_is_inbound() {
        let a = member("101", "Ringing", "Connected", "10000", "Wexternalline");
        assert_eq!(direction_of(Provider::Jas, &[&a]), Direction::Inbound);
    }

    #[test]
    fn the_trunk_itself_as_participant_is_inbound() {
        // The trunk leg (dn 10000) is a participant and another leg names it as external.
        let trunk = member("10000", "Connected", "Connected", "101", "Wextension");
        let ext = member("101", "Connected", "Connected", "10000", "Wexternalline");
        assert_eq!(
            direction_of(Provider::Jas, &[&trunk, &ext]),
            Direction::Inbound
        );
    }

    #[test]
    fn extensions_only_is_internal() {
        let a = member("101", "Dialing", "Connected", "102", "Wextension");
        let b = member("102", "Ringing", "Connected", "101", "Wextension");
        assert_eq!(direction_of(Provider::Jas, &[&a, &b]), Direction::Internal);
    }

    #[test]
    fn external_but_neither_dialing_nor_ringing_is_unknown() {
        let a = member("101", "Connected", "Connected", "10000", "Wexternalline");
        assert_eq!(direction_of(Provider::Jas, &[&a]), Direction::Unknown);
    }

    #[test]
    fn no_details_is_unknown() {
        let t = Tracked::new(ParticipantKey::new(Provider::Jas, "101", "1"), Utc::now());
        assert_eq!(direction_of(Provider::Jas, &[&t]), Direction::Unknown);
        assert_eq!(direction_of(Provider::Jas, &[]), Direction::Unknown);
    }

    #[test]
    fn telecmi_follows_leg_a() {
        let mut a = Tracked::new(ParticipantKey::new(Provider::Telecmi, "", "x"), Utc::now());
        a.details = Some(Details {
            leg: Some(Leg::A),
            leg_direction: Some("inbound".into()),
            ..Default::default()
        });
        let mut b = Tracked::new(ParticipantKey::new(Provider::Telecmi, "", "y"), Utc::now());
        b.details = Some(Details {
            leg: Some(Leg::B),
            leg_direction: Some("outbound".into()),
            ..Default::default()
        });
        assert_eq!(
            direction_of(Provider::Telecmi, &[&b, &a]),
            Direction::Inbound
        );
    }
}
