//! The provider seam (issue #12): the processor applies journal rows through each provider's
//! decoder, refuses to skip a row no provider claims, and alone creates download jobs, so an
//! event journaled but never applied (a crash right after its 200) still gets its job.

use std::time::Duration;

use crate::common::*;
use callhook::calls::{Provider, RecordingState};
use callhook::journal::{Appended, Journal, NewEvent};
use callhook::providers::jas::events::decode;
use callhook::providers::jas::routes::journal_entry;
use callhook::sim::{JasSim, SimRoute};
use chrono::Utc;

/// Journals `body` as the JAS route would (the event's own dedupe key).
async fn journal_jas(journal: &Journal, body: &str) -> i64 {
    let decoded = decode(body.as_bytes(), Utc::now()).unwrap();
    let entry = journal_entry(
        &decoded.event,
        decoded.dedupe_key,
        bytes::Bytes::from(body.to_string()),
    );
    match journal.append(entry).await.unwrap() {
        Appended::Accepted(id) => id,
        Appended::Duplicate => panic!("duplicate"),
    }
}

#[tokio::test]
async fn a_journal_row_of_an_unknown_provider_stops_the_cursor_and_is_reported() {
    let dir = tempdir();
    let env = Env::new(dir.path());
    let journal = Journal::open(&data_dir(dir.path()).join("callhook.db"))
        .await
        .unwrap();
    journal_jas(&journal, &call_status("101", "1", 0, 1)).await;
    let Appended::Accepted(unknown) = journal
        .append(NewEvent {
            provider: "third",
            name: "ring".into(),
            dedupe_key: "third:1".into(),
            content_type: None,
            body: bytes::Bytes::from_static(b"{}"),
            received_at: Utc::now(),
        })
        .await
        .unwrap()
    else {
        panic!("duplicate");
    };
    journal_jas(&journal, &call_status("102", "1", 0, 1)).await;
    journal.close().await.unwrap();

    // Caught up before `ready`: the row before the unknown one is applied, the one after not.
    let mut daemon = ChildDaemon::spawn(&env, dir.path());
    let http = reqwest::Client::new();
    let admin = daemon.admin.clone();
    let call = |id: &str| {
        let url = format!("{admin}/api/calls/jas/{id}");
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(call("101:1").await, 200);
    assert_eq!(call("102:1").await, 404);
    // Acknowledging goes on; applying waits for a version that knows the row.
    let (status, _) = post_signed(&daemon.public, &call_status("103", "1", 0, 1)).await;
    assert_eq!(status, 200);
    let stuck = |logs: &[serde_json::Value]| {
        logs.iter()
            .filter(|l| {
                l["level"] == "ERROR"
                    && l["journal_id"] == unknown
                    && l["provider"] == "third"
                    && l["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("unknown provider"))
            })
            .count()
    };
    wait_until(Duration::from_secs(5), || {
        let n = stuck(&daemon.logs());
        async move { n == 1 }
    })
    .await;
    // Nothing that happens would show as a log line or a metric: watch for it a while.
    for _ in 0..20 {
        assert_eq!(call("103:1").await, 404);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(call("102:1").await, 404);
    daemon.signal("TERM");
    assert_eq!(daemon.wait(Duration::from_secs(15)), Some(0));
    // Reported once, not once per wake-up.
    assert_eq!(stuck(&daemon.logs()), 1);
}

#[tokio::test]
async fn a_recording_journaled_but_never_applied_gets_its_job_at_the_next_start() {
    let dir = tempdir();
    let sim = JasSim::with_token(TOKEN);
    let name = "101/replayed.wav";
    sim.add_recording(name, vec![7u8; 4096]);
    let server = sim.start().await.unwrap();
    let env = Env::new(dir.path()).with_sim(&server.base_url);
    // As if the daemon died right after the 200: the event is journaled, nothing applied, and
    // no job exists (the route creates none).
    let journal = Journal::open(&data_dir(dir.path()).join("callhook.db"))
        .await
        .unwrap();
    let id = journal_jas(&journal, &new_recording("26", name, 5)).await;
    assert_eq!(journal.job(Provider::Jas, "5".into()).await.unwrap(), None);
    journal.close().await.unwrap();

    let app = TestApp::spawn(&env, dir.path()).await;
    let call = app
        .wait_call("jas", "26", |c| c["recordings"][0]["state"] == "downloaded")
        .await;
    assert_eq!(call["recordings"][0]["bytes"], 4096);
    assert_eq!(sim.requests(SimRoute::Recording), 1);
    app.stop().await.unwrap();
    // The job names the event that created it.
    let journal = Journal::open(&data_dir(dir.path()).join("callhook.db"))
        .await
        .unwrap();
    let job = journal
        .job(Provider::Jas, "5".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (job.event_id, job.state),
        (Some(id), RecordingState::Downloaded)
    );
    journal.close().await.unwrap();
}
