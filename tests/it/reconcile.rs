//! Reconciliation with the JAS call-control snapshot (issue #14, SPEC §8), against the simulated
//! API, whose `/api/callcontrol` lists the participants it holds: a lost remove, a participant
//! never announced, events that arrive while a snapshot is in flight (both orders), a refused
//! snapshot, a sequence gap, and a kill right after a snapshot was journaled.

use std::time::{Duration, Instant};

use crate::common::*;
use callhook::sim::{JasSim, SimRoute};
use serde_json::Value;

/// A daemon against `sim` with reconciliation every `secs` (3600: only the start-up run and
/// those asked for, within a test's time).
fn env_for(dir: &std::path::Path, base_url: &str, secs: u64) -> Env {
    let mut env = Env::new(dir).with_sim(base_url);
    env.set("jas.reconcile_secs", &secs.to_string());
    env
}

/// A participant of `callid` whose far side is the external line 10000.
fn external(dn: &str, id: &str, callid: &str, status: &str) -> Value {
    participant(dn, id, callid, status, "10000", "Wexternalline")
}

async fn readyz(app: &TestApp) -> Value {
    let (status, body) = app.get_admin("/readyz").await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until the start-up run has been reported in `/readyz`.
async fn started_up(app: &TestApp) {
    wait_until(Duration::from_secs(10), || async {
        readyz(app).await["reconcile"]["jas"]["at"].is_string()
    })
    .await;
}

async fn post_reconcile(http: reqwest::Client, admin: String) -> (u16, Value) {
    let resp = http
        .post(format!("{admin}/api/reconcile"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

fn run_of(reply: &Value) -> (u64, u64, u64) {
    let run = &reply["runs"][0];
    assert_eq!(run["provider"], "jas", "{reply}");
    (
        run["added"].as_u64().unwrap(),
        run["removed"].as_u64().unwrap(),
        run["calls_ended"].as_u64().unwrap(),
    )
}

fn left(call: &Value, dn: &str) -> Value {
    call["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["dn"] == dn)
        .unwrap_or_else(|| panic!("no {dn} on {call:#}"))["left_at"]
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remove_never_sent_ends_the_call_as_reconciled_within_one_interval() {
    let sim = JasSim::with_token(TOKEN);
    let server = sim.start().await.unwrap();
    let dir = tempdir();
    let env = env_for(dir.path(), &server.base_url, 1);
    let app = TestApp::spawn(&env, dir.path()).await;
    let runs = "callhook_reconcile_runs_total{provider=\"jas\",outcome=\"ok\"}";
    for series in [
        runs,
        "callhook_reconcile_runs_total{provider=\"jas\",outcome=\"failed\"}",
        "callhook_reconcile_runs_total{provider=\"jas\",outcome=\"refused\"}",
        "callhook_reconcile_changes_total{provider=\"jas\",change=\"added\"}",
        "callhook_reconcile_changes_total{provider=\"jas\",change=\"removed\"}",
        "callhook_reconcile_changes_total{provider=\"jas\",change=\"ended\"}",
    ] {
        app.metric(series).await; // exported, if only at zero
    }
    let runs_before = app.metric(runs).await;

    sim.set_participant("101", "1", external("101", "1", "26", "Connected"));
    sim.set_participant(
        "102",
        "2",
        participant("102", "2", "26", "Connected", "101", "Wextension"),
    );
    for body in [call_status("101", "1", 0, 1), call_status("102", "2", 0, 2)] {
        assert_eq!(app.post_jas(&body).await.0, 200);
    }
    app.wait_call("jas", "26", |c| {
        c["participants"].as_array().unwrap().len() == 2
            && c["participants"][1]["status"] == "Connected"
    })
    .await;
    // 102 hangs up and says so; 101 hangs up and its remove webhook is lost.
    sim.remove_participant("102", "2");
    assert_eq!(app.post_jas(&call_status("102", "2", 1, 3)).await.0, 200);
    sim.remove_participant("101", "1");
    let lost = Instant::now();
    let call = app.wait_call("jas", "26", |c| c["state"] == "ended").await;
    assert_eq!(call["end_reason"], "reconciled", "{call:#}");
    assert!(left(&call, "101").is_string(), "{call:#}");
    // One interval (1 s), the run and its apply.
    assert!(
        lost.elapsed() < Duration::from_secs(3),
        "{:?}",
        lost.elapsed()
    );

    assert!(app.metric(runs).await >= runs_before + 1.0);
    let jas = &readyz(&app).await["reconcile"]["jas"];
    assert!(jas["at"].is_string(), "{jas}");
    assert!(jas["result"].as_str().unwrap().starts_with("ok: "), "{jas}");
    // The repair is in the journal, as provider `jas`, name `snapshot`.
    let (_, events) = app.get_admin("/api/events?name=snapshot").await;
    let rows = events["events"].as_array().unwrap();
    assert!(!rows.is_empty(), "{events}");
    assert_eq!(rows[0]["provider"], "jas");
    assert!(rows[0]["body"]["requested_at"].is_string(), "{events}");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_participant_never_announced_appears_with_its_details_and_no_lookup() {
    let sim = JasSim::with_token(TOKEN);
    let server = sim.start().await.unwrap();
    sim.set_participant("103", "3", external("103", "3", "30", "Ringing"));
    let dir = tempdir();
    let app = TestApp::spawn(&env_for(dir.path(), &server.base_url, 3600), dir.path()).await;
    let call = app.wait_call("jas", "30", |c| c["state"] == "active").await;
    let p = &call["participants"][0];
    assert_eq!(p["dn"], "103");
    assert_eq!(p["status"], "Ringing");
    assert_eq!(p["party_number"], "5148888888");
    assert_eq!(p["party_dn_type"], "Wexternalline");
    // Direction by the rule a looked-up participant gets: ringing from an external line.
    assert_eq!(call["direction"], "inbound");
    assert_eq!(sim.requests(SimRoute::Participant), 0);
    app.stop().await.unwrap();
}

/// A remove that arrives while a snapshot is in flight: journaled before the snapshot (which
/// still lists its participant), the participant stays removed; journaled after it (the
/// snapshot no longer lists it), the snapshot removes it and the late remove changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_remove_while_a_snapshot_is_in_flight_is_decided_by_the_rule_in_both_orders() {
    let sim = JasSim::with_token(TOKEN);
    let server = sim.start().await.unwrap();
    let dir = tempdir();
    let port = free_port();
    let mut env = env_for(dir.path(), &server.base_url, 3600);
    env.set("admin.listen", &format!("127.0.0.1:{port}"));
    let app = TestApp::spawn(&env, dir.path()).await;
    started_up(&app).await;
    sim.set_participant("101", "1", external("101", "1", "26", "Connected"));
    sim.set_participant("102", "2", external("102", "2", "27", "Connected"));
    for body in [call_status("101", "1", 0, 1), call_status("102", "2", 0, 2)] {
        assert_eq!(app.post_jas(&body).await.0, 200);
    }
    for call in ["26", "27"] {
        app.wait_call("jas", call, |c| {
            c["participants"][0]["status"] == "Connected"
        })
        .await;
    }

    // Before: the snapshot is taken with 101 on the call, then 101's remove is journaled.
    sim.set_delay(SimRoute::CallControl, Duration::from_millis(1500));
    let asked = sim.requests(SimRoute::CallControl);
    let run = tokio::spawn(post_reconcile(app.http.clone(), app.admin.clone()));
    wait_until(Duration::from_secs(5), || async {
        sim.requests(SimRoute::CallControl) > asked
    })
    .await;
    sim.remove_participant("101", "1");
    assert_eq!(app.post_jas(&call_status("101", "1", 1, 3)).await.0, 200);
    let (status, reply) = run.await.unwrap();
    assert_eq!(status, 200, "{reply}");
    assert_eq!(run_of(&reply), (0, 0, 0), "{reply}");
    let call = app.wait_call("jas", "26", |c| c["state"] == "ended").await;
    assert_eq!(call["end_reason"], "completed", "{call:#}");
    assert!(left(&call, "101").is_string(), "not revived: {call:#}");

    // After: the snapshot no longer lists 102, and is applied before its remove arrives.
    sim.set_delay(SimRoute::CallControl, Duration::ZERO);
    sim.remove_participant("102", "2");
    let path = dir.path().to_path_buf();
    let (code, out, err) = tokio::task::spawn_blocking(move || cli(&env, &path, &["reconcile"]))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out.trim(),
        "jas: ok: 0 added, 1 removed, 1 calls ended",
        "{err}"
    );
    let ended = app.wait_call("jas", "27", |c| c["state"] == "ended").await;
    assert_eq!(ended["end_reason"], "reconciled", "{ended:#}");
    assert_eq!(app.post_jas(&call_status("102", "2", 1, 4)).await.0, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.call("jas", "27").await.unwrap(), ended);
    app.stop().await.unwrap();
}

/// An insert received after the snapshot was asked for: journaled before the snapshot (which
/// does not list it), the participant is kept while the snapshot repairs another call;
/// journaled after it, it is applied as any insert, and the next snapshot agrees.
#[tokio::test(flavor = "multi_thread")]
async fn an_insert_after_the_snapshot_was_asked_for_is_decided_by_the_rule_in_both_orders() {
    let sim = JasSim::with_token(TOKEN);
    let server = sim.start().await.unwrap();
    let dir = tempdir();
    let app = TestApp::spawn(&env_for(dir.path(), &server.base_url, 3600), dir.path()).await;
    started_up(&app).await;
    sim.set_participant("103", "3", external("103", "3", "28", "Connected"));
    assert_eq!(app.post_jas(&call_status("103", "3", 0, 1)).await.0, 200);
    app.wait_call("jas", "28", |c| {
        c["participants"][0]["status"] == "Connected"
    })
    .await;
    // 103's remove is lost, so the snapshot has something to repair and is journaled.
    sim.remove_participant("103", "3");

    // Before: 104 joins after the snapshot was taken; its insert is journaled first.
    sim.set_delay(SimRoute::CallControl, Duration::from_millis(1500));
    let asked = sim.requests(SimRoute::CallControl);
    let run = tokio::spawn(post_reconcile(app.http.clone(), app.admin.clone()));
    wait_until(Duration::from_secs(5), || async {
        sim.requests(SimRoute::CallControl) > asked
    })
    .await;
    sim.set_participant("104", "4", external("104", "4", "29", "Ringing"));
    assert_eq!(app.post_jas(&call_status("104", "4", 0, 2)).await.0, 200);
    let (status, reply) = run.await.unwrap();
    assert_eq!(status, 200, "{reply}");
    assert_eq!(run_of(&reply), (0, 1, 1), "{reply}");
    assert!(reply["runs"][0]["journal_id"].is_i64(), "{reply}");
    let repaired = app.call("jas", "28").await.unwrap();
    assert_eq!(repaired["end_reason"], "reconciled", "{repaired:#}");
    let kept = app
        .wait_call("jas", "29", |c| c["participants"][0]["status"] == "Ringing")
        .await;
    assert_eq!(kept["state"], "active", "{kept:#}");
    assert!(left(&kept, "104").is_null(), "{kept:#}");

    // After: a snapshot without 105 is applied, then 105's insert arrives.
    sim.set_delay(SimRoute::CallControl, Duration::ZERO);
    let (status, reply) = post_reconcile(app.http.clone(), app.admin.clone()).await;
    assert_eq!((status, run_of(&reply)), (200, (0, 0, 0)), "{reply}");
    sim.set_participant("105", "5", external("105", "5", "31", "Ringing"));
    assert_eq!(app.post_jas(&call_status("105", "5", 0, 3)).await.0, 200);
    app.wait_call("jas", "31", |c| c["participants"][0]["status"] == "Ringing")
        .await;
    let (status, reply) = post_reconcile(app.http.clone(), app.admin.clone()).await;
    assert_eq!((status, run_of(&reply)), (200, (0, 0, 0)), "{reply}");
    assert_eq!(app.call("jas", "29").await.unwrap()["state"], "active");
    assert_eq!(app.call("jas", "31").await.unwrap()["state"], "active");
    app.stop().await.unwrap();
}

/// 403 and 404 turn reconciliation off with one `warn`; the daemon goes on receiving.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_snapshot_turns_reconciliation_off_with_one_warning() {
    for refusal in [403u16, 404] {
        let sim = JasSim::with_token(TOKEN);
        let server = sim.start().await.unwrap();
        sim.fail_next(SimRoute::CallControl, &[refusal]);
        let dir = tempdir();
        let port = free_port();
        let mut env = env_for(dir.path(), &server.base_url, 1);
        env.set("admin.listen", &format!("127.0.0.1:{port}"));
        let mut daemon = ChildDaemon::spawn(&env, dir.path());
        let refused = |l: &Value| {
            l["level"] == "WARN"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("refused the call-control snapshot"))
        };
        let line = daemon.wait_log(refused);
        assert!(
            line["error"]
                .as_str()
                .unwrap()
                .contains(&refusal.to_string()),
            "{line}"
        );
        // Three intervals later: still the one request and the one warning.
        tokio::time::sleep(Duration::from_millis(3000)).await;
        assert_eq!(sim.requests(SimRoute::CallControl), 1, "{refusal}");
        assert_eq!(daemon.logs().iter().filter(|l| refused(l)).count(), 1);
        // The daemon is fine: it takes webhooks, is ready, and says reconciliation is off.
        let (status, _) = post_signed(&daemon.public, &call_status("101", "1", 0, 1)).await;
        assert_eq!(status, 200);
        let http = reqwest::Client::new();
        let ready: Value = http
            .get(format!("{}/readyz", daemon.admin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ready["ready"], true, "{ready}");
        let result = ready["reconcile"]["jas"]["result"].as_str().unwrap();
        assert!(result.starts_with("refused: "), "{result}");
        assert!(result.contains("off until the next start"), "{result}");
        let (code, out, err) = cli(&env, dir.path(), &["reconcile"]);
        assert_eq!(code, Some(1), "{out}{err}");
        assert!(out.starts_with("jas: off: "), "{out}");
        assert_eq!(sim.requests(SimRoute::CallControl), 1);
        daemon.signal("TERM");
        assert_eq!(daemon.wait(Duration::from_secs(15)), Some(0));
    }
}

/// 5xx: a `warn`, and the next interval asks again.
#[tokio::test(flavor = "multi_thread")]
async fn an_unavailable_api_is_asked_again_at_the_next_interval() {
    let sim = JasSim::with_token(TOKEN);
    let server = sim.start().await.unwrap();
    sim.fail_next(SimRoute::CallControl, &[503]);
    let dir = tempdir();
    let app = TestApp::spawn(&env_for(dir.path(), &server.base_url, 1), dir.path()).await;
    wait_until(Duration::from_secs(10), || async {
        readyz(&app).await["reconcile"]["jas"]["result"]
            .as_str()
            .is_some_and(|r| r.starts_with("failed: "))
    })
    .await;
    wait_until(Duration::from_secs(5), || async {
        readyz(&app).await["reconcile"]["jas"]["result"]
            .as_str()
            .is_some_and(|r| r.starts_with("ok: "))
    })
    .await;
    assert!(sim.requests(SimRoute::CallControl) >= 2);
    app.stop().await.unwrap();
}

/// A gap in `data.sequence` that later events do not fill asks for a snapshot a few seconds
/// later (and at least 10 s after the start-up run), which finds the participant whose insert
/// was the missing number.
#[tokio::test(flavor = "multi_thread")]
async fn a_sequence_gap_triggers_a_run() {
    let sim = JasSim::with_token(TOKEN);
    let server = sim.start().await.unwrap();
    let dir = tempdir();
    let app = TestApp::spawn(&env_for(dir.path(), &server.base_url, 3600), dir.path()).await;
    started_up(&app).await;
    assert_eq!(sim.requests(SimRoute::CallControl), 1);
    sim.set_participant("106", "6", external("106", "6", "40", "Connected"));
    sim.set_participant("107", "7", external("107", "7", "41", "Ringing"));
    // 107's insert (seq 2) is lost; 106's events are 1 and 3.
    for body in [call_status("106", "6", 0, 1), call_status("106", "6", 0, 3)] {
        assert_eq!(app.post_jas(&body).await.0, 200);
    }
    let gap = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sim.requests(SimRoute::CallControl),
        1,
        "asked before the wait"
    );
    wait_until(Duration::from_secs(15), || async {
        sim.requests(SimRoute::CallControl) == 2
    })
    .await;
    assert!(
        gap.elapsed() >= Duration::from_secs(3),
        "{:?}",
        gap.elapsed()
    );
    let call = app.wait_call("jas", "41", |c| c["state"] == "active").await;
    assert_eq!(call["participants"][0]["status"], "Ringing");
    // Only one run for the gap.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sim.requests(SimRoute::CallControl), 2);
    app.stop().await.unwrap();
}

/// `kill -9` right after a snapshot was journaled: the restarted daemon reaches the state the
/// snapshot gives (its changes dated at the row's `received_at`), and a second restart the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_right_after_a_snapshot_was_journaled_gives_the_same_state_after_restart() {
    let sim = JasSim::with_token(TOKEN);
    let server = sim.start().await.unwrap();
    let dir = tempdir();
    let env = env_for(dir.path(), &server.base_url, 3600);
    let mut daemon = ChildDaemon::spawn(&env, dir.path());
    let http = reqwest::Client::new();
    sim.set_participant("101", "1", external("101", "1", "26", "Connected"));
    sim.set_participant("102", "2", external("102", "2", "26", "Connected"));
    for body in [call_status("101", "1", 0, 1), call_status("102", "2", 0, 2)] {
        assert_eq!(post_signed(&daemon.public, &body).await.0, 200);
    }
    let call_url = |admin: &str| format!("{admin}/api/calls/jas/26");
    let get = |url: String| {
        let http = http.clone();
        async move {
            let resp = http.get(url).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    wait_until(Duration::from_secs(10), || async {
        let (_, call) = get(call_url(&daemon.admin)).await;
        call["participants"]
            .as_array()
            .is_some_and(|p| p.len() == 2 && p.iter().all(|p| p["status"] == "Connected"))
    })
    .await;
    // The lookups' answers (which say which call they are on) are not journal rows: they are
    // durable with the next state write, 100 ms later at most. A kill before that loses the
    // call's membership whatever comes next (ARCHITECTURE.md, "Restart"); not what this tests.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Both removes are lost; a snapshot is asked for, and the daemon killed as soon as the
    // journal shows it.
    sim.remove_participant("101", "1");
    sim.remove_participant("102", "2");
    let run = tokio::spawn({
        let (http, url) = (http.clone(), format!("{}/api/reconcile", daemon.admin));
        // Its answer is cut by the kill.
        async move { http.post(url).send().await.map(|r| r.status()) }
    });
    let events = format!("{}/api/events?name=snapshot", daemon.admin);
    let deadline = Instant::now() + Duration::from_secs(10);
    let row = loop {
        let (_, body) = get(events.clone()).await;
        if let Some(row) = body["events"].as_array().and_then(|r| r.first()) {
            break row.clone();
        }
        assert!(Instant::now() < deadline, "no snapshot was journaled");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    daemon.signal("KILL");
    assert_eq!(
        daemon.wait(Duration::from_secs(5)),
        None,
        "killed by the signal"
    );
    let _ = run.await;

    let restarted = ChildDaemon::spawn(&env, dir.path());
    let (status, after) = get(call_url(&restarted.admin)).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["state"], "ended", "{after:#}");
    assert_eq!(after["end_reason"], "reconciled", "{after:#}");
    assert!(same_time(
        &after["ended_at"],
        row["received_at"].as_str().unwrap()
    ));
    for dn in ["101", "102"] {
        assert!(same_time(
            &left(&after, dn),
            row["received_at"].as_str().unwrap()
        ));
    }
    restarted.signal("TERM");
    let mut restarted = restarted;
    assert_eq!(restarted.wait(Duration::from_secs(15)), Some(0));
    let again = ChildDaemon::spawn(&env, dir.path());
    let (_, once_more) = get(call_url(&again.admin)).await;
    assert_eq!(once_more, after);
}
