//! Conditions and readiness (Datum's Programmed/Running/Ready, Eno's rule
//! for a symphony) and additive labels, through `fermata run`.

mod util;

use util::{git, TestRepo};

const T1: &str = "2026-11-21T06:00:00Z"; // closed
const T2: &str = "2026-11-21T07:00:00Z"; // still closed
const OPEN: &str = "2026-11-28T02:30:00Z";

use util::run_once as once;

fn fleet(repo: &TestRepo, tag: &str, c_optional: bool) {
    util::minimal(repo)
        .write(
            "window.yaml",
            util::SAT_WINDOW,
        )
        .write(
            "symphony.yaml",
            &format!(
                "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {{name: shop}}\nspec:\n  rollout: {{strategy: Parallel, maxUnavailable: 5}}\n  synthesisEnv: [{{name: TAG, value: {tag}}}]\n  variations:\n    - {{name: a, synthesizer: {{name: app}}}}\n    - {{name: b, synthesizer: {{name: app}}, window: sat}}\n    - {{name: c, synthesizer: {{name: app}}, window: sat, optional: {c_optional}}}\n"
            ),
        );
}

fn status(repo: &TestRepo, var: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&git(
        repo.path(),
        &["show", &format!("fermata/status:main/shop/{var}.yaml")],
    ))
    .unwrap()
}

fn condition<'a>(st: &'a serde_yaml::Value, t: &str) -> &'a serde_yaml::Value {
    st["status"]["conditions"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["type"] == t)
        .unwrap_or_else(|| panic!("no {t} condition in {st:?}"))
}

#[test]
fn symphony_ready_counts_non_optional_compositions_at_the_current_commit() {
    let repo = TestRepo::new();
    let state = tempfile::tempdir().unwrap();
    fleet(&repo, "v1", false);
    repo.commit("three");
    assert_eq!(once(state.path(), &repo, T1).code, 0);
    let a = status(&repo, "a");
    assert_eq!(condition(&a, "Ready")["status"], "True");
    assert_eq!(condition(&a, "Programmed")["reason"], "Applied");
    assert_eq!(condition(&a, "Running")["reason"], "Healthy");
    let b = status(&repo, "b");
    assert_eq!(condition(&b, "Ready")["status"], "False");
    assert_eq!(condition(&b, "Ready")["reason"], "WindowClosed");
    assert_eq!(b["status"]["symphony"]["readyCompositions"], 1);
    assert_eq!(b["status"]["symphony"]["desired"], 3);
    assert_eq!(b["status"]["symphony"]["ready"], false);
    let summary = git(repo.path(), &["show", "fermata/status:main/summary.md"]);
    assert!(summary.contains("| shop | no | 1/3 |"), "{summary}");

    // c becomes optional: it no longer counts.
    fleet(&repo, "v1", true);
    repo.commit("c optional");
    assert_eq!(once(state.path(), &repo, T1).code, 0);
    assert_eq!(status(&repo, "a")["status"]["symphony"]["desired"], 2);
    assert_eq!(
        status(&repo, "a")["status"]["symphony"]["ready"],
        false,
        "b is not Ready"
    );

    assert_eq!(once(state.path(), &repo, OPEN).code, 0);
    let a = status(&repo, "a");
    assert_eq!(a["status"]["symphony"]["readyCompositions"], 2);
    assert_eq!(a["status"]["symphony"]["ready"], true);
}

#[test]
fn last_transition_time_is_when_the_condition_last_changed() {
    let repo = TestRepo::new();
    let state = tempfile::tempdir().unwrap();
    fleet(&repo, "v1", false);
    repo.commit("one");
    assert_eq!(once(state.path(), &repo, T1).code, 0);
    assert_eq!(
        condition(&status(&repo, "b"), "Ready")["lastTransitionTime"],
        T1
    );
    // A new commit while still closed: the file is rewritten (new digest),
    // but Ready has been False since T1.
    fleet(&repo, "v2", false);
    repo.commit("two");
    assert_eq!(once(state.path(), &repo, T2).code, 0);
    let b = status(&repo, "b");
    assert_eq!(b["metadata"]["timeStamp"], T2, "the file was rewritten");
    assert_eq!(condition(&b, "Ready")["lastTransitionTime"], T1);
    assert_eq!(once(state.path(), &repo, OPEN).code, 0);
    let b = status(&repo, "b");
    assert_eq!(condition(&b, "Ready")["status"], "True");
    assert_eq!(condition(&b, "Ready")["lastTransitionTime"], OPEN);
}

#[test]
fn labels_merge_additively_and_empty_removes() {
    let repo = TestRepo::new();
    let state = tempfile::tempdir().unwrap();
    let with = |labels: &str| {
        util::minimal(&repo).write(
            "symphony.yaml",
            &format!("{}      labels: {labels}\n", util::SYMPHONY),
        );
    };
    with("{tier: edge, zone: north}");
    repo.commit("labels");
    assert_eq!(once(state.path(), &repo, T1).code, 0);
    let record = || {
        let text = std::fs::read_to_string(
            state
                .path()
                .join("targets/site/shop/app/current/composition.yaml"),
        )
        .unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        v["labels"].clone()
    };
    assert_eq!(record()["tier"], "edge");
    // tier removed, zone not mentioned (kept), team added: one write.
    with("{tier: \"\", team: vision}");
    repo.commit("relabel");
    assert_eq!(once(state.path(), &repo, T1).code, 0);
    let labels = record();
    assert!(labels.get("tier").is_none(), "{labels:?}");
    assert_eq!(labels["zone"], "north");
    assert_eq!(labels["team"], "vision");
}
