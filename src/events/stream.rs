//! `GET /api/stream` (SPEC §4): every call event as it is produced, to the web page and
//! `callhook tail`, whether or not an outbound endpoint is configured.
//!
//! The processor publishes events once their state change is committed, so a reader never
//! sees an event a crash could take back. The last [`RECENT`] are kept in memory, so that a
//! reader that lost its connection resumes with `Last-Event-ID` and misses nothing that
//! happened meanwhile; the outbox, not this, is what survives a restart.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::journal::NewCallEvent;

/// Events kept for readers that resume (SPEC §4: "resumes from the last 1000").
pub const RECENT: usize = 1000;

/// One event as streamed: its place in this process's stream, its id and body.
#[derive(Debug)]
pub struct Published {
    pub seq: u64,
    pub id: String,
    pub body: Arc<str>,
}

/// Where the processor publishes and readers subscribe.
pub struct Hub {
    tx: broadcast::Sender<Arc<Published>>,
    /// The last `RECENT` events and the seq of the next. Publishing and subscribing both take
    /// this lock, so a reader's backlog and its live receiver neither overlap nor leave a gap.
    recent: Mutex<(VecDeque<Arc<Published>>, u64)>,
    /// Cancelled when the daemon stops serving: a stream never ends by itself, and the
    /// listener's drain would otherwise wait its whole deadline for every open reader.
    closed: CancellationToken,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(RECENT).0,
            recent: Mutex::new((VecDeque::with_capacity(RECENT), 1)),
            closed: CancellationToken::new(),
        }
    }
}

/// A reader's start: what it missed, then everything from `live`.
pub struct Subscription {
    pub backlog: Vec<Arc<Published>>,
    pub live: broadcast::Receiver<Arc<Published>>,
}

impl Hub {
    pub fn publish<'e>(&self, events: impl IntoIterator<Item = &'e NewCallEvent>) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        for e in events {
            let seq = recent.1;
            recent.1 += 1;
            let published = Arc::new(Published {
                seq,
                id: e.id.clone(),
                body: e.body.clone(),
            });
            if recent.0.len() == RECENT {
                recent.0.pop_front();
            }
            recent.0.push_back(published.clone());
            // No reader is not an error: the event is still kept for one that resumes.
            let _ = self.tx.send(published);
        }
    }

    /// Live events from now, after the kept ones that came after `last_id`. A reader that
    /// names an id no longer kept (or from before a restart) gets every kept event: some may
    /// repeat, but ids let it tell, and none it missed is skipped.
    pub fn subscribe(&self, last_id: Option<&str>) -> Subscription {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let live = self.tx.subscribe();
        let backlog = match last_id {
            None => vec![],
            Some(id) => {
                let from = recent
                    .0
                    .iter()
                    .position(|p| p.id == id)
                    .map_or(0, |i| i + 1);
                recent.0.iter().skip(from).cloned().collect()
            }
        };
        Subscription { backlog, live }
    }

    /// Ends every stream: the daemon is stopping.
    pub fn close(&self) {
        self.closed.cancel();
    }

    pub fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }

    /// The kept events after `seq`: what a reader that fell behind its live receiver missed.
    pub fn since(&self, seq: u64) -> Vec<Arc<Published>> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.0.iter().filter(|p| p.seq > seq).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> NewCallEvent {
        NewCallEvent {
            id: id.into(),
            kind: "call.started",
            provider: "jas",
            call_id: "1".into(),
            body: format!("{{\"id\":\"{id}\"}}").into(),
            endpoints: vec![],
        }
    }

    fn ids(p: &[Arc<Published>]) -> Vec<&str> {
        p.iter().map(|p| p.id.as_str()).collect()
    }

    #[tokio::test]
    async fn a_reader_resumes_after_its_last_id_and_then_reads_live() {
        let hub = Hub::default();
        hub.publish(&[event("a"), event("b"), event("c")]);
        let fresh = hub.subscribe(None);
        assert!(fresh.backlog.is_empty(), "a new reader starts from now");
        let mut resumed = hub.subscribe(Some("a"));
        assert_eq!(ids(&resumed.backlog), ["b", "c"]);
        hub.publish(&[event("d")]);
        assert_eq!(resumed.live.recv().await.unwrap().id, "d");
        // An id no longer kept: everything kept, rather than nothing.
        assert_eq!(
            ids(&hub.subscribe(Some("gone")).backlog),
            ["a", "b", "c", "d"]
        );
        assert_eq!(ids(&hub.since(2)), ["c", "d"]);
    }

    #[test]
    fn only_the_last_thousand_are_kept() {
        let hub = Hub::default();
        let events: Vec<_> = (0..RECENT + 5).map(|i| event(&i.to_string())).collect();
        hub.publish(&events);
        let kept = hub.subscribe(Some("none")).backlog;
        assert_eq!(kept.len(), RECENT);
        assert_eq!(kept[0].id, "5");
    }
}
