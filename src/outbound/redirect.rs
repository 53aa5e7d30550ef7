//! Which redirects an upstream request may follow (provider APIs and recordings). A provider, or
//! whoever answers in its name, must not be able to point callhook at the host it runs on or at
//! its private network: a redirect is followed at most [`MAX_REDIRECTS`] times, to the same host
//! and port as the original request, or to a public address — never to one of this daemon's own
//! listeners. A host name other than the configured API host is resolved by [`PublicOnly`],
//! which keeps only its public addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::RwLock;

use url::{Host, Url};

pub const MAX_REDIRECTS: usize = 5;

/// The addresses this process listens on (every daemon started in it, for the tests' sake).
static OWN_LISTENERS: RwLock<Vec<SocketAddr>> = RwLock::new(Vec::new());

/// Records a listener of this process: no redirect is ever followed to it while the returned
/// guard lives (the daemon's life). Dropped, it forgets the address, so a later server on the
/// same port (another test's, in one process) is not taken for this daemon.
#[must_use = "the address is forgotten when the guard is dropped"]
pub fn register_own_listener(addr: SocketAddr) -> OwnListener {
    let mut own = OWN_LISTENERS.write().unwrap_or_else(|e| e.into_inner());
    own.push(addr);
    OwnListener(addr)
}

/// Keeps an address in the own-listener list; see [`register_own_listener`].
#[derive(Debug)]
pub struct OwnListener(SocketAddr);

impl Drop for OwnListener {
    fn drop(&mut self) {
        let mut own = OWN_LISTENERS.write().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = own.iter().position(|a| *a == self.0) {
            own.swap_remove(i);
        }
    }
}

/// The policy for every upstream client.
pub fn policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        let Some(origin) = attempt.previous().first() else {
            return attempt.follow();
        };
        let own = OWN_LISTENERS
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match check(origin, attempt.url(), &own) {
            Ok(()) => attempt.follow(),
            Err(why) => attempt.error(format!("redirect refused: {why}")),
        }
    })
}

/// Whether a redirect from a request first sent to `origin` may go to `next`.
pub fn check(origin: &Url, next: &Url, own: &[SocketAddr]) -> Result<(), String> {
    if !matches!(next.scheme(), "http" | "https") {
        return Err(format!("scheme {} is not http(s)", next.scheme()));
    }
    let (Some(host), Some(port)) = (next.host(), next.port_or_known_default()) else {
        return Err("no host".into());
    };
    let ip = match &host {
        Host::Ipv4(ip) => Some(IpAddr::V4(*ip)),
        Host::Ipv6(ip) => Some(IpAddr::V6(*ip)),
        Host::Domain(_) => None,
    };
    if let Some(ip) = ip {
        let mine = own.iter().any(|l| {
            l.port() == port && (l.ip() == ip || (l.ip().is_unspecified() && !is_public(ip)))
        });
        if mine {
            return Err("it points at this daemon's own listener".into());
        }
    }
    let same_host = origin.host() == next.host();
    if same_host && origin.port_or_known_default() == Some(port) {
        return Ok(());
    }
    // The configured API host resolves wherever it points, private addresses included
    // ([`PublicOnly`] trusts it), so another port of it could be a service on that host that the
    // provider was never meant to reach — this daemon's admin listener among them.
    if same_host && matches!(host, Host::Domain(_)) {
        return Err(format!(
            "port {port} is not the port of the original request"
        ));
    }
    match (ip, &host) {
        (Some(ip), _) if !is_public(ip) => Err(format!("{ip} is not a public address")),
        (None, Host::Domain(name)) if is_local_name(name) => {
            Err(format!("{name} names the local host"))
        }
        _ => Ok(()),
    }
}

/// The resolver of the upstream clients: the configured API host resolves as usual (it may be
/// on a private network on purpose); any other name, which only a redirect can bring, resolves
/// to its public addresses only, so a name pointing at loopback or the LAN leads nowhere.
#[derive(Debug, Clone)]
pub struct PublicOnly {
    trusted: Option<String>,
}

impl PublicOnly {
    pub fn new(trusted_host: Option<&str>) -> PublicOnly {
        PublicOnly {
            trusted: trusted_host.map(|h| h.trim_end_matches('.').to_ascii_lowercase()),
        }
    }

    fn trusts(&self, name: &str) -> bool {
        self.trusted
            .as_deref()
            .is_some_and(|t| t == name.trim_end_matches('.').to_ascii_lowercase())
    }
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let trusted = self.trusts(name.as_str());
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| trusted || is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{name} has no public address; not followed").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn is_local_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// Globally routable: not loopback, private, link-local, shared (CGNAT), unspecified,
/// broadcast, multicast, documentation or reserved, in IPv4 or IPv6 (mapped addresses too).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(ip),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || first == 0x0064 && ip.segments()[1] == 0xff9b) // NAT64 of anything
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn same_host_and_port_is_followed_even_on_loopback() {
        let origin = url("http://127.0.0.1:8080/v2/api/recordings/a.wav");
        assert_eq!(
            check(&origin, &url("http://127.0.0.1:8080/other"), &[]),
            Ok(())
        );
        assert_eq!(
            check(
                &url("https://api.jasconnect.com/v2/x"),
                &url("https://api.jasconnect.com/y"),
                &[]
            ),
            Ok(())
        );
    }

    #[test]
    fn private_loopback_and_own_listeners_are_refused() {
        let origin = url("http://127.0.0.1:8080/v2/api/recordings/a.wav");
        let admin: SocketAddr = "127.0.0.1:9998".parse().unwrap();
        for next in [
            "http://127.0.0.1:9998/metrics",
            "http://127.0.0.1:8081/x",
            "http://10.0.0.5/x",
            "http://192.168.1.1/x",
            "http://172.16.0.1/x",
            "http://169.254.169.254/latest/meta-data",
            "http://100.64.0.1/x",
            "http://0.0.0.0:8080/x",
            "http://[::1]:8080/x",
            "http://[fd00::1]/x",
            "http://[fe80::1]/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://localhost:8080/x",
            "http://a.localhost/x",
            "file:///etc/passwd",
        ] {
            assert!(check(&origin, &url(next), &[admin]).is_err(), "{next}");
        }
        // The daemon's own listener, even on the provider's host and port.
        let own: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(check(&origin, &url("http://127.0.0.1:8080/metrics"), &[own]).is_err());
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert!(check(&origin, &url("http://127.0.0.1:8080/metrics"), &[any]).is_err());
    }

    #[tokio::test]
    async fn only_the_configured_host_may_resolve_to_a_private_address() {
        use reqwest::dns::Resolve;
        let name = |s: &str| s.parse::<reqwest::dns::Name>().unwrap();
        let resolver = PublicOnly::new(Some("localhost"));
        let addrs: Vec<_> = resolver.resolve(name("localhost")).await.unwrap().collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
        let resolver = PublicOnly::new(Some("api.jasconnect.com"));
        let err = resolver.resolve(name("localhost")).await.err().unwrap();
        assert!(err.to_string().contains("no public address"), "{err}");
    }

    #[test]
    fn the_api_host_name_on_another_port_is_refused() {
        let origin = url("https://jas.internal.example/v2/api/recordings/a.wav");
        assert_eq!(
            check(
                &origin,
                &url("https://jas.internal.example/v2/api/recordings/b.wav"),
                &[]
            ),
            Ok(())
        );
        let refused = check(
            &origin,
            &url("http://jas.internal.example:9998/metrics"),
            &[],
        );
        assert!(refused.is_err(), "{refused:?}");
    }

    #[test]
    fn public_addresses_and_names_are_followed() {
        let origin = url("https://api.jasconnect.com/v2/api/recordings/a.wav");
        for next in [
            "https://cdn.example.net/a.wav",
            "https://93.184.216.34/a.wav",
            "https://[2606:4700::1111]/a.wav",
        ] {
            assert_eq!(check(&origin, &url(next), &[]), Ok(()), "{next}");
        }
    }
}
