//! Recordings: safe mapping of provider names to files, the durable job queue, the worker pool
//! and the streamed download that never leaves a partial file under a final name.

pub mod download;
pub mod path;
