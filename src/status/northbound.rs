//! Margo northbound: each changed `DeploymentStatusManifest` is sent to the
//! workload orchestration software (WOS) as a device reports it (`fermata
//! run --margo-wos`).
//!
//! The request is Margo's device status endpoint, as the specification
//! states it in `system-design/margo-api-reference/workload-api/device-api/
//! deployment-status.md` (github.com/margo/specification, commit d350674,
//! 2024-10-23): `POST /device/{deviceId}/deployment/{deploymentId}/status`
//! with the manifest as JSON body; `201` when added or updated. `deviceId`
//! is `--margo-client-id`; the token from `--margo-token-file` is sent as
//! `Authorization: Bearer`.
//!
//! Never in the way of reconciliation: [`Northbound::offer`] only puts the
//! manifests that differ from the last one sent into a map keyed by
//! deployment (the latest wins, so the queue is bounded by the number of
//! deployments, and at most [`MAX_QUEUED`]); a background task sends them,
//! each request with a timeout, retrying with exponential backoff. What was
//! last sent is remembered in the state directory, so a restart sends
//! nothing that did not change.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::margo::DeploymentStatusManifest;
use super::{DeploymentStatus, State, StatusError, StatusSink, StatusUpdate};
use crate::model::Digest;

/// Deployments waiting to be sent at most; past it new ones are dropped
/// (logged) until the WOS takes some.
pub const MAX_QUEUED: usize = 10_000;

/// Where and how to send.
#[derive(Debug, Clone)]
pub struct NorthboundConfig {
    /// The WOS's base URL (`https://wos.example.com/margo`).
    pub wos: String,
    /// Margo's `deviceId` (`--margo-client-id`).
    pub client_id: String,
    pub token: String,
    /// Remembers what was last sent, per deployment (`margo-sent.json`).
    pub sent_file: PathBuf,
    /// Every request's timeout.
    pub timeout: Duration,
    /// The first retry's wait; doubled per failure up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl NorthboundConfig {
    /// Defaults: 10 s per request, retries from 1 s up to 5 min.
    pub fn new(wos: &str, client_id: &str, token: &str, state_dir: &std::path::Path) -> Self {
        NorthboundConfig {
            wos: wos.trim_end_matches('/').to_string(),
            client_id: client_id.to_string(),
            token: token.to_string(),
            sent_file: state_dir.join("margo-sent.json"),
            timeout: Duration::from_secs(10),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NorthboundError {
    #[error("--margo-wos {0}: not an http(s) URL")]
    Url(String),
    #[error("--margo-client-id: {0}")]
    ClientId(String),
    #[error("margo client: {0}")]
    Client(String),
}

#[derive(Default)]
struct Queue {
    /// By deployment id: the body to send and its digest.
    pending: BTreeMap<String, (Digest, Vec<u8>)>,
    /// By deployment id: the digest of the body the WOS accepted last.
    sent: BTreeMap<String, String>,
}

/// The sender: cheap to clone, shared by the pass (which offers) and the
/// background task (which sends).
#[derive(Clone)]
pub struct Northbound {
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
    /// Told whenever a manifest was accepted, for [`Northbound::flush`].
    accepted: Arc<Notify>,
}

impl Northbound {
    /// Starts the background task on the current runtime.
    pub fn start(cfg: NorthboundConfig) -> Result<Northbound, NorthboundError> {
        if !(cfg.wos.starts_with("http://") || cfg.wos.starts_with("https://")) {
            return Err(NorthboundError::Url(cfg.wos));
        }
        if cfg.client_id.is_empty() || cfg.client_id.contains('/') {
            return Err(NorthboundError::ClientId(
                "must be non-empty and without '/'".into(),
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .build()
            .map_err(|e| NorthboundError::Client(e.to_string()))?;
        let sent = std::fs::read(&cfg.sent_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let nb = Northbound {
            queue: Arc::new(Mutex::new(Queue {
                pending: BTreeMap::new(),
                sent,
            })),
            wake: Arc::new(Notify::new()),
            accepted: Arc::new(Notify::new()),
        };
        tokio::spawn(nb.clone().send_loop(client, cfg));
        Ok(nb)
    }

    /// Queues the manifests of `statuses` that differ from what was last
    /// sent (or is queued) for their deployment. Never waits on the WOS.
    pub fn offer(&self, statuses: &[DeploymentStatus]) {
        let mut queued = false;
        let Ok(mut q) = self.queue.lock() else {
            return;
        };
        for s in statuses {
            // Margo has no word for a removal in progress or done.
            if matches!(s.status.state, State::Removing | State::Removed) {
                continue;
            }
            let m = DeploymentStatusManifest::from(s);
            let Ok(body) = serde_json::to_vec(&m) else {
                continue;
            };
            let digest = Digest::of(&body);
            let id = m.deployment_id;
            if q.sent.get(&id) == Some(&digest.to_hex())
                || q.pending.get(&id).is_some_and(|(d, _)| *d == digest)
            {
                continue;
            }
            if !q.pending.contains_key(&id) && q.pending.len() >= MAX_QUEUED {
                tracing::warn!(deployment = %id, "margo: queue full, status not sent");
                continue;
            }
            q.pending.insert(id, (digest, body));
            queued = true;
        }
        drop(q);
        if queued {
            self.wake.notify_one();
        }
    }

    /// Waits until everything queued was accepted, at most `within`; the
    /// manifests still queued then. For `run --once`, whose process would
    /// otherwise end before the background task sent anything.
    pub async fn flush(&self, within: std::time::Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let accepted = self.accepted.notified();
            let left = self.queue.lock().map(|q| q.pending.len()).unwrap_or(0);
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, accepted).await.is_err() {
                return left;
            }
        }
    }

    async fn send_loop(self, client: reqwest::Client, cfg: NorthboundConfig) {
        let mut wait = cfg.backoff;
        loop {
            let next = self
                .queue
                .lock()
                .ok()
                .and_then(|q| q.pending.iter().next().map(|(k, v)| (k.clone(), v.clone())));
            let Some((id, (digest, body))) = next else {
                self.wake.notified().await;
                continue;
            };
            let Some(url) = status_url(&cfg.wos, &cfg.client_id, &id) else {
                tracing::warn!(deployment = %id, wos = %cfg.wos, "margo: no status URL for it");
                self.mark_sent(&id, digest, &cfg);
                continue;
            };
            let result = client
                .post(url.clone())
                .bearer_auth(&cfg.token)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await;
            match result {
                Ok(r) if r.status().is_success() => {
                    wait = cfg.backoff;
                    self.mark_sent(&id, digest, &cfg);
                    self.accepted.notify_waiters();
                }
                failed => {
                    let why = match failed {
                        Ok(r) => format!("HTTP {}", r.status()),
                        Err(e) => crate::errors::chain(&e),
                    };
                    tracing::warn!(deployment = %id, url = %url, error = %why, retry_in = ?wait, "margo: status not accepted");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(cfg.max_backoff);
                }
            }
        }
    }

    /// `digest` was accepted (or can never be sent) for `id`: dequeued
    /// unless a newer one came.
    fn mark_sent(&self, id: &str, digest: Digest, cfg: &NorthboundConfig) {
        let Ok(mut q) = self.queue.lock() else {
            return;
        };
        if q.pending.get(id).is_some_and(|(d, _)| *d == digest) {
            q.pending.remove(id);
        }
        q.sent.insert(id.to_string(), digest.to_hex());
        match serde_json::to_vec(&q.sent) {
            Ok(b) => {
                let tmp = cfg.sent_file.with_extension("json.tmp");
                if let Err(e) =
                    std::fs::write(&tmp, b).and_then(|()| std::fs::rename(&tmp, &cfg.sent_file))
                {
                    tracing::warn!(file = %cfg.sent_file.display(), error = %e, "margo: cannot remember what was sent");
                }
            }
            Err(e) => tracing::warn!(error = %e, "margo: cannot remember what was sent"),
        }
    }
}

/// `{wos}/device/{client}/deployment/{deployment}/status`, each id one
/// percent-encoded path segment: a site-less deployment id is
/// `symphony/variation`, whose `/` must not become a path separator.
fn status_url(wos: &str, client: &str, deployment: &str) -> Option<reqwest::Url> {
    let mut url = reqwest::Url::parse(wos).ok()?;
    url.path_segments_mut().ok()?.pop_if_empty().extend([
        "device",
        client,
        "deployment",
        deployment,
        "status",
    ]);
    Some(url)
}

/// A [`StatusSink`] that also offers every published status to the WOS:
/// how `fermata run --margo-wos` hooks in without the reconciler knowing.
pub struct NorthboundSink {
    pub inner: Arc<dyn StatusSink>,
    pub northbound: Northbound,
    /// The site whose ids the manifests carry (`--site`).
    pub site: Option<String>,
}

#[async_trait::async_trait]
impl StatusSink for NorthboundSink {
    async fn publish(&self, update: StatusUpdate) -> Result<Option<git2::Oid>, StatusError> {
        self.publish_when(update, Box::new(|| ())).await
    }

    async fn publish_when(
        &self,
        update: StatusUpdate,
        durable: super::Durable,
    ) -> Result<Option<git2::Oid>, StatusError> {
        let mut statuses = update.statuses.clone();
        if let Some(site) = &self.site {
            for s in &mut statuses {
                s.for_site(site);
            }
        }
        let written = self.inner.publish_when(update, durable).await;
        self.northbound.offer(&statuses);
        written
    }

    async fn publish_plan_note(
        &self,
        commit: git2::Oid,
        marker: &str,
        section: &str,
    ) -> Result<bool, StatusError> {
        self.inner.publish_plan_note(commit, marker, section).await
    }

    fn for_site(&self, site: &str) -> Arc<dyn StatusSink> {
        Arc::new(NorthboundSink {
            inner: self.inner.for_site(site),
            northbound: self.northbound.clone(),
            site: Some(site.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_urls_keep_each_id_one_segment() {
        let rows = [
            (
                "http://wos:8080",
                "d1",
                "shop/app",
                "http://wos:8080/device/d1/deployment/shop%2Fapp/status",
            ),
            (
                "https://wos/api/",
                "d1",
                "93a06153-1541",
                "https://wos/api/device/d1/deployment/93a06153-1541/status",
            ),
        ];
        for (wos, client, id, want) in rows {
            assert_eq!(
                super::status_url(wos, client, id)
                    .map(|u| u.to_string())
                    .as_deref(),
                Some(want)
            );
        }
    }
}
