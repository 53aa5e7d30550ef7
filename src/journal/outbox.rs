//! The outbox of call events (SPEC §7) and each endpoint's delivery of them. Events are written
//! with the state change that produced them (`StateWrite::call_events`), so a crash loses
//! both or neither; an event id seen again (a replay after a crash) is not written twice.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};

use super::{Journal, JournalError, ms};

/// A call event to store, with the endpoints it is for.
#[derive(Debug, Clone)]
pub struct NewCallEvent {
    /// Derived from what caused it, so a replay produces the same id.
    pub id: String,
    pub kind: &'static str,
    pub provider: &'static str,
    pub call_id: String,
    /// Shared, not copied, by the outbox write, its retries and `/api/stream`.
    pub body: Arc<str>,
    pub endpoints: Vec<String>,
}

/// One delivery due to be attempted: the oldest undelivered event of its call for its endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub event_seq: i64,
    pub id: String,
    pub kind: String,
    pub provider: String,
    pub call_id: String,
    pub attempts: u32,
    pub body: String,
    /// The row's `updated_ms` when read: its outcome is written only if nothing (a replay)
    /// changed the row meanwhile.
    pub version: i64,
    pub next_attempt_ms: i64,
}

/// The outcome of one attempt.
#[derive(Debug, Clone)]
pub struct DeliveryUpdate {
    pub endpoint: String,
    pub event_seq: i64,
    /// `pending` (tried again at `next_attempt_at`), `delivered` or `failed`.
    pub state: &'static str,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    /// An attempt's outcome names the version it read ([`Due::version`]); without one (the
    /// retry route) the row is written whatever happened to it.
    pub read_version: Option<i64>,
    /// When the outcome was decided: the row's new version is the later of this and its read
    /// version + 1 ([`DeliveryUpdate::version`]), so the deliverer knows it without reading.
    pub at_ms: i64,
}

impl DeliveryUpdate {
    /// The `updated_ms` this update leaves on a row it finds at `read_version`.
    pub fn version(&self) -> i64 {
        self.read_version
            .map_or(self.at_ms, |v| self.at_ms.max(v + 1))
    }
}

/// Every event produced since `since` delivered again to `endpoint`, in order, with its id.
#[derive(Debug, Clone)]
pub struct Replay {
    pub endpoint: String,
    pub since: DateTime<Utc>,
}

pub(super) fn replay(tx: &Connection, r: &Replay) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_ms = ?3,
                               last_error = NULL, updated_ms = MAX(?3, updated_ms + 1)
         WHERE endpoint = ?1 AND event_seq IN (SELECT seq FROM call_events WHERE created_ms >= ?2)",
    )?
    .execute(params![r.endpoint, ms(r.since), ms(Utc::now())])?;
    Ok(())
}

/// Stores a call event and its deliveries unless its id is known. `OR IGNORE` so that SQLite
/// opens no statement journal per row (see `writer::append`): with two endpoints that journal
/// was a third of the state writer's time.
pub(super) fn insert(tx: &Connection, e: &NewCallEvent) -> rusqlite::Result<()> {
    let now = ms(Utc::now());
    let seq: Option<i64> = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO call_events (id, type, provider, call_id, created_ms, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING seq",
        )?
        .query_row(
            params![e.id, e.kind, e.provider, e.call_id, now, &*e.body],
            |r| r.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            other => Err(other),
        })?;
    let Some(seq) = seq else {
        return Ok(());
    };
    for endpoint in &e.endpoints {
        tx.prepare_cached(
            "INSERT OR IGNORE INTO deliveries (endpoint, event_seq, provider, call_id, state,
                                     next_attempt_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5)",
        )?
        .execute(params![endpoint, seq, e.provider, e.call_id, now])?;
    }
    Ok(())
}

pub(super) fn update(tx: &Connection, u: &DeliveryUpdate) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE deliveries SET state = ?3, attempts = ?4, next_attempt_ms = ?5, last_error = ?6,
                               updated_ms = MAX(?7, updated_ms + 1)
         WHERE endpoint = ?1 AND event_seq = ?2 AND (?8 IS NULL OR updated_ms = ?8)",
    )?
    .execute(params![
        u.endpoint,
        u.event_seq,
        u.state,
        u.attempts,
        ms(u.next_attempt_at),
        u.last_error,
        u.at_ms,
        u.read_version,
    ])?;
    Ok(())
}

/// Delivered events and their deliveries older than `before` (failed ones stay listed).
pub(super) fn sweep(tx: &Connection, before: i64) -> rusqlite::Result<usize> {
    let n = tx.execute(
        "DELETE FROM deliveries WHERE state = 'delivered' AND updated_ms < ?1",
        params![before],
    )?;
    Ok(n + tx.execute(
        "DELETE FROM call_events WHERE created_ms < ?1
           AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = call_events.seq)",
        params![before],
    )?)
}

impl Journal {
    /// Up to `limit` of `endpoint`'s pending deliveries after event `after`, oldest first: what
    /// the delivery loop holds in memory ([`crate::events::queue`]).
    pub async fn pending_deliveries(
        &self,
        endpoint: String,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Due>, JournalError> {
        self.read_tail(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT d.event_seq, e.id, e.type, d.provider, d.call_id, d.attempts, e.body,
                        d.updated_ms, d.next_attempt_ms
                 FROM deliveries d INDEXED BY deliveries_pending
                 JOIN call_events e ON e.seq = d.event_seq
                 WHERE d.endpoint = ?1 AND d.state = 'pending' AND d.event_seq > ?2
                 ORDER BY d.event_seq LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![endpoint, after, limit as i64], |r| {
                Ok(Due {
                    event_seq: r.get(0)?,
                    id: r.get(1)?,
                    kind: r.get(2)?,
                    provider: r.get(3)?,
                    call_id: r.get(4)?,
                    attempts: r.get(5)?,
                    body: r.get(6)?,
                    version: r.get(7)?,
                    next_attempt_ms: r.get(8)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// How many deliveries of `endpoint` are in each state, for tests and the API.
    pub async fn delivery_states(
        &self,
        endpoint: String,
    ) -> Result<Vec<(String, String, u32)>, JournalError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT e.id, d.state, d.attempts FROM deliveries d
                 JOIN call_events e ON e.seq = d.event_seq
                 WHERE d.endpoint = ?1 ORDER BY d.event_seq",
            )?;
            let rows =
                stmt.query_map(params![endpoint], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

/// One delivery as the admin API lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeliveryRow {
    pub endpoint: String,
    #[serde(skip)]
    pub event_seq: i64,
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub provider: String,
    pub call_id: String,
    pub state: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// An endpoint's queue at a glance.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EndpointCounts {
    pub pending: u64,
    pub failed: u64,
    pub delivered: u64,
    pub oldest_pending_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
}

const ROW_COLUMNS: &str = "d.endpoint, d.event_seq, e.id, e.type, d.provider, d.call_id, d.state,
    d.attempts, d.last_error, d.next_attempt_ms, e.created_ms";

fn delivery_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRow> {
    let state: String = r.get(6)?;
    Ok(DeliveryRow {
        endpoint: r.get(0)?,
        event_seq: r.get(1)?,
        event_id: r.get(2)?,
        kind: r.get(3)?,
        provider: r.get(4)?,
        call_id: r.get(5)?,
        next_attempt_at: (state == "pending")
            .then(|| r.get(9).map(super::from_ms))
            .transpose()?,
        state,
        attempts: r.get(7)?,
        last_error: r.get(8)?,
        created_at: super::from_ms(r.get(10)?),
    })
}

impl Journal {
    /// Up to `limit` of `endpoint`'s deliveries, newest first, in `state` if given.
    pub async fn deliveries(
        &self,
        endpoint: String,
        state: Option<&'static str>,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>, JournalError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {ROW_COLUMNS} FROM deliveries d JOIN call_events e ON e.seq = d.event_seq
                 WHERE d.endpoint = ?1 AND (?2 IS NULL OR d.state = ?2)
                 ORDER BY d.event_seq DESC LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![endpoint, state, limit as i64], delivery_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The pending and failed deliveries of the event `event_id` (every endpoint's).
    pub async fn retryable(&self, event_id: String) -> Result<Vec<DeliveryRow>, JournalError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {ROW_COLUMNS} FROM deliveries d JOIN call_events e ON e.seq = d.event_seq
                 WHERE e.id = ?1 AND d.state IN ('pending', 'failed') ORDER BY d.endpoint"
            ))?;
            let rows = stmt.query_map(params![event_id], delivery_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// How many of `endpoint`'s deliveries a replay since `since` would send again.
    pub async fn replayable(
        &self,
        endpoint: String,
        since: DateTime<Utc>,
    ) -> Result<u64, JournalError> {
        self.read(move |conn| {
            Ok(conn.query_row(
                "SELECT COUNT(*) FROM deliveries d JOIN call_events e ON e.seq = d.event_seq
                 WHERE d.endpoint = ?1 AND e.created_ms >= ?2",
                params![endpoint, ms(since)],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// How many of `endpoint`'s deliveries are pending and when the oldest of them was produced,
    /// for the delivery loop's gauges: through the pending rows alone, on the tail's connection,
    /// since `endpoint_counts` reads every row the endpoint ever had (its last success).
    pub async fn pending_summary(
        &self,
        endpoint: String,
    ) -> Result<(u64, Option<DateTime<Utc>>), JournalError> {
        self.read_tail(move |conn| {
            // The count from the `deliveries_due` index alone (the partial index would read
            // each row to check its state), and the oldest as the first pending event: events
            // are numbered as they are produced, so under a backlog of tens of thousands this
            // reads one row, not all of them joined to their events.
            let n: u64 = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM deliveries INDEXED BY deliveries_due
                     WHERE endpoint = ?1 AND state = 'pending'",
                )?
                .query_row(params![endpoint], |r| r.get(0))?;
            let oldest: Option<i64> = conn
                .prepare_cached(
                    "SELECT e.created_ms FROM deliveries d INDEXED BY deliveries_pending
                     JOIN call_events e ON e.seq = d.event_seq
                     WHERE d.endpoint = ?1 AND d.state = 'pending'
                     ORDER BY d.event_seq LIMIT 1",
                )?
                .query_row(params![endpoint], |r| r.get(0))
                .optional()?;
            Ok((n, oldest.map(super::from_ms)))
        })
        .await
    }

    pub async fn endpoint_counts(&self, endpoint: String) -> Result<EndpointCounts, JournalError> {
        self.read(move |conn| {
            let mut counts = EndpointCounts::default();
            // Through the `deliveries_due` index alone: a delivered or failed row's
            // `next_attempt_ms` is the time of its outcome (`Deliverer::settle`), so no row is
            // read. With `MAX(updated_ms)` every row the endpoint ever had was, 24 ms for
            // 40 000 of them against 2.7 ms (BENCHMARKS.md, eleventh round).
            let mut stmt = conn.prepare_cached(
                "SELECT state, COUNT(*), MAX(next_attempt_ms) FROM deliveries
                 INDEXED BY deliveries_due WHERE endpoint = ?1 GROUP BY state",
            )?;
            let rows = stmt.query_map(params![endpoint], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?, r.get::<_, i64>(2)?))
            })?;
            for row in rows {
                let (state, n, last) = row?;
                match state.as_str() {
                    "pending" => counts.pending = n,
                    "failed" => {
                        counts.failed = n;
                        counts.last_failure_at = Some(super::from_ms(last));
                    }
                    "delivered" => {
                        counts.delivered = n;
                        counts.last_success_at = Some(super::from_ms(last));
                    }
                    _ => {}
                }
            }
            let oldest: Option<i64> = conn.query_row(
                "SELECT MIN(e.created_ms) FROM deliveries d JOIN call_events e ON e.seq = d.event_seq
                 WHERE d.endpoint = ?1 AND d.state = 'pending'",
                params![endpoint],
                |r| r.get(0),
            )?;
            counts.oldest_pending_at = oldest.map(super::from_ms);
            Ok(counts)
        })
        .await
    }
}
