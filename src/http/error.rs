//! The one mapping from failures to HTTP replies: a 4xx says what was wrong with the request, a
//! 5xx is logged in full and answered without internals.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("not found")]
    NotFound,
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Unavailable(String),
    /// The request did not arrive in time (its body, on the public listener).
    #[error("{0}")]
    Timeout(String),
    /// Our fault: the detail goes to the log, not to the caller.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `outcome` label for `callhook_events_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound => "not_found",
            ApiError::TooLarge(_) => "too_large",
            ApiError::Timeout(_) => "timeout",
            ApiError::Unavailable(_) | ApiError::Internal(_) => "error",
        }
    }

    /// Maps a failure to read the body: over the limit is 413, past its deadline
    /// (`http::body`) 408, anything else 400.
    pub fn from_body(rejection: axum::extract::rejection::BytesRejection, limit: usize) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::TooLarge(limit);
        }
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&rejection);
        while let Some(e) = source {
            if let Some(late) = e.downcast_ref::<super::body::BodyTimedOut>() {
                return ApiError::Timeout(late.to_string());
            }
            source = e.source();
        }
        ApiError::BadRequest(format!("cannot read the body: {rejection}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(error = %detail, "request failed");
        }
        (self.status(), Json(json!({ "error": self.to_string() }))).into_response()
    }
}

impl From<crate::journal::JournalError> for ApiError {
    /// The journal cannot commit (disk full, database locked or deleted, failed sync) or is
    /// closing: 503 with the reason, so the provider retries; never a 200 for what was not
    /// stored. A stored document that no longer decodes is our fault: 500.
    fn from(e: crate::journal::JournalError) -> Self {
        use crate::journal::JournalError;
        match e {
            JournalError::Corrupt(_) => ApiError::Internal(e.to_string()),
            e => {
                // The detail (paths, SQLite's words) goes to the log and the admin `/readyz`,
                // not to a peer on the public listener.
                tracing::error!(error = %e, "the journal cannot store or read; answering 503");
                ApiError::Unavailable(
                    "the journal cannot store events now; retry later (see /readyz)".into(),
                )
            }
        }
    }
}
