//! Webhook registration: `jas.events` registered at `jas.callback_url` beside serving, removed
//! at shutdown; how far it got shows in `/readyz` (`registration`) and systemd's STATUS=.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::client::{JasClient, JasError};
use crate::config::Settings;
use crate::http::Readiness;
use crate::providers::Background;

/// Registers `jas.events` at `jas.callback_url` at start and removes them at shutdown; says
/// how far it got in `/readyz` (`registration`) and systemd's STATUS=.
pub struct Registrar {
    client: Option<JasClient>,
    callback: Option<String>,
    events: Vec<String>,
    registered: std::sync::Mutex<Vec<String>>,
    status: Readiness,
}

impl Registrar {
    pub fn new(settings: &Settings, client: Option<JasClient>, status: Readiness) -> Self {
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

    async fn register_all(&self) -> Result<(), String> {
        let (Some(client), Some(callback)) = (&self.client, &self.callback) else {
            return Ok(());
        };
        match client.authenticate().await {
            Ok(()) => {}
            Err(e @ (JasError::Unauthorized(_) | JasError::Forbidden)) => {
                return Err(refused(&e));
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
                    return Err(refused(&e));
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
                        return Err(refused(&e));
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

/// Refused credentials end the daemon: an operator must fix them.
fn refused(e: &JasError) -> String {
    format!("JAS Connect refused our credentials while registering webhooks: {e}")
}

impl Background for Registrar {
    fn run(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.register_all())
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.unregister_all())
    }
}
