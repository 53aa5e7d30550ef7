//! `[storage]`: the SQLite database and how long its calls are kept.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Value, json};

use super::ConfigError;
use super::values::number;

#[derive(Debug, Clone)]
pub struct StorageSettings {
    pub path: PathBuf,
    pub retention_days: u32,
}

/// The section as written, before validation.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct Raw {
    path: String,
    #[serde(deserialize_with = "number")]
    retention_days: u64,
}

impl Default for Raw {
    fn default() -> Self {
        Self {
            path: "data/callhook.db".into(),
            retention_days: 90,
        }
    }
}

impl Raw {
    pub(super) fn validate(self) -> Result<StorageSettings, ConfigError> {
        if self.path.trim().is_empty() {
            return Err(ConfigError::new("storage.path", "must not be empty"));
        }
        if self.retention_days == 0 || self.retention_days > 36500 {
            return Err(ConfigError::new(
                "storage.retention_days",
                "must be between 1 and 36500",
            ));
        }
        Ok(StorageSettings {
            path: PathBuf::from(self.path),
            retention_days: self.retention_days as u32,
        })
    }
}

impl StorageSettings {
    /// The section as `check-config` prints it.
    pub(super) fn redacted(&self) -> Value {
        json!({
            "path": self.path.display().to_string(),
            "retention_days": self.retention_days,
        })
    }
}
