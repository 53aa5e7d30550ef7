//! The TeleCMI lenient decoder on JSON bodies (declared, and sniffed without a content type):
//! never panics; errors name a field or say the body is malformed.
#![no_main]

use callhook::providers::telecmi::events::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for ct in [Some("application/json"), None] {
        match decode(data, ct) {
            Ok(event) => {
                assert!(!event.cmiuuid.trim().is_empty());
                assert!(event.dedupe_key().starts_with(&event.cmiuuid));
            }
            Err(e) => {
                let message = e.to_string();
                match e.field() {
                    Some(field) => assert!(message.contains(field), "{message}"),
                    // Not JSON nor form data, or JSON that is not an object.
                    None => assert!(
                        message.contains("not valid JSON or form data")
                            || message.contains("must be a JSON object"),
                        "{message}"
                    ),
                }
            }
        }
    }
});
