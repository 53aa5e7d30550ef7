//! Settings: compiled-in defaults, then the TOML file, then `CALLHOOK__SECTION__KEY` environment
//! variables; `*_file` variants for every secret; one validation pass that names the bad key.
//! Secrets live in `SecretString` so that no `Debug`, log line or reply can print them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

/// Every key the file or the environment may set. Anything else is an error, so a typo is never
/// silently ignored (the `config` crate itself would accept it).
const KNOWN_KEYS: &[&str] = &[
    "server.listen",
    "server.max_body_bytes",
    "server.trusted_proxies",
    "server.header_read_timeout_secs",
    "server.idle_timeout_secs",
    "server.body_read_timeout_secs",
    "server.max_connections",
    "admin.listen",
    "admin.token",
    "admin.token_file",
    "jas.enabled",
    "jas.api_base",
    "jas.token",
    "jas.token_file",
    "jas.client_id",
    "jas.client_secret",
    "jas.client_secret_file",
    "jas.webhook_secret",
    "jas.webhook_secret_file",
    "jas.callback_url",
    "jas.register",
    "jas.events",
    "jas.lookup_participants",
    "telecmi.enabled",
    "telecmi.path_token",
    "telecmi.path_token_file",
    "telecmi.allow_ips",
    "telecmi.app_id",
    "telecmi.secret",
    "telecmi.secret_file",
    "telecmi.api_base",
    "recordings.enabled",
    "recordings.dir",
    "recordings.concurrency",
    "recordings.max_attempts",
    "recordings.max_bytes",
    "recordings.download_timeout_secs",
    "recordings.stall_timeout_secs",
    "storage.path",
    "storage.retention_days",
    "log.format",
    "log.level",
    "log.redact_numbers",
];

/// Keys whose environment value is a comma-separated list (or a TOML array).
const LIST_KEYS: &[&str] = &["server.trusted_proxies", "jas.events", "telecmi.allow_ips"];

/// Secret keys that take a list (a rotation): from the environment one value, commas and all,
/// unless it is written as a TOML array (`["a", "b"]`). A secret is never split on commas.
const SECRET_LIST_KEYS: &[&str] = &["jas.webhook_secret", "jas.webhook_secret_file"];

/// The events JAS Connect offers (SPEC §2 `jas.events`).
pub const JAS_EVENTS: &[&str] = &[
    "call_status",
    "new_recording",
    "call_summary",
    "call_analysis",
];

pub const DEFAULT_CONFIG_FILE: &str = "config/callhook.toml";

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub jas: JasSettings,
    pub telecmi: TelecmiSettings,
    pub recordings: RecordingsSettings,
    pub storage: StorageSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub trusted_proxies: Vec<IpNet>,
    /// From a connection's first byte of a request (or its accept) to the end of the headers.
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// From the end of the headers to the end of the body.
    pub body_read_timeout: Duration,
    /// Open connections on the public listener; lowered at start to fit the fd limit.
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    pub token: Option<SecretString>,
}

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
            lookup_first: crate::processor::RELOOKUP_FIRST,
            lookup_max: crate::processor::RELOOKUP_MAX,
        }
    }
}

impl JasSettings {
    pub fn has_credentials(&self) -> bool {
        self.token.is_some() || (self.client_id.is_some() && self.client_secret.is_some())
    }
}

#[derive(Debug, Clone)]
pub struct TelecmiSettings {
    pub enabled: bool,
    pub path_token: Option<SecretString>,
    pub allow_ips: Vec<IpNet>,
    pub app_id: Option<String>,
    pub secret: Option<SecretString>,
    pub api_base: Url,
}

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
    pub tuning: crate::recordings::RecorderOptions,
}

#[derive(Debug, Clone)]
pub struct StorageSettings {
    pub path: PathBuf,
    pub retention_days: u32,
}

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
}

/// The shape of the merged layers before validation: plain strings, so the validation pass can
/// name the key that is wrong.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Raw {
    server: RawServer,
    admin: RawAdmin,
    jas: RawJas,
    telecmi: RawTelecmi,
    recordings: RawRecordings,
    storage: RawStorage,
    log: RawLog,
}

#[derive(Deserialize)]
#[serde(default)]
struct RawServer {
    listen: String,
    max_body_bytes: u64,
    trusted_proxies: Vec<String>,
    header_read_timeout_secs: u64,
    idle_timeout_secs: u64,
    body_read_timeout_secs: u64,
    max_connections: u64,
}
impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9999".into(),
            max_body_bytes: 65536,
            trusted_proxies: vec![],
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            body_read_timeout_secs: 10,
            max_connections: 512,
        }
    }
}

#[derive(Deserialize)]
#[serde(default)]
struct RawAdmin {
    listen: String,
    token: Option<String>,
    token_file: Option<String>,
}
impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9998".into(),
            token: None,
            token_file: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(default)]
struct RawJas {
    enabled: bool,
    api_base: String,
    token: Option<String>,
    token_file: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_secret_file: Option<String>,
    webhook_secret: OneOrMany,
    webhook_secret_file: OneOrMany,
    callback_url: Option<String>,
    register: bool,
    events: Vec<String>,
    lookup_participants: bool,
}
impl Default for RawJas {
    fn default() -> Self {
        Self {
            enabled: true,
            api_base: "https://api.jasconnect.com/v2".into(),
            token: None,
            token_file: None,
            client_id: None,
            client_secret: None,
            client_secret_file: None,
            webhook_secret: OneOrMany::default(),
            webhook_secret_file: OneOrMany::default(),
            callback_url: None,
            register: true,
            events: vec![
                "call_status".into(),
                "new_recording".into(),
                "call_summary".into(),
            ],
            lookup_participants: true,
        }
    }
}

#[derive(Deserialize)]
#[serde(default)]
struct RawTelecmi {
    enabled: bool,
    path_token: Option<String>,
    path_token_file: Option<String>,
    allow_ips: Vec<String>,
    app_id: Option<String>,
    secret: Option<String>,
    secret_file: Option<String>,
    api_base: String,
}
impl Default for RawTelecmi {
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

#[derive(Deserialize)]
#[serde(default)]
struct RawRecordings {
    enabled: bool,
    dir: String,
    concurrency: u64,
    max_attempts: u64,
    max_bytes: u64,
    download_timeout_secs: u64,
    stall_timeout_secs: u64,
}
impl Default for RawRecordings {
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

#[derive(Deserialize)]
#[serde(default)]
struct RawStorage {
    path: String,
    retention_days: u64,
}
impl Default for RawStorage {
    fn default() -> Self {
        Self {
            path: "data/callhook.db".into(),
            retention_days: 90,
        }
    }
}

#[derive(Deserialize)]
#[serde(default)]
struct RawLog {
    format: String,
    level: String,
    redact_numbers: bool,
}
impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: "json".into(),
            level: "info".into(),
            redact_numbers: false,
        }
    }
}

/// A key that takes one value or a list (`webhook_secret = "a"` or `["a", "b"]`).
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::None => vec![],
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Where the layers come from; tests pass their own environment instead of the process's.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// `--config FILE`; when absent, `config/callhook.toml` is read if it exists.
    pub file: Option<PathBuf>,
    /// `None` reads the process environment.
    pub env: Option<BTreeMap<String, String>>,
}

impl Settings {
    /// Loads every layer and validates the result.
    pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder();
        match &sources.file {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::new(
                        "--config",
                        format!("file {} does not exist", path.display()),
                    ));
                }
                builder = builder.add_source(
                    config::File::from(path.as_path()).format(config::FileFormat::Toml),
                );
            }
            None => {
                let default = Path::new(DEFAULT_CONFIG_FILE);
                if default.exists() {
                    builder = builder
                        .add_source(config::File::from(default).format(config::FileFormat::Toml));
                }
            }
        }
        // The environment layer is built here rather than with `config::Environment`, whose
        // type guessing turns `007` into 7 and a numeric secret into an integer: every value
        // stays text (lists split on commas) and is converted only where the key is a number
        // or a boolean.
        let vars: Vec<(String, String)> = match &sources.env {
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
            let key = rest.to_lowercase().replace("__", ".");
            let set = if SECRET_LIST_KEYS.contains(&key.as_str()) {
                // One secret, commas and all, unless written as a TOML array.
                let items = match value.trim_start().starts_with('[') {
                    true => toml_string_array(&value).ok_or_else(|| {
                        ConfigError::new(
                            &key,
                            "starts with `[` but is not a TOML array of strings like [\"a\", \"b\"] (value not shown)",
                        )
                    })?,
                    false => vec![value],
                };
                builder.set_override(key.as_str(), items)
            } else if LIST_KEYS.contains(&key.as_str()) {
                let items: Vec<String> = match value.trim_start().starts_with('[') {
                    true => toml_string_array(&value).ok_or_else(|| {
                        ConfigError::new(&key, format!("`{value}` is not a TOML array of strings"))
                    })?,
                    false => value
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect(),
                };
                builder.set_override(key.as_str(), items)
            } else {
                builder.set_override(key.as_str(), value)
            };
            builder = set.map_err(|_| ConfigError::new(&key, "unknown key"))?;
        }
        let merged = builder
            .build()
            .map_err(|e| file_error(sources.file.as_deref(), e))?;

        let tree: config::Map<String, config::Value> = merged
            .clone()
            .try_deserialize()
            .map_err(|e| ConfigError::new("config", e.to_string()))?;
        check_known_keys("", &tree)?;

        let raw: Raw = merged.try_deserialize().map_err(|e| {
            let msg = e.to_string();
            // The config crate ends with "for key `x.y`"; lift the key to the front.
            let key = msg
                .rsplit_once("for key `")
                .and_then(|(_, k)| k.split('`').next())
                .unwrap_or("config")
                .to_string();
            if is_secret_key(&key) {
                // The crate quotes the value it could not use; for a secret that is the secret.
                ConfigError::new(key, "is not a string (value not shown)")
            } else {
                ConfigError::new(key, msg)
            }
        })?;
        let mut settings = raw.validate()?;
        if let Some(v) = rust_log.filter(|v| !v.trim().is_empty()) {
            check_log_directives(&v).map_err(|reason| ConfigError::new("RUST_LOG", reason))?;
            settings.log.rust_log = Some(v);
        }
        Ok(settings)
    }

    /// The effective configuration as `check-config` prints it, every secret shown as `***`.
    pub fn redacted(&self) -> Value {
        let secret = |s: &Option<SecretString>| s.as_ref().map(|_| "***");
        json!({
            "server": {
                "listen": self.server.listen.to_string(),
                "max_body_bytes": self.server.max_body_bytes,
                "trusted_proxies": self.server.trusted_proxies.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                "header_read_timeout_secs": self.server.header_read_timeout.as_secs(),
                "idle_timeout_secs": self.server.idle_timeout.as_secs(),
                "body_read_timeout_secs": self.server.body_read_timeout.as_secs(),
                "max_connections": self.server.max_connections,
            },
            "admin": {
                "listen": self.admin.listen.to_string(),
                "token": secret(&self.admin.token),
            },
            "jas": {
                "enabled": self.jas.enabled,
                "api_base": redacted_url(&self.jas.api_base),
                "token": secret(&self.jas.token),
                "client_id": self.jas.client_id,
                "client_secret": secret(&self.jas.client_secret),
                "webhook_secret": self.jas.webhook_secrets.iter().map(|_| "***").collect::<Vec<_>>(),
                "callback_url": self.jas.callback_url.as_ref().map(redacted_url),
                "register": self.jas.register,
                "events": self.jas.events,
                "lookup_participants": self.jas.lookup_participants,
            },
            "telecmi": {
                "enabled": self.telecmi.enabled,
                "path_token": secret(&self.telecmi.path_token),
                "allow_ips": self.telecmi.allow_ips.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                "app_id": self.telecmi.app_id,
                "secret": secret(&self.telecmi.secret),
                "api_base": redacted_url(&self.telecmi.api_base),
            },
            "recordings": {
                "enabled": self.recordings.enabled,
                "dir": self.recordings.dir.display().to_string(),
                "concurrency": self.recordings.concurrency,
                "max_attempts": self.recordings.max_attempts,
                "max_bytes": self.recordings.max_bytes,
                "download_timeout_secs": self.recordings.download_timeout.as_secs(),
                "stall_timeout_secs": self.recordings.stall_timeout.as_secs(),
            },
            "storage": {
                "path": self.storage.path.display().to_string(),
                "retention_days": self.storage.retention_days,
            },
            "log": {
                "format": match self.log.format { LogFormat::Json => "json", LogFormat::Pretty => "pretty" },
                "level": self.log.level,
                "redact_numbers": self.log.redact_numbers,
            },
        })
    }

    /// `redacted()` as TOML text; unset keys are printed as comments so the output shows every key.
    pub fn redacted_toml(&self) -> String {
        let mut out = String::new();
        if let Value::Object(sections) = self.redacted() {
            for (section, keys) in sections {
                out.push_str(&format!("[{section}]\n"));
                if let Value::Object(keys) = keys {
                    for (key, value) in keys {
                        match value {
                            Value::Null => out.push_str(&format!("# {key} is unset\n")),
                            other => out.push_str(&format!("{key} = {other}\n")),
                        }
                    }
                }
                out.push('\n');
            }
        }
        out
    }

    /// The features that are off and why, for `warn` lines at start-up.
    pub fn disabled_features(&self) -> Vec<String> {
        let mut out = vec![];
        if self.jas.enabled {
            if self.jas.webhook_secrets.is_empty() {
                out.push(
                    "jas.webhook_secret is unset: POST /webhooks/jas answers 401 to every request"
                        .to_string(),
                );
            }
            if !self.jas.has_credentials() {
                out.push("no jas.token or jas.client_id/client_secret: no webhook registration, no participant lookups, no JAS recording downloads".to_string());
            } else if self.jas.register && self.jas.callback_url.is_none() {
                out.push("jas.callback_url is unset: webhooks are not registered".to_string());
            }
        }
        if self.telecmi.enabled && self.telecmi.path_token.is_none() {
            out.push(
                "telecmi.path_token is unset: POST /webhooks/telecmi/... answers 404".to_string(),
            );
        }
        if !self.recordings.enabled {
            out.push("recordings.enabled = false: recordings are not downloaded".to_string());
        }
        out
    }
}

fn check_known_keys(
    prefix: &str,
    tree: &config::Map<String, config::Value>,
) -> Result<(), ConfigError> {
    for (key, value) in tree {
        let full = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if prefix.is_empty() {
            match value.clone().into_table() {
                Ok(table) => check_known_keys(&full, &table)?,
                Err(_) => return Err(ConfigError::new(&full, "unknown key")),
            }
        } else if !KNOWN_KEYS.contains(&full.as_str()) {
            return Err(ConfigError::new(&full, "unknown key"));
        }
    }
    Ok(())
}

/// A secret key (or one of its list items): its value is never quoted in an error.
fn is_secret_key(key: &str) -> bool {
    key.contains("token") || key.contains("secret")
}

/// `["a", "b"]` from an environment variable, read as TOML would.
fn toml_string_array(value: &str) -> Option<Vec<String>> {
    #[derive(Deserialize)]
    struct Wrapper {
        v: Vec<String>,
    }
    toml::from_str::<Wrapper>(&format!("v = {value}"))
        .ok()
        .map(|w| w.v)
}

/// A configuration file that does not parse. The TOML parser quotes the offending line, which
/// may hold a secret: only its position and key are reported, never its text.
fn file_error(file: Option<&Path>, e: config::ConfigError) -> ConfigError {
    let config::ConfigError::FileParse { .. } = &e else {
        return ConfigError::new("config", e.to_string());
    };
    let path = file.unwrap_or(Path::new(DEFAULT_CONFIG_FILE));
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let Err(err) = toml::from_str::<toml::Table>(&text) else {
        return ConfigError::new("config", format!("{} is not valid TOML", path.display()));
    };
    let Some(span) = err.span() else {
        return ConfigError::new("config", format!("{} is not valid TOML", path.display()));
    };
    toml_syntax_error(path, &text, span.start, err.message())
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

/// A URL for messages and `check-config`: a password in it is shown as `***`.
pub fn redacted_url(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
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

/// `x` or the contents of the file named by `x_file` (trailing newline trimmed), never both.
fn secret_or_file(
    key: &str,
    value: Option<String>,
    file: Option<String>,
) -> Result<Option<SecretString>, ConfigError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            key,
            format!("both {key} and {key}_file are set; use one"),
        )),
        (Some(v), None) if v.is_empty() => Ok(None),
        (Some(v), None) => Ok(Some(SecretString::from(v))),
        (None, Some(path)) => read_secret_file(&format!("{key}_file"), &path).map(Some),
        (None, None) => Ok(None),
    }
}

fn read_secret_file(key: &str, path: &str) -> Result<SecretString, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {path}: {e}")))?;
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(ConfigError::new(key, format!("{path} is empty")));
    }
    Ok(SecretString::from(trimmed.to_string()))
}

fn socket_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::new(
            key,
            format!("`{value}` is not an address like 127.0.0.1:9998"),
        )
    })
}

fn http_url(key: &str, value: &str) -> Result<Url, ConfigError> {
    // A URL's user info may hold a password: it is never echoed.
    let shown = mask_userinfo(value);
    let url = Url::parse(value)
        .map_err(|e| ConfigError::new(key, format!("`{shown}` is not a URL: {e}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(ConfigError::new(
            key,
            format!("`{shown}` is not an http(s) URL"),
        ));
    }
    Ok(url)
}

/// `scheme://user:pw@host/...` as `scheme://***@host/...`, for text that may not even parse.
fn mask_userinfo(value: &str) -> String {
    let Some((scheme, rest)) = value.split_once("://") else {
        return value.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => value.to_string(),
    }
}

fn cidrs(key: &str, values: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    values
        .iter()
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            let v = v.trim();
            v.parse::<IpNet>()
                .or_else(|_| v.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| ConfigError::new(key, format!("`{v}` is not a CIDR like 10.0.0.0/8")))
        })
        .collect()
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

impl Raw {
    fn validate(self) -> Result<Settings, ConfigError> {
        let Raw {
            server,
            admin,
            jas,
            telecmi,
            recordings,
            storage,
            log,
        } = self;

        if server.max_body_bytes == 0 {
            return Err(ConfigError::new(
                "server.max_body_bytes",
                "must be at least 1",
            ));
        }
        for (key, value) in [
            (
                "server.header_read_timeout_secs",
                server.header_read_timeout_secs,
            ),
            ("server.idle_timeout_secs", server.idle_timeout_secs),
            (
                "server.body_read_timeout_secs",
                server.body_read_timeout_secs,
            ),
            ("server.max_connections", server.max_connections),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
            if value > 1_000_000 {
                return Err(ConfigError::new(key, "must be at most 1000000"));
            }
        }
        let server = ServerSettings {
            listen: socket_addr("server.listen", &server.listen)?,
            max_body_bytes: usize::try_from(server.max_body_bytes)
                .map_err(|_| ConfigError::new("server.max_body_bytes", "too large"))?,
            trusted_proxies: cidrs("server.trusted_proxies", &server.trusted_proxies)?,
            header_read_timeout: Duration::from_secs(server.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(server.idle_timeout_secs),
            body_read_timeout: Duration::from_secs(server.body_read_timeout_secs),
            max_connections: server.max_connections as usize,
        };
        let admin = AdminSettings {
            listen: socket_addr("admin.listen", &admin.listen)?,
            token: secret_or_file("admin.token", admin.token, admin.token_file)?,
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

        let mut webhook_secrets: Vec<SecretString> = jas
            .webhook_secret
            .into_vec()
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(SecretString::from)
            .collect();
        for path in jas.webhook_secret_file.into_vec() {
            webhook_secrets.push(read_secret_file("jas.webhook_secret_file", &path)?);
        }
        let client_secret = secret_or_file(
            "jas.client_secret",
            jas.client_secret,
            jas.client_secret_file,
        )?;
        let client_id = non_empty(jas.client_id);
        if client_id.is_some() != client_secret.is_some() {
            return Err(ConfigError::new(
                "jas.client_id",
                "jas.client_id and jas.client_secret must be set together",
            ));
        }
        let events: Vec<String> = jas
            .events
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
        let jas = JasSettings {
            enabled: jas.enabled,
            api_base: http_url("jas.api_base", &jas.api_base)?,
            token: secret_or_file("jas.token", jas.token, jas.token_file)?,
            client_id,
            client_secret,
            webhook_secrets,
            callback_url: non_empty(jas.callback_url)
                .map(|u| http_url("jas.callback_url", &u))
                .transpose()?,
            register: jas.register,
            events,
            lookup_participants: jas.lookup_participants,
            request_timeout: Duration::from_secs(10),
            retry: JasRetry::default(),
        };

        let path_token = secret_or_file(
            "telecmi.path_token",
            telecmi.path_token,
            telecmi.path_token_file,
        )?;
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
        let telecmi = TelecmiSettings {
            enabled: telecmi.enabled,
            path_token,
            allow_ips: cidrs("telecmi.allow_ips", &telecmi.allow_ips)?,
            app_id: non_empty(telecmi.app_id),
            secret: secret_or_file("telecmi.secret", telecmi.secret, telecmi.secret_file)?,
            api_base: http_url("telecmi.api_base", &telecmi.api_base)?,
        };

        if recordings.concurrency == 0 || recordings.concurrency > 256 {
            return Err(ConfigError::new(
                "recordings.concurrency",
                "must be between 1 and 256",
            ));
        }
        if recordings.max_attempts == 0 || recordings.max_attempts > 1000 {
            return Err(ConfigError::new(
                "recordings.max_attempts",
                "must be between 1 and 1000",
            ));
        }
        if recordings.dir.trim().is_empty() {
            return Err(ConfigError::new("recordings.dir", "must not be empty"));
        }
        if recordings.max_bytes == 0 {
            return Err(ConfigError::new(
                "recordings.max_bytes",
                "must be at least 1",
            ));
        }
        if recordings.download_timeout_secs == 0 || recordings.download_timeout_secs > 7 * 86400 {
            return Err(ConfigError::new(
                "recordings.download_timeout_secs",
                "must be between 1 and 604800 (7 days)",
            ));
        }
        if recordings.stall_timeout_secs == 0
            || recordings.stall_timeout_secs > recordings.download_timeout_secs
        {
            return Err(ConfigError::new(
                "recordings.stall_timeout_secs",
                "must be between 1 and recordings.download_timeout_secs",
            ));
        }
        let recordings = RecordingsSettings {
            enabled: recordings.enabled,
            dir: PathBuf::from(recordings.dir),
            concurrency: recordings.concurrency as usize,
            max_attempts: recordings.max_attempts as u32,
            max_bytes: recordings.max_bytes,
            download_timeout: Duration::from_secs(recordings.download_timeout_secs),
            stall_timeout: Duration::from_secs(recordings.stall_timeout_secs),
            tuning: Default::default(),
        };

        if storage.path.trim().is_empty() {
            return Err(ConfigError::new("storage.path", "must not be empty"));
        }
        if storage.retention_days == 0 || storage.retention_days > 36500 {
            return Err(ConfigError::new(
                "storage.retention_days",
                "must be between 1 and 36500",
            ));
        }
        let storage = StorageSettings {
            path: PathBuf::from(storage.path),
            retention_days: storage.retention_days as u32,
        };

        let format = match log.format.as_str() {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            other => {
                return Err(ConfigError::new(
                    "log.format",
                    format!("`{other}` is neither json nor pretty"),
                ));
            }
        };
        check_log_directives(&log.level).map_err(|reason| ConfigError::new("log.level", reason))?;
        let log = LogSettings {
            format,
            level: log.level,
            rust_log: None,
            redact_numbers: log.redact_numbers,
        };

        Ok(Settings {
            server,
            admin,
            jas,
            telecmi,
            recordings,
            storage,
            log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_env(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        // Removed when it goes out of scope: the tests leave nothing in the temporary directory.
        let empty = write_empty();
        Settings::load(&Sources {
            file: Some(empty.path().join("empty.toml")),
            env: Some(
                vars.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        })
    }

    fn write_empty() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty.toml"), "").unwrap();
        dir
    }

    #[test]
    fn listener_limits_default_and_refuse_zero() {
        let s = load_env(&[]).unwrap();
        assert_eq!(s.server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(s.server.idle_timeout, Duration::from_secs(60));
        assert_eq!(s.server.body_read_timeout, Duration::from_secs(10));
        assert_eq!(s.server.max_connections, 512);
        let s = load_env(&[("CALLHOOK__SERVER__MAX_CONNECTIONS", "8")]).unwrap();
        assert_eq!(s.server.max_connections, 8);
        for key in [
            "header_read_timeout_secs",
            "idle_timeout_secs",
            "body_read_timeout_secs",
            "max_connections",
        ] {
            let var = format!("CALLHOOK__SERVER__{}", key.to_uppercase());
            let err = load_env(&[(var.as_str(), "0")]).unwrap_err();
            assert_eq!(err.key, format!("server.{key}"));
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = load_env(&[]).unwrap();
        assert_eq!(s.server.listen.to_string(), "0.0.0.0:9999");
        assert_eq!(s.server.max_body_bytes, 65536);
        assert_eq!(s.admin.listen.to_string(), "127.0.0.1:9998");
        assert_eq!(s.jas.api_base.as_str(), "https://api.jasconnect.com/v2");
        assert_eq!(
            s.jas.events,
            vec!["call_status", "new_recording", "call_summary"]
        );
        assert!(s.jas.register && s.jas.lookup_participants && s.jas.enabled);
        assert_eq!(s.recordings.concurrency, 4);
        assert_eq!(s.recordings.max_attempts, 8);
        assert_eq!(s.storage.retention_days, 90);
        assert_eq!(s.log.format, LogFormat::Json);
        assert_eq!(s.telecmi.api_base.as_str(), "https://rest.telecmi.com/v2");
    }

    #[test]
    fn environment_overrides_and_parses_lists() {
        let s = load_env(&[
            ("CALLHOOK__JAS__WEBHOOK_SECRET", r#"["one", "two"]"#),
            ("CALLHOOK__SERVER__MAX_BODY_BYTES", "1024"),
            ("CALLHOOK__JAS__LOOKUP_PARTICIPANTS", "false"),
            ("CALLHOOK__JAS__TOKEN", "12345"),
            ("CALLHOOK__TELECMI__ALLOW_IPS", "10.0.0.0/8,192.168.1.5"),
        ])
        .unwrap();
        let secrets: Vec<_> = s
            .jas
            .webhook_secrets
            .iter()
            .map(|s| s.expose_secret().to_string())
            .collect();
        assert_eq!(secrets, vec!["one", "two"]);
        assert_eq!(s.server.max_body_bytes, 1024);
        assert!(!s.jas.lookup_participants);
        assert_eq!(s.jas.token.as_ref().unwrap().expose_secret(), "12345");
        assert_eq!(s.telecmi.allow_ips.len(), 2);
    }

    #[test]
    fn environment_values_stay_text_where_the_key_is_text() {
        let s = load_env(&[
            ("CALLHOOK__JAS__CLIENT_ID", "007"),
            ("CALLHOOK__JAS__CLIENT_SECRET", "0123"),
            ("CALLHOOK__TELECMI__APP_ID", "01e3"),
            ("CALLHOOK__JAS__WEBHOOK_SECRET", "12345678"),
            ("CALLHOOK__TELECMI__PATH_TOKEN", "0123456789"),
            ("CALLHOOK__RECORDINGS__ENABLED", "false"),
            ("CALLHOOK__RECORDINGS__CONCURRENCY", "8"),
        ])
        .unwrap();
        assert_eq!(s.jas.client_id.as_deref(), Some("007"));
        assert_eq!(s.jas.client_secret.unwrap().expose_secret(), "0123");
        assert_eq!(s.telecmi.app_id.as_deref(), Some("01e3"));
        assert_eq!(s.jas.webhook_secrets[0].expose_secret(), "12345678");
        assert_eq!(s.telecmi.path_token.unwrap().expose_secret(), "0123456789");
        assert!(!s.recordings.enabled);
        assert_eq!(s.recordings.concurrency, 8);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = load_env(&[("CALLHOOK__JAS__WEBHOOK_SECRETS", "x")]).unwrap_err();
        assert_eq!(err.key, "jas.webhook_secrets");
        let err = load_env(&[("CALLHOOK__NOPE__X", "x")]).unwrap_err();
        assert_eq!(err.key, "nope.x");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (var, value, key) in [
            ("CALLHOOK__SERVER__LISTEN", "nope", "server.listen"),
            ("CALLHOOK__ADMIN__LISTEN", "1.2.3.4", "admin.listen"),
            ("CALLHOOK__JAS__API_BASE", "not a url", "jas.api_base"),
            (
                "CALLHOOK__SERVER__TRUSTED_PROXIES",
                "10.0.0.0/99",
                "server.trusted_proxies",
            ),
            ("CALLHOOK__LOG__FORMAT", "xml", "log.format"),
            (
                "CALLHOOK__RECORDINGS__CONCURRENCY",
                "0",
                "recordings.concurrency",
            ),
            (
                "CALLHOOK__JAS__TOKEN_FILE",
                "/nonexistent/callhook",
                "jas.token_file",
            ),
            (
                "CALLHOOK__SERVER__MAX_BODY_BYTES",
                "lots",
                "server.max_body_bytes",
            ),
        ] {
            let err = load_env(&[(var, value)]).unwrap_err();
            assert_eq!(err.key, key, "{var}={value}: {err}");
        }
    }

    fn secrets(s: &Settings) -> Vec<String> {
        s.jas
            .webhook_secrets
            .iter()
            .map(|s| s.expose_secret().to_string())
            .collect()
    }

    #[test]
    fn an_environment_secret_is_one_value_commas_and_all() {
        let s = load_env(&[
            ("CALLHOOK__JAS__WEBHOOK_SECRET", "ab,cd"),
            ("CALLHOOK__JAS__TOKEN", "t,k"),
            ("CALLHOOK__ADMIN__TOKEN", "a,b"),
            ("CALLHOOK__JAS__CLIENT_ID", "id"),
            ("CALLHOOK__JAS__CLIENT_SECRET", "c,s"),
            ("CALLHOOK__TELECMI__SECRET", "x,y"),
        ])
        .unwrap();
        assert_eq!(secrets(&s), vec!["ab,cd"]);
        assert_eq!(s.jas.token.unwrap().expose_secret(), "t,k");
        assert_eq!(s.admin.token.unwrap().expose_secret(), "a,b");
        assert_eq!(s.jas.client_secret.unwrap().expose_secret(), "c,s");
        assert_eq!(s.telecmi.secret.unwrap().expose_secret(), "x,y");
        // A rotation is a TOML array, in the variable too; its items may hold commas.
        let s = load_env(&[("CALLHOOK__JAS__WEBHOOK_SECRET", r#"["a,b", 'c']"#)]).unwrap();
        assert_eq!(secrets(&s), vec!["a,b", "c"]);
        // An array that does not parse is an error that does not quote it.
        let err = load_env(&[("CALLHOOK__JAS__WEBHOOK_SECRET", r#"["hunter2""#)]).unwrap_err();
        assert_eq!(err.key, "jas.webhook_secret");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        // Lists that are not secrets still split on commas, or take an array.
        let s = load_env(&[("CALLHOOK__JAS__EVENTS", r#"["call_status"]"#)]).unwrap();
        assert_eq!(s.jas.events, vec!["call_status"]);
    }

    #[test]
    fn log_levels_are_levels_or_directives() {
        for ok in [
            "error",
            "warn",
            "info",
            "debug",
            "trace",
            "off",
            "INFO",
            "info,callhook=debug",
            "callhook::processor=trace",
            "warn,tower_http=debug,hyper=off",
            "callhook[request{path}]=debug",
        ] {
            assert!(check_log_directives(ok).is_ok(), "{ok} refused");
            let s = load_env(&[("CALLHOOK__LOG__LEVEL", ok)]).unwrap();
            assert_eq!(s.log.directives(), ok);
        }
        for bad in [
            "warning",
            "verbose",
            "",
            " , ",
            "info,warning",
            "callhook=loud",
            "callhook=",
            "=debug",
            "callhook",
        ] {
            let err = load_env(&[("CALLHOOK__LOG__LEVEL", bad)]).unwrap_err();
            assert_eq!(err.key, "log.level", "{bad}: {err}");
        }
    }

    #[test]
    fn rust_log_overrides_and_is_checked_the_same_way() {
        let s = load_env(&[("RUST_LOG", "debug"), ("CALLHOOK__LOG__LEVEL", "warn")]).unwrap();
        assert_eq!(s.log.directives(), "debug");
        assert_eq!(s.log.level, "warn");
        let err = load_env(&[("RUST_LOG", "warning")]).unwrap_err();
        assert_eq!(err.key, "RUST_LOG");
        assert_eq!(
            load_env(&[("RUST_LOG", "")]).unwrap().log.directives(),
            "info"
        );
    }

    #[test]
    fn jas_events_are_the_four_jas_offers() {
        let s = load_env(&[(
            "CALLHOOK__JAS__EVENTS",
            "call_status,new_recording,call_summary,call_analysis",
        )])
        .unwrap();
        assert_eq!(s.jas.events.len(), 4);
        for bad in ["call_stauts", "callStatus", "call_status,new_recordings"] {
            let err = load_env(&[("CALLHOOK__JAS__EVENTS", bad)]).unwrap_err();
            assert_eq!(err.key, "jas.events", "{bad}: {err}");
        }
    }

    #[test]
    fn admin_off_loopback_needs_a_token() {
        let err = load_env(&[("CALLHOOK__ADMIN__LISTEN", "0.0.0.0:9998")]).unwrap_err();
        assert_eq!(err.key, "admin.listen");
        let err = load_env(&[("CALLHOOK__ADMIN__LISTEN", "[::]:9998")]).unwrap_err();
        assert_eq!(err.key, "admin.listen");
        let s = load_env(&[
            ("CALLHOOK__ADMIN__LISTEN", "0.0.0.0:9998"),
            ("CALLHOOK__ADMIN__TOKEN", "t"),
        ])
        .unwrap();
        assert!(!s.admin.listen.ip().is_loopback());
        for loopback in ["127.0.0.1:9998", "127.0.0.2:1", "[::1]:9998"] {
            load_env(&[("CALLHOOK__ADMIN__LISTEN", loopback)]).unwrap();
        }
    }

    #[test]
    fn url_passwords_are_never_echoed() {
        for value in ["ftp://u:pw-secret@host/x", "https://u:pw-secret@ho st/"] {
            let err = load_env(&[("CALLHOOK__JAS__API_BASE", value)]).unwrap_err();
            assert_eq!(err.key, "jas.api_base");
            assert!(!err.to_string().contains("pw-secret"), "{err}");
        }
        let s = load_env(&[("CALLHOOK__JAS__API_BASE", "https://u:pw-secret@host/v2")]).unwrap();
        let text = s.redacted_toml();
        assert!(!text.contains("pw-secret"), "{text}");
        assert!(text.contains("https://u:***@host/v2"), "{text}");
        assert_eq!(mask_userinfo("a://u:p@h/x@y"), "a://***@h/x@y");
        assert_eq!(mask_userinfo("not a url"), "not a url");
    }

    #[test]
    fn toml_syntax_errors_name_the_line_and_key_not_its_text() {
        let dir = tempfile::tempdir().unwrap();
        for (text, key, line) in [
            (
                "[jas]\nwebhook_secret = \"hunter2\n",
                "jas.webhook_secret",
                2,
            ),
            (
                "[jas]\nregister = false\n\n[admin]\ntoken = hunter2\n",
                "admin.token",
                5,
            ),
            ("token = 'hunter2\n", "token", 1),
            ("[jas]\nhunter2\n", "config", 2),
        ] {
            let path = dir.path().join("c.toml");
            std::fs::write(&path, text).unwrap();
            let err = Settings::load(&Sources {
                file: Some(path),
                env: Some(BTreeMap::new()),
            })
            .unwrap_err();
            let shown = err.to_string();
            assert!(!shown.contains("hunter2"), "{shown}");
            assert_eq!(err.key, key, "{shown}");
            assert!(shown.contains(&format!("line {line}, column")), "{shown}");
        }
    }

    #[test]
    fn secret_values_of_the_wrong_type_are_not_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[jas]\ntoken = [\"hunter2\"]\n").unwrap();
        let err = Settings::load(&Sources {
            file: Some(path),
            env: Some(BTreeMap::new()),
        })
        .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.key.starts_with("jas.token"), "{err}");
    }

    #[test]
    fn secret_files_are_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        let s =
            load_env(&[("CALLHOOK__JAS__WEBHOOK_SECRET_FILE", path.to_str().unwrap())]).unwrap();
        assert_eq!(s.jas.webhook_secrets[0].expose_secret(), "s3cret");
    }

    #[test]
    fn redacted_output_never_shows_secrets() {
        let s = load_env(&[
            ("CALLHOOK__JAS__WEBHOOK_SECRET", "hunter2"),
            ("CALLHOOK__JAS__TOKEN", "tok-abc"),
            ("CALLHOOK__ADMIN__TOKEN", "adm-xyz"),
            ("CALLHOOK__TELECMI__PATH_TOKEN", "path-123"),
        ])
        .unwrap();
        let text = s.redacted_toml();
        for secret in ["hunter2", "tok-abc", "adm-xyz", "path-123"] {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
            assert!(
                !format!("{s:?}").contains(secret),
                "{secret} leaked in Debug"
            );
        }
        assert!(text.contains("token = \"***\""));
    }

    #[test]
    fn toml_file_layer_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[jas]\nwebhook_secret = [\"a\", \"b\"]\nregister = false\n[storage]\nretention_days = 7\n",
        )
        .unwrap();
        let s = Settings::load(&Sources {
            file: Some(path),
            env: Some(BTreeMap::new()),
        })
        .unwrap();
        assert_eq!(s.jas.webhook_secrets.len(), 2);
        assert!(!s.jas.register);
        assert_eq!(s.storage.retention_days, 7);
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    const EXAMPLE: &str = include_str!("../config/callhook.toml");

    #[test]
    fn the_example_documents_every_key() {
        for key in KNOWN_KEYS {
            let (_, name) = key.split_once('.').unwrap();
            assert!(
                EXAMPLE.contains(&format!("# {name} = "))
                    || EXAMPLE.contains(&format!("#   {name} = ")),
                "config/callhook.toml does not document {key}"
            );
        }
    }

    #[test]
    fn the_example_loads_as_is_and_uncommented() {
        let dir = tempfile::tempdir().unwrap();
        let as_is = dir.path().join("as_is.toml");
        std::fs::write(&as_is, EXAMPLE).unwrap();
        Settings::load(&Sources {
            file: Some(as_is),
            env: Some(BTreeMap::new()),
        })
        .unwrap();

        // Uncomment every example value except the `_file` alternatives (indented).
        let uncommented: String = EXAMPLE
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.split_once(" = ").is_some_and(|(k, _)| {
                        k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
                {
                    rest.to_string()
                }
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let path = dir.path().join("uncommented.toml");
        std::fs::write(&path, uncommented).unwrap();
        let s = Settings::load(&Sources {
            file: Some(path),
            env: Some(BTreeMap::new()),
        })
        .unwrap();
        assert_eq!(s.jas.webhook_secrets.len(), 2);
        assert!(s.telecmi.path_token.is_some());
    }
}
