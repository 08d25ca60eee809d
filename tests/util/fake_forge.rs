//! A FAKE forge. No GitHub, Gitea or GitLab server can run on this machine;
//! this implements the endpoints fermata uses, with real status codes and
//! pagination, so that the providers in `src/forge/` are tested against what
//! the real APIs answer rather than against themselves.
//!
//! One in-process axum server per flavour on `127.0.0.1:0`, hosting one
//! repository (GitHub and Gitea `acme/fleet`, GitLab `acme/platform/fleet`,
//! addressed by its URL-encoded path or id 42) with pull requests (forks and
//! merged ones included), comments, and commit statuses. What it reproduces:
//!
//! - **Paths**: GitHub Enterprise's `/api/v3/repos/{o}/{r}/...` and, for the
//!   targets of its `Link` headers, `/api/v3/repositories/{id}/...` as
//!   GitHub writes them; Gitea's `/api/v1/repos/{o}/{r}/...`; GitLab's
//!   `/api/v4/projects/{id}/...` where an unencoded `group/project` is a 404.
//! - **Pagination** with a configurable small page size so tests cross pages:
//!   GitHub `per_page`/`page` and `Link` (next, last, first, prev); Gitea
//!   `limit`/`page`, `Link` without spaces after commas, and `X-Total-Count`;
//!   GitLab `per_page`/`page`, `X-Page`, `X-Per-Page`, `X-Next-Page` (empty
//!   on the last page), `X-Prev-Page`, `X-Total`, `X-Total-Pages` and `Link`.
//!   Gitea's issue comments are not paginated (the real endpoint takes no
//!   page parameters and answers every comment); GitLab notes come newest
//!   first unless `sort=asc`.
//! - **Filters**: GitHub honours `state` and `base`, GitLab `state` and
//!   `target_branch`; Gitea honours `state` but not `base_branch`, as Gitea
//!   releases before that parameter do, so the client must filter.
//! - **Auth**: GitHub `Authorization: Bearer|token`, Gitea `Authorization:
//!   token|Bearer`, GitLab `PRIVATE-TOKEN` (or `Bearer`); a wrong token gets
//!   401 with the flavour's own body (`Bad credentials`, `invalid username,
//!   password or token`, `401 Unauthorized`). GitHub also refuses a request
//!   without `User-Agent` (403) and an unknown `X-GitHub-Api-Version` (400).
//! - **Validation**: GitHub's 140-character status descriptions and 65,536
//!   character comments (422 with `errors`), GitLab's 1,000,000-character
//!   notes, each flavour's status states, GitLab's "Cannot transition status
//!   via :enqueue from :pending" 400 when a pending status is set again, and
//!   403 on editing someone else's comment.
//! - **Failures on demand**: the next N requests answered 5xx (a proxy's HTML
//!   page for 502/503/504), a request applied but answered 5xx (the answer
//!   lost on the way back), and a rate limit with the flavour's headers
//!   (GitHub 403 with `x-ratelimit-remaining: 0` and `x-ratelimit-reset`,
//!   GitLab 429 with `RateLimit-*` and `Retry-After`, Gitea's reverse proxy
//!   429 with `Retry-After`), lasting until a given instant, and connections
//!   cut halfway through an answer.
//! - **Opening pull requests** (`POST .../pulls`, GitLab `POST
//!   .../merge_requests`): 201 with the new one; one already open from that
//!   head into that base is GitHub's 422 "A pull request already exists for
//!   acme:BRANCH.", Gitea's 409 "pull request already exists for these
//!   targets [...]", GitLab's 409 "Another open merge request already exists
//!   for this source branch: !N". With a hosted repository
//!   ([`FakeForge::host`]) branches are read from it: a missing one is
//!   refused (GitHub 422 `invalid`, Gitea 404, GitLab 400), as is a head with
//!   no commits over the base (GitHub 422 "No commits between ..."), and
//!   [`FakeForge::merge`] merges as the forge's button does (a merge commit
//!   on the base branch).
//! - A **request log** (method, path and query as sent, status, whether
//!   credentials came along) and accessors for what tests check.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    GitHub,
    Gitea,
    GitLab,
}

/// The only token the fake accepts.
pub const TOKEN: &str = "fake-forge-token-7d1e0c55a9f3";
/// The user that token belongs to: the author of what the client creates.
pub const BOT: &str = "fermata-bot";

const REPO_ID: u64 = 42;
const FORK_ID: u64 = 99;

/// What became of a pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Open,
    Closed,
    Merged {
        merge_commit: Option<String>,
        squash_commit: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct FakePr {
    pub number: u64,
    pub title: String,
    pub base: String,
    pub head_branch: String,
    pub head_sha: String,
    /// The fork holding the head (`someone/fleet`); `None` for a branch of
    /// the repository itself.
    pub fork: Option<String>,
    /// The fork was deleted since: GitHub and Gitea answer `head.repo: null`.
    pub fork_deleted: bool,
    pub fate: Fate,
}

/// A made-up, stable, 40-hex-digit commit id.
pub fn sha_of(n: u64) -> String {
    format!("{:040x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
}

impl FakePr {
    pub fn open(number: u64, base: &str, head_branch: &str) -> FakePr {
        FakePr {
            number,
            title: format!("Change {number}"),
            base: base.into(),
            head_branch: head_branch.into(),
            head_sha: sha_of(number),
            fork: None,
            fork_deleted: false,
            fate: Fate::Open,
        }
    }
    pub fn by_fork(mut self, full_name: &str) -> Self {
        self.fork = Some(full_name.into());
        self
    }
    pub fn fork_deleted(mut self) -> Self {
        self.fork_deleted = true;
        self
    }
    pub fn closed(mut self) -> Self {
        self.fate = Fate::Closed;
        self
    }
    pub fn merged(mut self, merge_commit: &str) -> Self {
        self.fate = Fate::Merged {
            merge_commit: Some(merge_commit.into()),
            squash_commit: None,
        };
        self
    }
    /// GitLab's squash merge with fast-forward: no merge commit, a squash commit.
    pub fn squash_merged(mut self, squash_commit: &str) -> Self {
        self.fate = Fate::Merged {
            merge_commit: None,
            squash_commit: Some(squash_commit.into()),
        };
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeComment {
    pub id: u64,
    pub number: u64,
    pub author: String,
    pub body: String,
    /// GitLab's system notes ("added 1 commit").
    pub system: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeStatus {
    pub sha: String,
    /// GitHub/Gitea `context`, GitLab `name`.
    pub context: String,
    /// As the client sent it, in the forge's vocabulary.
    pub state: String,
    pub description: String,
    pub target_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    /// Path and query, exactly as sent (still percent-encoded).
    pub path: String,
    pub status: u16,
    /// Whether any credential header came along.
    pub credentials: bool,
}

#[derive(Debug, Clone, Copy)]
enum Inject {
    /// Answer this status instead of handling the request.
    Status(u16),
    /// Handle the request, then answer this status: the answer is lost.
    AfterApplying(u16),
    /// Start a 200 answer and cut the connection in the middle of its body.
    Cut,
}

struct Store {
    flavour: Flavour,
    addr: SocketAddr,
    page_size: usize,
    prs: Vec<FakePr>,
    comments: Vec<FakeComment>,
    statuses: Vec<FakeStatus>,
    next_id: u64,
    injections: VecDeque<(Option<Method>, Inject)>,
    /// Rate limited until this instant (epoch seconds).
    limited_until: Option<u64>,
    log: Vec<Logged>,
    /// The git directory of the repository the forge hosts, if any.
    git: Option<PathBuf>,
}

/// One running fake forge; the server stops when it is dropped.
pub struct FakeForge {
    pub flavour: Flavour,
    addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeForge {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeForge {
    pub async fn start(flavour: Flavour) -> FakeForge {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let store = Arc::new(Mutex::new(Store {
            flavour,
            addr,
            page_size: 100,
            prs: Vec::new(),
            comments: Vec::new(),
            statuses: Vec::new(),
            next_id: 1000,
            injections: VecDeque::new(),
            limited_until: None,
            log: Vec::new(),
            git: None,
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(store.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeForge {
            flavour,
            addr,
            store,
            server,
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `http://127.0.0.1:PORT`: the server, as a user would name it.
    pub fn root_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The API root: `/api/v3` (GitHub Enterprise), `/api/v1`, `/api/v4`.
    pub fn api_url(&self) -> String {
        let suffix = match self.flavour {
            Flavour::GitHub => "/api/v3",
            Flavour::Gitea => "/api/v1",
            Flavour::GitLab => "/api/v4",
        };
        format!("{}{suffix}", self.root_url())
    }

    /// The repository, as `--forge-repo` names it.
    pub fn repo(&self) -> &'static str {
        match self.flavour {
            Flavour::GitLab => "acme/platform/fleet",
            _ => "acme/fleet",
        }
    }

    /// The most items one page holds, whatever the client asks for.
    pub fn set_page_size(&self, n: usize) {
        self.store().page_size = n.max(1);
    }

    pub fn add_pr(&self, pr: FakePr) {
        self.store().prs.push(pr);
    }

    /// Hosts this (bare) repository: new pull requests' branches are read
    /// from it, and [`FakeForge::merge`] merges in it.
    pub fn host(&self, git_dir: &Path) {
        self.store().git = Some(git_dir.to_path_buf());
    }

    /// Pull request `number`, as the fake has it now.
    pub fn pr(&self, number: u64) -> Option<FakePr> {
        self.store()
            .prs
            .iter()
            .find(|p| p.number == number)
            .cloned()
    }

    /// Every pull request, in the order they were added or opened.
    pub fn prs(&self) -> Vec<FakePr> {
        self.store().prs.clone()
    }

    /// The merge button: a merge commit of the head on the base branch of
    /// the hosted repository (`git merge-tree`, `git commit-tree`, the base
    /// moved only if it did not move meanwhile), and the pull request merged
    /// with it. Returns the merge commit.
    pub fn merge(&self, number: u64) -> String {
        let mut store = self.store();
        let git_dir = store.git.clone().expect("merge needs a hosted repository");
        let pr = store
            .prs
            .iter_mut()
            .find(|p| p.number == number)
            .expect("no such pull request");
        assert_eq!(pr.fate, Fate::Open, "only an open pull request merges");
        let git = |args: &[&str]| -> String {
            let out = std::process::Command::new("git")
                .arg("--git-dir")
                .arg(&git_dir)
                .args(args)
                .env("GIT_AUTHOR_NAME", "Reviewer")
                .env("GIT_AUTHOR_EMAIL", "reviewer@example.com")
                .env("GIT_COMMITTER_NAME", "Forge")
                .env("GIT_COMMITTER_EMAIL", "noreply@example.com")
                .output()
                .expect("git runs");
            assert!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let base = git(&["rev-parse", &format!("refs/heads/{}", pr.base)]);
        let head = git(&["rev-parse", &format!("refs/heads/{}", pr.head_branch)]);
        let tree = git(&["merge-tree", "--write-tree", &base, &head]);
        let message = format!(
            "Merge pull request #{number} from acme/{}\n\n{}",
            pr.head_branch, pr.title
        );
        let merge = git(&[
            "commit-tree",
            &tree,
            "-p",
            &base,
            "-p",
            &head,
            "-m",
            &message,
        ]);
        git(&[
            "update-ref",
            &format!("refs/heads/{}", pr.base),
            &merge,
            &base,
        ]);
        pr.head_sha = head;
        pr.fate = Fate::Merged {
            merge_commit: Some(merge.clone()),
            squash_commit: None,
        };
        merge
    }

    /// Changes pull request `number` as a push to its head or a merge would.
    pub fn update_pr(&self, number: u64, change: impl FnOnce(&mut FakePr)) {
        if let Some(pr) = self.store().prs.iter_mut().find(|p| p.number == number) {
            change(pr);
        }
    }

    /// A comment by `author` on pull request `number`; returns its id.
    pub fn add_comment(&self, number: u64, author: &str, body: &str) -> u64 {
        self.store().add_comment(number, author, body, false)
    }

    /// A GitLab system note ("added 1 commit").
    pub fn add_system_note(&self, number: u64, body: &str) -> u64 {
        self.store().add_comment(number, "system", body, true)
    }

    /// Every comment of pull request `number`, oldest first.
    pub fn comments(&self, number: u64) -> Vec<FakeComment> {
        let s = self.store();
        s.comments
            .iter()
            .filter(|c| c.number == number)
            .cloned()
            .collect()
    }

    /// Every status posted for `sha`, in order.
    pub fn statuses(&self, sha: &str) -> Vec<FakeStatus> {
        let s = self.store();
        s.statuses
            .iter()
            .filter(|c| c.sha == sha)
            .cloned()
            .collect()
    }

    /// The next `n` requests are answered `status` without being handled.
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut s = self.store();
        for _ in 0..n {
            s.injections.push_back((None, Inject::Status(status)));
        }
    }

    /// The connection of each of the next `n` requests is cut halfway
    /// through a 200 answer: a transport failure, not an HTTP status.
    pub fn cut_next(&self, n: usize) {
        let mut s = self.store();
        for _ in 0..n {
            s.injections.push_back((None, Inject::Cut));
        }
    }

    /// The next `method` request is handled, then answered `status`, as when
    /// a proxy times out after the forge did the work.
    pub fn fail_next_after_applying(&self, method: Method, status: u16) {
        self.store()
            .injections
            .push_back((Some(method), Inject::AfterApplying(status)));
    }

    /// Every request is answered with the flavour's rate-limit response until
    /// `reset_in` from now (rounded up to whole seconds, as forges say it).
    pub fn rate_limit_for(&self, reset_in: Duration) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let until = (now + reset_in).as_secs_f64().ceil() as u64;
        self.store().limited_until = Some(until);
    }

    pub fn lift_rate_limit(&self) {
        self.store().limited_until = None;
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.store().log.clone()
    }

    pub fn clear_requests(&self) {
        self.store().log.clear();
    }

    /// Requests with this method whose path contains `fragment`.
    pub fn count(&self, method: &str, fragment: &str) -> usize {
        self.store()
            .log
            .iter()
            .filter(|r| r.method == method && r.path.contains(fragment))
            .count()
    }
}

async fn handle(
    State(store): State<Arc<Mutex<Store>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
    let response = s.serve(&method, &uri, &headers, &body);
    let credentials =
        headers.contains_key(header::AUTHORIZATION) || headers.contains_key("private-token");
    s.log.push(Logged {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
        status: response.status().as_u16(),
        credentials,
    });
    response
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn timestamp(id: u64) -> String {
    let t = chrono::DateTime::from_timestamp(1_780_000_000 + id as i64, 0).unwrap_or_default();
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn http_date(epoch: u64) -> String {
    let t = chrono::DateTime::from_timestamp(epoch as i64, 0).unwrap_or_default();
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(status: u16, headers: Vec<(String, String)>, body: Value) -> Response {
    let mut r = Response::new(axum::body::Body::from(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    add_headers(&mut r, headers);
    r
}

fn respond_text(status: u16, content_type: &'static str, text: String) -> Response {
    let mut r = Response::new(axum::body::Body::from(text));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A 200 whose body fails after its first bytes: hyper aborts the connection.
fn cut_connection() -> Response {
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"[{\"number\": 1, ")),
        Err(std::io::Error::other("connection cut by the fake forge")),
    ];
    let mut r = Response::new(axum::body::Body::from_stream(futures_util::stream::iter(
        chunks,
    )));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

fn add_headers(r: &mut Response, headers: Vec<(String, String)>) {
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            r.headers_mut().append(k, v);
        }
    }
}

/// One page of `items`: the page (1-based) and how many pages there are.
fn paginate<T: Clone>(items: &[T], page: usize, per_page: usize) -> (Vec<T>, usize) {
    let per_page = per_page.max(1);
    let pages = items.len().div_ceil(per_page).max(1);
    let start = (page.max(1) - 1) * per_page;
    let slice = items.iter().skip(start).take(per_page).cloned().collect();
    (slice, pages)
}

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(uri: &Uri) -> Query {
        let q = uri.query().unwrap_or("");
        let pairs = reqwest::Url::parse(&format!("http://x/?{q}"))
            .map(|u| {
                u.query_pairs()
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Query(pairs)
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    fn num(&self, key: &str, default: usize) -> usize {
        self.get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }
    /// The absolute URL of `path` with these parameters and `page` set.
    fn url_with_page(&self, addr: SocketAddr, path: &str, page: usize) -> String {
        let mut u = reqwest::Url::parse(&format!("http://{addr}{path}")).expect("url");
        {
            let mut q = u.query_pairs_mut();
            for (k, v) in self.0.iter().filter(|(k, _)| k != "page") {
                q.append_pair(k, v);
            }
            q.append_pair("page", &page.to_string());
        }
        u.to_string()
    }
}

impl Store {
    fn add_comment(&mut self, number: u64, author: &str, body: &str, system: bool) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.comments.push(FakeComment {
            id,
            number,
            author: author.into(),
            body: body.into(),
            system,
        });
        id
    }

    fn serve(&mut self, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Response {
        let injected = match self
            .injections
            .iter()
            .position(|(m, _)| m.as_ref().is_none_or(|m| m == method))
        {
            Some(i) => self.injections.remove(i).map(|(_, inj)| inj),
            None => None,
        };
        match injected {
            Some(Inject::Status(code)) => return self.failure(code),
            Some(Inject::Cut) => return cut_connection(),
            _ => {}
        }
        if let Some(refused) = self.check_auth(headers) {
            return refused;
        }
        if let Some(until) = self.limited_until {
            if now_secs() < until as f64 {
                return self.rate_limited(until);
            }
        }
        let response = self.route(method, uri, body);
        match injected {
            Some(Inject::AfterApplying(code)) => self.failure(code),
            _ => response,
        }
    }

    fn swagger(&self) -> String {
        format!("http://{}/api/swagger", self.addr)
    }

    fn failure(&self, code: u16) -> Response {
        if matches!(code, 502..=504) {
            let reason = StatusCode::from_u16(code)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Error");
            return respond_text(
                code,
                "text/html",
                format!("<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n<center><h1>{code} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"),
            );
        }
        let body = match self.flavour {
            Flavour::GitHub => json!({"message": "Server Error"}),
            Flavour::Gitea => json!({"message": "", "url": self.swagger()}),
            Flavour::GitLab => json!({"message": format!("{code} Internal Server Error")}),
        };
        respond(code, vec![], body)
    }

    fn rate_limited(&self, until: u64) -> Response {
        let retry_after = ((until as f64 - now_secs()).ceil().max(0.0) as u64).to_string();
        match self.flavour {
            Flavour::GitHub => respond(
                403,
                vec![
                    ("x-ratelimit-limit".into(), "5000".into()),
                    ("x-ratelimit-remaining".into(), "0".into()),
                    ("x-ratelimit-used".into(), "5000".into()),
                    ("x-ratelimit-reset".into(), until.to_string()),
                    ("x-ratelimit-resource".into(), "core".into()),
                ],
                json!({
                    "message": "API rate limit exceeded for user ID 1.",
                    "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
                    "status": "403"
                }),
            ),
            Flavour::GitLab => {
                let mut r = respond_text(429, "text/plain", "Retry later\n".into());
                add_headers(
                    &mut r,
                    vec![
                        ("ratelimit-name".into(), "throttle_authenticated_api".into()),
                        ("ratelimit-limit".into(), "60".into()),
                        ("ratelimit-observed".into(), "61".into()),
                        ("ratelimit-remaining".into(), "0".into()),
                        ("ratelimit-reset".into(), until.to_string()),
                        ("ratelimit-resettime".into(), http_date(until)),
                        ("retry-after".into(), retry_after),
                    ],
                );
                r
            }
            Flavour::Gitea => {
                let mut r = respond_text(429, "text/plain", "Too Many Requests\n".into());
                add_headers(&mut r, vec![("retry-after".into(), retry_after)]);
                r
            }
        }
    }

    fn check_auth(&self, headers: &HeaderMap) -> Option<Response> {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let authorization = get("authorization");
        let ok = match self.flavour {
            Flavour::GitHub => authorization
                .is_some_and(|a| a == format!("Bearer {TOKEN}") || a == format!("token {TOKEN}")),
            Flavour::Gitea => authorization
                .is_some_and(|a| a == format!("token {TOKEN}") || a == format!("Bearer {TOKEN}")),
            Flavour::GitLab => {
                get("private-token") == Some(TOKEN)
                    || authorization == Some(format!("Bearer {TOKEN}").as_str())
            }
        };
        if !ok {
            let body = match self.flavour {
                Flavour::GitHub if authorization.is_none() => json!({
                    "message": "Requires authentication",
                    "documentation_url": "https://docs.github.com/rest",
                    "status": "401"
                }),
                Flavour::GitHub => json!({
                    "message": "Bad credentials",
                    "documentation_url": "https://docs.github.com/rest",
                    "status": "401"
                }),
                Flavour::Gitea => json!({
                    "message": "invalid username, password or token",
                    "url": self.swagger()
                }),
                Flavour::GitLab => json!({"message": "401 Unauthorized"}),
            };
            return Some(respond(401, vec![], body));
        }
        if self.flavour == Flavour::GitHub {
            if get("user-agent").is_none_or(str::is_empty) {
                return Some(respond_text(
                    403,
                    "text/plain",
                    "Request forbidden by administrative rules. Please make sure your request has a User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). Check https://developer.github.com for other possible causes.\n".into(),
                ));
            }
            if let Some(v) = get("x-github-api-version") {
                if v != "2022-11-28" {
                    return Some(respond(
                        400,
                        vec![],
                        json!({
                            "message": format!("Unsupported 'X-GitHub-Api-Version': {v}"),
                            "documentation_url": "https://docs.github.com/rest/overview/api-versions",
                            "status": "400"
                        }),
                    ));
                }
            }
        }
        None
    }

    fn not_found(&self, what: &str) -> Response {
        match self.flavour {
            Flavour::GitHub => respond(
                404,
                vec![],
                json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest", "status": "404"}),
            ),
            Flavour::Gitea => respond(
                404,
                vec![],
                json!({"message": "not found", "url": self.swagger()}),
            ),
            Flavour::GitLab if what.is_empty() => {
                respond(404, vec![], json!({"message": "404 Not found"}))
            }
            Flavour::GitLab => respond(
                404,
                vec![],
                json!({"message": format!("404 {what} Not Found")}),
            ),
        }
    }

    fn route(&mut self, method: &Method, uri: &Uri, body: &[u8]) -> Response {
        let raw: Vec<&str> = uri.path().trim_start_matches('/').split('/').collect();
        let query = Query::parse(uri);
        let json_body: Option<Value> = if body.is_empty() {
            None
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => Some(v),
                Err(_) => return respond(400, vec![], json!({"message": "Problems parsing JSON"})),
            }
        };
        match self.flavour {
            Flavour::GitHub => {
                let rest: Vec<String> = match raw.as_slice() {
                    ["api", "v3", "repos", owner, name, rest @ ..]
                        if format!("{owner}/{name}").eq_ignore_ascii_case("acme/fleet") =>
                    {
                        rest.iter().map(|s| percent_decode(s)).collect()
                    }
                    ["api", "v3", "repositories", id, rest @ ..] if *id == REPO_ID.to_string() => {
                        rest.iter().map(|s| percent_decode(s)).collect()
                    }
                    _ => return self.not_found("Project"),
                };
                self.github(method, &query, &rest, json_body)
            }
            Flavour::Gitea => match raw.as_slice() {
                ["api", "v1", "repos", owner, name, rest @ ..]
                    if format!("{owner}/{name}").eq_ignore_ascii_case("acme/fleet") =>
                {
                    let rest: Vec<String> = rest.iter().map(|s| percent_decode(s)).collect();
                    self.gitea(method, uri, &query, &rest, json_body)
                }
                _ => self.not_found("Repository"),
            },
            Flavour::GitLab => match raw.as_slice() {
                ["api", "v4", "projects", id, rest @ ..]
                    if percent_decode(id) == "acme/platform/fleet"
                        || *id == REPO_ID.to_string() =>
                {
                    let rest: Vec<String> = rest.iter().map(|s| percent_decode(s)).collect();
                    self.gitlab(method, uri, &query, &rest, json_body)
                }
                _ => self.not_found("Project"),
            },
        }
    }

    /// Branch `name`'s head commit: from the hosted repository, or, without
    /// one, any branch exists with a made-up commit.
    fn branch(&self, name: &str) -> Option<String> {
        let Some(dir) = &self.git else {
            return Some(sha_of(10_000 + self.prs.len() as u64));
        };
        let repo = git2::Repository::open(dir).ok()?;
        repo.refname_to_id(&format!("refs/heads/{name}"))
            .ok()
            .map(|o| o.to_string())
    }

    /// Whether `head` has commits `base` does not (always, without a
    /// hosted repository).
    fn ahead(&self, head: &str, base: &str) -> bool {
        let Some(dir) = &self.git else {
            return true;
        };
        let Ok(repo) = git2::Repository::open(dir) else {
            return false;
        };
        match (git2::Oid::from_str(head), git2::Oid::from_str(base)) {
            (Ok(h), Ok(b)) => h != b && !repo.graph_descendant_of(b, h).unwrap_or(false),
            _ => false,
        }
    }

    /// The open pull request from branch `head` of the repository into `base`.
    fn open_from(&self, head: &str, base: &str) -> Option<FakePr> {
        self.prs
            .iter()
            .find(|p| {
                p.fate == Fate::Open && p.fork.is_none() && p.head_branch == head && p.base == base
            })
            .cloned()
    }

    /// A new open pull request (numbers follow the highest there is).
    fn open_pr(&mut self, head: &str, base: &str, title: &str, head_sha: String) -> FakePr {
        let number = self.prs.iter().map(|p| p.number).max().unwrap_or(0) + 1;
        let mut pr = FakePr::open(number, base, head);
        pr.title = title.to_string();
        pr.head_sha = head_sha;
        self.prs.push(pr.clone());
        pr
    }

    fn pr(&self, number: &str) -> Option<FakePr> {
        let n: u64 = number.parse().ok()?;
        self.prs.iter().find(|p| p.number == n).cloned()
    }

    fn comment_index(&self, id: &str) -> Option<usize> {
        let id: u64 = id.parse().ok()?;
        self.comments.iter().position(|c| c.id == id)
    }

    fn body_text(body: &Option<Value>, key: &str) -> Option<String> {
        body.as_ref()?.get(key)?.as_str().map(str::to_string)
    }

    // ---------------------------------------------------------------- GitHub

    fn github(
        &mut self,
        method: &Method,
        query: &Query,
        rest: &[String],
        body: Option<Value>,
    ) -> Response {
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        match (method.as_str(), rest.as_slice()) {
            ("GET", ["pulls"]) => {
                let state = query.get("state").unwrap_or("open");
                let base = query.get("base");
                let items: Vec<Value> = self
                    .prs
                    .iter()
                    .filter(|p| match state {
                        "open" => p.fate == Fate::Open,
                        "closed" => p.fate != Fate::Open,
                        _ => true,
                    })
                    .filter(|p| base.is_none_or(|b| p.base == b))
                    .map(|p| self.github_pull(p, false))
                    .collect();
                self.github_page(query, "pulls", &items)
            }
            ("GET", ["pulls", n]) => match self.pr(n) {
                Some(p) => respond(200, vec![], self.github_pull(&p, true)),
                None => self.not_found("Pull"),
            },
            ("POST", ["pulls"]) => {
                let field = |key: &str| Self::body_text(&body, key).filter(|v| !v.is_empty());
                let (Some(title), Some(head), Some(base)) =
                    (field("title"), field("head"), field("base"))
                else {
                    let missing = ["title", "head", "base"]
                        .into_iter()
                        .find(|k| field(k).is_none())
                        .unwrap_or("title");
                    return github_invalid(
                        "PullRequest",
                        missing,
                        "missing_field",
                        &format!("{missing} wasn't supplied."),
                    );
                };
                // `owner:branch` names a branch of the owner's repository.
                let head = match head.split_once(':') {
                    Some(("acme", b)) => b.to_string(),
                    Some(_) => return github_invalid("PullRequest", "head", "invalid", ""),
                    None => head,
                };
                let Some(base_sha) = self.branch(&base) else {
                    return github_invalid("PullRequest", "base", "invalid", "");
                };
                let Some(head_sha) = self.branch(&head) else {
                    return github_invalid("PullRequest", "head", "invalid", "");
                };
                if self.open_from(&head, &base).is_some() {
                    return github_invalid(
                        "PullRequest",
                        "",
                        "custom",
                        &format!("A pull request already exists for acme:{head}."),
                    );
                }
                if !self.ahead(&head_sha, &base_sha) {
                    return github_invalid(
                        "PullRequest",
                        "",
                        "custom",
                        &format!("No commits between {base} and {head}"),
                    );
                }
                let p = self.open_pr(&head, &base, &title, head_sha);
                respond(201, vec![], self.github_pull(&p, true))
            }
            ("GET", ["issues", n, "comments"]) => {
                let Some(p) = self.pr(n) else {
                    return self.not_found("Issue");
                };
                let items: Vec<Value> = self
                    .comments
                    .iter()
                    .filter(|c| c.number == p.number)
                    .map(|c| self.github_comment(c))
                    .collect();
                self.github_page(query, &format!("issues/{}/comments", p.number), &items)
            }
            ("POST", ["issues", n, "comments"]) => {
                let Some(p) = self.pr(n) else {
                    return self.not_found("Issue");
                };
                let Some(text) = Self::body_text(&body, "body") else {
                    return github_invalid(
                        "IssueComment",
                        "body",
                        "missing_field",
                        "body wasn't supplied.",
                    );
                };
                if text.chars().count() > 65_536 {
                    return github_invalid(
                        "IssueComment",
                        "data",
                        "unprocessable",
                        "Body is too long (maximum is 65536 characters)",
                    );
                }
                let id = self.add_comment(p.number, BOT, &text, false);
                let c = self.comments.last().cloned().expect("just added");
                debug_assert_eq!(c.id, id);
                respond(201, vec![], self.github_comment(&c))
            }
            ("PATCH", ["issues", "comments", id]) => {
                let Some(i) = self.comment_index(id) else {
                    return self.not_found("Comment");
                };
                if self.comments[i].author != BOT {
                    return respond(
                        403,
                        vec![],
                        json!({
                            "message": "Resource not accessible by integration",
                            "documentation_url": "https://docs.github.com/rest/issues/comments#update-an-issue-comment",
                            "status": "403"
                        }),
                    );
                }
                let Some(text) = Self::body_text(&body, "body") else {
                    return github_invalid(
                        "IssueComment",
                        "body",
                        "missing_field",
                        "body wasn't supplied.",
                    );
                };
                if text.chars().count() > 65_536 {
                    return github_invalid(
                        "IssueComment",
                        "data",
                        "unprocessable",
                        "Body is too long (maximum is 65536 characters)",
                    );
                }
                self.comments[i].body = text;
                let c = self.comments[i].clone();
                respond(200, vec![], self.github_comment(&c))
            }
            ("POST", ["statuses", sha]) => {
                let state = Self::body_text(&body, "state").unwrap_or_default();
                if !["error", "failure", "pending", "success"].contains(&state.as_str()) {
                    return github_invalid(
                        "Status",
                        "state",
                        "custom",
                        "state is not included in the list",
                    );
                }
                let description = Self::body_text(&body, "description").unwrap_or_default();
                if description.chars().count() > 140 {
                    return github_invalid(
                        "Status",
                        "description",
                        "custom",
                        "description is too long (maximum is 140 characters)",
                    );
                }
                let status = FakeStatus {
                    sha: sha.to_string(),
                    context: Self::body_text(&body, "context").unwrap_or_else(|| "default".into()),
                    state,
                    description,
                    target_url: Self::body_text(&body, "target_url"),
                };
                self.next_id += 1;
                let answer = json!({
                    "id": self.next_id, "state": status.state, "description": status.description,
                    "target_url": status.target_url, "context": status.context,
                    "created_at": timestamp(self.next_id), "updated_at": timestamp(self.next_id),
                    "creator": {"login": BOT, "id": 1, "type": "Bot"}
                });
                self.statuses.push(status);
                respond(201, vec![], answer)
            }
            _ => self.not_found("Route"),
        }
    }

    fn github_repo(&self, full_name: &str, id: u64) -> Value {
        json!({"id": id, "full_name": full_name, "name": full_name.split('/').nth(1).unwrap_or(full_name),
               "owner": {"login": full_name.split('/').next().unwrap_or("")}, "fork": id != REPO_ID})
    }

    fn github_pull(&self, p: &FakePr, single: bool) -> Value {
        let base_repo = self.github_repo("acme/fleet", REPO_ID);
        let head_repo = match (&p.fork, p.fork_deleted) {
            (_, true) => Value::Null,
            (Some(f), false) => self.github_repo(f, FORK_ID),
            (None, false) => base_repo.clone(),
        };
        let owner = p
            .fork
            .as_deref()
            .and_then(|f| f.split('/').next())
            .unwrap_or("acme");
        let (state, merged_at, merge_commit_sha) = match &p.fate {
            // GitHub computes a test merge commit for open pull requests too.
            Fate::Open => ("open", Value::Null, json!(sha_of(p.number + 5000))),
            Fate::Closed => ("closed", Value::Null, json!(sha_of(p.number + 5000))),
            Fate::Merged { merge_commit, .. } => {
                ("closed", json!(timestamp(p.number)), json!(merge_commit))
            }
        };
        let mut v = json!({
            "url": format!("https://api.github.com/repos/acme/fleet/pulls/{}", p.number),
            "id": 10_000 + p.number,
            "number": p.number,
            "state": state,
            "locked": false,
            "title": p.title,
            "user": {"login": owner, "id": 7},
            "draft": false,
            "created_at": timestamp(p.number),
            "merged_at": merged_at,
            "merge_commit_sha": merge_commit_sha,
            "head": {"label": format!("{owner}:{}", p.head_branch), "ref": p.head_branch, "sha": p.head_sha, "repo": head_repo},
            "base": {"label": format!("acme:{}", p.base), "ref": p.base, "sha": sha_of(p.number + 9000), "repo": base_repo},
        });
        if single {
            v["merged"] = json!(matches!(p.fate, Fate::Merged { .. }));
            v["mergeable"] = Value::Null;
            v["comments"] = json!(self
                .comments
                .iter()
                .filter(|c| c.number == p.number)
                .count());
        }
        v
    }

    fn github_comment(&self, c: &FakeComment) -> Value {
        json!({
            "id": c.id,
            "node_id": format!("IC_{}", c.id),
            "url": format!("https://api.github.com/repos/acme/fleet/issues/comments/{}", c.id),
            "html_url": format!("https://github.com/acme/fleet/pull/{}#issuecomment-{}", c.number, c.id),
            "body": c.body,
            "user": {"login": c.author, "id": 1, "type": if c.author == BOT { "Bot" } else { "User" }},
            "created_at": timestamp(c.id),
            "updated_at": timestamp(c.id),
            "author_association": "MEMBER",
        })
    }

    /// One page of a GitHub listing, with `Link` targets in GitHub's own
    /// `/repositories/{id}/...` form.
    fn github_page(&self, query: &Query, rest: &str, items: &[Value]) -> Response {
        let per_page = query.num("per_page", 30).clamp(1, 100).min(self.page_size);
        let page = query.num("page", 1).max(1);
        let (slice, pages) = paginate(items, page, per_page);
        let path = format!("/api/v3/repositories/{REPO_ID}/{rest}");
        let link = |p: usize, rel: &str| {
            format!(
                "<{}>; rel=\"{rel}\"",
                query.url_with_page(self.addr, &path, p)
            )
        };
        let mut links = Vec::new();
        if page > 1 {
            links.push(link(page - 1, "prev"));
        }
        if page < pages {
            links.push(link(page + 1, "next"));
            links.push(link(pages, "last"));
        }
        if page > 1 {
            links.push(link(1, "first"));
        }
        let mut headers = vec![];
        if !links.is_empty() {
            headers.push(("link".to_string(), links.join(", ")));
        }
        respond(200, headers, Value::Array(slice))
    }

    // ----------------------------------------------------------------- Gitea

    fn gitea(
        &mut self,
        method: &Method,
        uri: &Uri,
        query: &Query,
        rest: &[String],
        body: Option<Value>,
    ) -> Response {
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        match (method.as_str(), rest.as_slice()) {
            ("GET", ["pulls"]) => {
                // No `base_branch` filter: as Gitea releases before it.
                let state = query.get("state").unwrap_or("open");
                let items: Vec<Value> = self
                    .prs
                    .iter()
                    .filter(|p| match state {
                        "open" => p.fate == Fate::Open,
                        "closed" => p.fate != Fate::Open,
                        _ => true,
                    })
                    .map(|p| self.gitea_pull(p))
                    .collect();
                let limit = query.num("limit", 30).clamp(1, 50).min(self.page_size);
                let page = query.num("page", 1).max(1);
                let (slice, pages) = paginate(&items, page, limit);
                let link = |p: usize, rel: &str| {
                    format!(
                        "<{}>; rel=\"{rel}\"",
                        query.url_with_page(self.addr, uri.path(), p)
                    )
                };
                let mut links = Vec::new();
                if page < pages {
                    links.push(link(page + 1, "next"));
                }
                if page != pages {
                    links.push(link(pages, "last"));
                }
                if page != 1 {
                    links.push(link(1, "first"));
                }
                if page > 1 {
                    links.push(link(page - 1, "prev"));
                }
                let mut headers = vec![("x-total-count".to_string(), items.len().to_string())];
                if !links.is_empty() {
                    headers.push(("link".to_string(), links.join(",")));
                }
                respond(200, headers, Value::Array(slice))
            }
            ("GET", ["pulls", n]) => match self.pr(n) {
                Some(p) => respond(200, vec![], self.gitea_pull(&p)),
                None => self.not_found("Pull"),
            },
            ("POST", ["pulls"]) => {
                let field = |key: &str| Self::body_text(&body, key).filter(|v| !v.is_empty());
                let (Some(head), Some(base)) = (field("head"), field("base")) else {
                    return respond(
                        422,
                        vec![],
                        json!({"message": "[Head]: Required; [Base]: Required", "url": self.swagger()}),
                    );
                };
                let title = field("title").unwrap_or_default();
                let (Some(base_sha), Some(head_sha)) = (self.branch(&base), self.branch(&head))
                else {
                    return self.not_found("");
                };
                if let Some(p) = self.open_from(&head, &base) {
                    let message = format!(
                        "pull request already exists for these targets [id: {}, issue_id: {}, head_repo_id: {REPO_ID}, base_repo_id: {REPO_ID}, head_branch: {head}, base_branch: {base}]",
                        10_000 + p.number,
                        p.number
                    );
                    return respond(
                        409,
                        vec![],
                        json!({"message": message, "url": self.swagger()}),
                    );
                }
                if !self.ahead(&head_sha, &base_sha) {
                    return respond(
                        409,
                        vec![],
                        json!({"message": "There are no changes between the head and the base", "url": self.swagger()}),
                    );
                }
                let p = self.open_pr(&head, &base, &title, head_sha);
                respond(201, vec![], self.gitea_pull(&p))
            }
            ("GET", ["issues", n, "comments"]) => {
                let Some(p) = self.pr(n) else {
                    return self.not_found("Issue");
                };
                // Every comment at once: this endpoint takes no page parameters.
                let items: Vec<Value> = self
                    .comments
                    .iter()
                    .filter(|c| c.number == p.number)
                    .map(|c| self.gitea_comment(c))
                    .collect();
                respond(
                    200,
                    vec![("x-total-count".into(), items.len().to_string())],
                    Value::Array(items),
                )
            }
            ("POST", ["issues", n, "comments"]) => {
                let Some(p) = self.pr(n) else {
                    return self.not_found("Issue");
                };
                let Some(text) = Self::body_text(&body, "body") else {
                    return respond(
                        422,
                        vec![],
                        json!({"message": "[Body]: Required", "url": self.swagger()}),
                    );
                };
                self.add_comment(p.number, BOT, &text, false);
                let c = self.comments.last().cloned().expect("just added");
                respond(201, vec![], self.gitea_comment(&c))
            }
            ("PATCH", ["issues", "comments", id]) => {
                let Some(i) = self.comment_index(id) else {
                    return self.not_found("Comment");
                };
                if self.comments[i].author != BOT {
                    // Gitea answers a bare 403 here.
                    return respond_text(403, "text/plain", String::new());
                }
                let Some(text) = Self::body_text(&body, "body") else {
                    return respond(
                        422,
                        vec![],
                        json!({"message": "[Body]: Required", "url": self.swagger()}),
                    );
                };
                self.comments[i].body = text;
                let c = self.comments[i].clone();
                respond(200, vec![], self.gitea_comment(&c))
            }
            ("POST", ["statuses", sha]) => {
                let state = Self::body_text(&body, "state").unwrap_or_default();
                if !["pending", "success", "error", "failure", "warning"].contains(&state.as_str())
                {
                    return respond(
                        422,
                        vec![],
                        json!({"message": format!("invalid commit status state: {state}"), "url": self.swagger()}),
                    );
                }
                let status = FakeStatus {
                    sha: sha.to_string(),
                    context: Self::body_text(&body, "context").unwrap_or_default(),
                    state,
                    description: Self::body_text(&body, "description").unwrap_or_default(),
                    target_url: Self::body_text(&body, "target_url"),
                };
                self.next_id += 1;
                let answer = json!({
                    "id": self.next_id, "status": status.state, "target_url": status.target_url.clone().unwrap_or_default(),
                    "description": status.description, "context": status.context,
                    "created_at": timestamp(self.next_id), "updated_at": timestamp(self.next_id),
                    "creator": {"id": 1, "login": BOT}
                });
                self.statuses.push(status);
                respond(201, vec![], answer)
            }
            _ => self.not_found("Route"),
        }
    }

    fn gitea_repo(&self, full_name: &str, id: u64) -> Value {
        json!({"id": id, "full_name": full_name, "name": full_name.split('/').nth(1).unwrap_or(full_name), "fork": id != REPO_ID})
    }

    fn gitea_pull(&self, p: &FakePr) -> Value {
        let base_repo = self.gitea_repo("acme/fleet", REPO_ID);
        let (head_repo, head_repo_id) = match (&p.fork, p.fork_deleted) {
            (_, true) => (Value::Null, 0),
            (Some(f), false) => (self.gitea_repo(f, FORK_ID), FORK_ID),
            (None, false) => (base_repo.clone(), REPO_ID),
        };
        let (state, merged, merged_at, merge_commit_sha) = match &p.fate {
            Fate::Open => ("open", false, Value::Null, Value::Null),
            Fate::Closed => ("closed", false, Value::Null, Value::Null),
            Fate::Merged { merge_commit, .. } => (
                "closed",
                true,
                json!(timestamp(p.number)),
                json!(merge_commit),
            ),
        };
        json!({
            "id": 10_000 + p.number,
            "url": format!("http://{}/acme/fleet/pulls/{}", self.addr, p.number),
            "number": p.number,
            "user": {"id": 7, "login": "alice"},
            "title": p.title,
            "state": state,
            "mergeable": true,
            "merged": merged,
            "merged_at": merged_at,
            "merge_commit_sha": merge_commit_sha,
            "head": {"label": p.head_branch, "ref": p.head_branch, "sha": p.head_sha, "repo_id": head_repo_id, "repo": head_repo},
            "base": {"label": p.base, "ref": p.base, "sha": sha_of(p.number + 9000), "repo_id": REPO_ID, "repo": base_repo},
        })
    }

    fn gitea_comment(&self, c: &FakeComment) -> Value {
        json!({
            "id": c.id,
            "html_url": format!("http://{}/acme/fleet/pulls/{}#issuecomment-{}", self.addr, c.number, c.id),
            "pull_request_url": format!("http://{}/acme/fleet/pulls/{}", self.addr, c.number),
            "issue_url": "",
            "user": {"id": 1, "login": c.author, "username": c.author},
            "original_author": "",
            "original_author_id": 0,
            "body": c.body,
            "assets": [],
            "created_at": timestamp(c.id),
            "updated_at": timestamp(c.id),
        })
    }

    // ---------------------------------------------------------------- GitLab

    fn gitlab(
        &mut self,
        method: &Method,
        uri: &Uri,
        query: &Query,
        rest: &[String],
        body: Option<Value>,
    ) -> Response {
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        match (method.as_str(), rest.as_slice()) {
            ("GET", ["merge_requests"]) => {
                let state = query.get("state").unwrap_or("all");
                let target = query.get("target_branch");
                let items: Vec<Value> = self
                    .prs
                    .iter()
                    .filter(|p| match state {
                        "opened" => p.fate == Fate::Open,
                        "closed" => p.fate == Fate::Closed,
                        "merged" => matches!(p.fate, Fate::Merged { .. }),
                        _ => true,
                    })
                    .filter(|p| target.is_none_or(|t| p.base == t))
                    .map(|p| self.gitlab_mr(p))
                    .collect();
                self.gitlab_page(uri, query, &items)
            }
            ("GET", ["merge_requests", iid]) => match self.pr(iid) {
                Some(p) => respond(200, vec![], self.gitlab_mr(&p)),
                None => self.not_found(""),
            },
            ("POST", ["merge_requests"]) => {
                let field = |key: &str| Self::body_text(&body, key).filter(|v| !v.is_empty());
                let missing = ["source_branch", "target_branch", "title"]
                    .into_iter()
                    .find(|k| field(k).is_none());
                if let Some(k) = missing {
                    return respond(400, vec![], json!({"error": format!("{k} is missing")}));
                }
                let (head, base) = (
                    field("source_branch").unwrap_or_default(),
                    field("target_branch").unwrap_or_default(),
                );
                let title = field("title").unwrap_or_default();
                if let Some(p) = self.open_from(&head, &base) {
                    return respond(
                        409,
                        vec![],
                        json!({"message": [format!("Another open merge request already exists for this source branch: !{}", p.number)]}),
                    );
                }
                let Some(head_sha) = self.branch(&head) else {
                    return respond(
                        400,
                        vec![],
                        json!({"message": {"source_branch": ["is invalid"]}}),
                    );
                };
                if self.branch(&base).is_none() {
                    return respond(
                        400,
                        vec![],
                        json!({"message": {"target_branch": ["is invalid"]}}),
                    );
                }
                let p = self.open_pr(&head, &base, &title, head_sha);
                respond(201, vec![], self.gitlab_mr(&p))
            }
            ("GET", ["merge_requests", iid, "notes"]) => {
                let Some(p) = self.pr(iid) else {
                    return self.not_found("");
                };
                let mut notes: Vec<&FakeComment> = self
                    .comments
                    .iter()
                    .filter(|c| c.number == p.number)
                    .collect();
                // GitLab's default is newest first.
                if query.get("sort") != Some("asc") {
                    notes.reverse();
                }
                let items: Vec<Value> = notes.iter().map(|c| self.gitlab_note(c)).collect();
                self.gitlab_page(uri, query, &items)
            }
            ("POST", ["merge_requests", iid, "notes"]) => {
                let Some(p) = self.pr(iid) else {
                    return self.not_found("");
                };
                let Some(text) = Self::body_text(&body, "body") else {
                    return respond(400, vec![], json!({"error": "body is missing"}));
                };
                if text.chars().count() > 1_000_000 {
                    return respond(
                        400,
                        vec![],
                        json!({"message": {"note": ["is too long (maximum is 1000000 characters)"]}}),
                    );
                }
                self.add_comment(p.number, BOT, &text, false);
                let c = self.comments.last().cloned().expect("just added");
                respond(201, vec![], self.gitlab_note(&c))
            }
            ("PUT", ["merge_requests", iid, "notes", id]) => {
                let Some(p) = self.pr(iid) else {
                    return self.not_found("");
                };
                let Some(i) = self
                    .comment_index(id)
                    .filter(|&i| self.comments[i].number == p.number)
                else {
                    return self.not_found("Note");
                };
                if self.comments[i].author != BOT {
                    return respond(403, vec![], json!({"message": "403 Forbidden"}));
                }
                let Some(text) = Self::body_text(&body, "body") else {
                    return respond(400, vec![], json!({"error": "body is missing"}));
                };
                if text.chars().count() > 1_000_000 {
                    return respond(
                        400,
                        vec![],
                        json!({"message": {"note": ["is too long (maximum is 1000000 characters)"]}}),
                    );
                }
                self.comments[i].body = text;
                let c = self.comments[i].clone();
                respond(200, vec![], self.gitlab_note(&c))
            }
            ("POST", ["statuses", sha]) => {
                let Some(state) = Self::body_text(&body, "state") else {
                    return respond(400, vec![], json!({"error": "state is missing"}));
                };
                if ![
                    "pending", "running", "success", "failed", "canceled", "skipped",
                ]
                .contains(&state.as_str())
                {
                    return respond(
                        400,
                        vec![],
                        json!({"error": "state does not have a valid value"}),
                    );
                }
                let name = Self::body_text(&body, "name")
                    .or_else(|| Self::body_text(&body, "context"))
                    .unwrap_or_else(|| "default".into());
                let current = self
                    .statuses
                    .iter()
                    .rev()
                    .find(|s| s.sha == *sha && s.context == name)
                    .map(|s| s.state.clone());
                if let Some(current) = current {
                    if current == state && (state == "pending" || state == "running") {
                        let via = if state == "pending" { "enqueue" } else { "run" };
                        return respond(
                            400,
                            vec![],
                            json!({
                                "message": format!("Cannot transition status via :{via} from :{current} (Reason(s): Status cannot transition via \"{via}\")")
                            }),
                        );
                    }
                }
                let status = FakeStatus {
                    sha: sha.to_string(),
                    context: name,
                    state,
                    description: Self::body_text(&body, "description").unwrap_or_default(),
                    target_url: Self::body_text(&body, "target_url"),
                };
                self.next_id += 1;
                let answer = json!({
                    "id": self.next_id, "sha": status.sha, "ref": "main", "status": status.state,
                    "name": status.context, "target_url": status.target_url, "description": status.description,
                    "created_at": timestamp(self.next_id), "started_at": null, "finished_at": null,
                    "allow_failure": false, "coverage": null,
                    "author": {"id": 1, "username": BOT, "name": "fermata"}
                });
                self.statuses.push(status);
                respond(201, vec![], answer)
            }
            _ => self.not_found(""),
        }
    }

    fn gitlab_mr(&self, p: &FakePr) -> Value {
        let source_project_id = if p.fork.is_some() { FORK_ID } else { REPO_ID };
        let (state, merge_commit_sha, squash_commit_sha) = match &p.fate {
            Fate::Open => ("opened", Value::Null, Value::Null),
            Fate::Closed => ("closed", Value::Null, Value::Null),
            Fate::Merged {
                merge_commit,
                squash_commit,
            } => ("merged", json!(merge_commit), json!(squash_commit)),
        };
        json!({
            "id": 10_000 + p.number,
            "iid": p.number,
            "project_id": REPO_ID,
            "title": p.title,
            "state": state,
            "target_branch": p.base,
            "source_branch": p.head_branch,
            "source_project_id": source_project_id,
            "target_project_id": REPO_ID,
            "sha": p.head_sha,
            "merge_commit_sha": merge_commit_sha,
            "squash_commit_sha": squash_commit_sha,
            "draft": false,
            "web_url": format!("http://{}/acme/platform/fleet/-/merge_requests/{}", self.addr, p.number),
            "author": {"id": 7, "username": "alice"},
        })
    }

    fn gitlab_note(&self, c: &FakeComment) -> Value {
        json!({
            "id": c.id,
            "type": null,
            "body": c.body,
            "attachment": null,
            "author": {"id": 1, "username": c.author, "name": c.author},
            "created_at": timestamp(c.id),
            "updated_at": timestamp(c.id),
            "system": c.system,
            "noteable_id": 10_000 + c.number,
            "noteable_type": "MergeRequest",
            "noteable_iid": c.number,
            "resolvable": false,
            "confidential": false,
            "internal": false,
        })
    }

    /// One page of a GitLab listing with every pagination header GitLab sends.
    fn gitlab_page(&self, uri: &Uri, query: &Query, items: &[Value]) -> Response {
        let per_page = query.num("per_page", 20).clamp(1, 100).min(self.page_size);
        let page = query.num("page", 1).max(1);
        let (slice, pages) = paginate(items, page, per_page);
        let link = |p: usize, rel: &str| {
            format!(
                "<{}>; rel=\"{rel}\"",
                query.url_with_page(self.addr, uri.path(), p)
            )
        };
        let mut links = Vec::new();
        if page > 1 {
            links.push(link(page - 1, "prev"));
        }
        if page < pages {
            links.push(link(page + 1, "next"));
        }
        links.push(link(1, "first"));
        links.push(link(pages, "last"));
        let next = if page < pages {
            (page + 1).to_string()
        } else {
            String::new()
        };
        let prev = if page > 1 {
            (page - 1).to_string()
        } else {
            String::new()
        };
        respond(
            200,
            vec![
                ("x-page".into(), page.to_string()),
                ("x-per-page".into(), per_page.to_string()),
                ("x-next-page".into(), next),
                ("x-prev-page".into(), prev),
                ("x-total".into(), items.len().to_string()),
                ("x-total-pages".into(), pages.to_string()),
                ("link".into(), links.join(", ")),
            ],
            Value::Array(slice),
        )
    }
}

fn github_invalid(resource: &str, field: &str, code: &str, message: &str) -> Response {
    respond(
        422,
        vec![],
        json!({
            "message": "Validation Failed",
            "errors": [{"resource": resource, "code": code, "field": field, "message": message}],
            "documentation_url": "https://docs.github.com/rest",
            "status": "422"
        }),
    )
}
