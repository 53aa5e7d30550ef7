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

/// The state file's schema (`<name>-state.db` beside the journal): the derived state, the download
/// jobs and the outbox, written by their own writer thread (writer.rs). The tables are those the
/// journal file held up to its version 4, column for column, so `move_state` copies them with
/// `SELECT *`. **Why a copy of `MIGRATIONS`' text:** a shipped migration is never edited, and
/// the journal's must keep creating these tables for a version-4 file to be moved; the two
/// must stay equal, which `a_version_4_database_moves_its_state_to_the_state_file` checks (a
/// column out of place fails its copy or its restore).
const STATE_MIGRATIONS: &[&str] = &[
    // 1: the tables of the journal's versions 1 to 4 but `events`.
    "
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
    CREATE INDEX deliveries_pending ON deliveries(endpoint, event_seq) WHERE state = 'pending';
    ",
];

/// The tables that moved from the journal file to the state file, in an order that copies.
pub const STATE_TABLES: &[&str] = &["participants", "calls", "jobs", "call_events", "deliveries"];

/// The journal file's version once `move_state` has taken its state tables out.
pub const VERSION: i64 = MIGRATIONS.len() as i64 + 1;

/// The journal file to version 4 (every table in it, as earlier versions left it); then
/// `move_state` takes it to 5.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > VERSION {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "database schema version {current} is newer than this callhook ({VERSION}); upgrade callhook"
        )));
    }
    run(conn, MIGRATIONS, current)
}

fn run(conn: &mut Connection, migrations: &[&str], current: i64) -> rusqlite::Result<()> {
    for (i, sql) in migrations.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// The state file's schema, created or brought up to date.
pub fn migrate_state(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > STATE_MIGRATIONS.len() as i64 {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "state database schema version {current} is newer than this callhook ({}); upgrade callhook",
            STATE_MIGRATIONS.len()
        )));
    }
    run(conn, STATE_MIGRATIONS, current)
}

/// Journal version 4 → 5: the state tables and the applied cursor move to the state file.
/// Copied in one transaction (`INSERT OR IGNORE`), then dropped from the journal in another:
/// two files commit separately, so a crash between the two leaves both copies and the next
/// start copies again, which changes nothing (nothing ran on the copy yet). A new database
/// passes here too, with empty tables.
pub fn move_state(conn: &mut Connection, state: &std::path::Path) -> rusqlite::Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current != MIGRATIONS.len() as i64 {
        return Ok(());
    }
    conn.execute(
        "ATTACH DATABASE ?1 AS state",
        [state.to_string_lossy().as_ref()],
    )?;
    let moved = (|| {
        let tx = conn.transaction()?;
        for table in STATE_TABLES {
            tx.execute_batch(&format!(
                "INSERT OR IGNORE INTO state.{table} SELECT * FROM main.{table};"
            ))?;
        }
        tx.execute_batch(
            "INSERT OR REPLACE INTO state.meta (key, value)
               SELECT key, value FROM main.meta WHERE key = 'applied_cursor';",
        )?;
        tx.commit()
    })();
    conn.execute_batch("DETACH DATABASE state")?;
    moved?;
    let tx = conn.transaction()?;
    for table in STATE_TABLES.iter().rev() {
        tx.execute_batch(&format!("DROP TABLE main.{table};"))?;
    }
    tx.execute_batch("DELETE FROM main.meta WHERE key = 'applied_cursor';")?;
    tx.pragma_update(None, "user_version", VERSION)?;
    tx.commit()
}
