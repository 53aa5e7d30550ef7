//! Streams a job's recording to disk with the request its provider builds (each provider's
//! [`RecordingSource`], in its own folder), so a request is never sent, or counted, as another
//! provider's.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::download::{DownloadError, Downloaded, Limits, Target, download_to};
use crate::calls::Provider;
use crate::config::Settings;
use crate::journal::Job;
use crate::outbound::Api;

/// How a provider's recordings are requested.
pub trait RecordingSource: Send + Sync {
    /// The request for the recording the job names (`source`), and the `api` label it is
    /// counted under.
    fn request<'a>(
        &'a self,
        source: &'a str,
    ) -> BoxFuture<'a, Result<(reqwest::RequestBuilder, Api), DownloadError>>;

    /// Called once after a 401: whether fresh credentials make one more try worthwhile.
    fn renew(&self) -> BoxFuture<'_, bool> {
        Box::pin(async { false })
    }
}

/// Sends each provider's recording request. Cheap to clone.
#[derive(Clone)]
pub struct Fetcher {
    sources: HashMap<Provider, Arc<dyn RecordingSource>>,
    /// `recordings.dir`: nothing below it is reached through a symbolic link.
    root: PathBuf,
    limits: Limits,
}

impl fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetcher")
            .field("providers", &self.sources.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// `sources`: each provider with recordings and how they are requested.
    pub fn new(
        settings: &Settings,
        sources: impl IntoIterator<Item = (Provider, Arc<dyn RecordingSource>)>,
    ) -> Fetcher {
        Fetcher {
            sources: sources.into_iter().collect(),
            root: settings.recordings.dir.clone(),
            limits: Limits::of(&settings.recordings),
        }
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
        let source = self.source(job.provider)?;
        let (request, api) = source.request(&job.source).await?;
        match download_to(request, &target, limits, api).await {
            Err(DownloadError::Unauthorized) => {
                if !source.renew().await {
                    return Err(DownloadError::Unauthorized);
                }
                let (request, api) = source.request(&job.source).await?;
                download_to(request, &target, limits, api).await
            }
            other => other,
        }
    }

    fn source(&self, provider: Provider) -> Result<&Arc<dyn RecordingSource>, DownloadError> {
        self.sources.get(&provider).ok_or_else(|| {
            permanent(&format!(
                "no downloader for provider {:?}",
                provider.as_str()
            ))
        })
    }
}

pub fn permanent(reason: &str) -> DownloadError {
    DownloadError::Permanent {
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_provider_without_a_downloader_is_refused() {
        let fetcher = Fetcher {
            sources: HashMap::new(),
            root: PathBuf::from("/nonexistent"),
            limits: Limits::default(),
        };
        match fetcher.source(Provider::Telecmi) {
            Err(DownloadError::Permanent { reason }) => {
                assert!(reason.contains("no downloader"), "{reason}")
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("a downloader for an unknown provider"),
        }
    }
}
