//! Reporting back where people review changes: commit statuses on every
//! reconciled commit, a plan comment on every open pull request (updated in
//! place, and once more when the merged commit landed), and plan notes on
//! branches matching `--plan-branches` for hosts without a forge API.
//!
//! Plans are dry-run passes of the head commit against what the base branch
//! has applied; they write nothing to any target or status branch. A head
//! that is not on a watched branch never runs `command:` synthesizers
//! unless `--trust-pr-commands`: a plan must not execute code nobody merged.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::forge::{CommitState, CommitStatus, Forge, PrState, PullRequest};
use crate::report::markdown::{self, PlanHeader};
use crate::report::BranchReport;
use crate::source::{Revision, Source};
use crate::status::State;
use crate::status::StatusSink;

/// What `fermata run` was told about pull requests and plans.
#[derive(Debug, Clone, Default)]
pub struct PullSettings {
    pub forge: Option<Arc<dyn Forge>>,
    /// Branches whose heads get a plan note under `refs/notes/fermata-plan`.
    pub plan_branches: Option<glob::Pattern>,
    /// Run `command:` synthesizers for heads that are not on a watched branch.
    pub trust_pr_commands: bool,
}

/// What is remembered across passes (in `state.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PullState {
    /// Pull requests planned, by number.
    #[serde(default)]
    pub plans: BTreeMap<u64, TrackedPull>,
    /// The last commit status posted, per branch (`pr/N` for pull request
    /// heads): a pass that changes nothing posts nothing.
    #[serde(default)]
    pub statuses: BTreeMap<String, PostedStatus>,
    /// The head planned into a note, per `--plan-branches` branch.
    #[serde(default)]
    pub noted: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrackedPull {
    pub base: String,
    pub head_sha: String,
    /// The comment as last posted, without a result line.
    pub body: String,
    /// Compositions the plan changes: what must land before "installed".
    pub changes: Vec<String>,
    /// The zone of the windows those wait for (the result's time is shown in it).
    pub zone: Option<String>,
    /// Set once merged: the commit that has to be reconciled.
    pub merged: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PostedStatus {
    pub sha: String,
    pub state: CommitState,
    pub description: String,
}

/// The status context of site `site`: `fermata/SITE`.
pub fn context(site: &str) -> String {
    format!("fermata/{site}")
}

/// The commit status a branch's pass amounts to: failure with the first
/// error, success once everything is installed, pending otherwise. `None`
/// when the pass looked at nothing (an unchanged branch).
pub fn commit_status(report: &BranchReport, context: &str) -> Option<(String, CommitStatus)> {
    let rev = report.revision?;
    if report.unchanged {
        return None;
    }
    let failed = report
        .rows
        .iter()
        .find(|r| r.state == State::Failed)
        .map(|r| format!("{}: {}", r.id, r.note))
        .or_else(|| {
            report
                .errors
                .iter()
                .find(|e| !e.starts_with("fetch failed;"))
                .cloned()
        });
    let count = |s: State| report.rows.iter().filter(|r| r.state == s).count();
    let (state, description) = if let Some(e) = failed {
        (CommitState::Failure, e)
    } else if report
        .rows
        .iter()
        .all(|r| matches!(r.state, State::Installed | State::Removed))
    {
        (
            CommitState::Success,
            format!("{} installed", count(State::Installed)),
        )
    } else {
        let mut d = format!(
            "{} installed, {} staged, {} pending",
            count(State::Installed),
            count(State::Staged),
            report.rows.len() - count(State::Installed) - count(State::Staged),
        );
        if let Some(next) = report.next_window {
            d.push_str(&format!(
                "; next window opens {}",
                next.format("%Y-%m-%d %H:%M UTC")
            ));
        }
        (CommitState::Pending, d)
    };
    Some((
        rev.to_string(),
        CommitStatus {
            context: context.to_string(),
            state,
            description,
            target_url: None,
        },
    ))
}

/// What reporting back needs of the reconciler: a plan of a head against
/// what a watched branch has applied, as a dry run that writes nothing.
#[async_trait::async_trait(?Send)]
pub trait Planner {
    async fn plan(&self, base: &str, head: Revision, allow_commands: bool) -> BranchReport;
}

/// Reporting back for one pass: what it needs, borrowed; what it
/// remembers ([`PullState`]) lent to it. It knows the reconciler only as a
/// [`Planner`].
pub struct Reporter<'a> {
    pub settings: &'a PullSettings,
    pub state: &'a mut PullState,
    pub planner: &'a dyn Planner,
    pub source: Arc<dyn Source>,
    pub status: Arc<dyn StatusSink>,
    pub branches: &'a [String],
    pub status_branch: &'a str,
    /// This site's name in markers and status contexts.
    pub site: String,
    pub now: DateTime<Utc>,
}

impl Reporter<'_> {
    /// Statuses, pull request plans, plan notes for this pass's reports.
    pub async fn report(&mut self, reports: &[BranchReport]) {
        let pulls = self.settings;
        let context = context(&self.site_name());
        if let Some(forge) = &pulls.forge {
            for report in reports {
                if let Some((sha, status)) = commit_status(report, &context) {
                    self.post_status(forge.as_ref(), &report.branch, &sha, status)
                        .await;
                }
            }
            // The numbers of every open pull request, when every list worked:
            // those need no question whether they were merged.
            let mut open = Some(std::collections::HashSet::new());
            for base in self.branches {
                match self.plan_pulls(forge.as_ref(), pulls, base).await {
                    Ok(numbers) => {
                        if let Some(open) = open.as_mut() {
                            open.extend(numbers);
                        }
                    }
                    Err(e) => {
                        open = None;
                        tracing::warn!(branch = %base, error = %e, "cannot plan pull requests");
                    }
                }
            }
            self.follow_merged(forge.as_ref(), reports, open.as_ref())
                .await;
        }
        if let Some(pattern) = &pulls.plan_branches {
            self.plan_notes(pattern, pulls).await;
        }
    }

    async fn post_status(&mut self, forge: &dyn Forge, key: &str, sha: &str, status: CommitStatus) {
        let posted = PostedStatus {
            sha: sha.to_string(),
            state: status.state,
            description: status.description.clone(),
        };
        if self.state.statuses.get(key) == Some(&posted) {
            return;
        }
        match forge.set_status(sha, &status).await {
            Ok(()) => {
                tracing::info!(commit = %sha, state = ?status.state, context = %status.context, "commit status posted");
                self.state.statuses.insert(key.to_string(), posted);
            }
            // Not remembered: the next pass posts it again.
            Err(e) => tracing::warn!(commit = %sha, error = %e, "cannot post commit status"),
        }
    }

    /// Plans every open pull request against `base` whose head is new;
    /// returns the numbers of all open ones.
    async fn plan_pulls(
        &mut self,
        forge: &dyn Forge,
        pulls: &PullSettings,
        base: &str,
    ) -> Result<Vec<u64>, crate::forge::ForgeError> {
        let open = forge.open_pull_requests(base).await?;
        let numbers = open.iter().map(|pr| pr.number).collect();
        for pr in open {
            let fresh = self
                .state
                .plans
                .get(&pr.number)
                .is_some_and(|t| t.head_sha == pr.head_sha && t.merged.is_none());
            if fresh {
                continue;
            }
            if let Err(e) = self.plan_pull(forge, pulls, base, &pr).await {
                tracing::warn!(pr = pr.number, error = %crate::errors::chain(&e), "cannot plan pull request");
            }
        }
        Ok(numbers)
    }

    async fn plan_pull(
        &mut self,
        forge: &dyn Forge,
        pulls: &PullSettings,
        base: &str,
        pr: &PullRequest,
    ) -> Result<(), PullError> {
        let rev = self.source.fetch_ref(&pr.head_ref, &pr.head_sha).await?;
        let site = self.site_name();
        let (report, body, blocked) = self.plan_of(base, rev, pulls).await;
        let posted = markdown::truncate(&body, forge.comment_limit());
        forge
            .upsert_comment(pr.number, &markdown::marker(&site), &posted)
            .await?;
        tracing::info!(pr = pr.number, head = %pr.head_sha, "plan posted");
        let changes = report
            .rows
            .iter()
            .filter(|r| r.changes())
            .map(|r| r.id.to_string())
            .collect();
        let zone = report
            .rows
            .iter()
            .filter_map(|r| r.window.as_ref())
            .filter_map(|w| report.windows.get(w))
            .map(|w| w.zone.clone())
            .next();
        self.state.plans.insert(
            pr.number,
            TrackedPull {
                base: base.to_string(),
                head_sha: pr.head_sha.clone(),
                body: posted,
                changes,
                zone,
                merged: None,
            },
        );
        // The head's own status: what merging it would do.
        // A command not run is the policy working, not a broken change.
        let failed = report.rows.iter().any(|r| {
            r.state == State::Failed
                && !report.plans.get(&r.id).is_some_and(|p| p.command_not_run())
        }) || !report.errors.is_empty();
        let status = CommitStatus {
            context: context(&self.site_name()),
            state: if failed {
                CommitState::Failure
            } else {
                CommitState::Success
            },
            description: match (failed, blocked) {
                (true, _) => "plan: errors (see the plan comment)".to_string(),
                (false, true) => "plan posted (command synthesizers not run)".to_string(),
                (false, false) => "plan posted".to_string(),
            },
            target_url: None,
        };
        let key = format!("pr/{}", pr.number);
        self.post_status(forge, &key, &pr.head_sha, status).await;
        Ok(())
    }

    /// Pull requests planned earlier that are no longer open: merged ones
    /// are followed until their commit landed, then the comment says so.
    async fn follow_merged(
        &mut self,
        forge: &dyn Forge,
        reports: &[BranchReport],
        open: Option<&std::collections::HashSet<u64>>,
    ) {
        let numbers: Vec<u64> = self.state.plans.keys().copied().collect();
        let now = self.now;
        for number in numbers {
            let Some(tracked) = self.state.plans.get(&number).cloned() else {
                continue;
            };
            if tracked.merged.is_none() {
                if open.is_some_and(|o| o.contains(&number)) {
                    continue;
                }
                let pr = match forge.pull_request(number).await {
                    Ok(pr) => pr,
                    Err(e) => {
                        tracing::warn!(pr = number, error = %e, "cannot read pull request");
                        continue;
                    }
                };
                match pr.state {
                    PrState::Open => continue,
                    PrState::Closed => {
                        self.state.plans.remove(&number);
                        continue;
                    }
                    PrState::Merged { merge_commit } => {
                        let merged = merge_commit.unwrap_or(pr.head_sha);
                        if let Some(t) = self.state.plans.get_mut(&number) {
                            t.merged = Some(merged);
                        }
                    }
                }
            }
            let Some(tracked) = self.state.plans.get(&number).cloned() else {
                continue;
            };
            let Some(result) = self.landed(&tracked, reports, now).await else {
                continue;
            };
            let marker = markdown::marker(&self.site_name());
            let body = tracked
                .body
                .replacen(&marker, &format!("{marker}\n**{result}**\n"), 1);
            match forge.upsert_comment(number, &marker, &body).await {
                Ok(_) => {
                    tracing::info!(pr = number, %result, "plan comment updated after merge");
                    self.state.plans.remove(&number);
                }
                Err(e) => tracing::warn!(pr = number, error = %e, "cannot update plan comment"),
            }
        }
    }

    /// `installed at …` or `failed: …` once the merged commit was reconciled
    /// on the base branch and the planned changes landed; `None` until then.
    async fn landed(
        &self,
        t: &TrackedPull,
        reports: &[BranchReport],
        now: DateTime<Utc>,
    ) -> Option<String> {
        let merged = git2::Oid::from_str(t.merged.as_deref()?).ok()?;
        let report = reports.iter().find(|r| r.branch == t.base)?;
        let rev = report.revision?;
        if !self.source.is_descendant(rev, Revision(merged)).await {
            return None;
        }
        if let Some(failed) = report
            .rows
            .iter()
            .find(|r| r.state == State::Failed && t.changes.contains(&r.id.to_string()))
        {
            return Some(format!("failed: {}: {}", failed.id, failed.note));
        }
        // An unchanged branch was settled before: everything on it is Ready.
        let done = report.unchanged
            || t.changes.iter().all(|c| {
                report.rows.iter().any(|r| {
                    r.id.to_string() == *c && matches!(r.state, State::Installed | State::Removed)
                }) || !report.rows.iter().any(|r| r.id.to_string() == *c)
            });
        if !done {
            return None;
        }
        Some(format!(
            "installed at {}",
            markdown::local_time(&now, t.zone.as_deref())
        ))
    }

    /// This site's name in markers and status contexts (`default` without `--site`).
    fn site_name(&self) -> String {
        self.site.clone()
    }

    /// Plans `head` against what `base` has applied: the report, its
    /// Markdown, and whether `command:` synthesizers were held back.
    async fn plan_of(
        &self,
        base: &str,
        head: Revision,
        pulls: &PullSettings,
    ) -> (BranchReport, String, bool) {
        let allow = pulls.trust_pr_commands || self.on_watched_branch(head).await;
        let hex = head.to_string();
        let report = self.planner.plan(base, head, allow).await;
        let site = self.site_name();
        let blocked = !allow && blocked_commands(&report);
        let header = PlanHeader {
            site: &site,
            head: &hex,
            base,
            commands_blocked: blocked,
            result: None,
        };
        let body = markdown::plan_markdown(&header, &report);
        (report, body, blocked)
    }

    /// Whether `rev` is on a watched branch (merged there by someone): its
    /// `command:` synthesizers run there anyway.
    async fn on_watched_branch(&self, rev: Revision) -> bool {
        for b in self.branches.iter() {
            if let Ok(head) = self.source.resolve(&format!("refs/heads/{b}")).await {
                if self.source.is_descendant(head, rev).await {
                    return true;
                }
            }
        }
        false
    }

    /// Plan notes on the heads of branches matching `--plan-branches`.
    async fn plan_notes(&mut self, pattern: &glob::Pattern, pulls: &PullSettings) {
        let branches = match self.source.branches().await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list branches for plan notes");
                return;
            }
        };
        let Some(base) = self.branches.first().cloned() else {
            return;
        };
        let marker = markdown::marker(&self.site_name());
        for (branch, head) in &branches {
            let (branch, head) = (branch.clone(), *head);
            if !pattern.matches(&branch)
                || self.branches.contains(&branch)
                || branch == self.status_branch
            {
                continue;
            }
            let head_hex = head.to_string();
            if self.state.noted.get(&branch) == Some(&head_hex) {
                continue;
            }
            let (_, body, _) = self.plan_of(&base, head, pulls).await;
            match self.status.publish_plan_note(head.0, &marker, &body).await {
                Ok(_) => {
                    tracing::info!(%branch, head = %head.short(), "plan note written");
                    self.state.noted.insert(branch, head_hex);
                }
                Err(e) => tracing::warn!(%branch, error = %e, "cannot write plan note"),
            }
        }
        // Branches that are gone need no memory.
        self.state
            .noted
            .retain(|b, _| branches.iter().any(|(n, _)| n == b));
    }
}

/// Why one pull request could not be planned (tried again next pass).
#[derive(Debug, thiserror::Error)]
enum PullError {
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error(transparent)]
    Forge(#[from] crate::forge::ForgeError),
    #[error("fetching the head: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Whether a plan refused to run some `command:` synthesizer.
fn blocked_commands(report: &BranchReport) -> bool {
    report.plans.values().any(|p| p.command_not_run())
}
