//! Participant lookups off the processor's loop: at most `LOOKUP_CONCURRENCY` in flight, the
//! rest waiting in a queue of keys.
//!
//! The waiting lookups are plain keys, not tasks. A task holds a lookup's whole future
//! (JAS's alone is over 2 KiB); a backlog of them, built while events
//! arrive faster than the API answers, left the memory it peaked at fragmented among the call
//! table's rows after it drained. Each slot is a worker task that takes the next queued lookup
//! as soon as its own is answered, so slots never wait for the processor, which may be busy
//! applying a batch of events.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::task::TaskTracker;

use super::LookupAnswer;
use crate::calls::{ParticipantKey, Provider};
use crate::providers::{Lookup, LookupError};

/// Lookups in flight at once, so a burst of events cannot open a connection storm upstream.
pub const LOOKUP_CONCURRENCY: usize = 32;

/// A lookup waiting for a slot.
pub struct Queued {
    pub key: ParticipantKey,
    pub seq: i64,
    pub at: Option<DateTime<Utc>>,
    /// How many lookups of this participant were given up in a row before this one.
    pub failures: u32,
}

pub struct Lookups {
    /// Each provider that looks its participants up, and its client.
    clients: HashMap<Provider, Arc<dyn Lookup>>,
    queue: Mutex<VecDeque<Queued>>,
    slots: Arc<Semaphore>,
    /// Unbounded so that a worker never waits for the processor to hand in an answer. What
    /// waits here is bounded by the lookups queued (one per participant event), each a
    /// participant's details, a few hundred bytes, and the processor takes them before events.
    answers: mpsc::UnboundedSender<LookupAnswer>,
    tasks: TaskTracker,
    /// The runtime the workers run on: the one `new` was called on (the daemon's main one),
    /// not the processor's own thread, which applies events and should not also wait on the
    /// API's answers.
    runtime: tokio::runtime::Handle,
}

impl Lookups {
    pub fn new(
        clients: HashMap<Provider, Arc<dyn Lookup>>,
        answers: mpsc::UnboundedSender<LookupAnswer>,
        tasks: TaskTracker,
    ) -> Arc<Self> {
        Arc::new(Self {
            clients,
            queue: Mutex::new(VecDeque::new()),
            slots: Arc::new(Semaphore::new(LOOKUP_CONCURRENCY)),
            answers,
            tasks,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Whether `provider`'s participants are looked up.
    pub fn serves(&self, provider: Provider) -> bool {
        self.clients.contains_key(&provider)
    }

    /// Queues a lookup and starts a worker for it if a slot is free.
    pub fn push(self: &Arc<Self>, lookup: Queued) {
        self.queue().push_back(lookup);
        self.start_workers();
    }

    /// Lookups waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.queue().len()
    }

    /// Starts a worker per free slot, up to one per queued lookup. Called on every push and, as
    /// a safety net for a worker that panicked, by the processor's minutely sweep.
    pub fn start_workers(self: &Arc<Self>) {
        let waiting = {
            let mut queue = self.queue();
            // A long backlog's buffer is given back once it has drained.
            if queue.is_empty() && queue.capacity() > 1024 {
                *queue = VecDeque::new();
            }
            queue.len()
        };
        for _ in 0..waiting {
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                break;
            };
            let this = self.clone();
            self.tasks
                .spawn_on(async move { this.work(slot).await }, &self.runtime);
        }
    }

    /// Answers queued lookups one after another while there are any, holding one slot.
    async fn work(self: Arc<Self>, mut slot: OwnedSemaphorePermit) {
        loop {
            if self.answers.is_closed() {
                return; // the processor has stopped; what is queued is asked again on restart
            }
            let next = self.queue().pop_front();
            let Some(Queued {
                key,
                seq,
                at,
                failures,
            }) = next
            else {
                drop(slot);
                // A lookup queued while this worker was giving its slot back found no free
                // slot; unless the queue is empty now, take a slot again and answer it.
                if self.queue().is_empty() {
                    return;
                }
                match self.slots.clone().try_acquire_owned() {
                    Ok(again) => {
                        slot = again;
                        continue;
                    }
                    Err(_) => return,
                }
            };
            // A lookup given up before is asked once: the relookup rounds are its backoff, and
            // the client's own retries would multiply the requests and retry log lines of
            // every round of an outage.
            let lookup = async {
                match self.clients.get(&key.provider) {
                    Some(client) => client.details(&key, failures > 0).await,
                    None => Err(LookupError::Failed(format!(
                        "{} has no participant lookups",
                        key.provider
                    ))),
                }
            };
            // Shutdown does not wait out a lookup's retries (6 s or more): the participant is
            // still waiting for details in the database and is looked up again on restart.
            let outcome = tokio::select! {
                outcome = lookup => outcome,
                _ = self.answers.closed() => return,
            };
            let answer = LookupAnswer {
                key,
                seq,
                at,
                failures,
                outcome,
            };
            if self.answers.send(answer).is_err() {
                return; // the processor has stopped
            }
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Queued>> {
        // Nothing panics while holding the lock; a poisoned queue is still a valid queue.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The point of queueing keys instead of tasks: a waiting lookup costs less than a tenth of
    /// a lookup's future.
    #[test]
    fn a_waiting_lookup_is_small() {
        let size = std::mem::size_of::<Queued>();
        assert!(size <= 96, "a queued lookup takes {size} bytes");
    }
}
