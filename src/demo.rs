//! `callhook demo`: the whole pipeline with no account and no network. It starts the simulated
//! JAS Connect API and the daemon on free loopback ports with a data folder of its own (`--dir`, else
//! a new one under the temporary directory), drives an outbound and an inbound call with signed
//! events (a duplicate and an out-of-order pair among them), waits for the recording, prints the
//! call table, the call events its own receiver got (signatures checked) and where it left its
//! files (kept, so the recording can be played), and exits. A third call's hang-up webhook is
//! "lost": a reconciliation with the simulated API's call-control snapshot ends it (SPEC §8).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::app::Application;
use crate::config::{Settings, Sources};
use crate::providers::jas::verify::sign;
use crate::sim::JasSim;

const SECRET: &str = "demo-webhook-secret";
const TOKEN: &str = "demo-api-token";
const RECORDING: &str = "101/[John Doe]_101-5148888888_20250603153720(26).wav";
/// The demo receiver's signing key (`whsec_` + base64 of "callhook demo receiver key").
const RECEIVER_KEY: &str = "whsec_Y2FsbGhvb2sgZGVtbyByZWNlaXZlciBrZXk=";

/// One call event as the demo's receiver got it.
struct Received {
    id: String,
    kind: String,
    call: String,
    verified: bool,
}

/// A local endpoint for the daemon's call events (SPEC §7), as a CRM would run one: it checks
/// each delivery's Standard Webhooks signature and keeps what came.
struct DemoReceiver {
    url: String,
    got: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl DemoReceiver {
    async fn start() -> Result<DemoReceiver, String> {
        use axum::http::{HeaderMap, StatusCode};
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let key = crate::outbound::signing::Key::parse(RECEIVER_KEY).map_err(|e| e.to_string())?;
        let key = std::sync::Arc::new(key);
        let kept = got.clone();
        let route = move |headers: HeaderMap, body: axum::body::Bytes| {
            let (got, key) = (kept.clone(), key.clone());
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                let id = header("webhook-id");
                let verified = header("webhook-timestamp")
                    .parse()
                    .is_ok_and(|ts| key.verifies(&id, ts, &body, &header("webhook-signature")));
                let event: Value = serde_json::from_slice(&body).unwrap_or_default();
                got.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Received {
                        id,
                        kind: match event["call"]["end_reason"].as_str() {
                            Some(reason) if event["type"] == "call.ended" => {
                                format!("call.ended ({reason})")
                            }
                            _ => event["type"].as_str().unwrap_or("?").to_string(),
                        },
                        call: event["call"]["call_id"].as_str().unwrap_or("?").to_string(),
                        verified,
                    });
                if verified {
                    StatusCode::NO_CONTENT
                } else {
                    StatusCode::UNAUTHORIZED
                }
            }
        };
        let app = axum::Router::new().route("/events", axum::routing::post(route));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot start the demo receiver: {e}"))?;
        let url = format!(
            "http://{}/events",
            listener.local_addr().map_err(|e| e.to_string())?
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(DemoReceiver { url, got })
    }

    /// Waits until `kind` has arrived for `call`, or gives up after `limit`.
    async fn wait_for(&self, kind: &str, call: &str, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let seen = self
                .got
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|r| r.kind.starts_with(kind) && r.call == call);
            if seen {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("the receiver never got {kind} for call {call}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn print(&self) {
        println!(
            "
call events delivered to the demo receiver at {}",
            self.url
        );
        for r in self.got.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let check = if r.verified {
                "signature verified"
            } else {
                "BAD SIGNATURE"
            };
            println!("  jas/{:<5} {:<24} {}  {check}", r.call, r.kind, r.id);
        }
    }
}

pub async fn run(dir: Option<PathBuf>) -> ExitCode {
    let dir = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "callhook-demo-{}-{}",
            std::process::id(),
            Utc::now().timestamp_millis()
        ))
    });
    // An earlier demo's database would mix its calls into this one's.
    if std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some()) {
        eprintln!(
            "demo: {} is not empty; give an empty or new folder with --dir",
            dir.display()
        );
        return ExitCode::from(2);
    }
    match demo(&dir).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::from(1)
        }
    }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

/// A short WAV file (one second of silence) standing in for the recording.
fn wav() -> Vec<u8> {
    let data_len: u32 = 16_000;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&8_000u32.to_le_bytes());
    out.extend_from_slice(&16_000u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.resize(44 + data_len as usize, 0);
    out
}

fn participant(dn: &str, id: &str, callid: u32, status: &str) -> Value {
    json!({
        "id": id, "status": status, "dn": dn, "party_caller_name": "",
        "party_dn": "10000", "party_caller_id": "5148888888", "party_did": "",
        "device_id": format!("sip:{dn}@127.0.0.1:5063"), "party_dn_type": "Wexternalline",
        "callid": callid, "legid": 1
    })
}

fn call_status(dn: &str, id: &str, event_type: u8, sequence: u64) -> String {
    json!({
        "eventName": "call_status",
        "timestamp": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": {"event": {"entity": format!("/callcontrol/{dn}/participants/{id}"), "event_type": event_type}, "sequence": sequence}
    })
    .to_string()
}

struct Driver {
    http: reqwest::Client,
    webhook: String,
    admin: String,
}

impl Driver {
    async fn post(&self, what: &str, body: &str) -> Result<(), String> {
        let resp = self
            .http
            .post(&self.webhook)
            .header("content-type", "application/json")
            .header("x-sig", sign(SECRET.as_bytes(), body.as_bytes()))
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| format!("posting {what}: {}", crate::outbound::describe(e)))?;
        let status = resp.status().as_u16();
        let reply = resp.text().await.unwrap_or_default();
        println!("  POST {what:<44} -> {status} {reply}");
        if status == 200 {
            Ok(())
        } else {
            Err(format!("{what} was answered {status}"))
        }
    }

    async fn call(&self, id: &str) -> Option<Value> {
        let resp = self
            .http
            .get(format!("{}/api/calls/jas/{id}", self.admin))
            .send()
            .await
            .ok()?;
        if resp.status() != 200 {
            return None;
        }
        resp.json().await.ok()
    }

    /// A `call_status` event: `change` is `insert`, `update` or `remove`.
    async fn participant_event(
        &self,
        dn: &str,
        id: &str,
        change: &str,
        seq: u64,
    ) -> Result<(), String> {
        let event_type = if change == "remove" { 1 } else { 0 };
        let what = format!("call_status {dn}/{id} {change}  seq {seq}");
        self.post(&what, &call_status(dn, id, event_type, seq))
            .await
    }

    /// Ready comes before the background registration is done: waits for both.
    async fn wait_ready_and_registered(&self) -> Result<(), String> {
        let ready = format!("{}/readyz", self.admin);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = self.http.get(&ready).send().await {
                if r.status() == 200 {
                    let body: Value = r.json().await.unwrap_or_default();
                    if body["registration"] == "registered" || body["registration"] == "off" {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err("the daemon did not become ready".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the admin API lists no delivery still pending (the receiver has had every
    /// event produced so far).
    async fn wait_delivered(&self) -> Result<(), String> {
        let url = format!("{}/api/endpoints", self.admin);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = self.http.get(&url).send().await {
                let body: Value = r.json().await.unwrap_or_default();
                if body["endpoints"][0]["pending"] == 0 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err("the demo receiver did not get every call event".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the call lists a participant (its lookup has answered).
    async fn wait_for_participants(&self, id: &str) -> Result<Value, String> {
        self.wait_call(id, Duration::from_secs(10), |c| {
            !c["participants"].as_array().is_none_or(Vec::is_empty)
        })
        .await
    }

    /// Polls until `check` holds for the call, or gives up after `limit`.
    async fn wait_call(
        &self,
        id: &str,
        limit: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(call) = self.call(id).await {
                if check(&call) {
                    return Ok(call);
                }
            }
            if Instant::now() > deadline {
                return Err(format!("call {id} did not reach the expected state"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn demo(dir: &Path) -> Result<(), String> {
    let started = Instant::now();
    println!("callhook demo: data in {}", dir.display());

    let sim = JasSim::with_token(TOKEN);
    let server = sim
        .start()
        .await
        .map_err(|e| format!("cannot start the simulated JAS API: {e}"))?;
    println!("  simulated JAS Connect API at {}", server.base_url);
    sim.add_recording(RECORDING, wav());

    let receiver = DemoReceiver::start().await?;
    let app = Application::build(settings(dir, &server.base_url, &receiver.url)?)
        .await
        .map_err(|e| e.to_string())?;
    let driver = Driver {
        http: crate::outbound::client(crate::outbound::Options::own(false))
            .map_err(|e| e.to_string())?,
        webhook: format!("http://{}/webhooks/jas", app.public_addr()),
        admin: format!("http://{}", app.admin_addr()),
    };
    println!(
        "  daemon: webhooks on {}, admin API on {}",
        app.public_addr(),
        app.admin_addr()
    );
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    driver.wait_ready_and_registered().await?;
    let mut registered: Vec<String> = sim.registrations().into_iter().map(|(e, _)| e).collect();
    registered.sort();
    println!("  registered webhooks: {}", registered.join(", "));

    let (outbound, inbound) = drive_calls(&driver, &sim).await?;
    let repaired = lost_hang_up(&driver, &sim).await?;
    print_calls(dir, &[&outbound, &inbound, &repaired]);
    for (kind, call) in [
        ("recording.ready", "26"),
        ("call.ended", "26"),
        ("call.ended", "27"),
        ("call.ended", "28"),
    ] {
        receiver
            .wait_for(kind, call, Duration::from_secs(10))
            .await?;
    }
    driver.wait_delivered().await?;
    receiver.print();
    if let Some(bytes) = outbound["recordings"][0]["bytes"].as_u64() {
        println!(
            "\nrecording: {} bytes, sha256 {}",
            bytes,
            outbound["recordings"][0]["sha256"].as_str().unwrap_or("")
        );
    }

    shutdown.cancel();
    match running.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(e) => return Err(e.to_string()),
    }
    println!(
        "webhooks unregistered: {}; done in {:.1}s",
        sim.registrations().is_empty(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "\nfiles kept in {dir}:\n  {db}  (the journal; callhook-state.db beside it holds the call history)\n  {rec}  (the recordings)\nremove them with: rm -r {dir}",
        dir = dir.display(),
        db = dir.join("data/callhook.db").display(),
        rec = dir.join("recordings").display(),
    );
    Ok(())
}

/// The daemon's settings: loopback ports, the simulated API, its files in `dir`, its call
/// events to `receiver`.
fn settings(dir: &Path, api_base: &str, receiver: &str) -> Result<Settings, String> {
    let public_port = free_port()?;
    let env: std::collections::BTreeMap<String, String> = [
        ("SERVER__LISTEN", format!("127.0.0.1:{public_port}")),
        ("ADMIN__LISTEN", "127.0.0.1:0".to_string()),
        ("JAS__API_BASE", api_base.to_string()),
        ("JAS__TOKEN", TOKEN.to_string()),
        ("JAS__WEBHOOK_SECRET", SECRET.to_string()),
        (
            "JAS__CALLBACK_URL",
            format!("http://127.0.0.1:{public_port}/webhooks/jas"),
        ),
        (
            "STORAGE__PATH",
            dir.join("data/callhook.db").display().to_string(),
        ),
        (
            "RECORDINGS__DIR",
            dir.join("recordings").display().to_string(),
        ),
        ("TELECMI__ENABLED", "false".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("CALLHOOK__{k}"), v))
    .collect();
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // An endpoint is a table, which the environment cannot give.
    let file = dir.join("demo.toml");
    let config = format!(
        "[outbound]\nretry_schedule_secs = [1, 2, 5]\n\n[[outbound.endpoints]]\nname = \"demo-receiver\"\nurl = \"{receiver}\"\nsecret = \"{RECEIVER_KEY}\"\n# The receiver is on loopback.\nallow_private = true\n"
    );
    std::fs::write(&file, config).map_err(|e| e.to_string())?;
    Settings::load(&Sources {
        file: Some(file),
        env: Some(env),
    })
    .map_err(|e| e.to_string())
}

/// The two calls, their hang-ups and the recording; returns the calls once both have ended
/// and the recording is downloaded.
async fn drive_calls(driver: &Driver, sim: &JasSim) -> Result<(Value, Value), String> {
    println!("\noutbound call 26: extension 101 dials 5148888888");
    join_and_answer(driver, sim, ("101", "172", 26), "Dialing", 1).await?;
    let late = call_status("101", "172", 0, 2);
    driver.participant_event("101", "172", "update", 3).await?;
    driver
        .post("call_status 101/172 update  seq 2 (late)", &late)
        .await?;
    driver
        .post("call_status 101/172 update  seq 2 (again)", &late)
        .await?;

    println!("\ninbound call 27: 5148888888 rings extension 102");
    join_and_answer(driver, sim, ("102", "180", 27), "Ringing", 4).await?;
    driver.participant_event("102", "180", "update", 5).await?;
    for call in ["26", "27"] {
        driver
            .wait_call(call, Duration::from_secs(10), |c| {
                c["participants"][0]["status"] == "Connected"
            })
            .await?;
    }

    println!("\nhang up both, then the recording of call 26 arrives");
    driver.participant_event("101", "172", "remove", 6).await?;
    driver.participant_event("102", "180", "remove", 7).await?;
    driver
        .post("new_recording call 26", &new_recording("26"))
        .await?;
    let outbound = driver
        .wait_call("26", Duration::from_secs(20), |c| {
            c["state"] == "ended" && c["recordings"][0]["state"] == "downloaded"
        })
        .await?;
    let inbound = driver
        .wait_call("27", Duration::from_secs(10), |c| c["state"] == "ended")
        .await?;
    Ok((outbound, inbound))
}

/// Call 28, whose hang-up webhook never arrives: the phone system no longer lists it, and one
/// reconciliation (as `callhook reconcile` asks for it) ends the call as `reconciled`.
async fn lost_hang_up(driver: &Driver, sim: &JasSim) -> Result<Value, String> {
    println!(
        "
inbound call 28: 5148888888 rings extension 103; its hang-up webhook is lost"
    );
    join_and_answer(driver, sim, ("103", "190", 28), "Ringing", 8).await?;
    sim.remove_participant("103", "190");
    println!("  (the caller hangs up; JAS never delivers the remove event)");
    let resp = driver
        .http
        .post(format!("{}/api/reconcile", driver.admin))
        .send()
        .await
        .map_err(|e| format!("POST /api/reconcile: {}", crate::outbound::describe(e)))?;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or_default();
    let run = &body["runs"][0];
    println!(
        "  POST /api/reconcile -> {status}: {} added, {} removed, {} call ended",
        run["added"], run["removed"], run["calls_ended"]
    );
    if status != 200 {
        return Err(format!("reconciliation was answered {status}: {body}"));
    }
    driver
        .wait_call("28", Duration::from_secs(10), |c| {
            c["state"] == "ended" && c["end_reason"] == "reconciled"
        })
        .await
}

/// A participant that joins `call` in `status` at `seq` and, once its lookup has answered,
/// is connected (for the next lookup).
async fn join_and_answer(
    driver: &Driver,
    sim: &JasSim,
    (dn, id, call): (&str, &str, u32),
    status: &str,
    seq: u64,
) -> Result<(), String> {
    sim.set_participant(dn, id, participant(dn, id, call, status));
    driver.participant_event(dn, id, "insert", seq).await?;
    driver.wait_for_participants(&call.to_string()).await?;
    sim.set_participant(dn, id, participant(dn, id, call, "Connected"));
    Ok(())
}

fn new_recording(call_id: &str) -> String {
    json!({
        "eventName": "new_recording",
        "timestamp": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": {"call_id": call_id, "recording_url": RECORDING, "id_recording": 1,
                 "cdr_id": "61f450de-8b46-4326-a306-32eb6ad5e534",
                 "start_time": Utc::now().to_rfc3339(), "end_time": Utc::now().to_rfc3339()}
    })
    .to_string()
}

/// The call table as the admin API gave it, one line a call.
fn print_calls(dir: &Path, calls: &[&Value]) {
    println!("\ncall table");
    println!(
        "  {:<9} {:<18} {:<9} {:<9} {:<40} recording",
        "call", "state", "direction", "duration", "participants"
    );
    for call in calls {
        let participants: Vec<String> = call["participants"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        format!(
                            "{} <-> {} ({})",
                            p["dn"].as_str().unwrap_or(""),
                            p["party_number"].as_str().unwrap_or(""),
                            p["status"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let recording = call["recordings"][0]["path"]
            .as_str()
            .map(|p| dir.join("recordings").join(p).display().to_string())
            .unwrap_or_else(|| "-".into());
        let state = match call["end_reason"].as_str() {
            Some(reason) if reason != "completed" => {
                format!("{} ({reason})", call["state"].as_str().unwrap_or(""))
            }
            _ => call["state"].as_str().unwrap_or("").to_string(),
        };
        println!(
            "  jas/{:<5} {:<18} {:<9} {:<9} {:<40} {}",
            call["call_id"].as_str().unwrap_or(""),
            state,
            call["direction"].as_str().unwrap_or(""),
            duration(call),
            participants.join(", "),
            recording
        );
    }
}

/// From `started_at` to `ended_at`, in seconds.
fn duration(call: &Value) -> String {
    match (call["started_at"].as_str(), call["ended_at"].as_str()) {
        (Some(s), Some(e)) => match (
            chrono::DateTime::parse_from_rfc3339(s),
            chrono::DateTime::parse_from_rfc3339(e),
        ) {
            (Ok(s), Ok(e)) => format!("{:.1}s", (e - s).num_milliseconds() as f64 / 1000.0),
            _ => "?".into(),
        },
        _ => "-".into(),
    }
}
