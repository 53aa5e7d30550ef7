//! systemd integration (`Type=notify`): `READY=1` once ready, `STOPPING=1` at shutdown, and
//! `WATCHDOG=1` pings — sent only while the event path answers and the journal commits, so a
//! wedged daemon is restarted instead of silently acknowledging nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Whether a task still runs: true until its [`Running`] guard is dropped, which happens when
/// the task's future ends or panics.
#[derive(Clone)]
pub struct Liveness(Arc<AtomicBool>);

/// Held by the task whose life [`Liveness`] reports.
pub struct Running(Arc<AtomicBool>);

impl Liveness {
    pub fn new() -> (Liveness, Running) {
        let flag = Arc::new(AtomicBool::new(true));
        (Liveness(flag.clone()), Running(flag))
    }

    pub fn is_alive(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Pings the watchdog at half its period while healthy; returns at once when it is not enabled.
/// `public` is the public listener's accept loop.
pub async fn watchdog(journal: Journal, public: Liveness, stop: CancellationToken) {
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
        match healthy(&journal, &public, every).await {
            Ok(()) => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            Err(why) => tracing::warn!(reason = why, "unhealthy: withholding the watchdog ping"),
        }
    }
}

async fn healthy(
    journal: &Journal,
    public: &Liveness,
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
    // The accept loop itself, not a connection to it: a flood that fills the connection cap
    // and the kernel's queue behind it would make a test connection time out, and a restart
    // would only hand the attacker a fresh listener to fill (issue #11). The loop clears idle
    // connections by itself; it is dead only when its task ended or panicked.
    if public.is_alive() {
        Ok(())
    } else {
        Err("the webhook listener stopped accepting connections")
    }
}

#[cfg(test)]
mod tests {
    use super::Liveness;

    #[test]
    fn liveness_falls_when_its_task_ends_or_panics() {
        let (ended, running) = Liveness::new();
        assert!(ended.is_alive());
        drop(running);
        assert!(!ended.is_alive());

        let (panicked, running) = Liveness::new();
        let task = std::thread::spawn(move || {
            let _running = running;
            panic!("the accept loop died");
        });
        assert!(task.join().is_err());
        assert!(!panicked.is_alive());
    }
}
