//! HTTP client for the JAS Connect (3CX) REST API: participant lookups, webhook
//! (un)registration and recording downloads, with token caching, a single re-auth on
//! 401 and jittered exponential retries on transient upstream failures.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};
use url::Url;

use crate::outbound::{self, describe, path::encode_segment, path::sanitize_encoded_path};

/// The `api` label of each JAS Connect API in `callhook_upstream_requests_total`.
pub mod api {
    use crate::outbound::Api;

    pub const PARTICIPANTS: Api = Api::new("jas_participants");
    pub const WEBHOOKS: Api = Api::new("jas_webhooks");
    pub const AUTH: Api = Api::new("jas_auth");
    /// Recording downloads, which the caller sends and counts itself.
    pub const RECORDINGS: Api = Api::new("jas_recordings");
    /// The call-control snapshot of reconciliation (`GET /api/callcontrol`).
    pub const CALLCONTROL: Api = Api::new("jas_callcontrol");
    /// Every label above, registered at zero at start.
    pub const ALL: &[Api] = &[PARTICIPANTS, WEBHOOKS, AUTH, RECORDINGS, CALLCONTROL];
}

/// Upstream error bodies can be large HTML pages; only this much is kept in errors.
const MAX_ERROR_BODY: usize = 512;

/// How the client proves its identity to JAS Connect.
#[derive(Clone)]
pub enum JasAuth {
    /// No credentials: every API call fails fast with [`JasError::NoCredentials`].
    None,
    /// A long-lived bearer token issued out of band.
    Token(SecretString),
    /// OAuth-style client credentials exchanged at `/auth/authenticate` for a bearer token.
    Client { id: String, secret: SecretString },
}

impl fmt::Debug for JasAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JasAuth::None => f.write_str("None"),
            JasAuth::Token(_) => f.write_str("Token([REDACTED])"),
            JasAuth::Client { id, .. } => f
                .debug_struct("Client")
                .field("id", id)
                .field("secret", &"[REDACTED]")
                .finish(),
        }
    }
}

/// Connection settings for [`JasClient`].
#[derive(Clone)]
pub struct JasClientConfig {
    /// Base URL every API path is appended to, e.g. `https://api.jasconnect.com/v2`.
    pub api_base: Url,
    pub auth: JasAuth,
    pub connect_timeout: Duration,
    /// Whole-request deadline for API calls; recordings only get it as an idle-read limit
    /// because large files legitimately take longer to stream.
    pub request_timeout: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Retries after the first attempt, so a call makes at most `max_retries + 1` attempts.
    pub max_retries: usize,
}

impl JasClientConfig {
    /// Production defaults for the given base URL and credentials.
    pub fn new(api_base: Url, auth: JasAuth) -> Self {
        Self {
            api_base,
            auth,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            retry_min: Duration::from_millis(200),
            retry_max: Duration::from_secs(10),
            max_retries: 5,
        }
    }
}

impl fmt::Debug for JasClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JasClientConfig")
            .field("api_base", &redacted_url(&self.api_base))
            .field("auth", &self.auth)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry_min", &self.retry_min)
            .field("retry_max", &self.retry_max)
            .field("max_retries", &self.max_retries)
            .finish()
    }
}

/// Errors from the JAS Connect API. Messages never contain tokens or secrets.
#[derive(Debug, thiserror::Error)]
pub enum JasError {
    /// Credentials rejected: 401 even after one re-authentication, or 401/403 at `/auth/authenticate`.
    #[error("JAS Connect rejected our credentials: {0}")]
    Unauthorized(String),
    /// The token is valid but may not see this resource.
    #[error("JAS Connect denied access (HTTP 403)")]
    Forbidden,
    #[error("JAS Connect resource not found (HTTP 404)")]
    NotFound,
    /// Any other 4xx, or a 2xx whose body is unusable; retrying will not help.
    #[error("JAS Connect rejected the request (HTTP {status}): {body}")]
    Rejected { status: u16, body: String },
    /// 5xx, 408, 429, timeouts or connection errors that persisted through all retries.
    #[error("JAS Connect unavailable: {0}")]
    Transient(String),
    /// The client was configured with [`JasAuth::None`].
    #[error("no JAS Connect credentials configured")]
    NoCredentials,
    /// Bad configuration (unusable `api_base`, TLS setup) or a malformed caller-supplied path.
    #[error("invalid JAS Connect client input: {0}")]
    Invalid(String),
}

/// One call leg as reported by `GET /api/callcontrol/{dn}/participants/{id}`.
///
/// Deliberately lenient: every field defaults, numbers and strings are accepted
/// interchangeably, and unknown fields are ignored, because the upstream schema drifts
/// between 3CX versions and a lookup must not fail over cosmetic differences.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct ParticipantDetails {
    #[serde(deserialize_with = "lenient_string")]
    pub id: String,
    #[serde(deserialize_with = "lenient_string")]
    pub status: String,
    #[serde(deserialize_with = "lenient_string")]
    pub dn: String,
    #[serde(deserialize_with = "lenient_string")]
    pub party_caller_name: String,
    #[serde(deserialize_with = "lenient_string")]
    pub party_dn: String,
    #[serde(deserialize_with = "lenient_string")]
    pub party_caller_id: String,
    #[serde(deserialize_with = "lenient_string")]
    pub party_did: String,
    #[serde(deserialize_with = "lenient_string")]
    pub device_id: String,
    #[serde(deserialize_with = "lenient_string")]
    pub party_dn_type: String,
    #[serde(deserialize_with = "lenient_bool")]
    pub direct_control: bool,
    #[serde(deserialize_with = "lenient_string")]
    pub originated_by_dn: String,
    #[serde(deserialize_with = "lenient_string")]
    pub originated_by_type: String,
    #[serde(deserialize_with = "lenient_string")]
    pub referred_by_dn: String,
    #[serde(deserialize_with = "lenient_string")]
    pub referred_by_type: String,
    #[serde(deserialize_with = "lenient_string")]
    pub on_behalf_of_dn: String,
    #[serde(deserialize_with = "lenient_string")]
    pub on_behalf_of_type: String,
    #[serde(deserialize_with = "lenient_string")]
    pub callid: String,
    #[serde(deserialize_with = "lenient_i64")]
    pub legid: Option<i64>,
}

/// One DN of the call-control snapshot (`GET /api/callcontrol`): its participants, each shaped
/// as a lookup's answer (as lenient). `devices` and anything else is ignored. Unlike a lookup,
/// a snapshot is read strictly where it matters: an entry or participant list that cannot be
/// read fails the whole snapshot, since a participant dropped in reading would look gone.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct DnState {
    #[serde(deserialize_with = "lenient_string")]
    pub dn: String,
    #[serde(rename = "type", deserialize_with = "lenient_string")]
    pub dn_type: String,
    #[serde(deserialize_with = "participant_list")]
    pub participants: Vec<ParticipantDetails>,
}

/// A DN's participants: a list of objects, or none when `null`.
fn participant_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ParticipantDetails>, D::Error> {
    Option::<Vec<ParticipantDetails>>::deserialize(d).map(Option::unwrap_or_default)
}

fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => s,
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::Bool(b) => b.to_string(),
        _ => String::new(),
    })
}

fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Bool(b) => b,
        serde_json::Value::Number(n) => n.as_f64().is_some_and(|v| v != 0.0),
        serde_json::Value::String(s) => {
            matches!(s.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes")
        }
        _ => false,
    })
}

fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

/// Which upstream API a request belongs to; used as the only metric label besides status.
#[derive(Debug, Clone, Copy)]
enum Api {
    Participants,
    Webhooks,
    Auth,
    CallControl,
}

impl Api {
    fn metric(self) -> outbound::Api {
        match self {
            Api::Participants => api::PARTICIPANTS,
            Api::Webhooks => api::WEBHOOKS,
            Api::Auth => api::AUTH,
            Api::CallControl => api::CALLCONTROL,
        }
    }

    fn label(self) -> &'static str {
        self.metric().as_label()
    }

    /// The largest answer read from this API; a bigger one is refused like a bad answer, so a
    /// broken or hostile upstream cannot make every lookup slot hold megabytes. A participant,
    /// a token or a webhook list is a few hundred bytes to a few KiB.
    fn max_answer_bytes(self) -> usize {
        match self {
            Api::Participants | Api::Webhooks | Api::Auth => MAX_ANSWER_BYTES,
            Api::CallControl => MAX_SNAPSHOT_BYTES,
        }
    }
}

/// See [`Api::max_answer_bytes`].
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// A call-control snapshot lists every DN and everyone on a call: a few hundred bytes each,
/// so 8 MiB is thousands of calls at once. It is read once a run, by one task.
const MAX_SNAPSHOT_BYTES: usize = 8 * 1024 * 1024;

/// The bearer token obtained from client credentials.
struct TokenCell {
    /// Bumped on every fetch so concurrent requests that all saw a 401 for the same
    /// token trigger only one re-authentication between them.
    generation: u64,
    token: Option<SecretString>,
}

/// Whether a request is retried here, or made once for a caller that paces its own retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempts {
    Retried,
    Once,
}

/// A failed attempt, carrying the upstream's `Retry-After` hint for the backoff.
struct AttemptError {
    error: JasError,
    retry_after: Option<Duration>,
}

struct Inner {
    http: reqwest::Client,
    /// `api_base` without a trailing slash, so paths starting with `/` can be appended.
    base: String,
    /// `base` with any URL password masked, for Debug output.
    shown_base: String,
    auth: JasAuth,
    request_timeout: Duration,
    retry_max: Duration,
    backoff: ExponentialBuilder,
    /// std RwLock: reads vastly outnumber writes and no guard is ever held across `.await`.
    token: RwLock<TokenCell>,
    /// Async mutex because it is held across the `/auth/authenticate` round trip, making
    /// token refresh single-flight.
    auth_gate: tokio::sync::Mutex<()>,
}

/// Client for the JAS Connect API. Cheap to clone; all clones share one connection pool
/// and one cached token.
#[derive(Clone)]
pub struct JasClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for JasClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let has_token = self
            .inner
            .token
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .token
            .is_some();
        f.debug_struct("JasClient")
            .field("api_base", &self.inner.shown_base)
            .field("auth", &self.inner.auth)
            .field("token_cached", &has_token)
            .finish_non_exhaustive()
    }
}

impl JasClient {
    pub fn new(cfg: JasClientConfig) -> Result<Self, JasError> {
        let mut base_url = cfg.api_base;
        if base_url.cannot_be_a_base() || !matches!(base_url.scheme(), "http" | "https") {
            return Err(JasError::Invalid(format!(
                "api_base must be an http(s) URL, got {}",
                redacted_url(&base_url)
            )));
        }
        // A stray query or fragment would end up in the middle of every request URL.
        base_url.set_query(None);
        base_url.set_fragment(None);
        let base = base_url.as_str().trim_end_matches('/').to_owned();
        let shown_base = redacted_url(&base_url);

        let http = outbound::client(
            outbound::Options::upstream(base_url.host_str())
                .connect_timeout(cfg.connect_timeout)
                // Idle-read limit only: the whole-request deadline is per call (see
                // `request_timeout`).
                .read_timeout(cfg.request_timeout),
        )
        .map_err(|e| JasError::Invalid(format!("building HTTP client: {}", outbound::chain(&e))))?;

        let backoff = ExponentialBuilder::default()
            .with_min_delay(cfg.retry_min)
            .with_max_delay(cfg.retry_max)
            .with_max_times(cfg.max_retries)
            .with_jitter();

        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base,
                shown_base,
                auth: cfg.auth,
                request_timeout: cfg.request_timeout,
                retry_max: cfg.retry_max,
                backoff,
                token: RwLock::new(TokenCell {
                    generation: 0,
                    token: None,
                }),
                auth_gate: tokio::sync::Mutex::new(()),
            }),
        })
    }

    pub fn has_credentials(&self) -> bool {
        !matches!(self.inner.auth, JasAuth::None)
    }

    /// Fetches a fresh token when using client credentials (useful to fail fast at
    /// startup); a no-op for a static token.
    pub async fn authenticate(&self) -> Result<(), JasError> {
        match &self.inner.auth {
            JasAuth::None => Err(JasError::NoCredentials),
            JasAuth::Token(_) => Ok(()),
            JasAuth::Client { .. } => {
                let generation = self.cached_token().map(|(g, _)| g);
                self.refresh_token(generation).await.map(|_| ())
            }
        }
    }

    /// Looks up one participant of a call. 403 → [`JasError::Forbidden`], 404 →
    /// [`JasError::NotFound`]; transient failures are retried.
    pub async fn participant(&self, dn: &str, id: &str) -> Result<ParticipantDetails, JasError> {
        self.lookup(dn, id, Attempts::Retried).await
    }

    /// [`JasClient::participant`] with a single attempt (no retries, no retry log lines), for a
    /// caller that already gave up once and paces its own retries (the processor's relookups).
    /// A refused token is still renewed once.
    pub async fn participant_once(
        &self,
        dn: &str,
        id: &str,
    ) -> Result<ParticipantDetails, JasError> {
        self.lookup(dn, id, Attempts::Once).await
    }

    async fn lookup(
        &self,
        dn: &str,
        id: &str,
        attempts: Attempts,
    ) -> Result<ParticipantDetails, JasError> {
        let path = format!(
            "/api/callcontrol/{}/participants/{}",
            encode_segment(dn),
            encode_segment(id)
        );
        let url = self.url(&path)?;
        let (status, body) = self
            .call(Api::Participants, Method::GET, url, None, attempts)
            .await?;
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| JasError::Rejected {
                status: status.as_u16(),
                body: format!("participant body is not JSON ({e}): {}", snippet(&body)),
            })?;
        if !value.is_object() {
            return Err(JasError::Rejected {
                status: status.as_u16(),
                body: format!("participant body is not a JSON object: {}", snippet(&body)),
            });
        }
        serde_json::from_value(value).map_err(|e| JasError::Rejected {
            status: status.as_u16(),
            body: format!("unexpected participant shape: {e}"),
        })
    }

    /// The call-control snapshot, one attempt (a failed run waits for the next one rather than
    /// retry: it is asked again every `jas.reconcile_secs`). A body that is not a JSON array
    /// is [`JasError::Rejected`].
    pub async fn callcontrol(&self) -> Result<Vec<DnState>, JasError> {
        let url = self.url("/api/callcontrol")?;
        let (status, body) = self
            .call(Api::CallControl, Method::GET, url, None, Attempts::Once)
            .await?;
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| JasError::Rejected {
                status: status.as_u16(),
                body: format!(
                    "call-control snapshot is not JSON ({e}): {}",
                    snippet(&body)
                ),
            })?;
        if !value.is_array() {
            return Err(JasError::Rejected {
                status: status.as_u16(),
                body: format!(
                    "call-control snapshot is not a JSON array: {}",
                    snippet(&body)
                ),
            });
        }
        serde_json::from_value(value).map_err(|e| JasError::Rejected {
            status: status.as_u16(),
            body: format!("unexpected call-control snapshot shape: {e}"),
        })
    }

    /// Subscribes `callback_url` to `event`; transient failures are retried.
    pub async fn register(&self, event: &str, callback_url: &str) -> Result<(), JasError> {
        let url = self.url("/webhooks")?;
        let body = serde_json::json!({ "event": event, "url": callback_url });
        self.call(
            Api::Webhooks,
            Method::POST,
            url,
            Some(body),
            Attempts::Retried,
        )
        .await
        .map(|_| ())
    }

    /// Removes the subscription for `event`; an unknown event (404) counts as success.
    pub async fn unregister(&self, event: &str) -> Result<(), JasError> {
        let mut url = self.url("/webhooks")?;
        url.query_pairs_mut().append_pair("event", event);
        match self
            .call(Api::Webhooks, Method::DELETE, url, None, Attempts::Retried)
            .await
        {
            Ok(_) | Err(JasError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Returns the registered webhooks as JSON; the upstream shape is not documented.
    pub async fn list_webhooks(&self) -> Result<serde_json::Value, JasError> {
        let url = self.url("/webhooks")?;
        let (status, body) = self
            .call(Api::Webhooks, Method::GET, url, None, Attempts::Retried)
            .await?;
        if body.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&body).map_err(|e| JasError::Rejected {
            status: status.as_u16(),
            body: format!("webhook list is not JSON ({e}): {}", snippet(&body)),
        })
    }

    /// Prepares `GET {api_base}/api/recordings/{encoded_path}` with the bearer token, for
    /// the caller to send and stream. `encoded_path` must already be percent-encoded per
    /// segment; it is not retried, re-authenticated or counted in metrics here because the
    /// caller owns the response stream (use api label [`api::RECORDINGS`] when
    /// counting it). Only idle reads time out, so long downloads are not cut off.
    pub async fn recording_request(
        &self,
        encoded_path: &str,
    ) -> Result<reqwest::RequestBuilder, JasError> {
        let path =
            sanitize_encoded_path(encoded_path).map_err(|e| JasError::Invalid(e.to_string()))?;
        let url = self.url(&format!("/api/recordings/{path}"))?;
        let (_, token) = self.current_token().await?;
        let req = self.inner.http.get(url);
        Ok(match token {
            Some(t) => req.bearer_auth(t.expose_secret()),
            None => req,
        })
    }

    /// After a 401 on a request sent elsewhere (a recording download): fetches a new token
    /// when the client has credentials to do so. `Ok(false)` for a static token, which a retry
    /// cannot change.
    pub async fn renew_token(&self) -> Result<bool, JasError> {
        match &self.inner.auth {
            JasAuth::Client { .. } => {
                let stale = self.cached_token().map(|(g, _)| g);
                self.refresh_token(stale).await.map(|_| true)
            }
            _ => Ok(false),
        }
    }

    fn url(&self, path: &str) -> Result<Url, JasError> {
        Url::parse(&format!("{}{}", self.inner.base, path))
            .map_err(|e| JasError::Invalid(format!("building request URL: {e}")))
    }

    fn cached_token(&self) -> Option<(u64, SecretString)> {
        let cell = self.inner.token.read().unwrap_or_else(|e| e.into_inner());
        cell.token.clone().map(|t| (cell.generation, t))
    }

    /// The token to send plus the generation it came from (0 for static tokens).
    async fn current_token(&self) -> Result<(u64, Option<SecretString>), JasError> {
        match &self.inner.auth {
            JasAuth::None => Err(JasError::NoCredentials),
            JasAuth::Token(t) => Ok((0, Some(t.clone()))),
            JasAuth::Client { .. } => match self.cached_token() {
                Some((g, t)) => Ok((g, Some(t))),
                None => self.refresh_token(None).await.map(|(g, t)| (g, Some(t))),
            },
        }
    }

    /// Fetches a new token unless another task already replaced the `stale` generation
    /// (or, with `stale == None`, unless any token is cached by now).
    async fn refresh_token(&self, stale: Option<u64>) -> Result<(u64, SecretString), JasError> {
        let JasAuth::Client { id, secret } = &self.inner.auth else {
            return Err(JasError::NoCredentials);
        };
        let _gate = self.inner.auth_gate.lock().await;
        if let Some((g, t)) = self.cached_token()
            && stale != Some(g)
        {
            return Ok((g, t));
        }

        let url = self.url("/auth/authenticate")?;
        let (status, body) = self
            .send_with_retry(Api::Auth, Attempts::Retried, || {
                self.inner
                    .http
                    .post(url.clone())
                    .basic_auth(id, Some(secret.expose_secret()))
                    .timeout(self.inner.request_timeout)
            })
            .await
            .map_err(|e| match e {
                JasError::Unauthorized(_) => {
                    JasError::Unauthorized("client credentials rejected (HTTP 401)".into())
                }
                JasError::Forbidden => {
                    JasError::Unauthorized("client credentials rejected (HTTP 403)".into())
                }
                other => other,
            })?;
        let token = extract_token(&body).ok_or_else(|| JasError::Rejected {
            status: status.as_u16(),
            // The body is withheld on purpose: it may hold a token under an unexpected name.
            body: "authentication response carries no token".into(),
        })?;

        let mut cell = self.inner.token.write().unwrap_or_else(|e| e.into_inner());
        cell.generation += 1;
        cell.token = Some(token.clone());
        tracing::debug!(generation = cell.generation, "obtained JAS Connect token");
        Ok((cell.generation, token))
    }

    /// Sends an authenticated API request (retrying transient failures) and, with client
    /// credentials, re-authenticates once and retries when the token is refused.
    async fn call(
        &self,
        api: Api,
        method: Method,
        url: Url,
        json: Option<serde_json::Value>,
        attempts: Attempts,
    ) -> Result<(StatusCode, Bytes), JasError> {
        let (generation, token) = self.current_token().await?;
        let first = self
            .send_authed(api, &method, &url, json.as_ref(), token.as_ref(), attempts)
            .await;
        match first {
            Err(JasError::Unauthorized(_)) if matches!(self.inner.auth, JasAuth::Client { .. }) => {
                tracing::info!(
                    api = api.label(),
                    "JAS Connect token refused, re-authenticating"
                );
                let (_, token) = self.refresh_token(Some(generation)).await?;
                self.send_authed(api, &method, &url, json.as_ref(), Some(&token), attempts)
                    .await
            }
            other => other,
        }
    }

    async fn send_authed(
        &self,
        api: Api,
        method: &Method,
        url: &Url,
        json: Option<&serde_json::Value>,
        token: Option<&SecretString>,
        attempts: Attempts,
    ) -> Result<(StatusCode, Bytes), JasError> {
        self.send_with_retry(api, attempts, || {
            let mut req = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .timeout(self.inner.request_timeout);
            if let Some(t) = token {
                req = req.bearer_auth(t.expose_secret());
            }
            if let Some(body) = json {
                req = req.json(body);
            }
            req
        })
        .await
    }

    /// Runs attempts built by `build` until success, a non-transient error, or the retry
    /// budget is spent. Each attempt is counted and timed.
    async fn send_with_retry<F>(
        &self,
        api: Api,
        attempts: Attempts,
        build: F,
    ) -> Result<(StatusCode, Bytes), JasError>
    where
        F: Fn() -> reqwest::RequestBuilder,
    {
        let retry_max = self.inner.retry_max;
        let backoff = match attempts {
            Attempts::Retried => self.inner.backoff,
            Attempts::Once => self.inner.backoff.with_max_times(0),
        };
        let attempt = || async { attempt(api, build()).await };
        attempt
            .retry(backoff)
            .when(|e: &AttemptError| matches!(e.error, JasError::Transient(_)))
            // Honour Retry-After only while the backoff still allows another attempt.
            .adjust(move |e, delay| delay.map(|d| e.retry_after.map_or(d, |ra| ra.min(retry_max))))
            .notify(|e, delay| {
                tracing::warn!(api = api.label(), error = %e.error, ?delay, "retrying JAS Connect request");
            })
            .await
            .map_err(|e| e.error)
    }
}

async fn attempt(
    api: Api,
    req: reqwest::RequestBuilder,
) -> Result<(StatusCode, Bytes), AttemptError> {
    let started = Instant::now();
    let result = req.send().await;
    let outcome = match result {
        Err(e) => {
            outbound::count(api.metric(), None);
            Err(AttemptError {
                error: JasError::Transient(format!("{}: {}", api.label(), describe(e))),
                retry_after: None,
            })
        }
        Ok(resp) => {
            let status = resp.status();
            outbound::count(api.metric(), Some(status.as_u16()));
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            match read_capped(resp, api.max_answer_bytes()).await {
                Err(Capped::Read(e)) => Err(AttemptError {
                    error: JasError::Transient(format!(
                        "{}: reading body: {}",
                        api.label(),
                        describe(e)
                    )),
                    retry_after: None,
                }),
                Err(Capped::TooLarge(limit)) => Err(AttemptError {
                    error: JasError::Rejected {
                        status: status.as_u16(),
                        body: format!("answer larger than {limit} bytes; not read further"),
                    },
                    retry_after: None,
                }),
                Ok(body) => {
                    classify(api, status, body).map_err(|error| AttemptError { error, retry_after })
                }
            }
        }
    };
    outbound::time(api.metric(), started.elapsed());
    outcome
}

enum Capped {
    Read(reqwest::Error),
    TooLarge(usize),
}

/// The body, read chunk by chunk and given up on as soon as it passes `limit` bytes (a
/// `Content-Length` over it is refused before reading anything).
async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<Bytes, Capped> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(Capped::TooLarge(limit));
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(Capped::Read)? {
        if body.len() + chunk.len() > limit {
            return Err(Capped::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn classify(api: Api, status: StatusCode, body: Bytes) -> Result<(StatusCode, Bytes), JasError> {
    match status.as_u16() {
        200..=299 => Ok((status, body)),
        401 => Err(JasError::Unauthorized(format!("{}: HTTP 401", api.label()))),
        403 => Err(JasError::Forbidden),
        404 => Err(JasError::NotFound),
        408 | 429 | 500..=599 => Err(JasError::Transient(format!(
            "{}: HTTP {}",
            api.label(),
            status
        ))),
        code => Err(JasError::Rejected {
            status: code,
            body: snippet(&body),
        }),
    }
}

/// Accepts the token under any of the names seen in the wild.
fn extract_token(body: &[u8]) -> Option<SecretString> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    ["token", "access_token", "accessToken"]
        .iter()
        .find_map(|k| value.get(k).and_then(|v| v.as_str()))
        .filter(|t| !t.is_empty())
        .map(SecretString::from)
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(MAX_ERROR_BODY) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn redacted_url(url: &Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("REDACTED"));
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{JasSim, SimRoute};

    const RECORDING_NAME: &str = "101/[John Doe]_101-5148888888_20250603153720(26).wav";
    const RECORDING_ENCODED: &str =
        "101/%5BJohn%20Doe%5D_101-5148888888_20250603153720%2826%29.wav";

    fn config(base: &str, auth: JasAuth) -> JasClientConfig {
        JasClientConfig {
            retry_min: Duration::from_millis(1),
            retry_max: Duration::from_millis(10),
            max_retries: 3,
            request_timeout: Duration::from_secs(5),
            ..JasClientConfig::new(Url::parse(base).unwrap(), auth)
        }
    }

    fn token_client(base: &str, token: &str) -> JasClient {
        JasClient::new(config(base, JasAuth::Token(token.into()))).unwrap()
    }

    fn creds_client(base: &str) -> JasClient {
        JasClient::new(config(
            base,
            JasAuth::Client {
                id: "cid".into(),
                secret: "s3cr3t-value".into(),
            },
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn participant_ok_converts_numbers_to_strings() {
        let sim = JasSim::with_token("tok-123");
        sim.set_participant("101", "36", JasSim::example_participant("101", "36"));
        let server = sim.start().await.unwrap();
        let client = token_client(&server.base_url, "tok-123");

        let p = client.participant("101", "36").await.unwrap();
        assert_eq!(p.id, "36");
        assert_eq!(p.callid, "26");
        assert_eq!(p.legid, Some(1));
        assert_eq!(p.status, "Dialing");
        assert_eq!(p.party_caller_id, "5148888888");
        assert_eq!(p.party_dn_type, "Wexternalline");
        assert!(!p.direct_control);
    }

    #[test]
    fn participant_details_are_lenient() {
        let p: ParticipantDetails = serde_json::from_value(serde_json::json!({
            "id": "7", "callid": null, "legid": "3", "status": 5, "direct_control": "true",
            "brand_new_field": {"x": 1}
        }))
        .unwrap();
        assert_eq!(p.id, "7");
        assert_eq!(p.callid, "");
        assert_eq!(p.legid, Some(3));
        assert_eq!(p.status, "5");
        assert!(p.direct_control);
        assert_eq!(p.dn, "");
    }

    #[tokio::test]
    async fn trailing_slash_in_base_and_encoded_segments() {
        let sim = JasSim::new();
        sim.set_participant("1 0/1", "172", serde_json::json!({"status": "Connected"}));
        let server = sim.start().await.unwrap();
        let client = token_client(&format!("{}/", server.base_url), "any");
        let p = client.participant("1 0/1", "172").await.unwrap();
        assert_eq!(p.dn, "1 0/1");
        assert_eq!(p.id, "172");
        assert_eq!(
            client
                .url("/api/callcontrol/101/participants/172")
                .unwrap()
                .as_str(),
            format!("{}/api/callcontrol/101/participants/172", server.base_url)
        );
    }

    #[tokio::test]
    async fn forbidden_is_not_retried() {
        let sim = JasSim::new();
        sim.forbid_participant("101", "36");
        let server = sim.start().await.unwrap();
        let client = token_client(&server.base_url, "t");
        let err = client.participant("101", "36").await.unwrap_err();
        assert!(matches!(err, JasError::Forbidden), "{err:?}");
        assert_eq!(sim.requests(SimRoute::Participant), 1);
    }

    #[tokio::test]
    async fn missing_participant_is_not_found() {
        let sim = JasSim::new();
        sim.set_participant("101", "36", serde_json::json!({}));
        sim.remove_participant("101", "36");
        let server = sim.start().await.unwrap();
        let client = token_client(&server.base_url, "t");
        let err = client.participant("101", "36").await.unwrap_err();
        assert!(matches!(err, JasError::NotFound), "{err:?}");
        assert_eq!(sim.requests(SimRoute::Participant), 1);
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_success() {
        let sim = JasSim::new();
        sim.set_participant("101", "36", JasSim::example_participant("101", "36"));
        sim.fail_next(SimRoute::Participant, &[503, 503]);
        let server = sim.start().await.unwrap();
        let client = token_client(&server.base_url, "t");
        let p = client.participant("101", "36").await.unwrap();
        assert_eq!(p.callid, "26");
        assert_eq!(sim.requests(SimRoute::Participant), 3);
    }

    #[tokio::test]
    async fn persistent_failure_becomes_transient_after_max_retries() {
        let sim = JasSim::new();
        sim.fail_next(SimRoute::Participant, &[503; 10]);
        let server = sim.start().await.unwrap();
        let client = token_client(&server.base_url, "t");
        let err = client.participant("101", "36").await.unwrap_err();
        assert!(matches!(err, JasError::Transient(_)), "{err:?}");
        assert_eq!(
            sim.requests(SimRoute::Participant),
            4,
            "1 attempt + 3 retries"
        );
    }

    #[tokio::test]
    async fn participant_once_makes_a_single_attempt() {
        let sim = JasSim::new();
        sim.set_participant("101", "36", JasSim::example_participant("101", "36"));
        sim.fail_next(SimRoute::Participant, &[503]);
        let server = sim.start().await.unwrap();
        let client = token_client(&server.base_url, "t");
        let err = client.participant_once("101", "36").await.unwrap_err();
        assert!(matches!(err, JasError::Transient(_)), "{err:?}");
        assert_eq!(sim.requests(SimRoute::Participant), 1);
        let p = client.participant_once("101", "36").await.unwrap();
        assert_eq!(p.callid, "26");
        assert_eq!(sim.requests(SimRoute::Participant), 2);
    }

    #[tokio::test]
    async fn slow_upstream_times_out_as_transient() {
        let sim = JasSim::new();
        sim.set_participant("101", "36", serde_json::json!({}));
        sim.set_delay(SimRoute::Participant, Duration::from_millis(500));
        let server = sim.start().await.unwrap();
        let mut cfg = config(&server.base_url, JasAuth::Token("t".into()));
        cfg.request_timeout = Duration::from_millis(50);
        cfg.max_retries = 1;
        let client = JasClient::new(cfg).unwrap();
        let err = client.participant("101", "36").await.unwrap_err();
        assert!(
            matches!(&err, JasError::Transient(m) if m.contains("timed out")),
            "{err:?}"
        );
        assert_eq!(sim.requests(SimRoute::Participant), 2);
    }

    #[tokio::test]
    async fn connection_refused_is_transient() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let client = token_client(&format!("http://{addr}/v2"), "t");
        let err = client.participant("101", "36").await.unwrap_err();
        assert!(matches!(err, JasError::Transient(_)), "{err:?}");
    }

    #[tokio::test]
    async fn client_credentials_reauthenticate_once_on_401() {
        let sim = JasSim::with_client_credentials("cid", "s3cr3t-value", "issued-token");
        sim.set_participant("101", "36", JasSim::example_participant("101", "36"));
        let server = sim.start().await.unwrap();
        let client = creds_client(&server.base_url);

        client.authenticate().await.unwrap();
        assert_eq!(sim.requests(SimRoute::Auth), 1);
        client.participant("101", "36").await.unwrap();
        assert_eq!(sim.requests(SimRoute::Auth), 1, "token is cached");

        sim.expire_token();
        client.participant("101", "36").await.unwrap();
        assert_eq!(sim.requests(SimRoute::Auth), 2, "exactly one re-auth");
        assert_eq!(sim.requests(SimRoute::Participant), 3);
    }

    #[tokio::test]
    async fn token_is_fetched_lazily() {
        let sim = JasSim::with_client_credentials("cid", "s3cr3t-value", "issued-token");
        sim.set_participant("101", "36", serde_json::json!({}));
        let server = sim.start().await.unwrap();
        let client = creds_client(&server.base_url);
        client.participant("101", "36").await.unwrap();
        assert_eq!(sim.requests(SimRoute::Auth), 1);
    }

    #[tokio::test]
    async fn second_401_is_unauthorized() {
        let sim = JasSim::with_client_credentials("cid", "s3cr3t-value", "issued-token");
        sim.set_participant("101", "36", serde_json::json!({}));
        sim.fail_next(SimRoute::Participant, &[401, 401]);
        let server = sim.start().await.unwrap();
        let client = creds_client(&server.base_url);
        let err = client.participant("101", "36").await.unwrap_err();
        assert!(matches!(err, JasError::Unauthorized(_)), "{err:?}");
        assert_eq!(sim.requests(SimRoute::Auth), 2);
        assert_eq!(sim.requests(SimRoute::Participant), 2);
    }

    #[tokio::test]
    async fn bad_client_credentials_are_unauthorized() {
        let sim = JasSim::with_client_credentials("cid", "other-secret", "issued-token");
        let server = sim.start().await.unwrap();
        let client = creds_client(&server.base_url);
        let err = client.authenticate().await.unwrap_err();
        assert!(matches!(err, JasError::Unauthorized(_)), "{err:?}");
        assert!(!err.to_string().contains("s3cr3t-value"));
    }

    #[tokio::test]
    async fn static_token_401_is_unauthorized_without_reauth() {
        let sim = JasSim::with_token("right");
        let server = sim.start().await.unwrap();
        let client = token_client(&server.base_url, "wrong");
        let err = client.participant("101", "36").await.unwrap_err();
        assert!(matches!(err, JasError::Unauthorized(_)), "{err:?}");
        assert_eq!(sim.requests(SimRoute::Auth), 0);
    }

    #[tokio::test]
    async fn no_credentials_fails_fast() {
        let client = JasClient::new(config("http://127.0.0.1:9/v2", JasAuth::None)).unwrap();
        assert!(!client.has_credentials());
        assert!(matches!(
            client.participant("101", "1").await,
            Err(JasError::NoCredentials)
        ));
    }

    #[tokio::test]
    async fn register_and_unregister_webhooks() {
        let sim = JasSim::with_token("t");
        let server = sim.start().await.unwrap();
        let client = token_client(&server.base_url, "t");

        client
            .register("call_status", "https://hooks.example/jas")
            .await
            .unwrap();
        client
            .register("new_recording", "https://hooks.example/jas")
            .await
            .unwrap();
        assert_eq!(
            sim.registrations(),
            vec![
                (
                    "call_status".to_owned(),
                    "https://hooks.example/jas".to_owned()
                ),
                (
                    "new_recording".to_owned(),
                    "https://hooks.example/jas".to_owned()
                ),
            ]
        );
        let list = client.list_webhooks().await.unwrap();
        assert_eq!(list.as_array().map(Vec::len), Some(2));

        client.unregister("call_status").await.unwrap();
        assert_eq!(sim.registrations().len(), 1);
        client.unregister("never.registered").await.unwrap();
        assert_eq!(sim.requests(SimRoute::Unregister), 2);
    }

    #[tokio::test]
    async fn register_retries_transient_failures() {
        let sim = JasSim::new();
        sim.fail_next(SimRoute::Register, &[502, 429]);
        let server = sim.start().await.unwrap();
        let client = token_client(&server.base_url, "t");
        client
            .register("new_recording", "http://x/y")
            .await
            .unwrap();
        assert_eq!(sim.requests(SimRoute::Register), 3);
        assert_eq!(sim.registrations().len(), 1);
    }

    #[tokio::test]
    async fn recording_request_fetches_bytes() {
        let sim = JasSim::with_client_credentials("cid", "s3cr3t-value", "issued-token");
        sim.add_recording(RECORDING_NAME, b"RIFF-audio".to_vec());
        let server = sim.start().await.unwrap();
        let client = creds_client(&server.base_url);

        let resp = client
            .recording_request(RECORDING_ENCODED)
            .await
            .unwrap()
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(&resp.bytes().await.unwrap()[..], b"RIFF-audio");
        assert_eq!(sim.requests(SimRoute::Auth), 1);

        let missing = client
            .recording_request("101/nope.wav")
            .await
            .unwrap()
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
    }

    #[tokio::test]
    async fn recording_path_cannot_escape() {
        let client = token_client("http://127.0.0.1:9/v2", "t");
        for bad in ["../auth/authenticate", "101/%2E%2E/x", "", "a//b"] {
            assert!(
                matches!(
                    client.recording_request(bad).await,
                    Err(JasError::Invalid(_))
                ),
                "{bad}"
            );
        }
        let req = client
            .recording_request("101/a b?c#d.wav")
            .await
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(
            req.url().as_str(),
            "http://127.0.0.1:9/v2/api/recordings/101/a%20b%3Fc%23d.wav"
        );
    }

    #[tokio::test]
    async fn odd_upstream_answers_do_not_panic() {
        use wiremock::matchers::{method, path};
        use wiremock::{Mock, MockServer, ResponseTemplate};

        let mock = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v2/api/callcontrol/101/participants/1"))
            .respond_with(ResponseTemplate::new(200).set_body_string("<html>oops</html>"))
            .mount(&mock)
            .await;
        Mock::given(method("GET"))
            .and(path("/v2/api/callcontrol/101/participants/2"))
            .respond_with(ResponseTemplate::new(200).set_body_string("[1,2]"))
            .mount(&mock)
            .await;
        Mock::given(method("GET"))
            .and(path("/v2/api/callcontrol/101/participants/3"))
            .respond_with(ResponseTemplate::new(400).set_body_string("bad dn"))
            .mount(&mock)
            .await;
        let client = token_client(&format!("{}/v2", mock.uri()), "t");

        for (id, status) in [("1", 200), ("2", 200), ("3", 400)] {
            let err = client.participant("101", id).await.unwrap_err();
            assert!(
                matches!(&err, JasError::Rejected { status: s, .. } if *s == status),
                "{id}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_callcontrol_snapshot_reads_the_sims_participants() {
        let sim = JasSim::with_token("t");
        let server = sim.start().await.unwrap();
        sim.set_participant("101", "172", JasSim::example_participant("101", "172"));
        sim.set_participant("102", "9", JasSim::example_participant("102", "9"));
        sim.forbid_participant("103", "1");
        let dns = token_client(&server.base_url, "t")
            .callcontrol()
            .await
            .unwrap();
        let listed: Vec<(&str, &str, &str)> = dns
            .iter()
            .flat_map(|d| {
                d.participants
                    .iter()
                    .map(move |p| (d.dn.as_str(), p.id.as_str(), p.callid.as_str()))
            })
            .collect();
        assert_eq!(listed, vec![("101", "172", "26"), ("102", "9", "26")]);
        assert_eq!(sim.requests(SimRoute::CallControl), 1);
    }

    /// A snapshot read wrongly would make its participants look gone: anything but an array of
    /// DN objects with participant lists is refused whole.
    #[tokio::test]
    async fn a_callcontrol_snapshot_that_cannot_be_read_is_refused_whole() {
        use wiremock::matchers::{method, path};
        use wiremock::{Mock, MockServer, ResponseTemplate};

        for body in [
            "<html>oops</html>",
            r#"{"dn": "101"}"#,
            r#"[1]"#,
            r#"[{"dn": "101", "participants": "none"}]"#,
            r#"[{"dn": "101", "participants": [{"id": 1}, 7]}]"#,
        ] {
            let mock = MockServer::start().await;
            Mock::given(method("GET"))
                .and(path("/v2/api/callcontrol"))
                .respond_with(ResponseTemplate::new(200).set_body_string(body))
                .mount(&mock)
                .await;
            let client = token_client(&format!("{}/v2", mock.uri()), "t");
            let err = client.callcontrol().await.unwrap_err();
            assert!(
                matches!(err, JasError::Rejected { status: 200, .. }),
                "{body}: {err:?}"
            );
        }
        // A DN without participants (null or absent) lists none.
        let mock = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v2/api/callcontrol"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_string(r#"[{"dn": 101, "participants": null}, {"dn": "102"}]"#),
            )
            .mount(&mock)
            .await;
        let dns = token_client(&format!("{}/v2", mock.uri()), "t")
            .callcontrol()
            .await
            .unwrap();
        assert_eq!(dns.len(), 2);
        assert_eq!(dns[0].dn, "101");
        assert!(dns.iter().all(|d| d.participants.is_empty()));
    }

    #[tokio::test]
    async fn retry_after_is_honoured() {
        use wiremock::matchers::method;
        use wiremock::{Mock, MockServer, ResponseTemplate};

        let mock = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", "1"))
            .up_to_n_times(1)
            .mount(&mock)
            .await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(201))
            .mount(&mock)
            .await;
        let mut cfg = config(&mock.uri(), JasAuth::Token("t".into()));
        // Retry-After is capped at retry_max; make the cap observable.
        cfg.retry_max = Duration::from_millis(300);
        let client = JasClient::new(cfg).unwrap();
        let started = Instant::now();
        client.register("call_summary", "http://x").await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_millis(1000));
    }

    /// A valid participant padded to `len` bytes: parses fine when read whole.
    fn padded_participant(len: usize) -> String {
        let head = r#"{"id":1,"dn":"101","callid":26,"status":"Connected","pad":""#;
        let tail = r#""}"#;
        format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()))
    }

    #[tokio::test]
    async fn an_answer_over_the_cap_is_refused_with_or_without_a_length() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use wiremock::matchers::{method, path};
        use wiremock::{Mock, MockServer, ResponseTemplate};

        // Declared length over the cap: refused before the body is read.
        let mock = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v2/api/callcontrol/101/participants/1"))
            .respond_with(ResponseTemplate::new(200).set_body_string(padded_participant(1 << 20)))
            .mount(&mock)
            .await;
        Mock::given(method("GET"))
            .and(path("/v2/api/callcontrol/101/participants/2"))
            .respond_with(ResponseTemplate::new(200).set_body_string(padded_participant(2000)))
            .mount(&mock)
            .await;
        let client = token_client(&format!("{}/v2", mock.uri()), "t");
        let err = client.participant("101", "1").await.unwrap_err();
        assert!(
            matches!(&err, JasError::Rejected { status: 200, body } if body.contains("larger than 65536")),
            "{err:?}"
        );
        assert_eq!(client.participant("101", "2").await.unwrap().dn, "101");

        // No length, a body that never ends: reading stops at the cap.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = sent.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n";
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(br#"{"dn":"101","pad":""#).await;
                    let chunk = vec![b'x'; 16 * 1024];
                    // Bounded so the test stops by itself: 100 MB at most.
                    for _ in 0..6400 {
                        if sock.write_all(&chunk).await.is_err() {
                            return;
                        }
                        counter.fetch_add(chunk.len(), Ordering::Relaxed);
                    }
                });
            }
        });
        let client = token_client(&format!("http://{addr}/v2"), "t");
        let started = Instant::now();
        let err = client.participant("101", "1").await.unwrap_err();
        assert!(
            matches!(&err, JasError::Rejected { body, .. } if body.contains("larger than")),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(200)).await;
        // What the server got out before we hung up: the cap plus socket buffers, far from 100 MB.
        assert!(
            sent.load(Ordering::Relaxed) < 20 << 20,
            "{}",
            sent.load(Ordering::Relaxed)
        );
    }

    #[tokio::test]
    async fn debug_output_hides_secrets() {
        let sim = JasSim::with_client_credentials("cid", "s3cr3t-value", "issued-token");
        let server = sim.start().await.unwrap();
        let client = creds_client(&server.base_url);
        client.authenticate().await.unwrap();
        let shown = format!("{client:?}");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
        assert!(!shown.contains("issued-token"), "{shown}");
        assert!(shown.contains("cid"));

        let token_client = token_client(&server.base_url, "static-tok-xyz");
        let shown = format!("{token_client:?}");
        assert!(!shown.contains("static-tok-xyz"), "{shown}");

        let cfg = config(
            "http://user:pw-in-url@127.0.0.1/v2",
            JasAuth::Token("static-tok-xyz".into()),
        );
        let shown = format!("{cfg:?} {:?}", JasClient::new(cfg.clone()).unwrap());
        assert!(
            !shown.contains("static-tok-xyz") && !shown.contains("pw-in-url"),
            "{shown}"
        );
    }
}
