//! callhook's benchmark driver: `bench/run.sh` builds it (`cargo build --release --example
//! callhook-bench`) and runs `callhook-bench all`, which measures everything BENCHMARKS.md
//! reports in one run, on loopback only, bounded in time, and prints the table.
//! The other subcommands are the pieces `all` starts as child processes: the ceiling server,
//! the mock JAS API, and the 1 GiB download whose RSS is measured in a process of its own.
// Test and benchmark clients talk to loopback servers of their own and build reqwest clients
// directly; the daemon's own go through `callhook::outbound` (clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use callhook::calls::CallTable;
use callhook::journal::Journal;
use callhook::processor::Processor;
use callhook::providers::jas::client::{JasAuth, JasClient, JasClientConfig};
use callhook::providers::jas::routes::journal_entry;
use callhook::providers::jas::verify::{Verifier, sign};
use callhook::recordings::download::download_to;
use chrono::{SecondsFormat, Utc};
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use secrecy::SecretString;
use serde_json::{Value, json};

mod ackpath;
mod events_out;

const SECRET: &str = "bench-webhook-secret";

#[derive(Parser)]
#[command(about = "callhook benchmarks (see BENCHMARKS.md)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every measurement of BENCHMARKS.md in one run; prints the table.
    All(AllArgs),
    /// The ceiling: an axum server that only verifies X-SIG and parses the JSON body.
    Ceiling {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// The durable floor: the ceiling plus `Journal::append` (callhook's own writer, group commit
    /// and WAL sync) before the reply; no processor, no call table, no logs.
    DurableFloor {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long)]
        db: PathBuf,
    },
    /// The leanest durable journal: the ceiling plus decode and one `write` of each batch to an
    /// append-only file, `fdatasync`ed before the replies (group commit on one thread). No
    /// SQLite, no dedupe, no index: what any journal that syncs before it acks can reach here.
    FileFloor {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long)]
        file: PathBuf,
        /// Write this many MiB of zeros first and then overwrite them, so a sync need not
        /// journal a growing file size (0: plain append).
        #[arg(long, default_value_t = 0)]
        prealloc_mib: u64,
        /// Files written and synced side by side, each by its own thread.
        #[arg(long, default_value_t = 1)]
        lanes: usize,
        /// Open the files with O_DSYNC, so each `write` is durable when it returns and no
        /// `fdatasync` follows (one system call per batch instead of two).
        #[arg(long)]
        dsync: bool,
    },
    /// A fast mock of the JAS participants API (any participant exists; callid = id / 2).
    MockApi {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Streams a recording of SIZE MiB from a loopback server through
    /// `recordings::download::download_to` and reports this process's RSS.
    Download {
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Serves `GET /v2/api/recordings/...` on loopback: SIZE MiB of audio for any name, 1 MiB
    /// for names starting with `warm`.
    RecordingServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
    },
    /// The call table alone: RSS growth of this process after N participants (calls of two)
    /// with the details a lookup gives, so the daemon's figure can be split into the table's
    /// share and the rest.
    Table {
        #[arg(long, default_value_t = 100_000)]
        participants: usize,
    },
}

#[derive(clap::Args)]
struct AllArgs {
    /// The callhook binary (release build).
    #[arg(long, default_value = "target/release/callhook")]
    callhook: PathBuf,
    /// Scratch space (databases, bodies, the downloaded file); on the real disk, not tmpfs,
    /// so journal syncs cost what they cost.
    #[arg(long, default_value = "target/bench")]
    work: PathBuf,
    /// Seconds of load per throughput measurement.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Distinct signed bodies; more than any run sends, so none repeats.
    #[arg(long, default_value_t = 400_000)]
    bodies: usize,
    #[arg(long, default_value_t = 100_000)]
    participants: usize,
    #[arg(long, default_value_t = 1_000_000)]
    journal_events: usize,
    #[arg(long, default_value_t = 1024)]
    download_mib: u64,
    /// MiB of zeros the file floor writes before overwriting them (0: a growing file, whose
    /// every sync also journals the new size).
    #[arg(long, default_value_t = 256)]
    file_floor_prealloc_mib: u64,
    /// Files the file floor writes and syncs side by side (2 or 3 measured no better than 1).
    #[arg(long, default_value_t = 1)]
    file_floor_lanes: usize,
    /// The file floor writes with O_DSYNC instead of `write` + `fdatasync`.
    #[arg(long)]
    file_floor_dsync: bool,
    /// Keep `work` and reuse the restart databases of an earlier run instead of filling them.
    #[arg(long)]
    reuse: bool,
    /// Webhooks a second the paced sender of `paced` sends (issue #13: far above a large PBX's
    /// peak).
    #[arg(long, default_value_t = 1000.0)]
    paced_rate: f64,
    /// Writes each paced webhook's ack time and its 200 → delivered latency (ms, one pair a
    /// line) here, to see when in the run the slow ones came.
    #[arg(long)]
    paced_dump: Option<PathBuf>,
    /// Seconds the paced sender runs.
    #[arg(long, default_value_t = 20)]
    paced_secs: u64,
    /// Webhooks `deliveries` posts (each 2 events) to make the backlog one endpoint drains.
    #[arg(long, default_value_t = 5_000)]
    deliveries_webhooks: usize,
    /// Ended calls in the database `export` streams out of the daemon (issue #15).
    #[arg(long, default_value_t = 100_000)]
    export_calls: usize,
    /// Seconds of load per run of `ackpath` (issue #16's table: 5 columns × 3 rounds × 2
    /// connection counts).
    #[arg(long, default_value_t = 5)]
    ackpath_secs: u64,
    /// Only these parts (ackpath, ceiling, floor, file-floor, plain, lookups, memory, download,
    /// restart, outbound, paced, deliveries, export); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Cmd::All(args) => rt.block_on(all(args)),
        Cmd::Ceiling { listen } => rt.block_on(ceiling(listen)),
        Cmd::DurableFloor { listen, db } => rt.block_on(durable_floor(listen, &db)),
        Cmd::FileFloor {
            listen,
            file,
            prealloc_mib,
            lanes,
            dsync,
        } => rt.block_on(file_floor(listen, file, prealloc_mib, lanes, dsync)),
        Cmd::MockApi { listen } => rt.block_on(mock_api(listen)),
        Cmd::Download { size_mib, dir } => rt.block_on(download(size_mib, &dir)),
        Cmd::Table { participants } => table(participants),
        Cmd::RecordingServer { listen, size_mib } => {
            rt.block_on(recording_server(listen, size_mib * 1024 * 1024))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The servers started as children.

async fn serve(listen: SocketAddr, router: axum::Router) {
    let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
    println!("listening {}", listener.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    axum::serve(listener, router).await.unwrap();
}

async fn ceiling(listen: SocketAddr) {
    async fn receive(
        State(verifier): State<Arc<Verifier>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Json<Value>, StatusCode> {
        verifier
            .verify(headers.get("x-sig").map(|v| v.as_bytes()), &body)
            .map_err(|_| StatusCode::UNAUTHORIZED)?;
        let _: Value = serde_json::from_slice(&body).map_err(|_| StatusCode::BAD_REQUEST)?;
        Ok(Json(json!({"status": "accepted"})))
    }
    let verifier = Arc::new(Verifier::new(vec![SecretString::from(SECRET)]));
    let router = axum::Router::new()
        .route("/webhooks/jas", post(receive))
        .with_state(verifier);
    serve(listen, router).await
}

async fn durable_floor(listen: SocketAddr, db: &Path) {
    struct Floor {
        verifier: Verifier,
        journal: Journal,
    }
    async fn receive(
        State(floor): State<Arc<Floor>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Json<Value>, StatusCode> {
        floor
            .verifier
            .verify(headers.get("x-sig").map(|v| v.as_bytes()), &body)
            .map_err(|_| StatusCode::UNAUTHORIZED)?;
        let decoded = callhook::providers::jas::events::decode(&body, chrono::Utc::now())
            .map_err(|_| StatusCode::BAD_REQUEST)?;
        floor
            .journal
            .append(journal_entry(&decoded.event, decoded.dedupe_key, body))
            .await
            .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
        Ok(Json(json!({"status": "accepted"})))
    }
    let floor = Arc::new(Floor {
        verifier: Verifier::new(vec![SecretString::from(SECRET)]),
        journal: Journal::open(db).await.expect("open the journal"),
    });
    let router = axum::Router::new()
        .route("/webhooks/jas", post(receive))
        .with_state(floor);
    serve(listen, router).await
}

/// A body to append, and who waits for it to be durable.
type Append = (Bytes, tokio::sync::oneshot::Sender<()>);

/// A file floor lane's file, preallocated and positioned at its start.
fn open_lane(path: &Path, prealloc_mib: u64, dsync: bool) -> std::fs::File {
    let mut out = std::fs::File::create(path).expect("create the journal file");
    if prealloc_mib > 0 {
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..prealloc_mib {
            out.write_all(&zeros).unwrap();
        }
        out.sync_all().unwrap();
    }
    if dsync {
        use std::os::unix::fs::OpenOptionsExt as _;
        const O_DSYNC: i32 = 0o10000; // Linux, x86-64 and aarch64
        out = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(O_DSYNC)
            .open(path)
            .unwrap();
    }
    use std::io::Seek as _;
    out.seek(std::io::SeekFrom::Start(0)).unwrap();
    out
}

/// A lane's thread: everything queued in one `write`, one sync, then every waiter answered.
fn write_lane(
    mut out: std::fs::File,
    queue: &std::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Append>>,
    dsync: bool,
) {
    let mut buf = Vec::with_capacity(1 << 20);
    let mut waiting = Vec::new();
    loop {
        {
            let mut queue = queue.lock().unwrap();
            let Some(first) = queue.blocking_recv() else {
                return;
            };
            let mut next = Some(first);
            while let Some((body, done)) = next {
                buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
                buf.extend_from_slice(&body);
                waiting.push(done);
                next = queue.try_recv().ok();
            }
        }
        out.write_all(&buf).expect("write");
        if !dsync {
            out.sync_data().expect("fdatasync");
        }
        buf.clear();
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}

async fn file_floor(
    listen: SocketAddr,
    file: PathBuf,
    prealloc_mib: u64,
    lanes: usize,
    dsync: bool,
) {
    struct Floor {
        verifier: Verifier,
        appends: tokio::sync::mpsc::UnboundedSender<Append>,
    }
    async fn receive(
        State(floor): State<Arc<Floor>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Json<Value>, StatusCode> {
        floor
            .verifier
            .verify(headers.get("x-sig").map(|v| v.as_bytes()), &body)
            .map_err(|_| StatusCode::UNAUTHORIZED)?;
        callhook::providers::jas::events::decode(&body, chrono::Utc::now())
            .map_err(|_| StatusCode::BAD_REQUEST)?;
        let (done, synced) = tokio::sync::oneshot::channel();
        floor
            .appends
            .send((body, done))
            .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
        synced.await.map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
        Ok(Json(json!({"status": "accepted"})))
    }
    let (appends, queue) = tokio::sync::mpsc::unbounded_channel::<Append>();
    let queue = Arc::new(std::sync::Mutex::new(queue));
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    // Each lane is a file of its own and a thread: it takes everything queued, writes it with
    // one call, syncs once and answers all. With two lanes one gathers while the other syncs.
    for lane in 0..lanes.max(1) {
        let out = open_lane(&file.with_extension(format!("{lane}")), prealloc_mib, dsync);
        let queue = queue.clone();
        std::thread::spawn(move || write_lane(out, &queue, dsync));
    }
    let floor = Arc::new(Floor {
        verifier: Verifier::new(vec![SecretString::from(SECRET)]),
        appends,
    });
    let router = axum::Router::new()
        .route("/webhooks/jas", post(receive))
        .with_state(floor);
    serve(listen, router).await
}

async fn mock_api(listen: SocketAddr) {
    async fn participant(UrlPath((dn, id)): UrlPath<(String, String)>) -> Json<Value> {
        let n: u64 = id.parse().unwrap_or(0);
        Json(json!({
            "id": n, "status": if n % 2 == 0 { "Ringing" } else { "Connected" }, "dn": dn,
            "party_caller_name": "", "party_dn": "10000", "party_caller_id": "5148888888",
            "party_did": "", "device_id": format!("sip:{dn}@127.0.0.1:5063"),
            "party_dn_type": "Wexternalline", "direct_control": false,
            "originated_by_dn": "", "originated_by_type": "None", "referred_by_dn": "",
            "referred_by_type": "None", "on_behalf_of_dn": "", "on_behalf_of_type": "None",
            "callid": n / 2, "legid": 1
        }))
    }
    let router = axum::Router::new().route(
        "/v2/api/callcontrol/{dn}/participants/{id}",
        get(participant),
    );
    serve(listen, router).await
}

// ---------------------------------------------------------------------------------------------
// The 1 GiB download, in its own process so its RSS is only this.

fn rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `size` bytes of a recording, streamed in 64 KiB chunks that share one buffer (no copies), with
/// a Content-Length the downloader checks.
fn recording_body(size: u64) -> impl IntoResponse {
    const CHUNK: usize = 64 * 1024;
    let chunk = Bytes::from(vec![0x5au8; CHUNK]);
    let chunks = size.div_ceil(CHUNK as u64);
    let stream = futures_util::stream::iter(0..chunks).map(move |i| {
        let left = size - i * CHUNK as u64;
        Ok::<_, std::convert::Infallible>(chunk.slice(..(left.min(CHUNK as u64) as usize)))
    });
    (
        [
            (header::CONTENT_TYPE, "audio/wav".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        Body::from_stream(stream),
    )
}

async fn recording_server(listen: SocketAddr, size: u64) {
    async fn recording(
        State(size): State<u64>,
        UrlPath(rest): UrlPath<String>,
    ) -> impl IntoResponse {
        let warm = rest
            .rsplit('/')
            .next()
            .is_some_and(|n| n.starts_with("warm"));
        recording_body(if warm { 1024 * 1024 } else { size })
    }
    let router = axum::Router::new()
        .route("/v2/api/recordings/{*rest}", get(recording))
        .with_state(size);
    serve(listen, router).await
}

async fn download(size_mib: u64, dir: &Path) {
    async fn recording(
        State(size): State<u64>,
        UrlPath(_rest): UrlPath<String>,
    ) -> impl IntoResponse {
        recording_body(size)
    }
    let size = size_mib * 1024 * 1024;
    // A small download first, so the baseline already holds the client's and the runtime's
    // one-time allocations and the growth is what the streaming itself costs.
    for (bytes, path) in [(1024 * 1024, "warm"), (size, "big")] {
        let router = axum::Router::new()
            .route("/v2/api/recordings/{*rest}", get(recording))
            .with_state(bytes);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, router).await });
        let client = JasClient::new(JasClientConfig::new(
            format!("http://{addr}/v2").parse().unwrap(),
            JasAuth::Token(SecretString::from("t")),
        ))
        .unwrap();
        let req = client
            .recording_request(&format!("101/{path}.wav"))
            .await
            .unwrap();
        let dest = dir.join(format!("101/{path}.wav"));
        let me = std::process::id().to_string();
        let baseline = rss_kib(&me);
        let peak = Arc::new(AtomicU64::new(baseline));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let (peak, done, me) = (peak.clone(), done.clone(), me.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_kib(&me), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let started = Instant::now();
        let rel = std::path::PathBuf::from(format!("101/{path}.wav"));
        let target = callhook::recordings::download::Target {
            root: dir,
            rel: &rel,
            tag: "bench",
        };
        let limits = callhook::recordings::download::Limits::default();
        let got = download_to(req, &target, &limits, callhook::outbound::Api::new("bench"))
            .await
            .expect("download");
        let secs = started.elapsed().as_secs_f64();
        done.store(true, Ordering::Relaxed);
        sampler.join().unwrap();
        assert_eq!(got.bytes, bytes);
        let _ = std::fs::remove_file(&dest);
        server.abort();
        if path == "big" {
            let peak = peak.load(Ordering::Relaxed);
            println!(
                "{}",
                json!({"bytes": bytes, "secs": secs, "baseline_kib": baseline, "peak_kib": peak,
                       "growth_kib": peak.saturating_sub(baseline)})
            );
        }
    }
}

fn table(n: usize) {
    use callhook::calls::{Details, ParticipantKey, Provider};
    let me = std::process::id().to_string();
    let table = CallTable::new(callhook::providers::DIRECTIONS);
    let before = rss_kib(&me);
    let now = Utc::now();
    for i in 0..n {
        let dn = format!("{}", 100 + i % 50);
        let key = ParticipantKey::new(Provider::Jas, &dn, i.to_string());
        let seq = i as i64;
        let _ = table.upsert(&key, seq, Some(now), now);
        let details = Details {
            call_id: (i / 2).to_string().into(),
            status: if i % 2 == 0 { "Ringing" } else { "Connected" }.into(),
            dn: Some(dn.into()),
            party_number: "5148888888".into(),
            party_dn: "10000".into(),
            party_dn_type: "Wexternalline".into(),
            leg_id: Some(1),
            ..Default::default()
        };
        let _ = table.details(&key, seq, details, Some(now), now);
    }
    let after = rss_kib(&me);
    println!(
        "{}",
        json!({"participants": n, "calls": table.len().1, "growth_kib": after - before,
               "bytes_per_participant": (after - before) as f64 * 1024.0 / n as f64})
    );
}

// ---------------------------------------------------------------------------------------------
// Child processes.

struct Proc {
    child: Child,
    /// Lines before the child said it was ready.
    first: Vec<String>,
}

impl Proc {
    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn term(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.pid()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes every dirty page of the machine back (`sync`) before a measured process starts. The
/// kernel writes dirty pages back about 30 s after they were written (`dirty_expire_centisecs`),
/// so what an earlier part wrote (the 90 MB of bodies, a run's databases, a deleted `work`) was
/// written back in the middle of whichever part ran then, and every sync of that run waited
/// behind it: in one `--only paced` run, started right after the bodies were written, the
/// first 6 s of webhooks waited up to 780 ms for their events (BENCHMARKS.md, eleventh round).
fn settle_disk() {
    if let Err(e) = Command::new("sync").status() {
        eprintln!("sync before the run: {e}");
    }
}

/// Starts `cmd` and reads its stdout until `ready` matches a line; the rest of its output is
/// drained (and dropped) by a thread so that logging never blocks it.
fn start(mut cmd: Command, ready: impl Fn(&str) -> bool) -> (Proc, Duration) {
    settle_disk();
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let mut out = BufReader::with_capacity(1 << 20, child.stdout.take().unwrap());
    let mut first = vec![];
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("child exited before it was ready; it said: {first:#?}");
        }
        first.push(line.trim_end().to_string());
        if ready(&line) {
            break;
        }
    }
    let took = started.elapsed();
    std::thread::spawn(move || {
        let mut sink = Vec::with_capacity(1 << 16);
        while out.read_until(b'\n', &mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    (Proc { child, first }, took)
}

fn start_server(exe: &Path, sub: &str) -> (Proc, String) {
    start_server_args(exe, &[sub])
}

fn start_server_args(exe: &Path, args: &[&str]) -> (Proc, String) {
    let mut cmd = Command::new(exe);
    cmd.args(args);
    let (p, _) = start(cmd, |l| l.starts_with("listening "));
    let addr = p.first.last().unwrap()["listening ".len()..].to_string();
    (p, addr)
}

struct Daemon {
    proc: Proc,
    public: String,
    admin: String,
}

/// `toml` is the configuration file (what the environment cannot say, such as
/// `[[outbound.endpoints]]`); `extra` are settings given as environment variables.
fn daemon_cmd(bin: &Path, dir: &Path, toml: &str, extra: &[(&str, &str)]) -> Command {
    let config = dir.join("bench.toml");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&config, toml).unwrap();
    let mut env: BTreeMap<&str, String> = BTreeMap::new();
    for (k, v) in [
        ("server.listen", "127.0.0.1:0"),
        ("admin.listen", "127.0.0.1:0"),
        ("jas.webhook_secret", SECRET),
        ("jas.register", "false"),
        ("jas.lookup_participants", "false"),
        ("log.format", "json"),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        env.insert(k, v.to_string());
    }
    env.entry("log.level").or_insert_with(|| {
        std::env::var("CALLHOOK_BENCH_LOG_LEVEL").unwrap_or_else(|_| "info".into())
    });
    env.insert("storage.path", path_str(&dir.join("callhook.db")));
    env.insert("recordings.dir", path_str(&dir.join("recordings")));
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(
            format!("CALLHOOK__{}", k.replace('.', "__").to_uppercase()),
            v,
        );
    }
    cmd
}

fn start_daemon(bin: &Path, dir: &Path, extra: &[(&str, &str)]) -> (Daemon, Duration) {
    start_daemon_toml(bin, dir, "", extra)
}

fn start_daemon_toml(
    bin: &Path,
    dir: &Path,
    toml: &str,
    extra: &[(&str, &str)],
) -> (Daemon, Duration) {
    let (proc, took) = start(daemon_cmd(bin, dir, toml, extra), |l| {
        l.contains("\"message\":\"ready\"")
    });
    let ready: Value = serde_json::from_str(proc.first.last().unwrap()).unwrap();
    let d = Daemon {
        public: format!("http://{}", ready["public_addr"].as_str().unwrap()),
        admin: format!("http://{}", ready["admin_addr"].as_str().unwrap()),
        proc,
    };
    (d, took)
}

fn path_str(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Sum of a Prometheus series over the label sets that contain every `labels` pair.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split([' ', '{']).next() == Some(name) && labels.iter().all(|lab| l.contains(lab))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The bucket bound under which a fraction `q` of a histogram's samples fall (Prometheus
/// `_bucket{le=...}` lines are cumulative), in milliseconds.
fn quantile_ms(text: &str, name: &str, q: f64) -> f64 {
    let bucket = format!("{name}_bucket");
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{bucket}{{")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    buckets
        .iter()
        .find(|(_, count)| *count >= q * total)
        .map_or(f64::NAN, |(le, _)| le * 1000.0)
}

async fn metrics(http: &reqwest::Client, d: &Daemon) -> String {
    http.get(format!("{}/metrics", d.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn lookups_done(text: &str) -> f64 {
    metric(text, "callhook_lookups_total", &[])
}

// ---------------------------------------------------------------------------------------------
// Load.

/// `count` signed call_status inserts, participant `i` on DN `100 + i % 50`, all distinct.
fn write_bodies(path: &Path, count: usize) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let base = Utc::now() - chrono::Duration::minutes(30);
    for i in 0..count {
        let ts = (base + chrono::Duration::milliseconds(i as i64))
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        let body = format!(
            r#"{{"eventName":"call_status","timestamp":"{ts}","data":{{"event":{{"entity":"/callcontrol/{}/participants/{i}","event_type":0}},"sequence":{i}}}}}"#,
            100 + i % 50
        );
        writeln!(out, "{} {body}", sign(SECRET.as_bytes(), body.as_bytes())).unwrap();
    }
}

#[derive(Debug, Default, Clone)]
struct Wrk {
    rps: f64,
    requests: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    errors: f64,
    /// CPU seconds the server used during the run, per 1000 requests.
    cpu_ms_per_1k: f64,
    /// The same for wrk itself, which shares the two cores with the server.
    wrk_cpu_ms_per_1k: f64,
}

/// User + system CPU seconds of process `pid` so far.
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime and stime are fields 14 and 15 of stat(5), in clock ticks (100 a second on Linux).
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// Runs wrk against the server `pid` and notes the CPU it used.
fn wrk_on(pid: &str, url: &str, bodies: &Path, first: usize, secs: u64, c: usize) -> Wrk {
    let cpu = cpu_secs(pid);
    let mut w = wrk(url, bodies, first, secs, c);
    w.cpu_ms_per_1k = (cpu_secs(pid) - cpu) * 1000.0 / (w.requests / 1000.0);
    w
}

/// Latency of appending 4 KiB to a file and `fdatasync`ing it, as a WAL commit does: the floor
/// under any durable acknowledgement on this disk.
fn fsync_probe(dir: &Path, n: usize) -> (f64, f64) {
    use std::io::Write as _;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 4096];
    let mut times: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f.write_all(&block).unwrap();
            f.sync_data().unwrap();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    let _ = std::fs::remove_file(&path);
    times.sort_by(f64::total_cmp);
    (times[n / 2], times[n * 99 / 100])
}

fn wrk(url: &str, bodies: &Path, first: usize, secs: u64, connections: usize) -> Wrk {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/wrk-signed.lua");
    // Through bash, whose `times` prints the CPU its child (wrk) used.
    let out = Command::new("bash")
        .args([
            "-c",
            r#""$@"; times"#,
            "bash",
            "wrk",
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            "--timeout",
            "5s",
            "-s",
        ])
        .arg(&script)
        .arg(url)
        .arg("--")
        .arg(bodies)
        .arg(first.to_string())
        .output()
        .expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no summary from wrk: {text}"));
    let v: Value = serde_json::from_str(line).unwrap();
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    // The last line of `times`: the children's user and system time, as `0m1.234s 0m0.567s`.
    let secs = |t: &str| -> f64 {
        let (m, s) = t
            .trim_end_matches('s')
            .split_once('m')
            .unwrap_or(("0", "0"));
        m.parse::<f64>().unwrap_or(0.0) * 60.0 + s.parse::<f64>().unwrap_or(0.0)
    };
    let wrk_cpu: f64 = text
        .lines()
        .last()
        .map_or(0.0, |l| l.split_whitespace().map(secs).sum());
    Wrk {
        rps: f("requests") / (f("duration_us") / 1e6),
        requests: f("requests"),
        p50_ms: f("p50_us") / 1000.0,
        p99_ms: f("p99_us") / 1000.0,
        max_ms: f("max_us") / 1000.0,
        errors: f("connect_errors")
            + f("read_errors")
            + f("write_errors")
            + f("non2xx")
            + f("timeouts"),
        cpu_ms_per_1k: f64::NAN,
        wrk_cpu_ms_per_1k: wrk_cpu * 1000.0 / (f("requests") / 1000.0),
    }
}

/// Posts the first `count` bodies with `concurrency` clients; returns how many were accepted.
async fn feed(url: &str, bodies: &Path, count: usize, concurrency: usize) -> usize {
    let lines: Vec<String> = std::fs::read_to_string(bodies)
        .unwrap()
        .lines()
        .take(count)
        .map(str::to_string)
        .collect();
    let lines = Arc::new(lines);
    let next = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let http = reqwest::Client::new();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (lines, next, accepted, http, url) = (
                lines.clone(),
                next.clone(),
                accepted.clone(),
                http.clone(),
                url.to_string(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(line) = lines.get(i) else { return };
                    let (sig, body) = line.split_once(' ').unwrap();
                    let resp = http
                        .post(&url)
                        .header("x-sig", sig)
                        .header("content-type", "application/json")
                        .body(body.to_string())
                        .send()
                        .await
                        .unwrap();
                    let reply: Value = resp.json().await.unwrap();
                    if reply["status"] == "accepted" {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    accepted.load(Ordering::Relaxed) as usize
}

/// Polls until `done(metrics) >= target` (or `limit` passes); returns when it got there.
async fn wait_metric(
    http: &reqwest::Client,
    d: &Daemon,
    target: f64,
    limit: Duration,
    done: impl Fn(&str) -> f64,
) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done(&metrics(http, d).await) >= target {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The journal for the restart measurement.

/// A database holding `events` journaled and applied events: inserts and removes of
/// `events / 2 - 500` participants (ended calls), then 1000 inserts that stay active.
async fn fill_journal(db: &Path, events: usize) {
    let _ = std::fs::remove_file(db);
    let journal = Journal::open(db).await.unwrap();
    let active = 1000.min(events);
    let ended = (events - active) / 2;
    let base = Utc::now() - chrono::Duration::hours(1);
    let body = |i: usize, kind: i64, seq: usize| {
        let ts = (base + chrono::Duration::milliseconds(seq as i64))
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        format!(
            r#"{{"eventName":"call_status","timestamp":"{ts}","data":{{"event":{{"entity":"/callcontrol/{}/participants/{i}","event_type":{kind}}},"sequence":{seq}}}}}"#,
            100 + i % 50
        )
    };
    let mut all: Vec<String> = Vec::with_capacity(events);
    for i in 0..ended {
        all.push(body(i, 0, 2 * i));
        all.push(body(i, 1, 2 * i + 1));
    }
    for i in ended..ended + active {
        all.push(body(i, 0, 2 * i));
    }
    let started = Instant::now();
    for chunk in all.chunks(8192) {
        let appends = chunk.iter().map(|b| {
            let decoded =
                callhook::providers::jas::events::decode(b.as_bytes(), chrono::Utc::now()).unwrap();
            journal.append(journal_entry(
                &decoded.event,
                decoded.dedupe_key,
                Bytes::from(b.clone()),
            ))
        });
        for r in futures_util::future::join_all(appends).await {
            r.unwrap();
        }
    }
    let journaled = started.elapsed();
    // The defaults: no credentials, so no lookups (as in the daemon with lookups off).
    let settings = callhook::config::Settings::load(&callhook::config::Sources {
        file: None,
        env: Some(Default::default()),
    })
    .expect("the default settings");
    let providers = callhook::providers::Providers::from_settings(&Arc::new(settings)).unwrap();
    let mut processor = Processor::new(
        journal.clone(),
        Arc::new(CallTable::new(callhook::providers::DIRECTIONS)),
        Arc::new(providers),
        0,
        tokio_util::task::TaskTracker::new(),
    );
    processor.catch_up().await.unwrap();
    journal.close().await.unwrap();
    eprintln!(
        "  journal of {} events: appended in {:.1}s, applied in {:.1}s",
        all.len(),
        journaled.as_secs_f64(),
        (started.elapsed() - journaled).as_secs_f64()
    );
}

/// Moves the database's ended calls a week into the past, as on a daemon that has been up a
/// while (restart loads active calls and those ended in the last 6 hours).
fn age(db: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute(
        "ATTACH DATABASE ?1 AS state",
        [callhook::journal::state_path(db).to_str().unwrap()],
    )
    .unwrap();
    let week = 7 * 24 * 3600 * 1000i64;
    conn.execute_batch(&format!(
        "UPDATE calls SET activity_ms = activity_ms - {week}, ended_ms = ended_ms - {week}
           WHERE state = 'ended';
         UPDATE participants SET activity_ms = activity_ms - {week}
           WHERE call_id IN (SELECT call_id FROM calls WHERE state = 'ended');
         UPDATE events SET received_ms = received_ms - {week};"
    ))
    .unwrap();
}

/// The journal and its state file (`callhook::journal::state_path`), with their WAL files.
fn copy_db(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let files = [
        (from.to_path_buf(), to.to_path_buf()),
        (
            callhook::journal::state_path(from),
            callhook::journal::state_path(to),
        ),
    ];
    for (from, to) in files {
        for ext in ["", "-wal", "-shm"] {
            let (f, t) = (
                PathBuf::from(format!("{}{ext}", from.display())),
                PathBuf::from(format!("{}{ext}", to.display())),
            );
            let _ = std::fs::remove_file(&t);
            if f.exists() {
                std::fs::copy(&f, &t).unwrap();
            }
        }
    }
}

/// Time from spawn to the `ready` line, `runs` times (stopped with SIGTERM in between).
fn restarts(bin: &Path, dir: &Path, runs: usize) -> (Vec<f64>, String) {
    let mut times = vec![];
    let mut restored = String::new();
    for _ in 0..runs {
        let (d, took) = start_daemon(bin, dir, &[]);
        times.push(took.as_secs_f64() * 1000.0);
        if let Some(l) = d.proc.first.iter().find(|l| l.contains("state restored")) {
            let v: Value = serde_json::from_str(l).unwrap();
            restored = format!("{} calls, {} participants", v["calls"], v["participants"]);
        }
        d.proc.term();
    }
    times.sort_by(f64::total_cmp);
    (times, restored)
}

// ---------------------------------------------------------------------------------------------

struct Row {
    what: String,
    measured: String,
    target: String,
    met: Option<bool>,
}

/// Starts a floor server (`args`: its subcommand and options), loads it like the ceiling, and
/// says what it reached, with its ratio to the ceiling when that ran.
fn floor(
    exe: &Path,
    args: &[&str],
    bodies: &Path,
    (secs, conns): (u64, usize),
    ceiling_rps: Option<f64>,
) -> String {
    let (server, addr) = start_server_args(exe, args);
    let url = format!("http://{addr}/webhooks/jas");
    let w = wrk_on(&server.pid(), &url, bodies, 1, secs, conns);
    drop(server);
    let ratio = ceiling_rps.map_or(String::new(), |c| {
        format!("; ratio to the ceiling {:.2}", w.rps / c)
    });
    format!(
        "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, errors {}; {:.0} ms CPU per 1000 requests (wrk {:.0} ms){ratio}",
        w.rps, w.p50_ms, w.p99_ms, w.errors, w.cpu_ms_per_1k, w.wrk_cpu_ms_per_1k
    )
}

/// What every part of `all` shares, and the rows measured so far.
struct Run {
    args: AllArgs,
    /// This driver, started again for the servers it runs as children.
    exe: PathBuf,
    /// The callhook binary under test.
    bin: PathBuf,
    work: PathBuf,
    bodies: PathBuf,
    http: reqwest::Client,
    rows: Vec<Row>,
    /// Issue #16's side-by-side table, printed after the rows.
    ackpath_table: Option<String>,
}

async fn all(args: AllArgs) {
    let mut run = Run::prepare(args);
    if run.wants("ackpath") {
        run.measure_ackpath().await;
    }
    if run.wants("plain") {
        run.measure_disk();
    }
    let ceiling_rps = run.wants("ceiling").then(|| run.measure_ceiling());
    if run.wants("floor") {
        run.measure_durable_floor(ceiling_rps);
    }
    if run.wants("file-floor") {
        run.measure_file_floor(ceiling_rps);
    }
    if run.wants("plain") {
        run.measure_plain(ceiling_rps).await;
    }
    if run.wants("lookups") {
        run.measure_lookups().await;
    }
    if run.wants("memory") {
        run.measure_memory().await;
    }
    if run.wants("download") {
        run.measure_download_alone();
        run.measure_download_by_worker().await;
    }
    if run.wants("restart") {
        run.measure_restart().await;
    }
    if run.wants("outbound") {
        run.measure_outbound().await;
    }
    if run.wants("paced") {
        run.measure_paced().await;
    }
    if run.wants("deliveries") {
        run.measure_deliveries().await;
    }
    if run.wants("export") {
        run.measure_export().await;
    }
    run.print_table();
}

impl Run {
    fn prepare(args: AllArgs) -> Self {
        let exe = std::env::current_exe().unwrap();
        let bin = std::fs::canonicalize(&args.callhook).expect("the callhook release binary");
        if !args.reuse {
            let _ = std::fs::remove_dir_all(&args.work);
        }
        std::fs::create_dir_all(&args.work).unwrap();
        let work = std::fs::canonicalize(&args.work).unwrap();
        let bodies = work.join("bodies.txt");
        eprintln!("writing {} signed bodies", args.bodies);
        write_bodies(&bodies, args.bodies);
        Self {
            args,
            exe,
            bin,
            work,
            bodies,
            http: reqwest::Client::new(),
            rows: vec![],
            ackpath_table: None,
        }
    }

    fn wants(&self, part: &str) -> bool {
        self.args.only.is_empty() || self.args.only.iter().any(|o| o == part)
    }

    /// Seconds of load and connections per throughput measurement.
    fn load(&self) -> (u64, usize) {
        (self.args.duration, self.args.connections)
    }

    fn row(&mut self, what: &str, measured: String, target: &str, met: Option<bool>) {
        eprintln!("  {what}: {measured} (target {target})");
        self.rows.push(Row {
            what: what.into(),
            measured,
            target: target.into(),
            met,
        });
    }

    fn print_table(self) {
        println!("\n| measurement | result | target | met |\n| --- | --- | --- | --- |");
        for r in self.rows {
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            println!("| {} | {} | {} | {met} |", r.what, r.measured, r.target);
        }
        if let Some(table) = self.ackpath_table {
            println!("\n{table}");
        }
    }

    /// A daemon that looks participants up in the mock API, which it returns too (keep it
    /// alive while the daemon runs).
    fn daemon_with_lookups(&self, dir: &str) -> (Daemon, Proc) {
        let (api, addr) = start_server(&self.exe, "mock-api");
        let base = format!("http://{addr}/v2");
        let (d, _) = start_daemon(
            &self.bin,
            &self.work.join(dir),
            &[
                ("jas.lookup_participants", "true"),
                ("jas.token", "bench"),
                ("jas.api_base", &base),
            ],
        );
        (d, api)
    }

    fn measure_disk(&mut self) {
        let (p50, p99) = fsync_probe(&self.work, 500);
        self.row(
            "0. this disk: 4 KiB append + fdatasync (the floor under a durable ack)",
            format!("p50 {p50:.2} ms, p99 {p99:.2} ms (500 syncs)"),
            "—",
            None,
        );
    }

    /// Returns the ceiling's requests per second, which later rows are compared with.
    fn measure_ceiling(&mut self) -> f64 {
        let (secs, conns) = self.load();
        eprintln!("[1] ceiling: verify X-SIG + parse JSON, {conns} connections, {secs} s");
        let (server, addr) = start_server(&self.exe, "ceiling");
        let url = format!("http://{addr}/webhooks/jas");
        let w = wrk_on(&server.pid(), &url, &self.bodies, 1, secs, conns);
        drop(server);
        self.row(
            "1. ceiling (verify + parse only)",
            format!(
                "{:.0} req/s ({} in {secs} s), p50 {:.2} ms, p99 {:.2} ms, errors {}; {:.0} ms CPU per 1000 requests (wrk {:.0} ms)",
                w.rps,
                w.requests,
                w.p50_ms,
                w.p99_ms,
                w.errors,
                w.cpu_ms_per_1k,
                w.wrk_cpu_ms_per_1k
            ),
            "—",
            None,
        );
        w.rps
    }

    fn measure_durable_floor(&mut self, ceiling_rps: Option<f64>) {
        let (secs, conns) = self.load();
        eprintln!("[1b] durable floor: ceiling + Journal::append, {conns} connections, {secs} s");
        let db = self.work.join("floor/callhook.db");
        let measured = floor(
            &self.exe,
            &["durable-floor", "--db", db.to_str().unwrap()],
            &self.bodies,
            (secs, conns),
            ceiling_rps,
        );
        self.row(
            "1b. durable floor: (1) + `Journal::append` (group commit, WAL fdatasync) before the reply",
            measured,
            "—",
            None,
        );
    }

    fn measure_file_floor(&mut self, ceiling_rps: Option<f64>) {
        let (secs, conns) = self.load();
        eprintln!("[1c] file floor: ceiling + append-only file, {conns} connections, {secs} s");
        let file = self.work.join("file-floor/journal.bin");
        let (prealloc, lanes) = (
            self.args.file_floor_prealloc_mib.to_string(),
            self.args.file_floor_lanes.to_string(),
        );
        let server_args: Vec<&str> = [
            "file-floor",
            "--file",
            file.to_str().unwrap(),
            "--prealloc-mib",
            &prealloc,
            "--lanes",
            &lanes,
        ]
        .into_iter()
        .chain(self.args.file_floor_dsync.then_some("--dsync"))
        .collect();
        let measured = floor(
            &self.exe,
            &server_args,
            &self.bodies,
            (secs, conns),
            ceiling_rps,
        );
        let what = format!(
            "1c. file floor: (1) + one `write` per batch to a preallocated file ({}), {} lane(s), before the reply",
            if self.args.file_floor_dsync {
                "O_DSYNC"
            } else {
                "then `fdatasync`"
            },
            self.args.file_floor_lanes
        );
        self.row(&what, measured, "—", None);
    }

    async fn measure_plain(&mut self, ceiling_rps: Option<f64>) {
        let (secs, conns) = self.load();
        eprintln!("[2] callhook, journal synced per batch, lookups off");
        let (d, _) = start_daemon(&self.bin, &self.work.join("plain"), &[]);
        let url = format!("{}/webhooks/jas", d.public);
        let w = wrk_on(&d.proc.pid(), &url, &self.bodies, 1, secs, conns);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let m = metrics(&self.http, &d).await;
        let accepted = metric(&m, "callhook_events_total", &["outcome=\"accepted\""]);
        let duplicate = metric(&m, "callhook_events_total", &["outcome=\"duplicate\""]);
        let batches = metric(&m, "callhook_journal_batch_size_count", &[]);
        let batch_mean = metric(&m, "callhook_journal_batch_size_sum", &[]) / batches.max(1.0);
        let rss = rss_kib(&d.proc.pid());
        let stages = stage_bounds(&m);
        // The same daemon with 4× the connections, on bodies it has not seen yet.
        let first_unseen = w.requests as usize + conns + 1;
        let wide = wrk_on(
            &d.proc.pid(),
            &url,
            &self.bodies,
            first_unseen,
            secs,
            conns * 4,
        );
        let m2 = metrics(&self.http, &d).await;
        let dup2 = metric(&m2, "callhook_events_total", &["outcome=\"duplicate\""]);
        let batches2 = metric(&m2, "callhook_journal_batch_size_count", &[]) - batches;
        let batch_mean2 = (metric(&m2, "callhook_journal_batch_size_sum", &[])
            - batch_mean * batches)
            / batches2.max(1.0);
        d.proc.term();
        self.row(
            &format!("2. callhook JAS endpoint, {conns} connections"),
            format!(
                "{:.0} req/s ({accepted} accepted, {duplicate} duplicate, {} errors); {:.0} ms CPU per 1000 requests (wrk {:.0} ms); mean journal batch {batch_mean:.1} events, {batches} commits ({stages}); RSS after {} MiB",
                w.rps,
                w.errors,
                w.cpu_ms_per_1k,
                w.wrk_cpu_ms_per_1k,
                rss / 1024
            ),
            "—",
            None,
        );
        self.row(
            &format!("2b. the same, {} connections", conns * 4),
            format!(
                "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms ({} duplicate in all, {} errors); mean journal batch {batch_mean2:.1} events",
                wide.rps, wide.p50_ms, wide.p99_ms, dup2, wide.errors
            ),
            "—",
            None,
        );
        if let Some(c) = ceiling_rps {
            let ratio = w.rps / c;
            self.row(
                "2. ratio to the ceiling",
                format!("{ratio:.2}"),
                "≥ 0.6",
                Some(ratio >= 0.6),
            );
        }
        self.row(
            "2. ack latency p50 / p99 (max)",
            format!(
                "{:.2} ms / {:.2} ms ({:.1} ms)",
                w.p50_ms, w.p99_ms, w.max_ms
            ),
            "p99 ≤ 2 ms",
            Some(w.p99_ms <= 2.0),
        );
    }

    async fn measure_lookups(&mut self) {
        let (secs, conns) = self.load();
        eprintln!("[3] callhook with participant lookups against the mock API");
        let (d, api) = self.daemon_with_lookups("lookups");
        let started = Instant::now();
        let url = format!("{}/webhooks/jas", d.public);
        let w = wrk_on(&d.proc.pid(), &url, &self.bodies, 1, secs, conns);
        let load_secs = started.elapsed().as_secs_f64();
        // Requests still in flight when wrk stopped are answered a moment later.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let m = metrics(&self.http, &d).await;
        let accepted = metric(&m, "callhook_events_total", &["outcome=\"accepted\""]);
        let looked_up_during = lookups_done(&m);
        let limit = Duration::from_secs(300);
        let applied_at = wait_metric(&self.http, &d, accepted, limit, lookups_done)
            .await
            .expect("every lookup answered within 5 minutes");
        let total = (applied_at - started).as_secs_f64();
        let m = metrics(&self.http, &d).await;
        let ok = metric(&m, "callhook_lookups_total", &["outcome=\"ok\""]);
        d.proc.term();
        drop(api);
        self.row(
            "3. with lookups: acks",
            format!(
                "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms ({accepted} accepted)",
                w.rps, w.p50_ms, w.p99_ms
            ),
            "—",
            None,
        );
        self.row(
            "3. with lookups: events fully applied",
            format!(
                "{:.0} events/s ({accepted} events, {ok} lookups ok, last applied {total:.1} s after the load began; {:.0}/s during the {load_secs:.0} s of load)",
                accepted / total,
                looked_up_during / load_secs
            ),
            "—",
            None,
        );
        // Issue #16: applying keeps up. The rate is over the whole run, from the load's start
        // to the last event applied, so it can only understate the rate.
        let ratio = accepted / total / w.rps;
        let behind = total - load_secs;
        self.row(
            "3. applied / acked, and how far applying was behind when the load stopped",
            // At least the 0.3 s the driver waits for the last answers before it looks.
            format!("{ratio:.2}; ≤ {behind:.1} s (the driver looks 0.3 s after the load)"),
            "≥ 0.9; ≤ 1 s",
            Some(ratio >= 0.9 && behind <= 1.0),
        );
    }

    async fn measure_memory(&mut self) {
        let n = self.args.participants;
        let conns = self.args.connections;
        eprintln!("[4a] RSS with {n} active participants (lookups on, mock API)");
        let (d, api) = self.daemon_with_lookups("memory");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_kib(&d.proc.pid());
        let accepted = feed(
            &format!("{}/webhooks/jas", d.public),
            &self.bodies,
            n,
            conns,
        )
        .await;
        assert_eq!(accepted, n);
        wait_metric(
            &self.http,
            &d,
            n as f64,
            Duration::from_secs(300),
            lookups_done,
        )
        .await
        .expect("lookups finished");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_kib(&d.proc.pid());
        let m = metrics(&self.http, &d).await;
        let calls = metric(&m, "callhook_active_calls", &["provider=\"jas\""]);
        d.proc.term();
        drop(api);
        let per = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
        let t = child_json(&self.exe, &["table", "--participants", &n.to_string()]);
        self.row(
            &format!("4. RSS per active participant ({n} participants, {calls} calls)"),
            format!(
                "{per:.0} B (RSS {} MiB idle → {} MiB)",
                before / 1024,
                after / 1024
            ),
            "≤ 1 KiB",
            Some(per <= 1024.0),
        );
        self.row(
            "4. of which the call table alone (same participants, no daemon)",
            format!(
                "{:.0} B per participant",
                t["bytes_per_participant"].as_f64().unwrap_or(f64::NAN)
            ),
            "—",
            None,
        );
    }

    fn measure_download_alone(&mut self) {
        let mib = self.args.download_mib;
        eprintln!("[4b] RSS while downloading a {mib} MiB recording from loopback");
        let dir = self.work.join("download");
        std::fs::create_dir_all(&dir).unwrap();
        let v = child_json(
            &self.exe,
            &[
                "download",
                "--size-mib",
                &mib.to_string(),
                "--dir",
                &path_str(&dir),
            ],
        );
        let growth = v["growth_kib"].as_f64().unwrap_or(f64::NAN) / 1024.0;
        self.row(
            &format!("4. RSS growth during a {mib} MiB download (`download_to` alone)"),
            format!(
                "{growth:.1} MiB ({} MiB before, peak {} MiB; {:.0} MiB/s)",
                v["baseline_kib"].as_u64().unwrap_or(0) / 1024,
                v["peak_kib"].as_u64().unwrap_or(0) / 1024,
                mib as f64 / v["secs"].as_f64().unwrap_or(f64::NAN)
            ),
            "≤ 32 MiB",
            Some(growth <= 32.0),
        );
    }

    async fn measure_download_by_worker(&mut self) {
        let mib = self.args.download_mib;
        eprintln!("[4c] daemon RSS while its recording worker downloads {mib} MiB from loopback");
        let (server, addr) = start_server_args(
            &self.exe,
            &["recording-server", "--size-mib", &mib.to_string()],
        );
        let base = format!("http://{addr}/v2");
        let dir = self.work.join("worker");
        let (d, _) = start_daemon(
            &self.bin,
            &dir,
            &[("jas.token", "bench"), ("jas.api_base", &base)],
        );
        let url = format!("{}/webhooks/jas", d.public);
        let http = &self.http;
        let downloaded =
            |m: &str| metric(m, "callhook_recordings_total", &["outcome=\"downloaded\""]);
        // A small one first, so the baseline holds the worker's one-time allocations.
        post_recording(http, &url, 1, "warm").await;
        wait_metric(http, &d, 1.0, Duration::from_secs(60), downloaded)
            .await
            .expect("warm-up recording downloaded");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pid = d.proc.pid();
        let before = rss_kib(&pid);
        let started = Instant::now();
        post_recording(http, &url, 2, "big").await;
        let mut peak = before;
        loop {
            peak = peak.max(rss_kib(&pid));
            if downloaded(&metrics(http, &d).await) >= 2.0 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "download did not finish"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let file = dir.join("recordings/jas/101/big.wav");
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let _ = std::fs::remove_file(&file);
        d.proc.term();
        drop(server);
        let growth = peak.saturating_sub(before) as f64 / 1024.0;
        self.row(
            &format!("4. daemon RSS growth while its worker downloads a {mib} MiB recording"),
            format!(
                "{growth:.1} MiB ({} MiB before, peak {} MiB; {} bytes on disk; {:.0} MiB/s event to file)",
                before / 1024,
                peak / 1024,
                size,
                mib as f64 / secs
            ),
            "≤ 32 MiB",
            Some(growth <= 32.0 && size == mib * 1024 * 1024),
        );
    }

    async fn measure_restart(&mut self) {
        let n = self.args.journal_events;
        eprintln!("[5] restart with {n} journaled events");
        let small_n = (n / 100).max(1000);
        let big = self.work.join("restart-big/callhook.db");
        let recent = self.work.join("restart-recent/callhook.db");
        let small = self.work.join("restart-small/callhook.db");
        if !(self.args.reuse && big.exists() && recent.exists() && small.exists()) {
            std::fs::create_dir_all(big.parent().unwrap()).unwrap();
            fill_journal(&big, n).await;
            copy_db(&big, &recent);
            age(&big);
            std::fs::create_dir_all(small.parent().unwrap()).unwrap();
            fill_journal(&small, small_n).await;
            age(&small);
        }
        for (label, db, events) in [
            ("ended calls a week old", &small, small_n),
            ("ended calls a week old", &big, n),
            ("all of it in the last 6 h", &recent, n),
        ] {
            let (times, restored) = restarts(&self.bin, db.parent().unwrap(), 5);
            let median = times[times.len() / 2];
            self.row(
                &format!("5. time to ready, {events} events, {label}"),
                format!(
                    "median {median:.0} ms, max {:.0} ms of 5 (restored {restored})",
                    times.last().unwrap()
                ),
                "≤ 2 s",
                Some(median <= 2000.0),
            );
        }
    }
}

impl Run {
    /// Issue #15: `GET /api/export` of every ended call in a database of `export_calls` of
    /// them (made by `fill_journal`: the journal's own append and the processor, as a daemon
    /// would have written them), with the daemon's RSS sampled every 5 ms while it streams.
    async fn measure_export(&mut self) {
        let n = self.args.export_calls;
        eprintln!("[15] RSS while /api/export streams {n} ended calls");
        let dir = self.work.join("export");
        let db = dir.join("callhook.db");
        if !(self.args.reuse && db.exists()) {
            std::fs::create_dir_all(&dir).unwrap();
            // n ended calls (an insert and a remove each) and the 1000 active ones it adds.
            fill_journal(&db, 2 * n + 1000).await;
            // Its calls are still in their end grace (they were all journaled within seconds):
            // a daemon ends them once it has started; it is then stopped, so the one measured
            // starts from a database of n ended calls and 1000 active ones.
            let (d, _) = start_daemon(&self.bin, &dir, &[]);
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                let m = metrics(&self.http, &d).await;
                if metric(&m, "callhook_active_calls", &["provider=\"jas\""]) <= 1000.0 {
                    break;
                }
                assert!(Instant::now() < deadline, "the calls did not end");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            d.proc.term();
        }
        let ended: u64 = rusqlite::Connection::open(callhook::journal::state_path(&db))
            .unwrap()
            .query_row(
                "SELECT count(*) FROM calls WHERE state = 'ended'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let (d, _) = start_daemon(&self.bin, &dir, &[]);
        let pid = d.proc.pid();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_kib(&pid);
        let since =
            (Utc::now() - chrono::Duration::days(30)).to_rfc3339_opts(SecondsFormat::Secs, true);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(before));
        let sampler = {
            let (stop, peak, pid) = (stop.clone(), peak.clone(), pid.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_kib(&pid), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let started = Instant::now();
        let resp = self
            .http
            .get(
                url::Url::parse_with_params(
                    &format!("{}/api/export", d.admin),
                    [("since", since.as_str()), ("format", "csv")],
                )
                .unwrap(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let (mut bytes, mut lines) = (0u64, 0u64);
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.unwrap();
            bytes += chunk.len() as u64;
            lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        }
        let secs = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        sampler.join().unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = rss_kib(&pid);
        d.proc.term();
        let peak = peak.load(Ordering::Relaxed);
        let rows = lines.saturating_sub(1); // the header
        let growth = peak.saturating_sub(before) as f64 / 1024.0;
        let mib = bytes as f64 / (1024.0 * 1024.0);
        self.row(
            &format!("15. daemon RSS growth while `/api/export` streams {ended} ended calls (CSV)"),
            format!(
                "{growth:.1} MiB ({} MiB before, peak {} MiB, {} MiB after; {rows} rows of {ended}, {mib:.1} MiB in {secs:.1} s)",
                before / 1024,
                peak / 1024,
                after / 1024
            ),
            "flat: ≤ 32 MiB, whatever the export's size",
            Some(growth <= 32.0 && rows == ended),
        );
    }
}

/// The journal's commit and WAL-sync p50/p99, as the bucket bounds they fall under.
fn stage_bounds(m: &str) -> String {
    format!(
        "p50/p99 bucket bounds: commit {}/{} ms, WAL sync {}/{} ms",
        quantile_ms(m, "callhook_journal_commit_seconds", 0.5),
        quantile_ms(m, "callhook_journal_commit_seconds", 0.99),
        quantile_ms(m, "callhook_journal_sync_seconds", 0.5),
        quantile_ms(m, "callhook_journal_sync_seconds", 0.99),
    )
}

/// Runs this driver's subcommand `args` to the end; its last line of output, as JSON.
fn child_json(exe: &Path, args: &[&str]) -> Value {
    let out = Command::new(exe).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("{}")).unwrap()
}

/// Posts a signed `new_recording` of `101/{name}.wav` on call `n`.
async fn post_recording(http: &reqwest::Client, url: &str, n: i64, name: &str) {
    let body = format!(
        r#"{{"eventName":"new_recording","data":{{"call_id":"{n}","recording_url":"101/{name}.wav","id_recording":{n}}}}}"#
    );
    let sig = sign(SECRET.as_bytes(), body.as_bytes());
    let r = http
        .post(url)
        .header("x-sig", sig)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
