//! The HTTP endpoints of `fermata run --listen ADDR`: liveness and readiness
//! probes for Kubernetes, Prometheus metrics of the passes, and a push
//! webhook so a GitHub or Gitea push is reconciled without waiting for the
//! interval.
//!
//! The server only reads what the run loop reports (through
//! [`ServeState::observe`]) and only writes by sending on the loop's trigger
//! channel: it never touches the reconciler itself.

mod metrics;
mod webhook;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::mpsc;

use crate::reconcile::PassOutcome;
use metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("webhook secret {path}: {source}")]
    SecretRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("webhook secret {path} is empty: an empty key would accept any sender")]
    SecretEmpty { path: PathBuf },
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything the handlers share: filled by the run loop, read by requests.
pub struct ServeState {
    metrics: Metrics,
    /// Set once the first pass has completed.
    ready: AtomicBool,
    /// The webhook's HMAC key; `None` disables `/hooks/git`.
    secret: Option<Vec<u8>>,
    branches: Vec<String>,
    trigger: mpsc::Sender<&'static str>,
}

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
            secret,
            branches,
            trigger,
        }
    }

    /// Records one pass: metrics, and readiness from the first one on.
    pub fn observe(&self, outcome: &PassOutcome<'_>) {
        self.metrics.observe(outcome);
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// Reads a webhook secret file; surrounding whitespace (a trailing newline
/// from `echo` or a Kubernetes Secret) is not part of the key.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, ServeError> {
    let raw = std::fs::read(path).map_err(|source| ServeError::SecretRead {
        path: path.to_path_buf(),
        source,
    })?;
    let key = raw.trim_ascii();
    if key.is_empty() {
        return Err(ServeError::SecretEmpty {
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
        .with_state(state)
}

/// Serves [`app`] on `listener` until `shutdown` completes, then lets
/// requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ServeState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn readyz(
    axum::extract::State(state): axum::extract::State<Arc<ServeState>>,
) -> impl IntoResponse {
    if state.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no pass completed yet")
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
