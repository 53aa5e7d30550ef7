//! Settings: compiled-in defaults, then the TOML file, then `CALLHOOK__SECTION__KEY` environment
//! variables; `*_file` variants for every secret; one validation pass that names the bad key.
//! Secrets live in `SecretString` so that no `Debug`, log line or reply can print them.
//!
//! One file per section: it owns its keys (a serde struct that refuses unknown ones), their
//! defaults, their validation, its start-up warnings and its redacted output. This file merges
//! the layers (`layers.rs`), reads them into the sections and puts the sections together.

mod admin;
mod calls;
mod jas;
mod layers;
mod log;
mod outbound;
mod recordings;
mod server;
mod storage;
mod telecmi;
mod ui;
mod values;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Value, json};

pub use admin::AdminSettings;
pub use calls::CallsSettings;
pub use jas::{JAS_EVENTS, JasRetry, JasSettings, RELOOKUP_FIRST, RELOOKUP_MAX};
pub use log::{LogFormat, LogSettings, check_log_directives};
pub use outbound::{Endpoint, OutboundSettings};
pub use recordings::{RecorderOptions, RecordingsSettings};
pub use server::ServerSettings;
pub use storage::StorageSettings;
pub use telecmi::TelecmiSettings;
pub use ui::UiSettings;
pub use values::redacted_url;

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
    pub outbound: OutboundSettings,
    pub calls: CallsSettings,
    pub storage: StorageSettings,
    pub ui: UiSettings,
    pub log: LogSettings,
}

/// The merged layers as written, one struct per section; a key no section has is refused by
/// serde (`deny_unknown_fields`), naming it.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Raw {
    server: server::Raw,
    admin: admin::Raw,
    jas: jas::Raw,
    telecmi: telecmi::Raw,
    recordings: recordings::Raw,
    outbound: outbound::Raw,
    calls: calls::Raw,
    storage: storage::Raw,
    ui: ui::Raw,
    log: log::Raw,
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
        let mut table = layers::file(sources.file.as_deref())?;
        let rust_log = layers::environment(&mut table, sources.env.as_ref());
        let mut settings = Raw::read(table)?.validate()?;
        settings.log.set_rust_log(rust_log)?;
        Ok(settings)
    }

    /// The effective configuration as `check-config` prints it, every secret shown as `***`.
    pub fn redacted(&self) -> Value {
        json!({
            "server": self.server.redacted(),
            "admin": self.admin.redacted(),
            "jas": self.jas.redacted(),
            "telecmi": self.telecmi.redacted(),
            "recordings": self.recordings.redacted(),
            "outbound": self.outbound.redacted(),
            "calls": self.calls.redacted(),
            "storage": self.storage.redacted(),
            "ui": self.ui.redacted(),
            "log": self.log.redacted(),
        })
    }

    /// `redacted()` as TOML text; unset keys are printed as comments so the output shows every key.
    pub fn redacted_toml(&self) -> String {
        let mut out = String::new();
        if let Value::Object(sections) = self.redacted() {
            for (section, keys) in sections {
                out.push_str(&format!("[{section}]\n"));
                // An array of tables (`[[outbound.endpoints]]`) goes after the section's keys.
                let mut tables = String::new();
                if let Value::Object(keys) = keys {
                    for (key, value) in keys {
                        match value {
                            Value::Null => out.push_str(&format!("# {key} is unset\n")),
                            Value::Array(items) if items.iter().all(Value::is_object) => {
                                for item in items {
                                    tables.push_str(&format!("\n[[{section}.{key}]]\n"));
                                    for (k, v) in item.as_object().into_iter().flatten() {
                                        tables.push_str(&format!("{k} = {v}\n"));
                                    }
                                }
                                if tables.is_empty() {
                                    out.push_str(&format!("{key} = []\n"));
                                }
                            }
                            other => out.push_str(&format!("{key} = {other}\n")),
                        }
                    }
                }
                out.push_str(&tables);
                out.push('\n');
            }
        }
        out
    }

    /// The features that are off and why, for `warn` lines at start-up.
    pub fn disabled_features(&self) -> Vec<String> {
        let mut out = self.jas.warnings();
        out.extend(self.telecmi.warnings());
        out.extend(self.recordings.warnings());
        out.extend(self.outbound.warnings());
        out
    }
}

impl Raw {
    /// The merged table read into the sections; an error names the key it is about.
    fn read(table: toml::Table) -> Result<Raw, ConfigError> {
        serde_path_to_error::deserialize(table.clone()).map_err(|e| {
            let mut key = e.path().to_string();
            let reason = e.inner().message();
            if reason.starts_with("unknown field") {
                // An unknown section is named by its first key, as `section.key`.
                if let Some(first) = table.get(&key).and_then(|v| v.as_table()?.keys().next()) {
                    key = format!("{key}.{first}");
                }
                return ConfigError::new(key, "unknown key");
            }
            if is_secret_key(&key) && !reason.contains("(value not shown)") {
                // serde quotes the value it could not use; for a secret that is the secret.
                return ConfigError::new(key, "is not a string (value not shown)");
            }
            ConfigError::new(key, reason)
        })
    }

    fn validate(self) -> Result<Settings, ConfigError> {
        Ok(Settings {
            server: self.server.validate()?,
            admin: self.admin.validate()?,
            jas: self.jas.validate()?,
            telecmi: self.telecmi.validate()?,
            recordings: self.recordings.validate()?,
            outbound: self.outbound.validate()?,
            calls: self.calls.validate()?,
            storage: self.storage.validate()?,
            ui: self.ui.validate()?,
            log: self.log.validate()?,
        })
    }
}

/// A secret key (or one of its list items): its value is never quoted in an error.
fn is_secret_key(key: &str) -> bool {
    key.contains("token") || key.contains("secret")
}

#[cfg(test)]
mod tests {
    use super::values::mask_userinfo;
    use super::*;
    use secrecy::ExposeSecret;
    use std::time::Duration;

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
        assert!(s.ui.enabled);
    }

    #[test]
    fn the_page_can_be_turned_off_and_check_config_says_so() {
        let s = load_env(&[("CALLHOOK__UI__ENABLED", "false")]).unwrap();
        assert!(!s.ui.enabled);
        assert!(s.redacted_toml().contains("[ui]\nenabled = false\n"));
        let err = load_env(&[("CALLHOOK__UI__ENABLED", "maybe")]).unwrap_err();
        assert_eq!(err.key, "ui.enabled");
    }

    #[test]
    fn reconcile_secs_is_60_by_default_0_turns_it_off_and_a_day_at_most() {
        let every = |v: &str| load_env(&[("CALLHOOK__JAS__RECONCILE_SECS", v)]);
        assert_eq!(
            load_env(&[]).unwrap().jas.reconcile_every,
            Some(std::time::Duration::from_secs(60))
        );
        assert_eq!(every("0").unwrap().jas.reconcile_every, None);
        assert_eq!(
            every("5").unwrap().jas.reconcile_every,
            Some(std::time::Duration::from_secs(5))
        );
        for bad in ["86401", "-1", "soon"] {
            let e = every(bad).unwrap_err().to_string();
            assert!(e.contains("jas.reconcile_secs"), "{bad}: {e}");
        }
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

    /// Settings from a configuration file of `text` and no environment.
    pub(super) fn load_file(text: &str) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        Settings::load(&Sources {
            file: Some(path),
            env: Some(BTreeMap::new()),
        })
    }

    #[test]
    fn unknown_file_keys_are_refused_by_name() {
        for (text, key) in [
            ("[jas]\nwebhook_secrets = \"x\"\n", "jas.webhook_secrets"),
            ("[nope]\nx = 1\n", "nope.x"),
            ("x = 1\n", "x"),
            ("[server.listen]\nport = 1\n", "server.listen"),
        ] {
            let err = load_file(text).unwrap_err();
            assert_eq!(err.key, key, "{text}: {err}");
            if key != "server.listen" {
                assert_eq!(err.reason, "unknown key", "{text}: {err}");
            }
        }
    }

    #[test]
    fn file_values_are_read_as_their_key_wants() {
        // A bare number in a text key is its text; text in a number or boolean key is read.
        let s = load_file(
            "[jas]\nclient_id = 7\nclient_secret = 123\nregister = \"false\"\n\
             [server]\nmax_connections = \"8\"\ntrusted_proxies = \"10.0.0.0/8, 10.1.0.0/16\"\n",
        )
        .unwrap();
        assert_eq!(s.jas.client_id.as_deref(), Some("7"));
        assert_eq!(s.jas.client_secret.unwrap().expose_secret(), "123");
        assert!(!s.jas.register);
        assert_eq!(s.server.max_connections, 8);
        assert_eq!(s.server.trusted_proxies.len(), 2);
        // A number that is not one names its key, and a secret's value is not quoted.
        let err = load_file("[server]\nmax_connections = \"many\"\n").unwrap_err();
        assert_eq!(err.key, "server.max_connections", "{err}");
        let err = load_file("[admin]\ntoken = [\"hunter2\"]\n").unwrap_err();
        assert_eq!(err.key, "admin.token", "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = load_env(&[("CALLHOOK__RECORDINGS__ENABLED", "maybe")]).unwrap_err();
        assert_eq!(err.key, "recordings.enabled", "{err}");
        for (text, on) in [("1", true), ("Yes", true), ("off", false), ("0", false)] {
            let s = load_env(&[("CALLHOOK__RECORDINGS__ENABLED", text)]).unwrap();
            assert_eq!(s.recordings.enabled, on, "{text}");
        }
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

    const EXAMPLE: &str = include_str!("../../config/callhook.toml");

    /// The field names serde gives `T::deserialize`: the keys a section takes.
    fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
        struct Fields(Option<&'static [&'static str]>);
        #[derive(Debug)]
        struct Stop;
        impl std::fmt::Display for Stop {
            fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("stop")
            }
        }
        impl std::error::Error for Stop {}
        impl serde::de::Error for Stop {
            fn custom<M: std::fmt::Display>(_: M) -> Self {
                Stop
            }
        }
        impl<'de> serde::Deserializer<'de> for &mut Fields {
            type Error = Stop;
            fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
                Err(Stop)
            }
            fn deserialize_struct<V: serde::de::Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Stop> {
                self.0 = Some(fields);
                Err(Stop)
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 char str string bytes byte_buf
                option unit unit_struct newtype_struct seq tuple tuple_struct map enum
                identifier ignored_any
            }
        }
        let mut fields = Fields(None);
        let _ = T::deserialize(&mut fields);
        fields.0.expect("a struct")
    }

    /// Every key a section takes, as `section.key`: what serde accepts, not a list kept by hand.
    fn known_keys() -> Vec<String> {
        let sections = [
            ("server", fields_of::<server::Raw>()),
            ("admin", fields_of::<admin::Raw>()),
            ("jas", fields_of::<jas::Raw>()),
            ("telecmi", fields_of::<telecmi::Raw>()),
            ("recordings", fields_of::<recordings::Raw>()),
            ("outbound", fields_of::<outbound::Raw>()),
            ("calls", fields_of::<calls::Raw>()),
            ("storage", fields_of::<storage::Raw>()),
            ("ui", fields_of::<ui::Raw>()),
            ("log", fields_of::<log::Raw>()),
        ];
        assert_eq!(
            fields_of::<Raw>(),
            sections.map(|(name, _)| name),
            "a section missing here"
        );
        sections
            .iter()
            .flat_map(|(section, keys)| keys.iter().map(move |k| format!("{section}.{k}")))
            .collect()
    }

    #[test]
    fn the_example_documents_every_key() {
        let known = known_keys();
        assert_eq!(known.len(), 48, "{known:?}");
        for key in &known {
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
