//! JAS Connect (a cloud API over 3CX): signed webhooks, participant lookups, recordings.

pub mod apply;
pub mod client;
pub mod direction;
pub mod events;
pub mod gaps;
pub mod reconcile;
#[cfg(test)]
mod reconcile_properties;
pub mod registration;
pub mod routes;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use futures_util::future::BoxFuture;

use super::{Background, Event, Ingest, Lookup, LookupError, Source};
use crate::calls::{CallTable, Details, ParticipantKey, Provider};
use crate::config::Settings;
use crate::http::Readiness;
use crate::journal::StoredEvent;
use crate::outbound::path::encode_url_path;
use crate::recordings::download::DownloadError;
use crate::recordings::fetch::{RecordingSource, permanent};
use client::{JasAuth, JasClient, JasClientConfig, JasError};

pub const METRIC_NAMES: super::MetricNames = super::MetricNames {
    provider: Provider::Jas,
    events: &["call_status", "new_recording", "call_summary", "unknown"],
    repairable: events::REPAIRABLE,
    apis: client::api::ALL,
    reconciles: true,
};

/// JAS Connect as the daemon sees it: its settings, and its API client when there are
/// credentials to use it with.
pub struct Jas {
    settings: Arc<Settings>,
    client: Option<JasClient>,
    /// The sequence gaps its route notices and its reconciler acts on.
    gaps: Arc<gaps::Gaps>,
    /// Where applied snapshots are reported to the run that journaled them.
    applied: reconcile::Applied,
}

impl Jas {
    pub fn new(settings: &Arc<Settings>) -> Result<Jas, String> {
        let client = if settings.jas.enabled {
            client(settings)?
        } else {
            None
        };
        Ok(Jas {
            settings: settings.clone(),
            client,
            gaps: Arc::default(),
            applied: tokio::sync::broadcast::channel(16).0,
        })
    }
}

/// Builds the JAS API client when there are credentials to use it with.
pub fn client(settings: &Settings) -> Result<Option<JasClient>, String> {
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
    .map_err(|e| format!("cannot build the JAS client: {e}"))
}

impl Source for Jas {
    fn id(&self) -> Provider {
        Provider::Jas
    }

    fn routes(&self, ingest: &Ingest) -> Router {
        routes::router(ingest.clone(), self.gaps.clone())
    }

    fn decode(&self, row: &StoredEvent) -> Result<Box<dyn Event>, String> {
        if let Some(body) = reconcile::decode_row(row) {
            return body.map(|body| {
                Box::new(reconcile::SnapshotEvent {
                    snapshot: body.snapshot(),
                    applied: self.applied.clone(),
                }) as Box<dyn Event>
            });
        }
        events::decode(&row.body, row.received_at)
            .map(|d| Box::new(d.event) as Box<dyn Event>)
            .map_err(|e| e.to_string())
    }

    fn lookup(&self) -> Option<Arc<dyn Lookup>> {
        let client = self.client.clone()?;
        let jas = &self.settings.jas;
        jas.lookup_participants.then(|| {
            Arc::new(Lookups {
                client,
                pauses: (jas.retry.lookup_first, jas.retry.lookup_max),
            }) as Arc<dyn Lookup>
        })
    }

    fn background(&self, status: Readiness) -> Option<Box<dyn Background>> {
        Some(Box::new(registration::Registrar::new(
            &self.settings,
            self.client.clone(),
            status,
        )))
    }

    fn recordings(&self) -> Option<Arc<dyn RecordingSource>> {
        Some(Arc::new(Recordings(
            self.client.clone().filter(JasClient::has_credentials),
        )))
    }

    /// With credentials; `jas.reconcile_secs = 0` leaves only the runs asked for.
    fn reconciler(
        &self,
        ingest: &Ingest,
        table: Arc<CallTable>,
    ) -> Option<Arc<dyn super::reconcile::Reconcile>> {
        let client = self.client.clone().filter(JasClient::has_credentials)?;
        Some(Arc::new(reconcile::Reconciler::new(
            client,
            ingest.journal.clone(),
            table,
            self.settings.jas.reconcile_every,
            self.gaps.clone(),
            self.applied.clone(),
        )))
    }
}

/// Participant lookups: `GET /api/callcontrol/{dn}/participants/{id}`.
struct Lookups {
    client: JasClient,
    /// `jas.retry.lookup_first` and `lookup_max`.
    pauses: (Duration, Duration),
}

impl Lookup for Lookups {
    fn relookup_pauses(&self) -> (Duration, Duration) {
        self.pauses
    }

    fn details<'a>(
        &'a self,
        key: &'a ParticipantKey,
        once: bool,
    ) -> BoxFuture<'a, Result<Details, LookupError>> {
        Box::pin(async move {
            let answer = if once {
                self.client
                    .participant_once(&key.dn, &key.participant_id)
                    .await
            } else {
                self.client.participant(&key.dn, &key.participant_id).await
            };
            match answer {
                Ok(p) => Ok(apply::details_from(key, p)),
                Err(JasError::Forbidden) => Err(LookupError::Forbidden),
                Err(JasError::NotFound) => Err(LookupError::NotFound),
                Err(e @ JasError::Transient(_)) => Err(LookupError::Transient(e.to_string())),
                Err(e) => Err(LookupError::Failed(e.to_string())),
            }
        })
    }
}

/// `GET {jas.api_base}/api/recordings/{name}` with the Bearer token. `None` without
/// credentials: jobs then fail with a reason that says so.
struct Recordings(Option<JasClient>);

impl RecordingSource for Recordings {
    fn request<'a>(
        &'a self,
        source: &'a str,
    ) -> BoxFuture<'a, Result<(reqwest::RequestBuilder, crate::outbound::Api), DownloadError>> {
        Box::pin(async move {
            let client = self.0.as_ref().ok_or_else(|| {
                permanent("no JAS credentials (jas.token or jas.client_id/client_secret)")
            })?;
            client
                .recording_request(&encode_url_path(source))
                .await
                .map_err(|e| match e {
                    // The token could not be fetched now; it may be next time.
                    JasError::Transient(_) => DownloadError::Transient {
                        reason: e.to_string(),
                        retry_after: None,
                    },
                    other => permanent(&other.to_string()),
                })
                .map(|request| (request, client::api::RECORDINGS))
        })
    }

    /// An expired token from client credentials is fetched again, once (SPEC §2).
    fn renew(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            match &self.0 {
                Some(client) => client.renew_token().await.unwrap_or(false),
                None => false,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use url::Url;

    #[tokio::test]
    async fn a_recording_request_is_counted_under_jas_recordings() {
        // A static token: no request is sent to build the download's.
        let base = Url::parse("http://jas.invalid/v2").unwrap();
        let jas = JasClient::new(JasClientConfig::new(base, JasAuth::Token("t".into()))).unwrap();
        let (request, api) = Recordings(Some(jas)).request("101/a b.wav").await.unwrap();
        assert_eq!(api.as_label(), "jas_recordings");
        assert_eq!(
            request.build().unwrap().url().path(),
            "/v2/api/recordings/101/a%20b.wav"
        );
    }
}
