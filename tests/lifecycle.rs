//! Deletion (DESIGN.md section 5) through `fermata run` on real commits: a
//! removed variation is `removing` until its target confirms, in its window
//! and after its dependents; a removed symphony is orphaned at once (its
//! mark on the target written in its window).

mod util;

use std::path::PathBuf;

use util::{git, TestRepo};

const OPEN: &str = "2026-11-21T02:30:00Z";
const CLOSED: &str = "2026-11-21T06:00:00Z";

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
}

/// A symphony `shop` with the given variations (YAML list items), in window `sat`.
fn shop(repo: &TestRepo, variations: &str) {
    util::minimal(repo)
        .write(
            "window.yaml",
            util::SAT_WINDOW,
        )
        .write(
            "symphony.yaml",
            &format!(
                "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {{name: shop}}\nspec:\n  window: sat\n  rollout: {{strategy: Parallel, maxUnavailable: 5}}\n  variations:\n{variations}"
            ),
        );
}

fn var(name: &str) -> String {
    format!("    - {{name: {name}, synthesizer: {{name: app}}, synthesisEnv: [{{name: TAG, value: {name}}}]}}\n")
}

fn status_files(repo: &TestRepo) -> String {
    git(
        repo.path(),
        &["ls-tree", "-r", "--name-only", "fermata/status"],
    )
}

#[test]
fn a_removed_variation_is_removing_until_its_window_then_gone() {
    let repo = TestRepo::new();
    let site = Site::new();
    shop(&repo, &format!("{}{}", var("a"), var("b")));
    repo.commit("a and b");
    assert_eq!(site.once(&repo, OPEN).code, 0);
    assert!(site.dir("shop/b/current").exists());

    shop(&repo, &var("a"));
    repo.commit("remove b");
    let run = site.once(&repo, CLOSED);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("removing: WindowClosed"), "{run:?}");
    assert!(
        site.dir("shop/b/current").exists(),
        "removals wait for the window"
    );
    let st = git(repo.path(), &["show", "fermata/status:main/shop/b.yaml"]);
    assert!(st.contains("state: removing"), "{st}");

    let run = site.once(&repo, "2026-11-28T02:00:00Z");
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!site.dir("shop/b").exists(), "deleted from the target");
    assert!(site.dir("shop/a/current").exists());
    // Issue 16 point 7: the status stays, `removed`, for the retention
    // (7 days by default) instead of vanishing (it was dropped at once).
    let st = git(repo.path(), &["show", "fermata/status:main/shop/b.yaml"]);
    assert!(st.contains("state: removed"), "{st}");
    assert!(
        !st.contains("state: removing"),
        "components removed too: {st}"
    );
    let p = repo.path().to_string_lossy().to_string();
    let margo = util::fermata(&["status", "--repo", &p, "--format", "margo"]);
    assert!(margo.stdout.contains("\"removed\""), "{margo:?}");

    // Past the retention, the next pass prunes it.
    shop(&repo, &format!("{}    # touched\n", var("a")));
    repo.commit("touch");
    let run = site.once(&repo, "2026-12-06T02:00:00Z");
    assert_eq!(run.code, 0, "{run:?}");
    let files = status_files(&repo);
    assert!(
        !files.contains("main/shop/b.yaml"),
        "status pruned after the retention: {files}"
    );
    assert!(files.contains("main/shop/a.yaml"), "{files}");
}

#[test]
fn renaming_a_variation_is_remove_plus_add() {
    let repo = TestRepo::new();
    let site = Site::new();
    shop(&repo, &var("a"));
    repo.commit("a");
    assert_eq!(site.once(&repo, OPEN).code, 0);
    shop(&repo, &var("renamed"));
    repo.commit("rename a");
    assert_eq!(site.once(&repo, OPEN).code, 0);
    assert!(!site.dir("shop/a").exists());
    assert!(site.dir("shop/renamed/current").exists());
}

#[test]
fn a_removal_waits_while_another_composition_depends_on_it() {
    let repo = TestRepo::new();
    let site = Site::new();
    shop(&repo, &format!("{}{}", var("db"), var("web")));
    repo.write(
        "app.yaml",
        "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {name: app}\nspec:\n  variations:\n    - {name: x, synthesizer: {name: app}, synthesisEnv: [{name: TAG, value: x}], dependsOn: [{variation: shop/db}]}\n",
    );
    repo.commit("app depends on shop/db");
    assert_eq!(site.once(&repo, OPEN).code, 0);
    assert!(site.dir("app/x/current").exists());

    // db goes; app still depends on it (and fails to load for it).
    shop(&repo, &var("web"));
    repo.commit("remove db");
    let run = site.once(&repo, OPEN);
    assert!(
        run.stdout.contains("removing: WaitingOnDependency"),
        "{run:?}"
    );
    assert!(site.dir("shop/db/current").exists(), "held by app/x");
    let st = git(repo.path(), &["show", "fermata/status:main/shop/db.yaml"]);
    assert!(st.contains("held by app/x"), "{st}");

    // The dependency is dropped: now db goes.
    repo.write(
        "app.yaml",
        "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {name: app}\nspec:\n  variations:\n    - {name: x, synthesizer: {name: app}, synthesisEnv: [{name: TAG, value: x}]}\n",
    );
    repo.commit("app no longer needs db");
    let run = site.once(&repo, OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!site.dir("shop/db").exists());
}

#[test]
fn a_removed_symphony_is_orphaned_at_once() {
    let repo = TestRepo::new();
    let site = Site::new();
    shop(&repo, &var("a"));
    repo.write(
        "other.yaml",
        &util::SYMPHONY.replace("name: shop", "name: other"),
    );
    repo.commit("shop and other");
    assert_eq!(site.once(&repo, OPEN).code, 0);

    repo.remove("symphony.yaml");
    repo.commit("shop removed");
    // Even with its window closed, status drops it at once; the mark on the
    // target is a write and waits for the window (nothing_lost.rs).
    let run = site.once(&repo, CLOSED);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("removed (orphaned)"), "{run:?}");
    assert_eq!(site.once(&repo, OPEN).code, 0);
    let manifest = std::fs::read_to_string(site.dir("shop/a/current/manifest.yaml")).unwrap();
    assert!(
        manifest.contains("fermata.dev/orphaned-from: shop"),
        "left in place, annotated: {manifest}"
    );
    assert!(manifest.contains("tag: a"));
    let st = git(repo.path(), &["show", "fermata/status:main/shop/a.yaml"]);
    assert!(st.contains("state: removed"), "{st}");
    assert!(st.contains("reason: Orphaned"), "{st}");
    // A later pass neither deletes it nor forgets to say so.
    assert_eq!(site.once(&repo, OPEN).code, 0);
    assert!(site.dir("shop/a/current").exists());
    assert!(status_files(&repo).contains("main/shop/a.yaml"));
}
