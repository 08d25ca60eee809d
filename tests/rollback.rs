//! Rollback (issue 15 point 5): a failed apply inside the window with
//! `rollback: auto` is switched back to the previous applied state, status
//! says failed/RolledBack with the cause, and the failed state is not
//! retried in the same window; `fermata rollback` does the same by hand.

mod util;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fermata::model::{CompositionId, Digest, TargetKind};
use fermata::reconcile::{BranchReport, Reconciler, Settings};
use fermata::synth::Rendered;
use fermata::target::{
    Desired, LocalTargets, MetadataChange, Observed, Outcome, StateGoal, Target, TargetError,
    Targets,
};
use fermata::window::{Clock, FixedClock};
use util::TestRepo;

const OPEN: &str = "2026-11-21T02:30:00Z";
const LATER_OPEN: &str = "2026-11-21T02:45:00Z";

/// The real directory targets, except that an apply of a state whose
/// manifest holds `broken` fails after it switched (as a state that does
/// not start would): the applies of such states are counted.
struct Breaking {
    inner: LocalTargets,
    broken_applies: Arc<Mutex<usize>>,
}

impl Targets for Breaking {
    fn key(&self, kind: &TargetKind) -> String {
        self.inner.key(kind)
    }

    fn get(&self, kind: &TargetKind) -> Arc<dyn Target> {
        Arc::new(Broken {
            inner: self.inner.get(kind),
            applies: self.broken_applies.clone(),
        })
    }
}

#[derive(Debug)]
struct Broken {
    inner: Arc<dyn Target>,
    applies: Arc<Mutex<usize>>,
}

#[async_trait::async_trait]
impl Target for Broken {
    async fn apply(&self, desired: &Desired, goal: StateGoal) -> Result<Outcome, TargetError> {
        let out = self.inner.apply(desired, goal).await?;
        if goal == StateGoal::Apply && desired.rendered.manifest_yaml().contains("broken") {
            *self.applies.lock().unwrap() += 1;
            return Err(TargetError::Invalid(
                "injected: the new state does not start".into(),
            ));
        }
        Ok(out)
    }
    async fn get(&self, id: &CompositionId) -> Result<Observed, TargetError> {
        self.inner.get(id).await
    }
    async fn rollback(
        &self,
        id: &CompositionId,
        failed: &Digest,
    ) -> Result<Option<Digest>, TargetError> {
        self.inner.rollback(id, failed).await
    }
    async fn delete(&self, id: &CompositionId) -> Result<(), TargetError> {
        self.inner.delete(id).await
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
        self.inner.write_metadata(id, change).await
    }
}

/// The fleet: one composition `shop/app` in window `sat`, its ConfigMap's
/// tag `tag`, with `rollback` when given.
fn fleet(repo: &TestRepo, tag: &str, rollback: Option<&str>) {
    util::minimal(repo).write("window.yaml", util::SAT_WINDOW);
    let rollback = rollback.map_or(String::new(), |r| format!("  rollback: {r}\n"));
    repo.write(
        "symphony.yaml",
        &format!("apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {{name: shop}}\nspec:\n  window: sat\n{rollback}  variations:\n    - synthesizer: {{name: app}}\n      synthesisEnv: [{{name: TAG, value: {tag}}}]\n"),
    );
    repo.commit(tag);
}

struct Site {
    state: tempfile::TempDir,
    broken_applies: Arc<Mutex<usize>>,
}

impl Site {
    fn new() -> Site {
        Site {
            state: tempfile::tempdir().unwrap(),
            broken_applies: Arc::default(),
        }
    }

    fn comp(&self) -> PathBuf {
        self.state.path().join("targets/site/shop/app")
    }

    fn pass(&self, repo: &TestRepo, now: &str) -> Vec<BranchReport> {
        let settings = Settings::defaults(repo.path().to_str().unwrap(), "main", self.state.path());
        let clock: Arc<dyn Clock> = Arc::new(FixedClock::new(now.parse().unwrap()));
        let targets = Breaking {
            inner: LocalTargets::new(
                settings.target_root.clone(),
                settings.health_timeout,
                clock.clone(),
            ),
            broken_applies: self.broken_applies.clone(),
        };
        let mut r = Reconciler::new(settings, clock)
            .unwrap()
            .with_targets(Arc::new(targets));
        tokio::runtime::Runtime::new().unwrap().block_on(r.pass())
    }

    fn applied_tag(&self) -> String {
        applied_tag(&self.comp())
    }
}

fn applied_tag(comp: &Path) -> String {
    let m = std::fs::read_to_string(comp.join("current/manifest.yaml")).unwrap_or_default();
    m.lines()
        .find_map(|l| l.trim().strip_prefix("tag: "))
        .unwrap_or_default()
        .trim_matches(['"', '\''])
        .to_string()
}

/// `shop/app`'s status file on the status branch.
fn status(repo: &TestRepo) -> String {
    repo.git(&["show", "fermata/status:main/shop/app.yaml"])
}

fn row(reports: &[BranchReport]) -> (String, String) {
    let r = &reports[0].rows[0];
    (r.state.as_str().to_string(), r.note.clone())
}

#[test]
fn a_failed_apply_with_rollback_auto_is_switched_back_and_not_retried() {
    let repo = TestRepo::new();
    let site = Site::new();
    fleet(&repo, "good", Some("auto"));
    site.pass(&repo, OPEN);
    assert_eq!(site.applied_tag(), "good");

    fleet(&repo, "broken", Some("auto"));
    let reports = site.pass(&repo, OPEN);
    assert_eq!(site.applied_tag(), "good", "back on the previous state");
    let (state, note) = row(&reports);
    assert_eq!(state, "failed");
    assert!(note.contains("RolledBack"), "{note}");
    assert!(
        note.contains("injected: the new state does not start"),
        "{note}"
    );
    let st = status(&repo);
    assert!(st.contains("code: RolledBack"), "{st}");
    assert!(st.contains("ApplyFailed: "), "the cause: {st}");
    assert!(st.contains("state: failed"), "{st}");
    assert_eq!(*site.broken_applies.lock().unwrap(), 1);

    // The same window, later: not applied again.
    let reports = site.pass(&repo, LATER_OPEN);
    assert_eq!(site.applied_tag(), "good");
    assert_eq!(*site.broken_applies.lock().unwrap(), 1, "not retried");
    assert_eq!(row(&reports).0, "failed");
    assert!(row(&reports).1.contains("RolledBack"));

    // A new commit changes the desired state: applied.
    fleet(&repo, "fixed", Some("auto"));
    let reports = site.pass(&repo, LATER_OPEN);
    assert_eq!(site.applied_tag(), "fixed");
    assert_eq!(row(&reports).0, "installed", "{:?}", row(&reports));
}

#[test]
fn without_rollback_the_failed_state_stays() {
    let repo = TestRepo::new();
    let site = Site::new();
    fleet(&repo, "good", None);
    site.pass(&repo, OPEN);
    fleet(&repo, "broken", None);
    let reports = site.pass(&repo, OPEN);
    assert_eq!(
        site.applied_tag(),
        "broken",
        "as it was before rollback existed"
    );
    let (state, note) = row(&reports);
    assert_eq!(state, "failed");
    assert!(!note.contains("RolledBack"), "{note}");
    assert!(status(&repo).contains("code: ApplyFailed"));
}

#[test]
fn fermata_rollback_switches_back_by_hand_and_records_who_and_why() {
    let repo = TestRepo::new();
    let state = tempfile::tempdir().unwrap();
    let comp = state.path().join("targets/site/shop/app");
    fleet(&repo, "v1", None);
    let run = util::run_once(state.path(), &repo, OPEN);
    assert_eq!(run.code, 0, "{}", run.stderr);
    fleet(&repo, "v2", None);
    let run = util::run_once(state.path(), &repo, OPEN);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(applied_tag(&comp), "v2");

    let p = repo.path().to_str().unwrap();
    let run = util::fermata_at(
        state.path(),
        &[
            "rollback",
            "shop/app",
            "--reason",
            "v2 drops orders",
            "--who",
            "ops",
            "--repo",
            p,
            "--branch",
            "main",
        ],
        LATER_OPEN,
        &[],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(applied_tag(&comp), "v1", "switched back");
    let st = status(&repo);
    assert!(st.contains("code: RolledBack"), "{st}");
    assert!(st.contains("fermata rollback by ops"), "{st}");
    assert!(st.contains("v2 drops orders"), "{st}");

    // The next pass, window open: v2 stays rolled back.
    let run = util::run_once(state.path(), &repo, LATER_OPEN);
    assert_eq!(applied_tag(&comp), "v1", "{}", run.stderr);
    // Unless apply-now is granted for it (here outside the window).
    let run = util::fermata_at(
        state.path(),
        &[
            "apply-now",
            "shop/app",
            "--reason",
            "fixed on the line",
            "--who",
            "ops",
            "--repo",
            p,
            "--branch",
            "main",
        ],
        "2026-11-21T06:00:00Z",
        &[],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(applied_tag(&comp), "v2", "apply-now lifts the hold");
    // Or a new commit.
    fleet(&repo, "v3", None);
    util::run_once(state.path(), &repo, LATER_OPEN);
    assert_eq!(applied_tag(&comp), "v3");
}

#[test]
fn rollback_without_a_reason_or_anything_applied_is_refused() {
    let repo = TestRepo::new();
    let state = tempfile::tempdir().unwrap();
    fleet(&repo, "v1", None);
    let p = repo.path().to_str().unwrap();
    let run = util::fermata_at(
        state.path(),
        &["rollback", "shop/app", "--reason", " ", "--repo", p],
        OPEN,
        &[],
    );
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("--reason"), "{}", run.stderr);
    let run = util::fermata_at(
        state.path(),
        &[
            "rollback", "shop/app", "--reason", "why", "--who", "ops", "--repo", p,
        ],
        "2026-11-21T06:00:00Z",
        &[],
    );
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("no rollback recorded"),
        "{}",
        run.stderr
    );
}
