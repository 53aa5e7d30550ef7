//! The recording path mapper: every accepted name maps to a path made only of normal
//! components, under the provider folder, inside the recordings folder; and its URL form
//! decodes back to the same segments.
#![no_main]

use std::path::{Component, Path};

use callhook::outbound::path::encode_url_path;
use callhook::recordings::path::recording_relative_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rel) = recording_relative_path("jas", name) else {
        return;
    };
    assert!(rel.components().all(|c| matches!(c, Component::Normal(_))), "{rel:?}");
    assert!(rel.starts_with("jas"), "{rel:?}");
    let base = Path::new("/srv/recordings");
    let full = base.join(&rel);
    assert!(full.starts_with(base.join("jas")), "{full:?}");
    assert_eq!(full.components().count(), base.components().count() + rel.components().count());
    let encoded = encode_url_path(name);
    let decoded: Vec<String> = encoded
        .split('/')
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8().unwrap().into_owned())
        .collect();
    assert_eq!(decoded, name.split('/').collect::<Vec<_>>());
    assert!(!encoded.contains(['?', '#', ' ', '\\']));
});
