//! Nothing lost, nothing misapplied (DESIGN.md invariants 2, 5, 9 and 10),
//! through `fermata run` on real commits: a file that cannot be read is
//! never a removal, removals wait for their window, an operator's records
//! survive a running daemon, one writer per state directory, two branches
//! never fight over one target, and a retarget removes from the old target.

mod util;

use std::path::PathBuf;

use util::{git, TestRepo};

const OPEN: &str = "2026-11-21T02:30:00Z";
const CLOSED: &str = "2026-11-21T06:00:00Z";
const NEXT_OPEN: &str = "2026-11-28T02:30:00Z";

struct Site {
    state: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        Site {
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn dir(&self, comp: &str) -> PathBuf {
        self.state.path().join("targets/site").join(comp)
    }

    fn once(&self, repo: &TestRepo, now: &str) -> util::Run {
        util::run_once(self.state.path(), repo, now)
    }

    /// What `current` points to and the manifest it holds.
    fn applied(&self, comp: &str) -> (PathBuf, String) {
        let current = self.dir(comp).join("current");
        let link = std::fs::read_link(&current).unwrap_or_default();
        let manifest = std::fs::read_to_string(current.join("manifest.yaml")).unwrap_or_default();
        (link, manifest)
    }
}

const SHOP: &str = "apiVersion: fermata.dev/v1alpha1
kind: Symphony
metadata:
  name: shop
spec:
  window: sat
  variations:
    - name: a
      synthesizer: {name: app}
      synthesisEnv: [{name: TAG, value: a}]
";

/// `shop` (in window `sat`, in `symphony.yaml`) and `other` (no window).
fn fleet(repo: &TestRepo) {
    util::minimal(repo)
        .write("window.yaml", util::SAT_WINDOW)
        .write("symphony.yaml", SHOP)
        .write(
            "other.yaml",
            &util::SYMPHONY.replace("name: shop", "name: other"),
        );
}

fn status(repo: &TestRepo, file: &str) -> String {
    git(repo.path(), &["show", &format!("fermata/status:{file}")])
}

/// Applies the fleet, then commits `breaker`'s change and runs a pass with
/// the window open: whatever `symphony.yaml` defined must keep its applied
/// state and report failed at `at` (`file:line`).
fn unreadable_keeps_applied(breaker: impl Fn(&TestRepo), at: &str) {
    let repo = TestRepo::new();
    let site = Site::new();
    fleet(&repo);
    repo.commit("shop and other");
    let run = site.once(&repo, OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    let before = site.applied("shop/a");
    assert!(before.1.contains("tag: a"), "{before:?}");

    breaker(&repo);
    repo.commit("break symphony.yaml");
    let run = site.once(&repo, OPEN);
    assert_eq!(run.code, 1, "an unreadable file is an error: {run:?}");
    assert!(!run.stdout.contains("orphaned"), "{run:?}");
    assert_eq!(
        site.applied("shop/a"),
        before,
        "nothing written to the target"
    );
    let st = status(&repo, "main/shop/a.yaml");
    assert!(st.contains("state: failed"), "{st}");
    assert!(st.contains("code: UnreadableFile"), "{st}");
    assert!(st.contains(&format!("source: {at}")), "{st}");
    assert!(!st.contains("Orphaned"), "{st}");
    // The other symphony goes on.
    let other = status(&repo, "main/other/app.yaml");
    assert!(other.contains("state: installed"), "{other}");
    // And a later pass (unchanged commit) still keeps it.
    let run = site.once(&repo, NEXT_OPEN);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(site.applied("shop/a"), before);

    // Mended: back to normal, nothing lost on the way.
    repo.write("symphony.yaml", SHOP);
    repo.commit("mend symphony.yaml");
    let run = site.once(&repo, OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(status(&repo, "main/shop/a.yaml").contains("state: installed"));
}

#[test]
fn a_yaml_syntax_error_is_not_a_removal() {
    unreadable_keeps_applied(
        |r| {
            r.write(
                "symphony.yaml",
                &SHOP.replace("  window: sat\n", "  window: sat\n   oops: [\n"),
            );
        },
        "symphony.yaml:7",
    );
}

#[test]
fn an_unknown_kind_is_not_a_removal() {
    unreadable_keeps_applied(
        |r| {
            r.write(
                "symphony.yaml",
                &SHOP.replace("kind: Symphony", "kind: Symfony"),
            );
        },
        "symphony.yaml:2",
    );
}

#[test]
fn an_invalid_name_is_not_a_removal() {
    unreadable_keeps_applied(
        |r| {
            r.write("symphony.yaml", &SHOP.replace("name: shop", "name: Shop_X"));
        },
        "symphony.yaml:4",
    );
}

#[test]
fn bytes_that_are_not_utf8_are_not_a_removal() {
    unreadable_keeps_applied(
        |r| {
            let mut bytes = SHOP.as_bytes().to_vec();
            bytes.extend_from_slice(b"# caf\xe9\n");
            std::fs::write(r.path().join("symphony.yaml"), bytes).unwrap();
        },
        "symphony.yaml:11",
    );
}

#[test]
fn a_nul_byte_is_not_a_removal() {
    unreadable_keeps_applied(
        |r| {
            r.write("symphony.yaml", &format!("{SHOP}# a\0b\n"));
        },
        "symphony.yaml:",
    );
}

#[test]
fn an_error_in_a_second_document_keeps_the_first() {
    unreadable_keeps_applied(
        |r| {
            r.write(
                "symphony.yaml",
                &format!("{SHOP}---\napiVersion: fermata.dev/v1alpha1\nkind: Target\nmetadata: {{name: x}}\nspec: [\n"),
            );
        },
        "symphony.yaml:",
    );
}

#[test]
fn a_vanished_path_is_an_error_of_the_pass_not_a_removal() {
    let repo = TestRepo::new();
    let state = tempfile::tempdir().unwrap();
    util::minimal(&repo);
    for f in [
        "target.yaml",
        "synth/app.yaml",
        "synth/manifests/cm.yaml",
        "symphony.yaml",
    ] {
        let content = std::fs::read(repo.path().join(f)).unwrap();
        std::fs::create_dir_all(repo.path().join("fleet").join(f).parent().unwrap()).unwrap();
        std::fs::write(repo.path().join("fleet").join(f), content).unwrap();
        repo.remove(f);
    }
    repo.commit("fleet under fleet/");
    let p = repo.path().to_str().unwrap();
    let run_path = |now| {
        util::fermata_at(
            state.path(),
            &[
                "run", "--once", "--repo", p, "--branch", "main", "--path", "fleet",
            ],
            now,
            &[],
        )
    };
    let run = run_path(OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    let current = state.path().join("targets/site/shop/app/current");
    let before = std::fs::read_link(&current).unwrap();

    git(repo.path(), &["mv", "fleet", "renamed"]);
    repo.commit("rename the folder");
    let run = run_path(OPEN);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(!run.stdout.contains("orphaned"), "{run:?}");
    assert!(
        run.stdout
            .contains("shop/app                         failed"),
        "{run:?}"
    );
    assert!(run.stdout.contains("no folder"), "{run:?}");
    assert_eq!(std::fs::read_link(&current).unwrap(), before);
    let manifest = std::fs::read_to_string(current.join("manifest.yaml")).unwrap();
    assert!(!manifest.contains("orphaned"), "{manifest}");
    let st = status(&repo, "main/shop/app.yaml");
    assert!(st.contains("state: failed"), "{st}");
    assert!(st.contains("source: fleet:0"), "{st}");
}

#[test]
fn an_orphaning_write_waits_for_the_window() {
    let repo = TestRepo::new();
    let site = Site::new();
    fleet(&repo);
    repo.commit("shop and other");
    assert_eq!(site.once(&repo, OPEN).code, 0);
    let before = site.applied("shop/a");

    repo.remove("symphony.yaml");
    repo.commit("shop removed");
    let run = site.once(&repo, CLOSED);
    assert_eq!(run.code, 0, "{run:?}");
    // Status drops it at once ...
    assert!(run.stdout.contains("removed (orphaned)"), "{run:?}");
    let st = status(&repo, "main/shop/a.yaml");
    assert!(st.contains("state: removed"), "{st}");
    assert!(st.contains("reason: Orphaned"), "{st}");
    assert!(st.contains("window sat"), "says the write waits: {st}");
    // ... but the write to the target waits for the window.
    assert_eq!(
        site.applied("shop/a"),
        before,
        "nothing written while closed"
    );

    let run = site.once(&repo, NEXT_OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    let (_, manifest) = site.applied("shop/a");
    assert!(
        manifest.contains("fermata.dev/orphaned-from: shop"),
        "written in the window: {manifest}"
    );
    assert!(manifest.contains("tag: a"), "left in place");
    // Once written, a further pass writes nothing more.
    let after = site.applied("shop/a");
    let run = site.once(&repo, NEXT_OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(site.applied("shop/a"), after);
}

/// A clock that moves one minute every time it is read: a pass that takes
/// time, without sleeping.
#[derive(Debug)]
struct Ticking(std::sync::Mutex<chrono::DateTime<chrono::Utc>>);

impl fermata::window::Clock for Ticking {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        let mut t = self.0.lock().unwrap();
        let now = *t;
        *t = now + chrono::TimeDelta::minutes(1);
        now
    }
}

#[test]
fn the_window_is_judged_at_each_apply_not_once_per_pass() {
    let repo = TestRepo::new();
    let state = tempfile::tempdir().unwrap();
    let variations: String = (0..30)
        .map(|i| format!("    - {{name: v{i}, synthesizer: {{name: app}}, synthesisEnv: [{{name: TAG, value: t{i}}}]}}\n"))
        .collect();
    util::minimal(&repo)
        .write("window.yaml", util::SAT_WINDOW)
        .write(
            "symphony.yaml",
            &format!("apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {{name: shop}}\nspec:\n  window: sat\n  rollout: {{strategy: Parallel, maxUnavailable: 100}}\n  variations:\n{variations}"),
        );
    repo.commit("30 variations");
    // Ten minutes before the window closes (05:00).
    let start = "2026-11-21T04:50:00Z".parse().unwrap();
    let clock = std::sync::Arc::new(Ticking(std::sync::Mutex::new(start)));
    let settings =
        fermata::reconcile::Settings::defaults(repo.path().to_str().unwrap(), "main", state.path());
    let mut r = fermata::reconcile::Reconciler::new(settings, clock).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reports = rt.block_on(r.pass());
    let states: Vec<&str> = reports[0].rows.iter().map(|r| r.state.as_str()).collect();
    let installed = states.iter().filter(|s| **s == "installed").count();
    let staged = states.iter().filter(|s| **s == "staged").count();
    assert!(installed > 0, "applied while open: {states:?}");
    assert!(
        staged > 0,
        "staged, not applied, once the window closed: {states:?}"
    );
    assert_eq!(installed + staged, 30, "{states:?}");
    // Every staged one waits for the window, and none was applied.
    for i in 0..30 {
        let dir = state.path().join(format!("targets/site/shop/v{i}"));
        let row = reports[0]
            .rows
            .iter()
            .find(|r| r.id.to_string() == format!("shop/v{i}"))
            .unwrap();
        assert_eq!(
            dir.join("current").exists(),
            row.state.as_str() == "installed",
            "v{i}: {:?}",
            row.note
        );
    }
}

/// Kills the process when the test ends, however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `fermata run` as a daemon at the fixed instant `now`.
fn daemon(repo: &TestRepo, state: &std::path::Path, now: &str) -> Running {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_fermata"))
        .args(["run", "--repo"])
        .arg(repo.path())
        .args(["--branch", "main", "--interval", "1h", "--state-dir"])
        .arg(state)
        .env("FERMATA_NOW", now)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("fermata runs");
    Running(child)
}

/// Polls the status file until it contains every one of `want`, or panics
/// after a generous deadline (a real process is waited for, not a clock).
fn wait_for_status(repo: &TestRepo, file: &str, want: &[&str]) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        let out = std::process::Command::new("git")
            .current_dir(repo.path())
            .args(["show", &format!("fermata/status:{file}")])
            .output()
            .unwrap();
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        if want.iter().all(|w| last.contains(w)) {
            return last;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{file} never contained {want:?}; last:\n{last}");
}

/// `gated` waits for a gate (no window); `late` waits for window `sat`.
fn gated_fleet(repo: &TestRepo) {
    util::minimal(repo).write("window.yaml", util::SAT_WINDOW).write(
        "symphony.yaml",
        "apiVersion: fermata.dev/v1alpha1
kind: Symphony
metadata: {name: shop}
spec:
  rollout: {strategy: Parallel, maxUnavailable: 5}
  variations:
    - {name: gated, synthesizer: {name: app}, synthesisEnv: [{name: TAG, value: g}], schedulingGates: [{name: approval}]}
    - {name: late, synthesizer: {name: app}, window: sat, synthesisEnv: [{name: TAG, value: l}]}
",
    );
    repo.commit("gated and late");
}

#[test]
fn operator_records_survive_a_running_daemon_a_restart_and_a_kill_9() {
    let repo = TestRepo::new();
    gated_fleet(&repo);
    let state = tempfile::tempdir().unwrap();
    let mut d = daemon(&repo, state.path(), CLOSED);
    wait_for_status(&repo, "main/shop/late.yaml", &["state: staged"]);
    let p = repo.path().to_str().unwrap();

    // The short commands record beside it, and it acts on them at once.
    let ungate = util::fermata_at(
        state.path(),
        &[
            "ungate",
            "shop/gated",
            "approval",
            "--reason",
            "approved in CAB-7",
            "--who",
            "alice",
            "--repo",
            p,
            "--branch",
            "main",
        ],
        CLOSED,
        &[],
    );
    assert_eq!(ungate.code, 0, "{ungate:?}");
    wait_for_status(
        &repo,
        "main/shop/gated.yaml",
        &["state: installed", "who: alice", "approved in CAB-7"],
    );
    let now = util::fermata_at(
        state.path(),
        &[
            "apply-now",
            "shop/late",
            "--reason",
            "hotfix",
            "--who",
            "bob",
            "--repo",
            p,
            "--branch",
            "main",
        ],
        CLOSED,
        &[],
    );
    assert_eq!(now.code, 0, "{now:?}");
    wait_for_status(
        &repo,
        "main/shop/late.yaml",
        &["state: installed", "who: bob", "why: hotfix"],
    );

    // Later passes of the daemon keep both records in status.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.0.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let log_before = git(repo.path(), &["rev-list", "--count", "fermata/status"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        git(repo.path(), &["rev-list", "--count", "fermata/status"]),
        log_before,
        "an unchanged pass commits nothing (the records did not vanish)"
    );

    // kill -9, then a fresh process: the records are still in force.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.0.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = d.0.wait();
    let run = util::fermata_at(
        state.path(),
        &["run", "--once", "--repo", p, "--branch", "main"],
        CLOSED,
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("apply-now"), "{run:?}");
    let gated = status(&repo, "main/shop/gated.yaml");
    assert!(
        gated.contains("who: alice") && gated.contains("state: installed"),
        "{gated}"
    );
    let late = status(&repo, "main/shop/late.yaml");
    assert!(
        late.contains("who: bob") && late.contains("state: installed"),
        "{late}"
    ); // Beside the daemon, the commands only recorded and woke it.
    assert!(ungate.stdout.contains("recorded"), "{ungate:?}");
    assert!(now.stdout.contains("recorded"), "{now:?}");
}

#[test]
fn two_branches_never_fight_over_one_target() {
    let repo = TestRepo::new();
    let site = Site::new();
    fleet(&repo);
    repo.commit("main");
    git(repo.path(), &["branch", "prod"]);
    // prod's variation renders differently, on the same target.
    git(repo.path(), &["checkout", "-q", "prod"]);
    repo.write(
        "other.yaml",
        &util::SYMPHONY
            .replace("name: shop", "name: other")
            .replace("value: v1", "value: prod"),
    );
    repo.commit("prod differs");
    git(repo.path(), &["checkout", "-q", "main"]);
    let p = repo.path().to_str().unwrap();
    let both = |now| {
        util::fermata_at(
            site.state.path(),
            &[
                "run", "--once", "--repo", p, "--branch", "main", "--branch", "prod",
            ],
            now,
            &[],
        )
    };
    let run = both(OPEN);
    assert_eq!(run.code, 1, "the conflict is an error: {run:?}");
    assert!(run.stdout.contains("TargetConflict"), "{run:?}");
    assert!(
        run.stdout.contains("from branch main"),
        "names the other branch: {run:?}"
    );
    let (link, manifest) = site.applied("other/app");
    assert!(
        manifest.contains("tag: v1"),
        "main's, first to claim: {manifest}"
    );
    let st = status(&repo, "prod/other/app.yaml");
    assert!(st.contains("code: TargetConflict"), "{st}");
    assert!(status(&repo, "main/other/app.yaml").contains("state: installed"));

    // The next passes keep it that way: no rewrite of the target (invariant 5).
    let before = git(repo.path(), &["rev-parse", "fermata/status"]);
    let run = both(OPEN);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(site.applied("other/app"), (link, manifest));
    assert_eq!(
        git(repo.path(), &["rev-parse", "fermata/status"]),
        before,
        "no new status commit"
    );
}

#[test]
fn a_retarget_removes_from_the_old_target_in_its_window() {
    let repo = TestRepo::new();
    let state = tempfile::tempdir().unwrap();
    fleet(&repo);
    repo.write(
        "target-b.yaml",
        "apiVersion: fermata.dev/v1alpha1\nkind: Target\nmetadata: {name: site-b}\nspec:\n  directory: {path: site-b}\n",
    );
    // With two targets, each variation names its own.
    repo.write(
        "symphony.yaml",
        &SHOP.replace("  window: sat\n", "  window: sat\n  target: site\n"),
    );
    repo.write(
        "other.yaml",
        &util::SYMPHONY
            .replace("name: shop", "name: other")
            .replace("  variations:", "  target: site\n  variations:"),
    );
    repo.commit("on site");
    let once = |now| util::run_once(state.path(), &repo, now);
    assert_eq!(once(OPEN).code, 0);
    let old = state.path().join("targets/site/shop/a/current");
    let new = state.path().join("targets/site-b/shop/a/current");
    assert!(old.exists());

    repo.write(
        "symphony.yaml",
        &SHOP.replace("  window: sat\n", "  window: sat\n  target: site-b\n"),
    );
    repo.commit("move shop to site-b");
    // Closed: staged on the new target, still deployed on the old one, and
    // status says both.
    let run = once(CLOSED);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(old.exists(), "the old placement waits for its window");
    assert!(!new.exists(), "the new one too");
    assert!(run.stdout.contains("previous target site"), "{run:?}");
    let st = status(&repo, "main/shop/a.yaml");
    assert!(st.contains("type: Retargeted"), "{st}");
    assert!(st.contains("state: staged"), "{st}");

    let run = once(NEXT_OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        !state.path().join("targets/site/shop/a").exists(),
        "removed from the old target"
    );
    assert!(new.exists(), "applied on the new one");
    let st = status(&repo, "main/shop/a.yaml");
    assert!(!st.contains("Retargeted"), "{st}");
    assert!(st.contains("state: installed"), "{st}");
    // Settled: an unchanged commit writes nothing more.
    let before = git(repo.path(), &["rev-parse", "fermata/status"]);
    assert_eq!(once(NEXT_OPEN).code, 0);
    assert_eq!(git(repo.path(), &["rev-parse", "fermata/status"]), before);
}

#[test]
fn one_reconciler_per_state_directory_and_a_plan_beside_it() {
    let repo = TestRepo::new();
    gated_fleet(&repo);
    let state = tempfile::tempdir().unwrap();
    let d = daemon(&repo, state.path(), CLOSED);
    wait_for_status(&repo, "main/shop/late.yaml", &["state: staged"]);
    let p = repo.path().to_str().unwrap();
    // A second reconciler on the same state directory is refused at once.
    let second = util::fermata_at(
        state.path(),
        &["run", "--once", "--repo", p, "--branch", "main"],
        CLOSED,
        &[],
    );
    assert_eq!(second.code, 2, "{second:?}");
    assert!(
        second
            .stderr
            .contains(&format!("in use by another fermata run (pid {})", d.0.id())),
        "{second:?}"
    );
    // A plan works beside it (it writes nothing).
    let plan = util::fermata_at(
        state.path(),
        &["plan", "--repo", p, "--branch", "main"],
        CLOSED,
        &[],
    );
    assert_eq!(plan.code, 0, "{plan:?}");
    assert!(plan.stdout.contains("shop/late"), "{plan:?}");

    drop(d);
    // Once it is gone (the kernel drops the lock), the state directory is free.
    let run = util::fermata_at(
        state.path(),
        &["run", "--once", "--repo", p, "--branch", "main"],
        CLOSED,
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
}

#[test]
fn a_lost_state_file_does_not_leave_a_removed_variation_deployed() {
    let repo = TestRepo::new();
    let site = Site::new();
    util::minimal(&repo)
        .write("window.yaml", util::SAT_WINDOW)
        .write(
            "symphony.yaml",
            &SHOP.replace(
                "      synthesisEnv: [{name: TAG, value: a}]\n",
                "      synthesisEnv: [{name: TAG, value: a}]\n    - name: b\n      synthesizer: {name: app}\n      synthesisEnv: [{name: TAG, value: b}]\n",
            ),
        );
    repo.commit("a and b");
    assert_eq!(site.once(&repo, OPEN).code, 0);
    assert!(site.dir("shop/b/current").exists());

    // The state directory's memory is lost; then b is removed.
    std::fs::remove_file(site.state.path().join("state.json")).unwrap();
    repo.write("symphony.yaml", SHOP);
    repo.commit("remove b");
    let run = site.once(&repo, CLOSED);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("removing: WindowClosed"),
        "found on the target: {run:?}"
    );
    assert!(site.dir("shop/b/current").exists(), "in its window only");
    let run = site.once(&repo, NEXT_OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!site.dir("shop/b").exists(), "removed from the target");
    assert!(site.dir("shop/a/current").exists());
}

/// Two watched branches deploy variations of one symphony to one target.
/// After `state.json` is lost, each branch takes back only what the target
/// records it deployed: `prod`, whose `shop` has only `c`, must not take
/// `main`'s `a` and `b` for removed variations of its own.
#[test]
fn a_lost_state_file_with_two_branches_removes_only_each_branchs_own() {
    let repo = TestRepo::new();
    let site = Site::new();
    let variation = |v: &str| {
        format!("    - name: {v}\n      synthesizer: {{name: app}}\n      synthesisEnv: [{{name: TAG, value: {v}}}]\n")
    };
    let shop = |vs: &[&str]| {
        let head = SHOP.split("    - name: a").next().unwrap().to_string();
        head + &vs.iter().map(|v| variation(v)).collect::<String>()
    };
    util::minimal(&repo)
        .write("window.yaml", util::SAT_WINDOW)
        .write("symphony.yaml", &shop(&["c"]));
    repo.commit("prod: c");
    repo.git(&["branch", "prod"]);
    repo.write("symphony.yaml", &shop(&["a", "b"]));
    repo.commit("main: a and b");
    let p = repo.path().to_str().unwrap();
    // prod first: it looks at the target before main has remembered anything.
    let both = [
        "run", "--once", "--repo", p, "--branch", "prod", "--branch", "main",
    ];
    let run = util::fermata_at(site.state.path(), &both, OPEN, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    for v in ["a", "b", "c"] {
        assert!(
            site.dir(&format!("shop/{v}/current")).exists(),
            "{v}: {run:?}"
        );
    }

    use std::os::unix::fs::MetadataExt;
    let inode = |c: &str| std::fs::metadata(site.dir(c)).map(|m| m.ino()).ok();
    let a_before = inode("shop/a");
    std::fs::remove_file(site.state.path().join("state.json")).unwrap();
    repo.write("symphony.yaml", &shop(&["a"]));
    repo.commit("main: remove b");
    let run = util::fermata_at(site.state.path(), &both, OPEN, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!site.dir("shop/b").exists(), "main took b back: {run:?}");
    // Not deleted (and applied again by main): never touched.
    assert_eq!(
        inode("shop/a"),
        a_before,
        "prod left main's a alone: {run:?}"
    );
    assert!(site.dir("shop/c/current").exists());
}
