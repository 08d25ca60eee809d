//! Pull requests end to end: the real `fermata run --once` binary against a
//! faithful fake forge (`util/fake_forge.rs`) and a real repository served
//! over file://. One plan comment per pull request and site, updated in
//! place; commit statuses per site; a fork's command synthesizer never run;
//! after merge, the comment says when the change was installed.

#[path = "util/fake_forge.rs"]
mod fake_forge;
mod util;

use std::path::{Path, PathBuf};

use fake_forge::{FakeForge, FakePr, Flavour};
use util::TestRepo;

const SYMPHONY: &str = "apiVersion: fermata.dev/v1alpha1
kind: Symphony
metadata: {name: shop}
spec:
  window: sat
  variations:
    - synthesizer: {name: app}
      synthesisEnv: [{name: TAG, value: v1}]
";

/// Saturday 2026-11-21 03:00 UTC: the `sat` window is open.
const OPEN: &str = "2026-11-21T03:00:00Z";
/// Sunday: closed until Saturday 2026-11-28 02:00 UTC.
const CLOSED: &str = "2026-11-22T10:00:00Z";
const NEXT_OPEN: &str = "2026-11-28T02:30:00Z";

struct Fleet {
    work: TestRepo,
    _remotes: tempfile::TempDir,
    bare: PathBuf,
    state: tempfile::TempDir,
    sentinel: tempfile::TempDir,
}

impl Fleet {
    fn new() -> Fleet {
        let work = TestRepo::new();
        util::minimal(&work)
            .write("windows.yaml", util::SAT_WINDOW)
            .write("symphony.yaml", SYMPHONY);
        work.commit("fleet v1");
        let remotes = tempfile::tempdir().unwrap();
        let bare = util::bare_clone(work.path(), remotes.path(), "fleet.git");
        work.git(&["remote", "add", "origin", bare.to_str().unwrap()]);
        Fleet {
            work,
            _remotes: remotes,
            bare,
            state: tempfile::tempdir().unwrap(),
            sentinel: tempfile::tempdir().unwrap(),
        }
    }

    fn sentinel(&self) -> PathBuf {
        self.sentinel.path().join("command-ran")
    }

    /// A branch changing TAG to `tag` and adding a command synthesizer that
    /// would leave the sentinel file; pushed, and as the forge's pull ref.
    fn pull_request(&self, head_ref: &str, tag: &str) -> String {
        self.work.git(&["checkout", "-q", "-B", "feature"]);
        self.work
            .write("symphony.yaml", &SYMPHONY.replace("value: v1", &format!("value: {tag}")))
            .write(
                "tool/synth.yaml",
                &format!(
                    "apiVersion: fermata.dev/v1alpha1\nkind: Synthesizer\nmetadata: {{name: tool}}\nspec:\n  command: [\"sh\", \"-c\", \"touch {}; printf 'kind: ResourceList\\\\nitems: [{{apiVersion: v1, kind: ConfigMap, metadata: {{name: t}}}}]\\\\n'\"]\n",
                    self.sentinel().display()
                ),
            )
            .write(
                "tool/symphony.yaml",
                "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {name: tool}\nspec:\n  variations:\n    - synthesizer: {name: tool}\n",
            );
        let sha = self.work.commit(&format!("tag {tag}"));
        self.work
            .git(&["push", "-q", "-f", "origin", &format!("HEAD:{head_ref}")]);
        self.work.git(&["checkout", "-q", "main"]);
        sha
    }

    fn run(&self, forge: &FakeForge, now: &str) -> util::Run {
        let url = format!("file://{}", self.bare.display());
        let kind = match forge.flavour {
            Flavour::GitHub => "github",
            Flavour::Gitea => "gitea",
            Flavour::GitLab => "gitlab",
        };
        let api = forge.api_url();
        util::fermata_at(
            self.state.path(),
            &[
                "run",
                "--once",
                "--repo",
                &url,
                "--branch",
                "main",
                "--site",
                "plant-a",
                "--forge",
                kind,
                "--forge-url",
                &api,
                "--forge-repo",
                forge.repo(),
                "--forge-token-env",
                "FORGE_TOKEN",
            ],
            now,
            &[("FORGE_TOKEN", fake_forge::TOKEN)],
        )
    }

    fn installed(&self, tag: &str) -> bool {
        let p: &Path = self.state.path();
        std::fs::read_to_string(p.join("targets/site/shop/app/current/manifest.yaml"))
            .is_ok_and(|m| m.contains(tag))
    }
}

fn one_plan_comment(forge: &FakeForge, number: u64) -> String {
    let comments = forge.comments(number);
    let plans: Vec<_> = comments
        .iter()
        .filter(|c| c.body.contains("<!-- fermata:plan:plant-a -->"))
        .collect();
    assert_eq!(plans.len(), 1, "exactly one plan comment: {comments:#?}");
    plans[0].body.clone()
}

fn last_status(forge: &FakeForge, sha: &str) -> (String, String) {
    let all = forge.statuses(sha);
    let s = all
        .iter()
        .rev()
        .find(|s| s.context == "fermata/plant-a")
        .unwrap_or_else(|| panic!("no fermata/plant-a status on {sha}: {all:#?}"));
    (s.state.clone(), s.description.clone())
}

async fn pull_request_lifecycle(flavour: Flavour, head_ref: impl Fn(u64) -> String) {
    let forge = FakeForge::start(flavour).await;
    let fleet = Fleet::new();
    let main_v1 = fleet.work.git(&["rev-parse", "HEAD"]);
    let first = tokio::task::block_in_place(|| fleet.run(&forge, OPEN));
    assert_eq!(first.code, 0, "{first:?}");
    assert!(fleet.installed("v1"));
    assert_eq!(last_status(&forge, &main_v1).0, success(flavour));

    // A pull request from a fork, with a command synthesizer.
    let head = fleet.pull_request(&head_ref(7), "v2");
    let mut pr = FakePr::open(7, "main", "feature").by_fork("someone/fleet");
    pr.head_sha = head.clone();
    forge.add_pr(pr);
    let run = tokio::task::block_in_place(|| fleet.run(&forge, CLOSED));
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!fleet.sentinel().exists(), "a fork's command ran");
    let body = one_plan_comment(&forge, 7);
    assert!(
        body.contains(&format!("`{}` against `main`", &head[..7])),
        "{body}"
    );
    assert!(
        body.contains(
            "| `shop/app` | update | `sat`: next opening 2026-11-28 02:00 UTC (02:00 UTC) |"
        ),
        "{body}"
    );
    assert!(body.contains("+  tag: v2"), "{body}");
    assert!(body.contains("CommandNotRun"), "{body}");
    assert!(!fleet.installed("v2"), "a plan applied something");
    let (state, description) = last_status(&forge, &head);
    assert_eq!(state, success(flavour), "{description}");
    assert!(description.contains("not run"), "{description}");

    // Nothing new: nothing written to the forge.
    forge.clear_requests();
    let again = tokio::task::block_in_place(|| fleet.run(&forge, CLOSED));
    assert_eq!(again.code, 0, "{again:?}");
    let writes: Vec<_> = forge
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .collect();
    assert!(writes.is_empty(), "{writes:#?}");
    // An open pull request is known open from the list: not asked for again.
    let asked: Vec<_> = forge
        .requests()
        .into_iter()
        .filter(|r| {
            let path = r.path.split('?').next().unwrap_or("");
            path.ends_with("/pulls/7") || path.ends_with("/merge_requests/7")
        })
        .collect();
    assert!(asked.is_empty(), "{asked:#?}");

    // A new head: the same comment, updated in place.
    let head2 = fleet.pull_request(&head_ref(7), "v3");
    forge.update_pr(7, |p| p.head_sha = head2.clone());
    let run = tokio::task::block_in_place(|| fleet.run(&forge, CLOSED));
    assert_eq!(run.code, 0, "{run:?}");
    let body = one_plan_comment(&forge, 7);
    assert!(
        body.contains(&head2[..7]) && body.contains("+  tag: v3"),
        "{body}"
    );

    // Merged (fast-forward): staged while the window is closed, pending.
    fleet.work.git(&["merge", "-q", "--ff-only", "feature"]);
    fleet.work.git(&["push", "-q", "origin", "main"]);
    forge.update_pr(7, |p| {
        p.fate = fake_forge::Fate::Merged {
            merge_commit: Some(head2.clone()),
            squash_commit: None,
        }
    });
    let run = tokio::task::block_in_place(|| fleet.run(&forge, CLOSED));
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(last_status(&forge, &head2).0, pending(flavour));
    assert!(!one_plan_comment(&forge, 7).contains("installed at"));
    // The window opens: installed, success, and the comment says when.
    let run = tokio::task::block_in_place(|| fleet.run(&forge, NEXT_OPEN));
    assert_eq!(run.code, 0, "{run:?}");
    assert!(fleet.installed("v3"));
    assert_eq!(last_status(&forge, &head2).0, success(flavour));
    let body = one_plan_comment(&forge, 7);
    assert!(
        body.contains("**installed at 2026-11-28 02:30 UTC**"),
        "{body}"
    );
    // On a watched branch the command runs, as any merged change's does.
    assert!(fleet.sentinel().exists());
}

fn success(_: Flavour) -> String {
    "success".into()
}

fn pending(_: Flavour) -> String {
    "pending".into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_pull_request_plan_statuses_and_merge() {
    pull_request_lifecycle(Flavour::GitHub, |n| format!("refs/pull/{n}/head")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_merge_request_plan_statuses_and_merge() {
    pull_request_lifecycle(Flavour::GitLab, |n| format!("refs/merge-requests/{n}/head")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitea_pull_request_plan_statuses_and_merge() {
    pull_request_lifecycle(Flavour::Gitea, |n| format!("refs/pull/{n}/head")).await;
}
