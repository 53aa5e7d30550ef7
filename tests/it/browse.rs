//! `GET /api/events` (SPEC §4): the journal's rows as received, newest first, filtered.

use serde_json::{Value, json};

use crate::common::*;

#[tokio::test]
async fn the_journal_lists_newest_first_filtered_with_bodies_as_received() {
    let dir = tempdir();
    let mut env = Env::new(dir.path());
    env.set("telecmi.path_token", "tok-9");
    let app = TestApp::spawn(&env, dir.path()).await;
    assert_eq!(app.post_jas(&call_status("150", "1", 0, 1)).await.0, 200);
    assert_eq!(app.post_jas(&call_status("150", "1", 1, 2)).await.0, 200);
    let form = "type=event&leg=a&cmiuuid=conv-f&conversation_uuid=conv-f&status=started&direction=inbound&time=1700000000000";
    let resp = app
        .http
        .post(format!("{}/webhooks/telecmi/tok-9", app.public))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let (status, all) = app.get_admin("/api/events").await;
    assert_eq!(status, 200, "{all}");
    let events = all["events"].as_array().unwrap();
    let names: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["provider"].as_str().unwrap(), e["name"].as_str().unwrap()))
        .collect();
    assert_eq!(names[0].0, "telecmi");
    assert_eq!(
        &names[1..],
        [("jas", "call_status"), ("jas", "call_status")]
    );
    // The form's fields, as an object; the JSON, as it came.
    assert_eq!(events[0]["body"]["cmiuuid"], "conv-f");
    assert_eq!(events[1]["body"]["data"]["sequence"], 2);
    assert!(events[0]["id"].as_i64() > events[1]["id"].as_i64());
    assert!(
        events[0]["dedupe_key"]
            .as_str()
            .unwrap()
            .starts_with("telecmi:")
    );
    assert!(events[0]["received_at"].as_str().is_some());

    let (_, jas) = app.get_admin("/api/events?provider=jas&limit=1").await;
    let jas = jas["events"].as_array().unwrap();
    assert_eq!(jas.len(), 1);
    assert_eq!(jas[0]["body"]["data"]["sequence"], 2);
    let (_, none) = app.get_admin("/api/events?name=new_recording").await;
    assert_eq!(none["events"], json!([]));
    let (_, later) = app
        .get_admin("/api/events?since=2999-01-01T00:00:00Z")
        .await;
    assert_eq!(later["events"], json!([]));
    for (query, field) in [
        ("limit=0", "`limit`"),
        ("provider=nope", "`provider`"),
        ("since=yesterday", "`since`"),
    ] {
        let (status, reply): (u16, Value) = app.get_admin(&format!("/api/events?{query}")).await;
        assert_eq!(status, 400, "{query}");
        assert!(reply["error"].as_str().unwrap().contains(field), "{reply}");
    }
    app.stop().await.unwrap();
}

/// `callhook calls` and `callhook export` against a running daemon (SPEC §1).
#[tokio::test]
async fn calls_prints_the_active_calls_and_export_the_ended_ones_as_cdr_rows() {
    let dir = tempdir();
    let port = free_port();
    let mut env = Env::new(dir.path());
    env.set("admin.listen", &format!("127.0.0.1:{port}"));
    let daemon = ChildDaemon::spawn(&env, dir.path());
    for body in [
        call_status("160", "1", 0, 1),
        call_status("161", "1", 0, 2),
        call_status("161", "1", 1, 3),
    ] {
        assert_eq!(post_signed(&daemon.public, &body).await.0, 200);
    }
    let cli = |args: &[&str]| cli(&env, dir.path(), args);
    // Call 161 ends after its grace; until then both are active.
    let mut csv_out = String::new();
    for _ in 0..100 {
        let (code, out, err) = cli(&["export", "--since", "2000-01-01T00:00:00Z"]);
        assert_eq!(code, Some(0), "{err}");
        if out.lines().count() >= 2 {
            csv_out = out;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut reader = csv::Reader::from_reader(csv_out.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header, callhook::calls::cdr::COLUMNS);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 1, "{csv_out}");
    assert_eq!((&rows[0][0], &rows[0][1]), ("jas", "161:1"));
    assert_eq!(&rows[0][9], "completed");

    let (code, out, err) = cli(&["calls"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("PROVIDER") && out.contains("160:1"), "{out}");
    assert!(!out.contains("161:1"), "an ended call is not active: {out}");

    let (code, out, err) = cli(&[
        "export",
        "--since",
        "2000-01-01T00:00:00Z",
        "--format",
        "ndjson",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let row: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(row["call_id"], "161:1");
    // Before the call ended: nothing, and not even a header is missing.
    let (_, out, _) = cli(&[
        "export",
        "--since",
        "2000-01-01T00:00:00Z",
        "--until",
        "2000-01-02T00:00:00Z",
    ]);
    assert_eq!(out.lines().count(), 1, "{out}");
    let (code, _, err) = cli(&["export", "--since", "yesterday"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("`since`"), "{err}");
    drop(daemon);
}
