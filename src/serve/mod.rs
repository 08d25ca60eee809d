//! The HTTP endpoints of `fermata run --listen ADDR`: liveness and readiness
//! probes for Kubernetes, Prometheus metrics of the passes, and a push
//! webhook so a GitHub or Gitea push is reconciled without waiting for the
//! interval.
//!
//! The server only reads what the run loop reports (through
//! [`ServeState::observe`]) and only writes by sending on the loop's trigger
//! channel: it never touches the reconciler itself.

mod artifacts;
mod conn;
mod metrics;
mod webhook;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::mpsc;

use crate::reconcile::{PassOutcome, Progress};
pub use artifacts::ArtifactAccess;
pub use conn::{raise_fd_limit, ServeLimits};
use metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{what} {path}: {source}")]
    SecretRead {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} is empty: an empty key would accept any sender")]
    SecretEmpty { what: &'static str, path: PathBuf },
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything the handlers share: filled by the run loop, read by requests.
pub struct ServeState {
    metrics: Metrics,
    /// Set once the first pass has completed.
    ready: AtomicBool,
    /// What the loop is doing; `/readyz` fails once a fetch and pass have
    /// run for longer than `ready_stale`.
    progress: Option<Arc<Progress>>,
    ready_stale: Duration,
    /// The webhook's HMAC key; `None` disables `/hooks/git`.
    secret: Option<Vec<u8>>,
    branches: Vec<String>,
    trigger: mpsc::Sender<&'static str>,
    /// Delivery ids of recent webhooks, so a replayed one is ignored.
    deliveries: Mutex<webhook::Deliveries>,
    /// `GET /artifacts/sha256/<digest>`; `None`: 404.
    artifacts: Option<ArtifactAccess>,
}

/// What `/readyz` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// No pass has completed yet.
    Starting,
    Ready,
    /// The fetch and pass in progress have run this long, longer than
    /// allowed: no pass has completed for that long while one was due, so
    /// the loop is stuck (in a fetch, a target, a hook: wherever).
    Stale(Duration),
}

/// How long `/readyz` waits for a pass before failing, by default.
pub const DEFAULT_READY_STALE: Duration = Duration::from_secs(15 * 60);

impl ServeState {
    /// `branches` are the watched ones (a push elsewhere triggers nothing);
    /// `trigger` is the run loop's wake-up sender ([`crate::reconcile::Triggers::sender`]).
    pub fn new(
        branches: Vec<String>,
        secret: Option<Vec<u8>>,
        trigger: mpsc::Sender<&'static str>,
    ) -> ServeState {
        ServeState {
            metrics: Metrics::new(),
            ready: AtomicBool::new(false),
            progress: None,
            ready_stale: DEFAULT_READY_STALE,
            secret,
            branches,
            trigger,
            deliveries: Mutex::new(webhook::Deliveries::default()),
            artifacts: None,
        }
    }

    /// Serves the artifact store to holders of the token (`--artifact-token-file`).
    pub fn serve_artifacts(mut self, access: ArtifactAccess) -> ServeState {
        self.artifacts = Some(access);
        self
    }

    /// `/readyz` fails once the loop ([`crate::reconcile::Triggers::progress`])
    /// has been in one fetch and pass for longer than `stale` (`--ready-stale`).
    pub fn watch_progress(mut self, progress: Arc<Progress>, stale: Duration) -> ServeState {
        self.progress = Some(progress);
        self.ready_stale = stale;
        self
    }

    /// Records one pass: metrics, and readiness from the first one on.
    pub fn observe(&self, outcome: &PassOutcome<'_>) {
        self.metrics.observe(outcome);
        self.ready.store(true, Ordering::Release);
    }

    /// Ready from the first completed pass on, unless the loop has been
    /// stuck in one fetch and pass for too long: measured here, on request,
    /// so a loop blocked anywhere turns the probe unready. An idle loop
    /// (asleep until its interval) is ready however long it sleeps.
    pub fn readiness(&self) -> Readiness {
        if !self.ready.load(Ordering::Acquire) {
            return Readiness::Starting;
        }
        match self.progress.as_ref().and_then(|p| p.busy_for()) {
            Some(busy) if busy > self.ready_stale => Readiness::Stale(busy),
            _ => Readiness::Ready,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.readiness() == Readiness::Ready
    }
}

/// Reads a secret file (the webhook's secret, the artifact store's token),
/// named `what` in its errors; surrounding whitespace (a trailing newline
/// from `echo` or a Kubernetes Secret) is not part of the key.
pub fn read_secret(path: &Path, what: &'static str) -> Result<Vec<u8>, ServeError> {
    let raw = std::fs::read(path).map_err(|source| ServeError::SecretRead {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let key = raw.trim_ascii();
    if key.is_empty() {
        return Err(ServeError::SecretEmpty {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(key.to_vec())
}

/// The routes, without a listener, so tests drive them with `oneshot`.
pub fn app(state: Arc<ServeState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/hooks/git", post(webhook::push))
        .route("/artifacts/sha256/{digest}", get(artifacts::get))
        .with_state(state)
}

/// Serves [`app`] on `listener` until `shutdown` completes, then lets
/// requests in flight finish; within `limits` (see [`conn`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ServeState>,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    conn::serve(listener, app(state), limits, shutdown).await;
    Ok(())
}

async fn readyz(
    axum::extract::State(state): axum::extract::State<Arc<ServeState>>,
) -> impl IntoResponse {
    let human = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs()));
    match state.readiness() {
        Readiness::Ready => (StatusCode::OK, "ready".to_string()),
        Readiness::Starting => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no pass completed yet".to_string(),
        ),
        Readiness::Stale(ago) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "stuck: no pass completed for {}, the fetch and pass in progress have run longer than --ready-stale {}",
                human(ago),
                human(state.ready_stale)
            ),
        ),
    }
}

async fn metrics(
    axum::extract::State(state): axum::extract::State<Arc<ServeState>>,
) -> impl IntoResponse {
    match state.metrics.encode() {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
