//! Staging that reaches the cluster (issue 15): images pre-pulled onto the
//! nodes and artifacts delivered to a claim before the window, against the
//! FAKE API server (`util/kube_fake.rs`), whose kubelets and Job controller
//! the tests drive. `fermata run --once`, the real binary, does the passes.

#[path = "util/kube_fake.rs"]
mod kube_fake;
mod util;

use kube_fake::FakeKube;
use serde_json::{json, Value};
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

// ---------------------------------------------------------------------------
// Artifacts delivered to a claim.

const TOKEN: &str = "s3cret-artifact-token";

/// fermata's `--listen` routes (the real `fermata::serve` router, serving
/// the artifact store of `state`), hosted by the test, since `run --once`
/// serves nothing; stopped when dropped.
struct StoreServer {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StoreServer {
    fn start(state: &std::path::Path) -> StoreServer {
        let dir = state.join("artifacts").join("sha256");
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let (tx, _rx) = tokio::sync::mpsc::channel(1);
                let st = fermata::serve::ServeState::new(vec!["main".into()], None, tx)
                    .serve_artifacts(fermata::serve::ArtifactAccess {
                        dir,
                        token: TOKEN.as_bytes().to_vec(),
                    });
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                addr_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("send");
                let _ = fermata::serve::serve(
                    listener,
                    std::sync::Arc::new(st),
                    fermata::serve::ServeLimits::default(),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await;
            });
        });
        StoreServer {
            addr: addr_rx.recv().expect("server address"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for StoreServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The delivery Job's script (`fermata::target::kube::deliver::SCRIPT`),
/// step for step in Rust, with its messages: the FAKE runs this where a
/// cluster would run busybox. Over real HTTP, from the real store server.
fn deliver_like_the_script(run: &kube_fake::JobRun) -> Result<(), String> {
    use sha2::Digest as _;
    let env = |k: &str| run.env.get(k).cloned().unwrap_or_default();
    let dest = run
        .host_path(&env("FERMATA_DEST"))
        .ok_or("FERMATA_DEST is not on a mounted claim")?;
    let want = env("FERMATA_SHA256");
    if std::fs::read(&dest).is_ok_and(|b| hex::encode(sha2::Sha256::digest(&b)) == want) {
        return Ok(());
    }
    std::fs::create_dir_all(dest.parent().expect("parent")).map_err(|e| e.to_string())?;
    let tmp = dest.with_extension("part.fake");
    let url = env("FERMATA_URL");
    let token = env("FERMATA_TOKEN");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let body = rt.block_on(async {
        let mut req = reqwest::Client::new().get(&url);
        if !token.is_empty() {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        let resp = req.send().await.ok()?.error_for_status().ok()?;
        resp.bytes().await.ok()
    });
    let fail = |m: String| {
        let _ = std::fs::remove_file(&tmp);
        Err(m)
    };
    let Some(body) = body else {
        return fail(format!("download of {url} failed"));
    };
    std::fs::write(&tmp, &body).map_err(|e| e.to_string())?;
    let size = env("FERMATA_SIZE");
    if !size.is_empty() && body.len().to_string() != size {
        return fail(format!(
            "size mismatch: got {} bytes, expected {size}",
            body.len()
        ));
    }
    let got = hex::encode(sha2::Sha256::digest(&body));
    if got != want {
        return fail(format!("sha256 mismatch: got {got}, expected {want}"));
    }
    std::fs::rename(&tmp, &dest).map_err(|e| e.to_string())
}

const WEIGHTS: &[u8] = b"model weights v3, forty-two bytes of them.";

/// A fleet whose ConfigMap names the path of artifact `model` in the claim,
/// with the claim and the token Secret in the cluster.
fn artifact_fleet(repo: &TestRepo, c: &Cluster, server: &StoreServer) -> String {
    c.fake.create(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "models", "namespace": "default"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}));
    c.fake.create(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "fermata-artifact-token", "namespace": "default"},
        "data": {"token": base64(TOKEN.as_bytes())}}));
    repo.write(
        "target.yaml",
        &format!(
            "apiVersion: fermata.dev/v1alpha1
kind: Target
metadata: {{name: site}}
spec:
  kubernetes:
    kubeconfig: {}
    context: fake
    namespace: default
    artifacts: {{claim: models, storeUrl: \"http://{}\"}}
",
            c.kubeconfig(),
            server.addr
        ),
    )
    .write("window.yaml", SAT_WINDOW)
    .write(
        "synth/manifests/cm.yaml",
        "apiVersion: v1
kind: ConfigMap
metadata: {name: app}
data: {model: \"/models/${artifact.model.path}\"}
",
    )
    .write(
        "symphony.yaml",
        "apiVersion: fermata.dev/v1alpha1
kind: Symphony
metadata: {name: shop}
spec:
  window: sat
  variations:
    - synthesizer: {name: app}
",
    );
    model(repo, WEIGHTS)
}

/// The artifact `model` is now `weights`; its digest.
fn model(repo: &TestRepo, weights: &[u8]) -> String {
    use sha2::Digest as _;
    let hex = hex::encode(sha2::Sha256::digest(weights));
    repo.write(
        "synth/model.bin",
        std::str::from_utf8(weights).expect("text"),
    )
    .write(
        "synth/app.yaml",
        &format!(
            "{SYNTH}  artifacts:\n    - {{name: model, url: model.bin, sha256: {hex}, size: {}}}\n",
            weights.len()
        ),
    );
    hex
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn jobs(c: &Cluster) -> Vec<String> {
    c.fake
        .objects()
        .into_keys()
        .filter(|k| k.starts_with("batch/jobs/"))
        .collect()
}

#[test]
fn an_artifact_is_delivered_verified_and_referenced() {
    let c = Cluster::new();
    c.fake.on_job("fermata-fetch-", deliver_like_the_script);
    let state = tempfile::tempdir().expect("state");
    let server = StoreServer::start(state.path());
    let repo = TestRepo::new();
    let hex = artifact_fleet(&repo, &c, &server);
    repo.commit("a model on a claim");

    let run = run_once(state.path(), &repo, CLOSED);
    assert_eq!(run.code, 0, "{run:?}");
    let st = status(&repo);
    assert_eq!(st["status"]["state"].as_str(), Some("staging"), "{st:?}");
    assert!(
        condition(&st, "Staged")["message"]
            .as_str()
            .is_some_and(|m| m.contains("delivering artifact(s) model to claim models")),
        "{st:?}"
    );
    assert_eq!(jobs(&c).len(), 1, "one delivery Job");
    c.fake.settle();
    let file = c
        .fake
        .claim_dir("default", "models")
        .join("sha256")
        .join(&hex);
    assert_eq!(std::fs::read(&file).expect("delivered"), WEIGHTS);

    // The Job completed: recorded, deleted, staged; applied in the window.
    let run = run_once(state.path(), &repo, CLOSED);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(status(&repo)["status"]["state"].as_str(), Some("staged"));
    assert!(jobs(&c).is_empty(), "the Job is deleted when done");
    assert_eq!(ledger_data(&c)[&hex], json!(WEIGHTS.len().to_string()));
    assert!(c
        .fake
        .object("v1", "ConfigMap", Some("default"), "app")
        .is_none());

    let run = run_once(state.path(), &repo, OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    let cm = c
        .fake
        .object("v1", "ConfigMap", Some("default"), "app")
        .expect("applied");
    assert_eq!(cm["data"]["model"], json!(format!("/models/sha256/{hex}")));
}

#[test]
fn a_corrupt_artifact_in_transit_is_refused() {
    let c = Cluster::new();
    let state = tempfile::tempdir().expect("state");
    let store_dir = state.path().join("artifacts").join("sha256");
    // The bytes change between fermata's store and the cluster.
    c.fake.on_job("fermata-fetch-", move |run| {
        let hex = run.env.get("FERMATA_SHA256").cloned().unwrap_or_default();
        let mut bytes = WEIGHTS.to_vec();
        bytes[0] ^= 0xff;
        std::fs::write(store_dir.join(&hex), &bytes).map_err(|e| e.to_string())?;
        deliver_like_the_script(run)
    });
    let server = StoreServer::start(state.path());
    let repo = TestRepo::new();
    let hex = artifact_fleet(&repo, &c, &server);
    repo.commit("a model on a claim");

    let run = run_once(state.path(), &repo, CLOSED);
    assert_eq!(run.code, 0, "{run:?}");
    c.fake.settle();
    let run = run_once(state.path(), &repo, OPEN);
    assert_eq!(run.code, 1, "{run:?}");
    let st = status(&repo);
    assert_eq!(st["status"]["state"].as_str(), Some("failed"), "{st:?}");
    let message = st["status"]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("artifact model (sha256 ")
            && message.contains("was not delivered to claim models: sha256 mismatch: got ")
            && message.contains(&format!("expected {hex}")),
        "{message}"
    );
    let claim = c.fake.claim_dir("default", "models").join("sha256");
    assert!(
        !claim.join(&hex).exists(),
        "nothing under the digest's name"
    );
    assert!(
        c.fake
            .object("v1", "ConfigMap", Some("default"), "app")
            .is_none(),
        "nothing applied, even in the window"
    );
}

/// The GC Job's script (`fermata::target::kube::deliver::GC_SCRIPT`), run
/// by `sh` on the claim's directory where a cluster would run busybox.
fn gc_like_the_job(run: &kube_fake::JobRun) -> Result<(), String> {
    let env = |k: &str| run.env.get(k).cloned().unwrap_or_default();
    let dir = run
        .host_path(&env("FERMATA_DIR"))
        .ok_or("FERMATA_DIR is not on a mounted claim")?;
    let log = dir.parent().ok_or("no parent")?.join("termination-log");
    let out = std::process::Command::new("sh")
        .args(&run.command[1..])
        .env("FERMATA_GARBAGE", env("FERMATA_GARBAGE"))
        .env("FERMATA_DIR", &dir)
        .env("FERMATA_LOG", &log)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn gc_jobs(c: &Cluster) -> Vec<String> {
    jobs(c)
        .into_iter()
        .filter(|k| k.contains("/fermata-gc-"))
        .collect()
}

/// The claim's ledger: digest -> size.
fn ledger_data(c: &Cluster) -> Value {
    c.fake
        .object(
            "v1",
            "ConfigMap",
            Some("default"),
            "fermata-artifacts-models",
        )
        .expect("the claim's record")["data"]
        .clone()
}

/// The digests the claim's ledger records.
fn ledger(c: &Cluster) -> Vec<String> {
    let mut keys: Vec<String> = ledger_data(c)
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort();
    keys
}

fn on_claim(c: &Cluster, hex: &str) -> bool {
    c.fake
        .claim_dir("default", "models")
        .join("sha256")
        .join(hex)
        .exists()
}

/// Closed window: the delivery starts; its Jobs run; closed: staged.
/// Two passes with the window closed, the cluster settling after each: the
/// first starts the deliveries, the second finds them done.
fn stage_passes(c: &Cluster, state: &std::path::Path, repo: &TestRepo) {
    for _ in 0..2 {
        let run = run_once(state, repo, CLOSED);
        assert_eq!(run.code, 0, "{run:?}");
        c.fake.settle();
    }
}

fn stage(c: &Cluster, state: &std::path::Path, repo: &TestRepo) {
    stage_passes(c, state, repo);
    let st = status(repo);
    assert_eq!(st["status"]["state"].as_str(), Some("staged"), "{st:?}");
}

fn apply(state: &std::path::Path, repo: &TestRepo) {
    let run = run_once(state, repo, OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    let st = status(repo);
    assert_eq!(st["status"]["state"].as_str(), Some("installed"), "{st:?}");
    assert!(st["status"]["error"].is_null(), "{st:?}");
}

/// What the garbage collection tests start from: a cluster whose delivery
/// Jobs write like the script and whose GC Jobs run `gc`, a state dir with
/// fermata's store served, and a repository holding the artifact fleet
/// (not committed yet), with the digest of its artifact.
struct Collecting {
    c: Cluster,
    state: tempfile::TempDir,
    _server: StoreServer,
    repo: TestRepo,
    x: String,
}

fn collecting(
    gc: impl Fn(&kube_fake::JobRun) -> Result<(), String> + Send + Sync + 'static,
) -> Collecting {
    let c = Cluster::new();
    c.fake.on_job("fermata-fetch-", deliver_like_the_script);
    c.fake.on_job("fermata-gc-", gc);
    let state = tempfile::tempdir().expect("state");
    let server = StoreServer::start(state.path());
    let repo = TestRepo::new();
    let x = artifact_fleet(&repo, &c, &server);
    Collecting {
        c,
        state,
        _server: server,
        repo,
        x,
    }
}

#[test]
fn garbage_collection_keeps_the_applied_staged_and_previous_artifacts() {
    let Collecting {
        c,
        state,
        _server,
        repo,
        x,
    } = collecting(gc_like_the_job);
    repo.commit("A: model x");
    stage(&c, state.path(), &repo);
    apply(state.path(), &repo);

    let y = model(&repo, b"model weights, the second of them");
    repo.commit("B: model y");
    stage(&c, state.path(), &repo);
    apply(state.path(), &repo);

    let z = model(&repo, b"model weights, the third of them");
    repo.commit("C: model z");
    stage(&c, state.path(), &repo);
    assert!(
        gc_jobs(&c).is_empty(),
        "y applied, z staged, x previous: no garbage"
    );
    assert!(on_claim(&c, &x) && on_claim(&c, &y) && on_claim(&c, &z));

    // C applied: x is neither applied (z), staged (z) nor previous (y).
    apply(state.path(), &repo);
    assert_eq!(gc_jobs(&c).len(), 1, "one GC Job, not waited for");
    c.fake.settle();
    assert!(!on_claim(&c, &x), "x removed from the claim");
    assert!(
        on_claim(&c, &y) && on_claim(&c, &z),
        "previous and applied stay"
    );
    let mut want = vec![x.clone(), y.clone(), z.clone()];
    want.sort();
    assert_eq!(ledger(&c), want, "recorded until the Job is followed");

    // The next stage finds the Job done: the ledger forgets x, the Job goes.
    let w = model(&repo, b"model weights, the fourth of them");
    repo.commit("D: model w");
    stage(&c, state.path(), &repo);
    assert!(gc_jobs(&c).is_empty(), "the completed GC Job is deleted");
    let mut want = vec![y.clone(), z.clone(), w.clone()];
    want.sort();
    assert_eq!(
        ledger(&c),
        want,
        "x forgotten; applied, staged, previous kept"
    );
    assert!(!on_claim(&c, &x));
    assert!(on_claim(&c, &y) && on_claim(&c, &z) && on_claim(&c, &w));
}

#[test]
fn a_failed_garbage_collection_fails_nothing() {
    let Collecting {
        c,
        state,
        _server,
        repo,
        x,
    } = collecting(|_| Err("rm: can't remove: Read-only file system".into()));
    repo.commit("A: model x");
    stage(&c, state.path(), &repo);
    apply(state.path(), &repo);
    for (i, weights) in [
        &b"the second weights"[..],
        b"the third weights",
        b"the fourth weights",
    ]
    .into_iter()
    .enumerate()
    {
        model(&repo, weights);
        repo.commit(&format!("model {}", i + 2));
        stage(&c, state.path(), &repo);
        apply(state.path(), &repo);
        c.fake.settle();
    }
    assert!(!gc_jobs(&c).is_empty(), "the failed GC Jobs are kept");
    assert!(
        ledger(&c).contains(&x),
        "the ledger keeps what was not removed"
    );
    assert!(on_claim(&c, &x));
}

#[test]
fn the_claim_is_collected_once_per_pass_not_once_per_apply() {
    let Collecting {
        c,
        state,
        _server,
        repo,
        ..
    } = collecting(gc_like_the_job);
    let variations: String = (0..5)
        .map(|i| format!("    - {{name: v{i}, synthesizer: {{name: app}}}}\n"))
        .collect();
    repo.write(
        "symphony.yaml",
        &format!(
            "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {{name: shop}}\nspec:\n  window: sat\n  rollout: {{strategy: Parallel, maxUnavailable: 5}}\n  variations:\n{variations}"
        ),
    );
    repo.commit("five variations sharing one model");
    stage_passes(&c, state.path(), &repo);
    // Each collection lists every inventory record of the namespace: the
    // window's pass applies five compositions and collects once (the other
    // listing is the pass's own look for compositions it does not know).
    let from = c.fake.requests().len();
    let run = run_once(state.path(), &repo, OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    let text = git(repo.path(), &["show", "fermata/status:main/shop/v4.yaml"]);
    assert!(text.contains("state: installed"), "{text}");
    let listings = c.fake.requests()[from..]
        .iter()
        .filter(|r| {
            r.method == "GET"
                && r.path.ends_with("/secrets")
                && r.query
                    .get("labelSelector")
                    .is_some_and(|l| l.contains("inventory"))
        })
        .count();
    assert_eq!(listings, 2, "inventory records listed twice in the pass");
}
