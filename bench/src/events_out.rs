//! Call events out (issue #13, SPEC §7): the daemon with outbound endpoints that are fast
//! loopback receivers in this process.
//!
//! - `outbound`: saturating acks/s (wrk) with 0 and with 2 endpoints, and how long the backlog
//!   takes to drain once the load stops;
//! - `paced`: a paced sender at a fixed rate with 2 endpoints: the queue's size while it runs,
//!   and the time from each webhook's 200 to its last event's arrival at both receivers;
//! - `deliveries`: the most deliveries/s one endpoint gets.
//!
//! Every webhook is a `call_status` insert of a participant no other webhook has, with lookups
//! off, so it is a call of its own, `"<dn>:<participant_id>"`, and causes `call.started` and
//! `participant.joined`. The receivers note the call of each `webhook-id` and when it first
//! arrived, on the same clock the sender reads its 200s from.

use std::collections::HashMap;
use std::sync::Mutex;

use super::*;

/// A valid `whsec_` key (the example of config/callhook.toml); the receivers do not check
/// signatures, they only note arrivals.
const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Rounds of `outbound`: (0 endpoints, 2 endpoints) each, interleaved.
const OUTBOUND_ROUNDS: usize = 3;

/// Events each webhook causes (an insert of a new participant, no lookup).
const EVENTS_PER_WEBHOOK: usize = 2;

/// What a receiver saw.
#[derive(Default)]
struct Seen {
    /// webhook-id → (the event's call, when it first arrived). A repeat (delivery is at least
    /// once) keeps the first arrival.
    first: HashMap<String, (String, Instant)>,
    /// Every POST, repeats included.
    posts: u64,
}

/// A fast loopback receiver: notes the arrival and answers 200 at once.
pub(crate) struct Receiver {
    url: String,
    seen: Arc<Mutex<Seen>>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub(crate) async fn start() -> Receiver {
        #[derive(serde::Deserialize)]
        struct Event {
            call: CallRef,
        }
        #[derive(serde::Deserialize)]
        struct CallRef {
            call_id: String,
        }
        async fn receive(
            State(seen): State<Arc<Mutex<Seen>>>,
            headers: HeaderMap,
            body: Bytes,
        ) -> StatusCode {
            let at = Instant::now();
            let id = headers
                .get("webhook-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let call = serde_json::from_slice::<Event>(&body)
                .map(|e| e.call.call_id)
                .unwrap_or_default();
            let mut seen = seen.lock().unwrap();
            seen.posts += 1;
            seen.first.entry(id).or_insert((call, at));
            StatusCode::OK
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let router = axum::Router::new()
            .route("/hook", post(receive))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Receiver { url, seen, server }
    }

    fn distinct(&self) -> usize {
        self.seen.lock().unwrap().first.len()
    }

    fn posts(&self) -> u64 {
        self.seen.lock().unwrap().posts
    }

    /// Call id → (events, the last first-arrival among them).
    fn by_call(&self) -> HashMap<String, (usize, Instant)> {
        let mut out: HashMap<String, (usize, Instant)> = HashMap::new();
        for (call, at) in self.seen.lock().unwrap().first.values() {
            let e = out.entry(call.clone()).or_insert((0, *at));
            e.0 += 1;
            e.1 = e.1.max(*at);
        }
        out
    }

    /// First-arrival times, sorted.
    fn arrivals(&self) -> Vec<Instant> {
        let mut v: Vec<Instant> = self
            .seen
            .lock()
            .unwrap()
            .first
            .values()
            .map(|(_, at)| *at)
            .collect();
        v.sort();
        v
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The daemon's configuration file with one endpoint per receiver. Retries come after 1 s, so
/// a failed attempt (none is expected) shows as a delay, not as a delivery left for minutes.
pub(crate) fn endpoints_toml(receivers: &[Receiver]) -> String {
    let mut t = String::from("[outbound]\nretry_schedule_secs = [1, 1, 1, 1, 1]\n");
    for (i, r) in receivers.iter().enumerate() {
        t.push_str(&format!(
            "\n[[outbound.endpoints]]\nname = \"r{i}\"\nurl = \"{}\"\nsecret = \"{KEY}\"\nallow_private = true\ntimeout_secs = 5\n",
            r.url
        ));
    }
    t
}

/// Each endpoint's `pending` from `/api/endpoints`.
async fn pending(http: &reqwest::Client, admin: &str) -> Vec<u64> {
    let v: Value = http
        .get(format!("{admin}/api/endpoints"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["endpoints"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["pending"].as_u64().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls until no endpoint has anything pending and every receiver holds `expected` distinct
/// events (so a queue not yet filled by the processor does not read as drained), or `limit`
/// passes. Returns when, and the pending counts last read.
async fn drained(
    http: &reqwest::Client,
    d: &Daemon,
    receivers: &[Receiver],
    expected: usize,
    limit: Duration,
) -> (Option<Instant>, Vec<u64>) {
    let deadline = Instant::now() + limit;
    loop {
        let p = pending(http, &d.admin).await;
        if p.iter().all(|&n| n == 0) && receivers.iter().all(|r| r.distinct() >= expected) {
            return (Some(Instant::now()), p);
        }
        if Instant::now() >= deadline {
            return (None, p);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn delivery_outcomes(m: &str) -> String {
    let n = |o: &str| {
        metric(
            m,
            "callhook_outbound_deliveries_total",
            &[&format!("outcome=\"{o}\"")],
        )
    };
    format!(
        "{} delivered, {} retried, {} failed",
        n("delivered"),
        n("retried"),
        n("failed")
    )
}

/// The `q` quantile of sorted `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
}

/// Sends `count` of the bodies (from line `first`, 0-based) at `rate` a second, webhook `k` at
/// `k / rate` s after the start, from `workers` clients (a late one sends at once, so the
/// sender catches up; the achieved rate is reported). Returns per webhook its 200's time and
/// ack latency (`None`: not accepted).
async fn paced_send(
    url: &str,
    bodies: &Path,
    first: usize,
    count: usize,
    rate: f64,
    workers: usize,
) -> (Vec<Option<(Instant, f64)>>, Duration) {
    let lines: Vec<String> = std::fs::read_to_string(bodies)
        .unwrap()
        .lines()
        .skip(first)
        .take(count)
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), count, "not enough bodies");
    let lines = Arc::new(lines);
    let next = Arc::new(AtomicU64::new(0));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(workers)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (lines, next, http, url) =
                (lines.clone(), next.clone(), http.clone(), url.to_string());
            tokio::spawn(async move {
                let mut acks = vec![];
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(line) = lines.get(k) else {
                        return acks;
                    };
                    tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / rate))
                        .await;
                    let (sig, body) = line.split_once(' ').unwrap();
                    let sent = Instant::now();
                    let reply = http
                        .post(&url)
                        .header("x-sig", sig)
                        .header("content-type", "application/json")
                        .body(body.to_string())
                        .send()
                        .await;
                    let ok = match reply {
                        Ok(r) if r.status() == 200 => r
                            .json::<Value>()
                            .await
                            .is_ok_and(|v| v["status"] == "accepted"),
                        _ => false,
                    };
                    // The 200 counts once its body is read, as a provider sees it.
                    let at = Instant::now();
                    acks.push((k, ok.then(|| (at, (at - sent).as_secs_f64() * 1000.0))));
                }
            })
        })
        .collect();
    let mut out = vec![None; count];
    for t in tasks {
        for (k, ack) in t.await.unwrap() {
            out[k] = ack;
        }
    }
    (out, start.elapsed())
}

/// The call id of body line `i` (0-based; see `write_bodies`).
fn call_of(i: usize) -> String {
    format!("{}:{i}", 100 + i % 50)
}

impl Run {
    /// (a) saturating acks with 0 and with 2 endpoints; the backlog's drain.
    pub(crate) async fn measure_outbound(&mut self) {
        let (secs, conns) = self.load();
        // Interleaved rounds, each server fresh, and the medians compared: one pair of runs
        // moved the ratio between 0.63 and 0.95 on this machine (BENCHMARKS.md, tenth round).
        let mut nones = vec![];
        let mut twos = vec![];
        let mut last = None;
        for round in 1..=OUTBOUND_ROUNDS {
            eprintln!(
                "[6a] round {round}/{OUTBOUND_ROUNDS}: callhook, 0 endpoints, {conns} connections, {secs} s"
            );
            let (d, _) = start_daemon(
                &self.bin,
                &self.work.join(format!("outbound-0-{round}")),
                &[],
            );
            let url = format!("{}/webhooks/jas", d.public);
            nones.push(wrk_on(&d.proc.pid(), &url, &self.bodies, 1, secs, conns));
            d.proc.term();

            eprintln!(
                "[6a] round {round}/{OUTBOUND_ROUNDS}: callhook, 2 endpoints (loopback receivers), {conns} connections, {secs} s"
            );
            let receivers = [Receiver::start().await, Receiver::start().await];
            let (d, _) = start_daemon_toml(
                &self.bin,
                &self.work.join(format!("outbound-2-{round}")),
                &endpoints_toml(&receivers),
                &[],
            );
            let url = format!("{}/webhooks/jas", d.public);
            twos.push(wrk_on(&d.proc.pid(), &url, &self.bodies, 1, secs, conns));
            if round < OUTBOUND_ROUNDS {
                // Its backlog is dropped with it; only the last round's is drained.
                d.proc.term();
            } else {
                last = Some((d, receivers));
            }
        }
        let (d, receivers) = last.expect("at least one round");
        let stopped = Instant::now();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let m = metrics(&self.http, &d).await;
        let accepted = metric(&m, "callhook_events_total", &["outcome=\"accepted\""]) as usize;
        let at_stop: Vec<usize> = receivers.iter().map(Receiver::distinct).collect();
        let pending_at_stop = pending(&self.http, &d.admin).await;
        let expected = accepted * EVENTS_PER_WEBHOOK;
        // Capped so the part stays short; a backlog that has not drained by then is reported
        // with the rate it drained at and what was left.
        let limit = Duration::from_secs(90);
        let (done, left) = drained(&self.http, &d, &receivers, expected, limit).await;
        let m = metrics(&self.http, &d).await;
        d.proc.term();
        let got: Vec<usize> = receivers.iter().map(Receiver::distinct).collect();
        let posts: Vec<u64> = receivers.iter().map(Receiver::posts).collect();
        let rates = |runs: &[Wrk]| {
            runs.iter()
                .map(|w| format!("{:.0}", w.rps))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let middle = |runs: &[Wrk]| {
            let mut runs = runs.to_vec();
            runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
            runs[runs.len() / 2].clone()
        };
        let (none, two_median) = (middle(&nones), middle(&twos));
        let ratio = two_median.rps / none.rps;
        let per_round: Vec<String> = nones
            .iter()
            .zip(&twos)
            .map(|(n, t)| format!("{:.2}", t.rps / n.rps))
            .collect();
        self.row(
            &format!("6a. acks, 0 endpoints, {conns} connections (median of {OUTBOUND_ROUNDS})"),
            format!(
                "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, errors {}; {:.0} ms CPU per 1000 requests (wrk {:.0} ms); rounds {}",
                none.rps, none.p50_ms, none.p99_ms, none.errors, none.cpu_ms_per_1k, none.wrk_cpu_ms_per_1k, rates(&nones)
            ),
            "—",
            None,
        );
        self.row(
            &format!("6a. acks, 2 endpoints (loopback receivers), {conns} connections (median of {OUTBOUND_ROUNDS})"),
            format!(
                "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, errors {}; {:.0} ms CPU per 1000 requests (wrk {:.0} ms); rounds {}; {accepted} accepted in the last",
                two_median.rps, two_median.p50_ms, two_median.p99_ms, two_median.errors, two_median.cpu_ms_per_1k, two_median.wrk_cpu_ms_per_1k, rates(&twos)
            ),
            "—",
            None,
        );
        self.row(
            "6a. ack rate with 2 endpoints / without (medians)",
            format!("{ratio:.2} (round by round {})", per_round.join(", ")),
            "≥ 0.8",
            Some(ratio >= 0.8),
        );
        let drain = match done {
            Some(at) => {
                let s = (at - stopped).as_secs_f64();
                let rate = (expected.saturating_sub(at_stop[0])) as f64 / s;
                format!(
                    "{s:.1} s after the load stopped (≈ {rate:.0} deliveries/s per endpoint while draining)"
                )
            }
            None => {
                let s = stopped.elapsed().as_secs_f64();
                let now = receivers[0].distinct();
                let rate = now.saturating_sub(at_stop[0]) as f64 / s;
                format!(
                    "**not drained** {s:.0} s after the load stopped: pending {left:?}, draining at ≈ {rate:.0} deliveries/s per endpoint (≈ {:.0} s more at that rate)",
                    expected.saturating_sub(now) as f64 / rate
                )
            }
        };
        self.row(
            "6a. backlog drain (`/api/endpoints` pending → 0 at both)",
            format!(
                "{drain}; at the stop pending {pending_at_stop:?}, received {at_stop:?} of {expected} each; in the end received {got:?} distinct ({posts:?} POSTs); {}",
                delivery_outcomes(&m)
            ),
            "drains",
            Some(done.is_some()),
        );
    }

    /// (b) a paced sender with 2 endpoints: pending while it runs, and the time from each
    /// webhook's 200 to its last event at both receivers.
    pub(crate) async fn measure_paced(&mut self) {
        let rate = self.args.paced_rate;
        let secs = self.args.paced_secs;
        let count = (rate * secs as f64) as usize;
        eprintln!("[6b] paced: {rate} webhooks/s for {secs} s, 2 endpoints");
        let receivers = [Receiver::start().await, Receiver::start().await];
        let (d, _) = start_daemon_toml(
            &self.bin,
            &self.work.join("paced"),
            &endpoints_toml(&receivers),
            &[],
        );
        let url = format!("{}/webhooks/jas", d.public);
        // Pending sampled every 250 ms from the admin API while the sender runs.
        let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let sampler = {
            let (http, sampling, admin) = (self.http.clone(), sampling.clone(), d.admin.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let mut samples = vec![];
                while sampling.load(Ordering::Relaxed) {
                    let p = pending(&http, &admin).await;
                    samples.push((started.elapsed().as_secs_f64(), p.iter().sum::<u64>(), p));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                samples
            })
        };
        let (acks, took) = paced_send(&url, &self.bodies, 0, count, rate, 64).await;
        sampling.store(false, Ordering::Relaxed);
        let samples = sampler.await.unwrap();
        let stopped = Instant::now();
        let accepted = acks.iter().filter(|a| a.is_some()).count();
        let (done, left) = drained(
            &self.http,
            &d,
            &receivers,
            accepted * EVENTS_PER_WEBHOOK,
            Duration::from_secs(60),
        )
        .await;
        let m = metrics(&self.http, &d).await;
        d.proc.term();
        let calls: Vec<_> = receivers.iter().map(Receiver::by_call).collect();
        let mut lat = vec![];
        let mut missing = 0;
        for (i, ack) in acks.iter().enumerate() {
            let Some((acked, _)) = ack else { continue };
            let call = call_of(i);
            let last = calls
                .iter()
                .map(|c| c.get(&call))
                .collect::<Option<Vec<_>>>();
            match last {
                Some(l) if l.iter().all(|(n, _)| *n >= EVENTS_PER_WEBHOOK) => {
                    let at = l.iter().map(|(_, at)| *at).max().unwrap();
                    // An event seen before the sender read its 200 counts as 0.
                    lat.push(at.saturating_duration_since(*acked).as_secs_f64() * 1000.0);
                }
                // Not there when the wait ended: later than anything measured, so the
                // quantiles are over every accepted webhook, not only the delivered ones.
                _ => {
                    missing += 1;
                    lat.push(f64::INFINITY);
                }
            }
        }
        let t0 = acks.iter().flatten().map(|(a, _)| *a).min();
        if let (Some(path), Some(t0)) = (&self.args.paced_dump, t0) {
            let mut out = String::new();
            for (ack, l) in acks.iter().flatten().zip(&lat) {
                out += &format!("{:.1} {l:.1}\n", (ack.0 - t0).as_secs_f64() * 1000.0);
            }
            std::fs::write(path, out).unwrap();
        }
        lat.sort_by(f64::total_cmp);
        let mut ack_ms: Vec<f64> = acks.iter().flatten().map(|(_, ms)| *ms).collect();
        ack_ms.sort_by(f64::total_cmp);
        let half = secs as f64 / 2.0;
        let max_in = |from: f64, to: f64| {
            samples
                .iter()
                .filter(|(t, _, _)| *t >= from && *t < to)
                .map(|(_, sum, _)| *sum)
                .max()
                .unwrap_or(0)
        };
        let max_each: Vec<u64> = (0..receivers.len())
            .map(|e| {
                samples
                    .iter()
                    .map(|(_, _, p)| p.get(e).copied().unwrap_or(0))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let sent_rate = count as f64 / took.as_secs_f64();
        let bound = (rate * EVENTS_PER_WEBHOOK as f64) as u64;
        self.row(
            &format!("6b. paced {rate:.0} webhooks/s for {secs} s, 2 endpoints: acks"),
            format!(
                "{accepted} of {count} accepted at {sent_rate:.0}/s achieved; ack p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
                quantile(&ack_ms, 0.5),
                quantile(&ack_ms, 0.99),
                ack_ms.last().copied().unwrap_or(f64::NAN)
            ),
            "—",
            None,
        );
        self.row(
            "6b. pending during the load (sampled every 250 ms)",
            format!(
                "max {max_each:?} per endpoint; max of the sum {} in the first half, {} in the second; {:?} at the end of the load; {} samples",
                max_in(0.0, half),
                max_in(half, f64::INFINITY),
                samples.last().map(|s| s.2.clone()).unwrap_or_default(),
                samples.len()
            ),
            &format!("bounded: ≤ {bound} per endpoint (1 s of events)"),
            // A queue that keeps pace holds what the last moments produced (≈ 200 per endpoint
            // at a p99 of 100 ms); one that falls behind grows with the time the load runs.
            Some(max_each.iter().all(|&p| p <= bound)),
        );
        let drain = done.map_or(
            format!("not drained 60 s after the load, pending {left:?}"),
            |at| {
                format!(
                    "drained {:.2} s after the load",
                    (at - stopped).as_secs_f64()
                )
            },
        );
        let p99 = quantile(&lat, 0.99);
        let waited = stopped.elapsed().as_secs_f64() + 1.0;
        let ms = |v: f64| {
            if v.is_finite() {
                format!("{v:.1} ms")
            } else {
                format!("> {waited:.0} s (not delivered)")
            }
        };
        self.row(
            "6b. webhook's 200 → its last event at both receivers",
            format!(
                "p50 {}, p90 {}, p99 {}, max {} ({} webhooks; {missing} without all their events when the wait ended); {drain}; {}",
                ms(quantile(&lat, 0.5)),
                ms(quantile(&lat, 0.9)),
                ms(p99),
                ms(lat.last().copied().unwrap_or(f64::NAN)),
                lat.len(),
                delivery_outcomes(&m)
            ),
            "p99 ≤ 100 ms",
            Some(p99 <= 100.0 && missing == 0),
        );
    }

    /// (c) the most deliveries/s one endpoint gets: a backlog made as fast as the daemon acks,
    /// then drained with no load.
    pub(crate) async fn measure_deliveries(&mut self) {
        let n = self.args.deliveries_webhooks;
        let conns = self.args.connections;
        eprintln!("[6c] one endpoint: {n} webhooks as fast as acked, then the drain");
        let receivers = [Receiver::start().await];
        let (d, _) = start_daemon_toml(
            &self.bin,
            &self.work.join("deliveries"),
            &endpoints_toml(&receivers),
            &[],
        );
        let url = format!("{}/webhooks/jas", d.public);
        let started = Instant::now();
        let accepted = feed(&url, &self.bodies, n, conns).await;
        let fed = Instant::now();
        let expected = accepted * EVENTS_PER_WEBHOOK;
        let (done, left) = drained(
            &self.http,
            &d,
            &receivers,
            expected,
            Duration::from_secs(120),
        )
        .await;
        let m = metrics(&self.http, &d).await;
        d.proc.term();
        let arrivals = receivers[0].arrivals();
        let after: Vec<&Instant> = arrivals.iter().filter(|at| **at >= fed).collect();
        let span = |v: &[&Instant]| match (v.first(), v.last()) {
            (Some(a), Some(b)) if b > a => v.len() as f64 / (**b - **a).as_secs_f64(),
            _ => f64::NAN,
        };
        let all: Vec<&Instant> = arrivals.iter().collect();
        // The busiest whole second at the receiver.
        let mut best = 0;
        let mut j = 0;
        for i in 0..arrivals.len() {
            while arrivals[i] - arrivals[j] >= Duration::from_secs(1) {
                j += 1;
            }
            best = best.max(i - j + 1);
        }
        // The rate in each quarter of the events, in arrival order: whether it depends on how
        // much is still queued.
        let quarters: Vec<String> = arrivals
            .chunks(arrivals.len().div_ceil(4).max(1))
            .map(|q| {
                let q: Vec<&Instant> = q.iter().collect();
                format!("{:.0}", span(&q))
            })
            .collect();
        let feed_secs = (fed - started).as_secs_f64();
        self.row(
            "6c. deliveries/s to one endpoint",
            format!(
                "{:.0}/s while draining with no load ({} events after the last ack); {:.0}/s over all {} events; by quarter of the events {}/s; busiest second {best}; {}",
                span(&after),
                after.len(),
                span(&all),
                arrivals.len(),
                quarters.join(", "),
                match done {
                    Some(_) => format!(
                        "{accepted} webhooks acked in {feed_secs:.1} s ({:.0}/s); {}",
                        accepted as f64 / feed_secs,
                        delivery_outcomes(&m)
                    ),
                    None => format!("**not drained** after 120 s, pending {left:?}"),
                }
            ),
            "—",
            None,
        );
    }
}
