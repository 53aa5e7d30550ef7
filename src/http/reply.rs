//! The reply every webhook endpoint gives once an event is journaled, shared by all providers so
//! that they answer alike: `accepted` with the journal id, `duplicate`, or `ignored`.

use std::net::IpAddr;
use std::time::Instant;

use axum::Json;
use serde_json::{Value, json};

use super::ApiError;
use crate::calls::Provider;

/// How an event was taken, for the reply and the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted(i64),
    Duplicate,
    Ignored,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Accepted(_) => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Ignored => "ignored",
        }
    }

    pub fn reply(self) -> Value {
        match self {
            Outcome::Accepted(id) => json!({ "status": "accepted", "id": id.to_string() }),
            other => json!({ "status": other.label() }),
        }
    }
}

/// What an endpoint's `accept` returns: the event's metric name and how it was taken.
pub type Accepted = Result<(&'static str, Outcome), ApiError>;

/// The end of every webhook request, whatever the provider: counts it
/// (`callhook_events_total`, `callhook_ack_seconds`), logs a refusal (a 5xx is logged in full
/// by `ApiError` itself), and turns the outcome into the reply.
pub fn finish(
    provider: Provider,
    started: Instant,
    client_ip: Option<IpAddr>,
    result: Accepted,
) -> Result<Json<Value>, ApiError> {
    let (event, outcome) = match &result {
        Ok((event, outcome)) => (*event, outcome.label()),
        Err(e) => ("unknown", e.outcome()),
    };
    if let Err(e) = &result {
        if !matches!(e, ApiError::Internal(_)) {
            tracing::info!(provider = provider.as_str(), outcome = e.outcome(), http_status = e.status().as_u16(),
                error = %e, client_ip = client_ip.map(|ip| ip.to_string()), "event refused");
        }
    }
    metrics::counter!("callhook_events_total", "provider" => provider.as_str(), "event" => event, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("callhook_ack_seconds").record(started.elapsed().as_secs_f64());
    result.map(|(_, outcome)| Json(outcome.reply()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert_eq!(
            Outcome::Accepted(7).reply(),
            json!({"status": "accepted", "id": "7"})
        );
        assert_eq!(Outcome::Duplicate.reply(), json!({"status": "duplicate"}));
        assert_eq!(Outcome::Ignored.reply(), json!({"status": "ignored"}));
    }
}
