//! `callhook endpoints list` and `callhook deliveries list|retry`: the outbound deliveries of
//! SPEC §7, read and retried through the running daemon's admin API (with `admin.token`).

use std::process::ExitCode;
use std::time::Duration;

use comfy_table::Table;
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::config::Settings;

/// A request to the admin API of the configured daemon, with `admin.token` when set.
fn request(
    settings: &Settings,
    method: reqwest::Method,
    path: &str,
    timeout: Option<Duration>,
) -> Result<reqwest::RequestBuilder, ExitCode> {
    let addr = crate::cli::reachable(settings.admin.listen);
    let url = format!("http://{addr}{path}");
    let mut options = crate::outbound::Options::own(true);
    if let Some(timeout) = timeout {
        options = options.timeout(timeout);
    }
    let client = crate::outbound::client(options).map_err(|e| {
        eprintln!("callhook: {e}");
        ExitCode::from(1)
    })?;
    let mut req = client.request(method, &url);
    if let Some(token) = &settings.admin.token {
        req = req.bearer_auth(token.expose_secret());
    }
    Ok(req)
}

/// An admin API reply that is not a success: one line on stderr.
async fn refused(path: &str, resp: reqwest::Response) -> ExitCode {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let why = body["error"].as_str().unwrap_or("");
    eprintln!("callhook: {path} answered {status} {why}");
    ExitCode::from(1)
}

/// One request to the admin API: its JSON answer, or one line on stderr and exit 1.
async fn admin(
    settings: &Settings,
    method: reqwest::Method,
    path: &str,
) -> Result<Value, ExitCode> {
    let req = request(settings, method, path, Some(Duration::from_secs(10)))?;
    let resp = req.send().await.map_err(|e| {
        eprintln!("callhook: {path}: {}", crate::outbound::describe(e));
        ExitCode::from(1)
    })?;
    if !resp.status().is_success() {
        return Err(refused(path, resp).await);
    }
    Ok(resp.json().await.unwrap_or(Value::Null))
}

/// A query string of the parameters given, each value percent-encoded.
fn query<const N: usize>(params: [(&str, Option<String>); N]) -> String {
    let given: Vec<String> = params
        .into_iter()
        .filter_map(|(k, v)| {
            Some(format!(
                "{k}={}",
                crate::outbound::path::encode_segment(&v?)
            ))
        })
        .collect();
    given.join("&")
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn table(rows: &[Value], columns: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(columns.iter().map(|c| c.to_uppercase()));
    for row in rows {
        t.add_row(columns.iter().map(|c| cell(&row[*c])));
    }
    t
}

/// `GET path` and the array under `key` as a table of `columns`.
async fn list(settings: &Settings, path: &str, key: &str, columns: &[&str]) -> ExitCode {
    match admin(settings, reqwest::Method::GET, path).await {
        Ok(body) => {
            let rows = body[key].as_array().cloned().unwrap_or_default();
            println!("{}", table(&rows, columns));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

pub async fn endpoints_list(settings: Settings) -> ExitCode {
    let columns = [
        "name",
        "url",
        "enabled",
        "pending",
        "failed",
        "delivered",
        "oldest_pending_secs",
    ];
    list(&settings, "/api/endpoints", "endpoints", &columns).await
}

pub async fn deliveries_list(
    settings: Settings,
    endpoint: Option<String>,
    state: Option<String>,
) -> ExitCode {
    let path = format!(
        "/api/deliveries?{}",
        query([("endpoint", endpoint), ("state", state)])
    );
    let columns = [
        "event_id",
        "type",
        "provider",
        "call_id",
        "state",
        "attempts",
        "last_error",
        "next_attempt_at",
    ];
    list(&settings, &path, "deliveries", &columns).await
}

pub async fn deliveries_retry(settings: Settings, id: String) -> ExitCode {
    let path = format!(
        "/api/deliveries/{}/retry",
        crate::outbound::path::encode_segment(&id)
    );
    match admin(&settings, reqwest::Method::POST, &path).await {
        Ok(body) => {
            println!("{id}: due now for {}", cell(&body["endpoints"]));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

pub async fn endpoints_replay(settings: Settings, name: String, since: String) -> ExitCode {
    let path = format!(
        "/api/endpoints/{}/replay?since={}",
        crate::outbound::path::encode_segment(&name),
        crate::outbound::path::encode_segment(&since)
    );
    match admin(&settings, reqwest::Method::POST, &path).await {
        Ok(body) => {
            println!("{name}: {} events due again", cell(&body["events"]));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `callhook reconcile`: `POST /api/reconcile`, one line per provider's run (`jas: ok: 1
/// added, 0 removed, 1 call ended`). 0 when every run was `ok`, else 1. A run waits for the
/// provider's API (10 s at most) and for its snapshot to be applied.
pub async fn reconcile(settings: Settings) -> ExitCode {
    let path = "/api/reconcile";
    let req = match request(
        &settings,
        reqwest::Method::POST,
        path,
        Some(Duration::from_secs(40)),
    ) {
        Ok(req) => req,
        Err(code) => return code,
    };
    let resp = match req.send().await {
        Ok(resp) => resp,
        Err(e) => {
            eprintln!("callhook: {path}: {}", crate::outbound::describe(e));
            return ExitCode::from(1);
        }
    };
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let runs = body["runs"].as_array().cloned().unwrap_or_default();
    if runs.is_empty() {
        let why = body["error"].as_str().unwrap_or("");
        eprintln!("callhook: {path} answered {status} {why}");
        return ExitCode::from(1);
    }
    for run in &runs {
        let line = match run["error"].as_str() {
            Some(error) => format!("{}: {error}", cell(&run["outcome"])),
            None => format!(
                "{}: {} added, {} removed, {} calls ended",
                cell(&run["outcome"]),
                cell(&run["added"]),
                cell(&run["removed"]),
                cell(&run["calls_ended"]),
            ),
        };
        println!("{}: {line}", cell(&run["provider"]));
    }
    if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// How long `tail` waits before connecting again after the daemon went away.
const TAIL_RECONNECT: Duration = Duration::from_secs(1);

/// `callhook tail`: `/api/stream`'s events, one JSON body a line. When the stream drops (the
/// daemon restarts) it connects again with `Last-Event-ID`, so nothing kept in between is
/// missed; only a first connection that fails, or a refusal, ends it with 1.
pub async fn tail(settings: Settings) -> ExitCode {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    use std::io::Write;

    let path = "/api/stream";
    let mut last_id: Option<String> = None;
    let mut connected_once = false;
    loop {
        let mut req = match request(&settings, reqwest::Method::GET, path, None) {
            Ok(req) => req,
            Err(code) => return code,
        };
        if let Some(id) = &last_id {
            req = req.header("last-event-id", id);
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => {
                connected_once = true;
                let mut events = resp.bytes_stream().eventsource();
                while let Some(Ok(event)) = events.next().await {
                    if event.data.is_empty() {
                        continue;
                    }
                    let mut out = std::io::stdout().lock();
                    // A closed pipe (`callhook tail | head`) ends the command, not an error.
                    if writeln!(out, "{}", event.data)
                        .and_then(|_| out.flush())
                        .is_err()
                    {
                        return ExitCode::SUCCESS;
                    }
                    last_id = Some(event.id);
                }
            }
            Ok(resp) => return refused(path, resp).await,
            Err(e) if !connected_once => {
                eprintln!("callhook: {path}: {}", crate::outbound::describe(e));
                return ExitCode::from(1);
            }
            Err(_) => {}
        }
        tokio::time::sleep(TAIL_RECONNECT).await;
    }
}

/// `callhook export`: `/api/export` copied to stdout as it arrives (a month of calls never
/// sits in memory, here or in the daemon).
pub async fn export(
    settings: Settings,
    since: String,
    until: Option<String>,
    format: Option<String>,
) -> ExitCode {
    use futures_util::StreamExt;
    use std::io::Write;

    let path = format!(
        "/api/export?{}",
        query([("since", Some(since)), ("until", until), ("format", format)])
    );
    let req = match request(&settings, reqwest::Method::GET, &path, None) {
        Ok(req) => req,
        Err(code) => return code,
    };
    let resp = match req.send().await {
        Ok(resp) if resp.status().is_success() => resp,
        Ok(resp) => return refused(&path, resp).await,
        Err(e) => {
            eprintln!("callhook: {path}: {}", crate::outbound::describe(e));
            return ExitCode::from(1);
        }
    };
    let mut body = resp.bytes_stream();
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                eprintln!(
                    "callhook: {path}: cut short: {}",
                    crate::outbound::describe(e)
                );
                return ExitCode::from(1);
            }
        };
        if out.write_all(&chunk).is_err() {
            return ExitCode::SUCCESS; // `| head`
        }
    }
    let _ = out.flush();
    ExitCode::SUCCESS
}

/// The active calls as a table: who is on which call, in which direction, for how long.
fn calls_table(calls: &[Value]) -> Table {
    let now = chrono::Utc::now();
    let rows: Vec<Value> = calls
        .iter()
        .map(|c| {
            let duration = c["started_at"]
                .as_str()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .map(|s| {
                    let secs = (now - s.with_timezone(&chrono::Utc)).num_seconds().max(0);
                    format!("{}:{:02}", secs / 60, secs % 60)
                });
            let participants: Vec<String> = c["participants"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            format!(
                                "{} <-> {} ({})",
                                cell(&p["dn"]),
                                cell(&p["party_number"]),
                                cell(&p["status"])
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            serde_json::json!({
                "provider": c["provider"],
                "call": c["call_id"],
                "direction": c["direction"],
                "duration": duration,
                "participants": participants.join(", "),
            })
        })
        .collect();
    table(
        &rows,
        &["provider", "call", "direction", "duration", "participants"],
    )
}

/// `callhook calls [--watch]`: the active calls; with `--watch`, redrawn on every call event
/// (from `/api/stream`) and every second, so durations count.
pub async fn calls(settings: Settings, watch: bool) -> ExitCode {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;

    let draw = |settings: &Settings| {
        let settings = settings.clone();
        async move {
            let body = admin(&settings, reqwest::Method::GET, "/api/calls").await?;
            let calls = body["calls"].as_array().cloned().unwrap_or_default();
            Ok::<_, ExitCode>(calls_table(&calls))
        }
    };
    if !watch {
        return match draw(&settings).await {
            Ok(t) => {
                println!("{t}");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        };
    }
    let path = "/api/stream";
    let req = match request(&settings, reqwest::Method::GET, path, None) {
        Ok(req) => req,
        Err(code) => return code,
    };
    let mut events = match req.send().await {
        Ok(resp) if resp.status().is_success() => resp.bytes_stream().eventsource(),
        Ok(resp) => return refused(path, resp).await,
        Err(e) => {
            eprintln!("callhook: {path}: {}", crate::outbound::describe(e));
            return ExitCode::from(1);
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        match draw(&settings).await {
            // Clear the screen and draw from its top.
            Ok(t) => println!("\x1b[2J\x1b[H{t}"),
            Err(code) => return code,
        }
        tokio::select! {
            event = events.next() => {
                if !matches!(event, Some(Ok(_))) {
                    eprintln!("callhook: {path}: the daemon closed the stream");
                    return ExitCode::from(1);
                }
            }
            _ = tick.tick() => {}
        }
    }
}
