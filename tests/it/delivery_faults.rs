//! Call-event delivery against receivers that misbehave the ways real ones do (SPEC §7): a
//! connection reset, an answer that never comes, `429` with `Retry-After`, one call whose
//! receiver hangs while another's flows, and endpoints that select by event and provider.
//! The receiver is a few lines of HTTP/1.1 over a raw socket, so it can reset a connection.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use callhook::calls::Provider;
use callhook::config::Endpoint;
use callhook::events::Pattern;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

const KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the receiver does with one request.
#[derive(Clone, Copy, Debug)]
enum Act {
    /// Answers 204.
    Ok,
    /// Closes the connection with a TCP reset, answering nothing.
    Reset,
    /// Answers nothing for this long.
    Hang(Duration),
    /// Answers this status, with `Retry-After: <secs>` when given.
    Status(u16, Option<u64>),
}

/// One request as it arrived.
#[derive(Clone, Debug)]
struct Arrival {
    at: Instant,
    id: String,
    body: Value,
}

type Script = Arc<dyn Fn(usize, &Value) -> Act + Send + Sync>;

#[derive(Clone)]
struct Scripted {
    got: Arc<Mutex<Vec<Arrival>>>,
    /// Requests whose answer has not been sent (or given up) yet.
    open: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    /// `script(n, body)` decides what the n-th request (from 0) gets.
    async fn start(
        script: impl Fn(usize, &Value) -> Act + Send + Sync + 'static,
    ) -> (Self, String) {
        let script: Script = Arc::new(script);
        let receiver = Scripted {
            got: Arc::default(),
            open: Arc::default(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let state = receiver.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(state.clone().serve(socket, script.clone()));
            }
        });
        (receiver, url)
    }

    /// Reads one request, does what the script says, and closes the connection.
    async fn serve(self, mut socket: TcpStream, script: Script) {
        let Some((headers, body)) = read_request(&mut socket).await else {
            return;
        };
        let id = headers
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("webhook-id")
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap();
        let n = {
            let mut got = self.got.lock().unwrap();
            got.push(Arrival {
                at: Instant::now(),
                id: id.clone(),
                body: body.clone(),
            });
            got.len() - 1
        };
        self.open.lock().unwrap().push(id.clone());
        let answer = match script(n, &body) {
            Act::Ok => Some("HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n".to_string()),
            Act::Reset => {
                let _ = socket.set_zero_linger();
                None
            }
            Act::Hang(d) => {
                tokio::time::sleep(d).await;
                None
            }
            Act::Status(code, retry_after) => Some(format!(
                "HTTP/1.1 {code} Nope\r\n{}content-length: 0\r\nconnection: close\r\n\r\n",
                retry_after.map_or(String::new(), |s| format!("retry-after: {s}\r\n"))
            )),
        };
        if let Some(answer) = answer {
            let _ = socket.write_all(answer.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
        let mut open = self.open.lock().unwrap();
        if let Some(i) = open.iter().position(|o| *o == id) {
            open.remove(i);
        }
    }

    fn got(&self) -> Vec<Arrival> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `check` holds for what has arrived.
    async fn wait(&self, what: &str, check: impl Fn(&[Arrival]) -> bool) -> Vec<Arrival> {
        for _ in 0..400 {
            let got = self.got();
            if check(&got) {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{what} never arrived: {:?}", kinds(&self.got()));
    }
}

/// The request head (as text) and body, by its `content-length`.
async fn read_request(socket: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((head, buf[head_end..head_end + length].to_vec()))
}

fn kinds(got: &[Arrival]) -> Vec<(String, String)> {
    got.iter()
        .map(|a| {
            (
                a.body["type"].as_str().unwrap_or("?").to_string(),
                a.body["call"]["call_id"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string(),
            )
        })
        .collect()
}

fn endpoint(name: &str, url: &str) -> Endpoint {
    Endpoint {
        name: name.into(),
        url: url.parse().unwrap(),
        secrets: vec![SecretString::from(KEY)],
        events: vec![Pattern::All],
        providers: vec![],
        enabled: true,
        timeout: Duration::from_millis(500),
        allow_private: true,
    }
}

async fn app_with(dir: &std::path::Path, endpoints: Vec<Endpoint>) -> TestApp {
    let mut env = Env::new(dir);
    env.set("telecmi.path_token", "tcmi-token");
    let mut settings = env.settings(dir);
    settings.outbound.endpoints = endpoints;
    settings.outbound.retry_schedule = vec![Duration::from_millis(50); 5];
    TestApp::spawn_settings(settings).await
}

#[tokio::test]
async fn a_reset_a_timeout_and_a_429_each_retry_the_same_id_and_retry_after_is_kept() {
    let dir = tempdir();
    let (receiver, url) = Scripted::start(|n, _| match n {
        0 => Act::Reset,
        1 => Act::Hang(Duration::from_secs(3)),
        2 => Act::Status(429, Some(1)),
        _ => Act::Ok,
    })
    .await;
    let app = app_with(dir.path(), vec![endpoint("crm", &url)]).await;
    assert_eq!(app.post_jas(&call_status("120", "1", 0, 1)).await.0, 200);
    let got = receiver.wait("both events", |g| g.len() >= 5).await;
    let ids: Vec<&str> = got.iter().map(|a| a.id.as_str()).collect();
    // The first event four times (reset, timeout, 429, delivered), then the next: never the
    // second before the first was delivered, and always under the first's id.
    assert!(ids[..4].iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_ne!(ids[4], ids[0]);
    assert_eq!(
        kinds(&got)[..5]
            .iter()
            .map(|k| k.0.as_str())
            .collect::<Vec<_>>(),
        [
            "call.started",
            "call.started",
            "call.started",
            "call.started",
            "participant.joined"
        ]
    );
    // The schedule's pause (50 ms, ±20 %) after the reset; the endpoint's 500 ms timeout cut
    // the hang short of its 3 s; and the 429's Retry-After (1 s) beat the 50 ms schedule.
    let gap = |i: usize| got[i + 1].at - got[i].at;
    assert!(gap(0) >= Duration::from_millis(40), "{:?}", gap(0));
    assert!(
        gap(1) >= Duration::from_millis(500) && gap(1) < Duration::from_secs(3),
        "{:?}",
        gap(1)
    );
    assert!(gap(2) >= Duration::from_secs(1), "{:?}", gap(2));
    // Each failed attempt is counted, and the delivery shows its attempts.
    assert!(
        app.metric("callhook_outbound_deliveries_total{endpoint=\"crm\",outcome=\"retried\"}")
            .await
            >= 3.0
    );
    // Outcomes are written a few milliseconds after the attempt, in batches.
    let mut first = None;
    for _ in 0..100 {
        let (_, deliveries) = app.get_admin("/api/deliveries?state=delivered").await;
        first = deliveries["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["event_id"] == ids[0])
            .cloned();
        if first.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = first.expect("the first event is listed delivered");
    assert_eq!(first["attempts"], 4, "{first}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_stuck_call_does_not_hold_back_another_calls_events() {
    let dir = tempdir();
    // Call 130's receiver never answers; call 131's does at once.
    let (receiver, url) = Scripted::start(|_, body| {
        if body["call"]["call_id"] == "130:1" {
            Act::Hang(Duration::from_secs(30))
        } else {
            Act::Ok
        }
    })
    .await;
    let mut slow = endpoint("crm", &url);
    slow.timeout = Duration::from_secs(20);
    let app = app_with(dir.path(), vec![slow]).await;
    assert_eq!(app.post_jas(&call_status("130", "1", 0, 1)).await.0, 200);
    receiver
        .wait("call 130's first event", |g| {
            kinds(g).iter().any(|(_, c)| c == "130:1")
        })
        .await;
    assert_eq!(app.post_jas(&call_status("131", "1", 0, 2)).await.0, 200);
    let got = receiver
        .wait("call 131's two events", |g| {
            kinds(g).iter().filter(|(_, c)| c == "131:1").count() >= 2
        })
        .await;
    // Call 131 went through while call 130's first delivery was still waiting for its answer,
    // and call 130's next event was not sent behind it.
    let open = receiver.open.lock().unwrap().clone();
    assert_eq!(
        open,
        [got[0].id.clone()],
        "call 130's request is still open"
    );
    assert_eq!(
        kinds(&got)
            .iter()
            .filter(|(_, c)| c == "130:1")
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
        ["call.started"]
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn endpoints_get_only_the_events_and_providers_they_select() {
    let dir = tempdir();
    let (calls_only, calls_url) = Scripted::start(|_, _| Act::Ok).await;
    let (telecmi_only, telecmi_url) = Scripted::start(|_, _| Act::Ok).await;
    let (everything, all_url) = Scripted::start(|_, _| Act::Ok).await;
    let mut jas_calls = endpoint("jas-calls", &calls_url);
    jas_calls.events = vec![Pattern::parse("call.*").unwrap()];
    jas_calls.providers = vec![Provider::Jas];
    let mut telecmi = endpoint("telecmi", &telecmi_url);
    telecmi.providers = vec![Provider::Telecmi];
    let app = app_with(
        dir.path(),
        vec![jas_calls, telecmi, endpoint("all", &all_url)],
    )
    .await;
    assert_eq!(app.post_jas(&call_status("140", "1", 0, 1)).await.0, 200);
    let leg = json!({
        "type": "event", "leg": "a", "cmiuuid": "conv-140", "conversation_uuid": "conv-140",
        "status": "started", "direction": "inbound", "user": "103_1111113",
        "from": 9200000000u64, "to": 9100000000u64, "time": 1_700_000_000_000i64,
    });
    let resp = app
        .http
        .post(format!("{}/webhooks/telecmi/tcmi-token", app.public))
        .header("content-type", "application/json")
        .body(leg.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The endpoint that takes everything has both calls' events; once it has, the others have
    // had their chance too (all three loops run on the same nudge).
    let all = everything
        .wait("both calls", |g| {
            let k = kinds(g);
            k.contains(&("participant.joined".into(), "140:1".into()))
                && k.contains(&("participant.joined".into(), "conv-140".into()))
        })
        .await;
    assert!(kinds(&all).len() >= 4, "{:?}", kinds(&all));
    let jas = calls_only.wait("jas call.started", |g| !g.is_empty()).await;
    let tele = telecmi_only.wait("telecmi events", |g| g.len() >= 2).await;
    // Give a wrongly selected event time to show up before judging.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        kinds(&calls_only.got()),
        [("call.started".to_string(), "140:1".to_string())],
        "call.* of jas only: {:?}",
        kinds(&jas)
    );
    assert!(
        kinds(&telecmi_only.got())
            .iter()
            .all(|(_, call)| call == "conv-140"),
        "telecmi only: {:?}",
        kinds(&tele)
    );
    app.stop().await.unwrap();
}
