//! `[server]`: the public listener.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ConfigError;
use super::values::{cidr_texts, cidrs, list, number, socket_addr};

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

/// The section as written, before validation.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct Raw {
    listen: String,
    #[serde(deserialize_with = "number")]
    max_body_bytes: u64,
    #[serde(deserialize_with = "list")]
    trusted_proxies: Vec<String>,
    #[serde(deserialize_with = "number")]
    header_read_timeout_secs: u64,
    #[serde(deserialize_with = "number")]
    idle_timeout_secs: u64,
    #[serde(deserialize_with = "number")]
    body_read_timeout_secs: u64,
    #[serde(deserialize_with = "number")]
    max_connections: u64,
}

impl Default for Raw {
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

impl Raw {
    pub(super) fn validate(self) -> Result<ServerSettings, ConfigError> {
        if self.max_body_bytes == 0 {
            return Err(ConfigError::new(
                "server.max_body_bytes",
                "must be at least 1",
            ));
        }
        for (key, value) in [
            (
                "server.header_read_timeout_secs",
                self.header_read_timeout_secs,
            ),
            ("server.idle_timeout_secs", self.idle_timeout_secs),
            ("server.body_read_timeout_secs", self.body_read_timeout_secs),
            ("server.max_connections", self.max_connections),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
            if value > 1_000_000 {
                return Err(ConfigError::new(key, "must be at most 1000000"));
            }
        }
        Ok(ServerSettings {
            listen: socket_addr("server.listen", &self.listen)?,
            max_body_bytes: usize::try_from(self.max_body_bytes)
                .map_err(|_| ConfigError::new("server.max_body_bytes", "too large"))?,
            trusted_proxies: cidrs("server.trusted_proxies", &self.trusted_proxies)?,
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            body_read_timeout: Duration::from_secs(self.body_read_timeout_secs),
            max_connections: self.max_connections as usize,
        })
    }
}

impl ServerSettings {
    /// The section as `check-config` prints it.
    pub(super) fn redacted(&self) -> Value {
        json!({
            "listen": self.listen.to_string(),
            "max_body_bytes": self.max_body_bytes,
            "trusted_proxies": cidr_texts(&self.trusted_proxies),
            "header_read_timeout_secs": self.header_read_timeout.as_secs(),
            "idle_timeout_secs": self.idle_timeout.as_secs(),
            "body_read_timeout_secs": self.body_read_timeout.as_secs(),
            "max_connections": self.max_connections,
        })
    }
}
