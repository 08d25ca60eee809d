//! Eno's migration example end to end through `fermata run` on real commits
//! (DESIGN.md section 4): a resource moves from composition A to composition
//! B by flipping one annotation in one commit. A test-only decorator of the
//! targets inspects them after every single target write: never do A and B
//! both carry the annotation, and once applied the resource is never absent.

mod util;

use std::path::Path;
use std::sync::{Arc, Mutex};

use fermata::model::{CompositionId, TargetKind};
use fermata::reconcile::{Reconciler, Settings};
use fermata::synth::Rendered;
use fermata::target::{
    Desired, LocalTargets, MetadataChange, Observed, Outcome, StateGoal, Target, TargetError,
    Targets,
};
use fermata::window::{Clock, FixedClock};
use util::{git, TestRepo};

const OPEN: &str = "2026-11-21T02:30:00Z";
const CLOSED: &str = "2026-11-21T06:00:00Z";
const OWNER: &str = "migrate.example/owner";

/// Two synthesizers that both render the `shared` ConfigMap, each only while
/// its composition carries `owner=true`, plus one resource of their own.
fn fleet(repo: &TestRepo, a_owner: &str, b_owner: &str, a_window: bool) {
    fleet_ordered(repo, a_owner, b_owner, a_window, false)
}

/// `b_first`: the new owner is listed (and so processed) before the old one.
fn fleet_ordered(repo: &TestRepo, a_owner: &str, b_owner: &str, a_window: bool, b_first: bool) {
    repo.write("target.yaml", util::TARGET)
        .write("window.yaml", util::SAT_WINDOW);
    for s in ["old", "new"] {
        repo.write(
            &format!("synth/{s}/synth.yaml"),
            &format!("apiVersion: fermata.dev/v1alpha1\nkind: Synthesizer\nmetadata: {{name: {s}}}\nspec:\n  manifests: ./manifests\n"),
        )
        .write(
            &format!("synth/{s}/manifests/shared.yaml"),
            &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shared\n  namespace: default\n  annotations: {{fermata.dev/reconcile-when: \"{OWNER}=true\"}}\ndata: {{from: {s}}}\n"),
        )
        .write(
            &format!("synth/{s}/manifests/own.yaml"),
            &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {s}, namespace: default}}\ndata: {{x: \"1\"}}\n"),
        );
    }
    let window = if a_window { ", window: sat" } else { "" };
    let a = format!("    - {{name: a, synthesizer: {{name: old}}, annotations: {{{OWNER}: \"{a_owner}\"}}{window}}}\n");
    let b = format!(
        "    - {{name: b, synthesizer: {{name: new}}, annotations: {{{OWNER}: \"{b_owner}\"}}}}\n"
    );
    let variations = if b_first {
        format!("{b}{a}")
    } else {
        format!("{a}{b}")
    };
    repo.write(
        "symphony.yaml",
        &format!(
            "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {{name: migrate}}\nspec:\n  rollout: {{strategy: Parallel, maxUnavailable: 2}}\n  variations:\n{variations}"
        ),
    );
}

/// A test-only decorator of the real targets: after every single write to
/// any of them, `after` runs (here: an inspection of the target's files).
struct AfterEveryWrite {
    inner: LocalTargets,
    after: Arc<dyn Fn() + Send + Sync>,
}

impl Targets for AfterEveryWrite {
    fn key(&self, kind: &TargetKind) -> String {
        self.inner.key(kind)
    }

    fn get(&self, kind: &TargetKind) -> Arc<dyn Target> {
        Arc::new(Watched {
            inner: self.inner.get(kind),
            after: self.after.clone(),
        })
    }
}

struct Watched {
    inner: Arc<dyn Target>,
    after: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Watched({:?})", self.inner)
    }
}

#[async_trait::async_trait]
impl Target for Watched {
    async fn apply(&self, desired: &Desired, goal: StateGoal) -> Result<Outcome, TargetError> {
        let r = self.inner.apply(desired, goal).await;
        if goal != StateGoal::DryRun {
            (self.after)();
        }
        r
    }
    async fn get(&self, id: &CompositionId) -> Result<Observed, TargetError> {
        self.inner.get(id).await
    }
    async fn delete(&self, id: &CompositionId) -> Result<(), TargetError> {
        let r = self.inner.delete(id).await;
        (self.after)();
        r
    }
    async fn list(&self) -> Result<Vec<CompositionId>, TargetError> {
        self.inner.list().await
    }
    async fn applied(&self, id: &CompositionId) -> Result<Option<Rendered>, TargetError> {
        self.inner.applied(id).await
    }
    async fn write_metadata(
        &self,
        id: &CompositionId,
        change: &MetadataChange,
    ) -> Result<Outcome, TargetError> {
        let r = self.inner.write_metadata(id, change).await;
        (self.after)();
        r
    }
}

struct Site {
    state: tempfile::TempDir,
    /// After every target write: how many compositions carry owner=true,
    /// and how many applied states hold the shared resource.
    log: Arc<Mutex<Vec<(usize, usize)>>>,
}

/// One pass's outcome: exit code as `fermata run --once` gives it.
#[derive(Debug)]
struct Once {
    code: i32,
    #[allow(dead_code)]
    reports: Vec<fermata::reconcile::BranchReport>,
}

impl Site {
    fn new() -> Site {
        Site {
            state: tempfile::tempdir().unwrap(),
            log: Arc::default(),
        }
    }

    fn comp(&self, var: &str) -> std::path::PathBuf {
        self.state.path().join("targets/site/migrate").join(var)
    }

    /// One pass of the reconciler at `now`, in this process, its targets
    /// inspected after every single write.
    fn once(&self, repo: &TestRepo, now: &str) -> Once {
        let settings = Settings::defaults(repo.path().to_str().unwrap(), "main", self.state.path());
        let clock: Arc<dyn Clock> = Arc::new(FixedClock::new(now.parse().unwrap()));
        let root = self.state.path().join("targets/site/migrate");
        let log = self.log.clone();
        let targets = AfterEveryWrite {
            inner: LocalTargets::new(
                settings.target_root.clone(),
                settings.health_timeout,
                clock.clone(),
            ),
            after: Arc::new(move || log.lock().unwrap().push(observe(&root))),
        };
        let mut r = Reconciler::new(settings, clock)
            .unwrap()
            .with_targets(Arc::new(targets));
        let reports = tokio::runtime::Runtime::new().unwrap().block_on(r.pass());
        let failed = reports
            .iter()
            .any(|b| !b.errors.is_empty() || b.rows.iter().any(|r| r.state.as_str() == "failed"));
        Once {
            code: i32::from(failed),
            reports,
        }
    }

    /// Every observation after a write, as (carriers, holders of the resource).
    fn observations(&self) -> Vec<(usize, usize)> {
        self.log.lock().unwrap().clone()
    }

    fn manifest(&self, var: &str) -> String {
        std::fs::read_to_string(self.comp(var).join("current/manifest.yaml")).unwrap_or_default()
    }
}

/// Under `root`: compositions whose applied state carries owner=true, and
/// applied states that hold the shared resource.
fn observe(root: &Path) -> (usize, usize) {
    let mut carriers = 0;
    let mut holders = 0;
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let current = e.path().join("current");
        let comp = std::fs::read_to_string(current.join("composition.yaml")).unwrap_or_default();
        if [
            format!("{OWNER}: true"),
            format!("{OWNER}: 'true'"),
            format!("{OWNER}: \"true\""),
        ]
        .iter()
        .any(|l| comp.contains(l.as_str()))
        {
            carriers += 1;
        }
        let manifest = std::fs::read_to_string(current.join("manifest.yaml")).unwrap_or_default();
        if manifest.contains("name: shared") {
            holders += 1;
        }
    }
    (carriers, holders)
}

fn carries(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("current/composition.yaml"))
        .unwrap_or_default()
        .contains(&format!("{OWNER}: 'true'"))
}

fn assert_protocol(site: &Site) {
    let obs = site.observations();
    assert!(!obs.is_empty());
    assert!(
        obs.iter().all(|(c, _)| *c <= 1),
        "two carriers at once: {obs:?}"
    );
    let first = obs
        .iter()
        .position(|(_, p)| *p > 0)
        .expect("the resource was applied");
    assert!(
        obs[first..].iter().all(|(_, p)| *p > 0),
        "the resource went missing: {obs:?}"
    );
}

#[test]
fn eno_migration_hands_a_resource_over_without_overlap() {
    let repo = TestRepo::new();
    let site = Site::new();
    fleet(&repo, "true", "", false);
    repo.commit("a owns shared");
    let run = site.once(&repo, OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(carries(&site.comp("a")) && !carries(&site.comp("b")));
    assert!(site.manifest("a").contains("from: old"));
    assert!(
        !site.manifest("b").contains("name: shared"),
        "b leaves it alone"
    );
    let st = git(repo.path(), &["show", "fermata/status:main/migrate/b.yaml"]);
    assert!(
        st.contains(
            "name: v1/ConfigMap/default/shared\n    state: installed\n    skipped: reconcile-when"
        ),
        "{st}"
    );

    // The flip, in one commit.
    fleet(&repo, "", "true", false);
    repo.commit("hand shared over to b");
    let run = site.once(&repo, OPEN);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!carries(&site.comp("a")) && carries(&site.comp("b")));
    assert!(
        site.manifest("b").contains("from: new"),
        "b reconciles it now"
    );
    assert!(
        site.manifest("a").contains("from: old"),
        "a left it exactly as it was"
    );
    let st = git(repo.path(), &["show", "fermata/status:main/migrate/a.yaml"]);
    assert!(st.contains("skipped: reconcile-when"), "{st}");
    assert_protocol(&site);
    // Unchanged afterwards: nothing is written again.
    let before = site.observations().len();
    assert_eq!(site.once(&repo, OPEN).code, 0);
    assert_eq!(
        site.observations().len(),
        before,
        "a settled migration writes nothing"
    );
}

#[test]
fn the_prune_comes_first_whatever_the_order_of_the_variations() {
    let repo = TestRepo::new();
    let site = Site::new();
    fleet_ordered(&repo, "true", "", false, true);
    repo.commit("a owns shared; b listed first");
    assert_eq!(site.once(&repo, OPEN).code, 0);
    fleet_ordered(&repo, "", "true", false, true);
    repo.commit("flip");
    assert_eq!(site.once(&repo, OPEN).code, 0);
    assert!(!carries(&site.comp("a")) && carries(&site.comp("b")));
    assert_protocol(&site);
}

#[test]
fn the_set_waits_for_the_window_of_the_prune() {
    let repo = TestRepo::new();
    let site = Site::new();
    fleet(&repo, "true", "", true);
    repo.commit("a owns shared");
    assert_eq!(site.once(&repo, OPEN).code, 0);
    fleet(&repo, "", "true", true);
    repo.commit("flip while a's window is closed");
    let run = site.once(&repo, CLOSED);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        carries(&site.comp("a")) && !carries(&site.comp("b")),
        "nothing moved"
    );
    let st = git(repo.path(), &["show", "fermata/status:main/migrate/b.yaml"]);
    assert!(st.contains("reason: WaitingForPrune"), "{st}");
    assert!(st.contains("migrate/a must first remove migrate.example/owner in its window sat (next opening 2026-11-28T02:00:00+00:00)"), "{st}");
    assert_eq!(site.once(&repo, "2026-11-28T02:30:00Z").code, 0);
    assert!(!carries(&site.comp("a")) && carries(&site.comp("b")));
    assert_protocol(&site);
}

#[test]
fn a_failed_prune_holds_every_set_of_the_symphony() {
    let repo = TestRepo::new();
    let site = Site::new();
    fleet(&repo, "true", "", false);
    repo.commit("a owns shared");
    assert_eq!(site.once(&repo, OPEN).code, 0);
    // a's target cannot be written: its scratch folder is a file.
    let tmp = site.comp("a").join(".fermata/tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::write(&tmp, "in the way").unwrap();
    fleet(&repo, "", "true", false);
    repo.commit("flip");
    let run = site.once(&repo, OPEN);
    assert!(
        carries(&site.comp("a")) && !carries(&site.comp("b")),
        "{run:?}"
    );
    let st = git(repo.path(), &["show", "fermata/status:main/migrate/b.yaml"]);
    assert!(st.contains("reason: WaitingForPrune"), "{st}");
    assert!(
        st.contains("from migrate/a failed"),
        "status names the composition: {st}"
    );
    std::fs::remove_file(&tmp).unwrap();
    assert_eq!(site.once(&repo, OPEN).code, 0);
    assert!(!carries(&site.comp("a")) && carries(&site.comp("b")));
    assert_protocol(&site);
}
