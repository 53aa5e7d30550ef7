//! The fuzz targets' properties (fuzz/), checked on stable on every CI run: the untrusted-input
//! parsers never panic and fail with a reason an integrator can act on. Shapes are generated
//! near the valid ones, where bugs hide; plain random bytes are covered by the unit proptests
//! next to each decoder and by the fuzzers.
//! Already covered next to the code, not repeated here: the recording path mapper
//! (`recordings::path`, accepted paths stay under the base) and TeleCMI decoding of random
//! bytes (`providers::telecmi::events`).

use callhook::providers::DecodeError;
use callhook::providers::jas::events::decode;
use callhook::providers::jas::verify::{Verifier, VerifyError, sign};
use callhook::providers::telecmi::events as telecmi;
use proptest::prelude::*;
use secrecy::SecretString;
use serde_json::{Map, Value, json};

/// What a decoder's error must tell an integrator, whichever provider's: the field it is about,
/// or what the body is not (`accepts`: the formats that provider reads).
fn says_what_is_wrong(e: &DecodeError, accepts: &str) -> Result<(), TestCaseError> {
    let message = e.to_string();
    match e {
        DecodeError::Body { .. } => {
            let start = format!("body is not valid {accepts}: ");
            prop_assert!(message.starts_with(&start), "{message}");
        }
        DecodeError::NotObject(_) => prop_assert!(message.contains("JSON object"), "{message}"),
        DecodeError::Missing(field) | DecodeError::Invalid { field, .. } => {
            prop_assert!(message.contains(field), "{message}");
        }
    }
    Ok(())
}

fn verifier() -> Verifier {
    Verifier::new(vec![SecretString::from("old"), SecretString::from("new")])
}

/// A header value: a real signature of something, bent a little, or anything at all.
fn header() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<Vec<u8>>(),
        "[0-9a-fA-F]{60,68}".prop_map(String::into_bytes),
        ("[ \t]{0,3}", "[0-9a-fA-F]{64}", "[ \t\r\n]{0,3}")
            .prop_map(|(a, hex, b)| format!("{a}{hex}{b}").into_bytes()),
        (any::<Vec<u8>>(), 0usize..64, any::<u8>()).prop_map(|(body, at, byte)| {
            let mut sig = sign(b"new", &body).into_bytes();
            sig[at] = byte;
            sig
        }),
    ]
}

/// JSON values of any type, for putting where a field of one type is expected.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        any::<u64>().prop_map(|n| json!(n)),
        ".{0,12}".prop_map(Value::String),
        "[0-9]{1,20}".prop_map(Value::String),
        "/callcontrol/[0-9a-z.]{0,4}/participants/[0-9a-z/]{0,4}".prop_map(Value::String),
        Just(json!("2025-04-14T15:04:23.161Z")),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JAS body near the documented shapes: known event names and fields, any values, some
/// fields left out.
fn jas_body() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        Just(json!("call_status")),
        Just(json!("new_recording")),
        Just(json!("call_summary")),
        Just(json!("call_analysis")),
        any_json(),
    ];
    let field = |name: &'static str| {
        prop::option::of(any_json()).prop_map(move |v| v.map(|v| (name.to_string(), v)))
    };
    let event = (field("entity"), field("event_type"))
        .prop_map(|(a, b)| Value::Object(a.into_iter().chain(b).collect::<Map<String, Value>>()));
    let data = (
        prop::option::of(prop_oneof![event, any_json()]),
        field("sequence"),
        field("call_id"),
        field("recording_url"),
        field("id_recording"),
        field("cdr_id"),
        field("start_time"),
    )
        .prop_map(|(event, a, b, c, d, e, f)| {
            let mut m: Map<String, Value> = [a, b, c, d, e, f].into_iter().flatten().collect();
            if let Some(event) = event {
                m.insert("event".into(), event);
            }
            Value::Object(m)
        });
    (
        prop::option::of(name),
        prop::option::of(any_json()),
        prop::option::of(prop_oneof![data, any_json()]),
    )
        .prop_map(|(name, timestamp, data)| {
            let mut root = Map::new();
            for (k, v) in [
                ("eventName", name),
                ("timestamp", timestamp),
                ("data", data),
            ] {
                if let Some(v) = v {
                    root.insert(k.into(), v);
                }
            }
            serde_json::to_vec(&Value::Object(root)).unwrap()
        })
}

/// A TeleCMI body near the documented shapes, as JSON (sometimes with a bare leading-zero
/// number spliced in, as TeleCMI's samples have) or as a form.
fn telecmi_body() -> impl Strategy<Value = (Vec<u8>, Option<&'static str>)> {
    const FIELDS: &[&str] = &[
        "cmiuuid",
        "type",
        "leg",
        "status",
        "conversation_uuid",
        "direction",
        "user",
        "from",
        "to",
        "callerid",
        "app_id",
        "appid",
        "time",
        "answeredsec",
        "waitedsec",
        "record",
        "voicemail",
        "click_to_call",
        "filename",
        "hangup_reason",
        "custom",
        "extra_params",
    ];
    let fields = prop::collection::vec((prop::sample::select(FIELDS), any_json()), 0..10);
    prop_oneof![
        (fields, any::<bool>()).prop_map(|(fields, zeros)| {
            let map: Map<String, Value> = fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            let mut text = serde_json::to_string(&Value::Object(map)).unwrap();
            if zeros && text.len() > 1 {
                text.insert_str(1, r#""callerid":04471000000,"#);
                if text.ends_with(",}") {
                    text.replace_range(text.len() - 2.., "}");
                }
            }
            (text.into_bytes(), Some("application/json"))
        }),
        (
            prop::collection::vec((prop::sample::select(FIELDS), ".{0,16}"), 0..10),
            prop::option::of(Just("application/x-www-form-urlencoded")),
        )
            .prop_map(|(pairs, ct)| {
                (serde_urlencoded::to_string(pairs).unwrap().into_bytes(), ct)
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn verify_never_panics_and_only_the_right_signature_passes(
        header in prop::option::of(header()),
        body in any::<Vec<u8>>(),
    ) {
        let v = verifier();
        let result = v.verify(header.as_deref(), &body);
        if result.is_ok() {
            let text = std::str::from_utf8(header.as_deref().unwrap()).unwrap().trim().to_ascii_lowercase();
            prop_assert!(text == sign(b"old", &body) || text == sign(b"new", &body));
        }
        if header.is_none() {
            prop_assert_eq!(result, Err(VerifyError::Missing));
        }
        for key in ["old", "new"] {
            let good = sign(key.as_bytes(), &body);
            prop_assert_eq!(v.verify(Some(good.as_bytes()), &body), Ok(()));
            prop_assert_eq!(v.verify(Some(good.to_uppercase().as_bytes()), &body), Ok(()));
        }
        prop_assert_eq!(
            v.verify(Some(sign(b"retired", &body).as_bytes()), &body),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn jas_decode_never_panics_and_errors_name_a_field(
        body in prop_oneof![jas_body(), any::<Vec<u8>>()],
    ) {
        let at = chrono::Utc::now();
        match decode(&body, at) {
            Ok(d) => {
                prop_assert!(d.dedupe_key.starts_with("jas:"));
                // Deterministic, so a redelivery gets the same key and is a duplicate.
                prop_assert_eq!(decode(&body, at).unwrap(), d);
            }
            Err(e) => says_what_is_wrong(&e, "JSON")?,
        }
    }

    #[test]
    fn telecmi_decode_never_panics_and_errors_name_a_field((body, ct) in telecmi_body()) {
        match telecmi::decode(&body, ct) {
            Ok(event) => {
                prop_assert!(!event.cmiuuid.trim().is_empty());
                prop_assert!(event.dedupe_key().starts_with(&event.cmiuuid));
            }
            Err(e) => says_what_is_wrong(&e, "JSON or form data")?,
        }
    }
}
