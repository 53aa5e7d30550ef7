//! The web page of SPEC §9 on the admin listener: one HTML page, its script and style,
//! compiled into the binary (`include_str!`, no build step), loading nothing from any other
//! host; and the session that lets a browser in when `admin.token` is set.
//!
//! The session cookie holds an HMAC of the token, not the token: a leaked cookie does not give
//! the token away (for a CLI or a script), and nothing needs to be kept on the server.

use axum::Form;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::AppState;
use axum::extract::State;

const INDEX: &str = include_str!("page/index.html");
const LOGIN: &str = include_str!("page/login.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");
const ICON: &str = include_str!("page/icon.svg");

/// The session cookie's name.
pub const COOKIE: &str = "callhook_session";

/// The cookie value that `token` grants.
fn session_value(token: &SecretString) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.expose_secret().as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(b"callhook admin session v1");
    hex::encode(mac.finalize().into_bytes())
}

/// Whether the request carries the session cookie `token` grants (compared in constant time).
pub fn has_session(headers: &HeaderMap, token: &SecretString) -> bool {
    let expected = session_value(token);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .any(|given| bool::from(given.as_bytes().ct_eq(expected.as_bytes())))
}

/// The page's HTML no security tool should cache or frame.
fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            // Nothing from any other host: scripts, styles, media and requests stay here.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
        .into_response()
}

/// The login form, answered 401 (the page itself is behind the token), with `error` shown.
pub fn login(error: Option<&str>) -> Response {
    let error = error
        .map(|e| format!("<p class=\"error\">{e}</p>"))
        .unwrap_or_default();
    html(
        StatusCode::UNAUTHORIZED,
        LOGIN.replace("<!--error-->", &error),
    )
}

pub async fn index() -> Response {
    html(StatusCode::OK, INDEX.to_string())
}

pub async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

pub async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

/// The page's icon, which the login form shows too, so it needs no session (without one the
/// browser's request for an icon would fail on every page).
pub async fn icon() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        ICON,
    )
}

#[derive(Deserialize)]
pub struct Login {
    token: String,
}

/// `POST /api/session` (the login form's `token` field): the right token sets the cookie and
/// goes to the page; a wrong one gets the form again. Neither the token nor the cookie is
/// logged.
pub async fn open_session(State(state): State<AppState>, Form(login): Form<Login>) -> Response {
    let Some(token) = &state.settings.admin.token else {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
    };
    if !bool::from(
        login
            .token
            .as_bytes()
            .ct_eq(token.expose_secret().as_bytes()),
    ) {
        tracing::warn!("admin page login refused: wrong token");
        return self::login(Some("That is not the admin token."));
    }
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
        session_value(token)
    );
    (
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, cookie), (header::LOCATION, "/".into())],
    )
        .into_response()
}

/// `POST /api/session/logout`: the cookie is cleared and the login form comes back.
pub async fn close_session() -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
            ),
            (header::LOCATION, "/".into()),
        ],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_another_host() {
        for (name, text) in [
            ("index", INDEX),
            ("login", LOGIN),
            ("script", SCRIPT),
            ("style", STYLE),
            // An SVG names its namespace by URL; that is no request.
            (
                "icon",
                ICON.replace("xmlns=\"http://www.w3.org/2000/svg\"", "")
                    .as_str(),
            ),
        ] {
            for foreign in ["http://", "https://", "//cdn", "@import", "url("] {
                assert!(!text.contains(foreign), "{name} has {foreign}");
            }
        }
    }

    #[test]
    fn only_the_cookie_the_token_grants_opens_a_session() {
        let token = SecretString::from("s3cret");
        let mut headers = HeaderMap::new();
        assert!(!has_session(&headers, &token));
        headers.insert(
            header::COOKIE,
            format!("a=b; {COOKIE}={}", session_value(&token))
                .parse()
                .unwrap(),
        );
        assert!(has_session(&headers, &token));
        assert!(!has_session(&headers, &SecretString::from("other")));
        // The cookie is not the token.
        assert!(!session_value(&token).contains("s3cret"));
    }
}
