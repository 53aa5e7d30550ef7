//! `POST /webhooks/telecmi/{path_token}`: authenticate → parse → journal → ack; the processor
//! applies the event after the reply. TeleCMI signs nothing, so the secret path segment is the
//! credential: a wrong one gets exactly the reply of a path that does not exist.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::routing::post;
use axum::{Extension, Json, Router};
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::apply::{self, Action};
use super::events;
use crate::calls::Provider;
use crate::http::client_ip::client_ip;
use crate::http::{ApiError, Outcome, reply};
use crate::journal::{Appended, NewEvent};
use crate::providers::Ingest;

pub fn router(ingest: Ingest) -> Router {
    Router::new()
        .route(
            "/webhooks/telecmi/{path_token}",
            // Other methods get the unknown-path reply too, so the route gives nothing away.
            post(receive).fallback(crate::http::not_found),
        )
        .with_state(ingest)
}

async fn receive(
    State(state): State<Ingest>,
    path_token: Result<Path<String>, PathRejection>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let started = Instant::now();
    let client = peer.map(|Extension(ConnectInfo(addr))| {
        client_ip(addr.ip(), &headers, &state.settings.server.trusted_proxies)
    });
    let token = path_token.ok().map(|Path(token)| token);
    let result = accept(&state, token.as_deref(), client, &headers, body).await;
    reply::finish(Provider::Telecmi, started, client, result)
}

/// Returns the event's metric name and how it was taken.
async fn accept(
    state: &Ingest,
    token: Option<&str>,
    client: Option<IpAddr>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> reply::Accepted {
    let settings = &state.settings.telecmi;
    // Disabled, unconfigured and wrong all look like no route at all.
    if !settings.enabled || !token_matches(settings.path_token.as_ref(), token) {
        return Err(ApiError::NotFound);
    }
    if !settings.allow_ips.is_empty()
        && !client.is_some_and(|ip| settings.allow_ips.iter().any(|net| net.contains(&ip)))
    {
        return Err(ApiError::Forbidden("source address not allowed".into()));
    }
    let limit = state.settings.server.max_body_bytes;
    let body = body.map_err(|e| ApiError::from_body(e, limit))?;
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let event = events::decode(&body, content_type.as_deref())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let action = apply::classify(&event).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let name = apply::metric_name(&event);
    for field in &event.repaired {
        crate::metrics::field_warning(Provider::Telecmi, field, name);
    }
    let appended = state
        .journal
        .append(NewEvent {
            provider: Provider::Telecmi.as_str(),
            name: event.kind.as_str().to_string(),
            dedupe_key: format!("telecmi:{}", event.dedupe_key()),
            content_type,
            body,
            received_at: Utc::now(),
        })
        .await?;
    let outcome = match (appended, action) {
        (Appended::Duplicate, _) => Outcome::Duplicate,
        (Appended::Accepted(_), Action::Ignore) => Outcome::Ignored,
        (Appended::Accepted(id), _) => Outcome::Accepted(id),
    };
    let journal_id = match appended {
        Appended::Accepted(id) => Some(id),
        Appended::Duplicate => None,
    };
    tracing::info!(
        provider = "telecmi",
        event = %event.kind.as_str().escape_debug(),
        leg = event.leg.map(|l| l.as_str()),
        event_status = event.status.as_deref().map(|s| s.escape_debug().to_string()),
        direction = event.direction.as_deref().map(|s| s.escape_debug().to_string()),
        // The processor decides a CDR's call; this is what the event itself names.
        call_id = %event.call_id().escape_debug(),
        participant_id = %event.cmiuuid.escape_debug(),
        dn = event.user.as_deref().map(|s| s.escape_debug().to_string()),
        client_ip = client.map(|ip| ip.to_string()),
        journal_id,
        outcome = outcome.label(),
        "event {}",
        outcome.label()
    );
    Ok((name, outcome))
}

/// Constant time in the contents and, since both sides are hashed first, in the length too.
fn token_matches(configured: Option<&SecretString>, given: Option<&str>) -> bool {
    let (Some(configured), Some(given)) = (configured, given) else {
        return false;
    };
    let expected = Sha256::digest(configured.expose_secret().as_bytes());
    let given = Sha256::digest(given.as_bytes());
    expected.as_slice().ct_eq(given.as_slice()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        let configured = SecretString::from("s3cret-token");
        assert!(token_matches(Some(&configured), Some("s3cret-token")));
        assert!(!token_matches(Some(&configured), Some("s3cret-tokem")));
        assert!(!token_matches(Some(&configured), Some("s3cret")));
        assert!(!token_matches(Some(&configured), Some("")));
        assert!(!token_matches(Some(&configured), None));
        assert!(!token_matches(None, Some("s3cret-token")));
        assert!(!token_matches(None, None));
    }
}
