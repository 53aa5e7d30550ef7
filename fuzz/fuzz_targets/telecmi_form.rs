//! The TeleCMI lenient decoder on `application/x-www-form-urlencoded` bodies: never panics;
//! errors name a field or say the body is malformed.
#![no_main]

use callhook::providers::telecmi::events::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode(data, Some("application/x-www-form-urlencoded; charset=utf-8")) {
        Ok(event) => {
            assert!(!event.cmiuuid.trim().is_empty());
            assert!(event.dedupe_key().starts_with(&event.cmiuuid));
        }
        Err(e) => {
            let message = e.to_string();
            match e.field() {
                Some(field) => assert!(message.contains(field), "{message}"),
                None => assert!(message.contains("not valid JSON or form data"), "{message}"),
            }
        }
    }
});
