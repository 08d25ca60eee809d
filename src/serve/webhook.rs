//! `POST /hooks/git`: a GitHub or Gitea push webhook. Only a body signed
//! with the shared secret can wake the run loop; everything else is refused
//! before the body is even parsed.

use std::collections::{HashSet, VecDeque};
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

/// The delivery id headers: GitHub's, Gitea's (Gitea sends GitHub's too).
const DELIVERY: [&str; 2] = ["x-github-delivery", "x-gitea-delivery"];

/// How many delivery ids are remembered.
const REMEMBERED: usize = 1000;

/// The ids of the last [`REMEMBERED`] signed deliveries: a replay of one
/// (a captured request sent again) is answered and ignored. Forgetting the
/// oldest keeps memory bounded; a replay older than that is still only one
/// more wake-up, coalesced and rate-limited by the run loop.
#[derive(Debug, Default)]
pub(super) struct Deliveries {
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl Deliveries {
    /// Whether `id` was not seen among the remembered ones; remembers it.
    fn first(&mut self, id: &str) -> bool {
        // Ids are GUIDs; a longer header is cut, never stored whole.
        let id: String = id.chars().take(128).collect();
        if self.ids.contains(&id) {
            return false;
        }
        if self.order.len() >= REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.ids.insert(id.clone());
        self.order.push_back(id);
        true
    }
}

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
    // Only signed deliveries are remembered: an attacker without the
    // secret cannot fill the set to push real ids out.
    let delivery = DELIVERY
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()));
    if let Some(id) = delivery {
        let mut seen = state.deliveries.lock().unwrap_or_else(|e| e.into_inner());
        if !seen.first(id) {
            tracing::info!(delivery = id, "webhook delivery replayed: ignored");
            return (StatusCode::OK, format!("duplicate delivery {id} ignored"));
        }
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
