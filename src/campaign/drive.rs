//! Carries an activation's steps out against a repository: reads what the
//! engine needs (the Sites and campaigns of the watched branch's head, each
//! promoted site's status branch, approval commits), commits what it
//! decides (promotes and reverts on the watched branch; the state on the
//! status branch, one commit per transition) and says how the step ended.
//!
//! A kill -9 between a promote commit and the state commit that records
//! it is resumed without a second commit: before committing, the driver
//! looks for the commit of that activation, stage and batch (its trailers)
//! on the branch and records that one instead.
//!
//! A promote with `pullRequest: true` commits to a branch of its own,
//! `fermata/campaign/<activation>/<stage>-<batch>`, opens a pull request from
//! it into the watched branch through the forge, and waits until it is
//! merged (then its merge commit is the promote the await reads) or closed
//! (then its sites failed). The forge is only asked: whether a pull request
//! was merged is its answer, passed to the engine as an observation.
//!
//! This version drives a repository read and written in place (a working
//! tree or a bare repository: a CI job's clone, a server's repository);
//! pushing to a remote is the job of whatever runs it (`git push`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::engine::{self, Decision, Replaced, SiteProgress, World};
use super::state::{ActivationState, Approval, Phase};
use super::{commit, edit};
use crate::forge::{Forge, ForgeError, PrState};
use crate::model::campaign::{Action, Campaign};
use crate::model::Fleet;
use crate::source::{GitSource, Revision, SignaturePolicy, Signer};
use crate::status::{State, StatusRepo};

/// How a step ended: `fermata campaign step` exits 0, 0, 3 and 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A stage finished and the next one is current.
    Advanced,
    /// The last stage finished.
    Finished,
    /// The current stage waits (for sites, an approval, time): why, and
    /// by when at the latest something will have changed (a wait's end, an
    /// await's timeout), if known.
    Waiting(String, Option<DateTime<Utc>>),
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error(transparent)]
    Status(#[from] crate::status::StatusError),
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    #[error(transparent)]
    Commit(#[from] commit::CommitError),
    #[error(transparent)]
    Forge(#[from] ForgeError),
    #[error("{0}")]
    Invalid(String),
}

/// Where an activation is driven.
pub struct Driver {
    /// The repository, read and written in place.
    pub repo: PathBuf,
    /// The watched branch promotes are committed to.
    pub branch: String,
    /// The branch activation states are kept on.
    pub status_branch: String,
    pub signing: Option<commit::Signing>,
    /// What an approval commit must satisfy (`None`: any commit counts,
    /// its author is the approver).
    pub trust: SignaturePolicy,
    /// Where promotes with `pullRequest: true` open their pull requests
    /// (`--forge`); without one such a stage fails.
    pub forge: Option<Arc<dyn Forge>>,
    /// Set when `repo` is fermata's mirror of a remote: each step fetches
    /// it first, and every commit is pushed there (compare-and-swap) before
    /// anything records it.
    pub mirror: Option<GitSource>,
}

/// Transitions one step may make before it must stop (a guard: a stage
/// needs at most one per batch and one to finish).
const MAX_TRANSITIONS: usize = 256;

/// Stages one self-driving activation may go through in one pass.
const MAX_STAGES_PER_DRIVE: usize = 32;

impl Driver {
    fn source(&self) -> Result<GitSource, DriveError> {
        Ok(GitSource::open(
            &self.repo.display().to_string(),
            Path::new("."),
        )?)
    }

    fn remote(&self) -> Option<String> {
        self.mirror.as_ref()?.remote().map(str::to_string)
    }

    fn status(&self) -> StatusRepo {
        StatusRepo::new(
            self.git_dir(),
            self.remote(),
            self.status_branch.clone(),
            None,
        )
    }

    fn git_dir(&self) -> PathBuf {
        git2::Repository::open(&self.repo)
            .map(|r| r.path().to_path_buf())
            .unwrap_or_else(|_| self.repo.clone())
    }

    /// The fleet at the watched branch's head.
    fn fleet(&self) -> Result<(Revision, Fleet), DriveError> {
        let source = self.source()?;
        let rev = source.resolve(&format!("refs/heads/{}", self.branch))?;
        let snap = source.snapshot(rev)?;
        let loaded = crate::model::load(&snap, "");
        Ok((rev, loaded.fleet))
    }

    /// The recorded state of `activation`, if any.
    pub fn state(&self, activation: &str) -> Result<Option<ActivationState>, DriveError> {
        let Ok(repo) = git2::Repository::open(&self.repo) else {
            return Err(DriveError::Invalid(format!(
                "cannot open {}",
                self.repo.display()
            )));
        };
        let Ok(tip) = repo.revparse_single(&format!(
            "refs/heads/{}:{}",
            self.status_branch,
            ActivationState::path(activation)
        )) else {
            return Ok(None);
        };
        let Some(blob) = tip.as_blob() else {
            return Ok(None);
        };
        serde_yaml::from_slice(blob.content())
            .map(Some)
            .map_err(|e| DriveError::Invalid(format!("{}: {e}", ActivationState::path(activation))))
    }

    /// Every recorded activation state.
    pub fn states(&self) -> Result<Vec<ActivationState>, DriveError> {
        let repo = git2::Repository::open(&self.repo)
            .map_err(|e| DriveError::Invalid(format!("{}: {e}", self.repo.display())))?;
        read_states(&repo, &self.status_branch)
            .into_iter()
            .map(|r| r.map_err(DriveError::Invalid))
            .collect()
    }

    fn save(&self, state: &ActivationState, what: &str) -> Result<(), DriveError> {
        let yaml = serde_yaml::to_string(state)
            .map_err(|e| DriveError::Invalid(format!("cannot write state: {e}")))?;
        let files = BTreeMap::from([(ActivationState::path(&state.activation), yaml.into_bytes())]);
        let message = format!(
            "campaign {} generation {}: {what}\n\nFermata-Activation: {}\n",
            state.activation, state.generation, state.activation
        );
        self.status().publish_paths(&files, &message)?;
        Ok(())
    }

    /// Runs the current stage of `activation` until it finishes or must
    /// wait, committing every transition.
    pub fn step(
        &self,
        activation: &str,
        now: DateTime<Utc>,
    ) -> Result<(Outcome, ActivationState), DriveError> {
        if let Some(m) = &self.mirror {
            // What the remote holds now: a commit an earlier step could not
            // push is gone from the mirror, so it is never recorded.
            m.fetch()?;
        }
        let (_, fleet) = self.fleet()?;
        let mut state = match self.state(activation)? {
            Some(s) => s,
            None => self.start(&fleet, activation, now)?,
        };
        if matches!(state.phase, Phase::Succeeded | Phase::Failed) {
            let outcome = match state.phase {
                Phase::Failed => Outcome::Failed(state.error.clone().unwrap_or_default()),
                _ => Outcome::Finished,
            };
            return Ok((outcome, state));
        }
        let campaign = fleet
            .campaigns
            .get(&state.campaign)
            .cloned()
            .ok_or_else(|| {
                DriveError::Invalid(format!(
                    "campaign {} is not on {} (or does not load: run fermata validate)",
                    state.campaign, self.branch
                ))
            })?;
        if let Some(queued) = self.queued_behind(&campaign, &state)? {
            return Ok((Outcome::Waiting(queued, None), state));
        }
        let mut fleet = fleet;
        for transition in 0..MAX_TRANSITIONS {
            // Read again after each transition: a promote moved the branch.
            if transition > 0 {
                fleet = self.fleet()?.1;
            }
            let world = self.observe(&campaign, &fleet, &state)?;
            let decision = engine::decide(&campaign, &state, &world, now);
            let stage = state.stage.clone().unwrap_or_default();
            match &decision {
                Decision::Promote {
                    batch,
                    of,
                    sites,
                    set,
                } if proposes(&campaign, &stage) => {
                    let Some(forge) = self.forge.clone() else {
                        let why = format!(
                            "stage {stage}: a promote with pullRequest: true needs a forge to open it on: \
                             pass --forge github|gitea|gitlab (with --forge-repo and a token)"
                        );
                        state = engine::record(state, &Decision::Fail(why.clone()), None, now);
                        self.save(&state, &format!("{stage} failed"))?;
                        return Ok((Outcome::Failed(why), state));
                    };
                    let branch = pull_request_branch(&state.activation, &stage, *batch);
                    self.ready_branch(&branch, &state.activation, &stage, *batch)?;
                    let (commit, replaced) =
                        self.promote(&branch, &fleet, &state, &stage, *batch, *of, sites, set)?;
                    let title = commit::message(
                        &commit::Step {
                            activation: &state.activation,
                            stage: &stage,
                            batch: Some((*batch, *of)),
                        },
                        &commit::set_summary(set, sites),
                    );
                    let title = title.lines().next().unwrap_or_default().to_string();
                    let body = format!(
                        "Campaign {} (activation {}) proposes this change for stage {stage}, batch {batch} of {of}. \
                         Merging it continues the stage; closing it unmerged fails these sites: {}.",
                        state.campaign,
                        state.activation,
                        sites.join(", ")
                    );
                    let pr =
                        on_runtime(forge.open_pull_request(&branch, &self.branch, &title, &body))?;
                    state = engine::record(state, &decision, Some((commit, replaced)), now);
                    if let Some(b) = state
                        .stages
                        .get_mut(&stage)
                        .and_then(|r| r.batches.last_mut())
                    {
                        b.pull_request = Some(pr.number);
                    }
                    self.save(
                        &state,
                        &format!(
                            "{stage} batch {batch}/{of} proposed in pull request #{}",
                            pr.number
                        ),
                    )?;
                }
                Decision::Promote {
                    batch,
                    of,
                    sites,
                    set,
                } => {
                    let done = self.promote(
                        &self.branch,
                        &fleet,
                        &state,
                        &stage,
                        *batch,
                        *of,
                        sites,
                        set,
                    )?;
                    state = engine::record(state, &decision, Some(done), now);
                    self.save(&state, &format!("{stage} batch {batch}/{of} promoted"))?;
                }
                Decision::Merged {
                    batch,
                    pull_request,
                    ..
                } => {
                    let what = format!("{stage} batch {batch} pull request #{pull_request} merged");
                    state = engine::record(state, &decision, None, now);
                    self.save(&state, &what)?;
                }
                Decision::Revert { sites } => {
                    let done = self.revert(&fleet, &state, &stage, sites)?;
                    state = engine::record(state, &decision, Some(done), now);
                    self.save(&state, &format!("{stage} reverted"))?;
                }
                Decision::Verify(v) => {
                    let (passed, detail) = super::verify::check(v);
                    let verified = Decision::Verified { passed, detail };
                    state = engine::record(state, &verified, None, now);
                    let word = if passed { "passed" } else { "failed" };
                    self.save(&state, &format!("{stage} verify {word}"))?;
                }
                Decision::Verified { passed, .. } => {
                    // A site's agent ran it (remote execution).
                    let word = if *passed { "passed" } else { "failed" };
                    state = engine::record(state, &decision, None, now);
                    self.save(&state, &format!("{stage} verify {word} at its site"))?;
                }
                Decision::Approve(found) => {
                    let by: Vec<&str> = found.iter().map(|a| a.by.as_str()).collect();
                    let what = format!("{stage} approved by {}", by.join(", "));
                    state = engine::record(state, &decision, None, now);
                    self.save(&state, &what)?;
                }
                Decision::Advance { next, .. } => {
                    let next = next.clone();
                    state = engine::record(state, &decision, None, now);
                    let what = match &next {
                        Some(n) => format!("{stage} done, next {n}"),
                        None => format!("{stage} done, finished"),
                    };
                    self.save(&state, &what)?;
                    let outcome = match next {
                        Some(_) => Outcome::Advanced,
                        None => Outcome::Finished,
                    };
                    return Ok((outcome, state));
                }
                Decision::Wait { why, until } => {
                    // Only the stage's start is new: recorded once.
                    let started = state.stages.get(&stage).and_then(|r| r.started).is_some();
                    if !started {
                        state = engine::record(state, &decision, None, now);
                        self.save(&state, &format!("{stage} started"))?;
                    }
                    return Ok((Outcome::Waiting(why.clone(), *until), state));
                }
                Decision::Fail(why) => {
                    let why = why.clone();
                    state = engine::record(state, &decision, None, now);
                    self.save(&state, &format!("{stage} failed"))?;
                    return Ok((Outcome::Failed(why), state));
                }
            }
        }
        Err(DriveError::Invalid(format!(
            "{activation}: more than {MAX_TRANSITIONS} transitions in one step"
        )))
    }

    /// Self-driving mode (`fermata run`): every activation of a
    /// `selfDriving` campaign on the watched branch, stepped until it
    /// waits, finishes or fails. A failure of one is its own outcome, not
    /// the others'.
    pub fn drive_all(&self, now: DateTime<Utc>) -> Result<Vec<(String, Outcome)>, DriveError> {
        let (_, fleet) = self.fleet()?;
        let mut names: Vec<String> = fleet
            .activations
            .values()
            .filter(|a| {
                fleet
                    .campaigns
                    .get(&a.campaign)
                    .is_some_and(|c| c.self_driving)
            })
            .map(|a| a.name.clone())
            .collect();
        for s in self.states()? {
            let driving = fleet
                .campaigns
                .get(&s.campaign)
                .is_some_and(|c| c.self_driving);
            if driving && s.phase == Phase::Running && !names.contains(&s.activation) {
                names.push(s.activation);
            }
        }
        let mut out = Vec::new();
        for name in names {
            let mut last = Outcome::Finished;
            for _ in 0..MAX_STAGES_PER_DRIVE {
                match self.step(&name, now) {
                    Ok((Outcome::Advanced, _)) => last = Outcome::Advanced,
                    Ok((o, _)) => {
                        last = o;
                        break;
                    }
                    Err(e) => {
                        last = Outcome::Failed(crate::errors::chain(&e));
                        break;
                    }
                }
            }
            out.push((name, last));
        }
        Ok(out)
    }

    /// A new activation's first state, from its committed Activation.
    fn start(
        &self,
        fleet: &Fleet,
        activation: &str,
        now: DateTime<Utc>,
    ) -> Result<ActivationState, DriveError> {
        let a = fleet.activations.get(activation).ok_or_else(|| {
            DriveError::Invalid(format!(
                "no Activation {activation} on {} and no recorded state",
                self.branch
            ))
        })?;
        let c = fleet.campaigns.get(&a.campaign).ok_or_else(|| {
            DriveError::Invalid(format!(
                "activation {activation}: no campaign {}",
                a.campaign
            ))
        })?;
        Ok(ActivationState::new(
            activation,
            &c.name,
            &c.first_stage,
            a.inputs.clone(),
            now,
        ))
    }

    /// `concurrency: 1`: the older running activation of the campaign
    /// that this one waits for, if any (older: started earlier, then name).
    fn queued_behind(
        &self,
        campaign: &Campaign,
        state: &ActivationState,
    ) -> Result<Option<String>, DriveError> {
        let Some(limit) = campaign.concurrency else {
            return Ok(None);
        };
        let mut ahead: Vec<ActivationState> = self
            .states()?
            .into_iter()
            .filter(|s| s.campaign == campaign.name && s.phase == Phase::Running)
            .filter(|s| (s.started, &s.activation) < (state.started, &state.activation))
            .collect();
        ahead.sort_by(|a, b| (a.started, &a.activation).cmp(&(b.started, &b.activation)));
        if ahead.len() >= limit as usize {
            let names: Vec<&str> = ahead.iter().map(|s| s.activation.as_str()).collect();
            return Ok(Some(format!(
                "queued: campaign {} runs {} at a time; behind {}",
                campaign.name,
                limit,
                names.join(", ")
            )));
        }
        Ok(None)
    }

    /// What the engine needs: the Sites, each promoted site's progress,
    /// the approvals committed.
    fn observe(
        &self,
        campaign: &Campaign,
        fleet: &Fleet,
        state: &ActivationState,
    ) -> Result<World, DriveError> {
        let mut world = World {
            sites: fleet.sites.clone(),
            ..World::default()
        };
        let stage = state.stage.as_deref().and_then(|s| campaign.stage(s));
        if let Some(stage) = stage {
            if let Action::Promote {
                await_: Some(a), ..
            } = &stage.action
            {
                world.progress = self.progress(state, &stage.name, a.state)?;
            }
            world.pull_requests = self.pull_requests(state, &stage.name)?;
            if let Action::Approval { .. } = &stage.action {
                world.approvals = self.approvals(&state.activation, &stage.name)?;
            }
            if let (Action::Verify(_), Some(site)) = (&stage.action, &stage.site) {
                let repo = git2::Repository::open(&self.repo)
                    .map_err(|e| DriveError::Invalid(format!("{}: {e}", self.repo.display())))?;
                if let Some(r) = super::remote::result(&repo, site, &state.activation, &stage.name)
                {
                    world.remote.insert(stage.name.clone(), r);
                }
            }
        }
        Ok(world)
    }

    /// Each promoted site of `stage`: whether it reconciled its promote
    /// commit (or a later one) and every composition that commit changed
    /// there is in `want` (what waits for its window for another reason is
    /// not this campaign's to wait for).
    fn progress(
        &self,
        state: &ActivationState,
        stage: &str,
        want: State,
    ) -> Result<BTreeMap<String, SiteProgress>, DriveError> {
        let mut out = BTreeMap::new();
        let Some(rec) = state.stages.get(stage) else {
            return Ok(out);
        };
        let git_dir = self.git_dir();
        let input = crate::fleet::read::read(&git_dir, &self.branch)?;
        let repo = git2::Repository::open(&git_dir)
            .map_err(|e| DriveError::Invalid(format!("{}: {e}", git_dir.display())))?;
        let contains = |reconciled: &str, commit: &str| -> bool {
            let (Ok(r), Ok(c)) = (git2::Oid::from_str(reconciled), git2::Oid::from_str(commit))
            else {
                return false;
            };
            r == c || repo.graph_descendant_of(r, c).unwrap_or(false)
        };
        for batch in &rec.batches {
            for site in &batch.sites {
                let report = input.sites.iter().find(|r| &r.site == site);
                let p = match report {
                    Some(r)
                        if r.reconciled
                            .as_deref()
                            .is_some_and(|x| contains(x, &batch.commit)) =>
                    {
                        // Affected: what the promote (or a later commit)
                        // changed there, as each status's source says.
                        let affected: Vec<_> = r
                            .statuses
                            .iter()
                            .filter(|s| contains(&s.source.commit, &batch.commit))
                            .collect();
                        match affected.iter().find(|s| s.status.state == State::Failed) {
                            Some(f) => SiteProgress::Failed(format!(
                                "{}: {}",
                                f.composition(),
                                f.status
                                    .error
                                    .as_ref()
                                    .map(|e| format!("{}: {}", e.code, e.message))
                                    .unwrap_or_else(|| "failed".into())
                            )),
                            None if affected.iter().all(|s| s.status.state == want) => {
                                SiteProgress::Reached
                            }
                            None => SiteProgress::NotYet,
                        }
                    }
                    _ => SiteProgress::NotYet,
                };
                out.insert(site.clone(), p);
            }
        }
        Ok(out)
    }

    /// Approval commits for `activation`'s `stage` on the watched branch
    /// (trailer `Fermata-Approve: <activation>/<stage>`), each accepted
    /// only if it passes the trust policy; the signer (or, without a
    /// policy, the author) is the approver.
    fn approvals(&self, activation: &str, stage: &str) -> Result<Vec<Approval>, DriveError> {
        let source = self.source()?;
        let repo = git2::Repository::open(source.git_dir())
            .map_err(|e| DriveError::Invalid(format!("{}: {e}", self.repo.display())))?;
        let mut walk = repo
            .revwalk()
            .map_err(|e| DriveError::Invalid(e.to_string()))?;
        walk.push_ref(&format!("refs/heads/{}", self.branch))
            .map_err(|e| DriveError::Invalid(e.to_string()))?;
        let trailer = format!("Fermata-Approve: {activation}/{stage}");
        let mut out = Vec::new();
        for oid in walk.take(2000).flatten() {
            let Ok(c) = repo.find_commit(oid) else {
                continue;
            };
            let message = c.message().unwrap_or_default();
            if !message.lines().any(|l| l.trim() == trailer) {
                continue;
            }
            let mut named = message
                .lines()
                .find_map(|l| l.strip_prefix("Fermata-Approver: "))
                .map(str::to_string)
                .unwrap_or_else(|| c.author().name().unwrap_or("unknown").to_string());
            if let Some(merger) = merged_by(&repo, &self.branch, oid) {
                named = format!("{named}, merged by {merger}");
            }
            let by = match source.verify(Revision(oid), &self.trust, Utc::now()) {
                Ok(Signer::Unchecked) => named,
                Ok(Signer::Ssh {
                    principals,
                    fingerprint,
                }) => format!(
                    "{named}, signed by {} ({fingerprint})",
                    principals.join(",")
                ),
                Ok(Signer::Gpg {
                    fingerprint,
                    user_id,
                    ..
                }) => match user_id {
                    Some(u) => format!("{named}, signed by {u} ({fingerprint})"),
                    None => format!("{named}, signed by {fingerprint}"),
                },
                Err(e) => {
                    tracing::warn!(commit = %oid, error = %e, "approval refused: it does not pass the signature policy");
                    continue;
                }
            };
            let reason = message
                .lines()
                .find_map(|l| l.strip_prefix("Fermata-Reason: "))
                .unwrap_or_default()
                .to_string();
            let at = DateTime::from_timestamp(c.time().seconds(), 0).unwrap_or_default();
            out.push(Approval {
                stage: stage.to_string(),
                by,
                reason,
                via: oid.to_string(),
                at,
            });
        }
        out.reverse();
        Ok(out)
    }

    /// What the forge says of each pull request of `stage` not recorded as
    /// merged yet.
    fn pull_requests(
        &self,
        state: &ActivationState,
        stage: &str,
    ) -> Result<BTreeMap<u64, PrState>, DriveError> {
        let mut out = BTreeMap::new();
        let Some(rec) = state.stages.get(stage) else {
            return Ok(out);
        };
        for b in rec.batches.iter().filter(|b| !b.merged) {
            let Some(n) = b.pull_request else {
                continue;
            };
            let Some(forge) = &self.forge else {
                return Err(DriveError::Invalid(format!(
                    "stage {stage} waits for pull request #{n}: pass --forge github|gitea|gitlab \
                     (with --forge-repo and a token) to read it"
                )));
            };
            let pr = on_runtime(forge.pull_request(n))?;
            out.insert(n, pr.state);
        }
        Ok(out)
    }

    /// The branch of a batch's pull request, at the watched branch's head,
    /// unless it already holds the batch's commit (an interrupted step made
    /// it): that one is proposed again, never a second.
    fn ready_branch(
        &self,
        branch: &str,
        activation: &str,
        stage: &str,
        batch: usize,
    ) -> Result<(), DriveError> {
        let repo = git2::Repository::open(&self.repo)
            .map_err(|e| DriveError::Invalid(format!("{}: {e}", self.repo.display())))?;
        let name = format!("refs/heads/{branch}");
        if repo.refname_to_id(&name).is_ok()
            && commit::find_step(&self.repo, branch, activation, stage, Some(batch), 500)?.is_some()
        {
            return Ok(());
        }
        let head = commit::head(&self.repo, &self.branch)?;
        repo.reference(&name, head, true, "fermata: campaign pull request branch")
            .map_err(|e| DriveError::Invalid(format!("cannot create {name}: {e}")))?;
        Ok(())
    }

    /// One promote commit on `into` (the watched branch, or a pull
    /// request's) or the one an interrupted run already made there: then
    /// what it replaced is read off its parent.
    #[allow(clippy::too_many_arguments)]
    fn promote(
        &self,
        into: &str,
        fleet: &Fleet,
        state: &ActivationState,
        stage: &str,
        batch: usize,
        of: usize,
        sites: &[String],
        set: &BTreeMap<String, String>,
    ) -> Result<(String, Replaced), DriveError> {
        let found =
            commit::find_step(&self.repo, into, &state.activation, stage, Some(batch), 500)?;
        let base = match found {
            Some(id) => self.parent(id)?,
            None => commit::head(&self.repo, into)?,
        };
        let mut replaced = Replaced::new();
        let mut files: BTreeMap<String, String> = BTreeMap::new();
        for site in sites {
            let path = site_file(fleet, site)?;
            let text = match files.get(&path) {
                Some(t) => t.clone(),
                None => self.read_file(base, &path)?,
            };
            let e = edit::set_env(&text, site, set)
                .map_err(|e| DriveError::Invalid(format!("{path}: {e}")))?;
            replaced.insert(site.clone(), e.replaced);
            files.insert(path, e.text);
        }
        if let Some(id) = found {
            return Ok((id.to_string(), replaced));
        }
        let step = commit::Step {
            activation: &state.activation,
            stage,
            batch: Some((batch, of)),
        };
        let message = commit::message(&step, &commit::set_summary(set, sites));
        let edits: Vec<(String, String)> = files.into_iter().collect();
        let id = commit_and_push(
            &self.repo,
            self.remote().as_deref(),
            (into, base, into != self.branch),
            &edits,
            &message,
            self.signing.as_ref(),
        )?;
        Ok((id.to_string(), replaced))
    }

    /// One revert commit restoring `sites`' values.
    fn revert(
        &self,
        fleet: &Fleet,
        state: &ActivationState,
        stage: &str,
        sites: &Replaced,
    ) -> Result<(String, Replaced), DriveError> {
        if let Some(found) = commit::find_step(
            &self.repo,
            &self.branch,
            &state.activation,
            stage,
            None,
            500,
        )? {
            return Ok((found.to_string(), sites.clone()));
        }
        let base = commit::head(&self.repo, &self.branch)?;
        let mut files: BTreeMap<String, String> = BTreeMap::new();
        for (site, was) in sites {
            let Ok(path) = site_file(fleet, site) else {
                continue; // the Site is gone: nothing to restore
            };
            let text = match files.get(&path) {
                Some(t) => t.clone(),
                None => self.read_file(base, &path)?,
            };
            let restored = edit::restore(&text, site, was)
                .map_err(|e| DriveError::Invalid(format!("{path}: {e}")))?;
            files.insert(path, restored);
        }
        let names: Vec<String> = sites.keys().cloned().collect();
        let keys: std::collections::BTreeSet<&String> =
            sites.values().flat_map(|r| r.values.keys()).collect();
        let step = commit::Step {
            activation: &state.activation,
            stage,
            batch: None,
        };
        let message = commit::message(&step, &commit::restore_summary(keys, &names));
        let edits: Vec<(String, String)> = files.into_iter().collect();
        let id = commit_and_push(
            &self.repo,
            self.remote().as_deref(),
            (&self.branch, base, false),
            &edits,
            &message,
            self.signing.as_ref(),
        )?;
        Ok((id.to_string(), sites.clone()))
    }

    fn parent(&self, id: git2::Oid) -> Result<git2::Oid, DriveError> {
        let repo = git2::Repository::open(&self.repo)
            .map_err(|e| DriveError::Invalid(format!("{}: {e}", self.repo.display())))?;
        let c = repo
            .find_commit(id)
            .map_err(|e| DriveError::Invalid(format!("{id}: {e}")))?;
        c.parent_id(0)
            .map_err(|e| DriveError::Invalid(format!("{id}: {e}")))
    }

    /// `path` as commit `at` has it.
    fn read_file(&self, at: git2::Oid, path: &str) -> Result<String, DriveError> {
        commit::read_file(&self.repo, at, path)?
            .ok_or_else(|| DriveError::Invalid(format!("{path}: not in commit {at}")))
    }
}

/// Approves `stage` of `activation` as `who`: a commit on `branch` adding
/// the approval file, with the trailers the driver looks for
/// (`Fermata-Approve`, `Fermata-Approver`, `Fermata-Reason`), signed with
/// `signing` where a signature policy holds. Not a step's own commit:
/// `find_step` must not take it for the stage's promote.
pub fn approve(
    (repo, remote): (&Path, Option<&str>),
    branch: &str,
    (activation, stage): (&str, &str),
    who: &str,
    reason: &str,
    signing: Option<&commit::Signing>,
) -> Result<git2::Oid, DriveError> {
    let (path, body, message) = approval(activation, stage, who, reason)?;
    let base = commit::head(repo, branch)?;
    commit_and_push(
        repo,
        remote,
        (branch, base, false),
        &[(path, body)],
        &message,
        signing,
    )
}

/// Proposes the approval of `stage` of `activation` as a pull request:
/// the approval commit on `fermata/approve/<activation>/<stage>`, at the
/// watched branch's head; merging it (a reviewer's act) is what approves,
/// and the driver records who merged it. Returns the pull request number.
pub fn propose_approval(
    (repo, remote): (&Path, Option<&str>),
    branch: &str,
    (activation, stage): (&str, &str),
    who: &str,
    reason: &str,
    (signing, forge): (Option<&commit::Signing>, &dyn Forge),
) -> Result<u64, DriveError> {
    let (path, body, message) = approval(activation, stage, who, reason)?;
    let head = commit::head(repo, branch)?;
    let proposal = format!("fermata/approve/{activation}/{stage}");
    let opened = git2::Repository::open(repo)
        .map_err(|e| DriveError::Invalid(format!("{}: {e}", repo.display())))?;
    if opened
        .refname_to_id(&format!("refs/heads/{proposal}"))
        .is_err()
    {
        opened
            .reference(
                &format!("refs/heads/{proposal}"),
                head,
                false,
                "fermata: approval proposal",
            )
            .map_err(|e| DriveError::Invalid(format!("cannot create {proposal}: {e}")))?;
        commit_and_push(
            repo,
            remote,
            (&proposal, head, true),
            &[(path, body)],
            &message,
            signing,
        )?;
    }
    let title = format!("Approve campaign {activation} stage {stage}");
    let body =
        format!("{reason}\n\nMerging this approves stage `{stage}` of activation `{activation}`.");
    let pr = on_runtime(forge.open_pull_request(&proposal, branch, &title, &body))?;
    Ok(pr.number)
}

/// The approval file, its content and the commit message with the
/// trailers the driver looks for.
fn approval(
    activation: &str,
    stage: &str,
    who: &str,
    reason: &str,
) -> Result<(String, String, String), DriveError> {
    let path = format!("campaigns/approvals/{activation}/{stage}/{who}.yaml");
    let body = serde_yaml::to_string(&serde_json::json!({
        "activation": activation, "stage": stage, "by": who, "reason": reason,
    }))
    .map_err(|e| DriveError::Invalid(e.to_string()))?;
    let step = commit::Step {
        activation,
        stage,
        batch: None,
    };
    let mut message = commit::message(&step, &format!("approved by {who}"))
        .replace(&format!("{}: {stage}\n", commit::TRAILER_STAGE), "");
    message.push_str(&format!(
        "Fermata-Approve: {activation}/{stage}\nFermata-Approver: {who}\nFermata-Reason: {}\n",
        reason.replace('\n', " ")
    ));
    Ok((path, body, message))
}

/// Starts `name`, an activation of `campaign` with `inputs`: a committed
/// Activation under `campaigns/activations/`.
pub fn activate(
    (repo, remote): (&Path, Option<&str>),
    branch: &str,
    (campaign, name): (&str, &str),
    inputs: &BTreeMap<String, String>,
    signing: Option<&commit::Signing>,
) -> Result<git2::Oid, DriveError> {
    let body = serde_yaml::to_string(&serde_json::json!({
        "apiVersion": crate::model::types::API_VERSION,
        "kind": "Activation",
        "metadata": {"name": name},
        "spec": {"campaign": campaign, "inputs": inputs},
    }))
    .map_err(|e| DriveError::Invalid(e.to_string()))?;
    let path = format!("campaigns/activations/{name}.yaml");
    let message = format!("campaign {campaign}: activate {name}\n\nFermata-Activation: {name}\n");
    let base = commit::head(repo, branch)?;
    commit_and_push(
        repo,
        remote,
        (branch, base, false),
        &[(path, body)],
        &message,
        signing,
    )
}

/// One commit on `branch` over `base` (see [`commit::promote`]), pushed to
/// `remote` when the repository is a mirror, only if the remote still holds
/// `base` there, or, for a branch of fermata's own made for a pull request
/// (`proposal`), holds no such branch yet; otherwise an error, and the step
/// is taken again on what the remote holds (the refused commit is never
/// recorded: the next fetch drops it).
fn commit_and_push(
    repo: &Path,
    remote: Option<&str>,
    (branch, base, proposal): (&str, git2::Oid, bool),
    edits: &[(String, String)],
    message: &str,
    signing: Option<&commit::Signing>,
) -> Result<git2::Oid, DriveError> {
    let opened = git2::Repository::open(repo)
        .map_err(|e| DriveError::Invalid(format!("{}: {e}", repo.display())))?;
    let name = format!("refs/heads/{branch}");
    let old = (!proposal).then_some(base);
    let id = commit::promote(repo, branch, base, edits, message, signing)?;
    if let Some(url) = remote {
        let to = StatusRepo::new(
            opened.path().to_path_buf(),
            Some(url.to_string()),
            branch,
            None,
        );
        if !to.push_ref(&name, old, id)? {
            return Err(DriveError::Invalid(format!(
                "{branch} moved on {url} while this step committed: step again"
            )));
        }
    }
    Ok(id)
}

/// Whether `stage` of `campaign` proposes its promotes as pull requests.
fn proposes(campaign: &Campaign, stage: &str) -> bool {
    matches!(
        campaign.stage(stage).map(|s| &s.action),
        Some(Action::Promote {
            pull_request: true,
            ..
        })
    )
}

/// `fermata/campaign/<activation>/<stage>-<batch>`: one branch per batch.
pub fn pull_request_branch(activation: &str, stage: &str, batch: usize) -> String {
    format!("fermata/campaign/{activation}/{stage}-{batch}")
}

/// Runs a forge call on a runtime of its own on a thread of its own, so
/// it runs the same from the CLI and from inside `fermata run`'s runtime.
fn on_runtime<T: Send>(
    call: impl std::future::Future<Output = Result<T, ForgeError>> + Send,
) -> Result<T, DriveError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| DriveError::Invalid(format!("cannot start a runtime: {e}")))?;
            Ok(rt.block_on(call)?)
        })
        .join()
        .unwrap_or_else(|_| Err(DriveError::Invalid("the forge call panicked".into())))
    })
}

/// Who brought `commit` onto `branch` by a merge (a pull request merged
/// by a reviewer: the merge's committer), if a merge did.
fn merged_by(repo: &git2::Repository, branch: &str, commit: git2::Oid) -> Option<String> {
    let mut at = repo
        .find_reference(&format!("refs/heads/{branch}"))
        .ok()?
        .peel_to_commit()
        .ok()?;
    let mut merge = None;
    // Down the first parents while they still hold it: the last one that
    // does is where it arrived.
    loop {
        if at.id() == commit {
            break;
        }
        if !repo.graph_descendant_of(at.id(), commit).ok()? {
            break;
        }
        merge = Some(at.clone());
        at = at.parent(0).ok()?;
    }
    let m = merge.filter(|m| m.parent_count() > 1 || m.id() != commit)?;
    (m.parent_count() > 1).then(|| m.committer().name().unwrap_or("unknown").to_string())
}

/// Every activation state file (`campaigns/<activation>.yaml`) on
/// `status_branch` of `repo`, each as parsed, or why it cannot be.
pub fn read_states(
    repo: &git2::Repository,
    status_branch: &str,
) -> Vec<Result<ActivationState, String>> {
    let Ok(tree) = repo
        .revparse_single(&format!("refs/heads/{status_branch}:campaigns"))
        .and_then(|o| o.peel_to_tree())
    else {
        return Vec::new();
    };
    tree.iter()
        .filter_map(|e| {
            let name = e.name().ok()?.strip_suffix(".yaml")?.to_string();
            let path = ActivationState::path(&name);
            let parsed = e
                .to_object(repo)
                .and_then(|o| o.peel_to_blob())
                .map_err(|err| format!("{path}: {err}"))
                .and_then(|b| {
                    serde_yaml::from_slice(b.content()).map_err(|err| format!("{path}: {err}"))
                });
            Some(parsed)
        })
        .collect()
}

/// The file Site `site` is defined in.
fn site_file(fleet: &Fleet, site: &str) -> Result<String, DriveError> {
    fleet
        .sites
        .get(site)
        .map(|s| s.origin.file.clone())
        .ok_or_else(|| DriveError::Invalid(format!("no Site {site}")))
}
