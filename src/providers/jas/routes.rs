//! `POST /webhooks/jas`: verify → parse → journal → ack. Applying the event happens after the
//! reply, in the processor, so a slow JAS API never delays an acknowledgement.

use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::routing::post;
use chrono::Utc;
use serde_json::Value;

use std::sync::Arc;

use super::events::{self, JasEvent};
use super::gaps::Gaps;
use super::verify::Verifier;
use crate::calls::Provider;
use crate::http::{ApiError, Outcome, reply};
use crate::journal::{Appended, NewEvent};
use crate::providers::Ingest;

/// The route's own state: what every route shares, and the X-SIG secrets.
#[derive(Clone)]
struct Route {
    ingest: Ingest,
    verifier: Arc<Verifier>,
    /// Where accepted `call_status` sequences go, for the reconciler's gap rule.
    gaps: Arc<Gaps>,
}

pub fn router(ingest: Ingest, gaps: Arc<Gaps>) -> Router {
    let verifier = Arc::new(Verifier::new(ingest.settings.jas.webhook_secrets.clone()));
    Router::new()
        .route("/webhooks/jas", post(receive))
        .with_state(Route {
            ingest,
            verifier,
            gaps,
        })
}

/// The journal row of a decoded JAS event received now. Public so that the benchmark's durable
/// floor journals exactly what this route does.
pub fn journal_entry(event: &JasEvent, dedupe_key: String, body: Bytes) -> NewEvent {
    NewEvent {
        provider: Provider::Jas.as_str(),
        name: event.name().to_string(),
        dedupe_key,
        content_type: None,
        body,
        received_at: Utc::now(),
    }
}

async fn receive(
    State(state): State<Route>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    let result = accept(&state, &headers, body).await;
    reply::finish(Provider::Jas, started, None, result)
}

/// Returns the event's metric name and how it was taken.
async fn accept(
    state: &Route,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> reply::Accepted {
    let settings = &state.ingest.settings;
    if !settings.jas.enabled {
        return Err(ApiError::NotFound);
    }
    let limit = settings.server.max_body_bytes;
    let body = body.map_err(|e| ApiError::from_body(e, limit))?;
    state
        .verifier
        .verify(headers.get("x-sig").map(|v| v.as_bytes()), &body)
        .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    let decoded =
        events::decode(&body, Utc::now()).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let name = decoded.event.metric_name();
    for field in &decoded.repaired {
        crate::metrics::field_warning(Provider::Jas, field, name);
    }
    let appended = state
        .ingest
        .journal
        .append(journal_entry(&decoded.event, decoded.dedupe_key, body))
        .await?;
    if let (Appended::Accepted(_), JasEvent::CallStatus(cs)) = (appended, &decoded.event) {
        state.gaps.note(cs.sequence, std::time::Instant::now());
    }
    let outcome = match (appended, &decoded.event) {
        (Appended::Duplicate, _) => Outcome::Duplicate,
        (Appended::Accepted(_), JasEvent::Unknown(_)) => Outcome::Ignored,
        (Appended::Accepted(id), _) => Outcome::Accepted(id),
    };
    log_event(&decoded.event, appended, outcome.label());
    Ok((name, outcome))
}

fn log_event(event: &JasEvent, appended: Appended, outcome: &str) {
    let journal_id = match appended {
        Appended::Accepted(id) => Some(id),
        Appended::Duplicate => None,
    };
    match event {
        JasEvent::CallStatus(cs) => tracing::info!(
            provider = "jas", event = "call_status", sequence = cs.sequence, dn = %cs.dn,
            participant_id = %cs.participant_id, event_type = cs.change.code(),
            journal_id, outcome, "event {outcome}"
        ),
        JasEvent::NewRecording(r) => tracing::info!(
            provider = "jas", event = "new_recording", call_id = %r.call_id,
            recording = %r.recording_url.escape_debug(), journal_id, outcome, "event {outcome}"
        ),
        JasEvent::CallSummary(s) => tracing::info!(
            provider = "jas",
            event = "call_summary",
            call_id = s.call_id.as_deref().unwrap_or(""),
            journal_id,
            outcome,
            "event {outcome}"
        ),
        JasEvent::Unknown(name) => tracing::info!(
            provider = "jas", event = %name.escape_debug(), journal_id, outcome, "event {outcome}"
        ),
    }
}
