//! Gitea and Forgejo, API v1 (`/api/v1`, token in `Authorization: token T`).
//!
//! Pull requests: `GET /repos/{o}/{r}/pulls?state=open&page=P&limit=L`, pages
//! by `Link: rel="next"` or, failing that, `X-Total-Count`. The base branch is
//! filtered here: only recent Gitea versions know `base_branch` (it is sent
//! anyway, and ignored by the others). One by `GET /repos/{o}/{r}/pulls/{n}`.
//! Comments: `GET /repos/{o}/{r}/issues/{n}/comments`, which Gitea answers
//! with every comment at once (it takes no page parameters; a `Link` header
//! would still be followed), then `PATCH /repos/{o}/{r}/issues/comments/{id}`
//! or `POST /repos/{o}/{r}/issues/{n}/comments`. Statuses:
//! `POST /repos/{o}/{r}/statuses/{sha}` (Gitea's states: pending, success,
//! error, failure, warning; fermata uses the first four). Campaign pull
//! requests: `POST /repos/{o}/{r}/pulls` with `head`, `base`, `title` and
//! `body` (201; 409 "pull request already exists for these targets" when one
//! is open; 404 when a branch does not exist).

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT};
use reqwest::Method;
use serde::Deserialize;

use super::github::split_owner_name;
use super::http::{self, Auth, Client, HttpSettings, Pager};
use super::token::Token;
use super::{CommitStatus, Forge, ForgeError, PrState, PullRequest};

/// Gitea documents no limit (the body is a database text column), so the
/// same figure as GitHub's: a plan that fits one forge fits the other, and
/// the page stays readable.
pub const COMMENT_LIMIT: usize = 65_536;

/// Gitea documents no limit either; kept short, as the UI shows one line.
const DESCRIPTION_LIMIT: usize = 255;

/// Gitea's default `MAX_RESPONSE_ITEMS`; a server set lower answers fewer
/// items per page and the pagination headers still say where the next one is.
const LIMIT: usize = 50;

/// A Gitea or Forgejo repository's pull requests, comments and statuses.
#[derive(Debug, Clone)]
pub struct Gitea {
    client: Client,
    owner: String,
    name: String,
}

impl Gitea {
    /// `url`: the server (`https://git.example.com`, `/api/v1` is appended)
    /// or its API root. `repo`: `OWNER/NAME`.
    pub fn new(
        url: &str,
        repo: &str,
        token: Token,
        settings: HttpSettings,
    ) -> Result<Gitea, ForgeError> {
        let base = http::with_api_path(http::parse_base("gitea", url)?, "/api/v1");
        let (owner, name) = split_owner_name("gitea", repo)?;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let client = Client::new("gitea", base, Auth::Token, token, headers, settings)?;
        Ok(Gitea {
            client,
            owner,
            name,
        })
    }

    fn repo_url(&self, rest: &[&str]) -> reqwest::Url {
        let mut segments = vec!["repos", &self.owner, &self.name];
        segments.extend_from_slice(rest);
        self.client.url(&segments)
    }
}

#[derive(Debug, Deserialize)]
struct Pull {
    number: u64,
    #[serde(default)]
    title: String,
    state: String,
    #[serde(default)]
    merged: bool,
    #[serde(default)]
    merge_commit_sha: Option<String>,
    head: Branch,
    base: Branch,
}

#[derive(Debug, Deserialize)]
struct Branch {
    #[serde(rename = "ref")]
    name: String,
    sha: String,
    #[serde(default)]
    repo_id: u64,
    /// `null` when the fork was deleted.
    #[serde(default)]
    repo: Option<Repo>,
}

#[derive(Debug, Deserialize)]
struct Repo {
    #[serde(default)]
    id: u64,
    full_name: String,
}

impl Branch {
    /// The repository's id, from `repo_id` or the embedded repository; 0 when unknown.
    fn repo_id(&self) -> u64 {
        match (self.repo_id, &self.repo) {
            (0, Some(r)) => r.id,
            (id, _) => id,
        }
    }
}

impl Pull {
    fn into_pull_request(self) -> PullRequest {
        let from_fork = match (&self.head.repo, &self.base.repo) {
            (None, _) => true,
            (Some(head), Some(base)) => {
                let (h, b) = (self.head.repo_id(), self.base.repo_id());
                if h != 0 && b != 0 {
                    h != b
                } else {
                    !head.full_name.eq_ignore_ascii_case(&base.full_name)
                }
            }
            (Some(_), None) => false,
        };
        let state = if self.merged {
            PrState::Merged {
                merge_commit: self.merge_commit_sha,
            }
        } else if self.state == "open" {
            PrState::Open
        } else {
            PrState::Closed
        };
        PullRequest {
            number: self.number,
            title: self.title,
            base: self.base.name,
            head_branch: self.head.name,
            head_sha: self.head.sha,
            from_fork,
            head_ref: format!("refs/pull/{}/head", self.number),
            state,
        }
    }
}

#[derive(Debug, Deserialize)]
struct IssueComment {
    id: u64,
    #[serde(default)]
    body: String,
}

#[async_trait]
impl Forge for Gitea {
    fn kind(&self) -> &'static str {
        "gitea"
    }

    fn comment_limit(&self) -> usize {
        COMMENT_LIMIT
    }

    async fn open_pull_requests(&self, base: &str) -> Result<Vec<PullRequest>, ForgeError> {
        let mut url = self.repo_url(&["pulls"]);
        url.query_pairs_mut()
            .append_pair("state", "open")
            .append_pair("base_branch", base)
            .append_pair("page", "1")
            .append_pair("limit", &LIMIT.to_string());
        let pulls: Vec<Pull> = self
            .client
            .get_pages(url, Pager::Gitea { limit: LIMIT })
            .await?;
        Ok(pulls
            .into_iter()
            .map(Pull::into_pull_request)
            .filter(|p| p.base == base && p.state == PrState::Open)
            .collect())
    }

    async fn pull_request(&self, number: u64) -> Result<PullRequest, ForgeError> {
        let url = self.repo_url(&["pulls", &number.to_string()]);
        let pull: Pull = self.client.get_json(&url).await?;
        Ok(pull.into_pull_request())
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
        let url = self.repo_url(&["statuses", sha]);
        super::post_github_status(&self.client, &url, status, DESCRIPTION_LIMIT).await
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
impl super::Pulls for Gitea {
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
        let url = self.repo_url(&["pulls"]);
        let request = serde_json::json!({"head": head, "base": base, "title": title, "body": body});
        let pull: Pull = self
            .client
            .send_json(Method::POST, &url, &request, http::Replay::Once)
            .await?;
        Ok(pull.into_pull_request())
    }

    fn exists_already(&self, e: &ForgeError) -> bool {
        super::exists_already(e, 409)
    }
}

#[async_trait]
impl super::Comments for Gitea {
    fn client(&self) -> &Client {
        &self.client
    }

    fn comments_url(&self, number: u64) -> reqwest::Url {
        self.repo_url(&["issues", &number.to_string(), "comments"])
    }

    fn comment_url(&self, _number: u64, id: u64) -> (Method, reqwest::Url) {
        (
            Method::PATCH,
            self.repo_url(&["issues", "comments", &id.to_string()]),
        )
    }

    async fn list_comments(&self, number: u64) -> Result<Vec<super::Comment>, ForgeError> {
        let url = self.comments_url(number);
        // No page parameters: Gitea ignores them here and answers everything;
        // `Pager::Link` so that an answer of exactly `limit` items is not
        // mistaken for a full page of more.
        let comments: Vec<IssueComment> = self.client.get_pages(url, Pager::Link).await?;
        Ok(comments
            .into_iter()
            .map(|c| super::Comment {
                id: c.id,
                body: c.body,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_or_api_root_both_work() {
        let t = || Token::new("t").unwrap();
        for url in ["https://git.example.com", "https://git.example.com/api/v1/"] {
            let g = Gitea::new(url, "a/b", t(), HttpSettings::default()).unwrap();
            assert_eq!(
                g.repo_url(&["pulls"]).as_str(),
                "https://git.example.com/api/v1/repos/a/b/pulls"
            );
        }
    }

    #[test]
    fn fork_by_repo_id_and_merged_by_flag() {
        let p: Pull = serde_json::from_str(
            r#"{"number":3,"title":"t","state":"closed","merged":true,"merge_commit_sha":"m",
            "head":{"ref":"f","sha":"h","repo_id":9,"repo":{"id":9,"full_name":"x/b"}},
            "base":{"ref":"main","sha":"b","repo_id":1,"repo":{"id":1,"full_name":"a/b"}}}"#,
        )
        .unwrap();
        let p = p.into_pull_request();
        assert!(p.from_fork);
        assert_eq!(p.head_ref, "refs/pull/3/head");
        assert_eq!(
            p.state,
            PrState::Merged {
                merge_commit: Some("m".into())
            }
        );
    }
}
