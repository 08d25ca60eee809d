//! Forges: the hosting services pull requests live on (GitHub, Gitea or
//! Forgejo, GitLab). fermata uses them for three things only: listing open
//! pull requests against watched branches, keeping one plan comment per pull
//! request and site up to date, and posting commit statuses. Everything else
//! it learns from Git itself.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A pull request (GitLab: merge request) as fermata needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    /// GitHub/Gitea `number`, GitLab `iid`.
    pub number: u64,
    pub title: String,
    /// The branch it would merge into.
    pub base: String,
    /// The branch name of the head (in the fork, for a fork).
    pub head_branch: String,
    /// Full hex id of the head commit.
    pub head_sha: String,
    /// The head lives in another repository than the base.
    pub from_fork: bool,
    /// The ref of the *base* repository that holds the head commit, which
    /// every forge keeps for forks too: `refs/pull/N/head` (GitHub, Gitea),
    /// `refs/merge-requests/N/head` (GitLab).
    pub head_ref: String,
    pub state: PrState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum PrState {
    Open,
    /// Merged; the commit the merge produced on the base branch, when known.
    Merged {
        merge_commit: Option<String>,
    },
    Closed,
}

/// The state of a commit status (the forge's own vocabulary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommitState {
    Pending,
    Success,
    Failure,
    Error,
}

/// One commit status, `context` being `fermata/SITE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitStatus {
    pub context: String,
    pub state: CommitState,
    /// Short: forges cut it (GitHub at 140 characters); providers truncate.
    pub description: String,
    pub target_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    /// The forge answered with an error status after retries.
    #[error("{forge}: {method} {url}: HTTP {status}: {message}")]
    Http {
        forge: &'static str,
        method: String,
        /// Never carries the token.
        url: String,
        status: u16,
        message: String,
    },
    /// The forge could not be reached (after retries).
    #[error("{forge}: {method} {url}: {message}")]
    Transport {
        forge: &'static str,
        method: String,
        url: String,
        message: String,
    },
    /// The answer was not what the API documents.
    #[error("{forge}: {url}: unexpected response: {message}")]
    Decode {
        forge: &'static str,
        url: String,
        message: String,
    },
    #[error("forge configuration: {0}")]
    Config(String),
}

/// A forge's REST API, as much of it as fermata uses. One value serves one
/// repository (GitHub/Gitea `owner/name`, GitLab project path).
#[async_trait]
pub trait Forge: Send + Sync + fmt::Debug {
    /// `github`, `gitea` or `gitlab`: for logs and errors.
    fn kind(&self) -> &'static str;
    /// The longest comment body the forge accepts, in characters
    /// (GitHub: 65,536). Callers truncate before `upsert_comment`.
    fn comment_limit(&self) -> usize;
    /// Open pull requests whose base is `base`, every page of them.
    async fn open_pull_requests(&self, base: &str) -> Result<Vec<PullRequest>, ForgeError>;
    /// One pull request by number, whatever its state.
    async fn pull_request(&self, number: u64) -> Result<PullRequest, ForgeError>;
    /// Updates the comment of pull request `number` whose body contains
    /// `marker`, or creates it when there is none: never a second comment.
    /// Returns the comment's id.
    async fn upsert_comment(
        &self,
        number: u64,
        marker: &str,
        body: &str,
    ) -> Result<u64, ForgeError>;
    /// Sets the status `status.context` of commit `sha`.
    async fn set_status(&self, sha: &str, status: &CommitStatus) -> Result<(), ForgeError>;
}
