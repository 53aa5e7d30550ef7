//! The accept loops of both listeners. `axum::serve` has no header-read or idle timeout and no
//! connection cap, so one peer holding idle sockets could use up the process's file descriptors
//! and lock every webhook, `/healthz` and the admin API out. Each listener here has its own loop
//! and its own cap (a semaphore: at the cap, new connections wait in the kernel's backlog, which
//! costs the daemon no descriptor), and every connection is watched:
//!
//! - from its accept, and from the first byte of each later request, the request's headers must
//!   arrive within `header_read_timeout`;
//! - between requests it may stay open for `idle_timeout`, or not at all while the listener is
//!   at its cap (an idle kept-alive socket then makes room for a waiting one);
//! - a request in flight is never cut here: its body has its own deadline (`http::body`) and the
//!   handler its own (`http::REQUEST_TIMEOUT`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::ServerSettings;

/// How many connections the admin listener keeps open at once, whatever the public one does.
pub const ADMIN_CONNECTIONS: usize = 64;

/// Descriptors kept free of the public listener's cap: the admin listener's, SQLite's, the
/// recording files and the outbound HTTP clients'.
pub const RESERVED_FDS: u64 = ADMIN_CONNECTIONS as u64 + 256;

/// The limits one listener enforces on its connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `public` or `admin`, for logs and metrics.
    pub name: &'static str,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Limits {
    /// `server.*`, with the cap lowered to what the open-file limit leaves room for.
    pub fn public(server: &ServerSettings, nofile: Option<u64>) -> Self {
        Self {
            name: "public",
            max_connections: fit_under(server.max_connections, nofile),
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
        }
    }

    /// The admin listener: its own small cap, the public timeouts.
    pub fn admin(server: &ServerSettings) -> Self {
        Self {
            name: "admin",
            max_connections: ADMIN_CONNECTIONS,
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
        }
    }

    /// How often a connection's deadlines are checked: a tenth of the shorter one, so a
    /// deadline is kept to within 10 %, between 20 ms and 1 s.
    fn tick(&self) -> Duration {
        (self.header_read_timeout.min(self.idle_timeout) / 10)
            .clamp(Duration::from_millis(20), Duration::from_secs(1))
    }
}

/// The public cap under a soft open-file limit of `nofile`: never above what leaves
/// `RESERVED_FDS` free, never below 1.
pub fn fit_under(configured: usize, nofile: Option<u64>) -> usize {
    let Some(nofile) = nofile else {
        return configured;
    };
    let room = usize::try_from(nofile.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
    configured.min(room.max(1))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit now in force
/// (`None` when it cannot be read).
pub fn raise_fd_limit() -> Option<u64> {
    let before = rlimit::Resource::NOFILE.get().ok();
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => {
            tracing::info!(
                soft = soft,
                was = before.map(|(s, _)| s),
                hard = before.map(|(_, h)| h),
                "open-file limit"
            );
            Some(soft)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            before.map(|(soft, _)| soft)
        }
    }
}

/// Serves `router` on `listener` until `stop`; then stops accepting and waits for the open
/// connections to finish their requests (the caller bounds the wait).
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let builder = Arc::new(Builder::new(TokioExecutor::new()));
    metrics::gauge!("callhook_http_connections", "listener" => limits.name).set(0.0);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(limits.name, e).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let conn = Watched::new(stream);
        let (router, builder, permits, stop) = (
            router.clone(),
            builder.clone(),
            permits.clone(),
            stop.clone(),
        );
        connections.spawn(async move {
            let gauge = metrics::gauge!("callhook_http_connections", "listener" => limits.name);
            gauge.increment(1.0);
            serve_connection(conn, peer, router, &builder, limits, &permits, stop).await;
            gauge.decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Errors of `accept` that concern one connection only (it went before we took it).
fn per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

async fn accept_failed(listener: &'static str, e: std::io::Error) {
    if per_connection(&e) {
        return;
    }
    // Out of descriptors (EMFILE/ENFILE) or memory: pause instead of spinning on the error.
    tracing::error!(listener, error = %e, "cannot accept connections; pausing 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

async fn serve_connection(
    conn: Watched,
    peer: SocketAddr,
    router: Router,
    builder: &Builder<TokioExecutor>,
    limits: Limits,
    permits: &Semaphore,
    stop: CancellationToken,
) {
    let activity = conn.activity.clone();
    let in_service = activity.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let busy = Busy::start(in_service.clone());
        req.extensions_mut().insert(ConnectInfo(peer));
        let reply = router.clone().oneshot(req);
        async move {
            let reply = reply.await;
            drop(busy);
            reply
        }
    });
    let served = builder.serve_connection(TokioIo::new(conn), service);
    tokio::pin!(served);
    let mut tick = tokio::time::interval(limits.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = false;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(listener = limits.name, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = tick.tick() => {
                let crowded = permits.available_permits() == 0;
                if let Some(reason) = activity.expired(&limits, crowded) {
                    // Nothing is in flight: dropping the connection loses no request.
                    tracing::debug!(listener = limits.name, reason, "closing connection");
                    metrics::counter!("callhook_http_connections_closed_total",
                        "listener" => limits.name, "reason" => reason)
                    .increment(1);
                    return;
                }
            }
            _ = stop.cancelled(), if !draining => {
                draining = true;
                served.as_mut().graceful_shutdown();
            }
        }
    }
}

/// No request head is being read.
const NONE: u64 = u64::MAX;

/// The header-read timeout while the listener is full. A sender that means it (JAS, TeleCMI, a
/// reverse proxy) sends a request head in milliseconds; a slow one holds a connection slot that
/// a real webhook is waiting for, so while the cap is reached it gets a fifth of the usual time.
const CROWDED_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// What a connection is doing, shared by its socket, its service and its watcher. Times are
/// milliseconds since `opened`.
struct Activity {
    opened: Instant,
    /// Requests whose reply is not ready yet.
    in_flight: AtomicUsize,
    /// When the last request was answered (or the connection opened).
    idle_since: AtomicU64,
    /// When the next request's first byte arrived (the accept, for the first request), or NONE.
    head_since: AtomicU64,
}

impl Activity {
    fn now(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    /// Why the connection should be closed now, if it should.
    fn expired(&self, limits: &Limits, crowded: bool) -> Option<&'static str> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let now = self.now();
        let head = self.head_since.load(Ordering::Acquire);
        if head != NONE {
            let waited = Duration::from_millis(now.saturating_sub(head));
            let limit = if crowded {
                limits.header_read_timeout.min(CROWDED_HEADER_READ_TIMEOUT)
            } else {
                limits.header_read_timeout
            };
            return (waited >= limit).then_some("header_timeout");
        }
        if crowded {
            return Some("crowded");
        }
        let idle =
            Duration::from_millis(now.saturating_sub(self.idle_since.load(Ordering::Acquire)));
        (idle >= limits.idle_timeout).then_some("idle_timeout")
    }

    fn read_some(&self) {
        if self.head_since.load(Ordering::Relaxed) == NONE {
            let now = self.now();
            let _ =
                self.head_since
                    .compare_exchange(NONE, now, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

/// One request in flight; when its reply is ready the connection is idle again.
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.now(), Ordering::Release);
        a.head_since.store(NONE, Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The socket, noting when bytes arrive.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl Watched {
    fn new(stream: TcpStream) -> Self {
        let activity = Arc::new(Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            // The first request's headers are due from the accept on.
            head_since: AtomicU64::new(0),
        });
        Self { stream, activity }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_some();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            name: "public",
            max_connections: 4,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }

    fn activity(head_since: u64, idle_since: u64, ago: Duration) -> Activity {
        Activity {
            opened: Instant::now() - ago,
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(idle_since),
            head_since: AtomicU64::new(head_since),
        }
    }

    #[test]
    fn the_cap_leaves_room_under_the_fd_limit() {
        assert_eq!(fit_under(512, Some(1024)), 512);
        assert_eq!(fit_under(512, Some(65536)), 512);
        assert_eq!(fit_under(512, Some(512)), 192);
        assert_eq!(fit_under(512, Some(100)), 1);
        assert_eq!(fit_under(512, None), 512);
    }

    #[test]
    fn headers_are_due_from_the_accept_and_from_a_later_first_byte() {
        // Opened 11 s ago, never sent a full request head: over the 10 s header timeout.
        let a = activity(0, 0, Duration::from_secs(11));
        assert_eq!(a.expired(&limits(), false), Some("header_timeout"));
        // Opened 5 s ago: not yet while there is room...
        let a = activity(0, 0, Duration::from_secs(5));
        assert_eq!(a.expired(&limits(), false), None);
        // ...but a full listener gives a request head 2 s, not 10.
        assert_eq!(a.expired(&limits(), true), Some("header_timeout"));
        // Opened 1 s ago: not closed for crowding either (it is not idle).
        let a = activity(0, 0, Duration::from_secs(1));
        assert_eq!(a.expired(&limits(), true), None);
        // Idle since 0 (30 s ago), first byte of the next request 11 s ago.
        let a = activity(19_000, 0, Duration::from_secs(30));
        assert_eq!(a.expired(&limits(), false), Some("header_timeout"));
    }

    #[test]
    fn an_idle_connection_lasts_the_idle_timeout_unless_the_listener_is_full() {
        let a = activity(NONE, 0, Duration::from_secs(30));
        assert_eq!(a.expired(&limits(), false), None);
        assert_eq!(a.expired(&limits(), true), Some("crowded"));
        let a = activity(NONE, 0, Duration::from_secs(61));
        assert_eq!(a.expired(&limits(), false), Some("idle_timeout"));
    }

    #[test]
    fn a_request_in_flight_is_never_cut_and_its_end_starts_the_idle_time() {
        let a = Arc::new(activity(0, 0, Duration::from_secs(3600)));
        let busy = Busy::start(a.clone());
        assert_eq!(a.expired(&limits(), true), None);
        drop(busy);
        // Answered just now: idle, not waiting for headers, so only crowding closes it.
        assert_eq!(a.expired(&limits(), false), None);
        assert_eq!(a.expired(&limits(), true), Some("crowded"));
        a.read_some();
        assert_eq!(a.expired(&limits(), true), None);
    }
}
