//! GitHub and GitHub Enterprise Server, REST API v3 (version 2022-11-28).
//!
//! Pull requests: `GET /repos/{o}/{r}/pulls?state=open&base=B&per_page=100`,
//! pages by `Link: rel="next"` (whose targets GitHub writes in its own
//! `/repositories/{id}/...` form: followed as given); one by
//! `GET /repos/{o}/{r}/pulls/{n}`. Plan comments are issue comments (a pull
//! request is an issue): listed by `GET /repos/{o}/{r}/issues/{n}/comments`
//! (ascending ids, paginated), then `PATCH /repos/{o}/{r}/issues/comments/{id}`
//! or `POST /repos/{o}/{r}/issues/{n}/comments`. Statuses:
//! `POST /repos/{o}/{r}/statuses/{sha}` with GitHub's own states (error,
//! failure, pending, success) and a description of at most 140 characters.
//! Campaign pull requests: `POST /repos/{o}/{r}/pulls` with `title`, `head`,
//! `base` and `body` (201 with the pull request; 422 "A pull request already
//! exists for OWNER:BRANCH." when one from that head into that base is open).

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT};
use reqwest::Method;
use serde::Deserialize;

use super::http::{self, Auth, Client, HttpSettings, Pager};
use super::token::Token;
use super::{CommitStatus, Forge, ForgeError, PrState, PullRequest};

/// GitHub.com's API; GitHub Enterprise Server's is `https://HOST/api/v3`.
pub const DEFAULT_API: &str = "https://api.github.com";

/// GitHub refuses longer comment bodies with 422 "Body is too long".
pub const COMMENT_LIMIT: usize = 65_536;

/// GitHub refuses longer status descriptions with 422.
const DESCRIPTION_LIMIT: usize = 140;

/// The largest page GitHub serves.
const PER_PAGE: &str = "100";

/// A GitHub repository's pull requests, comments and statuses.
#[derive(Debug, Clone)]
pub struct GitHub {
    client: Client,
    owner: String,
    name: String,
}

impl GitHub {
    /// `api_base`: [`DEFAULT_API`] (`https://github.com` means it too), or for
    /// GitHub Enterprise Server `https://HOST/api/v3` (a bare `https://HOST`
    /// gets `/api/v3` appended).
    /// `repo`: `OWNER/NAME`.
    pub fn new(
        api_base: &str,
        repo: &str,
        token: Token,
        settings: HttpSettings,
    ) -> Result<GitHub, ForgeError> {
        let mut base = http::parse_base("github", api_base)?;
        let bare = base.path().trim_end_matches('/').is_empty();
        match base.host_str() {
            Some("api.github.com") => {}
            // The web address given for the API one.
            Some("github.com" | "www.github.com") if bare => {
                base = http::parse_base("github", DEFAULT_API)?;
            }
            _ if bare => base = http::with_api_path(base, "/api/v3"),
            _ => {}
        }
        let (owner, name) = split_owner_name("github", repo)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/vnd.github+json"),
        );
        headers.insert(
            "x-github-api-version",
            HeaderValue::from_static("2022-11-28"),
        );
        let client = Client::new("github", base, Auth::Bearer, token, headers, settings)?;
        Ok(GitHub {
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

/// `OWNER/NAME`, both non-empty, nothing more (GitHub and Gitea).
pub(crate) fn split_owner_name(kind: &str, repo: &str) -> Result<(String, String), ForgeError> {
    let parts: Vec<&str> = repo.trim().trim_matches('/').split('/').collect();
    match parts.as_slice() {
        [owner, name] if !owner.is_empty() && !name.is_empty() => {
            Ok((owner.to_string(), name.trim_end_matches(".git").to_string()))
        }
        _ => Err(ForgeError::Config(format!(
            "{kind}: repository {repo:?} is not OWNER/NAME"
        ))),
    }
}

#[derive(Debug, Deserialize)]
struct Pull {
    number: u64,
    #[serde(default)]
    title: String,
    state: String,
    /// Only in the single pull request's answer.
    #[serde(default)]
    merged: Option<bool>,
    #[serde(default)]
    merged_at: Option<String>,
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
    /// `null` when the fork was deleted.
    repo: Option<Repo>,
}

#[derive(Debug, Deserialize)]
struct Repo {
    full_name: String,
}

impl Pull {
    fn into_pull_request(self) -> PullRequest {
        let from_fork = match (&self.head.repo, &self.base.repo) {
            (Some(head), Some(base)) => !head.full_name.eq_ignore_ascii_case(&base.full_name),
            // A deleted fork: the head lives nowhere but in refs/pull/N/head.
            (None, _) => true,
            (Some(_), None) => false,
        };
        let merged = self.merged == Some(true) || self.merged_at.is_some();
        let state = if self.state == "open" {
            PrState::Open
        } else if merged {
            // GitHub also fills merge_commit_sha on open pull requests (its test
            // merge), which is why it is read only once merged.
            PrState::Merged {
                merge_commit: self.merge_commit_sha,
            }
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
    body: Option<String>,
}

#[async_trait]
impl Forge for GitHub {
    fn kind(&self) -> &'static str {
        "github"
    }

    fn comment_limit(&self) -> usize {
        COMMENT_LIMIT
    }

    async fn open_pull_requests(&self, base: &str) -> Result<Vec<PullRequest>, ForgeError> {
        let mut url = self.repo_url(&["pulls"]);
        url.query_pairs_mut()
            .append_pair("state", "open")
            .append_pair("base", base)
            .append_pair("per_page", PER_PAGE);
        let pulls: Vec<Pull> = self.client.get_pages(url, Pager::Link).await?;
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
impl super::Pulls for GitHub {
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
        let request = serde_json::json!({"title": title, "head": head, "base": base, "body": body});
        let pull: Pull = self
            .client
            .send_json(Method::POST, &url, &request, http::Replay::Once)
            .await?;
        Ok(pull.into_pull_request())
    }

    fn exists_already(&self, e: &ForgeError) -> bool {
        super::exists_already(e, 422)
    }
}

#[async_trait]
impl super::Comments for GitHub {
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
        let mut url = self.comments_url(number);
        url.query_pairs_mut().append_pair("per_page", PER_PAGE);
        let comments: Vec<IssueComment> = self.client.get_pages(url, Pager::Link).await?;
        Ok(comments
            .into_iter()
            .map(|c| super::Comment {
                id: c.id,
                body: c.body.unwrap_or_default(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Token {
        Token::new("t").unwrap()
    }

    #[test]
    fn enterprise_bases_get_api_v3() {
        let gh = GitHub::new(
            "https://ghe.example.com",
            "a/b",
            token(),
            HttpSettings::default(),
        )
        .unwrap();
        assert_eq!(
            gh.repo_url(&["pulls"]).as_str(),
            "https://ghe.example.com/api/v3/repos/a/b/pulls"
        );
        for url in [DEFAULT_API, "https://github.com/"] {
            let gh = GitHub::new(url, "a/b", token(), HttpSettings::default()).unwrap();
            assert_eq!(
                gh.repo_url(&["pulls"]).as_str(),
                "https://api.github.com/repos/a/b/pulls"
            );
        }
    }

    #[test]
    fn repo_must_be_owner_slash_name() {
        for bad in ["a", "a/b/c", "/b", "a/"] {
            let e = GitHub::new(DEFAULT_API, bad, token(), HttpSettings::default()).unwrap_err();
            assert!(e.to_string().contains("OWNER/NAME"), "{bad}: {e}");
        }
    }

    #[test]
    fn merged_state_comes_from_merged_or_merged_at() {
        let raw = |state: &str, merged: &str, merged_at: &str| {
            format!(
                r#"{{"number":7,"title":"t","state":"{state}",{merged}"merged_at":{merged_at},"merge_commit_sha":"abc",
                "head":{{"ref":"f","sha":"1","repo":null}},"base":{{"ref":"main","sha":"2","repo":{{"full_name":"a/b"}}}}}}"#
            )
        };
        let p: Pull =
            serde_json::from_str(&raw("closed", "", r#""2026-01-01T00:00:00Z""#)).unwrap();
        let p = p.into_pull_request();
        assert_eq!(
            p.state,
            PrState::Merged {
                merge_commit: Some("abc".into())
            }
        );
        assert!(p.from_fork, "a deleted fork is a fork");
        let p: Pull = serde_json::from_str(&raw("closed", r#""merged":false,"#, "null")).unwrap();
        assert_eq!(p.into_pull_request().state, PrState::Closed);
        let p: Pull = serde_json::from_str(&raw("open", r#""merged":false,"#, "null")).unwrap();
        assert_eq!(p.into_pull_request().state, PrState::Open);
    }
}
