//! A branch's reconcile in this process, against a fake target that records
//! every call and a clock the test moves: what the pass decides and does,
//! call by call, without reading files back.

mod util;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use fermata::model::{CompositionId, TargetKind};
use fermata::reconcile::{BranchReport, Mode, Reconciler, Settings};
use fermata::synth::Rendered;
use fermata::target::{
    Component, Desired, Health, MetadataChange, Observed, Outcome, StateFlag, StateGoal, Target,
    TargetError, Targets,
};
use fermata::window::{Clock, FixedClock};
use util::TestRepo;

const OPEN: &str = "2026-11-21T02:30:00Z";
const CLOSED: &str = "2026-11-21T06:00:00Z";

/// One call the reconciler made.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Stage(String),
    Apply(String),
    DryRun(String),
    Delete(String),
    Metadata(String),
}

#[derive(Default)]
struct Held {
    staged: Option<Rendered>,
    applied: Option<Rendered>,
}

/// A fake target (no real one can be asked to fail or stay unhealthy on
/// cue): it holds staged and applied states in memory, records every
/// writing call, and fails or reports unhealthy what the test says.
#[derive(Default)]
struct FakeTarget {
    held: Mutex<BTreeMap<String, Held>>,
    calls: Mutex<Vec<Call>>,
    /// Compositions whose applies fail.
    failing: Mutex<HashSet<String>>,
    /// Compositions reported unhealthy once applied.
    unhealthy: Mutex<HashSet<String>>,
    /// Applies in progress, and what was seen of them.
    applies: Mutex<InFlight>,
    /// Stagings in progress, and what was seen of them.
    stages: Mutex<InFlight>,
    /// Set: each staging stays in flight until this many have started (or
    /// 10 s passed), so that stagings run side by side are seen so.
    stage_barrier: Mutex<Option<usize>>,
    stages_started: Mutex<usize>,
    /// Set: reading what this composition has applied makes the replica
    /// stop leading (its lease lost in the middle of a pass).
    step_down_on: Mutex<Option<(String, fermata::leader::Leadership)>>,
    /// Reads (`get`) in progress, and the most seen at once.
    reads_in_flight: Mutex<usize>,
    most_reads_in_flight: Mutex<usize>,
    /// Set: the repository whose status branch `durable` looks at.
    status_repo: Mutex<Option<std::path::PathBuf>>,
    /// The status branch's tip each time `durable` was awaited.
    durable_saw: Mutex<Vec<Option<String>>>,
}

/// Writes of one kind in progress, the most seen at once, and whether two
/// of one symphony ever overlapped.
#[derive(Default)]
struct InFlight {
    now: Vec<String>,
    most: usize,
    same_symphony: bool,
}

impl InFlight {
    fn enter(&mut self, id: &CompositionId) {
        let sym = format!("{}/", id.symphony);
        self.same_symphony |= self.now.iter().any(|x| x.starts_with(&sym));
        self.now.push(id.to_string());
        self.most = self.most.max(self.now.len());
    }

    fn leave(&mut self, id: &CompositionId) {
        let id = id.to_string();
        self.now.retain(|x| *x != id);
    }
}

impl std::fmt::Debug for FakeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeTarget")
    }
}

impl FakeTarget {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn writes(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| !matches!(c, Call::DryRun(_)))
            .collect()
    }

    fn applied_tag(&self, id: &str) -> Option<String> {
        let held = self.held.lock().unwrap();
        let r = held.get(id)?.applied.as_ref()?;
        Some(r.resources[0].object["data"]["tag"].as_str()?.to_string())
    }
}

#[async_trait::async_trait]
impl Target for FakeTarget {
    async fn apply(&self, desired: &Desired, goal: StateGoal) -> Result<Outcome, TargetError> {
        let id = desired.rendered.id.to_string();
        let writes = match goal {
            StateGoal::Apply => Some(&self.applies),
            StateGoal::Stage => Some(&self.stages),
            StateGoal::DryRun => None,
        };
        if let Some(writes) = writes {
            // Stay in flight for a few polls, so that writes the pass runs
            // side by side are seen overlapping (no timer involved).
            writes.lock().unwrap().enter(&desired.rendered.id);
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            if goal == StateGoal::Stage {
                *self.stages_started.lock().unwrap() += 1;
                let barrier = *self.stage_barrier.lock().unwrap();
                let t = std::time::Instant::now();
                while barrier.is_some_and(|n| *self.stages_started.lock().unwrap() < n)
                    && t.elapsed() < std::time::Duration::from_secs(10)
                {
                    tokio::task::yield_now().await;
                }
            }
            writes.lock().unwrap().leave(&desired.rendered.id);
        }
        self.calls.lock().unwrap().push(match goal {
            StateGoal::Stage => Call::Stage(id.clone()),
            StateGoal::Apply => Call::Apply(id.clone()),
            StateGoal::DryRun => Call::DryRun(id.clone()),
        });
        let mut held = self.held.lock().unwrap();
        let h = held.entry(id.clone()).or_default();
        match goal {
            StateGoal::DryRun => Ok(Outcome {
                changed: true,
                diff: Some(format!("+ {id}")),
                staging: None,
            }),
            StateGoal::Stage => {
                h.staged = Some((*desired.rendered).clone());
                Ok(Outcome {
                    changed: true,
                    diff: None,
                    staging: None,
                })
            }
            StateGoal::Apply => {
                if self.failing.lock().unwrap().contains(&id) {
                    return Err(TargetError::Invalid(format!("{id}: refused by the test")));
                }
                h.applied = Some((*desired.rendered).clone());
                h.staged = h.applied.clone();
                Ok(Outcome {
                    changed: true,
                    diff: None,
                    staging: None,
                })
            }
        }
    }

    async fn durable(&self) -> Result<(), TargetError> {
        if let Some(repo) = self.status_repo.lock().unwrap().as_ref() {
            let tip = git2::Repository::open(repo)
                .unwrap()
                .refname_to_id("refs/heads/fermata/status")
                .ok()
                .map(|id| id.to_string());
            self.durable_saw.lock().unwrap().push(tip);
        }
        Ok(())
    }

    async fn get(&self, id: &CompositionId) -> Result<Observed, TargetError> {
        {
            let mut n = self.reads_in_flight.lock().unwrap();
            *n += 1;
            let mut most = self.most_reads_in_flight.lock().unwrap();
            *most = (*most).max(*n);
        }
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        *self.reads_in_flight.lock().unwrap() -= 1;
        let held = self.held.lock().unwrap();
        let Some(h) = held.get(&id.to_string()) else {
            return Ok(Observed::default());
        };
        let applied = h.applied.as_ref();
        let unhealthy = self.unhealthy.lock().unwrap().contains(&id.to_string());
        Ok(Observed {
            applied: applied.map(|r| r.digest),
            staged: h.staged.as_ref().map(|r| r.digest),
            components: applied
                .map(|r| {
                    r.resources
                        .iter()
                        .map(|res| Component {
                            name: res.key.to_string(),
                            flag: StateFlag::Applied,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            health: Some(match (applied, unhealthy) {
                (None, _) => Health::Unknown,
                (Some(_), true) => Health::Unhealthy("not ready (the test says)".into()),
                (Some(_), false) => Health::Healthy,
            }),
            annotations: applied.map(|r| r.annotations.clone()).unwrap_or_default(),
            labels: applied.map(|r| r.labels.clone()).unwrap_or_default(),
            source: None,
        })
    }

    async fn delete(&self, id: &CompositionId) -> Result<(), TargetError> {
        self.calls
            .lock()
            .unwrap()
            .push(Call::Delete(id.to_string()));
        self.held.lock().unwrap().remove(&id.to_string());
        Ok(())
    }

    async fn list(&self) -> Result<Vec<CompositionId>, TargetError> {
        let held = self.held.lock().unwrap();
        Ok(held.keys().filter_map(|k| k.parse().ok()).collect())
    }

    async fn applied(&self, id: &CompositionId) -> Result<Option<Rendered>, TargetError> {
        if let Some((on, leadership)) = &*self.step_down_on.lock().unwrap() {
            if *on == id.to_string() {
                leadership.step_down();
            }
        }
        let held = self.held.lock().unwrap();
        Ok(held.get(&id.to_string()).and_then(|h| h.applied.clone()))
    }

    async fn write_metadata(
        &self,
        id: &CompositionId,
        change: &MetadataChange,
    ) -> Result<Outcome, TargetError> {
        let id = id.to_string();
        self.calls.lock().unwrap().push(Call::Metadata(id.clone()));
        if self.failing.lock().unwrap().contains(&id) {
            return Err(TargetError::Invalid(format!("{id}: refused by the test")));
        }
        let mut held = self.held.lock().unwrap();
        let Some(h) = held.get_mut(&id).filter(|h| h.applied.is_some()) else {
            return Ok(Outcome::default());
        };
        let edited = change
            .applied_to(h.applied.clone().unwrap())
            .map_err(TargetError::Invalid)?;
        h.applied = Some(edited);
        Ok(Outcome {
            changed: true,
            diff: None,
            staging: None,
        })
    }
}

/// Every Target definition resolves to the one fake.
struct FakeTargets(Arc<FakeTarget>);

impl Targets for FakeTargets {
    fn key(&self, kind: &TargetKind) -> String {
        format!("{kind:?}")
    }

    fn get(&self, _: &TargetKind) -> Arc<dyn Target> {
        self.0.clone()
    }
}

/// A reconciler of `repo`'s main branch on the fake, at the test's clock.
struct Harness {
    state: tempfile::TempDir,
    target: Arc<FakeTarget>,
    clock: Arc<FixedClock>,
    rt: tokio::runtime::Runtime,
}

impl Harness {
    fn new(now: &str) -> Harness {
        Harness {
            state: tempfile::tempdir().unwrap(),
            target: Arc::default(),
            clock: Arc::new(FixedClock::new(now.parse().unwrap())),
            rt: tokio::runtime::Runtime::new().unwrap(),
        }
    }

    fn reconciler(&self, repo: &TestRepo) -> Reconciler {
        let settings = Settings::defaults(repo.path().to_str().unwrap(), "main", self.state.path());
        let clock: Arc<dyn Clock> = self.clock.clone();
        Reconciler::new(settings, clock)
            .unwrap()
            .with_targets(Arc::new(FakeTargets(self.target.clone())))
    }

    fn pass(&self, r: &mut Reconciler) -> BranchReport {
        self.rt.block_on(r.pass()).remove(0)
    }

    fn set(&self, now: &str) {
        self.clock.set(now.parse().unwrap());
    }
}

fn row<'a>(b: &'a BranchReport, id: &str) -> &'a fermata::reconcile::Row {
    b.rows
        .iter()
        .find(|r| r.id.to_string() == id)
        .unwrap_or_else(|| panic!("no row {id}: {b:?}"))
}

/// `shop` with `variations` (YAML list items) and `extra` spec lines.
fn shop(repo: &TestRepo, extra: &str, variations: &[&str]) {
    let vars: String = variations.iter().map(|v| format!("    - {v}\n")).collect();
    util::minimal(repo)
        .write("window.yaml", util::SAT_WINDOW)
        .write(
            "symphony.yaml",
            &format!("apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {{name: shop}}\nspec:\n{extra}  variations:\n{vars}"),
        );
}

fn var(name: &str) -> String {
    format!("{{name: {name}, synthesizer: {{name: app}}, synthesisEnv: [{{name: TAG, value: {name}}}]}}")
}

#[test]
fn staging_never_applies_and_a_closed_window_holds_until_it_opens() {
    let repo = TestRepo::new();
    shop(
        &repo,
        "  window: sat\n  rollout: {strategy: Parallel, maxUnavailable: 5}\n",
        &[&var("a"), &var("b")],
    );
    repo.commit("a and b");
    let h = Harness::new(CLOSED);
    let mut r = h.reconciler(&repo);
    let b = h.pass(&mut r);
    // Staged side by side: in either order.
    let mut writes = h.target.writes();
    writes.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(
        writes,
        [Call::Stage("shop/a".into()), Call::Stage("shop/b".into())],
        "staged, nothing applied"
    );
    assert_eq!(row(&b, "shop/a").skipped.as_deref(), Some("WindowClosed"));
    assert!(b.next_window.is_some(), "the loop wakes at the opening");
    // Still closed: a second pass writes nothing at all (invariant 5).
    h.pass(&mut r);
    assert_eq!(h.target.writes().len(), 2);
    // Open: applied, without staging again.
    h.set(OPEN);
    let b = h.pass(&mut r);
    assert_eq!(
        h.target.writes()[2..],
        [Call::Apply("shop/a".into()), Call::Apply("shop/b".into())]
    );
    assert_eq!(row(&b, "shop/b").state.as_str(), "installed");
    assert_eq!(h.target.applied_tag("shop/a").as_deref(), Some("a"));
}

#[test]
fn applies_of_different_symphonies_overlap_and_one_symphony_keeps_its_order() {
    for (concurrency, overlapping) in [(1, false), (16, true)] {
        let (h, _) = pass_with(&three_symphonies(""), OPEN, concurrency, |_| {});
        let applies = h.target.applies.lock().unwrap();
        assert_eq!(
            applies.most > 1,
            overlapping,
            "--apply-concurrency {concurrency}: {} at once",
            applies.most
        );
        assert!(
            !applies.same_symphony,
            "one symphony's compositions are never applied at once"
        );
        drop(applies);
        let applies: Vec<Call> = h
            .target
            .writes()
            .into_iter()
            .filter(|c| matches!(c, Call::Apply(_)))
            .collect();
        assert_eq!(applies.len(), 6);
        for sym in ["shop", "line", "yard"] {
            let at = |v: &str| {
                applies
                    .iter()
                    .position(|c| *c == Call::Apply(format!("{sym}/{v}")))
            };
            assert!(
                at("a") < at("b"),
                "{sym}: list order (OrderedReady): {applies:?}"
            );
        }
    }
}

#[test]
fn stagings_run_ahead_of_the_ordered_applies_up_to_the_apply_concurrency() {
    // Staging changes nothing that runs: a symphony's variations are staged
    // side by side, while its applies keep their order (the test above).
    for (concurrency, overlapping) in [(1, false), (16, true)] {
        let repo = three_symphonies("  window: sat\n");
        let (h, b) = pass_with(&repo, CLOSED, concurrency, |target| {
            if overlapping {
                *target.stage_barrier.lock().unwrap() = Some(6);
            }
        });
        for row in &b.rows {
            assert_eq!(row.state.as_str(), "staged", "{row:?}");
        }
        let stages = h.target.stages.lock().unwrap();
        assert_eq!(
            stages.same_symphony, overlapping,
            "--apply-concurrency {concurrency}: one symphony's stagings overlap"
        );
        let most = if overlapping { 6 } else { 1 };
        assert_eq!(stages.most, most, "stagings at once");
        assert_eq!(
            h.target
                .writes()
                .iter()
                .filter(|c| matches!(c, Call::Stage(_)))
                .count(),
            6
        );
    }
}

#[test]
fn a_staging_started_ahead_writes_nothing_once_the_lease_is_lost() {
    // Every rendering reads what its composition has applied (the manifest
    // is left alone by `reconcile-when` unless applied); reading line/b's
    // loses the lease, after line/b's job started and before it stages.
    let repo = three_symphonies("  window: sat\n");
    repo.write(
        "synth/manifests/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n  namespace: default\n  annotations: {fermata.dev/reconcile-when: \"owner=true\"}\ndata: {tag: \"${TAG}\"}\n",
    );
    repo.commit("left alone unless applied");
    let h = Harness::new(CLOSED);
    let mut r = h.reconciler(&repo);
    r.ctx.settings.apply_concurrency = 16;
    *h.target.step_down_on.lock().unwrap() = Some(("line/b".into(), r.leadership.clone()));
    let b = h.pass(&mut r);
    assert!(
        !h.target.writes().contains(&Call::Stage("line/b".into())),
        "{:?}",
        h.target.writes()
    );
    let row = row(&b, "line/b");
    assert_eq!(row.state.as_str(), "failed", "{row:?}");
    assert!(row.note.starts_with("NotLeader"), "{row:?}");
}

/// One pass over `repo` at `now` with `--apply-concurrency concurrency`,
/// once `arrange` has set up the fake target; it had no errors.
fn pass_with(
    repo: &TestRepo,
    now: &str,
    concurrency: usize,
    arrange: impl FnOnce(&FakeTarget),
) -> (Harness, BranchReport) {
    let h = Harness::new(now);
    arrange(&h.target);
    let mut r = h.reconciler(repo);
    r.ctx.settings.apply_concurrency = concurrency;
    let b = h.pass(&mut r);
    assert!(b.errors.is_empty(), "{b:?}");
    (h, b)
}

/// Three symphonies of two variations each, committed; `spec`: more of
/// each one's spec (indented lines).
fn three_symphonies(spec: &str) -> TestRepo {
    let repo = TestRepo::new();
    util::minimal(&repo).write("window.yaml", util::SAT_WINDOW);
    for sym in ["shop", "line", "yard"] {
        repo.write(
            &format!("{sym}.yaml"),
            &format!(
                "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {{name: {sym}}}\nspec:\n{spec}  variations:\n    - {}\n    - {}\n",
                var("a"),
                var("b")
            ),
        );
    }
    repo.remove("symphony.yaml");
    repo.commit("three symphonies of two");
    repo
}

#[test]
fn status_says_applied_only_once_the_target_says_its_writes_are_durable() {
    // A target may return from its switches before they are durable (the
    // directory target syncs in the background while status is prepared).
    let repo = three_symphonies("");
    let (h, b) = pass_with(&repo, CLOSED, 16, |target| {
        *target.status_repo.lock().unwrap() = Some(repo.path().to_path_buf());
    });
    for row in &b.rows {
        assert_eq!(row.state.as_str(), "installed", "{row:?}");
    }
    let saw = h.target.durable_saw.lock().unwrap().clone();
    assert_eq!(
        saw.first(),
        Some(&None),
        "the first status commit waited for durable: {saw:?}"
    );
    let tip = git2::Repository::open(repo.path())
        .unwrap()
        .refname_to_id("refs/heads/fermata/status")
        .expect("status written");
    assert_eq!(b.status_commit, Some(tip));
}

#[test]
fn a_pass_reads_its_targets_side_by_side_up_to_the_apply_concurrency() {
    for (concurrency, overlapping) in [(1, false), (16, true)] {
        let (h, b) = pass_with(&three_symphonies(""), CLOSED, concurrency, |_| {});
        assert_eq!(b.rows.len(), 6);
        let most = *h.target.most_reads_in_flight.lock().unwrap();
        assert!(most >= 1, "every target was read");
        assert_eq!(
            most > 1,
            overlapping,
            "--apply-concurrency {concurrency}: {most} reads at once"
        );
        assert!(most <= concurrency, "{most} reads at once");
    }
}

/// A source that counts the snapshots taken of it (a pass loads one, the
/// Sites scan reads one per new commit), and otherwise is the git source.
struct CountingSource {
    inner: Arc<dyn fermata::source::Source>,
    snapshots: Mutex<usize>,
}

#[async_trait::async_trait]
impl fermata::source::Source for CountingSource {
    fn url(&self) -> &str {
        self.inner.url()
    }
    async fn fetch(&self) -> Result<(), fermata::source::SourceError> {
        self.inner.fetch().await
    }
    async fn resolve(
        &self,
        rev: &str,
    ) -> Result<fermata::source::Revision, fermata::source::SourceError> {
        self.inner.resolve(rev).await
    }
    async fn snapshot(
        &self,
        rev: fermata::source::Revision,
    ) -> Result<fermata::source::Snapshot, fermata::source::SourceError> {
        *self.snapshots.lock().unwrap() += 1;
        self.inner.snapshot(rev).await
    }
    async fn verify(
        &self,
        rev: fermata::source::Revision,
        policy: &fermata::source::SignaturePolicy,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<fermata::source::Signer, fermata::source::UntrustedCommit> {
        self.inner.verify(rev, policy, now).await
    }
    fn git_dir(&self) -> &std::path::Path {
        self.inner.git_dir()
    }
    fn remote(&self) -> Option<&str> {
        self.inner.remote()
    }
    async fn default_branch(&self) -> Option<String> {
        self.inner.default_branch().await
    }
    async fn is_descendant(
        &self,
        new: fermata::source::Revision,
        old: fermata::source::Revision,
    ) -> bool {
        self.inner.is_descendant(new, old).await
    }
    async fn fetch_ref(
        &self,
        refname: &str,
        sha: &str,
    ) -> Result<fermata::source::Revision, fermata::source::SourceError> {
        self.inner.fetch_ref(refname, sha).await
    }
    async fn branches(
        &self,
    ) -> Result<Vec<(String, fermata::source::Revision)>, fermata::source::SourceError> {
        self.inner.branches().await
    }
}

#[test]
fn the_window_opening_reuses_the_commit_staging_parsed_and_a_new_commit_is_parsed() {
    let repo = TestRepo::new();
    shop(&repo, "  window: sat\n", &[&var("a"), &var("b")]);
    repo.commit("a and b");
    let h = Harness::new(CLOSED);
    let mut r = h.reconciler(&repo);
    let source = Arc::new(CountingSource {
        inner: r.ctx.source.clone(),
        snapshots: Mutex::new(0),
    });
    r.ctx.source = source.clone();
    // Snapshots taken: the load's, and the Sites scan's (once per commit).
    let taken = || *source.snapshots.lock().unwrap();
    let b = h.pass(&mut r);
    assert!(b.errors.is_empty(), "{b:?}");
    let first = taken();
    assert!(first >= 1);
    assert_eq!(row(&b, "shop/a").state.as_str(), "staged");
    // The window opens on the same commit: applied from what staging parsed.
    h.set(OPEN);
    let b = h.pass(&mut r);
    assert_eq!(taken(), first, "the same commit read again");
    assert_eq!(row(&b, "shop/b").state.as_str(), "installed");
    assert_eq!(h.target.applied_tag("shop/b").as_deref(), Some("b"));
    // A new commit is parsed, and what it says is applied.
    shop(&repo, "  window: sat\n", &[&var("a"), &var("c")]);
    repo.commit("c instead of b");
    let b = h.pass(&mut r);
    assert!(b.errors.is_empty(), "{b:?}");
    assert!(taken() > first);
    assert_eq!(h.target.applied_tag("shop/c").as_deref(), Some("c"));
}

#[test]
fn ordered_ready_applies_the_next_only_when_the_previous_is_ready() {
    let repo = TestRepo::new();
    shop(&repo, "", &[&var("a"), &var("b"), &var("c")]);
    repo.commit("a, b, c");
    let h = Harness::new(OPEN);
    h.target.unhealthy.lock().unwrap().insert("shop/a".into());
    let mut r = h.reconciler(&repo);
    let b = h.pass(&mut r);
    let applies: Vec<Call> = h
        .target
        .writes()
        .into_iter()
        .filter(|c| matches!(c, Call::Apply(_)))
        .collect();
    assert_eq!(
        applies,
        [Call::Apply("shop/a".into())],
        "b and c wait for a"
    );
    assert_eq!(
        row(&b, "shop/b").skipped.as_deref(),
        Some("WaitingForReady")
    );
    assert_eq!(
        row(&b, "shop/c").skipped.as_deref(),
        Some("WaitingForReady")
    );
    // a turns healthy: b, then c, in order.
    h.target.unhealthy.lock().unwrap().clear();
    r.unsettle();
    h.pass(&mut r);
    let applies: Vec<Call> = h
        .target
        .writes()
        .into_iter()
        .filter(|c| matches!(c, Call::Apply(_)))
        .collect();
    assert_eq!(
        applies,
        [
            Call::Apply("shop/a".into()),
            Call::Apply("shop/b".into()),
            Call::Apply("shop/c".into())
        ]
    );
}

#[test]
fn a_failing_prune_holds_phase_two_for_the_whole_symphony() {
    let repo = TestRepo::new();
    let owned = |a: &str, b: &str| {
        [
            format!("{{name: a, synthesizer: {{name: app}}, synthesisEnv: [{{name: TAG, value: a}}], annotations: {{owner: '{a}'}}}}"),
            format!("{{name: b, synthesizer: {{name: app}}, synthesisEnv: [{{name: TAG, value: b}}], annotations: {{owner: '{b}'}}}}"),
        ]
    };
    let [a, b] = owned("true", "");
    shop(
        &repo,
        "  rollout: {strategy: Parallel, maxUnavailable: 5}\n",
        &[&a, &b],
    );
    repo.commit("a owns");
    let h = Harness::new(OPEN);
    let mut r = h.reconciler(&repo);
    h.pass(&mut r);
    let before = h.target.writes().len();
    // Hand it over to b, while a's target refuses every write.
    let [a, b] = owned("", "true");
    shop(
        &repo,
        "  rollout: {strategy: Parallel, maxUnavailable: 5}\n",
        &[&a, &b],
    );
    repo.commit("b owns");
    h.target.failing.lock().unwrap().insert("shop/a".into());
    let report = h.pass(&mut r);
    let after: Vec<Call> = h.target.writes()[before..].to_vec();
    assert!(
        !after.contains(&Call::Apply("shop/b".into())),
        "b must not carry the key while a may: {after:?}"
    );
    assert_eq!(
        row(&report, "shop/b").skipped.as_deref(),
        Some("WaitingForPrune")
    );
    // a's target takes writes again: the prune, then b's set.
    h.target.failing.lock().unwrap().clear();
    r.unsettle();
    h.pass(&mut r);
    let held = h.target.held.lock().unwrap();
    let carried = |id: &str| {
        held[id]
            .applied
            .as_ref()
            .is_some_and(|r| r.annotations.get("owner").is_some_and(|v| v == "true"))
    };
    assert!(!carried("shop/a") && carried("shop/b"));
}

#[test]
fn a_dry_run_writes_nothing_anywhere() {
    let repo = TestRepo::new();
    shop(&repo, "  window: sat\n", &[&var("a")]);
    repo.commit("a");
    let h = Harness::new(OPEN);
    let mut r = h.reconciler(&repo);
    r.set_mode(Mode::Plan { revision: None });
    let b = h.pass(&mut r);
    assert_eq!(h.target.calls(), [Call::DryRun("shop/a".into())]);
    assert!(h.target.writes().is_empty());
    assert_eq!(row(&b, "shop/a").state.as_str(), "pending");
    assert!(
        b.plans.contains_key(&"shop/a".parse().unwrap()),
        "the plan has its diff"
    );
    assert!(b.status_commit.is_none());
    assert!(!h.state.path().join("state.json").exists());
    assert!(repo.git(&["branch", "--list", "fermata/status"]).is_empty());
}
