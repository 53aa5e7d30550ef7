//! Delivering call events to each endpoint (SPEC §7): signed POSTs, retried on the configured
//! schedule, one call's events one at a time and in order, other calls never waiting behind it.
//! The `deliveries` table is the record, each loop's [`Queue`] its copy in memory, so a crash
//! loses nothing and repeats at most an attempt, with the same `webhook-id`.
//!
//! Delivery is background work: it runs on a runtime of its own whose threads have a lower
//! scheduling priority (nice 10), so under a load that takes every core the acks keep their
//! pace and the backlog drains once the load lets up, while on an idle machine delivery has all
//! of it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::future::join_all;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::queue::{Queue, Settled};
use crate::config::{Endpoint, OutboundSettings};
use crate::journal::{DeliveryUpdate, Due, Journal, StateWrite};
use crate::outbound::redirect::is_public;
use crate::outbound::signing::{Key, signature};
use crate::recordings::download::parse_retry_after;

/// Deliveries attempted at once per endpoint (each of a different call).
const IN_FLIGHT: usize = 16;
/// How often the queue is looked at when nothing wakes the workers.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Deliveries an endpoint's loop holds in memory; the rest wait in the table, read as it
/// empties (a long outage's backlog does not have to fit in memory).
const HELD: usize = 20_000;
/// How long ended attempts' outcomes gather before one state write records them all: a crash
/// in between repeats those attempts (same ids), which is what the table promises anyway.
const OUTCOMES_EVERY: Duration = Duration::from_millis(20);
/// Outcomes that are written at once, however young.
const OUTCOMES_MAX: usize = 512;
/// The delivery threads' nice value (0 is the default; higher yields to the rest).
const NICE: i32 = 10;
/// How long a stop waits for attempts in flight to end, so that their outcomes are written and a
/// restart does not make them again. Well inside the shutdown's 5 s.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// `callhook_outbound_deliveries_total{endpoint,outcome}`.
pub const DELIVERIES: &str = "callhook_outbound_deliveries_total";
/// `callhook_outbound_pending{endpoint}`: deliveries not yet delivered or failed.
pub const PENDING: &str = "callhook_outbound_pending";
/// `callhook_outbound_oldest_pending_seconds{endpoint}`: age of the oldest pending event.
pub const OLDEST_PENDING: &str = "callhook_outbound_oldest_pending_seconds";
/// How often the two gauges are read from the queue.
const GAUGES_EVERY: Duration = Duration::from_secs(2);

/// The `outcome` label values of [`DELIVERIES`].
const OUTCOMES: &[&str] = &["delivered", "retried", "failed", "gone"];
/// `callhook_outbound_delivery_seconds{endpoint}`.
pub const DELIVERY_SECONDS: &str = "callhook_outbound_delivery_seconds";

/// What wakes the delivery loops: the processor rings it after a state write that added
/// deliveries, the admin routes after a replay, a retry or an enable. A counter in a `watch`,
/// not a `Notify`: `notify_waiters` reaches only the loops waiting at that instant, so one
/// rung while a loop was writing its outcomes was lost, and the rows it announced waited for
/// the loop's idle read a second later (the 1 s maxima of BENCHMARKS.md's 6b runs). A
/// receiver sees every ring made after it last looked, whenever it looks.
#[derive(Clone)]
pub struct Nudge(Arc<tokio::sync::watch::Sender<u64>>);

impl Default for Nudge {
    fn default() -> Nudge {
        Nudge(Arc::new(tokio::sync::watch::Sender::new(0)))
    }
}

impl Nudge {
    pub fn ring(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// One endpoint, ready to send.
struct Target {
    endpoint: Endpoint,
    keys: Vec<Key>,
    http: reqwest::Client,
    /// Turned off by a `410 Gone` until `enable` or the next start.
    gone: AtomicBool,
}

pub struct Deliverer {
    journal: Journal,
    targets: Vec<Arc<Target>>,
    schedule: Vec<Duration>,
    /// Rung by the processor after it wrote new events, and by the admin routes.
    nudge: Nudge,
    /// Bumped when rows changed behind the queues (a replay, a retry): each loop then reads its
    /// endpoint's table again.
    reloads: AtomicU64,
}

/// How one attempt ended.
enum Attempt {
    Delivered(u16),
    /// Retried; the server may have said how long to wait.
    Failed {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// 410: the endpoint is turned off.
    Gone,
}

impl Deliverer {
    /// `None` without an enabled endpoint.
    pub fn new(
        journal: Journal,
        settings: &OutboundSettings,
        nudge: Nudge,
    ) -> Result<Option<Deliverer>, String> {
        let mut targets = vec![];
        for endpoint in settings.endpoints.iter().filter(|e| e.enabled) {
            let keys = endpoint
                .secrets
                .iter()
                .map(|s| Key::parse(secrecy::ExposeSecret::expose_secret(s)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("outbound endpoint {}: secret {e}", endpoint.name))?;
            let http = crate::outbound::client(
                crate::outbound::Options::delivery(endpoint.allow_private)
                    .connect_timeout(endpoint.timeout)
                    .timeout(endpoint.timeout),
            )
            .map_err(|e| format!("building the delivery client: {e}"))?;
            // Every series of the endpoint shows from the start (increment(0) registers it
            // without resetting a count another daemon in this process has made).
            for outcome in OUTCOMES {
                metrics::counter!(DELIVERIES, "endpoint" => endpoint.name.clone(), "outcome" => *outcome)
                    .increment(0);
            }
            let _ = metrics::histogram!(DELIVERY_SECONDS, "endpoint" => endpoint.name.clone());
            metrics::gauge!(PENDING, "endpoint" => endpoint.name.clone()).set(0.0);
            metrics::gauge!(OLDEST_PENDING, "endpoint" => endpoint.name.clone()).set(0.0);
            targets.push(Arc::new(Target {
                endpoint: endpoint.clone(),
                keys,
                http,
                gone: AtomicBool::new(false),
            }));
        }
        Ok((!targets.is_empty()).then(|| Deliverer {
            journal,
            targets,
            schedule: settings.retry_schedule.clone(),
            nudge,
            reloads: AtomicU64::new(0),
        }))
    }

    /// Runs every endpoint's loop until `stop`, on the delivery runtime (see the module's
    /// comment), and returns once they have written their last outcomes.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("callhook-deliver".into())
            .spawn(move || {
                background();
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("callhook-deliver")
                    .on_thread_start(background)
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        let loops = self
                            .targets
                            .iter()
                            .map(|t| self.clone().endpoint_loop(t.clone(), stop.clone()));
                        runtime.block_on(join_all(loops));
                    }
                    Err(e) => tracing::error!(error = %e, "the delivery runtime could not start; no call event is delivered"),
                }
                drop(done);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "the delivery thread could not start; no call event is delivered");
            return;
        }
        let _ = finished.await;
    }

    /// Turns an endpoint a `410 Gone` turned off back on; `false` when no such endpoint runs.
    pub fn enable(&self, name: &str) -> bool {
        let target = self.targets.iter().find(|t| t.endpoint.name == name);
        if let Some(t) = target {
            t.gone.store(false, Ordering::Relaxed);
            self.nudge.ring();
        }
        target.is_some()
    }

    /// Whether `name` is one of the endpoints this runs (enabled in the configuration).
    pub fn serves(&self, name: &str) -> bool {
        self.targets.iter().any(|t| t.endpoint.name == name)
    }

    /// Why an endpoint is not sending, if it is not.
    pub fn disabled_reason(&self, name: &str) -> Option<&'static str> {
        match self.targets.iter().find(|t| t.endpoint.name == name) {
            Some(t) if t.gone.load(Ordering::Relaxed) => Some("410 Gone"),
            Some(_) => None,
            None => Some("enabled = false"),
        }
    }

    /// Makes the endpoint loops read their tables again (a replay or a retry changed rows).
    pub fn reload(&self) {
        self.reloads.fetch_add(1, Ordering::Relaxed);
        self.nudge.ring();
    }

    /// One endpoint's deliveries. Each attempt runs on its own and its outcome goes to the queue
    /// when it ends, so a receiver that is slow for one call (up to the endpoint's timeout) never
    /// holds back another call's events; a call's next event is not due while one of its events
    /// is in flight or waiting for its retry.
    async fn endpoint_loop(self: Arc<Self>, target: Arc<Target>, stop: CancellationToken) {
        let name = target.endpoint.name.clone();
        let mut gauges_at = Instant::now();
        let mut queue = Queue::default();
        // `u64::MAX` is never a generation: the first turn reads the table.
        let mut generation = u64::MAX;
        // Whether the table may hold pending rows the queue has not read.
        let mut unread = true;
        let mut outcomes: Vec<DeliveryUpdate> = vec![];
        let mut oldest_outcome: Option<Instant> = None;
        // Spawned, not merely polled by this loop: an attempt's request goes on while the loop
        // does the rest (a `FuturesUnordered` polled only in the `select!` left requests
        // stalled there, up to their timeout, under a deep queue).
        let mut running = tokio::task::JoinSet::new();
        let mut attempts: HashMap<tokio::task::Id, i64> = HashMap::new();
        let mut rung = self.nudge.subscribe();
        loop {
            if stop.is_cancelled() {
                break;
            }
            if gauges_at.elapsed() >= GAUGES_EVERY {
                gauges_at = Instant::now();
                self.set_gauges(&name).await;
            }
            // Marked seen before the table is read: a ring from now on is seen at the next
            // turn, one before it is covered by this read.
            if rung.has_changed().unwrap_or(false) {
                rung.borrow_and_update();
                unread = true;
            }
            let now_generation = self.reloads.load(Ordering::Relaxed);
            if now_generation != generation {
                // Outcomes first, so that the table read back has them.
                self.write_outcomes(&name, &mut outcomes, &mut oldest_outcome)
                    .await;
                queue.clear();
                generation = now_generation;
                unread = true;
            }
            if unread && queue.len() < HELD {
                let limit = HELD - queue.len();
                match self
                    .journal
                    .pending_deliveries(name.clone(), queue.loaded_to(), limit)
                    .await
                {
                    Ok(rows) => {
                        unread = rows.len() == limit;
                        queue.load(rows);
                    }
                    Err(e) => {
                        tracing::error!(endpoint = %name, error = %e, "reading the delivery queue failed");
                    }
                }
            }
            let now = Utc::now().timestamp_millis();
            let gone = target.gone.load(Ordering::Relaxed);
            while !gone && running.len() < IN_FLIGHT {
                let Some(d) = queue.take_due(now) else {
                    break;
                };
                let (this, target, seq) = (self.clone(), target.clone(), d.event_seq);
                let handle = running.spawn(async move {
                    let outcome = attempt(&target, &d).await;
                    this.settle(&target, d, outcome)
                });
                attempts.insert(handle.id(), seq);
            }
            // Until an attempt ends, something wakes the loop, the next retry is due or the
            // outcomes are to be written.
            let mut wait = IDLE_POLL;
            // Only while a slot is free: with all 16 in flight a due time already past made
            // the wait 0, and the loop spun until an attempt ended (which wakes it anyway).
            if let Some(at) = queue
                .next_due_ms()
                .filter(|_| !gone && running.len() < IN_FLIGHT)
            {
                wait = wait.min(Duration::from_millis(at.saturating_sub(now).max(0) as u64));
            }
            if let Some(oldest) = oldest_outcome {
                wait = wait.min(OUTCOMES_EVERY.saturating_sub(oldest.elapsed()));
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                    let mut next = Some(done);
                    while let Some(done) = next {
                        ended(done, &name, &mut attempts, &mut queue, &mut outcomes, &mut oldest_outcome);
                        next = running.try_join_next_with_id();
                    }
                }
                Ok(()) = rung.changed() => unread = true,
                // Idle: the table is read again, a backstop for rows written by something
                // that does not ring.
                _ = tokio::time::sleep(wait) => unread |= wait == IDLE_POLL,
            }
            if outcomes.len() >= OUTCOMES_MAX
                || oldest_outcome.is_some_and(|t| t.elapsed() >= OUTCOMES_EVERY)
            {
                self.write_outcomes(&name, &mut outcomes, &mut oldest_outcome)
                    .await;
            }
        }
        // What ended before the stop is recorded, so a restart does not repeat it: that includes
        // attempts that ended while the loop was not looking (their outcome is already counted
        // and logged) and those that end within the grace. The rest are dropped and made again
        // after the restart, with the same ids.
        let grace = tokio::time::sleep(STOP_GRACE);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                biased;
                done = running.join_next_with_id() => match done {
                    Some(done) => ended(done, &name, &mut attempts, &mut queue, &mut outcomes, &mut oldest_outcome),
                    None => break,
                },
                _ = &mut grace => break,
            }
        }
        self.write_outcomes(&name, &mut outcomes, &mut oldest_outcome)
            .await;
    }

    /// Writes the gathered outcomes in one state write; on failure they are kept for the next.
    async fn write_outcomes(
        &self,
        name: &str,
        outcomes: &mut Vec<DeliveryUpdate>,
        oldest: &mut Option<Instant>,
    ) {
        if outcomes.is_empty() {
            return;
        }
        let write = self.journal.write_state(StateWrite {
            deliveries: outcomes.clone(),
            ..Default::default()
        });
        match write.await {
            Ok(()) => {
                outcomes.clear();
                *oldest = None;
            }
            Err(e) => {
                tracing::error!(endpoint = %name, error = %e, "recording delivery outcomes failed; retrying");
                *oldest = Some(Instant::now());
            }
        }
    }

    async fn set_gauges(&self, name: &str) {
        match self.journal.pending_summary(name.to_string()).await {
            Ok((pending, oldest)) => {
                let oldest = oldest.map_or(0.0, |at| {
                    (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0
                });
                metrics::gauge!(PENDING, "endpoint" => name.to_string()).set(pending as f64);
                metrics::gauge!(OLDEST_PENDING, "endpoint" => name.to_string()).set(oldest);
            }
            Err(e) => {
                tracing::warn!(endpoint = %name, error = %e, "reading the delivery queue's size failed")
            }
        }
    }

    /// The delivery's new state after an attempt, logged and counted.
    fn settle(&self, target: &Target, d: Due, outcome: Attempt) -> DeliveryUpdate {
        let name = &target.endpoint.name;
        let attempts = d.attempts + 1;
        let now = Utc::now();
        let update = |state, next_attempt_at, last_error| DeliveryUpdate {
            endpoint: name.clone(),
            event_seq: d.event_seq,
            state,
            attempts,
            next_attempt_at,
            last_error,
            read_version: Some(d.version),
            at_ms: now.timestamp_millis(),
        };
        match outcome {
            Attempt::Delivered(status) => {
                metrics::counter!(DELIVERIES, "endpoint" => name.clone(), "outcome" => "delivered")
                    .increment(1);
                tracing::info!(endpoint = %name, event_id = %d.id, event = %d.kind,
                    call_id = %d.call_id, attempts, http_status = status, "call event delivered");
                update("delivered", now, None)
            }
            Attempt::Gone => {
                target.gone.store(true, Ordering::Relaxed);
                metrics::counter!(DELIVERIES, "endpoint" => name.clone(), "outcome" => "gone")
                    .increment(1);
                tracing::error!(endpoint = %name, event_id = %d.id,
                    "endpoint answered 410 Gone; it is disabled until POST /api/endpoints/{name}/enable or the next start");
                update("pending", now, Some("410 Gone: endpoint disabled".into()))
            }
            Attempt::Failed {
                reason,
                retry_after,
            } => {
                let pause = self.schedule.get(d.attempts as usize).copied();
                let (state, next) = match pause {
                    Some(pause) => {
                        let pause = jitter(pause).max(retry_after.unwrap_or(Duration::ZERO));
                        (
                            "pending",
                            now + chrono::Duration::from_std(pause).unwrap_or_default(),
                        )
                    }
                    None => ("failed", now),
                };
                metrics::counter!(DELIVERIES, "endpoint" => name.clone(), "outcome" => if state == "failed" { "failed" } else { "retried" }).increment(1);
                tracing::warn!(endpoint = %name, event_id = %d.id, event = %d.kind,
                    call_id = %d.call_id, attempts, error = %reason,
                    next_attempt_at = (state == "pending").then(|| next.to_rfc3339()),
                    "call event delivery failed");
                update(state, next, Some(reason))
            }
        }
    }
}

/// An attempt's task ended: its outcome settles its delivery in the queue and, unless a reload
/// found the row changed meanwhile, waits to be written.
fn ended(
    done: Result<(tokio::task::Id, DeliveryUpdate), tokio::task::JoinError>,
    name: &str,
    attempts: &mut HashMap<tokio::task::Id, i64>,
    queue: &mut Queue,
    outcomes: &mut Vec<DeliveryUpdate>,
    oldest_outcome: &mut Option<Instant>,
) {
    match done {
        Ok((id, update)) => {
            attempts.remove(&id);
            let settled = match update.state {
                "pending" => Settled::Again {
                    next_ms: update.next_attempt_at.timestamp_millis(),
                    version: update.version(),
                },
                _ => Settled::Done,
            };
            if queue.settle(update.event_seq, settled) {
                oldest_outcome.get_or_insert_with(Instant::now);
                outcomes.push(update);
            }
        }
        // Its delivery is due again, with the same id.
        Err(e) => {
            tracing::error!(endpoint = %name, error = %e, "a delivery attempt failed");
            if let Some(seq) = attempts.remove(&e.id()) {
                queue.release(seq);
            }
        }
    }
}

/// Lowers the calling thread's scheduling priority (Linux's nice value is per thread).
fn background() {
    let thread = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(thread), NICE) {
        tracing::warn!(error = %e, "could not lower the delivery thread's priority");
    }
}

/// ±20 % of `pause`, so endpoints that failed together do not retry together.
fn jitter(pause: Duration) -> Duration {
    let ms = pause.as_millis() as u64;
    let spread = ms / 5;
    Duration::from_millis(ms - spread + rand::rng().random_range(0..=2 * spread))
}

/// One signed POST of the event.
async fn attempt(target: &Target, d: &Due) -> Attempt {
    let url = &target.endpoint.url;
    if !target.endpoint.allow_private {
        // A literal address never reaches the resolver, which refuses private names.
        let literal = url
            .host_str()
            .and_then(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().ok());
        if literal.is_some_and(|ip| !is_public(ip)) || url.host_str() == Some("localhost") {
            return Attempt::Failed {
                reason:
                    "refused: a loopback, private or link-local address (allow_private = false)"
                        .into(),
                retry_after: None,
            };
        }
    }
    let timestamp = Utc::now().timestamp();
    let started = Instant::now();
    let sent = target
        .http
        .post(url.clone())
        .header("content-type", "application/json")
        .header("webhook-id", &d.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            signature(&target.keys, &d.id, timestamp, d.body.as_bytes()),
        )
        .body(d.body.clone())
        .send()
        .await;
    metrics::histogram!(DELIVERY_SECONDS, "endpoint" => target.endpoint.name.clone())
        .record(started.elapsed().as_secs_f64());
    match sent {
        Ok(r) if r.status().is_success() => Attempt::Delivered(r.status().as_u16()),
        Ok(r) if r.status() == reqwest::StatusCode::GONE => Attempt::Gone,
        Ok(r) => Attempt::Failed {
            retry_after: r
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, Utc::now())),
            reason: format!("HTTP {}", r.status().as_u16()),
        },
        Err(e) => Attempt::Failed {
            reason: crate::outbound::describe(e),
            retry_after: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loop's side of a ring: what `endpoint_loop` does with its receiver. A ring made while
    /// the loop was busy elsewhere (writing outcomes, reading the table) must still wake it,
    /// which `Notify::notify_waiters` did not do.
    #[tokio::test]
    async fn a_ring_while_no_loop_waits_is_seen_at_its_next_wait() {
        let nudge = Nudge::default();
        let mut rung = nudge.subscribe();
        assert!(!rung.has_changed().unwrap());
        // Rung twice while nothing waits.
        nudge.ring();
        nudge.ring();
        let woke = tokio::time::timeout(Duration::from_millis(100), rung.changed()).await;
        assert!(matches!(woke, Ok(Ok(()))), "the ring was lost");
        // Both rings are one wake-up; nothing more is pending until the next ring.
        let again = tokio::time::timeout(Duration::from_millis(50), rung.changed()).await;
        assert!(again.is_err(), "woken without a ring");
        // A ring from another thread during the wait wakes it.
        let ringer = nudge.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            ringer.ring();
        });
        let woke = tokio::time::timeout(Duration::from_secs(5), rung.changed()).await;
        assert!(matches!(woke, Ok(Ok(()))));
    }
}
