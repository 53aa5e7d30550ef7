//! `X-SIG` parsing and verification. Input: one length byte, that many header bytes, then the
//! body. Never panics; accepts exactly the HMAC of the body under a configured secret.
#![no_main]

use callhook::providers::jas::verify::{Verifier, sign};
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

fuzz_target!(|data: &[u8]| {
    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let (header, body) = rest.split_at((len as usize).min(rest.len()));
    // 0xff means "no header at all".
    let header = (len != 0xff).then_some(header);
    let v = Verifier::new(vec![SecretString::from("old"), SecretString::from("new")]);
    if v.verify(header, body).is_ok() {
        let text = std::str::from_utf8(header.unwrap()).unwrap().trim().to_ascii_lowercase();
        assert!(text == sign(b"old", body) || text == sign(b"new", body));
    }
    assert!(v.verify(Some(sign(b"new", body).as_bytes()), body).is_ok());
});
