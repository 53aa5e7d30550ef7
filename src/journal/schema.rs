//! The database schema and its migrations, versioned with `PRAGMA user_version`.

use rusqlite::Connection;

/// Each entry moves the schema from version `i` to `i + 1`. Append; never edit a shipped one.
const MIGRATIONS: &[&str] = &[
    // 1: journal, current state, download jobs.
    "
    CREATE TABLE events (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        provider     TEXT NOT NULL,
        name         TEXT NOT NULL,
        dedupe_key   TEXT NOT NULL UNIQUE,
        received_ms  INTEGER NOT NULL,
        content_type TEXT,
        body         BLOB NOT NULL
    );
    CREATE INDEX events_received ON events(received_ms);
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE participants (
        provider       TEXT NOT NULL,
        dn             TEXT NOT NULL,
        participant_id TEXT NOT NULL,
        call_id        TEXT,
        activity_ms    INTEGER NOT NULL,
        doc            TEXT NOT NULL,
        PRIMARY KEY (provider, dn, participant_id)
    );
    CREATE INDEX participants_call ON participants(provider, call_id);
    CREATE INDEX participants_activity ON participants(activity_ms);
    CREATE TABLE calls (
        provider    TEXT NOT NULL,
        call_id     TEXT NOT NULL,
        state       TEXT NOT NULL,
        started_ms  INTEGER,
        ended_ms    INTEGER,
        activity_ms INTEGER NOT NULL,
        doc         TEXT NOT NULL,
        PRIMARY KEY (provider, call_id)
    );
    CREATE INDEX calls_state_ended ON calls(state, ended_ms);
    CREATE INDEX calls_activity ON calls(activity_ms);
    CREATE TABLE jobs (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        provider        TEXT NOT NULL,
        recording_id    TEXT NOT NULL,
        call_id         TEXT NOT NULL,
        dn              TEXT,
        source          TEXT NOT NULL,
        rel_path        TEXT,
        state           TEXT NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT,
        bytes           INTEGER,
        sha256          TEXT,
        start_ms        INTEGER,
        end_ms          INTEGER,
        event_id        INTEGER,
        created_ms      INTEGER NOT NULL,
        updated_ms      INTEGER NOT NULL,
        UNIQUE (provider, recording_id)
    );
    CREATE INDEX jobs_state ON jobs(state, next_attempt_ms);
    ",
    // 2: call events out (SPEC §7): the outbox and each endpoint's delivery of it.
    "
    CREATE TABLE call_events (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        id         TEXT NOT NULL UNIQUE,
        type       TEXT NOT NULL,
        provider   TEXT NOT NULL,
        call_id    TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        body       TEXT NOT NULL
    );
    CREATE INDEX call_events_created ON call_events(created_ms);
    CREATE TABLE deliveries (
        endpoint        TEXT NOT NULL,
        event_seq       INTEGER NOT NULL,
        provider        TEXT NOT NULL,
        call_id         TEXT NOT NULL,
        state           TEXT NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL,
        last_error      TEXT,
        updated_ms      INTEGER NOT NULL,
        PRIMARY KEY (endpoint, event_seq)
    );
    CREATE INDEX deliveries_due ON deliveries(endpoint, state, next_attempt_ms);
    CREATE INDEX deliveries_call ON deliveries(endpoint, provider, call_id, state, event_seq);
    ",
    // 3: the due deliveries in event order without reading (and sorting) every pending one:
    // `pending_deliveries` reads it in order, from where the delivery loop left off.
    "
    CREATE INDEX deliveries_pending ON deliveries(endpoint, event_seq) WHERE state = 'pending';
    ",
    // 4: no query looks a call's deliveries up since the delivery loop keeps its queue in
    // memory, and the index cost every delivery row an insert and every outcome a move.
    "
    DROP INDEX IF EXISTS deliveries_call;
    ",
];

pub const VERSION: i64 = MIGRATIONS.len() as i64;

pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > VERSION {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "database schema version {current} is newer than this callhook ({VERSION}); upgrade callhook"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
