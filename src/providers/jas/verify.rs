//! `X-SIG` verification: hex HMAC-SHA256 of the raw body bytes under any configured secret.
//! Runs before the body is parsed, so an unsigned request never reaches the JSON decoder.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing X-SIG header")]
    Missing,
    #[error("X-SIG is not a hex SHA-256 HMAC")]
    Malformed,
    #[error("X-SIG does not match the body")]
    Mismatch,
    #[error("no webhook secret is configured")]
    NoSecret,
}

/// Holds the secrets of a rotation; any one of them verifies.
#[derive(Clone)]
pub struct Verifier {
    secrets: Vec<SecretString>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verifier({} secrets)", self.secrets.len())
    }
}

impl Verifier {
    pub fn new(secrets: Vec<SecretString>) -> Self {
        Self { secrets }
    }

    /// `header` is the raw header value; surrounding whitespace and either hex case are accepted.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8]) -> Result<(), VerifyError> {
        if self.secrets.is_empty() {
            return Err(VerifyError::NoSecret);
        }
        let header = header.ok_or(VerifyError::Missing)?;
        let text = std::str::from_utf8(header)
            .map_err(|_| VerifyError::Malformed)?
            .trim();
        if text.len() != 64 {
            return Err(VerifyError::Malformed);
        }
        let expected = hex::decode(text).map_err(|_| VerifyError::Malformed)?;
        let mut matched = false;
        // Every secret is tried (no early return), so timing does not tell which one matched.
        for secret in &self.secrets {
            let mut mac = HmacSha256::new_from_slice(secret.expose_secret().as_bytes())
                .expect("HMAC accepts keys of any length");
            mac.update(body);
            // verify_slice compares in constant time.
            matched |= mac.verify_slice(&expected).is_ok();
        }
        if matched {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }
}

/// The lower-case hex `X-SIG` of `body` under `secret` (for `callhook sign`, `send` and tests).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(secrets: &[&str]) -> Verifier {
        Verifier::new(secrets.iter().map(|s| SecretString::from(*s)).collect())
    }

    const BODY: &[u8] = br#"{"eventName":"call_status"}"#;

    #[test]
    fn good_signature_verifies() {
        let sig = sign(b"k1", BODY);
        assert_eq!(verifier(&["k1"]).verify(Some(sig.as_bytes()), BODY), Ok(()));
    }

    #[test]
    fn known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn upper_case_hex_and_whitespace_verify() {
        let sig = sign(b"k1", BODY).to_uppercase();
        let header = format!(" {sig}\t");
        assert_eq!(
            verifier(&["k1"]).verify(Some(header.as_bytes()), BODY),
            Ok(())
        );
    }

    #[test]
    fn wrong_key_fails() {
        let sig = sign(b"other", BODY);
        assert_eq!(
            verifier(&["k1"]).verify(Some(sig.as_bytes()), BODY),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn other_body_fails() {
        let sig = sign(b"k1", BODY);
        assert_eq!(
            verifier(&["k1"]).verify(Some(sig.as_bytes()), b"{}"),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn bad_hex_and_missing_fail() {
        let v = verifier(&["k1"]);
        assert_eq!(v.verify(None, BODY), Err(VerifyError::Missing));
        assert_eq!(v.verify(Some(b"zz"), BODY), Err(VerifyError::Malformed));
        let not_hex = "g".repeat(64);
        assert_eq!(
            v.verify(Some(not_hex.as_bytes()), BODY),
            Err(VerifyError::Malformed)
        );
        assert_eq!(
            v.verify(Some(&[0xff, 0xfe]), BODY),
            Err(VerifyError::Malformed)
        );
        let short = &sign(b"k1", BODY)[..62];
        assert_eq!(
            v.verify(Some(short.as_bytes()), BODY),
            Err(VerifyError::Malformed)
        );
    }

    #[test]
    fn rotation_accepts_any_configured_secret() {
        let v = verifier(&["old", "new"]);
        for key in ["old", "new"] {
            let sig = sign(key.as_bytes(), BODY);
            assert_eq!(v.verify(Some(sig.as_bytes()), BODY), Ok(()));
        }
        let sig = sign(b"retired", BODY);
        assert_eq!(
            v.verify(Some(sig.as_bytes()), BODY),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn no_secret_rejects_everything() {
        let sig = sign(b"", BODY);
        assert_eq!(
            verifier(&[]).verify(Some(sig.as_bytes()), BODY),
            Err(VerifyError::NoSecret)
        );
    }
}
