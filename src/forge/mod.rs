//! Forges: the hosting services pull requests live on (GitHub, Gitea or
//! Forgejo, GitLab). fermata uses them for four things only: listing open
//! pull requests against watched branches, keeping one plan comment per pull
//! request and site up to date, posting commit statuses, and opening the
//! pull request of a campaign's promote (`pullRequest: true`). Everything
//! else it learns from Git itself.

use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub mod config;
pub mod gitea;
pub mod github;
pub mod gitlab;
pub mod http;
pub mod token;

pub use config::{ForgeArgs, ForgeKind};
pub use gitea::Gitea;
pub use github::GitHub;
pub use gitlab::GitLab;
pub use http::HttpSettings;
pub use token::Token;

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
    /// The forge's rate limit is exhausted and resets later than fermata
    /// waits ([`HttpSettings::max_rate_limit_wait`]): try again after `resets_at`.
    #[error("{forge}: {method} {url}: rate limited until {}: {message}",
        resets_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))]
    RateLimited {
        forge: &'static str,
        method: String,
        url: String,
        resets_at: DateTime<Utc>,
        message: String,
    },
    #[error("forge configuration: {0}")]
    Config(String),
}

impl ForgeError {
    /// Whether the forge may have acted on the request although it failed
    /// (a 5xx answer, a lost connection): worth checking, then trying again.
    fn may_have_landed(&self) -> bool {
        match self {
            ForgeError::Http { status, .. } => *status >= 500,
            ForgeError::Transport { .. } => true,
            _ => false,
        }
    }
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
    /// Opens a pull request from branch `head` of this repository into
    /// `base`, or returns the open one from `head` into `base` there already
    /// is: never a second one (a campaign step may run again after a crash).
    async fn open_pull_request(
        &self,
        head: &str,
        base: &str,
        title: &str,
        body: &str,
    ) -> Result<PullRequest, ForgeError>;
}

/// How each provider creates a pull request, for the shared [`open`].
#[async_trait]
pub(crate) trait Pulls: Sync {
    fn client(&self) -> &http::Client;
    /// Open pull requests into `base`.
    async fn list_open(&self, base: &str) -> Result<Vec<PullRequest>, ForgeError>;
    /// Creates one, sent once ([`http::Replay::Once`]).
    async fn create(
        &self,
        head: &str,
        base: &str,
        title: &str,
        body: &str,
    ) -> Result<PullRequest, ForgeError>;
    /// Whether an error answer to [`Pulls::create`] says such a pull request
    /// is open already (GitHub 422 "A pull request already exists", Gitea
    /// 409, GitLab 409 "Another open merge request already exists").
    fn exists_already(&self, e: &ForgeError) -> bool;
}

/// [`Forge::open_pull_request`] for every provider: the open one from `head`
/// (of this repository, not a fork) into `base` if there is one, else a new
/// one. When creating fails in a way that may have created it anyway, or
/// because one appeared meanwhile, the open ones are listed again before
/// anything else: a lost answer never becomes a second pull request.
pub(crate) async fn open<P: Pulls + ?Sized>(
    api: &P,
    head: &str,
    base: &str,
    title: &str,
    body: &str,
) -> Result<PullRequest, ForgeError> {
    let mut failures = 0;
    loop {
        let open = api.list_open(base).await?;
        if let Some(found) = open
            .into_iter()
            .find(|p| p.head_branch == head && !p.from_fork)
        {
            return Ok(found);
        }
        match api.create(head, base, title, body).await {
            Ok(p) => return Ok(p),
            Err(e)
                if (e.may_have_landed() || api.exists_already(&e))
                    && failures < api.client().settings().retries =>
            {
                failures += 1;
                let wait = api.client().backoff(failures);
                tracing::warn!(forge = api.client().kind(), head, base, error = %e, retry = failures,
                    "opening the pull request may have failed; looking for it before trying again");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One comment, as [`upsert`] needs it.
#[derive(Debug, Clone)]
pub(crate) struct Comment {
    pub id: u64,
    pub body: String,
}

/// The three comment calls every provider has, for the shared [`upsert`].
/// Creating and editing are the same `{"body": …}` request on every forge;
/// only where it goes (and GitLab's PUT for GitHub's PATCH) differs.
#[async_trait]
pub(crate) trait Comments: Sync {
    fn client(&self) -> &http::Client;
    /// Where the comments of pull request `number` are listed and created.
    fn comments_url(&self, number: u64) -> reqwest::Url;
    /// How and where comment `id` of pull request `number` is edited.
    fn comment_url(&self, number: u64, id: u64) -> (reqwest::Method, reqwest::Url);
    /// Every comment of pull request `number` written by people (not the
    /// forge's own system notes), oldest first.
    async fn list_comments(&self, number: u64) -> Result<Vec<Comment>, ForgeError>;

    /// Creates a comment, sent once ([`http::Replay::Once`]); returns its id.
    async fn create_comment(&self, number: u64, body: &str) -> Result<u64, ForgeError> {
        #[derive(serde::Deserialize)]
        struct Created {
            id: u64,
        }
        let created: Created = self
            .client()
            .send_json(
                reqwest::Method::POST,
                &self.comments_url(number),
                &serde_json::json!({ "body": body }),
                http::Replay::Once,
            )
            .await?;
        Ok(created.id)
    }

    async fn update_comment(&self, number: u64, id: u64, body: &str) -> Result<(), ForgeError> {
        let (method, url) = self.comment_url(number, id);
        self.client()
            .send(
                method,
                &url,
                Some(&serde_json::json!({ "body": body })),
                http::Replay::Safe,
            )
            .await?;
        Ok(())
    }
}

/// [`Forge::upsert_comment`] for every provider. The oldest comment holding
/// the marker is the one kept: later ones may be people quoting it. A body
/// without the marker gets it appended, or the next upsert would not find it
/// and add a second comment. An unchanged body costs no write (no "edited"
/// mark, no notification). When creating fails in a way that may have
/// created it anyway (a 5xx from a proxy that timed out, a dropped
/// connection), the comments are listed again before the next try, so a lost
/// answer never becomes a duplicate comment.
pub(crate) async fn upsert<C: Comments + ?Sized>(
    api: &C,
    number: u64,
    marker: &str,
    body: &str,
) -> Result<u64, ForgeError> {
    let kind = api.client().kind();
    if marker.trim().is_empty() {
        return Err(ForgeError::Config(format!(
            "{kind}: upsert_comment needs a non-empty marker: an empty one matches every comment"
        )));
    }
    let body = if body.contains(marker) {
        body.to_string()
    } else {
        format!("{body}\n\n{marker}")
    };
    let mut failures = 0;
    loop {
        let comments = api.list_comments(number).await?;
        if let Some(found) = comments.iter().find(|c| c.body.contains(marker)) {
            if found.body != body {
                api.update_comment(number, found.id, &body).await?;
            }
            return Ok(found.id);
        }
        match api.create_comment(number, &body).await {
            Ok(id) => return Ok(id),
            Err(e) if e.may_have_landed() && failures < api.client().settings().retries => {
                failures += 1;
                let wait = api.client().backoff(failures);
                tracing::warn!(forge = kind, number, error = %e, retry = failures,
                    "creating the comment may have failed; looking for it before trying again");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// An error answer `status` whose message says the thing exists already.
pub(crate) fn exists_already(e: &ForgeError, status: u16) -> bool {
    matches!(e, ForgeError::Http { status: s, message, .. }
        if *s == status && message.to_ascii_lowercase().contains("already exist"))
}

/// `text` cut to at most `max` characters (not bytes), for forges that refuse
/// longer status descriptions.
pub(crate) fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) if max > 0 => {
            let keep = text[..i].char_indices().nth(max - 1).map_or(i, |(j, _)| j);
            format!("{}\u{2026}", &text[..keep])
        }
        Some(_) => String::new(),
        None => text.to_string(),
    }
}

/// A commit status as GitHub takes it, and Gitea, which copied the shape
/// and the state words: POSTed to `url` with the description cut to `limit`.
async fn post_github_status(
    client: &http::Client,
    url: &reqwest::Url,
    status: &CommitStatus,
    limit: usize,
) -> Result<(), ForgeError> {
    let state = match status.state {
        CommitState::Pending => "pending",
        CommitState::Success => "success",
        CommitState::Failure => "failure",
        CommitState::Error => "error",
    };
    let mut body = serde_json::json!({
        "state": state,
        "context": status.context,
        "description": truncate_chars(&status.description, limit),
    });
    if let Some(target) = &status.target_url {
        body["target_url"] = serde_json::json!(target);
    }
    client
        .send(reqwest::Method::POST, url, Some(&body), http::Replay::Safe)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_counts_characters_and_marks_the_cut() {
        assert_eq!(truncate_chars("short", 140), "short");
        let long = "é".repeat(200);
        let cut = truncate_chars(&long, 140);
        assert_eq!(cut.chars().count(), 140);
        assert!(cut.ends_with('\u{2026}'));
        assert_eq!(truncate_chars(&"a".repeat(140), 140), "a".repeat(140));
    }
}
