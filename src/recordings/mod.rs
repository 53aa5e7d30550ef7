//! Recordings: safe mapping of provider names to files, the durable job queue, the worker pool
//! and the streamed download that never leaves a partial file under a final name.

pub mod download;
pub mod fetch;
pub mod folder;
pub mod path;
pub mod worker;

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use crate::calls::{CallKey, Recording};
use crate::journal::JobUpdate;

pub use worker::Recorder;

/// How the workers pace retries. Not configuration keys: production uses the defaults; tests
/// shorten them (through `RecordingsSettings::tuning`) so that retries take milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecorderOptions {
    /// Delay before the second attempt; doubled for each one after (with jitter).
    pub backoff_base: Duration,
    /// Longest delay between attempts, unless the server's `Retry-After` asks for more.
    pub backoff_cap: Duration,
    /// How often the queue is looked at when nothing wakes the workers (a safety net: new jobs
    /// and finished downloads wake them at once).
    pub idle_poll: Duration,
}

impl Default for RecorderOptions {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            idle_poll: Duration::from_secs(60),
        }
    }
}

/// A worker's progress on one job, sent to the processor (the only writer of the call table),
/// which writes the job row and the call row in one transaction, then answers `done`.
#[derive(Debug)]
pub struct RecordingUpdate {
    pub call: CallKey,
    pub recording: Recording,
    /// The recording's own times, used when its call was never seen.
    pub times: (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
    pub job: Option<JobUpdate>,
    /// `true` once written; `false` when the write failed.
    pub done: Option<oneshot::Sender<bool>>,
}
