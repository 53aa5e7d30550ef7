//! Streams one recording from the provider to disk, hashing it on the way.
//! The body lands in a hidden temp file next to the destination and is renamed into
//! place only after every check passes, so a file under its final name is always whole.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWriteExt, BufWriter};

/// A body this small is parsed as JSON when it looks like an object; real
/// recordings are far larger, and the cap keeps sniffing in constant memory.
const SNIFF_LIMIT: usize = 64 * 1024;

/// Longest Retry-After we honour, so a hostile or buggy server cannot park a job for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Buffer between the network and the blocking-pool file writes.
const WRITE_BUFFER: usize = 64 * 1024;

/// A recording that was written, checked and renamed onto its final name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the file's contents.
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// worth retrying: 5xx, 408, 429, timeouts, connection errors, truncated body
    #[error("transient download failure: {reason}")]
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// not worth retrying: other 4xx, a JSON error body, a filesystem error on our side ...
    #[error("download failed: {reason}")]
    Permanent { reason: String },
    /// 401: not worth retrying as it is, but a fresh token may fix it (the caller decides).
    #[error("download failed: HTTP 401 Unauthorized")]
    Unauthorized,
}

impl DownloadError {
    /// The server's Retry-After hint, if it gave one with a transient failure.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } => *retry_after,
            Self::Permanent { .. } | Self::Unauthorized => None,
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }

    fn transient(reason: impl Into<String>) -> Self {
        Self::Transient {
            reason: reason.into(),
            retry_after: None,
        }
    }

    fn permanent(reason: impl Into<String>) -> Self {
        Self::Permanent {
            reason: reason.into(),
        }
    }
}

/// Sends `request` (already carrying auth), streams the body to a temp file in `dest`'s folder
/// (creating folders), checks it, fsyncs, renames onto `dest`, fsyncs the folder.
///
/// On failure the temp file is removed and `dest` is left as it was, except when
/// only the final folder fsync fails: the rename has then happened (the file is
/// whole) but its durability is unknown, so a Permanent error is still reported.
/// `api` labels `callhook_upstream_requests_total` (e.g. `jas_recordings`, `telecmi_play`).
pub async fn download_to(
    request: reqwest::RequestBuilder,
    dest: &Path,
    api: &'static str,
) -> Result<Downloaded, DownloadError> {
    let started = Instant::now();
    let final_name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| DownloadError::permanent(format!("bad destination {}", dest.display())))?;
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };

    // Strip the URL: it may carry credentials in its query string and these
    // reasons end up in logs and the job table.
    let sent = request.send().await;
    let status = match &sent {
        Ok(resp) => resp.status().as_u16().to_string(),
        Err(_) => "error".to_string(),
    };
    metrics::counter!("callhook_upstream_requests_total", "api" => api, "status" => status)
        .increment(1);
    metrics::histogram!("callhook_upstream_request_seconds", "api" => api)
        .record(started.elapsed().as_secs_f64());
    let mut resp = sent.map_err(|e| request_error(e.without_url()))?;
    check_status(&resp)?;

    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| fs_error("creating folder", &dir, &e))?;
    let tmp_path = dir.join(format!(".{final_name}.part-{:016x}", rand::random::<u64>()));
    // Removes the temp file on every early return, and also if this future is
    // dropped mid-download (e.g. on shutdown).
    let mut guard = TempGuard(Some(tmp_path.clone()));

    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp_path)
        .await
        .map_err(|e| fs_error("creating", &tmp_path, &e))?;
    let downloaded = stream_body(&mut resp, file, &tmp_path).await?;

    tokio::fs::rename(&tmp_path, dest)
        .await
        .map_err(|e| fs_error("renaming onto", dest, &e))?;
    guard.disarm();
    sync_dir(&dir).await?;

    metrics::histogram!("callhook_recording_download_seconds")
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("callhook_recording_bytes_total").increment(downloaded.bytes);
    Ok(downloaded)
}

/// Parses a Retry-After header value: delta-seconds or an HTTP date. Capped at 1 hour;
/// a date in the past means "now" (zero).
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits but too big for u64 is still "a very long time".
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    // IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") is valid RFC 2822.
    let when = DateTime::parse_from_rfc2822(value).ok()?;
    let delta = when.with_timezone(&Utc) - now;
    Some(
        delta
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

fn check_status(resp: &reqwest::Response) -> Result<(), DownloadError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    if status == StatusCode::UNAUTHORIZED {
        return Err(DownloadError::Unauthorized);
    }
    let reason = format!("HTTP {status}");
    if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        return Err(DownloadError::Transient {
            reason,
            retry_after,
        });
    }
    Err(DownloadError::permanent(reason))
}

/// Copies the body into `file` chunk by chunk, then runs the body checks and fsyncs.
async fn stream_body(
    resp: &mut reqwest::Response,
    file: tokio::fs::File,
    tmp_path: &Path,
) -> Result<Downloaded, DownloadError> {
    let expected = resp.content_length();
    let json_type = json_content_type(resp.headers());
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut hasher = Sha256::new();
    let mut total: u64 = 0;
    // One byte past the limit tells "exactly 64 KiB" from "bigger".
    let mut head: Vec<u8> = Vec::new();

    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                return Err(DownloadError::transient(format!(
                    "reading body after {total} bytes: {}",
                    error_chain(&e.without_url())
                )));
            }
        };
        hasher.update(&chunk);
        if head.len() <= SNIFF_LIMIT {
            let take = (SNIFF_LIMIT + 1 - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
        }
        total += chunk.len() as u64;
        out.write_all(&chunk)
            .await
            .map_err(|e| fs_error("writing", tmp_path, &e))?;
    }

    if let Some(expected) = expected {
        if expected != total {
            return Err(DownloadError::transient(format!(
                "truncated: expected {expected} bytes, got {total}"
            )));
        }
    }
    if total > 0 {
        if let Some(reason) = json_error(&head, json_type.as_deref()) {
            return Err(DownloadError::permanent(reason));
        }
    }
    if total == 0 {
        return Err(DownloadError::transient("empty body"));
    }

    out.flush()
        .await
        .map_err(|e| fs_error("writing", tmp_path, &e))?;
    let file = out.into_inner();
    file.sync_all()
        .await
        .map_err(|e| fs_error("syncing", tmp_path, &e))?;
    drop(file);

    Ok(Downloaded {
        bytes: total,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// The Content-Type, if it names JSON (`application/json`, `…+json`, `text/json`).
fn json_content_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next()?.trim().to_ascii_lowercase();
    (essence.ends_with("/json") || essence.ends_with("+json")).then_some(essence)
}

/// TeleCMI answers failures with HTTP 200 and a JSON object; a recording is
/// audio, never JSON, so either a JSON Content-Type or a small body that parses
/// as a JSON object means the download failed. `head` holds the body's first
/// `SNIFF_LIMIT + 1` bytes (all of it when it is small).
fn json_error(head: &[u8], json_type: Option<&str>) -> Option<String> {
    let object = if head.len() <= SNIFF_LIMIT && head.trim_ascii_start().first() == Some(&b'{') {
        match serde_json::from_slice::<serde_json::Value>(head) {
            Ok(serde_json::Value::Object(map)) => Some(map),
            _ => None,
        }
    } else {
        None
    };
    match (object, json_type) {
        (Some(map), _) => Some(format!(
            "server returned a JSON error instead of audio: {}",
            describe_json_error(&map)
        )),
        (None, Some(ct)) => Some(format!(
            "server returned Content-Type {ct} instead of audio"
        )),
        (None, None) => None,
    }
}

fn describe_json_error(map: &serde_json::Map<String, serde_json::Value>) -> String {
    let text = ["msg", "message", "error"]
        .iter()
        .find_map(|k| map.get(*k).and_then(|v| v.as_str()))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let mut raw = serde_json::Value::Object(map.clone()).to_string();
            if raw.len() > 200 {
                let mut cut = 200;
                while !raw.is_char_boundary(cut) {
                    cut -= 1;
                }
                raw.truncate(cut);
                raw.push('…');
            }
            raw
        });
    match map.get("code") {
        Some(code) if !code.is_null() => format!("{text} (code {code})"),
        _ => text,
    }
}

fn request_error(e: reqwest::Error) -> DownloadError {
    let reason = format!("sending request: {}", error_chain(&e));
    // A request that cannot even be built, or a redirect loop, fails the same way next time.
    if e.is_builder() || e.is_redirect() {
        DownloadError::permanent(reason)
    } else {
        DownloadError::transient(reason)
    }
}

/// reqwest's Display hides the cause ("error sending request"), which is the useful part.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn fs_error(action: &str, path: &Path, e: &std::io::Error) -> DownloadError {
    DownloadError::permanent(format!("{action} {}: {e}", path.display()))
}

/// Makes the rename itself durable: without it a crash can lose the directory entry.
async fn sync_dir(dir: &Path) -> Result<(), DownloadError> {
    #[cfg(unix)]
    {
        let handle = tokio::fs::File::open(dir)
            .await
            .map_err(|e| fs_error("opening folder", dir, &e))?;
        handle
            .sync_all()
            .await
            .map_err(|e| fs_error("syncing folder", dir, &e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Deletes the temp file unless disarmed after a successful rename.
struct TempGuard(Option<PathBuf>);

impl TempGuard {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // Blocking, but a single unlink; Drop cannot await, and this must
            // also run when the download future is cancelled.
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove temp file");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use tempfile::TempDir;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn client() -> reqwest::Client {
        // reqwest is built with `rustls-no-provider`; building a client needs one installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
    }

    fn audio(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Names of all files under `dir`, sorted; used to spot leftover `.part` files.
    fn entries(dir: &Path) -> Vec<String> {
        let mut names = walk(dir);
        names.sort();
        names
    }

    fn walk(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let e = e.expect("entry");
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        out
    }

    async fn serve(template: ResponseTemplate) -> MockServer {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/rec.wav"))
            .respond_with(template)
            .mount(&server)
            .await;
        server
    }

    async fn fetch(server: &MockServer, dest: &Path) -> Result<Downloaded, DownloadError> {
        download_to(
            client().get(format!("{}/rec.wav", server.uri())),
            dest,
            "test",
        )
        .await
    }

    #[tokio::test]
    async fn success_writes_whole_file_with_hash() {
        let body = audio(300_000);
        let server =
            serve(ResponseTemplate::new(200).set_body_raw(body.clone(), "audio/wav")).await;
        let tmp = TempDir::new().expect("tempdir");
        let dest = tmp.path().join("jas/101/[John Doe]_1(26).wav");

        let got = fetch(&server, &dest).await.expect("download");

        assert_eq!(got.bytes, body.len() as u64);
        assert_eq!(got.sha256, hex::encode(Sha256::digest(&body)));
        assert_eq!(std::fs::read(&dest).expect("read"), body);
        assert_eq!(entries(tmp.path()), vec!["[John Doe]_1(26).wav".to_owned()]);
    }

    #[tokio::test]
    async fn server_error_is_transient() {
        let server = serve(ResponseTemplate::new(500)).await;
        let tmp = TempDir::new().expect("tempdir");
        let err = fetch(&server, &tmp.path().join("a.wav")).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert_eq!(err.retry_after(), None);
        assert!(entries(tmp.path()).is_empty());
    }

    #[tokio::test]
    async fn retry_after_is_honoured() {
        let server = serve(ResponseTemplate::new(503).insert_header("Retry-After", "7")).await;
        let tmp = TempDir::new().expect("tempdir");
        let err = fetch(&server, &tmp.path().join("a.wav")).await.unwrap_err();
        assert!(err.is_transient());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    }

    #[tokio::test]
    async fn too_many_requests_is_transient() {
        let server = serve(ResponseTemplate::new(429)).await;
        let tmp = TempDir::new().expect("tempdir");
        let err = fetch(&server, &tmp.path().join("a.wav")).await.unwrap_err();
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn not_found_is_permanent() {
        let server = serve(ResponseTemplate::new(404)).await;
        let tmp = TempDir::new().expect("tempdir");
        let err = fetch(&server, &tmp.path().join("a.wav")).await.unwrap_err();
        assert!(!err.is_transient());
        assert!(err.to_string().contains("404"), "{err}");
        assert!(entries(tmp.path()).is_empty());
    }

    #[tokio::test]
    async fn json_error_body_is_permanent() {
        let body = r#"{"code":404,"error":true,"msg":"file not found"}"#;
        // Sniffed by content even when the server mislabels it.
        for content_type in ["application/json", "audio/wav", "text/html"] {
            let server =
                serve(ResponseTemplate::new(200).set_body_raw(body.as_bytes(), content_type)).await;
            let tmp = TempDir::new().expect("tempdir");
            let dest = tmp.path().join("a.wav");
            let err = fetch(&server, &dest).await.unwrap_err();
            assert!(!err.is_transient(), "{content_type}: {err}");
            assert!(err.to_string().contains("file not found"), "{err}");
            assert!(!dest.exists());
            assert!(entries(tmp.path()).is_empty());
        }
    }

    #[tokio::test]
    async fn json_content_type_is_permanent_even_if_unparsable() {
        let server =
            serve(ResponseTemplate::new(200).set_body_raw("oops", "application/json")).await;
        let tmp = TempDir::new().expect("tempdir");
        let err = fetch(&server, &tmp.path().join("a.wav")).await.unwrap_err();
        assert!(!err.is_transient(), "{err}");
    }

    #[tokio::test]
    async fn brace_prefixed_audio_is_not_mistaken_for_json() {
        let mut body = b"{not json".to_vec();
        body.extend(audio(1000));
        let server =
            serve(ResponseTemplate::new(200).set_body_raw(body.clone(), "audio/wav")).await;
        let tmp = TempDir::new().expect("tempdir");
        let got = fetch(&server, &tmp.path().join("a.wav"))
            .await
            .expect("download");
        assert_eq!(got.bytes, body.len() as u64);
    }

    #[tokio::test]
    async fn empty_body_is_transient() {
        let server = serve(ResponseTemplate::new(200)).await;
        let tmp = TempDir::new().expect("tempdir");
        let dest = tmp.path().join("a.wav");
        let err = fetch(&server, &dest).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(entries(tmp.path()).is_empty());
    }

    #[tokio::test]
    async fn replaces_existing_file() {
        let body = audio(5000);
        let server =
            serve(ResponseTemplate::new(200).set_body_raw(body.clone(), "audio/wav")).await;
        let tmp = TempDir::new().expect("tempdir");
        let dest = tmp.path().join("a.wav");
        std::fs::write(&dest, b"old partial junk").expect("write");
        let got = fetch(&server, &dest).await.expect("download");
        assert_eq!(got.bytes, 5000);
        assert_eq!(std::fs::read(&dest).expect("read"), body);
        assert_eq!(entries(tmp.path()), vec!["a.wav".to_owned()]);
    }

    #[tokio::test]
    async fn failure_leaves_existing_file_alone() {
        let server = serve(ResponseTemplate::new(500)).await;
        let tmp = TempDir::new().expect("tempdir");
        let dest = tmp.path().join("a.wav");
        std::fs::write(&dest, b"keep me").expect("write");
        fetch(&server, &dest).await.unwrap_err();
        assert_eq!(std::fs::read(&dest).expect("read"), b"keep me");
    }

    #[tokio::test]
    async fn truncated_body_is_transient_and_leaves_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.expect("accept");
            // Read the request head before answering so the client is not reset mid-send.
            let mut buf = vec![0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&buf[..n]);
            }
            let head =
                "HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nContent-Length: 10000\r\n\r\n";
            sock.write_all(head.as_bytes()).await.expect("write");
            sock.write_all(&audio(4000)).await.expect("write");
            sock.flush().await.expect("flush");
            // Dropping the socket closes it short of the promised length.
        });

        let tmp = TempDir::new().expect("tempdir");
        let dest = tmp.path().join("sub/a.wav");
        let err = download_to(client().get(format!("http://{addr}/a.wav")), &dest, "test")
            .await
            .unwrap_err();
        server.await.expect("server task");
        assert!(err.is_transient(), "{err}");
        assert!(!dest.exists());
        assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
    }

    #[tokio::test]
    async fn connection_refused_is_transient() {
        // Bind then drop to get a port that is (almost certainly) closed.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let tmp = TempDir::new().expect("tempdir");
        let err = download_to(
            client().get(format!("http://{addr}/a.wav")),
            &tmp.path().join("a.wav"),
            "test",
        )
        .await
        .unwrap_err();
        assert!(err.is_transient(), "{err}");
    }

    #[test]
    fn retry_after_seconds() {
        let now = Utc::now();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn retry_after_http_date() {
        let now = Utc.with_ymd_and_hms(2015, 10, 21, 7, 27, 0).unwrap();
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        // In the past: retry now.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        // Far future: capped.
        assert_eq!(
            parse_retry_after("Thu, 22 Oct 2015 07:28:00 GMT", now),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn retry_after_garbage() {
        let now = Utc::now();
        for v in [
            "",
            "soon",
            "-5",
            "1.5",
            "7s",
            "Wed, 32 Oct 2015 07:28:00 GMT",
        ] {
            assert_eq!(parse_retry_after(v, now), None, "{v:?}");
        }
    }
}
