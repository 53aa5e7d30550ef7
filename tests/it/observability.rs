//! What an operator watches: /metrics from start-up, /readyz, request ids.

use crate::common::*;
use callhook::providers::jas::verify::sign;
use serde_json::{Value, json};

#[tokio::test]
async fn every_series_is_exported_from_start_and_labels_carry_no_numbers() {
    // A daemon of its own process: the metrics registry is process-wide, and the other tests'
    // daemons in this binary would already have moved the series that must read zero here.
    let dir = tempdir();
    let daemon = ChildDaemon::spawn(&Env::new(dir.path()), dir.path());
    let http = reqwest::Client::new();
    let metrics = || async {
        let resp = http
            .get(format!("{}/metrics", daemon.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    };
    let text = metrics().await;
    for series in [
        "callhook_events_total{",
        "callhook_active_calls{",
        "callhook_upstream_requests_total{",
        "callhook_upstream_request_seconds",
        "callhook_recordings_total{",
        "callhook_recording_queue_depth",
        "callhook_ack_seconds",
        "callhook_journal_batch_size",
        "callhook_journal_commit_seconds",
        "callhook_journal_sync_seconds",
        "callhook_lookups_total{",
        "callhook_lookups_waiting{",
        "callhook_event_field_warnings_total{",
    ] {
        assert!(
            text.contains(series),
            "{series} missing from /metrics:\n{text}"
        );
    }
    // Every provider/field an event may be repaired in, at zero before the first event.
    for (provider, field) in [
        ("jas", "timestamp"),
        ("jas", "start_time"),
        ("jas", "end_time"),
        ("telecmi", "time"),
    ] {
        let series = format!(
            "callhook_event_field_warnings_total{{provider=\"{provider}\",field=\"{field}\"}}"
        );
        assert_eq!(metric_in(&text, &series), 0.0, "{series}");
    }

    let body = call_status("5148888888", "172", 0, 1);
    let resp = http
        .post(format!("{}/webhooks/jas", daemon.public))
        .header("content-type", "application/json")
        .header("X-SIG", sign(SECRET.as_bytes(), body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = metrics().await;
    assert_eq!(
        metric_in(
            &text,
            r#"callhook_events_total{provider="jas",event="call_status",outcome="accepted"}"#
        ),
        1.0,
        "{text}"
    );
    assert!(!text.contains("5148888888"), "a number became a label");
}

#[tokio::test]
async fn request_ids_are_honoured_or_generated() {
    let dir = tempdir();
    let app = TestApp::spawn(&Env::new(dir.path()), dir.path()).await;
    let r = app
        .http
        .get(format!("{}/healthz", app.public))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let r = app
        .http
        .get(format!("{}/api/calls", app.admin))
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a generated UUID: {id}");
}

#[tokio::test]
async fn readyz_does_not_wait_for_webhook_registration() {
    // SPEC §4/§5 changed: readiness used to wait for registration; now it is reported beside it.
    let sim = callhook::sim::JasSim::with_token(TOKEN);
    // Registration is answered 503 a few times (more than one request's own retries) first.
    sim.fail_next(callhook::sim::SimRoute::Register, &[503; 6]);
    let server = sim.start().await.unwrap();
    let dir = tempdir();
    let mut env = Env::new(dir.path()).with_sim(&server.base_url);
    env.set("jas.register", "true")
        .set("jas.callback_url", "http://127.0.0.1:1/webhooks/jas")
        .set("jas.events", "call_status");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let app = callhook::app::Application::build(env.settings(dir.path()))
        .await
        .unwrap();
    let admin = format!("http://{}", app.admin_addr());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let http = reqwest::Client::new();
    // Ready at once, while registration is being retried: it says what it waits for.
    let mut seen = vec![];
    let mut pending_after_503 = false;
    for _ in 0..200 {
        let r = http.get(format!("{admin}/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            (&body["ready"], &body["journal"]),
            (&json!(true), &json!("ok")),
            "{body}"
        );
        let registration = body["registration"].as_str().unwrap().to_string();
        if registration.starts_with("pending: ")
            && sim.requests(callhook::sim::SimRoute::Register) > 0
        {
            pending_after_503 = true;
        }
        if seen.last() != Some(&registration) {
            seen.push(registration.clone());
        }
        if registration == "registered" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen.last().map(String::as_str),
        Some("registered"),
        "{seen:?}"
    );
    assert!(pending_after_503, "{seen:?}");
    assert!(sim.requests(callhook::sim::SimRoute::Register) > 6);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
