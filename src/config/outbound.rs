//! `[outbound]`: where callhook's own call events go (SPEC §7), `[[outbound.endpoints]]` one
//! table per destination, and how failed deliveries are retried. Read and checked here; the
//! delivery is `events/deliver.rs`.

use std::collections::HashSet;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use super::ConfigError;
use super::values::{
    boolean, http_url, list, number, number_list, redacted_url, secret_list, text,
};
use crate::calls::Provider;
use crate::events::Pattern;
use crate::outbound::signing::Key;

#[derive(Debug, Clone)]
pub struct OutboundSettings {
    pub endpoints: Vec<Endpoint>,
    /// The pause before each retry of a failed delivery; after the last, it is `failed`.
    pub retry_schedule: Vec<Duration>,
}

/// One destination of call events.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Unique, and safe as a metric label (letters, digits, `-`, `_`).
    pub name: String,
    pub url: Url,
    /// `whsec_…`, each checked to decode; several during a rotation (one signature each).
    pub secrets: Vec<SecretString>,
    /// Which events it gets; `["*"]` by default.
    pub events: Vec<Pattern>,
    /// Which providers' calls it gets; every provider when empty.
    pub providers: Vec<Provider>,
    pub enabled: bool,
    pub timeout: Duration,
    /// Whether a loopback, private or link-local target is allowed.
    pub allow_private: bool,
}

impl Endpoint {
    /// Whether it gets an event of this type about a call of this provider.
    pub fn wants(&self, event_type: &str, provider: Provider) -> bool {
        (self.providers.is_empty() || self.providers.contains(&provider))
            && self.events.iter().any(|p| p.matches(event_type))
    }
}

/// The section as written, before validation.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct Raw {
    endpoints: Vec<RawEndpoint>,
    #[serde(deserialize_with = "number_list")]
    retry_schedule_secs: Vec<u64>,
}

impl Default for Raw {
    fn default() -> Self {
        Self {
            endpoints: vec![],
            retry_schedule_secs: vec![5, 300, 1800, 7200, 18000, 36000, 36000],
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawEndpoint {
    #[serde(deserialize_with = "text")]
    name: Option<String>,
    #[serde(deserialize_with = "text")]
    url: Option<String>,
    /// One value or a list during a rotation.
    #[serde(deserialize_with = "secret_list")]
    secret: Vec<String>,
    #[serde(deserialize_with = "list")]
    events: Vec<String>,
    #[serde(deserialize_with = "list")]
    providers: Vec<String>,
    #[serde(deserialize_with = "boolean")]
    enabled: bool,
    #[serde(deserialize_with = "number")]
    timeout_secs: u64,
    #[serde(deserialize_with = "boolean")]
    allow_private: bool,
}

impl Default for RawEndpoint {
    fn default() -> Self {
        Self {
            name: None,
            url: None,
            secret: vec![],
            events: vec!["*".into()],
            providers: vec![],
            enabled: true,
            timeout_secs: 15,
            allow_private: false,
        }
    }
}

impl Raw {
    pub(super) fn validate(self) -> Result<OutboundSettings, ConfigError> {
        let retry_schedule = self
            .retry_schedule_secs
            .into_iter()
            .map(Duration::from_secs)
            .collect();
        let mut names = HashSet::new();
        let mut endpoints = vec![];
        for (i, raw) in self.endpoints.into_iter().enumerate() {
            let endpoint = raw.validate(i)?;
            if !names.insert(endpoint.name.clone()) {
                return Err(ConfigError::new(
                    format!("outbound.endpoints[{i}].name"),
                    format!("`{}` names two endpoints", endpoint.name),
                ));
            }
            endpoints.push(endpoint);
        }
        Ok(OutboundSettings {
            endpoints,
            retry_schedule,
        })
    }
}

impl RawEndpoint {
    fn validate(self, i: usize) -> Result<Endpoint, ConfigError> {
        let key = |field: &str| format!("outbound.endpoints[{i}].{field}");
        let name = self
            .name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ConfigError::new(key("name"), "is required"))?;
        if name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::new(
                key("name"),
                format!("`{name}`: use up to 64 letters, digits, - and _ (it is a metric label)"),
            ));
        }
        let url = self
            .url
            .ok_or_else(|| ConfigError::new(key("url"), "is required"))?;
        let url = http_url(&key("url"), &url)?;
        if self.secret.is_empty() {
            return Err(ConfigError::new(
                key("secret"),
                "is required (whsec_ and base64, as Standard Webhooks receivers expect)",
            ));
        }
        for secret in &self.secret {
            // The secret itself is never quoted.
            Key::parse(secret).map_err(|e| ConfigError::new(key("secret"), e.to_string()))?;
        }
        let events = self
            .events
            .iter()
            .map(|p| Pattern::parse(p).map_err(|e| ConfigError::new(key("events"), e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        if events.is_empty() {
            return Err(ConfigError::new(key("events"), "selects no event"));
        }
        let providers = self
            .providers
            .iter()
            .map(|p| {
                Provider::parse(p).ok_or_else(|| {
                    let known: Vec<&str> = Provider::ALL.iter().map(|p| p.as_str()).collect();
                    ConfigError::new(
                        key("providers"),
                        format!("`{p}` is not one of {}", known.join(", ")),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.timeout_secs == 0 {
            return Err(ConfigError::new(key("timeout_secs"), "must be at least 1"));
        }
        Ok(Endpoint {
            name,
            url,
            secrets: self.secret.into_iter().map(SecretString::from).collect(),
            events,
            providers,
            enabled: self.enabled,
            timeout: Duration::from_secs(self.timeout_secs),
            allow_private: self.allow_private,
        })
    }
}

impl OutboundSettings {
    pub(super) fn redacted(&self) -> Value {
        json!({
            "endpoints": self.endpoints.iter().map(Endpoint::redacted).collect::<Vec<_>>(),
            "retry_schedule_secs": self.retry_schedule.iter().map(Duration::as_secs).collect::<Vec<_>>(),
        })
    }

    pub(super) fn warnings(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .filter(|e| !e.enabled)
            .map(|e| format!("outbound endpoint {} is disabled (enabled = false)", e.name))
            .collect()
    }
}

impl Endpoint {
    fn redacted(&self) -> Value {
        json!({
            "name": self.name,
            "url": redacted_url(&self.url),
            "secret": self.secrets.iter().map(|_| "***").collect::<Vec<_>>(),
            "events": self.events.iter().map(Pattern::as_text).collect::<Vec<_>>(),
            "providers": self.providers.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            "enabled": self.enabled,
            "timeout_secs": self.timeout.as_secs(),
            "allow_private": self.allow_private,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::load_file as load;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn endpoint(extra: &str) -> String {
        format!(
            "[[outbound.endpoints]]\nname = \"crm\"\nurl = \"https://crm.example.com/h\"\nsecret = \"{SECRET}\"\n{extra}\n"
        )
    }

    #[test]
    fn an_endpoint_loads_with_its_defaults_and_is_shown_without_its_secret() {
        let s = load(&endpoint("")).unwrap();
        let e = &s.outbound.endpoints[0];
        assert_eq!(
            (e.name.as_str(), e.enabled, e.allow_private),
            ("crm", true, false)
        );
        assert_eq!(e.timeout.as_secs(), 15);
        assert!(e.wants("call.ended", crate::calls::Provider::Telecmi));
        assert_eq!(s.outbound.retry_schedule.len(), 7);
        let text = s.redacted_toml();
        assert!(!text.contains(&SECRET[6..]), "{text}");
        assert!(text.contains("[[outbound.endpoints]]"), "{text}");
        // What check-config prints loads back (with the secrets put back in).
        let back = load(&text.replace("\"***\"", &format!("\"{SECRET}\""))).unwrap();
        assert_eq!(back.outbound.endpoints[0].url, e.url);
        assert!(!format!("{s:?}").contains(&SECRET[6..]));
    }

    #[test]
    fn filters_select_by_event_pattern_and_provider() {
        let s = load(&endpoint(
            "events = [\"call.*\", \"recording.ready\"]\nproviders = [\"jas\"]",
        ))
        .unwrap();
        let e = &s.outbound.endpoints[0];
        use crate::calls::Provider::{Jas, Telecmi};
        assert!(e.wants("call.started", Jas));
        assert!(e.wants("recording.ready", Jas));
        assert!(!e.wants("recording.failed", Jas));
        assert!(!e.wants("call.started", Telecmi));
    }

    #[test]
    fn each_bad_endpoint_is_refused_naming_its_key_and_never_its_secret() {
        let two = format!("{}{}", endpoint(""), endpoint(""));
        for (text, key) in [
            (two.as_str(), "outbound.endpoints[1].name"),
            (
                &endpoint("").replace("\"crm\"", "\"my crm\""),
                "outbound.endpoints[0].name",
            ),
            (
                &endpoint("").replace("https://", "ftp://"),
                "outbound.endpoints[0].url",
            ),
            (
                &endpoint("events = [\"call.endd\"]"),
                "outbound.endpoints[0].events",
            ),
            (
                &endpoint("providers = [\"twilio\"]"),
                "outbound.endpoints[0].providers",
            ),
            (
                &endpoint("timeout_secs = 0"),
                "outbound.endpoints[0].timeout_secs",
            ),
            (
                &endpoint("").replace(SECRET, "whsec_hunter2!!"),
                "outbound.endpoints[0].secret",
            ),
            (
                &endpoint("").replace(SECRET, "hunter2hunter2"),
                "outbound.endpoints[0].secret",
            ),
        ] {
            let err = load(text).unwrap_err();
            assert_eq!(err.key, key, "{err}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        let err = load("[outbound]\nretry_schedule_secs = [5, \"x\"]\n").unwrap_err();
        assert!(err.key.starts_with("outbound.retry_schedule_secs"), "{err}");
        let s = load("[outbound]\nretry_schedule_secs = [1, 2]\n").unwrap();
        assert_eq!(s.outbound.retry_schedule.len(), 2);
    }
}
