//! Staging that reaches the cluster (issue 15): images pre-pulled onto the
//! nodes and artifacts delivered to a claim before the window, against the
//! FAKE API server (`util/kube_fake.rs`), whose kubelets and Job controller
//! the tests drive. `fermata run --once`, the real binary, does the passes.

#[path = "util/kube_fake.rs"]
mod kube_fake;
mod util;

use kube_fake::FakeKube;
use serde_json::json;
use util::{git, run_once, TestRepo, SAT_WINDOW, SYNTH};

/// Saturday 2026-11-21 02:30 UTC: inside [`SAT_WINDOW`].
const OPEN: &str = "2026-11-21T02:30:00Z";
/// Friday 2026-11-20 12:00 UTC: the window is closed.
const CLOSED: &str = "2026-11-20T12:00:00Z";

struct Cluster {
    fake: FakeKube,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// A fake with one node, `n1`, holding none of the test's images.
    fn new() -> Cluster {
        let fake = FakeKube::start();
        let dir = tempfile::tempdir().expect("tempdir");
        fake.kubeconfig(&dir.path().join("kubeconfig"), "fake", "default");
        fake.add_node("n1", &[("zone", "a")], json!([]), false, &["busybox:1.37"]);
        Cluster { fake, dir }
    }

    fn kubeconfig(&self) -> String {
        self.dir.path().join("kubeconfig").display().to_string()
    }

    /// Names of the pre-pull Pods left in the cluster.
    fn pull_pods(&self) -> Vec<String> {
        self.fake
            .objects()
            .into_iter()
            .filter(|(k, v)| {
                k.starts_with("/pods/")
                    && v["metadata"]["labels"]["fermata.dev/prepull"].is_string()
            })
            .map(|(k, _)| k)
            .collect()
    }

    fn deployment(&self) -> Option<serde_json::Value> {
        self.fake
            .object("apps/v1", "Deployment", Some("default"), "app")
    }
}

/// A fleet of one composition, a Deployment of `image`, on the fake in
/// namespace `default`; with the Saturday window when `window`.
fn fleet(repo: &TestRepo, c: &Cluster, image: &str, window: bool, extra_target: &str) {
    repo.write(
        "target.yaml",
        &format!(
            "apiVersion: fermata.dev/v1alpha1
kind: Target
metadata: {{name: site}}
spec:
  kubernetes: {{kubeconfig: {}, context: fake, namespace: default{extra_target}}}
",
            c.kubeconfig()
        ),
    )
    .write("window.yaml", SAT_WINDOW)
    .write("synth/app.yaml", SYNTH)
    .write(
        "synth/manifests/deploy.yaml",
        &format!(
            "apiVersion: apps/v1
kind: Deployment
metadata: {{name: app}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: app}}}}
  template:
    metadata: {{labels: {{app: app}}}}
    spec:
      containers: [{{name: main, image: \"{image}\"}}]
"
        ),
    )
    .write(
        "symphony.yaml",
        &format!(
            "apiVersion: fermata.dev/v1alpha1
kind: Symphony
metadata: {{name: shop}}
spec:
  {}variations:
    - synthesizer: {{name: app}}
",
            if window { "window: sat\n  " } else { "" }
        ),
    );
}

fn status(repo: &TestRepo) -> serde_yaml::Value {
    let text = git(repo.path(), &["show", "fermata/status:main/shop/app.yaml"]);
    serde_yaml::from_str(&text).expect("status yaml")
}

fn condition<'a>(st: &'a serde_yaml::Value, t: &str) -> &'a serde_yaml::Value {
    st["status"]["conditions"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|c| c["type"].as_str() == Some(t))
        .unwrap_or_else(|| panic!("no condition {t}: {st:?}"))
}

#[test]
fn an_image_that_cannot_be_pulled_fails_at_stage_naming_the_image_and_the_node() {
    let c = Cluster::new();
    c.fake.unpullable("registry.example/app:nope");
    let repo = TestRepo::new();
    fleet(&repo, &c, "registry.example/app:nope", true, "");
    repo.commit("a tag that does not exist");
    let state = tempfile::tempdir().expect("state");

    // The window is closed: the pull starts now, not in the window.
    let run = run_once(state.path(), &repo, CLOSED);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(c.pull_pods().len(), 1, "one pre-pull Pod on n1");
    assert_eq!(status(&repo)["status"]["state"].as_str(), Some("staging"));

    let run = run_once(state.path(), &repo, CLOSED);
    assert_eq!(run.code, 1, "a failed stage fails the run: {run:?}");
    let st = status(&repo);
    assert_eq!(st["status"]["state"].as_str(), Some("failed"), "{st:?}");
    let message = st["status"]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("image registry.example/app:nope cannot be pulled on node n1")
            && message.contains("ErrImagePull"),
        "{message}"
    );
    assert_eq!(
        st["status"]["error"]["code"].as_str(),
        Some("StagingFailed")
    );
    assert!(c.deployment().is_none(), "nothing applied");

    // Still failing inside the window: nothing is applied either.
    let run = run_once(state.path(), &repo, OPEN);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(c.deployment().is_none());
}

#[test]
fn nothing_is_applied_while_images_are_pulling() {
    let c = Cluster::new();
    c.fake.slow("registry.example/app:1");
    let repo = TestRepo::new();
    fleet(&repo, &c, "registry.example/app:1", true, "");
    repo.commit("app 1");
    let state = tempfile::tempdir().expect("state");

    // The window is open, but the image is still being pulled.
    for _ in 0..2 {
        let run = run_once(state.path(), &repo, OPEN);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(
            c.deployment().is_none(),
            "no write of the workload while pulling"
        );
        let st = status(&repo);
        assert_eq!(st["status"]["state"].as_str(), Some("staging"), "{st:?}");
        let staged = condition(&st, "Staged");
        assert_eq!(staged["reason"].as_str(), Some("Staging"));
        assert!(
            staged["message"]
                .as_str()
                .is_some_and(|m| m.contains("pulling registry.example/app:1") && m.contains("n1")),
            "{staged:?}"
        );
        assert_eq!(
            condition(&st, "Programmed")["reason"].as_str(),
            Some("StagingInProgress")
        );
        assert_eq!(c.pull_pods().len(), 1, "one Pod, not one per pass");
    }

    c.fake.release("registry.example/app:1");
    let run = run_once(state.path(), &repo, OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        c.deployment().is_some(),
        "applied on the pass after the pull"
    );
    assert!(
        c.pull_pods().is_empty(),
        "pre-pull Pods are deleted when done"
    );
    assert!(c.fake.node_images("n1").contains("registry.example/app:1"));
}

#[test]
fn images_present_on_every_node_stage_at_once() {
    let c = Cluster::new();
    let repo = TestRepo::new();
    fleet(&repo, &c, "busybox:1.37", false, "");
    repo.commit("an image n1 has");
    let state = tempfile::tempdir().expect("state");
    let run = run_once(state.path(), &repo, OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(c.pull_pods().is_empty());
    assert!(c.deployment().is_some(), "staged and applied in one pass");
}

#[test]
fn a_crash_between_pre_pull_and_apply_converges() {
    let c = Cluster::new();
    c.fake.slow("registry.example/app:1");
    let repo = TestRepo::new();
    fleet(&repo, &c, "registry.example/app:1", true, "");
    repo.commit("app 1");
    let state = tempfile::tempdir().expect("state");
    let run = run_once(state.path(), &repo, CLOSED);
    assert_eq!(run.code, 0, "{run:?}");
    let first = c.pull_pods();
    assert_eq!(first.len(), 1);

    // The process is gone (it was a `--once` process); a new commit
    // arrives, and a new process with a fresh state directory takes over.
    repo.write(
        "synth/manifests/deploy.yaml",
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
spec:
  replicas: 1
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec:
      containers: [{name: main, image: \"registry.example/app:2\"}]
",
    );
    repo.commit("app 2");
    let state = tempfile::tempdir().expect("fresh state");
    let run = run_once(state.path(), &repo, CLOSED);
    assert_eq!(run.code, 0, "{run:?}");
    let second = c.pull_pods();
    assert!(
        !second.iter().any(|p| first.contains(p)),
        "the older stage's Pod is deleted: {first:?} {second:?}"
    );
    let run = run_once(state.path(), &repo, OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    let d = c.deployment().expect("applied");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        json!("registry.example/app:2")
    );
    assert!(c.pull_pods().is_empty(), "no leftover pre-pull Pods");
    assert_eq!(
        status(&repo)["status"]["applied"],
        status(&repo)["status"]["digest"]
    );
}

#[test]
fn pre_pull_off_stages_without_pods() {
    let c = Cluster::new();
    c.fake.slow("registry.example/app:1");
    let repo = TestRepo::new();
    fleet(
        &repo,
        &c,
        "registry.example/app:1",
        false,
        ", prePull: {enabled: false}",
    );
    repo.commit("no pre-pull");
    let state = tempfile::tempdir().expect("state");
    let run = run_once(state.path(), &repo, OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(c.pull_pods().is_empty());
    assert!(c.deployment().is_some());
}
