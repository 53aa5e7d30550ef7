//! Recording downloads as an operator sees them (§5 Recordings, §6): files on disk, the Call
//! JSON, what reached the provider, and what survives a crash. The real daemon on port 0
//! against the JAS simulator, or against `Upstream`, a raw HTTP server that can misbehave in
//! ways a framework would not let it (lying about lengths, stalling mid-body).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use callhook::calls::{Provider, RecordingState};
use callhook::config::Settings;
use callhook::journal::{Appended, Job, Journal, NewEvent, NewJob, StateWrite};
use callhook::recordings::RecorderOptions;
use callhook::recordings::fetch::Fetcher;
use callhook::sim::{JasSim, SimRoute};
use chrono::Utc;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NAME: &str = "101/[John Doe]_101-5148888888_20250603153720(26).wav";
const REL: &str = "jas/101/[John Doe]_101-5148888888_20250603153720(26).wav";

fn audio(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Every file under `dir`, relative to it, sorted; a symbolic link below it is listed, not
/// followed.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = vec![];
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn recording<'a>(call: &'a Value, id: &str) -> Option<&'a Value> {
    call["recordings"]
        .as_array()?
        .iter()
        .find(|r| r["id"] == id)
}

fn in_state(call: &Value, id: &str, state: &str) -> bool {
    recording(call, id).is_some_and(|r| r["state"] == state)
}

/// The daemon with retries in milliseconds instead of seconds.
async fn fast_app(env: &Env, dir: &Path, base: Duration) -> TestApp {
    let mut settings: Settings = env.settings(dir);
    settings.recordings.tuning = RecorderOptions {
        backoff_base: base,
        backoff_cap: base * 4,
        idle_poll: Duration::from_millis(200),
    };
    TestApp::spawn_settings(settings).await
}

async fn sim_env(sim: &JasSim, dir: &Path) -> (callhook::sim::SimServer, Env) {
    let server = sim.start().await.unwrap();
    let env = Env::new(dir).with_sim(&server.base_url);
    (server, env)
}

#[tokio::test]
async fn download_fails_twice_with_500_then_succeeds() {
    let dir = tempdir();
    let sim = JasSim::with_token(TOKEN);
    let body = audio(200_000);
    sim.add_recording(NAME, body.clone());
    sim.fail_next(SimRoute::Recording, &[500, 500]);
    let (_server, env) = sim_env(&sim, dir.path()).await;
    let app = fast_app(&env, dir.path(), Duration::from_millis(20)).await;

    let (status, reply) = app.post_jas(&new_recording("26", NAME, 1)).await;
    assert_eq!((status, reply["status"].as_str()), (200, Some("accepted")));
    let call = app
        .wait_call("jas", "26", |c| in_state(c, "1", "downloaded"))
        .await;

    let rec = recording(&call, "1").unwrap();
    assert_eq!(rec["path"], REL);
    assert_eq!(rec["url"], NAME);
    assert_eq!(rec["bytes"], body.len());
    assert_eq!(rec["sha256"], sha256(&body));
    assert_eq!(sim.requests(SimRoute::Recording), 3);
    let recordings = dir.path().join("recordings");
    assert_eq!(std::fs::read(recordings.join(REL)).unwrap(), body);
    assert_eq!(files_under(&recordings), vec![REL.to_string()]);

    // One process-wide registry for every test here: only lower bounds hold.
    let (_, metrics) = app.get_admin("/metrics").await;
    let metrics = metrics.as_str().unwrap();
    let value = |series: &str| metric_in(metrics, series);
    assert!(value("callhook_recordings_total{outcome=\"retried\"}") >= 2.0);
    assert!(value("callhook_recordings_total{outcome=\"downloaded\"}") >= 1.0);
    value("callhook_recording_queue_depth");
    assert!(
        value("callhook_upstream_requests_total{api=\"jas_recordings\",status=\"500\"}") >= 2.0
    );
    assert!(
        value("callhook_upstream_requests_total{api=\"jas_recordings\",status=\"200\"}") >= 1.0
    );
}

#[tokio::test]
async fn graceful_stop_mid_download_leaves_it_resumable() {
    let dir = tempdir();
    let body = audio(600_000);
    let upstream = Upstream::start(body.clone()).await;
    upstream.script([Reply::Stall { sent: 300_000 }]);
    let mut env = Env::new(dir.path());
    env.set("jas.api_base", &upstream.base())
        .set("jas.token", TOKEN);
    let recordings = dir.path().join("recordings");
    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;

    app.post_jas(&new_recording("26", NAME, 1)).await;
    app.wait_call("jas", "26", |c| in_state(c, "1", "downloading"))
        .await;
    wait_until(Duration::from_secs(5), || async {
        !files_under(&recordings).is_empty()
    })
    .await;
    let started = Instant::now();
    app.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // The temp file went with the download; nothing under the final name.
    assert_eq!(files_under(&recordings), Vec::<String>::new());

    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;
    let call = app
        .wait_call("jas", "26", |c| in_state(c, "1", "downloaded"))
        .await;
    assert_eq!(recording(&call, "1").unwrap()["sha256"], sha256(&body));
    assert_eq!(std::fs::read(recordings.join(REL)).unwrap(), body);
    assert_eq!(upstream.hits().len(), 2);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let dir = tempdir();
    let upstream = Upstream::start(audio(10_000)).await;
    upstream.script([Reply::status(503, &[("Retry-After", "1")], b"busy")]);
    let mut env = Env::new(dir.path());
    env.set("jas.api_base", &upstream.base())
        .set("jas.token", TOKEN);
    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;

    app.post_jas(&new_recording("26", NAME, 1)).await;
    app.wait_call("jas", "26", |c| in_state(c, "1", "downloaded"))
        .await;

    let hits = upstream.hits();
    assert_eq!(hits.len(), 2);
    let waited = hits[1].at - hits[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "retried after {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "retried after {waited:?}");
    assert_eq!(
        hits[0].target,
        "/v2/api/recordings/101/%5BJohn%20Doe%5D_101-5148888888_20250603153720%2826%29.wav"
    );
    assert_eq!(
        hits[0].authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
}

#[tokio::test]
async fn hostile_names_are_refused_and_nothing_is_written() {
    let dir = tempdir();
    let sim = JasSim::with_token(TOKEN);
    let (_server, env) = sim_env(&sim, dir.path()).await;
    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;
    let hostile = [
        ("abs", "/tmp/evil.wav", "absolute"),
        ("parent", "../evil.wav", ".."),
        ("deep-parent", "101/../../evil.wav", ".."),
        ("empty-segment", "101//evil.wav", "empty segment"),
        ("backslash", "101\\..\\evil.wav", "backslash"),
        ("control", "101/ev\u{1}il.wav", "control"),
        ("newline", "101/evil\n.wav", "control"),
    ];
    for (i, (call_id, name, _)) in hostile.iter().enumerate() {
        sim.add_recording(name, audio(1000));
        let (status, _) = app
            .post_jas(&new_recording(call_id, name, i as i64 + 1))
            .await;
        assert_eq!(status, 200, "{name:?}");
    }
    for (i, (call_id, name, why)) in hostile.iter().enumerate() {
        let id = (i + 1).to_string();
        let call = app
            .wait_call("jas", call_id, |c| in_state(c, &id, "failed"))
            .await;
        let rec = recording(&call, &id).unwrap();
        assert_eq!(rec["url"], *name);
        assert_eq!(rec["path"], Value::Null, "{name:?}");
        let error = rec["error"].as_str().unwrap();
        assert!(
            error.starts_with("refused") && error.contains(why),
            "{name:?}: {error}"
        );
    }
    // Give the workers every chance to (wrongly) pick them up.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(sim.requests(SimRoute::Recording), 0);
    let everything = files_under(dir.path());
    assert!(
        everything
            .iter()
            .all(|f| f.starts_with("data/") || f == "empty.toml"),
        "{everything:?}"
    );
    assert!(!Path::new("/tmp/evil.wav").exists());
}

#[tokio::test]
async fn telecmi_json_error_with_200_is_a_failure_and_not_saved() {
    let dir = tempdir();
    let upstream = Upstream::start(audio(5000)).await;
    let error = br#"{"code":404,"error":true,"msg":"file not found"}"#;
    upstream.script([Reply::status(
        200,
        &[("Content-Type", "application/json")],
        error,
    )]);
    let mut env = Env::new(dir.path());
    env.set("telecmi.app_id", "1111112")
        .set("telecmi.secret", "cmi-s3cr3t&x")
        .set("telecmi.api_base", &upstream.base());
    let settings = Arc::new(env.settings(dir.path()));
    let providers = callhook::providers::Providers::from_settings(&settings).unwrap();
    let sources = providers
        .iter()
        .filter_map(|p| Some((p.id(), p.recordings()?)));
    let fetcher = Fetcher::new(&settings, sources);
    let job = telecmi_job("1744636800-a b&c.mp3");
    let recordings = dir.path().join("recordings");
    let dest = recordings.join("telecmi/1744636800-a b&c.mp3");

    let err = fetcher.fetch(&job, &dest).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("file not found"), "{err}");
    assert!(!err.to_string().contains("cmi-s3cr3t"), "{err}");
    assert_eq!(files_under(&recordings), Vec::<String>::new());
    let hit = &upstream.hits()[0];
    assert_eq!(
        hit.target,
        "/v2/play?appid=1111112&secret=cmi-s3cr3t%26x&file=1744636800-a+b%26c.mp3"
    );

    // The same request answered with audio is saved.
    let done = fetcher.fetch(&job, &dest).await.unwrap();
    assert_eq!(done.bytes, 5000);
    assert_eq!(std::fs::read(&dest).unwrap(), audio(5000));
}

fn telecmi_job(file: &str) -> Job {
    Job {
        id: 1,
        provider: Provider::Telecmi,
        recording_id: "cmi-1".into(),
        call_id: "conv-1".into(),
        dn: None,
        source: file.into(),
        rel_path: Some(format!("telecmi/{file}")),
        state: RecordingState::Pending,
        attempts: 0,
        next_attempt_at: Utc::now(),
        last_error: None,
        bytes: None,
        sha256: None,
        start_time: None,
        end_time: None,
        event_id: None,
    }
}

#[tokio::test]
async fn telecmi_job_in_the_queue_fails_on_a_json_error_without_logging_the_secret() {
    let dir = tempdir();
    let upstream = Upstream::start(audio(5000)).await;
    // Answer after the daemon has logged `ready`, so the log capture sees what follows.
    upstream.set_delay(Duration::from_millis(500));
    upstream.script([Reply::status(
        200,
        &[("Content-Type", "text/html")],
        br#"{"code":404,"error":true,"msg":"file not found"}"#,
    )]);
    let mut env = Env::new(dir.path());
    env.set("telecmi.app_id", "1111112")
        .set("telecmi.secret", "cmi-s3cr3t")
        .set("telecmi.api_base", &upstream.base());

    // A TeleCMI CDR as the TeleCMI route journals it, with the job the processor creates.
    let journal = Journal::open(&dir.path().join("data/callhook.db"))
        .await
        .unwrap();
    let appended = journal
        .append(NewEvent {
            provider: "telecmi",
            name: "cdr".into(),
            dedupe_key: "telecmi:test-cdr".into(),
            content_type: Some("application/json".into()),
            body: bytes::Bytes::from_static(b"{}"),
            received_at: Utc::now(),
        })
        .await
        .unwrap();
    let Appended::Accepted(event_id) = appended else {
        panic!("{appended:?}")
    };
    journal
        .write_state(StateWrite {
            new_jobs: vec![NewJob {
                provider: Provider::Telecmi,
                recording_id: "cmi-1".into(),
                call_id: "conv-1".into(),
                dn: None,
                source: "rec-1.mp3".into(),
                rel_path: Some("telecmi/rec-1.mp3".into()),
                error: None,
                start_time: None,
                end_time: None,
                event_id,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    journal.close().await.unwrap();

    let daemon = ChildDaemon::spawn(&env, dir.path());
    let call = poll_call(&daemon, "telecmi", "conv-1", |c| {
        in_state(c, "cmi-1", "failed")
    })
    .await;
    let rec = recording(&call, "cmi-1").unwrap();
    assert!(
        rec["error"].as_str().unwrap().contains("file not found"),
        "{rec}"
    );
    assert_eq!(call["direction"], "unknown");
    // Permanent: asked once, not retried.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream.hits().len(), 1);
    assert!(upstream.hits()[0].target.contains("secret=cmi-s3cr3t"));
    assert_eq!(
        files_under(&dir.path().join("recordings")),
        Vec::<String>::new()
    );
    daemon.signal("TERM");
    let mut daemon = daemon;
    assert_eq!(daemon.wait(Duration::from_secs(15)), Some(0));
    let logs: Vec<String> = daemon.lines.try_iter().collect();
    assert!(
        logs.iter().any(|l| l.contains("recording download failed")),
        "{logs:#?}"
    );
    assert!(logs.iter().all(|l| !l.contains("cmi-s3cr3t")), "{logs:#?}");
}

#[tokio::test]
async fn truncated_body_is_retried_and_never_left_under_its_final_name() {
    let dir = tempdir();
    let body = audio(10_000);
    let upstream = Upstream::start(body.clone()).await;
    upstream.script([Reply::Truncated {
        declared: 10_000,
        sent: 4000,
    }]);
    let mut env = Env::new(dir.path());
    env.set("jas.api_base", &upstream.base())
        .set("jas.token", TOKEN);
    // Slow enough to look at the disk between the two attempts.
    let app = fast_app(&env, dir.path(), Duration::from_millis(1500)).await;
    let recordings = dir.path().join("recordings");

    app.post_jas(&new_recording("26", NAME, 1)).await;
    let call = app
        .wait_call("jas", "26", |c| {
            recording(c, "1").is_some_and(|r| r["error"].as_str().is_some())
        })
        .await;
    let rec = recording(&call, "1").unwrap();
    // hyper notices the short body itself; either way the attempt is transient.
    let error = rec["error"].as_str().unwrap();
    assert!(
        error.starts_with("transient") && error.contains("4000 bytes"),
        "{rec}"
    );
    if rec["state"] == "pending" {
        assert_eq!(files_under(&recordings), Vec::<String>::new());
    }
    let call = app
        .wait_call("jas", "26", |c| in_state(c, "1", "downloaded"))
        .await;
    assert_eq!(recording(&call, "1").unwrap()["sha256"], sha256(&body));
    assert_eq!(upstream.hits().len(), 2);
    assert_eq!(std::fs::read(recordings.join(REL)).unwrap(), body);
    assert_eq!(files_under(&recordings), vec![REL.to_string()]);
}

#[tokio::test]
async fn killed_mid_download_resumes_after_restart_and_the_file_ends_up_whole() {
    let dir = tempdir();
    let body = audio(600_000);
    let upstream = Upstream::start(body.clone()).await;
    upstream.script([Reply::Stall { sent: 300_000 }]);
    let mut env = Env::new(dir.path());
    env.set("jas.api_base", &upstream.base())
        .set("jas.token", TOKEN);
    let recordings = dir.path().join("recordings");
    let folder = recordings.join("jas/101");

    let daemon = ChildDaemon::spawn(&env, dir.path());
    let (status, _) = post_signed(&daemon.public, &new_recording("26", NAME, 1)).await;
    assert_eq!(status, 200);
    // Half the body is in the temp file when the daemon dies.
    wait_until(Duration::from_secs(10), || async {
        std::fs::read_dir(&folder).is_ok_and(|entries| {
            entries.filter_map(Result::ok).any(|e| {
                e.file_name().to_string_lossy().contains(".part-")
                    && e.metadata().is_ok_and(|m| m.len() > 0)
            })
        })
    })
    .await;
    daemon.signal("KILL");
    let mut daemon = daemon;
    assert_eq!(daemon.wait(Duration::from_secs(5)), None);
    assert!(!recordings.join(REL).exists());
    drop(daemon);

    let daemon = ChildDaemon::spawn(&env, dir.path());
    let call = poll_call(&daemon, "jas", "26", |c| in_state(c, "1", "downloaded")).await;
    let rec = recording(&call, "1").unwrap();
    assert_eq!(rec["bytes"], body.len());
    assert_eq!(rec["sha256"], sha256(&body));
    assert_eq!(std::fs::read(recordings.join(REL)).unwrap(), body);
    // The dead run's temp file is gone too.
    assert_eq!(files_under(&recordings), vec![REL.to_string()]);
    assert_eq!(upstream.hits().len(), 2);
}

#[tokio::test]
async fn duplicate_new_recording_downloads_once_even_across_a_restart() {
    let dir = tempdir();
    let sim = JasSim::with_token(TOKEN);
    sim.add_recording(NAME, audio(3000));
    let (_server, env) = sim_env(&sim, dir.path()).await;
    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;

    let event = new_recording("26", NAME, 1);
    assert_eq!(app.post_jas(&event).await.1["status"], "accepted");
    assert_eq!(app.post_jas(&event).await.1, json!({"status": "duplicate"}));
    app.wait_call("jas", "26", |c| in_state(c, "1", "downloaded"))
        .await;
    assert_eq!(app.post_jas(&event).await.1, json!({"status": "duplicate"}));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sim.requests(SimRoute::Recording), 1);
    app.stop().await.unwrap();

    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;
    let call = app
        .wait_call("jas", "26", |c| in_state(c, "1", "downloaded"))
        .await;
    assert_eq!(call["recordings"].as_array().unwrap().len(), 1);
    assert_eq!(app.post_jas(&event).await.1, json!({"status": "duplicate"}));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sim.requests(SimRoute::Recording), 1);
}

#[tokio::test]
async fn failed_download_is_retried_once_more_at_the_next_start() {
    let dir = tempdir();
    let sim = JasSim::with_token(TOKEN);
    sim.add_recording(NAME, audio(3000));
    sim.fail_next(SimRoute::Recording, &[503, 503, 503]);
    let (_server, mut env) = sim_env(&sim, dir.path()).await;
    env.set("recordings.max_attempts", "2");
    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;

    app.post_jas(&new_recording("26", NAME, 1)).await;
    let call = app
        .wait_call("jas", "26", |c| in_state(c, "1", "failed"))
        .await;
    assert!(
        recording(&call, "1").unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("503")
    );
    assert_eq!(sim.requests(SimRoute::Recording), 2);
    app.stop().await.unwrap();

    // One more attempt, which fails (the third 503): failed again, and not retried after.
    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;
    wait_until(Duration::from_secs(5), || async {
        sim.requests(SimRoute::Recording) == 3
    })
    .await;
    app.wait_call("jas", "26", |c| in_state(c, "1", "failed"))
        .await;
    app.stop().await.unwrap();
    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sim.requests(SimRoute::Recording), 3);
    assert!(in_state(
        &app.call("jas", "26").await.unwrap(),
        "1",
        "failed"
    ));
}

#[tokio::test]
async fn failed_download_succeeds_on_its_extra_attempt_at_the_next_start() {
    let dir = tempdir();
    let sim = JasSim::with_token(TOKEN);
    let body = audio(3000);
    sim.add_recording(NAME, body.clone());
    sim.fail_next(SimRoute::Recording, &[500]);
    let (_server, mut env) = sim_env(&sim, dir.path()).await;
    env.set("recordings.max_attempts", "1");
    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;
    app.post_jas(&new_recording("26", NAME, 1)).await;
    app.wait_call("jas", "26", |c| in_state(c, "1", "failed"))
        .await;
    app.stop().await.unwrap();

    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;
    let call = app
        .wait_call("jas", "26", |c| in_state(c, "1", "downloaded"))
        .await;
    assert_eq!(recording(&call, "1").unwrap()["error"], Value::Null);
    assert_eq!(sim.requests(SimRoute::Recording), 2);
    assert_eq!(
        std::fs::read(dir.path().join("recordings").join(REL)).unwrap(),
        body
    );
}

#[tokio::test]
async fn recordings_arriving_before_and_after_the_end_of_their_call_both_attach() {
    let dir = tempdir();
    let sim = JasSim::with_token(TOKEN);
    sim.set_participant(
        "101",
        "1",
        participant("101", "1", "26", "Ringing", "10000", "Wexternalline"),
    );
    sim.add_recording("101/during.wav", audio(1000));
    sim.add_recording("101/after.wav", audio(2000));
    let (_server, env) = sim_env(&sim, dir.path()).await;
    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;

    app.post_jas(&call_status("101", "1", 0, 1)).await;
    app.wait_call("jas", "26", |c| c["state"] == "active").await;
    app.post_jas(&new_recording("26", "101/during.wav", 1))
        .await;
    let call = app
        .wait_call("jas", "26", |c| in_state(c, "1", "downloaded"))
        .await;
    assert_eq!(call["state"], "active");
    assert_eq!(recording(&call, "1").unwrap()["dn"], "101");

    app.post_jas(&call_status("101", "1", 1, 2)).await;
    app.wait_call("jas", "26", |c| c["state"] == "ended").await;
    app.post_jas(&new_recording("26", "101/after.wav", 2)).await;
    let call = app
        .wait_call("jas", "26", |c| {
            in_state(c, "1", "downloaded") && in_state(c, "2", "downloaded")
        })
        .await;
    assert_eq!(call["state"], "ended");
    assert_eq!(call["direction"], "inbound");
    assert_eq!(call["participants"].as_array().unwrap().len(), 1);
    assert_eq!(recording(&call, "2").unwrap()["path"], "jas/101/after.wav");

    // History holds the same call with both (it is read from the database, written a moment
    // after the table changes).
    wait_until(Duration::from_secs(5), || async {
        let (_, history) = app.get_admin("/api/history").await;
        history["calls"][0]["recordings"]
            .as_array()
            .is_some_and(|r| r.len() == 2)
            && in_state(&history["calls"][0], "2", "downloaded")
    })
    .await;
    let (_, history) = app.get_admin("/api/history").await;
    let calls = history["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["recordings"].as_array().unwrap().len(), 2);
    assert_eq!(calls[0]["direction"], "inbound");
}

#[tokio::test]
async fn recording_for_a_never_seen_call_is_in_history_with_direction_unknown() {
    let dir = tempdir();
    let sim = JasSim::with_token(TOKEN);
    sim.add_recording("102/lonely.wav", audio(1500));
    let (_server, env) = sim_env(&sim, dir.path()).await;
    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;

    app.post_jas(&new_recording("999", "102/lonely.wav", 7))
        .await;
    // Nobody is on it: it ends once its grace has passed with no participant.
    let call = app
        .wait_call("jas", "999", |c| {
            in_state(c, "7", "downloaded") && c["state"] == "ended"
        })
        .await;
    assert_eq!(call["direction"], "unknown");
    assert!(same_time(&call["started_at"], &event_time(0)), "{call}");
    assert!(same_time(&call["ended_at"], &event_time(90)), "{call}");
    assert!(app.active_calls().await.is_empty());
    wait_until(Duration::from_secs(5), || async {
        let (_, history) = app.get_admin("/api/history").await;
        in_state(&history["calls"][0], "7", "downloaded")
    })
    .await;
    let (_, history) = app.get_admin("/api/history").await;
    assert_eq!(history["calls"][0]["call_id"], "999");
    assert_eq!(history["calls"][0]["direction"], "unknown");
    assert!(in_state(&history["calls"][0], "7", "downloaded"));
}

#[tokio::test]
async fn with_downloads_off_a_recording_shows_failed_and_nothing_is_fetched() {
    let dir = tempdir();
    let sim = JasSim::with_token(TOKEN);
    sim.add_recording(NAME, audio(1000));
    let (_server, mut env) = sim_env(&sim, dir.path()).await;
    env.set("recordings.enabled", "false");
    let app = TestApp::spawn(&env, dir.path()).await;
    app.post_jas(&new_recording("26", NAME, 1)).await;
    let call = app
        .wait_call("jas", "26", |c| in_state(c, "1", "failed"))
        .await;
    assert!(
        recording(&call, "1").unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("disabled")
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sim.requests(SimRoute::Recording), 0);
}

/// Polls a child daemon's Call until `check` holds.
async fn poll_call(
    daemon: &ChildDaemon,
    provider: &str,
    id: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let http = reqwest::Client::new();
    let url = format!("{}/api/calls/{provider}/{id}", daemon.admin);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Ok(resp) = http.get(&url).send().await {
            if resp.status() == 200 {
                last = resp.json().await.unwrap();
                if check(&last) {
                    return last;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("call {provider}/{id} never matched; last seen: {last:#}");
}

/// What `Upstream` answers to one request.
#[derive(Clone)]
enum Reply {
    Status {
        code: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Promises `declared` bytes of the recording, sends `sent` of them and closes.
    Truncated { declared: usize, sent: usize },
    /// Promises the whole recording, sends `sent` bytes, then holds the connection open.
    Stall { sent: usize },
    /// No length; audio for as long as the client reads (at most 1 GiB, so the test ends).
    Endless,
    /// Promises the whole recording, then sends one byte of it every `every`.
    Drip { every: Duration },
}

impl Reply {
    fn status(code: u16, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        Reply::Status {
            code,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
        }
    }
}

#[derive(Clone, Debug)]
struct Hit {
    at: Instant,
    target: String,
    authorization: Option<String>,
}

struct UpstreamState {
    /// Replies for the next requests, in order; then the recording with 200.
    script: VecDeque<Reply>,
    recording: Vec<u8>,
    delay: Duration,
    hits: Vec<Hit>,
}

/// A raw HTTP/1.1 server on loopback that answers every GET from a script.
struct Upstream {
    addr: SocketAddr,
    state: Arc<Mutex<UpstreamState>>,
}

impl Upstream {
    async fn start(recording: Vec<u8>) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(UpstreamState {
            script: VecDeque::new(),
            recording,
            delay: Duration::ZERO,
            hits: vec![],
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve_one(sock, shared.clone()));
            }
        });
        Upstream { addr, state }
    }

    /// `http://127.0.0.1:PORT/v2`.
    fn base(&self) -> String {
        format!("http://{}/v2", self.addr)
    }

    fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    fn hits(&self) -> Vec<Hit> {
        self.state.lock().unwrap().hits.clone()
    }
}

async fn serve_one(mut sock: TcpStream, state: Arc<Mutex<UpstreamState>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let target = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_string();
    let authorization = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("authorization")
            .then(|| value.trim().to_string())
    });
    let (reply, recording, delay) = {
        let mut st = state.lock().unwrap();
        st.hits.push(Hit {
            at: Instant::now(),
            target,
            authorization,
        });
        (st.script.pop_front(), st.recording.clone(), st.delay)
    };
    tokio::time::sleep(delay).await;
    let audio_head = |len: usize| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )
    };
    let _ = match reply {
        None => {
            let _ = sock.write_all(audio_head(recording.len()).as_bytes()).await;
            sock.write_all(&recording).await
        }
        Some(Reply::Status {
            code,
            headers,
            body,
        }) => {
            let mut text = format!(
                "HTTP/1.1 {code} Scripted\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                text.push_str(&format!("{k}: {v}\r\n"));
            }
            text.push_str("\r\n");
            let _ = sock.write_all(text.as_bytes()).await;
            sock.write_all(&body).await
        }
        Some(Reply::Truncated { declared, sent }) => {
            let _ = sock.write_all(audio_head(declared).as_bytes()).await;
            sock.write_all(&recording[..sent]).await
        }
        Some(Reply::Stall { sent }) => {
            let _ = sock.write_all(audio_head(recording.len()).as_bytes()).await;
            let _ = sock.write_all(&recording[..sent]).await;
            let _ = sock.flush().await;
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        }
        Some(Reply::Endless) => {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nConnection: close\r\n\r\n";
            let _ = sock.write_all(head.as_bytes()).await;
            let chunk = audio(64 * 1024);
            let mut result = Ok(());
            for _ in 0..16 * 1024 {
                result = sock.write_all(&chunk).await;
                if result.is_err() {
                    break;
                }
            }
            result
        }
        Some(Reply::Drip { every }) => {
            let _ = sock.write_all(audio_head(recording.len()).as_bytes()).await;
            let mut result = Ok(());
            for byte in recording.iter().take(200) {
                result = sock.write_all(&[*byte]).await;
                if result.is_err() {
                    break;
                }
                let _ = sock.flush().await;
                tokio::time::sleep(every).await;
            }
            result
        }
    };
    let _ = sock.shutdown().await;
}

#[tokio::test]
async fn late_recording_for_a_call_no_longer_in_memory_keeps_its_history() {
    use callhook::calls::{CallTable, Details, ParticipantKey, Provider};
    use callhook::journal::StateWrite;

    let dir = tempdir();
    // An outbound call that ended ten hours ago: stored, but not restored into memory.
    let ended = Utc::now() - chrono::Duration::hours(10);
    let table = CallTable::new(callhook::providers::DIRECTIONS);
    let key = ParticipantKey::new(Provider::Jas, "101", "1");
    let details = Details {
        call_id: "26".into(),
        status: "Dialing".into(),
        dn: Some("101".into()),
        party_number: "5148888888".into(),
        party_dn: "10000".into(),
        party_dn_type: "Wexternalline".into(),
        leg_id: Some(1),
        ..Default::default()
    };
    let started = ended - chrono::Duration::minutes(3);
    table.upsert(&key, 1, Some(started), ended);
    table.details(&key, 1, details, Some(started), ended);
    table.remove(&key, 2, Some(ended), ended);
    table.end_due(ended + callhook::calls::END_GRACE);
    let (call, _) = table
        .call_row(&callhook::calls::CallKey::new(Provider::Jas, "26"))
        .unwrap();
    assert_eq!(
        (call.state.as_str(), call.direction.as_str()),
        ("ended", "outbound")
    );
    let journal = Journal::open(&dir.path().join("data/callhook.db"))
        .await
        .unwrap();
    journal
        .write_state(StateWrite {
            participants: vec![(key.clone(), table.participant(&key))],
            calls: vec![(call.key.clone(), Some((call.clone(), ended)))],
            ..Default::default()
        })
        .await
        .unwrap();
    journal.close().await.unwrap();

    let sim = JasSim::with_token(TOKEN);
    sim.add_recording("101/late.wav", audio(1000));
    let (_server, env) = sim_env(&sim, dir.path()).await;
    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;
    assert!(app.active_calls().await.is_empty());
    let mut stream = crate::stream::open(&app, None).await;
    app.post_jas(&new_recording("26", "101/late.wav", 1)).await;
    let got = app
        .wait_call("jas", "26", |c| in_state(c, "1", "downloaded"))
        .await;
    assert_eq!(got["direction"], "outbound");
    assert_eq!(got["participants"].as_array().unwrap().len(), 1);
    assert_eq!(got["started_at"], json!(call.started_at));
    assert_eq!(got["ended_at"], json!(call.ended_at));
    // The call's own events went out when it happened: brought back from disk, it is marked
    // as stored, so the late recording makes its recording's event and nothing of the call's
    // start or end again.
    let mut kinds = vec![];
    while !kinds.contains(&"recording.ready".to_string()) {
        let (_, body) = crate::stream::next_events(&mut stream, 1).await.remove(0);
        assert_eq!(body["call"]["call_id"], "26");
        kinds.push(body["type"].as_str().unwrap().to_string());
    }
    assert_eq!(kinds, ["recording.ready"]);
}

#[tokio::test]
async fn an_expired_client_credentials_token_is_fetched_again_once() {
    let dir = tempdir();
    let sim = JasSim::with_client_credentials("cid", "csecret", "fresh-token");
    let body = audio(10_000);
    sim.add_recording(NAME, body.clone());
    let server = sim.start().await.unwrap();
    let mut env = Env::new(dir.path());
    env.set("jas.api_base", &server.base_url)
        .set("jas.client_id", "cid")
        .set("jas.client_secret", "csecret");
    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;
    // Authenticate once through a download, then let the token expire.
    sim.add_recording("101/first.wav", audio(100));
    app.post_jas(&new_recording("25", "101/first.wav", 1)).await;
    app.wait_call("jas", "25", |c| in_state(c, "1", "downloaded"))
        .await;
    let auths = sim.requests(SimRoute::Auth);
    sim.expire_token();

    app.post_jas(&new_recording("26", NAME, 2)).await;
    let call = app
        .wait_call("jas", "26", |c| in_state(c, "2", "downloaded"))
        .await;
    assert_eq!(recording(&call, "2").unwrap()["sha256"], sha256(&body));
    assert_eq!(sim.requests(SimRoute::Auth), auths + 1, "one new token");
    let rec = recording(&call, "2").unwrap();
    assert!(rec["error"].is_null(), "{rec}");
}

/// `TestApp::wait_call` with a longer bound, for tests that wait out a limit.
async fn wait_call_for(
    app: &TestApp,
    provider: &str,
    id: &str,
    bound: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + bound;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(call) = app.call(provider, id).await {
            if check(&call) {
                return call;
            }
            last = Some(call);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("call {provider}/{id} never matched within {bound:?}; last seen: {last:#?}");
}

fn jas_upstream_env(dir: &Path, upstream: &Upstream) -> Env {
    let mut env = Env::new(dir);
    env.set("jas.api_base", &upstream.base())
        .set("jas.token", TOKEN);
    env
}

#[tokio::test]
async fn two_recordings_with_one_name_keep_both_files_and_each_call_says_where() {
    let dir = tempdir();
    let first = audio(7000);
    let second: Vec<u8> = audio(9000).into_iter().rev().collect();
    let upstream = Upstream::start(second.clone()).await;
    upstream.script([Reply::status(200, &[("Content-Type", "audio/wav")], &first)]);
    let env = jas_upstream_env(dir.path(), &upstream);
    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;
    let recordings = dir.path().join("recordings");

    app.post_jas(&new_recording("25", NAME, 1)).await;
    let one = app
        .wait_call("jas", "25", |c| in_state(c, "1", "downloaded"))
        .await;
    app.post_jas(&new_recording("26", NAME, 2)).await;
    let two = app
        .wait_call("jas", "26", |c| in_state(c, "2", "downloaded"))
        .await;

    let one = recording(&one, "1").unwrap();
    let two = recording(&two, "2").unwrap();
    assert_eq!(one["path"], REL);
    let other = two["path"].as_str().unwrap();
    assert_ne!(other, REL);
    assert!(
        other.starts_with(REL.trim_end_matches(".wav")) && other.ends_with(".wav"),
        "{other}"
    );
    // Each call's hash is true of the file its path names.
    assert_eq!(std::fs::read(recordings.join(REL)).unwrap(), first);
    assert_eq!(one["sha256"], sha256(&first));
    assert_eq!(std::fs::read(recordings.join(other)).unwrap(), second);
    assert_eq!(two["sha256"], sha256(&second));
    assert_eq!(files_under(&recordings).len(), 2);
    // The same recording delivered again is still one file.
    app.post_jas(&new_recording("26", NAME, 2)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(files_under(&recordings).len(), 2);
    assert_eq!(upstream.hits().len(), 2);
}

#[tokio::test]
async fn an_endless_body_is_cut_at_max_bytes_and_nothing_is_kept() {
    let dir = tempdir();
    let upstream = Upstream::start(audio(1000)).await;
    upstream.script([Reply::Endless]);
    let mut env = jas_upstream_env(dir.path(), &upstream);
    env.set("recordings.max_bytes", "1000000");
    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;

    let started = Instant::now();
    app.post_jas(&new_recording("26", NAME, 1)).await;
    let call = app
        .wait_call("jas", "26", |c| in_state(c, "1", "failed"))
        .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let error = recording(&call, "1").unwrap()["error"].as_str().unwrap();
    assert!(error.contains("max_bytes"), "{error}");
    assert_eq!(
        files_under(&dir.path().join("recordings")),
        Vec::<String>::new()
    );
    // Not retried: it would be as large next time.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream.hits().len(), 1);
    assert!(
        app.metric("callhook_recordings_total{outcome=\"too_large\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_stalled_transfer_fails_its_attempt_and_is_retried() {
    let dir = tempdir();
    let body = audio(600_000);
    let upstream = Upstream::start(body.clone()).await;
    upstream.script([Reply::Stall { sent: 300_000 }]);
    let mut env = jas_upstream_env(dir.path(), &upstream);
    env.set("recordings.stall_timeout_secs", "1");
    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;

    app.post_jas(&new_recording("26", NAME, 1)).await;
    let call = wait_call_for(&app, "jas", "26", Duration::from_secs(10), |c| {
        in_state(c, "1", "downloaded")
    })
    .await;
    assert_eq!(recording(&call, "1").unwrap()["sha256"], sha256(&body));
    assert_eq!(upstream.hits().len(), 2);
    assert!(
        app.metric("callhook_recordings_total{outcome=\"stalled\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn four_drips_are_cut_by_the_deadline_and_do_not_stall_the_queue() {
    let dir = tempdir();
    let body = audio(5000);
    let upstream = Upstream::start(body.clone()).await;
    // One byte every 300 ms: never stalled for 1 s, never done either.
    upstream.script((0..4).map(|_| Reply::Drip {
        every: Duration::from_millis(300),
    }));
    let mut env = jas_upstream_env(dir.path(), &upstream);
    env.set("recordings.stall_timeout_secs", "1")
        .set("recordings.download_timeout_secs", "2")
        .set("recordings.concurrency", "4");
    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;

    let started = Instant::now();
    for i in 1..=4 {
        app.post_jas(&new_recording(
            &format!("2{i}"),
            &format!("101/drip-{i}.wav"),
            i,
        ))
        .await;
    }
    wait_until(Duration::from_secs(5), || async {
        upstream.hits().len() >= 4
    })
    .await;
    app.post_jas(&new_recording("30", "101/fifth.wav", 5)).await;
    wait_call_for(&app, "jas", "30", Duration::from_secs(10), |c| {
        in_state(c, "5", "downloaded")
    })
    .await;
    for i in 1..=4 {
        let id = i.to_string();
        let call = wait_call_for(
            &app,
            "jas",
            &format!("2{i}"),
            Duration::from_secs(10),
            |c| in_state(c, &id, "downloaded"),
        )
        .await;
        assert_eq!(recording(&call, &id).unwrap()["sha256"], sha256(&body));
    }
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    assert!(
        app.metric("callhook_recordings_total{outcome=\"timeout\"}")
            .await
            >= 4.0
    );
}

#[tokio::test]
async fn a_symbolic_link_below_the_recordings_folder_is_never_followed() {
    let dir = tempdir();
    let upstream = Upstream::start(audio(3000)).await;
    let env = jas_upstream_env(dir.path(), &upstream);
    let recordings = dir.path().join("recordings");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(recordings.join("jas")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, recordings.join("jas/101")).unwrap();
    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;

    app.post_jas(&new_recording("26", NAME, 1)).await;
    let call = app
        .wait_call("jas", "26", |c| in_state(c, "1", "failed"))
        .await;
    let error = recording(&call, "1").unwrap()["error"].as_str().unwrap();
    assert!(error.contains("symbolic link"), "{error}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
}

/// Every file under `dir` with its bytes.
fn contents_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    files_under(dir)
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(dir.join(&f)).unwrap();
            (f, bytes)
        })
        .collect()
}

#[tokio::test]
async fn a_symbolic_link_planted_before_a_resumed_download_is_refused_and_nothing_outside_changes()
{
    let dir = tempdir();
    let body = audio(600_000);
    let upstream = Upstream::start(body.clone()).await;
    upstream.script([Reply::Stall { sent: 300_000 }]);
    let env = jas_upstream_env(dir.path(), &upstream);
    let recordings = dir.path().join("recordings");
    let folder = recordings.join("jas/101");

    // The first run dies with the job `downloading` and half the body in its temp file.
    let daemon = ChildDaemon::spawn(&env, dir.path());
    let (status, _) = post_signed(&daemon.public, &new_recording("26", NAME, 1)).await;
    assert_eq!(status, 200);
    let part = || {
        std::fs::read_dir(&folder)
            .ok()?
            .filter_map(Result::ok)
            .find(|e| {
                e.file_name().to_string_lossy().contains(".part-")
                    && e.metadata().is_ok_and(|m| m.len() > 0)
            })
    };
    wait_until(Duration::from_secs(10), || async { part().is_some() }).await;
    daemon.signal("KILL");
    let mut daemon = daemon;
    assert_eq!(daemon.wait(Duration::from_secs(5)), None);
    drop(daemon);

    // Before the restart the job's folder becomes a link to a folder outside, holding a file
    // under the recording's final name and one under the dead attempt's temp name: a resume
    // that followed the link would take the first as already downloaded, remove the second as
    // stale, or write the recording there.
    let part_name = part().unwrap().file_name();
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let final_name = Path::new(NAME).file_name().unwrap();
    std::fs::write(outside.join(final_name), b"not this call's recording").unwrap();
    std::fs::write(outside.join(&part_name), b"someone else's file").unwrap();
    std::fs::rename(&folder, dir.path().join("moved-away")).unwrap();
    std::os::unix::fs::symlink(&outside, &folder).unwrap();
    let before = contents_under(&outside);

    let daemon = ChildDaemon::spawn(&env, dir.path());
    let call = poll_call(&daemon, "jas", "26", |c| {
        in_state(c, "1", "failed") || in_state(c, "1", "downloaded")
    })
    .await;
    let rec = recording(&call, "1").unwrap();
    assert_eq!(rec["state"], "failed", "{rec}");
    let error = rec["error"].as_str().unwrap();
    assert!(
        error.contains("symbolic link") && error.contains("jas/101"),
        "{rec}"
    );
    assert!(rec["sha256"].is_null(), "{rec}");
    assert_eq!(contents_under(&outside), before);
    // Nothing was written anywhere else below recordings.dir either: only the link is there.
    assert_eq!(files_under(&recordings), ["jas/101"]);
}

#[tokio::test]
async fn redirects_go_to_the_same_host_but_never_to_the_admin_listener() {
    let dir = tempdir();
    let body = audio(4000);
    let upstream = Upstream::start(body.clone()).await;
    let env = jas_upstream_env(dir.path(), &upstream);
    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;
    let recordings = dir.path().join("recordings");

    // To the admin listener (loopback, another port): refused, nothing saved, not retried.
    let metrics = format!("{}/metrics", app.admin);
    upstream.script([Reply::status(302, &[("Location", metrics.as_str())], b"")]);
    app.post_jas(&new_recording("25", "101/a.wav", 1)).await;
    let call = app
        .wait_call("jas", "25", |c| in_state(c, "1", "failed"))
        .await;
    let error = recording(&call, "1").unwrap()["error"].as_str().unwrap();
    assert!(error.contains("redirect"), "{error}");
    assert_eq!(files_under(&recordings), Vec::<String>::new());

    // To the same host and port: followed.
    let same = format!("{}/elsewhere/b.wav", upstream.base());
    upstream.script([Reply::status(302, &[("Location", same.as_str())], b"")]);
    app.post_jas(&new_recording("26", "101/b.wav", 2)).await;
    let call = app
        .wait_call("jas", "26", |c| in_state(c, "2", "downloaded"))
        .await;
    assert_eq!(recording(&call, "2").unwrap()["sha256"], sha256(&body));
    assert_eq!(upstream.hits().len(), 3);
    assert_eq!(upstream.hits()[2].target, "/v2/elsewhere/b.wav");
}

#[tokio::test]
async fn five_redirects_are_followed_and_a_sixth_fails_the_job_as_too_many() {
    let dir = tempdir();
    let body = audio(5000);
    let upstream = Upstream::start(body.clone()).await;
    let env = jas_upstream_env(dir.path(), &upstream);
    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;
    // Each hop to the same host and port (the only redirect loopback may take).
    let hops = |n: usize, tag: &str| {
        (1..=n)
            .map(|i| {
                let to = format!("{}/hop/{tag}/{i}", upstream.base());
                Reply::status(302, &[("Location", to.as_str())], b"")
            })
            .collect::<Vec<_>>()
    };

    upstream.script(hops(5, "a"));
    app.post_jas(&new_recording("25", "101/a.wav", 1)).await;
    let call = wait_call_for(&app, "jas", "25", Duration::from_secs(10), |c| {
        in_state(c, "1", "downloaded") || in_state(c, "1", "failed")
    })
    .await;
    let rec = recording(&call, "1").unwrap();
    assert_eq!(rec["state"], "downloaded", "{rec}");
    assert_eq!(rec["sha256"], sha256(&body));
    let targets: Vec<String> = upstream.hits().into_iter().map(|h| h.target).collect();
    assert_eq!(targets.len(), 6, "{targets:?}");
    assert_eq!(targets[5], "/v2/hop/a/5");

    upstream.script(hops(6, "b"));
    app.post_jas(&new_recording("26", "101/b.wav", 2)).await;
    let call = wait_call_for(&app, "jas", "26", Duration::from_secs(10), |c| {
        in_state(c, "2", "downloaded") || in_state(c, "2", "failed")
    })
    .await;
    let rec = recording(&call, "2").unwrap();
    assert_eq!(rec["state"], "failed", "{rec}");
    let error = rec["error"].as_str().unwrap();
    assert!(error.contains("more than 5 redirects"), "{error}");
    // The sixth redirect was not followed, and a redirect loop is not retried.
    let targets: Vec<String> = upstream.hits().into_iter().map(|h| h.target).collect();
    assert_eq!(targets.len(), 12, "{targets:?}");
    assert_eq!(targets[11], "/v2/hop/b/5");
    assert_eq!(
        files_under(&dir.path().join("recordings")),
        ["jas/101/a.wav"]
    );
}

#[tokio::test]
async fn a_255_byte_name_is_downloaded() {
    let dir = tempdir();
    let body = audio(2000);
    let upstream = Upstream::start(body.clone()).await;
    let env = jas_upstream_env(dir.path(), &upstream);
    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;
    let file = format!("{}.wav", "n".repeat(251));
    assert_eq!(file.len(), 255);
    let name = format!("101/{file}");

    app.post_jas(&new_recording("26", &name, 1)).await;
    let call = app
        .wait_call("jas", "26", |c| in_state(c, "1", "downloaded"))
        .await;
    assert_eq!(
        recording(&call, "1").unwrap()["path"],
        format!("jas/{name}")
    );
    assert_eq!(
        std::fs::read(dir.path().join("recordings/jas").join(&name)).unwrap(),
        body
    );
}

#[tokio::test]
async fn a_telecmi_file_name_on_two_calls_downloads_for_both_under_distinct_names() {
    let dir = tempdir();
    let first = audio(3000);
    let second: Vec<u8> = audio(4000).into_iter().rev().collect();
    let upstream = Upstream::start(second.clone()).await;
    upstream.script([Reply::status(
        200,
        &[("Content-Type", "audio/mpeg")],
        &first,
    )]);
    let mut env = Env::new(dir.path());
    env.set("telecmi.path_token", "tok-123")
        .set("telecmi.app_id", "1111112")
        .set("telecmi.secret", "cmi-s3cr3t")
        .set("telecmi.api_base", &upstream.base());
    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;
    let file = "1744636800-same.mp3";
    let cdr = |conv: &str| {
        json!({"type": "cdr", "leg": "a", "cmiuuid": conv, "conversation_uuid": conv,
               "status": "answered", "direction": "inbound", "user": "101_1111112",
               "time": 1_700_000_000_000i64, "answeredsec": 5, "record": true,
               "filename": file})
        .to_string()
    };
    let post = |body: String| {
        let http = app.http.clone();
        let url = format!("{}/webhooks/telecmi/tok-123", app.public);
        async move {
            let resp = http
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
    };

    post(cdr("conv-1")).await;
    let one = app
        .wait_call("telecmi", "conv-1", |c| in_state(c, file, "downloaded"))
        .await;
    post(cdr("conv-2")).await;
    let two = app
        .wait_call("telecmi", "conv-2", |c| in_state(c, file, "downloaded"))
        .await;

    let recordings = dir.path().join("recordings");
    let one = recording(&one, file).unwrap();
    let two = recording(&two, file).unwrap();
    assert_eq!(one["path"], format!("telecmi/{file}"));
    let other = two["path"].as_str().unwrap();
    assert!(
        other.starts_with("telecmi/1744636800-same.") && other.ends_with(".mp3"),
        "{other}"
    );
    assert_ne!(other, one["path"].as_str().unwrap());
    assert_eq!(
        std::fs::read(recordings.join(format!("telecmi/{file}"))).unwrap(),
        first
    );
    assert_eq!(one["sha256"], sha256(&first));
    assert_eq!(std::fs::read(recordings.join(other)).unwrap(), second);
    assert_eq!(two["sha256"], sha256(&second));
    // The first call still shows its own file.
    let again = app.call("telecmi", "conv-1").await.unwrap();
    assert_eq!(
        recording(&again, file).unwrap()["path"],
        format!("telecmi/{file}")
    );
}

/// A TeleCMI call with a recording, as its call events reach a receiver (SPEC §7): in the
/// call's order, the recording last, each signed (checked by the receiver's verifier).
#[tokio::test]
async fn a_telecmi_call_with_a_recording_reaches_an_endpoint_as_its_events_in_order() {
    use crate::events_out::{Receiver, endpoint, types};
    let dir = tempdir();
    let upstream = Upstream::start(audio(3000)).await;
    let (receiver, url) = Receiver::start(0).await;
    let mut env = Env::new(dir.path());
    env.set("telecmi.path_token", "tok-123")
        .set("telecmi.app_id", "1111112")
        .set("telecmi.secret", "cmi-s3cr3t")
        .set("telecmi.api_base", &upstream.base());
    let mut settings: Settings = env.settings(dir.path());
    settings.outbound.endpoints = vec![endpoint(&url)];
    let app = TestApp::spawn_settings(settings).await;
    let conv = "conv-events";
    let file = "1744636800-events.mp3";
    let leg = |leg: &str, id: &str, status: &str, t: i64| {
        json!({"type": "event", "leg": leg, "cmiuuid": id, "conversation_uuid": conv,
               "status": status, "direction": "inbound", "user": "101_1111112",
               "from": 9200000000u64, "to": 9100000000u64,
               "time": 1_700_000_000_000i64 + t * 1000})
    };
    let cdr = json!({"type": "cdr", "leg": "a", "cmiuuid": conv, "conversation_uuid": conv,
        "status": "answered", "direction": "inbound", "user": "101_1111112",
        "time": 1_700_000_010_000i64, "answeredsec": 5, "record": true, "filename": file});
    for body in [
        leg("a", conv, "started", 0),
        leg("a", conv, "answered", 2),
        leg("a", conv, "hangup", 9),
        cdr,
    ] {
        let resp = app
            .http
            .post(format!("{}/webhooks/telecmi/tok-123", app.public))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let got = receiver.wait_for(7).await;
    assert_eq!(
        types(&got),
        [
            "call.started",
            "participant.joined",
            "call.answered",
            "participant.updated",
            "participant.left",
            "call.ended",
            "recording.ready"
        ]
    );
    let last = &got[6].1;
    assert_eq!(last["type"], "recording.ready");
    assert_eq!(last["provider"], "telecmi");
    assert_eq!(last["recording"]["id"], file);
    assert_eq!(last["recording"]["state"], "downloaded");
    assert_eq!(last["call"]["state"], "ended");
    assert_eq!(last["call"]["direction"], "inbound");
    app.stop().await.unwrap();
}

/// The download jobs through the admin API (SPEC §4): a job that failed every attempt is listed
/// with its error, Retry makes it due again from its first attempt, it downloads, and the file
/// is served with `Range`, never from outside `recordings.dir`.
#[tokio::test]
async fn a_failed_job_is_listed_retried_on_request_and_its_file_served_by_range() {
    let dir = tempdir();
    let body = audio(3000);
    let upstream = Upstream::start(body.clone()).await;
    upstream.script([
        Reply::status(500, &[], b"down"),
        Reply::status(500, &[], b"down"),
    ]);
    let mut env = Env::new(dir.path());
    env.set("telecmi.path_token", "tok-123")
        .set("telecmi.app_id", "1111112")
        .set("telecmi.secret", "cmi-s3cr3t")
        .set("telecmi.api_base", &upstream.base())
        .set("recordings.max_attempts", "2");
    let app = fast_app(&env, dir.path(), Duration::from_millis(10)).await;
    let file = "1744636800-retry.mp3";
    let cdr = json!({"type": "cdr", "leg": "a", "cmiuuid": "conv-r", "conversation_uuid": "conv-r",
        "status": "answered", "direction": "inbound", "user": "101_1111112",
        "time": 1_700_000_000_000i64, "answeredsec": 5, "record": true, "filename": file});
    let resp = app
        .http
        .post(format!("{}/webhooks/telecmi/tok-123", app.public))
        .header("content-type", "application/json")
        .body(cdr.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    app.wait_call("telecmi", "conv-r", |c| in_state(c, file, "failed"))
        .await;
    // The call in memory shows the outcome as soon as it is applied; the job's row is written
    // just after.
    wait_until(Duration::from_secs(5), || async {
        app.get_admin("/api/recordings/jobs?state=failed").await.1["jobs"][0]["attempts"] == 2
    })
    .await;
    let (status, listed) = app.get_admin("/api/recordings/jobs?state=failed").await;
    assert_eq!(status, 200, "{listed}");
    let job = listed["jobs"][0].clone();
    assert_eq!(
        (&job["recording_id"], &job["attempts"], &job["path"]),
        (&json!(file), &json!(2), &json!(format!("telecmi/{file}"))),
        "{job}"
    );
    assert!(job["last_error"].as_str().unwrap().contains("500"), "{job}");
    let (_, none) = app.get_admin("/api/recordings/jobs?state=downloaded").await;
    assert_eq!(none["jobs"], json!([]));

    let post = |path: String| {
        let http = app.http.clone();
        let url = format!("{}{path}", app.admin);
        async move {
            let r = http.post(url).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or_default(),
            )
        }
    };
    let id = job["id"].as_i64().unwrap();
    let (status, reply) = post(format!("/api/recordings/jobs/{id}/retry")).await;
    assert_eq!(
        (status, &reply["state"]),
        (200, &json!("pending")),
        "{reply}"
    );
    // The upstream answers now: the job downloads and its call shows the file.
    app.wait_call("telecmi", "conv-r", |c| in_state(c, file, "downloaded"))
        .await;
    wait_until(Duration::from_secs(5), || async {
        app.get_admin("/api/recordings/jobs?state=downloaded")
            .await
            .1["jobs"][0]["id"]
            == id
    })
    .await;
    let (status, reply) = post(format!("/api/recordings/jobs/{id}/retry")).await;
    assert_eq!(status, 400, "only a failed job is retried: {reply}");
    assert!(reply["error"].as_str().unwrap().contains("downloaded"));
    assert_eq!(
        post("/api/recordings/jobs/999999/retry".into()).await.0,
        404
    );
    assert_eq!(post("/api/recordings/jobs/x/retry".into()).await.0, 400);
    let (status, reply) = app.get_admin("/api/recordings/jobs?state=done").await;
    assert_eq!(status, 400);
    assert!(reply["error"].as_str().unwrap().contains("`state`"));

    // The file, whole and by range, as the page's player asks for it.
    let url = format!("{}/api/recordings/telecmi/{file}", app.admin);
    let whole = app.http.get(&url).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["content-type"], "audio/mpeg");
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    assert_eq!(whole.bytes().await.unwrap().as_ref(), &body[..]);
    let part = app
        .http
        .get(&url)
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 100-199/{}", body.len()).as_str()
    );
    assert_eq!(part.bytes().await.unwrap().as_ref(), &body[100..200]);
    let past = app
        .http
        .get(&url)
        .header("range", format!("bytes={}-", body.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(past.status(), 416);
    // Nothing outside the provider's folder, and no link followed.
    std::fs::write(dir.path().join("secret.txt"), "no").unwrap();
    std::os::unix::fs::symlink(
        dir.path().join("secret.txt"),
        dir.path().join("recordings/telecmi/link.mp3"),
    )
    .unwrap();
    for (path, status) in [
        ("telecmi/..%2F..%2Fsecret.txt", 400),
        ("telecmi/link.mp3", 404),
        ("telecmi/missing.mp3", 404),
        ("nope/x.mp3", 400),
    ] {
        let r = app
            .http
            .get(format!("{}/api/recordings/{path}", app.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{path}");
    }
    app.stop().await.unwrap();
}
