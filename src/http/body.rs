//! The public listener reads every request body here, before routing: a `Content-Length` over
//! `server.max_body_bytes` is answered 413 at once, without waiting for a byte of the body; a
//! body that grows past the limit is 413 as soon as it does; a body that is not whole within
//! `server.body_read_timeout_secs` of the headers is 408 and its connection closed. So an
//! unfinished request holds at most `max_body_bytes` for at most that long, and the handlers get
//! a body that is already in memory.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::{ApiError, reply};

#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub timeout: Duration,
}

/// The provider a webhook path belongs to, so that a refusal here is counted and logged like
/// one in its route.
fn provider_of(path: &str) -> Option<&'static str> {
    if path == "/webhooks/jas" {
        Some("jas")
    } else if path.starts_with("/webhooks/telecmi/") {
        Some("telecmi")
    } else {
        None
    }
}

pub async fn read_whole(State(limits): State<BodyLimits>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let provider = provider_of(req.uri().path());
    let refuse = |e: ApiError| match provider {
        Some(p) => reply::finish(p, started, None, Err(e)).into_response(),
        None => e.into_response(),
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_bytes as u64) {
        return refuse(ApiError::TooLarge(limits.max_bytes));
    }
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(
        limits.timeout,
        Limited::new(body, limits.max_bytes).collect(),
    );
    let bytes = match read.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return refuse(ApiError::TooLarge(limits.max_bytes));
        }
        Ok(Err(e)) => return refuse(ApiError::BadRequest(format!("cannot read the body: {e}"))),
        Err(_) => {
            return refuse(ApiError::Timeout(format!(
                "the body did not arrive within {} s",
                limits.timeout.as_secs()
            )));
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_paths_name_their_provider() {
        assert_eq!(provider_of("/webhooks/jas"), Some("jas"));
        assert_eq!(provider_of("/webhooks/telecmi/tok"), Some("telecmi"));
        assert_eq!(provider_of("/healthz"), None);
        assert_eq!(provider_of("/webhooks/jasx"), None);
    }
}
