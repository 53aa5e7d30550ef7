//! `[calls]`: how the call table decides a call is over.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::ConfigError;
use super::values::number;

#[derive(Debug, Clone)]
pub struct CallsSettings {
    /// How long a call that looks over (nobody on it) waits for a late participant before it
    /// is ended; `calls::END_GRACE` says why it is 5 s by default.
    pub end_grace: Duration,
}

/// The section as written, before validation.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct Raw {
    #[serde(deserialize_with = "number")]
    end_grace_ms: u64,
}

impl Default for Raw {
    fn default() -> Self {
        Self {
            end_grace_ms: crate::calls::END_GRACE.num_milliseconds() as u64,
        }
    }
}

/// An hour: past that, `call.ended` would come so late that a grace is not what is wanted.
const MAX_GRACE_MS: u64 = 3_600_000;

impl Raw {
    pub(super) fn validate(self) -> Result<CallsSettings, ConfigError> {
        if self.end_grace_ms > MAX_GRACE_MS {
            return Err(ConfigError::new(
                "calls.end_grace_ms",
                "must be between 0 and 3600000",
            ));
        }
        Ok(CallsSettings {
            end_grace: Duration::from_millis(self.end_grace_ms),
        })
    }
}

impl CallsSettings {
    /// The section as `check-config` prints it.
    pub(super) fn redacted(&self) -> Value {
        json!({ "end_grace_ms": self.end_grace.as_millis() as u64 })
    }
}
