//! `GET /api/stream`: the call events of SPEC §7 as server-sent events, `id:` the event id and
//! `data:` its body, resumed after `Last-Event-ID` (see `events/stream.rs`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt, stream};
use tokio::sync::broadcast;

use super::AppState;
use crate::events::stream::{Hub, Published, Subscription};

/// One reader: what it has yet to be sent, and the last seq it was sent, so an event that
/// reaches it twice (kept and live, or again after it fell behind) is sent once.
struct Reader {
    queued: VecDeque<Arc<Published>>,
    live: broadcast::Receiver<Arc<Published>>,
    sent: u64,
    hub: Arc<Hub>,
}

impl Reader {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Reader)> {
        loop {
            if let Some(p) = self.queued.pop_front() {
                if p.seq <= self.sent {
                    continue;
                }
                self.sent = p.seq;
                let event = Event::default().id(&p.id).data(&*p.body);
                return Some((Ok(event), self));
            }
            match self.live.recv().await {
                Ok(p) => self.queued.push_back(p),
                // A reader slower than the whole kept window: take what is still kept, and
                // carry on. Events gone from memory are in the outbox, not here.
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "a /api/stream reader fell behind");
                    self.queued.extend(self.hub.since(self.sent));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let Subscription { backlog, live } = state.stream.subscribe(last_id);
    let reader = Reader {
        queued: backlog.into(),
        live,
        sent: 0,
        hub: state.stream.clone(),
    };
    let closed = state.stream.closed();
    let events = stream::unfold(reader, Reader::next).take_until(closed.cancelled_owned());
    Sse::new(events).keep_alive(KeepAlive::default())
}
