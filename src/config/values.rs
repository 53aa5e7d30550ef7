//! How one value is read and checked, shared by the sections: secrets and their `_file`
//! variants, addresses, URLs (never echoing a password), CIDRs, and the serde readers that let
//! an environment value (always text) stand for a number, a boolean or a list.

use std::fmt;
use std::net::SocketAddr;

use ipnet::IpNet;
use secrecy::SecretString;
use serde::Deserializer;
use serde::de::{self, SeqAccess, Visitor};
use url::Url;

use super::ConfigError;

/// `x` or the contents of the file named by `x_file` (trailing newline trimmed), never both.
pub(super) fn secret_or_file(
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

pub(super) fn read_secret_file(key: &str, path: &str) -> Result<SecretString, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {path}: {e}")))?;
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(ConfigError::new(key, format!("{path} is empty")));
    }
    Ok(SecretString::from(trimmed.to_string()))
}

/// `None` for `None` and for a secret shown as `***`.
pub(super) fn shown(secret: &Option<SecretString>) -> Option<&'static str> {
    secret.as_ref().map(|_| "***")
}

pub(super) fn socket_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::new(
            key,
            format!("`{value}` is not an address like 127.0.0.1:9998"),
        )
    })
}

pub(super) fn http_url(key: &str, value: &str) -> Result<Url, ConfigError> {
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

/// A URL for messages and `check-config`: a password in it is shown as `***`.
pub fn redacted_url(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

/// `scheme://user:pw@host/...` as `scheme://***@host/...`, for text that may not even parse.
pub(super) fn mask_userinfo(value: &str) -> String {
    let Some((scheme, rest)) = value.split_once("://") else {
        return value.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => value.to_string(),
    }
}

pub(super) fn cidrs(key: &str, values: &[String]) -> Result<Vec<IpNet>, ConfigError> {
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

pub(super) fn cidr_texts(nets: &[IpNet]) -> Vec<String> {
    nets.iter().map(|n| n.to_string()).collect()
}

pub(super) fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// `["a", "b"]` from an environment variable, read as TOML would.
fn toml_string_array(value: &str) -> Option<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Wrapper {
        v: Vec<String>,
    }
    toml::from_str::<Wrapper>(&format!("v = {value}"))
        .ok()
        .map(|w| w.v)
}

// The serde readers below. The environment layer puts every value in as text (a numeric
// secret stays `"007"`, not 7); the key's own type says how its text is read.

/// A number, or its text.
pub(super) fn number<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            v.trim()
                .parse()
                .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }
    d.deserialize_any(V)
}

/// A list of numbers: a TOML array (of numbers or their text), or text that is one or is split
/// on commas (`"5, 300"` from the environment).
pub(super) fn number_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    #[derive(serde::Deserialize)]
    struct Item(#[serde(deserialize_with = "number")] u64);
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<u64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of whole numbers")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = vec![];
            while let Some(Item(n)) = seq.next_element::<Item>()? {
                out.push(n);
            }
            Ok(out)
        }
        fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
            value
                .trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse()
                        .map_err(|_| E::custom(format!("`{s}` is not a whole number")))
                })
                .collect()
        }
    }
    d.deserialize_any(V)
}

/// A boolean, or its text: `true`, `1`, `on`, `yes` or `false`, `0`, `off`, `no` (any case).
pub(super) fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a boolean")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
            Ok(v != 0)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
            Ok(v != 0)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
            match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "on" | "yes" => Ok(true),
                "false" | "0" | "off" | "no" => Ok(false),
                _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
            }
        }
    }
    d.deserialize_any(V)
}

/// Text; a number or boolean written bare in TOML (`client_id = 7`) is taken as its text.
pub(super) fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
    }
    d.deserialize_any(V)
}

/// A list: a TOML array, or text that is one (`["a", "b"]`) or is split on commas.
pub(super) fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    d.deserialize_any(ListVisitor { secret: false })
}

/// A list of secrets (a rotation): a TOML array, or text that is one, or else one secret,
/// commas and all. A secret is never split on commas, and never quoted in an error.
pub(super) fn secret_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    d.deserialize_any(ListVisitor { secret: true })
}

struct ListVisitor {
    secret: bool,
}

impl<'de> Visitor<'de> for ListVisitor {
    type Value = Vec<String>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or an array of strings")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = vec![];
        while let Some(item) = seq.next_element::<String>()? {
            out.push(item);
        }
        Ok(out)
    }
    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        if value.trim_start().starts_with('[') {
            return toml_string_array(value).ok_or_else(|| match self.secret {
                true => E::custom(
                    "starts with `[` but is not a TOML array of strings like [\"a\", \"b\"] (value not shown)",
                ),
                false => E::custom(format!("`{value}` is not a TOML array of strings")),
            });
        }
        Ok(match self.secret {
            true => vec![value.to_string()],
            false => value
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        })
    }
}
