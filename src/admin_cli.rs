//! `callhook endpoints list` and `callhook deliveries list|retry`: the outbound deliveries of
//! SPEC §7, read and retried through the running daemon's admin API (with `admin.token`).

use std::process::ExitCode;
use std::time::Duration;

use comfy_table::Table;
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::config::Settings;

/// One request to the admin API: its JSON answer, or one line on stderr and exit 1.
async fn admin(
    settings: &Settings,
    method: reqwest::Method,
    path: &str,
) -> Result<Value, ExitCode> {
    let addr = crate::cli::reachable(settings.admin.listen);
    let url = format!("http://{addr}{path}");
    let client = crate::outbound::client(
        crate::outbound::Options::own(true).timeout(Duration::from_secs(10)),
    )
    .map_err(|e| {
        eprintln!("callhook: {e}");
        ExitCode::from(1)
    })?;
    let mut req = client.request(method, &url);
    if let Some(token) = &settings.admin.token {
        req = req.bearer_auth(token.expose_secret());
    }
    let resp = req.send().await.map_err(|e| {
        eprintln!("callhook: {url}: {}", crate::outbound::describe(e));
        ExitCode::from(1)
    })?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let why = body["error"].as_str().unwrap_or("");
        eprintln!("callhook: {path} answered {status} {why}");
        return Err(ExitCode::from(1));
    }
    Ok(body)
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
