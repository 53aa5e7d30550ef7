//! Delivering call events to each endpoint (SPEC §7): signed POSTs, retried on the configured
//! schedule, one call's events one at a time and in order, other calls never waiting behind it.
//! The `deliveries` table is the queue, so a crash loses nothing and repeats at most an
//! attempt, with the same `webhook-id`.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::future::join_all;
use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Endpoint, OutboundSettings};
use crate::journal::{DeliveryUpdate, Due, Journal, StateWrite};
use crate::outbound::redirect::is_public;
use crate::outbound::signing::{Key, signature};
use crate::recordings::download::parse_retry_after;

/// Deliveries attempted at once per endpoint (each of a different call).
const IN_FLIGHT: usize = 16;
/// How often the queue is looked at when nothing wakes the workers.
const IDLE_POLL: Duration = Duration::from_secs(1);

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
    nudge: Arc<Notify>,
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
        nudge: Arc<Notify>,
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
        }))
    }

    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let loops = self
            .targets
            .iter()
            .map(|t| self.clone().endpoint_loop(t.clone(), stop.clone()));
        join_all(loops).await;
    }

    /// Turns an endpoint a `410 Gone` turned off back on; `false` when no such endpoint runs.
    pub fn enable(&self, name: &str) -> bool {
        let target = self.targets.iter().find(|t| t.endpoint.name == name);
        if let Some(t) = target {
            t.gone.store(false, Ordering::Relaxed);
            self.nudge.notify_waiters();
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

    /// Wakes the endpoint loops (a replay or retry made deliveries due).
    pub fn wake(&self) {
        self.nudge.notify_waiters();
    }

    /// One endpoint's deliveries. Each attempt runs on its own and is written when it ends, so
    /// a receiver that is slow for one call (up to the endpoint's timeout) never holds back
    /// another call's events; a call's next event is not due while one of its events is in
    /// flight (it is still pending, and only a call's oldest pending event is due).
    async fn endpoint_loop(self: Arc<Self>, target: Arc<Target>, stop: CancellationToken) {
        let name = target.endpoint.name.clone();
        let mut gauges_at = Instant::now();
        // Spawned, not merely polled by this loop: an attempt's request goes on while the loop
        // reads the queue (a `FuturesUnordered` polled only in the `select!` left requests
        // stalled there, up to their timeout, under a deep queue).
        let mut running = tokio::task::JoinSet::new();
        let mut in_flight: HashSet<i64> = HashSet::new();
        loop {
            if stop.is_cancelled() {
                return;
            }
            if gauges_at.elapsed() >= GAUGES_EVERY {
                gauges_at = Instant::now();
                self.set_gauges(&name).await;
            }
            // Registered before the queue is read, so a wake-up between the read and the wait
            // is not missed.
            let notified = self.nudge.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let room = IN_FLIGHT - in_flight.len();
            if room > 0 && !target.gone.load(Ordering::Relaxed) {
                for d in self.due(&name, room + in_flight.len()).await {
                    if running.len() == IN_FLIGHT || !in_flight.insert(d.event_seq) {
                        continue;
                    }
                    let (this, target) = (self.clone(), target.clone());
                    running.spawn(async move {
                        let outcome = attempt(&target, &d).await;
                        this.settle(&target, d, outcome)
                    });
                }
            }
            // Until an attempt ends, something wakes the loop, or the next retry is due (a
            // due time already past belongs to an attempt in flight).
            let wait = self
                .journal
                .next_delivery_due(name.clone())
                .await
                .ok()
                .flatten()
                .and_then(|at| (at - Utc::now()).to_std().ok())
                .unwrap_or(IDLE_POLL)
                .min(IDLE_POLL);
            tokio::select! {
                _ = stop.cancelled() => return,
                Some(done) = running.join_next(), if !running.is_empty() => {
                    // Every attempt that has ended goes in the same write.
                    let mut updates = vec![];
                    let mut next = Some(done);
                    while let Some(done) = next {
                        match done {
                            Ok(update) => updates.push(update),
                            // Its delivery stays pending (and in `in_flight` until the next
                            // start): it is due again then, with the same id.
                            Err(e) => tracing::error!(endpoint = %name, error = %e, "a delivery attempt failed"),
                        }
                        next = running.try_join_next();
                    }
                    for u in &updates {
                        in_flight.remove(&u.event_seq);
                    }
                    let write = self.journal.write_state(StateWrite {
                        deliveries: updates,
                        ..Default::default()
                    });
                    if let Err(e) = write.await {
                        tracing::error!(endpoint = %name, error = %e, "recording delivery outcomes failed; they will be attempted again");
                        tokio::time::sleep(IDLE_POLL).await;
                    }
                }
                _ = &mut notified => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Up to `limit` deliveries due now, each the oldest pending event of its call.
    async fn due(&self, name: &str, limit: usize) -> Vec<Due> {
        match self
            .journal
            .due_deliveries(name.to_string(), Utc::now(), limit)
            .await
        {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(endpoint = %name, error = %e, "reading the delivery queue failed");
                vec![]
            }
        }
    }

    async fn set_gauges(&self, name: &str) {
        match self.journal.endpoint_counts(name.to_string()).await {
            Ok(counts) => {
                let oldest = counts.oldest_pending_at.map_or(0.0, |at| {
                    (Utc::now() - at).num_milliseconds().max(0) as f64 / 1000.0
                });
                metrics::gauge!(PENDING, "endpoint" => name.to_string()).set(counts.pending as f64);
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
