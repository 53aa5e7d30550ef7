//! Builds the download request for a job, by provider, and streams it to disk. JAS recordings
//! come from `GET {jas.api_base}/api/recordings/{name}` with the Bearer token; TeleCMI ones from
//! `GET {telecmi.api_base}/play?appid=&secret=&file=`, a URL that carries the secret and so is
//! never logged (errors from `download_to` are stripped of it).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::download::{DownloadError, Downloaded, Limits, Target, download_to};
use crate::config::Settings;
use crate::journal::Job;
use crate::outbound::{self, Api, path::encode_url_path};
use crate::providers::jas::client::{self as jas, JasClient, JasError};
use crate::providers::telecmi;

/// Idle-read limit for TeleCMI downloads: a stalled stream fails (and is retried) instead of
/// holding a worker forever; a long recording still streams as long as bytes keep coming.
const TELECMI_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What TeleCMI's `/play` needs besides the file name.
#[derive(Clone)]
struct TelecmiPlay {
    api_base: Url,
    app_id: String,
    secret: SecretString,
}

/// Sends each provider's recording request. Cheap to clone (clients share their pools).
#[derive(Clone)]
pub struct Fetcher {
    /// `None` without JAS credentials: JAS jobs then fail with a reason that says so.
    jas: Option<JasClient>,
    /// `None` without `telecmi.app_id` and `telecmi.secret`.
    telecmi: Option<TelecmiPlay>,
    http: reqwest::Client,
    /// `recordings.dir`: nothing below it is reached through a symbolic link.
    root: PathBuf,
    limits: Limits,
}

impl fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetcher")
            .field("jas", &self.jas.is_some())
            .field("telecmi", &self.telecmi.is_some())
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    pub fn new(settings: &Settings, jas: Option<JasClient>) -> Result<Fetcher, String> {
        let t = &settings.telecmi;
        let telecmi = match (&t.app_id, &t.secret) {
            (Some(app_id), Some(secret)) => Some(TelecmiPlay {
                api_base: t.api_base.clone(),
                app_id: app_id.clone(),
                secret: secret.clone(),
            }),
            _ => None,
        };
        let http = outbound::client(
            outbound::Options::upstream(t.api_base.host_str())
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(TELECMI_READ_TIMEOUT),
        )
        .map_err(|e| format!("building the recordings HTTP client: {e}"))?;
        Ok(Fetcher {
            jas: jas.filter(JasClient::has_credentials),
            telecmi,
            http,
            root: settings.recordings.dir.clone(),
            limits: Limits::of(&settings.recordings),
        })
    }

    /// Downloads `job` onto `dest` (already checked to lie under `recordings.dir`), or onto a
    /// distinct name beside it when another recording's file is there (see
    /// [`Downloaded::rel_path`]).
    pub async fn fetch(&self, job: &Job, dest: &Path) -> Result<Downloaded, DownloadError> {
        let rel = dest.strip_prefix(&self.root).map_err(|_| {
            permanent(&format!(
                "{} is not under recordings.dir {}",
                dest.display(),
                self.root.display()
            ))
        })?;
        let tag = job.id.to_string();
        let target = Target {
            root: &self.root,
            rel,
            tag: &tag,
        };
        let limits = &self.limits;
        let (request, api) = self.request(&job.provider, &job.source).await?;
        match download_to(request, &target, limits, api).await {
            // An expired token from client credentials is fetched again, once (SPEC §2).
            Err(DownloadError::Unauthorized) if job.provider == "jas" => {
                let renewed = match &self.jas {
                    Some(client) => client.renew_token().await.unwrap_or(false),
                    None => false,
                };
                if !renewed {
                    return Err(DownloadError::Unauthorized);
                }
                let (request, api) = self.request(&job.provider, &job.source).await?;
                download_to(request, &target, limits, api).await
            }
            other => other,
        }
    }

    /// The provider's request for `job`, and the `api` label it is counted under: both from
    /// the provider, so a request is never counted under another provider's label.
    async fn request(
        &self,
        provider: &str,
        source: &str,
    ) -> Result<(reqwest::RequestBuilder, Api), DownloadError> {
        match provider {
            "jas" => {
                let client = self.jas.as_ref().ok_or_else(|| {
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
                    .map(|request| (request, jas::api::RECORDINGS))
            }
            "telecmi" => {
                let play = self.telecmi.as_ref().ok_or_else(|| {
                    permanent("telecmi.app_id and telecmi.secret are needed to download recordings")
                })?;
                let url = telecmi_play_url(
                    &play.api_base,
                    &play.app_id,
                    play.secret.expose_secret(),
                    source,
                );
                Ok((self.http.get(url), telecmi::PLAY_API))
            }
            other => Err(permanent(&format!(
                "no downloader for provider {:?}",
                other.escape_debug().to_string()
            ))),
        }
    }
}

/// `{api_base}/play?appid=..&secret=..&file=..`, each value query-encoded. Carries the secret:
/// never log it.
pub fn telecmi_play_url(api_base: &Url, app_id: &str, secret: &str, file: &str) -> Url {
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

fn permanent(reason: &str) -> DownloadError {
    DownloadError::Permanent {
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::jas::client::{JasAuth, JasClientConfig};

    #[tokio::test]
    async fn each_request_is_counted_under_its_own_providers_label() {
        let api_base = Url::parse("https://rest.telecmi.invalid/v2").unwrap();
        let mut fetcher = Fetcher {
            jas: None,
            telecmi: Some(TelecmiPlay {
                api_base,
                app_id: "1".into(),
                secret: "s".into(),
            }),
            http: outbound::client(outbound::Options::own(true)).unwrap(),
            root: PathBuf::from("/nonexistent"),
            limits: Limits::default(),
        };
        let (request, api) = fetcher.request("telecmi", "a.mp3").await.unwrap();
        assert_eq!(api.as_label(), "telecmi_play");
        assert_eq!(request.build().unwrap().url().path(), "/v2/play");

        // A static token: no request is sent to build the download's.
        let base = Url::parse("http://jas.invalid/v2").unwrap();
        let jas = JasClient::new(JasClientConfig::new(base, JasAuth::Token("t".into()))).unwrap();
        fetcher.jas = Some(jas);
        let (request, api) = fetcher.request("jas", "101/a b.wav").await.unwrap();
        assert_eq!(api.as_label(), "jas_recordings");
        assert_eq!(
            request.build().unwrap().url().path(),
            "/v2/api/recordings/101/a%20b.wav"
        );

        // A provider with no downloader is refused, not counted under another's label.
        match fetcher.request("third", "x.wav").await {
            Err(DownloadError::Permanent { reason }) => {
                assert!(reason.contains("no downloader"), "{reason}")
            }
            other => panic!("{:?}", other.map(|(_, api)| api)),
        }
    }

    #[test]
    fn play_url_appends_to_the_base_path_and_encodes_every_value() {
        for base in [
            "https://rest.telecmi.com/v2",
            "https://rest.telecmi.com/v2/",
            "https://rest.telecmi.com/v2?x=1#f",
        ] {
            let url = telecmi_play_url(
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
