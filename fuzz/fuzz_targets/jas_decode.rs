//! The JAS Connect event decoder: never panics, every error names a field or says the body is
//! not (a) JSON (object), and decoding is deterministic (a redelivery gets the same dedupe key).
#![no_main]

use callhook::providers::DecodeError;
use callhook::providers::jas::events::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A fixed receive time: the decoder falls back to it for a missing or bad timestamp.
    let received_at = chrono::DateTime::UNIX_EPOCH;
    match decode(data, received_at) {
        Ok(d) => {
            assert!(d.dedupe_key.starts_with("jas:"));
            assert_eq!(decode(data, received_at).unwrap(), d);
        }
        Err(e) => {
            let message = e.to_string();
            match &e {
                DecodeError::Body { .. } => assert!(message.contains("not valid JSON")),
                DecodeError::NotObject(_) => assert!(message.contains("JSON object")),
                DecodeError::Missing(f) | DecodeError::Invalid { field: f, .. } => {
                    assert!(message.contains(f), "{message}")
                }
            }
        }
    }
});
