//! `[ui]`: the web page of SPEC §9 on the admin listener.

use serde::Deserialize;
use serde_json::{Value, json};

use super::ConfigError;
use super::values::boolean;

#[derive(Debug, Clone)]
pub struct UiSettings {
    /// Whether `GET /`, its assets and its login answer; off, they are 404 and the admin API
    /// is unchanged (for an operator who only wants the API on that listener).
    pub enabled: bool,
}

/// The section as written, before validation.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct Raw {
    #[serde(deserialize_with = "boolean")]
    enabled: bool,
}

impl Default for Raw {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl Raw {
    pub(super) fn validate(self) -> Result<UiSettings, ConfigError> {
        Ok(UiSettings {
            enabled: self.enabled,
        })
    }
}

impl UiSettings {
    /// The section as `check-config` prints it.
    pub(super) fn redacted(&self) -> Value {
        json!({ "enabled": self.enabled })
    }
}
