//! Recordings: safe mapping of provider names to files, the durable job queue, the worker pool
//! and the streamed download that never leaves a partial file under a final name.

pub mod download;
pub mod fetch;
pub mod folder;
pub mod path;
pub mod worker;

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use crate::calls::{CallKey, Recording};
use crate::journal::JobUpdate;

pub use worker::Recorder;

/// How the workers pace retries (`RecordingsSettings::tuning`); defined with the settings.
pub use crate::config::RecorderOptions;

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
