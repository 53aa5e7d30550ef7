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
    let query: Vec<String> = [("endpoint", endpoint), ("state", state)]
        .into_iter()
        .filter_map(|(k, v)| {
            Some(format!(
                "{k}={}",
                crate::outbound::path::encode_segment(&v?)
            ))
        })
        .collect();
    let path = format!("/api/deliveries?{}", query.join("&"));
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
