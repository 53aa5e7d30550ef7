//! The daemon's lifecycle: `Application::build` opens the journal, restores state and binds both
//! listeners; `run_until_stopped` registers the webhooks, reports ready, serves until the token
//! is cancelled, then drains, unregisters and closes the journal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::calls::{CallTable, Provider};
use crate::config::Settings;
use crate::events::deliver::Deliverer;
use crate::events::stream::Hub;
use crate::http::{self, AppState, Readiness};
use crate::journal::{Journal, JournalError};
use crate::processor::{KEEP_ENDED, Processor};
use crate::providers::{Ingest, Providers};
use crate::recordings::Recorder;
use crate::recordings::fetch::Fetcher;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the journal at {path}: {source}")]
    Journal { path: String, source: JournalError },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// What a provider's background work cannot go on without (refused credentials).
    #[error("{0}")]
    Provider(String),
    #[error("{0}")]
    Other(String),
}

pub struct Application {
    state: AppState,
    public: TcpListener,
    admin: TcpListener,
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    processor: Processor,
    providers: Arc<Providers>,
    /// The download workers; `None` when `recordings.enabled` is false.
    recorder: Option<Recorder>,
    /// The call-event delivery workers; `None` without an enabled outbound endpoint.
    deliverer: Option<Arc<Deliverer>>,
    /// Both listeners' addresses, refused as redirect targets while the daemon lives.
    own_listeners: [crate::outbound::redirect::OwnListener; 2],
    tasks: TaskTracker,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Application, StartError> {
        let settings = Arc::new(settings);
        let metrics = crate::metrics::handle();
        for warning in settings.disabled_features() {
            tracing::warn!("{warning}");
        }
        let readiness = Readiness::not_ready("starting: opening the journal");

        let journal_error = |source| StartError::Journal {
            path: settings.storage.path.display().to_string(),
            source,
        };
        let journal = Journal::open(&settings.storage.path)
            .await
            .map_err(journal_error)?;
        let (table, cursor) = restore(&journal, settings.calls.end_grace)
            .await
            .map_err(journal_error)?;

        let providers = Arc::new(Providers::from_settings(&settings).map_err(StartError::Other)?);
        let tasks = TaskTracker::new();
        let mut processor = Processor::new(
            journal.clone(),
            table.clone(),
            providers.clone(),
            cursor,
            tasks.clone(),
        );
        let recorder = settings
            .recordings
            .enabled
            .then(|| recorder(&settings, &journal, &providers, &mut processor));
        let nudge = crate::events::deliver::Nudge::default();
        let deliverer = Deliverer::new(journal.clone(), &settings.outbound, nudge.clone())
            .map_err(StartError::Other)?
            .map(Arc::new);
        let stream = Arc::new(Hub::default());
        processor.produce_events(
            &settings.outbound.endpoints,
            deliverer.is_some().then_some(nudge),
            stream.clone(),
        );
        processor.catch_up().await.map_err(journal_error)?;
        for provider in Provider::ALL {
            metrics::gauge!("callhook_active_calls", "provider" => provider.as_str())
                .set(table.active_count(provider) as f64);
        }

        let (public, public_addr) = bind(settings.server.listen).await?;
        let (admin, admin_addr) = bind(settings.admin.listen).await?;
        // No upstream redirect is followed to our own listeners (recordings/redirect.rs).
        let own_listeners = [
            crate::outbound::redirect::register_own_listener(public_addr),
            crate::outbound::redirect::register_own_listener(admin_addr),
        ];

        let ingest = Ingest {
            settings: settings.clone(),
            journal: journal.clone(),
        };
        let reconcilers = providers
            .iter()
            .filter_map(|p| p.reconciler(&ingest, table.clone()))
            .collect();
        let state = AppState {
            reconcilers: Arc::new(reconcilers),
            downloads: recorder.as_ref().map(Recorder::nudge),
            deliverer: deliverer.clone(),
            stream,
            settings,
            journal,
            table,
            readiness,
            metrics,
        };
        Ok(Application {
            state,
            public,
            admin,
            public_addr,
            admin_addr,
            processor,
            providers,
            recorder,
            deliverer,
            own_listeners,
            tasks,
        })
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` is cancelled. Errors only for what an operator must fix
    /// (credentials refused); upstream trouble is logged and retried, never fatal.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> Result<(), StartError> {
        let Application {
            state,
            public,
            admin,
            processor,
            providers,
            recorder,
            deliverer,
            own_listeners: _own_listeners,
            tasks,
            public_addr,
            admin_addr,
        } = self;

        // Listeners stop accepting on `stop_serving`; the processor and workers stop later,
        // after in-flight requests have had their chance to finish.
        let stop_serving = CancellationToken::new();
        let stop_work = CancellationToken::new();
        let (public_server, admin_server, public_alive) =
            serve_both(&state, &providers, public, admin, &stop_serving);
        let processor_task = tokio::spawn(on_own_thread(
            "callhook-apply",
            processor.run(stop_work.clone()),
        ));
        // Stopped before the processor, so every progress report a worker sent gets written.
        let stop_downloads = CancellationToken::new();
        let recorder_task = recorder.map(|r| tokio::spawn(r.run(stop_downloads.clone())));
        if let Some(deliverer) = deliverer {
            tasks.spawn(deliverer.run(stop_work.clone()));
        }
        tasks.spawn(upkeep(state.clone(), stop_work.clone()));

        // Ready once it can receive and journal: registration runs beside serving (JAS may be
        // down for hours while webhooks are journaled fine) and shows in `/readyz` and STATUS=.
        let background: Vec<_> = providers
            .iter()
            .filter_map(|p| p.background(state.readiness.clone()))
            .collect();
        if !shutdown.is_cancelled() {
            state.readiness.set(None);
            // After ready: a snapshot never holds readiness back, and each run is journaled
            // and applied after the tail `catch_up` applied.
            for reconciler in state.reconcilers.iter() {
                tasks.spawn(reconciler.clone().run(stop_work.clone()));
            }
            crate::systemd::ready();
            tasks.spawn(crate::systemd::watchdog(
                state.journal.clone(),
                public_alive,
                stop_work.clone(),
            ));
            tracing::info!(
                public_addr = %public_addr,
                admin_addr = %admin_addr,
                registration = %state.readiness.registration(),
                "ready"
            );
        }
        let result = work_until(&background, &shutdown).await;

        tracing::info!("shutting down");
        crate::systemd::stopping();
        state.readiness.set(Some("shutting down"));
        stop_serving.cancel();
        state.stream.close();
        drain(public_server, admin_server).await;
        for b in &background {
            b.stop().await;
        }
        stop_downloads.cancel();
        if let Some(task) = recorder_task {
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!("recording downloads did not stop within 5 s");
            }
        }
        stop_work.cancel();
        let _ = processor_task.await;
        tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not finish within 5 s");
        }
        if let Err(e) = state.journal.close().await {
            tracing::error!(error = %e, "closing the journal failed");
        }
        tracing::info!("stopped");
        result
    }
}

type Served = tokio::task::JoinHandle<()>;

/// Starts both listeners' accept loops. Each has its own loop and connection cap, so a flood of
/// the public one never locks the admin one out (http/listener.rs); the public one's liveness
/// is what the watchdog checks.
fn serve_both(
    state: &AppState,
    providers: &Providers,
    public: TcpListener,
    admin: TcpListener,
    stop_serving: &CancellationToken,
) -> (Served, Served, crate::systemd::Liveness) {
    let nofile = http::listener::raise_fd_limit();
    let public_limits = http::listener::Limits::public(&state.settings.server, nofile);
    if public_limits.max_connections < state.settings.server.max_connections {
        tracing::warn!(
            configured = state.settings.server.max_connections,
            used = public_limits.max_connections,
            open_file_limit = nofile,
            "server.max_connections lowered to fit the open-file limit"
        );
    }
    let (public_alive, running) = crate::systemd::Liveness::new();
    let webhooks = providers.routes(&Ingest {
        settings: state.settings.clone(),
        journal: state.journal.clone(),
    });
    let public_server = tokio::spawn({
        let serve = http::listener::serve(
            public,
            http::public_router(state.clone(), webhooks),
            public_limits,
            stop_serving.clone(),
        );
        async move {
            let _running = running;
            serve.await
        }
    });
    let admin_server = tokio::spawn(http::listener::serve(
        admin,
        http::admin_router(state.clone()),
        http::listener::Limits::admin(&state.settings.server),
        stop_serving.clone(),
    ));
    (public_server, admin_server, public_alive)
}

/// Runs the providers' background work until `shutdown`. What an operator must fix (refused
/// credentials) ends the daemon with exit 1; anything else waits for the stop.
async fn work_until(
    background: &[Box<dyn crate::providers::Background>],
    shutdown: &CancellationToken,
) -> Result<(), StartError> {
    let work = futures_util::future::try_join_all(background.iter().map(|b| b.run()));
    tokio::select! {
        r = work => match r {
            Ok(_) => {
                shutdown.cancelled().await;
                Ok(())
            }
            Err(e) => Err(StartError::Provider(e)),
        },
        _ = shutdown.cancelled() => Ok(()),
    }
}

/// Both listeners drain at once, under one deadline.
async fn drain(public_server: Served, admin_server: Served) {
    let drained = async {
        let _ = public_server.await;
        let _ = admin_server.await;
    };
    if tokio::time::timeout(http::DRAIN, drained).await.is_err() {
        tracing::warn!("in-flight requests did not finish within 10 s");
    }
}

/// Connections the kernel completes and queues for a listener at its connection cap. Tokio's
/// `TcpListener::bind` asks for 128, so a flood past the cap made every later SYN wait for a
/// retransmit; a queued connection costs no descriptor.
const BACKLOG: u32 = 1024;

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let err = |source| StartError::Bind { addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    // As TcpListener::bind does: a restart can bind while the old sockets are in TIME_WAIT.
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    let listener = socket.listen(BACKLOG).map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    Ok((listener, bound))
}

/// The call table as the journal left it, and the applied cursor.
async fn restore(
    journal: &Journal,
    grace: std::time::Duration,
) -> Result<(Arc<CallTable>, i64), JournalError> {
    let restored = journal.restore(Utc::now() - KEEP_ENDED).await?;
    // At most an hour (validated), so it fits.
    let grace = chrono::Duration::from_std(grace).unwrap_or(crate::calls::END_GRACE);
    let table = Arc::new(CallTable::new(crate::providers::DIRECTIONS).with_grace(grace));
    tracing::info!(
        participants = restored.participants.len(),
        calls = restored.calls.len(),
        cursor = restored.cursor,
        "state restored"
    );
    table.restore(restored.participants, restored.calls);
    Ok((table, restored.cursor))
}

/// The download workers, with each provider's recording request; the processor wakes them.
fn recorder(
    settings: &Settings,
    journal: &Journal,
    providers: &Providers,
    processor: &mut Processor,
) -> Recorder {
    let sources = providers
        .iter()
        .filter_map(|p| Some((p.id(), p.recordings()?)));
    let fetcher = Fetcher::new(settings, sources);
    let nudge = Arc::new(tokio::sync::Notify::new());
    processor.wake_downloads(nudge.clone());
    Recorder::new(
        journal.clone(),
        fetcher,
        &settings.recordings,
        processor.recording_updates(),
        nudge,
    )
}

/// Periodic chores: the daily retention sweep and the metrics exporter's upkeep.
async fn upkeep(state: AppState, stop: CancellationToken) {
    let mut metrics_tick = tokio::time::interval(Duration::from_secs(5));
    let mut sweep_tick = tokio::time::interval(Duration::from_secs(24 * 3600));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = metrics_tick.tick() => state.metrics.run_upkeep(),
            _ = sweep_tick.tick() => {
                let days = i64::from(state.settings.storage.retention_days);
                let before = Utc::now() - chrono::Duration::days(days);
                match state.journal.sweep(before).await {
                    Ok(n) => tracing::info!(rows = n, retention_days = days, "retention sweep"),
                    Err(e) => tracing::error!(error = %e, "retention sweep failed"),
                }
            }
        }
    }
}

/// Runs `work` on a thread of its own (a current-thread runtime) and resolves when it ends.
/// **Why the processor is not a task of the main runtime:** it applies up to 512 rows in one
/// poll, and while it did, the requests queued on that worker (half of a 2-core machine's)
/// waited for it: the ack path's tail was the processor's batches. On its own thread the
/// kernel shares the cores between the two in slices of its choosing.
async fn on_own_thread(name: &str, work: impl Future<Output = ()> + Send + 'static) {
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(work),
                Err(e) => tracing::error!(error = %e, "a runtime could not start"),
            }
            drop(done);
        });
    match spawned {
        Ok(_) => {
            let _ = finished.await;
        }
        Err(e) => tracing::error!(error = %e, thread = name, "a thread could not start"),
    }
}
