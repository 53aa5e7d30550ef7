//! More participants than lookup slots: exactly `SLOTS` lookups are in flight at once, the
//! rest wait in a queue that `callhook_lookups_waiting` shows, and the queue drains as fast as
//! the slots allow, with no event or timer needed to move it. A file of its own because the
//! metrics registry is per process, and other tests' processors would set the same gauge.
// Test clients build reqwest clients directly (see tests/it/main.rs).
#![allow(clippy::disallowed_methods)]

#[path = "it/common/mod.rs"]
mod common;

use std::time::Duration;

use callhook::processor::LOOKUP_CONCURRENCY as SLOTS;
use callhook::sim::{JasSim, SimRoute};
use common::*;

const PARTICIPANTS: usize = 100;
/// How long the API takes for each lookup: 100 lookups through 32 slots take 4 rounds.
const DELAY: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_of_lookups_waits_for_free_slots_and_drains_by_itself() {
    let sim = JasSim::with_token(TOKEN);
    let server = sim.start().await.unwrap();
    for id in 1..=PARTICIPANTS {
        let id = id.to_string();
        let call = format!("backlog-{id}");
        sim.set_participant(
            "101",
            &id,
            participant("101", &id, &call, "Ringing", "10000", "Wexternalline"),
        );
    }
    sim.set_delay(SimRoute::Participant, DELAY);
    let dir = tempdir();
    let app = TestApp::start(
        Env::new(dir.path())
            .with_sim(&server.base_url)
            .settings(dir.path()),
    )
    .await;
    app.wait_ready().await;

    for id in 1..=PARTICIPANTS {
        let (status, _) = app
            .post_jas(&call_status("101", &id.to_string(), 0, 1))
            .await;
        assert_eq!(status, 200);
    }

    // Four rounds of 1.5 s drain the queue in about 6 s. Nothing else happens meanwhile (no
    // event, and the processor's safety net runs once a minute), so the queue only drains in
    // time if each slot takes the next lookup as soon as its own is answered.
    let ok = r#"callhook_lookups_total{outcome="ok"}"#;
    let slot = r#"callhook_lookups_waiting{reason="slot"}"#;
    let deadline = tokio::time::Instant::now() + DELAY * 4 + Duration::from_secs(5);
    let mut most_waiting = 0.0f64;
    while app.metric(ok).await < PARTICIPANTS as f64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {PARTICIPANTS} lookups answered in time",
            app.metric(ok).await
        );
        most_waiting = most_waiting.max(app.metric(slot).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(sim.peak_concurrent(SimRoute::Participant), SLOTS);
    assert_eq!(sim.requests(SimRoute::Participant), PARTICIPANTS);
    // The gauge is set once a second; the queue was there for several seconds.
    assert!(
        most_waiting > 0.0 && most_waiting <= (PARTICIPANTS - SLOTS) as f64,
        "callhook_lookups_waiting{{reason=\"slot\"}} peaked at {most_waiting}"
    );
    for id in 1..=PARTICIPANTS {
        let call = format!("backlog-{id}");
        app.wait_call("jas", &call, |c| {
            c["participants"][0]["status"] == "Ringing"
        })
        .await;
    }
    wait_until(Duration::from_secs(3), || async {
        app.metric(slot).await == 0.0
    })
    .await;
}
