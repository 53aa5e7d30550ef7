//! Call events out (issue #13, SPEC §7), through a real daemon to a receiver on loopback: the
//! events of a call arrive in order, signed so that an independent Standard Webhooks verifier
//! accepts them, and a receiver that fails gets the same event, with the same id, later.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use callhook::config::Endpoint;
use callhook::events::Pattern;
use secrecy::SecretString;
use serde_json::Value;

use crate::common::*;

const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the receiver got: each request's headers and body, in arrival order.
#[derive(Clone)]
pub(crate) struct Receiver {
    got: Arc<Mutex<Vec<(HeaderMap, String)>>>,
    /// Requests to answer 500 before answering 200.
    fail_first: Arc<Mutex<usize>>,
    /// How many that was at the start.
    fails: usize,
    /// What a failed request is answered.
    failure: StatusCode,
    /// How long each answer takes.
    delay: Arc<Mutex<Duration>>,
}

impl Default for Receiver {
    fn default() -> Self {
        Receiver {
            got: Arc::default(),
            fail_first: Arc::default(),
            fails: 0,
            failure: StatusCode::INTERNAL_SERVER_ERROR,
            delay: Arc::default(),
        }
    }
}

impl Receiver {
    pub(crate) async fn start(fail_first: usize) -> (Receiver, String) {
        Self::start_with(fail_first, StatusCode::INTERNAL_SERVER_ERROR).await
    }

    async fn start_with(fail_first: usize, failure: StatusCode) -> (Receiver, String) {
        let receiver = Receiver {
            fails: fail_first,
            failure,
            ..Receiver::default()
        };
        *receiver.fail_first.lock().unwrap() = fail_first;
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let state = state.clone();
                async move {
                    state.got.lock().unwrap().push((headers, body));
                    let delay = *state.delay.lock().unwrap();
                    tokio::time::sleep(delay).await;
                    let mut left = state.fail_first.lock().unwrap();
                    if *left > 0 {
                        *left -= 1;
                        state.failure
                    } else {
                        StatusCode::NO_CONTENT
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn got(&self) -> Vec<(HeaderMap, String)> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `n` distinct event ids have arrived (repeats aside), within a bound.
    async fn wait_distinct(&self, n: usize) -> Vec<(HeaderMap, Value)> {
        for _ in 0..400 {
            let got = self.got();
            let ids: std::collections::HashSet<_> =
                got.iter().map(|(h, _)| h["webhook-id"].clone()).collect();
            if ids.len() >= n {
                return self.wait_for(got.len() - self.fails).await;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("fewer than {n} distinct events arrived");
    }

    /// Waits until `n` requests answered 2xx have arrived; returns every request, each
    /// checked by an independent Standard Webhooks verifier.
    pub(crate) async fn wait_for(&self, n: usize) -> Vec<(HeaderMap, Value)> {
        for _ in 0..200 {
            let got = self.got();
            if got.len() >= n + self.fails {
                let verifier = standardwebhooks::Webhook::new(KEY).unwrap();
                return got
                    .into_iter()
                    .map(|(headers, body)| {
                        verifier
                            .verify(body.as_bytes(), &headers)
                            .unwrap_or_else(|e| panic!("{e}: {body}"));
                        (headers, serde_json::from_str(&body).unwrap())
                    })
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("only {} of {n} deliveries arrived", self.got().len());
    }
}

pub(crate) fn endpoint(url: &str) -> Endpoint {
    Endpoint {
        name: "crm".into(),
        url: url.parse().unwrap(),
        secrets: vec![SecretString::from(KEY)],
        events: vec![Pattern::All],
        providers: vec![],
        enabled: true,
        timeout: Duration::from_secs(2),
        // The receiver is on loopback.
        allow_private: true,
    }
}

async fn app_with(dir: &std::path::Path, endpoint: Endpoint) -> TestApp {
    let mut settings = Env::new(dir).settings(dir);
    settings.outbound.endpoints = vec![endpoint];
    settings.outbound.retry_schedule = vec![Duration::from_millis(50); 5];
    TestApp::spawn_settings(settings).await
}

pub(crate) fn types(got: &[(HeaderMap, Value)]) -> Vec<String> {
    got.iter()
        .map(|(_, b)| b["type"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_calls_events_arrive_in_order_signed_and_carrying_the_call() {
    let dir = tempdir();
    let (receiver, url) = Receiver::start(0).await;
    let app = app_with(dir.path(), endpoint(&url)).await;
    assert_eq!(app.post_jas(&call_status("101", "1", 0, 1)).await.0, 200);
    app.wait_call("jas", "101:1", |_| true).await;
    assert_eq!(app.post_jas(&call_status("101", "1", 1, 2)).await.0, 200);
    let got = receiver.wait_for(4).await;
    assert_eq!(
        types(&got),
        [
            "call.started",
            "participant.joined",
            "participant.left",
            "call.ended"
        ]
    );
    for (headers, body) in &got {
        assert_eq!(headers["webhook-id"], body["id"].as_str().unwrap());
        assert_eq!(body["schema"], 1);
        assert_eq!(body["provider"], "jas");
        assert_eq!(body["call"]["call_id"], "101:1");
    }
    assert_eq!(got[3].1["call"]["state"], "ended");
    assert_eq!(got[1].1["participant"]["participant_id"], "1");

    // A replay since before the call sends the same events again, in order, with their ids.
    let post = |path: String| {
        let url = format!("{}{path}", app.admin);
        let http = app.http.clone();
        async move {
            let r = http.post(url).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or_default(),
            )
        }
    };
    let (status, body) = post("/api/endpoints/crm/replay?since=2000-01-01T00:00:00Z".into()).await;
    assert_eq!((status, body["events"].as_u64()), (200, Some(4)), "{body}");
    let again = receiver.wait_for(8).await;
    let ids = |g: &[(HeaderMap, Value)]| -> Vec<String> {
        g.iter()
            .map(|(_, b)| b["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&again[4..]), ids(&got));
    assert_eq!(
        post("/api/endpoints/crm/replay?since=yesterday".into())
            .await
            .0,
        400
    );
    assert_eq!(
        post("/api/endpoints/nope/replay?since=2000-01-01T00:00:00Z".into())
            .await
            .0,
        404
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_failing_receiver_gets_the_same_event_with_the_same_id_later() {
    let dir = tempdir();
    let (receiver, url) = Receiver::start(2).await;
    let app = app_with(dir.path(), endpoint(&url)).await;
    assert_eq!(app.post_jas(&call_status("102", "1", 0, 1)).await.0, 200);
    let got = receiver.wait_for(2).await;
    // Two 500s, then the first event delivered, then the next: never the second before the
    // first was delivered.
    let ids: Vec<&str> = got
        .iter()
        .map(|(h, _)| h["webhook-id"].to_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[1], ids[2]);
    assert_ne!(ids[2], ids[3]);
    assert_eq!(
        types(&got),
        [
            "call.started",
            "call.started",
            "call.started",
            "participant.joined"
        ]
    );
    app.stop().await.unwrap();
}

/// Waits until the process-wide metric reaches `at_least`.
async fn wait_metric(app: &TestApp, series: &str, at_least: f64) {
    for _ in 0..200 {
        if app.metric(series).await >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{series} never reached {at_least}");
}

#[tokio::test]
async fn a_private_target_is_refused_unless_allowed() {
    let dir = tempdir();
    let (receiver, url) = Receiver::start(0).await;
    let app = app_with(
        dir.path(),
        Endpoint {
            name: "private".into(),
            allow_private: false,
            ..endpoint(&url)
        },
    )
    .await;
    assert_eq!(app.post_jas(&call_status("103", "1", 0, 1)).await.0, 200);
    // Every attempt refused before a connection: the schedule (5 pauses) runs out.
    wait_metric(
        &app,
        r#"callhook_outbound_deliveries_total{endpoint="private",outcome="failed"}"#,
        1.0,
    )
    .await;
    assert!(receiver.got().is_empty());

    // Every series of the endpoint is there (the gauges' values depend on when the queue was
    // last read, every 2 s, so only their presence is checked); nothing was delivered.
    let (_, text) = app.get_admin("/metrics").await;
    let text = text.as_str().unwrap();
    for series in [
        r#"callhook_outbound_pending{endpoint="private"} "#,
        r#"callhook_outbound_oldest_pending_seconds{endpoint="private"} "#,
        r#"callhook_outbound_deliveries_total{endpoint="private",outcome="delivered"} 0"#,
    ] {
        assert!(text.lines().any(|l| l.starts_with(series)), "{series}");
    }
    // The admin API shows it (once the outcome counted above is written) and can make it due
    // again.
    wait_until(Duration::from_secs(5), || async {
        app.get_admin("/api/endpoints").await.1["endpoints"][0]["failed"] == 1
    })
    .await;
    let (status, body) = app.get_admin("/api/endpoints").await;
    assert_eq!(status, 200);
    let e = &body["endpoints"][0];
    assert_eq!(
        (e["name"].as_str(), e["failed"].as_u64()),
        (Some("private"), Some(1))
    );
    let (status, body) = app.get_admin("/api/deliveries?state=failed").await;
    assert_eq!(status, 200);
    let d = &body["deliveries"][0];
    assert_eq!(d["type"], "call.started");
    assert!(d["last_error"].as_str().unwrap().contains("refused"), "{d}");
    for (query, names) in [
        ("state=done", "`state`"),
        ("limit=0", "`limit`"),
        ("endpoint=nope", "`endpoint`"),
    ] {
        let (status, body) = app.get_admin(&format!("/api/deliveries?{query}")).await;
        assert_eq!(status, 400, "{query}");
        assert!(body.to_string().contains(names), "{query}: {body}");
    }
    let id = d["event_id"].as_str().unwrap().to_string();
    let retry = |id: String| {
        let url = format!("{}/api/deliveries/{id}/retry", app.admin);
        let http = app.http.clone();
        async move { http.post(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(retry(id.clone()).await, 200);
    assert_eq!(retry("evt_000000000000000000000000".into()).await, 404);
    // Due now, it is attempted (and refused) once more.
    wait_metric(
        &app,
        r#"callhook_outbound_deliveries_total{endpoint="private",outcome="failed"}"#,
        2.0,
    )
    .await;
    app.stop().await.unwrap();
    let journal = callhook::journal::Journal::open(&data_dir(dir.path()).join("callhook.db"))
        .await
        .unwrap();
    let states = journal.delivery_states("private".into()).await.unwrap();
    assert!(!states.is_empty());
    assert_eq!(states[0].1, "failed");
    assert_eq!(
        states[0].2, 7,
        "the first attempt, one per pause, and the retry asked for"
    );
    journal.close().await.unwrap();
}

#[tokio::test]
async fn gone_disables_the_endpoint() {
    let dir = tempdir();
    let (receiver, url) = Receiver::start_with(1, StatusCode::GONE).await;
    let app = app_with(
        dir.path(),
        Endpoint {
            name: "gone".into(),
            ..endpoint(&url)
        },
    )
    .await;
    assert_eq!(app.post_jas(&call_status("104", "1", 0, 1)).await.0, 200);
    wait_metric(
        &app,
        r#"callhook_outbound_deliveries_total{endpoint="gone",outcome="gone"}"#,
        1.0,
    )
    .await;
    // Later events are kept for it, not sent.
    assert_eq!(app.post_jas(&call_status("105", "1", 0, 1)).await.0, 200);
    app.wait_call("jas", "105:1", |_| true).await;
    for _ in 0..10 {
        assert_eq!(receiver.got().len(), 1);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (status, body) = app.get_admin("/api/endpoints").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["endpoints"][0]["disabled_because"], "410 Gone",
        "{body}"
    );
    // Enabled again, it gets what waited: the refused event under its id, first of its call.
    // The two calls go at once (different calls never wait for each other), so which of them
    // arrives first is not fixed.
    let url = format!("{}/api/endpoints/gone/enable", app.admin);
    assert_eq!(app.http.post(url).send().await.unwrap().status(), 200);
    let got = receiver.wait_for(4).await;
    let refused = &got[0];
    assert_eq!(refused.1["call"]["call_id"], "104:1");
    let first_of_its_call = got[1..]
        .iter()
        .find(|(_, body)| body["call"]["call_id"] == "104:1")
        .expect("the refused call's events are sent again");
    assert_eq!(first_of_its_call.0["webhook-id"], refused.0["webhook-id"]);
    assert_eq!(first_of_its_call.1["type"], "call.started");
    assert!(
        got[1..]
            .iter()
            .any(|(_, body)| body["call"]["call_id"] == "105:1"),
        "what waited for the other call is sent too"
    );
    app.stop().await.unwrap();
}

/// `kill -9` while events flow: after the restart every event produced before the kill reaches
/// the endpoint, none under a second id, and each call's events in their order.
#[tokio::test]
async fn a_kill_mid_delivery_loses_nothing_and_repeats_only_with_the_same_id() {
    const CALLS: usize = 15;
    // `bench/crash-loop.sh` runs more rounds, each on the same database with new calls.
    let rounds: usize = std::env::var("CALLHOOK_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let dir = tempdir();
    let (crm, crm_url) = Receiver::start(0).await;
    let (lake, lake_url) = Receiver::start(0).await;
    let env = Env::new(dir.path());
    let config = format!(
        "[outbound]\nretry_schedule_secs = [1, 1, 1]\n\n[[outbound.endpoints]]\nname = \"crm\"\nurl = \"{crm_url}\"\nsecret = \"{KEY}\"\nallow_private = true\n\n[[outbound.endpoints]]\nname = \"lake\"\nurl = \"{lake_url}\"\nsecret = \"{KEY}\"\nallow_private = true\n"
    );
    for round in 0..rounds {
        // Slow answers, so the kill lands with deliveries in flight at both endpoints.
        for r in [&crm, &lake] {
            *r.delay.lock().unwrap() = Duration::from_millis(100);
        }
        let daemon = ChildDaemon::spawn_with_config(&env, dir.path(), &config);
        let calls: Vec<String> = (0..CALLS)
            .map(|i| format!("{}", 1000 * (round + 1) + i))
            .collect();
        for dn in &calls {
            for (kind, seq) in [(0, 1), (1, 2)] {
                let (status, _) =
                    post_signed(&daemon.public, &call_status(dn, "1", kind, seq)).await;
                assert_eq!(status, 200);
            }
        }
        let of_round = |r: &Receiver| {
            r.got()
                .iter()
                .filter(|(_, b)| b.contains(&format!("\"call_id\":\"{}:1\"", calls[0])))
                .count()
        };
        // Killed once some, not all, have been delivered (the first call's events come first).
        for _ in 0..400 {
            if of_round(&crm) >= 2 && of_round(&lake) >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        daemon.signal("KILL");
        drop(daemon);
        let answered = |r: &Receiver| {
            r.got()
                .iter()
                .filter(|(_, b)| calls.iter().any(|dn| b.contains(&format!("\"{dn}:1\""))))
                .count()
        };
        assert!(
            answered(&crm) < 4 * CALLS && answered(&lake) < 4 * CALLS,
            "everything was delivered before the kill"
        );
        for r in [&crm, &lake] {
            *r.delay.lock().unwrap() = Duration::ZERO;
        }
        let daemon = ChildDaemon::spawn_with_config(&env, dir.path(), &config);
        for (name, r) in [("crm", &crm), ("lake", &lake)] {
            every_event_once_in_order(name, r, &calls).await;
        }
        eprintln!("round {round}: every event at both endpoints, in order");
        drop(daemon);
    }
}

/// Waits until `receiver` has the four events of each of `calls` (`<dn>:1`), then checks that
/// repeats carry an id already seen and that, per call, first arrivals are in the call's order.
async fn every_event_once_in_order(name: &str, receiver: &Receiver, calls: &[String]) {
    let wanted: std::collections::HashSet<String> =
        calls.iter().map(|dn| format!("{dn}:1")).collect();
    let mut per_call: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for _ in 0..800 {
        per_call.clear();
        let mut seen = std::collections::HashSet::new();
        for (headers, body) in receiver.got() {
            let body: Value = serde_json::from_str(&body).unwrap();
            let call = body["call"]["call_id"].as_str().unwrap().to_string();
            if wanted.contains(&call) && seen.insert(headers["webhook-id"].clone()) {
                per_call
                    .entry(call)
                    .or_default()
                    .push(body["type"].as_str().unwrap().to_string());
            }
        }
        if per_call.values().map(Vec::len).sum::<usize>() >= 4 * calls.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(per_call.len(), calls.len(), "{name}: {per_call:?}");
    for (call, events) in per_call {
        assert_eq!(
            events,
            [
                "call.started",
                "participant.joined",
                "participant.left",
                "call.ended"
            ],
            "{name}: {call}"
        );
    }
}

/// `callhook endpoints list` and `callhook deliveries list|retry` against a running daemon.
#[tokio::test]
async fn the_cli_lists_endpoints_and_deliveries_and_retries_one() {
    let dir = tempdir();
    let (_receiver, url) = Receiver::start(usize::MAX).await;
    let port = free_port();
    let mut env = Env::new(dir.path());
    env.set("admin.listen", &format!("127.0.0.1:{port}"));
    let config = format!(
        "[outbound]\nretry_schedule_secs = [600]\n\n[[outbound.endpoints]]\nname = \"crm\"\nurl = \"{url}\"\nsecret = \"{KEY}\"\nallow_private = true\n"
    );
    let daemon = ChildDaemon::spawn_with_config(&env, dir.path(), &config);
    assert_eq!(
        post_signed(&daemon.public, &call_status("106", "1", 0, 1))
            .await
            .0,
        200
    );
    let cli = |args: &[&str]| cli(&env, dir.path(), args);
    // The first attempt fails (500) and the next is 10 minutes away: it stays pending.
    let mut listed = String::new();
    for _ in 0..100 {
        let (code, out, err) = cli(&["deliveries", "list", "--state", "pending"]);
        assert_eq!(code, Some(0), "{err}");
        if out.contains("HTTP 500") {
            listed = out;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(listed.contains("call.started"), "{listed}");
    let id = listed
        .split_whitespace()
        .find(|w| w.starts_with("evt_"))
        .unwrap()
        .to_string();
    let (code, out, err) = cli(&["endpoints", "list"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("crm") && out.contains(&url), "{out}");
    let (code, out, err) = cli(&["deliveries", "retry", &id]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("crm"), "{out}");
    let (code, out, err) = cli(&[
        "endpoints",
        "replay",
        "crm",
        "--since",
        "2000-01-01T00:00:00Z",
    ]);
    assert_eq!(code, Some(0), "{err}");
    // The call's two events so far: call.started and participant.joined.
    assert_eq!(out.trim(), "crm: 2 events due again");
    let (code, _, err) = cli(&["endpoints", "replay", "crm", "--since", "yesterday"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("`since`"), "{err}");
    let (code, _, err) = cli(&["deliveries", "retry", "evt_000000000000000000000000"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("404"), "{err}");
    let (code, _, err) = cli(&["deliveries", "list", "--state", "done"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("`state`"), "{err}");
    drop(daemon);
}

/// The daemon with `endpoint`, lookups answered by `sim`, and a grace of `grace_ms`.
async fn app_with_grace(
    dir: &std::path::Path,
    endpoint: Endpoint,
    sim_url: Option<&str>,
    grace_ms: u64,
) -> TestApp {
    let mut env = Env::new(dir);
    if let Some(url) = sim_url {
        env = env.with_sim(url);
    }
    env.set("calls.end_grace_ms", &grace_ms.to_string());
    let mut settings = env.settings(dir);
    settings.outbound.endpoints = vec![endpoint];
    settings.outbound.retry_schedule = vec![Duration::from_millis(50); 5];
    TestApp::spawn_settings(settings).await
}

#[tokio::test]
async fn a_join_that_arrives_after_the_last_leave_resumes_the_call_and_one_call_ended_goes_out() {
    let dir = tempdir();
    let sim = callhook::sim::JasSim::new();
    for (dn, id) in [("101", "1"), ("102", "2")] {
        sim.set_participant(
            dn,
            id,
            participant(dn, id, "60", "Connected", "10000", "Wexternalline"),
        );
    }
    let server = sim.start().await.unwrap();
    let (receiver, url) = Receiver::start(0).await;
    let app = app_with_grace(dir.path(), endpoint(&url), Some(&server.base_url), 3000).await;
    // A joins and leaves; B's join (sequence 2, before A's leave) comes after it.
    app.post_jas(&call_status("101", "1", 0, 1)).await;
    app.wait_call("jas", "60", |c| {
        c["participants"].as_array().unwrap().len() == 1
    })
    .await;
    app.post_jas(&call_status("101", "1", 1, 3)).await;
    let ending = app
        .wait_call("jas", "60", |c| c["ends_at"].is_string())
        .await;
    assert_eq!(ending["state"], "active", "in its grace: {ending}");
    assert_eq!(app.active_calls().await.len(), 1);
    app.post_jas(&call_status("102", "2", 0, 2)).await;
    let resumed = app
        .wait_call("jas", "60", |c| {
            c["participants"].as_array().unwrap().len() == 2
        })
        .await;
    assert_eq!(resumed["state"], "active");
    assert!(resumed.get("ends_at").is_none(), "{resumed}");
    app.post_jas(&call_status("102", "2", 1, 4)).await;
    app.wait_call("jas", "60", |c| c["state"] == "ended").await;
    let got = receiver.wait_for(7).await;
    assert_eq!(
        types(&got),
        [
            "call.started",
            "participant.joined",
            "call.answered",
            "participant.left",
            "participant.joined",
            "participant.left",
            "call.ended"
        ]
    );
    let call = &got[6].1["call"];
    assert_eq!(call["participants"].as_array().unwrap().len(), 2);
    // A late repeat of B's join, after the grace, changes nothing and says nothing.
    app.post_jas(&call_status("102", "2", 0, 5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.got().len(), 7);
    assert_eq!(app.call("jas", "60").await.unwrap()["state"], "ended");
}

#[tokio::test]
async fn a_grace_that_runs_out_across_a_restart_ends_the_call_once_under_its_own_id() {
    let dir = tempdir();
    let (receiver, url) = Receiver::start(0).await;
    let app = app_with_grace(dir.path(), endpoint(&url), None, 1500).await;
    app.post_jas(&call_status("101", "1", 0, 1)).await;
    app.wait_call("jas", "101:1", |_| true).await;
    app.post_jas(&call_status("101", "1", 1, 2)).await;
    let ending = app
        .wait_call("jas", "101:1", |c| c["ends_at"].is_string())
        .await;
    app.stop().await.unwrap();
    let ends_at = chrono::DateTime::parse_from_rfc3339(ending["ends_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();

    // Restarted with the call still in its grace: restored with its deadline, ended once it
    // passes, under the id its deadline gives (the same had it ended before the stop).
    let app = app_with_grace(dir.path(), endpoint(&url), None, 1500).await;
    app.wait_call("jas", "101:1", |c| c["state"] == "ended")
        .await;
    let got = receiver.wait_distinct(4).await;
    assert_eq!(
        types(&got),
        [
            "call.started",
            "participant.joined",
            "participant.left",
            "call.ended"
        ]
    );
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("grace:jas:101:1:{ends_at}#0").as_bytes());
    let id = format!("evt_{}", &hex::encode(digest)[..24]);
    assert_eq!(got[3].1["id"], id);
}
