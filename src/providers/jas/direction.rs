//! Which way a JAS (3CX) call goes, from its participants' statuses and far sides (SPEC §4):
//! outbound when a local DN first seen `Dialing` faces an external line, inbound when an
//! external party reached a local DN that did not dial, internal among extensions only.

use crate::calls::{Direction, Side};

/// 3CX's `party_dn_type` of a trunk.
const EXTERNAL_LINE: &str = "wexternalline";

fn far_side_external(s: &Side) -> bool {
    s.party_dn_type.eq_ignore_ascii_case(EXTERNAL_LINE)
}

pub fn direction(members: &[Side]) -> Direction {
    // Details with no status come from the event alone (lookups off): they say nothing about
    // which way the call goes.
    let known: Vec<&Side> = members.iter().filter(|s| !s.status.is_empty()).collect();
    if known.is_empty() {
        return Direction::Unknown;
    }
    // A local DN that dialled out toward an external party.
    if known
        .iter()
        .any(|s| far_side_external(s) && s.first_status.eq_ignore_ascii_case("dialing"))
    {
        return Direction::Outbound;
    }
    // DNs the call shows to be external lines (someone's far side is that DN).
    let external_dns: Vec<&str> = known
        .iter()
        .filter(|s| far_side_external(s))
        .map(|s| s.party_dn)
        .filter(|dn| !dn.is_empty())
        .collect();
    // An external party reached a local DN that did not dial.
    if known.iter().any(|s| {
        (far_side_external(s) && s.first_status.eq_ignore_ascii_case("ringing"))
            || external_dns.contains(&s.dn)
    }) {
        return Direction::Inbound;
    }
    if !known.iter().any(|s| far_side_external(s)) {
        return Direction::Internal;
    }
    Direction::Unknown
}
