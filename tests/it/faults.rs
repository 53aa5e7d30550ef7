//! The JAS API misbehaving: slower than the request timeout, bursts of 5xx, connections closed
//! in the middle of a body, down when the daemon starts, unavailable for longer than the client
//! retries one request. Webhooks are acknowledged and journaled quickly throughout (lookups are
//! off the ack path), failed lookups are retried, and the participant shows up in `/api/calls`
//! once the API answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use callhook::config::Settings;
use callhook::sim::{JasSim, SimRoute};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An acknowledgement slower than this means the ack path waited for the API.
const FAST_ACK: Duration = Duration::from_millis(1000);

fn settings(dir: &std::path::Path, api_base: &str) -> Settings {
    let mut s = Env::new(dir).with_sim(api_base).settings(dir);
    // The production deadline is 10 s; a slow API is the same thing sooner.
    s.jas.request_timeout = Duration::from_millis(300);
    s
}

/// A client that gives a lookup up after 3 quick attempts (tens of milliseconds instead of about
/// 6 s), and a processor that asks again 100 ms later, then every 200 ms.
fn settings_quick_to_give_up(dir: &std::path::Path, api_base: &str) -> Settings {
    let mut s = settings(dir, api_base);
    s.jas.retry.request_min = Duration::from_millis(10);
    s.jas.retry.request_max = Duration::from_millis(20);
    s.jas.retry.request_retries = 2;
    s.jas.retry.lookup_first = Duration::from_millis(100);
    s.jas.retry.lookup_max = Duration::from_millis(200);
    s
}

/// Posts `bodies`, asserting each is accepted quickly; returns the slowest ack.
async fn post_all_fast(app: &TestApp, bodies: &[String]) -> Duration {
    let mut slowest = Duration::ZERO;
    for body in bodies {
        let started = Instant::now();
        let (status, reply) = app.post_jas(body).await;
        let took = started.elapsed();
        assert_eq!((status, reply["status"].as_str()), (200, Some("accepted")));
        assert!(took < FAST_ACK, "ack took {took:?}");
        slowest = slowest.max(took);
    }
    slowest
}

/// A participant insert followed by DTMF events for it (journaled, no lookup).
fn events(dn: &str, pid: &str, n: i64) -> Vec<String> {
    let mut bodies = vec![call_status(dn, pid, 0, 1)];
    bodies.extend((2..=n).map(|seq| call_status(dn, pid, 2, seq)));
    bodies
}

/// Rows in the journal, read from the database file as an operator would.
fn journaled(dir: &std::path::Path) -> usize {
    let db = rusqlite::Connection::open(dir.join("data/callhook.db")).unwrap();
    db.query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0))
        .unwrap() as usize
}

#[tokio::test(flavor = "multi_thread")]
async fn api_slower_than_the_request_timeout_is_retried_and_acks_stay_fast() {
    let sim = JasSim::with_token(TOKEN);
    let server = sim.start().await.unwrap();
    sim.set_participant(
        "101",
        "1",
        participant("101", "1", "slow", "Ringing", "10000", "Wexternalline"),
    );
    sim.set_delay(SimRoute::Participant, Duration::from_secs(3));
    let dir = tempdir();
    let app = TestApp::start(settings(dir.path(), &server.base_url)).await;
    app.wait_ready().await;

    let bodies = events("101", "1", 20);
    let slowest = post_all_fast(&app, &bodies).await;
    // At least one attempt has timed out and another is under way.
    wait_until(Duration::from_secs(5), || async {
        sim.requests(SimRoute::Participant) >= 2
    })
    .await;
    assert!(app.call("jas", "slow").await.is_none());
    assert_eq!(journaled(dir.path()), bodies.len());

    sim.set_delay(SimRoute::Participant, Duration::ZERO);
    // Until the call is refreshed from the answer too (its start is its participant's join):
    // `/api/calls` builds a call's view from its record and its members' rows, so a read
    // between the lookup's two updates shows the member's details before the call's
    // direction (a fresh-clone CI run saw `unknown` once).
    let call = app
        .wait_call("jas", "slow", |c| {
            c["participants"][0]["status"] == "Ringing" && !c["started_at"].is_null()
        })
        .await;
    assert_eq!(call["direction"], "inbound", "{call}");
    eprintln!(
        "slowest ack {slowest:?}; lookup attempts {}",
        sim.requests(SimRoute::Participant)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bursts_of_5xx_are_retried_until_the_lookup_answers() {
    let sim = JasSim::with_token(TOKEN);
    let server = sim.start().await.unwrap();
    for (pid, callid) in [("1", "burst"), ("2", "burst"), ("3", "other")] {
        sim.set_participant(
            "101",
            pid,
            participant("101", pid, callid, "Connected", "102", "Wextension"),
        );
    }
    sim.fail_next(SimRoute::Participant, &[500, 503, 502, 504, 503, 500]);
    let dir = tempdir();
    let app = TestApp::start(settings(dir.path(), &server.base_url)).await;
    app.wait_ready().await;

    let mut bodies = vec![];
    for pid in ["1", "2", "3"] {
        bodies.extend(events("101", pid, 5));
    }
    post_all_fast(&app, &bodies).await;
    let call = app
        .wait_call("jas", "burst", |c| {
            c["participants"].as_array().is_some_and(|p| p.len() == 2)
        })
        .await;
    assert_eq!(call["direction"], "internal", "{call}");
    app.wait_call("jas", "other", |c| c["state"] == "active")
        .await;
    // Every injected failure was met by a retry, and nothing more.
    assert_eq!(sim.requests(SimRoute::Participant), 3 + 6);
}

/// Answers participant lookups itself: the first `cut` connections get a 200 whose body stops
/// half way (the connection is closed), the rest a whole participant.
async fn cutting_server(cut: usize) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v2", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let n = counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => head.extend_from_slice(&buf[..k]),
                    }
                }
                let body = participant("101", "9", "cut", "Connected", "10000", "Wexternalline")
                    .to_string();
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
                let end = if n < cut { body.len() / 2 } else { body.len() };
                let _ = socket.write_all(&body.as_bytes()[..end]).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (base, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_closed_mid_body_are_retried() {
    let (base, seen) = cutting_server(2).await;
    let dir = tempdir();
    let app = TestApp::start(settings(dir.path(), &base)).await;
    app.wait_ready().await;

    post_all_fast(&app, &events("101", "9", 10)).await;
    let call = app
        .wait_call("jas", "cut", |c| {
            c["participants"][0]["status"] == "Connected"
        })
        .await;
    assert_eq!(call["participants"][0]["party_number"], "5148888888");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        3,
        "two cut bodies, then one whole"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn api_down_at_start_up_then_back() {
    // A loopback port with nothing listening on it yet.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let base = format!("http://{addr}/v2");
    let dir = tempdir();
    let mut settings = settings(dir.path(), &base);
    settings.jas.register = true;
    settings.jas.callback_url = Some("https://example.invalid/webhooks/jas".parse().unwrap());
    let app = TestApp::start(settings).await;

    // Ready although registration cannot happen yet (SPEC §4 changed: readiness no longer waits
    // for it); webhooks are taken and journaled, `/readyz` says registration is pending.
    app.wait_ready().await;
    let (status, body) = app.get_admin("/readyz").await;
    assert_eq!(status, 200);
    assert!(
        body["registration"]
            .as_str()
            .unwrap()
            .starts_with("pending: "),
        "{body}"
    );
    let bodies = events("101", "7", 10);
    let slowest = post_all_fast(&app, &bodies).await;
    assert_eq!(journaled(dir.path()), bodies.len());
    tokio::time::sleep(Duration::from_millis(800)).await;

    let sim = JasSim::with_token(TOKEN);
    sim.set_participant(
        "101",
        "7",
        participant("101", "7", "back", "Ringing", "10000", "Wexternalline"),
    );
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let router = sim.router();
    tokio::spawn(async move { axum::serve(listener, router).await });

    wait_until(Duration::from_secs(20), || async {
        app.get_admin("/readyz").await.1["registration"] == "registered"
    })
    .await;
    assert_eq!(sim.registrations().len(), 3, "{:?}", sim.registrations());
    let call = app
        .wait_call("jas", "back", |c| {
            c["participants"][0]["status"] == "Ringing"
        })
        .await;
    assert_eq!(call["direction"], "inbound", "{call}");
    eprintln!("slowest ack while the API was down: {slowest:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn api_unavailable_longer_than_the_client_retries_then_back() {
    let sim = JasSim::with_token(TOKEN);
    let server = sim.start().await.unwrap();
    sim.set_participant(
        "101",
        "5",
        participant("101", "5", "outage", "Ringing", "10000", "Wexternalline"),
    );
    // Three times what the client's 3 attempts for one lookup get through.
    const DOWN: usize = 9;
    sim.fail_next(SimRoute::Participant, &[503; DOWN]);
    let dir = tempdir();
    let app = TestApp::start(settings_quick_to_give_up(dir.path(), &server.base_url)).await;
    app.wait_ready().await;
    // One process-wide metrics registry for every test here: only lower bounds hold.
    let failed_before = app
        .metric(r#"callhook_lookups_total{outcome="failed"}"#)
        .await;

    let started = Instant::now();
    post_all_fast(&app, &[call_status("101", "5", 0, 1)]).await;
    // The client alone gives up after 3 attempts; the participant appears only because the
    // processor kept the lookup and asked again (once a round), with no further event.
    let call = app
        .wait_call("jas", "outage", |c| {
            c["participants"][0]["status"] == "Ringing"
        })
        .await;
    let took = started.elapsed();
    assert_eq!(call["direction"], "inbound", "{call}");
    assert_eq!(call["participants"][0]["party_number"], "5148888888");
    assert_eq!(journaled(dir.path()), 1);
    // The first lookup's 3 attempts gave up once, then each round's single attempt did.
    let failed = app
        .metric(r#"callhook_lookups_total{outcome="failed"}"#)
        .await
        - failed_before;
    assert!(
        failed >= (1 + DOWN - 3) as f64,
        "failed lookups counted: {failed}"
    );

    // Once answered it is not asked again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sim.requests(SimRoute::Participant), DOWN + 1);
    eprintln!("participant appeared {took:?} after its only event");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lookup_given_up_is_not_asked_again_once_the_participant_left() {
    let sim = JasSim::with_token(TOKEN);
    let server = sim.start().await.unwrap();
    sim.set_participant(
        "101",
        "6",
        participant("101", "6", "left", "Ringing", "10000", "Wexternalline"),
    );
    sim.fail_next(SimRoute::Participant, &[503; 1000]);
    let dir = tempdir();
    let app = TestApp::start(settings_quick_to_give_up(dir.path(), &server.base_url)).await;
    app.wait_ready().await;

    post_all_fast(&app, &[call_status("101", "6", 0, 1)]).await;
    // Given up once and asked again at least once.
    wait_until(Duration::from_secs(5), || async {
        sim.requests(SimRoute::Participant) > 3
    })
    .await;
    post_all_fast(&app, &[call_status("101", "6", 1, 2)]).await;
    // A lookup already under way may still finish; then nothing more, although rounds come
    // every 200 ms and the API is still down.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settled = sim.requests(SimRoute::Participant);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(sim.requests(SimRoute::Participant), settled);
    assert!(app.call("jas", "left").await.is_none());
}

/// The database refusing the processor's state writes (a full disk, say) for a while: events
/// are still acknowledged and journaled, the applied cursor on disk does not move past state
/// that was not written, and once writes succeed again everything is written — so a restart
/// after the fault shows every call.
#[tokio::test]
async fn a_failing_state_write_keeps_its_rows_and_cursor_for_the_next_write() {
    let dir = tempdir();
    let env = Env::new(dir.path());
    let db = dir.path().join("data/callhook.db");
    let app = TestApp::spawn(&env, dir.path()).await;
    app.post_jas(&call_status("101", "1", 0, 1)).await;
    app.wait_call("jas", "101:1", |c| c["state"] == "active")
        .await;

    // The state file (calls, the cursor) and the journal (events) are two databases.
    let sql = rusqlite::Connection::open(dir.path().join("data/callhook-state.db")).unwrap();
    sql.busy_timeout(Duration::from_secs(5)).unwrap();
    let journal = rusqlite::Connection::open(&db).unwrap();
    journal.busy_timeout(Duration::from_secs(5)).unwrap();
    let cursor = |sql: &rusqlite::Connection| -> i64 {
        sql.query_row(
            "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'applied_cursor'",
            [],
            |r| r.get(0),
        )
        .unwrap_or(0)
    };
    let last_event = |_: &rusqlite::Connection| -> i64 {
        journal
            .query_row("SELECT MAX(id) FROM events", [], |r| r.get(0))
            .unwrap()
    };
    wait_until(Duration::from_secs(5), || async {
        cursor(&sql) == last_event(&sql)
    })
    .await;
    sql.execute_batch(
        "CREATE TRIGGER refuse_state BEFORE INSERT ON calls
         BEGIN SELECT RAISE(ABORT, 'injected: disk full'); END;",
    )
    .unwrap();

    let (status, reply) = app.post_jas(&call_status("102", "1", 0, 2)).await;
    assert_eq!((status, reply["status"].as_str()), (200, Some("accepted")));
    let refused_event = last_event(&sql);
    // Applied in memory at once; its row cannot be written.
    app.wait_call("jas", "102:1", |c| c["state"] == "active")
        .await;
    // Longer than the processor's 5 attempts at one write (about 3.1 s), so the rows must be
    // kept for a later write rather than merely retried.
    tokio::time::sleep(Duration::from_millis(3600)).await;
    assert!(
        cursor(&sql) < refused_event,
        "the cursor passed an event whose state was not written"
    );
    let rows: i64 = sql
        .query_row("SELECT COUNT(*) FROM calls", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1);

    sql.execute_batch("DROP TRIGGER refuse_state").unwrap();
    app.post_jas(&call_status("103", "1", 0, 3)).await;
    let everything = last_event(&sql);
    wait_until(Duration::from_secs(10), || async {
        cursor(&sql) == everything
    })
    .await;
    let mut ids: Vec<String> = sql
        .prepare("SELECT call_id FROM calls ORDER BY call_id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    ids.sort();
    assert_eq!(ids, ["101:1", "102:1", "103:1"]);
    drop(sql);
    app.stop().await.unwrap();

    let app = TestApp::spawn(&env, dir.path()).await;
    assert_eq!(app.active_calls().await.len(), 3);
}
