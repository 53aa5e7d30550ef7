//! `GET /api/export?since=&until=&format=csv|ndjson`: ended calls as CDR rows
//! (`calls::cdr`), streamed page by page, so a month of calls never sits in memory; what
//! `callhook export` prints.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::Response;
use bytes::Bytes;
use chrono::Utc;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::query::time;
use super::{ApiError, AppState};
use crate::calls::cdr::{COLUMNS, Cdr};

/// Calls read from the database per page.
const PAGE: usize = 500;

#[derive(Debug, Deserialize)]
pub struct ExportQuery {
    since: Option<String>,
    until: Option<String>,
    format: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Csv,
    Ndjson,
}

/// The rows of one page in `format`; with the header first when `header`.
fn encode(rows: &[Cdr], format: Format, header: bool) -> Result<Vec<u8>, String> {
    match format {
        Format::Ndjson => {
            let mut out = vec![];
            for row in rows {
                serde_json::to_writer(&mut out, row).map_err(|e| e.to_string())?;
                out.push(b'\n');
            }
            Ok(out)
        }
        Format::Csv => {
            let mut w = csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(vec![]);
            if header {
                w.write_record(COLUMNS).map_err(|e| e.to_string())?;
            }
            for row in rows {
                w.serialize(row).map_err(|e| e.to_string())?;
            }
            w.into_inner().map_err(|e| e.to_string())
        }
    }
}

pub async fn export(
    State(state): State<AppState>,
    Query(q): Query<ExportQuery>,
) -> Result<Response, ApiError> {
    let since = time("since", q.since.as_deref())?
        .ok_or_else(|| ApiError::BadRequest("missing `since`: an RFC 3339 time".into()))?;
    let until = time("until", q.until.as_deref())?.unwrap_or_else(Utc::now);
    let format = match q.format.as_deref() {
        None | Some("") | Some("csv") => Format::Csv,
        Some("ndjson") => Format::Ndjson,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "invalid `format`: expected csv or ndjson".into(),
            ));
        }
    };
    // A page is read while the previous one is being sent; two in flight at most.
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    let journal = state.journal.clone();
    tokio::spawn(async move {
        let mut after = None;
        let mut first = true;
        loop {
            let page = match journal.ended_calls(since, until, after.clone(), PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(error = %e, "export: reading ended calls failed");
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
            let rows: Vec<Cdr> = page.iter().map(|(_, call)| Cdr::of(call)).collect();
            let chunk = match encode(&rows, format, first) {
                Ok(chunk) => chunk,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e))).await;
                    return;
                }
            };
            first = false;
            if !chunk.is_empty() && tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                return; // the reader went away
            }
            match page.last() {
                Some((ended, call)) if page.len() == PAGE => {
                    after = Some((
                        *ended,
                        call.key.provider.as_str().to_string(),
                        call.key.call_id.clone(),
                    ));
                }
                _ => return,
            }
        }
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let content_type = match format {
        Format::Csv => "text/csv; charset=utf-8",
        Format::Ndjson => "application/x-ndjson",
    };
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(body)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::{Call, CallKey, Provider};

    #[test]
    fn a_name_with_a_comma_and_quotes_comes_out_as_a_csv_reader_reads_it() {
        let mut call: Call = Call::new(CallKey::new(Provider::Jas, "26"));
        let mut leg = crate::events::produce::tests::person("1", "Connected");
        leg.party_number = "5148888888".into();
        leg.party_name = "Doe, \"Johnny\"".into();
        call.participants.push(leg);
        call.end_reason = Some(crate::calls::EndReason::parse("a, \"quoted\" reason"));
        // Recording names carry the caller's name, commas and quotes included.
        call.recordings.push(crate::calls::Recording {
            id: "1".into(),
            url: String::new(),
            path: Some("jas/101/[Doe, \"Johnny\"]_101.wav".into()),
            state: crate::calls::RecordingState::Downloaded,
            bytes: None,
            sha256: None,
            dn: None,
            error: None,
        });
        let out = encode(&[Cdr::of(&call)], Format::Csv, true).unwrap();
        let mut reader = csv::Reader::from_reader(out.as_slice());
        assert_eq!(
            reader.headers().unwrap().iter().collect::<Vec<_>>(),
            COLUMNS
        );
        let row = reader.records().next().unwrap().unwrap();
        assert_eq!(&row[0], "jas");
        assert_eq!(&row[9], "a, \"quoted\" reason");
        assert_eq!((&row[3], &row[4]), ("101", "5148888888"));
        assert_eq!(&row[10], "jas/101/[Doe, \"Johnny\"]_101.wav");
        assert_eq!(row.len(), COLUMNS.len());
        let ndjson = encode(&[Cdr::of(&call)], Format::Ndjson, true).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&ndjson).unwrap();
        assert_eq!(back["end_reason"], "a, \"quoted\" reason");
    }
}
