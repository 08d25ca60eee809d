//! One reconcile pass over one branch: load, render what changed, stage,
//! apply what the plan allows, report. Ordered like Flux's reconcilers: each
//! step only runs on what the previous one produced, and a failure stays
//! with the composition it belongs to.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};

use super::annotations;
use super::plan::{self, Apply, Facts, Reason};
use super::state::{Persisted, RenderRecord};
use super::Settings;
use crate::model::types::Strategy;
use crate::model::{self, Composition, CompositionId, Digest, Fleet, SynthKind, TargetKind};
use crate::source::{
    Entry, GitSource, Revision, SignaturePolicy, Signer, Snapshot, Source, SourceError,
    UntrustedCommit,
};
use crate::stage::ArtifactStore;
use crate::status::{
    summarize, ComponentStatus, Condition, DeploymentStatus, Override, State, StatusBody,
    StatusErrorInfo, StatusMetadata, StatusRepo, StatusUpdate, WindowStatus,
};
use crate::synth::{self, Rendered};
use crate::target::{
    Desired, DirectoryTarget, Health, KubernetesTarget, Observed, SourceRef, StateGoal, Target,
};
use crate::window::Clock;

/// Everything one fermata instance needs across passes.
pub struct Reconciler {
    pub settings: Settings,
    pub source: Arc<GitSource>,
    pub clock: Arc<dyn Clock>,
    store: ArtifactStore,
    status: StatusRepo,
    pub persisted: Persisted,
    /// What `state.json` holds now, to write it only when it changes.
    saved: Option<Digest>,
    /// By directory root, or by Kubernetes spec (`kubernetes:` and its JSON).
    targets: HashMap<String, Arc<dyn Target>>,
    /// The last fetch error, shown in every status until a fetch succeeds.
    pub fetch_error: Option<String>,
    /// Branches whose last pass left nothing to do, with that revision: an
    /// unchanged commit then costs no load, no render, no target read.
    settled: HashMap<String, (Revision, std::time::Instant)>,
    /// What each composition's target held after the last pass, while it was
    /// Ready: an unchanged one is not read again until the next resync.
    observed: HashMap<String, Observed>,
    /// When each branch last read every target in full.
    resynced: HashMap<String, std::time::Instant>,
    /// `FERMATA_TEST_WRITE_HOOK`: a command run after every target write.
    write_hook: Option<String>,
    /// Plan only (`fermata plan`): decide everything, write nothing, anywhere.
    pub dry_run: bool,
    /// Reconcile this revision instead of the branch head (`plan --rev`).
    pub revision: Option<String>,
    /// Whether `command:` synthesizers may run. Off for commits that are
    /// not on a watched branch (pull request heads) unless
    /// `--trust-pr-commands`: a plan must not run code nobody merged.
    pub allow_commands: bool,
    /// Commit statuses, pull request plans and plan notes (`None`: off).
    pub pulls: Option<Arc<super::pulls::PullSettings>>,
    /// Whether this replica may write (`--leader-elect`); always, without election.
    pub leadership: crate::leader::Leadership,
}

/// What a pass did on one branch.
#[derive(Debug, Clone, Default)]
pub struct BranchReport {
    pub branch: String,
    pub revision: Option<Revision>,
    /// Per composition: id, state, desired digest, and why it waits or failed.
    pub rows: Vec<Row>,
    /// Load errors of objects that are not compositions.
    pub errors: Vec<String>,
    pub status_commit: Option<git2::Oid>,
    /// The earliest opening of a window some staged composition waits for.
    pub next_window: Option<DateTime<Utc>>,
    /// Per symphony: Ready non-optional compositions, and how many there are.
    pub symphonies: Vec<(String, usize, usize)>,
    /// The windows of this pass's compositions, and whether each was open
    /// at the pass's instant (for `fermata_window_open`).
    pub windows: BTreeMap<String, bool>,
    /// Nothing was done: the revision was reconciled already.
    pub unchanged: bool,
    /// The windows of this pass's compositions in full (for plans).
    pub window_info: BTreeMap<String, WindowInfo>,
    /// Plans only: per composition with an action, the target's diff and
    /// the artifacts its state needs.
    pub plans: BTreeMap<CompositionId, PlanDetail>,
}

/// A maintenance window as a plan shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowInfo {
    /// IANA zone name, e.g. `Europe/Berlin`.
    pub zone: String,
    pub open: bool,
    pub next_open: Option<DateTime<Utc>>,
}

/// What a plan (a dry run) found out about one composition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanDetail {
    /// The target's diff of what it holds against the desired state.
    pub diff: Option<String>,
    pub artifacts: Vec<PlannedArtifact>,
    /// Why it failed, as `file:line: message` where there is a place.
    pub error: Option<String>,
    /// The status error code of that failure (`RenderFailed`, `CommandNotRun`…).
    pub error_code: Option<String>,
}

impl PlanDetail {
    /// Whether the plan held back a `command:` synthesizer (the trust
    /// policy working, not a broken change).
    pub fn command_not_run(&self) -> bool {
        self.error_code.as_deref() == Some(COMMAND_NOT_RUN)
    }
}

/// The error code of a `command:` synthesizer not run for an untrusted head.
pub const COMMAND_NOT_RUN: &str = "CommandNotRun";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedArtifact {
    pub name: String,
    pub url: String,
    pub size: Option<u64>,
    /// Already in the artifact store: nothing to download.
    pub stored: bool,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub id: CompositionId,
    pub state: State,
    pub digest: Option<Digest>,
    pub window: Option<String>,
    pub note: String,
    /// The action this pass took, or would take, about it.
    pub action: Option<ActionKind>,
    /// Why that action did not run (yet).
    pub skipped: Option<String>,
}

/// Datum's instance-control actions: what a pass does to a composition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ActionKind {
    Create,
    Update,
    Delete,
    /// Applied but not Ready: the rollout waits for it.
    Wait,
}

/// The work on one composition during a pass.
struct Work {
    comp: Composition,
    target: Option<Arc<dyn Target>>,
    record_key: String,
    digest: Option<Digest>,
    components: Vec<String>,
    rendered: Option<Arc<Rendered>>,
    /// The commit that last changed this composition's desired state.
    since: Option<String>,
    observed: Observed,
    error: Option<StatusErrorInfo>,
    waiting: Option<Reason>,
    /// Why it waits, in words, where the reason alone does not say it.
    waiting_message: String,
    overridden: Option<Override>,
    /// Cache key of everything the desired state depends on (set when it
    /// must be rendered, to record the result under it).
    key: Option<(String, String)>,
    /// Components left alone by `reconcile-when`.
    skipped: Vec<String>,
    /// Gates lifted by `fermata ungate` (no longer in `comp.scheduling_gates`).
    ungated: Vec<crate::status::Ungate>,
    /// What the plan does about it this pass (Datum's actions).
    action: Option<ActionKind>,
    /// Plans only: the target's diff and the artifacts needed.
    plan: Option<PlanDetail>,
}

impl Work {
    /// A composition known only from what was last rendered for it: one whose
    /// symphony failed to load, or that was removed from the branch.
    fn from_record(id: CompositionId, key: String, rec: &RenderRecord) -> Work {
        Work {
            comp: Composition {
                id,
                origin: model::Origin {
                    file: String::new(),
                    line: 0,
                },
                synthesizer: String::new(),
                env: BTreeMap::new(),
                bindings: BTreeMap::new(),
                annotations: BTreeMap::new(),
                labels: BTreeMap::new(),
                target: rec.target.clone().unwrap_or_default(),
                window: rec.window.clone(),
                scheduling_gates: vec![],
                depends_on: vec![],
                optional: false,
            },
            target: None,
            record_key: key,
            digest: Some(rec.digest),
            components: rec.components.clone(),
            rendered: None,
            since: rec.commit.clone(),
            observed: Observed::default(),
            error: None,
            waiting: None,
            waiting_message: String::new(),
            overridden: None,
            key: None,
            skipped: rec.skipped.clone(),
            ungated: Vec::new(),
            action: None,
            plan: None,
        }
    }

    fn ready(&self) -> bool {
        self.error.is_none()
            && self.digest.is_some()
            && self.observed.applied == self.digest
            && !matches!(self.observed.health, Some(Health::Unhealthy(_)))
    }

    fn fail(&mut self, code: &str, source: impl Into<String>, message: impl Into<String>) {
        self.error = Some(StatusErrorInfo {
            code: code.to_string(),
            source: source.into(),
            message: message.into(),
        });
    }
}

/// Targets are read in full at least this often, even on a settled branch,
/// so drift on a target (a deleted file, a changed symlink) does not stay.
/// Measured on the monotonic clock: a fixed `--now` must not stop it.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(600);

impl Reconciler {
    pub fn new(settings: Settings, clock: Arc<dyn Clock>) -> anyhow::Result<Reconciler> {
        let source = Arc::new(GitSource::open(&settings.repo, &settings.state_dir)?);
        let store = ArtifactStore::new(&settings.state_dir)?;
        let status = StatusRepo::new(
            source.git_dir().to_path_buf(),
            source.remote().map(str::to_string),
            settings.status_branch.clone(),
            settings.site.clone(),
        );
        let persisted = Persisted::load(&settings.state_dir);
        Ok(Reconciler {
            settings,
            source,
            clock,
            store,
            status,
            saved: persisted.serialized().ok().map(|(_, d)| d),
            persisted,
            targets: HashMap::new(),
            fetch_error: None,
            settled: HashMap::new(),
            observed: HashMap::new(),
            resynced: HashMap::new(),
            write_hook: std::env::var("FERMATA_TEST_WRITE_HOOK")
                .ok()
                .filter(|h| !h.is_empty()),
            dry_run: false,
            revision: None,
            allow_commands: true,
            pulls: None,
            leadership: crate::leader::Leadership::always(),
        })
    }

    /// Fetches the remote; on failure the last good revisions stay in use.
    pub async fn fetch(&mut self) -> Result<(), SourceError> {
        let source = self.source.clone();
        let result = tokio::task::spawn_blocking(move || source.fetch())
            .await
            .unwrap_or_else(|e| Err(join_error(e)));
        match &result {
            Ok(()) => {
                if self.fetch_error.take().is_some() {
                    // Statuses carried the error: they must be rewritten.
                    self.settled.clear();
                }
            }
            Err(e) => {
                let msg = format!(
                    "{:#}",
                    anyhow::Error::from(SourceErrorWrapper(e.to_string()))
                );
                if self.fetch_error.as_deref() != Some(msg.as_str()) {
                    self.settled.clear();
                }
                self.fetch_error = Some(msg);
            }
        }
        result
    }

    /// A reconciler that plans `revision` (a pull request or branch head)
    /// against what this one's targets hold: a dry run sharing the source,
    /// store and targets, with a copy of the render cache, writing nothing.
    pub fn planner(&self, revision: &str, allow_commands: bool) -> Reconciler {
        Reconciler {
            settings: self.settings.clone(),
            source: self.source.clone(),
            clock: self.clock.clone(),
            store: self.store.clone(),
            status: self.status.clone(),
            persisted: self.persisted.clone(),
            saved: None,
            targets: self.targets.clone(),
            fetch_error: None,
            settled: HashMap::new(),
            observed: HashMap::new(),
            resynced: HashMap::new(),
            write_hook: None,
            dry_run: true,
            revision: Some(revision.to_string()),
            allow_commands,
            pulls: None,
            leadership: crate::leader::Leadership::always(),
        }
    }

    /// One dry-run pass of `base` (at `revision`): what a plan shows.
    pub async fn plan_branch(&mut self, base: &str) -> BranchReport {
        self.pass_branch(base).await
    }

    /// The status branch writer (plan notes share its push logic).
    pub(super) fn status_repo(&self) -> StatusRepo {
        self.status.clone()
    }

    /// Bytes of artifacts downloaded into the store by this process.
    pub fn artifact_bytes(&self) -> u64 {
        self.store.bytes_written()
    }

    /// Forgets that branches are settled: the next pass is a full one.
    pub fn unsettle(&mut self) {
        self.settled.clear();
    }

    /// One pass over every branch.
    pub async fn pass(&mut self) -> Vec<BranchReport> {
        let mut out = Vec::new();
        for branch in self.settings.branches.clone() {
            // A replica that does not lead (or no longer does) writes nothing.
            if !self.dry_run && !self.leadership.is_leader() {
                tracing::debug!("not leading: standing by");
                break;
            }
            out.push(self.pass_branch(&branch).await);
        }
        let reported = !self.dry_run && self.report_back(&out).await;
        // A pass that changed nothing must write nothing, not even its cache;
        // one that did nothing at all need not even look.
        if !self.dry_run && (reported || !out.iter().all(|b| b.unchanged)) {
            match self.persisted.serialized() {
                Ok((_, digest)) if self.saved == Some(digest) => {}
                Ok((bytes, digest)) => match Persisted::save(&self.settings.state_dir, &bytes) {
                    Ok(()) => self.saved = Some(digest),
                    Err(e) => tracing::error!(error = %e, "cannot save state"),
                },
                Err(e) => tracing::error!(error = %e, "cannot save state"),
            }
        }
        out
    }

    #[tracing::instrument(skip_all, fields(branch = %branch))]
    async fn pass_branch(&mut self, branch: &str) -> BranchReport {
        let now = self.clock.now();
        let started = std::time::Instant::now();
        let mut report = BranchReport {
            branch: branch.to_string(),
            ..BranchReport::default()
        };
        let source = self.source.clone();
        let refname = self
            .revision
            .clone()
            .unwrap_or_else(|| format!("refs/heads/{branch}"));
        let rev = match tokio::task::spawn_blocking(move || source.resolve(&refname))
            .await
            .unwrap_or_else(|e| Err(join_error(e)))
        {
            Ok(r) => r,
            Err(e) => {
                // A deleted branch applies nothing and deletes nothing; nor
                // does one that cannot be read (out of file descriptors, say),
                // and the error says which it was.
                let missing = matches!(&e, SourceError::Resolve { source, .. } if source.code() == git2::ErrorCode::NotFound);
                let why = format!("{:#}", anyhow::Error::from(e));
                tracing::warn!(error = %why, "branch not resolved: nothing applied, nothing deleted");
                report.errors.push(if missing {
                    format!("branch {branch} not found: applying nothing, deleting nothing")
                } else {
                    format!(
                        "branch {branch} cannot be read: {why}: applying nothing, deleting nothing"
                    )
                });
                return report;
            }
        };
        report.revision = Some(rev);
        if let Some(e) = &self.fetch_error {
            report.errors.push(format!(
                "fetch failed; reconciling the last good revision {}: {e}",
                rev.short()
            ));
        }
        if let Some((r, at)) = self.settled.get(branch) {
            if *r == rev && at.elapsed() < RESYNC {
                report.unchanged = true;
                return report;
            }
        }
        // Invariant 8, before anything of the commit is read. A settled
        // revision passed it already: the policy is fixed for the process.
        match self.verify(rev, now).await {
            Ok(Signer::Unchecked) => {}
            Ok(signer) => tracing::debug!(%rev, ?signer, "commit trusted"),
            Err(why) => return self.refuse_untrusted(branch, rev, why, now, report).await,
        }
        let resync = self
            .resynced
            .get(branch)
            .is_none_or(|at| at.elapsed() >= RESYNC);
        if resync {
            self.resynced
                .insert(branch.to_string(), std::time::Instant::now());
        }
        let prev = self.persisted.revisions.get(branch).cloned();
        let forced = prev
            .as_ref()
            .and_then(|p| git2::Oid::from_str(p).ok())
            .map(Revision)
            .filter(|old| *old != rev && !self.source.is_descendant(rev, *old));
        if let Some(old) = forced {
            tracing::warn!(from = %old, to = %rev, "branch was force-pushed");
        }

        let source = self.source.clone();
        let path = self.settings.path.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            source.snapshot(rev).map(|snap| {
                let loaded = model::load(&snap, &path);
                (Arc::new(snap), loaded)
            })
        })
        .await
        .unwrap_or_else(|e| Err(join_error(e)));
        let (snap, loaded) = match loaded {
            Ok(x) => x,
            Err(e) => {
                report.errors.push(format!("{e:#}"));
                return report;
            }
        };
        for e in &loaded.errors {
            tracing::warn!(error = %e, "invalid object");
        }
        let fleet = Arc::new(loaded.fleet);
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "loaded");
        let source_ref = SourceRef {
            branch: branch.to_string(),
            commit: rev.to_string(),
        };

        // Artifacts first: they come from the synthesizers' definitions, and
        // the store fetches only digests it lacks (one request per digest),
        // so the compositions below can be rendered, staged and dropped one
        // at a time instead of all held in memory at once.
        let mut needed: BTreeMap<Digest, model::Artifact> = BTreeMap::new();
        for comp in fleet.compositions() {
            if let Some(s) = fleet.synthesizers.get(&comp.synthesizer) {
                for a in &s.artifacts {
                    needed.entry(a.sha256).or_insert_with(|| a.clone());
                }
            }
        }
        let needed: Vec<model::Artifact> = needed.into_values().collect();
        // A plan lists artifacts, it does not download them.
        let fetched = if needed.is_empty() || self.dry_run {
            BTreeMap::new()
        } else {
            self.store.fetch_all(&needed, &snap).await
        };
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "artifacts");

        // What is desired and what each target holds, dependencies first.
        let mut work: Vec<Work> = Vec::new();
        let mut synth_keys: HashMap<String, String> = HashMap::new();
        for comp in ordered(&fleet) {
            let w = self
                .prepare(&source_ref, &snap, &fleet, comp, &mut synth_keys, resync)
                .await;
            work.push(w);
        }
        // Phase 1 of the annotation protocol: prunes, before any set.
        let held = self.prune_phase(&mut work, &fleet, now, &mut report).await;

        // Per composition: stage, then apply what the plan allows.
        let mut ready: HashSet<CompositionId> = HashSet::new();
        let mut blocked_symphonies: HashSet<String> = HashSet::new();
        let mut unavailable: HashMap<String, u32> = HashMap::new();
        for w in work.iter_mut() {
            if w.error.is_none() && w.digest.is_none() {
                let _ = self.render(w, &snap, &fleet, &source_ref).await;
            }
            let sym = fleet.symphonies.get(&w.comp.id.symphony);
            let strategy = sym.map(|s| s.rollout.strategy).unwrap_or_default();
            let max_unavailable = sym.map(|s| s.rollout.max_unavailable).unwrap_or(1).max(1);
            let window = w.comp.window.as_ref().and_then(|n| fleet.windows.get(n));
            let facts = Facts {
                desired: w.digest,
                applied: w.observed.applied,
                staged: w.observed.staged,
                gated: !w.comp.scheduling_gates.is_empty(),
                pruning: held.contains_key(&w.comp.id.symphony),
                dependencies_ready: w.comp.depends_on.iter().all(|d| ready.contains(d)),
                rollout_wait: match strategy {
                    Strategy::OrderedReady => blocked_symphonies
                        .contains(&w.comp.id.symphony)
                        .then_some(Reason::WaitingForReady),
                    Strategy::Parallel => {
                        (unavailable.get(&w.comp.id.symphony).copied().unwrap_or(0)
                            >= max_unavailable)
                            .then_some(Reason::MaxUnavailable)
                    }
                },
                window_open: window.map(|mw| mw.window.is_open(now)),
                override_digest: self
                    .persisted
                    .overrides
                    .get(&w.comp.id.to_string())
                    .and_then(|o| o.digest.parse().ok()),
            };
            if w.error.is_none() {
                if let Some(decision) = plan::decide(&facts) {
                    w.action = match decision.apply {
                        Apply::Done if w.ready() => None,
                        // Applied, not Ready yet (not healthy): nothing to do but wait.
                        Apply::Done => Some(ActionKind::Wait),
                        _ if w.observed.applied.is_none() => Some(ActionKind::Create),
                        _ => Some(ActionKind::Update),
                    };
                    self.execute(w, decision, &snap, &fleet, &fetched, &source_ref)
                        .await;
                    if w.waiting == Some(Reason::PrunePending) {
                        w.waiting_message =
                            held.get(&w.comp.id.symphony).cloned().unwrap_or_default();
                    }
                    w.rendered = None;
                    if let Some(next) = window
                        .filter(|_| w.waiting == Some(Reason::WindowClosed))
                        .and_then(|mw| mw.window.state_at(now).next_open)
                    {
                        report.next_window = Some(report.next_window.map_or(next, |n| n.min(next)));
                    }
                }
            }
            if let (Some(Health::Failed(why)), None) = (&w.observed.health, &w.error) {
                let why = why.clone();
                w.fail("HealthTimeout", w.comp.target.clone(), why);
            }
            if w.ready() {
                ready.insert(w.comp.id.clone());
                // Decisions need only the digests and health, not the components.
                let memo = Observed {
                    components: Vec::new(),
                    ..w.observed.clone()
                };
                self.observed.insert(w.record_key.clone(), memo);
            } else {
                self.observed.remove(&w.record_key);
                blocked_symphonies.insert(w.comp.id.symphony.clone());
                // Unavailable: applied but not Ready, or being applied now
                // (in a plan, where nothing is applied, that is every action
                // that would run).
                let in_flight = w.observed.applied.is_some()
                    || (w.action.is_some() && w.waiting.is_none() && w.error.is_none());
                if in_flight {
                    *unavailable.entry(w.comp.id.symphony.clone()).or_default() += 1;
                }
            }
        }

        tracing::debug!(ms = started.elapsed().as_millis() as u64, "executed");
        // D: status, one commit if anything changed.
        let mut statuses = Vec::new();
        let work_settled = work
            .iter()
            .all(|w| w.error.is_none() && (w.ready() || w.waiting == Some(Reason::GatePresent)));
        // Consumed: each composition's work is dropped once its status exists.
        for w in work {
            let w = &w;
            let window = window_status(&fleet, w.comp.window.as_deref(), now);
            if let Some(ws) = &window {
                report.windows.insert(ws.name.clone(), ws.open);
                if let Some(mw) = fleet.windows.get(&ws.name) {
                    report.window_info.insert(
                        ws.name.clone(),
                        WindowInfo {
                            zone: mw.window.tz.name().to_string(),
                            open: ws.open,
                            next_open: ws.next_open,
                        },
                    );
                }
            }
            if let Some(p) = &w.plan {
                report.plans.insert(w.comp.id.clone(), p.clone());
            }
            if let (true, Some(e)) = (self.dry_run, &w.error) {
                let at = if e.source.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", e.source)
                };
                let plan = report.plans.entry(w.comp.id.clone()).or_default();
                plan.error = Some(format!("{at}{}: {}", e.code, e.message));
                plan.error_code = Some(e.code.clone());
            }
            let st = self.status_of(w, &source_ref, now, window);
            report.rows.push(Row {
                id: w.comp.id.clone(),
                state: st.status.state,
                digest: w.digest,
                window: w.comp.window.clone(),
                note: row_note(w),
                action: w.action,
                skipped: match w.action {
                    Some(ActionKind::Wait) => Some(Reason::WaitingForReady.as_str().to_string()),
                    Some(_) => w.waiting.map(|r| r.as_str().to_string()),
                    None => None,
                },
            });
            statuses.push(st);
        }
        // Symphonies that failed to load keep what they applied; status says why.
        for (sym, diags) in &fleet.failed {
            let reason = diags
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            let prefix = format!("{branch}:{sym}/");
            let known = self.records_under(&prefix);
            if known.is_empty() {
                report.errors.push(reason.clone());
            }
            for (key, rec) in known {
                let Some(mut w) = self.recorded_work(&fleet, branch, &key, &rec).await else {
                    continue;
                };
                let id = w.comp.id.clone();
                let first = diags.first();
                w.fail(
                    "InvalidObject",
                    first
                        .map(|d| format!("{}:{}", d.file, d.line.unwrap_or(0)))
                        .unwrap_or_default(),
                    reason.clone(),
                );
                statuses.push(self.status_of(&w, &source_ref, now, None));
                report.rows.push(Row {
                    id,
                    state: State::Failed,
                    digest: None,
                    window: None,
                    note: reason.clone(),
                    action: None,
                    skipped: None,
                });
            }
        }
        for e in &loaded.errors {
            let belongs = fleet.failed.values().flatten().any(|d| d == e);
            if !belongs {
                report.errors.push(e.to_string());
            }
        }
        self.removals(branch, &fleet, &source_ref, now, &mut statuses, &mut report)
            .await;
        self.symphony_readiness(&fleet, &mut statuses, &mut report);
        let prefix = format!("{branch}:");
        let live: HashSet<String> = statuses
            .iter()
            .map(|s| format!("{prefix}{}", s.metadata.deployment_id))
            .collect();
        for st in &mut statuses {
            let key = format!("{prefix}{}", st.metadata.deployment_id);
            self.stamp_transitions(&key, st, now);
        }
        self.persisted
            .conditions
            .retain(|k, _| !k.starts_with(&prefix) || live.contains(k));

        let mut summary = format!("{branch}@{}: {}", rev.short(), summarize(&statuses));
        if let Some(old) = forced {
            summary.push_str(&format!(" (force-pushed over {})", old.short()));
        }
        let update = StatusUpdate {
            source: source_ref.clone(),
            table: table(&report, &summary),
            statuses,
            summary,
        };
        self.publish(update, &mut report).await;
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "status written");
        self.persisted
            .revisions
            .insert(branch.to_string(), rev.to_string());
        let settled = work_settled
            && !report.rows.iter().any(|r| r.state == State::Removing)
            && fleet.failed.is_empty()
            && self.fetch_error.is_none()
            && report.errors.is_empty();
        if settled {
            self.settled
                .insert(branch.to_string(), (rev, std::time::Instant::now()));
        } else {
            self.settled.remove(branch);
        }
        report
    }

    /// Commits the statuses (not in a plan); a failure is a report error.
    async fn publish(&self, update: StatusUpdate, report: &mut BranchReport) {
        let status = self.status.clone();
        // Not leading (any more): the new leader reports.
        let dry = self.dry_run || !self.leadership.is_leader();
        match tokio::task::spawn_blocking(move || {
            if dry {
                Ok(None)
            } else {
                status.publish(&update)
            }
        })
        .await
        {
            Ok(Ok(commit)) => report.status_commit = commit,
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{:#}", anyhow::Error::from(e)), "cannot write status");
                report
                    .errors
                    .push("status could not be written (see logs)".to_string());
            }
            Err(e) => tracing::error!(error = %e, "status task failed"),
        }
    }

    /// Whether the commit passes the signature policy (invariant 8) at
    /// `now`, the pass's clock, so `--now` also decides key expiry.
    async fn verify(&self, rev: Revision, now: DateTime<Utc>) -> Result<Signer, UntrustedCommit> {
        if matches!(self.settings.signatures, SignaturePolicy::None) {
            return Ok(Signer::Unchecked);
        }
        let source = self.source.clone();
        let policy = self.settings.signatures.clone();
        tokio::task::spawn_blocking(move || source.verify(rev, &policy, now))
            .await
            .unwrap_or_else(|e| {
                Err(UntrustedCommit::Unreadable {
                    commit: rev.0,
                    reason: e.to_string(),
                })
            })
    }

    /// The objects of an already reconciled commit (empty if it is gone).
    async fn last_fleet(&self, rev: &str) -> Fleet {
        let Ok(oid) = git2::Oid::from_str(rev) else {
            return Fleet::default();
        };
        let source = self.source.clone();
        let path = self.settings.path.clone();
        tokio::task::spawn_blocking(move || {
            source
                .snapshot(Revision(oid))
                .map(|snap| model::load(&snap, &path).fleet)
                .unwrap_or_default()
        })
        .await
        .unwrap_or_default()
    }

    /// A commit that fails the signature policy: nothing of it is loaded,
    /// so nothing is staged, applied or deleted. Every composition known on
    /// the branch keeps what it applied and is reported `failed`, with
    /// `UntrustedCommit` naming the commit and the signer seen.
    async fn refuse_untrusted(
        &mut self,
        branch: &str,
        rev: Revision,
        why: UntrustedCommit,
        now: DateTime<Utc>,
        mut report: BranchReport,
    ) -> BranchReport {
        tracing::warn!(error = %why, "untrusted commit: nothing staged or applied");
        let message = why.to_string();
        report
            .errors
            .push(format!("{message}: nothing staged or applied"));
        let source_ref = SourceRef {
            branch: branch.to_string(),
            commit: rev.to_string(),
        };
        let prefix = format!("{branch}:");
        let known = self.records_under(&prefix);
        // Targets are defined in the repository: status reads what they hold
        // through the last reconciled commit's definitions, never this one's.
        let last = match self.persisted.revisions.get(branch) {
            Some(r) => self.last_fleet(r).await,
            None => Fleet::default(),
        };
        let mut statuses = Vec::new();
        for (key, rec) in known {
            let Some(mut w) = self.recorded_work(&last, branch, &key, &rec).await else {
                continue;
            };
            w.fail("UntrustedCommit", rev.to_string(), message.clone());
            let mut st = self.status_of(&w, &source_ref, now, None);
            self.stamp_transitions(&key, &mut st, now);
            statuses.push(st);
            report.rows.push(Row {
                id: w.comp.id.clone(),
                state: State::Failed,
                digest: None,
                window: rec.window.clone(),
                note: row_note(&w),
                action: None,
                skipped: None,
            });
        }
        // Orphaned statuses stay: status files not written are removed.
        for (key, symphony) in self
            .persisted
            .orphaned
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
        {
            if let Ok(id) = key[prefix.len()..].parse::<CompositionId>() {
                statuses.push(orphaned_status(&id, symphony, &source_ref, now));
            }
        }
        let summary = format!(
            "{branch}@{}: {} (untrusted commit)",
            rev.short(),
            summarize(&statuses)
        );
        let update = StatusUpdate {
            source: source_ref,
            table: table(&report, &summary),
            statuses,
            summary,
        };
        self.publish(update, &mut report).await;
        self.settled.remove(branch);
        report
    }

    /// Resolves the target, the digest (from cache or by rendering) and what the target holds.
    /// The target, what it holds, and the desired digest if nothing it
    /// depends on changed since it was last rendered (else it is rendered
    /// when needed, one at a time).
    async fn prepare(
        &mut self,
        source: &SourceRef,
        snap: &Arc<Snapshot>,
        fleet: &Arc<Fleet>,
        comp: &Composition,
        synth_keys: &mut HashMap<String, String>,
        resync: bool,
    ) -> Work {
        let record_key = format!("{}:{}", source.branch, comp.id);
        let mut w = Work {
            comp: comp.clone(),
            target: None,
            record_key,
            digest: None,
            components: Vec::new(),
            rendered: None,
            since: None,
            observed: Observed::default(),
            error: None,
            waiting: None,
            waiting_message: String::new(),
            overridden: None,
            key: None,
            skipped: Vec::new(),
            ungated: Vec::new(),
            action: None,
            plan: None,
        };
        // Gates lifted by `fermata ungate` hold no more; a lift whose gate a
        // commit has removed is done with.
        let id = comp.id.to_string();
        if let Some(lifted) = self.persisted.ungated.get_mut(&id) {
            lifted.retain(|u| comp.scheduling_gates.contains(&u.gate));
            w.comp
                .scheduling_gates
                .retain(|g| !lifted.iter().any(|u| &u.gate == g));
            w.ungated = lifted.clone();
            if lifted.is_empty() {
                self.persisted.ungated.remove(&id);
            }
        }
        match self.target_for(fleet, &comp.target) {
            Ok(t) => w.target = Some(t),
            Err(m) => {
                w.fail("TargetUnavailable", comp.target.clone(), m);
                return w;
            }
        }
        let base = input_key(snap, fleet, comp, synth_keys);
        let record = self.persisted.renders.get(&w.record_key).cloned();
        let unchanged = record.as_ref().filter(|r| r.base_key == base);
        if let Some(memo) = self
            .observed
            .get(&w.record_key)
            .filter(|o| !resync && unchanged.is_some_and(|r| o.applied == Some(r.digest)))
        {
            w.observed = memo.clone();
        } else if let Some(t) = &w.target {
            match t.get(&comp.id).await {
                // Status lists components from the render; only the
                // digests, health and carried metadata matter here.
                Ok(o) => {
                    w.observed = Observed {
                        components: Vec::new(),
                        ..o
                    }
                }
                Err(e) => {
                    w.fail("TargetUnavailable", comp.target.clone(), e.to_string());
                    return w;
                }
            }
        }
        // The desired state also depends on what the composition will carry,
        // and, where reconcile-when leaves resources alone, on what is applied.
        let mut h = Sha256::new();
        h.update(base.as_bytes());
        h.update(
            serde_json::to_vec(&(
                annotations::effective(&w.observed.annotations, &comp.annotations),
                annotations::effective(&w.observed.labels, &comp.labels),
            ))
            .unwrap_or_default(),
        );
        if record.as_ref().is_some_and(|r| !r.skipped.is_empty()) {
            h.update(w.observed.applied.map(|d| d.to_hex()).unwrap_or_default());
        }
        let key = hex::encode(h.finalize());
        match record {
            Some(r) if r.input_key == key => {
                w.digest = Some(r.digest);
                w.components = r.components.clone();
                w.since = r.commit.clone();
                w.skipped = r.skipped.clone();
            }
            _ => {
                w.since = Some(source.commit.clone());
                w.key = Some((base, key));
            }
        }
        w
    }

    /// Renders, then settles what the composition will hold: its annotations
    /// and labels once this write completes, and resources left alone by
    /// `reconcile-when`. Records the result so it is not rendered again.
    async fn render(
        &mut self,
        w: &mut Work,
        snap: &Arc<Snapshot>,
        fleet: &Arc<Fleet>,
        source: &SourceRef,
    ) -> Result<(), String> {
        if !self.allow_commands {
            if let Some(s) = fleet
                .synthesizers
                .get(&w.comp.synthesizer)
                .filter(|s| matches!(s.kind, SynthKind::Command { .. }))
            {
                let msg = format!(
                    "synthesizer {}: command not run: this commit is not on a watched branch (a pull request head); --trust-pr-commands runs it",
                    s.name
                );
                w.fail(
                    COMMAND_NOT_RUN,
                    format!("{}:{}", s.origin.file, s.origin.line),
                    msg.clone(),
                );
                return Err(msg);
            }
        }
        let (snap2, fleet2, comp) = (snap.clone(), fleet.clone(), w.comp.clone());
        let result = tokio::task::spawn_blocking(move || {
            synth::render(&snap2, &fleet2, &comp).map_err(|e| e.diagnostic(&fleet2, &comp))
        })
        .await;
        let rendered = match result {
            Ok(Ok(r)) => r,
            Ok(Err(d)) => {
                let msg = d.to_string();
                w.fail(
                    "RenderFailed",
                    format!("{}:{}", d.file, d.line.unwrap_or(0)),
                    d.message,
                );
                return Err(msg);
            }
            Err(e) => {
                w.fail("RenderFailed", w.comp.synthesizer.clone(), e.to_string());
                return Err(e.to_string());
            }
        };
        let ann = annotations::effective(&w.observed.annotations, &w.comp.annotations);
        let labels = annotations::effective(&w.observed.labels, &w.comp.labels);
        let needs_applied = rendered.resources.iter().any(|r| {
            r.object
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(annotations::RECONCILE_WHEN))
                .and_then(|v| v.as_str())
                .is_some_and(|c| !annotations::reconcile_when_matches(c, &ann))
        });
        let applied = match (&w.target, needs_applied) {
            (Some(t), true) => match t.applied(&w.comp.id).await {
                Ok(a) => a,
                Err(e) => {
                    w.fail("TargetUnavailable", w.comp.target.clone(), e.to_string());
                    return Err(e.to_string());
                }
            },
            _ => None,
        };
        let (state, skipped) = annotations::finalize(&rendered, ann, labels, applied.as_ref());
        w.digest = Some(state.digest);
        w.components = rendered
            .resources
            .iter()
            .map(|r| r.key.to_string())
            .collect();
        w.skipped = skipped;
        if let Some((base, key)) = w.key.take() {
            self.persisted.renders.insert(
                w.record_key.clone(),
                RenderRecord {
                    input_key: key,
                    base_key: base,
                    digest: state.digest,
                    components: w.components.clone(),
                    target: Some(w.comp.target.clone()),
                    commit: Some(source.commit.clone()),
                    window: w.comp.window.clone(),
                    depends_on: w.comp.depends_on.iter().map(|d| d.to_string()).collect(),
                    skipped: w.skipped.clone(),
                    position: fleet
                        .symphonies
                        .get(&w.comp.id.symphony)
                        .and_then(|s| s.compositions.iter().position(|c| c.id == w.comp.id))
                        .unwrap_or(0),
                },
            );
        }
        w.rendered = Some(Arc::new(state));
        Ok(())
    }

    /// Phase 1 of the annotation protocol (DESIGN.md section 4), per
    /// symphony: remove, from every composition that carries them, the
    /// annotations its variation now sets to `""`, each as a write of its
    /// applied state with nothing else changed. Returns, per symphony, what
    /// holds its phase 2: a prune whose window is closed, or one that failed.
    async fn prune_phase(
        &mut self,
        work: &mut [Work],
        fleet: &Fleet,
        now: DateTime<Utc>,
        report: &mut BranchReport,
    ) -> HashMap<String, String> {
        let mut held: HashMap<String, String> = HashMap::new();
        for w in work.iter_mut() {
            let keys = annotations::prunes(&w.observed.annotations, &w.comp.annotations);
            let Some(target) = w
                .target
                .clone()
                .filter(|_| !keys.is_empty() && w.error.is_none())
            else {
                continue;
            };
            let sym = w.comp.id.symphony.clone();
            let window = w.comp.window.as_ref().and_then(|n| fleet.windows.get(n));
            if let Some(mw) = window.filter(|mw| !mw.window.is_open(now)) {
                let next = mw.window.state_at(now).next_open;
                if let Some(n) = next {
                    report.next_window = Some(report.next_window.map_or(n, |m| m.min(n)));
                }
                held.entry(sym).or_insert_with(|| {
                    format!(
                        "{} must first remove {} in its window {} (next opening {})",
                        w.comp.id,
                        keys.join(", "),
                        mw.window.name,
                        next.map(|t| t.to_rfc3339())
                            .unwrap_or_else(|| "never".into())
                    )
                });
                continue;
            }
            if self.dry_run {
                held.entry(sym)
                    .or_insert_with(|| format!("{} removes {} first", w.comp.id, keys.join(", ")));
                w.action = Some(ActionKind::Update);
                continue;
            }
            let pruned = annotations::pruned(&w.observed.annotations, &keys);
            let result = self
                .rewrite_applied(target.as_ref(), &w.comp.id, |mut r| {
                    r.annotations = pruned;
                    Ok(r)
                })
                .await;
            match result {
                Ok(()) => {
                    tracing::info!(composition = %w.comp.id, keys = %keys.join(","), "pruned annotations");
                    match target.get(&w.comp.id).await {
                        Ok(o) => w.observed = o,
                        Err(e) => w.fail("TargetUnavailable", w.comp.target.clone(), e.to_string()),
                    }
                }
                Err(e) => {
                    held.entry(sym).or_insert_with(|| {
                        format!(
                            "removing {} from {} failed: {e}",
                            keys.join(", "),
                            w.comp.id
                        )
                    });
                }
            }
        }
        held
    }

    /// Writes the applied state of `id` again, changed by `edit`, as one
    /// more applied state: atomic like any apply. Nothing applied: nothing done.
    async fn rewrite_applied(
        &self,
        target: &dyn Target,
        id: &CompositionId,
        edit: impl FnOnce(Rendered) -> Result<Rendered, String>,
    ) -> Result<(), String> {
        let Some(applied) = target.applied(id).await.map_err(|e| e.to_string())? else {
            return Ok(());
        };
        let edited = edit(applied)?;
        let artifacts = self.stored_artifacts(&edited.artifacts);
        let rendered = Rendered::from_parts(
            id.clone(),
            edited.resources,
            edited.annotations,
            edited.labels,
            edited.artifacts,
        );
        let desired = Desired {
            rendered: Arc::new(rendered),
            source: SourceRef {
                branch: String::new(),
                commit: String::new(),
            },
            artifacts,
        };
        let result = target.apply(&desired, StateGoal::Apply).await;
        self.after_write();
        result.map(|_| ()).map_err(|e| e.to_string())
    }

    /// Where the store keeps each of `artifacts`, by name: what a state
    /// staged before needs to be written again.
    fn stored_artifacts(&self, artifacts: &[model::Artifact]) -> BTreeMap<String, PathBuf> {
        artifacts
            .iter()
            .map(|a| (a.name.clone(), self.store.path_of(&a.sha256)))
            .collect()
    }

    /// Runs `FERMATA_TEST_WRITE_HOOK` after every target write: a test hook
    /// that inspects the target between writes (the Eno migration test).
    fn after_write(&self) {
        if let Some(hook) = &self.write_hook {
            let status = std::process::Command::new("sh").args(["-c", hook]).status();
            if !status.is_ok_and(|s| s.success()) {
                tracing::error!(hook, "write hook failed");
            }
        }
    }

    async fn execute(
        &mut self,
        w: &mut Work,
        decision: plan::Decision,
        snap: &Arc<Snapshot>,
        fleet: &Arc<Fleet>,
        fetched: &BTreeMap<Digest, Result<PathBuf, crate::stage::StageError>>,
        source: &SourceRef,
    ) {
        let Some(target) = w.target.clone() else {
            return;
        };
        if !self.dry_run && !self.leadership.is_leader() {
            w.fail(
                "NotLeader",
                "",
                "leadership lost during the pass: nothing written",
            );
            return;
        }
        let needs_desired = decision.stage || matches!(decision.apply, Apply::Now { .. });
        if !needs_desired || self.dry_run {
            if let Apply::Wait(r) = decision.apply {
                w.waiting = Some(r);
            }
            if needs_desired && self.dry_run {
                self.plan_detail(w, target.as_ref(), snap, fleet, source)
                    .await;
            }
            return;
        }
        // A cached digest alone does not carry the state to stage: render it.
        if w.rendered.is_none() && self.render(w, snap, fleet, source).await.is_err() {
            return;
        }
        let Some(rendered) = w.rendered.clone() else {
            return;
        };
        let mut artifacts = BTreeMap::new();
        for a in &rendered.artifacts {
            match fetched.get(&a.sha256) {
                Some(Ok(p)) => {
                    artifacts.insert(a.name.clone(), p.clone());
                }
                Some(Err(e)) => {
                    w.fail("ArtifactFailed", a.url.clone(), e.to_string());
                    return;
                }
                None => {
                    // Staged before, now applying: the store still has it.
                    artifacts.insert(a.name.clone(), self.store.path_of(&a.sha256));
                }
            }
        }
        let desired = Desired {
            rendered,
            source: source.clone(),
            artifacts,
        };
        if decision.stage {
            let staged = target.apply(&desired, StateGoal::Stage).await;
            self.after_write();
            if let Err(e) = staged {
                w.fail("StagingFailed", w.comp.target.clone(), e.to_string());
                return;
            }
            tracing::info!(composition = %w.comp.id, digest = %desired.rendered.digest.short(), "staged");
        }
        match decision.apply {
            Apply::Now { overridden } => {
                let applied = target.apply(&desired, StateGoal::Apply).await;
                self.after_write();
                if let Err(e) = applied {
                    w.fail("ApplyFailed", w.comp.target.clone(), e.to_string());
                    return;
                }
                tracing::info!(composition = %w.comp.id, digest = %desired.rendered.digest.short(), overridden, "applied");
                if overridden {
                    w.overridden = self.persisted.overrides.remove(&w.comp.id.to_string());
                }
            }
            Apply::Wait(r) => w.waiting = Some(r),
            Apply::Done => {}
        }
        match target.get(&w.comp.id).await {
            Ok(o) => w.observed = o,
            Err(e) => w.fail("TargetUnavailable", w.comp.target.clone(), e.to_string()),
        }
    }

    /// Plans only: what the target would change (its `DryRun` diff) and the
    /// artifacts the state needs. Writes nothing anywhere.
    async fn plan_detail(
        &mut self,
        w: &mut Work,
        target: &dyn Target,
        snap: &Arc<Snapshot>,
        fleet: &Arc<Fleet>,
        source: &SourceRef,
    ) {
        if w.rendered.is_none() && self.render(w, snap, fleet, source).await.is_err() {
            return;
        }
        let Some(rendered) = w.rendered.clone() else {
            return;
        };
        let artifacts = rendered
            .artifacts
            .iter()
            .map(|a| PlannedArtifact {
                name: a.name.clone(),
                url: a.url.clone(),
                size: a.size,
                stored: self.store.contains(&a.sha256),
            })
            .collect();
        let desired = Desired {
            artifacts: self.stored_artifacts(&rendered.artifacts),
            rendered,
            source: source.clone(),
        };
        let diff = match target.apply(&desired, StateGoal::DryRun).await {
            Ok(outcome) => outcome.diff,
            Err(e) => Some(format!("(the target could not compute a diff: {e})")),
        };
        w.plan = Some(PlanDetail {
            diff,
            artifacts,
            error: None,
            error_code: None,
        });
    }

    /// The target object named `name`, built once per root.
    fn target_for(&mut self, fleet: &Fleet, name: &str) -> Result<Arc<dyn Target>, String> {
        let t = fleet
            .targets
            .get(name)
            .ok_or_else(|| format!("no Target named {name:?}"))?;
        match &t.kind {
            TargetKind::Directory { path } => {
                let p = PathBuf::from(path);
                let root = if p.is_absolute() {
                    p
                } else {
                    self.settings.target_root.join(p)
                };
                Ok(self
                    .targets
                    .entry(format!("directory:{}", root.display()))
                    .or_insert_with(|| Arc::new(DirectoryTarget::new(root)))
                    .clone())
            }
            TargetKind::Kubernetes(spec) => {
                let key = format!("kubernetes:{}", serde_json::json!(spec));
                let (timeout, clock) = (self.settings.health_timeout, self.clock.clone());
                Ok(self
                    .targets
                    .entry(key)
                    .or_insert_with(|| {
                        Arc::new(KubernetesTarget::new(spec.clone(), timeout, clock))
                    })
                    .clone())
            }
        }
    }

    /// The render records whose `branch:symphony/variation` key starts with
    /// `prefix`: compositions known from earlier passes.
    fn records_under(&self, prefix: &str) -> Vec<(String, RenderRecord)> {
        self.persisted
            .renders
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect()
    }

    /// A composition known only from its last render, with what its target
    /// (as `fleet` defines it) holds now.
    async fn recorded_work(
        &mut self,
        fleet: &Fleet,
        branch: &str,
        key: &str,
        rec: &RenderRecord,
    ) -> Option<Work> {
        let id = key.get(branch.len() + 1..)?.parse::<CompositionId>().ok()?;
        let mut w = Work::from_record(id.clone(), key.to_string(), rec);
        if let Some(t) = rec
            .target
            .as_ref()
            .and_then(|t| self.target_for(fleet, t).ok())
        {
            w.observed = t.get(&id).await.unwrap_or_default();
        }
        Some(w)
    }

    /// Eno's rule: a symphony is Ready when every non-optional composition is
    /// Ready at the current source commit; each status carries the count.
    fn symphony_readiness(
        &self,
        fleet: &Fleet,
        statuses: &mut [DeploymentStatus],
        report: &mut BranchReport,
    ) {
        let ready_of = |st: &DeploymentStatus| {
            st.status
                .conditions
                .iter()
                .any(|c| c.r#type == "Ready" && c.status == "True")
        };
        let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for st in statuses.iter() {
            let Ok(id) = st.metadata.deployment_id.parse::<CompositionId>() else {
                continue;
            };
            let Some(comp) = fleet.composition(&id) else {
                continue;
            };
            if comp.optional {
                continue;
            }
            let e = counts.entry(id.symphony).or_default();
            e.1 += 1;
            if ready_of(st) {
                e.0 += 1;
            }
        }
        for st in statuses.iter_mut() {
            let Some(sym) = st.metadata.deployment_id.split('/').next() else {
                continue;
            };
            if let Some((ready, desired)) = counts.get(sym) {
                st.status.symphony = Some(crate::status::SymphonyReadiness {
                    name: sym.to_string(),
                    ready: ready == desired,
                    ready_compositions: *ready,
                    desired: *desired,
                });
            }
        }
        report.symphonies = counts
            .into_iter()
            .map(|(name, (ready, desired))| (name, ready, desired))
            .collect();
    }

    /// Keeps a condition's `lastTransitionTime` while its status stays the same.
    fn stamp_transitions(&mut self, key: &str, st: &mut DeploymentStatus, now: DateTime<Utc>) {
        let seen = self
            .persisted
            .conditions
            .entry(key.to_string())
            .or_default();
        for c in &mut st.status.conditions {
            match seen.get(&c.r#type) {
                Some((status, since)) if *status == c.status => {
                    c.last_transition_time = Some(*since);
                }
                _ => {
                    seen.insert(c.r#type.clone(), (c.status.clone(), now));
                    c.last_transition_time = Some(now);
                }
            }
        }
    }

    /// Compositions rendered on this branch before and gone from it now
    /// (DESIGN.md section 5). A removed variation is `removing` until its
    /// target confirms the delete, which waits for its window and for every
    /// composition that depends on it; then its record and status go. A
    /// removed symphony's compositions are dropped at once and their
    /// resources orphaned: left in place, annotated `fermata.dev/orphaned-from`.
    async fn removals(
        &mut self,
        branch: &str,
        fleet: &Arc<Fleet>,
        source: &SourceRef,
        now: DateTime<Utc>,
        statuses: &mut Vec<DeploymentStatus>,
        report: &mut BranchReport,
    ) {
        let prefix = format!("{branch}:");
        let live: HashSet<String> = statuses
            .iter()
            .map(|s| format!("{prefix}{}", s.metadata.deployment_id))
            .collect();
        let mut gone = self.records_under(&prefix);
        gone.retain(|(k, _)| !live.contains(k));
        // Deletes in reverse variation order: the last one written goes first.
        gone.sort_by(|(ka, a), (kb, b)| {
            let sym = |k: &str| k.split('/').next().unwrap_or_default().to_string();
            sym(ka).cmp(&sym(kb)).then(b.position.cmp(&a.position))
        });
        // OrderedReady: the next delete only when the previous one is done.
        let mut deletes_blocked: HashSet<String> = HashSet::new();
        self.persisted.orphaned.retain(|k, _| !live.contains(k));
        for (key, rec) in gone {
            let Ok(id) = key[prefix.len()..].parse::<CompositionId>() else {
                self.persisted.renders.remove(&key);
                continue;
            };
            let target = rec
                .target
                .as_ref()
                .and_then(|t| self.target_for(fleet, t).ok());
            if !fleet.symphonies.contains_key(&id.symphony) {
                if let Some(t) = &target {
                    if let Err(e) = self.orphan(t.as_ref(), &id).await {
                        tracing::warn!(composition = %id, error = %e, "cannot annotate orphaned resources");
                    }
                }
                tracing::info!(composition = %id, "symphony removed: resources orphaned");
                self.persisted.renders.remove(&key);
                self.observed.remove(&key);
                self.persisted.orphaned.insert(key, id.symphony.clone());
                continue;
            }
            let mut w = Work::from_record(id.clone(), key.clone(), &rec);
            // Dependents in the fleet, and those of symphonies that failed to
            // load (a dangling dependsOn fails them): both still run on it.
            let mut held_by: Vec<String> = fleet
                .compositions()
                .filter(|c| c.depends_on.contains(&id))
                .map(|c| c.id.to_string())
                .collect();
            held_by.extend(
                self.persisted
                    .renders
                    .iter()
                    .filter(|(k, r)| {
                        k.strip_prefix(&prefix)
                            .and_then(|rest| rest.split_once('/'))
                            .is_some_and(|(sym, _)| fleet.failed.contains_key(sym))
                            && r.depends_on.contains(&id.to_string())
                    })
                    .map(|(k, _)| k[prefix.len()..].to_string()),
            );
            let window_status = window_status(fleet, rec.window.as_deref(), now);
            if let Some(ws) = &window_status {
                report.windows.insert(ws.name.clone(), ws.open);
            }
            let ordered = fleet
                .symphonies
                .get(&id.symphony)
                .is_some_and(|s| s.rollout.strategy == Strategy::OrderedReady);
            let (reason, message) = if ordered && deletes_blocked.contains(&id.symphony) {
                (
                    "WaitingForReady",
                    "a later variation is removed first".to_string(),
                )
            } else if !held_by.is_empty() {
                (
                    "WaitingOnDependency",
                    format!("held by {}", held_by.join(", ")),
                )
            } else if let Some(ws) = window_status.as_ref().filter(|w| !w.open) {
                if let Some(next) = ws.next_open {
                    report.next_window = Some(report.next_window.map_or(next, |n| n.min(next)));
                }
                (
                    "WindowClosed",
                    "the removal waits for the window".to_string(),
                )
            } else if self.dry_run {
                ("Delete", "would be deleted now".to_string())
            } else {
                let result = match &target {
                    Some(t) => {
                        let r = t.delete(&id).await.map_err(|e| e.to_string());
                        self.after_write();
                        r
                    }
                    None => Ok(()),
                };
                match result {
                    Ok(()) => {
                        tracing::info!(composition = %id, "removed");
                        self.persisted.renders.remove(&key);
                        self.observed.remove(&key);
                        continue;
                    }
                    Err(e) => {
                        w.fail("DeleteFailed", rec.target.clone().unwrap_or_default(), e);
                        ("Failed", String::new())
                    }
                }
            };
            if let Some(t) = &target {
                w.observed = t.get(&id).await.unwrap_or_default();
            }
            // Not gone yet (in a plan, nothing is): the next delete waits.
            if reason != "Delete" || self.dry_run {
                deletes_blocked.insert(id.symphony.clone());
            }
            let mut st = self.status_of(&w, source, now, window_status);
            if w.error.is_none() {
                st.status.state = State::Removing;
                for c in &mut st.status.components {
                    c.state = State::Removing;
                }
                if let Some(ready) = st
                    .status
                    .conditions
                    .iter_mut()
                    .find(|c| c.r#type == "Ready")
                {
                    ready.reason = reason.to_string();
                    ready.message = message.clone();
                }
            }
            report.rows.push(Row {
                id,
                state: st.status.state,
                digest: w.digest,
                window: rec.window.clone(),
                note: if w.error.is_some() {
                    row_note(&w)
                } else {
                    format!("removing: {reason}")
                },
                action: Some(ActionKind::Delete),
                skipped: (w.error.is_none() && reason != "Delete").then(|| reason.to_string()),
            });
            statuses.push(st);
        }
        for (key, symphony) in self
            .persisted
            .orphaned
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
        {
            let Ok(id) = key[prefix.len()..].parse::<CompositionId>() else {
                continue;
            };
            statuses.push(orphaned_status(&id, symphony, source, now));
            report.rows.push(Row {
                id,
                state: State::Removed,
                digest: None,
                window: None,
                note: "removed (orphaned)".to_string(),
                action: None,
                skipped: None,
            });
        }
    }

    /// Leaves the applied resources in place, annotated with the symphony
    /// they came from, as one more applied state (so it is atomic too).
    async fn orphan(&self, target: &dyn Target, id: &CompositionId) -> Result<(), String> {
        self.rewrite_applied(target, id, |mut r| {
            let mut resources = Vec::with_capacity(r.resources.len());
            for res in &r.resources {
                let mut o = res.object.clone();
                if let Some(meta) = o
                    .get_mut("metadata")
                    .and_then(serde_json::Value::as_object_mut)
                {
                    let ann = meta
                        .entry("annotations")
                        .or_insert_with(|| serde_json::json!({}));
                    if let Some(ann) = ann.as_object_mut() {
                        ann.insert(ORPHANED_FROM.into(), serde_json::json!(id.symphony));
                    }
                }
                resources.push(synth::Resource::new(o)?);
            }
            r.resources = resources;
            r.annotations
                .insert(ORPHANED_FROM.to_string(), id.symphony.clone());
            Ok(r)
        })
        .await
    }

    fn status_of(
        &self,
        w: &Work,
        source: &SourceRef,
        now: DateTime<Utc>,
        window: Option<WindowStatus>,
    ) -> DeploymentStatus {
        let state = if w.error.is_some() {
            State::Failed
        } else if w.digest.is_some() && w.observed.applied == w.digest {
            State::Installed
        } else if w.digest.is_some() && w.observed.staged == w.digest {
            State::Staged
        } else {
            State::Pending
        };
        let programmed = w.digest.is_some() && w.observed.applied == w.digest;
        let running = match &w.observed.health {
            Some(Health::Healthy) => Ok(()),
            Some(Health::Unhealthy(m)) => Err(("Unhealthy", m.clone())),
            Some(Health::Failed(m)) => Err(("HealthTimeout", m.clone())),
            _ => Err(("NotApplied", "nothing applied yet".to_string())),
        };
        let waiting = w.waiting.map(|r| r.as_str()).unwrap_or("Pending");
        let cond = |t: &str, ok: bool, reason: &str, message: String| Condition {
            r#type: t.to_string(),
            status: if ok { "True" } else { "False" }.to_string(),
            reason: reason.to_string(),
            message,
            last_transition_time: Some(now),
        };
        let staged = w.digest.is_some() && (w.observed.staged == w.digest || programmed);
        let mut conditions = vec![
            cond(
                "Staged",
                staged,
                if staged {
                    "Staged"
                } else if w.error.is_some() {
                    "Failed"
                } else {
                    "Pending"
                },
                String::new(),
            ),
            cond(
                "Programmed",
                programmed,
                if programmed {
                    "Applied"
                } else if w.error.is_some() {
                    "Failed"
                } else {
                    waiting
                },
                match (&w.waiting, &window) {
                    _ if !w.waiting_message.is_empty() => w.waiting_message.clone(),
                    (Some(Reason::WindowClosed), Some(ws)) => format!(
                        "window {} is closed; next opening {}",
                        ws.name,
                        ws.next_open
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_else(|| "never".into())
                    ),
                    (Some(Reason::GatePresent), _) => format!(
                        "scheduling gates present: {}",
                        w.comp.scheduling_gates.join(", ")
                    ),
                    _ => String::new(),
                },
            ),
            match &running {
                Ok(()) => cond("Running", true, "Healthy", String::new()),
                Err((r, m)) => cond("Running", false, r, m.clone()),
            },
        ];
        let ready = programmed && running.is_ok() && w.error.is_none();
        let ready_reason = if ready {
            "Ready".to_string()
        } else if w.error.is_some() {
            "Failed".to_string()
        } else if !programmed {
            conditions[1].reason.clone()
        } else {
            conditions[2].reason.clone()
        };
        conditions.insert(
            0,
            cond(
                "Ready",
                ready,
                &ready_reason,
                if ready {
                    String::new()
                } else {
                    conditions[1].message.clone()
                },
            ),
        );
        if let Some(e) = &self.fetch_error {
            conditions.push(cond("SourceAvailable", false, "FetchFailed", e.clone()));
        }
        let component_state = match state {
            State::Installed => State::Installed,
            State::Failed => State::Failed,
            State::Staged => State::Staged,
            _ => State::Pending,
        };
        DeploymentStatus {
            api_version: model::types::API_VERSION.to_string(),
            kind: "DeploymentStatus".to_string(),
            metadata: StatusMetadata {
                deployment_id: w.comp.id.to_string(),
                time_stamp: now,
            },
            source: SourceRef {
                branch: source.branch.clone(),
                commit: w.since.clone().unwrap_or_else(|| source.commit.clone()),
            },
            status: StatusBody {
                state,
                digest: w.digest.map(|d| d.to_hex()),
                applied: w.observed.applied.map(|d| d.to_hex()),
                window,
                conditions,
                error: w.error.clone(),
                r#override: w.overridden.clone(),
                symphony: None,
                ungated: w.ungated.clone(),
                components: w
                    .components
                    .iter()
                    .map(|name| ComponentStatus {
                        name: name.clone(),
                        state: component_state,
                        skipped: w
                            .skipped
                            .contains(name)
                            .then(|| "reconcile-when".to_string()),
                    })
                    .collect(),
            },
        }
    }
}

/// What status says of the window `name` (if any) at `now`.
fn window_status(fleet: &Fleet, name: Option<&str>, now: DateTime<Utc>) -> Option<WindowStatus> {
    let mw = fleet.windows.get(name?)?;
    let st = mw.window.state_at(now);
    Some(WindowStatus {
        name: mw.window.name.clone(),
        open: st.open,
        next_open: st.next_open,
    })
}

/// Marks resources left in place when their symphony was removed.
pub const ORPHANED_FROM: &str = "fermata.dev/orphaned-from";

/// The status of a composition whose symphony was removed: `removed (orphaned)`.
fn orphaned_status(
    id: &CompositionId,
    symphony: &str,
    source: &SourceRef,
    now: DateTime<Utc>,
) -> DeploymentStatus {
    DeploymentStatus {
        api_version: model::types::API_VERSION.to_string(),
        kind: "DeploymentStatus".to_string(),
        metadata: StatusMetadata {
            deployment_id: id.to_string(),
            time_stamp: now,
        },
        source: source.clone(),
        status: StatusBody {
            state: State::Removed,
            digest: None,
            applied: None,
            window: None,
            conditions: vec![Condition {
                r#type: "Ready".to_string(),
                status: "False".to_string(),
                reason: "Orphaned".to_string(),
                message: format!(
                    "removed (orphaned): symphony {symphony} is gone from the repository; its resources are left in place, annotated {ORPHANED_FROM}: {symphony}"
                ),
                last_transition_time: Some(now),
            }],
            error: None,
            r#override: None,
            symphony: None,
            ungated: Vec::new(),
            components: Vec::new(),
        },
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SourceErrorWrapper(String);

fn join_error(e: tokio::task::JoinError) -> SourceError {
    SourceError::Open {
        url: "(internal task)".into(),
        source: git2::Error::from_str(&e.to_string()),
    }
}

fn row_note(w: &Work) -> String {
    if let Some(e) = &w.error {
        return format!("{}: {}", e.code, e.message);
    }
    if w.overridden.is_some() {
        return "applied outside its window (apply-now)".to_string();
    }
    match w.waiting {
        Some(r) => r.as_str().to_string(),
        None => String::new(),
    }
}

/// Compositions with every dependency before its dependents, otherwise in
/// symphony and variation order (the order `OrderedReady` follows).
fn ordered(fleet: &Fleet) -> Vec<&Composition> {
    let all: Vec<&Composition> = fleet.compositions().collect();
    let mut done: HashSet<&CompositionId> = HashSet::new();
    let mut out = Vec::with_capacity(all.len());
    // Cycles were refused at load time; a dependency outside the fleet (a
    // failed symphony) does not hold the order, only the apply.
    while out.len() < all.len() {
        let before = out.len();
        for c in &all {
            if done.contains(&c.id) {
                continue;
            }
            let deps_done = c
                .depends_on
                .iter()
                .all(|d| done.contains(d) || fleet.composition(d).is_none());
            if deps_done {
                done.insert(&c.id);
                out.push(*c);
            }
        }
        if out.len() == before {
            out.extend(all.iter().filter(|c| !done.contains(&c.id)).copied());
            break;
        }
    }
    out
}

/// SHA-256 of everything synthesis reads for `comp`: its own inputs, the
/// synthesizer's definition and the files it renders from. Equal keys mean
/// equal renders, so an unchanged composition is never rendered again.
fn input_key(
    snap: &Snapshot,
    fleet: &Fleet,
    comp: &Composition,
    cache: &mut HashMap<String, String>,
) -> String {
    let synth_key = cache
        .entry(comp.synthesizer.clone())
        .or_insert_with(|| {
            let mut h = Sha256::new();
            if let Some(s) = fleet.synthesizers.get(&comp.synthesizer) {
                let dir = match &s.kind {
                    SynthKind::Manifests { dir } => {
                        h.update(b"manifests\0");
                        dir.clone()
                    }
                    SynthKind::Command { argv } => {
                        h.update(b"command\0");
                        for a in argv {
                            h.update(a.as_bytes());
                            h.update([0]);
                        }
                        s.dir.clone()
                    }
                };
                for a in &s.artifacts {
                    h.update(format!("{}\0{}\0{:?}\0", a.name, a.sha256, a.size).as_bytes());
                }
                for (path, entry) in snap.under(&dir) {
                    h.update(path.as_bytes());
                    h.update([0]);
                    match entry {
                        Entry::File { data, executable } => {
                            h.update([*executable as u8]);
                            h.update(data);
                        }
                        Entry::Symlink { target } => h.update(target.as_bytes()),
                        Entry::Oversize { size } => h.update(size.to_le_bytes()),
                    }
                    h.update([0]);
                }
            }
            hex::encode(h.finalize())
        })
        .clone();
    let mut h = Sha256::new();
    h.update(synth_key.as_bytes());
    h.update(
        serde_json::to_vec(&(
            &comp.env,
            &comp.bindings,
            &comp.annotations,
            &comp.labels,
            &comp.synthesizer,
        ))
        .unwrap_or_default(),
    );
    hex::encode(h.finalize())
}

/// `summary.md`: what a person reads on the forge.
fn table(report: &BranchReport, summary: &str) -> String {
    let mut t = format!(
        "# {summary}\n\n| composition | state | digest | window | note |\n|---|---|---|---|---|\n"
    );
    for r in &report.rows {
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.id,
            r.state,
            r.digest.map(|d| d.short()).unwrap_or_default(),
            r.window.clone().unwrap_or_default(),
            r.note.replace('|', "\\|"),
        ));
    }
    if !report.symphonies.is_empty() {
        t.push_str("\n| symphony | ready | ready compositions |\n|---|---|---|\n");
        for (name, ready, desired) in &report.symphonies {
            t.push_str(&format!(
                "| {name} | {} | {ready}/{desired} |\n",
                if ready == desired { "yes" } else { "no" }
            ));
        }
    }
    for e in &report.errors {
        t.push_str(&format!("\n- error: {}", e.replace('|', "\\|")));
    }
    t
}
