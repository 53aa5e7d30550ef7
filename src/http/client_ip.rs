//! Who sent a request: the TCP peer, or the client a trusted reverse proxy names in
//! `X-Forwarded-For`. Used for allow-lists and logs, so a forged header must never count unless
//! every hop after it is one of `server.trusted_proxies`.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The client's address. `X-Forwarded-For` is read only when the peer is a trusted proxy, and
/// then from the right (the hops our own proxies appended), skipping trusted proxies: the first
/// untrusted hop is the client. Anything left of it was written by the client and is ignored. An
/// unreadable hop stops the walk at the last trusted address, which an allow-list of provider
/// addresses will not contain.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer.to_canonical();
    if !is_trusted(&client) {
        return client;
    }
    // Several headers are one list in order (RFC 9110 §5.3), so walk them last to first too.
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(value) = value.to_str() else {
            return client;
        };
        for hop in value.rsplit(',') {
            let Some(ip) = parse_hop(hop) else {
                return client;
            };
            client = ip;
            if !is_trusted(&ip) {
                return client;
            }
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:5`, `[::1]:5`) or in
/// brackets, as proxies write them.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    let ip = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .and_then(|h| h.parse().ok())
        })?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_the_header_says() {
        let headers = xff(&["10.1.2.3"]);
        assert_eq!(client_ip(ip("127.0.0.1"), &headers, &[]), ip("127.0.0.1"));
        assert_eq!(
            client_ip(ip("192.0.2.1"), &headers, &nets(&["127.0.0.1/32"])),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn trusted_peer_without_header_is_the_client() {
        let trusted = nets(&["127.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &HeaderMap::new(), &trusted),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn walks_from_the_right_skipping_trusted_proxies() {
        let trusted = nets(&["127.0.0.1/32", "172.16.0.0/12"]);
        // The client forged the first entry; our proxies appended the rest.
        let headers = xff(&["6.6.6.6, 10.1.2.3, 172.16.0.5"]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &headers, &trusted),
            ip("10.1.2.3")
        );
        // The same list split over several headers.
        let headers = xff(&["6.6.6.6", "10.1.2.3,172.16.0.5"]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &headers, &trusted),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn all_hops_trusted_gives_the_leftmost() {
        let trusted = nets(&["127.0.0.1/32", "172.16.0.0/12"]);
        let headers = xff(&["172.16.0.9, 172.16.0.5"]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &headers, &trusted),
            ip("172.16.0.9")
        );
    }

    #[test]
    fn an_unreadable_hop_stops_at_the_last_trusted_address() {
        let trusted = nets(&["127.0.0.1/32", "172.16.0.0/12"]);
        for bad in ["10.1.2.3, unknown, 172.16.0.5", "10.1.2.3,,172.16.0.5"] {
            assert_eq!(
                client_ip(ip("127.0.0.1"), &xff(&[bad]), &trusted),
                ip("172.16.0.5"),
                "{bad}"
            );
        }
        let mut headers = xff(&["10.1.2.3"]);
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff1.2.3.4").unwrap(),
        );
        assert_eq!(
            client_ip(ip("127.0.0.1"), &headers, &trusted),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn ports_brackets_and_mapped_addresses() {
        let trusted = nets(&["127.0.0.1/32", "::1/128"]);
        assert_eq!(
            client_ip(ip("127.0.0.1"), &xff(&["10.1.2.3:4711"]), &trusted),
            ip("10.1.2.3")
        );
        assert_eq!(
            client_ip(ip("::1"), &xff(&["[2001:db8::7]:443"]), &trusted),
            ip("2001:db8::7")
        );
        assert_eq!(
            client_ip(ip("::1"), &xff(&["[2001:db8::7]"]), &trusted),
            ip("2001:db8::7")
        );
        // A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d; IPv4 CIDRs still apply.
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), &xff(&["::ffff:10.1.2.3"]), &trusted),
            ip("10.1.2.3")
        );
    }
}
