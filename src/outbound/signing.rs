//! Standard Webhooks signatures for callhook's outbound deliveries (SPEC §7): `webhook-id`,
//! `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`,
//! under each secret's key (`whsec_` + base64); during a rotation one space-separated entry per
//! secret, so a receiver holding either key verifies.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox};
use sha2::Sha256;

const PREFIX: &str = "whsec_";

/// Why a configured secret cannot sign.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("must start with whsec_")]
    Prefix,
    #[error("is not base64 after whsec_")]
    Base64,
    #[error("is empty after whsec_")]
    Empty,
}

/// A signing key, decoded from its `whsec_…` text. The bytes are kept secret (never printed).
pub struct Key(SecretBox<Vec<u8>>);

impl Key {
    pub fn parse(text: &str) -> Result<Key, KeyError> {
        let encoded = text.strip_prefix(PREFIX).ok_or(KeyError::Prefix)?;
        let bytes = STANDARD.decode(encoded).map_err(|_| KeyError::Base64)?;
        if bytes.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Key(SecretBox::new(Box::new(bytes))))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.expose_secret())
            .expect("HMAC takes a key of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// `v1,<base64 signature>` of one delivery under this key.
    fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mac = self.mac(id, timestamp, body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    /// Whether one of a `webhook-signature` header's `v1,` entries is this key's (compared in
    /// constant time): what a receiver does, here `demo`'s own.
    pub fn verifies(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        header.split(' ').any(|entry| {
            entry
                .strip_prefix("v1,")
                .and_then(|sig| STANDARD.decode(sig).ok())
                .is_some_and(|sig| self.mac(id, timestamp, body).verify_slice(&sig).is_ok())
        })
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(***)")
    }
}

/// The `webhook-signature` header of one delivery: one entry per key, space-separated.
pub fn signature(keys: &[Key], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| k.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published test vector (standard-webhooks' reference libraries).
    #[test]
    fn the_published_test_vector() {
        let key = Key::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            signature(
                &[key],
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1649367553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn an_independent_verifier_accepts_each_key_of_a_rotation() {
        let (old, new) = (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        );
        let keys = [Key::parse(old).unwrap(), Key::parse(new).unwrap()];
        let body = br#"{"id":"evt_1","type":"call.started"}"#;
        let now = chrono::Utc::now().timestamp();
        let header = signature(&keys, "evt_1", now, body);
        assert_eq!(header.split(' ').count(), 2, "{header}");
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("webhook-id", "evt_1".parse().unwrap());
        headers.insert("webhook-timestamp", now.to_string().parse().unwrap());
        headers.insert("webhook-signature", header.parse().unwrap());
        for secret in [old, new] {
            standardwebhooks::Webhook::new(secret)
                .unwrap()
                .verify(body, &headers)
                .unwrap_or_else(|e| panic!("{secret}: {e}"));
        }
        let other = standardwebhooks::Webhook::new("whsec_dGhpcyBpcyBub3QgdGhlIGtleQ==").unwrap();
        assert!(other.verify(body, &headers).is_err());
        // Another body under the same headers does not verify.
        let tampered = br#"{"id":"evt_1","type":"call.ended"}"#;
        let verifier = standardwebhooks::Webhook::new(new).unwrap();
        assert!(verifier.verify(tampered, &headers).is_err());
        // `verifies`, the demo receiver's check, agrees with the independent verifier.
        for key in &keys {
            assert!(key.verifies("evt_1", now, body, &header));
            assert!(!key.verifies("evt_1", now, tampered, &header));
            assert!(!key.verifies("evt_2", now, body, &header));
        }
        let stranger = Key::parse("whsec_dGhpcyBpcyBub3QgdGhlIGtleQ==").unwrap();
        assert!(!stranger.verifies("evt_1", now, body, &header));
    }

    #[test]
    fn keys_that_cannot_sign_are_refused_and_never_printed() {
        assert_eq!(Key::parse("MfKQ9r8GKYqr").unwrap_err(), KeyError::Prefix);
        assert_eq!(
            Key::parse("whsec_not base64!").unwrap_err(),
            KeyError::Base64
        );
        assert_eq!(Key::parse("whsec_").unwrap_err(), KeyError::Empty);
        let key = Key::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(format!("{key:?}"), "Key(***)");
    }
}
