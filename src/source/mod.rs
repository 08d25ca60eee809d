//! Reading the watched repository out of Git.
//!
//! A [`Source`] fetches, resolves a revision and hands out a [`Snapshot`] of
//! its tree. Nothing here checks files out: everything is read from the object
//! database, so any commit can be loaded while the branch moves on.

mod git;
mod snapshot;
mod trust;

use std::fmt;

pub(crate) use git::{callbacks, is_url, remote_error, writer_lock};
pub use git::{set_timeouts, GitSource, GitTimeouts};
pub use snapshot::{split, Entry, PathError, Snapshot, MAX_FILE_SIZE};
pub use trust::{
    parse_allowed_signers, AllowedSigner, Keyring, SignaturePolicy, Signer, SignerSeen, TrustError,
    UntrustedCommit,
};

/// A commit of the watched repository.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Revision(pub git2::Oid);

impl Revision {
    /// Seven hex digits, as `git log --oneline` shows.
    pub fn short(&self) -> String {
        self.0.to_string()[..7].to_string()
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Revision({})", self.short())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot open repository {url}")]
    Open {
        url: String,
        #[source]
        source: git2::Error,
    },
    #[error("cannot create mirror of {url} at {path}")]
    Mirror {
        url: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock the mirror of {url} at {path}")]
    Lock {
        url: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot fetch {url}")]
    Fetch {
        url: String,
        #[source]
        source: git2::Error,
    },
    #[error("revision {rev:?} not found in {url}")]
    Resolve {
        url: String,
        rev: String,
        #[source]
        source: git2::Error,
    },
    #[error("cannot read the working tree of {path}")]
    WorkTree {
        path: String,
        #[source]
        source: git2::Error,
    },
    /// A blocking git call panicked or was cancelled.
    #[error("git task failed: {0}")]
    Task(String),
    #[error("cannot read the tree of {rev} in {url}")]
    Read {
        url: String,
        rev: Revision,
        #[source]
        source: git2::Error,
    },
}

/// Where the desired state comes from. Held as `Arc<dyn Source>` so the
/// reconciler can be driven by fakes in tests; async, so an implementation
/// that blocks (git2) does it off the runtime, inside itself ([`GitSource`]).
#[async_trait::async_trait]
pub trait Source: Send + Sync {
    /// The repository as the user named it (URL or path).
    fn url(&self) -> &str;
    /// Brings the local copy up to date with the remote; a no-op for a local repository.
    async fn fetch(&self) -> Result<(), SourceError>;
    /// A branch, tag, commit id or any `git rev-parse` expression, to a commit.
    async fn resolve(&self, rev: &str) -> Result<Revision, SourceError>;
    /// Every file of the commit's tree.
    async fn snapshot(&self, rev: Revision) -> Result<Snapshot, SourceError>;
    /// Whether the commit passes `policy` at `now` (keys expire); checked
    /// before anything of it is loaded.
    async fn verify(
        &self,
        rev: Revision,
        policy: &SignaturePolicy,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Signer, UntrustedCommit>;
    /// The git directory read from (the repository itself, or its mirror):
    /// where status is committed, and what is watched for pushes.
    fn git_dir(&self) -> &std::path::Path;
    /// The URL mirrored, if the repository is not read in place.
    fn remote(&self) -> Option<&str>;
    /// The branch the remote's (or the repository's) HEAD names.
    async fn default_branch(&self) -> Option<String>;
    /// Whether `new` has `old` in its history (false when either is unknown):
    /// a branch that moved otherwise was force-pushed.
    async fn is_descendant(&self, new: Revision, old: Revision) -> bool;
    /// Fetches one ref (a pull request head) and checks it is `sha`.
    async fn fetch_ref(&self, refname: &str, sha: &str) -> Result<Revision, SourceError>;
    /// Every branch and its head.
    async fn branches(&self) -> Result<Vec<(String, Revision)>, SourceError>;
}

/// The commit a desired state was rendered from: what status and targets
/// record as its source.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceRef {
    pub branch: String,
    /// Full hex commit id.
    pub commit: String,
}
