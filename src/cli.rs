//! The command line: `serve` (the default), `demo`, `check-config`, `sign`, `send`, `webhooks`,
//! `healthcheck`.
//! Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad configuration.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use crate::app::Application;
use crate::config::{Settings, Sources};
use crate::providers::jas::verify::sign;

#[derive(Parser, Debug)]
#[command(
    name = "callhook",
    version,
    about = "Receives JAS Connect (3CX) and TeleCMI telephony webhooks: a journal that never forgets, a live call table, recordings and history."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Args, Debug, Clone, Default)]
struct ConfigArg {
    /// TOML configuration file (default: config/callhook.toml when it exists)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon (what a bare `callhook` does)
    Serve(ConfigArg),
    /// Run the whole pipeline against a built-in simulated JAS Connect API, print the result, exit
    Demo {
        /// Where to keep the demo's database and recordings (created; must be empty or absent).
        /// Default: a new folder under the system's temporary directory
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Load and validate the configuration and print it with every secret as ***
    CheckConfig(ConfigArg),
    /// Print the X-SIG value of a body (for curl tests)
    Sign {
        /// Environment variable holding the webhook secret
        #[arg(long, value_name = "VAR")]
        secret_env: String,
        /// Body file, or - for standard input
        #[arg(default_value = "-")]
        file: String,
    },
    /// Post a JSON event file signed with the configured JAS webhook secret
    Send {
        /// The webhook URL, e.g. http://127.0.0.1:9999/webhooks/jas
        #[arg(long)]
        url: String,
        #[command(flatten)]
        config: ConfigArg,
        /// JSON event file, or - for standard input
        file: String,
    },
    /// Manage the JAS Connect webhook registrations by hand
    Webhooks {
        #[command(subcommand)]
        action: WebhooksAction,
    },
    /// Exit 0 when the configured daemon answers /healthz on admin.listen, else 1 (for container
    /// health checks)
    Healthcheck(ConfigArg),
    /// The outbound endpoints of call events and their queues, from the running daemon
    Endpoints {
        #[command(subcommand)]
        action: EndpointsAction,
    },
    /// The deliveries of call events, from the running daemon
    Deliveries {
        #[command(subcommand)]
        action: DeliveriesAction,
    },
    /// Print each call event as the running daemon produces it, one JSON object a line
    Tail(ConfigArg),
    /// Run one reconciliation with the provider's snapshot now, in the running daemon, and
    /// print what it changed
    Reconcile(ConfigArg),
    /// The active calls as a table, from the running daemon
    Calls {
        #[command(flatten)]
        config: ConfigArg,
        /// Redraw on every change (and every second, so durations count)
        #[arg(long)]
        watch: bool,
    },
    /// Ended calls as CDR rows, from the running daemon
    Export {
        #[command(flatten)]
        config: ConfigArg,
        /// Calls that ended at or after this RFC 3339 time
        #[arg(long, value_name = "T")]
        since: String,
        /// ...and before this one (default: now)
        #[arg(long, value_name = "T")]
        until: Option<String>,
        /// csv (default) or ndjson
        #[arg(long, value_parser = ["csv", "ndjson"])]
        format: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum EndpointsAction {
    /// Each endpoint: URL, pending, failed, delivered, oldest pending
    List(ConfigArg),
    /// Deliver every event produced since a time again, in order, with its original id
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        /// The endpoint's name
        name: String,
        /// RFC 3339 time, e.g. 2026-12-01T09:00:00Z
        #[arg(long, value_name = "T")]
        since: String,
    },
}

#[derive(Subcommand, Debug)]
enum DeliveriesAction {
    /// The newest deliveries of an endpoint
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// The endpoint's name (needed when there are several)
        #[arg(long)]
        endpoint: Option<String>,
        /// pending, delivered or failed
        #[arg(long)]
        state: Option<String>,
    },
    /// Make an event's pending or failed deliveries due now
    Retry {
        #[command(flatten)]
        config: ConfigArg,
        /// The event id (evt_...)
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum WebhooksAction {
    /// Register each of jas.events at jas.callback_url
    Register(ConfigArg),
    /// Remove the registration of each of jas.events
    Unregister(ConfigArg),
    /// Show the current registrations
    List(ConfigArg),
}

pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    crate::outbound::install_crypto();
    match cli.command.unwrap_or(Command::Serve(ConfigArg::default())) {
        Command::Serve(c) => serve(c),
        Command::Demo { dir } => runtime(crate::demo::run(dir)),
        Command::CheckConfig(c) => check_config(c),
        Command::Sign { secret_env, file } => sign_cmd(&secret_env, &file),
        Command::Send { url, config, file } => runtime(send(url, config, file)),
        Command::Webhooks { action } => runtime(webhooks(action)),
        Command::Healthcheck(c) => runtime(healthcheck(c)),
        Command::Endpoints { action } => match action {
            EndpointsAction::List(c) => {
                with_settings(&c, |s| runtime(crate::admin_cli::endpoints_list(s)))
            }
            EndpointsAction::Replay {
                config,
                name,
                since,
            } => with_settings(&config, |s| {
                runtime(crate::admin_cli::endpoints_replay(s, name, since))
            }),
        },
        Command::Tail(c) => with_settings(&c, |s| runtime(crate::admin_cli::tail(s))),
        Command::Reconcile(c) => with_settings(&c, |s| runtime(crate::admin_cli::reconcile(s))),
        Command::Calls { config, watch } => {
            with_settings(&config, |s| runtime(crate::admin_cli::calls(s, watch)))
        }
        Command::Export {
            config,
            since,
            until,
            format,
        } => with_settings(&config, |s| {
            runtime(crate::admin_cli::export(s, since, until, format))
        }),
        Command::Deliveries { action } => match action {
            DeliveriesAction::List {
                config,
                endpoint,
                state,
            } => with_settings(&config, |s| {
                runtime(crate::admin_cli::deliveries_list(s, endpoint, state))
            }),
            DeliveriesAction::Retry { config, id } => with_settings(&config, |s| {
                runtime(crate::admin_cli::deliveries_retry(s, id))
            }),
        },
    }
}

fn runtime<F: std::future::Future<Output = ExitCode>>(f: F) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("callhook: cannot start the runtime: {e}");
            ExitCode::from(1)
        }
    }
}

fn with_settings(c: &ConfigArg, f: impl FnOnce(Settings) -> ExitCode) -> ExitCode {
    match load(c) {
        Ok(settings) => f(settings),
        Err(code) => code,
    }
}

fn load(c: &ConfigArg) -> Result<Settings, ExitCode> {
    Settings::load(&Sources {
        file: c.config.clone(),
        env: None,
    })
    .map_err(|e| {
        eprintln!("callhook: {e}");
        ExitCode::from(2)
    })
}

fn serve(c: ConfigArg) -> ExitCode {
    let settings = match load(&c) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let (sink, _flush_at_exit) = crate::telemetry::stdout_sink();
    crate::telemetry::init(&settings.log, sink);
    runtime(async move {
        // Installed first, so a SIGTERM during restore still ends in a clean exit 0.
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        let app = match Application::build(settings).await {
            Ok(app) => app,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("callhook: {e}");
                return ExitCode::from(1);
            }
        };
        match app.run_until_stopped(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "stopped with an error");
                eprintln!("callhook: {e}");
                ExitCode::from(1)
            }
        }
    })
}

/// Cancels `token` on SIGTERM or SIGINT. SIGHUP (whose default action would kill the daemon)
/// is logged and changes nothing: the configuration is read at start only.
async fn stop_on_signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        let mut hangup = signal(SignalKind::hangup()).ok();
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!(signal = "SIGTERM", "stop requested");
                    break;
                }
                _ = tokio::signal::ctrl_c() => {
                    tracing::info!(signal = "SIGINT", "stop requested");
                    break;
                }
                Some(()) = async { match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                } } => {
                    tracing::warn!(signal = "SIGHUP",
                        "configuration is read at start; restart to apply changes");
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    token.cancel();
}

fn check_config(c: ConfigArg) -> ExitCode {
    match load(&c) {
        Ok(settings) => {
            print!("{}", settings.redacted_toml());
            for warning in settings.disabled_features() {
                eprintln!("warning: {warning}");
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn read_input(file: &str) -> std::io::Result<Vec<u8>> {
    if file == "-" {
        let mut buf = vec![];
        std::io::stdin().read_to_end(&mut buf)?;
        Ok(buf)
    } else {
        std::fs::read(file)
    }
}

fn sign_cmd(var: &str, file: &str) -> ExitCode {
    let Some(secret) = std::env::var_os(var) else {
        eprintln!("callhook: environment variable {var} is not set");
        return ExitCode::from(2);
    };
    let body = match read_input(file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("callhook: cannot read {file}: {e}");
            return ExitCode::from(2);
        }
    };
    println!("{}", sign(secret.as_encoded_bytes(), &body));
    ExitCode::SUCCESS
}

async fn send(url: String, c: ConfigArg, file: String) -> ExitCode {
    let settings = match load(&c) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let Some(secret) = settings.jas.webhook_secrets.first() else {
        eprintln!("callhook: jas.webhook_secret is not configured; nothing to sign with");
        return ExitCode::from(2);
    };
    let body = match read_input(&file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("callhook: cannot read {file}: {e}");
            return ExitCode::from(2);
        }
    };
    let sig = sign(secret.expose_secret().as_bytes(), &body);
    let own = crate::outbound::Options::own(false).timeout(std::time::Duration::from_secs(30));
    let client = match crate::outbound::client(own) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("callhook: {e}");
            return ExitCode::from(1);
        }
    };
    match client
        .post(&url)
        .header("content-type", "application/json")
        .header("x-sig", sig)
        .body(body)
        .send()
        .await
    {
        Ok(resp) => {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            println!("{}", status.as_u16());
            println!("{text}");
            if status.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            // Not the URL: a TeleCMI webhook URL carries its path token.
            eprintln!("callhook: {}", crate::outbound::describe(e));
            ExitCode::from(1)
        }
    }
}

async fn webhooks(action: WebhooksAction) -> ExitCode {
    let (c, what) = match &action {
        WebhooksAction::Register(c) => (c, "register"),
        WebhooksAction::Unregister(c) => (c, "unregister"),
        WebhooksAction::List(c) => (c, "list"),
    };
    let settings = match load(c) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let client = match crate::providers::jas::client(&settings) {
        Ok(Some(client)) => client,
        Ok(None) => {
            eprintln!(
                "callhook: set jas.token (or jas.client_id and jas.client_secret) to manage webhooks"
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("callhook: {e}");
            return ExitCode::from(1);
        }
    };
    let mut failed = false;
    match what {
        "list" => match client.list_webhooks().await {
            Ok(v) => println!(
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
            ),
            Err(e) => {
                eprintln!("callhook: listing webhooks failed: {e}");
                failed = true;
            }
        },
        "register" => {
            let Some(callback) = settings.jas.callback_url.as_ref() else {
                eprintln!("callhook: jas.callback_url is not set");
                return ExitCode::from(2);
            };
            for event in &settings.jas.events {
                match client.register(event, callback.as_str()).await {
                    Ok(()) => println!("registered {event} -> {callback}"),
                    Err(e) => {
                        println!("failed     {event}: {e}");
                        failed = true;
                    }
                }
            }
        }
        _ => {
            for event in &settings.jas.events {
                match client.unregister(event).await {
                    Ok(()) => println!("unregistered {event}"),
                    Err(e) => {
                        println!("failed       {event}: {e}");
                        failed = true;
                    }
                }
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `admin.listen` as a client reaches it: an unspecified address (`0.0.0.0`, `[::]`) means this
/// host's loopback.
pub(crate) fn reachable(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, addr.port())
}

/// `GET /healthz` on `admin.listen` (which needs no token): 0 when it answers 200, else one line
/// on stderr saying what is wrong and 1, a bad configuration included (Docker reserves 2).
async fn healthcheck(c: ConfigArg) -> ExitCode {
    let Ok(settings) = load(&c) else {
        return ExitCode::from(1);
    };
    let addr = reachable(settings.admin.listen);
    if addr.port() == 0 {
        eprintln!("callhook: admin.listen has port 0: there is no fixed address to check");
        return ExitCode::from(1);
    }
    let url = format!("http://{addr}/healthz");
    let own = crate::outbound::Options::own(true).timeout(std::time::Duration::from_secs(3));
    let client = match crate::outbound::client(own) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("callhook: {e}");
            return ExitCode::from(1);
        }
    };
    match client.get(&url).send().await {
        Ok(resp) if resp.status().is_success() => ExitCode::SUCCESS,
        Ok(resp) => {
            eprintln!("callhook: {url} answered {}", resp.status());
            ExitCode::from(1)
        }
        Err(e) if e.is_timeout() => {
            eprintln!("callhook: {url} did not answer within 3 s");
            ExitCode::from(1)
        }
        Err(e) if e.is_connect() => {
            eprintln!("callhook: nothing answers at {url} (is callhook running?)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("callhook: {url}: {}", crate::outbound::describe(e));
            ExitCode::from(1)
        }
    }
}
