//! The two listeners' routers. Only extraction and replies live here; the event path itself is
//! in each provider's `routes.rs`, the state in `calls` and `journal`.

pub mod admin;
pub mod client_ip;
pub mod error;
pub mod reply;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{HeaderName, Request};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::calls::CallTable;
use crate::config::Settings;
use crate::journal::Journal;
use crate::providers::jas::verify::Verifier;

pub use error::ApiError;
pub use reply::Outcome;

/// Everything a handler needs; cheap to clone (all `Arc`s), no globals, so tests can run many
/// daemons in one process.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub journal: Journal,
    pub table: Arc<CallTable>,
    pub jas_verifier: Arc<Verifier>,
    pub readiness: Readiness,
    pub metrics: PrometheusHandle,
}

/// `None` once ready; otherwise why not yet. A std RwLock: held for a copy, never across await.
/// Beside it, what webhook registration is doing (`registered`, `pending: <reason>`, `off`),
/// which `/readyz` reports but which never holds readiness back.
#[derive(Clone, Default)]
pub struct Readiness(Arc<RwLock<Option<String>>>, Arc<RwLock<String>>);

impl Readiness {
    pub fn not_ready(reason: &str) -> Self {
        Self(
            Arc::new(RwLock::new(Some(reason.to_string()))),
            Arc::new(RwLock::new("off".to_string())),
        )
    }
    pub fn set(&self, reason: Option<&str>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = reason.map(str::to_string);
    }
    pub fn reason(&self) -> Option<String> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn set_registration(&self, status: &str) {
        *self.1.write().unwrap_or_else(|e| e.into_inner()) = status.to_string();
    }
    pub fn registration(&self) -> String {
        self.1.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request ids (honoured when sent, generated otherwise, returned in the reply) and one span per
/// request carrying it, so every log line of a request can be found by it.
fn traced(router: Router) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(X_REQUEST_ID.clone(), MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                    let id = req
                        .headers()
                        .get(&X_REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let path = loggable_path(req);
                    tracing::info_span!("request", method = %req.method(), path = %path, request_id = %id)
                }),
            )
            .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone())),
    )
}

/// Route parameters named like this are credentials (TeleCMI's path token).
const SECRET_PARAM: &str = "{path_token}";

/// The request path for logs: as sent, except that a route with a secret segment is logged as
/// its template, so the token never reaches a log line.
/// A path under a secret route's prefix that matched no route (a trailing slash, a typo) is
/// cut at the prefix too: what follows may still be the token.
fn loggable_path<B>(req: &Request<B>) -> &str {
    match req.extensions().get::<MatchedPath>() {
        Some(route) if route.as_str().contains(SECRET_PARAM) => route.as_str(),
        _ if req.uri().path().starts_with(SECRET_PREFIX) => SECRET_PREFIX_LOGGED,
        _ => req.uri().path(),
    }
}

/// The static part of the TeleCMI route, before its token.
const SECRET_PREFIX: &str = "/webhooks/telecmi/";
const SECRET_PREFIX_LOGGED: &str = "/webhooks/telecmi/{path_token}";

/// `server.listen`: the webhook endpoints and `/healthz`.
pub fn public_router(state: AppState) -> Router {
    let limit = state.settings.server.max_body_bytes;
    let router = Router::new()
        .route("/healthz", get(healthz))
        .merge(crate::providers::jas::routes::router())
        .merge(crate::providers::telecmi::routes::router())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        // A client that trickles its body cannot hold a connection (and a journal slot) forever.
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .with_state(state);
    traced(router)
}

/// `admin.listen`: calls API, metrics, health; loopback by default.
pub fn admin_router(state: AppState) -> Router {
    traced(admin::router(state))
}

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// Longest a webhook request may take, body included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long in-flight requests get to finish at shutdown.
pub const DRAIN: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_under_the_telecmi_prefix_is_never_logged() {
        for path in [
            "/webhooks/telecmi/s3cret/",
            "/webhooks/telecmi/s3cret/x",
            "/webhooks/telecmi/s3cret",
        ] {
            let req = Request::builder().uri(path).body(()).unwrap();
            assert_eq!(loggable_path(&req), "/webhooks/telecmi/{path_token}");
        }
        let req = Request::builder().uri("/webhooks/jas").body(()).unwrap();
        assert_eq!(loggable_path(&req), "/webhooks/jas");
    }
}
