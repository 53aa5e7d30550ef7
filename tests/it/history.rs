//! History and summaries as an operator sees them (§4): `/api/history` paging over ended calls,
//! and `call_summary`/`call_analysis` kept verbatim on the call they name.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

fn ids(body: &Value) -> Vec<String> {
    body["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["call_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn history_is_newest_first_and_pages_with_limit_and_before() {
    let dir = tempdir();
    let app = TestApp::spawn(&Env::new(dir.path()), dir.path()).await;
    // Without lookups each participant is its own call, `{dn}:{id}`; call i ends at
    // 15:04:(10i+2). Posted out of order: history is ordered by end, not by arrival.
    for i in [2, 0, 4, 1, 3] {
        let dn = format!("10{i}");
        app.post_jas(&call_status(&dn, "1", 0, 10 * i + 1)).await;
        app.post_jas(&call_status(&dn, "1", 1, 10 * i + 2)).await;
    }
    app.post_jas(&call_status("200", "1", 0, 50)).await;
    for i in 0..5 {
        app.wait_call("jas", &format!("10{i}:1"), |c| c["state"] == "ended")
            .await;
    }
    app.wait_call("jas", "200:1", |c| c["state"] == "active")
        .await;

    // History is read from the database, written a moment after the table changes.
    wait_until(Duration::from_secs(5), || async {
        ids(&app.get_admin("/api/history").await.1).len() == 5
    })
    .await;
    let (s, all) = app.get_admin("/api/history").await;
    assert_eq!(s, 200);
    assert_eq!(ids(&all), ["104:1", "103:1", "102:1", "101:1", "100:1"]);
    assert!(same_time(&all["calls"][0]["ended_at"], &event_time(42)));
    assert!(
        all["calls"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "ended")
    );

    let (_, page) = app.get_admin("/api/history?limit=2").await;
    assert_eq!(ids(&page), ["104:1", "103:1"]);
    // `before` is exclusive: the next page starts after the last call shown.
    let last = page["calls"][1]["ended_at"].as_str().unwrap();
    let (_, next) = app
        .get_admin(&format!("/api/history?limit=2&before={last}"))
        .await;
    assert_eq!(ids(&next), ["102:1", "101:1"]);
    let (_, rest) = app
        .get_admin(&format!("/api/history?before={}", event_time(12)))
        .await;
    assert_eq!(ids(&rest), ["100:1"]);
    let (_, none) = app
        .get_admin(&format!("/api/history?before={}", event_time(2)))
        .await;
    assert_eq!(ids(&none), Vec::<String>::new());
}

#[tokio::test]
async fn summaries_are_attached_verbatim() {
    let dir = tempdir();
    let app = TestApp::spawn(&Env::new(dir.path()), dir.path()).await;
    app.post_jas(&call_status("101", "1", 0, 1)).await;
    app.wait_call("jas", "101:1", |c| c["state"] == "active")
        .await;

    let data = json!({
        "call_id": "101:1",
        "summary": "Caller asked about an invoice; résumé sent.",
        "sentiment": {"score": -0.25, "label": "neutral"},
        "topics": ["billing", 42, null, {"nested": [true, 1.5]}]
    });
    let body = json!({"eventName": "call_summary", "timestamp": event_time(200), "data": data});
    let (s, reply) = app.post_jas(&body.to_string()).await;
    assert_eq!((s, reply["status"].as_str()), (200, Some("accepted")));
    let call = app
        .wait_call("jas", "101:1", |c| !c["summary"].is_null())
        .await;
    assert_eq!(call["summary"], data);
    assert_eq!(call["state"], "active");

    // The other spelling, for a call never seen: it exists, nobody on it, so it is over once
    // its grace (`calls.end_grace_ms`) has passed with no participant; direction unknown.
    let data = json!({"callid": 77, "analysis": {"intent": "cancel"}});
    let body = json!({"eventName": "call_analysis", "data": data});
    assert_eq!(app.post_jas(&body.to_string()).await.0, 200);
    let call = app.wait_call("jas", "77", |c| c["state"] == "ended").await;
    assert_eq!(call["summary"], data);
    assert_eq!(call["direction"], "unknown");

    // Kept across a restart.
    app.stop().await.unwrap();
    let app = TestApp::spawn(&Env::new(dir.path()), dir.path()).await;
    assert_eq!(app.call("jas", "77").await.unwrap()["summary"], data);
}

#[tokio::test]
async fn a_call_known_only_from_its_summary_is_in_history() {
    let dir = tempdir();
    let app = TestApp::spawn(&Env::new(dir.path()), dir.path()).await;
    let body = json!({"eventName": "call_summary", "timestamp": event_time(5),
                      "data": {"call_id": "4242", "summary": "short call"}})
    .to_string();
    assert_eq!(app.post_jas(&body).await.0, 200);
    wait_until(std::time::Duration::from_secs(5), || async {
        ids(&app.get_admin("/api/history").await.1).contains(&"4242".to_string())
    })
    .await;
    let call = app.call("jas", "4242").await.unwrap();
    assert_eq!(call["summary"]["summary"], "short call");
    assert_eq!(call["state"], "ended");
}
