//! `[telecmi]`: TeleCMI webhooks (the path token is their credential) and API.

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use super::ConfigError;
use super::values::{
    boolean, cidr_texts, cidrs, http_url, list, non_empty, redacted_url, secret_or_file, shown,
    text,
};

#[derive(Debug, Clone)]
pub struct TelecmiSettings {
    pub enabled: bool,
    pub path_token: Option<SecretString>,
    pub allow_ips: Vec<IpNet>,
    pub app_id: Option<String>,
    pub secret: Option<SecretString>,
    pub api_base: Url,
}

/// The section as written, before validation.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct Raw {
    #[serde(deserialize_with = "boolean")]
    enabled: bool,
    #[serde(deserialize_with = "text")]
    path_token: Option<String>,
    #[serde(deserialize_with = "text")]
    path_token_file: Option<String>,
    #[serde(deserialize_with = "list")]
    allow_ips: Vec<String>,
    #[serde(deserialize_with = "text")]
    app_id: Option<String>,
    #[serde(deserialize_with = "text")]
    secret: Option<String>,
    #[serde(deserialize_with = "text")]
    secret_file: Option<String>,
    api_base: String,
}

impl Default for Raw {
    fn default() -> Self {
        Self {
            enabled: true,
            path_token: None,
            path_token_file: None,
            allow_ips: vec![],
            app_id: None,
            secret: None,
            secret_file: None,
            api_base: "https://rest.telecmi.com/v2".into(),
        }
    }
}

impl Raw {
    pub(super) fn validate(self) -> Result<TelecmiSettings, ConfigError> {
        let path_token =
            secret_or_file("telecmi.path_token", self.path_token, self.path_token_file)?;
        if let Some(token) = &path_token {
            let t = token.expose_secret();
            if !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c))
            {
                return Err(ConfigError::new(
                    "telecmi.path_token",
                    "may only contain letters, digits and - _ . ~ (it is a URL path segment)",
                ));
            }
        }
        Ok(TelecmiSettings {
            enabled: self.enabled,
            path_token,
            allow_ips: cidrs("telecmi.allow_ips", &self.allow_ips)?,
            app_id: non_empty(self.app_id),
            secret: secret_or_file("telecmi.secret", self.secret, self.secret_file)?,
            api_base: http_url("telecmi.api_base", &self.api_base)?,
        })
    }
}

impl TelecmiSettings {
    /// What is off and why, for `warn` lines at start-up.
    pub(super) fn warnings(&self) -> Vec<String> {
        match self.enabled && self.path_token.is_none() {
            true => vec![
                "telecmi.path_token is unset: POST /webhooks/telecmi/... answers 404".to_string(),
            ],
            false => vec![],
        }
    }

    /// The section as `check-config` prints it.
    pub(super) fn redacted(&self) -> Value {
        json!({
            "enabled": self.enabled,
            "path_token": shown(&self.path_token),
            "allow_ips": cidr_texts(&self.allow_ips),
            "app_id": self.app_id,
            "secret": shown(&self.secret),
            "api_base": redacted_url(&self.api_base),
        })
    }
}
