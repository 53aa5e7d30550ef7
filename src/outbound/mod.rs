//! Every HTTP request callhook sends goes through a client built here: provider APIs,
//! recording downloads, and the daemon's own tools (`callhook send`, `healthcheck`,
//! `demo`). One place installs the rustls crypto provider, sets the user agent, and — for a
//! request to an upstream — the redirect policy and the public-only resolver
//! ([`redirect`]); one place turns a `reqwest::Error` into a reason fit for a log line or a
//! job's `last_error` ([`describe`], [`error_chain`]: the URL, which may carry a secret in its
//! query, is dropped); one place percent-encodes path segments ([`path`]); one place names the
//! upstream metrics ([`UPSTREAM_REQUESTS`], [`UPSTREAM_REQUEST_SECONDS`], [`Api`]).
//! `clippy.toml` refuses `reqwest::Client::new`/`builder`, `reqwest::get` and
//! `CryptoProvider::install_default` everywhere else.

pub mod path;
pub mod redirect;
pub mod signing;

use std::sync::Once;
use std::time::Duration;

/// `callhook_upstream_requests_total{api, status}`: requests to provider APIs, by [`Api`] and
/// HTTP status (`error` when no answer came).
pub const UPSTREAM_REQUESTS: &str = "callhook_upstream_requests_total";
/// `callhook_upstream_request_seconds{api}`: time of provider API requests.
pub const UPSTREAM_REQUEST_SECONDS: &str = "callhook_upstream_request_seconds";
/// The `status` label of a request that got no answer.
pub const STATUS_ERROR: &str = "error";

/// The `api` label of an upstream request. Each provider names its own APIs (as constants in
/// its folder, under `providers/`), so a new provider adds labels without
/// touching this module; never a phone number or anything from a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Api(&'static str);

impl Api {
    pub const fn new(label: &'static str) -> Api {
        Api(label)
    }

    pub const fn as_label(self) -> &'static str {
        self.0
    }
}

/// Counts one request to `api` under `status`: its HTTP status, or `None` when no answer came.
pub fn count(api: Api, status: Option<u16>) {
    let status = match status {
        Some(code) => code.to_string(),
        None => STATUS_ERROR.to_string(),
    };
    metrics::counter!(UPSTREAM_REQUESTS, "api" => api.as_label(), "status" => status).increment(1);
}

/// Records how long one request to `api` took.
pub fn time(api: Api, elapsed: Duration) {
    metrics::histogram!(UPSTREAM_REQUEST_SECONDS, "api" => api.as_label())
        .record(elapsed.as_secs_f64());
}

/// Whom a client talks to, which decides its redirect and resolver policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer<'a> {
    /// A provider's API (or any host callhook does not run): redirects only as
    /// [`redirect::policy`] allows, host names other than `trusted_host` (the configured API
    /// host) resolved to public addresses only ([`redirect::PublicOnly`]).
    Upstream { trusted_host: Option<&'a str> },
    /// A callhook daemon or the simulator, at an address the operator or a test gave:
    /// reqwest's own redirect policy and resolver; `no_proxy` skips any `HTTP(S)_PROXY`.
    Own { no_proxy: bool },
    /// A user's endpoint of call events (SPEC §7): redirects are never followed, and unless
    /// `allow_private`, a host name resolves to its public addresses only.
    Delivery { allow_private: bool },
}

/// What a client is built with. Every timeout is reqwest's (`None`: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options<'a> {
    pub peer: Peer<'a>,
    pub connect_timeout: Option<Duration>,
    /// Idle-read limit: a stalled answer fails, a long one streams as long as bytes come.
    pub read_timeout: Option<Duration>,
    /// Whole-request deadline.
    pub timeout: Option<Duration>,
}

impl<'a> Options<'a> {
    /// An upstream client trusting `trusted_host`'s own resolution, with no timeouts yet.
    pub fn upstream(trusted_host: Option<&'a str>) -> Options<'a> {
        Options {
            peer: Peer::Upstream { trusted_host },
            connect_timeout: None,
            read_timeout: None,
            timeout: None,
        }
    }

    /// A client for one endpoint of call events, with no timeouts yet.
    pub fn delivery(allow_private: bool) -> Options<'static> {
        Options {
            peer: Peer::Delivery { allow_private },
            connect_timeout: None,
            read_timeout: None,
            timeout: None,
        }
    }

    /// A client for a callhook daemon or the simulator, with no timeouts yet.
    pub fn own(no_proxy: bool) -> Options<'static> {
        Options {
            peer: Peer::Own { no_proxy },
            connect_timeout: None,
            read_timeout: None,
            timeout: None,
        }
    }

    pub fn connect_timeout(self, d: Duration) -> Self {
        Options {
            connect_timeout: Some(d),
            ..self
        }
    }

    pub fn read_timeout(self, d: Duration) -> Self {
        Options {
            read_timeout: Some(d),
            ..self
        }
    }

    pub fn timeout(self, d: Duration) -> Self {
        Options {
            timeout: Some(d),
            ..self
        }
    }
}

/// The user agent of every request callhook sends.
pub const USER_AGENT: &str = concat!("callhook/", env!("CARGO_PKG_VERSION"));

/// Installs rustls' `ring` provider as the process default, once. reqwest is built with
/// `rustls-no-provider`, so a client cannot be built before this; if something else installed
/// a provider first, that one stays (the call is then a no-op).
pub fn install_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[allow(clippy::disallowed_methods)] // this is the one place it is called
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client built with `opts` and the shared policy (crypto provider, user agent, and for an
/// upstream the redirect policy and resolver).
pub fn client(opts: Options<'_>) -> Result<reqwest::Client, reqwest::Error> {
    install_crypto();
    #[allow(clippy::disallowed_methods)] // every other client is built through here
    let mut builder = reqwest::Client::builder().user_agent(USER_AGENT);
    builder = match opts.peer {
        Peer::Upstream { trusted_host } => builder
            .redirect(redirect::policy())
            .dns_resolver(redirect::PublicOnly::new(trusted_host)),
        Peer::Delivery { allow_private } => {
            let builder = builder.redirect(reqwest::redirect::Policy::none());
            match allow_private {
                true => builder,
                false => builder.dns_resolver(redirect::PublicOnly::new(None)),
            }
        }
        Peer::Own { no_proxy: true } => builder.no_proxy(),
        Peer::Own { no_proxy: false } => builder,
    };
    if let Some(d) = opts.connect_timeout {
        builder = builder.connect_timeout(d);
    }
    if let Some(d) = opts.read_timeout {
        builder = builder.read_timeout(d);
    }
    if let Some(d) = opts.timeout {
        builder = builder.timeout(d);
    }
    builder.build()
}

/// What went wrong with a request, for a log line or an error: its kind (`timed out`,
/// `connection failed`, `request failed`), then [`error_chain`].
pub fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    format!("{kind}: {}", error_chain(e))
}

/// The error and every source below it, joined by `: ` (reqwest's own Display hides the cause,
/// "error sending request", which is the useful part), without the request's URL: it may carry
/// user info or a secret in its query (`?secret=`), and these reasons end up in
/// logs and the job table.
pub fn error_chain(e: reqwest::Error) -> String {
    chain(&e.without_url())
}

/// Any error and its sources, joined by `: `.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A port nothing listens on (bound, then closed).
    async fn closed_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn a_failed_request_is_described_without_its_url_or_secret() {
        let port = closed_port().await;
        let http = client(Options::own(true).timeout(Duration::from_secs(5))).unwrap();
        let url = format!("http://127.0.0.1:{port}/play?appid=1&secret=s3cr3t-q&file=a.wav");
        let e = http.get(&url).send().await.unwrap_err();
        let text = describe(e);
        assert!(text.starts_with("connection failed: "), "{text}");
        assert!(!text.contains("s3cr3t-q"), "{text}");
        assert!(!text.contains("/play"), "{text}");
        // The cause is kept: reqwest's own Display alone says only "error sending request".
        assert!(text.matches(": ").count() >= 2, "{text}");
    }

    #[tokio::test]
    async fn a_refused_redirect_keeps_its_reason_and_drops_the_secret() {
        // An upstream on loopback redirecting to a private address: refused by the policy.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(
                b"HTTP/1.1 302 Found\r\nLocation: http://10.1.2.3/x?secret=s3cr3t-r\r\n\
                  Content-Length: 0\r\n\r\n",
            )
            .await
            .unwrap();
        });
        let http =
            client(Options::upstream(Some("127.0.0.1")).timeout(Duration::from_secs(5))).unwrap();
        let e = http
            .get(format!("http://{addr}/play?secret=s3cr3t-q"))
            .send()
            .await
            .unwrap_err();
        assert!(e.is_redirect(), "{e:?}");
        let text = error_chain(e);
        assert!(text.contains("10.1.2.3 is not a public address"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn every_client_sends_the_callhook_user_agent() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut heads = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap();
                heads.push(String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase());
                s.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                    .await
                    .unwrap();
            }
            heads
        });
        for opts in [Options::upstream(Some("127.0.0.1")), Options::own(true)] {
            let http = client(opts.timeout(Duration::from_secs(5))).unwrap();
            let resp = http.get(format!("http://{addr}/")).send().await.unwrap();
            assert_eq!(resp.status(), 204);
        }
        let want = format!("user-agent: callhook/{}", env!("CARGO_PKG_VERSION"));
        for head in server.await.unwrap() {
            assert!(head.contains(&want), "{head}");
        }
    }

    #[test]
    fn the_crypto_provider_is_installed_once_and_stays() {
        install_crypto();
        install_crypto();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
