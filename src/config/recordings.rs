//! `[recordings]`: where recordings go and how their downloads are limited and paced.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::ConfigError;
use super::values::{boolean, number};

#[derive(Debug, Clone)]
pub struct RecordingsSettings {
    pub enabled: bool,
    pub dir: PathBuf,
    pub concurrency: usize,
    pub max_attempts: u32,
    /// A recording larger than this is refused (declared) or cut (streamed): job `failed`.
    pub max_bytes: u64,
    /// Deadline of one download attempt, from the request to the rename.
    pub download_timeout: Duration,
    /// An attempt that receives no byte for this long fails, and is retried.
    pub stall_timeout: Duration,
    /// Retry pacing. Not a configuration key: always the defaults, except in tests.
    #[doc(hidden)]
    pub tuning: RecorderOptions,
}

/// How the workers pace retries. Not configuration keys: production uses the defaults; tests
/// shorten them (through `RecordingsSettings::tuning`) so that retries take milliseconds.
/// Defined here (and re-exported as `recordings::RecorderOptions`) so that the configuration
/// needs nothing from `recordings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecorderOptions {
    /// Delay before the second attempt; doubled for each one after (with jitter).
    pub backoff_base: Duration,
    /// Longest delay between attempts, unless the server's `Retry-After` asks for more.
    pub backoff_cap: Duration,
    /// How often the queue is looked at when nothing wakes the workers (a safety net: new jobs
    /// and finished downloads wake them at once).
    pub idle_poll: Duration,
}

impl Default for RecorderOptions {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            idle_poll: Duration::from_secs(60),
        }
    }
}

/// The section as written, before validation.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct Raw {
    #[serde(deserialize_with = "boolean")]
    enabled: bool,
    dir: String,
    #[serde(deserialize_with = "number")]
    concurrency: u64,
    #[serde(deserialize_with = "number")]
    max_attempts: u64,
    #[serde(deserialize_with = "number")]
    max_bytes: u64,
    #[serde(deserialize_with = "number")]
    download_timeout_secs: u64,
    #[serde(deserialize_with = "number")]
    stall_timeout_secs: u64,
}

impl Default for Raw {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: "recordings".into(),
            concurrency: 4,
            max_attempts: 8,
            // 4 GiB: the most a RIFF/WAV file can hold, about 6 hours of CD-quality stereo and
            // days of 8 kHz telephony audio.
            max_bytes: 4 << 30,
            // 4 hours: a 4 GiB recording still fits at 2.4 Mbit/s, a usual one (tens of MB) at
            // a few kbit/s; and no drip holds a worker longer than that.
            download_timeout_secs: 4 * 3600,
            stall_timeout_secs: 60,
        }
    }
}

impl Raw {
    pub(super) fn validate(self) -> Result<RecordingsSettings, ConfigError> {
        if self.concurrency == 0 || self.concurrency > 256 {
            return Err(ConfigError::new(
                "recordings.concurrency",
                "must be between 1 and 256",
            ));
        }
        if self.max_attempts == 0 || self.max_attempts > 1000 {
            return Err(ConfigError::new(
                "recordings.max_attempts",
                "must be between 1 and 1000",
            ));
        }
        if self.dir.trim().is_empty() {
            return Err(ConfigError::new("recordings.dir", "must not be empty"));
        }
        if self.max_bytes == 0 {
            return Err(ConfigError::new(
                "recordings.max_bytes",
                "must be at least 1",
            ));
        }
        if self.download_timeout_secs == 0 || self.download_timeout_secs > 7 * 86400 {
            return Err(ConfigError::new(
                "recordings.download_timeout_secs",
                "must be between 1 and 604800 (7 days)",
            ));
        }
        if self.stall_timeout_secs == 0 || self.stall_timeout_secs > self.download_timeout_secs {
            return Err(ConfigError::new(
                "recordings.stall_timeout_secs",
                "must be between 1 and recordings.download_timeout_secs",
            ));
        }
        Ok(RecordingsSettings {
            enabled: self.enabled,
            dir: PathBuf::from(self.dir),
            concurrency: self.concurrency as usize,
            max_attempts: self.max_attempts as u32,
            max_bytes: self.max_bytes,
            download_timeout: Duration::from_secs(self.download_timeout_secs),
            stall_timeout: Duration::from_secs(self.stall_timeout_secs),
            tuning: Default::default(),
        })
    }
}

impl RecordingsSettings {
    /// What is off and why, for `warn` lines at start-up.
    pub(super) fn warnings(&self) -> Vec<String> {
        match self.enabled {
            true => vec![],
            false => vec!["recordings.enabled = false: recordings are not downloaded".to_string()],
        }
    }

    /// The section as `check-config` prints it.
    pub(super) fn redacted(&self) -> Value {
        json!({
            "enabled": self.enabled,
            "dir": self.dir.display().to_string(),
            "concurrency": self.concurrency,
            "max_attempts": self.max_attempts,
            "max_bytes": self.max_bytes,
            "download_timeout_secs": self.download_timeout.as_secs(),
            "stall_timeout_secs": self.stall_timeout.as_secs(),
        })
    }
}
