//! Streams one recording from the provider to disk, hashing it on the way.
//! The body lands in a hidden temp file next to the destination and is renamed into
//! place only after every check passes, so a file under its final name is always whole.
//! Folders and files are reached through [`Folder`], never through a symbolic link below
//! `recordings.dir`, and the rename never replaces a file that is already there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWriteExt, BufWriter};

use super::folder::{Folder, FolderError};
use crate::outbound::{self, Api, error_chain};

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
    /// Where it is, relative to `recordings.dir`: the name asked for, or a distinct one when a
    /// different recording's file holds that name already.
    pub rel_path: PathBuf,
}

/// What one attempt may take: `recordings.max_bytes`, `recordings.stall_timeout_secs`,
/// `recordings.download_timeout_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: u64,
    /// No byte for this long: the attempt fails (transient).
    pub stall: Duration,
    /// From sending the request to the last byte.
    pub deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 4 << 30,
            stall: Duration::from_secs(60),
            deadline: Duration::from_secs(4 * 3600),
        }
    }
}

impl Limits {
    pub fn of(settings: &crate::config::RecordingsSettings) -> Limits {
        Limits {
            max_bytes: settings.max_bytes,
            stall: settings.stall_timeout,
            deadline: settings.download_timeout,
        }
    }
}

/// Where a recording goes.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// `recordings.dir`.
    pub root: &'a Path,
    /// Below it: the provider's folder and the recording's name, already checked.
    pub rel: &'a Path,
    /// Makes the name distinct (`name.<tag>.wav`) when another recording's file is already
    /// there; the job's id, so every attempt at one job picks the same name.
    pub tag: &'a str,
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
    /// Declared or streamed past `recordings.max_bytes`: not retried, nothing kept.
    #[error("download failed: larger than recordings.max_bytes ({limit} bytes)")]
    TooLarge { limit: u64 },
    /// No byte for `recordings.stall_timeout_secs`: retried.
    #[error(
        "transient download failure: stalled, no data for {secs} s after {bytes} bytes (recordings.stall_timeout_secs)"
    )]
    Stalled { secs: u64, bytes: u64 },
    /// Not done within `recordings.download_timeout_secs`: retried.
    #[error(
        "transient download failure: not done within {secs} s after {bytes} bytes (recordings.download_timeout_secs)"
    )]
    TimedOut { secs: u64, bytes: u64 },
}

impl DownloadError {
    /// The server's Retry-After hint, if it gave one with a transient failure.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Transient { .. } | Self::Stalled { .. } | Self::TimedOut { .. }
        )
    }

    /// The `callhook_recordings_total` outcome of an attempt cut by a limit.
    pub fn limit_outcome(&self) -> Option<&'static str> {
        match self {
            Self::TooLarge { .. } => Some("too_large"),
            Self::Stalled { .. } => Some("stalled"),
            Self::TimedOut { .. } => Some("timeout"),
            _ => None,
        }
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

/// Sends `request` (already carrying auth), streams the body to a temp file in the target's
/// folder (creating folders, refusing links below `recordings.dir`), checks it, fsyncs, renames
/// it onto the target's name (or a distinct one when that name is taken), fsyncs the folder.
///
/// On failure the temp file is removed and nothing else is changed, except when only the final
/// folder fsync fails: the rename has then happened (the file is whole) but its durability is
/// unknown, so an error is still reported. `api` labels `callhook_upstream_requests_total`
/// (the provider's, e.g. `jas_recordings`, `telecmi_play`).
pub async fn download_to(
    request: reqwest::RequestBuilder,
    target: &Target<'_>,
    limits: &Limits,
    api: Api,
) -> Result<Downloaded, DownloadError> {
    let started = Instant::now();
    let deadline = started + limits.deadline;
    let bad = || DownloadError::permanent(format!("bad destination {}", target.rel.display()));
    let final_name = target
        .rel
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(bad)?
        .to_owned();
    let folder_rel = target.rel.parent().unwrap_or(Path::new("")).to_path_buf();

    // Errors are told without the URL (`outbound::error_chain`): it may carry credentials in
    // its query string and these reasons end up in logs and the job table.
    let sent = match tokio::time::timeout_at(deadline, request.send()).await {
        Ok(sent) => sent,
        Err(_) => {
            return Err(DownloadError::TimedOut {
                secs: limits.deadline.as_secs(),
                bytes: 0,
            });
        }
    };
    outbound::count(api, sent.as_ref().ok().map(|resp| resp.status().as_u16()));
    outbound::time(api, started.elapsed());
    let mut resp = sent.map_err(request_error)?;
    check_status(&resp)?;
    if resp.content_length().is_some_and(|n| n > limits.max_bytes) {
        return Err(DownloadError::TooLarge {
            limit: limits.max_bytes,
        });
    }

    let root = target.root.to_path_buf();
    let tmp_name = temp_name(&final_name);
    let (folder, file) = {
        let tmp_name = tmp_name.clone();
        blocking(move || {
            let folder = Folder::open(&root, &folder_rel, true)?.expect("a created folder exists");
            let file = folder.create_new(&tmp_name)?;
            Ok((folder, file))
        })
        .await?
    };
    // Removes the temp file on every early return, and also if this future is
    // dropped mid-download (e.g. on shutdown).
    let mut guard = TempGuard {
        folder: folder.clone(),
        name: Some(tmp_name.clone()),
    };
    let tmp_path = folder.path().join(&tmp_name);
    let file = tokio::fs::File::from_std(file);
    let (bytes, sha256) = stream_body(&mut resp, file, &tmp_path, limits, deadline).await?;

    let alt = distinct_name(&final_name, target.tag);
    let placed = {
        let folder = folder.clone();
        let tmp_name = tmp_name.clone();
        blocking(move || {
            if folder.rename_new(&tmp_name, &final_name)? {
                return Ok(Some(final_name));
            }
            if folder.rename_new(&tmp_name, &alt)? {
                return Ok(Some(alt));
            }
            Ok(None)
        })
        .await?
    };
    let Some(placed) = placed else {
        return Err(DownloadError::permanent(format!(
            "{} and its distinct name {} are both taken by other files",
            target.rel.display(),
            distinct_name(
                target
                    .rel
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or(""),
                target.tag
            )
        )));
    };
    guard.disarm();
    blocking(move || folder.sync()).await?;

    metrics::histogram!("callhook_recording_download_seconds")
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("callhook_recording_bytes_total").increment(bytes);
    Ok(Downloaded {
        bytes,
        sha256,
        rel_path: target.rel.with_file_name(placed),
    })
}

/// The hidden temp name of a download of `final_name`: short whatever the name's length (a
/// 255-byte name is valid, and a temp name built on it would not be), the same prefix for every
/// attempt at one name so that a crashed attempt's file can be found.
pub fn temp_name(final_name: &str) -> String {
    format!("{}{:016x}", temp_prefix(final_name), rand::random::<u64>())
}

/// What every temp name of `final_name` starts with.
pub fn temp_prefix(final_name: &str) -> String {
    let hash = Sha256::digest(final_name.as_bytes());
    format!(".callhook-{}.part-", hex::encode(&hash[..8]))
}

/// `name` with `.<tag>` before its extension (`a.wav` → `a.7.wav`, `a` → `a.7`), shortened to
/// fit the 255 bytes a file name may have.
pub fn distinct_name(name: &str, tag: &str) -> String {
    const NAME_MAX: usize = 255;
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name, ""),
    };
    let mut stem = stem.to_owned();
    while stem.len() + 1 + tag.len() + ext.len() > NAME_MAX && !stem.is_empty() {
        stem.pop();
    }
    format!("{stem}.{tag}{ext}")
}

/// Runs a few file system calls on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FolderError> + Send + 'static,
) -> Result<T, DownloadError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DownloadError::permanent(format!("file system task failed: {e}")))?
        .map_err(folder_error)
}

/// A link below `recordings.dir` is refused; a full disk is transient; the rest is permanent.
pub fn folder_error(e: FolderError) -> DownloadError {
    if e.is_transient() {
        DownloadError::transient(e.to_string())
    } else {
        DownloadError::permanent(e.to_string())
    }
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

/// Copies the body into `file` chunk by chunk, then runs the body checks and fsyncs. Returns
/// the size and the hex SHA-256.
async fn stream_body(
    resp: &mut reqwest::Response,
    file: tokio::fs::File,
    tmp_path: &Path,
    limits: &Limits,
    deadline: Instant,
) -> Result<(u64, String), DownloadError> {
    let expected = resp.content_length();
    let json_type = json_content_type(resp.headers());
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut hasher = Sha256::new();
    let mut total: u64 = 0;
    // One byte past the limit tells "exactly 64 KiB" from "bigger".
    let mut head: Vec<u8> = Vec::new();

    loop {
        let now = Instant::now();
        let timed_out = || DownloadError::TimedOut {
            secs: limits.deadline.as_secs(),
            bytes: total,
        };
        if now >= deadline {
            return Err(timed_out());
        }
        let wait = limits.stall.min(deadline - now);
        let chunk = match tokio::time::timeout(wait, resp.chunk()).await {
            Err(_) if Instant::now() >= deadline => return Err(timed_out()),
            Err(_) => {
                return Err(DownloadError::Stalled {
                    secs: limits.stall.as_secs(),
                    bytes: total,
                });
            }
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                return Err(DownloadError::transient(format!(
                    "reading body after {total} bytes: {}",
                    error_chain(e)
                )));
            }
        };
        if total + chunk.len() as u64 > limits.max_bytes {
            return Err(DownloadError::TooLarge {
                limit: limits.max_bytes,
            });
        }
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

    Ok((total, hex::encode(hasher.finalize())))
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
    // A request that cannot even be built, or a redirect loop, fails the same way next time.
    let permanent = e.is_builder() || e.is_redirect();
    let reason = format!("sending request: {}", error_chain(e));
    if permanent {
        DownloadError::permanent(reason)
    } else {
        DownloadError::transient(reason)
    }
}

/// A full disk (or quota) is transient: retried with backoff like any other; the rest of our
/// own file system's errors are permanent.
fn fs_error(action: &str, path: &Path, e: &std::io::Error) -> DownloadError {
    let reason = format!("{action} {}: {e}", path.display());
    if super::folder::is_disk_full(e) {
        DownloadError::transient(reason)
    } else {
        DownloadError::permanent(reason)
    }
}

/// Deletes the temp file unless disarmed after a successful rename.
struct TempGuard {
    folder: Folder,
    name: Option<String>,
}

impl TempGuard {
    fn disarm(&mut self) {
        self.name = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            // Blocking, but a single unlink; Drop cannot await, and this must
            // also run when the download future is cancelled.
            self.folder.remove(&name);
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
        outbound::client(outbound::Options::own(true)).expect("client")
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

    /// `dest` lies under a temp dir: that dir is `recordings.dir`.
    async fn get_to(
        request: reqwest::RequestBuilder,
        dest: &Path,
        limits: &Limits,
    ) -> Result<Downloaded, DownloadError> {
        let root = dest
            .ancestors()
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".tmp"))
            })
            .expect("under a TempDir");
        let rel = dest.strip_prefix(root).unwrap();
        let target = Target {
            root,
            rel,
            tag: "t",
        };
        download_to(request, &target, limits, Api::new("test")).await
    }

    async fn fetch(server: &MockServer, dest: &Path) -> Result<Downloaded, DownloadError> {
        get_to(
            client().get(format!("{}/rec.wav", server.uri())),
            dest,
            &Limits::default(),
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
    async fn never_replaces_an_existing_file_but_takes_a_distinct_name() {
        let body = audio(5000);
        let server =
            serve(ResponseTemplate::new(200).set_body_raw(body.clone(), "audio/wav")).await;
        let tmp = TempDir::new().expect("tempdir");
        let dest = tmp.path().join("a.wav");
        std::fs::write(&dest, b"another recording").expect("write");
        let got = fetch(&server, &dest).await.expect("download");
        assert_eq!(got.bytes, 5000);
        assert_eq!(got.rel_path, PathBuf::from("a.t.wav"));
        assert_eq!(std::fs::read(&dest).expect("read"), b"another recording");
        assert_eq!(std::fs::read(tmp.path().join("a.t.wav")).unwrap(), body);
        // Both names taken: refused, nothing replaced, no temp file left.
        std::fs::write(tmp.path().join("a.t.wav"), b"third").unwrap();
        let err = fetch(&server, &dest).await.unwrap_err();
        assert!(!err.is_transient(), "{err}");
        assert_eq!(
            entries(tmp.path()),
            vec!["a.t.wav".to_owned(), "a.wav".to_owned()]
        );
    }

    #[test]
    fn distinct_names_keep_the_extension_and_fit_name_max() {
        assert_eq!(distinct_name("a.wav", "7"), "a.7.wav");
        assert_eq!(distinct_name("a", "7"), "a.7");
        assert_eq!(distinct_name(".wav", "7"), ".wav.7");
        let long = format!("{}.wav", "é".repeat(125));
        let got = distinct_name(&long, "12345");
        assert!(got.len() <= 255 && got.ends_with(".12345.wav"), "{got}");
        assert!(temp_name(&"x".repeat(255)).len() < 64);
        assert!(temp_name("a.wav").starts_with(&temp_prefix("a.wav")));
        assert_ne!(temp_prefix("a.wav"), temp_prefix("b.wav"));
    }

    #[tokio::test]
    async fn a_255_byte_name_is_downloaded() {
        let body = audio(3000);
        let server =
            serve(ResponseTemplate::new(200).set_body_raw(body.clone(), "audio/wav")).await;
        let tmp = TempDir::new().expect("tempdir");
        let name = format!("{}.wav", "n".repeat(251));
        assert_eq!(name.len(), 255);
        let dest = tmp.path().join("jas/101").join(&name);
        let got = fetch(&server, &dest).await.expect("download");
        assert_eq!(got.rel_path, PathBuf::from("jas/101").join(&name));
        assert_eq!(std::fs::read(&dest).unwrap(), body);
    }

    #[tokio::test]
    async fn a_declared_length_over_max_bytes_is_refused_before_reading() {
        let server = serve(ResponseTemplate::new(200).set_body_raw(audio(5000), "audio/wav")).await;
        let tmp = TempDir::new().expect("tempdir");
        let limits = Limits {
            max_bytes: 4999,
            ..Limits::default()
        };
        let request = client().get(format!("{}/rec.wav", server.uri()));
        let err = get_to(request, &tmp.path().join("a.wav"), &limits)
            .await
            .unwrap_err();
        assert!(
            matches!(err, DownloadError::TooLarge { limit: 4999 }),
            "{err}"
        );
        assert!(!err.is_transient());
        assert_eq!(err.limit_outcome(), Some("too_large"));
        assert!(entries(tmp.path()).is_empty());
        // At the limit exactly: kept.
        let limits = Limits {
            max_bytes: 5000,
            ..limits
        };
        let request = client().get(format!("{}/rec.wav", server.uri()));
        get_to(request, &tmp.path().join("a.wav"), &limits)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_full_disk_while_writing_is_transient() {
        let server =
            serve(ResponseTemplate::new(200).set_body_raw(audio(200_000), "audio/wav")).await;
        let mut resp = client()
            .get(format!("{}/rec.wav", server.uri()))
            .send()
            .await
            .unwrap();
        // /dev/full answers every write with ENOSPC.
        let full = tokio::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .await
            .expect("/dev/full");
        let limits = Limits::default();
        let err = stream_body(
            &mut resp,
            full,
            Path::new("/dev/full"),
            &limits,
            Instant::now() + limits.deadline,
        )
        .await
        .unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains("writing"), "{err}");
        let quota = fs_error(
            "writing",
            Path::new("x"),
            &std::io::Error::from_raw_os_error(122),
        );
        assert!(quota.is_transient());
        let denied = fs_error(
            "writing",
            Path::new("x"),
            &std::io::Error::from_raw_os_error(13),
        );
        assert!(!denied.is_transient());
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
        let err = get_to(
            client().get(format!("http://{addr}/a.wav")),
            &dest,
            &Limits::default(),
        )
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
        let err = get_to(
            client().get(format!("http://{addr}/a.wav")),
            &tmp.path().join("a.wav"),
            &Limits::default(),
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
