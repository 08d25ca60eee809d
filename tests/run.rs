//! `fermata run` end to end on real repositories: stage on commit, apply in
//! windows, status in Git. Time is moved with `--now`, never slept.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;

use util::{git, TestRepo};

/// Saturday 2026-11-21 02:00-05:00 UTC is open; the next opening is a week later.
const OPEN: &str = "2026-11-21T02:30:00Z";
const CLOSED: &str = "2026-11-21T06:00:00Z";
const NEXT_OPEN: &str = "2026-11-28T02:10:00Z";

const WINDOW: &str = util::SAT_WINDOW;

/// The minimal fleet with its symphony in the `sat` window.
fn windowed(repo: &TestRepo, tag: &str) {
    util::minimal(repo).write("window.yaml", WINDOW).write(
        "symphony.yaml",
        &util::SYMPHONY
            .replace("value: v1", &format!("value: {tag}"))
            .replace("spec:\n", "spec:\n  window: sat\n"),
    );
}

/// A state dir and target root shared by the passes of one test.
struct Site {
    state: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        Site {
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn targets(&self) -> PathBuf {
        self.state.path().join("targets")
    }

    /// The `current` manifest of `shop/app` on target `site`.
    fn current(&self) -> Option<String> {
        std::fs::read_to_string(self.targets().join("site/shop/app/current/manifest.yaml")).ok()
    }

    fn staged(&self) -> Option<String> {
        std::fs::read_to_string(self.targets().join("site/shop/app/staged/manifest.yaml")).ok()
    }

    /// `fermata ARGS --state-dir <state>` at `now`, as user `tester`.
    fn fermata(&self, args: &[&str], now: &str) -> util::Run {
        util::fermata_at(self.state.path(), args, now, &[("USER", "tester")])
    }

    fn once(&self, repo: &TestRepo, now: &str) -> util::Run {
        util::run_once(self.state.path(), repo, now)
    }
}

fn status_commits(repo: &Path) -> Vec<String> {
    let out = Command::new("git")
        .current_dir(repo)
        .args(["log", "--format=%s", "fermata/status"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn status_file(repo: &TestRepo) -> String {
    git(repo.path(), &["show", "fermata/status:main/shop/app.yaml"])
}

#[test]
fn stage_on_commit_apply_in_window_status_in_git() {
    let repo = TestRepo::new();
    let site = Site::new();
    windowed(&repo, "a");
    let a = repo.commit("A");
    let run = site.once(&repo, OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("installed"), "{run:?}");
    assert!(site.current().unwrap().contains("tag: a"));

    windowed(&repo, "b");
    let b = repo.commit("B");
    let run = site.once(&repo, CLOSED);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(site.staged().unwrap().contains("tag: b"), "B is staged");
    assert!(
        site.current().unwrap().contains("tag: a"),
        "A stays applied while closed"
    );
    let st = status_file(&repo);
    assert!(st.contains("state: staged"), "{st}");
    assert!(st.contains("reason: WindowClosed"), "{st}");
    assert!(st.contains("nextOpen: 2026-11-28T02:00:00Z"), "{st}");

    // The window opens: B is applied without a new commit.
    let run = site.once(&repo, NEXT_OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(site.current().unwrap().contains("tag: b"));
    assert!(status_file(&repo).contains("state: installed"));

    let log = status_commits(repo.path());
    assert_eq!(log.len(), 3, "one status commit per changed pass: {log:?}");
    // Each subject says what changed; the body the counts.
    assert_eq!(
        log,
        [
            format!("main@{}: shop/app staged -> installed", &b[..7]),
            format!("main@{}: shop/app installed -> staged", &b[..7]),
            format!("main@{}: shop/app new -> installed", &a[..7]),
        ]
    );
    let body = git(repo.path(), &["log", "-1", "--format=%b", "fermata/status"]);
    assert!(
        body.starts_with(&format!("main@{}: 1 installed\n", &b[..7])),
        "{body}"
    );
    let trailer = git(repo.path(), &["log", "-1", "--format=%B", "fermata/status"]);
    assert!(
        trailer.contains(&format!("Fermata-Source: main@{b}")),
        "{trailer}"
    );
    let notes = git(
        repo.path(),
        &["log", "--notes=fermata", "--format=%H %N", "main"],
    );
    assert!(
        notes.contains(&format!("{a} main@{}: 1 installed", &a[..7])),
        "{notes}"
    );
    assert!(
        notes.contains(&format!("main@{}: 1 installed", &b[..7])),
        "{notes}"
    );
}

#[test]
fn an_unchanged_commit_writes_nothing() {
    let repo = TestRepo::new();
    let site = Site::new();
    windowed(&repo, "a");
    repo.commit("A");
    assert_eq!(site.once(&repo, OPEN).code, 0);
    let tip = git(repo.path(), &["rev-parse", "fermata/status"]);
    let listing = |p: &Path| {
        let mut v: Vec<_> = walk(p)
            .into_iter()
            .map(|(p, m)| format!("{} {m:?}", p.display()))
            .collect();
        v.sort();
        v
    };
    let before = listing(&site.targets());
    for _ in 0..2 {
        let run = site.once(&repo, OPEN);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(!run.stdout.contains("status: committed"), "{run:?}");
    }
    assert_eq!(
        git(repo.path(), &["rev-parse", "fermata/status"]),
        tip,
        "no status commit"
    );
    assert_eq!(listing(&site.targets()), before, "no target write");
}

/// Every file below `dir` with its modification time.
fn walk(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            out.push((p.clone(), meta.modified().unwrap()));
            if meta.is_dir() {
                out.extend(walk(&p));
            }
        }
    }
    out
}

#[test]
fn only_the_newest_of_several_commits_is_applied_at_opening() {
    let repo = TestRepo::new();
    let site = Site::new();
    windowed(&repo, "a");
    repo.commit("A");
    assert_eq!(site.once(&repo, OPEN).code, 0);
    for tag in ["b", "c"] {
        windowed(&repo, tag);
        repo.commit(tag);
        assert_eq!(site.once(&repo, CLOSED).code, 0);
        assert!(site.current().unwrap().contains("tag: a"));
        assert!(site.staged().unwrap().contains(&format!("tag: {tag}")));
    }
    assert_eq!(site.once(&repo, NEXT_OPEN).code, 0);
    assert!(site.current().unwrap().contains("tag: c"));
    let applied = std::fs::read_to_string(site.targets().join("site/shop/app/.fermata/applied"))
        .unwrap_or_default();
    assert!(!applied.is_empty(), "apply history kept");
}

#[test]
fn no_apply_starts_after_the_window_closes() {
    let repo = TestRepo::new();
    let site = Site::new();
    windowed(&repo, "a");
    repo.commit("A");
    // One second before the close: applies. At the close: does not.
    assert_eq!(site.once(&repo, "2026-11-21T04:59:59Z").code, 0);
    assert!(site.current().unwrap().contains("tag: a"));
    windowed(&repo, "b");
    repo.commit("B");
    assert_eq!(site.once(&repo, "2026-11-21T05:00:00Z").code, 0);
    assert!(site.current().unwrap().contains("tag: a"));
    assert!(site.staged().unwrap().contains("tag: b"));
}

#[test]
fn apply_now_breaks_glass_and_is_recorded() {
    let repo = TestRepo::new();
    let site = Site::new();
    windowed(&repo, "a");
    repo.commit("A");
    assert_eq!(site.once(&repo, CLOSED).code, 0);
    assert!(site.current().is_none(), "closed: nothing applied");
    let p = repo.path().to_str().unwrap();
    let run = site.fermata(
        &[
            "apply-now",
            "shop/app",
            "--reason",
            "line down, hotfix",
            "--repo",
            p,
            "--branch",
            "main",
        ],
        CLOSED,
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(site.current().unwrap().contains("tag: a"));
    let st = status_file(&repo);
    assert!(st.contains("who: tester"), "{st}");
    assert!(st.contains("why: line down, hotfix"), "{st}");
    // The override was for that digest only: the next commit waits again.
    windowed(&repo, "b");
    repo.commit("B");
    assert_eq!(site.once(&repo, CLOSED).code, 0);
    assert!(site.current().unwrap().contains("tag: a"));
    // Nothing staged for an unknown composition: refused.
    let run = site.fermata(
        &[
            "apply-now",
            "nope/x",
            "--reason",
            "r",
            "--repo",
            p,
            "--branch",
            "main",
        ],
        CLOSED,
    );
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("nothing staged"), "{run:?}");
}

#[test]
fn a_broken_symphony_fails_alone_and_keeps_what_it_applied() {
    let repo = TestRepo::new();
    let site = Site::new();
    util::minimal(&repo).write(
        "other.yaml",
        &util::SYMPHONY
            .replace("name: shop", "name: other")
            .replace("value: v1", "value: o1"),
    );
    repo.commit("two symphonies");
    let run = site.once(&repo, OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    // Break `other`, change `shop`.
    repo.write(
        "other.yaml",
        &util::SYMPHONY
            .replace("name: shop", "name: other")
            .replace("synthesizer: {name: app}", "synthesizer: {name: nope}"),
    );
    repo.write(
        "symphony.yaml",
        &util::SYMPHONY.replace("value: v1", "value: v2"),
    );
    repo.commit("break other");
    let run = site.once(&repo, OPEN);
    assert_eq!(run.code, 1, "a failure is an exit 1 for --once: {run:?}");
    assert!(site.current().unwrap().contains("tag: v2"), "shop goes on");
    let other =
        std::fs::read_to_string(site.targets().join("site/other/app/current/manifest.yaml"))
            .unwrap();
    assert!(
        other.contains("tag: o1"),
        "other keeps its last applied state"
    );
    let st = git(repo.path(), &["show", "fermata/status:main/other/app.yaml"]);
    assert!(st.contains("state: failed"), "{st}");
    assert!(
        st.contains("source: other.yaml:6"),
        "status says where: {st}"
    );
    assert!(
        st.contains("no Synthesizer named \\\"nope\\\"")
            || st.contains("no Synthesizer named \"nope\""),
        "{st}"
    );
}

#[test]
fn the_status_branch_is_never_a_watched_branch() {
    let repo = TestRepo::new();
    util::minimal(&repo);
    repo.commit("one");
    let site = Site::new();
    let p = repo.path().to_str().unwrap();
    let run = site.fermata(
        &[
            "run",
            "--once",
            "--repo",
            p,
            "--branch",
            "main",
            "--status-branch",
            "main",
        ],
        OPEN,
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("never land on a watched branch"),
        "{run:?}"
    );
}

#[test]
fn a_deleted_branch_applies_nothing_and_deletes_nothing() {
    let repo = TestRepo::new();
    let site = Site::new();
    util::minimal(&repo);
    repo.commit("one");
    repo.git(&["branch", "edge"]);
    let p = repo.path().to_str().unwrap();
    let run = site.fermata(&["run", "--once", "--repo", p, "--branch", "edge"], OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(site.current().is_some());
    repo.git(&["branch", "-D", "edge"]);
    let run = site.fermata(&["run", "--once", "--repo", p, "--branch", "edge"], OPEN);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("branch edge not found"), "{run:?}");
    assert!(site.current().is_some(), "nothing deleted");
}

#[test]
fn a_force_push_is_reported() {
    let repo = TestRepo::new();
    let site = Site::new();
    util::minimal(&repo);
    repo.commit("one");
    repo.write(
        "symphony.yaml",
        &util::SYMPHONY.replace("value: v1", "value: v2"),
    );
    let two = repo.commit("two");
    assert_eq!(site.once(&repo, OPEN).code, 0);
    repo.git(&["reset", "-q", "--hard", "HEAD~1"]);
    repo.write(
        "symphony.yaml",
        &util::SYMPHONY.replace("value: v1", "value: v3"),
    );
    repo.commit("rewritten");
    assert_eq!(site.once(&repo, OPEN).code, 0);
    assert!(site.current().unwrap().contains("tag: v3"));
    let log = status_commits(repo.path());
    assert!(
        log[0].contains(&format!("force-pushed over {}", &two[..7])),
        "{log:?}"
    );
}

#[test]
fn a_fetch_failure_keeps_the_last_good_revision_and_shows_in_status() {
    let origin = TestRepo::new();
    util::minimal(&origin);
    origin.commit("one");
    let bare = tempfile::tempdir().unwrap();
    util::bare_clone(origin.path(), bare.path(), "r.git");
    let url = format!("file://{}/r.git", bare.path().display());
    let site = Site::new();
    let run = site.fermata(&["run", "--once", "--repo", &url, "--branch", "main"], OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(site.current().unwrap().contains("tag: v1"));
    let moved = bare.path().join("gone.git");
    std::fs::rename(bare.path().join("r.git"), &moved).unwrap();
    let run = site.fermata(&["run", "--once", "--repo", &url, "--branch", "main"], OPEN);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("cannot fetch"), "{run:?}");
    assert!(
        run.stdout
            .contains("error: fetch failed; reconciling the last good revision"),
        "{run:?}"
    );
    // The report keeps git's own reason, not only "cannot fetch URL".
    assert!(
        run.stdout.contains("No such file or directory")
            || run.stdout.contains("could not find repository"),
        "{run:?}"
    );
    assert!(
        site.current().unwrap().contains("tag: v1"),
        "last good revision stays applied"
    );
    // The remote is back: its status carries the last outcome, without a fetch error.
    std::fs::rename(&moved, bare.path().join("r.git")).unwrap();
    let run = site.fermata(&["run", "--once", "--repo", &url, "--branch", "main"], OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    let st = git(
        &bare.path().join("r.git"),
        &["show", "fermata/status:main/shop/app.yaml"],
    );
    assert!(
        st.contains("state: installed") && !st.contains("FetchFailed"),
        "{st}"
    );
}

#[test]
fn windows_lists_openings_in_utc_and_local_time() {
    let repo = TestRepo::new();
    util::minimal(&repo).write(
        "window.yaml",
        "apiVersion: fermata.dev/v1alpha1\nkind: MaintenanceWindow\nmetadata: {name: night}\nspec: {schedule: \"0 2 * * SAT\", duration: 3h, timezone: Europe/Berlin}\n",
    );
    repo.commit("window");
    let run = util::fermata(&[
        "windows",
        "--repo",
        repo.path().to_str().unwrap(),
        "--now",
        "2026-11-20T12:00:00Z",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        "night: closed (0 2 * * SAT for 3h, Europe/Berlin)
  next: 2026-11-21T01:00:00+00:00  (2026-11-21T02:00:00+01:00)
  next: 2026-11-28T01:00:00+00:00  (2026-11-28T02:00:00+01:00)
  next: 2026-12-05T01:00:00+00:00  (2026-12-05T02:00:00+01:00)
"
    );
}

#[test]
fn status_prints_table_yaml_json_and_margo() {
    let repo = TestRepo::new();
    let site = Site::new();
    windowed(&repo, "a");
    repo.commit("A");
    assert_eq!(site.once(&repo, CLOSED).code, 0);
    let p = repo.path().to_str().unwrap();
    let table = site.fermata(&["status", "--repo", p], CLOSED);
    assert_eq!(table.code, 0, "{table:?}");
    assert!(table.stdout.contains("shop/app"), "{table:?}");
    assert!(table.stdout.contains("staged"), "{table:?}");
    let margo = site.fermata(&["status", "--repo", p, "--format", "margo"], CLOSED);
    let v: serde_json::Value = serde_json::from_str(&margo.stdout).unwrap();
    assert_eq!(v[0]["kind"], "DeploymentStatusManifest");
    assert_eq!(v[0]["deploymentId"], "shop/app");
    assert_eq!(
        v[0]["status"]["state"], "pending",
        "Margo has no staged: {v}"
    );
    assert_eq!(v[0]["components"][0]["name"], "v1/ConfigMap/default/app");
    let json = site.fermata(&["status", "--repo", p, "--format", "json"], CLOSED);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v[0]["status"]["state"], "staged");
    let yaml = site.fermata(&["status", "--repo", p, "--format", "yaml"], CLOSED);
    assert!(yaml.stdout.contains("kind: DeploymentStatus"), "{yaml:?}");
}

#[test]
fn sites_sharing_a_repository_do_not_overwrite_each_other() {
    let repo = TestRepo::new();
    util::minimal(&repo);
    let head = repo.commit("one");
    let p = repo.path().to_str().unwrap();
    let (a, b) = (Site::new(), Site::new());
    assert_eq!(
        a.fermata(
            &["run", "--once", "--repo", p, "--branch", "main", "--site", "plant-a"],
            OPEN
        )
        .code,
        0
    );
    assert_eq!(
        b.fermata(
            &["run", "--once", "--repo", p, "--branch", "main", "--site", "plant-b"],
            OPEN
        )
        .code,
        0
    );
    // Each site its own branch (the same layout as fermata/status) and
    // notes ref; nothing on the shared ones.
    for site in ["plant-a", "plant-b"] {
        let tree = git(
            repo.path(),
            &[
                "ls-tree",
                "-r",
                "--name-only",
                &format!("fermata/sites/{site}"),
            ],
        );
        assert_eq!(
            tree, "main/shop/app.yaml\nmain/summary.md\nmain/timeline.svg",
            "{site}"
        );
        let subject = git(
            repo.path(),
            &["log", "-1", "--format=%s", &format!("fermata/sites/{site}")],
        );
        assert!(subject.starts_with(&format!("{site} main@")), "{subject}");
        let note = git(
            repo.path(),
            &[
                "notes",
                &format!("--ref=fermata-sites/{site}"),
                "show",
                "main",
            ],
        );
        let counts = git(
            repo.path(),
            &["log", "-1", "--format=%b", &format!("fermata/sites/{site}")],
        );
        assert_eq!(
            subject,
            format!("{site} main@{}: shop/app new -> installed", &head[..7])
        );
        assert!(
            counts.starts_with(&format!("{note}\n")),
            "the note is the body's counts: {counts}"
        );
    }
    let shared = git(
        repo.path(),
        &[
            "for-each-ref",
            "refs/heads/fermata/status",
            "refs/notes/fermata",
        ],
    );
    assert_eq!(shared, "");
    // `status --site` reads the site's branch, with its Margo ids.
    let margo = a.fermata(
        &[
            "status", "--repo", p, "--site", "plant-a", "--format", "margo",
        ],
        OPEN,
    );
    let v: serde_json::Value = serde_json::from_str(&margo.stdout).unwrap();
    assert_eq!(v[0]["deviceId"], "plant-a", "{margo:?}");
    assert_eq!(v[0]["deploymentId"].as_str().map(str::len), Some(36), "{v}");
    let table = a.fermata(&["status", "--repo", p, "--site", "plant-b"], OPEN);
    assert!(table.stdout.contains("shop/app"), "{table:?}");
    // A site's status branch is its own: another one beside --site is refused.
    let refused = a.fermata(
        &[
            "run",
            "--once",
            "--repo",
            p,
            "--site",
            "plant-a",
            "--status-branch",
            "elsewhere",
        ],
        OPEN,
    );
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("a site's status goes to its own branch fermata/sites/plant-a"),
        "{refused:?}"
    );
}

#[test]
fn an_unchanged_composition_costs_no_synthesis() {
    let repo = TestRepo::new();
    let site = Site::new();
    let counter = tempfile::NamedTempFile::new().unwrap();
    util::minimal(&repo)
        .write(
            "synth/app.yaml",
            "apiVersion: fermata.dev/v1alpha1\nkind: Synthesizer\nmetadata: {name: app}\nspec:\n  command: [\"sh\", \"-c\", \"echo run >> \\\"$COUNTER\\\"; printf 'kind: ResourceList\\\\nitems: [{apiVersion: v1, kind: ConfigMap, metadata: {name: c}}]\\\\n'\"]\n",
        )
        .write(
            "symphony.yaml",
            &util::SYMPHONY.replace(
                "synthesisEnv: [{name: TAG, value: v1}]",
                &format!("synthesisEnv: [{{name: COUNTER, value: \"{}\"}}]", counter.path().display()),
            ),
        );
    let first = repo.commit("command synthesizer");
    let runs = || {
        std::fs::read_to_string(counter.path())
            .unwrap()
            .lines()
            .count()
    };
    let run = site.once(&repo, OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(runs(), 1);
    // A commit that changes nothing the composition reads, then a restart.
    repo.write("README.md", "unrelated\n");
    repo.commit("docs");
    assert_eq!(site.once(&repo, OPEN).code, 0);
    assert_eq!(site.once(&repo, OPEN).code, 0);
    assert_eq!(runs(), 1, "no synthesis for an unchanged composition");
    // Its status names the commit that last changed it, so a commit rewrites
    // only the statuses it changed; summary.md and the note name the new one.
    let st = status_file(&repo);
    assert!(st.contains(&format!("commit: {first}")), "{st}");
    let summary = git(repo.path(), &["show", "fermata/status:main/summary.md"]);
    let head = repo.git(&["rev-parse", "--short=7", "HEAD"]);
    assert!(
        summary.starts_with(&format!("# main@{head}: 1 installed")),
        "{summary}"
    );
    // Its synthesizer's folder changes: rendered again.
    repo.write("synth/notes.txt", "changed\n");
    repo.commit("synth folder");
    assert_eq!(site.once(&repo, OPEN).code, 0);
    assert_eq!(runs(), 2);
}

#[test]
fn a_gated_composition_is_staged_but_not_applied_until_the_gate_is_gone() {
    let repo = TestRepo::new();
    let site = Site::new();
    util::minimal(&repo).write(
        "symphony.yaml",
        &format!(
            "{}      schedulingGates: [{{name: approval}}]\n",
            util::SYMPHONY
        ),
    );
    repo.commit("gated");
    assert_eq!(site.once(&repo, OPEN).code, 0);
    assert!(site.staged().is_some() && site.current().is_none());
    let st = status_file(&repo);
    assert!(st.contains("reason: SchedulingGatesPresent"), "{st}");
    repo.write("symphony.yaml", util::SYMPHONY);
    repo.commit("approved");
    assert_eq!(site.once(&repo, OPEN).code, 0);
    assert!(site.current().unwrap().contains("tag: v1"));
}

#[test]
fn ungate_lifts_a_gate_without_a_commit_and_says_who() {
    let repo = TestRepo::new();
    let site = Site::new();
    util::minimal(&repo).write(
        "symphony.yaml",
        &format!(
            "{}      schedulingGates: [{{name: approval}}, {{name: network}}]\n",
            util::SYMPHONY
        ),
    );
    repo.commit("two gates");
    assert_eq!(site.once(&repo, OPEN).code, 0);
    let p = repo.path().to_str().unwrap();
    let lift = |gate: &str| {
        site.fermata(
            &[
                "ungate",
                "shop/app",
                gate,
                "--reason",
                "change board said yes",
                "--repo",
                p,
                "--branch",
                "main",
            ],
            OPEN,
        )
    };
    let run = lift("approval");
    assert_eq!(run.code, 0, "{run:?}");
    assert!(site.current().is_none(), "one gate is still there");
    let st = status_file(&repo);
    assert!(
        st.contains("gate: approval") && st.contains("who: tester"),
        "{st}"
    );
    assert!(st.contains("scheduling gates present: network"), "{st}");
    let run = lift("network");
    assert_eq!(run.code, 0, "{run:?}");
    assert!(site.current().unwrap().contains("tag: v1"));
    let run = lift("nope");
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("shop/app has no scheduling gate \"nope\""),
        "{run:?}"
    );
}

#[test]
fn a_status_branch_given_as_a_full_ref_name_is_that_branch() {
    let repo = TestRepo::new();
    util::minimal(&repo);
    repo.commit("one");
    let site = Site::new();
    let p = repo.path().to_str().unwrap();
    let run = site.fermata(
        &[
            "run",
            "--once",
            "--repo",
            p,
            "--branch",
            "main",
            "--status-branch",
            "refs/heads/fermata/st",
        ],
        OPEN,
    );
    assert_eq!(run.code, 0, "{run:?}");
    let refs = repo.git(&["for-each-ref", "--format=%(refname)", "refs/heads"]);
    assert_eq!(
        refs.lines().collect::<Vec<_>>(),
        ["refs/heads/fermata/st", "refs/heads/main"]
    );

    // The full name of a watched branch is that branch, so it is refused too.
    let run = site.fermata(
        &[
            "run",
            "--once",
            "--repo",
            p,
            "--branch",
            "main",
            "--status-branch",
            "refs/heads/main",
        ],
        OPEN,
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("never land on a watched branch"),
        "{run:?}"
    );

    // Not a branch at all, or not a valid name: refused at once, by flag or variable.
    for (bad, why) in [
        (
            "refs/tags/v1",
            "not a branch: give a branch name (fermata/status) or refs/heads/<name>",
        ),
        ("fermata..status", "not a valid branch name"),
    ] {
        let run = site.fermata(
            &[
                "run",
                "--once",
                "--repo",
                p,
                "--branch",
                "main",
                "--status-branch",
                bad,
            ],
            OPEN,
        );
        assert_eq!(run.code, 2, "{run:?}");
        assert!(
            run.stderr
                .contains(&format!("invalid value '{bad}' for '--status-branch")),
            "{run:?}"
        );
        assert!(run.stderr.contains(why), "{run:?}");
        let run = util::fermata(&["status", "--repo", p, "--status-branch", bad]);
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.stderr.contains(why), "{run:?}");
    }
}

#[test]
fn pushing_status_to_a_shallow_clone_works() {
    // libgit2's local push used to walk the remote's cut history and fail
    // with "object not found". A file:// remote is now written directly
    // (objects, then the ref by compare-and-swap), which needs no history
    // of the source commits: status lands. (libgit2 cannot fetch from a
    // shallow clone over git:// at all; that fails at the fetch, named.)
    let repo = TestRepo::new();
    util::minimal(&repo);
    repo.commit("one");
    repo.write("more.txt", "x");
    repo.commit("two");
    let remote = tempfile::tempdir().unwrap();
    let shallow = remote.path().join("shallow.git");
    let from = format!("file://{}", repo.path().display());
    util::git(
        remote.path(),
        &[
            "clone",
            "-q",
            "--bare",
            "--depth",
            "1",
            &from,
            shallow.to_str().unwrap(),
        ],
    );
    let site = Site::new();
    let url = format!("file://{}", shallow.display());
    let run = site.fermata(&["run", "--once", "--repo", &url, "--branch", "main"], OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    let st = util::git(&shallow, &["show", "fermata/status:main/shop/app.yaml"]);
    assert!(st.contains("state: installed"), "{st}");
}

/// `summary.md` tells a waiting composition when its window opens, in the
/// window's zone, in UTC and how far off; time passing alone (the distance
/// shrinking) is no change, so later passes commit nothing.
#[test]
fn a_waiting_composition_shows_its_next_opening_without_a_commit_per_pass() {
    let repo = TestRepo::new();
    let site = Site::new();
    windowed(&repo, "a");
    repo.commit("A");
    assert_eq!(site.once(&repo, CLOSED).code, 0);
    let summary = git(repo.path(), &["show", "fermata/status:main/summary.md"]);
    assert!(
        summary.contains("| sat: opens Sat 28 Nov 02:00 UTC (in 6d 20h) | WindowClosed |"),
        "{summary}"
    );
    let tip = git(repo.path(), &["rev-parse", "fermata/status"]);
    for later in ["2026-11-21T09:00:00Z", "2026-11-27T23:59:00Z"] {
        let run = site.once(&repo, later);
        assert_eq!(run.code, 0, "{run:?}");
    }
    assert_eq!(
        git(repo.path(), &["rev-parse", "fermata/status"]),
        tip,
        "no status commit while only the distance changed"
    );
}
