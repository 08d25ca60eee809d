//! STUB: writing status to the status branch is being written.

use std::path::PathBuf;

use super::DeploymentStatus;
use crate::target::SourceRef;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("status branch {branch}: {message}")]
    Git { branch: String, message: String },
}

/// One pass's statuses for one source branch.
#[derive(Debug, Clone)]
pub struct StatusUpdate {
    pub source: SourceRef,
    /// Every composition of the branch: status files not listed are removed.
    pub statuses: Vec<DeploymentStatus>,
    /// `main@3f2a1c0: 12 installed, 3 staged, 1 failed`: commit subject and note.
    pub summary: String,
    /// `summary.md`: a table a person reads on the forge.
    pub table: String,
}

/// The status branch of a repository.
#[derive(Debug, Clone)]
pub struct StatusRepo {
    git_dir: PathBuf,
    remote: Option<String>,
    branch: String,
    site: Option<String>,
}

impl StatusRepo {
    pub fn new(
        git_dir: PathBuf,
        remote: Option<String>,
        branch: impl Into<String>,
        site: Option<String>,
    ) -> Self {
        StatusRepo {
            git_dir,
            remote,
            branch: branch.into(),
            site,
        }
    }

    /// Commits the update if any status differs (time stamps aside); returns the new commit.
    pub fn publish(&self, _update: &StatusUpdate) -> Result<Option<git2::Oid>, StatusError> {
        let _ = (&self.git_dir, &self.remote, &self.site);
        Err(StatusError::Git {
            branch: self.branch.clone(),
            message: "not implemented".into(),
        })
    }

    /// The latest statuses on the branch (of this site).
    pub fn read(&self) -> Result<Vec<DeploymentStatus>, StatusError> {
        Ok(Vec::new())
    }
}
