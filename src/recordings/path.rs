//! Maps a recording name chosen by the telephony provider onto a relative file path.
//! The name comes from an untrusted webhook, so anything that could escape the
//! recordings folder (absolute paths, `..`, odd separators, control bytes) is refused.

use std::path::PathBuf;

use crate::calls::Provider;

/// Why a recording name (or provider folder) was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum UnsafePath {
    #[error("empty")]
    Empty,
    #[error("absolute path")]
    Absolute,
    #[error("contains `..`")]
    ParentDir,
    #[error("contains `.` segment")]
    CurrentDir,
    #[error("empty segment")]
    EmptySegment,
    #[error("backslash")]
    Backslash,
    #[error("control character")]
    ControlChar,
}

/// `name` is e.g. "101/[John Doe]_101-5148888888_20250603153720(26).wav"; returns the relative path
/// "<provider_dir>/<name>" (e.g. "jas/101/[John Doe]_...wav") after checks.
///
/// `provider_dir` is our own configuration, but it passes the same checks so a
/// bad value cannot silently widen where files land.
pub fn recording_relative_path(provider_dir: &str, name: &str) -> Result<PathBuf, UnsafePath> {
    check(provider_dir)?;
    check(name)?;
    let mut path = PathBuf::new();
    for segment in provider_dir.split('/').chain(name.split('/')) {
        path.push(segment);
    }
    Ok(path)
}

/// The error a recording shows on its call while downloads are off.
pub const DOWNLOADS_OFF: &str = "recording downloads are disabled";

/// Where a provider's recording will land (below its folder, named as its id), as its download
/// job and its call both record it: the relative path, or the error shown when the name is
/// refused.
pub fn destination(provider: Provider, name: &str) -> Result<String, String> {
    recording_relative_path(provider.as_str(), name)
        .map(|path| path.to_string_lossy().into_owned())
        .map_err(|e| format!("refused: {e}"))
}

/// `destination` as a download job records it: the path, or why the name was refused (then
/// nothing is ever requested or written). A refusal is logged at `warn` here, once, when the
/// event is accepted.
pub fn job_destination(
    provider: Provider,
    call_id: &str,
    name: &str,
) -> (Option<String>, Option<String>) {
    match destination(provider, name) {
        Ok(path) => (Some(path), None),
        Err(refused) => {
            tracing::warn!(provider = provider.as_str(), call_id = %call_id.escape_debug(),
                recording = %name.escape_debug(), reason = %refused,
                "recording name refused; nothing will be written");
            (None, Some(refused))
        }
    }
}

fn check(name: &str) -> Result<(), UnsafePath> {
    if name.is_empty() {
        return Err(UnsafePath::Empty);
    }
    if name.chars().any(char::is_control) {
        return Err(UnsafePath::ControlChar);
    }
    // Refused even on Unix: a name that means something else on another OS is
    // suspicious, and the same files may be served or copied to Windows.
    if name.contains('\\') {
        return Err(UnsafePath::Backslash);
    }
    if name.starts_with('/') || looks_like_drive(name) {
        return Err(UnsafePath::Absolute);
    }
    for segment in name.split('/') {
        match segment {
            "" => return Err(UnsafePath::EmptySegment),
            ".." => return Err(UnsafePath::ParentDir),
            "." => return Err(UnsafePath::CurrentDir),
            _ => {}
        }
    }
    Ok(())
}

/// `C:` or `C:foo` at the start is a drive (or drive-relative) path on Windows.
fn looks_like_drive(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':'
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::{Component, Path};

    const SAMPLE: &str = "101/[John Doe]_101-5148888888_20250603153720(26).wav";

    #[test]
    fn sample_name_maps_under_provider_dir() {
        let p = recording_relative_path("jas", SAMPLE).expect("sample is safe");
        assert_eq!(
            p,
            PathBuf::from("jas/101/[John Doe]_101-5148888888_20250603153720(26).wav")
        );
    }

    #[test]
    fn refusals() {
        let cases: &[(&str, UnsafePath)] = &[
            ("", UnsafePath::Empty),
            ("/etc/passwd", UnsafePath::Absolute),
            ("C:/x.wav", UnsafePath::Absolute),
            ("c:x.wav", UnsafePath::Absolute),
            ("../x.wav", UnsafePath::ParentDir),
            ("101/../../x.wav", UnsafePath::ParentDir),
            ("101/..", UnsafePath::ParentDir),
            ("./x.wav", UnsafePath::CurrentDir),
            ("101/./x.wav", UnsafePath::CurrentDir),
            ("a//b", UnsafePath::EmptySegment),
            ("a/", UnsafePath::EmptySegment),
            ("a\\b", UnsafePath::Backslash),
            ("..\\x", UnsafePath::Backslash),
            ("a\0b", UnsafePath::ControlChar),
            ("a\nb", UnsafePath::ControlChar),
            ("a\u{7f}b", UnsafePath::ControlChar),
            ("a\u{85}b", UnsafePath::ControlChar),
        ];
        for (name, want) in cases {
            assert_eq!(
                recording_relative_path("jas", name),
                Err(*want),
                "name {name:?}"
            );
        }
    }

    #[test]
    fn provider_dir_is_checked_too() {
        assert_eq!(
            recording_relative_path("..", "x.wav"),
            Err(UnsafePath::ParentDir)
        );
        assert_eq!(recording_relative_path("", "x.wav"), Err(UnsafePath::Empty));
    }

    #[test]
    fn display_says_why() {
        assert_eq!(UnsafePath::Absolute.to_string(), "absolute path");
        assert_eq!(UnsafePath::ParentDir.to_string(), "contains `..`");
        assert_eq!(UnsafePath::EmptySegment.to_string(), "empty segment");
        assert_eq!(UnsafePath::Backslash.to_string(), "backslash");
        assert_eq!(UnsafePath::ControlChar.to_string(), "control character");
        assert_eq!(UnsafePath::Empty.to_string(), "empty");
    }

    #[test]
    fn dots_inside_names_are_fine() {
        assert!(recording_relative_path("jas", "a..b/...wav/.hidden").is_ok());
    }

    fn nasty_name() -> impl Strategy<Value = String> {
        let segment = prop_oneof![
            Just(String::new()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("C:".to_owned()),
            Just("\\".to_owned()),
            "[a-zA-Z0-9 .:\\[\\]()_#?%\\\\-]{1,8}",
            any::<String>(),
        ];
        prop_oneof![
            prop::collection::vec(segment, 1..5).prop_map(|s| s.join("/")),
            any::<String>(),
        ]
    }

    proptest! {
        #[test]
        fn accepted_paths_stay_under_base(name in nasty_name()) {
            if let Ok(rel) = recording_relative_path("jas", &name) {
                prop_assert!(rel.components().all(|c| matches!(c, Component::Normal(_))), "{rel:?}");
                let base = Path::new("/srv/recordings");
                let full = base.join(&rel);
                prop_assert!(full.starts_with(base));
                prop_assert!(full.strip_prefix(base).is_ok_and(|r| r.components().all(|c| matches!(c, Component::Normal(_)))));
            }
        }
    }
}
