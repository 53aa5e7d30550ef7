//! The public listener under a hostile peer (issue #11, "one peer can take the receiver down"):
//! a connection cap, header-read, idle and body-read deadlines, an immediate 413 on a declared
//! length over the limit, and an admin listener that stays up whatever the public one suffers.
//! Raw TCP on loopback, every wait bounded.

use std::time::{Duration, Instant};

use crate::common::*;
use callhook::providers::jas::verify::sign;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client for the tests that run the daemon as a child (no `TestApp` installs the crypto
/// provider for them).
fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// Reads until the peer closes (or `limit` passes); returns what came and when it closed.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    String::from_utf8_lossy(&got).into_owned(),
                    Some(started.elapsed()),
                );
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), None),
        }
    }
}

/// Reads until a whole reply head has arrived (or `limit` passes).
async fn read_head(stream: &mut TcpStream, limit: Duration) -> Option<(String, Duration)> {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    Some((
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    ))
}

fn signed_head(body: &str, content_length: usize) -> String {
    let sig = sign(SECRET.as_bytes(), body.as_bytes());
    format!(
        "POST /webhooks/jas HTTP/1.1\r\nHost: callhook\r\nContent-Type: application/json\r\n\
         X-SIG: {sig}\r\nContent-Length: {content_length}\r\n\r\n"
    )
}

#[tokio::test]
async fn a_flood_of_idle_connections_neither_locks_out_webhooks_nor_the_admin_listener() {
    let dir = tempdir();
    let mut env = Env::new(dir.path());
    env.set("server.max_connections", "4")
        .set("server.header_read_timeout_secs", "1");
    // Its own process, so the connection gauge counts this daemon only.
    let daemon = ChildDaemon::spawn(&env, dir.path());
    let public = host_port(&daemon.public);
    let http = client();

    // Three times the cap, connected and silent.
    let mut idle = Vec::new();
    for _ in 0..12 {
        idle.push(TcpStream::connect(&public).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // While they are held, the admin listener answers at once, and the public one holds no
    // more connections than its cap.
    let started = Instant::now();
    let health = http
        .get(format!("{}/healthz", daemon.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    let metrics = http
        .get(format!("{}/metrics", daemon.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric_in(&metrics, r#"callhook_http_connections{listener="public"}"#),
        4.0
    );

    // A signed event behind the flood is answered 200 once the silent ones have timed out.
    let body = call_status("101", "1", 0, 1);
    let started = Instant::now();
    let resp = http
        .post(format!("{}/webhooks/jas", daemon.public))
        .header("X-SIG", sign(SECRET.as_bytes(), body.as_bytes()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("a webhook gets through the flood");
    assert_eq!(resp.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // Every silent connection was closed by the daemon, none held for long.
    for mut conn in idle {
        let (_, closed) = read_to_close(&mut conn, Duration::from_secs(10)).await;
        assert!(closed.is_some(), "an idle connection was held open");
    }
    let metrics = http
        .get(format!("{}/metrics", daemon.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric_in(
            &metrics,
            r#"callhook_http_connections_closed_total{listener="public",reason="header_timeout"}"#
        ) >= 12.0
    );
    assert_eq!(health_of(&http, &daemon.admin).await, 200);
}

async fn health_of(http: &reqwest::Client, base: &str) -> u16 {
    http.get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn half_a_header_is_closed_after_the_header_timeout_and_an_idle_keep_alive_after_the_idle_timeout()
 {
    let dir = tempdir();
    let mut env = Env::new(dir.path());
    env.set("server.header_read_timeout_secs", "1")
        .set("server.idle_timeout_secs", "2");
    let app = TestApp::spawn(&env, dir.path()).await;
    let public = host_port(&app.public);

    let mut half = TcpStream::connect(&public).await.unwrap();
    half.write_all(b"POST /webhooks/jas HTTP/1.1\r\nHost: callhook\r\nX-SI")
        .await
        .unwrap();
    let (_, closed) = read_to_close(&mut half, Duration::from_secs(8)).await;
    let closed = closed.expect("half a header is not held open");
    assert!(closed >= Duration::from_millis(800), "{closed:?}");
    assert!(closed < Duration::from_secs(4), "{closed:?}");

    // A kept-alive connection: one request answered, then silence; closed after the idle
    // timeout (2 s), not the header timeout (1 s).
    let mut kept = TcpStream::connect(&public).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: callhook\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_head(&mut kept, Duration::from_secs(5)).await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_, closed) = read_to_close(&mut kept, Duration::from_secs(8)).await;
    let closed = closed.expect("an idle connection is not held open");
    assert!(closed >= Duration::from_millis(1500), "{closed:?}");
    assert!(closed < Duration::from_secs(5), "{closed:?}");
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_413_before_any_body_is_sent() {
    let dir = tempdir();
    let mut env = Env::new(dir.path());
    env.set("server.max_body_bytes", "2048")
        .set("telecmi.path_token", "tcmi-listener-token");
    let app = TestApp::spawn(&env, dir.path()).await;
    let public = host_port(&app.public);

    for (path, status) in [
        ("/webhooks/jas", "413"),
        ("/webhooks/telecmi/tcmi-listener-token", "413"),
        // A wrong token is still the 404 of no route, whatever the body.
        ("/webhooks/telecmi/wrong-token", "404"),
    ] {
        let mut conn = TcpStream::connect(&public).await.unwrap();
        let head = signed_head("{}", 10_000_000).replace("/webhooks/jas", path);
        conn.write_all(head.as_bytes()).await.unwrap();
        // No body byte is ever sent: the reply must not wait for one.
        let (reply, took) = read_head(&mut conn, Duration::from_secs(5))
            .await
            .expect("a reply before the body");
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {reply}"
        );
        assert!(took < Duration::from_secs(2), "{path}: {took:?}");
    }
    // Counted like any other refusal.
    assert!(
        app.metric(r#"callhook_events_total{provider="jas",event="unknown",outcome="too_large"}"#)
            .await
            >= 1.0
    );
    // A body within the limit still goes through.
    assert_eq!(app.post_jas(&call_status("101", "1", 0, 1)).await.0, 200);
}

#[tokio::test]
async fn a_half_sent_body_is_refused_408_and_dropped_after_the_body_timeout() {
    let dir = tempdir();
    let mut env = Env::new(dir.path());
    env.set("server.body_read_timeout_secs", "1");
    let app = TestApp::spawn(&env, dir.path()).await;
    let public = host_port(&app.public);

    let body = call_status("101", "1", 0, 1);
    let mut conn = TcpStream::connect(&public).await.unwrap();
    conn.write_all(signed_head(&body, body.len()).as_bytes())
        .await
        .unwrap();
    conn.write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();
    let (reply, closed) = read_to_close(&mut conn, Duration::from_secs(8)).await;
    let closed = closed.expect("the half-sent request is dropped");
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(closed >= Duration::from_millis(800), "{closed:?}");
    assert!(closed < Duration::from_secs(4), "{closed:?}");
    assert!(
        app.metric(r#"callhook_events_total{provider="jas",event="unknown",outcome="timeout"}"#)
            .await
            >= 1.0
    );
    // Nothing of it was journaled; the whole event still is.
    assert!(app.active_calls().await.is_empty());
    assert_eq!(app.post_jas(&body).await.0, 200);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// One wave: `n` connections each sending the headers and 59 of 60 KB of a signed body, held
/// until the daemon drops them (or 10 s).
async fn half_sent_wave(public: &str, n: usize) -> usize {
    let body = format!(r#"{{"eventName":"x","pad":"{}"}}"#, "a".repeat(60_000));
    let head = signed_head(&body, body.len());
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (public, head, body) = (public.to_string(), head.clone(), body.clone());
        opening.spawn(async move {
            let mut c = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(public))
                .await
                .ok()?
                .ok()?;
            // A connection still in the backlog takes only what the kernel buffers: not
            // waited for.
            let send = async {
                c.write_all(head.as_bytes()).await?;
                c.write_all(&body.as_bytes()[..59_000]).await
            };
            let sent = tokio::time::timeout(Duration::from_millis(500), send).await;
            (!matches!(sent, Ok(Err(_)))).then_some(c)
        });
    }
    let conns: Vec<TcpStream> = opening.join_all().await.into_iter().flatten().collect();
    let opened = conns.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(conns);
    opened
}

#[tokio::test]
async fn half_sent_bodies_hold_a_bounded_amount_of_memory() {
    let dir = tempdir();
    let mut env = Env::new(dir.path());
    env.set("server.max_connections", "32")
        .set("server.body_read_timeout_secs", "1");
    let daemon = ChildDaemon::spawn(&env, dir.path());
    let public = host_port(&daemon.public);
    let pid = daemon.child.id();
    let before = rss_kib(pid);
    let opened = half_sent_wave(&public, 400).await;
    let first = rss_kib(pid);
    let opened_again = half_sent_wave(&public, 400).await;
    let second = rss_kib(pid);
    eprintln!(
        "RSS of the daemon: {before} KiB at start, {first} KiB after a wave of {opened} half-sent 60 KB bodies, {second} KiB after a second wave of {opened_again}"
    );
    // Past the cap of 32 they wait in the kernel's queue (1024), not refused.
    assert!(
        opened >= 390 && opened_again >= 390,
        "{opened}, {opened_again}"
    );
    // 400 bodies of 59 KB held at once would be 23 MB; 32 of them are under 2 MB.
    assert!(
        first < before + 16 * 1024,
        "{before} KiB -> {first} KiB after one wave"
    );
    assert!(
        second < before + 16 * 1024,
        "{before} KiB -> {second} KiB after two waves"
    );
    let http = client();
    assert_eq!(health_of(&http, &daemon.admin).await, 200);
}

/// The soft open-file limit of a running process.
fn soft_nofile(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_one_at_start() {
    let hard = rlimit::Resource::NOFILE.get().unwrap().1;
    if hard <= 512 {
        eprintln!("hard open-file limit {hard}: nothing to raise here");
        return;
    }
    let dir = tempdir();
    let env = Env::new(dir.path());
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    // Started with a soft limit of 512, as a unit without LimitNOFILE= might give it.
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -Sn 512 && exec "$0" serve --config "$1""#)
        .arg(env!("CARGO_BIN_EXE_callhook"))
        .arg(&empty)
        .envs(&env.0)
        .env("CALLHOOK__LOG__FORMAT", "json")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut logged = None;
    let ready = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            break false;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v["message"] == "open-file limit" {
            logged = Some(v.clone());
        }
        if v["message"] == "ready" {
            break true;
        }
    };
    let soft = soft_nofile(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "the daemon did not become ready");
    assert_eq!(soft, hard);
    let logged = logged.expect("the limit is logged");
    assert_eq!(logged["was"], 512, "{logged}");
    assert_eq!(logged["soft"], hard, "{logged}");
}
