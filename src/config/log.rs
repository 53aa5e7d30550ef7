//! `[log]`: format, level (and `RUST_LOG`), number redaction.

use serde::Deserialize;
use serde_json::{Value, json};

use super::ConfigError;
use super::values::boolean;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
    /// `RUST_LOG` when set (checked like `level`); it overrides `level`.
    pub rust_log: Option<String>,
    /// Phone numbers in log lines show only their last 4 digits.
    pub redact_numbers: bool,
}

impl LogSettings {
    /// The filter directives in force: `RUST_LOG` when set, else `log.level`.
    pub fn directives(&self) -> &str {
        self.rust_log.as_deref().unwrap_or(&self.level)
    }

    /// Sets `RUST_LOG` (ignored when blank), checked like `log.level`.
    pub(super) fn set_rust_log(&mut self, value: Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = value.filter(|v| !v.trim().is_empty()) {
            check_log_directives(&v).map_err(|reason| ConfigError::new("RUST_LOG", reason))?;
            self.rust_log = Some(v);
        }
        Ok(())
    }

    /// The section as `check-config` prints it.
    pub(super) fn redacted(&self) -> Value {
        json!({
            "format": match self.format { LogFormat::Json => "json", LogFormat::Pretty => "pretty" },
            "level": self.level,
            "redact_numbers": self.redact_numbers,
        })
    }
}

/// The section as written, before validation.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct Raw {
    format: String,
    level: String,
    #[serde(deserialize_with = "boolean")]
    redact_numbers: bool,
}

impl Default for Raw {
    fn default() -> Self {
        Self {
            format: "json".into(),
            level: "info".into(),
            redact_numbers: false,
        }
    }
}

impl Raw {
    pub(super) fn validate(self) -> Result<LogSettings, ConfigError> {
        let format = match self.format.as_str() {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            other => {
                return Err(ConfigError::new(
                    "log.format",
                    format!("`{other}` is neither json nor pretty"),
                ));
            }
        };
        check_log_directives(&self.level)
            .map_err(|reason| ConfigError::new("log.level", reason))?;
        Ok(LogSettings {
            format,
            level: self.level,
            rust_log: None,
            redact_numbers: self.redact_numbers,
        })
    }
}

/// A `log.level` or `RUST_LOG`: a level (`error`, `warn`, `info`, `debug`, `trace`, `off`) or a
/// comma-separated `EnvFilter` directive list whose every directive ends in such a level
/// (`target=level`, `target[span{field}]=level`). `EnvFilter` itself takes a bare word such as
/// `warning` for a target name, which then logs nothing at all.
pub fn check_log_directives(value: &str) -> Result<(), String> {
    const LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace", "off"];
    let is_level = |l: &str| LEVELS.contains(&l.trim().to_ascii_lowercase().as_str());
    let directives: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return Err("is empty; give a level such as `info`".to_string());
    }
    for d in &directives {
        let ok = match d.rsplit_once('=') {
            // `target=level`; a `=` inside a span field filter (`[{x=1}]`) is not the level's.
            Some((target, level)) if !level.contains(']') && !level.contains('}') => {
                !target.trim().is_empty() && is_level(level)
            }
            _ => is_level(d),
        };
        if !ok {
            return Err(format!(
                "`{d}` is not a level (error, warn, info, debug, trace, off) or a directive like `callhook=debug`"
            ));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(value)
        .map(|_| ())
        .map_err(|e| format!("`{value}` is not a filter directive: {e}"))
}
