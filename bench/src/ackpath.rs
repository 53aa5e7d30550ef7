//! Issue #16's table: the ack path beside its references, at 16 and 64 connections, each figure
//! the median of 3 interleaved rounds (ceiling, file floor, SQLite floor, callhook, callhook
//! with 2 outbound endpoints; then again), so a slow minute of the shared machine falls on
//! every column instead of one. Every server is started fresh for its run, so each takes the
//! same bodies from the first and none has a bigger database than another.

use super::events_out::{Receiver, endpoints_toml};
use super::*;

/// Interleaved rounds per connection count; the table shows each column's median.
const ROUNDS: usize = 3;

/// One column of the table: what it is and how to start it (a server of this driver or the
/// daemon, with or without endpoints).
#[derive(Clone, Copy, PartialEq)]
enum Column {
    Ceiling,
    FileFloor,
    SqliteFloor,
    Callhook,
    Outbound,
}

const COLUMNS: [Column; 5] = [
    Column::Ceiling,
    Column::FileFloor,
    Column::SqliteFloor,
    Column::Callhook,
    Column::Outbound,
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

impl Run {
    pub(crate) async fn measure_ackpath(&mut self) {
        let secs = self.args.ackpath_secs;
        let mut table = String::from(
            "| connections | ceiling | file floor | SQLite floor | callhook | callhook / file floor | callhook / SQLite floor | p99 file floor → callhook | p99 SQLite floor → callhook | callhook, 2 endpoints | 2 endpoints / none |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        );
        for conns in [16, 64] {
            // Per column: (req/s, p99 ms) of each round.
            let mut got: Vec<Vec<(f64, f64)>> = vec![vec![]; COLUMNS.len()];
            for round in 1..=ROUNDS {
                for (i, column) in COLUMNS.iter().enumerate() {
                    let dir = self.work.join(format!("ackpath/{conns}-{round}-{i}"));
                    let _ = std::fs::remove_dir_all(&dir);
                    std::fs::create_dir_all(&dir).unwrap();
                    let w = self.ackpath_run(*column, &dir, secs, conns).await;
                    eprintln!(
                        "[16] {conns} conn., round {round}, {}: {:.0} req/s, p99 {:.2} ms, {} errors",
                        column.name(),
                        w.rps,
                        w.p99_ms,
                        w.errors
                    );
                    got[i].push((w.rps, w.p99_ms));
                }
            }
            let rps = |c: Column| {
                let i = COLUMNS.iter().position(|x| *x == c).unwrap();
                median(got[i].iter().map(|g| g.0).collect())
            };
            let p99 = |c: Column| {
                let i = COLUMNS.iter().position(|x| *x == c).unwrap();
                median(got[i].iter().map(|g| g.1).collect())
            };
            let (file, sqlite, ours, two) = (
                rps(Column::FileFloor),
                rps(Column::SqliteFloor),
                rps(Column::Callhook),
                rps(Column::Outbound),
            );
            table.push_str(&format!(
                "| {conns} | {:.0}/s | {file:.0}/s | {sqlite:.0}/s | {ours:.0}/s | **{:.2}** | **{:.2}** | {:.1} ms → {:.1} ms ({:.1}×) | {:.1} ms → {:.1} ms ({:.1}×) | {two:.0}/s | **{:.2}** |\n",
                rps(Column::Ceiling),
                ours / file,
                ours / sqlite,
                p99(Column::FileFloor),
                p99(Column::Callhook),
                p99(Column::Callhook) / p99(Column::FileFloor),
                p99(Column::SqliteFloor),
                p99(Column::Callhook),
                p99(Column::Callhook) / p99(Column::SqliteFloor),
                two / ours,
            ));
            for (i, column) in COLUMNS.iter().enumerate() {
                let rounds: Vec<String> = got[i]
                    .iter()
                    .map(|(r, p)| format!("{r:.0}/s p99 {p:.1} ms"))
                    .collect();
                self.row(
                    &format!("16. {conns} connections, {}", column.name()),
                    format!("rounds: {}", rounds.join("; ")),
                    "—",
                    None,
                );
            }
            let ratio = ours / file;
            self.row(
                &format!("16. {conns} connections: callhook / file floor (median of {ROUNDS})"),
                format!("{ratio:.2}"),
                "≥ 0.6",
                Some(ratio >= 0.6),
            );
            let tail = p99(Column::Callhook) / p99(Column::FileFloor);
            self.row(
                &format!("16. {conns} connections: p99 callhook / file floor"),
                format!("{tail:.1}×"),
                "≤ 3×",
                Some(tail <= 3.0),
            );
        }
        self.ackpath_table = Some(format!(
            "{table}\n(`wrk -t1`, {secs} s a run, distinct signed `call_status` bodies, lookups off; medians of {ROUNDS} interleaved rounds; every server fresh for its run)"
        ));
    }

    /// One run of `column` on a fresh server in `dir`.
    async fn ackpath_run(&self, column: Column, dir: &Path, secs: u64, conns: usize) -> Wrk {
        let load = |pid: &str, base: &str| {
            let url = format!("{base}/webhooks/jas");
            wrk_on(pid, &url, &self.bodies, 1, secs, conns)
        };
        match column {
            Column::Ceiling | Column::FileFloor | Column::SqliteFloor => {
                let file = dir.join("journal.bin");
                let db = dir.join("callhook.db");
                let prealloc = self.args.file_floor_prealloc_mib.to_string();
                let args: Vec<&str> = match column {
                    Column::Ceiling => vec!["ceiling"],
                    Column::FileFloor => vec![
                        "file-floor",
                        "--file",
                        file.to_str().unwrap(),
                        "--prealloc-mib",
                        &prealloc,
                    ],
                    _ => vec!["durable-floor", "--db", db.to_str().unwrap()],
                };
                let (server, addr) = start_server_args(&self.exe, &args);
                let w = load(&server.pid(), &format!("http://{addr}"));
                drop(server);
                w
            }
            Column::Callhook => {
                let (d, _) = start_daemon(&self.bin, dir, &[]);
                let w = load(&d.proc.pid(), &d.public);
                d.proc.term();
                w
            }
            Column::Outbound => {
                let receivers = [Receiver::start().await, Receiver::start().await];
                let (d, _) = start_daemon_toml(&self.bin, dir, &endpoints_toml(&receivers), &[]);
                let w = load(&d.proc.pid(), &d.public);
                d.proc.term();
                w
            }
        }
    }
}

impl Column {
    fn name(self) -> &'static str {
        match self {
            Column::Ceiling => "ceiling",
            Column::FileFloor => "file floor",
            Column::SqliteFloor => "SQLite floor",
            Column::Callhook => "callhook",
            Column::Outbound => "callhook, 2 endpoints",
        }
    }
}
