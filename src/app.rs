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
use crate::http::{self, AppState, Readiness};
use crate::journal::{Journal, JournalError};
use crate::processor::{KEEP_ENDED, Processor};
use crate::providers::jas::client::{JasAuth, JasClient, JasClientConfig, JasError};
use crate::providers::jas::verify::Verifier;
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
    #[error("JAS Connect refused our credentials while registering webhooks: {0}")]
    Credentials(String),
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
    jas: Option<JasClient>,
    /// The download workers; `None` when `recordings.enabled` is false.
    recorder: Option<Recorder>,
    tasks: TaskTracker,
}

/// Builds the JAS API client when there are credentials to use it with.
pub fn jas_client(settings: &Settings) -> Result<Option<JasClient>, StartError> {
    let jas = &settings.jas;
    let auth = match (&jas.token, &jas.client_id, &jas.client_secret) {
        (Some(token), _, _) => JasAuth::Token(token.clone()),
        (None, Some(id), Some(secret)) => JasAuth::Client {
            id: id.clone(),
            secret: secret.clone(),
        },
        _ => return Ok(None),
    };
    JasClient::new(JasClientConfig {
        api_base: jas.api_base.clone(),
        auth,
        connect_timeout: Duration::from_secs(5),
        request_timeout: jas.request_timeout,
        retry_min: jas.retry.request_min,
        retry_max: jas.retry.request_max,
        max_retries: jas.retry.request_retries,
    })
    .map(Some)
    .map_err(|e| StartError::Other(format!("cannot build the JAS client: {e}")))
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Application, StartError> {
        let settings = Arc::new(settings);
        let metrics = crate::metrics::handle();
        for warning in settings.disabled_features() {
            tracing::warn!("{warning}");
        }
        let readiness = Readiness::not_ready("starting: opening the journal");

        let journal = Journal::open(&settings.storage.path)
            .await
            .map_err(|source| StartError::Journal {
                path: settings.storage.path.display().to_string(),
                source,
            })?;
        let restored = journal
            .restore(Utc::now() - KEEP_ENDED)
            .await
            .map_err(|source| StartError::Journal {
                path: settings.storage.path.display().to_string(),
                source,
            })?;
        let table = Arc::new(CallTable::new());
        let cursor = restored.cursor;
        tracing::info!(
            participants = restored.participants.len(),
            calls = restored.calls.len(),
            cursor,
            "state restored"
        );
        table.restore(restored.participants, restored.calls);

        let jas = if settings.jas.enabled {
            jas_client(&settings)?
        } else {
            None
        };
        let lookups = jas.clone().filter(|_| settings.jas.lookup_participants);
        let tasks = TaskTracker::new();
        let mut processor = Processor::new(
            journal.clone(),
            table.clone(),
            lookups,
            cursor,
            tasks.clone(),
        );
        processor.pace_relookups(
            settings.jas.retry.lookup_first,
            settings.jas.retry.lookup_max,
        );
        let recorder = if settings.recordings.enabled {
            let fetcher = Fetcher::new(&settings, jas.clone()).map_err(StartError::Other)?;
            let nudge = Arc::new(tokio::sync::Notify::new());
            processor.wake_downloads(nudge.clone());
            Some(Recorder::new(
                journal.clone(),
                fetcher,
                &settings.recordings,
                processor.recording_updates(),
                nudge,
            ))
        } else {
            None
        };
        processor
            .catch_up()
            .await
            .map_err(|source| StartError::Journal {
                path: settings.storage.path.display().to_string(),
                source,
            })?;
        for provider in Provider::ALL {
            metrics::gauge!("callhook_active_calls", "provider" => provider.as_str())
                .set(table.active_count(provider) as f64);
        }

        let public = bind(settings.server.listen).await?;
        let admin = bind(settings.admin.listen).await?;
        let public_addr = public.local_addr().map_err(|source| StartError::Bind {
            addr: settings.server.listen,
            source,
        })?;
        let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
            addr: settings.admin.listen,
            source,
        })?;
        // No upstream redirect is followed to our own listeners (recordings/redirect.rs).
        crate::outbound::redirect::register_own_listener(public_addr);
        crate::outbound::redirect::register_own_listener(admin_addr);

        let state = AppState {
            jas_verifier: Arc::new(Verifier::new(settings.jas.webhook_secrets.clone())),
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
            jas,
            recorder,
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
            jas,
            recorder,
            tasks,
            public_addr,
            admin_addr,
        } = self;

        // Listeners stop accepting on `stop_serving`; the processor and workers stop later,
        // after in-flight requests have had their chance to finish.
        let stop_serving = CancellationToken::new();
        let stop_work = CancellationToken::new();
        // Each listener has its own accept loop and connection cap, so a flood of the public
        // one never locks the admin one out (http/listener.rs).
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
        let public_server = tokio::spawn({
            let serve = http::listener::serve(
                public,
                http::public_router(state.clone()),
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
        let processor_task = tokio::spawn(processor.run(stop_work.clone()));
        // Stopped before the processor, so every progress report a worker sent gets written.
        let stop_downloads = CancellationToken::new();
        let recorder_task = recorder.map(|r| tokio::spawn(r.run(stop_downloads.clone())));
        tasks.spawn(upkeep(state.clone(), stop_work.clone()));

        // Ready once it can receive and journal: registration runs beside serving (JAS may be
        // down for hours while webhooks are journaled fine) and shows in `/readyz` and STATUS=.
        let registrar = Registrar::new(&state.settings, jas.clone(), state.readiness.clone());
        if !shutdown.is_cancelled() {
            state.readiness.set(None);
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
        // Refused credentials end the daemon (exit 1); anything else waits for the stop.
        let result = tokio::select! {
            r = registrar.register_all() => match r {
                Ok(()) => {
                    shutdown.cancelled().await;
                    Ok(())
                }
                Err(e) => Err(e),
            },
            _ = shutdown.cancelled() => Ok(()),
        };

        tracing::info!("shutting down");
        crate::systemd::stopping();
        state.readiness.set(Some("shutting down"));
        stop_serving.cancel();
        // Both listeners drain at once, under one deadline.
        let drained = async {
            let _ = public_server.await;
            let _ = admin_server.await;
        };
        if tokio::time::timeout(http::DRAIN, drained).await.is_err() {
            tracing::warn!("in-flight requests did not finish within 10 s");
        }
        registrar.unregister_all().await;
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

/// Connections the kernel completes and queues for a listener at its connection cap. Tokio's
/// `TcpListener::bind` asks for 128, so a flood past the cap made every later SYN wait for a
/// retransmit; a queued connection costs no descriptor.
const BACKLOG: u32 = 1024;

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
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
    socket.listen(BACKLOG).map_err(err)
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

/// Registers `jas.events` at `jas.callback_url` at start and removes them at shutdown; says
/// how far it got in `/readyz` (`registration`) and systemd's STATUS=.
struct Registrar {
    client: Option<JasClient>,
    callback: Option<String>,
    events: Vec<String>,
    registered: std::sync::Mutex<Vec<String>>,
    status: Readiness,
}

impl Registrar {
    fn new(settings: &Settings, client: Option<JasClient>, status: Readiness) -> Self {
        let jas = &settings.jas;
        let active = jas.enabled && jas.register && jas.callback_url.is_some();
        let registrar = Self {
            client: client.filter(|_| active),
            callback: jas.callback_url.as_ref().map(|u| u.to_string()),
            events: jas.events.clone(),
            registered: std::sync::Mutex::new(vec![]),
            status,
        };
        registrar.report(if registrar.client.is_some() {
            "pending: registering webhooks"
        } else {
            "off"
        });
        registrar
    }

    fn report(&self, status: &str) {
        self.status.set_registration(status);
        let line = match status {
            "off" => "receiving webhooks; registration off".to_string(),
            "registered" => "receiving webhooks; webhooks registered".to_string(),
            other => format!("receiving webhooks; registration {other}"),
        };
        crate::systemd::status(&line);
    }

    async fn register_all(&self) -> Result<(), StartError> {
        let (Some(client), Some(callback)) = (&self.client, &self.callback) else {
            return Ok(());
        };
        match client.authenticate().await {
            Ok(()) => {}
            Err(e @ (JasError::Unauthorized(_) | JasError::Forbidden)) => {
                return Err(StartError::Credentials(e.to_string()));
            }
            // Fetched again lazily by the first request that needs it.
            Err(e) => {
                tracing::warn!(error = %e, "JAS authentication failed; will retry");
                self.report(&format!("pending: authenticating: {e}"));
            }
        }
        for event in &self.events {
            // Unregister first so a previous run's registration (maybe at another URL) goes.
            if let Err(e) = client.unregister(event).await {
                if let JasError::Unauthorized(_) | JasError::Forbidden = e {
                    return Err(StartError::Credentials(e.to_string()));
                }
                tracing::warn!(event = %event, error = %e, "could not unregister the old webhook");
            }
            let mut delay = Duration::from_secs(1);
            self.report(&format!("pending: registering {event}"));
            loop {
                match client.register(event, callback).await {
                    Ok(()) => {
                        tracing::info!(event = %event, "webhook registered");
                        self.registered
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(event.clone());
                        break;
                    }
                    Err(e @ (JasError::Unauthorized(_) | JasError::Forbidden)) => {
                        return Err(StartError::Credentials(e.to_string()));
                    }
                    Err(JasError::Rejected { status, body }) => {
                        tracing::error!(event = %event, http_status = status, body = %body,
                            "JAS Connect refused this webhook; skipping it");
                        break;
                    }
                    // Any other 4xx (404 for an event the account does not offer) or a request
                    // that cannot be built: retrying would not change the answer.
                    Err(e @ (JasError::NotFound | JasError::Invalid(_))) => {
                        tracing::error!(event = %event, error = %e,
                            "JAS Connect refused this webhook; skipping it");
                        break;
                    }
                    Err(e) => {
                        // The API is down or slow: keep trying, the webhook endpoints already
                        // accept events meanwhile; `/readyz` and STATUS= say what it waits for.
                        tracing::warn!(event = %event, error = %e, retry_in = ?delay,
                            "webhook registration failed; retrying");
                        self.report(&format!("pending: registering {event}: {e}"));
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(60));
                    }
                }
            }
        }
        self.report("registered");
        Ok(())
    }

    async fn unregister_all(&self) {
        let Some(client) = &self.client else {
            return;
        };
        let events =
            std::mem::take(&mut *self.registered.lock().unwrap_or_else(|e| e.into_inner()));
        for event in events {
            match tokio::time::timeout(Duration::from_secs(10), client.unregister(&event)).await {
                Ok(Ok(())) => tracing::info!(event = %event, "webhook unregistered"),
                Ok(Err(e)) => {
                    tracing::warn!(event = %event, error = %e, "could not unregister webhook")
                }
                Err(_) => tracing::warn!(event = %event, "unregistering timed out"),
            }
        }
    }
}
