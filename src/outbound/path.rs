//! Percent-encoding of URL path segments, for every request built from names a provider or a
//! webhook chose (an extension or participant id, a recording name): nothing in them can add a `/`,
//! `?`, `#` or `..` to the path.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// Everything except RFC 3986 unreserved characters is encoded, so brackets, spaces, `#`, `?`,
/// `%` and `/` in a segment cannot change the URL's meaning.
pub const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Like [`SEGMENT`] but keeps `%`, so existing escapes survive.
const KEEP_ESCAPES: &AsciiSet = &SEGMENT.remove(b'%');

/// One path segment, encoded (a `/` in it is encoded too).
pub fn encode_segment(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

/// percent-encodes each `/`-separated segment of an already-checked name for use in a URL path
/// (spaces, brackets, parentheses, `#`, `?`, `%` all encoded; `/` kept as separator).
pub fn encode_url_path(name: &str) -> String {
    name.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

/// Why an encoded path was refused by [`sanitize_encoded_path`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    #[error("empty recording path")]
    Empty,
    #[error("recording path has empty or dot segments")]
    DotOrEmptySegment,
}

/// Re-encodes anything a caller left raw that would change the URL's meaning (keeping existing
/// escapes), and refuses empty and dot segments (raw or escaped), so a path appended below a
/// prefix cannot climb out of it. Leading `/`s are dropped.
pub fn sanitize_encoded_path(encoded: &str) -> Result<String, BadPath> {
    let trimmed = encoded.trim_start_matches('/');
    if trimmed.is_empty() {
        return Err(BadPath::Empty);
    }
    let mut segments = Vec::new();
    for segment in trimmed.split('/') {
        let decoded = percent_decode_str(segment).decode_utf8_lossy();
        if segment.is_empty() || decoded == "." || decoded == ".." {
            return Err(BadPath::DotOrEmptySegment);
        }
        segments.push(utf8_percent_encode(segment, KEEP_ESCAPES).to_string());
    }
    Ok(segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "101/[John Doe]_101-5148888888_20250603153720(26).wav";

    #[test]
    fn sample_name_url_encoding() {
        assert_eq!(
            encode_url_path(SAMPLE),
            "101/%5BJohn%20Doe%5D_101-5148888888_20250603153720%2826%29.wav"
        );
        assert_eq!(encode_url_path("a#b?c%d"), "a%23b%3Fc%25d");
        assert_eq!(encode_url_path("é/x"), "%C3%A9/x");
    }

    #[test]
    fn a_segment_cannot_add_a_separator() {
        assert_eq!(encode_segment("1 0/1"), "1%200%2F1");
        assert_eq!(encode_segment(".."), "..");
        assert_eq!(encode_segment("a?b#c"), "a%3Fb%23c");
    }

    #[test]
    fn sanitize_keeps_escapes_encodes_the_rest_and_refuses_dots() {
        assert_eq!(
            sanitize_encoded_path("/101/%5BJ%5D a?b#c.wav"),
            Ok("101/%5BJ%5D%20a%3Fb%23c.wav".into())
        );
        for bad in ["", "/", "a//b", "a/../b", "%2E%2E/x", "./x"] {
            assert!(sanitize_encoded_path(bad).is_err(), "{bad:?}");
        }
        assert_eq!(sanitize_encoded_path("//"), Err(BadPath::Empty));
        assert_eq!(
            sanitize_encoded_path("a/./b"),
            Err(BadPath::DotOrEmptySegment)
        );
    }
}
