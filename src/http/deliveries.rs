//! The admin routes of call events out (SPEC §7): the endpoints and their queues, the
//! deliveries, and a retry.

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use super::query::{LIST_DEFAULT, LIST_MAX, invalid_time, limit, time};
use super::{ApiError, AppState};
use crate::config::redacted_url;
use crate::journal::{DeliveryUpdate, Replay, StateWrite};

/// `GET /api/endpoints`: each configured endpoint, its URL without credentials, and its queue.
pub async fn endpoints(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut out = vec![];
    for e in &state.settings.outbound.endpoints {
        let counts = state.journal.endpoint_counts(e.name.clone()).await?;
        out.push(json!({
            "name": e.name,
            "url": redacted_url(&e.url),
            "enabled": e.enabled && state.deliverer.as_ref().is_some_and(|d| d.disabled_reason(&e.name).is_none()),
            "disabled_because": state.deliverer.as_ref().map_or(Some("enabled = false"), |d| d.disabled_reason(&e.name)),
            "pending": counts.pending,
            "failed": counts.failed,
            "delivered": counts.delivered,
            "oldest_pending_secs": counts
                .oldest_pending_at
                .map(|at| (Utc::now() - at).num_seconds().max(0)),
            "last_success_at": counts.last_success_at,
            "last_failure_at": counts.last_failure_at,
        }));
    }
    Ok(Json(json!({ "endpoints": out })))
}

#[derive(Deserialize)]
pub struct DeliveriesQuery {
    endpoint: Option<String>,
    state: Option<String>,
    limit: Option<String>,
}

/// `GET /api/deliveries?endpoint=&state=&limit=`: newest first.
pub async fn deliveries(
    State(state): State<AppState>,
    Query(q): Query<DeliveriesQuery>,
) -> Result<Json<Value>, ApiError> {
    let names: Vec<&str> = state
        .settings
        .outbound
        .endpoints
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    let endpoint = match q.endpoint.as_deref() {
        Some(name) if names.contains(&name) => Some(name.to_string()),
        Some(_) if names.is_empty() => {
            return Err(ApiError::BadRequest(
                "invalid `endpoint`: no outbound endpoint is configured".into(),
            ));
        }
        Some(_) => {
            return Err(ApiError::BadRequest(format!(
                "invalid `endpoint`: expected one of {}",
                names.join(", ")
            )));
        }
        None => match names.as_slice() {
            // Nothing is delivered anywhere, so there is nothing to list.
            [] => None,
            [only] => Some(only.to_string()),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "missing `endpoint`: one of {}",
                    names.join(", ")
                )));
            }
        },
    };
    let wanted = match q.state.as_deref() {
        None | Some("") => None,
        Some("pending") => Some("pending"),
        Some("delivered") => Some("delivered"),
        Some("failed") => Some("failed"),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "invalid `state`: expected pending, delivered or failed".into(),
            ));
        }
    };
    let limit = limit(q.limit.as_deref(), LIST_DEFAULT, LIST_MAX)?;
    let Some(endpoint) = endpoint else {
        return Ok(Json(json!({ "deliveries": [] })));
    };
    let rows = state.journal.deliveries(endpoint, wanted, limit).await?;
    Ok(Json(json!({ "deliveries": rows })))
}

/// `POST /api/deliveries/{event_id}/retry`: its pending or failed deliveries are due now.
pub async fn retry(
    State(state): State<AppState>,
    Path(event_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rows = state.journal.retryable(event_id).await?;
    if rows.is_empty() {
        return Err(ApiError::NotFound);
    }
    let now = Utc::now();
    let updates: Vec<DeliveryUpdate> = rows
        .iter()
        .map(|r| DeliveryUpdate {
            endpoint: r.endpoint.clone(),
            event_seq: r.event_seq,
            state: "pending",
            attempts: r.attempts,
            next_attempt_at: now,
            last_error: r.last_error.clone(),
            read_version: None,
            at_ms: now.timestamp_millis(),
        })
        .collect();
    state
        .journal
        .write_state(StateWrite {
            deliveries: updates,
            ..Default::default()
        })
        .await?;
    if let Some(deliverer) = &state.deliverer {
        deliverer.reload();
    }
    let endpoints: Vec<&str> = rows.iter().map(|r| r.endpoint.as_str()).collect();
    Ok(Json(json!({ "status": "due", "endpoints": endpoints })))
}

#[derive(Deserialize)]
pub struct ReplayQuery {
    since: Option<String>,
}

/// `POST /api/endpoints/{name}/replay?since=RFC3339`: every event produced since then goes to
/// the endpoint again, in order, with its original id.
pub async fn replay(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<ReplayQuery>,
) -> Result<Json<Value>, ApiError> {
    let deliverer = running(&state, &name)?;
    let since = time("since", q.since.as_deref())?.ok_or_else(|| invalid_time("since"))?;
    let events = state.journal.replayable(name.clone(), since).await?;
    state
        .journal
        .write_state(StateWrite {
            replays: vec![Replay {
                endpoint: name,
                since,
            }],
            ..Default::default()
        })
        .await?;
    deliverer.reload();
    Ok(Json(json!({ "status": "replaying", "events": events })))
}

/// `POST /api/endpoints/{name}/enable`: an endpoint a `410 Gone` turned off sends again.
pub async fn enable(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    running(&state, &name)?.enable(&name);
    Ok(Json(json!({ "status": "enabled" })))
}

/// The delivery workers, when `name` is one of their endpoints.
fn running<'s>(
    state: &'s AppState,
    name: &str,
) -> Result<&'s crate::events::deliver::Deliverer, ApiError> {
    state
        .deliverer
        .as_deref()
        .filter(|d| d.serves(name))
        .ok_or(ApiError::NotFound)
}
