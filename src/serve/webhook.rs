//! `POST /hooks/git`: a GitHub or Gitea push webhook. Only a body signed
//! with the shared secret can wake the run loop; everything else is refused
//! before the body is even parsed.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::mpsc::error::TrySendError;

use super::ServeState;

/// GitHub's header: `sha256=<hex>`.
const GITHUB_SIGNATURE: &str = "x-hub-signature-256";
/// Gitea's header: bare `<hex>` (Gitea also sends GitHub's).
const GITEA_SIGNATURE: &str = "x-gitea-signature";

/// Only `ref` is read: the push names the branch, the fetch gets the rest.
#[derive(serde::Deserialize)]
struct Push {
    r#ref: String,
}

pub(super) async fn push(
    State(state): State<Arc<ServeState>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let Some(secret) = &state.secret else {
        return (StatusCode::NOT_FOUND, "webhook disabled".into());
    };
    if !signed(secret, &headers, &body) {
        return (StatusCode::UNAUTHORIZED, "bad or missing signature".into());
    }
    // Sent once when a hook is created; it has no `ref`.
    let event = ["x-github-event", "x-gitea-event"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()));
    if event == Some("ping") {
        return (StatusCode::OK, "pong".into());
    }
    let push: Push = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("not a push event: {e}")),
    };
    let branch = push.r#ref.strip_prefix("refs/heads/");
    let Some(branch) = branch.filter(|b| state.branches.iter().any(|w| w == b)) else {
        return (
            StatusCode::ACCEPTED,
            format!("{} is not a watched branch: ignored", push.r#ref),
        );
    };
    match state.trigger.try_send("webhook") {
        // Full: a wake-up is already pending, and its pass will fetch this push.
        Ok(()) | Err(TrySendError::Full(_)) => {
            tracing::info!(branch, "push webhook: fetching now");
            (StatusCode::ACCEPTED, format!("fetching {branch}"))
        }
        Err(TrySendError::Closed(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the reconciler is stopping".into(),
        ),
    }
}

/// Whether `body` carries a valid HMAC-SHA256 under `secret`, compared in
/// constant time. GitHub's header wins when both are present.
fn signed(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let hex_sig = if let Some(v) = headers.get(GITHUB_SIGNATURE) {
        v.to_str().ok().and_then(|s| s.strip_prefix("sha256="))
    } else {
        headers.get(GITEA_SIGNATURE).and_then(|v| v.to_str().ok())
    };
    let Some(sig) = hex_sig.and_then(|h| hex::decode(h.trim()).ok()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}
