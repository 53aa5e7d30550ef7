//! The download worker pool. The `jobs` table is the queue: a dispatcher takes due jobs (at
//! most `recordings.concurrency` at once), each worker makes one attempt and reports through
//! the processor, which writes the job and its call together. A job left `downloading` by a
//! crash or a shutdown is simply due again at the next start.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::download::{Downloaded, distinct_name, temp_prefix};
use super::fetch::Fetcher;
use super::folder::Folder;
use super::path::recording_relative_path;
use super::{RecorderOptions, RecordingUpdate};
use crate::calls::{CallKey, Recording, RecordingState};
use crate::journal::{Job, JobUpdate, Journal};

/// After a failed write of a job's progress, before that job may be picked again, so a broken
/// database does not turn into a busy loop.
const WRITE_FAILURE_PAUSE: Duration = Duration::from_secs(1);

pub struct Recorder {
    worker: Arc<Worker>,
    concurrency: usize,
    /// Rung by the processor when a `new_recording` is applied.
    nudge: Arc<Notify>,
    idle_poll: Duration,
}

/// What one attempt needs; shared by every worker task.
struct Worker {
    journal: Journal,
    fetcher: Fetcher,
    dir: PathBuf,
    max_attempts: u32,
    options: RecorderOptions,
    updates: mpsc::Sender<RecordingUpdate>,
}

/// The processor is gone (shutdown) or could not write: the job stays as last written.
#[derive(Debug)]
struct NotRecorded;

/// Why a job ended `failed`.
enum Failure {
    /// Its name could leave `recordings.dir`; nothing was requested or written.
    Refused(String),
    /// A permanent error, or a transient one on the last attempt.
    Download(String),
}

impl Recorder {
    /// What wakes the workers: rung when a job becomes due by request (a retry).
    pub fn nudge(&self) -> Arc<Notify> {
        self.nudge.clone()
    }

    pub fn new(
        journal: Journal,
        fetcher: Fetcher,
        settings: &crate::config::RecordingsSettings,
        updates: mpsc::Sender<RecordingUpdate>,
        nudge: Arc<Notify>,
    ) -> Recorder {
        Recorder {
            worker: Arc::new(Worker {
                journal,
                fetcher,
                dir: settings.dir.clone(),
                max_attempts: settings.max_attempts,
                options: settings.tuning,
                updates,
            }),
            concurrency: settings.concurrency.max(1),
            nudge,
            idle_poll: settings.tuning.idle_poll,
        }
    }

    /// Runs until `stop`; downloads in flight are then dropped (their temp files removed) and
    /// their jobs stay `downloading`, which the next start resumes.
    pub async fn run(self, stop: CancellationToken) {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = self.worker.retry_failed_once() => {}
        }
        let mut running: JoinSet<()> = JoinSet::new();
        let mut in_flight: HashMap<tokio::task::Id, i64> = HashMap::new();
        loop {
            let mut wake_at = None;
            if running.len() < self.concurrency {
                let busy: HashSet<i64> = in_flight.values().copied().collect();
                match self
                    .worker
                    .journal
                    .queued_jobs(busy.len() + self.concurrency)
                    .await
                {
                    Ok(jobs) => {
                        let now = Utc::now();
                        for job in jobs.into_iter().filter(|j| !busy.contains(&j.id)) {
                            if job.next_attempt_at > now {
                                wake_at = Some(job.next_attempt_at);
                                break;
                            }
                            if running.len() >= self.concurrency {
                                break;
                            }
                            let id = job.id;
                            let worker = self.worker.clone();
                            let handle = running.spawn(async move { worker.attempt(job).await });
                            in_flight.insert(handle.id(), id);
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reading the download queue failed; retrying");
                        wake_at = Some(Utc::now() + chrono::Duration::seconds(1));
                    }
                }
            }
            if let Ok(depth) = self.worker.journal.count_queued_jobs().await {
                metrics::gauge!("callhook_recording_queue_depth").set(depth as f64);
            }
            let sleep = wake_at
                .map(|t| (t - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(self.idle_poll)
                .min(self.idle_poll);
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                    let id = match done {
                        Ok((id, ())) => id,
                        Err(e) => {
                            tracing::error!(error = %e, "a download worker failed");
                            e.id()
                        }
                    };
                    in_flight.remove(&id);
                }
                _ = self.nudge.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
        running.shutdown().await;
    }
}

impl Worker {
    /// A job that failed in the last run gets one more attempt at this start: its attempt count
    /// is raised to `max_attempts`, so that attempt is its last whatever happens, and the job is
    /// not retried again at the start after that.
    async fn retry_failed_once(&self) {
        let jobs = match self.journal.jobs_to_retry(self.max_attempts).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::error!(error = %e, "reading failed downloads failed");
                return;
            }
        };
        for job in jobs {
            tracing::info!(provider = %job.provider, call_id = %job.call_id,
                recording = %job.source.escape_debug(), journal_id = job.event_id,
                "retrying a failed recording download once more");
            let update = JobUpdate {
                id: job.id,
                state: RecordingState::Pending,
                attempts: job.attempts.max(self.max_attempts),
                next_attempt_at: Utc::now(),
                last_error: job.last_error.clone(),
                bytes: None,
                sha256: None,
                rel_path: None,
            };
            if self.record(&job, update).await.is_err() {
                return;
            }
        }
    }

    /// One attempt at one job, from marking it `downloading` to writing how it went.
    async fn attempt(&self, job: Job) {
        if self.try_attempt(&job).await.is_err() {
            tokio::time::sleep(WRITE_FAILURE_PAUSE).await;
        }
    }

    async fn try_attempt(&self, job: &Job) -> Result<(), NotRecorded> {
        // Checked again here, not only when the job was made: nothing reaches the file system
        // or the network under a name that could leave `recordings.dir`.
        let rel = match recording_relative_path(job.provider.as_str(), &job.source) {
            Ok(rel) => rel,
            Err(e) => {
                let reason = format!("refused: {e}");
                metrics::counter!("callhook_recordings_total", "outcome" => "refused").increment(1);
                tracing::warn!(provider = %job.provider, call_id = %job.call_id,
                    recording = %job.source.escape_debug(), journal_id = job.event_id,
                    reason = %e, "recording name refused; nothing will be written");
                return self
                    .finish(job, job.attempts, Err(Failure::Refused(reason)))
                    .await;
            }
        };
        let dest = self.dir.join(&rel);
        let attempt = job.attempts + 1;

        // `downloading` means the last run stopped in the middle of this job; if that was after
        // the rename, the file under its final name is whole, so it is kept rather than fetched
        // again: under the job's distinct name it can only be this job's; under the name asked
        // for, only when no other job has downloaded a recording there.
        if job.state == RecordingState::Downloading {
            if let Some(done) = self.own_file(job, &rel).await {
                tracing::info!(provider = %job.provider, call_id = %job.call_id,
                    recording = %job.source.escape_debug(), journal_id = job.event_id,
                    "recording was already on disk");
                return self.finish(job, job.attempts, Ok(done)).await;
            }
        }

        let update = JobUpdate {
            id: job.id,
            state: RecordingState::Downloading,
            attempts: attempt,
            next_attempt_at: Utc::now(),
            last_error: job.last_error.clone(),
            bytes: None,
            sha256: None,
            rel_path: None,
        };
        self.record(job, update).await?;
        remove_stale_parts(&self.dir, &rel).await;

        let result = self.fetcher.fetch(job, &dest).await;
        if let Err(e) = &result {
            if let Some(outcome) = e.limit_outcome() {
                metrics::counter!("callhook_recordings_total", "outcome" => outcome).increment(1);
            }
        }
        match result {
            Ok(done) => {
                if done.rel_path != rel {
                    tracing::warn!(provider = %job.provider, call_id = %job.call_id,
                        recording = %job.source.escape_debug(), journal_id = job.event_id,
                        path = %done.rel_path.display(), taken = %rel.display(),
                        "another recording's file has this recording's name; saved under a distinct name");
                }
                self.finish(job, attempt, Ok(done)).await
            }
            Err(e) if e.is_transient() && attempt < self.max_attempts => {
                let delay = backoff(&self.options, attempt, e.retry_after());
                metrics::counter!("callhook_recordings_total", "outcome" => "retried").increment(1);
                tracing::warn!(provider = %job.provider, call_id = %job.call_id,
                    recording = %job.source.escape_debug(), journal_id = job.event_id,
                    attempt, error = %e, retry_in_ms = delay.as_millis() as u64,
                    "recording download failed; will retry");
                let next =
                    Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
                let update = JobUpdate {
                    id: job.id,
                    state: RecordingState::Pending,
                    attempts: attempt,
                    next_attempt_at: next,
                    last_error: Some(e.to_string()),
                    bytes: None,
                    sha256: None,
                    rel_path: None,
                };
                self.record(job, update).await
            }
            Err(e) => {
                self.finish(job, attempt, Err(Failure::Download(e.to_string())))
                    .await
            }
        }
    }

    /// A whole file a crashed attempt at `job` left under its final name, if there is one.
    async fn own_file(&self, job: &Job, rel: &Path) -> Option<Downloaded> {
        let name = rel.file_name()?.to_str()?;
        let distinct = rel.with_file_name(distinct_name(name, &job.id.to_string()));
        if let Some(done) = existing_file(&self.dir, &distinct).await {
            return Some(done);
        }
        let taken = self
            .journal
            .path_downloaded_by_other(rel.to_string_lossy().into_owned(), job.id)
            .await
            .unwrap_or(true);
        if taken {
            return None;
        }
        existing_file(&self.dir, rel).await
    }

    /// Writes a final outcome: `downloaded` with its size and hash, or `failed` with why.
    async fn finish(
        &self,
        job: &Job,
        attempts: u32,
        outcome: Result<Downloaded, Failure>,
    ) -> Result<(), NotRecorded> {
        let update = match outcome {
            Ok(done) => {
                metrics::counter!("callhook_recordings_total", "outcome" => "downloaded")
                    .increment(1);
                tracing::info!(provider = %job.provider, call_id = %job.call_id,
                    recording = %job.source.escape_debug(), journal_id = job.event_id,
                    bytes = done.bytes, sha256 = %done.sha256, "recording downloaded");
                JobUpdate {
                    id: job.id,
                    state: RecordingState::Downloaded,
                    attempts,
                    next_attempt_at: Utc::now(),
                    last_error: None,
                    bytes: Some(done.bytes),
                    sha256: Some(done.sha256),
                    rel_path: Some(done.rel_path.to_string_lossy().into_owned()),
                }
            }
            Err(failure) => {
                let error = match failure {
                    // Counted and logged where it was refused.
                    Failure::Refused(reason) => reason,
                    Failure::Download(error) => {
                        metrics::counter!("callhook_recordings_total", "outcome" => "failed")
                            .increment(1);
                        tracing::warn!(provider = %job.provider, call_id = %job.call_id,
                            recording = %job.source.escape_debug(), journal_id = job.event_id,
                            attempts, error = %error, "recording download failed");
                        error
                    }
                };
                JobUpdate {
                    id: job.id,
                    state: RecordingState::Failed,
                    attempts,
                    next_attempt_at: Utc::now(),
                    last_error: Some(error),
                    bytes: None,
                    sha256: None,
                    rel_path: None,
                }
            }
        };
        self.record(job, update).await
    }

    /// Hands the job's new state and its call's recording (made from that state, so the two
    /// agree) to the processor and waits until both are written.
    async fn record(&self, job: &Job, update: JobUpdate) -> Result<(), NotRecorded> {
        let (done, written) = oneshot::channel();
        self.updates
            .send(RecordingUpdate {
                call: CallKey::new(job.provider, job.call_id.clone()),
                recording: recording_of(job, &update),
                times: (job.start_time, job.end_time),
                job: Some(update),
                done: Some(done),
            })
            .await
            .map_err(|_| NotRecorded)?;
        match written.await {
            Ok(true) => Ok(()),
            _ => Err(NotRecorded),
        }
    }
}

/// The recording as its call shows it once `update` is written: its state, error, size and hash,
/// and its path (where the file ended up, else the job's).
fn recording_of(job: &Job, update: &JobUpdate) -> Recording {
    Recording {
        // A second call naming the same recording has a job `<id>@<call id>`
        // (journal/writer.rs); on the call the recording is still named by its id.
        id: job
            .recording_id
            .strip_suffix(&format!("@{}", job.call_id))
            .unwrap_or(&job.recording_id)
            .to_string(),
        url: job.source.clone(),
        path: update.rel_path.clone().or_else(|| job.rel_path.clone()),
        state: update.state,
        bytes: update.bytes,
        sha256: update.sha256.clone(),
        dn: job.dn.clone(),
        error: update.last_error.clone(),
    }
}

/// Exponential from `base`, capped, with "equal jitter" (half fixed, half random) so that
/// jobs failing together do not retry together; never sooner than the server's Retry-After.
pub fn backoff(options: &RecorderOptions, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exp = options
        .backoff_base
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(options.backoff_cap);
    let half = exp / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
    let delay = half + Duration::from_millis(jitter);
    retry_after.map_or(delay, |r| r.max(delay))
}

/// Size and hash of the regular file at `root/rel`, if there is one, reached without following
/// a link below `root`.
async fn existing_file(root: &Path, rel: &Path) -> Option<Downloaded> {
    let root = root.to_path_buf();
    let rel = rel.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let folder = Folder::open(&root, rel.parent()?, false).ok()??;
        let mut file = folder.open_file(rel.file_name()?.to_str()?)?;
        let mut hasher = Sha256::new();
        let bytes = std::io::copy(&mut file, &mut hasher).ok()?;
        (bytes > 0).then(|| Downloaded {
            bytes,
            sha256: hex::encode(hasher.finalize()),
            rel_path: rel.clone(),
        })
    })
    .await
    .ok()
    .flatten()
}

/// Removes temp files of earlier attempts at `root/rel` that a crash left behind (a clean
/// failure or shutdown removes its own). Only one worker handles a job at a time, so none is in
/// use.
async fn remove_stale_parts(root: &Path, rel: &Path) {
    let root = root.to_path_buf();
    let rel = rel.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || {
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name().and_then(|n| n.to_str()))
        else {
            return;
        };
        let Ok(Some(folder)) = Folder::open(&root, parent, false) else {
            return;
        };
        let prefix = temp_prefix(name);
        for entry in folder.names() {
            if entry.starts_with(&prefix) {
                folder.remove(&entry);
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recordings::download::temp_name;

    #[test]
    fn backoff_doubles_within_jitter_up_to_the_cap() {
        let options = RecorderOptions {
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            idle_poll: Duration::from_secs(60),
        };
        for _ in 0..100 {
            for (attempt, full) in [(1, 1), (2, 2), (3, 4), (9, 256), (10, 300), (40, 300)] {
                let d = backoff(&options, attempt, None);
                let full = Duration::from_secs(full);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
            }
        }
    }

    #[test]
    fn retry_after_is_a_floor() {
        let options = RecorderOptions {
            backoff_base: Duration::from_millis(10),
            ..Default::default()
        };
        let d = backoff(&options, 1, Some(Duration::from_secs(7)));
        assert_eq!(d, Duration::from_secs(7));
        let d = backoff(&options, 1, Some(Duration::ZERO));
        assert!(d <= Duration::from_millis(10));
    }

    #[tokio::test]
    async fn stale_parts_of_this_file_only_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let rel = Path::new("a.wav");
        let other = temp_name("b.wav");
        for name in [
            temp_name("a.wav"),
            temp_name("a.wav"),
            other.clone(),
            "a.wav".into(),
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        remove_stale_parts(dir.path(), rel).await;
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut want = vec![other, "a.wav".to_string()];
        want.sort();
        assert_eq!(left, want);
        assert_eq!(
            existing_file(dir.path(), rel).await.map(|d| d.bytes),
            Some(1)
        );
        assert_eq!(existing_file(dir.path(), Path::new("none")).await, None);
        // Never through a link below the root.
        std::os::unix::fs::symlink(dir.path(), dir.path().join("link")).unwrap();
        assert_eq!(
            existing_file(dir.path(), Path::new("link/a.wav")).await,
            None
        );
    }
}
