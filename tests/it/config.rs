//! Configuration that cannot mean what the user wants is refused (exit 2, naming the key, never
//! a secret), environment secrets are one value, SIGHUP changes nothing, and the log lines are
//! typed the same way on every line (issue #11, "Configuration" and "Logs").

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use callhook::providers::jas::verify::sign;
use callhook::sim::JasSim;
use serde_json::Value;

fn callhook(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callhook"));
    cmd.args(args).stdin(Stdio::null()).env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("CALLHOOK__") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

fn crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// `check-config` and `serve` both exit 2 with one line naming `key`.
fn refused(dir: &std::path::Path, env: &[(&str, &str)], key: &str) {
    let file = dir.join("empty.toml");
    std::fs::write(&file, "").unwrap();
    let data = dir.join("data/callhook.db");
    let mut env = env.to_vec();
    let data = data.to_str().unwrap();
    env.push(("CALLHOOK__STORAGE__PATH", data));
    env.push(("CALLHOOK__SERVER__LISTEN", "127.0.0.1:0"));
    for sub in ["check-config", "serve"] {
        let out = callhook(&[sub, "--config", file.to_str().unwrap()], &env);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{sub} {env:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(key), "{stderr} should name {key}");
        assert!(out.stdout.is_empty() || sub == "check-config");
    }
}

#[test]
fn a_log_level_that_is_not_a_level_is_refused() {
    let dir = tempdir();
    for level in ["warning", "verbose", "info,warning"] {
        refused(dir.path(), &[("CALLHOOK__LOG__LEVEL", level)], "log.level");
        refused(dir.path(), &[("RUST_LOG", level)], "RUST_LOG");
    }
    // A directive list is fine.
    let file = dir.path().join("empty.toml");
    let out = callhook(
        &["check-config", "--config", file.to_str().unwrap()],
        &[
            ("CALLHOOK__LOG__LEVEL", "warn,callhook=debug"),
            ("RUST_LOG", "info"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn unknown_jas_events_and_an_open_admin_listener_without_token_are_refused() {
    let dir = tempdir();
    refused(
        dir.path(),
        &[("CALLHOOK__JAS__EVENTS", "call_status,call_stauts")],
        "jas.events",
    );
    refused(
        dir.path(),
        &[("CALLHOOK__ADMIN__LISTEN", "0.0.0.0:0")],
        "admin.listen",
    );
    let file = dir.path().join("empty.toml");
    let out = callhook(
        &["check-config", "--config", file.to_str().unwrap()],
        &[
            ("CALLHOOK__ADMIN__LISTEN", "0.0.0.0:0"),
            ("CALLHOOK__ADMIN__TOKEN", "adm-xyz"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn configuration_errors_never_print_a_secret() {
    let dir = tempdir();
    // A TOML syntax error on a secret's line: position and key, never the line.
    let file = dir.path().join("broken.toml");
    std::fs::write(
        &file,
        "[jas]\nregister = false\nwebhook_secret = \"hunter2-abc\n",
    )
    .unwrap();
    for sub in ["check-config", "serve"] {
        let out = callhook(&[sub, "--config", file.to_str().unwrap()], &[]);
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{all}");
        assert!(!all.contains("hunter2"), "secret printed: {all}");
        assert!(all.contains("jas.webhook_secret"), "{all}");
        assert!(all.contains("line 3"), "{all}");
        assert_eq!(text(&out.stderr).trim().lines().count(), 1, "{all}");
    }
    // A URL's password, in an error and in check-config's output.
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let out = callhook(
        &["check-config", "--config", empty.to_str().unwrap()],
        &[("CALLHOOK__JAS__CALLBACK_URL", "ftp://user:pw-s3cret@host/x")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        !text(&out.stderr).contains("pw-s3cret"),
        "{}",
        text(&out.stderr)
    );
    let out = callhook(
        &["check-config", "--config", empty.to_str().unwrap()],
        &[("CALLHOOK__JAS__API_BASE", "https://user:pw-s3cret@host/v2")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!all.contains("pw-s3cret"), "{all}");
}

#[tokio::test]
async fn an_environment_secret_with_a_comma_is_one_secret() {
    let dir = tempdir();
    let mut env = Env::new(dir.path());
    env.set("jas.webhook_secret", "ab,cd");
    let app = TestApp::spawn(&env, dir.path()).await;
    let body = call_status("101", "1", 0, 1);
    for (key, want) in [("ab", 401), ("cd", 401), ("ab,cd", 200)] {
        let sig = sign(key.as_bytes(), body.as_bytes());
        let (status, reply) = app.post_jas_with(&body, Some(&sig)).await;
        assert_eq!(status, want, "signed with {key:?}: {reply}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_is_logged_and_changes_nothing() {
    crypto();
    let dir = tempdir();
    let env = Env::new(dir.path());
    let mut daemon = tokio::task::block_in_place(|| ChildDaemon::spawn(&env, dir.path()));
    daemon.signal("HUP");
    let line = tokio::task::block_in_place(|| daemon.wait_log(|l| l["signal"] == "SIGHUP"));
    assert_eq!(
        line["message"],
        "configuration is read at start; restart to apply changes"
    );
    // Still serving, and events still journaled.
    let r = reqwest::get(format!("{}/healthz", daemon.public))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = call_status("101", "1", 0, 1);
    let r = reqwest::Client::new()
        .post(format!("{}/webhooks/jas", daemon.public))
        .header("x-sig", sign(SECRET.as_bytes(), body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    daemon.signal("TERM");
    let code = tokio::task::block_in_place(|| daemon.wait(Duration::from_secs(15)));
    assert_eq!(code, Some(0));
}

/// An external call (party number 5148888888) started and ended in a child daemon.
async fn a_call_in_a_child(redact: bool) -> (Vec<Value>, Value) {
    crypto();
    let sim = JasSim::new();
    sim.set_participant(
        "101",
        "172",
        participant("101", "172", "26", "Connected", "10000", "Wexternalline"),
    );
    let server = sim.start().await.unwrap();
    let dir = tempdir();
    let mut env = Env::new(dir.path()).with_sim(&server.base_url);
    if redact {
        env.set("log.redact_numbers", "true");
    }
    let mut daemon = tokio::task::block_in_place(|| ChildDaemon::spawn(&env, dir.path()));
    let http = reqwest::Client::new();
    let url = format!("{}/webhooks/jas", daemon.public);
    let post = |body: String, sig: Option<String>| {
        let mut req = http.post(&url).header("x-request-id", "req-42").body(body);
        if let Some(sig) = sig {
            req = req.header("x-sig", sig);
        }
        req.send()
    };
    let signed = |body: &str| Some(sign(SECRET.as_bytes(), body.as_bytes()));
    let insert = call_status("101", "172", 0, 1);
    assert_eq!(
        post(insert.clone(), signed(&insert))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post(insert.clone(), signed(&insert))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(post(insert.clone(), None).await.unwrap().status(), 401);
    assert_eq!(post("{".into(), signed("{")).await.unwrap().status(), 400);
    tokio::task::block_in_place(|| {
        daemon.wait_log(|l| l["message"] == "call started");
    });
    // A recording whose name holds the number, as 3CX names them.
    let recording = new_recording("26", "/recordings/101/[Bob]_5148888888-101_20250414.wav", 7);
    assert_eq!(
        post(recording.clone(), signed(&recording))
            .await
            .unwrap()
            .status(),
        200
    );
    let remove = call_status("101", "172", 1, 2);
    assert_eq!(
        post(remove.clone(), signed(&remove))
            .await
            .unwrap()
            .status(),
        200
    );
    tokio::task::block_in_place(|| {
        daemon.wait_log(|l| l["message"] == "call ended");
    });
    let call: Value = http
        .get(format!("{}/api/calls/jas/26", daemon.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    daemon.signal("TERM");
    tokio::task::block_in_place(|| daemon.wait(Duration::from_secs(15)));
    (daemon.logs(), call)
}

#[tokio::test(flavor = "multi_thread")]
async fn log_fields_have_one_type_each_and_request_id_is_top_level() {
    let (logs, call) = a_call_in_a_child(false).await;
    let mut outcomes = vec![];
    for line in &logs {
        assert!(line.get("span").is_none(), "nested span: {line}");
        if let Some(status) = line.get("status") {
            assert!(status.is_string(), "status not a string: {line}");
        }
        if let Some(outcome) = line.get("outcome") {
            assert!(outcome.is_string(), "outcome not a string: {line}");
            outcomes.push(outcome.as_str().unwrap().to_string());
        }
        if let Some(code) = line.get("http_status") {
            assert!(code.is_u64(), "http_status not an integer: {line}");
        }
        if line.get("provider").is_some() && line["target"].as_str().unwrap().contains("routes")
            || line["message"] == "event refused"
        {
            assert_eq!(line["request_id"], "req-42", "{line}");
        }
    }
    for want in ["accepted", "duplicate", "unauthorized", "bad_request"] {
        assert!(outcomes.iter().any(|o| o == want), "{want} in {outcomes:?}");
    }
    let refused: Vec<_> = logs
        .iter()
        .filter(|l| l["message"] == "event refused")
        .collect();
    assert_eq!(refused.len(), 2, "{logs:#?}");
    assert!(refused.iter().any(|l| l["http_status"] == 401));
    for what in ["call started", "call ended"] {
        let line = logs.iter().find(|l| l["message"] == what).unwrap();
        let participants = line["participants"].as_array().unwrap_or_else(|| {
            panic!("participants is not an array: {line}");
        });
        assert_eq!(participants[0]["dn"], "101", "{line}");
        assert_eq!(participants[0]["party_number"], "5148888888", "{line}");
        assert!(participants[0]["status"].is_string(), "{line}");
    }
    assert_eq!(call["participants"][0]["party_number"], "5148888888");
}

#[tokio::test(flavor = "multi_thread")]
async fn redact_numbers_keeps_the_last_four_digits_in_logs_only() {
    let (logs, call) = a_call_in_a_child(true).await;
    let started = logs
        .iter()
        .find(|l| l["message"] == "call started")
        .unwrap();
    assert_eq!(started["participants"][0]["party_number"], "******8888");
    let recording = logs.iter().find(|l| l["event"] == "new_recording").unwrap();
    assert_eq!(
        recording["recording"],
        "/recordings/101/[Bob]_******8888-101_****0414.wav"
    );
    for line in &logs {
        assert!(
            !line.to_string().contains("5148888888"),
            "number logged: {line}"
        );
    }
    // The admin API is unchanged.
    assert_eq!(call["participants"][0]["party_number"], "5148888888");
}

#[tokio::test(flavor = "multi_thread")]
async fn at_debug_a_misrouted_telecmi_url_never_logs_the_path_token() {
    crypto();
    const TOKEN_SEGMENT: &str = "Tcmi-Path-9f3k2";
    let sim = JasSim::new();
    let server = sim.start().await.unwrap();
    let dir = tempdir();
    let mut env = Env::new(dir.path()).with_sim(&server.base_url);
    env.set("telecmi.path_token", TOKEN_SEGMENT)
        .set("log.level", "debug");
    let mut daemon = tokio::task::block_in_place(|| ChildDaemon::spawn(&env, dir.path()));
    let http = reqwest::Client::new();
    for path in [
        format!("/webhook/telecmi/{TOKEN_SEGMENT}"),
        format!("//webhooks/telecmi/{TOKEN_SEGMENT}"),
        format!("/webhooks/Telecmi/{TOKEN_SEGMENT}"),
        format!("/webhooks/telecmi/{TOKEN_SEGMENT}/"),
        format!("/webhooks/telecmi/{TOKEN_SEGMENT}"),
    ] {
        for base in [&daemon.public, &daemon.admin] {
            let r = http
                .post(format!("{base}{path}"))
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            assert!(r.status().is_client_error(), "{path}: {}", r.status());
        }
    }
    // A lookup with the API token, too.
    let body = call_status("101", "1", 0, 1);
    let r = http
        .post(format!("{}/webhooks/jas", daemon.public))
        .header("x-sig", sign(SECRET.as_bytes(), body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_until(Duration::from_secs(10), || async {
        sim.requests(callhook::sim::SimRoute::Participant) > 0
    })
    .await;
    daemon.signal("TERM");
    tokio::task::block_in_place(|| daemon.wait(Duration::from_secs(15)));
    let logs = daemon.logs();
    for line in &logs {
        assert!(
            !line.to_string().contains(TOKEN),
            "API token logged: {line}"
        );
        assert!(
            !line.to_string().contains(SECRET),
            "webhook secret logged: {line}"
        );
    }
    assert!(
        logs.iter()
            .any(|l| l["level"] == "DEBUG" && l.get("path").is_some()),
        "debug request lines expected: {logs:#?}"
    );
    for line in &logs {
        assert!(
            !line
                .to_string()
                .to_lowercase()
                .contains(&TOKEN_SEGMENT.to_lowercase()),
            "token logged: {line}"
        );
    }
}

#[test]
fn pretty_is_one_line_per_event_without_colour_off_a_terminal() {
    let dir = tempdir();
    let env = Env::new(dir.path());
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_callhook"))
        .args(["serve", "--config"])
        .arg(&empty)
        .envs(&env.0)
        .env("CALLHOOK__LOG__FORMAT", "pretty")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut lines = vec![];
    let ready = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no ready line: {lines:#?}");
        };
        lines.push(line.clone());
        if line.contains(" ready ") || line.ends_with(" ready") || line.contains(": ready") {
            break line;
        }
    };
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    lines.extend(rx.try_iter());
    // The message and its fields on one line: the addresses are on the "ready" line itself.
    assert!(
        ready.contains("public_addr") && ready.contains("admin_addr"),
        "{ready}"
    );
    for line in &lines {
        assert!(
            !line.contains('\u{1b}'),
            "ANSI escape off a terminal: {line:?}"
        );
        assert!(
            line.contains("INFO") || line.contains("WARN") || line.contains("ERROR"),
            "a line without a level (a continuation?): {line:?}"
        );
    }
}
