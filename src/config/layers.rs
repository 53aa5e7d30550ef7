//! The layers under the sections: the TOML file and the `CALLHOOK__SECTION__KEY` environment,
//! merged into one TOML table for serde to read. A syntax error in the file is reported by
//! position and key, never by its text.

use std::collections::BTreeMap;
use std::path::Path;

use super::{ConfigError, DEFAULT_CONFIG_FILE};

/// The file named by `--config` (which must exist), else `config/callhook.toml` if it exists,
/// else nothing.
pub(super) fn file(file: Option<&Path>) -> Result<toml::Table, ConfigError> {
    let path = match file {
        Some(path) if !path.exists() => {
            return Err(ConfigError::new(
                "--config",
                format!("file {} does not exist", path.display()),
            ));
        }
        Some(path) => path,
        None if Path::new(DEFAULT_CONFIG_FILE).exists() => Path::new(DEFAULT_CONFIG_FILE),
        None => return Ok(toml::Table::new()),
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("config", format!("cannot read {}: {e}", path.display())))?;
    toml::from_str::<toml::Table>(&text).map_err(|err| match err.span() {
        Some(span) => toml_syntax_error(path, &text, span.start, err.message()),
        None => ConfigError::new("config", format!("{} is not valid TOML", path.display())),
    })
}

/// Sets every `CALLHOOK__SECTION__KEY` variable over `table`, as text: the key's type decides
/// how its text is read (see `values`), so `007` stays `007` and a secret is never split.
/// Returns `RUST_LOG`.
pub(super) fn environment(
    table: &mut toml::Table,
    env: Option<&BTreeMap<String, String>>,
) -> Option<String> {
    let vars: Vec<(String, String)> = match env {
        Some(vars) => vars.clone().into_iter().collect(),
        None => std::env::vars().collect(),
    };
    let mut rust_log = None;
    for (var, value) in vars {
        if var == "RUST_LOG" {
            rust_log = Some(value);
            continue;
        }
        let Some(rest) = var.strip_prefix("CALLHOOK__") else {
            continue;
        };
        let key = rest.to_lowercase();
        let mut parts: Vec<&str> = key.split("__").collect();
        let last = parts.pop().unwrap_or_default();
        let mut at = &mut *table;
        for part in parts {
            let entry = at
                .entry(part)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            at = entry.as_table_mut().expect("a table");
        }
        at.insert(last.to_string(), toml::Value::String(value));
    }
    rust_log
}

/// "line L, column C" of byte `at`, and the key being set on that line (its section from the
/// last `[header]` above), so the user can find the line without it being printed.
fn toml_syntax_error(path: &Path, text: &str, at: usize, message: &str) -> ConfigError {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let bare = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    };
    let mut section = String::new();
    let mut key = None;
    for (n, l) in text.lines().enumerate().take(line) {
        let l = l.trim();
        if let Some(h) = l.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            if bare(h.trim()) {
                section = h.trim().to_string();
            }
        } else if n + 1 == line {
            key = l
                .split_once('=')
                .map(|(k, _)| k.trim())
                .filter(|k| bare(k))
                .map(|k| match section.is_empty() {
                    true => k.to_string(),
                    false => format!("{section}.{k}"),
                });
        }
    }
    // The parser's own message names what it expected, never the value.
    let message = message.lines().next().unwrap_or("").trim();
    ConfigError::new(
        key.unwrap_or_else(|| "config".to_string()),
        format!(
            "TOML syntax error in {} at line {line}, column {column}: {message} (the line is not shown: it may hold a secret)",
            path.display()
        ),
    )
}
