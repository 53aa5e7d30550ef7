//! Ingest and storage (issue #11): an authentic event is never refused for a field callhook can
//! do without, retention counts callhook's own clock, the journal says when it cannot commit
//! (503 on webhooks and `/readyz`), one daemon per database, and readiness that does not wait
//! for webhook registration.

use std::time::Duration;

use crate::common::*;
use callhook::sim::JasSim;
use serde_json::{Value, json};

#[tokio::test]
async fn an_authentic_event_with_unreadable_times_is_accepted_with_the_receive_time() {
    let dir = tempdir();
    let mut env = Env::new(dir.path());
    env.set("recordings.enabled", "false");
    let app = TestApp::spawn(&env, dir.path()).await;
    let series = |field: &str| {
        format!("callhook_event_field_warnings_total{{provider=\"jas\",field=\"{field}\"}}")
    };
    // Counters are process-wide and tests run side by side: compare with the values before.
    let mut counts = vec![];
    for field in ["timestamp", "start_time", "end_time"] {
        counts.push(app.metric(&series(field)).await);
    }
    let before = chrono::Utc::now();
    let recording = json!({
        "eventName": "new_recording",
        "timestamp": "14/04/2025 15:04",
        "data": {"call_id": "77", "start_time": 1744643063, "recording_url": "101/x.wav",
                 "id_recording": 9, "end_time": ""}
    })
    .to_string();
    let (status, reply) = app.post_jas(&recording).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (200, Some("accepted")),
        "{reply}"
    );
    let summary = json!({"eventName": "call_summary", "data": {"call_id": "77", "summary": "hi"}});
    let (status, reply) = app.post_jas(&summary.to_string()).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (200, Some("accepted")),
        "{reply}"
    );
    let status_event = json!({
        "eventName": "call_status", "timestamp": "not a time",
        "data": {"event": {"entity": "/callcontrol/101/participants/5", "event_type": 0}, "sequence": 1}
    });
    let (status, reply) = app.post_jas(&status_event.to_string()).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (200, Some("accepted")),
        "{reply}"
    );

    assert_eq!(app.metric(&series("timestamp")).await, counts[0] + 3.0);
    assert_eq!(app.metric(&series("start_time")).await, counts[1] + 1.0);
    assert_eq!(app.metric(&series("end_time")).await, counts[2] + 1.0);
    // The participant's times are the receive time, not a 400 nor the epoch.
    let call = app
        .wait_call("jas", "101:5", |c| c["state"] == "active")
        .await;
    let joined = chrono::DateTime::parse_from_rfc3339(
        call["participants"][0]["joined_at"].as_str().unwrap(),
    )
    .unwrap();
    assert!(joined >= before && joined <= chrono::Utc::now(), "{call}");
    // The recording's call was created from it, and the summary attached.
    app.wait_call("jas", "77", |c| c["summary"].is_object())
        .await;
    // A field the event cannot be acted on without is still a 400 naming it.
    let (status, reply) = app
        .post_jas(&json!({"eventName": "new_recording", "data": {"call_id": "77"}}).to_string())
        .await;
    assert_eq!(status, 400);
    assert!(
        reply["error"].as_str().unwrap().contains("recording_url"),
        "{reply}"
    );
}

/// The integration guide's own samples, dated 2025-04-14 (well past 90 days).
const SEED_INSERT: &str = r#"{"eventName":"call_status","timestamp":"2025-04-14T15:04:23.161Z","data":{"event":{"entity":"/callcontrol/101/participants/172","event_type":0},"sequence":518}}"#;
const SEED_REMOVE: &str = r#"{"eventName":"call_status","timestamp":"2025-04-14T15:04:43.161Z","data":{"event":{"entity":"/callcontrol/101/participants/172","event_type":1},"sequence":519}}"#;
const SEED_RECORDING: &str = r#"{"eventName":"new_recording","timestamp":"2025-04-14T15:04:23.161Z","data":{"call_id":"26","start_time":"2025-04-14T15:04:23.161Z","end_time":"2025-04-14T15:04:23.161Z","recording_url":"101/[John Doe]_101-5148888888_20250603153720(26).wav","id_recording":1,"cdr_id":"61f450de-8b46-4326-a306-32eb6ad5e534"}}"#;

fn history_ids(body: &Value) -> Vec<String> {
    body["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["call_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn retention_counts_from_when_callhook_received_the_call_not_the_provider_clock() {
    let sim = JasSim::with_token(TOKEN);
    sim.set_participant(
        "101",
        "172",
        participant("101", "172", "26", "Dialing", "10000", "Wexternalline"),
    );
    let server = sim.start().await.unwrap();
    let dir = tempdir();
    let mut env = Env::new(dir.path()).with_sim(&server.base_url);
    env.set("recordings.enabled", "false");

    let app = TestApp::spawn(&env, dir.path()).await;
    for body in [SEED_INSERT, SEED_REMOVE, SEED_RECORDING] {
        let (status, reply) = app.post_jas(body).await;
        assert_eq!(
            (status, reply["status"].as_str()),
            (200, Some("accepted")),
            "{reply}"
        );
    }
    app.wait_call("jas", "26", |c| c["state"] == "ended").await;
    wait_until(Duration::from_secs(5), || async {
        history_ids(&app.get_admin("/api/history").await.1) == ["26"]
    })
    .await;
    app.stop().await.unwrap();

    // The restart runs the retention sweep at once; give it its moment, then look.
    let app = TestApp::spawn(&env, dir.path()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let call = app.call("jas", "26").await.expect("the ended call is kept");
    assert_eq!(call["state"], "ended", "{call}");
    assert!(
        same_time(&call["ended_at"], "2025-04-14T15:04:43.161Z"),
        "{call}"
    );
    let (_, history) = app.get_admin("/api/history").await;
    assert_eq!(history_ids(&history), ["26"]);
    app.stop().await.unwrap();
}

async fn post_signed(http: &reqwest::Client, public: &str, body: &str) -> (u16, Value) {
    let sig = callhook::providers::jas::verify::sign(SECRET.as_bytes(), body.as_bytes());
    let resp = http
        .post(format!("{public}/webhooks/jas"))
        .header("X-SIG", sig)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_database_under_the_daemon_gets_503_and_an_error_not_200() {
    let dir = tempdir();
    let env = Env::new(dir.path());
    let mut daemon = tokio::task::block_in_place(|| ChildDaemon::spawn(&env, dir.path()));
    let http = reqwest::Client::new();
    let (status, _) = post_signed(&http, &daemon.public, &call_status("101", "1", 0, 1)).await;
    assert_eq!(status, 200);
    std::fs::remove_file(data_dir(dir.path()).join("callhook.db")).unwrap();

    let started = std::time::Instant::now();
    let (status, reply) = post_signed(&http, &daemon.public, &call_status("101", "1", 2, 2)).await;
    assert_eq!(status, 503, "{reply}");
    // The public reply says to retry; the path is for the operator (admin /readyz, the log).
    let error = reply["error"].as_str().unwrap();
    assert!(
        error.contains("retry") && !error.contains("callhook.db"),
        "{reply}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let ready = http
        .get(format!("{}/readyz", daemon.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["ready"], false, "{ready}");
    let journal = ready["journal"].as_str().unwrap();
    assert!(
        journal.contains("is gone") && journal.contains("callhook.db"),
        "{ready}"
    );
    // Still refused a moment later: nothing it stores now would survive a restart.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, _) = post_signed(&http, &daemon.public, &call_status("101", "1", 2, 3)).await;
    assert_eq!(status, 503);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = daemon.logs();
    assert!(
        logs.iter()
            .any(|l| l["level"] == "ERROR" && l.to_string().contains("callhook.db")),
        "{logs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_locked_by_another_program_is_503_on_webhooks_and_readyz_then_recovers() {
    let dir = tempdir();
    let app = TestApp::spawn(&Env::new(dir.path()), dir.path()).await;
    let (status, _) = app.post_jas(&call_status("101", "1", 0, 1)).await;
    assert_eq!(status, 200);

    // Another program takes the write lock and keeps it.
    let other = rusqlite::Connection::open(data_dir(dir.path()).join("callhook.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = std::time::Instant::now();
    let (status, reply) = app.post_jas(&call_status("101", "1", 2, 2)).await;
    assert_eq!(status, 503, "{reply}");
    assert!(reply["error"].is_string(), "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let (status, ready) = app.get_admin("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready["journal"].as_str().unwrap().contains("locked"),
        "{ready}"
    );

    // Released: ready again by itself, and the refused event is taken when the provider retries.
    other.execute_batch("COMMIT").unwrap();
    drop(other);
    wait_until(Duration::from_secs(10), || async {
        app.get_admin("/readyz").await.0 == 200
    })
    .await;
    let (_, ready) = app.get_admin("/readyz").await;
    assert_eq!(ready["journal"], "ok", "{ready}");
    let (status, reply) = app.post_jas(&call_status("101", "1", 2, 2)).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (200, Some("accepted")),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_on_the_same_database_exits_1_naming_the_path_and_the_first() {
    let dir = tempdir();
    let env = Env::new(dir.path());
    let first = tokio::task::block_in_place(|| ChildDaemon::spawn(&env, dir.path()));
    let empty = dir.path().join("empty.toml");
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_callhook"))
            .args(["serve", "--config"])
            .arg(&empty)
            .envs(&env.0)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    });
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let db = data_dir(dir.path()).join("callhook.db");
    assert!(stderr.contains(&path_str(&db)), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", first.child.id())),
        "{stderr}"
    );
    // The first one is untouched.
    let http = reqwest::Client::new();
    let (status, _) = post_signed(&http, &first.public, &call_status("101", "1", 0, 1)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_telecmi_event_with_an_unreadable_time_is_accepted_and_counted() {
    let dir = tempdir();
    let mut env = Env::new(dir.path());
    env.set("telecmi.path_token", "ingest-path-token");
    let app = TestApp::spawn(&env, dir.path()).await;
    let series = "callhook_event_field_warnings_total{provider=\"telecmi\",field=\"time\"}";
    let before = app.metric(series).await;
    let body = json!({"cmiuuid": "u1", "conversation_uuid": "c1", "type": "event", "leg": "a",
                      "status": "started", "direction": "inbound", "time": "soon"});
    let resp = app
        .http
        .post(format!("{}/webhooks/telecmi/ingest-path-token", app.public))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reply: Value = resp.json().await.unwrap();
    assert_eq!(reply["status"], "accepted", "{reply}");
    assert_eq!(app.metric(series).await, before + 1.0);
    let call = app
        .wait_call("telecmi", "c1", |c| c["state"] == "active")
        .await;
    assert!(call["started_at"].is_string(), "{call}");
}

#[test]
fn status_says_registration_is_pending_and_the_watchdog_stops_while_the_journal_cannot_commit() {
    use std::os::unix::net::UnixDatagram;
    use std::time::Instant;
    let dir = tempdir();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    // A JAS API with nothing listening: registration stays pending, callhook is ready anyway.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut env = Env::new(dir.path()).with_sim(&format!("http://{closed}/v2"));
    env.set("jas.register", "true")
        .set("jas.callback_url", "https://example.invalid/webhooks/jas")
        .set("jas.lookup_participants", "false");
    env.0
        .insert("NOTIFY_SOCKET".into(), socket_path.to_str().unwrap().into());
    env.0.insert("WATCHDOG_USEC".into(), "200000".into());
    let _daemon = ChildDaemon::spawn(&env, dir.path());

    let mut buf = [0u8; 512];
    let mut read_for = |d: Duration| {
        let mut got = vec![];
        let until = Instant::now() + d;
        while Instant::now() < until {
            if let Ok(n) = socket.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        got
    };
    let seen = read_for(Duration::from_millis(1500));
    assert!(seen.iter().any(|m| m.contains("READY=1")), "{seen:?}");
    assert!(
        seen.iter()
            .any(|m| m.contains("STATUS=") && m.contains("registration pending")),
        "{seen:?}"
    );
    assert!(seen.iter().any(|m| m.contains("WATCHDOG=1")), "{seen:?}");

    std::fs::remove_file(data_dir(dir.path()).join("callhook.db")).unwrap();
    // The next ping's sync sees it; from then on no ping at all.
    let _ = read_for(Duration::from_millis(500));
    let after = read_for(Duration::from_millis(1000));
    assert!(!after.iter().any(|m| m.contains("WATCHDOG=1")), "{after:?}");
}

/// The effective user id, read from `/proc/self/status` (no libc in this crate).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

/// A tmpfs of `kib` KiB mounted on a folder, unmounted when dropped (lazily if a file on it is
/// still open, e.g. after a failed assertion left a daemon running).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// `None`, with the reason printed, only when this process may not mount: not root, or the
    /// kernel refuses (a container without CAP_SYS_ADMIN). Any other failure fails the test.
    fn mount(dir: &std::path::Path, kib: u64) -> Option<Tmpfs> {
        let euid = effective_uid();
        if euid != Some(0) {
            eprintln!(
                "skipped: a full disk needs a tmpfs mount, and this test runs as euid {euid:?}, not root"
            );
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        if out.status.success() {
            return Some(Tmpfs(dir.to_path_buf()));
        }
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        if ["permission denied", "not permitted", "must be superuser"]
            .iter()
            .any(|m| err.contains(m))
        {
            eprintln!(
                "skipped: mounting a tmpfs is not permitted here: {}",
                err.trim()
            );
            return None;
        }
        panic!("mount -t tmpfs failed: {err}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut cmd = std::process::Command::new("umount");
            if lazy {
                cmd.arg("-l");
            }
            cmd.arg(&self.0)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !umount(false) && !umount(true) {
            eprintln!("could not unmount {}", self.0.display());
        }
    }
}

/// Writes `path` until the file system is full; returns how many bytes it took.
fn fill(path: &std::path::Path) -> u64 {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut total = 0;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    total
}

/// A participant event with a kilobyte of padding, so a few fill what a full disk leaves.
fn padded_event(n: i64) -> String {
    json!({
        "eventName": "call_status",
        "timestamp": event_time(n),
        "data": {"event": {"entity": format!("/callcontrol/101/participants/{n}"), "event_type": 0},
                 "sequence": n, "padding": "p".repeat(1024)}
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_503_on_webhooks_and_readyz_and_both_recover_when_space_returns() {
    let dir = tempdir();
    let mount = dir.path().join("disk");
    let Some(_tmpfs) = Tmpfs::mount(&mount, 1024) else {
        return;
    };
    let mut env = Env::new(dir.path());
    env.set("storage.path", mount.join("callhook.db").to_str().unwrap())
        .set("recordings.enabled", "false");
    let app = TestApp::spawn(&env, dir.path()).await;
    let (status, _) = app.post_jas(&padded_event(0)).await;
    assert_eq!(status, 200);

    let filler = mount.join("filler");
    let filled = fill(&filler);
    let mut accepted = vec![padded_event(0)];
    let mut refused = None;
    for n in 1..2000 {
        let body = padded_event(n);
        let (status, reply) = app.post_jas(&body).await;
        match status {
            200 => {
                assert_eq!(reply["status"], "accepted", "{reply}");
                accepted.push(body);
            }
            503 => {
                refused = Some(reply);
                break;
            }
            other => panic!("event {n}: {other} {reply}"),
        }
    }
    let refused = refused.unwrap_or_else(|| {
        panic!("2000 events were all accepted on a full disk ({filled} bytes of filler)")
    });
    assert!(refused["error"].is_string(), "{refused}");
    let (status, ready) = app.get_admin("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["ready"], false, "{ready}");
    assert!(
        ready["reason"].as_str().is_some_and(|r| r.contains("full")),
        "{ready}"
    );
    assert!(
        ready["journal"]
            .as_str()
            .is_some_and(|r| r.contains("full")),
        "{ready}"
    );
    eprintln!("refused: {refused}; readyz: {ready}");
    // Still full two probes later: still refused, nothing stored is acknowledged.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (status, _) = app.get_admin("/readyz").await;
    assert_eq!(status, 503);
    let (status, reply) = app.post_jas(&padded_event(5000)).await;
    assert_eq!(status, 503, "{reply}");

    // Space returns: ready again by itself (the next probe), events accepted again.
    std::fs::remove_file(&filler).unwrap();
    wait_until(Duration::from_secs(10), || async {
        app.get_admin("/readyz").await.0 == 200
    })
    .await;
    let (_, ready) = app.get_admin("/readyz").await;
    assert_eq!(ready["journal"], "ok", "{ready}");
    let body = padded_event(5001);
    let (status, reply) = app.post_jas(&body).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (200, Some("accepted")),
        "{reply}"
    );
    accepted.push(body);
    app.stop().await.unwrap();

    // Every event that got a 200 survived: after a restart each is a duplicate.
    let app = TestApp::spawn(&env, dir.path()).await;
    for body in &accepted {
        let (status, reply) = app.post_jas(body).await;
        assert_eq!(
            (status, reply["status"].as_str()),
            (200, Some("duplicate")),
            "{reply}"
        );
    }
    eprintln!(
        "{} events accepted before the disk was full ({filled} bytes of filler)",
        accepted.len() - 2
    );
    app.stop().await.unwrap();
}

#[test]
fn a_database_file_that_is_not_a_database_stops_serve_with_exit_1_naming_the_path() {
    let dir = tempdir();
    let env = Env::new(dir.path());
    let db = data_dir(dir.path()).join("callhook.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    // Not SQLite at all, and a file with SQLite's magic over garbage pages.
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7919 % 251) as u8).collect();
    let mut forged = b"SQLite format 3\0".to_vec();
    forged.extend_from_slice(&garbage);
    for contents in [garbage, forged] {
        std::fs::write(&db, &contents).unwrap();
        let empty = dir.path().join("empty.toml");
        std::fs::write(&empty, "").unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_callhook"))
            .args(["serve", "--config"])
            .arg(&empty)
            .envs(&env.0)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Bounded: a daemon that started anyway is killed, and the test fails below.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stderr}{stdout}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&path_str(&db)) && stderr.contains("not a database"),
            "{stderr}"
        );
        assert!(!stderr.contains(SECRET) && !stdout.contains(SECRET));
        // Refused, not repaired nor replaced: the file is as it was.
        assert_eq!(std::fs::read(&db).unwrap(), contents);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_overwritten_in_place_while_running_is_503_until_a_restart() {
    use std::io::Write;
    let dir = tempdir();
    let app = TestApp::spawn(&Env::new(dir.path()), dir.path()).await;
    for n in 0..20 {
        let (status, _) = app.post_jas(&padded_event(n)).await;
        assert_eq!(status, 200);
    }
    // Another program writes over the file: same inode, so the identity check sees nothing.
    let db = data_dir(dir.path()).join("callhook.db");
    let mut file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    file.write_all(&[0x5a; 4096]).unwrap();
    file.sync_all().unwrap();
    drop(file);

    // The checkpoint thread reads the header back before its next checkpoint (every 250 ms),
    // which would write page 1 back from the WAL and hide the damage; the next sync (the 1 s
    // probe's at the latest) refuses from then on.
    wait_until(Duration::from_secs(5), || async {
        app.get_admin("/readyz").await.0 == 503
    })
    .await;
    let (_, ready) = app.get_admin("/readyz").await;
    let journal = ready["journal"].as_str().unwrap();
    assert!(
        journal.contains("overwritten") && journal.contains(&path_str(&db)),
        "{ready}"
    );
    let (status, reply) = app.post_jas(&padded_event(100)).await;
    assert_eq!(status, 503, "{reply}");
    // Checkpoints write page 1 back from the WAL; the rest of the file is still garbage, so it
    // stays refused.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, reply) = app.post_jas(&padded_event(101)).await;
    assert_eq!(status, 503, "{reply}");
    assert_eq!(app.get_admin("/readyz").await.0, 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repaired_time_is_logged_at_warn_naming_the_provider_event_and_field() {
    let dir = tempdir();
    let mut env = Env::new(dir.path());
    env.set("recordings.enabled", "false")
        .set("telecmi.path_token", "ingest-path-token");
    let mut daemon = tokio::task::block_in_place(|| ChildDaemon::spawn(&env, dir.path()));
    let http = reqwest::Client::new();
    // `start_time` missing, `end_time` a number: both repaired, `timestamp` readable.
    let recording = json!({
        "eventName": "new_recording", "timestamp": event_time(0),
        "data": {"call_id": "78", "recording_url": "101/y.wav", "id_recording": 10,
                 "end_time": 1744643063}
    });
    let (status, reply) = post_signed(&http, &daemon.public, &recording.to_string()).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (200, Some("accepted")),
        "{reply}"
    );
    let telecmi = json!({"cmiuuid": "u2", "conversation_uuid": "c2", "type": "event",
                         "leg": "a", "status": "started", "direction": "inbound", "time": "soon"});
    let resp = http
        .post(format!(
            "{}/webhooks/telecmi/ingest-path-token",
            daemon.public
        ))
        .header("content-type", "application/json")
        .body(telecmi.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let message = "event field missing or unreadable; using the time it was received";
    let mut warned = |provider: &str, event: &str, field: &str| {
        let line = tokio::task::block_in_place(|| {
            daemon.wait_log(|l| l["message"] == message && l["field"] == field)
        });
        assert_eq!(
            (&line["level"], &line["provider"], &line["event"]),
            (&json!("WARN"), &json!(provider), &json!(event)),
            "{line}"
        );
    };
    warned("jas", "new_recording", "start_time");
    warned("jas", "new_recording", "end_time");
    warned("telecmi", "event", "time");
    // A readable field is not warned about.
    let logs = daemon.logs();
    assert!(
        !logs
            .iter()
            .any(|l| l["message"] == message && l["field"] == "timestamp"),
        "{logs:#?}"
    );
}
