//! The admin routes a person (and the web page of SPEC §9) browses with: the journal's recent
//! rows, the recording download jobs and their retry, and a recording's file with `Range`.

use std::io::SeekFrom;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::query::{LIST_DEFAULT, LIST_MAX, limit, time};
use super::{ApiError, AppState};
use crate::calls::{Provider, RecordingState};
use crate::journal::{EventFilter, Job, JobUpdate, StateWrite};
use crate::recordings::folder::Folder;
use crate::recordings::path::recording_relative_path;

fn provider(given: &str) -> Result<Provider, ApiError> {
    Provider::parse(given).ok_or_else(|| {
        let known: Vec<&str> = Provider::ALL.iter().map(|p| p.as_str()).collect();
        ApiError::BadRequest(format!(
            "invalid `provider`: expected one of {}",
            known.join(", ")
        ))
    })
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    provider: Option<String>,
    name: Option<String>,
    since: Option<String>,
    limit: Option<String>,
}

/// `GET /api/events?provider=&name=&since=&limit=`: journal rows, newest first.
pub async fn events(
    State(state): State<AppState>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Value>, ApiError> {
    let provider = match q.provider.as_deref() {
        None | Some("") => None,
        Some(p) => Some(provider(p)?.as_str().to_string()),
    };
    let filter = EventFilter {
        provider,
        name: q.name.filter(|n| !n.is_empty()),
        since: time("since", q.since.as_deref())?,
        limit: limit(q.limit.as_deref(), LIST_DEFAULT, LIST_MAX)?,
    };
    let events = state.journal.recent_events(filter).await?;
    Ok(Json(json!({ "events": events })))
}

#[derive(Debug, Deserialize)]
pub struct JobsQuery {
    state: Option<String>,
    limit: Option<String>,
}

/// A download job as the API shows it.
fn job_json(j: &Job) -> Value {
    json!({
        "id": j.id,
        "provider": j.provider.as_str(),
        "recording_id": j.recording_id,
        "call_id": j.call_id,
        "dn": j.dn,
        "path": j.rel_path,
        "state": j.state.as_str(),
        "attempts": j.attempts,
        "last_error": j.last_error,
        "next_attempt_at": (j.state == RecordingState::Pending).then_some(j.next_attempt_at),
        "bytes": j.bytes,
        "sha256": j.sha256,
    })
}

/// `GET /api/recordings/jobs?state=&limit=`: download jobs, newest first.
pub async fn jobs(
    State(state): State<AppState>,
    Query(q): Query<JobsQuery>,
) -> Result<Json<Value>, ApiError> {
    let wanted = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(RecordingState::parse(s).ok_or_else(|| {
            ApiError::BadRequest(
                "invalid `state`: expected pending, downloading, downloaded or failed".into(),
            )
        })?),
    };
    let jobs = state
        .journal
        .jobs(wanted, limit(q.limit.as_deref(), LIST_DEFAULT, LIST_MAX)?)
        .await?;
    let jobs: Vec<Value> = jobs.iter().map(job_json).collect();
    Ok(Json(json!({ "jobs": jobs })))
}

/// `POST /api/recordings/jobs/{id}/retry`: a `failed` job is due now, from its first attempt.
pub async fn retry_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::BadRequest("invalid `id`: expected a job number".into()))?;
    let job = state
        .journal
        .job_by_id(id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if job.state != RecordingState::Failed {
        return Err(ApiError::BadRequest(format!(
            "job {id} is {}: only a failed job is retried",
            job.state.as_str()
        )));
    }
    // A name refused as unsafe never gets a path: asking again would refuse it again.
    if job.rel_path.is_none() {
        return Err(ApiError::BadRequest(format!(
            "job {id} has no safe file name ({}); it cannot be downloaded",
            job.last_error.as_deref().unwrap_or("refused")
        )));
    }
    let Some(downloads) = &state.downloads else {
        return Err(ApiError::BadRequest(
            "recording downloads are disabled (recordings.download = false)".into(),
        ));
    };
    let update = JobUpdate {
        id,
        state: RecordingState::Pending,
        attempts: 0,
        next_attempt_at: Utc::now(),
        last_error: job.last_error.clone(),
        bytes: None,
        sha256: None,
        rel_path: None,
    };
    state
        .journal
        .write_state(StateWrite {
            jobs: vec![update],
            ..Default::default()
        })
        .await?;
    downloads.notify_one();
    tracing::info!(job = id, recording = %job.recording_id, "recording job retried by request");
    Ok(Json(json!({ "id": id, "state": "pending" })))
}

/// A recording's media type, by its extension.
fn media_type(name: &str) -> &'static str {
    match name
        .rsplit('.')
        .next()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("wav") => "audio/wav",
        Some("mp3") => "audio/mpeg",
        Some("ogg") | Some("opus") => "audio/ogg",
        Some("m4a") => "audio/mp4",
        _ => "application/octet-stream",
    }
}

/// The one byte range of a `Range: bytes=…` header within `len` bytes: `Ok(None)` for the
/// whole file (no header, or several ranges, which a player does not ask for), `Err` when
/// nothing of it is in the file.
fn byte_range(headers: &HeaderMap, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (start, end) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            (len.saturating_sub(n), len.checked_sub(1).ok_or(())?)
        }
        (start, "") => (start.parse().map_err(|_| ())?, len.saturating_sub(1)),
        (start, end) => {
            let end: u64 = end.parse().map_err(|_| ())?;
            (
                start.parse().map_err(|_| ())?,
                end.min(len.saturating_sub(1)),
            )
        }
    };
    if start > end || start >= len {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// `GET /api/recordings/{provider}/{*path}`: the file under `recordings.dir/<provider>/`,
/// never outside it: the path passes the same checks as a recording's name, and no folder
/// or file on the way may be a link.
pub async fn recording_file(
    State(state): State<AppState>,
    Path((provider_text, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let provider = provider(&provider_text)?;
    let rel = recording_relative_path(provider.as_str(), &path)
        .map_err(|e| ApiError::BadRequest(format!("invalid `path`: {e}")))?;
    let root = state.settings.recordings.dir.clone();
    let file = tokio::task::spawn_blocking(move || {
        let name = rel.file_name()?.to_str()?.to_string();
        let folder = Folder::open(&root, rel.parent()?, false).ok()??;
        folder.open_file(&name)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .ok_or(ApiError::NotFound)?;
    let mut file = tokio::fs::File::from_std(file);
    let len = file
        .metadata()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .len();
    let mut reply = Response::builder()
        .header(header::CONTENT_TYPE, media_type(&path))
        .header(header::ACCEPT_RANGES, "bytes");
    let (status, start, count) = match byte_range(&headers, len) {
        Ok(None) => (StatusCode::OK, 0, len),
        Ok(Some((start, end))) => {
            reply = reply.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        Err(()) => {
            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
    };
    file.seek(SeekFrom::Start(start))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file.take(count)));
    reply
        .status(status)
        .header(header::CONTENT_LENGTH, count)
        .body(body)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, value.parse().unwrap());
        byte_range(&headers, len)
    }

    #[test]
    fn ranges_are_read_as_a_player_sends_them() {
        assert_eq!(byte_range(&HeaderMap::new(), 100), Ok(None));
        assert_eq!(range("bytes=0-", 100), Ok(Some((0, 99))));
        assert_eq!(range("bytes=10-19", 100), Ok(Some((10, 19))));
        assert_eq!(range("bytes=90-500", 100), Ok(Some((90, 99))));
        assert_eq!(range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(range("bytes=100-", 100), Err(()));
        assert_eq!(range("bytes=20-10", 100), Err(()));
        assert_eq!(range("bytes=x-", 100), Err(()));
        assert_eq!(range("bytes=-5", 0), Err(()));
    }
}
