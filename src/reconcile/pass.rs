//! One reconcile pass over one branch: load, render what changed, stage,
//! apply what the plan allows, report. Ordered like Flux's reconcilers: each
//! step only runs on what the previous one produced, and a failure stays
//! with the composition it belongs to.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};

use super::ahead::{self, Fetched, IoDone};
use super::annotations;
use super::central::{self, Central};
use super::context::{Context, SetupError};
use super::outcome::{CompositionError, CompositionOutcome, Phase};
use super::plan::prune::{decide_prune, Prune, PruneFacts};
use super::plan::removal::{decide_removal, Removal, RemovalFacts};
use super::plan::rollout::{self, Rollout};
use super::plan::{self, Apply, Facts, Reason};
use super::pulls::Planner;
use super::requests::{Recorded, Requests};
use super::state::{
    Head, PendingWrite, Persisted, RecordKey, RemovedStatus, RenderRecord, StateLoad, StateView,
};
use super::Settings;
use crate::model::types::Strategy;
use crate::model::wellknown::{self, ORPHANED_FROM};
use crate::model::{self, Composition, CompositionId, Digest, Fleet, SynthKind, TargetKind};
use crate::report::{
    table, ActionKind, BranchReport, ErrorCode, PlanDetail, PlannedArtifact, WindowInfo,
};
use crate::source::{
    Entry, Revision, SignaturePolicy, Signer, Snapshot, SourceError, UntrustedCommit,
};
use crate::status::{
    summarize, Condition, DeploymentStatus, Durable, Override, State, StatusBody, StatusMetadata,
    StatusSink, StatusUpdate, WindowStatus,
};
use crate::synth::Rendered;
use crate::target::{
    Desired, Health, MetadataChange, Observed, SourceRef, StateGoal, Switch, Target, TargetError,
    Targets,
};
use crate::window::Clock;

/// What a reconciler keeps between passes only to do less: each is
/// rebuilt by a full pass, so losing them costs time, never correctness.
#[derive(Default)]
struct Caches {
    /// Branches whose last pass left nothing to do, with that revision: an
    /// unchanged commit then costs no load, no render, no target read.
    settled: HashMap<String, (Revision, std::time::Instant)>,
    /// What each composition's target held after the last pass, while it was
    /// Ready: an unchanged one is not read again until the next resync.
    observed: HashMap<RecordKey, Observed>,
    /// When each branch last read every target in full.
    resynced: HashMap<String, std::time::Instant>,
    /// Branches past their first pass in this process (or unsettled by an
    /// operator record): only a first pass may stand on `persisted.settled`.
    started: HashSet<String>,
    /// The last commit loaded, as the pass used it: a window's opening (or a
    /// resync) passes the revision staging already parsed, and a commit's
    /// files do not change. One: when another commit is loaded, this one is
    /// freed on the blocking pool while the new one is parsed.
    loaded: Option<LoadedRev>,
    /// Keep nothing in `loaded`: central mode's site agents, many in one
    /// process, would each hold their own copy of the commit between passes.
    forget_loaded: bool,
}

/// A commit as a pass uses it: its snapshot, what this process places of
/// it, its load errors and the files whose objects are unknown.
type Parsed = (
    Arc<Snapshot>,
    Arc<Fleet>,
    Vec<model::Diagnostic>,
    BTreeMap<String, model::Diagnostic>,
);

/// A loaded commit kept for the next pass on the same revision.
struct LoadedRev {
    branch: String,
    rev: Revision,
    snap: Arc<Snapshot>,
    fleet: Arc<Fleet>,
    errors: Vec<model::Diagnostic>,
}

/// Everything one fermata instance needs across passes.
pub struct Reconciler {
    pub ctx: Context,
    /// What the state directory remembers (loading in the background in a
    /// fresh process: the first use waits for it).
    pub persisted: StateLoad,
    /// What a restart's first pass reads in place of the whole state while
    /// it loads; dropped at the first save.
    head: Option<Head>,
    /// Restarts' stat checks of settled branches, running in the background.
    background: Vec<Background>,
    /// Woken when a background check finds the targets changed (`fermata
    /// run`'s loop: a full pass at once rather than at the next interval).
    drift_wake: Option<tokio::sync::mpsc::Sender<&'static str>>,
    caches: Caches,
    /// The last fetch error, shown in every status until a fetch succeeds.
    pub fetch_error: Option<String>,
    /// Plan only (`fermata plan`): decide everything, write nothing, anywhere.
    dry_run: bool,
    /// Reconcile this revision instead of the branch head (`plan --rev`).
    revision: Option<String>,
    /// Whether `command:` synthesizers may run. Off for commits that are
    /// not on a watched branch (pull request heads) unless
    /// `--trust-pr-commands`: a plan must not run code nobody merged.
    allow_commands: bool,
    /// Commit statuses, pull request plans and plan notes (`None`: off).
    pub pulls: Option<Arc<super::pulls::PullSettings>>,
    /// Whether this replica may write (`--leader-elect`); always, without election.
    pub leadership: crate::leader::Leadership,
    /// Where `ungate` and `apply-now` record, and what they recorded as of
    /// this pass.
    requests: Requests,
    recorded: Recorded,
    /// Central mode: the agent of every site (empty without Site objects,
    /// and for a site agent).
    central: Central<Reconciler>,
}

/// What one branch's pass works on, once its commit is loaded.
struct Pass {
    source: SourceRef,
    rev: Revision,
    /// The pass's instant, for what status shows; windows are judged at
    /// each write with the clock, not with this.
    now: DateTime<Utc>,
    snap: Arc<Snapshot>,
    fleet: Arc<Fleet>,
    /// Every load error of the commit.
    errors: Vec<model::Diagnostic>,
    /// Files whose objects are unknown (see [`model::Loaded::unreadable`]).
    unreadable: BTreeMap<String, model::Diagnostic>,
    /// Targets are read in full this pass, whatever the caches say.
    resync: bool,
    /// The branch was force-pushed over this revision.
    forced: Option<Revision>,
}

/// What a [`Reconciler`]'s passes do ([`Reconciler::set_mode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Stage, apply, remove and report: `fermata run`.
    Reconcile,
    /// Decide and report, write nothing (`fermata plan`, pull requests);
    /// of `revision` instead of each branch's head, if given.
    Plan { revision: Option<String> },
}

/// Why a pass may not write ([`Reconciler::may_write`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hold {
    /// A plan (`fermata plan`, a pull request): decide, write nothing.
    Plan,
    /// `--leader-elect`: another replica writes.
    NotLeading,
}

/// What the removal steps of a pass share.
struct Scope<'a> {
    fleet: &'a Fleet,
    /// Symphonies kept although not loaded: their dependencies stay.
    held: &'a HashSet<String>,
    source: &'a SourceRef,
    now: DateTime<Utc>,
}

/// A restart's stat check running in the background.
struct Background {
    branch: String,
    task: tokio::task::JoinHandle<bool>,
}

/// What a composition's target should still hold: where, which, what.
type AppliedItems = Vec<(TargetKind, CompositionId, Digest)>;

/// What a background check reads the applied states from.
enum Applied {
    /// The state, still loading.
    Loading(StateView),
    /// Read out already (`None`: a record without its Target's definition).
    Known(Option<AppliedItems>),
}

/// What `branch`'s records say is applied; `None` if one does not say where.
fn applied_of(p: &Persisted, branch: &str) -> Option<AppliedItems> {
    p.renders
        .iter()
        .filter(|(k, _)| k.branch == branch)
        .map(|(k, rec)| Some((rec.target_kind.clone()?, k.id.clone(), rec.digest)))
        .collect()
}

/// Whether every target still holds what `applied` says, by `stat`
/// ([`Target::unchanged`]), one call per target.
async fn targets_unchanged(targets: &dyn Targets, applied: AppliedItems) -> bool {
    type Of = Vec<(CompositionId, Digest)>;
    let mut by_target: Vec<(Arc<dyn Target>, Of)> = Vec::new();
    for (kind, id, digest) in applied {
        let target = targets.get(&kind);
        match by_target.iter_mut().find(|(t, _)| Arc::ptr_eq(t, &target)) {
            Some((_, items)) => items.push((id, digest)),
            None => by_target.push((target, vec![(id, digest)])),
        }
    }
    for (target, items) in by_target {
        if !target.unchanged(&items).await.into_iter().all(|u| u) {
            return false;
        }
    }
    true
}

/// An apply waiting to run in a batch ([`Target::apply_staged`]).
struct Deferred {
    /// Its place in the pass's work.
    index: usize,
    target: Arc<dyn Target>,
    switch: Switch,
    overridden: bool,
}

/// How long a switch may wait in its pass's batch for others to join it.
const BATCH_AGE: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// What [`Reconciler::execute`] leaves to run: a switch to a staged state
/// for its target's batch, or a composition's own target I/O.
enum Exec {
    Batch(Deferred),
    Io(TargetIo),
}

/// A composition's [`Work`] before its target is read: [`Reconciler::desire`]
/// reads the targets, `apply_concurrency` at a time, between
/// [`Reconciler::prepare`] and [`Reconciler::desired`].
struct Prepared {
    work: Work,
    /// The render record and the base input key, unless the work is done
    /// (failed or not placed here).
    next: Option<(Option<RenderRecord>, String)>,
    /// Whether the target must be read (no memo of it holds).
    read: bool,
}

impl Prepared {
    fn done(work: Work) -> Self {
        Prepared {
            work,
            next: None,
            read: false,
        }
    }
}

/// The work on one composition during a pass.
struct Work {
    comp: Composition,
    target: Option<Arc<dyn Target>>,
    record_key: RecordKey,
    digest: Option<Digest>,
    components: Vec<String>,
    rendered: Option<Arc<Rendered>>,
    /// The commit that last changed this composition's desired state.
    since: Option<String>,
    observed: Observed,
    error: Option<CompositionError>,
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
    /// Rendered again for new inputs: the digest and commit it had, kept
    /// as `since` if the rendering comes out the same.
    unchanged_since: Option<(Digest, Option<String>)>,
}

impl Work {
    /// Nothing known yet of `comp` but what the commit says.
    fn new(comp: Composition, record_key: RecordKey) -> Work {
        Work {
            comp,
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
            unchanged_since: None,
        }
    }

    /// A composition known only from what was last rendered for it: one whose
    /// symphony failed to load, or that was removed from the branch.
    fn from_record(key: RecordKey, rec: &RenderRecord) -> Work {
        let id = key.id.clone();
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
                site: None,
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
            unchanged_since: None,
        }
    }

    fn ready(&self) -> bool {
        self.error.is_none()
            && self.digest.is_some()
            && self.observed.applied == self.digest
            && !matches!(self.observed.health, Some(Health::Unhealthy(_)))
    }

    /// Reads what its target holds now; a target that cannot be read
    /// fails the composition.
    async fn read_from(&mut self, target: &dyn Target) {
        match target.get(&self.comp.id).await {
            Ok(o) => self.observed = o,
            Err(e) => self.fail(
                ErrorCode::TargetUnavailable,
                self.comp.target.clone(),
                e.to_string(),
            ),
        }
    }

    /// In a word or two, as one waiting on it reads it: `failed`, `staged,
    /// WindowClosed`, `installed, not Ready`.
    fn came_to(&self) -> String {
        if self.error.is_some() {
            return "failed".to_string();
        }
        let word = if self.digest.is_some() && self.observed.applied == self.digest {
            if self.ready() {
                return "Ready".to_string();
            }
            "installed, not Ready"
        } else if self.digest.is_some() && self.observed.staged == self.digest {
            "staged"
        } else {
            "pending"
        };
        match self.waiting {
            Some(r) if word != "installed, not Ready" => format!("{word}, {r}"),
            _ => word.to_string(),
        }
    }

    /// What became of it, as the pass left it: `state` as its status says.
    fn outcome(&self, state: State, window: Option<String>) -> CompositionOutcome {
        CompositionOutcome {
            id: self.comp.id.clone(),
            phase: Phase::Active,
            state,
            digest: self.digest,
            window,
            error: self.error.clone(),
            waiting: self.waiting,
            message: match (&self.overridden, self.waiting) {
                (Some(_), _) => "applied outside its window (apply-now)".to_string(),
                (None, Some(r)) if !self.waiting_message.is_empty() => {
                    format!("{r}: {}", self.waiting_message)
                }
                (None, _) => String::new(),
            },
            action: self.action,
        }
    }

    fn fail(&mut self, code: ErrorCode, source: impl Into<String>, message: impl Into<String>) {
        self.error = Some(CompositionError::new(code, source, message));
    }
}

/// The status message of a rolled-back state: the cause, and that the state
/// before it is what is applied (its digest is status's `applied`).
fn rolled_back(cause: &str) -> String {
    format!("{cause}; rolled back: the previous applied state is applied again")
}

/// Targets are read in full at least this often, even on a settled branch,
/// so drift on a target (a deleted file, a changed symlink) does not stay.
/// Measured on the monotonic clock: a fixed `--now` must not stop it.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(600);

impl Reconciler {
    pub fn new(settings: Settings, clock: Arc<dyn Clock>) -> Result<Reconciler, SetupError> {
        Ok(Reconciler::with_context(Context::new(settings, clock)?))
    }

    /// A reconciler on `ctx`, with what the state directory remembers.
    pub fn with_context(ctx: Context) -> Reconciler {
        let persisted = StateLoad::start(&ctx.settings.state_dir);
        let head = Head::load(&ctx.settings.state_dir);
        let requests = Requests::new(&ctx.settings.state_dir);
        let mut central = Central::default();
        let sites_read = head.as_ref().and_then(|h| h.sites_read.as_ref());
        if let Some((rev, sites)) = sites_read {
            if let Ok(oid) = git2::Oid::from_str(rev) {
                central.remember(Revision(oid), sites.clone());
            }
        }
        Reconciler {
            caches: Caches::default(),
            ctx,
            persisted,
            head,
            background: Vec::new(),
            drift_wake: None,
            fetch_error: None,
            dry_run: false,
            revision: None,
            allow_commands: true,
            pulls: None,
            leadership: crate::leader::Leadership::always(),
            requests,
            recorded: Recorded::default(),
            central,
        }
    }

    /// Fetches the remote; on failure the last good revisions stay in use.
    pub async fn fetch(&mut self) -> Result<(), SourceError> {
        let result = self.ctx.source.fetch().await;
        match &result {
            Ok(()) => {
                if self.fetch_error.take().is_some() {
                    // Statuses carried the error: they must be rewritten.
                    self.caches.settled.clear();
                }
            }
            Err(e) => {
                // The whole chain: git's own reason is what a person needs.
                let msg = crate::errors::chain(e);
                if self.fetch_error.as_deref() != Some(msg.as_str()) {
                    self.caches.settled.clear();
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
            ctx: self.ctx.clone(),
            persisted: StateLoad::ready(Persisted::clone(&self.persisted), None),
            head: None,
            background: Vec::new(),
            drift_wake: None,
            caches: Caches::default(),
            fetch_error: None,
            dry_run: true,
            revision: Some(revision.to_string()),
            allow_commands,
            pulls: None,
            leadership: crate::leader::Leadership::always(),
            requests: self.requests.clone(),
            recorded: self.recorded.clone(),
            central: Central::default(),
        }
    }

    /// Moves ungates and overrides that an older fermata kept in
    /// `state.json` into the request folder, where nothing overwrites them.
    fn migrate_requests(&mut self) {
        use super::requests::Request;
        let ungated = std::mem::take(&mut self.persisted.ungated);
        let overrides = std::mem::take(&mut self.persisted.overrides);
        let requests = ungated
            .into_iter()
            .flat_map(|(composition, lifts)| {
                lifts.into_iter().map(move |ungate| Request::Ungate {
                    composition: composition.clone(),
                    ungate,
                })
            })
            .chain(
                overrides
                    .into_iter()
                    .map(|(composition, grant)| Request::ApplyNow { composition, grant }),
            );
        for req in requests {
            if let Err(e) = self.requests.record(&req) {
                tracing::error!(error = %e, "cannot move an operator record out of state.json; kept there");
                match req {
                    Request::Ungate {
                        composition,
                        ungate,
                    } => self
                        .persisted
                        .ungated
                        .entry(composition)
                        .or_default()
                        .push(ungate),
                    Request::ApplyNow { composition, grant } => {
                        self.persisted.overrides.insert(composition, grant);
                    }
                    // state.json never held these.
                    Request::Rollback { .. } => {}
                }
            }
        }
    }

    /// The operator records this pass acts on.
    pub fn requests(&self) -> &super::requests::Requests {
        &self.requests
    }

    /// The records `site`'s agent acts on: in central mode each site agent
    /// has its own (`None`: this reconciler's own).
    pub fn requests_of(&self, site: Option<&str>) -> super::requests::Requests {
        match site {
            Some(site) if self.ctx.settings.site.is_none() => Requests::new(
                &super::central::site_state_dir(&self.ctx.settings.state_dir, site),
            ),
            _ => self.requests.clone(),
        }
    }

    /// One dry-run pass of `base` (at `revision`): what a plan shows.
    pub async fn plan_branch(&mut self, base: &str) -> BranchReport {
        self.pass_branch(base).await
    }

    /// The status branch writer (plan notes share its push logic).
    pub(super) fn status_sink(&self) -> Arc<dyn StatusSink> {
        self.ctx.status.clone()
    }

    /// Bytes of artifacts downloaded into the store by this process.
    /// Every first pass reads the targets in full, even on a commit the
    /// last process left settled: for a process that runs one pass only
    /// (`run --once`), which no later pass would check after.
    pub fn no_restart_shortcut(&mut self) {
        let branches = self.ctx.settings.branches.iter().cloned();
        self.caches.started.extend(branches);
    }

    /// The head that answers for the state while it still loads; `None`
    /// once it is loaded (or when no head is trusted): then read the state.
    fn head_while_loading(&self) -> Option<&Head> {
        self.head.as_ref().filter(|_| !self.persisted.is_ready())
    }

    /// Sends on `wake` when a restart's background stat check finds a
    /// target changed: the loop that passes on it then runs its full pass
    /// at once, not at the next interval.
    pub fn wake_on_drift(&mut self, wake: tokio::sync::mpsc::Sender<&'static str>) {
        self.drift_wake = Some(wake);
    }

    pub fn artifact_bytes(&self) -> u64 {
        self.ctx.store.bytes_written()
    }

    /// What the following passes do: reconcile, or plan (decide
    /// everything, write nothing anywhere), optionally of another revision
    /// than each branch's head.
    pub fn set_mode(&mut self, mode: Mode) {
        (self.dry_run, self.revision) = match mode {
            Mode::Reconcile => (false, None),
            Mode::Plan { revision } => (true, revision),
        };
    }

    /// The one place that knows whether this pass writes: a plan (a dry
    /// run) never does, and a replica that does not lead (any more) never
    /// does. Every write (to targets, status, state, operator records, the
    /// artifact store) asks here first, whatever its kind.
    pub(super) fn may_write(&self) -> Result<(), Hold> {
        if self.dry_run {
            Err(Hold::Plan)
        } else if !self.leadership.is_leader() {
            Err(Hold::NotLeading)
        } else {
            Ok(())
        }
    }

    /// A plan: decides and reports everything, writes nothing.
    fn planning(&self) -> bool {
        self.may_write() == Err(Hold::Plan)
    }

    /// Uses `targets` to resolve Target definitions (tests: fakes and
    /// decorators that watch every write).
    pub fn with_targets(mut self, targets: Arc<dyn Targets>) -> Reconciler {
        self.ctx.targets = targets;
        self
    }

    /// Forgets that branches are settled: the next pass is a full one.
    pub fn unsettle(&mut self) {
        self.caches.settled.clear();
        for agent in self.central.agents() {
            agent.unsettle();
        }
    }

    /// The Sites the first watched branch's commit defines (or fails to),
    /// read once per revision; `None` without Site objects. What cannot be
    /// read now keeps the sites known before.
    async fn fleet_sites(&mut self) -> Option<Vec<String>> {
        let branch = self.ctx.settings.branches.first()?;
        let refname = self
            .revision
            .clone()
            .unwrap_or_else(|| format!("refs/heads/{branch}"));
        let read = async {
            let rev = self.ctx.source.resolve(&refname).await.ok()?;
            if let Some(known) = self.central.known(rev) {
                return Some((rev, known.to_vec(), false));
            }
            let snap = self.ctx.source.snapshot(rev).await.ok()?;
            // A Site object's file says `Site`: most repositories have
            // none, and then this costs a scan, not a second load.
            if !may_define_sites(&snap) {
                return Some((rev, Vec::new(), false));
            }
            let path = self.ctx.settings.path.clone();
            let loaded = tokio::task::spawn_blocking(move || model::load(&snap, &path))
                .await
                .ok()?;
            let fleet = &loaded.fleet;
            let sites: Vec<String> = fleet
                .sites
                .keys()
                .chain(fleet.failed_sites.keys())
                .cloned()
                .collect();
            Some((rev, sites, !loaded.unreadable.is_empty()))
        };
        match read.await {
            Some((rev, sites, false)) => {
                self.central.remember(rev, sites.clone());
                // Kept for a restart; read from the head while the state
                // loads, so a restart's first pass does not wait for it.
                let read = Some((rev.to_string(), sites.clone()));
                let kept = match self.head_while_loading() {
                    Some(head) => head.sites_read == read,
                    None => self.persisted.sites_read == read,
                };
                if !kept {
                    self.persisted.sites_read = read;
                }
                (!sites.is_empty()).then_some(sites)
            }
            // Unknown now: the sites known before, if any.
            _ => self.central.last().filter(|s| !s.is_empty()),
        }
    }

    /// Central mode: every site's pass, as its agent would run it.
    async fn central_pass(&mut self, sites: Vec<String>) -> Vec<BranchReport> {
        let mut out = Vec::new();
        for site in sites {
            if self.may_write() == Err(Hold::NotLeading) {
                break;
            }
            let ctx = central::site_context(&self.ctx, &site);
            let agent = self.central.agent(&site, || Reconciler::with_context(ctx));
            agent.leadership = self.leadership.clone();
            agent.dry_run = self.dry_run;
            agent.revision = self.revision.clone();
            agent.allow_commands = self.allow_commands;
            agent.fetch_error = self.fetch_error.clone();
            agent.drift_wake = self.drift_wake.clone();
            agent.caches.forget_loaded = true;
            let reports = Box::pin(agent.pass()).await;
            out.extend(central::of_site(&site, reports));
        }
        out
    }

    /// One pass over every branch.
    pub async fn pass(&mut self) -> Vec<BranchReport> {
        self.take_background().await;
        if self.ctx.settings.site.is_none() {
            if let Some(sites) = self.fleet_sites().await {
                return self.central_pass(sites).await;
            }
        }
        // A trusted head that says state.json holds no operator records
        // spares waiting for the whole state here.
        let may_hold_requests = self.head_while_loading().is_none_or(|h| h.requests);
        if self.may_write().is_ok() && may_hold_requests {
            self.migrate_requests();
        }
        // Operator records are read every pass: a new one (written by
        // `ungate` or `apply-now` beside a running daemon) unsettles every
        // branch, so it is acted on now, not at the next resync.
        let recorded = self.requests.load();
        if recorded != self.recorded {
            self.caches.settled.clear();
            let branches = self.ctx.settings.branches.iter().cloned();
            self.caches.started.extend(branches);
            self.recorded = recorded;
        }
        let mut out = Vec::new();
        for branch in self.ctx.settings.branches.clone() {
            // A replica that does not lead (or no longer does) writes nothing.
            if self.may_write() == Err(Hold::NotLeading) {
                tracing::debug!("not leading: standing by");
                break;
            }
            out.push(self.pass_branch(&branch).await);
        }
        if self.may_write().is_ok() {
            for name in self.recorded.superseded() {
                if let Err(e) = self.requests.forget(name) {
                    tracing::warn!(error = %e, file = name, "cannot forget a superseded operator record");
                }
            }
        }
        let reported = self.may_write().is_ok() && self.report_back(&out).await;
        // A pass that changed nothing must write nothing, not even its cache;
        // one that did nothing at all need not even look.
        if self.may_write().is_ok() && (reported || !out.iter().all(|b| b.unchanged)) {
            match self.persisted.serialized() {
                Ok((_, digest)) if self.persisted.saved() == Some(digest) => {}
                Ok((bytes, digest)) => {
                    self.head = None;
                    match self
                        .persisted
                        .save_all(&self.ctx.settings.state_dir, &bytes)
                    {
                        Ok(()) => self.persisted.set_saved(digest),
                        Err(e) => tracing::error!(error = %e, "cannot save state"),
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot save state"),
            }
        }
        out
    }

    /// One branch, as Flux's reconcilers do it: ordered steps, each running
    /// only on what the previous one produced. A step that ends the pass
    /// early (branch gone, settled, untrusted, unloadable) returns `None`.
    #[tracing::instrument(skip_all, fields(branch = %branch))]
    async fn pass_branch(&mut self, branch: &str) -> BranchReport {
        let mut report = BranchReport {
            branch: branch.to_string(),
            ..BranchReport::default()
        };
        let now = self.ctx.clock.now();
        let started = std::time::Instant::now();
        let lap = |step: &str| {
            tracing::debug!(
                ms = started.elapsed().as_millis() as u64,
                step,
                "pass step done"
            )
        };
        let Some(rev) = self.resolve(branch, &mut report).await else {
            return report;
        };
        if self.is_settled(branch, rev) {
            report.unchanged = true;
            return report;
        }
        if self.settled_before_restart(branch, rev) {
            // The targets' stat is checked in the background; the full
            // check is the next pass's (a resync: content read).
            tracing::info!(%rev, "settled before the restart: checking the targets' stat in the background");
            report.unchanged = true;
            return report;
        }
        // Invariant 8, before anything of the commit is read. A settled
        // revision passed it already: the policy is fixed for the process.
        match self.verify(rev, now).await {
            Ok(Signer::Unchecked) => {}
            Ok(signer) => tracing::debug!(%rev, ?signer, "commit trusted"),
            Err(why) => return self.refuse_untrusted(branch, rev, why, now, report).await,
        }
        let Some(mut pass) = self.load(branch, rev, now, &mut report).await else {
            return report;
        };
        lap("load");
        let fetched = Arc::new(self.fetch_artifacts(&pass).await);
        lap("artifacts");
        let mut work = self.desire(&pass).await;
        lap("desire");
        // Phase 1 of the annotation protocol: prunes, before any set.
        let holds = self.prune_phase(&mut work, &pass.fleet, &mut report).await;
        self.roll_out(&pass, &mut work, &holds, &fetched, &mut report)
            .await;
        self.roll_back(&pass.fleet, &mut work).await;
        lap("roll out");
        let mut used: Vec<Arc<dyn Target>> = Vec::new();
        for t in work.iter().filter_map(|w| w.target.as_ref()) {
            if !used.iter().any(|u| Arc::ptr_eq(u, t)) {
                used.push(t.clone());
            }
        }
        let compositions_done = work
            .iter()
            .all(|w| w.error.is_none() && (w.ready() || w.waiting == Some(Reason::GatePresent)));
        let mut statuses = self.observe_statuses(&pass, work, &mut report);
        let held = self
            .hold_unloaded(&mut pass, &mut statuses, &mut report)
            .await;
        self.adopt_untracked(&pass).await;
        self.removals(
            &pass.fleet,
            &held,
            &pass.source,
            now,
            &mut statuses,
            &mut report,
        )
        .await;
        self.symphony_readiness(&pass.fleet, &mut statuses, &mut report);
        self.stamp_all(branch, &mut statuses, now);
        lap("statuses");
        self.report_status(&pass, statuses, &used, &mut report)
            .await;
        lap("status written");
        // Also when nothing was published.
        durable(&used).await;
        if self.may_write().is_ok() {
            for t in used {
                if let Err(e) = t.checkpoint().await {
                    tracing::warn!(error = %e, "cannot write the target's index");
                }
            }
        }
        let settled = plan::settled(&plan::BranchFacts {
            compositions_done,
            removing: report.rows.iter().any(|r| r.state == State::Removing),
            writes_pending: self
                .persisted
                .orphan_writes
                .keys()
                .chain(self.persisted.retiring.keys())
                .any(|k| k.branch == branch),
            load_errors: !held.is_empty(),
            fetch_failed: self.fetch_error.is_some(),
            errors: !report.errors.is_empty(),
        });
        if settled {
            self.caches
                .settled
                .insert(branch.to_string(), (rev, std::time::Instant::now()));
            self.persisted
                .settled
                .insert(branch.to_string(), rev.to_string());
        } else {
            self.caches.settled.remove(branch);
            self.persisted.settled.remove(branch);
        }
        report
    }

    /// A fresh process's first pass on a branch whose last pass (before the
    /// restart) left nothing to do at `rev`: that pass is skipped, and
    /// whether every composition's target still holds exactly what was
    /// applied is checked in the background, by a cheap check (`stat`, as
    /// git's index does); drift found wakes the loop ([`Self::drift_wake`]).
    /// The next pass reads everything in full (a resync) in any case. Once
    /// per branch and process. While the state loads, a trusted [`Head`]
    /// answers for it.
    fn settled_before_restart(&mut self, branch: &str, rev: Revision) -> bool {
        if !self.caches.started.insert(branch.to_string())
            || self.fetch_error.is_some()
            || self.planning()
        {
            return false;
        }
        let rev = rev.to_string();
        let settled = match self.head_while_loading() {
            Some(head) => head.settled.get(branch) == Some(&rev) && !head.pending.contains(branch),
            None => {
                let p = &self.persisted;
                p.settled.get(branch) == Some(&rev)
                    && !p.orphan_writes.keys().any(|k| k.branch == branch)
                    && !p.retiring.keys().any(|k| k.branch == branch)
            }
        };
        if !settled {
            return false;
        }
        let state = match self.persisted.view() {
            Some(view) => Applied::Loading(view),
            None => Applied::Known(applied_of(&self.persisted, branch)),
        };
        let (targets, wake, of) = (
            self.ctx.targets.clone(),
            self.drift_wake.clone(),
            branch.to_string(),
        );
        let task = tokio::spawn(async move {
            let applied = match state {
                Applied::Known(applied) => applied,
                Applied::Loading(view) => {
                    let of = of.clone();
                    // The head answered for the state: the state must agree
                    // (one set aside as unreadable does not), or it is a change.
                    tokio::task::spawn_blocking(move || {
                        let p = view.wait();
                        (p.settled.get(&of) == Some(&rev))
                            .then(|| applied_of(p, &of))
                            .flatten()
                    })
                    .await
                    .ok()
                    .flatten()
                }
            };
            let unchanged = match applied {
                Some(applied) => targets_unchanged(&*targets, applied).await,
                // A record without its Target's definition: not checked.
                None => false,
            };
            if !unchanged {
                tracing::info!(branch = %of, "targets changed since before the restart: a full pass");
                if let Some(wake) = wake {
                    // Full: a wake-up is pending already.
                    let _ = wake.try_send("targets changed since before the restart");
                }
            }
            unchanged
        });
        self.background.push(Background {
            branch: branch.to_string(),
            task,
        });
        true
    }

    /// The outcome of restarts' background checks, at the start of a pass:
    /// one still running is superseded by this pass, which reads every
    /// target of its branch in full (the first after the shortcut does).
    async fn take_background(&mut self) {
        for bg in std::mem::take(&mut self.background) {
            if !bg.task.is_finished() {
                tracing::debug!(branch = %bg.branch, "background stat check superseded by a full pass");
                bg.task.abort();
                continue;
            }
            match bg.task.await {
                Ok(true) => {
                    tracing::debug!(branch = %bg.branch, "targets stat unchanged since before the restart")
                }
                Ok(false) => {
                    tracing::info!(branch = %bg.branch, "drift since before the restart: reading the targets in full");
                    self.caches.settled.remove(&bg.branch);
                }
                Err(e) => {
                    tracing::debug!(branch = %bg.branch, error = %e, "background stat check did not finish")
                }
            }
        }
    }

    /// Waits for restarts' background stat checks (this reconciler's and
    /// its site agents'): whether every target stat unchanged (`None`: no
    /// check ran). A check that failed to finish counts as a change. The
    /// next pass reads in full either way; this is for whoever must know
    /// now (benchmarks, tests).
    pub async fn settle_background(&mut self) -> Option<bool> {
        let mut all = None;
        for bg in std::mem::take(&mut self.background) {
            let unchanged = bg.task.await.unwrap_or(false);
            if !unchanged {
                self.caches.settled.remove(&bg.branch);
            }
            all = Some(all.unwrap_or(true) && unchanged);
        }
        for agent in self.central.agents() {
            if let Some(u) = Box::pin(agent.settle_background()).await {
                all = Some(all.unwrap_or(true) && u);
            }
        }
        all
    }

    /// Resolves the branch (or `plan --rev`) to a commit. A branch that is
    /// gone applies nothing and deletes nothing: the report says so.
    async fn resolve(&self, branch: &str, report: &mut BranchReport) -> Option<Revision> {
        let refname = self
            .revision
            .clone()
            .unwrap_or_else(|| format!("refs/heads/{branch}"));
        match self.ctx.source.resolve(&refname).await {
            Ok(rev) => {
                report.revision = Some(rev);
                if let Some(e) = &self.fetch_error {
                    report.errors.push(format!(
                        "fetch failed; reconciling the last good revision {}: {e}",
                        rev.short()
                    ));
                }
                Some(rev)
            }
            Err(e) => {
                // A deleted branch applies nothing and deletes nothing; nor
                // does one that cannot be read (out of file descriptors, say),
                // and the error says which it was.
                let missing = matches!(&e, SourceError::Resolve { source, .. } if source.code() == git2::ErrorCode::NotFound);
                let why = crate::errors::chain(&e);
                tracing::warn!(error = %why, "branch not resolved: nothing applied, nothing deleted");
                report.errors.push(if missing {
                    format!("branch {branch} not found: applying nothing, deleting nothing")
                } else {
                    format!(
                        "branch {branch} cannot be read: {why}: applying nothing, deleting nothing"
                    )
                });
                None
            }
        }
    }

    /// Whether `rev` was reconciled to completion on `branch` recently
    /// enough that this pass need not even look.
    fn is_settled(&self, branch: &str, rev: Revision) -> bool {
        self.caches
            .settled
            .get(branch)
            .is_some_and(|(r, at)| *r == rev && at.elapsed() < RESYNC)
    }

    /// Reads the commit and loads its objects. Also notes whether targets
    /// are due a full read (resync) and whether the branch was force-pushed.
    async fn load(
        &mut self,
        branch: &str,
        rev: Revision,
        now: DateTime<Utc>,
        report: &mut BranchReport,
    ) -> Option<Pass> {
        let (kept, stale) = match self.caches.loaded.take() {
            Some(k) if k.branch == branch && k.rev == rev => (Some(k), None),
            other => (None, other),
        };
        if let Some(stale) = stale {
            // Freeing ten thousand compositions' objects takes 60 ms: not
            // on the pass's time (before this cache, the pass that used them
            // freed them at its end).
            tokio::task::spawn_blocking(move || drop(stale));
        }
        let (snap, fleet, errors, unreadable) = match kept {
            Some(k) => (k.snap, k.fleet, k.errors, BTreeMap::new()),
            None => self.parse(rev, report).await?,
        };
        // Kept only whole: objects unknown this pass may be fetched by the next.
        if unreadable.is_empty() && !self.caches.forget_loaded {
            self.caches.loaded = Some(LoadedRev {
                branch: branch.to_string(),
                rev,
                snap: snap.clone(),
                fleet: fleet.clone(),
                errors: errors.clone(),
            });
        }
        let resync = self
            .caches
            .resynced
            .get(branch)
            .is_none_or(|at| at.elapsed() >= RESYNC);
        if resync {
            self.caches
                .resynced
                .insert(branch.to_string(), std::time::Instant::now());
        }
        let old = self
            .persisted
            .revisions
            .get(branch)
            .and_then(|p| git2::Oid::from_str(p).ok())
            .map(Revision)
            .filter(|old| *old != rev);
        let forced = match old {
            Some(old) if !self.ctx.source.is_descendant(rev, old).await => Some(old),
            _ => None,
        };
        if let Some(old) = forced {
            tracing::warn!(from = %old, to = %rev, "branch was force-pushed");
        }
        Some(Pass {
            source: SourceRef {
                branch: branch.to_string(),
                commit: rev.to_string(),
            },
            rev,
            now,
            snap,
            fleet,
            errors,
            unreadable,
            resync,
            forced,
        })
    }

    /// Parses `rev` for this process's site; `None` (said in `report`) when
    /// it cannot be used at all.
    async fn parse(&mut self, rev: Revision, report: &mut BranchReport) -> Option<Parsed> {
        let path = self.ctx.settings.path.clone();
        let loaded = match self.ctx.source.snapshot(rev).await {
            // Parsing a large tree is CPU work: off the runtime too.
            Ok(snap) => tokio::task::spawn_blocking(move || {
                let loaded = model::load(&snap, &path);
                (Arc::new(snap), loaded)
            })
            .await
            .map_err(join_error),
            Err(e) => Err(e),
        };
        let (snap, mut loaded) = match loaded {
            Ok(x) => x,
            Err(e) => {
                report.errors.push(format!("{e:#}"));
                return None;
            }
        };
        if self.ctx.settings.site.is_none() && loaded.fleet.has_sites() {
            // Sites the quick check missed: never reconcile a fleet of
            // sites as one site. From the next pass, it is central mode.
            let sites = loaded
                .fleet
                .sites
                .keys()
                .chain(loaded.fleet.failed_sites.keys());
            self.central.remember(rev, sites.cloned().collect());
            report.errors.push(
                "the repository defines Sites: reconciled per site from the next pass".into(),
            );
            return None;
        }
        let unreadable = !loaded.unreadable.is_empty();
        match self.placed(std::mem::take(&mut loaded.fleet), unreadable) {
            Ok(fleet) => loaded.fleet = fleet,
            Err(e) => {
                // A Site gone (or broken) is not "nothing placed here": a
                // typo must not delete a plant's deployments.
                report
                    .errors
                    .push(format!("{e}: applying nothing, deleting nothing"));
                return None;
            }
        }
        for e in &loaded.errors {
            tracing::warn!(error = %e, "invalid object");
        }
        Some((
            snap,
            Arc::new(loaded.fleet),
            loaded.errors,
            loaded.unreadable,
        ))
    }

    /// Artifacts first: they come from the synthesizers' definitions, and
    /// the store fetches only digests it lacks (one request per digest), so
    /// the compositions can then be rendered, staged and dropped one at a
    /// time instead of all held in memory at once. A plan lists artifacts,
    /// it does not download them.
    async fn fetch_artifacts(&self, pass: &Pass) -> Fetched {
        let mut needed: BTreeMap<Digest, model::Artifact> = BTreeMap::new();
        for comp in pass.fleet.compositions() {
            if let Some(s) = pass.fleet.synthesizers.get(&comp.synthesizer) {
                for a in &s.artifacts {
                    needed.entry(a.sha256).or_insert_with(|| a.clone());
                }
            }
        }
        let needed: Vec<model::Artifact> = needed.into_values().collect();
        if needed.is_empty() || self.may_write().is_err() {
            return BTreeMap::new();
        }
        self.ctx.store.fetch_all(&needed, &pass.snap).await
    }

    /// What is desired and what each target holds, dependencies first.
    ///
    /// In three steps: what each composition needs (pure but for the
    /// caches), then every target read it needs, each target's at once
    /// (`apply_concurrency` in flight, or the directory target's in one
    /// go: ten thousand reads one after another were most of a window
    /// opening's `desire`), then each composition's input key.
    async fn desire(&mut self, pass: &Pass) -> Vec<Work> {
        let mut synth_keys: HashMap<String, String> = HashMap::new();
        let mut prepared = Vec::new();
        for comp in ordered(&pass.fleet) {
            let p = self.prepare(
                &pass.source,
                &pass.snap,
                &pass.fleet,
                comp,
                &mut synth_keys,
                pass.resync,
            );
            prepared.push(p);
        }
        // Per target: which compositions (by index) it reads.
        let mut groups: Vec<(Arc<dyn Target>, Vec<usize>)> = Vec::new();
        for (i, p) in prepared.iter().enumerate() {
            let Some(target) = p.read.then_some(p.work.target.as_ref()).flatten() else {
                continue;
            };
            match groups.iter_mut().find(|(t, _)| Arc::ptr_eq(t, target)) {
                Some((_, at)) => at.push(i),
                None => groups.push((target.clone(), vec![i])),
            }
        }
        let ids: Vec<Vec<CompositionId>> = groups
            .iter()
            .map(|(_, at)| {
                at.iter()
                    .map(|&i| prepared[i].work.comp.id.clone())
                    .collect()
            })
            .collect();
        let limit = self.ctx.settings.apply_concurrency.max(1);
        let read = groups
            .iter()
            .zip(&ids)
            .map(|((target, _), ids)| target.read_all(ids, pass.resync, limit));
        let read = futures_util::future::join_all(read).await;
        let mut reads: Vec<Option<Result<Observed, TargetError>>> = std::iter::repeat_with(|| None)
            .take(prepared.len())
            .collect();
        for ((_, at), results) in groups.iter().zip(read) {
            for (&i, r) in at.iter().zip(results) {
                reads[i] = Some(r);
            }
        }
        prepared
            .into_iter()
            .zip(reads)
            .map(|(p, read)| Self::desired(&pass.source, p, read))
            .collect()
    }

    /// Per composition, in order: render if needed, decide (gates, prune
    /// holds, dependencies, rollout, window), then stage and apply what the
    /// decision allows. Sets each composition's action and waiting reason.
    ///
    /// The target writes of compositions of different symphonies overlap,
    /// at most `apply_concurrency` at once: a composition's decision waits
    /// only for those of its own symphony (list order, `OrderedReady`,
    /// `maxUnavailable`) and of its dependencies, so the order DESIGN.md
    /// sections 4 and 6 ask for holds, while a window opening over a
    /// thousand staged symphonies is not a thousand round trips in a row.
    async fn roll_out(
        &mut self,
        pass: &Pass,
        work: &mut [Work],
        holds: &HashMap<String, String>,
        fetched: &Arc<Fetched>,
        report: &mut BranchReport,
    ) {
        let fleet = &pass.fleet;
        let mut rollout = Rollout::default();
        // What each composition visited so far came to, for the message of
        // one waiting on it.
        let mut came_to: HashMap<CompositionId, String> = HashMap::new();
        let limit = self.ctx.settings.apply_concurrency.max(1);
        let mut inflight: futures_util::stream::FuturesUnordered<
            futures_util::future::BoxFuture<'static, (usize, IoDone)>,
        > = futures_util::stream::FuturesUnordered::new();
        // Index and composition of each write in flight.
        let mut busy: Vec<(usize, CompositionId)> = Vec::new();
        // Applies that switch a staged state, waiting to run as one batch
        // per target: independent of each other by construction, since one
        // that would wait for an earlier one runs the batch first.
        let mut batch: Vec<Deferred> = Vec::new();
        // When the oldest switch in the batch joined it: a batch older than
        // BATCH_AGE runs before the next decision, so a long pass keeps
        // applying while its window is open instead of staging everything
        // first and finding the window closed at the end.
        let mut batch_since: Option<DateTime<Utc>> = None;
        let mut ahead = Ahead::default();
        for i in 0..work.len() {
            if batch_since.is_some_and(|t| self.ctx.clock.now() - t >= BATCH_AGE) {
                self.run_batch(fleet, work, &mut batch, &mut rollout, &mut came_to)
                    .await;
                batch_since = None;
            }
            loop {
                let w = &work[i];
                let waits = busy.iter().any(|(_, id)| {
                    id.symphony == w.comp.id.symphony || w.comp.depends_on.contains(id)
                });
                if !waits && inflight.len() < limit {
                    break;
                }
                let Some((j, done)) = futures_util::StreamExt::next(&mut inflight).await else {
                    break;
                };
                busy.retain(|(k, _)| *k != j);
                let w = &mut work[j];
                done.apply_to(w);
                self.after_decision(w, fleet, holds, report);
                self.observe_one(w, &mut rollout, &mut came_to);
            }
            // This composition and the next `limit - 1` render and stage
            // while the roll out waits on earlier ones ([`ahead`]). Started
            // after the wait above, so that with a limit of 1 no two target
            // writes overlap.
            while ahead.next < work.len().min(i + limit) {
                let j = ahead.next;
                ahead.next += 1;
                if let Some(job) = self.ahead_job(&work[j], pass, fetched) {
                    let task = ahead.jobs.spawn(job.run());
                    ahead.index.insert(task.id(), j);
                }
            }
            let w = &mut work[i];
            let preparing = match ahead.take(i).await {
                Some(done) => self.took_ahead(w, fleet, &pass.source, done),
                None => {
                    if w.error.is_none() && w.digest.is_none() {
                        self.render(w, &pass.snap, fleet, &pass.source).await;
                    }
                    false
                }
            };
            if preparing {
                // Nothing to decide until the target has staged it.
                self.after_decision(w, fleet, holds, report);
                self.observe_one(w, &mut rollout, &mut came_to);
                continue;
            }
            let sym = fleet.symphonies.get(&w.comp.id.symphony);
            let admit = |rollout: &Rollout, w: &Work| {
                rollout.admit(
                    &w.comp.id,
                    &w.comp.depends_on,
                    sym.map(|s| s.rollout.strategy).unwrap_or_default(),
                    sym.map(|s| s.rollout.max_unavailable).unwrap_or(1),
                )
            };
            let mut admission = admit(&rollout, w);
            if (!admission.dependencies_ready || admission.wait.is_some()) && !batch.is_empty() {
                // It may wait only for what the batch holds: run it first.
                self.run_batch(fleet, work, &mut batch, &mut rollout, &mut came_to)
                    .await;
                batch_since = None;
                admission = admit(&rollout, &work[i]);
            }
            let w = &mut work[i];
            if w.error.is_none() {
                self.hold_rolled_back(w);
            }
            let window = w.comp.window.as_ref().and_then(|n| fleet.windows.get(n));
            let facts = Facts {
                desired: w.digest,
                applied: w.observed.applied,
                staged: w.observed.staged,
                gated: !w.comp.scheduling_gates.is_empty(),
                pruning: holds.contains_key(&w.comp.id.symphony),
                dependencies_ready: admission.dependencies_ready,
                rollout_wait: admission.wait,
                // The clock is read per composition, not once per pass: a
                // long pass must not start applies after the window closed.
                window_open: window.map(|mw| mw.window.is_open(self.ctx.clock.now())),
                override_digest: self
                    .recorded
                    .overrides
                    .get(&w.comp.id.to_string())
                    .and_then(|(_, o)| o.digest.parse().ok()),
            };
            if let Some(decision) = plan::decide(&facts).filter(|_| w.error.is_none()) {
                w.action = match decision.apply {
                    Apply::Done if w.ready() => None,
                    // Applied, not Ready yet (not healthy): nothing to do but wait.
                    Apply::Done => Some(ActionKind::Wait),
                    _ if w.observed.applied.is_none() => Some(ActionKind::Create),
                    _ => Some(ActionKind::Update),
                };
                match self
                    .execute(w, decision, &pass.snap, fleet, fetched, &pass.source)
                    .await
                {
                    Some(Exec::Batch(d)) => {
                        w.rendered = None;
                        rollout.observe(&w.comp.id, rollout::Outcome::InFlight);
                        batch_since.get_or_insert_with(|| self.ctx.clock.now());
                        batch.push(Deferred { index: i, ..d });
                        continue;
                    }
                    Some(Exec::Io(io)) => {
                        busy.push((i, w.comp.id.clone()));
                        inflight.push(Box::pin(async move { (i, io.run().await) }));
                        continue;
                    }
                    None => self.after_decision(w, fleet, holds, report),
                }
            }
            self.observe_one(w, &mut rollout, &mut came_to);
        }
        while let Some((j, done)) = futures_util::StreamExt::next(&mut inflight).await {
            let w = &mut work[j];
            done.apply_to(w);
            self.after_decision(w, fleet, holds, report);
            self.observe_one(w, &mut rollout, &mut came_to);
        }
        self.run_batch(fleet, work, &mut batch, &mut rollout, &mut came_to)
            .await;
    }

    /// The rendering and staging to start ahead for `w` (see [`ahead`]):
    /// none if it needs neither, or if it has a rollback on record (which
    /// may hold its desired state from the target: the roll out decides).
    fn ahead_job(&self, w: &Work, pass: &Pass, fetched: &Arc<Fetched>) -> Option<ahead::Job> {
        if w.error.is_some() || w.rendered.is_some() {
            return None;
        }
        if let Some(d) = w.digest {
            if w.observed.applied == Some(d) || w.observed.staged == Some(d) {
                return None;
            }
        }
        if self.command_not_run(&pass.fleet, &w.comp).is_some() {
            return None;
        }
        if self.recorded.rollbacks.contains_key(&w.comp.id.to_string())
            || self.persisted.rolled_back.contains_key(&w.record_key)
        {
            return None;
        }
        let stage = match (&w.target, self.may_write()) {
            (Some(target), Ok(())) => Some(ahead::StageTo {
                target: target.clone(),
                applied: w.observed.applied,
                staged: w.observed.staged,
                source: pass.source.clone(),
                store: self.ctx.store.clone(),
                fetched: fetched.clone(),
                leadership: self.leadership.clone(),
            }),
            _ => None,
        };
        Some(ahead::Job {
            render: self.render_job(w, &pass.snap, &pass.fleet),
            stage,
        })
    }

    /// Records what a job ahead came to on `w`. Whether it is still being
    /// staged (then nothing may be decided for it this pass).
    fn took_ahead(
        &mut self,
        w: &mut Work,
        fleet: &Fleet,
        source: &SourceRef,
        done: ahead::Done,
    ) -> bool {
        if !self.finish_render(w, fleet, source, done.render) {
            return false;
        }
        let Some(io) = done.staged else {
            return false;
        };
        let preparing = io.failed.is_none() && io.waiting.is_some();
        if preparing {
            w.action = Some(match w.observed.applied {
                None => ActionKind::Create,
                Some(_) => ActionKind::Update,
            });
        }
        io.apply_to(w);
        preparing
    }

    /// What follows a decision once its writes are done.
    fn after_decision(
        &mut self,
        w: &mut Work,
        fleet: &Fleet,
        holds: &HashMap<String, String>,
        report: &mut BranchReport,
    ) {
        if w.waiting == Some(Reason::PrunePending) {
            w.waiting_message = holds.get(&w.comp.id.symphony).cloned().unwrap_or_default();
        }
        w.rendered = None;
        self.note_override(w);
        let window = w.comp.window.as_ref().and_then(|n| fleet.windows.get(n));
        if let Some(next) = window
            .filter(|_| w.waiting == Some(Reason::WindowClosed))
            .and_then(|mw| mw.window.state_at(self.ctx.clock.now()).next_open)
        {
            report.wake_at(next);
        }
    }

    /// The composition's health and readiness, for the rollout of the
    /// compositions after it.
    fn observe_one(
        &mut self,
        w: &mut Work,
        rollout: &mut Rollout,
        came_to: &mut HashMap<CompositionId, String>,
    ) {
        if w.waiting == Some(Reason::WaitingOnDependency) {
            w.waiting_message = waiting_on(&w.comp.depends_on, rollout, came_to);
        }
        let outcome = self.conclude(w);
        rollout.observe(&w.comp.id, outcome);
        came_to.insert(w.comp.id.clone(), w.came_to());
    }

    /// Runs the batched applies, one `apply_staged` per target, and settles
    /// each as its own apply would have: the window judged again first
    /// (invariant 2), then what the target holds, then the rollout told.
    async fn run_batch(
        &mut self,
        fleet: &Fleet,
        work: &mut [Work],
        batch: &mut Vec<Deferred>,
        rollout: &mut Rollout,
        came_to: &mut HashMap<CompositionId, String>,
    ) {
        let mut by_target: Vec<(Arc<dyn Target>, Vec<Deferred>)> = Vec::new();
        for d in batch.drain(..) {
            let w = &mut work[d.index];
            let closed = !d.overridden
                && window_closed(fleet, w.comp.window.as_deref(), self.ctx.clock.now());
            if closed {
                w.waiting = Some(Reason::WindowClosed);
                // Every switch in a batch is of a state its target holds staged.
                w.observed.staged = Some(d.switch.digest);
            } else if self.may_write() == Err(Hold::NotLeading) {
                w.fail(
                    ErrorCode::NotLeader,
                    "",
                    "leadership lost during the pass: nothing written",
                );
            } else {
                match by_target
                    .iter_mut()
                    .find(|(t, _)| Arc::ptr_eq(t, &d.target))
                {
                    Some((_, items)) => items.push(d),
                    None => by_target.push((d.target.clone(), vec![d])),
                }
                continue;
            }
            self.note_override(w);
            let outcome = self.conclude(w);
            rollout.resolve(&w.comp.id, outcome);
            came_to.insert(w.comp.id.clone(), w.came_to());
        }
        for (target, items) in by_target {
            let switches: Vec<Switch> = items.iter().map(|d| d.switch.clone()).collect();
            let results = target.apply_staged(&switches).await;
            for (d, result) in items.into_iter().zip(results) {
                let w = &mut work[d.index];
                match result {
                    Ok(o) => {
                        tracing::info!(composition = %w.comp.id, digest = %d.switch.digest.short(), overridden = d.overridden, "applied");
                        w.observed = o;
                    }
                    Err(e) => w.fail(ErrorCode::ApplyFailed, w.comp.target.clone(), e.to_string()),
                }
                self.note_override(w);
                let outcome = self.conclude(w);
                rollout.resolve(&w.comp.id, outcome);
                came_to.insert(w.comp.id.clone(), w.came_to());
            }
        }
    }

    /// A desired state rolled back (by `rollback: auto` or `fermata
    /// rollback`) is not applied again, and reports failed with why, until
    /// a commit changes the desired digest or `apply-now` is granted for it;
    /// then the memory of it (or the operator's record) is forgotten.
    fn hold_rolled_back(&mut self, w: &mut Work) {
        let id = w.comp.id.to_string();
        let grant = self
            .recorded
            .overrides
            .get(&id)
            .and_then(|(_, o)| o.digest.parse::<Digest>().ok());
        let forgets = w.digest.is_some() && !self.planning() && self.may_write().is_ok();
        if let Some((file, r)) = self.recorded.rollbacks.get(&id) {
            let digest = r.digest.parse::<Digest>().ok();
            if digest != w.digest {
                if forgets {
                    if let Err(e) = self.requests.forget(file) {
                        tracing::warn!(error = %e, file, "cannot forget a done rollback record");
                    }
                }
            } else if self.rollback_request(&id).is_some() {
                let cause = format!("fermata rollback by {} at {}: {}", r.who, r.at, r.why);
                w.fail(
                    ErrorCode::RolledBack,
                    w.comp.target.clone(),
                    rolled_back(&cause),
                );
                return;
            }
        }
        if let Some(rb) = self.persisted.rolled_back.get(&w.record_key) {
            if plan::rollback::held(Some(rb.digest), w.digest, grant) {
                let message = rolled_back(&rb.cause);
                w.fail(ErrorCode::RolledBack, w.comp.target.clone(), message);
            } else if forgets {
                self.persisted.rolled_back.remove(&w.record_key);
            }
        }
    }

    /// The `fermata rollback` of `id` in force: none where an `apply-now`
    /// for the same state was granted after it (the newer record wins).
    fn rollback_request(&self, id: &str) -> Option<(&String, &crate::status::Override)> {
        let (file, r) = self.recorded.rollbacks.get(id)?;
        let lifted = self
            .recorded
            .overrides
            .get(id)
            .is_some_and(|(_, o)| o.digest == r.digest && o.at >= r.at);
        (!lifted).then_some((file, r))
    }

    /// After the roll out: each composition whose desired state failed to
    /// apply (or to become healthy) in its open window with `rollback:
    /// auto`, or that `fermata rollback` names, is switched back to its
    /// previous applied state, and remembered so it is not retried.
    async fn roll_back(&mut self, fleet: &Fleet, work: &mut [Work]) {
        if self.planning() || self.may_write().is_err() {
            return;
        }
        for w in work.iter_mut() {
            let Some(target) = w.target.clone() else {
                continue;
            };
            let failure = match w.error.as_ref().map(CompositionError::code) {
                Some(ErrorCode::ApplyFailed) => Some(plan::rollback::Failure::Apply),
                Some(ErrorCode::HealthTimeout) => Some(plan::rollback::Failure::HealthTimeout),
                _ => None,
            };
            let requested = self
                .rollback_request(&w.comp.id.to_string())
                .and_then(|(_, o)| o.digest.parse::<Digest>().ok());
            let facts = plan::rollback::Facts {
                policy: fleet
                    .symphonies
                    .get(&w.comp.id.symphony)
                    .map(|s| s.rollback)
                    .unwrap_or_default(),
                failure,
                desired: w.digest,
                applied: w.observed.applied,
                window_open: w
                    .comp
                    .window
                    .as_ref()
                    .and_then(|n| fleet.windows.get(n))
                    .map(|mw| mw.window.is_open(self.ctx.clock.now())),
                overridden: w.overridden.is_some(),
                requested,
            };
            let Some(failed) = w.digest.filter(|_| plan::rollback::roll_back(&facts)) else {
                continue;
            };
            let cause = match (&w.error, failure) {
                (Some(e), Some(_)) => format!("{}: {}", e.code(), e.message),
                _ => String::new(),
            };
            match target.rollback(&w.comp.id, &failed).await {
                Ok(Some(now)) => {
                    tracing::warn!(composition = %w.comp.id, from = %failed.short(), to = %now.short(), %cause, "rolled back");
                    match target.get(&w.comp.id).await {
                        Ok(o) => w.observed = o,
                        Err(e) => {
                            tracing::warn!(composition = %w.comp.id, error = %e, "cannot read the rolled-back state")
                        }
                    }
                    if failure.is_some() {
                        let message = rolled_back(&cause);
                        w.fail(ErrorCode::RolledBack, w.comp.target.clone(), message);
                        self.persisted.rolled_back.insert(
                            w.record_key.clone(),
                            super::state::RolledBack {
                                digest: failed,
                                at: self.ctx.clock.now(),
                                cause,
                            },
                        );
                    }
                    self.caches.observed.remove(&w.record_key);
                }
                Ok(None) => {
                    const NOTHING: &str = "nothing was applied before it: nothing to roll back to";
                    match w.error.as_mut() {
                        // By hand: held, but still applied.
                        Some(e) if failure.is_none() => {
                            if let Some(cause) = e.message.strip_suffix(&rolled_back("")) {
                                e.message = format!("{cause}; {NOTHING}");
                            }
                        }
                        Some(e) => e.message.push_str(&format!("; {NOTHING}")),
                        None => {}
                    }
                }
                Err(e) => {
                    let why = format!("; rolling back failed: {e}");
                    if let Some(err) = w.error.as_mut() {
                        err.message.push_str(&why);
                    }
                }
            }
        }
    }

    /// How a composition ends its turn in the rollout, with its observed
    /// state remembered while it is Ready.
    fn conclude(&mut self, w: &mut Work) -> rollout::Outcome {
        if let (Some(Health::Failed(why)), None) = (&w.observed.health, &w.error) {
            let why = why.clone();
            w.fail(ErrorCode::HealthTimeout, w.comp.target.clone(), why);
        }
        if w.ready() {
            // Decisions need only the digests and health, not the components.
            let memo = Observed {
                components: Vec::new(),
                ..w.observed.clone()
            };
            self.caches.observed.insert(w.record_key.clone(), memo);
            rollout::Outcome::Ready
        } else {
            self.caches.observed.remove(&w.record_key);
            // Unavailable: applied but not Ready, or being applied now
            // (in a plan, where nothing is applied, that is every action
            // that would run).
            let in_flight = w.observed.applied.is_some()
                || (w.action.is_some() && w.waiting.is_none() && w.error.is_none());
            if in_flight {
                rollout::Outcome::InFlight
            } else {
                rollout::Outcome::Held
            }
        }
    }

    /// Each composition's status and table row, built once from its work
    /// (consumed: each one's work is dropped once its status exists).
    fn observe_statuses(
        &mut self,
        pass: &Pass,
        work: Vec<Work>,
        report: &mut BranchReport,
    ) -> Vec<DeploymentStatus> {
        let mut statuses = Vec::with_capacity(work.len());
        for w in &work {
            let window = window_status(&pass.fleet, w.comp.window.as_deref(), pass.now);
            note_window(report, &pass.fleet, window.as_ref());
            if let Some(p) = &w.plan {
                report.plans.insert(w.comp.id.clone(), p.clone());
            }
            if let (true, Some(e)) = (self.planning(), &w.error) {
                let at = if e.at.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", e.at)
                };
                let plan = report.plans.entry(w.comp.id.clone()).or_default();
                plan.error = Some(format!("{at}{e}"));
                plan.error_code = Some(e.code().to_string());
            }
            let st = self.status_of(w, &pass.source, pass.now, window);
            // Remembered after the status: this pass's reading is the
            // next one's "was healthy".
            if let (Some(Health::Healthy), Some(d)) = (&w.observed.health, w.observed.applied) {
                self.persisted
                    .healthy
                    .insert(w.record_key.clone(), d.to_hex());
            }
            report
                .rows
                .push(w.outcome(st.status.state, w.comp.window.clone()).row());
            statuses.push(st);
        }
        statuses
    }

    /// Symphonies that failed to load keep what they applied; status says
    /// why. So do those that may be defined in a file that cannot be read
    /// (invariant 10): absent from the fleet is not removed while any file's
    /// objects are unknown. Returns the symphonies so held.
    async fn hold_unloaded(
        &mut self,
        pass: &mut Pass,
        statuses: &mut Vec<DeploymentStatus>,
        report: &mut BranchReport,
    ) -> HashSet<String> {
        let branch = pass.source.branch.clone();
        let unreadable = std::mem::take(&mut pass.unreadable);
        let held = held_symphonies(&pass.fleet, &unreadable, &self.records_of(&branch, None));
        for (sym, why) in &held {
            let known = self.records_of(&branch, Some(sym));
            if let (true, Held::Invalid(_)) = (known.is_empty(), why) {
                report.errors.push(why.error(sym, None).message);
            }
            for (key, rec) in known {
                let mut w = self.recorded_work(&pass.fleet, &key, &rec).await;
                w.error = Some(why.error(sym, rec.file.as_deref()));
                statuses.push(self.status_of(&w, &pass.source, pass.now, None));
                let mut o = w.outcome(State::Failed, None);
                o.digest = None;
                report.rows.push(o.row());
            }
        }
        for e in &pass.errors {
            let belongs = pass.fleet.failed.values().flatten().any(|d| d == e);
            if !belongs {
                report.errors.push(e.to_string());
            }
        }
        held.keys().cloned().collect()
    }

    /// A lost (or older) `state.json` must not leave a removed variation
    /// deployed for ever. On a resync, what a target holds of a symphony
    /// this branch defines, that the symphony no longer lists and that
    /// nothing remembers, is taken back as a removal: deleted by the usual
    /// rules, in the symphony's window (when its variations share one; else
    /// it is left and logged). Only with one watched branch: with several,
    /// another branch may still define it there.
    async fn adopt_untracked(&mut self, pass: &Pass) {
        if !pass.resync {
            return;
        }
        // With several watched branches, only what this branch deployed
        // (as the target recorded it) is this branch's to take back.
        let several = self.ctx.settings.branches.len() > 1;
        let branch = &pass.source.branch;
        let remembered: HashSet<CompositionId> = self
            .persisted
            .renders
            .keys()
            .chain(self.persisted.retiring.keys())
            .map(|k| k.id.clone())
            .collect();
        let mut listed = HashSet::new();
        for (name, def) in &pass.fleet.targets {
            if !listed.insert(self.ctx.targets.key(&def.kind)) {
                continue;
            }
            let target = self.ctx.targets.get(&def.kind);
            let Ok(ids) = target.list().await else {
                continue;
            };
            for id in ids {
                let Some(sym) = pass.fleet.symphonies.get(&id.symphony) else {
                    continue;
                };
                if remembered.contains(&id) || sym.compositions.iter().any(|c| c.id == id) {
                    continue;
                }
                let windows: BTreeSet<Option<String>> =
                    sym.compositions.iter().map(|c| c.window.clone()).collect();
                let observed = target.get(&id).await.unwrap_or_default();
                let deployed_by = observed.source.as_ref().map(|s| s.branch.as_str());
                if several && deployed_by != Some(branch.as_str()) {
                    continue;
                }
                let [window] = &windows.into_iter().collect::<Vec<_>>()[..] else {
                    tracing::warn!(composition = %id, target = %name, "held by a target but known nowhere, and its symphony's variations have different windows: left in place");
                    continue;
                };
                tracing::info!(composition = %id, target = %name, "held by a target but no longer defined: removing it");
                self.persisted.renders.insert(
                    RecordKey::new(branch, &id),
                    RenderRecord {
                        input_key: String::new(),
                        base_key: String::new(),
                        digest: observed
                            .applied
                            .or(observed.staged)
                            .unwrap_or(Digest([0; 32])),
                        components: Vec::new(),
                        target: Some(name.clone()),
                        commit: None,
                        window: window.clone(),
                        depends_on: Vec::new(),
                        skipped: Vec::new(),
                        position: sym.compositions.len(),
                        file: None,
                        target_kind: Some(def.kind.clone()),
                    },
                );
            }
        }
    }

    /// Keeps each condition's `lastTransitionTime` while its status stays,
    /// and forgets the conditions of compositions no longer reported.
    fn stamp_all(&mut self, branch: &str, statuses: &mut [DeploymentStatus], now: DateTime<Utc>) {
        let mut live: HashSet<RecordKey> = HashSet::new();
        for st in statuses.iter_mut() {
            let Ok(id) = st.composition().parse::<CompositionId>() else {
                continue;
            };
            let key = RecordKey::new(branch, &id);
            self.stamp_transitions(&key, st, now);
            live.insert(key);
        }
        self.persisted
            .conditions
            .retain(|k, _| k.branch != branch || live.contains(k));
        self.persisted
            .healthy
            .retain(|k, _| k.branch != branch || live.contains(k));
    }

    /// The status commit (if anything changed) and the revision reconciled.
    async fn report_status(
        &mut self,
        pass: &Pass,
        statuses: Vec<DeploymentStatus>,
        used: &[Arc<dyn Target>],
        report: &mut BranchReport,
    ) {
        let branch = &pass.source.branch;
        let mut summary = format!("{branch}@{}: {}", pass.rev.short(), summarize(&statuses));
        if let Some(old) = pass.forced {
            summary.push_str(&format!(" (force-pushed over {})", old.short()));
        }
        let update = StatusUpdate {
            source: pass.source.clone(),
            table: table(report, &summary, pass.now),
            now: pass.now,
            windows: window_openings(&pass.fleet, &statuses, pass.now),
            statuses,
            summary,
        };
        let (used, rt) = (used.to_vec(), tokio::runtime::Handle::current());
        let synced = Box::new(move || rt.block_on(durable(&used)));
        self.publish(update, synced, report).await;
        self.persisted
            .revisions
            .insert(branch.clone(), pass.rev.to_string());
    }

    /// Commits the statuses (not in a plan) once `durable` returned; a
    /// failure is a report error.
    async fn publish(&self, update: StatusUpdate, durable: Durable, report: &mut BranchReport) {
        // A plan, or not leading (any more): the new leader reports.
        if self.may_write().is_err() {
            return;
        }
        match self.ctx.status.publish_when(update, durable).await {
            Ok(commit) => report.status_commit = commit,
            Err(e) => {
                tracing::error!(error = %crate::errors::chain(&e), "cannot write status");
                report
                    .errors
                    .push("status could not be written (see logs)".to_string());
            }
        }
    }

    /// Whether the commit passes the signature policy (invariant 8) at
    /// `now`, the pass's clock, so `--now` also decides key expiry.
    async fn verify(&self, rev: Revision, now: DateTime<Utc>) -> Result<Signer, UntrustedCommit> {
        if matches!(self.ctx.settings.signatures, SignaturePolicy::None) {
            return Ok(Signer::Unchecked);
        }
        self.ctx
            .source
            .verify(rev, &self.ctx.settings.signatures, now)
            .await
    }

    /// The objects of an already reconciled commit (empty if it is gone).
    async fn last_fleet(&self, rev: &str) -> Fleet {
        let Ok(oid) = git2::Oid::from_str(rev) else {
            return Fleet::default();
        };
        let Ok(snap) = self.ctx.source.snapshot(Revision(oid)).await else {
            return Fleet::default();
        };
        let path = self.ctx.settings.path.clone();
        let fleet = tokio::task::spawn_blocking(move || model::load(&snap, &path).fleet)
            .await
            .unwrap_or_default();
        self.placed(fleet, false).unwrap_or_default()
    }

    /// What this reconciler reconciles of `fleet`: a site agent (`--site`)
    /// only what is placed on its site (invariant 11), when the repository
    /// defines sites; without Site objects there is one implicit site. When
    /// a file cannot be read, whether it defines Sites is unknown: a site
    /// agent then holds everything rather than guess.
    fn placed(&self, fleet: Fleet, unreadable: bool) -> Result<Fleet, String> {
        match self.ctx.settings.site.as_deref() {
            Some(site) if fleet.has_sites() => fleet.site_view(site).map_err(|e| e.to_string()),
            Some(site) if unreadable => Err(format!(
                "what is placed on site {site} is unknown while a file cannot be read"
            )),
            _ => Ok(fleet),
        }
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
        let known = self.records_of(branch, None);
        // Targets are defined in the repository: status reads what they hold
        // through the last reconciled commit's definitions, never this one's.
        let last = match self.persisted.revisions.get(branch) {
            Some(r) => self.last_fleet(r).await,
            None => Fleet::default(),
        };
        let mut statuses = Vec::new();
        for (key, rec) in known {
            let mut w = self.recorded_work(&last, &key, &rec).await;
            w.fail(ErrorCode::UntrustedCommit, rev.to_string(), message.clone());
            let mut st = self.status_of(&w, &source_ref, now, None);
            self.stamp_transitions(&key, &mut st, now);
            statuses.push(st);
            let mut o = w.outcome(State::Failed, rec.window.clone());
            o.digest = None;
            report.rows.push(o.row());
        }
        // Orphaned statuses stay: status files not written are removed.
        for (key, symphony) in self
            .persisted
            .orphaned
            .iter()
            .filter(|(k, _)| k.branch == branch)
        {
            let waits = self
                .persisted
                .orphan_writes
                .get(key)
                .and_then(|p| window_status(&last, p.window.as_deref(), now));
            statuses.push(orphaned_status(&key.id, symphony, &source_ref, now, waits));
        }
        let summary = format!(
            "{branch}@{}: {} (untrusted commit)",
            rev.short(),
            summarize(&statuses)
        );
        let update = StatusUpdate {
            source: source_ref,
            table: table(&report, &summary, now),
            now,
            windows: window_openings(&last, &statuses, now),
            statuses,
            summary,
        };
        // Nothing was applied.
        self.publish(update, Box::new(|| ()), &mut report).await;
        self.caches.settled.remove(branch);
        report
    }

    /// Resolves the target, the digest (from cache or by rendering) and what the target holds.
    /// The target, what it holds, and the desired digest if nothing it
    /// depends on changed since it was last rendered (else it is rendered
    /// when needed, one at a time).
    fn prepare(
        &mut self,
        source: &SourceRef,
        snap: &Arc<Snapshot>,
        fleet: &Arc<Fleet>,
        comp: &Composition,
        synth_keys: &mut HashMap<String, String>,
        resync: bool,
    ) -> Prepared {
        let mut w = Work::new(comp.clone(), RecordKey::new(&source.branch, &comp.id));
        self.apply_ungates(&mut w);
        let Some(record) = self.place(&mut w, fleet, &source.branch) else {
            return Prepared::done(w);
        };
        let base = input_key(snap, fleet, comp, synth_keys);
        let unchanged = record.as_ref().filter(|r| r.base_key == base);
        let mut read = false;
        if let Some(memo) = self
            .caches
            .observed
            .get(&w.record_key)
            .filter(|o| !resync && unchanged.is_some_and(|r| o.applied == Some(r.digest)))
        {
            w.observed = memo.clone();
        } else {
            read = w.target.is_some();
        }
        Prepared {
            work: w,
            next: Some((record, base)),
            read,
        }
    }

    /// [`Self::prepare`]'s work finished with what its target read said.
    fn desired(
        source: &SourceRef,
        p: Prepared,
        read: Option<Result<Observed, crate::target::TargetError>>,
    ) -> Work {
        let Prepared {
            work: mut w, next, ..
        } = p;
        let Some((mut record, base)) = next else {
            return w;
        };
        match read {
            // Decisions read the digests, health and carried
            // metadata; status reads the components too.
            Some(Ok(o)) => w.observed = o,
            Some(Err(e)) => {
                let target = w.comp.target.clone();
                w.fail(ErrorCode::TargetUnavailable, target, e.to_string());
                return w;
            }
            None => {}
        }
        // The desired state also depends on what the composition will carry,
        // and, where reconcile-when leaves resources alone, on what is applied.
        let mut h = Sha256::new();
        h.update(base.as_bytes());
        h.update(
            serde_json::to_vec(&(
                annotations::effective(&w.observed.annotations, &w.comp.annotations),
                annotations::effective(&w.observed.labels, &w.comp.labels),
            ))
            .unwrap_or_default(),
        );
        if record.as_ref().is_some_and(|r| !r.skipped.is_empty()) {
            h.update(w.observed.applied.map(|d| d.to_hex()).unwrap_or_default());
        }
        let key = hex::encode(h.finalize());
        match record.take() {
            Some(r) if r.input_key == key => {
                w.digest = Some(r.digest);
                w.components = r.components;
                w.since = r.commit;
                w.skipped = r.skipped;
            }
            other => {
                // A new input may render the same state (a Site value that
                // this composition does not use): its commit is then kept.
                w.since = match other {
                    Some(r) => {
                        w.unchanged_since = Some((r.digest, r.commit));
                        Some(source.commit.clone())
                    }
                    None => Some(source.commit.clone()),
                };
                w.key = Some((base, key));
            }
        }
        w
    }

    /// Gates lifted by `fermata ungate` hold no more; a lift whose gate a
    /// commit has removed is done with (its record is forgotten).
    fn apply_ungates(&mut self, w: &mut Work) {
        let Some(lifted) = self.recorded.ungated.get(&w.comp.id.to_string()) else {
            return;
        };
        for (gate, (file, u)) in lifted {
            if w.comp.scheduling_gates.contains(gate) {
                w.ungated.push(u.clone());
            } else if self.may_write().is_ok() {
                if let Err(e) = self.requests.forget(file) {
                    tracing::warn!(error = %e, file, "cannot forget a done ungate record");
                }
            }
        }
        w.comp.scheduling_gates.retain(|g| !lifted.contains_key(g));
    }

    /// Resolves the composition's target, claims it there for `branch`, and
    /// notes a retarget. Returns its render record (none after a retarget:
    /// a new placement renders afresh), or `None` when it failed.
    fn place(&mut self, w: &mut Work, fleet: &Fleet, branch: &str) -> Option<Option<RenderRecord>> {
        let comp = w.comp.clone();
        let Some(def) = fleet.targets.get(&comp.target) else {
            w.fail(
                ErrorCode::TargetUnavailable,
                comp.target.clone(),
                format!("no Target named {:?}", comp.target),
            );
            return None;
        };
        // One branch per composition per target: two branches defining it
        // would overwrite each other pass after pass (invariant 5).
        if let Err(owner) = self.claim(&def.kind, &comp.id, branch) {
            w.fail(ErrorCode::TargetConflict,
                comp.target.clone(),
                format!(
                    "target {} already holds {} from branch {owner}: a composition is deployed on a target from one branch only; give branch {branch} its own target, or stop watching one of them",
                    comp.target, comp.id
                ),
            );
            return None;
        }
        w.target = Some(self.target_of(&def.kind));
        // Moved back before its old placement was removed: nothing to remove.
        let here = self.target_key(&def.kind);
        if let Some(r) = self.persisted.retiring.get(&w.record_key) {
            if self.target_key(&r.kind) == here {
                self.persisted.retiring.remove(&w.record_key);
            }
        }
        let record = self.persisted.renders.get(&w.record_key).cloned();
        // Moved to another target: removed from the old one (in the old
        // placement's window, see `retire`), added to the new one.
        let Some(old) = record.as_ref().filter(|r| r.target.is_some()) else {
            return Some(record);
        };
        let old_kind = recorded_kind(&old.target_kind, &old.target, fleet);
        let Some(old_kind) = old_kind.filter(|k| self.target_key(k) != here) else {
            return Some(record);
        };
        tracing::info!(composition = %comp.id, from = ?old.target, to = %comp.target, "retargeted");
        self.persisted.retiring.insert(
            w.record_key.clone(),
            super::state::Retiring {
                target: old.target.clone().unwrap_or_default(),
                kind: old_kind,
                window: old.window.clone(),
            },
        );
        self.persisted.renders.remove(&w.record_key);
        self.caches.observed.remove(&w.record_key);
        Some(None)
    }

    /// Renders, then settles what the composition will hold: its annotations
    /// and labels once this write completes, and resources left alone by
    /// `reconcile-when`. Records the result so it is not rendered again.
    /// Whether it rendered: a failure is in the work's error, the one place
    /// status reads it from.
    async fn render(
        &mut self,
        w: &mut Work,
        snap: &Arc<Snapshot>,
        fleet: &Arc<Fleet>,
        source: &SourceRef,
    ) -> bool {
        if let Some(s) = self.command_not_run(fleet, &w.comp) {
            w.fail(
                ErrorCode::CommandNotRun,
                format!("{}:{}", s.origin.file, s.origin.line),
                format!(
                    "synthesizer {}: command not run: this commit is not on a watched branch (a pull request head); --trust-pr-commands runs it",
                    s.name
                ),
            );
            return false;
        }
        let out = self.render_job(w, snap, fleet).run().await;
        self.finish_render(w, fleet, source, out)
    }

    /// The `command:` synthesizer of `comp`, if this pass may not run it
    /// (a commit not on a watched branch, without `--trust-pr-commands`).
    fn command_not_run<'f>(
        &self,
        fleet: &'f Fleet,
        comp: &Composition,
    ) -> Option<&'f model::Synthesizer> {
        fleet
            .synthesizers
            .get(&comp.synthesizer)
            .filter(|s| !self.allow_commands && matches!(s.kind, SynthKind::Command { .. }))
    }

    /// What rendering `w` needs, owned: run in the pass or ahead of it.
    fn render_job(&self, w: &Work, snap: &Arc<Snapshot>, fleet: &Arc<Fleet>) -> ahead::RenderJob {
        ahead::RenderJob {
            snap: snap.clone(),
            fleet: fleet.clone(),
            comp: w.comp.clone(),
            limits: self.ctx.settings.synth_limits,
            target: w.target.clone(),
            annotations: w.observed.annotations.clone(),
            labels: w.observed.labels.clone(),
        }
    }

    /// Records a rendering on the work, and under the keys of its inputs.
    /// Whether it rendered: a failure is in the work's error.
    fn finish_render(
        &mut self,
        w: &mut Work,
        fleet: &Fleet,
        source: &SourceRef,
        out: ahead::RenderOut,
    ) -> bool {
        let r = match out {
            Ok(r) => r,
            Err(e) => {
                w.error = Some(e);
                return false;
            }
        };
        let digest = r.state.digest;
        w.digest = Some(digest);
        w.components = r.components;
        w.skipped = r.skipped;
        if let Some((d, commit)) = w.unchanged_since.take() {
            if d == digest {
                w.since = commit;
            }
        }
        if let Some((base, key)) = w.key.take() {
            self.remember(w, fleet, source, digest, base, key);
        }
        w.rendered = Some(r.state);
        true
    }

    /// Records what `w` rendered to under the keys of its inputs, so it is
    /// not rendered again while they stay the same, and what a later pass
    /// needs of it once it is gone from the commit (removal, retarget,
    /// unreadable file).
    fn remember(
        &mut self,
        w: &Work,
        fleet: &Fleet,
        source: &SourceRef,
        digest: Digest,
        base_key: String,
        input_key: String,
    ) {
        self.persisted.renders.insert(
            w.record_key.clone(),
            RenderRecord {
                input_key,
                base_key,
                digest,
                components: w.components.clone(),
                target: Some(w.comp.target.clone()),
                commit: w.since.clone().or_else(|| Some(source.commit.clone())),
                window: w.comp.window.clone(),
                depends_on: w.comp.depends_on.iter().map(|d| d.to_string()).collect(),
                skipped: w.skipped.clone(),
                position: fleet
                    .symphonies
                    .get(&w.comp.id.symphony)
                    .and_then(|s| s.compositions.iter().position(|c| c.id == w.comp.id))
                    .unwrap_or(0),
                file: Some(w.comp.origin.file.clone()).filter(|f| !f.is_empty()),
                target_kind: fleet.targets.get(&w.comp.target).map(|t| t.kind.clone()),
            },
        );
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
        report: &mut BranchReport,
    ) -> HashMap<String, String> {
        let mut held: HashMap<String, String> = HashMap::new();
        for w in work.iter_mut() {
            let keys = annotations::prunes(&w.observed.annotations, &w.comp.annotations);
            if keys.is_empty() {
                continue; // the common case: no window to compute
            }
            let window = w.comp.window.as_ref().and_then(|n| fleet.windows.get(n));
            let now = self.ctx.clock.now();
            let facts = PruneFacts {
                keys,
                writable: w.target.is_some() && w.error.is_none(),
                window: window.map(|mw| {
                    let state = mw.window.state_at(now);
                    (mw.window.name.clone(), state.open, state.next_open)
                }),
                may_write: self.may_write().is_ok(),
            };
            let sym = w.comp.id.symphony.clone();
            match decide_prune(&w.comp.id.to_string(), &facts) {
                Prune::Nothing => continue,
                Prune::WindowClosed { message, next } => {
                    if let Some(n) = next {
                        report.wake_at(n);
                    }
                    held.entry(sym).or_insert(message);
                    continue;
                }
                Prune::Planned { message } => {
                    held.entry(sym).or_insert(message);
                    w.action = Some(ActionKind::Update);
                    continue;
                }
                Prune::Write => {}
            }
            let (Some(target), keys) = (w.target.clone(), facts.keys) else {
                continue;
            };
            let pruned = annotations::pruned(&w.observed.annotations, &keys);
            let result = target
                .write_metadata(&w.comp.id, &MetadataChange::Annotations(pruned))
                .await;
            match result {
                Ok(_) => {
                    tracing::info!(composition = %w.comp.id, keys = %keys.join(","), "pruned annotations");
                    w.read_from(target.as_ref()).await;
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

    /// Where the store keeps each of `artifacts`, by name: what a state
    /// staged before needs to be written again.
    fn stored_artifacts(&self, artifacts: &[model::Artifact]) -> BTreeMap<String, PathBuf> {
        artifacts
            .iter()
            .map(|a| (a.name.clone(), self.ctx.store.path_of(&a.sha256)))
            .collect()
    }

    /// Everything of a decision up to the target's I/O (checks, render,
    /// artifacts), which it returns to be run, possibly beside others'.
    async fn execute(
        &mut self,
        w: &mut Work,
        decision: plan::Decision,
        snap: &Arc<Snapshot>,
        fleet: &Arc<Fleet>,
        fetched: &Fetched,
        source: &SourceRef,
    ) -> Option<Exec> {
        let target = w.target.clone()?;
        let hold = self.may_write().err();
        if hold == Some(Hold::NotLeading) {
            w.fail(
                ErrorCode::NotLeader,
                "",
                "leadership lost during the pass: nothing written",
            );
            return None;
        }
        let needs_desired = decision.stage || matches!(decision.apply, Apply::Now { .. });
        let planning = hold == Some(Hold::Plan);
        if !needs_desired || planning {
            if let Apply::Wait(r) = decision.apply {
                w.waiting = Some(r);
            }
            if needs_desired && planning {
                self.plan_detail(w, target.as_ref(), snap, fleet, source)
                    .await;
            }
            return None;
        }
        // Staging may have taken a while: the window is judged again right
        // before the apply starts (invariant 2).
        let closed = |this: &Self, w: &Work| {
            window_closed(fleet, w.comp.window.as_deref(), this.ctx.clock.now())
        };
        // A state the target holds staged is switched to in a batch, by its
        // digest: nothing to render.
        let batched = |w: &Work, overridden| {
            Some(Exec::Batch(Deferred {
                index: 0,
                target: target.clone(),
                switch: Switch {
                    id: w.comp.id.clone(),
                    digest: w.digest?,
                    source: source.clone(),
                },
                overridden,
            }))
        };
        if let (false, true, Apply::Now { overridden }) =
            (decision.stage, target.switches_staged(), decision.apply)
        {
            if !overridden && closed(self, w) {
                w.waiting = Some(Reason::WindowClosed);
                return None;
            }
            return batched(w, overridden);
        }
        // A cached digest alone does not carry the state to stage: render it.
        if w.rendered.is_none() && !self.render(w, snap, fleet, source).await {
            return None;
        }
        let rendered = w.rendered.clone()?;
        let artifacts = match ahead::artifact_files(&self.ctx.store, &rendered, fetched) {
            Ok(a) => a,
            Err((url, e)) => {
                w.fail(ErrorCode::ArtifactFailed, url, e);
                return None;
            }
        };
        let desired = Desired {
            rendered,
            source: source.clone(),
            artifacts,
        };
        // Staged and switched to in one pass (a cold start, a commit while
        // the window is open): staged now, switched with the pass's batch,
        // so the switches share their syncs instead of one apply each.
        if let (true, true, Apply::Now { overridden }) =
            (decision.stage, target.switches_staged(), decision.apply)
        {
            if let Err(e) = target.apply(&desired, StateGoal::Stage).await {
                w.fail(
                    ErrorCode::StagingFailed,
                    w.comp.target.clone(),
                    e.to_string(),
                );
                return None;
            }
            tracing::info!(composition = %w.comp.id, digest = %desired.rendered.digest.short(), "staged");
            if overridden || !closed(self, w) {
                return batched(w, overridden);
            }
            w.waiting = Some(Reason::WindowClosed);
            w.read_from(target.as_ref()).await;
            return None;
        }
        Some(Exec::Io(TargetIo {
            id: w.comp.id.clone(),
            target,
            desired,
            decision,
            window: w.comp.window.clone(),
            fleet: fleet.clone(),
            clock: self.ctx.clock.clone(),
        }))
    }

    /// An `apply-now` grant shows in status for as long as the state it was
    /// given for is applied; one whose state is neither desired nor applied
    /// any more is done with, and its record forgotten.
    fn note_override(&mut self, w: &mut Work) {
        let Some((file, grant)) = self.recorded.overrides.get(&w.comp.id.to_string()) else {
            return;
        };
        let digest = grant.digest.parse::<Digest>().ok();
        if digest.is_some() && w.observed.applied == digest {
            w.overridden = Some(grant.clone());
        } else if digest.is_none() || (w.digest.is_some() && w.digest != digest) {
            if self.may_write().is_err() {
                return;
            }
            if let Err(e) = self.requests.forget(file) {
                tracing::warn!(error = %e, file, "cannot forget a done apply-now record");
            }
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
        if w.rendered.is_none() && !self.render(w, snap, fleet, source).await {
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
                stored: self.ctx.store.contains(&a.sha256),
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
    fn target_for(&self, fleet: &Fleet, name: &str) -> Result<Arc<dyn Target>, String> {
        let t = fleet
            .targets
            .get(name)
            .ok_or_else(|| format!("no Target named {name:?}"))?;
        Ok(self.target_of(&t.kind))
    }

    /// What identifies where a target writes, whatever its name.
    fn target_key(&self, kind: &TargetKind) -> String {
        self.ctx.targets.key(kind)
    }

    /// The target object a definition describes.
    fn target_of(&self, kind: &TargetKind) -> Arc<dyn Target> {
        self.ctx.targets.get(kind)
    }

    /// Claims `id` on the target `kind` for `branch`, or names the branch
    /// that holds it. A claim of a branch no longer watched is taken over.
    fn claim(&mut self, kind: &TargetKind, id: &CompositionId, branch: &str) -> Result<(), String> {
        let key = format!("{}|{id}", self.target_key(kind));
        match self.persisted.claims.get(&key) {
            Some(owner) if owner != branch && self.ctx.settings.branches.contains(owner) => {
                Err(owner.clone())
            }
            Some(owner) if owner == branch => Ok(()),
            _ => {
                self.persisted.claims.insert(key, branch.to_string());
                Ok(())
            }
        }
    }

    /// Gives up `branch`'s claim of `id` on the target `kind`.
    fn release(&mut self, kind: Option<&TargetKind>, id: &CompositionId, branch: &str) {
        let Some(kind) = kind else { return };
        let key = format!("{}|{id}", self.target_key(kind));
        if self.persisted.claims.get(&key).is_some_and(|b| b == branch) {
            self.persisted.claims.remove(&key);
        }
    }

    /// The render records of `branch` (of one `symphony`, if given):
    /// compositions known from earlier passes.
    fn records_of(&self, branch: &str, symphony: Option<&str>) -> Vec<(RecordKey, RenderRecord)> {
        let mut records = super::state::of_branch(&self.persisted.renders, branch);
        records.retain(|(k, _)| symphony.is_none_or(|s| k.id.symphony == s));
        records
    }

    /// A composition known only from its last render, with what its target
    /// (as `fleet` defines it) holds now.
    async fn recorded_work(&mut self, fleet: &Fleet, key: &RecordKey, rec: &RenderRecord) -> Work {
        let mut w = Work::from_record(key.clone(), rec);
        if let Some(t) = rec
            .target
            .as_ref()
            .and_then(|t| self.target_for(fleet, t).ok())
        {
            w.observed = t.get(&key.id).await.unwrap_or_default();
        }
        w
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
            let Ok(id) = st.composition().parse::<CompositionId>() else {
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
            let Some(sym) = st.composition().split('/').next() else {
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
    fn stamp_transitions(
        &mut self,
        key: &RecordKey,
        st: &mut DeploymentStatus,
        now: DateTime<Utc>,
    ) {
        let seen = self.persisted.conditions.entry(key.clone()).or_default();
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
        fleet: &Arc<Fleet>,
        held: &HashSet<String>,
        source: &SourceRef,
        now: DateTime<Utc>,
        statuses: &mut Vec<DeploymentStatus>,
        report: &mut BranchReport,
    ) {
        let branch = &source.branch;
        let live: HashSet<RecordKey> = statuses
            .iter()
            .filter_map(|s| s.composition().parse::<CompositionId>().ok())
            .map(|id| RecordKey::new(branch, &id))
            .collect();
        let mut gone = self.records_of(branch, None);
        gone.retain(|(k, _)| !live.contains(k));
        // Deletes in reverse variation order: the last one written goes first.
        gone.sort_by(|(ka, a), (kb, b)| {
            ka.id
                .symphony
                .cmp(&kb.id.symphony)
                .then(b.position.cmp(&a.position))
        });
        let scope = Scope {
            fleet,
            held,
            source,
            now,
        };
        // OrderedReady: the next delete only when the previous one is done.
        let mut deletes_blocked: HashSet<String> = HashSet::new();
        self.persisted.orphaned.retain(|k, _| !live.contains(k));
        for (key, rec) in gone {
            let id = key.id.clone();
            if !fleet.symphonies.contains_key(&id.symphony) {
                self.orphan_now(key, &id, &rec);
                continue;
            }
            let ordered = fleet
                .symphonies
                .get(&id.symphony)
                .is_some_and(|s| s.rollout.strategy == Strategy::OrderedReady);
            let later_pending = ordered && deletes_blocked.contains(&id.symphony);
            if let Some(st) = self
                .remove_one(&scope, &key, &rec, later_pending, report)
                .await
            {
                // Not gone yet (in a plan, nothing is): the next delete waits.
                deletes_blocked.insert(id.symphony.clone());
                statuses.push(st);
            }
        }
        self.persisted
            .orphan_writes
            .retain(|k, _| !live.contains(k));
        self.orphan_writes(branch, fleet, report).await;
        self.retire(branch, fleet, statuses, report).await;
        self.report_orphaned(&scope, statuses, report);
        self.report_removed(branch, &live, now, statuses, report);
    }

    /// Statuses of variations removed and deleted within the retention
    /// (`--removed-retention`): `removed`, then pruned. One defined again
    /// is live and drops its record.
    fn report_removed(
        &mut self,
        branch: &str,
        live: &HashSet<RecordKey>,
        now: DateTime<Utc>,
        statuses: &mut Vec<DeploymentStatus>,
        report: &mut BranchReport,
    ) {
        let keep = chrono::TimeDelta::from_std(self.ctx.settings.removed_retention)
            .unwrap_or(chrono::TimeDelta::MAX);
        let listed: HashSet<String> = statuses
            .iter()
            .map(|s| s.composition().to_string())
            .collect();
        self.persisted.removed.retain(|k, r| {
            k.branch != branch
                || (!live.contains(k)
                    && !listed.contains(&k.id.to_string())
                    && now.signed_duration_since(r.at) < keep)
        });
        for (_, r) in self
            .persisted
            .removed
            .iter()
            .filter(|(k, _)| k.branch == branch)
        {
            let mut st = r.status.clone();
            st.source.branch = branch.to_string();
            statuses.push(st);
            if let Some(end) = r.at.checked_add_signed(keep) {
                report.wake_at(end);
            }
        }
    }

    /// A composition whose symphony is gone: dropped from status at once;
    /// the mark on the target is a write like any other and waits for the
    /// window ([`orphan_writes`](Self::orphan_writes)).
    fn orphan_now(&mut self, key: RecordKey, id: &CompositionId, rec: &RenderRecord) {
        tracing::info!(composition = %id, "symphony removed: resources orphaned");
        self.persisted.renders.remove(&key);
        self.caches.observed.remove(&key);
        self.persisted.orphan_writes.insert(
            key.clone(),
            PendingWrite {
                target: rec.target.clone(),
                kind: rec.target_kind.clone(),
                window: rec.window.clone(),
            },
        );
        self.persisted.orphaned.insert(key, id.symphony.clone());
    }

    /// One removed variation: deleted from its target if nothing holds it
    /// ([`plan::removal`]), else reported `removing` with why. `None` once
    /// it is gone (its record and status go with it).
    async fn remove_one(
        &mut self,
        scope: &Scope<'_>,
        key: &RecordKey,
        rec: &RenderRecord,
        later_pending: bool,
        report: &mut BranchReport,
    ) -> Option<DeploymentStatus> {
        let id = &key.id;
        let held_by = self.dependents(scope, id);
        // Judged now, at the write, not at the pass's start (invariant 2).
        let window = window_status(scope.fleet, rec.window.as_deref(), self.ctx.clock.now());
        note_window(report, scope.fleet, window.as_ref());
        let decision = decide_removal(&RemovalFacts {
            later_pending,
            held_by,
            window_open: window.as_ref().map(|w| w.open),
        });
        let target = rec
            .target
            .as_ref()
            .and_then(|t| self.target_for(scope.fleet, t).ok());
        let mut w = Work::from_record(key.clone(), rec);
        let (reason, message) = match decision {
            Removal::Wait(reason, message) => {
                if let Some(next) = window
                    .as_ref()
                    .filter(|_| reason == Reason::WindowClosed)
                    .and_then(|w| w.next_open)
                {
                    report.wake_at(next);
                }
                (Some(reason), message)
            }
            Removal::Delete if self.may_write().is_err() => {
                (None, "would be deleted now".to_string())
            }
            Removal::Delete => match self.delete(target.as_deref(), id).await {
                Ok(()) => {
                    tracing::info!(composition = %id, "removed");
                    let mut st = self.status_of(&w, scope.source, scope.now, None);
                    mark_removed(&mut st, scope.now);
                    self.persisted.removed.insert(
                        key.clone(),
                        RemovedStatus {
                            at: scope.now,
                            status: st,
                        },
                    );
                    self.persisted.renders.remove(key);
                    self.caches.observed.remove(key);
                    let kind = recorded_kind(&rec.target_kind, &rec.target, scope.fleet);
                    self.release(kind.as_ref(), id, &scope.source.branch);
                    return None;
                }
                Err(e) => {
                    w.fail(
                        ErrorCode::DeleteFailed,
                        rec.target.clone().unwrap_or_default(),
                        e,
                    );
                    (None, String::new())
                }
            },
        };
        if let Some(t) = &target {
            w.observed = t.get(id).await.unwrap_or_default();
        }
        let mut st = self.status_of(&w, scope.source, scope.now, window);
        let word = reason.map(|r| r.as_str()).unwrap_or("Delete");
        if w.error.is_none() {
            mark_removing(&mut st, word, message);
        }
        let outcome = CompositionOutcome {
            phase: Phase::Removing,
            waiting: reason,
            message: format!("removing: {word}"),
            action: Some(ActionKind::Delete),
            ..w.outcome(st.status.state, rec.window.clone())
        };
        report.rows.push(outcome.row());
        Some(st)
    }

    /// What still depends on `id`: dependents in the fleet, and those of
    /// symphonies kept without loading (a dangling dependsOn fails them):
    /// both still run on it.
    fn dependents(&self, scope: &Scope<'_>, id: &CompositionId) -> Vec<String> {
        let branch = &scope.source.branch;
        let mut held_by: Vec<String> = scope
            .fleet
            .compositions()
            .filter(|c| c.depends_on.contains(id))
            .map(|c| c.id.to_string())
            .collect();
        held_by.extend(
            self.persisted
                .renders
                .iter()
                .filter(|(k, r)| {
                    k.branch == *branch
                        && scope.held.contains(&k.id.symphony)
                        && r.depends_on.contains(&id.to_string())
                })
                .map(|(k, _)| k.id.to_string()),
        );
        held_by
    }

    /// Deletes `id` from `target` (nothing to do without one).
    async fn delete(&self, target: Option<&dyn Target>, id: &CompositionId) -> Result<(), String> {
        let Some(t) = target else {
            return Ok(());
        };
        let result = t.delete(id).await.map_err(|e| e.to_string());
        result
    }

    /// Statuses of compositions orphaned on this branch: `removed`, and
    /// whether their mark still waits for a window.
    fn report_orphaned(
        &self,
        scope: &Scope<'_>,
        statuses: &mut Vec<DeploymentStatus>,
        report: &mut BranchReport,
    ) {
        for (key, symphony) in self
            .persisted
            .orphaned
            .iter()
            .filter(|(k, _)| k.branch == scope.source.branch)
        {
            let id = key.id.clone();
            let waits = self
                .persisted
                .orphan_writes
                .get(key)
                .and_then(|p| window_status(scope.fleet, p.window.as_deref(), scope.now));
            statuses.push(orphaned_status(
                &id,
                symphony,
                scope.source,
                scope.now,
                waits,
            ));
            let outcome = CompositionOutcome {
                id,
                phase: Phase::Orphaned,
                state: State::Removed,
                digest: None,
                window: None,
                error: None,
                waiting: None,
                message: "removed (orphaned)".to_string(),
                action: None,
            };
            report.rows.push(outcome.row());
        }
    }

    /// Writes the orphan marks of `prefix`'s branch whose window is open
    /// (checked at the write, not at the pass's start). A failed write is
    /// tried again next pass; a target no longer defined cannot be written.
    async fn orphan_writes(&mut self, branch: &str, fleet: &Fleet, report: &mut BranchReport) {
        let pending = super::state::of_branch(&self.persisted.orphan_writes, branch);
        for (key, p) in pending {
            let id = key.id.clone();
            if let Some(ws) = window_status(fleet, p.window.as_deref(), self.ctx.clock.now()) {
                if !ws.open {
                    if let Some(next) = ws.next_open {
                        report.wake_at(next);
                    }
                    continue;
                }
            }
            if self.may_write().is_err() {
                continue;
            }
            let kind = recorded_kind(&p.kind, &p.target, fleet);
            let Some(kind) = kind else {
                tracing::warn!(composition = %id, target = ?p.target, "target no longer defined: orphaned resources cannot be marked");
                self.persisted.orphan_writes.remove(&key);
                continue;
            };
            let target = self.target_of(&kind);
            match self.orphan(target.as_ref(), &id).await {
                Ok(()) => {
                    tracing::info!(composition = %id, "orphaned resources marked");
                    self.persisted.orphan_writes.remove(&key);
                    // Left in place, no longer this branch's to write.
                    self.release(Some(&kind), &id, branch);
                }
                Err(e) => {
                    tracing::warn!(composition = %id, error = %e, "cannot annotate orphaned resources; trying again next pass")
                }
            }
        }
    }

    /// Removes compositions from the targets they were moved away from, in
    /// the old placement's window (checked at the write). Until done, the
    /// composition's status carries a `Retargeted` condition and the table a
    /// `Delete` row naming the old target.
    async fn retire(
        &mut self,
        branch: &str,
        fleet: &Fleet,
        statuses: &mut [DeploymentStatus],
        report: &mut BranchReport,
    ) {
        let entries = super::state::of_branch(&self.persisted.retiring, branch);
        for (key, r) in entries {
            let id = key.id.clone();
            let now = self.ctx.clock.now();
            let ws = window_status(fleet, r.window.as_deref(), now);
            note_window(report, fleet, ws.as_ref());
            // Waiting for the window, planned, or failed: what status shows.
            let (waiting, error, message) = match ws.filter(|w| !w.open) {
                Some(ws) => {
                    if let Some(next) = ws.next_open {
                        report.wake_at(next);
                    }
                    let message = format!(
                        "still deployed on its previous target {}: removed there in window {} (next opening {})",
                        r.target,
                        ws.name,
                        ws.next_open
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_else(|| "never".into())
                    );
                    (Some(Reason::WindowClosed), None, message)
                }
                None if self.planning() => (
                    None,
                    None,
                    format!("would be removed from its previous target {} now", r.target),
                ),
                None if self.may_write().is_err() => continue,
                None => {
                    let target = self.target_of(&r.kind);
                    let result = target.delete(&id).await;
                    match result {
                        Ok(()) => {
                            tracing::info!(composition = %id, target = %r.target, "removed from its previous target");
                            self.persisted.retiring.remove(&key);
                            self.release(Some(&r.kind), &id, branch);
                            continue;
                        }
                        Err(e) => {
                            let message = format!(
                                "removing it from its previous target {} failed: {e}",
                                r.target
                            );
                            let error =
                                CompositionError::new(ErrorCode::DeleteFailed, &r.target, &message);
                            (None, Some(error), message)
                        }
                    }
                }
            };
            let reason = match (&error, waiting) {
                (Some(e), _) => e.code().as_str(),
                (None, Some(r)) => r.as_str(),
                (None, None) => "Delete",
            };
            if let Some(st) = statuses
                .iter_mut()
                .find(|s| s.composition() == id.to_string())
            {
                st.status.conditions.push(Condition {
                    r#type: "Retargeted".to_string(),
                    status: "False".to_string(),
                    reason: reason.to_string(),
                    message: message.clone(),
                    last_transition_time: Some(now),
                });
            }
            let outcome = CompositionOutcome {
                id,
                phase: Phase::Removing,
                state: if error.is_some() {
                    State::Failed
                } else {
                    State::Removing
                },
                digest: None,
                window: r.window.clone(),
                error,
                waiting,
                message,
                action: Some(ActionKind::Delete),
            };
            report.rows.push(outcome.row());
        }
    }

    /// Leaves the applied resources in place, annotated with the symphony
    /// they came from, as one more applied state (so it is atomic too).
    async fn orphan(&self, target: &dyn Target, id: &CompositionId) -> Result<(), String> {
        let change = MetadataChange::Orphan {
            symphony: id.symphony.clone(),
        };
        target
            .write_metadata(id, &change)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn status_of(
        &self,
        w: &Work,
        source: &SourceRef,
        now: DateTime<Utc>,
        window: Option<WindowStatus>,
    ) -> DeploymentStatus {
        let error = w.error.as_ref().map(CompositionError::info);
        // Rendering failed: the components of the last rendering, so each
        // still has its entry (Margo requires one per component).
        let last;
        let names: &[String] = if w.components.is_empty() {
            last = self
                .persisted
                .renders
                .get(&w.record_key)
                .map(|r| r.components.clone())
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| {
                    w.observed
                        .components
                        .iter()
                        .map(|c| c.name.clone())
                        .collect()
                });
            &last
        } else {
            &w.components
        };
        let (state, mut components) = plan::state::states(&plan::state::StateFacts {
            error: w.error.as_ref().map(|e| e.code()).zip(error.as_ref()),
            desired: w.digest,
            applied: w.observed.applied,
            staged: w.observed.staged,
            staging: w.waiting == Some(Reason::Staging),
            health: w.observed.health.as_ref(),
            was_healthy: w
                .observed
                .applied
                .is_some_and(|d| self.persisted.healthy.get(&w.record_key) == Some(&d.to_hex())),
            components: names,
            observed: &w.observed.components,
        });
        for c in &mut components {
            if w.skipped.contains(&c.name) {
                c.skipped = Some("reconcile-when".to_string());
            }
        }
        let mut conditions = conditions_of(w, window.as_ref(), now);
        if let Some(e) = &self.fetch_error {
            conditions.push(condition(
                "SourceAvailable",
                false,
                "FetchFailed",
                e.clone(),
                now,
            ));
        }
        DeploymentStatus {
            api_version: model::types::API_VERSION.to_string(),
            kind: "DeploymentStatus".to_string(),
            metadata: StatusMetadata::new(
                &w.comp.id,
                w.comp
                    .annotations
                    .get(wellknown::DEPLOYMENT_ID)
                    .map(String::as_str)
                    .filter(|v| !v.is_empty()),
                now,
            ),
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
                error,
                r#override: w.overridden.clone(),
                symphony: None,
                ungated: w.ungated.clone(),
                components,
            },
        }
    }
}

/// Why a symphony that is not in the loaded fleet keeps its applied state.
enum Held<'a> {
    /// It is named in the repository but failed to load.
    Invalid(&'a [model::Diagnostic]),
    /// It is gone from what could be read, but some file could not be read
    /// at all and may still define it.
    Unreadable(&'a BTreeMap<String, model::Diagnostic>),
}

impl Held<'_> {
    /// The error its compositions report; `file` is where the symphony was
    /// defined when it was last rendered, if known.
    fn error(&self, symphony: &str, file: Option<&str>) -> CompositionError {
        let at = |d: &model::Diagnostic| format!("{}:{}", d.file, d.line.unwrap_or(0));
        match self {
            Held::Invalid(diags) => CompositionError::new(
                ErrorCode::InvalidObject,
                diags.first().map(at).unwrap_or_default(),
                diags
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            Held::Unreadable(files) => match file.and_then(|f| files.get(f)) {
                Some(d) => CompositionError::new(
                    ErrorCode::UnreadableFile,
                    at(d),
                    format!(
                        "{d}; symphony {symphony} was defined in this file: it keeps its applied state until the file can be read"
                    ),
                ),
                None => {
                    let d = files.values().next();
                    CompositionError::new(
                        ErrorCode::UnreadableFile,
                        d.map(at).unwrap_or_default(),
                        format!(
                            "symphony {symphony} is not in what could be read, but {} cannot be read and may define it ({}): nothing is removed until it can be read",
                            files.keys().cloned().collect::<Vec<_>>().join(", "),
                            d.map(|d| d.to_string()).unwrap_or_default()
                        ),
                    )
                }
            },
        }
    }
}

/// The jobs of a roll out started ahead (see [`ahead`]).
#[derive(Default)]
struct Ahead {
    /// The next composition to start one for.
    next: usize,
    /// Dropped with the pass, they are aborted.
    jobs: tokio::task::JoinSet<ahead::Done>,
    /// Which composition each running task is for.
    index: HashMap<tokio::task::Id, usize>,
    /// Finished, not yet taken.
    done: HashMap<usize, ahead::Done>,
}

impl Ahead {
    /// The result of composition `i`'s job, once it is done; `None` if it has
    /// none (or it panicked: the roll out renders it again itself).
    async fn take(&mut self, i: usize) -> Option<ahead::Done> {
        loop {
            if let Some(done) = self.done.remove(&i) {
                return Some(done);
            }
            if !self.index.values().any(|&j| j == i) {
                return None;
            }
            match self.jobs.join_next_with_id().await? {
                Ok((id, done)) => {
                    if let Some(j) = self.index.remove(&id) {
                        self.done.insert(j, done);
                    }
                }
                Err(e) => {
                    let j = self.index.remove(&e.id());
                    tracing::warn!(error = %e, composition = ?j, "a rendering ahead failed");
                }
            }
        }
    }
}

/// A decision's target I/O: stage, then apply if the decision and the
/// window still allow, then read what the target holds. Owns what it needs,
/// so writes for different compositions can run side by side.
struct TargetIo {
    id: CompositionId,
    target: Arc<dyn Target>,
    desired: Desired,
    decision: plan::Decision,
    window: Option<String>,
    fleet: Arc<Fleet>,
    clock: Arc<dyn Clock>,
}

impl IoDone {
    fn apply_to(self, w: &mut Work) {
        if let Some(r) = self.waiting {
            w.waiting = Some(r);
        }
        if let Some(m) = self.waiting_message {
            w.waiting_message = m;
        }
        if let Some(o) = self.observed {
            w.observed = o;
        }
        if let Some((code, message)) = self.failed {
            w.fail(code, w.comp.target.clone(), message);
        }
    }
}

impl TargetIo {
    async fn run(self) -> IoDone {
        let mut done = IoDone::default();
        let digest = self.desired.rendered.digest.short();
        if self.decision.stage {
            // Failed, or not staged yet: nothing may be applied (not even in
            // an open window) before the target has prepared all of it.
            if let Err(done) = ahead::stage(self.target.as_ref(), &self.desired).await {
                return done;
            }
        }
        match self.decision.apply {
            // Staging may have taken a while: the window is judged again
            // right before the apply starts (invariant 2).
            Apply::Now { overridden: false }
                if window_closed(&self.fleet, self.window.as_deref(), self.clock.now()) =>
            {
                done.waiting = Some(Reason::WindowClosed);
            }
            Apply::Now { overridden } => {
                if let Err(e) = self.target.apply(&self.desired, StateGoal::Apply).await {
                    done.failed = Some((ErrorCode::ApplyFailed, e.to_string()));
                    return done;
                }
                tracing::info!(composition = %self.id, %digest, overridden, "applied");
            }
            Apply::Wait(r) => done.waiting = Some(r),
            Apply::Done => {}
        }
        self.observe(done).await
    }

    async fn observe(&self, done: IoDone) -> IoDone {
        ahead::observe(self.target.as_ref(), &self.id, done).await
    }
}

/// Waits until what `targets` wrote is durable. A failed sync is said,
/// not undone: the states were switched, only perhaps not durably.
async fn durable(targets: &[Arc<dyn Target>]) {
    for t in targets {
        if let Err(e) = t.durable().await {
            tracing::warn!(error = %e, "a target's writes may not be durable");
        }
    }
}

/// The symphonies of this branch that keep their applied state although
/// they are not in the loaded fleet: those that failed to load, and, while a
/// file cannot be read, every one known from earlier passes that is absent.
fn held_symphonies<'a>(
    fleet: &'a Fleet,
    unreadable: &'a BTreeMap<String, model::Diagnostic>,
    records: &[(RecordKey, RenderRecord)],
) -> BTreeMap<String, Held<'a>> {
    let mut held: BTreeMap<String, Held<'a>> = fleet
        .failed
        .iter()
        .map(|(s, d)| (s.clone(), Held::Invalid(d)))
        .collect();
    if !unreadable.is_empty() {
        for (key, _) in records {
            let sym = &key.id.symphony;
            if !fleet.symphonies.contains_key(sym) {
                held.entry(sym.clone())
                    .or_insert(Held::Unreadable(unreadable));
            }
        }
    }
    held
}

/// The openings of the windows `statuses` name, over the span
/// `timeline.svg` shows.
fn window_openings(
    fleet: &Fleet,
    statuses: &[DeploymentStatus],
    now: DateTime<Utc>,
) -> crate::status::timeline::Openings {
    let named = statuses
        .iter()
        .filter_map(|s| s.status.window.as_ref())
        .filter_map(|w| fleet.windows.get_key_value(&w.name))
        .map(|(name, mw)| (name, &mw.window));
    crate::status::timeline::openings(named, now)
}

/// `waiting on line-control/db (staged, WindowClosed)`: the dependencies
/// not Ready, each with what it came to this pass.
fn waiting_on(
    depends_on: &[CompositionId],
    rollout: &Rollout,
    came_to: &HashMap<CompositionId, String>,
) -> String {
    let on: Vec<String> = depends_on
        .iter()
        .filter(|d| !rollout.is_ready(d))
        .map(|d| match came_to.get(d) {
            Some(state) => format!("{d} ({state})"),
            None => format!("{d} (not reconciled on this branch)"),
        })
        .collect();
    format!("waiting on {}", on.join(", "))
}

fn condition(t: &str, ok: bool, reason: &str, message: String, now: DateTime<Utc>) -> Condition {
    Condition {
        r#type: t.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time: Some(now),
    }
}

/// A composition's conditions (DESIGN.md section 6): `Ready` (both of
/// the next two), `Staged`, `Programmed` (the target holds the desired
/// state) and `Running` (the target reports it healthy), each with why.
fn conditions_of(w: &Work, window: Option<&WindowStatus>, now: DateTime<Utc>) -> Vec<Condition> {
    let failed = w.error.is_some();
    let programmed = w.digest.is_some() && w.observed.applied == w.digest;
    let staged_ok = w.digest.is_some() && (w.observed.staged == w.digest || programmed);
    let staged = condition(
        "Staged",
        staged_ok,
        match (staged_ok, failed, w.waiting) {
            (true, _, _) => "Staged",
            (false, true, _) => "Failed",
            (false, false, Some(Reason::Staging)) => "Staging",
            (false, false, _) => "Pending",
        },
        match w.waiting {
            Some(Reason::Staging) if !staged_ok => w.waiting_message.clone(),
            _ => String::new(),
        },
        now,
    );
    let why_waiting = match (&w.waiting, window) {
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
    };
    let programmed_reason = match (programmed, failed) {
        (true, _) => "Applied",
        (false, true) => "Failed",
        (false, false) => w.waiting.map(|r| r.as_str()).unwrap_or("Pending"),
    };
    let programmed_c = condition(
        "Programmed",
        programmed,
        programmed_reason,
        why_waiting,
        now,
    );
    let running = match &w.observed.health {
        Some(Health::Healthy) => condition("Running", true, "Healthy", String::new(), now),
        Some(Health::Unhealthy(m)) => condition("Running", false, "Unhealthy", m.clone(), now),
        Some(Health::Failed(m)) => condition("Running", false, "HealthTimeout", m.clone(), now),
        _ => condition(
            "Running",
            false,
            "NotApplied",
            "nothing applied yet".to_string(),
            now,
        ),
    };
    let ready_ok = programmed && running.status == "True" && !failed;
    let ready_reason = if ready_ok {
        "Ready"
    } else if failed {
        "Failed"
    } else if !programmed {
        &programmed_c.reason
    } else {
        &running.reason
    };
    let ready_message = if ready_ok {
        String::new()
    } else {
        programmed_c.message.clone()
    };
    let ready = condition("Ready", ready_ok, ready_reason, ready_message, now);
    vec![ready, staged, programmed_c, running]
}

/// A status as a removal shows it: every component `removing`, and
/// `Ready` says why it is not gone yet.
fn mark_removing(st: &mut DeploymentStatus, reason: &str, message: String) {
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
        ready.message = message;
    }
}

/// A status as a confirmed delete leaves it: `removed`, every component
/// too, with nothing applied and `Ready` saying so.
fn mark_removed(st: &mut DeploymentStatus, now: DateTime<Utc>) {
    st.status.state = State::Removed;
    st.status.applied = None;
    st.status.window = None;
    st.status.error = None;
    for c in &mut st.status.components {
        c.state = State::Removed;
        c.error = None;
    }
    st.status.conditions = vec![condition(
        "Ready",
        false,
        "Removed",
        "removed from the branch and deleted from its target".to_string(),
        now,
    )];
}

/// The definition of a Target recorded with a composition, else (records
/// of older versions have only the name) the fleet's definition by that name.
fn recorded_kind(
    kind: &Option<TargetKind>,
    name: &Option<String>,
    fleet: &Fleet,
) -> Option<TargetKind> {
    kind.clone().or_else(|| {
        name.as_ref()
            .and_then(|n| fleet.targets.get(n))
            .map(|t| t.kind.clone())
    })
}

/// What status says of the window `name` (if any) at `now`.
/// Keeps `ws` in the report, with its zone: what plans show and the
/// `fermata_window_open` gauge reads.
fn note_window(report: &mut BranchReport, fleet: &Fleet, ws: Option<&WindowStatus>) {
    let Some(ws) = ws else { return };
    let zone = fleet
        .windows
        .get(&ws.name)
        .map(|mw| mw.window.tz.name().to_string())
        .unwrap_or_default();
    report.windows.insert(
        ws.name.clone(),
        WindowInfo {
            zone,
            open: ws.open,
            next_open: ws.next_open,
        },
    );
}

/// Whether any file of `snap` could hold a Site object (it names the kind).
fn may_define_sites(snap: &Snapshot) -> bool {
    snap.under("").any(|(_, e)| match e {
        Entry::File { data, .. } => data.windows(4).any(|w| w == b"Site"),
        _ => false,
    })
}

/// Whether the window `name` (if any) is closed at `now`: judged again
/// right before each write (invariant 2).
fn window_closed(fleet: &Fleet, name: Option<&str>, now: DateTime<Utc>) -> bool {
    name.and_then(|n| fleet.windows.get(n))
        .is_some_and(|mw| !mw.window.is_open(now))
}

fn window_status(fleet: &Fleet, name: Option<&str>, now: DateTime<Utc>) -> Option<WindowStatus> {
    let mw = fleet.windows.get(name?)?;
    let st = mw.window.state_at(now);
    Some(WindowStatus {
        name: mw.window.name.clone(),
        open: st.open,
        next_open: st.next_open,
    })
}

/// The status of a composition whose symphony was removed: `removed (orphaned)`.
fn orphaned_status(
    id: &CompositionId,
    symphony: &str,
    source: &SourceRef,
    now: DateTime<Utc>,
    waits: Option<WindowStatus>,
) -> DeploymentStatus {
    let message = match &waits {
        None => format!(
            "removed (orphaned): symphony {symphony} is gone from the repository; its resources are left in place, annotated {ORPHANED_FROM}: {symphony}"
        ),
        Some(ws) => format!(
            "removed (orphaned): symphony {symphony} is gone from the repository; its resources are left in place and get the annotation {ORPHANED_FROM}: {symphony} in window {} (next opening {})",
            ws.name,
            ws.next_open.map(|t| t.to_rfc3339()).unwrap_or_else(|| "never".into())
        ),
    };
    DeploymentStatus {
        api_version: model::types::API_VERSION.to_string(),
        kind: "DeploymentStatus".to_string(),
        metadata: StatusMetadata::new(id, None, now),
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
                message,
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

fn join_error(e: tokio::task::JoinError) -> SourceError {
    SourceError::Task(e.to_string())
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
    // Site values change the rendering; hashed only where there is a site,
    // so a repository without sites keeps its keys.
    if let Some(site) = &comp.site {
        h.update(b"\0site\0");
        h.update(serde_json::to_vec(site).unwrap_or_default());
    }
    hex::encode(h.finalize())
}

/// The reconciler as the pull request reporter sees it: a planner.
#[async_trait::async_trait(?Send)]
impl Planner for Reconciler {
    async fn plan(&self, base: &str, head: Revision, allow_commands: bool) -> BranchReport {
        self.planner(&head.to_string(), allow_commands)
            .plan_branch(base)
            .await
    }
}

impl Reconciler {
    /// After the branch passes: statuses, pull request plans, plan notes.
    /// Failures are logged and retried next pass; they never fail the pass.
    /// Returns whether what is remembered about them changed.
    pub(super) async fn report_back(&mut self, reports: &[BranchReport]) -> bool {
        let Some(pulls) = self.pulls.clone() else {
            return false;
        };
        if self.may_write().is_err() {
            return false;
        }
        // The memory is taken out while the reconciler plans for it.
        let mut state = std::mem::take(&mut self.persisted.pulls);
        let before = state.clone();
        super::pulls::Reporter {
            settings: &pulls,
            state: &mut state,
            planner: &*self,
            source: self.ctx.source.clone(),
            status: self.status_sink(),
            branches: &self.ctx.settings.branches,
            status_branch: &self.ctx.settings.status_branch,
            site: self
                .ctx
                .settings
                .site
                .clone()
                .unwrap_or_else(|| "default".into()),
            now: self.ctx.clock.now(),
        }
        .report(reports)
        .await;
        let changed = state != before;
        self.persisted.pulls = state;
        changed
    }
}
