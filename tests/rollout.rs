//! Rollout as a plan of actions (Datum's instance control): `fermata plan`
//! shows every action with whether it runs now and why not; `OrderedReady`
//! goes in variation order, `Parallel` keeps to `maxUnavailable`, deletes go
//! in reverse order, and a dependency must be Ready first.

mod util;

use serde_json::Value;
use util::{git, TestRepo};

const OPEN: &str = "2026-11-21T02:30:00Z";
const CLOSED: &str = "2026-11-21T06:00:00Z";

fn fleet(repo: &TestRepo, rollout: &str, variations: &[&str]) {
    fleet_in(repo, rollout, "", variations)
}

/// `window`: a `  window: NAME\n` line for the symphony, or "".
fn fleet_in(repo: &TestRepo, rollout: &str, window: &str, variations: &[&str]) {
    let vars: String = variations
        .iter()
        .map(|v| format!("    - {{name: {v}, synthesizer: {{name: app}}, synthesisEnv: [{{name: TAG, value: {v}}}]}}\n"))
        .collect();
    util::minimal(repo)
        .write(
            "window.yaml",
            util::SAT_WINDOW,
        )
        .write(
            "symphony.yaml",
            &format!("apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {{name: shop}}\nspec:\n{window}  rollout: {rollout}\n  variations:\n{vars}"),
        );
}

fn fermata(state: &std::path::Path, args: &[&str], now: &str) -> util::Run {
    util::fermata_at(state, args, now, &[])
}

/// `(composition, action, reason or "now")` of a JSON plan.
fn plan(
    repo: &TestRepo,
    state: &std::path::Path,
    now: &str,
    extra: &[&str],
) -> Vec<(String, String, String)> {
    let p = repo.path().to_str().unwrap();
    let mut args = vec!["plan", "--repo", p, "--branch", "main", "--output", "json"];
    args.extend_from_slice(extra);
    let run = fermata(state, &args, now);
    assert_eq!(run.code, 0, "{run:?}");
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    v[0]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["composition"].as_str().unwrap().to_string(),
                a["action"].as_str().unwrap().to_string(),
                a["reason"].as_str().unwrap_or("now").to_string(),
            )
        })
        .collect()
}

fn row(c: &str, a: &str, r: &str) -> (String, String, String) {
    (c.to_string(), a.to_string(), r.to_string())
}

#[test]
fn ordered_ready_plans_one_at_a_time_and_writes_nothing() {
    let repo = TestRepo::new();
    fleet(&repo, "{strategy: OrderedReady}", &["a", "b", "c"]);
    repo.commit("three");
    let state = tempfile::tempdir().unwrap();
    assert_eq!(
        plan(&repo, state.path(), OPEN, &[]),
        vec![
            row("shop/a", "Create", "now"),
            row("shop/b", "Create", "WaitingForReady"),
            row("shop/c", "Create", "WaitingForReady"),
        ]
    );
    assert!(
        !state.path().join("targets").exists(),
        "a plan writes no target"
    );
    assert!(!state.path().join("state.json").exists(), "nor state");
    let branches = git(repo.path(), &["branch", "--list"]);
    assert!(
        !branches.contains("fermata/status"),
        "nor status: {branches}"
    );
    // The text table says the same.
    let p = repo.path().to_str().unwrap();
    let run = fermata(
        state.path(),
        &["plan", "--repo", p, "--branch", "main"],
        OPEN,
    );
    assert!(
        run.stdout.contains("shop/b") && run.stdout.contains("no: WaitingForReady"),
        "{run:?}"
    );
}

#[test]
fn parallel_keeps_to_max_unavailable() {
    let repo = TestRepo::new();
    fleet(
        &repo,
        "{strategy: Parallel, maxUnavailable: 2}",
        &["a", "b", "c"],
    );
    repo.commit("three");
    let state = tempfile::tempdir().unwrap();
    assert_eq!(
        plan(&repo, state.path(), OPEN, &[]),
        vec![
            row("shop/a", "Create", "now"),
            row("shop/b", "Create", "now"),
            row("shop/c", "Create", "MaxUnavailable"),
        ]
    );
}

#[test]
fn plans_show_windows_updates_and_deletes_in_reverse_order() {
    let repo = TestRepo::new();
    fleet_in(
        &repo,
        "{strategy: OrderedReady}",
        "  window: sat\n",
        &["a", "b", "c"],
    );
    let first = repo.commit("three");
    let state = tempfile::tempdir().unwrap();
    let p = repo.path().to_str().unwrap();
    let run = fermata(
        state.path(),
        &["run", "--once", "--repo", p, "--branch", "main"],
        OPEN,
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        plan(&repo, state.path(), OPEN, &[]).is_empty(),
        "all applied: nothing to do"
    );

    // a changes in a closed window; b and c are removed.
    repo.write(
        "symphony.yaml",
        "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {name: shop}\nspec:\n  window: sat\n  variations:\n    - {name: a, synthesizer: {name: app}, synthesisEnv: [{name: TAG, value: a2}]}\n",
    );
    repo.commit("update a, remove b and c");
    let actions = plan(&repo, state.path(), CLOSED, &[]);
    assert_eq!(
        actions,
        vec![
            row("shop/a", "Update", "WindowClosed"),
            row("shop/c", "Delete", "WindowClosed"),
            row("shop/b", "Delete", "WaitingForReady"),
        ],
        "deletes go last-first"
    );
    // Planning an older commit against what is applied: nothing to do.
    assert!(plan(&repo, state.path(), CLOSED, &["--rev", &first]).is_empty());
}

#[test]
fn a_dependency_must_be_ready_first() {
    let repo = TestRepo::new();
    util::minimal(&repo)
        .write(
            "window.yaml",
            util::SAT_WINDOW,
        )
        .write(
            "symphony.yaml",
            "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {name: shop}\nspec:\n  rollout: {strategy: Parallel, maxUnavailable: 5}\n  variations:\n    - {name: web, synthesizer: {name: app}, synthesisEnv: [{name: TAG, value: w}], dependsOn: [{variation: db}]}\n    - {name: db, synthesizer: {name: app}, synthesisEnv: [{name: TAG, value: d}], window: sat}\n",
        );
    repo.commit("web depends on db");
    let state = tempfile::tempdir().unwrap();
    let p = repo.path().to_str().unwrap();
    // db's window is closed: web, which has no window, waits for it.
    let run = fermata(
        state.path(),
        &["run", "--once", "--repo", p, "--branch", "main"],
        CLOSED,
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!state.path().join("targets/site/shop/web/current").exists());
    let st = git(repo.path(), &["show", "fermata/status:main/shop/web.yaml"]);
    assert!(st.contains("reason: WaitingOnDependency"), "{st}");
    // The status and the summary name the dependency and where it is.
    assert!(
        st.contains("message: waiting on shop/db (staged, WindowClosed)"),
        "{st}"
    );
    let summary = git(repo.path(), &["show", "fermata/status:main/summary.md"]);
    assert!(
        summary.contains("| WaitingOnDependency: waiting on shop/db (staged, WindowClosed) |"),
        "{summary}"
    );
    // db applies in its window, then web in the same pass.
    let run = fermata(
        state.path(),
        &["run", "--once", "--repo", p, "--branch", "main"],
        OPEN,
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(state.path().join("targets/site/shop/web/current").exists());
}

#[test]
fn an_applied_composition_that_is_not_healthy_is_waited_for() {
    let repo = TestRepo::new();
    fleet(&repo, "{strategy: OrderedReady}", &["a", "b"]);
    repo.commit("two");
    let state = tempfile::tempdir().unwrap();
    let p = repo.path().to_str().unwrap();
    assert_eq!(
        fermata(
            state.path(),
            &["run", "--once", "--repo", p, "--branch", "main"],
            OPEN
        )
        .code,
        0
    );
    // Someone edits what is applied: the target reports a's state unhealthy.
    let manifest = state
        .path()
        .join("targets/site/shop/a/current/manifest.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("tag: a", "tag: edited")).unwrap();
    assert_eq!(
        plan(&repo, state.path(), OPEN, &[]),
        vec![row("shop/a", "Wait", "WaitingForReady")]
    );
}
