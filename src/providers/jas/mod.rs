//! JAS Connect (a cloud API over 3CX): signed webhooks, participant lookups, recordings.

pub mod client;
pub mod events;
pub mod routes;
pub mod verify;
