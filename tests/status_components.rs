//! Per-component status through `fermata run --once` (issue 16 point 7):
//! when rendering fails, the components of the last rendering are still
//! listed (Margo needs one entry per component), each as it really is.

mod util;

use util::{git, TestRepo};

const OPEN: &str = "2026-11-21T02:30:00Z";

fn status_file(repo: &TestRepo) -> String {
    let files = git(
        repo.path(),
        &["ls-tree", "-r", "--name-only", "fermata/status"],
    );
    let file = files
        .lines()
        .find(|f| f.starts_with("main/shop/") && f.ends_with(".yaml"))
        .unwrap_or_else(|| panic!("no status of shop: {files}"))
        .to_string();
    git(repo.path(), &["show", &format!("fermata/status:{file}")])
}

#[test]
fn a_render_failure_lists_the_last_rendering_components() {
    let repo = TestRepo::new();
    util::minimal(&repo);
    repo.commit("one");
    let state = tempfile::tempdir().unwrap();
    let run = util::run_once(state.path(), &repo, OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    let st = status_file(&repo);
    assert!(st.contains("state: installed"), "{st}");

    repo.write(
        "synth/manifests/cm.yaml",
        "apiVersion: v1\nkind: [ConfigMap\n",
    );
    repo.commit("broken template");
    let run = util::run_once(state.path(), &repo, OPEN);
    assert_eq!(run.code, 1, "{run:?}");
    let st = status_file(&repo);
    let doc: serde_yaml::Value = serde_yaml::from_str(&st).expect("yaml");
    assert_eq!(doc["status"]["state"].as_str(), Some("failed"), "{st}");
    assert_eq!(
        doc["status"]["error"]["code"].as_str(),
        Some("RenderFailed"),
        "{st}"
    );
    let components = doc["status"]["components"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    assert_eq!(components.len(), 1, "the last rendering's: {st}");
    assert_eq!(
        components[0]["name"].as_str(),
        Some("v1/ConfigMap/default/app"),
        "{st}"
    );
    // What was applied before still runs: not `failed`.
    assert_eq!(components[0]["state"].as_str(), Some("installed"), "{st}");

    let p = repo.path().to_string_lossy().to_string();
    let margo = util::fermata(&["status", "--repo", &p, "--format", "margo"]);
    assert!(
        margo.stdout.contains("v1/ConfigMap/default/app"),
        "{margo:?}"
    );
}
