//! `[admin]`: the admin listener and its token.

use std::net::SocketAddr;

use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ConfigError;
use super::values::{secret_or_file, shown, socket_addr, text};

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    pub token: Option<SecretString>,
}

/// The section as written, before validation.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct Raw {
    listen: String,
    #[serde(deserialize_with = "text")]
    token: Option<String>,
    #[serde(deserialize_with = "text")]
    token_file: Option<String>,
}

impl Default for Raw {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9998".into(),
            token: None,
            token_file: None,
        }
    }
}

impl Raw {
    pub(super) fn validate(self) -> Result<AdminSettings, ConfigError> {
        let admin = AdminSettings {
            listen: socket_addr("admin.listen", &self.listen)?,
            token: secret_or_file("admin.token", self.token, self.token_file)?,
        };
        // The admin API shows every call and number: off loopback it must ask for a token.
        if !admin.listen.ip().is_loopback() && admin.token.is_none() {
            return Err(ConfigError::new(
                "admin.listen",
                format!(
                    "{} is not a loopback address: set admin.token (or admin.token_file) too",
                    admin.listen
                ),
            ));
        }
        Ok(admin)
    }
}

impl AdminSettings {
    /// The section as `check-config` prints it.
    pub(super) fn redacted(&self) -> Value {
        json!({
            "listen": self.listen.to_string(),
            "token": shown(&self.token),
        })
    }
}
