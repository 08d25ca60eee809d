//! Directory target tests on real temp dirs: invariants 1 (staging never
//! changes what is applied), 4 (`current` is always one complete rendered
//! state) and 7 (a crash at any step converges on restart).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::model::wellknown::ORPHANED_FROM;
use crate::model::Artifact;

fn id() -> CompositionId {
    CompositionId::new("line-control", "vision")
}

/// `n` compositions of one symphony: `line-control/v0`, `v1`, ...
fn ids(n: usize) -> Vec<CompositionId> {
    (0..n)
        .map(|i| CompositionId::new("line-control", format!("v{i}")))
        .collect()
}

/// For each of `ids`, a state of one ConfigMap holding `value`.
fn configmaps(ids: &[CompositionId], value: &str) -> Vec<Desired> {
    ids.iter()
        .map(|id| desired(rendered_for(id, vec![configmap("cfg", value)])))
        .collect()
}

fn configmap(name: &str, value: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "line"},
        "data": {"value": value},
    })
}

fn rendered_for(id: &CompositionId, objects: Vec<Value>) -> Rendered {
    Rendered::for_tests(
        id.clone(),
        objects,
        BTreeMap::new(),
        BTreeMap::new(),
        Vec::new(),
    )
}

/// A state of `id()` with one ConfigMap `cfg` holding `value`.
fn rendered(value: &str) -> Rendered {
    rendered_for(&id(), vec![configmap("cfg", value)])
}

fn desired(r: Rendered) -> Desired {
    Desired {
        rendered: Arc::new(r),
        source: SourceRef {
            branch: "main".into(),
            commit: "3f2a".repeat(10),
        },
        artifacts: BTreeMap::new(),
    }
}

/// A desired state carrying one artifact whose store file is `store`.
fn with_artifact(value: &str, store: &Path, bytes: &[u8]) -> Desired {
    fs::write(store, bytes).unwrap();
    let artifact = Artifact {
        name: "model".into(),
        url: "https://models.example/model.onnx".into(),
        repo_path: None,
        sha256: Digest::of(bytes),
        size: Some(bytes.len() as u64),
    };
    let r = Rendered::for_tests(
        id(),
        vec![configmap("cfg", value)],
        BTreeMap::new(),
        BTreeMap::new(),
        vec![artifact],
    );
    let mut d = desired(r);
    d.artifacts.insert("model".into(), store.to_path_buf());
    d
}

fn fixture() -> (tempfile::TempDir, DirectoryTarget) {
    let dir = tempfile::tempdir().unwrap();
    let target = DirectoryTarget::new(dir.path().join("root"));
    (dir, target)
}

fn comp_dir(t: &DirectoryTarget) -> PathBuf {
    t.root().join("line-control").join("vision")
}

fn link(t: &DirectoryTarget, name: &str) -> Option<PathBuf> {
    fs::read_link(comp_dir(t).join(name)).ok()
}

fn state_link(d: &Desired) -> PathBuf {
    Path::new(".fermata/states").join(d.rendered.digest.to_hex())
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

fn states(t: &DirectoryTarget) -> BTreeSet<String> {
    names(&comp_dir(t).join(".fermata/states"))
}

fn hexes(ds: &[&Desired]) -> BTreeSet<String> {
    ds.iter().map(|d| d.rendered.digest.to_hex()).collect()
}

fn history(t: &DirectoryTarget) -> Vec<String> {
    fs::read_to_string(comp_dir(t).join(".fermata/applied"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

/// What a write under `root` would change: every entry's inode, times,
/// size and link target (a directory's mtime moves when an entry is
/// created or removed in it, even a temporary one).
type Snapshot = BTreeMap<PathBuf, (u64, i64, i64, i64, i64, u64, Option<PathBuf>)>;

fn snapshot(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(path) = todo.pop() {
        let Ok(m) = fs::symlink_metadata(&path) else {
            continue;
        };
        if m.is_dir() {
            todo.extend(fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
        let link = fs::read_link(&path).ok();
        out.insert(
            path,
            (
                m.ino(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
                m.len(),
                link,
            ),
        );
    }
    out
}

async fn run(t: &DirectoryTarget, d: &Desired, goal: StateGoal) -> Outcome {
    t.apply(d, goal).await.unwrap()
}

fn flags(o: &Observed) -> Vec<(&str, StateFlag)> {
    o.components
        .iter()
        .map(|c| (c.name.as_str(), c.flag))
        .collect()
}

#[tokio::test]
async fn stage_writes_the_state_and_staged_but_never_current() {
    let (_tmp, t) = fixture();
    let a = desired(rendered("a"));
    assert!(run(&t, &a, StateGoal::Stage).await.changed);

    let state = comp_dir(&t).join(state_link(&a));
    assert_eq!(
        fs::read_to_string(state.join("manifest.yaml")).unwrap(),
        a.rendered.manifest_yaml()
    );
    let record: Record =
        serde_yaml::from_str(&fs::read_to_string(state.join("composition.yaml")).unwrap()).unwrap();
    assert_eq!(record.id, id());
    assert_eq!(record.digest, a.rendered.digest);
    assert_eq!(record.source, a.source);
    assert_eq!(record.components[0].name, "v1/ConfigMap/line/cfg");

    let staged = link(&t, "staged").unwrap();
    assert!(staged.is_relative());
    assert_eq!(staged, state_link(&a));
    assert_eq!(link(&t, "current"), None, "staging must not apply");
    assert!(names(&comp_dir(&t).join(".fermata/tmp")).is_empty());

    let o = t.get(&id()).await.unwrap();
    assert_eq!(o.applied, None);
    assert_eq!(o.staged, Some(a.rendered.digest));
    assert_eq!(
        flags(&o),
        vec![("v1/ConfigMap/line/cfg", StateFlag::Staged)]
    );
    assert_eq!(o.health, Some(Health::Unknown));
}

#[tokio::test]
async fn apply_stages_implicitly_and_switches_current() {
    let (_tmp, t) = fixture();
    let a = desired(rendered("a"));
    assert!(run(&t, &a, StateGoal::Apply).await.changed);
    assert_eq!(link(&t, "current"), Some(state_link(&a)));
    assert_eq!(link(&t, "staged"), Some(state_link(&a)));
    assert_eq!(
        fs::read_to_string(comp_dir(&t).join("current/manifest.yaml")).unwrap(),
        a.rendered.manifest_yaml()
    );
    assert_eq!(history(&t), vec![a.rendered.digest.to_hex()]);
    let line = fs::read_to_string(comp_dir(&t).join(".fermata/applied")).unwrap();
    assert!(
        line.contains(&format!("main@{}", a.source.commit)),
        "{line}"
    );

    let o = t.get(&id()).await.unwrap();
    assert_eq!(o.applied, Some(a.rendered.digest));
    assert_eq!(o.staged, Some(a.rendered.digest));
    assert_eq!(
        flags(&o),
        vec![("v1/ConfigMap/line/cfg", StateFlag::Applied)]
    );
    assert_eq!(o.health, Some(Health::Healthy));
}

#[tokio::test]
async fn staging_b_leaves_applied_a_untouched() {
    let (_tmp, t) = fixture();
    let a = desired(rendered("a"));
    let b = desired(rendered("b"));
    run(&t, &a, StateGoal::Apply).await;
    let a_dir = comp_dir(&t).join(state_link(&a));
    let before = snapshot(&a_dir);
    let manifest = fs::read(comp_dir(&t).join("current/manifest.yaml")).unwrap();

    assert!(run(&t, &b, StateGoal::Stage).await.changed);
    assert_eq!(link(&t, "current"), Some(state_link(&a)));
    assert_eq!(link(&t, "staged"), Some(state_link(&b)));
    assert_eq!(snapshot(&a_dir), before);
    assert_eq!(
        fs::read(comp_dir(&t).join("current/manifest.yaml")).unwrap(),
        manifest
    );

    let o = t.get(&id()).await.unwrap();
    assert_eq!(o.applied, Some(a.rendered.digest));
    assert_eq!(o.staged, Some(b.rendered.digest));
    assert_eq!(
        flags(&o),
        vec![("v1/ConfigMap/line/cfg", StateFlag::Staged)]
    );

    assert!(run(&t, &b, StateGoal::Apply).await.changed);
    assert_eq!(link(&t, "current"), Some(state_link(&b)));
}

#[tokio::test]
async fn the_same_digest_again_writes_nothing() {
    let (tmp, t) = fixture();
    let a = desired(rendered("a"));
    run(&t, &a, StateGoal::Stage).await;
    let staged = snapshot(tmp.path());
    assert!(!run(&t, &a, StateGoal::Stage).await.changed);
    assert_eq!(snapshot(tmp.path()), staged);

    // Same content from another commit: same digest, still no write.
    let mut later = a.clone();
    later.source.commit = "9".repeat(40);
    assert!(!run(&t, &later, StateGoal::Stage).await.changed);
    assert_eq!(snapshot(tmp.path()), staged);

    assert!(run(&t, &a, StateGoal::Apply).await.changed);
    let applied = snapshot(tmp.path());
    assert!(!run(&t, &a, StateGoal::Apply).await.changed);
    assert!(!run(&t, &a, StateGoal::Stage).await.changed);
    assert_eq!(run(&t, &a, StateGoal::DryRun).await, Outcome::default());
    t.get(&id()).await.unwrap();
    t.list().await.unwrap();
    assert_eq!(snapshot(tmp.path()), applied);
}

#[tokio::test]
async fn gc_keeps_the_last_applied_states_current_and_staged() {
    let (_tmp, t) = fixture();
    let ds: Vec<Desired> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|v| desired(rendered(v)))
        .collect();
    let [a, b, c, d, e] = &ds[..] else {
        unreachable!()
    };
    for x in [a, b, c, d] {
        run(&t, x, StateGoal::Apply).await;
    }
    assert_eq!(states(&t), hexes(&[b, c, d]));
    run(&t, e, StateGoal::Stage).await;
    assert_eq!(states(&t), hexes(&[b, c, d, e]));
    let order = |xs: &[&Desired]| -> Vec<String> {
        xs.iter().map(|x| x.rendered.digest.to_hex()).collect()
    };
    assert_eq!(history(&t), order(&[b, c, d]));

    // Staging another state drops the one staged before (never applied).
    let f = desired(rendered("f"));
    run(&t, &f, StateGoal::Stage).await;
    assert_eq!(states(&t), hexes(&[b, c, d, &f]));

    // Rollback to a kept state reuses its dir as it is.
    let b_ino = fs::metadata(comp_dir(&t).join(state_link(b)))
        .unwrap()
        .ino();
    assert!(run(&t, b, StateGoal::Apply).await.changed);
    assert_eq!(link(&t, "current"), Some(state_link(b)));
    assert_eq!(
        fs::metadata(comp_dir(&t).join(state_link(b)))
            .unwrap()
            .ino(),
        b_ino
    );
    assert_eq!(history(&t), order(&[c, d, b]));
    assert_eq!(states(&t), hexes(&[b, c, d]));
    assert!(names(&comp_dir(&t).join(".fermata/tmp")).is_empty());
}

#[tokio::test]
async fn dry_run_writes_nothing_and_shows_a_diff() {
    let (tmp, t) = fixture();
    let a = desired(rendered_for(
        &id(),
        vec![configmap("cfg", "a"), configmap("gone", "g")],
    ));
    let plan = run(&t, &a, StateGoal::DryRun).await;
    assert!(plan.changed);
    let diff = plan.diff.unwrap();
    assert!(diff.contains("nothing applied"), "{diff}");
    assert!(diff.contains("  + v1/ConfigMap/line/cfg"), "{diff}");
    assert!(!t.root().exists(), "DryRun created the root");

    run(&t, &a, StateGoal::Apply).await;
    let before = snapshot(tmp.path());
    let b = desired(Rendered::for_tests(
        id(),
        vec![
            configmap("cfg", "b"),
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": "app", "namespace": "line"}}),
        ],
        BTreeMap::from([("migrate.example/owner".into(), "true".into())]),
        BTreeMap::new(),
        Vec::new(),
    ));
    let plan = run(&t, &b, StateGoal::DryRun).await;
    assert_eq!(snapshot(tmp.path()), before, "DryRun wrote");
    assert!(plan.changed);
    let diff = plan.diff.unwrap();
    for want in [
        format!(
            "applied {} -> desired {}",
            a.rendered.digest.short(),
            b.rendered.digest.short()
        ),
        "  + apps/v1/Deployment/line/app".into(),
        "  ~ v1/ConfigMap/line/cfg".into(),
        "  - v1/ConfigMap/line/gone".into(),
        "  annotations: + migrate.example/owner=true".into(),
        "--- applied/manifest.yaml".into(),
        "+++ desired/manifest.yaml".into(),
        "-  value: a".into(),
        "+  value: b".into(),
    ] {
        assert!(diff.contains(&want), "missing {want:?} in\n{diff}");
    }
}

#[tokio::test]
async fn get_flags_applied_and_staged_components() {
    let (_tmp, t) = fixture();
    let a = desired(rendered_for(
        &id(),
        vec![
            configmap("cfg", "a"),
            configmap("keep", "k"),
            configmap("gone", "g"),
        ],
    ));
    let b = desired(rendered_for(
        &id(),
        vec![
            configmap("cfg", "b"),
            configmap("keep", "k"),
            configmap("added", "n"),
        ],
    ));
    run(&t, &a, StateGoal::Apply).await;
    run(&t, &b, StateGoal::Stage).await;
    let o = t.get(&id()).await.unwrap();
    assert_eq!(
        flags(&o),
        vec![
            ("v1/ConfigMap/line/added", StateFlag::Staged),
            ("v1/ConfigMap/line/cfg", StateFlag::Staged),
            ("v1/ConfigMap/line/gone", StateFlag::Applied),
            ("v1/ConfigMap/line/keep", StateFlag::Applied),
        ]
    );
    run(&t, &b, StateGoal::Apply).await;
    let o = t.get(&id()).await.unwrap();
    assert!(o.components.iter().all(|c| c.flag == StateFlag::Applied));
    assert_eq!(o.components.len(), 3);
}

#[tokio::test]
async fn health_checks_the_applied_tree_and_apply_repairs_it() {
    let (tmp, t) = fixture();
    let a = with_artifact("a", &tmp.path().join("store-a"), b"weights");
    assert_eq!(t.get(&id()).await.unwrap().health, Some(Health::Unknown));
    run(&t, &a, StateGoal::Apply).await;
    assert_eq!(t.get(&id()).await.unwrap().health, Some(Health::Healthy));

    let artifact = comp_dir(&t).join("current/artifacts/model");
    fs::remove_file(&artifact).unwrap();
    let Some(Health::Unhealthy(why)) = t.get(&id()).await.unwrap().health else {
        panic!("a missing artifact is unhealthy")
    };
    assert!(why.contains("artifacts/model"), "{why}");

    fs::write(&artifact, b"short").unwrap();
    let Some(Health::Unhealthy(why)) = t.get(&id()).await.unwrap().health else {
        panic!("a wrong-sized artifact is unhealthy")
    };
    assert!(why.contains("5 bytes, recorded 7"), "{why}");

    // Staging must not repair (that would change what is applied); Apply does.
    let err = t.apply(&a, StateGoal::Stage).await.unwrap_err();
    assert!(err.to_string().contains("apply it again"), "{err}");
    assert!(run(&t, &a, StateGoal::Apply).await.changed);
    assert_eq!(t.get(&id()).await.unwrap().health, Some(Health::Healthy));
    assert_eq!(fs::read(&artifact).unwrap(), b"weights");

    // Same size, other content: caught by its hash, not only by its size.
    fs::write(&artifact, b"WEIGHTS").unwrap();
    let Some(Health::Unhealthy(why)) = t.get(&id()).await.unwrap().health else {
        panic!("a corrupted artifact is unhealthy")
    };
    assert!(why.contains("does not hash to its sha256"), "{why}");

    fs::write(comp_dir(&t).join("current/manifest.yaml"), "edited").unwrap();
    let Some(Health::Unhealthy(why)) = t.get(&id()).await.unwrap().health else {
        panic!("an edited manifest is unhealthy")
    };
    assert!(why.contains("manifest.yaml"), "{why}");

    fs::remove_file(comp_dir(&t).join("current")).unwrap();
    std::os::unix::fs::symlink("/etc", comp_dir(&t).join("current")).unwrap();
    let o = t.get(&id()).await.unwrap();
    assert_eq!(o.applied, None);
    assert!(matches!(o.health, Some(Health::Unhealthy(_))));
}

#[tokio::test]
async fn delete_removes_the_composition_and_an_empty_symphony() {
    let (_tmp, t) = fixture();
    let one = CompositionId::new("line-control", "one");
    let two = CompositionId::new("line-control", "two");
    let other = CompositionId::new("other", "x");
    for i in [&one, &two, &other] {
        let d = desired(rendered_for(i, vec![configmap("cfg", "a")]));
        run(&t, &d, StateGoal::Apply).await;
    }
    fs::create_dir_all(t.root().join("line-control/not-a-composition")).unwrap();
    assert_eq!(
        t.list().await.unwrap(),
        vec![one.clone(), two.clone(), other.clone()]
    );

    t.delete(&one).await.unwrap();
    assert!(!t.root().join("line-control/one").exists());
    assert_eq!(t.list().await.unwrap(), vec![two.clone(), other.clone()]);
    t.delete(&two).await.unwrap();
    assert!(t.root().join("line-control").exists(), "not empty yet");
    fs::remove_dir(t.root().join("line-control/not-a-composition")).unwrap();
    t.delete(&two).await.unwrap();
    assert!(!t.root().join("line-control").exists());
    assert_eq!(t.list().await.unwrap(), vec![other]);

    let o = t.get(&one).await.unwrap();
    assert_eq!((o.applied, o.staged), (None, None));
    assert_eq!(o.health, Some(Health::Unknown));
    t.delete(&CompositionId::new("never", "there"))
        .await
        .unwrap();
}

#[tokio::test]
async fn crash_leftovers_are_cleared_and_the_target_converges() {
    let (tmp, t) = fixture();
    let a = desired(rendered("a"));
    let b = desired(rendered("b"));
    run(&t, &a, StateGoal::Apply).await;
    let leftovers = comp_dir(&t).join(".fermata/tmp");
    fs::create_dir_all(leftovers.join("state.00ff/artifacts")).unwrap();
    fs::write(leftovers.join("state.00ff/manifest.yaml"), "---\nhalf").unwrap();
    std::os::unix::fs::symlink(
        ".fermata/states/0000000000000000000000000000000000000000000000000000000000000000",
        leftovers.join("current.1234"),
    )
    .unwrap();
    fs::write(leftovers.join("applied.99"), "partial").unwrap();
    // The debris stands for a process that crashed: the restarted one has
    // a fresh handle (this one knows its own writes left `tmp/` empty).
    let t = DirectoryTarget::new(t.root());

    // Reads and plans see through the debris and leave it alone.
    let before = snapshot(tmp.path());
    let o = t.get(&id()).await.unwrap();
    assert_eq!(o.applied, Some(a.rendered.digest));
    assert_eq!(o.health, Some(Health::Healthy));
    assert!(run(&t, &b, StateGoal::DryRun).await.changed);
    assert_eq!(snapshot(tmp.path()), before);

    // The next write clears it, even one with nothing else to do.
    assert!(!run(&t, &a, StateGoal::Stage).await.changed);
    assert!(names(&leftovers).is_empty());
    run(&t, &b, StateGoal::Apply).await;
    assert_eq!(link(&t, "current"), Some(state_link(&b)));
    assert!(names(&leftovers).is_empty());
}

#[tokio::test]
async fn a_failed_write_leaves_its_debris_to_the_next_call_of_the_same_process() {
    let mut left = 0;
    for steps in 1..12 {
        let (_tmp, t) = fixture();
        let (a, b) = (desired(rendered("a")), desired(rendered("b")));
        // Known clean: this handle's own writes left `tmp/` empty.
        run(&t, &a, StateGoal::Apply).await;
        let debris = comp_dir(&t).join(".fermata/tmp");
        if t.crashing_after(steps)
            .apply(&b, StateGoal::Stage)
            .await
            .is_ok()
        {
            continue;
        }
        if names(&debris).is_empty() {
            continue;
        }
        left += 1;
        // Same handle, same process: the next call still clears it.
        run(&t, &b, StateGoal::Apply).await;
        assert!(names(&debris).is_empty(), "after {steps} steps");
        assert_eq!(link(&t, "current"), Some(state_link(&b)));
    }
    assert!(left >= 2, "only {left} failed writes left debris");
}

/// What a converged target looks like, for comparing runs.
fn shape(
    t: &DirectoryTarget,
) -> (
    Option<PathBuf>,
    Option<PathBuf>,
    BTreeSet<String>,
    Vec<String>,
) {
    (link(t, "current"), link(t, "staged"), states(t), history(t))
}

/// Invariant 4 on disk: `current`, if present, is a complete state whose
/// manifest is exactly one of `states`; returns which.
fn current_is_one_complete_state(t: &DirectoryTarget, states: &[&Desired]) -> Option<usize> {
    let current = comp_dir(t).join("current");
    fs::symlink_metadata(&current).ok()?;
    let manifest =
        fs::read_to_string(current.join("manifest.yaml")).expect("current has a manifest");
    let matching: Vec<usize> = (0..states.len())
        .filter(|&i| states[i].rendered.manifest_yaml() == manifest)
        .collect();
    assert_eq!(matching.len(), 1, "current matches {matching:?}");
    let i = matching[0];
    let site = DirectoryTarget::new(t.root()).site(&id()).unwrap();
    site.verify(&current, &states[i].rendered.digest)
        .expect("current is complete");
    Some(i)
}

#[tokio::test]
async fn a_crash_at_any_step_converges_on_restart() {
    let store = tempfile::tempdir().unwrap();
    let a = with_artifact("a", &store.path().join("a"), b"model a");
    let b = with_artifact("b", &store.path().join("b"), b"model b");
    let (p, q) = (desired(rendered("p")), desired(rendered("q")));
    let all = [&a, &b, &p, &q];
    // Applied p, q, a: applying b also collects p.
    let setup = |t: DirectoryTarget| {
        let (p, q, a) = (p.clone(), q.clone(), a.clone());
        async move {
            for x in [&p, &q, &a] {
                run(&t, x, StateGoal::Apply).await;
            }
            t
        }
    };

    // A clean run of each scenario, to compare against.
    let mut clean = Vec::new();
    for goal in [StateGoal::Stage, StateGoal::Apply] {
        let (_tmp, t) = fixture();
        let t = setup(t).await;
        run(&t, &b, goal).await;
        clean.push(shape(&t));
    }
    assert_eq!(clean[1].2, hexes(&[&q, &a, &b]));

    let mut crashes = 0;
    for steps in 0..30 {
        for (n, goal) in [StateGoal::Stage, StateGoal::Apply].into_iter().enumerate() {
            let (_tmp, t) = fixture();
            let t = setup(t).await;
            let crashing = t.crashing_after(steps);
            if crashing.apply(&b, goal).await.is_err() {
                crashes += 1;
            }
            let now = current_is_one_complete_state(&t, &all);
            if goal == StateGoal::Stage {
                assert_eq!(now, Some(0), "a crashed stage changed current");
            }
            // Restart: a fresh handle on the same root, same call.
            let restarted = DirectoryTarget::new(t.root());
            run(&restarted, &b, goal).await;
            assert_eq!(shape(&t), clean[n], "{goal:?} crashed after {steps} steps");
            assert!(names(&comp_dir(&t).join(".fermata/tmp")).is_empty());
            assert_eq!(t.get(&id()).await.unwrap().health, Some(Health::Healthy));
        }
    }
    assert!(crashes > 20, "only {crashes} crashes simulated");

    // A crashed delete: what remains is still listed, and deleting again finishes.
    for steps in 0..3 {
        let (_tmp, t) = fixture();
        run(&t, &a, StateGoal::Apply).await;
        assert!(t.crashing_after(steps).delete(&id()).await.is_err());
        current_is_one_complete_state(&t, &all);
        t.delete(&id()).await.unwrap();
        assert!(t.list().await.unwrap().is_empty());
        assert!(!t.root().join("line-control").exists());
    }
}

#[tokio::test]
async fn artifacts_are_hard_links_into_the_store() {
    let (tmp, t) = fixture();
    let store = tmp.path().join("store-file");
    let a = with_artifact("a", &store, b"weights");
    run(&t, &a, StateGoal::Stage).await;
    let staged = comp_dir(&t).join(state_link(&a)).join("artifacts/model");
    let (s, l) = (
        fs::metadata(&store).unwrap(),
        fs::metadata(&staged).unwrap(),
    );
    assert_eq!((s.dev(), s.ino()), (l.dev(), l.ino()));
    let record: Record = serde_yaml::from_str(
        &fs::read_to_string(comp_dir(&t).join(state_link(&a)).join("composition.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        record.artifacts,
        vec![ArtifactRecord {
            name: "model".into(),
            sha256: Digest::of(b"weights"),
            size: 7
        }]
    );
}

#[tokio::test]
async fn artifacts_are_copied_across_filesystems() {
    let Ok(other_fs) = tempfile::tempdir_in("/dev/shm") else {
        return; // no second filesystem here
    };
    let (tmp, t) = fixture();
    if fs::metadata(other_fs.path()).unwrap().dev() == fs::metadata(tmp.path()).unwrap().dev() {
        return;
    }
    let store = other_fs.path().join("store-file");
    let a = with_artifact("a", &store, b"weights");
    run(&t, &a, StateGoal::Apply).await;
    let applied = comp_dir(&t).join("current/artifacts/model");
    assert_eq!(fs::read(&applied).unwrap(), b"weights");
    assert_eq!(t.get(&id()).await.unwrap().health, Some(Health::Healthy));
}

#[tokio::test]
async fn bad_input_is_refused_before_any_write() {
    let (tmp, t) = fixture();
    for (sym, var) in [
        ("..", "x"),
        ("a", ".."),
        ("", "x"),
        ("a/b", "c"),
        ("a", ".hidden"),
    ] {
        let bad = CompositionId::new(sym, var);
        assert!(matches!(t.get(&bad).await, Err(TargetError::Invalid(_))));
        assert!(matches!(t.delete(&bad).await, Err(TargetError::Invalid(_))));
        let d = desired(rendered_for(&bad, vec![configmap("cfg", "a")]));
        assert!(matches!(
            t.apply(&d, StateGoal::Apply).await,
            Err(TargetError::Invalid(_))
        ));
    }
    // An artifact the store does not hold.
    let mut d = with_artifact("a", &tmp.path().join("store"), b"x");
    d.artifacts.clear();
    let err = t.apply(&d, StateGoal::Stage).await.unwrap_err();
    assert!(err.to_string().contains("not in the store"), "{err}");
    assert!(!t.root().exists());
}

#[derive(Debug, Clone)]
enum Op {
    Stage(usize),
    Apply(usize),
    /// The call is killed after this many mutating steps.
    Crash(usize, bool, usize),
    DryRun(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..5usize).prop_map(Op::Stage),
        (0..5usize).prop_map(Op::Apply),
        (0..5usize, any::<bool>(), 0..20usize).prop_map(|(i, a, s)| Op::Crash(i, a, s)),
        (0..5usize).prop_map(Op::DryRun),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// After every operation `current`, if present, is a complete state equal
    /// to exactly one rendered state, the last one applied; staging (even a
    /// crashed one) never changes it; states stay bounded.
    #[test]
    fn current_is_always_one_complete_state(ops in proptest::collection::vec(op(), 1..16)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (tmp, t) = fixture();
            let ds: Vec<Desired> = (0..5)
                .map(|i| with_artifact(&i.to_string(), &tmp.path().join(format!("store-{i}")), format!("m{i}").as_bytes()))
                .collect();
            let all: Vec<&Desired> = ds.iter().collect();
            let mut applied: Option<usize> = None;
            for op in ops {
                let before = (link(&t, "current"), comp_dir(&t).join("current/manifest.yaml"));
                let before_bytes = fs::read(&before.1).ok();
                let (stage, i, outcome) = match op {
                    Op::Stage(i) => (true, i, t.apply(&ds[i], StateGoal::Stage).await),
                    Op::Apply(i) => (false, i, t.apply(&ds[i], StateGoal::Apply).await),
                    Op::DryRun(i) => (true, i, t.apply(&ds[i], StateGoal::DryRun).await),
                    Op::Crash(i, apply, steps) => {
                        let goal = if apply { StateGoal::Apply } else { StateGoal::Stage };
                        (!apply, i, t.crashing_after(steps).apply(&ds[i], goal).await)
                    }
                };
                let now = current_is_one_complete_state(&t, &all);
                if stage {
                    assert_eq!(link(&t, "current"), before.0, "staging changed current");
                    assert_eq!(fs::read(&before.1).ok(), before_bytes);
                    assert_eq!(now, applied);
                } else {
                    assert!(now == applied || now == Some(i), "{now:?} after applying {i}");
                    if outcome.is_ok() {
                        assert_eq!(now, Some(i));
                    }
                    applied = now;
                }
                if outcome.is_ok() && matches!(op, Op::Stage(_) | Op::Apply(_)) {
                    assert!(states(&t).len() <= KEEP_APPLIED + 1, "{:?}", states(&t));
                    assert!(names(&comp_dir(&t).join(".fermata/tmp")).is_empty());
                }
            }
        });
    }
}

/// Prune and orphaning change metadata only: the new applied state keeps
/// the commit it came from (it used to say `branch: ''`), its artifacts
/// (linked from the applied state, the store may have dropped them) and
/// its resources' content.
#[tokio::test]
async fn a_metadata_write_keeps_source_artifacts_and_content() {
    let (dir, t) = fixture();
    let store = dir.path().join("model.bin");
    let d = with_artifact("v1", &store, b"weights");
    t.apply(&d, StateGoal::Apply).await.unwrap();
    fs::remove_file(&store).unwrap();

    let mut keep = BTreeMap::new();
    keep.insert("owner".to_string(), "true".to_string());
    let out = t
        .write_metadata(&id(), &MetadataChange::Annotations(keep.clone()))
        .await
        .unwrap();
    assert!(out.changed);
    let orphan = MetadataChange::Orphan {
        symphony: "line-control".into(),
    };
    assert!(t.write_metadata(&id(), &orphan).await.unwrap().changed);
    assert!(!t.write_metadata(&id(), &orphan).await.unwrap().changed);

    let current = comp_dir(&t).join("current");
    let record = fs::read_to_string(current.join("composition.yaml")).unwrap();
    assert!(record.contains("branch: main"), "{record}");
    assert!(record.contains(&"3f2a".repeat(10)), "{record}");
    assert_eq!(
        fs::read(current.join("artifacts/model")).unwrap(),
        b"weights"
    );
    let applied = t.applied(&id()).await.unwrap().unwrap();
    assert_eq!(applied.annotations["owner"], "true");
    assert_eq!(applied.annotations[ORPHANED_FROM], "line-control");
    let object = &applied.resources[0].object;
    assert_eq!(object["data"]["value"], "v1");
    assert_eq!(
        object["metadata"]["annotations"][ORPHANED_FROM],
        "line-control"
    );
    // Nothing applied: nothing written.
    let other = CompositionId::new("line-control", "other");
    assert!(!t.write_metadata(&other, &orphan).await.unwrap().changed);
    assert!(!t.root().join("line-control/other").exists());
}

fn switch_of(d: &Desired) -> Switch {
    Switch {
        id: d.rendered.id.clone(),
        digest: d.rendered.digest,
        source: d.source.clone(),
    }
}

/// States staged without syncs, then switched as one batch of `n`: a
/// crash after each of `steps` steps of the batch leaves each composition
/// on its old state or its new one, complete; the same batch after a
/// restart finishes it. Returns how many runs crashed.
async fn batch_crashes(n: usize, steps: impl Iterator<Item = usize>) -> usize {
    let ids = ids(n);
    let (old, new) = (configmaps(&ids, "old"), configmaps(&ids, "new"));
    let switches: Vec<Switch> = new.iter().map(switch_of).collect();
    let current_of = |t: &DirectoryTarget, i: usize| {
        let dir = t.root().join("line-control").join(&ids[i].variation);
        let manifest = fs::read_to_string(dir.join("current/manifest.yaml")).unwrap();
        let state = [&old[i], &new[i]]
            .into_iter()
            .find(|d| d.rendered.manifest_yaml() == manifest)
            .expect("current is the old state or the new one");
        let site = DirectoryTarget::new(t.root()).site(&ids[i]).unwrap();
        site.verify(&dir.join("current"), &state.rendered.digest)
            .expect("current is complete");
        state.rendered.digest
    };
    let mut crashes = 0;
    for steps in steps {
        let (_tmp, t) = fixture();
        for (o, n) in old.iter().zip(&new) {
            run(&t, o, StateGoal::Apply).await;
            run(&t, n, StateGoal::Stage).await;
        }
        let results = t.crashing_after(steps).apply_staged(&switches).await;
        if results.iter().any(Result::is_err) {
            crashes += 1;
        }
        for (i, r) in results.iter().enumerate() {
            let now = current_of(&t, i);
            match r {
                Ok(o) => assert_eq!(o.applied, Some(now), "after {steps} steps"),
                Err(_) => assert!(now == old[i].rendered.digest || now == new[i].rendered.digest),
            }
        }
        let restarted = DirectoryTarget::new(t.root());
        for r in restarted.apply_staged(&switches).await {
            assert_eq!(r.unwrap().health, Some(Health::Healthy));
        }
        for (i, d) in new.iter().enumerate() {
            assert_eq!(current_of(&t, i), d.rendered.digest, "after {steps} steps");
            let o = restarted.verify(&ids[i]).await.unwrap();
            let digest = Some(d.rendered.digest);
            assert_eq!((o.applied, o.staged), (digest, digest));
            let dir = t.root().join("line-control").join(&ids[i].variation);
            assert!(names(&dir.join(".fermata/tmp")).is_empty());
        }
    }
    crashes
}

#[tokio::test]
async fn a_batched_switch_of_unsynced_stages_survives_a_crash_at_any_step() {
    // Two switches sync their files; twelve sync the file system. A switch
    // is two steps (the rename of `next`, the history append): every one
    // of them is crashed at.
    assert!(batch_crashes(2, 0..20).await >= 4);
    let many = SYNC_FILES_UP_TO + 4;
    assert!(batch_crashes(many, (0..many * 3).step_by(2)).await >= 10);

    // A state that is not staged is refused, alone.
    let (_tmp, t) = fixture();
    let staged = desired(rendered("staged"));
    run(&t, &staged, StateGoal::Stage).await;
    let missing = desired(rendered_for(
        &CompositionId::new("line-control", "other"),
        vec![configmap("cfg", "never staged")],
    ));
    let results = t
        .apply_staged(&[switch_of(&missing), switch_of(&staged)])
        .await;
    assert!(matches!(results[0], Err(TargetError::NotStaged { .. })));
    assert_eq!(
        results[1].as_ref().unwrap().applied,
        Some(staged.rendered.digest)
    );
}

#[tokio::test]
async fn a_large_batch_is_synced_in_the_background_until_durable_is_awaited() {
    let (_tmp, t) = fixture();
    // More than SYNC_FILES_UP_TO: switched on return, one syncfs pending.
    let large = configmaps(&ids(SYNC_FILES_UP_TO + 1), "large");
    for d in &large {
        run(&t, d, StateGoal::Stage).await;
    }
    let switches: Vec<Switch> = large.iter().map(switch_of).collect();
    for (r, d) in t.apply_staged(&switches).await.iter().zip(&large) {
        assert_eq!(r.as_ref().unwrap().applied, Some(d.rendered.digest));
    }
    assert_eq!(t.syncing().len(), 1);
    t.durable().await.unwrap();
    assert!(t.syncing().is_empty());
    // A few are synced file by file before the batch returns.
    let small = configmaps(&ids(2), "small");
    for d in &small {
        run(&t, d, StateGoal::Stage).await;
    }
    let switches: Vec<Switch> = small.iter().map(switch_of).collect();
    assert!(t.apply_staged(&switches).await.iter().all(Result::is_ok));
    assert!(t.syncing().is_empty());
}

/// After a restart, `unchanged` trusts the index only while the applied
/// files stat as they did: a same-size rewrite moves mtime and ctime.
#[tokio::test]
async fn a_restart_sees_a_rewritten_file_by_its_stat() {
    let (tmp, t) = fixture();
    let a = with_artifact("a", &tmp.path().join("store"), b"weights");
    run(&t, &a, StateGoal::Apply).await;
    t.checkpoint().await.unwrap();
    let applied = [(id(), a.rendered.digest)];
    let restarted = DirectoryTarget::new(t.root());
    assert_eq!(restarted.unchanged(&applied).await, [true]);
    let other = desired(rendered("b"));
    assert_eq!(
        restarted.unchanged(&[(id(), other.rendered.digest)]).await,
        [false],
        "another digest is not what is applied"
    );

    let manifest = comp_dir(&t).join("current/manifest.yaml");
    let text = fs::read_to_string(&manifest).unwrap();
    fs::write(&manifest, text.replace("value: a", "value: A")).unwrap();
    assert_eq!(fs::metadata(&manifest).unwrap().len() as usize, text.len());
    let restarted = DirectoryTarget::new(t.root());
    assert_eq!(restarted.unchanged(&applied).await, [false]);
    let Some(Health::Unhealthy(why)) = restarted.get(&id()).await.unwrap().health else {
        panic!("a rewritten manifest is unhealthy")
    };
    assert!(why.contains("manifest.yaml"), "{why}");
}

/// What `stat` cannot see (here: the index recorded after the rewrite, as
/// a rewrite within the file system's timestamp granularity would leave
/// it) `get` trusts, and `verify` (every resync) catches by content.
#[tokio::test]
async fn verify_catches_what_stat_cannot_see() {
    let (_tmp, t) = fixture();
    let a = desired(rendered("a"));
    run(&t, &a, StateGoal::Apply).await;
    let state = comp_dir(&t).join(state_link(&a));
    let manifest = state.join("manifest.yaml");
    let text = fs::read_to_string(&manifest).unwrap();
    fs::write(&manifest, text.replace("value: a", "value: A")).unwrap();
    let site = t.site(&id()).unwrap();
    let record = site.read_record(&state).unwrap();
    site.remember(&state, &record, None);

    assert_eq!(t.get(&id()).await.unwrap().health, Some(Health::Healthy));
    let Some(Health::Unhealthy(why)) = t.verify(&id()).await.unwrap().health else {
        panic!("verify reads the content")
    };
    assert!(why.contains("manifest.yaml"), "{why}");
    assert!(
        matches!(
            t.get(&id()).await.unwrap().health,
            Some(Health::Unhealthy(_))
        ),
        "a state found broken is not trusted again"
    );
}

#[tokio::test]
async fn read_all_reads_as_get_and_verify_do_one_by_one() {
    let (_tmp, t) = fixture();
    // Enough to be read on several threads, one with a broken manifest
    // that only a full read sees, one never written, one bad id.
    let mut ids = ids(100);
    for d in configmaps(&ids, "a") {
        run(&t, &d, StateGoal::Apply).await;
    }
    let broken = t.root().join("line-control/v7/current/manifest.yaml");
    let text = fs::read_to_string(&broken).unwrap();
    fs::write(&broken, text.replace("value: a", "value: A")).unwrap();
    let site = t.site(&ids[7]).unwrap();
    let state = fs::canonicalize(t.root().join("line-control/v7/current")).unwrap();
    let record = site.read_record(&state).unwrap();
    site.remember(&state, &record, None);
    ids.push(CompositionId::new("line-control", "never"));
    ids.push(CompositionId::new("line-control", ".bad"));

    let v7 = t.read_all(&ids[7..8], false, 1).await.remove(0).unwrap();
    assert_eq!(v7.health, Some(Health::Healthy), "trusted by stat");
    for full in [false, true] {
        let all = t.read_all(&ids, full, 1).await;
        assert_eq!(all.len(), ids.len());
        for (id, read) in ids.iter().zip(all) {
            let one = if full {
                t.verify(id).await
            } else {
                t.get(id).await
            };
            match (read, one) {
                (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}"), "{id}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{id}"),
                (a, b) => panic!("{id}: {a:?} against {b:?}"),
            }
        }
    }
    let v7 = t.read_all(&ids[7..8], true, 1).await.remove(0).unwrap();
    assert!(
        matches!(v7.health, Some(Health::Unhealthy(_))),
        "read in full"
    );
}

#[test]
fn a_few_switches_sync_their_files_many_the_file_system() {
    for (n, want) in [
        (1, Durability::Files),
        (SYNC_FILES_UP_TO, Durability::Files),
        (SYNC_FILES_UP_TO + 1, Durability::FileSystem),
        (10_000, Durability::FileSystem),
    ] {
        assert_eq!(durability(n), want, "{n} switches");
    }
}

#[tokio::test]
async fn rollback_switches_back_through_the_kept_states() {
    let (_tmp, t) = fixture();
    let (a, b, c) = (
        desired(rendered("a")),
        desired(rendered("b")),
        desired(rendered("c")),
    );
    let (da, db, dc) = (a.rendered.digest, b.rendered.digest, c.rendered.digest);
    assert_eq!(
        t.rollback(&id(), &da).await.unwrap(),
        None,
        "nothing applied"
    );
    run(&t, &a, StateGoal::Apply).await;
    assert_eq!(
        t.rollback(&id(), &da).await.unwrap(),
        None,
        "nothing before a"
    );
    assert_eq!(link(&t, "current"), Some(state_link(&a)));
    run(&t, &b, StateGoal::Apply).await;
    run(&t, &c, StateGoal::Apply).await;

    assert_eq!(t.rollback(&id(), &dc).await.unwrap(), Some(db));
    assert_eq!(link(&t, "current"), Some(state_link(&b)));
    assert_eq!(link(&t, "staged"), Some(state_link(&c)), "c stays staged");
    assert_eq!(t.get(&id()).await.unwrap().applied, Some(db));
    assert_eq!(t.get(&id()).await.unwrap().health, Some(Health::Healthy));
    assert_eq!(
        history(&t).len(),
        2,
        "c left the history: {:?}",
        history(&t)
    );
    // Again for the same failed state: nothing more (idempotent).
    assert_eq!(t.rollback(&id(), &dc).await.unwrap(), Some(db));
    assert_eq!(link(&t, "current"), Some(state_link(&b)));
    // A failed apply that never switched: what is applied stays.
    let d = desired(rendered("d"));
    assert_eq!(
        t.rollback(&id(), &d.rendered.digest).await.unwrap(),
        Some(db)
    );
    // b itself rolled back: a, the oldest kept state.
    assert_eq!(t.rollback(&id(), &db).await.unwrap(), Some(da));
    assert_eq!(link(&t, "current"), Some(state_link(&a)));
    current_is_one_complete_state(&t, &[&a, &b, &c]);
}

#[tokio::test]
async fn a_crashed_rollback_converges_on_restart() {
    let (a, b) = (desired(rendered("a")), desired(rendered("b")));
    let setup = || async {
        let (tmp, t) = fixture();
        run(&t, &a, StateGoal::Apply).await;
        run(&t, &b, StateGoal::Apply).await;
        (tmp, t)
    };
    let clean = {
        let (_tmp, t) = setup().await;
        t.rollback(&id(), &b.rendered.digest).await.unwrap();
        shape(&t)
    };
    let mut crashes = 0;
    for steps in 0..12 {
        let (_tmp, t) = setup().await;
        if t.crashing_after(steps)
            .rollback(&id(), &b.rendered.digest)
            .await
            .is_err()
        {
            crashes += 1;
        }
        current_is_one_complete_state(&t, &[&a, &b]);
        let restarted = DirectoryTarget::new(t.root());
        assert_eq!(
            restarted.rollback(&id(), &b.rendered.digest).await.unwrap(),
            Some(a.rendered.digest),
            "crashed after {steps} steps"
        );
        assert_eq!(shape(&t), clean, "crashed after {steps} steps");
    }
    assert!(crashes > 3, "only {crashes} crashes simulated");
}

#[tokio::test]
async fn a_batched_switch_creates_nothing_and_a_torn_history_line_is_skipped() {
    let (_tmp, t) = fixture();
    let (a, b, c) = (
        desired(rendered("a")),
        desired(rendered("b")),
        desired(rendered("c")),
    );
    run(&t, &a, StateGoal::Apply).await;
    run(&t, &b, StateGoal::Stage).await;
    // The stage prepared the pointer the switch renames.
    let next = comp_dir(&t).join(NEXT);
    assert_eq!(fs::read_link(&next).unwrap(), state_link(&b));
    let prepared = fs::symlink_metadata(&next).unwrap().ino();
    // A crash in the middle of an earlier append left a torn line.
    let applied = comp_dir(&t).join(".fermata/applied");
    let torn = format!("{}0123abc", fs::read_to_string(&applied).unwrap());
    fs::write(&applied, torn).unwrap();
    let before = states(&t);

    let results = t.apply_staged(&[switch_of(&b)]).await;
    assert_eq!(
        results[0].as_ref().unwrap().applied,
        Some(b.rendered.digest)
    );
    let current = comp_dir(&t).join(CURRENT);
    assert_eq!(fs::read_link(&current).unwrap(), state_link(&b));
    assert_eq!(
        fs::symlink_metadata(&current).unwrap().ino(),
        prepared,
        "current is the prepared pointer, renamed"
    );
    assert!(!next.exists());
    assert_eq!(states(&t), before, "a switch deletes nothing");
    assert!(names(&comp_dir(&t).join(".fermata/tmp")).is_empty());
    let a_hex = a.rendered.digest.to_hex();
    let b_hex = b.rendered.digest.to_hex();
    assert_eq!(history(&t), [a_hex.as_str(), "0123abc", b_hex.as_str()]);

    // The next stage trims the history and rolls back through what it kept.
    run(&t, &c, StateGoal::Stage).await;
    assert_eq!(history(&t), [a_hex.as_str(), b_hex.as_str()]);
    let back = t
        .rollback(&b.rendered.id, &b.rendered.digest)
        .await
        .unwrap();
    assert_eq!(back, Some(a.rendered.digest));
}
