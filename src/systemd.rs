//! systemd integration (`Type=notify`): `READY=1` once ready, `STOPPING=1` at shutdown, and
//! `WATCHDOG=1` pings — sent only while the event path answers and the journal commits, so a
//! wedged daemon is restarted instead of silently acknowledging nothing.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::journal::Journal;

/// Both are no-ops without `NOTIFY_SOCKET`.
pub fn ready() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
}

/// `STATUS=`: one line saying what the daemon is doing or waiting for.
pub fn status(text: &str) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(text)]);
}

pub fn stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// Pings the watchdog at half its period while healthy; returns at once when it is not enabled.
pub async fn watchdog(journal: Journal, public: SocketAddr, stop: CancellationToken) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (period / 2).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match healthy(&journal, public, every).await {
            Ok(()) => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            Err(why) => tracing::warn!(reason = why, "unhealthy: withholding the watchdog ping"),
        }
    }
}

async fn healthy(
    journal: &Journal,
    public: SocketAddr,
    limit: Duration,
) -> Result<(), &'static str> {
    match tokio::time::timeout(limit, journal.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err("the journal cannot commit"),
        Err(_) => return Err("the journal did not answer in time"),
    }
    // The state `/readyz` reports: an event batch may have failed since the ping.
    if journal.problem().is_some() {
        return Err("the journal cannot commit");
    }
    // A wildcard listen address is reached through loopback.
    let target = match public {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    };
    match tokio::time::timeout(limit, tokio::net::TcpStream::connect(target)).await {
        Ok(Ok(_)) => Ok(()),
        _ => Err("the webhook listener does not accept connections"),
    }
}
