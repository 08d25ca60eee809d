//! GitLab, REST API v4 (`/api/v4`, token in `PRIVATE-TOKEN`).
//!
//! The project is addressed by its URL-encoded path (`group%2Fsub%2Fproject`).
//! Merge requests: `GET /projects/:id/merge_requests?state=opened&target_branch=B&per_page=100`,
//! pages by `Link: rel="next"` or `X-Next-Page`; one by
//! `GET /projects/:id/merge_requests/:iid`. Comments are notes:
//! `GET /projects/:id/merge_requests/:iid/notes?sort=asc&order_by=created_at`
//! (GitLab's default order is newest first), without system notes, then
//! `PUT .../notes/:note_id` or `POST .../notes`. Statuses:
//! `POST /projects/:id/statuses/:sha` with `name` = context and GitLab's
//! states (pending, running, success, failed, canceled). GitLab refuses to
//! set a pending (or running) status to the same state again ("Cannot
//! transition status via :enqueue from :pending"): that answer means the
//! status already is what was asked, and is taken as success. Campaign
//! merge requests: `POST /projects/:id/merge_requests` with `source_branch`,
//! `target_branch`, `title` and `description` (201; 409 "Another open merge
//! request already exists for this source branch: !N" when one is open).

use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::http::{self, Auth, Client, HttpSettings, Pager, Replay};
use super::token::Token;
use super::{truncate_chars, CommitState, CommitStatus, Forge, ForgeError, PrState, PullRequest};

/// GitLab refuses longer notes ("Note is too long (maximum is 1000000 characters)").
pub const COMMENT_LIMIT: usize = 1_000_000;

/// GitLab documents no limit; kept to one short line, as it shows one.
const DESCRIPTION_LIMIT: usize = 255;

/// The largest page GitLab serves.
const PER_PAGE: &str = "100";

/// A GitLab project's merge requests, notes and commit statuses.
#[derive(Debug, Clone)]
pub struct GitLab {
    client: Client,
    project: String,
}

impl GitLab {
    /// `url`: the server (`https://gitlab.example.com`, `/api/v4` is
    /// appended) or its API root. `project`: the project's path,
    /// `group[/subgroup...]/name`.
    pub fn new(
        url: &str,
        project: &str,
        token: Token,
        settings: HttpSettings,
    ) -> Result<GitLab, ForgeError> {
        let base = http::with_api_path(http::parse_base("gitlab", url)?, "/api/v4");
        let project = project.trim().trim_matches('/').trim_end_matches(".git");
        let parts: Vec<&str> = project.split('/').collect();
        if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
            return Err(ForgeError::Config(format!(
                "gitlab: project {project:?} is not a project path like GROUP/NAME or GROUP/SUBGROUP/NAME"
            )));
        }
        let client = Client::new(
            "gitlab",
            base,
            Auth::PrivateToken,
            token,
            Default::default(),
            settings,
        )?;
        Ok(GitLab {
            client,
            project: project.to_string(),
        })
    }

    fn project_url(&self, rest: &[&str]) -> reqwest::Url {
        let mut segments = vec!["projects", &self.project];
        segments.extend_from_slice(rest);
        self.client.url(&segments)
    }
}

#[derive(Debug, Deserialize)]
struct MergeRequest {
    iid: u64,
    #[serde(default)]
    title: String,
    state: String,
    target_branch: String,
    source_branch: String,
    /// The head commit; `null` for a merge request without commits.
    #[serde(default)]
    sha: Option<String>,
    source_project_id: u64,
    target_project_id: u64,
    #[serde(default)]
    merge_commit_sha: Option<String>,
    #[serde(default)]
    squash_commit_sha: Option<String>,
}

impl MergeRequest {
    fn into_pull_request(self) -> Option<PullRequest> {
        let state = match self.state.as_str() {
            // `locked`: being merged right now; still open until it is.
            "opened" | "locked" => PrState::Open,
            // A squash merge without a merge commit (fast-forward) only has
            // the squash commit; a plain fast-forward has neither.
            "merged" => PrState::Merged {
                merge_commit: self.merge_commit_sha.or(self.squash_commit_sha),
            },
            _ => PrState::Closed,
        };
        Some(PullRequest {
            number: self.iid,
            title: self.title,
            base: self.target_branch,
            head_branch: self.source_branch,
            head_sha: self.sha?,
            from_fork: self.source_project_id != self.target_project_id,
            head_ref: format!("refs/merge-requests/{}/head", self.iid),
            state,
        })
    }
}

#[derive(Debug, Deserialize)]
struct Note {
    id: u64,
    #[serde(default)]
    body: String,
    #[serde(default)]
    system: bool,
}

fn state_name(state: CommitState) -> &'static str {
    match state {
        CommitState::Pending => "pending",
        CommitState::Success => "success",
        // GitLab has no separate "error".
        CommitState::Failure | CommitState::Error => "failed",
    }
}

#[async_trait]
impl Forge for GitLab {
    fn kind(&self) -> &'static str {
        "gitlab"
    }

    fn comment_limit(&self) -> usize {
        COMMENT_LIMIT
    }

    async fn open_pull_requests(&self, base: &str) -> Result<Vec<PullRequest>, ForgeError> {
        let mut url = self.project_url(&["merge_requests"]);
        url.query_pairs_mut()
            .append_pair("state", "opened")
            .append_pair("target_branch", base)
            .append_pair("per_page", PER_PAGE);
        let mrs: Vec<MergeRequest> = self.client.get_pages(url, Pager::GitLab).await?;
        let mut out = Vec::with_capacity(mrs.len());
        for mr in mrs {
            let iid = mr.iid;
            match mr.into_pull_request() {
                Some(p) if p.base == base && p.state == PrState::Open => out.push(p),
                Some(_) => {}
                None => tracing::debug!(
                    forge = "gitlab",
                    iid,
                    "merge request without commits: skipped"
                ),
            }
        }
        Ok(out)
    }

    async fn pull_request(&self, number: u64) -> Result<PullRequest, ForgeError> {
        let url = self.project_url(&["merge_requests", &number.to_string()]);
        let mr: MergeRequest = self.client.get_json(&url).await?;
        mr.into_pull_request().ok_or_else(|| ForgeError::Decode {
            forge: "gitlab",
            url: url.to_string(),
            message: format!("merge request !{number} has no head commit (sha is null)"),
        })
    }

    async fn upsert_comment(
        &self,
        number: u64,
        marker: &str,
        body: &str,
    ) -> Result<u64, ForgeError> {
        super::upsert(self, number, marker, body).await
    }

    async fn set_status(&self, sha: &str, status: &CommitStatus) -> Result<(), ForgeError> {
        let url = self.project_url(&["statuses", sha]);
        let mut body = json!({
            "state": state_name(status.state),
            "name": status.context,
            "description": truncate_chars(&status.description, DESCRIPTION_LIMIT),
        });
        if let Some(target) = &status.target_url {
            body["target_url"] = json!(target);
        }
        match self
            .client
            .send(Method::POST, &url, Some(&body), Replay::Safe)
            .await
        {
            Ok(_) => Ok(()),
            Err(ForgeError::Http {
                status: 400,
                message,
                ..
            }) if message.contains("Cannot transition status") => {
                tracing::debug!(forge = "gitlab", sha, context = %status.context,
                    "status already in that state");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn open_pull_request(
        &self,
        head: &str,
        base: &str,
        title: &str,
        body: &str,
    ) -> Result<PullRequest, ForgeError> {
        super::open(self, head, base, title, body).await
    }
}

#[async_trait]
impl super::Pulls for GitLab {
    fn client(&self) -> &Client {
        &self.client
    }

    async fn list_open(&self, base: &str) -> Result<Vec<PullRequest>, ForgeError> {
        self.open_pull_requests(base).await
    }

    async fn create(
        &self,
        head: &str,
        base: &str,
        title: &str,
        body: &str,
    ) -> Result<PullRequest, ForgeError> {
        let url = self.project_url(&["merge_requests"]);
        let request = json!({"source_branch": head, "target_branch": base, "title": title, "description": body});
        let mr: MergeRequest = self
            .client
            .send_json(Method::POST, &url, &request, Replay::Once)
            .await?;
        mr.into_pull_request().ok_or_else(|| ForgeError::Decode {
            forge: "gitlab",
            url: url.to_string(),
            message: "the new merge request has no head commit (sha is null)".into(),
        })
    }

    fn exists_already(&self, e: &ForgeError) -> bool {
        super::exists_already(e, 409)
    }
}

#[async_trait]
impl super::Comments for GitLab {
    fn client(&self) -> &Client {
        &self.client
    }

    fn comments_url(&self, number: u64) -> reqwest::Url {
        self.project_url(&["merge_requests", &number.to_string(), "notes"])
    }

    fn comment_url(&self, number: u64, id: u64) -> (Method, reqwest::Url) {
        let url = self.project_url(&[
            "merge_requests",
            &number.to_string(),
            "notes",
            &id.to_string(),
        ]);
        (Method::PUT, url)
    }

    async fn list_comments(&self, number: u64) -> Result<Vec<super::Comment>, ForgeError> {
        let mut url = self.comments_url(number);
        url.query_pairs_mut()
            .append_pair("sort", "asc")
            .append_pair("order_by", "created_at")
            .append_pair("per_page", PER_PAGE);
        let notes: Vec<Note> = self.client.get_pages(url, Pager::GitLab).await?;
        Ok(notes
            .into_iter()
            .filter(|n| !n.system)
            .map(|n| super::Comment {
                id: n.id,
                body: n.body,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_path_is_one_encoded_segment() {
        let g = GitLab::new(
            "https://gitlab.example.com",
            "acme/platform/fleet",
            Token::new("t").unwrap(),
            HttpSettings::default(),
        )
        .unwrap();
        assert_eq!(
            g.project_url(&["merge_requests"]).as_str(),
            "https://gitlab.example.com/api/v4/projects/acme%2Fplatform%2Ffleet/merge_requests"
        );
        let e = GitLab::new(
            "https://g",
            "fleet",
            Token::new("t").unwrap(),
            HttpSettings::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("GROUP/NAME"), "{e}");
    }

    #[test]
    fn states_map_to_gitlab_vocabulary() {
        assert_eq!(state_name(CommitState::Failure), "failed");
        assert_eq!(state_name(CommitState::Error), "failed");
        assert_eq!(state_name(CommitState::Pending), "pending");
        assert_eq!(state_name(CommitState::Success), "success");
    }
}
