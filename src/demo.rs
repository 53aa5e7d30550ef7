//! `callhook demo`: the whole pipeline with no account (work in progress).

use std::process::ExitCode;

pub async fn run() -> ExitCode {
    eprintln!("callhook demo: not built yet");
    ExitCode::from(1)
}
