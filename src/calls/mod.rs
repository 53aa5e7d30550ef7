//! The live call table and every ordering rule: per-participant sequences, tombstones, the end of
//! a call, direction, the stale sweep. Pure and synchronous: the processor is its only writer, the
//! admin API reads it concurrently through `dashmap`, and nothing here knows about HTTP or SQL.

pub mod cdr;
mod compact;
mod direction;
mod model;
mod snapshot;
mod table;

pub use compact::{Extra, RareText, Text};
pub use direction::{DirectionRule, Side};
pub use model::{
    Call, CallKey, CallState, Details, Direction, EndReason, Leg, Participant, ParticipantKey,
    Provider, Recording, RecordingState, Tracked,
};
pub use snapshot::{Plan, Repair, SNAPSHOT_SEQ, Snapshot};
pub use table::{CallTable, Changes, END_GRACE, Mark, Transition};

#[cfg(test)]
mod tests;
