//! The TeleCMI endpoint as TeleCMI sees it (§3) and its calls as an operator sees them (§4, §5):
//! the real daemon on port 0, events posted from 127.0.0.1.

use crate::common::*;
use serde_json::{Value, json};

const PATH_TOKEN: &str = "tcmi-path-token-7f3a9c";

/// TeleCMI's own live-event samples (the seed page), verbatim except for the comma missing after
/// `request_id` in the first one; the bare `04471000000` is TeleCMI's, not ours.
const SAMPLE_LEG_A: &str = r#"{
"leg": "a",
"type": "event",
"click_to_call": "true",
"user": "109_1111113",
"cmiuuid": "d965c6e0-5493-44f8-8d7d-b9a8077013a4",
"direction": "outbound",
"callerid": 04471000000,
"app_id": 1111113,
"time": 1571122196059,
"request_id": "s96C6XK1BUHX0oVZfOo5NhoJfZZJd0y1nmrNN6dhdkW",
"status": "hangup",
"to": 9100000000,
"conversation_uuid": "d965c6e0-5493-44f8-8d7d-b9a8077013a4"
}"#;

const SAMPLE_LEG_B: &str = r#"{
"leg": "b",
"type": "event",
"click_to_call": "true",
"user": "109_1111113",
"cmiuuid": "1e12c087-e5bb-4e77-8e42-1249fa40a99b",
"direction": "outbound",
"callerid": 04471000000,
"app_id": 1111113,
"time": 1571122196059,
"status": "hangup",
"from": 9100000000,
"conversation_uuid": "d965c6e0-5493-44f8-8d7d-b9a8077013a4"
}"#;

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";

/// A request to the TeleCMI endpoint.
struct Post<'a> {
    token: &'a str,
    content_type: Option<&'a str>,
    forwarded_for: Option<&'a str>,
    method: reqwest::Method,
}

impl Default for Post<'_> {
    fn default() -> Self {
        Post {
            token: PATH_TOKEN,
            content_type: Some(JSON),
            forwarded_for: None,
            method: reqwest::Method::POST,
        }
    }
}

impl Post<'_> {
    async fn send(&self, app: &TestApp, body: &str) -> (u16, Value) {
        let url = format!("{}/webhooks/telecmi/{}", app.public, self.token);
        send(app, self.method.clone(), &url, self, body).await
    }
}

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    url: &str,
    post: &Post<'_>,
    body: &str,
) -> (u16, Value) {
    let mut req = app.http.request(method, url).body(body.to_string());
    if let Some(ct) = post.content_type {
        req = req.header("content-type", ct);
    }
    if let Some(xff) = post.forwarded_for {
        req = req.header("x-forwarded-for", xff);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn post(app: &TestApp, body: &str) -> (u16, Value) {
    Post::default().send(app, body).await
}

async fn post_ok(app: &TestApp, body: &str) {
    let (status, reply) = post(app, body).await;
    assert_eq!(status, 200, "{reply} for {body}");
    assert_eq!(reply["status"], "accepted", "{reply} for {body}");
}

fn env_with_token(dir: &std::path::Path) -> Env {
    let mut env = Env::new(dir);
    env.set("telecmi.path_token", PATH_TOKEN);
    env
}

/// A live event of one leg of call `conv`.
fn leg_event(conv: &str, leg: &str, cmiuuid: &str, status: &str, direction: &str, t: i64) -> Value {
    json!({
        "type": "event", "leg": leg, "cmiuuid": cmiuuid, "conversation_uuid": conv,
        "status": status, "direction": direction, "user": "103_1111113", "app_id": 1111113,
        "from": 9200000000u64, "to": 9100000000u64, "time": 1_700_000_000_000i64 + t * 1000,
    })
}

fn participant<'a>(call: &'a Value, cmiuuid: &str) -> &'a Value {
    call["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["participant_id"] == cmiuuid)
        .unwrap_or_else(|| panic!("no participant {cmiuuid} in {call:#}"))
}

fn ended(call: &Value) -> bool {
    call["state"] == "ended"
}

#[tokio::test]
async fn seed_samples_make_one_ended_outbound_call() {
    let dir = tempdir();
    let app = TestApp::spawn(&env_with_token(dir.path()), dir.path()).await;
    post_ok(&app, SAMPLE_LEG_A).await;
    post_ok(&app, SAMPLE_LEG_B).await;

    let call = app
        .wait_call("telecmi", "d965c6e0-5493-44f8-8d7d-b9a8077013a4", |c| {
            c["participants"].as_array().unwrap().len() == 2
        })
        .await;
    assert_eq!(call["state"], "ended");
    assert_eq!(call["end_reason"], "hangup");
    assert_eq!(call["direction"], "outbound");
    assert_eq!(call["started_at"], "2019-10-15T06:49:56.059Z");
    assert_eq!(call["ended_at"], "2019-10-15T06:49:56.059Z");
    let a = participant(&call, "d965c6e0-5493-44f8-8d7d-b9a8077013a4");
    assert_eq!(
        (&a["dn"], &a["status"], &a["leg"], &a["party_number"]),
        (
            &json!("109_1111113"),
            &json!("hangup"),
            &json!("a"),
            &json!("9100000000")
        )
    );
    let b = participant(&call, "1e12c087-e5bb-4e77-8e42-1249fa40a99b");
    assert_eq!(
        (&b["status"], &b["leg"], &b["party_number"]),
        (&json!("hangup"), &json!("b"), &json!("9100000000"))
    );
    assert!(app.active_calls().await.is_empty());

    // Delivered again: duplicates, in either content type.
    assert_eq!(
        post(&app, SAMPLE_LEG_A).await,
        (200, json!({"status": "duplicate"}))
    );
    let (status, reply) = Post {
        content_type: None,
        ..Default::default()
    }
    .send(&app, SAMPLE_LEG_B)
    .await;
    assert_eq!((status, reply), (200, json!({"status": "duplicate"})));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn inbound_answered_call() {
    let dir = tempdir();
    let app = TestApp::spawn(&env_with_token(dir.path()), dir.path()).await;
    let conv = "in-answered-1";
    // Leg a: the caller waiting in the queue; leg b: the agent, labelled outbound by TeleCMI.
    post_ok(
        &app,
        &leg_event(conv, "a", "A1", "waiting", "inbound", 0).to_string(),
    )
    .await;
    post_ok(
        &app,
        &leg_event(conv, "b", "B1", "started", "outbound", 2).to_string(),
    )
    .await;
    let call = app
        .wait_call("telecmi", conv, |c| {
            c["participants"].as_array().unwrap().len() == 2
        })
        .await;
    assert_eq!(call["state"], "active");
    assert_eq!(call["direction"], "inbound");
    assert_eq!(participant(&call, "A1")["status"], "waiting");
    assert_eq!(participant(&call, "A1")["party_number"], "9200000000");
    assert_eq!(participant(&call, "B1")["status"], "started");
    assert_eq!(participant(&call, "B1")["dn"], "103_1111113");
    let listed = app.active_calls().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["call_id"], conv);

    post_ok(
        &app,
        &leg_event(conv, "b", "B1", "answered", "outbound", 6).to_string(),
    )
    .await;
    post_ok(
        &app,
        &leg_event(conv, "a", "A1", "answered", "inbound", 6).to_string(),
    )
    .await;
    app.wait_call("telecmi", conv, |c| {
        participant(c, "A1")["status"] == "answered" && participant(c, "B1")["status"] == "answered"
    })
    .await;

    let mut hangup_b = leg_event(conv, "b", "B1", "hangup", "outbound", 66);
    hangup_b["hangup_reason"] = json!("sent_bye");
    hangup_b["answeredsec"] = json!(60);
    post_ok(&app, &hangup_b.to_string()).await;
    let call = app
        .wait_call("telecmi", conv, |c| {
            participant(c, "B1")["status"] == "hangup"
        })
        .await;
    assert_eq!(call["state"], "active", "the agent leaving does not end it");
    assert!(participant(&call, "B1")["left_at"].is_string());
    assert_eq!(
        participant(&call, "B1")["extra"]["hangup_reason"],
        "sent_bye"
    );
    assert_eq!(participant(&call, "B1")["extra"]["answeredsec"], 60);

    let mut hangup_a = leg_event(conv, "a", "A1", "hangup", "inbound", 67);
    hangup_a["hangup_reason"] = json!("recv_bye");
    hangup_a["waitedsec"] = json!(6);
    post_ok(&app, &hangup_a.to_string()).await;
    let call = app.wait_call("telecmi", conv, ended).await;
    assert_eq!(call["end_reason"], "hangup");
    assert_eq!(call["direction"], "inbound");
    assert_eq!(call["started_at"], "2023-11-14T22:13:20Z");
    assert_eq!(call["ended_at"], "2023-11-14T22:14:27Z");
    let a = participant(&call, "A1");
    assert_eq!(
        (
            &a["status"],
            &a["extra"]["hangup_reason"],
            &a["extra"]["waitedsec"]
        ),
        (&json!("hangup"), &json!("recv_bye"), &json!(6))
    );
    assert!(app.active_calls().await.is_empty());
    // History is read from the database, written just after the table changes.
    wait_until(std::time::Duration::from_secs(5), || async {
        let (_, history) = app.get_admin("/api/history").await;
        history["calls"][0]["call_id"] == conv
    })
    .await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn inbound_missed_call_ends_on_its_cdr() {
    let dir = tempdir();
    let app = TestApp::spawn(&env_with_token(dir.path()), dir.path()).await;
    let conv = "5f0fc753-064f-4c58-82d3-ce62f294fad3";
    post_ok(
        &app,
        &leg_event(conv, "a", conv, "waiting", "inbound", 0).to_string(),
    )
    .await;
    app.wait_call("telecmi", conv, |c| c["state"] == "active")
        .await;
    // TeleCMI's missed-call CDR: no leg, no conversation_uuid, nobody answered.
    let cdr = json!({
        "appid": 1111113, "type": "cdr", "direction": "inbound", "cmiuuid": conv,
        "status": "missed", "from": 9200000000u64, "time": 1_700_000_119_000i64, "waitedsec": 119,
        "team": "Support_1111113", "voicemail": "true",
    });
    post_ok(&app, &cdr.to_string()).await;
    let call = app.wait_call("telecmi", conv, ended).await;
    assert_eq!(call["end_reason"], "cdr");
    assert_eq!(call["direction"], "inbound");
    assert_eq!(call["participants"].as_array().unwrap().len(), 1);
    let a = participant(&call, conv);
    assert_eq!(
        (&a["status"], &a["leg"], &a["extra"]["waitedsec"]),
        (&json!("missed"), &json!("a"), &json!(119))
    );
    assert_eq!(call["recordings"], json!([]));

    // A missed call heard of only through its CDR.
    let only = json!({"type": "cdr", "direction": "inbound", "cmiuuid": "cdr-only",
        "status": "missed", "from": "09110000000", "time": 1_700_000_000_000i64});
    post_ok(&app, &only.to_string()).await;
    let call = app.wait_call("telecmi", "cdr-only", ended).await;
    assert_eq!(
        (&call["direction"], &call["end_reason"]),
        (&json!("inbound"), &json!("cdr"))
    );
    assert_eq!(
        participant(&call, "cdr-only")["party_number"],
        "09110000000"
    );
    assert!(app.active_calls().await.is_empty());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn outbound_answered_call_with_recording() {
    let dir = tempdir();
    let app = TestApp::spawn(&env_with_token(dir.path()), dir.path()).await;
    let conv = "10ee0eb6-c417-4f5a-b122-bffe28f96eae";
    let b_leg = "0da4f02e-6ece-42e4-989b-1e6766b5a81e";
    for (leg, id, status, t) in [
        ("a", conv, "started", 0),
        ("a", conv, "answered", 3),
        ("b", b_leg, "started", 3),
        ("b", b_leg, "answered", 9),
    ] {
        post_ok(
            &app,
            &leg_event(conv, leg, id, status, "outbound", t).to_string(),
        )
        .await;
    }
    let call = app
        .wait_call("telecmi", conv, |c| {
            c["participants"].as_array().unwrap().len() == 2
                && participant(c, b_leg)["status"] == "answered"
        })
        .await;
    assert_eq!(
        (&call["state"], &call["direction"]),
        (&json!("active"), &json!("outbound"))
    );
    post_ok(
        &app,
        &leg_event(conv, "b", b_leg, "hangup", "outbound", 15).to_string(),
    )
    .await;
    post_ok(
        &app,
        &leg_event(conv, "a", conv, "hangup", "outbound", 16).to_string(),
    )
    .await;
    app.wait_call("telecmi", conv, ended).await;

    // TeleCMI's leg b CDR names neither the conversation nor the call: its leg does.
    let filename = "16506305548176941220057791_2222223.mp3";
    let cdr = json!({
        "virtual_number": "440000000000", "call_id": "c4504776-d91e-123b-29a7-56000429abc3",
        "custom": "{\"crm\":\"true\"}", "leg": "b", "type": "cdr", "appid": 2222223,
        "to": 442000000001u64, "cmiuuid": b_leg, "status": "answered", "user": "202_2222223",
        "time": 1_700_000_009_000i64, "direction": "outbound", "answeredsec": 6,
        "hangup_reason": "sent_bye", "extra_params": "{\"click2call\":\"true\"}",
        "record": true, "filename": filename,
    });
    post_ok(&app, &cdr.to_string()).await;
    // This daemon has no telecmi.app_id/secret: the worker's verdict reaches this call (the
    // leg's call, not a call named after the CDR's own id).
    let call = app
        .wait_call("telecmi", conv, |c| c["recordings"][0]["state"] == "failed")
        .await;
    let rec = &call["recordings"][0];
    assert_eq!(rec["id"], filename);
    assert_eq!(rec["url"], filename);
    assert_eq!(rec["path"], format!("telecmi/{filename}"));
    assert!(
        rec["error"].as_str().unwrap().contains("telecmi.app_id"),
        "{rec}"
    );
    assert!(app.call("telecmi", b_leg).await.is_none(), "a phantom call");
    assert_eq!(call["state"], "ended");
    assert_eq!(call["end_reason"], "hangup");
    assert_eq!(call["participants"].as_array().unwrap().len(), 2);
    let b = participant(&call, b_leg);
    assert_eq!(
        (
            &b["status"],
            &b["extra"]["answeredsec"],
            &b["extra"]["hangup_reason"]
        ),
        (&json!("answered"), &json!(6), &json!("sent_bye"))
    );

    // A name that could escape the recordings folder: recorded as failed, no path.
    let evil = json!({"type": "cdr", "cmiuuid": "evil-1", "status": "answered",
        "record": "true", "filename": "../../etc/cron.d/x.mp3"});
    post_ok(&app, &evil.to_string()).await;
    let call = app
        .wait_call("telecmi", "evil-1", |c| {
            !c["recordings"].as_array().unwrap().is_empty()
        })
        .await;
    assert_eq!(call["recordings"][0]["state"], "failed");
    assert_eq!(call["recordings"][0]["path"], Value::Null);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn form_encoded_bodies() {
    let dir = tempdir();
    let app = TestApp::spawn(&env_with_token(dir.path()), dir.path()).await;
    let form = Post {
        content_type: Some(FORM),
        ..Default::default()
    };
    let waiting = "type=event&leg=a&cmiuuid=form-a&conversation_uuid=form-call&status=waiting\
        &direction=inbound&from=04471000000&to=9100000000&time=1700000000000&app_id=1111113";
    let (status, reply) = form.send(&app, waiting).await;
    assert_eq!(
        (status, &reply["status"]),
        (200, &json!("accepted")),
        "{reply}"
    );
    let call = app.wait_call("telecmi", "form-call", |_| true).await;
    assert_eq!(call["direction"], "inbound");
    assert_eq!(participant(&call, "form-a")["party_number"], "04471000000");

    let cdr = "type=cdr&cmiuuid=form-a&conversation_uuid=form-call&status=answered\
        &direction=inbound&answeredsec=42&record=true&filename=form-a.mp3&user=101_1111113";
    let (status, _) = form.send(&app, cdr).await;
    assert_eq!(status, 200);
    let call = app.wait_call("telecmi", "form-call", ended).await;
    assert_eq!(call["end_reason"], "cdr");
    assert_eq!(participant(&call, "form-a")["extra"]["answeredsec"], 42);
    assert_eq!(call["recordings"][0]["path"], "telecmi/form-a.mp3");

    // Without a content type a form body is still recognised; a malformed one is a 400.
    let (status, reply) = Post {
        content_type: None,
        ..Default::default()
    }
    .send(
        &app,
        "type=event&leg=b&cmiuuid=form-b&conversation_uuid=form-call&status=started",
    )
    .await;
    assert_eq!((status, &reply["status"]), (200, &json!("accepted")));
    let (status, reply) = form
        .send(&app, "type=event&leg=c&cmiuuid=x&status=started")
        .await;
    assert_eq!(status, 400);
    assert!(
        reply["error"].as_str().unwrap().contains("`leg`"),
        "{reply}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn wrong_missing_or_unconfigured_token_looks_like_no_route() {
    let dir = tempdir();
    let app = TestApp::spawn(&env_with_token(dir.path()), dir.path()).await;
    let body = leg_event("tok-call", "a", "tok-a", "waiting", "inbound", 0).to_string();
    let not_found = (404, json!({"error": "not found"}));

    // What a path that does not exist looks like.
    let nowhere = format!("{}/webhooks/nowhere", app.public);
    let d = Post::default();
    assert_eq!(
        send(&app, reqwest::Method::POST, &nowhere, &d, &body).await,
        not_found
    );

    for token in [
        "wrong-token",
        "tcmi-path-token-7f3a9",
        "tcmi-path-token-7f3a9c0",
        "%ff",
    ] {
        let p = Post {
            token,
            ..Default::default()
        };
        assert_eq!(p.send(&app, &body).await, not_found, "{token}");
    }
    let bare = format!("{}/webhooks/telecmi", app.public);
    assert_eq!(
        send(&app, reqwest::Method::POST, &bare, &d, &body).await,
        not_found
    );
    let slash = format!("{}/webhooks/telecmi/", app.public);
    assert_eq!(
        send(&app, reqwest::Method::POST, &slash, &d, &body).await,
        not_found
    );
    // Other methods, even with the right token, say nothing either.
    let get = Post {
        method: reqwest::Method::GET,
        ..Default::default()
    };
    assert_eq!(get.send(&app, "").await, not_found);
    // A wrong token is refused before the body is read: no 413, no 400.
    let wrong = Post {
        token: "wrong-token",
        ..Default::default()
    };
    assert_eq!(wrong.send(&app, &"x".repeat(70_000)).await, not_found);
    assert_eq!(wrong.send(&app, "not json").await, not_found);

    // Nothing of that was journaled: the same event is new with the right token.
    assert!(app.active_calls().await.is_empty());
    post_ok(&app, &body).await;
    app.wait_call("telecmi", "tok-call", |_| true).await;
    app.stop().await.unwrap();

    // No token configured, or TeleCMI disabled: every token is a 404.
    for (key, value) in [
        ("telecmi.path_token", None),
        ("telecmi.enabled", Some("false")),
    ] {
        let dir = tempdir();
        let mut env = env_with_token(dir.path());
        match value {
            Some(v) => {
                env.set(key, v);
            }
            None => {
                env.0.remove("CALLHOOK__TELECMI__PATH_TOKEN");
            }
        }
        let app = TestApp::spawn(&env, dir.path()).await;
        assert_eq!(post(&app, &body).await, not_found, "{key}");
        let p = Post {
            token: "anything",
            ..Default::default()
        };
        assert_eq!(p.send(&app, &body).await, not_found, "{key}");
        assert!(app.active_calls().await.is_empty());
        app.stop().await.unwrap();
    }
}

#[tokio::test]
async fn allow_list_without_a_trusted_proxy_uses_the_peer() {
    let dir = tempdir();
    let mut env = env_with_token(dir.path());
    env.set("telecmi.allow_ips", "10.0.0.0/8");
    let app = TestApp::spawn(&env, dir.path()).await;
    let body = leg_event("ip-call", "a", "ip-a", "waiting", "inbound", 0).to_string();

    let (status, reply) = post(&app, &body).await;
    assert_eq!(status, 403, "{reply}");
    assert!(reply["error"].is_string());
    // The header is the client's word, not believed from an untrusted peer.
    let forged = Post {
        forwarded_for: Some("10.1.2.3"),
        ..Default::default()
    };
    assert_eq!(forged.send(&app, &body).await.0, 403);
    // The token is checked first: a stranger learns nothing from a 403.
    let wrong = Post {
        token: "wrong",
        ..Default::default()
    };
    assert_eq!(wrong.send(&app, &body).await.0, 404);
    app.stop().await.unwrap();

    // Loopback allowed: accepted, and the refusals above journaled nothing.
    let dir2 = tempdir();
    let mut env = env_with_token(dir2.path());
    env.set("telecmi.allow_ips", "10.0.0.0/8,127.0.0.1");
    let app = TestApp::spawn(&env, dir2.path()).await;
    post_ok(&app, &body).await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn allow_list_behind_a_trusted_proxy_uses_forwarded_for() {
    let body = |n: i64| leg_event("xff-call", "a", "xff-a", "waiting", "inbound", n).to_string();
    let via = |xff: &'static str| Post {
        forwarded_for: Some(xff),
        ..Default::default()
    };

    let dir = tempdir();
    let mut env = env_with_token(dir.path());
    env.set("telecmi.allow_ips", "10.0.0.0/8")
        .set("server.trusted_proxies", "127.0.0.1/32");
    let app = TestApp::spawn(&env, dir.path()).await;
    // The proxy itself is not TeleCMI.
    assert_eq!(post(&app, &body(0)).await.0, 403);
    // A client outside the list, even if it prepends an allowed address.
    assert_eq!(via("6.6.6.6").send(&app, &body(0)).await.0, 403);
    assert_eq!(via("10.1.2.3, 6.6.6.6").send(&app, &body(0)).await.0, 403);
    // TeleCMI behind our proxy.
    let (status, reply) = via("10.1.2.3").send(&app, &body(0)).await;
    assert_eq!(
        (status, &reply["status"]),
        (200, &json!("accepted")),
        "{reply}"
    );
    app.stop().await.unwrap();

    // Behind two of our proxies, with a forged address on the left.
    let dir = tempdir();
    let mut env = env_with_token(dir.path());
    env.set("telecmi.allow_ips", "10.0.0.0/8")
        .set("server.trusted_proxies", "127.0.0.1/32,192.168.0.0/16");
    let app = TestApp::spawn(&env, dir.path()).await;
    let (status, _) = via("6.6.6.6, 10.1.2.3, 192.168.1.1")
        .send(&app, &body(1))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        via("10.1.2.3, 6.6.6.6, 192.168.1.1")
            .send(&app, &body(2))
            .await
            .0,
        403
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn out_of_order_hangup_then_answered() {
    let dir = tempdir();
    let app = TestApp::spawn(&env_with_token(dir.path()), dir.path()).await;
    let conv = "ooo-call";
    let send = |leg: &str, id: &str, status: &str, direction: &str, t: i64| {
        leg_event(conv, leg, id, status, direction, t).to_string()
    };
    post_ok(&app, &send("a", "ooo-a", "waiting", "inbound", 0)).await;
    post_ok(&app, &send("b", "ooo-b", "hangup", "outbound", 30)).await;
    // Sent before the hang-up, delivered after it.
    post_ok(&app, &send("b", "ooo-b", "answered", "outbound", 5)).await;
    post_ok(&app, &send("b", "ooo-b", "started", "outbound", 1)).await;
    // A marker: rows are applied in journal order, so once it shows, the rows above are applied.
    post_ok(&app, &send("b", "ooo-m", "started", "outbound", 2)).await;
    let call = app
        .wait_call("telecmi", conv, |c| {
            c["participants"].as_array().unwrap().len() == 3
        })
        .await;
    let b = participant(&call, "ooo-b");
    assert_eq!(b["status"], "hangup");
    assert!(b["left_at"].is_string(), "leg b stays left: {call:#}");
    assert_eq!(call["state"], "active");

    // Leg a hangs up, then its answered arrives: the leg stays left, the call ended.
    post_ok(&app, &send("a", "ooo-a", "hangup", "inbound", 40)).await;
    post_ok(&app, &send("a", "ooo-a", "answered", "inbound", 6)).await;
    // And a leg first heard of after the end does not reopen it.
    post_ok(&app, &send("b", "ooo-c", "answered", "outbound", 7)).await;
    let call = app
        .wait_call("telecmi", conv, |c| {
            c["participants"].as_array().unwrap().len() == 4
        })
        .await;
    assert_eq!(call["state"], "ended");
    assert_eq!(call["end_reason"], "hangup");
    assert_eq!(call["ended_at"], "2023-11-14T22:14:00Z");
    let a = participant(&call, "ooo-a");
    assert_eq!(a["status"], "hangup");
    assert!(a["left_at"].is_string());
    assert!(participant(&call, "ooo-c")["left_at"].is_string());
    assert!(participant(&call, "ooo-m")["left_at"].is_string());
    assert!(app.active_calls().await.is_empty());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn replies_400_413_ignored_and_duplicate() {
    let dir = tempdir();
    let mut env = env_with_token(dir.path());
    env.set("server.max_body_bytes", "2048");
    let app = TestApp::spawn(&env, dir.path()).await;

    // 400 names the field.
    for (body, field) in [
        (
            json!({"type": "event", "leg": "a", "status": "waiting"}),
            "cmiuuid",
        ),
        (
            json!({"cmiuuid": "u1", "leg": "a", "status": "waiting"}),
            "type",
        ),
        (
            json!({"cmiuuid": "u1", "type": "event", "status": "waiting"}),
            "leg",
        ),
        (
            json!({"cmiuuid": "u1", "type": "event", "leg": "a"}),
            "status",
        ),
        (json!({"cmiuuid": "u1", "type": "cdr"}), "status"),
        // SPEC §3 changed: an unreadable `time` is no longer a 400 (tests/ingest.rs).
    ] {
        let (status, reply) = post(&app, &body.to_string()).await;
        assert_eq!(status, 400, "{body}");
        let error = reply["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("`{field}`")),
            "{error} should name {field}"
        );
    }
    let (status, reply) = post(&app, "{\"cmiuuid\": ").await;
    assert_eq!(status, 400);
    assert!(reply["error"].as_str().unwrap().contains("JSON"), "{reply}");

    // 413 over server.max_body_bytes.
    let big = json!({"cmiuuid": "u2", "type": "event", "pad": "a".repeat(4096)}).to_string();
    let (status, reply) = post(&app, &big).await;
    assert_eq!(status, 413);
    assert!(reply["error"].as_str().unwrap().contains("2048"), "{reply}");

    // Unknown type or status: journaled, answered ignored, and a duplicate the second time.
    for body in [
        json!({"cmiuuid": "u3", "type": "sms", "status": "sent"}),
        json!({"cmiuuid": "u3", "type": "event", "leg": "a", "status": "transferred"}),
        json!({"cmiuuid": "u3", "type": "cdr", "status": "voicemail"}),
    ] {
        assert_eq!(
            post(&app, &body.to_string()).await,
            (200, json!({"status": "ignored"})),
            "{body}"
        );
        assert_eq!(
            post(&app, &body.to_string()).await,
            (200, json!({"status": "duplicate"})),
            "{body}"
        );
    }

    // Accepted, with the journal id; then a duplicate.
    let good = leg_event("dup-call", "a", "dup-a", "waiting", "inbound", 0).to_string();
    let (status, reply) = post(&app, &good).await;
    assert_eq!((status, &reply["status"]), (200, &json!("accepted")));
    assert!(
        reply["id"]
            .as_str()
            .is_some_and(|id| id.parse::<i64>().is_ok()),
        "{reply}"
    );
    assert_eq!(
        post(&app, &good).await,
        (200, json!({"status": "duplicate"}))
    );

    // None of the refused or ignored events made a call.
    let calls = app.active_calls().await;
    let ids: Vec<_> = calls.iter().map(|c| c["call_id"].clone()).collect();
    app.wait_call("telecmi", "dup-call", |_| true).await;
    assert!(ids.iter().all(|id| id == "dup-call"), "{ids:?}");
    for id in ["u1", "u2", "u3"] {
        assert_eq!(app.call("telecmi", id).await, None, "{id}");
    }

    // The metric says what happened, by kind and outcome, without ids.
    let (_, metrics) = app.get_admin("/metrics").await;
    let metrics = metrics.as_str().unwrap().to_string();
    for line in [
        r#"callhook_events_total{provider="telecmi",event="unknown",outcome="bad_request"}"#,
        r#"callhook_events_total{provider="telecmi",event="unknown",outcome="too_large"}"#,
        r#"callhook_events_total{provider="telecmi",event="unknown",outcome="ignored"}"#,
        r#"callhook_events_total{provider="telecmi",event="event",outcome="accepted"}"#,
        r#"callhook_events_total{provider="telecmi",event="cdr",outcome="duplicate"}"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    assert!(!metrics.contains("dup-call"));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn logs_name_the_event_but_never_the_path_token() {
    let dir = tempdir();
    let daemon = ChildDaemon::spawn(&env_with_token(dir.path()), dir.path());
    let http = reqwest::Client::new();
    let body = leg_event("log-call", "a", "log-a", "waiting", "inbound", 0).to_string();
    for token in [PATH_TOKEN, "not-the-token"] {
        let resp = http
            .post(format!("{}/webhooks/telecmi/{token}", daemon.public))
            .header("content-type", JSON)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), if token == PATH_TOKEN { 200 } else { 404 });
    }
    let mut daemon = daemon;
    daemon.signal("TERM");
    assert_eq!(daemon.wait(std::time::Duration::from_secs(15)), Some(0));
    let logs = daemon.logs();
    for line in &logs {
        assert!(
            !line.to_string().contains(PATH_TOKEN),
            "token logged: {line}"
        );
    }
    let accepted = logs
        .iter()
        .find(|l| l["message"] == "event accepted" && l["provider"] == "telecmi")
        .expect("an accepted line");
    assert_eq!(accepted["level"], "INFO");
    assert_eq!(accepted["event"], "event");
    // The outcome and the HTTP status are separate fields of one type each (issue #11).
    assert_eq!(accepted["outcome"], "accepted");
    assert_eq!(accepted["call_id"], "log-call");
    assert_eq!(accepted["participant_id"], "log-a");
    assert!(accepted["journal_id"].is_number(), "{accepted}");
    assert_eq!(accepted["path"], "/webhooks/telecmi/{path_token}");
    let refused = logs
        .iter()
        .find(|l| l["message"] == "event refused" && l["provider"] == "telecmi")
        .expect("a refused line");
    assert_eq!(refused["http_status"], 404);
}

#[tokio::test]
async fn calls_and_duplicates_survive_a_restart() {
    let dir = tempdir();
    let env = env_with_token(dir.path());
    let app = TestApp::spawn(&env, dir.path()).await;
    let form = Post {
        content_type: Some(FORM),
        ..Default::default()
    };
    let waiting = "type=event&leg=a&cmiuuid=rs-a&conversation_uuid=rs-call&status=waiting\
        &direction=inbound&from=04471000000";
    assert_eq!(form.send(&app, waiting).await.0, 200);
    app.wait_call("telecmi", "rs-call", |_| true).await;
    app.stop().await.unwrap();

    let app = TestApp::spawn(&env, dir.path()).await;
    let call = app.call("telecmi", "rs-call").await.expect("restored");
    assert_eq!(
        (&call["state"], &call["direction"]),
        (&json!("active"), &json!("inbound"))
    );
    assert_eq!(
        form.send(&app, waiting).await,
        (200, json!({"status": "duplicate"}))
    );
    let hangup = "type=event&leg=a&cmiuuid=rs-a&conversation_uuid=rs-call&status=hangup";
    assert_eq!(form.send(&app, hangup).await.0, 200);
    let call = app.wait_call("telecmi", "rs-call", ended).await;
    assert_eq!(participant(&call, "rs-a")["party_number"], "04471000000");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_leg_b_cdr_after_a_restart_still_finds_its_call_through_its_leg() {
    // Ended calls are not loaded at start-up; the CDR names neither the conversation nor the
    // call, so its leg has to be loaded from disk to find the call.
    let dir = tempdir();
    let env = env_with_token(dir.path());
    let app = TestApp::spawn(&env, dir.path()).await;
    let (conv, b_leg) = ("rs2-call", "rs2-b");
    // Recent times, as a live call has them (retention counts callhook's clock, not these).
    let base = chrono::Utc::now().timestamp_millis() - 60_000;
    for (leg, id, status, t) in [
        ("a", conv, "started", 0),
        ("b", b_leg, "started", 1),
        ("b", b_leg, "answered", 2),
        ("b", b_leg, "hangup", 8),
        ("a", conv, "hangup", 9),
    ] {
        let mut event = leg_event(conv, leg, id, status, "outbound", t);
        event["time"] = json!(base + t * 1000);
        post_ok(&app, &event.to_string()).await;
    }
    let before = app.wait_call("telecmi", conv, ended).await;
    assert_eq!(
        before["participants"].as_array().unwrap().len(),
        2,
        "{before:#}"
    );
    app.stop().await.unwrap();

    let app = TestApp::spawn(&env, dir.path()).await;
    let cdr = json!({
        "type": "cdr", "leg": "b", "cmiuuid": b_leg, "status": "answered",
        "user": "202_2222223", "time": base + 2000, "direction": "outbound",
        "answeredsec": 6, "hangup_reason": "sent_bye", "record": true, "filename": "rs2.mp3",
    });
    post_ok(&app, &cdr.to_string()).await;
    let call = app
        .wait_call("telecmi", conv, |c| c["recordings"][0]["id"] == "rs2.mp3")
        .await;
    assert_eq!(participant(&call, b_leg)["extra"]["answeredsec"], 6);
    assert_eq!(
        call["participants"].as_array().unwrap().len(),
        2,
        "{call:#}"
    );
    assert!(app.call("telecmi", b_leg).await.is_none(), "a phantom call");
}

#[tokio::test]
async fn caller_id_and_did_are_kept_with_their_leading_zeros_across_a_restart() {
    let dir = tempdir();
    let env = env_with_token(dir.path());
    let app = TestApp::spawn(&env, dir.path()).await;
    // Recent times, as a live call has them (retention counts callhook's clock, not these).
    let now = chrono::Utc::now().timestamp_millis() - 60_000;
    // Bare leading-zero numbers, as TeleCMI writes them: not JSON, kept as text.
    let inbound_a = format!(
        r#"{{"type": "event", "leg": "a", "cmiuuid": "cd-a", "conversation_uuid": "cd-in",
        "status": "waiting", "direction": "inbound", "from": 09200000000,
        "callerid": 04471000000, "to": 04400000001, "time": {now}}}"#
    );
    let inbound_b = format!(
        r#"{{"type": "event", "leg": "b", "cmiuuid": "cd-b", "conversation_uuid": "cd-in",
        "status": "answered", "direction": "outbound", "user": "103_1111113",
        "virtual_number": 04400000002, "to": 9100000000, "time": {}}}"#,
        now + 1000
    );
    let outbound_a = format!(
        r#"{{"type": "event", "leg": "a", "cmiuuid": "cd-o", "conversation_uuid": "cd-out",
        "status": "started", "direction": "outbound", "callerid": 04471000000,
        "to": 09100000000, "time": {now}}}"#
    );
    for body in [&inbound_a, &inbound_b, &outbound_a] {
        post_ok(&app, body).await;
    }
    // The hang-up names neither number: what was known stays.
    let hangup = json!({"type": "event", "leg": "a", "cmiuuid": "cd-a", "conversation_uuid": "cd-in",
        "status": "hangup", "direction": "inbound", "time": now + 5000});
    post_ok(&app, &hangup.to_string()).await;
    app.wait_call("telecmi", "cd-in", ended).await;
    app.wait_call("telecmi", "cd-out", |_| true).await;

    let check = |inbound: &Value, outbound: &Value| {
        let a = participant(inbound, "cd-a");
        assert_eq!(
            (&a["caller_id"], &a["did"]),
            (&json!("04471000000"), &json!("04400000001")),
            "{inbound:#}"
        );
        let b = participant(inbound, "cd-b");
        assert_eq!(
            (&b["caller_id"], &b["did"]),
            (&Value::Null, &json!("04400000002")),
            "{inbound:#}"
        );
        // An outbound call's `to` is the customer, not a DID.
        let o = participant(outbound, "cd-o");
        assert_eq!(
            (&o["caller_id"], &o["did"]),
            (&json!("04471000000"), &Value::Null),
            "{outbound:#}"
        );
    };
    let inbound = app.call("telecmi", "cd-in").await.unwrap();
    let outbound = app.call("telecmi", "cd-out").await.unwrap();
    check(&inbound, &outbound);
    // `/api/history` reads the call back from the database.
    let mut listed = None;
    for _ in 0..200 {
        let (_, history) = app.get_admin("/api/history?limit=10").await;
        listed = history["calls"]
            .as_array()
            .and_then(|calls| calls.iter().find(|c| c["call_id"] == "cd-in"))
            .cloned();
        if listed.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    check(&listed.expect("cd-in in the history"), &outbound);
    app.stop().await.unwrap();

    // The ended call is read back from disk, the active one restored at start.
    let app = TestApp::spawn(&env, dir.path()).await;
    let inbound = app.call("telecmi", "cd-in").await.expect("ended call kept");
    let outbound = app
        .call("telecmi", "cd-out")
        .await
        .expect("active call restored");
    check(&inbound, &outbound);
    app.stop().await.unwrap();
}
