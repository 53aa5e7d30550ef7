//! The SQLite databases: the journal of every accepted event (`callhook.db`), and beside it the
//! state file (`callhook-state.db`: the current state of calls and participants, the download
//! jobs, the call events out and their deliveries). Each file has its own writer thread: the
//! journal's commits what is queued as one transaction and answers after one sync per batch
//! (group commit); the state file's answers at commit and is synced lazily, since what it holds
//! is rebuilt from the journal after its cursor. Reads go through their own connection, which
//! has the state file attached.

mod browse;
mod outbox;
mod schema;
mod sql;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot, watch};

use crate::calls::{Call, CallKey, ParticipantKey, Provider, RecordingState, Tracked};

pub use browse::{EventFilter, EventRow};
pub use outbox::{DeliveryRow, DeliveryUpdate, Due, EndpointCounts, NewCallEvent, Replay};
pub use writer::{JobUpdate, NewJob};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the journal's WAL {path}: {source}")]
    Wal {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the database {path} is in use by another callhook ({holder}; lock file {lock})")]
    Locked {
        path: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    #[error("cannot lock the database with {lock}: {source}")]
    Lock {
        lock: PathBuf,
        source: std::io::Error,
    },
    #[error("the journal is closed")]
    Closed,
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("stored document is not valid: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// An event to journal. The dedupe key is unique across the database and across restarts.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub provider: &'static str,
    pub name: String,
    pub dedupe_key: String,
    pub content_type: Option<String>,
    pub body: Bytes,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Accepted(i64),
    Duplicate,
}

#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub id: i64,
    pub provider: String,
    pub name: String,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    pub received_at: DateTime<Utc>,
}

/// A call row: the call and the wall clock of its last change (`None` deletes the row).
pub type CallRow = Option<(Call, DateTime<Utc>)>;

/// Current state to write after applying events, with the journal id it is current up to.
#[derive(Debug, Default)]
pub struct StateWrite {
    pub participants: Vec<(ParticipantKey, Option<Tracked>)>,
    pub calls: Vec<(CallKey, CallRow)>,
    pub jobs: Vec<JobUpdate>,
    /// Download jobs the applied events created, written with the state they belong to (so a
    /// replay after a crash creates them again, and a repeat is a no-op).
    pub new_jobs: Vec<NewJob>,
    /// Call events the applied changes produced, with the endpoints each is for.
    pub call_events: Vec<NewCallEvent>,
    /// Outcomes of delivery attempts.
    pub deliveries: Vec<DeliveryUpdate>,
    /// Replays asked for through the admin API.
    pub replays: Vec<Replay>,
    pub cursor: Option<i64>,
}

impl StateWrite {
    pub fn is_empty(&self) -> bool {
        self.participants.is_empty()
            && self.calls.is_empty()
            && self.jobs.is_empty()
            && self.new_jobs.is_empty()
            && self.call_events.is_empty()
            && self.deliveries.is_empty()
            && self.replays.is_empty()
            && self.cursor.is_none()
    }
}

/// A call as stored: the call, the wall clock of its last change, its participants' rows.
pub type StoredCall = (Call, DateTime<Utc>, Vec<Tracked>);

/// What a restart needs: state tables and where the unapplied tail of the journal starts.
#[derive(Debug, Default)]
pub struct Restored {
    pub cursor: i64,
    pub participants: Vec<Tracked>,
    pub calls: Vec<(Call, DateTime<Utc>)>,
}

/// A download job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: i64,
    pub provider: Provider,
    pub recording_id: String,
    pub call_id: String,
    pub dn: Option<String>,
    pub source: String,
    pub rel_path: Option<String>,
    pub state: RecordingState,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    /// The journal row of the event that created it, for logs.
    pub event_id: Option<i64>,
}

/// The columns `writer::job_from_row` reads, in its order.
const JOB_COLUMNS: &str =
    "id, provider, recording_id, call_id, dn, source, rel_path, state, attempts,
     next_attempt_ms, last_error, bytes, sha256, start_ms, end_ms, event_id";

/// Why the journal cannot commit now (`None` while it can): set by a failed commit, sync or
/// file check, cleared by a later batch made durable. `/readyz` and the watchdog read it.
/// Updates carry the writer's batch number, so the sync of an older batch, finishing after a
/// newer one failed, does not clear that failure.
#[derive(Clone, Default)]
pub struct Health(Arc<Mutex<(Option<String>, u64)>>);

impl Health {
    pub fn problem(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    pub(crate) fn fail(&self, batch: u64, why: &str) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if slot.0.is_none() {
            tracing::error!(
                reason = why,
                "the journal cannot commit; refusing events with 503"
            );
        }
        *slot = (Some(why.to_string()), slot.1.max(batch));
    }

    pub(crate) fn ok(&self, batch: u64) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if slot.0.is_some() && batch > slot.1 {
            slot.0 = None;
            tracing::info!("the journal commits again");
        }
    }
}

/// How often the journal proves it can commit (a one-row write, synced), so `/readyz` turns
/// 503 and back while no event arrives.
pub const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Takes `<path>.lock` with `flock` (released when the writer thread ends, or by the kernel when
/// the process dies) and writes our pid into it; a second daemon reads the holder's pid there.
fn lock_database(path: &Path) -> Result<std::fs::File, JournalError> {
    use std::io::{Read, Seek, Write};
    // Named after the database as the file system resolves it, so two daemons reaching one
    // database through different paths (a symlink, `..`) take the same lock.
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| {
        let parent = path.parent().filter(|d| !d.as_os_str().is_empty());
        match (parent.map(std::fs::canonicalize), path.file_name()) {
            (Some(Ok(dir)), Some(name)) => dir.join(name),
            (None, Some(name)) => std::env::current_dir()
                .map(|d| d.join(name))
                .unwrap_or_else(|_| path.to_path_buf()),
            _ => path.to_path_buf(),
        }
    });
    let mut name = real.into_os_string();
    name.push(".lock");
    let lock = PathBuf::from(name);
    let io = |source| JournalError::Lock {
        lock: lock.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(io)?;
    use rustix::fs::{FlockOperation, flock};
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {
            file.set_len(0).map_err(io)?;
            file.rewind().map_err(io)?;
            writeln!(file, "{}", std::process::id()).map_err(io)?;
            Ok(file)
        }
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = match text.trim().parse::<u32>() {
                Ok(pid) if pid == std::process::id() => format!("this process, pid {pid}"),
                Ok(pid) => format!("pid {pid}"),
                Err(_) => "pid unknown".to_string(),
            };
            Err(JournalError::Locked {
                path: path.to_path_buf(),
                lock,
                holder,
            })
        }
        Err(e) => Err(io(e.into())),
    }
}

/// Cheap to clone; every clone talks to the same writer thread.
#[derive(Clone)]
pub struct Journal {
    commands: mpsc::Sender<writer::Command>,
    /// The state file's writer.
    state: mpsc::Sender<writer::Command>,
    state_health: Health,
    /// Reads (history, restore, the admin API) use their own connection, which WAL lets run
    /// beside the writers. A std Mutex: it is only locked inside `spawn_blocking`, never across
    /// an `.await`.
    reader: Arc<Mutex<Connection>>,
    /// The event path's reads (the processor's tail of the journal and the stored calls and
    /// participants it warms, the delivery loops' next rows and gauges) on a connection of
    /// their own: behind the one reader they waited for
    /// whatever a person browsed, and `/api/endpoints` over 40 000 deliveries held it for
    /// 25–50 ms (BENCHMARKS.md, eleventh round).
    tail: Arc<Mutex<Connection>>,
    /// The highest journal id committed so far; the processor waits on it.
    committed: watch::Receiver<i64>,
    path: PathBuf,
    health: Health,
}

/// The state file beside the journal: `callhook.db` → `callhook-state.db` (`x` → `x-state`).
pub fn state_path(journal: &Path) -> PathBuf {
    let stem = journal.file_stem().unwrap_or_default().to_string_lossy();
    let name = match journal.extension() {
        Some(ext) => format!("{stem}-state.{}", ext.to_string_lossy()),
        None => format!("{stem}-state"),
    };
    journal.with_file_name(name)
}

/// The last journal id whose changes the state file holds (0 before any).
fn applied_cursor(conn: &Connection) -> rusqlite::Result<i64> {
    Ok(conn
        .query_row(
            "SELECT value FROM state.meta WHERE key = 'applied_cursor'",
            [],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL for the reading connections; the writer switches itself to NORMAL and syncs the
    // WAL on a thread of its own before it answers (writer.rs), so a 200 survives a power cut.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Savepoints (one per state write) keep their undo pages in a statement journal; in memory
    // that is a copy, on disk it was a temp file written for every first-touched page.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

/// A reading connection to the journal with the state file attached as `state`, each file's
/// page cache `cache_kib`.
fn open_reader(path: &Path, state_path: &Path, cache_kib: i64) -> rusqlite::Result<Connection> {
    let conn = open_connection(path)?;
    // Unqualified names reach the state file's tables, which the journal file no longer has;
    // only `meta` is in both (the journal's own is read as `main.meta`, the state's as
    // `state.meta`).
    conn.execute(
        "ATTACH DATABASE ?1 AS state",
        [state_path.to_string_lossy().as_ref()],
    )?;
    conn.pragma_update(Some("main"), "cache_size", -cache_kib)?;
    conn.pragma_update(Some("state"), "cache_size", -cache_kib)?;
    Ok(conn)
}

/// Runs `f` on `conn` on a blocking thread.
async fn read_on<T, F>(conn: Arc<Mutex<Connection>>, f: F) -> Result<T, JournalError>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, JournalError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let conn = conn.lock().unwrap_or_else(|e| e.into_inner());
        f(&conn)
    })
    .await
    .map_err(|_| JournalError::Closed)?
}

/// Sends a command to a writer and waits for its answer; a writer that has stopped is `Closed`.
async fn ask<T>(
    writer: &mpsc::Sender<writer::Command>,
    command: impl FnOnce(oneshot::Sender<Result<T, JournalError>>) -> writer::Command,
) -> Result<T, JournalError> {
    let (reply, answer) = oneshot::channel();
    writer
        .send(command(reply))
        .await
        .map_err(|_| JournalError::Closed)?;
    answer.await.map_err(|_| JournalError::Closed)?
}

/// Pings the writer every `PROBE_EVERY` while the journal is open, so its health is known
/// without events (a lock taken by another program, a deleted file, a disk that clears).
async fn probe(commands: mpsc::WeakSender<writer::Command>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(commands) = commands.upgrade() else {
            return;
        };
        let (reply, answer) = oneshot::channel();
        if commands.send(writer::Command::Ping(reply)).await.is_err() {
            return;
        }
        drop(commands);
        // The writer records the outcome in `Health`; only a closed journal ends the probe.
        if let Ok(Err(JournalError::Closed)) | Err(_) = answer.await {
            return;
        }
    }
}

impl Journal {
    /// Opens (creating the folder and schema on first start) and starts the writer thread.
    pub async fn open(path: &Path) -> Result<Journal, JournalError> {
        let path = path.to_path_buf();
        let journal = tokio::task::spawn_blocking(move || Self::open_blocking(path))
            .await
            .map_err(|_| JournalError::Closed)??;
        tokio::spawn(probe(journal.commands.downgrade()));
        tokio::spawn(probe(journal.state.downgrade()));
        Ok(journal)
    }

    fn open_blocking(path: PathBuf) -> Result<Journal, JournalError> {
        Self::open_syncing(path, None)
    }

    /// `wal` is the file the sync thread makes durable: SQLite's own `-wal` file (named after
    /// the database as SQLite resolved it, symlinks included), except in a test that makes
    /// syncing fail.
    fn open_syncing(path: PathBuf, wal: Option<PathBuf>) -> Result<Journal, JournalError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| JournalError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let lock = lock_database(&path)?;
        let mut conn = open_connection(&path)?;
        schema::migrate(&mut conn)?;
        let state_path = state_path(&path);
        let mut state = open_connection(&state_path)?;
        schema::migrate_state(&mut state)?;
        schema::move_state(&mut conn, &state_path)?;
        let last_id: i64 =
            conn.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?;
        // The writers' page caches: SQLite's 2 MB each was most of its fixed memory, counted
        // in RSS per active participant. The journal writer appends (the rightmost pages) and
        // looks its dedupe keys up through upper pages that stay cached, so 512 KiB costs it
        // nothing measurable; the state writer rewrites rows all over tables that grow with
        // the calls kept, so it keeps 1 MiB (512 KiB measured no worse, within this machine's
        // noise, on a young state file). BENCHMARKS.md, tenth round.
        conn.pragma_update(None, "cache_size", -512)?;
        state.pragma_update(None, "cache_size", -1024)?;
        // Its reads are of b-tree paths whose upper pages stay cached, so 512 KiB per file
        // serves as well as SQLite's 2 MB and holds 3 MB less (BENCHMARKS.md, ninth round).
        let reader = open_reader(&path, &state_path, 512)?;
        // The tail reads rows just committed, in order, and the pending deliveries' index.
        let tail = open_reader(&path, &state_path, 256)?;
        let checkpointer = open_connection(&path)?;
        let state_checkpointer = open_connection(&state_path)?;
        let wal = match wal {
            Some(wal) => wal,
            None => {
                let mut wal = std::ffi::OsString::from(conn.path().unwrap_or_default());
                wal.push("-wal");
                PathBuf::from(wal)
            }
        };
        // Opened now, so a start-up that cannot sync fails here, with the path, instead of
        // refusing every event later. The file exists: reading in WAL mode (above) made it.
        let state_lock = lock.try_clone().map_err(|source| JournalError::Lock {
            lock: state_path.clone(),
            source,
        })?;
        let files = writer::Files::open(PathBuf::from(conn.path().unwrap_or_default()), wal, lock)?;
        let state_db = PathBuf::from(state.path().unwrap_or_default());
        let mut state_wal = state_db.clone().into_os_string();
        state_wal.push("-wal");
        let state_files = writer::Files::open(state_db, state_wal.into(), state_lock)?;
        let (committed_tx, committed) = watch::channel(last_id);
        let health = Health::default();
        let commands = writer::spawn(
            writer::Role::Journal,
            conn,
            checkpointer,
            files,
            committed_tx,
            health.clone(),
        );
        let state_health = Health::default();
        let state = writer::spawn(
            writer::Role::State,
            state,
            state_checkpointer,
            state_files,
            watch::channel(0).0,
            state_health.clone(),
        );
        Ok(Journal {
            commands,
            state,
            state_health,
            reader: Arc::new(Mutex::new(reader)),
            tail: Arc::new(Mutex::new(tail)),
            committed,
            path,
            health,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why the journal cannot commit now, `None` while it can.
    pub fn problem(&self) -> Option<String> {
        self.health
            .problem()
            .or_else(|| self.state_health.problem())
    }

    /// Journals one event; returns once it is committed and synced (with whatever else was
    /// queued at the same time).
    pub async fn append(&self, event: NewEvent) -> Result<Appended, JournalError> {
        ask(&self.commands, |r| {
            writer::Command::Append(Box::new(event), r)
        })
        .await
    }

    /// Writes current state (and the applied cursor) in one transaction.
    pub async fn write_state(&self, state: StateWrite) -> Result<(), JournalError> {
        if state.is_empty() {
            return Ok(());
        }
        ask(&self.state, |r| writer::Command::State(Box::new(state), r)).await
    }

    /// Round trip through the writer and sync threads (a one-row write, synced, the files
    /// checked): proves both are alive and the database takes writes, for the systemd watchdog
    /// and the health probe.
    pub async fn ping(&self) -> Result<(), JournalError> {
        ask(&self.commands, writer::Command::Ping).await
    }

    /// Deletes journal rows, ended calls and finished jobs older than `before`; returns how
    /// many rows went.
    pub async fn sweep(&self, before: DateTime<Utc>) -> Result<usize, JournalError> {
        let cursor = self.read(|conn| Ok(applied_cursor(conn)?)).await?;
        let mut swept = 0;
        for writer in [&self.state, &self.commands] {
            swept += ask(writer, |r| writer::Command::Sweep(ms(before), cursor, r)).await?;
        }
        Ok(swept)
    }

    /// Commits what is queued, checkpoints the WAL and stops the writer thread.
    pub async fn close(&self) -> Result<(), JournalError> {
        let mut closed = Ok(());
        for writer in [&self.state, &self.commands] {
            let (reply, answer) = oneshot::channel();
            // A writer already gone has nothing left to close.
            if writer.send(writer::Command::Close(reply)).await.is_err() {
                continue;
            }
            closed = closed.and(
                answer
                    .await
                    .map_err(|_| JournalError::Closed)
                    .and_then(|r| r),
            );
        }
        closed
    }

    /// Resolves when the writer has committed an event with an id above `after`.
    pub fn committed(&self) -> watch::Receiver<i64> {
        self.committed.clone()
    }

    async fn read<T, F>(&self, f: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, JournalError> + Send + 'static,
    {
        read_on(self.reader.clone(), f).await
    }

    /// A read of the event path, on the tail's connection (see `Journal::tail`).
    async fn read_tail<T, F>(&self, f: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, JournalError> + Send + 'static,
    {
        read_on(self.tail.clone(), f).await
    }

    /// Journal rows after `cursor`, oldest first, up to the last one synced: the state file is
    /// synced on its own, so state made from a row the journal could still lose (a power cut
    /// before its sync) could outlive the row, and a later event take its id.
    pub async fn events_after(
        &self,
        cursor: i64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, JournalError> {
        let synced = *self.committed.borrow();
        self.read_tail(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, provider, name, content_type, body, received_ms FROM events
                 WHERE id > ?1 AND id <= ?3 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![cursor, limit as i64, synced], |r| {
                Ok(StoredEvent {
                    id: r.get(0)?,
                    provider: r.get(1)?,
                    name: r.get(2)?,
                    content_type: r.get(3)?,
                    body: r.get(4)?,
                    received_at: from_ms(r.get(5)?),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Current state for a restart: active calls, their participants (tombstones of those who
    /// left included), recent participants not on any call yet (their lookup was in flight),
    /// and the applied cursor. Ended calls stay on disk: the processor loads one when a late
    /// event names it (`stored_call`, `stored_participants`), so the time to ready follows the
    /// calls in progress, not how many ended in the last hours.
    pub async fn restore(&self, recent: DateTime<Utc>) -> Result<Restored, JournalError> {
        let recent = ms(recent);
        self.read(move |conn| {
            let cursor = applied_cursor(conn)?;
            let mut calls = vec![];
            let mut stmt =
                conn.prepare("SELECT doc, activity_ms FROM calls WHERE state = 'active'")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let doc: String = row.get(0)?;
                calls.push((serde_json::from_str(&doc)?, from_ms(row.get(1)?)));
            }
            let mut participants = vec![];
            // Both halves use an index (`calls_state_ended`, `participants_call`); the second
            // names every provider so that `participants_call`'s first column is constrained.
            let providers = sql::known_providers();
            let mut stmt = conn.prepare(&format!(
                "SELECT p.doc FROM calls c JOIN participants p
                   ON p.provider = c.provider AND p.call_id = c.call_id
                 WHERE c.state = 'active'
                 UNION ALL
                 SELECT doc FROM participants
                 WHERE provider IN ({providers}) AND call_id IS NULL AND activity_ms >= ?1"
            ))?;
            let mut rows = stmt.query(params![recent])?;
            while let Some(row) = rows.next()? {
                let doc: String = row.get(0)?;
                participants.push(serde_json::from_str(&doc)?);
            }
            Ok(Restored {
                cursor,
                participants,
                calls,
            })
        })
        .await
    }

    /// The persisted rows of those of `keys` that have one: participants a late event names
    /// that are not in memory (their call ended and was evicted, or was left on disk at start).
    pub async fn stored_participants(
        &self,
        keys: Vec<ParticipantKey>,
    ) -> Result<Vec<Tracked>, JournalError> {
        self.read_tail(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT doc FROM participants
                 WHERE provider = ?1 AND dn = ?2 AND participant_id = ?3",
            )?;
            let mut found = vec![];
            for key in keys {
                let doc: Option<String> = stmt
                    .query_row(params![key.provider, key.dn, key.participant_id], |r| {
                        r.get(0)
                    })
                    .optional()?;
                if let Some(doc) = doc {
                    found.push(serde_json::from_str(&doc)?);
                }
            }
            Ok(found)
        })
        .await
    }

    /// One call, active or ended, as last written.
    pub async fn call(&self, key: CallKey) -> Result<Option<Call>, JournalError> {
        self.read(move |conn| {
            let doc: Option<String> = conn
                .query_row(
                    "SELECT doc FROM calls WHERE provider = ?1 AND call_id = ?2",
                    params![key.provider, key.call_id],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(doc.map(|d| serde_json::from_str(&d)).transpose()?)
        })
        .await
    }

    /// Ended calls, newest first, that ended before `before`.
    pub async fn history(
        &self,
        limit: usize,
        before: Option<DateTime<Utc>>,
    ) -> Result<Vec<Call>, JournalError> {
        let before = before.map(ms).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT doc FROM calls WHERE state = 'ended' AND ended_ms < ?1
                 ORDER BY ended_ms DESC, provider, call_id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![before, limit as i64], |r| r.get::<_, String>(0))?;
            let mut out = vec![];
            for doc in rows {
                out.push(serde_json::from_str(&doc?)?);
            }
            Ok(out)
        })
        .await
    }

    /// Jobs not finished (`pending`/`downloading`), plus `failed` ones when `include_failed`;
    /// of the providers this version knows (see `queued_jobs`).
    pub async fn open_jobs(&self, include_failed: bool) -> Result<Vec<Job>, JournalError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs
                 WHERE provider IN ({}) AND (state IN ('pending', 'downloading')
                    OR (?1 AND state = 'failed' AND rel_path IS NOT NULL))
                 ORDER BY id",
                sql::known_providers()
            ))?;
            let rows = stmt.query_map(params![include_failed], writer::job_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Up to `limit` unfinished jobs, soonest due first: the download queue. Only the
    /// providers this version knows: a job a newer version made for another one waits for that
    /// version (as its journal rows do), instead of failing here or, unreadable as a `Job`,
    /// stopping the whole queue.
    pub async fn queued_jobs(&self, limit: usize) -> Result<Vec<Job>, JournalError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs
                 WHERE state IN ('pending', 'downloading') AND provider IN ({})
                 ORDER BY next_attempt_ms, id LIMIT ?1",
                sql::known_providers()
            ))?;
            let rows = stmt.query_map(params![limit as i64], writer::job_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Whether a job other than `except` has downloaded a recording to `rel_path`: then the
    /// file there is that recording's, not a crashed attempt's of `except`.
    pub async fn path_downloaded_by_other(
        &self,
        rel_path: String,
        except: i64,
    ) -> Result<bool, JournalError> {
        self.read(move |conn| {
            Ok(conn.query_row(
                "SELECT EXISTS(SELECT 1 FROM jobs
                               WHERE rel_path = ?1 AND id <> ?2 AND state = 'downloaded')",
                params![rel_path, except],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// How many jobs are not finished, for the queue-depth gauge: those `queued_jobs` takes.
    pub async fn count_queued_jobs(&self) -> Result<i64, JournalError> {
        self.read(|conn| {
            Ok(conn.query_row(
                &format!(
                    "SELECT COUNT(*) FROM jobs
                     WHERE state IN ('pending', 'downloading') AND provider IN ({})",
                    sql::known_providers()
                ),
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// Failed jobs that may get their one more attempt at start: not refused (they have a
    /// path) and not already past `max_attempts` (which is what that extra attempt leaves);
    /// of the providers this version knows (see `queued_jobs`).
    pub async fn jobs_to_retry(&self, max_attempts: u32) -> Result<Vec<Job>, JournalError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs
                 WHERE state = 'failed' AND rel_path IS NOT NULL AND attempts <= ?1
                   AND provider IN ({})
                 ORDER BY id",
                sql::known_providers()
            ))?;
            let rows = stmt.query_map(params![max_attempts], writer::job_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// A job by its provider and recording id.
    pub async fn job(
        &self,
        provider: Provider,
        recording_id: String,
    ) -> Result<Option<Job>, JournalError> {
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    &format!(
                        "SELECT {JOB_COLUMNS} FROM jobs WHERE provider = ?1 AND recording_id = ?2"
                    ),
                    params![provider, recording_id],
                    writer::job_from_row,
                )
                .optional()?)
        })
        .await
    }

    /// A call as stored, the wall clock of its last change and its participants: what the
    /// processor needs to bring an ended call evicted from memory back, so that a late
    /// recording or summary updates it instead of replacing it.
    pub async fn stored_call(&self, key: CallKey) -> Result<Option<StoredCall>, JournalError> {
        Ok(self.stored_calls(vec![key]).await?.pop())
    }

    /// [`Journal::stored_call`] for many calls in one read (those not stored are left out), on
    /// the tail's connection: the processor asks before it applies a batch, and one read per
    /// call was a round trip to a blocking thread each, with the processor waiting; in the
    /// lookups benchmark, where every answer names a call not in memory, a tenth of its
    /// thread's time (BENCHMARKS.md, eleventh round).
    pub async fn stored_calls(&self, keys: Vec<CallKey>) -> Result<Vec<StoredCall>, JournalError> {
        self.read_tail(move |conn| {
            let mut call = conn.prepare_cached(
                "SELECT doc, activity_ms FROM calls WHERE provider = ?1 AND call_id = ?2",
            )?;
            let mut members = conn.prepare_cached(
                "SELECT doc FROM participants WHERE provider = ?1 AND call_id = ?2",
            )?;
            let mut found = vec![];
            for key in keys {
                let mut one = || -> Result<Option<StoredCall>, JournalError> {
                    let row: Option<(String, i64)> = call
                        .query_row(params![key.provider, key.call_id], |r| {
                            Ok((r.get(0)?, r.get(1)?))
                        })
                        .optional()?;
                    let Some((doc, activity)) = row else {
                        return Ok(None);
                    };
                    let mut participants = vec![];
                    let mut rows = members.query(params![key.provider, key.call_id])?;
                    while let Some(row) = rows.next()? {
                        let doc: String = row.get(0)?;
                        participants.push(serde_json::from_str(&doc)?);
                    }
                    Ok(Some((
                        serde_json::from_str(&doc)?,
                        from_ms(activity),
                        participants,
                    )))
                };
                // One row that cannot be read costs its own call only, not the batch's others.
                match one() {
                    Ok(Some(stored)) => found.push(stored),
                    Ok(None) => {}
                    Err(e) => tracing::error!(provider = %key.provider, call_id = %key.call_id,
                        error = %e, "reading a stored call failed"),
                }
            }
            Ok(found)
        })
        .await
    }

    /// Counts for tests and benchmarks.
    pub async fn count_events(&self) -> Result<i64, JournalError> {
        self.read(|conn| Ok(conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?))
            .await
    }
}

#[cfg(test)]
mod tests;
