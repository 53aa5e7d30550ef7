//! The JAS endpoint as a provider sees it (§3) and the call table as an operator sees it (§4, §5):
//! the real daemon on port 0 against the simulated JAS API.

use std::time::Duration;

use crate::common::*;
use callhook::sim::{JasSim, SimRoute};
use serde_json::{Value, json};

#[tokio::test]
async fn every_reply_code_and_bad_input_changes_nothing() {
    let dir = tempdir();
    let mut env = Env::new(dir.path());
    env.set("server.max_body_bytes", "2048");
    let app = TestApp::spawn(&env, dir.path()).await;
    let good = call_status("101", "1", 0, 1);

    // 401: missing, wrong, malformed signature.
    let (s, b) = app.post_jas_with(&good, None).await;
    assert_eq!(
        (s, b["error"].as_str().unwrap()),
        (401, "missing X-SIG header")
    );
    let wrong = sign_with("other-secret", &good);
    assert_eq!(app.post_jas_with(&good, Some(&wrong)).await.0, 401);
    assert_eq!(app.post_jas_with(&good, Some("nothex")).await.0, 401);

    // 400: signed but not JSON, missing fields, bad entity; the message names the field.
    for (body, field) in [
        ("not json".to_string(), "JSON"),
        (json!({"data": {}}).to_string(), "eventName"),
        (
            json!({"eventName": "call_status", "data": {"event": {"entity": "/callcontrol/101/people/1", "event_type": 0}, "sequence": 1}}).to_string(),
            "data.event.entity",
        ),
        (
            json!({"eventName": "call_status", "data": {"event": {"entity": "/callcontrol/101/participants/1", "event_type": 0}}}).to_string(),
            "data.sequence",
        ),
        (
            json!({"eventName": "new_recording", "data": {"call_id": "1"}}).to_string(),
            "data.recording_url",
        ),
    ] {
        let (s, b) = app.post_jas(&body).await;
        assert_eq!(s, 400, "{body}");
        assert!(b["error"].as_str().unwrap().contains(field), "{b} should name {field}");
    }

    // 413 over max_body_bytes, even when signed.
    let big = json!({"eventName": "x", "pad": "a".repeat(4096)}).to_string();
    let (s, b) = app.post_jas(&big).await;
    assert_eq!(s, 413);
    assert!(b["error"].as_str().unwrap().contains("2048"));

    // Nothing of the above reached the call table or history.
    assert!(app.active_calls().await.is_empty());
    let (_, hist) = app.get_admin("/api/history").await;
    assert_eq!(hist["calls"], json!([]));

    // 200 accepted with the journal id, then duplicate; unknown events are ignored.
    let (s, b) = app.post_jas(&good).await;
    assert_eq!(s, 200);
    assert_eq!(b["status"], "accepted");
    assert!(b["id"].as_str().is_some_and(|id| !id.is_empty()), "{b}");
    assert_eq!(
        app.post_jas(&good).await,
        (200, json!({"status": "duplicate"}))
    );
    let unknown = json!({"eventName": "brand_new_event", "data": {}}).to_string();
    assert_eq!(
        app.post_jas(&unknown).await,
        (200, json!({"status": "ignored"}))
    );
    assert_eq!(
        app.post_jas(&unknown).await,
        (200, json!({"status": "duplicate"}))
    );

    // The header name is case-insensitive and hex may be upper case.
    let other = call_status("101", "1", 0, 2);
    let sig = sign_with(SECRET, &other).to_uppercase();
    let resp = app
        .http
        .post(format!("{}/webhooks/jas", app.public))
        .header("x-sig", sig)
        .body(other)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // /healthz on the public listener; the admin API is not reachable there.
    let r = app
        .http
        .get(format!("{}/healthz", app.public))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (200, "ok".into())
    );
    let r = app
        .http
        .get(format!("{}/api/calls", app.public))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    app.stop().await.unwrap();
}

fn sign_with(secret: &str, body: &str) -> String {
    callhook::providers::jas::verify::sign(secret.as_bytes(), body.as_bytes())
}

#[tokio::test]
async fn no_secret_configured_answers_401() {
    let dir = tempdir();
    let mut env = Env::new(dir.path());
    env.0.remove("CALLHOOK__JAS__WEBHOOK_SECRET");
    let app = TestApp::spawn(&env, dir.path()).await;
    let body = call_status("101", "1", 0, 1);
    let (s, _) = app.post_jas(&body).await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn secret_rotation_accepts_both() {
    let dir = tempdir();
    let mut env = Env::new(dir.path());
    env.set(
        "jas.webhook_secret",
        &format!(r#"["old-secret", "{SECRET}"]"#),
    );
    let app = TestApp::spawn(&env, dir.path()).await;
    let a = call_status("101", "1", 0, 1);
    let b = call_status("101", "1", 0, 2);
    assert_eq!(
        app.post_jas_with(&a, Some(&sign_with("old-secret", &a)))
            .await
            .0,
        200
    );
    assert_eq!(app.post_jas(&b).await.0, 200);
}

async fn sim_app(sim: &JasSim) -> (tempfile::TempDir, callhook::sim::SimServer, TestApp) {
    let server = sim.start().await.unwrap();
    let dir = tempdir();
    let env = Env::new(dir.path()).with_sim(&server.base_url);
    let app = TestApp::spawn(&env, dir.path()).await;
    (dir, server, app)
}

#[tokio::test]
async fn outbound_call_from_dialing_toward_an_external_line() {
    let sim = JasSim::new();
    let (_dir, _server, app) = sim_app(&sim).await;
    sim.set_participant(
        "101",
        "172",
        participant("101", "172", "26", "Dialing", "10000", "Wexternalline"),
    );
    app.post_jas(&call_status("101", "172", 0, 518)).await;
    let call = app
        .wait_call("jas", "26", |c| {
            c["participants"].as_array().is_some_and(|p| !p.is_empty())
        })
        .await;
    assert_eq!(call["direction"], "outbound");
    assert_eq!(call["state"], "active");
    assert_eq!(call["participants"][0]["party_number"], "5148888888");
    assert_eq!(call["participants"][0]["status"], "Dialing");

    sim.set_participant(
        "101",
        "172",
        participant("101", "172", "26", "Connected", "10000", "Wexternalline"),
    );
    app.post_jas(&call_status("101", "172", 0, 520)).await;
    app.wait_call("jas", "26", |c| {
        c["participants"][0]["status"] == "Connected"
    })
    .await;
    let active = app.active_calls().await;
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["direction"], "outbound", "first status decides");

    app.post_jas(&call_status("101", "172", 1, 521)).await;
    let call = app.wait_call("jas", "26", |c| c["state"] == "ended").await;
    assert_eq!(call["direction"], "outbound");
    assert!(call["ended_at"].is_string());
    assert!(app.active_calls().await.is_empty());
    wait_until(Duration::from_secs(5), || async {
        app.get_admin("/api/history").await.1["calls"][0]["call_id"] == "26"
    })
    .await;
}

#[tokio::test]
async fn inbound_call_rings_a_local_dn() {
    let sim = JasSim::new();
    let (_dir, _server, app) = sim_app(&sim).await;
    sim.set_participant(
        "102",
        "5",
        participant("102", "5", "40", "Ringing", "10000", "Wexternalline"),
    );
    app.post_jas(&call_status("102", "5", 0, 10)).await;
    let call = app
        .wait_call("jas", "40", |c| {
            c["participants"].as_array().is_some_and(|p| !p.is_empty())
        })
        .await;
    assert_eq!(call["direction"], "inbound");
}

#[tokio::test]
async fn internal_call_between_extensions() {
    let sim = JasSim::new();
    let (_dir, _server, app) = sim_app(&sim).await;
    sim.set_participant(
        "101",
        "1",
        participant("101", "1", "50", "Dialing", "102", "Wextension"),
    );
    sim.set_participant(
        "102",
        "2",
        participant("102", "2", "50", "Ringing", "101", "Wextension"),
    );
    app.post_jas(&call_status("101", "1", 0, 1)).await;
    app.post_jas(&call_status("102", "2", 0, 2)).await;
    let call = app
        .wait_call("jas", "50", |c| {
            c["participants"].as_array().is_some_and(|p| p.len() == 2)
        })
        .await;
    assert_eq!(call["direction"], "internal");
    // The call ends only when its last participant leaves.
    app.post_jas(&call_status("101", "1", 1, 3)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.call("jas", "50").await.unwrap()["state"], "active");
    app.post_jas(&call_status("102", "2", 1, 4)).await;
    app.wait_call("jas", "50", |c| c["state"] == "ended").await;
}

#[tokio::test]
async fn lookup_403_is_not_tracked_404_is_gone_503_is_retried() {
    let sim = JasSim::new();
    let (_dir, _server, app) = sim_app(&sim).await;

    sim.forbid_participant("201", "1");
    sim.set_participant(
        "202",
        "2",
        participant("202", "2", "61", "Ringing", "10000", "Wexternalline"),
    );
    // 403: acknowledged, logged, not tracked.
    let (s, _) = app.post_jas(&call_status("201", "1", 0, 1)).await;
    assert_eq!(s, 200);
    // 404: already gone, nothing tracked.
    let (s, _) = app.post_jas(&call_status("203", "3", 0, 2)).await;
    assert_eq!(s, 200);
    wait_until(Duration::from_secs(5), || async {
        sim.requests(SimRoute::Participant) >= 2
    })
    .await;

    // 503 twice, then the answer: tracked after retries; the ack never waited for it.
    sim.fail_next(SimRoute::Participant, &[503, 503]);
    let started = std::time::Instant::now();
    let (s, _) = app.post_jas(&call_status("202", "2", 0, 3)).await;
    assert_eq!(s, 200);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "ack waited for the lookup"
    );
    let call = app
        .wait_call("jas", "61", |c| {
            c["participants"].as_array().is_some_and(|p| !p.is_empty())
        })
        .await;
    assert_eq!(call["direction"], "inbound");

    let active = app.active_calls().await;
    assert_eq!(
        active.len(),
        1,
        "only the visible participant is tracked: {active:#?}"
    );
    assert!(app.call("jas", "201:1").await.is_none());
}

#[tokio::test]
async fn late_insert_and_late_lookup_after_remove_do_not_revive() {
    let sim = JasSim::new();
    let (_dir, _server, app) = sim_app(&sim).await;
    sim.set_participant(
        "101",
        "9",
        participant("101", "9", "70", "Dialing", "10000", "Wexternalline"),
    );
    sim.set_delay(SimRoute::Participant, Duration::from_millis(300));
    // The insert's lookup is still in flight when the remove arrives.
    app.post_jas(&call_status("101", "9", 0, 100)).await;
    app.post_jas(&call_status("101", "9", 1, 102)).await;
    // An older update delivered late.
    app.post_jas(&call_status("101", "9", 0, 101)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let call = app.wait_call("jas", "70", |c| c["state"] == "ended").await;
    assert!(call["participants"][0]["left_at"].is_string());
    assert!(
        app.active_calls().await.is_empty(),
        "a removed participant came back"
    );
    assert_eq!(
        sim.requests(SimRoute::Participant),
        1,
        "the late older insert started a lookup"
    );
}

#[tokio::test]
async fn without_lookups_each_participant_is_its_own_call() {
    let dir = tempdir();
    let env = Env::new(dir.path());
    let app = TestApp::spawn(&env, dir.path()).await;
    app.post_jas(&call_status("101", "172", 0, 1)).await;
    let call = app.wait_call("jas", "101:172", |_| true).await;
    assert_eq!(call["direction"], "unknown");
    assert_eq!(call["participants"][0]["dn"], "101");
    assert_eq!(call["participants"][0]["participant_id"], "172");
    app.post_jas(&call_status("101", "172", 1, 2)).await;
    app.wait_call("jas", "101:172", |c| c["state"] == "ended")
        .await;
}

#[tokio::test]
async fn admin_token_guards_everything_but_healthz() {
    let dir = tempdir();
    let mut env = Env::new(dir.path());
    env.set("admin.token", "adm1n");
    let app = TestApp::spawn(&env, dir.path()).await;
    for path in [
        "/api/calls",
        "/api/history",
        "/metrics",
        "/readyz",
        "/api/calls/jas/1",
    ] {
        let r = app
            .http
            .get(format!("{}{}", app.admin, path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = app
            .http
            .get(format!("{}{}", app.admin, path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = app
        .http
        .get(format!("{}/healthz", app.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .http
        .get(format!("{}/api/calls", app.admin))
        .bearer_auth("adm1n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body, json!({"calls": []}));
}

#[tokio::test]
async fn history_validates_its_query() {
    let dir = tempdir();
    let app = TestApp::spawn(&Env::new(dir.path()), dir.path()).await;
    for q in ["limit=0", "limit=1001", "limit=x", "before=yesterday"] {
        let (s, b) = app.get_admin(&format!("/api/history?{q}")).await;
        assert_eq!(s, 400, "{q}");
        let field = q.split('=').next().unwrap();
        assert!(b["error"].as_str().unwrap().contains(field), "{b}");
    }
    let (s, _) = app
        .get_admin("/api/history?limit=1000&before=2030-01-01T00:00:00Z")
        .await;
    assert_eq!(s, 200);
    let (s, _) = app.get_admin("/api/calls/nope/1").await;
    assert_eq!(s, 404);
    let (s, _) = app.get_admin("/api/calls/jas/unknown").await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn after_a_restart_a_late_event_still_meets_the_tombstone_of_an_ended_call() {
    // Ended calls are not loaded at start-up (only calls in progress are); a late event naming
    // one must load it from the database rather than start it afresh.
    let dir = tempdir();
    let app = TestApp::spawn(&Env::new(dir.path()), dir.path()).await;
    app.post_jas(&call_status("101", "5", 0, 10)).await;
    app.post_jas(&call_status("101", "5", 1, 12)).await;
    app.wait_call("jas", "101:5", |c| c["state"] == "ended")
        .await;
    app.stop().await.unwrap();

    let app = TestApp::spawn(&Env::new(dir.path()), dir.path()).await;
    assert!(app.active_calls().await.is_empty());
    // An insert older than the remove, delivered late (a new event, not a redelivery).
    let (status, reply) = app.post_jas(&call_status("101", "5", 0, 11)).await;
    assert_eq!((status, reply["status"].as_str()), (200, Some("accepted")));
    // Events apply in journal order: once the next one shows, the late one has been applied.
    app.post_jas(&call_status("102", "6", 0, 13)).await;
    app.wait_call("jas", "102:6", |c| c["state"] == "active")
        .await;
    let active: Vec<Value> = app.active_calls().await;
    assert_eq!(
        active.len(),
        1,
        "the removed participant came back: {active:#?}"
    );
    let call = app.call("jas", "101:5").await.unwrap();
    assert_eq!(call["state"], "ended");
    assert!(same_time(
        &call["participants"][0]["left_at"],
        &event_time(12)
    ));
}
