//! The admin listener: the calls API, history, metrics and health, behind an optional Bearer
//! token. Kept off the public listener so it is never exposed by accident.

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::{AppState, healthz, not_found};
use crate::calls::{CallKey, Provider};
use crate::http::ApiError;

pub fn router(state: AppState) -> Router {
    let mut api: Router<AppState> = Router::new()
        .route("/api/calls", get(active_calls))
        .route("/api/calls/{provider}/{call_id}", get(one_call))
        .route("/api/history", get(history))
        .route("/api/endpoints", get(super::deliveries::endpoints))
        .route(
            "/api/endpoints/{name}/replay",
            post(super::deliveries::replay),
        )
        .route(
            "/api/endpoints/{name}/enable",
            post(super::deliveries::enable),
        )
        .route("/api/deliveries", get(super::deliveries::deliveries))
        .route(
            "/api/deliveries/{event_id}/retry",
            post(super::deliveries::retry),
        )
        .route("/api/stream", get(super::stream::stream))
        .route("/api/events", get(super::browse::events))
        .route("/api/export", get(super::export::export))
        .route("/api/recordings/jobs", get(super::browse::jobs))
        .route(
            "/api/recordings/jobs/{id}/retry",
            post(super::browse::retry_job),
        )
        .route(
            "/api/recordings/{provider}/{*path}",
            get(super::browse::recording_file),
        )
        .route("/api/reconcile", post(reconcile))
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz));
    // `ui.enabled = false`: the page, its assets and its login are not routed (404); the API
    // above is the same either way.
    let ui = state.settings.ui.enabled;
    if ui {
        api = api
            .route("/", get(super::page::index))
            .route("/assets/app.js", get(super::page::script))
            .route("/assets/style.css", get(super::page::style));
    }
    let mut router = api
        .fallback(not_found)
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        // Added after the token layer so that a liveness probe needs no credentials, and the
        // login form (and a logout, harmless to anyone) can be sent without a session.
        .route("/healthz", get(healthz));
    if ui {
        router = router
            .route("/assets/icon.svg", get(super::page::icon))
            .route("/api/session", post(super::page::open_session))
            .route("/api/session/logout", post(super::page::close_session));
    }
    router.with_state(state)
}

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = &state.settings.admin.token else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let bearer = bool::from(given.as_bytes().ct_eq(token.expose_secret().as_bytes()));
    if bearer || super::page::has_session(req.headers(), token) {
        next.run(req).await
    } else if req.uri().path() == "/" {
        // The page itself answers with its login form.
        super::page::login(None)
    } else {
        ApiError::Unauthorized("admin requests need Authorization: Bearer <admin.token>".into())
            .into_response()
    }
}

async fn active_calls(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "calls": state.table.active_calls() }))
}

async fn one_call(
    State(state): State<AppState>,
    Path((provider, call_id)): Path<(String, String)>,
) -> Result<Json<crate::calls::Call>, ApiError> {
    let provider = Provider::parse(&provider).ok_or(ApiError::NotFound)?;
    let key = CallKey::new(provider, call_id);
    if let Some(call) = state.table.call(&key) {
        return Ok(Json(call));
    }
    state
        .journal
        .call(key)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound)
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<String>,
    before: Option<String>,
}

pub const HISTORY_DEFAULT: usize = 50;
pub const HISTORY_MAX: usize = 1000;

async fn history(
    State(state): State<AppState>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = super::query::limit(q.limit.as_deref(), HISTORY_DEFAULT, HISTORY_MAX)?;
    let before = super::query::time("before", q.before.as_deref())?;
    let calls = state.journal.history(limit, before).await?;
    Ok(Json(json!({ "calls": calls })))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

/// 200 once started and while the journal commits; 503 with the reason otherwise (SPEC §4).
/// Registration is reported, never waited for.
async fn readyz(State(state): State<AppState>) -> Response {
    let journal = state.journal.problem();
    let reason = state.readiness.reason().or_else(|| journal.clone());
    let reconcile: serde_json::Map<String, serde_json::Value> = state
        .reconcilers
        .iter()
        .map(|r| (r.provider().as_str().to_string(), r.last_run()))
        .collect();
    let mut body = json!({
        "ready": reason.is_none(),
        "registration": state.readiness.registration(),
        "journal": journal.as_deref().unwrap_or("ok"),
        "reconcile": reconcile,
    });
    match reason {
        None => (StatusCode::OK, Json(body)).into_response(),
        Some(reason) => {
            body["reason"] = json!(reason);
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// `POST /api/reconcile` (SPEC §8): one run of every provider's reconciler now, waited for.
/// 200 with each run's report when every one ran (`ok`); 502 when one could not read its
/// provider's snapshot; 409 when reconciliation is off (or no provider can reconcile).
async fn reconcile(State(state): State<AppState>) -> Response {
    use crate::providers::reconcile::Outcome;
    if state.reconcilers.is_empty() {
        return (
            StatusCode::CONFLICT,
            Json(json!({
                "error": "no provider can reconcile: JAS needs jas.token or jas.client_id/client_secret",
                "runs": [],
            })),
        )
            .into_response();
    }
    let runs = futures_util::future::join_all(state.reconcilers.iter().map(|r| r.run_now())).await;
    let status = if runs.iter().all(|r| r.outcome == Outcome::Ok) {
        StatusCode::OK
    } else if runs
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Failed | Outcome::Refused))
    {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::CONFLICT
    };
    let error = runs
        .iter()
        .filter(|r| r.outcome != Outcome::Ok)
        .map(|r| format!("{}: {}", r.provider, r.summary()))
        .collect::<Vec<_>>();
    let mut body = json!({ "runs": runs });
    if !error.is_empty() {
        body["error"] = json!(error.join("; "));
    }
    (status, Json(body)).into_response()
}
