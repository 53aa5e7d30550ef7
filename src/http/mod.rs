//! The two listeners' routers. Only extraction and replies live here; the event path itself is
//! in each provider's `routes.rs`, the state in `calls` and `journal`.

pub mod admin;
pub mod body;
pub mod browse;
pub mod client_ip;
pub mod deliveries;
pub mod error;
pub mod export;
pub mod listener;
pub mod page;
pub mod query;
pub mod reply;
pub mod stream;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{HeaderName, Request};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::{ExposeSecret, SecretString};
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::calls::CallTable;
use crate::config::Settings;
use crate::journal::Journal;

pub use error::ApiError;
pub use reply::Outcome;

/// Everything a handler needs; cheap to clone (all `Arc`s), no globals, so tests can run many
/// daemons in one process.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub journal: Journal,
    pub table: Arc<CallTable>,
    /// The call-event delivery workers; `None` without an enabled outbound endpoint.
    pub deliverer: Option<Arc<crate::events::deliver::Deliverer>>,
    /// Wakes the recording workers (a retried job); `None` when downloads are off.
    pub downloads: Option<Arc<tokio::sync::Notify>>,
    /// Every call event once committed, for `/api/stream`.
    pub stream: Arc<crate::events::stream::Hub>,
    pub readiness: Readiness,
    pub metrics: PrometheusHandle,
    /// The providers' reconcilers (SPEC §8), for `POST /api/reconcile` and `/readyz`.
    pub reconcilers: Arc<Vec<Arc<dyn crate::providers::reconcile::Reconcile>>>,
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
/// request carrying it, so every log line of a request can be found by it. The HTTP status of
/// the reply is logged (at `debug`) as `http_status`, an integer, never as `status`.
fn traced(router: Router, path_token: Option<SecretString>) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(X_REQUEST_ID.clone(), MakeRequestUuid))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(move |req: &Request<_>| {
                        let id = req
                            .headers()
                            .get(&X_REQUEST_ID)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        let path = loggable_path(req, path_token.as_ref());
                        tracing::info_span!("request", method = %req.method(), path = %path, request_id = %id)
                    })
                    .on_response(
                        |res: &axum::http::Response<_>, latency: Duration, _: &tracing::Span| {
                            tracing::debug!(
                                http_status = res.status().as_u16(),
                                latency_ms = latency.as_millis() as u64,
                                "finished processing request"
                            );
                        },
                    ),
            )
            .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone())),
    )
}

/// Route parameters named like this are credentials (TeleCMI's path token).
const SECRET_PARAM: &str = "{path_token}";

/// The request path for logs: as sent, except that a route with a secret segment is logged as
/// its template, so the token never reaches a log line.
/// A path under a secret route's prefix that matched no route (a trailing slash, a typo) is
/// cut at the prefix too: what follows may still be the token. Any other path that matched
/// no route and holds the token anywhere (`/webhook/telecmi/<token>`, `//webhooks/...`,
/// percent-encoded or not) is not shown at all.
fn loggable_path<'r, B>(req: &'r Request<B>, path_token: Option<&SecretString>) -> &'r str {
    let path = req.uri().path();
    match req.extensions().get::<MatchedPath>() {
        Some(route) if route.as_str().contains(SECRET_PARAM) => route.as_str(),
        _ if path.starts_with(SECRET_PREFIX) => SECRET_PREFIX_LOGGED,
        None if holds_token(
            req.uri().path_and_query().map_or(path, |p| p.as_str()),
            path_token,
        ) =>
        {
            WITHHELD
        }
        _ => path,
    }
}

const WITHHELD: &str = "(not shown: it holds telecmi.path_token)";

fn holds_token(text: &str, token: Option<&SecretString>) -> bool {
    let Some(token) = token.map(|t| t.expose_secret().to_ascii_lowercase()) else {
        return false;
    };
    let decoded = percent_encoding::percent_decode_str(text).decode_utf8_lossy();
    !token.is_empty() && decoded.to_ascii_lowercase().contains(&token)
}

/// The static part of the TeleCMI route, before its token.
const SECRET_PREFIX: &str = "/webhooks/telecmi/";
const SECRET_PREFIX_LOGGED: &str = "/webhooks/telecmi/{path_token}";

/// `server.listen`: the providers' webhook routes (`webhooks`, each with its own state) and
/// `/healthz`, under one body limit and deadline.
pub fn public_router(state: AppState, webhooks: Router) -> Router {
    let limit = state.settings.server.max_body_bytes;
    let state_token = state.settings.telecmi.path_token.clone();
    let router = Router::new()
        .route("/healthz", get(healthz))
        .merge(webhooks)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            body::BodyLimits {
                max_bytes: limit,
                timeout: state.settings.server.body_read_timeout,
            },
            body::bound,
        ))
        // A client that trickles its body cannot hold a connection (and a journal slot) forever.
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ));
    traced(router, state_token)
}

/// `admin.listen`: calls API, metrics, health; loopback by default.
pub fn admin_router(state: AppState) -> Router {
    let token = state.settings.telecmi.path_token.clone();
    traced(admin::router(state), token)
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
            assert_eq!(loggable_path(&req, None), "/webhooks/telecmi/{path_token}");
        }
        let req = Request::builder().uri("/webhooks/jas").body(()).unwrap();
        assert_eq!(loggable_path(&req, None), "/webhooks/jas");
    }

    #[test]
    fn a_misrouted_path_holding_the_token_is_never_logged() {
        let token = SecretString::from("S3cret-Tok");
        for path in [
            "/webhook/telecmi/S3cret-Tok",
            "//webhooks/telecmi/S3cret-Tok",
            "/WEBHOOKS/telecmi/S3cret-Tok",
            "/webhooks/telecmi%2FS3cret-Tok",
            "/x/%53%33cret-Tok",
            "/x?t=S3cret-Tok",
            "/s3cret-tok",
        ] {
            let req = Request::builder().uri(path).body(()).unwrap();
            let logged = loggable_path(&req, Some(&token));
            assert!(
                !logged.to_lowercase().contains("s3cret"),
                "{path} logged as {logged}"
            );
        }
        let req = Request::builder().uri("/webhooks/nope").body(()).unwrap();
        assert_eq!(loggable_path(&req, Some(&token)), "/webhooks/nope");
    }
}
