//! The one writer thread. It takes whatever commands are queued (up to `MAX_BATCH`), runs them in
//! one transaction and commits once; a batch that acknowledges events is answered by the sync
//! thread after the WAL is on disk (one `fdatasync` for every batch committed before it), the
//! rest at once. A checkpoint thread copies the WAL back into the database.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot, watch};

use super::{Appended, Health, Job, JournalError, NewEvent, StateWrite, from_ms, ms};
use crate::calls::{Call, CallKey, ParticipantKey, Provider, RecordingState, Tracked};

/// Upper bound on commands per transaction: enough to amortise the sync, small enough that the
/// first caller in a batch does not wait long for the last.
const MAX_BATCH: usize = 1024;

/// WAL size (pages) at which the writer checkpoints itself; see `run`.
const WAL_BACKSTOP_PAGES: i64 = 4096;

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// How long the writer waits for a write lock another program holds.
const WRITER_BUSY: Duration = Duration::from_secs(3);

/// Bound on queued commands: beyond it, callers wait (backpressure) instead of growing memory.
const QUEUE: usize = 16 * 1024;

type Reply<T> = oneshot::Sender<Result<T, JournalError>>;

pub(super) enum Command {
    Append(Box<NewEvent>, Reply<Appended>),
    State(Box<StateWrite>, Reply<()>),
    /// An empty, synced batch: proves the writer and the syncer both work (the watchdog).
    Ping(Reply<()>),
    /// Retention: rows older than the first value; the journal's writer keeps every event
    /// after the second (the applied cursor, read from the state file by the caller).
    Sweep(i64, i64, Reply<usize>),
    Close(Reply<()>),
}

/// A download job to create with the state its event changed.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub provider: Provider,
    pub recording_id: String,
    pub call_id: String,
    pub dn: Option<String>,
    pub source: String,
    /// `None` when the name was refused as unsafe: the job is created `failed` with `error`.
    pub rel_path: Option<String>,
    pub error: Option<String>,
    pub start_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    /// The journal row of the event that created it.
    pub event_id: i64,
}

/// A change to a job's progress.
#[derive(Debug, Clone)]
pub struct JobUpdate {
    pub id: i64,
    pub state: RecordingState,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
    /// Where the file ended up when that is not the path the job was made with (a distinct
    /// name beside another recording's file); `None` keeps the job's path.
    pub rel_path: Option<String>,
}

/// The first 16 bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// The files behind the journal as they were opened: the WAL the sync thread makes durable, the
/// identity (device, inode) of it and of the database, the database's header check, and the lock
/// held for the writer's life.
pub(super) struct Files {
    wal: std::fs::File,
    wal_path: PathBuf,
    wal_id: (u64, u64),
    header: Arc<Header>,
    db_path: PathBuf,
    db_id: (u64, u64),
    _lock: std::fs::File,
}

impl Files {
    pub(super) fn open(
        db_path: PathBuf,
        wal_path: PathBuf,
        lock: std::fs::File,
    ) -> Result<Files, JournalError> {
        let wal_err = |source| JournalError::Wal {
            path: wal_path.clone(),
            source,
        };
        let wal = std::fs::File::open(&wal_path).map_err(wal_err)?;
        let wal_id = wal
            .metadata()
            .map(|m| (m.dev(), m.ino()))
            .map_err(wal_err)?;
        let db_err = |source| JournalError::Wal {
            path: db_path.clone(),
            source,
        };
        let db = std::fs::File::open(&db_path).map_err(db_err)?;
        let db_id = db.metadata().map(|m| (m.dev(), m.ino())).map_err(db_err)?;
        Ok(Files {
            wal,
            wal_path,
            wal_id,
            header: Arc::new(Header {
                db,
                path: db_path.clone(),
                damage: Mutex::new(None),
            }),
            db_path,
            db_id,
            _lock: lock,
        })
    }

    /// Whether the paths still name the files that were opened: a database or WAL deleted or
    /// replaced under a running daemon takes writes that no restart would find.
    fn check(&self) -> Result<(), String> {
        for (what, path, id) in [
            ("database", &self.db_path, self.db_id),
            ("WAL", &self.wal_path, self.wal_id),
        ] {
            match std::fs::metadata(path) {
                Ok(m) if (m.dev(), m.ino()) == id => {}
                Ok(_) => {
                    return Err(format!(
                        "the journal's {what} file {} was replaced while open; nothing stored now would survive a restart",
                        path.display()
                    ));
                }
                Err(e) => {
                    return Err(format!(
                        "the journal's {what} file {} is gone ({e}); nothing stored now would survive a restart",
                        path.display()
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Whether the database file still starts with SQLite's header. Another program writing over the
/// file in place keeps its inode, so the identity check sees nothing, and the writer, which has
/// its pages in its cache and the WAL, would go on committing into a file no restart can open.
/// The checkpoint thread looks before each checkpoint (which writes page 1 back from the WAL and
/// so hides the damage, not repairs it: the other pages stay overwritten) and the sync thread
/// after each sync; once seen, the damage is kept until a restart.
struct Header {
    db: std::fs::File,
    path: PathBuf,
    damage: Mutex<Option<String>>,
}

impl Header {
    fn check(&self) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        let mut damage = self.damage.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(why) = &*damage {
            return Err(why.clone());
        }
        let mut head = [0u8; 16];
        let why = match self.db.read_exact_at(&mut head, 0) {
            Ok(()) if &head == SQLITE_MAGIC => return Ok(()),
            Ok(()) => format!(
                "the journal's database file {} was overwritten: it no longer starts with SQLite's header; nothing stored now would survive a restart",
                self.path.display()
            ),
            Err(e) => format!(
                "the journal's database file {} cannot be read back ({e}); nothing stored now would survive a restart",
                self.path.display()
            ),
        };
        tracing::error!(error = %why, "journal database damaged; refusing events until restart");
        *damage = Some(why.clone());
        Err(why)
    }
}

/// Which file a writer writes: the journal (events, acknowledged after a sync) or the state
/// file (derived state, jobs, the outbox; answered at commit, synced lazily).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Journal,
    State,
}

impl Role {
    fn thread(self, what: &str) -> String {
        match self {
            Role::Journal => format!("callhook-{what}"),
            Role::State => format!("callhook-st-{what}"),
        }
    }
}

pub(super) fn spawn(
    role: Role,
    conn: Connection,
    checkpointer: Connection,
    files: Files,
    committed: watch::Sender<i64>,
    health: Health,
) -> mpsc::Sender<Command> {
    let (tx, rx) = mpsc::channel(QUEUE);
    std::thread::Builder::new()
        .name(role.thread("journal"))
        .spawn(move || run(role, conn, checkpointer, files, rx, committed, health))
        .expect("spawn the journal writer thread");
    tx
}

enum Done {
    Appended(Reply<Appended>, Result<Appended, JournalError>),
    State(Reply<()>, Result<(), JournalError>),
    Swept(Reply<usize>, Result<usize, JournalError>),
}

impl Done {
    fn answer(self) {
        match self {
            Done::Appended(r, res) => drop(r.send(res)),
            Done::State(r, res) => drop(r.send(res)),
            Done::Swept(r, res) => drop(r.send(res)),
        }
    }

    fn fail(self, why: &str) {
        let failed = || JournalError::Commit(why.to_string());
        match self {
            Done::Appended(r, _) => drop(r.send(Err(failed()))),
            Done::State(r, _) => drop(r.send(Err(failed()))),
            Done::Swept(r, _) => drop(r.send(Err(failed()))),
        }
    }
}

/// Answers a command that was never run.
fn refuse(cmd: Command, why: &str) {
    let failed = || JournalError::Commit(why.to_string());
    match cmd {
        Command::Append(_, r) => drop(r.send(Err(failed()))),
        Command::State(_, r) | Command::Ping(r) | Command::Close(r) => drop(r.send(Err(failed()))),
        Command::Sweep(_, _, r) => drop(r.send(Err(failed()))),
    }
}

/// A committed batch whose answers wait for the WAL to reach the disk.
struct Unsynced {
    done: Vec<Done>,
    max_id: Option<i64>,
    /// A command of the batch failed to store (its caller was refused): the sync does not
    /// prove the journal healthy.
    failed: bool,
    /// The writer's count of batches, for `Health`.
    number: u64,
}

fn run(
    role: Role,
    mut conn: Connection,
    checkpointer: Connection,
    files: Files,
    mut rx: mpsc::Receiver<Command>,
    committed: watch::Sender<i64>,
    health: Health,
) {
    // Commits only write the WAL; the syncer thread makes them durable. While it waits for the
    // disk, this thread already commits the next batch (a pipelined group commit): SQLite's own
    // FULL mode would make every batch wait for the previous one's sync. Checkpoints, which
    // also sync, run on a thread of their own, off the ack path.
    //
    // The writer keeps a rare checkpoint of its own as a backstop: SQLite only starts the WAL
    // over when a checkpoint has copied every frame back as a write begins, which a checkpoint
    // on another thread seldom manages while this one commits without pause, so under steady
    // load the WAL would grow without bound. Most frames are copied by then, so it is short.
    // A database locked by another program fails a batch after WRITER_BUSY; two batches in a
    // row (the health probe's and an event's) still answer within 10 s.
    let prepared = conn
        .busy_timeout(WRITER_BUSY)
        .and_then(|()| conn.pragma_update(None, "synchronous", "NORMAL"))
        .and_then(|()| conn.pragma_update(None, "wal_autocheckpoint", WAL_BACKSTOP_PAGES));
    if let Err(e) = prepared {
        tracing::error!(error = %e, "journal writer could not be set up");
    }
    let stop_checkpoints = Arc::new(AtomicBool::new(false));
    let checkpoints = {
        let stop = stop_checkpoints.clone();
        let header = files.header.clone();
        std::thread::Builder::new()
            .name(role.thread("checkpoint"))
            .spawn(move || checkpoint_loop(checkpointer, header, stop))
            .expect("spawn the journal checkpoint thread")
    };
    let (to_sync, unsynced) = std::sync::mpsc::channel::<Unsynced>();
    let sync_health = health.clone();
    let syncer = std::thread::Builder::new()
        .name(role.thread("sync"))
        .spawn(move || sync_loop(files, unsynced, committed, sync_health))
        .expect("spawn the journal sync thread");

    let mut close: Option<Reply<()>> = None;
    let mut number = 0u64;
    // Commands taken from the channel and not run yet: state writes wait here while newer
    // acknowledgements go first.
    let mut waiting: std::collections::VecDeque<Command> = std::collections::VecDeque::new();
    while close.is_none() {
        if waiting.is_empty() {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            waiting.push_back(first);
        }
        while waiting.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(cmd) => waiting.push_back(cmd),
                Err(_) => break,
            }
        }
        // Every acknowledgement waiting, in a transaction of its own, then one state command
        // (derived rows, the outbox, delivery outcomes: with endpoints most of the bytes)
        // before looking again: the syncer makes the acks durable while this thread writes
        // the state, and an ack waits for one state write at most, never a queue of them.
        // State commands keep their order among themselves; an ack never depends on one.
        let (acks, rest): (Vec<Command>, Vec<Command>) = waiting
            .drain(..)
            .partition(|c| matches!(c, Command::Append(..) | Command::Ping(_)));
        waiting = rest.into();
        let state = waiting.pop_front().map(|c| vec![c]).unwrap_or_default();
        for part in [acks, state] {
            if part.is_empty() {
                continue;
            }
            let started = Instant::now();
            let size = part.len();
            number += 1;
            let committed = commit(&mut conn, role, part, &mut close);
            metrics::histogram!("callhook_journal_batch_size").record(size as f64);
            metrics::histogram!("callhook_journal_commit_seconds")
                .record(started.elapsed().as_secs_f64());
            hand_over(committed, number, size, &to_sync, &health);
        }
    }
    // Stop taking commands; anything still queued is answered `Closed` when dropped.
    rx.close();
    // Every acknowledgement in flight is answered before the database closes.
    drop(to_sync);
    let _ = syncer.join();
    stop_checkpoints.store(true, Ordering::Relaxed);
    let _ = checkpoints.join();
    let closed = close_database(conn);
    if let Some(reply) = close {
        let _ = reply.send(closed);
    }
}

/// Copies the WAL back into the database and starts it over, then closes the connection.
fn close_database(conn: Connection) -> Result<(), JournalError> {
    let checkpoint = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(JournalError::from);
    conn.close()
        .map_err(|(_, e)| JournalError::from(e))
        .and(checkpoint)
}

/// What one batch's transaction did, for the replies and the sync.
struct Committed {
    outcome: rusqlite::Result<()>,
    /// Each command's reply, answered now or after the sync.
    done: Vec<Done>,
    /// Only an acknowledgement (or a ping, which proves the path) waits for the sync. Derived
    /// state (calls, participants, jobs, the applied cursor) is answered at commit: WAL frames
    /// are written in order, so the next sync makes it durable too, and if a crash comes first
    /// the state and its cursor are lost together and rebuilt from the journal after the older
    /// cursor.
    durable: bool,
    max_id: Option<i64>,
    /// Why a command that stores an event or a ping failed, if one did.
    failed: Option<String>,
}

/// Runs one batch as one transaction; a `Close` in it is handed back through `close`.
fn commit(
    conn: &mut Connection,
    role: Role,
    batch: Vec<Command>,
    close: &mut Option<Reply<()>>,
) -> Committed {
    let mut done = Vec::with_capacity(batch.len());
    let mut max_id = None;
    let mut durable = false;
    let mut failed: Option<String> = None;
    let outcome = (|| -> rusqlite::Result<()> {
        // IMMEDIATE: the write lock is taken once, at the start, so a database locked by
        // another program fails the batch after one busy timeout, not one per command.
        let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                let why = e.to_string();
                for cmd in batch {
                    match cmd {
                        Command::Close(reply) => *close = Some(reply),
                        other => refuse(other, &why),
                    }
                }
                return Err(e);
            }
        };
        for cmd in batch {
            match cmd {
                Command::Append(event, reply) => {
                    durable = true;
                    // One INSERT is atomic on its own: no savepoint needed.
                    let result = append(&tx, &event).map_err(JournalError::from);
                    match &result {
                        Ok(Appended::Accepted(id)) => max_id = Some(*id),
                        Ok(Appended::Duplicate) => {}
                        Err(e) => failed = Some(e.to_string()),
                    }
                    done.push(Done::Appended(reply, result));
                }
                Command::State(state, reply) => {
                    let result = atomically(&mut tx, |c| write_state(c, &state));
                    done.push(Done::State(reply, result));
                }
                Command::Ping(reply) => {
                    durable = true;
                    // A real write: an empty transaction takes no lock and needs no disk
                    // space, so it would pass while another program holds the database.
                    let result = ping(&tx).map_err(JournalError::from);
                    if let Err(e) = &result {
                        failed = Some(e.to_string());
                    }
                    done.push(Done::State(reply, result));
                }
                Command::Sweep(before, cursor, reply) => {
                    let result = atomically(&mut tx, |c| match role {
                        Role::Journal => sweep_events(c, before, cursor),
                        Role::State => sweep_state(c, before),
                    });
                    done.push(Done::Swept(reply, result));
                }
                Command::Close(reply) => *close = Some(reply),
            }
        }
        tx.commit()
    })();
    Committed {
        outcome,
        done,
        durable,
        max_id,
        failed,
    }
}

/// After a batch's commit: what must be durable goes to the syncer, the rest is answered now,
/// and a failed commit refuses every command of the batch.
fn hand_over(
    committed: Committed,
    number: u64,
    size: usize,
    to_sync: &std::sync::mpsc::Sender<Unsynced>,
    health: &Health,
) {
    let Committed {
        outcome,
        done,
        durable,
        max_id,
        failed,
    } = committed;
    if let Some(why) = &failed {
        health.fail(number, &format!("cannot store in the journal: {why}"));
    }
    match outcome {
        Ok(()) if durable => {
            // The syncer only stops after the writer drops `to_sync`.
            let _ = to_sync.send(Unsynced {
                done,
                max_id,
                failed: failed.is_some(),
                number,
            });
        }
        Ok(()) => done.into_iter().for_each(Done::answer),
        Err(e) => {
            tracing::error!(error = %e, batch = size, "journal commit failed");
            health.fail(number, &format!("the journal cannot commit: {e}"));
            // Nothing of the batch is durable, so no caller may be told otherwise.
            let why = e.to_string();
            done.into_iter().for_each(|d| d.fail(&why));
        }
    }
}

/// Makes committed batches durable: one `fdatasync` of the WAL covers every batch committed
/// before it began, so batches that queued up while the disk was busy share the next one.
fn sync_loop(
    files: Files,
    unsynced: std::sync::mpsc::Receiver<Unsynced>,
    committed: watch::Sender<i64>,
    health: Health,
) {
    // After a failed sync the kernel may have dropped the unwritten pages and a later sync
    // can succeed without them, so nothing is acknowledged again until a restart; the same
    // for a database file found overwritten.
    let mut poisoned: Option<String> = None;
    while let Ok(first) = unsynced.recv() {
        let mut batches = vec![first];
        batches.extend(unsynced.try_iter());
        let started = Instant::now();
        let synced = match &poisoned {
            Some(why) => Err(why.clone()),
            // Checked after the sync, so a file deleted while it ran is caught too.
            None => match files.wal.sync_data().map(|()| files.check()) {
                Ok(Ok(())) => match files.header.check() {
                    Ok(()) => Ok(()),
                    Err(why) => {
                        poisoned = Some(why.clone());
                        Err(why)
                    }
                },
                Ok(Err(why)) => Err(why),
                Err(e) => {
                    let why = format!("syncing the journal's WAL failed: {e}");
                    tracing::error!(error = %why, "journal sync failed; refusing events until restart");
                    poisoned = Some(why.clone());
                    Err(why)
                }
            },
        };
        metrics::histogram!("callhook_journal_sync_seconds")
            .record(started.elapsed().as_secs_f64());
        let newest = batches.iter().map(|b| b.number).max().unwrap_or(0);
        match &synced {
            Ok(()) if batches.iter().all(|b| !b.failed) => health.ok(newest),
            Ok(()) => {}
            Err(why) => health.fail(newest, why),
        }
        match synced {
            Ok(()) => {
                if let Some(id) = batches.iter().filter_map(|b| b.max_id).max() {
                    committed.send_replace(id);
                }
                for b in batches {
                    b.done.into_iter().for_each(Done::answer);
                }
            }
            Err(why) => {
                for b in batches {
                    b.done.into_iter().for_each(|d| d.fail(&why));
                }
            }
        }
    }
}

/// Copies the WAL back into the database now and then, so the WAL stays small; PASSIVE never
/// blocks the writer, and a checkpoint's own syncs stay off the ack path. The database's header
/// is checked first, before a checkpoint could write page 1 back over damage.
fn checkpoint_loop(conn: Connection, header: Arc<Header>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(CHECKPOINT_EVERY);
        let _ = header.check();
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "journal checkpoint failed; retrying");
        }
    }
}

/// Runs one command inside a savepoint: a command that fails leaves nothing of itself in the
/// batch's transaction (state is never committed without its download jobs or cursor), while
/// the other commands of the batch still commit.
fn atomically<T>(
    tx: &mut Transaction<'_>,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> Result<T, JournalError> {
    let sp = tx.savepoint()?;
    let value = f(&sp)?;
    sp.commit()?;
    Ok(value)
}

/// Stores an event unless its dedupe key is known. **Why `OR IGNORE`, not `ON CONFLICT(dedupe_key)
/// DO NOTHING`:** with the latter a `NOT NULL` column could still abort the statement, so SQLite
/// opens a statement journal for every insert of a batch (a savepoint made and released per
/// row); with `OR IGNORE` nothing in the statement can abort and it opens none. The two differ
/// only for a `NULL` in a `NOT NULL` column, which no caller can bind: those columns come from
/// non-optional values. The same holds for the outbox's inserts (`outbox::insert`).
fn append(tx: &Connection, e: &NewEvent) -> rusqlite::Result<Appended> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO events (provider, name, dedupe_key, received_ms, content_type, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
    )?;
    let mut rows = stmt.query(params![
        e.provider,
        e.name,
        e.dedupe_key,
        ms(e.received_at),
        e.content_type,
        &e.body[..]
    ])?;
    let Some(row) = rows.next()? else {
        return Ok(Appended::Duplicate);
    };
    let id: i64 = row.get(0)?;
    Ok(Appended::Accepted(id))
}

/// Creates a download job unless its recording has one. A recording named again by another call
/// (TeleCMI names one by its file alone, so two calls' CDRs can name the same file) is that
/// call's recording, with a job of its own (its file gets a distinct name), not a repeat.
fn create_job(tx: &Connection, job: &NewJob) -> rusqlite::Result<()> {
    let now = ms(Utc::now());
    let (state, error) = match (&job.rel_path, &job.error) {
        (Some(_), _) => (RecordingState::Pending, None),
        (None, err) => (RecordingState::Failed, err.clone()),
    };
    let mut recording_id = job.recording_id.clone();
    let other: Option<String> = tx
        .query_row(
            "SELECT call_id FROM jobs WHERE provider = ?1 AND recording_id = ?2",
            params![job.provider, job.recording_id],
            |r| r.get(0),
        )
        .optional()?;
    if other.is_some_and(|c| c != job.call_id) {
        recording_id = format!("{}@{}", job.recording_id, job.call_id);
    }
    tx.prepare_cached(
        "INSERT INTO jobs (provider, recording_id, call_id, dn, source, rel_path, state,
                           last_error, start_ms, end_ms, event_id, created_ms, updated_ms,
                           next_attempt_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12, ?12)
         ON CONFLICT(provider, recording_id) DO NOTHING",
    )?
    .execute(params![
        job.provider,
        recording_id,
        job.call_id,
        job.dn,
        job.source,
        job.rel_path,
        state,
        error,
        job.start_time.map(ms),
        job.end_time.map(ms),
        job.event_id,
        now,
    ])?;
    Ok(())
}

/// The health probe's write: one small row, so a commit needs the write lock and a page.
fn ping(tx: &Connection) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('alive', ?1)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![ms(Utc::now()).to_string()])?;
    Ok(())
}

fn write_state(tx: &Connection, state: &StateWrite) -> Result<(), rusqlite::Error> {
    for (key, tracked) in &state.participants {
        write_participant(tx, key, tracked.as_ref())?;
    }
    for (key, call) in &state.calls {
        write_call(tx, key, call.as_ref())?;
    }
    for job in &state.jobs {
        update_job(tx, job)?;
    }
    for job in &state.new_jobs {
        create_job(tx, job)?;
    }
    for event in &state.call_events {
        super::outbox::insert(tx, event)?;
    }
    for delivery in &state.deliveries {
        super::outbox::update(tx, delivery)?;
    }
    for replay in &state.replays {
        super::outbox::replay(tx, replay)?;
    }
    if let Some(cursor) = state.cursor {
        tx.prepare_cached(
            "INSERT INTO meta (key, value) VALUES ('applied_cursor', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        )?
        .execute(params![cursor.to_string()])?;
    }
    Ok(())
}

/// A participant's row: its current form, or deleted (`None`).
fn write_participant(
    tx: &Connection,
    key: &ParticipantKey,
    tracked: Option<&Tracked>,
) -> rusqlite::Result<()> {
    match tracked {
        Some(t) => {
            let doc = serde_json::to_string(t)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            tx.prepare_cached(
                "INSERT INTO participants (provider, dn, participant_id, call_id, activity_ms, doc)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(provider, dn, participant_id) DO UPDATE SET
                    call_id = excluded.call_id, activity_ms = excluded.activity_ms,
                    doc = excluded.doc",
            )?
            .execute(params![
                key.provider,
                key.dn,
                key.participant_id,
                t.call_key().map(|k| k.call_id),
                ms(t.last_activity),
                doc
            ])?;
        }
        None => {
            tx.prepare_cached(
                "DELETE FROM participants WHERE provider = ?1 AND dn = ?2 AND participant_id = ?3",
            )?
            .execute(params![key.provider, key.dn, key.participant_id])?;
        }
    }
    Ok(())
}

/// A call's row with the wall clock of its last change, or deleted (`None`).
fn write_call(
    tx: &Connection,
    key: &CallKey,
    call: Option<&(Call, DateTime<Utc>)>,
) -> rusqlite::Result<()> {
    match call {
        Some((call, activity)) => {
            let doc = serde_json::to_string(call)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            tx.prepare_cached(
                "INSERT INTO calls (provider, call_id, state, started_ms, ended_ms, activity_ms, doc)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(provider, call_id) DO UPDATE SET
                    state = excluded.state, started_ms = excluded.started_ms,
                    ended_ms = excluded.ended_ms, activity_ms = excluded.activity_ms,
                    doc = excluded.doc",
            )?
            .execute(params![
                key.provider,
                key.call_id,
                call.state.as_str(),
                call.started_at.map(ms),
                // Every ended call sorts into history, even one known only from a summary
                // (no end time of its own): by its last change.
                match call.state {
                    crate::calls::CallState::Ended => Some(call.ended_at.map_or(ms(*activity), ms)),
                    crate::calls::CallState::Active => None,
                },
                ms(*activity),
                doc
            ])?;
        }
        None => {
            tx.prepare_cached("DELETE FROM calls WHERE provider = ?1 AND call_id = ?2")?
                .execute(params![key.provider, key.call_id])?;
        }
    }
    Ok(())
}

/// A job's progress as a worker reported it.
fn update_job(tx: &Connection, job: &JobUpdate) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE jobs SET state = ?2, attempts = ?3, next_attempt_ms = ?4, last_error = ?5,
                         bytes = COALESCE(?6, bytes), sha256 = COALESCE(?7, sha256),
                         updated_ms = ?8, rel_path = COALESCE(?9, rel_path)
         WHERE id = ?1",
    )?
    .execute(params![
        job.id,
        job.state,
        job.attempts,
        ms(job.next_attempt_at),
        job.last_error,
        job.bytes.map(|b| b as i64),
        job.sha256,
        ms(Utc::now()),
        job.rel_path,
    ])?;
    Ok(())
}

/// Journal rows older than `before`, never one the processor has not applied yet (`cursor`,
/// whatever the row's age).
fn sweep_events(tx: &Connection, before: i64, cursor: i64) -> rusqlite::Result<usize> {
    tx.execute(
        "DELETE FROM events WHERE received_ms < ?1 AND id <= ?2",
        params![before, cursor],
    )
}

fn sweep_state(tx: &Connection, before: i64) -> rusqlite::Result<usize> {
    let mut n = tx.execute(
        "DELETE FROM participants WHERE activity_ms < ?1 AND NOT EXISTS (
            SELECT 1 FROM calls c WHERE c.provider = participants.provider
              AND c.call_id = participants.call_id AND c.state = 'active')",
        params![before],
    )?;
    // By callhook's own clock (`activity_ms`: when it last changed the call, at or after it
    // ended), never `ended_ms`, the provider's: a call whose events are dated years ago was
    // still received today and is kept `retention_days` from now.
    n += tx.execute(
        "DELETE FROM calls WHERE state = 'ended' AND activity_ms < ?1",
        params![before],
    )?;
    n += tx.execute(
        "DELETE FROM jobs WHERE state IN ('downloaded', 'failed') AND updated_ms < ?1",
        params![before],
    )?;
    n += super::outbox::sweep(tx, before)?;
    Ok(n)
}

pub(super) fn job_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        id: r.get(0)?,
        provider: r.get(1)?,
        recording_id: r.get(2)?,
        call_id: r.get(3)?,
        dn: r.get(4)?,
        source: r.get(5)?,
        rel_path: r.get(6)?,
        state: r.get(7)?,
        attempts: r.get::<_, i64>(8)? as u32,
        next_attempt_at: from_ms(r.get(9)?),
        last_error: r.get(10)?,
        bytes: r.get::<_, Option<i64>>(11)?.map(|b| b as u64),
        sha256: r.get(12)?,
        start_time: r.get::<_, Option<i64>>(13)?.map(from_ms),
        end_time: r.get::<_, Option<i64>>(14)?.map(from_ms),
        event_id: r.get(15)?,
    })
}
