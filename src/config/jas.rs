//! `[jas]`: JAS Connect (3CX) webhooks and API.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use super::ConfigError;
use super::values::{
    boolean, http_url, list, non_empty, number, read_secret_file, redacted_url, secret_list,
    secret_or_file, shown, text,
};

/// The events JAS Connect offers (SPEC §2 `jas.events`).
pub const JAS_EVENTS: &[&str] = &[
    "call_status",
    "new_recording",
    "call_summary",
    "call_analysis",
];

/// A lookup the JAS client gave up on (the API unavailable through all its retries, 6 s or more)
/// is asked again this much later, the pause doubling with each further give-up up to
/// `RELOOKUP_MAX`, until the API answers or the participant no longer needs it.
pub const RELOOKUP_FIRST: Duration = Duration::from_secs(5);
pub const RELOOKUP_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct JasSettings {
    pub enabled: bool,
    pub api_base: Url,
    pub token: Option<SecretString>,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretString>,
    /// Several during a rotation; any one verifies.
    pub webhook_secrets: Vec<SecretString>,
    pub callback_url: Option<Url>,
    pub register: bool,
    pub events: Vec<String>,
    pub lookup_participants: bool,
    /// `jas.reconcile_secs`: time between reconciliations with the call-control snapshot
    /// (SPEC §8); `None` (the key set to 0) turns the automatic ones off.
    pub reconcile_every: Option<Duration>,
    /// Whole-request deadline of JAS API calls (10 s). Not a configuration key: tests of a slow
    /// API shorten it instead of waiting 10 s for each timeout.
    #[doc(hidden)]
    pub request_timeout: Duration,
    /// Retry pacing of JAS API calls and lookups. Not configuration keys: always the defaults,
    /// except in tests of an API that stays down longer than one call's retries.
    #[doc(hidden)]
    pub retry: JasRetry,
}

/// How JAS API calls are retried.
#[derive(Debug, Clone, Copy)]
pub struct JasRetry {
    /// One call's pause before its first retry (then doubled, with jitter), its longest pause,
    /// and how many retries it makes after the first attempt: 6 s or more of retrying in all
    /// (the pauses carry jitter, and each attempt may take up to the request timeout).
    pub request_min: Duration,
    pub request_max: Duration,
    pub request_retries: usize,
    /// A participant lookup whose call gave up anyway is asked again this much later, the
    /// pause doubling up to `lookup_max`, until the API answers.
    pub lookup_first: Duration,
    pub lookup_max: Duration,
}

impl Default for JasRetry {
    fn default() -> Self {
        Self {
            request_min: Duration::from_millis(200),
            request_max: Duration::from_secs(10),
            request_retries: 5,
            lookup_first: RELOOKUP_FIRST,
            lookup_max: RELOOKUP_MAX,
        }
    }
}

impl JasSettings {
    pub fn has_credentials(&self) -> bool {
        self.token.is_some() || (self.client_id.is_some() && self.client_secret.is_some())
    }

    /// What is off and why, for `warn` lines at start-up.
    pub(super) fn warnings(&self) -> Vec<String> {
        let mut out = vec![];
        if !self.enabled {
            return out;
        }
        if self.webhook_secrets.is_empty() {
            out.push(
                "jas.webhook_secret is unset: POST /webhooks/jas answers 401 to every request"
                    .to_string(),
            );
        }
        if !self.has_credentials() {
            out.push("no jas.token or jas.client_id/client_secret: no webhook registration, no participant lookups, no JAS recording downloads".to_string());
        } else if self.register && self.callback_url.is_none() {
            out.push("jas.callback_url is unset: webhooks are not registered".to_string());
        }
        out
    }

    /// The section as `check-config` prints it.
    pub(super) fn redacted(&self) -> Value {
        json!({
            "enabled": self.enabled,
            "api_base": redacted_url(&self.api_base),
            "token": shown(&self.token),
            "client_id": self.client_id,
            "client_secret": shown(&self.client_secret),
            "webhook_secret": self.webhook_secrets.iter().map(|_| "***").collect::<Vec<_>>(),
            "callback_url": self.callback_url.as_ref().map(redacted_url),
            "register": self.register,
            "events": self.events,
            "lookup_participants": self.lookup_participants,
            "reconcile_secs": self.reconcile_every.map_or(0, |d| d.as_secs()),
        })
    }
}

/// The section as written, before validation.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct Raw {
    #[serde(deserialize_with = "boolean")]
    enabled: bool,
    api_base: String,
    #[serde(deserialize_with = "text")]
    token: Option<String>,
    #[serde(deserialize_with = "text")]
    token_file: Option<String>,
    #[serde(deserialize_with = "text")]
    client_id: Option<String>,
    #[serde(deserialize_with = "text")]
    client_secret: Option<String>,
    #[serde(deserialize_with = "text")]
    client_secret_file: Option<String>,
    /// One value or a list (`webhook_secret = "a"` or `["a", "b"]`).
    #[serde(deserialize_with = "secret_list")]
    webhook_secret: Vec<String>,
    #[serde(deserialize_with = "secret_list")]
    webhook_secret_file: Vec<String>,
    #[serde(deserialize_with = "text")]
    callback_url: Option<String>,
    #[serde(deserialize_with = "boolean")]
    register: bool,
    #[serde(deserialize_with = "list")]
    events: Vec<String>,
    #[serde(deserialize_with = "boolean")]
    lookup_participants: bool,
    #[serde(deserialize_with = "number")]
    reconcile_secs: u64,
}

impl Default for Raw {
    fn default() -> Self {
        Self {
            enabled: true,
            api_base: "https://api.jasconnect.com/v2".into(),
            token: None,
            token_file: None,
            client_id: None,
            client_secret: None,
            client_secret_file: None,
            webhook_secret: vec![],
            webhook_secret_file: vec![],
            callback_url: None,
            register: true,
            events: vec![
                "call_status".into(),
                "new_recording".into(),
                "call_summary".into(),
            ],
            lookup_participants: true,
            reconcile_secs: 60,
        }
    }
}

impl Raw {
    pub(super) fn validate(self) -> Result<JasSettings, ConfigError> {
        let mut webhook_secrets: Vec<SecretString> = self
            .webhook_secret
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(SecretString::from)
            .collect();
        for path in self.webhook_secret_file {
            webhook_secrets.push(read_secret_file("jas.webhook_secret_file", &path)?);
        }
        let client_secret = secret_or_file(
            "jas.client_secret",
            self.client_secret,
            self.client_secret_file,
        )?;
        let client_id = non_empty(self.client_id);
        if client_id.is_some() != client_secret.is_some() {
            return Err(ConfigError::new(
                "jas.client_id",
                "jas.client_id and jas.client_secret must be set together",
            ));
        }
        let events = events(self.events)?;
        Ok(JasSettings {
            enabled: self.enabled,
            api_base: http_url("jas.api_base", &self.api_base)?,
            token: secret_or_file("jas.token", self.token, self.token_file)?,
            client_id,
            client_secret,
            webhook_secrets,
            callback_url: non_empty(self.callback_url)
                .map(|u| http_url("jas.callback_url", &u))
                .transpose()?,
            register: self.register,
            events,
            lookup_participants: self.lookup_participants,
            reconcile_every: reconcile_every(self.reconcile_secs)?,
            request_timeout: Duration::from_secs(10),
            retry: JasRetry::default(),
        })
    }
}

/// The longest `jas.reconcile_secs`: a day. Longer is surely a typo (minutes or milliseconds
/// meant), and a day-old picture repairs nothing a CRM would still wait for.
const RECONCILE_MAX_SECS: u64 = 24 * 3600;

fn reconcile_every(secs: u64) -> Result<Option<Duration>, ConfigError> {
    if secs > RECONCILE_MAX_SECS {
        return Err(ConfigError::new(
            "jas.reconcile_secs",
            format!("must be 0 (off) or at most {RECONCILE_MAX_SECS} seconds, got {secs}"),
        ));
    }
    Ok((secs > 0).then(|| Duration::from_secs(secs)))
}

/// `jas.events`, trimmed, each one JAS Connect offers.
fn events(events: Vec<String>) -> Result<Vec<String>, ConfigError> {
    let events: Vec<String> = events
        .into_iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    if let Some(bad) = events.iter().find(|e| !JAS_EVENTS.contains(&e.as_str())) {
        return Err(ConfigError::new(
            "jas.events",
            format!(
                "`{}` is not a JAS Connect event (one of {})",
                bad.escape_debug(),
                JAS_EVENTS.join(", ")
            ),
        ));
    }
    Ok(events)
}
