//! Which way a TeleCMI call goes: leg a's own `direction` says it.

use crate::calls::{Direction, Leg, Side};

pub fn direction(members: &[Side]) -> Direction {
    let leg_a = members.iter().find(|s| s.leg == Some(Leg::A));
    match leg_a.and_then(|s| s.leg_direction) {
        Some(d) if d.eq_ignore_ascii_case("inbound") => Direction::Inbound,
        Some(d) if d.eq_ignore_ascii_case("outbound") => Direction::Outbound,
        _ => Direction::Unknown,
    }
}
