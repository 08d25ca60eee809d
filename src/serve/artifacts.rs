//! `GET /artifacts/sha256/<digest>`: the artifact store, read-only, for the
//! Jobs that deliver artifacts to a Kubernetes claim at stage (see
//! `target/kube/deliver.rs`). Only with `--artifact-token-file`: every
//! request carries `Authorization: Bearer <token>` (compared in constant
//! time), else `401`; without a token configured the route answers `404`,
//! so a store is never served to whoever can reach the port.
//!
//! The file is served as the store holds it: the store only ever holds a
//! file under the digest it hashes to (invariant 7), and the Job verifies
//! sha256 and size again on its side, since bytes can change in transit.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::ServeState;
use crate::model::Digest;

/// Where the store's verified files are and the token that reads them.
#[derive(Clone)]
pub struct ArtifactAccess {
    /// `<state-dir>/artifacts/sha256`.
    pub dir: PathBuf,
    pub token: Vec<u8>,
}

impl std::fmt::Debug for ArtifactAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactAccess")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(super) async fn get(
    State(state): State<Arc<ServeState>>,
    Path(hex): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(access) = &state.artifacts else {
        return (StatusCode::NOT_FOUND, "no artifact token configured").into_response();
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if !bearer.is_some_and(|t| constant_time_eq(t.as_bytes(), &access.token)) {
        return (StatusCode::UNAUTHORIZED, "a valid bearer token is required").into_response();
    }
    let Ok(digest) = hex.parse::<Digest>() else {
        return (
            StatusCode::BAD_REQUEST,
            "not a sha256 digest (64 hex digits)",
        )
            .into_response();
    };
    let path = access.dir.join(digest.to_hex());
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (StatusCode::NOT_FOUND, "no such artifact in the store").into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "artifact unreadable");
            return (StatusCode::INTERNAL_SERVER_ERROR, "artifact unreadable").into_response();
        }
    };
    let len = file.metadata().await.map(|m| m.len()).ok();
    let stream = tokio_util_stream(file);
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(len) = len.and_then(|l| header::HeaderValue::from_str(&l.to_string()).ok()) {
        h.insert(header::CONTENT_LENGTH, len);
    }
    resp
}

/// The file as a stream of chunks, without loading it whole.
fn tokio_util_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> + Send {
    use tokio::io::AsyncReadExt;
    futures_util::stream::unfold(Some(file), |state| async move {
        let mut file = state?;
        let mut buf = vec![0u8; 64 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}
