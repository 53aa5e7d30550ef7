//! Shared test harness: the real daemon on port 0 (in-process, or as a child process for signal
//! and crash tests) against the simulated JAS Connect API on loopback.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use callhook::app::{Application, StartError};
use callhook::config::{Settings, Sources};
use callhook::providers::jas::verify::sign;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "test-webhook-secret";
pub const TOKEN: &str = "test-api-token";

/// Settings as environment variables (`CALLHOOK__...`), the way an operator would give them.
#[derive(Clone, Default)]
pub struct Env(pub BTreeMap<String, String>);

impl Env {
    /// A daemon on loopback port 0 with its data in `dir`, lookups and registration off.
    pub fn new(dir: &Path) -> Self {
        let mut env = Env::default();
        env.set("server.listen", "127.0.0.1:0")
            .set("admin.listen", "127.0.0.1:0")
            .set("jas.webhook_secret", SECRET)
            .set("jas.register", "false")
            .set("jas.lookup_participants", "false")
            // Reconciliation's own runs are off: the tests' JAS upstreams are mocks of single
            // routes (a scripted recording server, a sim whose participants are answers for
            // lookups, set before their insert and kept after they leave), not a phone
            // system's picture of its calls; `tests/it/reconcile.rs` turns them on.
            .set("jas.reconcile_secs", "0")
            .set(
                "storage.path",
                dir.join("data/callhook.db").to_str().unwrap(),
            )
            .set("recordings.dir", dir.join("recordings").to_str().unwrap())
            // A call nobody is on ends after this: short, so that a test whose call ends need
            // not wait the default 5 s; the tests of the grace itself set a longer one.
            .set("calls.end_grace_ms", "100")
            .set("log.level", "info");
        env
    }

    /// Points the JAS API at a simulator with a static token; lookups on (reconciliation off,
    /// as `Env::new` says).
    pub fn with_sim(mut self, base_url: &str) -> Self {
        self.set("jas.api_base", base_url)
            .set("jas.token", TOKEN)
            .set("jas.lookup_participants", "true");
        self
    }

    pub fn set(&mut self, key: &str, value: &str) -> &mut Self {
        let var = format!("CALLHOOK__{}", key.replace('.', "__").to_uppercase());
        self.0.insert(var, value.to_string());
        self
    }

    pub fn settings(&self, dir: &Path) -> Settings {
        let empty = dir.join("empty.toml");
        std::fs::write(&empty, "").unwrap();
        Settings::load(&Sources {
            file: Some(empty),
            env: Some(self.0.clone()),
        })
        .expect("valid test settings")
    }
}

/// The daemon running inside the test process.
pub struct TestApp {
    pub public: String,
    pub admin: String,
    pub http: reqwest::Client,
    admin_token: Option<String>,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<(), StartError>>>,
}

impl TestApp {
    pub async fn spawn(env: &Env, dir: &Path) -> TestApp {
        Self::spawn_settings(env.settings(dir)).await
    }

    /// For settings that are not configuration keys (e.g. `recordings.tuning`); waits until
    /// the daemon is ready.
    pub async fn spawn_settings(settings: Settings) -> TestApp {
        let t = Self::start(settings).await;
        t.wait_ready().await;
        t
    }

    /// Builds and runs the daemon from `settings` without waiting for it to be ready.
    pub async fn start(settings: Settings) -> TestApp {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let admin_token = settings
            .admin
            .token
            .as_ref()
            .map(|t| secrecy::ExposeSecret::expose_secret(t).to_string());
        let app = Application::build(settings).await.expect("daemon starts");
        let public = format!("http://{}", app.public_addr());
        let admin = format!("http://{}", app.admin_addr());
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        TestApp {
            public,
            admin,
            http: reqwest::Client::new(),
            admin_token,
            shutdown,
            handle: Some(handle),
        }
    }

    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.admin);
        wait_until(Duration::from_secs(10), || async {
            let mut req = self.http.get(&url);
            if let Some(token) = &self.admin_token {
                req = req.bearer_auth(token);
            }
            matches!(req.send().await, Ok(r) if r.status() == 200)
        })
        .await;
    }

    /// Graceful stop, as SIGTERM would do it.
    pub async fn stop(mut self) -> Result<(), StartError> {
        self.shutdown.cancel();
        self.handle.take().unwrap().await.unwrap()
    }

    pub async fn post_jas(&self, body: &str) -> (u16, Value) {
        let sig = sign(SECRET.as_bytes(), body.as_bytes());
        self.post_jas_with(body, Some(&sig)).await
    }

    pub async fn post_jas_with(&self, body: &str, sig: Option<&str>) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/webhooks/jas", self.public))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(sig) = sig {
            req = req.header("X-SIG", sig);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A counter or gauge from `/metrics`.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.get_admin("/metrics").await;
        metric_in(text.as_str().unwrap(), series)
    }

    pub async fn get_admin(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{}", self.admin, path))
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn active_calls(&self) -> Vec<Value> {
        let (status, body) = self.get_admin("/api/calls").await;
        assert_eq!(status, 200);
        body["calls"].as_array().unwrap().clone()
    }

    pub async fn call(&self, provider: &str, id: &str) -> Option<Value> {
        let (status, body) = self.get_admin(&format!("/api/calls/{provider}/{id}")).await;
        (status == 200).then_some(body)
    }

    /// Waits until the call exists and `check` holds for it.
    pub async fn wait_call(
        &self,
        provider: &str,
        id: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut last = None;
        for _ in 0..200 {
            if let Some(call) = self.call(provider, id).await {
                if check(&call) {
                    return call;
                }
                last = Some(call);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("call {provider}/{id} never matched; last seen: {last:#?}");
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The value of `series` (name and labels, as printed) in Prometheus text.
pub fn metric_in(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {text}"))
}

pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not met within {timeout:?}");
}

pub fn call_status(dn: &str, pid: &str, event_type: i64, seq: i64) -> String {
    json!({
        "eventName": "call_status",
        "timestamp": event_time(seq),
        "data": {"event": {"entity": format!("/callcontrol/{dn}/participants/{pid}"), "event_type": event_type}, "sequence": seq}
    })
    .to_string()
}

/// A recent event time, as a live call has them, ordered by `seq`.
/// `seq` seconds after a base fixed for the whole test process, half an hour ago.
pub fn event_time(seq: i64) -> String {
    static BASE: std::sync::OnceLock<chrono::DateTime<chrono::Utc>> = std::sync::OnceLock::new();
    let base = BASE.get_or_init(|| {
        let now = chrono::Utc::now() - chrono::Duration::minutes(30);
        chrono::DateTime::from_timestamp(now.timestamp() - now.timestamp() % 60, 0).unwrap()
    });
    (*base + chrono::Duration::seconds(seq)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Whether an API time and a fixture time are the same instant (formats differ in precision).
pub fn same_time(api: &Value, fixture: &str) -> bool {
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
    api.as_str().and_then(parse).is_some() && api.as_str().and_then(parse) == parse(fixture)
}

pub fn new_recording(call_id: &str, url: &str, id: i64) -> String {
    json!({
        "eventName": "new_recording",
        "timestamp": event_time(100),
        "data": {"call_id": call_id, "start_time": event_time(0), "end_time": event_time(90),
                 "recording_url": url, "id_recording": id, "cdr_id": format!("cdr-{id}")}
    })
    .to_string()
}

/// A participant as the JAS API describes it.
pub fn participant(
    dn: &str,
    id: &str,
    callid: &str,
    status: &str,
    party_dn: &str,
    party_type: &str,
) -> Value {
    json!({
        "id": id, "status": status, "dn": dn, "party_caller_name": "", "party_dn": party_dn,
        "party_caller_id": if party_type == "Wexternalline" { "5148888888" } else { party_dn },
        "party_did": "", "device_id": format!("sip:{dn}@127.0.0.1"), "party_dn_type": party_type,
        "direct_control": false, "originated_by_dn": "", "originated_by_type": "None",
        "referred_by_dn": "", "referred_by_type": "None", "on_behalf_of_dn": "", "on_behalf_of_type": "None",
        "callid": callid, "legid": 1
    })
}

/// The daemon as a child process (for SIGTERM and SIGKILL), configured through a TOML file.
pub struct ChildDaemon {
    pub child: Child,
    /// Lines read while waiting for `ready`.
    early: Vec<String>,
    pub public: String,
    pub admin: String,
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl ChildDaemon {
    /// Starts it and waits for its `ready` line.
    pub fn spawn(env: &Env, dir: &Path) -> ChildDaemon {
        let (child, rx) = Self::start(env, dir);
        Self::ready(child, rx)
    }

    /// Starts it and waits for its `ready` line, with `config` as its configuration file
    /// (what the environment cannot say, such as `[[outbound.endpoints]]`).
    pub fn spawn_with_config(env: &Env, dir: &Path, config: &str) -> ChildDaemon {
        let (child, rx) = Self::start_with_config(env, dir, config);
        Self::ready(child, rx)
    }

    /// Starts it without waiting for anything.
    pub fn start(env: &Env, dir: &Path) -> (Child, std::sync::mpsc::Receiver<String>) {
        Self::start_with_config(env, dir, "")
    }

    fn start_with_config(
        env: &Env,
        dir: &Path,
        config: &str,
    ) -> (Child, std::sync::mpsc::Receiver<String>) {
        // The test's own reqwest clients need it, and no in-process daemon may have installed it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let empty = dir.join("empty.toml");
        std::fs::write(&empty, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_callhook"))
            .args(["serve", "--config"])
            .arg(&empty)
            .envs(&env.0)
            .env("CALLHOOK__LOG__FORMAT", "json")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn callhook");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    }

    fn ready(mut child: Child, rx: std::sync::mpsc::Receiver<String>) -> ChildDaemon {
        let mut early = vec![];
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                // Reap it before failing, so a broken start leaves no stray daemon behind.
                let _ = child.kill();
                let _ = child.wait();
                panic!("daemon did not become ready");
            };
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            early.push(line);
            if v["message"] == "ready" {
                return ChildDaemon {
                    child,
                    early,
                    public: format!("http://{}", v["public_addr"].as_str().unwrap()),
                    admin: format!("http://{}", v["admin_addr"].as_str().unwrap()),
                    lines: rx,
                };
            }
        }
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the exit and returns its code (None when killed by a signal).
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(std::time::Instant::now() < deadline, "daemon did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until a log line satisfies `pred`, up to 10 s.
    pub fn wait_log(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.logs().into_iter().find(|l| pred(l)) {
                return line;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no such line: {:#?}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything it logged so far, parsed.
    pub fn logs(&mut self) -> Vec<Value> {
        self.early.extend(self.lines.try_iter());
        self.early
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for ChildDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn path_str(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

pub fn data_dir(dir: &Path) -> PathBuf {
    dir.join("data")
}

/// A signed JAS webhook to the public address `public`, as JAS sends it.
pub async fn post_signed(public: &str, body: &str) -> (u16, Value) {
    callhook::outbound::install_crypto();
    let sig = callhook::providers::jas::verify::sign(SECRET.as_bytes(), body.as_bytes());
    let resp = reqwest::Client::new()
        .post(format!("{public}/webhooks/jas"))
        .header("X-SIG", sig)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// A loopback port nothing listens on (for a daemon whose admin address a CLI must know).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Runs `callhook <args> --config <dir>/empty.toml` with `env`, as an operator's shell would
/// against the daemon `env` configures: exit code, stdout, stderr.
pub fn cli(env: &Env, dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_callhook"))
        .args(args)
        .arg("--config")
        .arg(dir.join("empty.toml"))
        .envs(&env.0)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
