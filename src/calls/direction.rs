//! Which way a call goes, decided from its participants (SPEC §4). Pure, so that the same set of
//! participants gives the same answer whatever order their events arrived in.

use super::model::{Direction, Leg, Provider, Tracked};

/// A provider's rule: the direction of a call of these participants. Each provider's lives in
/// its folder; `providers::DIRECTIONS` lists them and `CallTable::new` takes that list.
pub type DirectionRule = fn(&[Side]) -> Direction;

/// What the direction is decided from, about one participant: borrowed from its row
/// (`Tracked::side`). Empty strings where it has no details.
pub struct Side<'a> {
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

/// The direction by `provider`'s rule; `unknown` for a provider without one.
pub(super) fn decide(
    rules: &[(Provider, DirectionRule)],
    provider: Provider,
    members: &[Side],
) -> Direction {
    rules
        .iter()
        .find(|(p, _)| *p == provider)
        .map_or(Direction::Unknown, |(_, rule)| rule(members))
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
        decide(crate::providers::DIRECTIONS, provider, &sides)
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
