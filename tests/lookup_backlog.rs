//! More participants than lookup slots: the rest wait in a queue, `callhook_lookups_waiting`
//! shows how many, and every one is answered once slots free up. A file of its own because the
//! metrics registry is per process, and other tests' processors would set the same gauge.

mod common;

use std::time::Duration;

use callhook::sim::{JasSim, SimRoute};
use common::*;

/// Lookups in flight at once (`LOOKUP_CONCURRENCY` in the processor).
const SLOTS: usize = 32;
const PARTICIPANTS: usize = 100;

async fn metric(app: &TestApp, series: &str) -> f64 {
    let (_, text) = app.get_admin("/metrics").await;
    let text = text.as_str().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_of_lookups_waits_for_free_slots_and_every_one_is_answered() {
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
    // Slow enough that the queue is still there at the next gauge update (once a second).
    sim.set_delay(SimRoute::Participant, Duration::from_millis(800));
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

    let slot = r#"callhook_lookups_waiting{reason="slot"}"#;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut most = 0.0f64;
    while most == 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no lookup ever waited for a slot"
        );
        most = metric(&app, slot).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        most <= (PARTICIPANTS - SLOTS) as f64,
        "{most} waiting: more than {SLOTS} lookups were in flight"
    );

    // Every participant is looked up and lands on its call: the queue never stalls.
    wait_until(Duration::from_secs(30), || async {
        metric(&app, r#"callhook_lookups_total{outcome="ok"}"#).await >= PARTICIPANTS as f64
    })
    .await;
    for id in 1..=PARTICIPANTS {
        let call = format!("backlog-{id}");
        app.wait_call("jas", &call, |c| {
            c["participants"][0]["status"] == "Ringing"
        })
        .await;
    }
    assert_eq!(sim.requests(SimRoute::Participant), PARTICIPANTS);
    wait_until(Duration::from_secs(3), || async {
        metric(&app, slot).await == 0.0
    })
    .await;
}
