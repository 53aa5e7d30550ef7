//! TeleCMI: unsigned webhooks authenticated by a secret path token (and optionally the source
//! address), live leg events and CDRs, recordings named by CDRs.

pub mod apply;
pub mod direction;
pub mod events;
pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{Event, Ingest, Source};
use crate::calls::Provider;
use crate::config::Settings;
use crate::journal::StoredEvent;
use crate::outbound::{self, Api};
use crate::recordings::download::DownloadError;
use crate::recordings::fetch::{RecordingSource, permanent};

/// The `api` label of TeleCMI's `/play` (recording downloads) in
/// `callhook_upstream_requests_total`.
pub const PLAY_API: crate::outbound::Api = crate::outbound::Api::new("telecmi_play");

pub const METRIC_NAMES: super::MetricNames = super::MetricNames {
    provider: Provider::Telecmi,
    events: &["event", "cdr", "unknown"],
    repairable: events::REPAIRABLE,
    apis: &[PLAY_API],
    reconciles: false,
};

/// Idle-read limit for TeleCMI downloads: a stalled stream fails (and is retried) instead of
/// holding a worker forever; a long recording still streams as long as bytes keep coming.
const PLAY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// TeleCMI as the daemon sees it. It names every leg and ranks its statuses itself, so there is
/// nothing to look up and nothing to run beside serving.
pub struct Telecmi {
    /// `None` without `telecmi.app_id` and `telecmi.secret`: downloads then fail saying so.
    play: Option<Arc<Play>>,
}

impl Telecmi {
    pub fn new(settings: &Arc<Settings>) -> Result<Telecmi, String> {
        let t = &settings.telecmi;
        let play = match (&t.app_id, &t.secret) {
            (Some(app_id), Some(secret)) => Some(Arc::new(Play {
                api_base: t.api_base.clone(),
                app_id: app_id.clone(),
                secret: secret.clone(),
                http: outbound::client(
                    outbound::Options::upstream(t.api_base.host_str())
                        .connect_timeout(Duration::from_secs(5))
                        .read_timeout(PLAY_READ_TIMEOUT),
                )
                .map_err(|e| format!("building the recordings HTTP client: {e}"))?,
            })),
            _ => None,
        };
        Ok(Telecmi { play })
    }
}

impl Source for Telecmi {
    fn id(&self) -> Provider {
        Provider::Telecmi
    }

    fn routes(&self, ingest: &Ingest) -> Router {
        routes::router(ingest.clone())
    }

    fn decode(&self, row: &StoredEvent) -> Result<Box<dyn Event>, String> {
        events::decode(&row.body, row.content_type.as_deref())
            .map(|event| Box::new(event) as Box<dyn Event>)
            .map_err(|e| e.to_string())
    }

    fn recordings(&self) -> Option<Arc<dyn RecordingSource>> {
        Some(match &self.play {
            Some(play) => play.clone() as Arc<dyn RecordingSource>,
            None => Arc::new(NoPlay),
        })
    }
}

/// What TeleCMI's `/play` needs besides the file name.
struct Play {
    api_base: Url,
    app_id: String,
    secret: SecretString,
    http: reqwest::Client,
}

impl RecordingSource for Play {
    fn request<'a>(
        &'a self,
        source: &'a str,
    ) -> BoxFuture<'a, Result<(reqwest::RequestBuilder, Api), DownloadError>> {
        let url = play_url(
            &self.api_base,
            &self.app_id,
            self.secret.expose_secret(),
            source,
        );
        Box::pin(async move { Ok((self.http.get(url), PLAY_API)) })
    }
}

/// Without `telecmi.app_id` and `telecmi.secret` no recording can be requested.
struct NoPlay;

impl RecordingSource for NoPlay {
    fn request<'a>(
        &'a self,
        _: &'a str,
    ) -> BoxFuture<'a, Result<(reqwest::RequestBuilder, Api), DownloadError>> {
        Box::pin(async {
            Err(permanent(
                "telecmi.app_id and telecmi.secret are needed to download recordings",
            ))
        })
    }
}

/// `{api_base}/play?appid=..&secret=..&file=..`, each value query-encoded. Carries the secret:
/// never log it (errors from `download_to` are stripped of it).
pub fn play_url(api_base: &Url, app_id: &str, secret: &str, file: &str) -> Url {
    let mut url = api_base.clone();
    url.set_fragment(None);
    url.set_query(None);
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty().push("play");
    }
    url.query_pairs_mut()
        .append_pair("appid", app_id)
        .append_pair("secret", secret)
        .append_pair("file", file);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_recording_request_is_counted_under_telecmi_play() {
        let play = Play {
            api_base: Url::parse("https://rest.telecmi.invalid/v2").unwrap(),
            app_id: "1".into(),
            secret: "s".into(),
            http: outbound::client(outbound::Options::own(true)).unwrap(),
        };
        let (request, api) = play.request("a.mp3").await.unwrap();
        assert_eq!(api.as_label(), "telecmi_play");
        assert_eq!(request.build().unwrap().url().path(), "/v2/play");
    }

    #[test]
    fn play_url_appends_to_the_base_path_and_encodes_every_value() {
        for base in [
            "https://rest.telecmi.com/v2",
            "https://rest.telecmi.com/v2/",
            "https://rest.telecmi.com/v2?x=1#f",
        ] {
            let url = play_url(
                &Url::parse(base).unwrap(),
                "1111112",
                "s3c&ret=1",
                "a b&c#d/e?.mp3",
            );
            assert_eq!(
                url.as_str(),
                "https://rest.telecmi.com/v2/play?appid=1111112&secret=s3c%26ret%3D1&file=a+b%26c%23d%2Fe%3F.mp3",
                "{base}"
            );
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            assert_eq!(pairs[2], ("file".into(), "a b&c#d/e?.mp3".into()));
        }
    }
}
