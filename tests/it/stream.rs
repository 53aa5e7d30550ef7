//! `GET /api/stream` and `callhook tail` (SPEC §4, §1): every call event as it is produced,
//! with or without an outbound endpoint, resumed after `Last-Event-ID`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use eventsource_stream::{Event, Eventsource};
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use crate::common::*;

pub(crate) type Events = std::pin::Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>;

pub(crate) async fn open(app: &TestApp, last_id: Option<&str>) -> Events {
    let mut req = app.http.get(format!("{}/api/stream", app.admin));
    if let Some(id) = last_id {
        req = req.header("last-event-id", id);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    Box::pin(
        resp.bytes_stream()
            .eventsource()
            .map(|e| e.map_err(|e| e.to_string())),
    )
}

/// The next `n` events of `stream` (keep-alive comments are not events), each as its id and
/// body, within a bound.
pub(crate) async fn next_events(stream: &mut Events, n: usize) -> Vec<(String, Value)> {
    let mut out = vec![];
    while out.len() < n {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events came: {out:?}", out.len()))
            .expect("the stream is open")
            .unwrap();
        let body: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(body["id"], event.id.as_str(), "`id:` is the event id");
        out.push((event.id, body));
    }
    out
}

fn kinds(events: &[(String, Value)]) -> Vec<(&str, &str)> {
    events
        .iter()
        .map(|(_, b)| {
            (
                b["type"].as_str().unwrap(),
                b["call"]["call_id"].as_str().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_stream_shows_events_without_an_endpoint_and_resumes_after_the_last_id() {
    let dir = tempdir();
    let app = TestApp::spawn(&Env::new(dir.path()), dir.path()).await;
    let mut stream = open(&app, None).await;
    assert_eq!(app.post_jas(&call_status("101", "1", 0, 1)).await.0, 200);
    let first = next_events(&mut stream, 2).await;
    assert_eq!(
        kinds(&first),
        [("call.started", "101:1"), ("participant.joined", "101:1")]
    );
    assert_eq!(first[1].1["participant"]["dn"], "101");

    // Cut off; a second call comes meanwhile; the reader comes back with its last id.
    drop(stream);
    assert_eq!(app.post_jas(&call_status("102", "1", 0, 2)).await.0, 200);
    app.wait_call("jas", "102:1", |_| true).await;
    let mut resumed = open(&app, Some(&first[1].0)).await;
    let missed = next_events(&mut resumed, 2).await;
    assert_eq!(
        kinds(&missed),
        [("call.started", "102:1"), ("participant.joined", "102:1")]
    );
    // And then it reads live, with nothing repeated.
    assert_eq!(app.post_jas(&call_status("103", "1", 0, 3)).await.0, 200);
    let live = next_events(&mut resumed, 2).await;
    assert_eq!(kinds(&live)[0], ("call.started", "103:1"));
    let mut ids: Vec<&str> = first
        .iter()
        .chain(&missed)
        .chain(&live)
        .map(|(id, _)| id.as_str())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "every event once, each with its own id");

    // Nothing wants them kept: without an endpoint the outbox stays empty.
    let (_, deliveries) = app.get_admin("/api/deliveries").await;
    assert_eq!(
        deliveries["deliveries"],
        serde_json::json!([]),
        "{deliveries}"
    );

    // An open stream does not hold the daemon's stop for the drain deadline: it ends.
    let stopped = tokio::time::timeout(Duration::from_secs(8), app.stop()).await;
    assert!(stopped.is_ok(), "the daemon stopped with a stream open");
    let end = tokio::time::timeout(Duration::from_secs(2), resumed.next()).await;
    assert!(
        matches!(end, Ok(None) | Ok(Some(Err(_)))),
        "the stream ended"
    );
}

#[tokio::test]
async fn tail_prints_each_event_as_one_json_line() {
    let dir = tempdir();
    let port = free_port();
    let mut env = Env::new(dir.path());
    env.set("admin.listen", &format!("127.0.0.1:{port}"));
    let daemon = ChildDaemon::spawn(&env, dir.path());
    let mut tail = Command::new(env!("CARGO_BIN_EXE_callhook"))
        .arg("tail")
        .arg("--config")
        .arg(dir.path().join("empty.toml"))
        .envs(&env.0)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // `tail` connects on its own time: post until its first line shows (each post is a new
    // call, so whichever it saw first, the line is that call's `call.started`).
    let mut first = None;
    for seq in 1..=50 {
        let body = call_status(&format!("{}", 200 + seq), "1", 0, seq);
        assert_eq!(post_signed(&daemon.public, &body).await.0, 200);
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
            first = Some(line);
            break;
        }
    }
    let first: Value = serde_json::from_str(&first.expect("tail printed a line")).unwrap();
    assert_eq!(first["type"], "call.started");
    assert!(first["id"].as_str().unwrap().starts_with("evt_"));
    let next: Value =
        serde_json::from_str(&lines.recv_timeout(Duration::from_secs(5)).unwrap()).unwrap();
    assert_eq!(next["type"], "participant.joined");
    assert_eq!(next["call"]["call_id"], first["call"]["call_id"]);
    let _ = tail.kill();
    let _ = tail.wait();
    drop(daemon);
}

#[test]
fn tail_without_a_daemon_says_so_and_exits_1() {
    let dir = tempdir();
    let port = free_port();
    let mut env = Env::new(dir.path());
    env.set("admin.listen", &format!("127.0.0.1:{port}"));
    std::fs::write(dir.path().join("empty.toml"), "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_callhook"))
        .arg("tail")
        .arg("--config")
        .arg(dir.path().join("empty.toml"))
        .envs(&env.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/api/stream"), "{err}");
}
