//! STUB: the artifact store is being written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::model::{Artifact, Digest};
use crate::source::Snapshot;

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("artifact {name}: {message}")]
    Fetch { name: String, message: String },
}

/// Content-addressed artifact store under the state directory.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
}

impl ArtifactStore {
    pub fn new(state_dir: &Path) -> Result<ArtifactStore, StageError> {
        Ok(ArtifactStore {
            root: state_dir.join("artifacts"),
        })
    }

    /// Where the verified file of `digest` lives (whether or not it is there yet).
    pub fn path_of(&self, digest: &Digest) -> PathBuf {
        self.root.join("sha256").join(digest.to_hex())
    }

    /// Fetches every distinct artifact once (by digest), concurrently.
    pub async fn fetch_all(
        &self,
        artifacts: &[Artifact],
        _snap: &Snapshot,
    ) -> BTreeMap<Digest, Result<PathBuf, StageError>> {
        artifacts
            .iter()
            .map(|a| {
                (
                    a.sha256,
                    Err(StageError::Fetch {
                        name: a.name.clone(),
                        message: "not implemented".into(),
                    }),
                )
            })
            .collect()
    }
}
