//! A simulated JAS Connect API served on loopback, for `callhook demo` and tests.
//! It speaks the same paths, auth and status codes as the real API under `/v2`, and
//! can inject failures, delays and token expiry to exercise the client's error paths.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Token issued by `/auth/authenticate` when the sim was built with [`JasSim::new`].
const DEFAULT_TOKEN: &str = "sim-token";
const RECORDINGS_PREFIX: &str = "/v2/api/recordings/";

/// The simulated endpoints, for failure injection, delays and request counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimRoute {
    /// `POST /auth/authenticate`
    Auth,
    /// `POST /webhooks`
    Register,
    /// `DELETE /webhooks?event=`
    Unregister,
    /// `GET /webhooks`
    ListWebhooks,
    /// `GET /api/callcontrol/{dn}/participants/{id}`
    Participant,
    /// `GET /api/recordings/{path}`
    Recording,
    /// `GET /api/callcontrol`: the snapshot of every DN and its participants
    CallControl,
}

enum ParticipantEntry {
    Visible(Value),
    Forbidden,
}

struct SimState {
    /// Bearer token every API request must carry; `None` accepts any (or no) token.
    token: Option<String>,
    /// Required Basic credentials at `/auth/authenticate`; `None` accepts any.
    client: Option<(String, SecretString)>,
    /// Set by [`JasSim::expire_token`]: bearer requests get 401 until the next successful auth.
    token_expired: bool,
    participants: HashMap<(String, String), ParticipantEntry>,
    failures: HashMap<SimRoute, VecDeque<u16>>,
    delays: HashMap<SimRoute, Duration>,
    recordings: HashMap<String, Bytes>,
    /// Ordered so `registrations()` is deterministic; one entry per event, like upstream.
    registrations: Vec<(String, String)>,
    requests: HashMap<SimRoute, usize>,
    /// Requests to a route inside their delay now, and the most there ever were at once.
    delayed: HashMap<SimRoute, (usize, usize)>,
}

/// Handle to a simulated JAS Connect API. Clones share state, so a test can keep one
/// handle for assertions and hand another to the server.
#[derive(Clone)]
pub struct JasSim {
    /// std Mutex: every critical section is a few map operations and never spans an
    /// `.await` (delays are slept after the guard is dropped), so an async lock would only
    /// add overhead and make the synchronous setup methods impossible.
    state: Arc<Mutex<SimState>>,
}

impl Default for JasSim {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for JasSim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("JasSim")
            .field("requires_token", &st.token.is_some())
            .field("client_credentials", &st.client.as_ref().map(|(id, _)| id))
            .field("participants", &st.participants.len())
            .field("recordings", &st.recordings.len())
            .field("registrations", &st.registrations.len())
            .finish_non_exhaustive()
    }
}

impl JasSim {
    /// A sim that accepts any bearer token (or none); `/auth/authenticate` issues `sim-token`.
    pub fn new() -> Self {
        Self::build(None, None)
    }

    /// A sim that requires `Authorization: Bearer <token>` and answers 401 otherwise.
    pub fn with_token(token: &str) -> Self {
        Self::build(Some(token.to_owned()), None)
    }

    /// A sim whose `/auth/authenticate` only accepts Basic `id:secret` and issues `token`,
    /// which every other request must then carry.
    pub fn with_client_credentials(id: &str, secret: &str, token: &str) -> Self {
        Self::build(
            Some(token.to_owned()),
            Some((id.to_owned(), SecretString::from(secret))),
        )
    }

    fn build(token: Option<String>, client: Option<(String, SecretString)>) -> Self {
        Self {
            state: Arc::new(Mutex::new(SimState {
                token,
                client,
                token_expired: false,
                participants: HashMap::new(),
                failures: HashMap::new(),
                delays: HashMap::new(),
                recordings: HashMap::new(),
                registrations: Vec::new(),
                requests: HashMap::new(),
                delayed: HashMap::new(),
            })),
        }
    }

    /// A realistic participant body (an inbound external call ringing extension `dn`),
    /// handy as a starting point for [`JasSim::set_participant`].
    pub fn example_participant(dn: &str, id: &str) -> Value {
        json!({
            "id": id.parse::<i64>().map_or_else(|_| json!(id), |n| json!(n)),
            "status": "Dialing",
            "dn": dn,
            "party_caller_name": "",
            "party_dn": "10000",
            "party_caller_id": "5148888888",
            "party_did": "",
            "device_id": format!("sip:{dn}@127.0.0.1:5063"),
            "party_dn_type": "Wexternalline",
            "direct_control": false,
            "originated_by_dn": "",
            "originated_by_type": "None",
            "referred_by_dn": "",
            "referred_by_type": "None",
            "on_behalf_of_dn": "",
            "on_behalf_of_type": "None",
            "callid": 26,
            "legid": 1
        })
    }

    /// Binds `127.0.0.1:0` and serves until the returned [`SimServer`] is dropped.
    pub async fn start(&self) -> std::io::Result<SimServer> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let shutdown = cancel.clone().cancelled_owned();
        let app = self.router();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::warn!(error = %e, "JAS Connect simulator stopped with an error");
            }
        });
        tracing::debug!(%addr, "JAS Connect simulator listening");
        Ok(SimServer {
            addr,
            base_url: format!("http://{addr}/v2"),
            cancel,
            task: Some(task),
        })
    }

    /// The sim's routes (all under `/v2`), for mounting into a server of your own.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v2/auth/authenticate", post(auth))
            .route(
                "/v2/webhooks",
                post(register).delete(unregister).get(list_webhooks),
            )
            .route(
                "/v2/api/callcontrol/{dn}/participants/{id}",
                get(participant),
            )
            .route("/v2/api/callcontrol", get(callcontrol))
            .route("/v2/api/recordings/{*rest}", get(recording))
            .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
            .with_state(self.clone())
    }

    /// Makes the participant visible with `details` as its body; `id` and `dn` are filled
    /// in when `details` is an object lacking them.
    pub fn set_participant(&self, dn: &str, id: &str, mut details: Value) {
        if let Some(obj) = details.as_object_mut() {
            obj.entry("id")
                .or_insert_with(|| id.parse::<i64>().map_or_else(|_| json!(id), |n| json!(n)));
            obj.entry("dn").or_insert_with(|| json!(dn));
        }
        self.lock().participants.insert(
            (dn.to_owned(), id.to_owned()),
            ParticipantEntry::Visible(details),
        );
    }

    /// The call-control snapshot as `GET /api/callcontrol` answers it now: each DN with a
    /// visible participant, sorted, with those participants (as their lookups answer them).
    pub fn callcontrol(&self) -> Value {
        let st = self.lock();
        let mut dns: std::collections::BTreeMap<&str, Vec<(&str, &Value)>> = Default::default();
        for ((dn, id), entry) in &st.participants {
            if let ParticipantEntry::Visible(details) = entry {
                dns.entry(dn).or_default().push((id, details));
            }
        }
        Value::Array(
            dns.into_iter()
                .map(|(dn, mut participants)| {
                    participants.sort_by_key(|(id, _)| *id);
                    let participants: Vec<Value> =
                        participants.into_iter().map(|(_, d)| d.clone()).collect();
                    json!({"dn": dn, "type": "Wextension", "devices": [], "participants": participants})
                })
                .collect(),
        )
    }

    /// Lookups of this participant answer 404 from now on (and the snapshot omits it).
    pub fn remove_participant(&self, dn: &str, id: &str) {
        self.lock()
            .participants
            .remove(&(dn.to_owned(), id.to_owned()));
    }

    /// Lookups of this participant answer 403 from now on.
    pub fn forbid_participant(&self, dn: &str, id: &str) {
        self.lock()
            .participants
            .insert((dn.to_owned(), id.to_owned()), ParticipantEntry::Forbidden);
    }

    /// The next `statuses.len()` requests to `route` answer these statuses, in order,
    /// before any auth check. Appends to failures already queued.
    pub fn fail_next(&self, route: SimRoute, statuses: &[u16]) {
        self.lock()
            .failures
            .entry(route)
            .or_default()
            .extend(statuses.iter().copied());
    }

    /// Every request to `route` waits `delay` before answering; `Duration::ZERO` clears it.
    pub fn set_delay(&self, route: SimRoute, delay: Duration) {
        let mut st = self.lock();
        if delay.is_zero() {
            st.delays.remove(&route);
        } else {
            st.delays.insert(route, delay);
        }
    }

    /// Serves `bytes` at `/api/recordings/<name>`, where `name` is the unencoded
    /// recording_url as it appears in webhooks, e.g. `101/[John Doe]_101-…(26).wav`.
    pub fn add_recording(&self, name: &str, bytes: Vec<u8>) {
        self.lock()
            .recordings
            .insert(name.trim_start_matches('/').to_owned(), Bytes::from(bytes));
    }

    /// Currently registered `(event, url)` pairs, in registration order.
    pub fn registrations(&self) -> Vec<(String, String)> {
        self.lock().registrations.clone()
    }

    /// How many requests reached `route`, including ones answered with injected failures.
    pub fn requests(&self, route: SimRoute) -> usize {
        self.lock().requests.get(&route).copied().unwrap_or(0)
    }

    /// The most requests to `route` that were waiting out their delay at the same time (only
    /// counted while a delay is set): how many the client had in flight at once.
    pub fn peak_concurrent(&self, route: SimRoute) -> usize {
        self.lock().delayed.get(&route).map_or(0, |&(_, peak)| peak)
    }

    /// Bearer requests get 401 until the next successful `/auth/authenticate`.
    pub fn expire_token(&self) {
        self.lock().token_expired = true;
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic in another test thread must not cascade into every later assertion.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Common prologue of every route: count, delay, injected failure, bearer check.
    /// Returns the response to send instead of the real one, if any.
    async fn gate(&self, route: SimRoute, headers: &HeaderMap) -> Option<Response> {
        let delay = {
            let mut st = self.lock();
            *st.requests.entry(route).or_default() += 1;
            st.delays.get(&route).copied()
        };
        if let Some(delay) = delay {
            let _waiting = Delayed::enter(self, route);
            tokio::time::sleep(delay).await;
        }
        let mut st = self.lock();
        if let Some(status) = st.failures.get_mut(&route).and_then(VecDeque::pop_front) {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Some(error(status, "injected failure"));
        }
        if route != SimRoute::Auth && !st.bearer_ok(headers) {
            let mut resp = error(StatusCode::UNAUTHORIZED, "invalid or expired token");
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Some(resp);
        }
        None
    }
}

/// One request inside its delay; leaves the count when dropped, also when the client gives up
/// and the handler is dropped mid-sleep.
struct Delayed<'a> {
    sim: &'a JasSim,
    route: SimRoute,
}

impl<'a> Delayed<'a> {
    fn enter(sim: &'a JasSim, route: SimRoute) -> Self {
        let mut st = sim.lock();
        let (now, peak) = st.delayed.entry(route).or_default();
        *now += 1;
        *peak = (*peak).max(*now);
        Self { sim, route }
    }
}

impl Drop for Delayed<'_> {
    fn drop(&mut self) {
        if let Some((now, _)) = self.sim.lock().delayed.get_mut(&self.route) {
            *now -= 1;
        }
    }
}

impl SimState {
    fn bearer_ok(&self, headers: &HeaderMap) -> bool {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match (&self.token, presented) {
            (_, Some(_)) if self.token_expired => false,
            (None, _) => true,
            (Some(expected), Some(given)) => expected == given,
            (Some(_), None) => false,
        }
    }

    fn basic_ok(&self, headers: &HeaderMap) -> bool {
        let Some((id, secret)) = &self.client else {
            return true;
        };
        let expected = format!(
            "Basic {}",
            base64_encode(format!("{id}:{}", secret.expose_secret()).as_bytes())
        );
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == expected)
    }
}

/// A running simulator. Dropping it shuts the server down.
pub struct SimServer {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT/v2`, ready to use as the client's `api_base`.
    pub base_url: String,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl fmt::Debug for SimServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimServer")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl SimServer {
    /// `base_url` joined with `path` (which should start with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// Stops accepting requests and waits for in-flight ones to finish.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        // Graceful rather than abort, so a request already being answered still completes.
        self.cancel.cancel();
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": message, "status": status.as_u16() })),
    )
        .into_response()
}

async fn auth(State(sim): State<JasSim>, headers: HeaderMap) -> Response {
    if let Some(resp) = sim.gate(SimRoute::Auth, &headers).await {
        return resp;
    }
    let mut st = sim.lock();
    if !st.basic_ok(&headers) {
        return error(StatusCode::UNAUTHORIZED, "invalid client credentials");
    }
    st.token_expired = false;
    let token = st.token.clone().unwrap_or_else(|| DEFAULT_TOKEN.to_owned());
    axum::Json(json!({ "access_token": token, "token_type": "Bearer", "expires_in": 3600 }))
        .into_response()
}

/// The webhook events the simulated account offers.
pub const OFFERED_EVENTS: &[&str] = &[
    "call_status",
    "new_recording",
    "call_summary",
    "call_analysis",
];

async fn register(State(sim): State<JasSim>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(resp) = sim.gate(SimRoute::Register, &headers).await {
        return resp;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "body must be JSON");
    };
    let field = |name: &str| {
        body.get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let (Some(event), Some(url)) = (field("event"), field("url")) else {
        return error(
            StatusCode::BAD_REQUEST,
            "`event` and `url` must be non-empty strings",
        );
    };
    // Like the real account: only the events it offers can be registered.
    if !OFFERED_EVENTS.contains(&event.as_str()) {
        return error(StatusCode::BAD_REQUEST, "unknown event");
    }
    let mut st = sim.lock();
    match st.registrations.iter_mut().find(|(e, _)| *e == event) {
        Some(existing) => existing.1 = url.clone(),
        None => st.registrations.push((event.clone(), url.clone())),
    }
    (
        StatusCode::CREATED,
        axum::Json(json!({ "event": event, "url": url })),
    )
        .into_response()
}

async fn unregister(
    State(sim): State<JasSim>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if let Some(resp) = sim.gate(SimRoute::Unregister, &headers).await {
        return resp;
    }
    let event = query.as_deref().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "event")
            .map(|(_, v)| v.into_owned())
    });
    let Some(event) = event.filter(|e| !e.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "missing `event` query parameter");
    };
    let mut st = sim.lock();
    let before = st.registrations.len();
    st.registrations.retain(|(e, _)| *e != event);
    if st.registrations.len() == before {
        return error(
            StatusCode::NOT_FOUND,
            "no webhook registered for this event",
        );
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "event": event, "status": "unregistered" })),
    )
        .into_response()
}

async fn list_webhooks(State(sim): State<JasSim>, headers: HeaderMap) -> Response {
    if let Some(resp) = sim.gate(SimRoute::ListWebhooks, &headers).await {
        return resp;
    }
    let list: Vec<Value> = sim
        .lock()
        .registrations
        .iter()
        .map(|(event, url)| json!({ "event": event, "url": url }))
        .collect();
    axum::Json(Value::Array(list)).into_response()
}

async fn participant(
    State(sim): State<JasSim>,
    headers: HeaderMap,
    Path((dn, id)): Path<(String, String)>,
) -> Response {
    if let Some(resp) = sim.gate(SimRoute::Participant, &headers).await {
        return resp;
    }
    match sim.lock().participants.get(&(dn, id)) {
        Some(ParticipantEntry::Visible(details)) => axum::Json(details.clone()).into_response(),
        Some(ParticipantEntry::Forbidden) => error(
            StatusCode::FORBIDDEN,
            "participant not visible to this token",
        ),
        None => error(StatusCode::NOT_FOUND, "participant not found"),
    }
}

/// The snapshot is taken as the request arrives and answered after the route's delay, as a
/// real API's answer is as old as the request: a test can change the state while it is in
/// flight.
async fn callcontrol(State(sim): State<JasSim>, headers: HeaderMap) -> Response {
    let snapshot = sim.callcontrol();
    if let Some(resp) = sim.gate(SimRoute::CallControl, &headers).await {
        return resp;
    }
    axum::Json(snapshot).into_response()
}

async fn recording(State(sim): State<JasSim>, headers: HeaderMap, uri: Uri) -> Response {
    if let Some(resp) = sim.gate(SimRoute::Recording, &headers).await {
        return resp;
    }
    // Decoded segment by segment from the raw path, mirroring how callers encode the
    // recording_url, so the lookup key is exactly the name given to `add_recording`.
    let raw = uri
        .path()
        .strip_prefix(RECORDINGS_PREFIX)
        .unwrap_or_default();
    let mut segments = Vec::new();
    for segment in raw.split('/') {
        match percent_encoding::percent_decode_str(segment).decode_utf8() {
            Ok(s) => segments.push(s.into_owned()),
            Err(_) => return error(StatusCode::BAD_REQUEST, "recording path is not UTF-8"),
        }
    }
    let name = segments.join("/");
    let Some(bytes) = sim.lock().recordings.get(&name).cloned() else {
        return error(StatusCode::NOT_FOUND, "recording not found");
    };
    let content_type = match name
        .rsplit('.')
        .next()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("wav") => "audio/wav",
        Some("mp3") => "audio/mpeg",
        Some("ogg") => "audio/ogg",
        _ => "application/octet-stream",
    };
    ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
}

/// Standard base64 for the expected Basic header; small enough not to need a crate.
fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_reference_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("cid:s3cr3t", "Y2lkOnMzY3IzdA=="),
        ] {
            assert_eq!(base64_encode(input.as_bytes()), expected, "{input}");
        }
    }

    #[tokio::test]
    async fn serves_json_errors_and_stops_on_drop() {
        let sim = JasSim::with_token("t");
        let server = sim.start().await.unwrap();
        let http = crate::outbound::client(crate::outbound::Options::own(false)).unwrap();

        let resp = http.get(server.url("/nope")).send().await.unwrap();
        assert_eq!(resp.status(), 404);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["status"], 404);

        let resp = http
            .get(server.url("/api/recordings/101/missing.wav"))
            .bearer_auth("t")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
        assert!(resp.json::<Value>().await.unwrap()["error"].is_string());

        let resp = http.get(server.url("/webhooks")).send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(sim.requests(SimRoute::ListWebhooks), 1);

        let resp = http
            .post(server.url("/auth/authenticate"))
            .basic_auth("anyone", Some("anything"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.json::<Value>().await.unwrap()["access_token"], "t");

        let url = server.url("/webhooks");
        server.shutdown().await;
        assert!(http.get(url).bearer_auth("t").send().await.is_err());
    }
}
