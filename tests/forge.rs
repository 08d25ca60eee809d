//! The forge providers against fake GitHub, Gitea and GitLab servers
//! (`util/fake_forge.rs`): every test runs once per flavour.

#[path = "util/fake_forge.rs"]
mod fake_forge;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_forge::{sha_of, FakeForge, FakePr, Flavour, BOT, TOKEN};
use fermata::forge::{
    CommitState, CommitStatus, Forge, ForgeArgs, ForgeError, ForgeKind, GitHub, GitLab, Gitea,
    HttpSettings, PrState, Token,
};

const MARKER: &str = "<!-- fermata:plan:plant-a -->";

/// Retries in milliseconds, so that the failure tests cost no time.
fn fast() -> HttpSettings {
    HttpSettings {
        timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(5),
        retries: 3,
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        max_rate_limit_wait: Duration::from_secs(5),
    }
}

fn forge_with(fake: &FakeForge, token: &str, settings: HttpSettings) -> Box<dyn Forge> {
    let token = Token::new(token).unwrap();
    match fake.flavour {
        // GitHub Enterprise style: the API root itself.
        Flavour::GitHub => {
            Box::new(GitHub::new(&fake.api_url(), fake.repo(), token, settings).unwrap())
        }
        // Gitea and GitLab: the server, as users name it; the API path is appended.
        Flavour::Gitea => {
            Box::new(Gitea::new(&fake.root_url(), fake.repo(), token, settings).unwrap())
        }
        Flavour::GitLab => {
            Box::new(GitLab::new(&fake.root_url(), fake.repo(), token, settings).unwrap())
        }
    }
}

fn forge(fake: &FakeForge) -> Box<dyn Forge> {
    forge_with(fake, TOKEN, fast())
}

/// The paths of the list endpoint and of one pull request's comments.
fn pulls_path(f: Flavour) -> &'static str {
    match f {
        Flavour::GitLab => "/merge_requests?",
        _ => "/pulls?",
    }
}

fn comments_path(f: Flavour, number: u64) -> String {
    match f {
        Flavour::GitLab => format!("/merge_requests/{number}/notes"),
        _ => format!("/issues/{number}/comments"),
    }
}

fn update_method(f: Flavour) -> &'static str {
    match f {
        Flavour::GitLab => "PUT",
        _ => "PATCH",
    }
}

fn marked(text: &str) -> String {
    format!("{MARKER}\n### Plan for plant-a\n{text}")
}

async fn lists_open_pull_requests_across_pages_filtered_by_base(f: Flavour) {
    let fake = FakeForge::start(f).await;
    fake.set_page_size(2);
    for n in 1..=3 {
        fake.add_pr(FakePr::open(n, "main", &format!("feature-{n}")));
    }
    fake.add_pr(FakePr::open(4, "release", "hotfix"));
    fake.add_pr(FakePr::open(5, "main", "feature-5"));
    fake.add_pr(FakePr::open(6, "release", "hotfix-2"));
    fake.add_pr(FakePr::open(7, "main", "feature-7"));
    fake.add_pr(FakePr::open(8, "main", "abandoned").closed());
    fake.add_pr(FakePr::open(9, "main", "done").merged(&sha_of(99)));

    let prs = forge(&fake).open_pull_requests("main").await.unwrap();
    let numbers: Vec<u64> = prs.iter().map(|p| p.number).collect();
    assert_eq!(numbers, [1, 2, 3, 5, 7]);
    for p in &prs {
        assert_eq!(p.base, "main");
        assert_eq!(p.state, PrState::Open);
        assert_eq!(p.head_sha, sha_of(p.number));
        assert_eq!(p.head_branch, format!("feature-{}", p.number));
        assert_eq!(p.title, format!("Change {}", p.number));
    }
    let pages = fake.count("GET", pulls_path(f));
    match f {
        // Filtered by the server: 5 of them, 2 a page.
        Flavour::GitHub | Flavour::GitLab => assert_eq!(pages, 3, "{:#?}", fake.requests()),
        // Gitea lists all 7 open ones, the client keeps those on main.
        Flavour::Gitea => assert_eq!(pages, 4, "{:#?}", fake.requests()),
    }
    if f == Flavour::GitHub {
        // The Link targets are GitHub's own /repositories/{id} form, followed as given.
        assert_eq!(fake.count("GET", "/api/v3/repositories/42/pulls?"), 2);
    }
    assert!(fake
        .requests()
        .iter()
        .all(|r| r.credentials && r.status == 200));
}

async fn fork_detection_and_head_ref(f: Flavour) {
    let fake = FakeForge::start(f).await;
    fake.add_pr(FakePr::open(1, "main", "feature"));
    fake.add_pr(FakePr::open(2, "main", "main").by_fork("mallory/fleet"));
    fake.add_pr(
        FakePr::open(3, "main", "gone")
            .by_fork("bob/fleet")
            .fork_deleted(),
    );
    let prs = forge(&fake).open_pull_requests("main").await.unwrap();
    let forks: Vec<(u64, bool)> = prs.iter().map(|p| (p.number, p.from_fork)).collect();
    assert_eq!(forks, [(1, false), (2, true), (3, true)]);
    for p in &prs {
        let expected = match f {
            Flavour::GitLab => format!("refs/merge-requests/{}/head", p.number),
            _ => format!("refs/pull/{}/head", p.number),
        };
        assert_eq!(p.head_ref, expected);
    }
    // The fork's branch is named as in the fork, even when it is "main".
    assert_eq!(prs[1].head_branch, "main");
    assert_eq!(prs[1].head_sha, sha_of(2));
}

async fn pull_request_reports_merged_with_merge_commit(f: Flavour) {
    let fake = FakeForge::start(f).await;
    fake.add_pr(FakePr::open(1, "main", "a").merged(&sha_of(100)));
    fake.add_pr(FakePr::open(2, "main", "b").closed());
    fake.add_pr(FakePr::open(3, "main", "c"));
    fake.add_pr(
        FakePr::open(4, "main", "d")
            .by_fork("mallory/fleet")
            .merged(&sha_of(400)),
    );
    let forge = forge(&fake);

    let merged = forge.pull_request(1).await.unwrap();
    assert_eq!(
        merged.state,
        PrState::Merged {
            merge_commit: Some(sha_of(100))
        }
    );
    assert_eq!(merged.head_sha, sha_of(1));
    assert_eq!(forge.pull_request(2).await.unwrap().state, PrState::Closed);
    assert_eq!(forge.pull_request(3).await.unwrap().state, PrState::Open);
    let fork = forge.pull_request(4).await.unwrap();
    assert!(fork.from_fork);
    assert_eq!(
        fork.state,
        PrState::Merged {
            merge_commit: Some(sha_of(400))
        }
    );

    if f == Flavour::GitLab {
        fake.add_pr(FakePr::open(5, "main", "e").squash_merged(&sha_of(500)));
        let squashed = forge.pull_request(5).await.unwrap();
        assert_eq!(
            squashed.state,
            PrState::Merged {
                merge_commit: Some(sha_of(500))
            }
        );
    }

    match forge.pull_request(77).await {
        Err(ForgeError::Http {
            status: 404,
            message,
            ..
        }) => {
            assert!(message.contains("check the repository name"), "{message}")
        }
        other => panic!("expected a 404, got {other:?}"),
    }
}

async fn upsert_creates_once_then_updates_in_place(f: Flavour) {
    let fake = FakeForge::start(f).await;
    fake.add_pr(FakePr::open(1, "main", "feature"));
    let alice = fake.add_comment(1, "alice", "LGTM, but see the window");
    if f == Flavour::GitLab {
        fake.add_system_note(1, "added 1 commit");
    }
    let forge = forge(&fake);

    let first = forge
        .upsert_comment(1, MARKER, &marked("v1"))
        .await
        .unwrap();
    let second = forge
        .upsert_comment(1, MARKER, &marked("v2"))
        .await
        .unwrap();
    assert_eq!(first, second, "updated in place, same comment");

    let comments = fake.comments(1);
    let ours: Vec<_> = comments
        .iter()
        .filter(|c| c.body.contains(MARKER))
        .collect();
    assert_eq!(ours.len(), 1, "{comments:#?}");
    assert_eq!(ours[0].id, first);
    assert_eq!(ours[0].author, BOT);
    assert_eq!(ours[0].body, marked("v2"));
    let theirs = comments.iter().find(|c| c.id == alice).unwrap();
    assert_eq!(
        theirs.body, "LGTM, but see the window",
        "someone else's comment untouched"
    );
    assert_eq!(fake.count("POST", &comments_path(f, 1)), 1);
    assert_eq!(
        fake.count(update_method(f), "/comments/")
            .max(fake.count(update_method(f), "/notes/")),
        1
    );

    // The same body again writes nothing.
    let before = fake.requests().len();
    assert_eq!(
        forge
            .upsert_comment(1, MARKER, &marked("v2"))
            .await
            .unwrap(),
        first
    );
    let writes = fake.requests()[before..]
        .iter()
        .filter(|r| r.method != "GET")
        .count();
    assert_eq!(writes, 0);

    // A body without the marker gets it, so the next upsert still finds it.
    forge
        .upsert_comment(1, MARKER, "no marker in here")
        .await
        .unwrap();
    let ours: Vec<_> = fake
        .comments(1)
        .into_iter()
        .filter(|c| c.body.contains(MARKER))
        .collect();
    assert_eq!(ours.len(), 1);
    assert!(ours[0].body.starts_with("no marker in here"));
}

async fn upsert_finds_the_marker_on_a_later_page(f: Flavour) {
    let fake = FakeForge::start(f).await;
    fake.set_page_size(2);
    fake.add_pr(FakePr::open(1, "main", "feature"));
    // Two comments a page: ours is the first of page 2.
    for i in 0..2 {
        fake.add_comment(1, "alice", &format!("comment {i}"));
    }
    let ours = fake.add_comment(1, BOT, &marked("old plan"));
    // Someone quoting the plan, marker and all: not the comment to update.
    let quote = fake.add_comment(1, "bob", &format!("> {}\nwhy?", marked("old plan")));
    fake.add_comment(1, "carol", "+1");

    let id = forge(&fake)
        .upsert_comment(1, MARKER, &marked("new plan"))
        .await
        .unwrap();
    assert_eq!(id, ours);
    let comments = fake.comments(1);
    assert_eq!(
        comments.iter().find(|c| c.id == ours).unwrap().body,
        marked("new plan")
    );
    assert!(comments
        .iter()
        .find(|c| c.id == quote)
        .unwrap()
        .body
        .contains("old plan"));
    assert_eq!(comments.len(), 5, "no new comment");
    assert_eq!(fake.count("POST", &comments_path(f, 1)), 0);
    let listed = fake.count("GET", &comments_path(f, 1));
    match f {
        // 5 comments, 2 a page: all 3 pages (the oldest marked one wins).
        Flavour::GitHub | Flavour::GitLab => assert_eq!(listed, 3, "{:#?}", fake.requests()),
        // Gitea answers every comment at once: it has no pages here.
        Flavour::Gitea => assert_eq!(listed, 1),
    }
}

async fn upsert_after_a_lost_create_answer_makes_no_duplicate(f: Flavour) {
    let fake = FakeForge::start(f).await;
    fake.add_pr(FakePr::open(1, "main", "feature"));
    // The comment is created, but the proxy answers 502.
    fake.fail_next_after_applying(reqwest::Method::POST, 502);
    let id = forge(&fake)
        .upsert_comment(1, MARKER, &marked("v1"))
        .await
        .unwrap();
    let comments = fake.comments(1);
    assert_eq!(comments.len(), 1, "{comments:#?}");
    assert_eq!(comments[0].id, id);
    assert_eq!(
        fake.count("POST", &comments_path(f, 1)),
        1,
        "the create is never sent twice"
    );
}

async fn set_status_speaks_the_forge_vocabulary(f: Flavour) {
    let fake = FakeForge::start(f).await;
    let forge = forge(&fake);
    let sha = sha_of(1);
    let long = "x".repeat(300);
    for state in [
        CommitState::Pending,
        CommitState::Success,
        CommitState::Failure,
        CommitState::Error,
    ] {
        let status = CommitStatus {
            context: "fermata/plant-a".into(),
            state,
            description: long.clone(),
            target_url: Some("https://fermata.example/plant-a".into()),
        };
        forge.set_status(&sha, &status).await.unwrap();
    }
    let posted = fake.statuses(&sha);
    let states: Vec<&str> = posted.iter().map(|s| s.state.as_str()).collect();
    match f {
        Flavour::GitLab => assert_eq!(states, ["pending", "success", "failed", "failed"]),
        _ => assert_eq!(states, ["pending", "success", "failure", "error"]),
    }
    for s in &posted {
        assert_eq!(s.context, "fermata/plant-a");
        assert_eq!(
            s.target_url.as_deref(),
            Some("https://fermata.example/plant-a")
        );
        let limit = if f == Flavour::GitHub { 140 } else { 255 };
        assert_eq!(
            s.description.chars().count(),
            limit,
            "cut to the forge's limit"
        );
    }
    if f == Flavour::GitLab {
        // GitLab refuses pending -> pending with a 400; it already is pending.
        let pending = CommitStatus {
            context: "fermata/plant-b".into(),
            state: CommitState::Pending,
            description: "waiting for the window".into(),
            target_url: None,
        };
        forge.set_status(&sha, &pending).await.unwrap();
        forge.set_status(&sha, &pending).await.unwrap();
        assert!(fake.requests().iter().any(|r| r.status == 400));
    }
}

async fn retries_after_502s_then_succeeds(f: Flavour) {
    let fake = FakeForge::start(f).await;
    fake.add_pr(FakePr::open(1, "main", "feature"));
    fake.fail_next(2, 502);
    let prs = forge(&fake).open_pull_requests("main").await.unwrap();
    assert_eq!(prs.len(), 1);
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [502, 502, 200]);
}

async fn retries_after_a_cut_connection_then_succeeds(f: Flavour) {
    let fake = FakeForge::start(f).await;
    fake.add_pr(FakePr::open(1, "main", "feature"));
    fake.cut_next(2);
    assert_eq!(forge(&fake).pull_request(1).await.unwrap().number, 1);
    assert_eq!(fake.requests().len(), 3);
}

async fn unreachable_forge_is_a_transport_error(f: Flavour) {
    // A port nobody listens on any more: connections are refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let token = Token::new(TOKEN).unwrap();
    let forge: Box<dyn Forge> = match f {
        Flavour::GitHub => Box::new(GitHub::new(&url, "acme/fleet", token, fast()).unwrap()),
        Flavour::Gitea => Box::new(Gitea::new(&url, "acme/fleet", token, fast()).unwrap()),
        Flavour::GitLab => Box::new(GitLab::new(&url, "acme/fleet", token, fast()).unwrap()),
    };
    match forge.open_pull_requests("main").await {
        Err(ForgeError::Transport {
            forge: kind,
            method,
            message,
            ..
        }) => {
            assert_eq!(kind, f_name(f));
            assert_eq!(method, "GET");
            assert!(!message.is_empty());
            assert!(!message.contains(TOKEN), "{message}");
        }
        other => panic!("expected a transport error, got {other:?}"),
    }
}

async fn persistent_500_is_an_http_error_after_the_retry_budget(f: Flavour) {
    let fake = FakeForge::start(f).await;
    fake.add_pr(FakePr::open(1, "main", "feature"));
    fake.fail_next(100, 500);
    let err = forge(&fake).pull_request(1).await.unwrap_err();
    match &err {
        ForgeError::Http {
            status: 500,
            forge,
            method,
            url,
            ..
        } => {
            assert_eq!(*forge, f_name(f));
            assert_eq!(method, "GET");
            assert!(url.starts_with(&fake.root_url()), "{url}");
        }
        other => panic!("expected HTTP 500, got {other:?}"),
    }
    assert!(err.to_string().contains("(after 4 attempts)"), "{err}");
    assert_eq!(fake.requests().len(), 1 + fast().retries as usize);
}

fn f_name(f: Flavour) -> &'static str {
    match f {
        Flavour::GitHub => "github",
        Flavour::Gitea => "gitea",
        Flavour::GitLab => "gitlab",
    }
}

/// The one test that really waits: at most a second.
async fn rate_limit_with_a_short_reset_is_waited_out(f: Flavour) {
    let fake = FakeForge::start(f).await;
    fake.add_pr(FakePr::open(1, "main", "feature"));
    fake.rate_limit_for(Duration::from_millis(300));
    let started = Instant::now();
    let pr = forge(&fake).pull_request(1).await.unwrap();
    assert_eq!(pr.number, 1);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    let limited = if f == Flavour::GitHub { 403 } else { 429 };
    assert_eq!(statuses.first(), Some(&limited), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&200), "{statuses:?}");
}

async fn rate_limit_with_a_long_reset_fails_at_once(f: Flavour) {
    let fake = FakeForge::start(f).await;
    fake.add_pr(FakePr::open(1, "main", "feature"));
    fake.rate_limit_for(Duration::from_secs(3600));
    let started = Instant::now();
    let err = forge(&fake).open_pull_requests("main").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1), "did not wait");
    match &err {
        ForgeError::RateLimited { resets_at, .. } => {
            let in_secs = (*resets_at - chrono::Utc::now()).num_seconds();
            assert!((3500..=3601).contains(&in_secs), "{in_secs}");
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("rate limited until"), "{text}");
    assert!(text.contains("not waiting longer than 5 s"), "{text}");
    assert_eq!(fake.requests().len(), 1);
}

async fn wrong_token_is_a_clear_401_without_the_token(f: Flavour) {
    let fake = FakeForge::start(f).await;
    let wrong = "wrong-token-s3cr3t-99";
    let err = forge_with(&fake, wrong, fast())
        .open_pull_requests("main")
        .await
        .unwrap_err();
    let said = match f {
        Flavour::GitHub => "Bad credentials",
        Flavour::Gitea => "invalid username, password or token",
        Flavour::GitLab => "401 Unauthorized",
    };
    match &err {
        ForgeError::Http {
            status: 401,
            message,
            ..
        } => {
            assert!(message.contains(said), "{message}");
            assert!(message.contains("the token was refused"), "{message}");
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    assert!(!err.to_string().contains(wrong), "{err}");
    assert!(!format!("{err:?}").contains(wrong), "{err:?}");
    assert_eq!(fake.requests().len(), 1, "a 401 is not retried");
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn token_never_appears_in_logs_or_errors(f: Flavour) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let fake = FakeForge::start(f).await;
    fake.add_pr(FakePr::open(1, "main", "feature"));
    let forge = forge(&fake);
    let mut errors = Vec::new();

    fake.fail_next(1, 502);
    forge.open_pull_requests("main").await.unwrap();
    forge
        .upsert_comment(1, MARKER, &marked("v1"))
        .await
        .unwrap();
    fake.fail_next(1 + fast().retries as usize, 503);
    errors.push(forge.pull_request(1).await.unwrap_err());
    let wrong = forge_with(&fake, "wrong-token-s3cr3t-99", fast());
    errors.push(wrong.pull_request(1).await.unwrap_err());
    fake.rate_limit_for(Duration::from_secs(3600));
    errors.push(forge.pull_request(1).await.unwrap_err());

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("retrying"), "the capture works: {logs}");
    assert!(logs.contains("forge request"), "{logs}");
    for secret in [TOKEN, "wrong-token-s3cr3t-99"] {
        assert!(!logs.contains(secret), "token in the logs:\n{logs}");
        for e in &errors {
            assert!(!e.to_string().contains(secret), "{e}");
            assert!(!format!("{e:?}").contains(secret), "{e:?}");
        }
        assert!(!format!("{forge:?}").contains(secret));
    }
}

async fn built_from_flags_with_a_token_file(f: Flavour) {
    let fake = FakeForge::start(f).await;
    fake.add_pr(FakePr::open(1, "main", "feature"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let args = ForgeArgs {
        forge: Some(match f {
            Flavour::GitHub => ForgeKind::GitHub,
            Flavour::Gitea => ForgeKind::Gitea,
            Flavour::GitLab => ForgeKind::GitLab,
        }),
        forge_url: Some(match f {
            Flavour::GitHub => fake.api_url(),
            _ => fake.root_url(),
        }),
        forge_repo: Some(fake.repo().into()),
        forge_token_file: Some(file),
        forge_token_env: None,
    };
    let forge = args.build_with(fast()).unwrap().expect("a forge");
    assert_eq!(forge.kind(), f_name(f));
    assert_eq!(
        forge.comment_limit(),
        match f {
            Flavour::GitLab => 1_000_000,
            _ => 65_536,
        }
    );
    assert_eq!(forge.open_pull_requests("main").await.unwrap().len(), 1);
}

fn create_path(f: Flavour) -> &'static str {
    match f {
        Flavour::GitLab => "/merge_requests",
        _ => "/pulls",
    }
}

async fn open_pull_request_opens_once_then_finds_it_again(f: Flavour) {
    let fake = FakeForge::start(f).await;
    // The same branch name in a fork is another pull request's head.
    fake.add_pr(FakePr::open(1, "main", "fermata/campaign/a/canary-1").by_fork("someone/fleet"));
    let forge = forge(&fake);
    let head = "fermata/campaign/a/canary-1";
    let pr = forge
        .open_pull_request(head, "main", "campaign a stage canary batch 1/1", "body")
        .await
        .unwrap();
    assert_eq!(pr.number, 2);
    assert_eq!((pr.head_branch.as_str(), pr.base.as_str()), (head, "main"));
    assert_eq!(pr.state, PrState::Open);
    assert!(!pr.from_fork);
    assert_eq!(pr.title, "campaign a stage canary batch 1/1");
    let again = forge
        .open_pull_request(head, "main", "campaign a stage canary batch 1/1", "body")
        .await
        .unwrap();
    assert_eq!(again.number, 2);
    assert_eq!(fake.prs().len(), 2);
    assert_eq!(fake.count("POST", create_path(f)), 1, "created once");
    assert_eq!(forge.pull_request(2).await.unwrap().state, PrState::Open);
}

async fn open_pull_request_after_a_lost_answer_makes_no_duplicate(f: Flavour) {
    let fake = FakeForge::start(f).await;
    // The pull request is opened, but the proxy answers 502.
    fake.fail_next_after_applying(reqwest::Method::POST, 502);
    let pr = forge(&fake)
        .open_pull_request("feature", "main", "t", "b")
        .await
        .unwrap();
    assert_eq!(pr.number, 1);
    assert_eq!(fake.prs().len(), 1, "{:?}", fake.prs());
    assert_eq!(fake.count("POST", create_path(f)), 1, "never sent twice");
}

macro_rules! per_flavour {
    ($($test:ident),* $(,)?) => {
        mod github {
            use super::*;
            $( #[tokio::test] async fn $test() { super::$test(Flavour::GitHub).await } )*
        }
        mod gitea {
            use super::*;
            $( #[tokio::test] async fn $test() { super::$test(Flavour::Gitea).await } )*
        }
        mod gitlab {
            use super::*;
            $( #[tokio::test] async fn $test() { super::$test(Flavour::GitLab).await } )*
        }
    };
}

per_flavour!(
    lists_open_pull_requests_across_pages_filtered_by_base,
    fork_detection_and_head_ref,
    pull_request_reports_merged_with_merge_commit,
    upsert_creates_once_then_updates_in_place,
    upsert_finds_the_marker_on_a_later_page,
    upsert_after_a_lost_create_answer_makes_no_duplicate,
    set_status_speaks_the_forge_vocabulary,
    retries_after_502s_then_succeeds,
    retries_after_a_cut_connection_then_succeeds,
    unreachable_forge_is_a_transport_error,
    persistent_500_is_an_http_error_after_the_retry_budget,
    rate_limit_with_a_short_reset_is_waited_out,
    rate_limit_with_a_long_reset_fails_at_once,
    wrong_token_is_a_clear_401_without_the_token,
    token_never_appears_in_logs_or_errors,
    built_from_flags_with_a_token_file,
    open_pull_request_opens_once_then_finds_it_again,
    open_pull_request_after_a_lost_answer_makes_no_duplicate,
);
