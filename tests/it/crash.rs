//! Crash safety under load: several clients post signed events (participant lookups on, against
//! the simulated JAS API) for about two seconds; once the processor has caught up the call table
//! is noted and the daemon is SIGKILLed in the middle of a burst of redeliveries, so the kill
//! lands while the journal writer is busy. Restarted on the same database, every event that was
//! answered `accepted` must come back `duplicate` and the call table must be what it was.
//!
//! `CALLHOOK_CRASH_ROUNDS` (default 1) repeats the round on the same database;
//! `bench/crash-loop.sh` runs 20.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use callhook::providers::jas::verify::sign;
use callhook::sim::JasSim;
use serde_json::Value;

const CLIENTS: usize = 4;
const LOAD: Duration = Duration::from_secs(2);

async fn post(http: &reqwest::Client, url: &str, body: &str) -> Result<(u16, Value), String> {
    let sig = sign(SECRET.as_bytes(), body.as_bytes());
    let resp = http
        .post(url)
        .header("x-sig", sig)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.json().await.map_err(|e| e.to_string())?;
    Ok((status, body))
}

async fn active_calls(http: &reqwest::Client, admin: &str) -> Value {
    http.get(format!("{admin}/api/calls"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls `/api/calls` until three reads in a row 200 ms apart agree.
async fn stable_calls(http: &reqwest::Client, admin: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = active_calls(http, admin).await;
    let mut same = 0;
    while same < 2 {
        assert!(Instant::now() < deadline, "the call table never settled");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = active_calls(http, admin).await;
        if now == last {
            same += 1;
        } else {
            same = 0;
            last = now;
        }
    }
    last
}

/// One client's events: participants joining calls of two (the sim's `callid`), a third of them
/// leaving again, each event sometimes delivered twice.
async fn client(
    http: reqwest::Client,
    sim: JasSim,
    url: String,
    round: usize,
    client: usize,
    accepted: Arc<Mutex<Vec<String>>>,
) -> usize {
    let started = Instant::now();
    let dn = format!("{}", 100 + client);
    let mut sent = 0;
    let mut i = 0;
    while started.elapsed() < LOAD {
        let pid = format!("{round}_{client}_{i}");
        let callid = format!("{round}-{client}-{}", i / 2);
        let far = if i % 2 == 0 {
            "Wexternalline"
        } else {
            "Wextension"
        };
        sim.set_participant(
            &dn,
            &pid,
            participant(&dn, &pid, &callid, "Connected", "10000", far),
        );
        let mut bodies = vec![call_status(&dn, &pid, 0, 2 * i as i64)];
        if i % 3 == 2 {
            // The one that joined two steps ago leaves.
            let gone = format!("{round}_{client}_{}", i - 2);
            bodies.push(call_status(&dn, &gone, 1, 2 * i as i64 + 1));
        }
        for body in bodies {
            let repeats = if i % 7 == 0 { 2 } else { 1 };
            for _ in 0..repeats {
                let (status, reply) = post(&http, &url, &body).await.expect("daemon answers");
                assert_eq!(status, 200, "{reply}");
                match reply["status"].as_str() {
                    Some("accepted") => accepted.lock().unwrap().push(body.clone()),
                    Some("duplicate") => {}
                    other => panic!("unexpected reply {other:?}: {reply}"),
                }
                sent += 1;
            }
        }
        i += 1;
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_loses_no_acknowledged_event() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rounds: usize = std::env::var("CALLHOOK_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let sim = JasSim::with_token(TOKEN);
    let server = sim.start().await.unwrap();
    let dir = tempdir();
    let env = Env::new(dir.path()).with_sim(&server.base_url);
    let http = reqwest::Client::new();
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut daemon = tokio::task::block_in_place(|| ChildDaemon::spawn(&env, dir.path()));

    for round in 0..rounds {
        let url = format!("{}/webhooks/jas", daemon.public);
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|c| {
                tokio::spawn(client(
                    http.clone(),
                    sim.clone(),
                    url.clone(),
                    round,
                    c,
                    accepted.clone(),
                ))
            })
            .collect();
        let mut sent = 0;
        for t in tasks {
            sent += t.await.unwrap();
        }
        let before = stable_calls(&http, &daemon.admin).await;
        let all: Vec<String> = accepted.lock().unwrap().clone();
        assert!(
            all.len() > 100,
            "round {round}: only {} accepted",
            all.len()
        );
        assert!(
            before["calls"].as_array().unwrap().len() > 10,
            "round {round}: {before}"
        );

        // Redeliveries keep the journal writer busy while the kill lands.
        let burst: Vec<_> = all
            .chunks(all.len().div_ceil(CLIENTS))
            .map(|chunk| {
                let (http, url, chunk) = (http.clone(), url.clone(), chunk.to_vec());
                tokio::spawn(async move {
                    for body in chunk {
                        if post(&http, &url, &body).await.is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(150)).await;
        daemon.signal("KILL");
        assert_eq!(
            tokio::task::block_in_place(|| daemon.wait(Duration::from_secs(10))),
            None,
            "killed by the signal"
        );
        for b in burst {
            b.await.unwrap();
        }

        drop(daemon);
        daemon = tokio::task::block_in_place(|| ChildDaemon::spawn(&env, dir.path()));
        let url = format!("{}/webhooks/jas", daemon.public);
        let checks: Vec<_> = all
            .chunks(all.len().div_ceil(CLIENTS))
            .map(|chunk| {
                let (http, url, chunk) = (http.clone(), url.clone(), chunk.to_vec());
                tokio::spawn(async move {
                    for body in chunk {
                        let (status, reply) = post(&http, &url, &body).await.unwrap();
                        assert_eq!(
                            (status, reply["status"].as_str()),
                            (200, Some("duplicate")),
                            "accepted before the kill, not a duplicate after it: {body}"
                        );
                    }
                })
            })
            .collect();
        for c in checks {
            c.await.unwrap();
        }
        let after = stable_calls(&http, &daemon.admin).await;
        assert_eq!(
            before, after,
            "round {round}: call table changed by the crash"
        );
        eprintln!(
            "round {round}: {sent} posted, {} accepted in all, {} active calls survived SIGKILL",
            all.len(),
            after["calls"].as_array().unwrap().len()
        );
    }
}
