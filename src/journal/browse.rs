//! What the admin API lists for a person to look at (SPEC §4): the journal's recent rows and
//! the recording download jobs. Reads only; the retry of a job is a `JobUpdate` like any other.

use chrono::{DateTime, Utc};
use rusqlite::params;
use serde_json::Value;

use super::{JOB_COLUMNS, Job, Journal, JournalError, from_ms, ms, sql, writer};
use crate::calls::RecordingState;

/// One journal row as `GET /api/events` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventRow {
    pub id: i64,
    pub provider: String,
    pub name: String,
    pub received_at: DateTime<Utc>,
    pub dedupe_key: String,
    /// The JSON as received, the form fields as an object, or else the text.
    pub body: Value,
}

/// Which journal rows to list.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub provider: Option<String>,
    pub name: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub limit: usize,
}

/// A body as a person reads it: JSON as it came, form fields as an object (every value a
/// string, as TeleCMI's form posts are), anything else as text.
fn readable(content_type: Option<&str>, body: &[u8]) -> Value {
    if let Ok(json) = serde_json::from_slice::<Value>(body) {
        return json;
    }
    let form = content_type.is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
    if form {
        if let Ok(fields) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body) {
            return Value::Object(fields.into_iter().map(|(k, v)| (k, v.into())).collect());
        }
    }
    Value::String(String::from_utf8_lossy(body).into_owned())
}

impl Journal {
    /// Journal rows, newest first.
    pub async fn recent_events(&self, f: EventFilter) -> Result<Vec<EventRow>, JournalError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, provider, name, received_ms, dedupe_key, content_type, body
                 FROM events
                 WHERE (?1 IS NULL OR provider = ?1) AND (?2 IS NULL OR name = ?2)
                   AND received_ms >= ?3
                 ORDER BY id DESC LIMIT ?4",
            )?;
            let since = f.since.map(ms).unwrap_or(i64::MIN);
            let rows = stmt.query_map(params![f.provider, f.name, since, f.limit as i64], |r| {
                let content_type: Option<String> = r.get(5)?;
                let body: Vec<u8> = r.get(6)?;
                Ok(EventRow {
                    id: r.get(0)?,
                    provider: r.get(1)?,
                    name: r.get(2)?,
                    received_at: from_ms(r.get(3)?),
                    dedupe_key: r.get(4)?,
                    body: readable(content_type.as_deref(), &body),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Download jobs, newest first, in `state` when given.
    pub async fn jobs(
        &self,
        state: Option<RecordingState>,
        limit: usize,
    ) -> Result<Vec<Job>, JournalError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs
                 WHERE provider IN ({}) AND (?1 IS NULL OR state = ?1)
                 ORDER BY id DESC LIMIT ?2",
                sql::known_providers()
            ))?;
            let state = state.map(|s| s.as_str());
            let rows = stmt.query_map(params![state, limit as i64], writer::job_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Up to `limit` calls that ended in `[since, until)`, oldest end first, after `after`
    /// (the last one of the previous page: its end, provider and call id), so a caller pages
    /// through any number of them with one page in memory.
    pub async fn ended_calls(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        after: Option<(i64, String, String)>,
        limit: usize,
    ) -> Result<Vec<(i64, crate::calls::Call)>, JournalError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT ended_ms, doc FROM calls
                 WHERE state = 'ended' AND ended_ms >= ?1 AND ended_ms < ?2
                   AND (ended_ms, provider, call_id) > (?3, ?4, ?5)
                 ORDER BY ended_ms, provider, call_id LIMIT ?6",
            )?;
            let (a_ms, a_provider, a_call) =
                after.unwrap_or((i64::MIN, String::new(), String::new()));
            let rows = stmt.query_map(
                params![ms(since), ms(until), a_ms, a_provider, a_call, limit as i64],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )?;
            let mut out = vec![];
            for row in rows {
                let (ended, doc) = row?;
                out.push((ended, serde_json::from_str(&doc)?));
            }
            Ok(out)
        })
        .await
    }

    /// One download job by its id.
    pub async fn job_by_id(&self, id: i64) -> Result<Option<Job>, JournalError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1 AND provider IN ({})",
                sql::known_providers()
            ))?;
            let mut rows = stmt.query_map(params![id], writer::job_from_row)?;
            Ok(rows.next().transpose()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_read_as_json_form_fields_or_text() {
        assert_eq!(
            readable(Some("application/json"), br#"{"a":1}"#),
            serde_json::json!({"a": 1})
        );
        assert_eq!(
            readable(
                Some("application/x-www-form-urlencoded"),
                b"status=answered&to=%2B91"
            ),
            serde_json::json!({"status": "answered", "to": "+91"})
        );
        assert_eq!(
            readable(None, b"not json"),
            Value::String("not json".into())
        );
    }
}
