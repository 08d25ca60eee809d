//! The status branch (DESIGN.md section 7): after a pass whose outcome
//! changed, one commit holding a `DeploymentStatus` file per composition and a
//! `summary.md`, plus a note on the source commit, so `git log --notes=fermata`
//! shows the outcome beside the user's commit.
//!
//! Layout: `<source-branch>/<symphony>/<variation>.yaml` and
//! `<source-branch>/summary.md`, so source branches never overwrite each
//! other and two writers can always be merged file by file.
//!
//! **Sites** (DESIGN.md section 9): a site agent (`--site S`) writes only
//! its own refs, branch `fermata/sites/S` ([`site_branch`], the same
//! layout: the branch is the site's) and notes `refs/notes/fermata-sites/S`
//! ([`site_notes_ref`]; plan notes `refs/notes/fermata-plan-sites/S`), so
//! no two sites ever push the same ref and N sites reporting at once cost N
//! pushes, not N² retries. The names sit beside `fermata/status` and
//! `refs/notes/fermata`, not below them: Git cannot hold a ref `a/b` beside
//! a ref `a`. `git log --notes='fermata-sites/*'` shows every site's note
//! beside the user's commit (one `Notes (fermata-sites/S):` block per
//! site); subjects name the site: `plant-a main@3f2a1c0: 12 installed`.
//! Without a site, status goes to `fermata/status` and `refs/notes/fermata`
//! as it always did.
//!
//! Commits are built in memory (an [`Index`] that is never written to disk),
//! so publishing works the same in a bare mirror and in the user's own
//! repository, and never touches a working tree.

use chrono::{DateTime, Utc};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use git2::{
    AutotagOption, ErrorCode, FetchOptions, Index, IndexEntry, IndexTime, ObjectType, Oid,
    PushOptions, Repository, Signature, Tree,
};

use nix::fcntl::Flock;

use super::{timeline, DeploymentStatus, State};
use crate::model::Digest;
use crate::source::SourceRef;

/// Where the per-commit summary notes live (`git log --notes=fermata`).
pub const NOTES_REF: &str = "refs/notes/fermata";

/// Where plans of branches matching `--plan-branches` live, on their head
/// commits (`git log --notes=fermata-plan`): the plan for hosts without a forge API.
pub const PLAN_NOTES_REF: &str = "refs/notes/fermata-plan";

/// A site's status branch is this plus its name ([`site_branch`]).
pub const SITE_BRANCH_PREFIX: &str = "fermata/sites/";

/// A site's notes ref is this plus its name ([`site_notes_ref`]).
pub const SITE_NOTES_PREFIX: &str = "refs/notes/fermata-sites/";

/// A site's plan notes ref is this plus its name ([`site_plan_notes_ref`]).
pub const SITE_PLAN_NOTES_PREFIX: &str = "refs/notes/fermata-plan-sites/";

/// `fermata/sites/<site>`: the only branch site `site` writes.
pub fn site_branch(site: &str) -> String {
    format!("{SITE_BRANCH_PREFIX}{site}")
}

/// `refs/notes/fermata-sites/<site>`: the only notes ref site `site` writes
/// its summaries to (`git log --notes='fermata-sites/*'` shows them all).
pub fn site_notes_ref(site: &str) -> String {
    format!("{SITE_NOTES_PREFIX}{site}")
}

/// `refs/notes/fermata-plan-sites/<site>`: site `site`'s plan notes.
pub fn site_plan_notes_ref(site: &str) -> String {
    format!("{SITE_PLAN_NOTES_PREFIX}{site}")
}

/// How many times a publish is rebuilt on a moved remote tip before giving up.
/// Each retry fetches first, so only a remote moving on every attempt (or a
/// hook rejecting us) exhausts it; the next pass tries again.
const MAX_ATTEMPTS: usize = 12;

/// Retries stop after this long even with attempts left: a pass must end.
const MAX_RETRY_TIME: std::time::Duration = std::time::Duration::from_secs(60);

/// The first retry waits up to this long (full jitter), each later one up
/// to twice as long as the one before, up to [`MAX_BACKOFF`]: writers that
/// lost a race together do not all come back at once.
const BASE_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);
const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(2);

/// A random wait in `0..=min(MAX_BACKOFF, BASE_BACKOFF * 2^(attempt-1))`
/// ("full jitter") before retry number `attempt`.
fn retry_delay(attempt: usize) -> std::time::Duration {
    let shift = u32::try_from(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(16);
    let cap = BASE_BACKOFF.saturating_mul(1 << shift).min(MAX_BACKOFF);
    std::time::Duration::from_millis(rand::random_range(0..=cap.as_millis() as u64))
}

/// One ref a push moves on the remote: from `old`, the value the new one
/// was built on (`None`: the ref must not exist yet), to `new`. The remote
/// ref is updated only if it still holds `old`, whatever the transport.
#[derive(Debug, Clone)]
struct RefUpdate {
    name: String,
    old: Option<Oid>,
    new: Oid,
}

/// Author and committer of status commits and notes. Always `fermata`, never
/// the repository's `user.name`: the commits are the reconciler's report, and
/// a person's name on them would say that person wrote them.
const AUTHOR_NAME: &str = "fermata";
const AUTHOR_EMAIL: &str = "fermata@localhost";

const SUMMARY_FILE: &str = "summary.md";

/// At most this many status commits are read for `timeline.svg`.
const MAX_HISTORY: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The blocking task that wrote it panicked or was cancelled.
    #[error("status task failed: {0}")]
    Task(String),
    /// A git operation failed; `context` says which one and on what.
    #[error("status branch {branch}: {context}: {source}")]
    Git {
        branch: String,
        context: String,
        #[source]
        source: git2::Error,
    },
    /// The remote (or, for a repository written in place, a concurrent
    /// writer) kept moving the branch under us. Nothing is lost: the next
    /// pass compares with the new tip and publishes again.
    #[error("status branch {branch}: update of {target} still rejected after {attempts} attempts: {reason}")]
    Rejected {
        branch: String,
        target: String,
        attempts: usize,
        reason: String,
    },
    /// The remote's history is cut short (a shallow clone): libgit2 builds
    /// the pack against the remote's commits and fails on the first parent
    /// it does not have, saying only "object not found".
    #[error("status branch {branch}: cannot push to {url}: it is a shallow clone: its history stops at commit {commit}, whose parent {parent} it does not have; status can only be pushed to a complete clone (run `git fetch --unshallow` there, or use another remote)")]
    Shallow {
        branch: String,
        url: String,
        commit: String,
        parent: String,
    },
    /// The status branch is the branch the update is about: writing there
    /// would make fermata reconcile its own reports.
    #[error("status branch {branch} is also the watched source branch: refusing to write status to a branch fermata reconciles; choose another status branch")]
    WatchedBranch { branch: String },
    /// Moving a checked-out branch would leave the working tree and index
    /// behind it (git refuses such a push for the same reason).
    #[error("status branch {branch} is checked out in {workdir}: refusing to move it under a working tree; check out another branch there")]
    CheckedOut { branch: String, workdir: String },
    /// A `*.yaml` file on the status branch is not a `DeploymentStatus`.
    #[error("status branch {branch}: {path}: not a DeploymentStatus: {message}")]
    BadStatusFile {
        branch: String,
        path: String,
        message: String,
    },
    /// A name that would become a path, ref or note prefix is unusable.
    #[error("status branch {branch}: invalid {what} {value:?}: {why}")]
    Invalid {
        branch: String,
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("status branch {branch}: {path}: {source}")]
    Lock {
        branch: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// One pass's statuses for one source branch.
#[derive(Debug, Clone)]
pub struct StatusUpdate {
    pub source: SourceRef,
    /// Every composition of the branch: status files not listed are removed.
    pub statuses: Vec<DeploymentStatus>,
    /// `main@3f2a1c0: 12 installed, 3 staged, 1 failed`: commit subject and note.
    pub summary: String,
    /// `summary.md`: a table a person reads on the forge. Compared byte for
    /// byte (relative times aside, [`super::same_summary`]), so it must not
    /// carry time stamps or every pass would commit.
    pub table: String,
    /// The pass's instant, for `timeline.svg`'s `now`.
    pub now: DateTime<Utc>,
    /// Openings of the windows the branch's compositions use, by name, over
    /// the span `timeline.svg` shows.
    pub windows: timeline::Openings,
}

/// The status branch of a repository.
#[derive(Debug, Clone)]
pub struct StatusRepo {
    /// Fingerprints and states of status blobs already read or written, by
    /// blob id: a blob id names its content, so an entry never goes stale,
    /// and a pass parses none of the statuses it wrote itself.
    seen: Arc<Mutex<HashMap<Oid, (Digest, State)>>>,
    git_dir: PathBuf,
    /// Set when `git_dir` is fermata's bare mirror of this URL: publish then
    /// pushes there. `None`: the user's own repository, written in place.
    remote: Option<String>,
    branch: String,
    site: Option<String>,
    /// Where summaries are noted: [`NOTES_REF`], or the site's own.
    notes_ref: String,
    /// Where plans are noted: [`PLAN_NOTES_REF`], or the site's own.
    plan_notes_ref: String,
    /// The layout before per-site refs ([`StatusRepo::shared_layout`]).
    shared: bool,
}

/// The file changes one publish makes under `<source-branch>/`,
/// relative to a given tip. Only files whose content changes are listed.
#[derive(Debug, Default)]
struct Plan {
    /// Path -> the blob already written (and its size): written while
    /// planning, so thousands of status files are never all held in memory.
    /// An unused blob (the branch moved, a retry) is harmless garbage.
    writes: BTreeMap<String, (Oid, usize)>,
    removes: BTreeSet<String>,
    /// The statuses that change, for the commit subject.
    changes: Vec<Change>,
    /// Statuses kept as they are.
    unchanged: usize,
    /// Whether the objects were written into the in-memory pack (more than
    /// [`LOOSE_UP_TO`] files change), to be written out as one pack.
    packed: bool,
}

/// One composition's status moving on the branch: `None` before is a new
/// composition (or an unreadable old file), `None` after a removed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub id: String,
    pub from: Option<State>,
    pub to: Option<State>,
}

/// At most this many changes are named one by one in a subject; more are
/// counted by transition.
const NAMED_CHANGES: usize = 3;

/// What a status commit changes, for its subject:
/// `line-control/vision staged -> installed, 11 unchanged`. A few changes
/// are named; many are counted by transition (`40 staged -> installed`),
/// so a subject stays one readable line for a fleet of thousands.
pub fn describe_changes(changes: &[Change], unchanged: usize) -> String {
    fn state(s: Option<State>) -> &'static str {
        s.map(State::as_str).unwrap_or("new")
    }
    fn transition(c: &Change) -> String {
        match (c.from, c.to) {
            (_, None) => "removed".to_string(),
            (None, Some(to)) => format!("new -> {}", to.as_str()),
            (Some(from), Some(to)) if from == to => format!("{} (updated)", to.as_str()),
            (from, Some(to)) => format!("{} -> {}", state(from), to.as_str()),
        }
    }
    let mut parts: Vec<String> = if changes.len() <= NAMED_CHANGES {
        changes
            .iter()
            .map(|c| format!("{} {}", c.id, transition(c)))
            .collect()
    } else {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for c in changes {
            *counts.entry(transition(c)).or_default() += 1;
        }
        let mut counted: Vec<(String, usize)> = counts.into_iter().collect();
        counted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        counted
            .into_iter()
            .map(|(t, n)| format!("{n} {t}"))
            .collect()
    };
    // No status moved: the commit records that a new commit was reconciled.
    if parts.is_empty() {
        parts.push("reconciled".to_string());
    }
    if unchanged > 0 {
        parts.push(format!("{unchanged} unchanged"));
    }
    parts.join(", ")
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.removes.is_empty()
    }

    /// Where this plan's objects are written: the in-memory pack, or loose.
    fn objects<'r>(&self, loose: &'r Repository, packed: Option<&'r Repository>) -> &'r Repository {
        match packed {
            Some(p) if self.packed => p,
            _ => loose,
        }
    }
}

enum Pushed {
    Done,
    /// Why, and the refs that did move (a branch whose note then lost a race).
    Rejected(String, Vec<String>),
}

/// A status branch as the user gives it: a short name (`fermata/status`) or
/// the full `refs/heads/fermata/status`, which is the same branch (taken as
/// a short name it would become `refs/heads/refs/heads/...`). Another ref
/// or an invalid name is refused before anything is written.
pub fn branch_name(given: &str) -> Result<String, String> {
    let name = given.strip_prefix("refs/heads/").unwrap_or(given);
    if name.starts_with("refs/") {
        return Err(
            "not a branch: give a branch name (fermata/status) or refs/heads/<name>".into(),
        );
    }
    match git2::Branch::name_is_valid(name) {
        Ok(true) => Ok(name.to_string()),
        _ => Err("not a valid branch name (see git check-ref-format --branch)".into()),
    }
}

impl StatusRepo {
    /// The status branch `branch` of the repository at `git_dir` (pushed
    /// to `remote` when that is fermata's mirror of it). With a `site`,
    /// `branch` is not used: a site writes only [`site_branch`] and
    /// [`site_notes_ref`] of its name.
    pub fn new(
        git_dir: PathBuf,
        remote: Option<String>,
        branch: impl Into<String>,
        site: Option<String>,
    ) -> Self {
        let (branch, notes_ref, plan_notes_ref) = match &site {
            Some(s) => (site_branch(s), site_notes_ref(s), site_plan_notes_ref(s)),
            None => (
                branch.into(),
                NOTES_REF.to_string(),
                PLAN_NOTES_REF.to_string(),
            ),
        };
        StatusRepo {
            seen: Arc::default(),
            git_dir,
            remote,
            branch,
            site,
            notes_ref,
            plan_notes_ref,
            shared: false,
        }
    }

    /// The layout sites had before each got its own refs: every site
    /// writes `<site>/<source-branch>/` on the one branch `branch` and its
    /// line of the shared notes. Kept only as `fermata-bench fleet`'s
    /// baseline: N sites at once contend for one ref there.
    pub fn shared_layout(
        git_dir: PathBuf,
        remote: Option<String>,
        branch: &str,
        site: &str,
    ) -> Self {
        StatusRepo {
            branch: branch.to_string(),
            notes_ref: NOTES_REF.to_string(),
            plan_notes_ref: PLAN_NOTES_REF.to_string(),
            shared: true,
            ..StatusRepo::new(git_dir, remote, branch, Some(site.to_string()))
        }
    }

    /// The same repository, written by `site`: its own refs.
    pub fn of_site(&self, site: &str) -> StatusRepo {
        StatusRepo::new(
            self.git_dir.clone(),
            self.remote.clone(),
            self.branch.clone(),
            Some(site.to_string()),
        )
    }

    /// Pushes `name` from `old` to `new` on this repository's remote, only
    /// if the remote still holds `old` (compare-and-swap, any transport):
    /// whether it landed (`false`: the remote moved; nothing was changed
    /// there). Without a remote there is nothing to push: `true`.
    pub fn push_ref(&self, name: &str, old: Option<Oid>, new: Oid) -> Result<bool, StatusError> {
        let Some(url) = &self.remote else {
            return Ok(true);
        };
        let repo = self.open()?;
        let update = RefUpdate {
            name: name.to_string(),
            old,
            new,
        };
        match self.push(&repo, url, &[update], None)? {
            Pushed::Done => Ok(true),
            Pushed::Rejected(why, _) => {
                tracing::info!(%name, %why, "push rejected: the remote moved");
                Ok(false)
            }
        }
    }

    /// The notes ref summaries go to (`refs/notes/fermata`, or the site's).
    pub fn notes_ref(&self) -> &str {
        &self.notes_ref
    }

    /// The notes ref plans go to (`refs/notes/fermata-plan`, or the site's).
    pub fn plan_notes_ref(&self) -> &str {
        &self.plan_notes_ref
    }

    /// The status branch's short name, e.g. `fermata/status`.
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// Commits the update if any status differs (time stamps aside), notes
    /// the summary on the source commit and, for a mirror, pushes both.
    /// Returns the new commit, or `None` when nothing needed committing, in
    /// which case nothing at all was written (invariant 5).
    pub fn publish(&self, update: &StatusUpdate) -> Result<Option<Oid>, StatusError> {
        self.publish_when(update, Box::new(|| ()))
    }

    /// [`StatusRepo::publish`], moving no ref before `durable` has
    /// returned: the objects are written meanwhile.
    pub fn publish_when(
        &self,
        update: &StatusUpdate,
        durable: super::Durable,
    ) -> Result<Option<Oid>, StatusError> {
        let mut durable = Some(durable);
        let stamped;
        let update = match &self.site {
            Some(site) => {
                let mut u = update.clone();
                for s in &mut u.statuses {
                    s.for_site(site);
                }
                stamped = u;
                &stamped
            }
            None => update,
        };
        let source_commit = self.validate(update)?;
        let repo = self.open()?;
        self.refuse_checked_out(&repo)?;
        // A large update's objects are written into memory and land as one
        // pack before any ref names them, not as one loose file each
        // (10,000 status files were 10,000 inodes created at a window's
        // opening). A small one stays loose: a pack per commit would pile up.
        let large = update.statuses.len() > LOOSE_UP_TO;
        if large && self.remote.is_some() {
            // Before `packed` is opened: libgit2 reads the setting from
            // the config a handle loaded.
            limit_delta_window(&repo);
        }
        let packed = large.then(|| self.open()).transpose()?;
        let packed_odb = packed
            .as_ref()
            .map(Repository::odb)
            .transpose()
            .map_err(self.git("open object database"))?;
        let mempack = packed_odb
            .as_ref()
            .map(|odb| odb.add_new_mempack_backend(1000))
            .transpose()
            .map_err(self.git("in-memory object database"))?;
        let base = self.base_dir(&update.source.branch);
        let summary = one_line(&update.summary);
        let sig = Signature::now(AUTHOR_NAME, AUTHOR_EMAIL).map_err(self.git("signature"))?;
        let target = self
            .remote
            .clone()
            .unwrap_or_else(|| self.git_dir.display().to_string());
        let mut reason = String::new();
        let started = std::time::Instant::now();
        let mut writing = None;
        let mut attempts = 0;
        // Our commit, once the remote's branch holds it.
        let mut landed = None;
        // The last commit's objects, when they were written as one pack.
        let mut packed_commit = None;
        for attempt in 1..=MAX_ATTEMPTS {
            if attempt > 1 {
                if started.elapsed() >= MAX_RETRY_TIME {
                    break;
                }
                std::thread::sleep(retry_delay(attempt - 1));
            }
            attempts = attempt;
            let before = (self.tip_id(&repo)?, ref_id(&repo, &self.notes_ref));
            let tip = match before.0 {
                Some(id) => Some(repo.find_commit(id).map_err(self.git("read tip"))?),
                None => None,
            };
            let tip_tree = match &tip {
                Some(c) => Some(c.tree().map_err(self.git("read tip tree"))?),
                None => None,
            };
            let mut plan = self.plan(
                &repo,
                packed.as_ref(),
                mempack.as_ref(),
                tip_tree.as_ref(),
                &base,
                update,
            )?;
            let objects = plan.objects(&repo, packed.as_ref());
            if !plan.is_empty() && update.statuses.len() <= timeline::MAX_ROWS {
                self.add_timeline(objects, before.0, &base, update, &mut plan)?;
            }
            tracing::debug!(
                ms = started.elapsed().as_millis() as u64,
                writes = plan.writes.len(),
                "status planned"
            );
            if plan.is_empty() && attempt == 1 {
                return Ok(None);
            }
            if writing.is_none() {
                writing = Some(self.writer_lock()?);
            }
            let commit = if plan.is_empty() {
                // A retry found the remote already holding exactly our files
                // (an earlier push half-succeeded): only the note may be due.
                None
            } else {
                let tree = self.apply(objects, tip_tree.as_ref(), &plan)?;
                // The parent must be found through the handle that writes
                // the commit: libgit2 silently drops a parent owned by
                // another (a large update was a commit without history).
                let parent = match before.0 {
                    Some(id) => Some(objects.find_commit(id).map_err(self.git("read tip"))?),
                    None => None,
                };
                let parents: Vec<_> = parent.iter().collect();
                let changes = describe_changes(&plan.changes, plan.unchanged);
                let message = self.commit_message(&summary, &changes, &update.source);
                let id = objects
                    .commit(None, &sig, &sig, &message, &tree, &parents)
                    .map_err(self.git("commit"))?;
                if let (true, Some(mempack)) = (plan.packed, &mempack) {
                    let pack = write_pack(objects, mempack, id, before.0)
                        .map_err(self.git("write the status objects"))?;
                    packed_commit = Some(pack);
                }
                if let Some(wait) = durable.take() {
                    wait();
                }
                match self.move_branch(&repo, id, before.0) {
                    Ok(()) => Some(id),
                    Err(e) if matches!(e.code(), ErrorCode::Modified | ErrorCode::Exists) => {
                        // Someone moved the branch since we read it: rebuild on theirs.
                        reason = format!("{} moved during the update", self.branch_ref());
                        continue;
                    }
                    Err(e) => return Err(self.git("update branch")(e)),
                }
            };
            if let Some(wait) = durable.take() {
                wait();
            }
            if let Err(e) = self.write_note(&repo, &sig, source_commit, &summary) {
                if self.remote.is_some() {
                    self.restore(&repo, before);
                }
                return Err(e);
            }
            tracing::debug!(
                ms = started.elapsed().as_millis() as u64,
                "status committed"
            );
            let Some(url) = &self.remote else {
                return Ok(commit.or(landed));
            };
            let mut updates = Vec::new();
            if let Some(id) = commit {
                updates.push(RefUpdate {
                    name: self.branch_ref(),
                    old: before.0,
                    new: id,
                });
            }
            match ref_id(&repo, &self.notes_ref) {
                Some(id) if Some(id) != before.1 => updates.push(RefUpdate {
                    name: self.notes_ref.clone(),
                    old: before.1,
                    new: id,
                }),
                _ => {}
            }
            match self.push(&repo, url, &updates, packed_commit.as_ref()) {
                Ok(Pushed::Done) => return Ok(commit.or(landed)),
                Ok(Pushed::Rejected(why, moved)) => {
                    if moved.contains(&self.branch_ref()) {
                        // Our commit is on the remote; only the note is due.
                        landed = commit;
                    }
                    tracing::info!(branch = %self.branch, attempt, %why, "status push rejected; rebuilding on the remote tip");
                    reason = why;
                    // The fetch replaces our unpushed commit and note with the
                    // remote's; the next attempt re-plans on top of them.
                    if let Err(e) = self.fetch(&repo, url) {
                        self.restore(&repo, before);
                        return Err(e);
                    }
                }
                Err(e) => {
                    // Leave the mirror as the remote last was, so the next
                    // pass sees the change again instead of a tip that
                    // already holds it and would never be pushed.
                    self.restore(&repo, before);
                    return Err(e);
                }
            }
        }
        Err(StatusError::Rejected {
            branch: self.branch.clone(),
            target,
            attempts,
            reason,
        })
    }

    /// Makes the branch hold exactly `files` (path to content): one commit
    /// `message` on its tip, moved and pushed as status is (compare-and-swap,
    /// rebuilt on a remote that moved). For a branch fermata writes whole
    /// (`fermata/fleet`). `None`, and nothing written, when it holds them.
    pub fn publish_files(
        &self,
        files: &BTreeMap<String, Vec<u8>>,
        message: &str,
    ) -> Result<Option<Oid>, StatusError> {
        self.write_files(files, message, true)
    }

    /// Writes `files` (path to content) on the branch's tip, keeping every
    /// other file: one commit, compare-and-swap and pushed as status is. For
    /// files several writers share a branch with (a campaign's state beside
    /// another's). `None`, and nothing written, when the tip holds them.
    pub fn publish_paths(
        &self,
        files: &BTreeMap<String, Vec<u8>>,
        message: &str,
    ) -> Result<Option<Oid>, StatusError> {
        self.write_files(files, message, false)
    }

    fn write_files(
        &self,
        files: &BTreeMap<String, Vec<u8>>,
        message: &str,
        whole: bool,
    ) -> Result<Option<Oid>, StatusError> {
        if !git2::Reference::is_valid_name(&self.branch_ref()) {
            return Err(self.invalid("branch name", &self.branch, "not a valid git branch name"));
        }
        let repo = self.open()?;
        self.refuse_checked_out(&repo)?;
        let sig = Signature::now(AUTHOR_NAME, AUTHOR_EMAIL).map_err(self.git("signature"))?;
        let mut plan = Plan::default();
        for (path, content) in files {
            let id = repo
                .blob(content)
                .map_err(self.git(format!("write {path}")))?;
            plan.writes.insert(path.clone(), (id, content.len()));
        }
        let (mut reason, mut attempts, mut writing) = (String::new(), 0, None);
        let started = std::time::Instant::now();
        for attempt in 1..=MAX_ATTEMPTS {
            if attempt > 1 {
                if started.elapsed() >= MAX_RETRY_TIME {
                    break;
                }
                std::thread::sleep(retry_delay(attempt - 1));
            }
            attempts = attempt;
            let before = self.tip_id(&repo)?;
            let tip = match before {
                Some(id) => Some(repo.find_commit(id).map_err(self.git("read tip"))?),
                None => None,
            };
            let base = match (&tip, whole) {
                (Some(c), false) => Some(c.tree().map_err(self.git("read tip tree"))?),
                _ => None,
            };
            let tree = self.apply(&repo, base.as_ref(), &plan)?;
            // Already there: ours from an earlier pass, or the same from another writer.
            if tip.as_ref().is_some_and(|c| c.tree_id() == tree.id()) {
                return Ok(None);
            }
            if writing.is_none() {
                writing = Some(self.writer_lock()?);
            }
            let parents: Vec<_> = tip.iter().collect();
            let id = repo
                .commit(None, &sig, &sig, message, &tree, &parents)
                .map_err(self.git("commit"))?;
            match self.move_branch(&repo, id, before) {
                Ok(()) => {}
                Err(e) if matches!(e.code(), ErrorCode::Modified | ErrorCode::Exists) => {
                    reason = format!("{} moved during the update", self.branch_ref());
                    continue;
                }
                Err(e) => return Err(self.git("update branch")(e)),
            }
            let Some(url) = &self.remote else {
                return Ok(Some(id));
            };
            let notes = ref_id(&repo, &self.notes_ref);
            let update = RefUpdate {
                name: self.branch_ref(),
                old: before,
                new: id,
            };
            match self.push(&repo, url, &[update], None) {
                Ok(Pushed::Done) => return Ok(Some(id)),
                Ok(Pushed::Rejected(why, _)) => {
                    tracing::info!(branch = %self.branch, attempt, %why, "push rejected; rebuilding on the remote tip");
                    reason = why;
                    let branch = self.branch_ref();
                    if let Err(e) = self.fetch_specs(&repo, url, &[format!("+{branch}:{branch}")]) {
                        self.restore(&repo, (before, notes));
                        return Err(e);
                    }
                }
                Err(e) => {
                    self.restore(&repo, (before, notes));
                    return Err(e);
                }
            }
        }
        Err(StatusError::Rejected {
            branch: self.branch.clone(),
            target: self
                .remote
                .clone()
                .unwrap_or_else(|| self.git_dir.display().to_string()),
            attempts,
            reason,
        })
    }

    /// The latest statuses on the branch (the site's, for a site), all
    /// source branches, sorted by (branch, composition). A missing branch is
    /// no status yet. A file elsewhere than the path its content names (the
    /// `<site>/` folders fermata wrote on `fermata/status` before sites got
    /// their own branches) is skipped.
    pub fn read(&self) -> Result<Vec<DeploymentStatus>, StatusError> {
        let repo = self.open()?;
        let Some(tip) = self.tip_id(&repo)? else {
            return Ok(Vec::new());
        };
        let tree = repo
            .find_commit(tip)
            .and_then(|c| c.tree())
            .map_err(self.git("read tip tree"))?;
        let mut files = Vec::new();
        tree.walk(git2::TreeWalkMode::PreOrder, |dir, e| {
            if e.kind() == Some(ObjectType::Blob) {
                if let Ok(name) = e.name() {
                    if name.ends_with(".yaml") {
                        files.push((format!("{dir}{name}"), e.id()));
                    }
                }
            }
            git2::TreeWalkResult::Ok
        })
        .map_err(self.git("walk tree"))?;
        let mut out = Vec::new();
        for (path, id) in files {
            let blob = repo
                .find_blob(id)
                .map_err(self.git(format!("read {path}")))?;
            let status =
                parse_status(blob.content()).map_err(|message| StatusError::BadStatusFile {
                    branch: self.branch.clone(),
                    path: path.clone(),
                    message,
                })?;
            let expected = format!("{}/{}.yaml", status.source.branch, status.composition());
            if path != expected {
                tracing::debug!(%path, %expected, "skipping a status file outside this site's layout");
                continue;
            }
            out.push(status);
        }
        out.sort_by(|a, b| {
            (&a.source.branch, a.composition()).cmp(&(&b.source.branch, b.composition()))
        });
        Ok(out)
    }

    fn git(&self, context: impl Into<String>) -> impl FnOnce(git2::Error) -> StatusError {
        let branch = self.branch.clone();
        let context = context.into();
        move |source| StatusError::Git {
            branch,
            context,
            source,
        }
    }

    fn invalid(&self, what: &'static str, value: &str, why: &'static str) -> StatusError {
        StatusError::Invalid {
            branch: self.branch.clone(),
            what,
            value: value.to_string(),
            why,
        }
    }

    fn branch_ref(&self) -> String {
        format!("refs/heads/{}", self.branch)
    }

    /// `<source-branch>`: the only directory this update writes.
    fn base_dir(&self, source_branch: &str) -> String {
        match (&self.site, self.shared) {
            (Some(site), true) => format!("{site}/{source_branch}"),
            _ => source_branch.to_string(),
        }
    }

    /// Checks every name that becomes a ref, path or note prefix, before
    /// anything is written; returns the source commit.
    fn validate(&self, update: &StatusUpdate) -> Result<Oid, StatusError> {
        if !git2::Reference::is_valid_name(&self.branch_ref()) {
            return Err(self.invalid(
                "status branch name",
                &self.branch,
                "not a valid git branch name",
            ));
        }
        let src = &update.source;
        if src.branch == self.branch {
            return Err(StatusError::WatchedBranch {
                branch: self.branch.clone(),
            });
        }
        if !git2::Reference::is_valid_name(&format!("refs/heads/{}", src.branch)) {
            return Err(self.invalid("source branch", &src.branch, "not a valid git branch name"));
        }
        if let Some(site) = &self.site {
            if !is_label(site) {
                return Err(self.invalid(
                    "site",
                    site,
                    "use letters, digits, '-', '_' or '.', not starting with '.'",
                ));
            }
        }
        let commit = Oid::from_str(&src.commit)
            .ok()
            .filter(|id| id.to_string() == src.commit.to_ascii_lowercase())
            .ok_or_else(|| {
                self.invalid("source commit", &src.commit, "not a full hex commit id")
            })?;
        let (mut seen, mut ids) = (BTreeSet::new(), BTreeSet::new());
        for s in &update.statuses {
            let id = s.composition();
            let ok = id
                .split_once('/')
                .is_some_and(|(sym, var)| is_label(sym) && is_label(var));
            if !ok {
                return Err(self.invalid("composition", id, "expected symphony/variation"));
            }
            if !seen.insert(id) {
                return Err(self.invalid("composition", id, "listed twice in one update"));
            }
            let margo = &s.metadata.deployment_id;
            if margo.trim().is_empty() || margo.chars().any(char::is_control) {
                return Err(self.invalid(
                    "deploymentId",
                    margo,
                    "empty or not one line (set by the variation's fermata.dev/deployment-id annotation)",
                ));
            }
            if !ids.insert(margo.as_str()) {
                return Err(self.invalid(
                    "deploymentId",
                    margo,
                    "listed twice in one update (two variations set the same fermata.dev/deployment-id annotation)",
                ));
            }
            if s.source.branch != src.branch {
                return Err(self.invalid(
                    "status source branch",
                    &s.source.branch,
                    "differs from the update's branch; a status file lives under its own branch",
                ));
            }
        }
        Ok(commit)
    }

    /// Taken before fermata writes its refs here (the status branch, the
    /// notes) and held until the write is done: see
    /// [`crate::source::writer_lock`]. Nobody but fermata writes those refs,
    /// so their `.lock` files found while holding it are stale.
    fn writer_lock(&self) -> Result<Flock<std::fs::File>, StatusError> {
        let stale = [
            self.branch_ref(),
            self.notes_ref.clone(),
            self.plan_notes_ref.clone(),
        ]
        .map(|name| self.git_dir.join(format!("{name}.lock")));
        crate::source::writer_lock(&self.git_dir, || stale.to_vec()).map_err(|source| {
            StatusError::Lock {
                branch: self.branch.clone(),
                path: self.git_dir.display().to_string(),
                source,
            }
        })
    }

    fn open(&self) -> Result<Repository, StatusError> {
        Repository::open(&self.git_dir)
            .map_err(self.git(format!("open {}", self.git_dir.display())))
    }

    fn refuse_checked_out(&self, repo: &Repository) -> Result<(), StatusError> {
        let Some(workdir) = repo.workdir() else {
            return Ok(());
        };
        let head = repo.find_reference("HEAD").map_err(self.git("read HEAD"))?;
        if head.symbolic_target().ok().flatten() == Some(self.branch_ref().as_str()) {
            return Err(StatusError::CheckedOut {
                branch: self.branch.clone(),
                workdir: workdir.display().to_string(),
            });
        }
        Ok(())
    }

    fn tip_id(&self, repo: &Repository) -> Result<Option<Oid>, StatusError> {
        match repo.find_reference(&self.branch_ref()) {
            Ok(r) => {
                let id = r.resolve().map_err(self.git("resolve branch"))?.target();
                Ok(id)
            }
            Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(self.git("read branch")(e)),
        }
    }

    /// What must change under `base` for the tip to hold `update`: a status
    /// equal to the one on the tip (time stamps aside) keeps its old bytes.
    fn plan(
        &self,
        repo: &Repository,
        packed: Option<&Repository>,
        mempack: Option<&git2::Mempack<'_>>,
        tip: Option<&Tree>,
        base: &str,
        update: &StatusUpdate,
    ) -> Result<Plan, StatusError> {
        let mut plan = Plan::default();
        let dir = match tip {
            Some(t) => subtree(repo, t, base).map_err(self.git(format!("read {base}")))?,
            None => None,
        };
        let mut existing: BTreeMap<String, Oid> = BTreeMap::new();
        let mut old_summary = None;
        if let Some(dir) = &dir {
            for e in dir.iter() {
                let Ok(name) = e.name() else { continue };
                match e.kind() {
                    Some(ObjectType::Blob) if name == SUMMARY_FILE => old_summary = Some(e.id()),
                    // Only `<symphony>/<variation>.yaml`, exactly two levels
                    // down: deeper files belong to a branch `<branch>/x`.
                    Some(ObjectType::Tree) => {
                        let sym = repo
                            .find_tree(e.id())
                            .map_err(self.git(format!("read {base}/{name}")))?;
                        for f in sym.iter() {
                            if f.kind() != Some(ObjectType::Blob) {
                                continue;
                            }
                            if let Some(var) = f.name().ok().and_then(|n| n.strip_suffix(".yaml")) {
                                existing.insert(format!("{name}/{var}"), f.id());
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        // First what changes, then (knowing how many) the writes.
        let mut changed = Vec::new();
        // Serializing ten thousand statuses is most of this CPU work: on
        // every core (fingerprints here, the YAML below).
        let prints = crate::par::map(update.statuses.iter().collect(), |s| s.fingerprint());
        for (s, fingerprint) in update.statuses.iter().zip(prints) {
            let id = s.composition();
            let mut from = None;
            if let Some(old) = existing.remove(id) {
                match self.seen_status(old) {
                    Some((seen, _)) if seen == fingerprint => {
                        plan.unchanged += 1;
                        continue;
                    }
                    // Written or read by this process: what it held is
                    // known without parsing it again (a window's opening
                    // changes every file of a large fleet).
                    Some((_, state)) => from = Some(state),
                    None => {
                        let blob = repo
                            .find_blob(old)
                            .map_err(self.git(format!("read {base}/{id}.yaml")))?;
                        // An unreadable old file is simply replaced: it is ours to write.
                        if let Ok(old_status) = parse_status(blob.content()) {
                            self.remember(old, old_status.fingerprint(), old_status.status.state);
                            if s.same_as(&old_status) {
                                plan.unchanged += 1;
                                continue;
                            }
                            from = Some(old_status.status.state);
                        }
                    }
                }
            }
            plan.changes.push(Change {
                id: id.to_string(),
                from,
                to: Some(s.status.state),
            });
            changed.push((s, fingerprint));
        }
        plan.packed = packed.is_some() && changed.len() > LOOSE_UP_TO;
        let repo = plan.objects(repo, packed);
        let changed = crate::par::map(changed, |(s, fingerprint)| {
            (s, fingerprint, serde_yaml::to_string(s))
        });
        for (s, fingerprint, yaml) in changed {
            let path = format!("{base}/{}.yaml", s.composition());
            let yaml = yaml.map_err(|e| StatusError::BadStatusFile {
                branch: self.branch.clone(),
                path: path.clone(),
                message: e.to_string(),
            })?;
            let oid = match (mempack, plan.packed) {
                (Some(m), true) => mempack_blob(m, yaml.as_bytes()),
                _ => repo.blob(yaml.as_bytes()),
            }
            .map_err(self.git(format!("write {path}")))?;
            self.remember(oid, fingerprint, s.status.state);
            plan.writes.insert(path, (oid, yaml.len()));
        }
        for (id, blob) in &existing {
            let from = repo
                .find_blob(*blob)
                .ok()
                .and_then(|b| parse_status(b.content()).ok())
                .map(|s| s.status.state);
            plan.changes.push(Change {
                id: id.clone(),
                from,
                to: None,
            });
            plan.removes.insert(format!("{base}/{id}.yaml"));
        }
        let summary_same = match old_summary {
            Some(id) => {
                let blob = repo
                    .find_blob(id)
                    .map_err(self.git(format!("read {base}/{SUMMARY_FILE}")))?;
                super::same_summary(&String::from_utf8_lossy(blob.content()), &update.table)
            }
            None => false,
        };
        if !summary_same {
            let path = format!("{base}/{SUMMARY_FILE}");
            let oid = repo
                .blob(update.table.as_bytes())
                .map_err(self.git(format!("write {path}")))?;
            plan.writes.insert(path, (oid, update.table.len()));
        }
        Ok(plan)
    }

    /// The picture of `source_branch`'s history on the status branch as
    /// it stands (`fermata status --format svg`).
    pub fn timeline(
        &self,
        source_branch: &str,
        now: DateTime<Utc>,
        windows: timeline::Openings,
    ) -> Result<timeline::Timeline, StatusError> {
        let repo = self.open()?;
        let base = self.base_dir(source_branch);
        let mut t = self.read_timeline(&repo, self.tip_id(&repo)?, &base, now, windows)?;
        t.drop_gone();
        Ok(t)
    }

    /// The picture at `now` of what the status commits up to `tip` say of
    /// `base` (the last [`timeline::DAYS`] days, at most [`MAX_HISTORY`]
    /// commits).
    fn read_timeline(
        &self,
        repo: &Repository,
        tip: Option<Oid>,
        base: &str,
        now: DateTime<Utc>,
        windows: timeline::Openings,
    ) -> Result<timeline::Timeline, StatusError> {
        let mut t = timeline::Timeline {
            now,
            windows,
            ..Default::default()
        };
        self.history(repo, tip, base, t.from(), &mut t)
            .map_err(self.git(format!("read the history of {base}")))?;
        Ok(t)
    }

    /// Writes `timeline.svg` into `plan`: the branch's history read from
    /// the status commits, then this update.
    fn add_timeline(
        &self,
        repo: &Repository,
        tip: Option<Oid>,
        base: &str,
        update: &StatusUpdate,
        plan: &mut Plan,
    ) -> Result<(), StatusError> {
        let mut t = self.read_timeline(repo, tip, base, update.now, update.windows.clone())?;
        let stamps: HashMap<&str, &DeploymentStatus> = update
            .statuses
            .iter()
            .map(|s| (s.composition(), s))
            .collect();
        for c in &plan.changes {
            let row = t.rows.entry(c.id.clone()).or_default();
            match stamps.get(c.id.as_str()) {
                Some(s) => {
                    row.window = s.status.window.as_ref().map(|w| w.name.clone());
                    row.changes.push((s.metadata.time_stamp, c.to));
                }
                None => row.changes.push((update.now, None)),
            }
        }
        let short = update.source.commit.get(..7).unwrap_or_default();
        t.mark_commit(update.now, short.to_string());
        t.drop_gone();
        let svg = timeline::render(&t);
        let path = format!("{base}/{}", timeline::FILE);
        let oid = repo
            .blob(svg.as_bytes())
            .map_err(self.git(format!("write {path}")))?;
        plan.writes.insert(path, (oid, svg.len()));
        Ok(())
    }

    /// The states each composition of `base` went through, oldest first,
    /// and the reconciled commits, from the status commits up to `tip`.
    fn history(
        &self,
        repo: &Repository,
        tip: Option<Oid>,
        base: &str,
        since: DateTime<Utc>,
        t: &mut timeline::Timeline,
    ) -> Result<(), git2::Error> {
        let mut chain = Vec::new();
        let mut next = tip;
        while let Some(id) = next {
            if chain.len() >= MAX_HISTORY {
                break;
            }
            let c = repo.find_commit(id)?;
            next = c.parent_id(0).ok();
            let older = c.time().seconds() < since.timestamp();
            chain.push(c);
            if older {
                break;
            }
        }
        let mut last: HashMap<String, Oid> = HashMap::new();
        let mut listed: HashMap<Oid, Vec<(String, Oid)>> = HashMap::new();
        for c in chain.iter().rev() {
            let tree = c.tree()?;
            let Some(dir) = subtree(repo, &tree, base)? else {
                continue;
            };
            let mut now: HashMap<String, Oid> = HashMap::new();
            for e in dir.iter() {
                let (Ok(sym), Some(ObjectType::Tree)) = (e.name(), e.kind()) else {
                    continue;
                };
                let files = match listed.entry(e.id()) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => v.insert(
                        repo.find_tree(e.id())?
                            .iter()
                            .filter_map(|f| {
                                let var = f.name().ok()?.strip_suffix(".yaml")?;
                                Some((format!("{sym}/{var}"), f.id()))
                            })
                            .collect(),
                    ),
                };
                now.extend(files.iter().cloned());
            }
            let mut instant = None;
            let mut changed = Vec::new();
            for (id, blob) in &now {
                if last.get(id) == Some(blob) {
                    continue;
                }
                let Ok(st) = parse_status(repo.find_blob(*blob)?.content()) else {
                    continue;
                };
                instant = instant.max(Some(st.metadata.time_stamp));
                changed.push((id.clone(), st));
            }
            let instant = instant.unwrap_or_else(|| {
                DateTime::from_timestamp(c.time().seconds(), 0).unwrap_or(t.now)
            });
            for (id, st) in changed {
                let row = t.rows.entry(id).or_default();
                row.window = st.status.window.as_ref().map(|w| w.name.clone());
                row.changes
                    .push((st.metadata.time_stamp, Some(st.status.state)));
            }
            for id in last.keys().filter(|id| !now.contains_key(*id)) {
                t.rows
                    .entry(id.clone())
                    .or_default()
                    .changes
                    .push((instant, None));
            }
            last = now;
            let source = c
                .message()
                .ok()
                .and_then(|m| m.lines().find_map(|l| l.strip_prefix("Fermata-Source: ")))
                .and_then(|s| s.rsplit_once('@'))
                .and_then(|(_, hex)| hex.get(..7))
                .map(str::to_string);
            if let Some(short) = source {
                t.mark_commit(instant, short);
            }
        }
        Ok(())
    }

    fn seen_status(&self, blob: Oid) -> Option<(Digest, State)> {
        self.seen.lock().ok()?.get(&blob).copied()
    }

    fn remember(&self, blob: Oid, fingerprint: Digest, state: State) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(blob, (fingerprint, state));
        }
    }

    /// The tip's tree with the plan overlaid, built in an in-memory index.
    fn apply<'r>(
        &self,
        repo: &'r Repository,
        tip: Option<&Tree>,
        plan: &Plan,
    ) -> Result<Tree<'r>, StatusError> {
        let mut index = Index::new().map_err(self.git("new index"))?;
        if let Some(t) = tip {
            index.read_tree(t).map_err(self.git("read tip tree"))?;
        }
        for path in &plan.removes {
            index
                .remove_path(Path::new(path))
                .map_err(self.git(format!("remove {path}")))?;
        }
        for (path, &(id, len)) in &plan.writes {
            let entry = IndexEntry {
                ctime: IndexTime::new(0, 0),
                mtime: IndexTime::new(0, 0),
                dev: 0,
                ino: 0,
                mode: 0o100644,
                uid: 0,
                gid: 0,
                file_size: u32::try_from(len).unwrap_or(u32::MAX),
                id,
                flags: 0,
                flags_extended: 0,
                path: path.as_bytes().to_vec(),
            };
            index.add(&entry).map_err(self.git(format!("add {path}")))?;
        }
        let tree = index.write_tree_to(repo).map_err(self.git("write tree"))?;
        repo.find_tree(tree).map_err(self.git("read new tree"))
    }

    /// Moves the branch from `old` to `new` only if it still is at `old`, so
    /// a concurrent writer's commit is never dropped.
    fn move_branch(
        &self,
        repo: &Repository,
        new: Oid,
        old: Option<Oid>,
    ) -> Result<(), git2::Error> {
        let name = self.branch_ref();
        let msg = "fermata: status";
        match old {
            Some(old) => repo
                .reference_matching(&name, new, true, old, msg)
                .map(drop),
            None => repo.reference(&name, new, false, msg).map(drop),
        }
    }

    /// `main@3f2a1c0: 4 installed`, for a site `plant-a main@3f2a1c0: ...`:
    /// the commit subject, and a site's note.
    fn subject(&self, summary: &str) -> String {
        match &self.site {
            Some(site) => format!("{site} {summary}"),
            None => summary.to_string(),
        }
    }

    /// Subject: what changed (`main@3f2a1c0: app/a staged -> installed, 3
    /// unchanged`); body: the counts the note also carries; then trailers.
    fn commit_message(&self, summary: &str, changes: &str, source: &SourceRef) -> String {
        let head = summary.split_once(": ").map_or(summary, |(head, _)| head);
        // `(force-pushed over 1a2b3c4)` belongs in the subject too.
        let aside = summary.find(" (").map_or("", |i| &summary[i..]);
        let mut msg = format!(
            "{}\n\n{}\n\nFermata-Source: {}@{}\n",
            self.subject(&format!("{head}: {changes}{aside}")),
            self.subject(summary),
            source.branch,
            source.commit.to_ascii_lowercase()
        );
        if let Some(site) = &self.site {
            msg.push_str(&format!("Fermata-Site: {site}\n"));
        }
        msg
    }

    /// Notes the summary on the source commit: a site's note is its
    /// subject line, alone in its own notes ref; the site-less note keeps
    /// the `<site>: ` lines older fermatas wrote into it. Writes nothing
    /// when the note already says it.
    fn write_note(
        &self,
        repo: &Repository,
        sig: &Signature,
        commit: Oid,
        summary: &str,
    ) -> Result<(), StatusError> {
        let old = match repo.find_note(Some(&self.notes_ref), commit) {
            Ok(n) => Some(String::from_utf8_lossy(n.message_bytes()).into_owned()),
            Err(e) if e.code() == ErrorCode::NotFound => None,
            Err(e) => return Err(self.git(format!("read note on {commit}"))(e)),
        };
        let new = match &self.site {
            Some(site) if self.shared => merge_note(old.as_deref(), Some(site), summary),
            Some(_) => format!("{}\n", self.subject(summary)),
            None => merge_note(old.as_deref(), None, summary),
        };
        if old.as_deref() == Some(new.as_str()) {
            return Ok(());
        }
        note(repo, sig, &self.notes_ref, commit, &new, "status")
            .map_err(self.git(format!("write note on {commit}")))?;
        Ok(())
    }

    /// Moves `updates` on the remote, each only if it still holds the value
    /// our commit was built on (compare-and-swap): a remote that moved comes
    /// back as [`Pushed::Rejected`] and is rebuilt on, never overwritten.
    fn push(
        &self,
        repo: &Repository,
        url: &str,
        updates: &[RefUpdate],
        pack: Option<&CommitPack>,
    ) -> Result<Pushed, StatusError> {
        if updates.is_empty() {
            return Ok(Pushed::Done);
        }
        match local_path(url) {
            Some(path) => self.push_local(repo, url, &path, updates, pack),
            None => self.push_remote(repo, url, updates),
        }
    }

    /// A push that failed on a missing object, from a repository whose
    /// history is cut (a shallow clone): said as such, not `object not found`.
    fn shallow(&self, repo: &Repository, url: &str, e: &git2::Error) -> Option<StatusError> {
        if e.code() != ErrorCode::NotFound {
            return None;
        }
        let (commit, parent) = cut_history(repo)?;
        Some(StatusError::Shallow {
            branch: self.branch.clone(),
            url: url.to_string(),
            commit: commit.to_string(),
            parent: parent.to_string(),
        })
    }

    /// libgit2's local transport moves the remote's refs without checking
    /// what they hold (two writers built on one tip both "succeed", one
    /// commit left dangling), so a `file://` remote is written directly:
    /// the objects first, then each ref under git's own ref lock, only if it
    /// still holds the old value.
    fn push_local(
        &self,
        repo: &Repository,
        url: &str,
        path: &Path,
        updates: &[RefUpdate],
        pack: Option<&CommitPack>,
    ) -> Result<Pushed, StatusError> {
        let remote = Repository::open(path).map_err(self.git(format!("push to {url}")))?;
        for u in updates {
            // The remote holds all its branch's history, so a pack of what
            // the commit adds to that branch's tip is all it lacks.
            let same = pack.filter(|p| {
                p.commit == u.new && p.parent == u.old && ref_id(&remote, &u.name) == u.old
            });
            if let Some(p) = same {
                if let Err(e) = link_pack(repo, &remote, &p.bytes) {
                    tracing::debug!(error = %e, "cannot link the status pack: indexing it again");
                    store_pack(&remote, &p.bytes).map_err(
                        self.git(format!("push to {url}: write the objects of {}", u.name)),
                    )?;
                }
                continue;
            }
            copy_objects(repo, &remote, u.new).map_err(|e| {
                self.shallow(repo, url, &e).unwrap_or_else(|| {
                    self.git(format!("push to {url}: copy objects of {}", u.name))(e)
                })
            })?;
        }
        let mut moved = Vec::new();
        for u in updates {
            let old = u.old.unwrap_or(Oid::ZERO_SHA1);
            match remote.reference_matching(&u.name, u.new, true, old, "fermata: status") {
                Ok(_) => moved.push(u.name.clone()),
                Err(e)
                    if matches!(
                        e.code(),
                        ErrorCode::Modified
                            | ErrorCode::Exists
                            | ErrorCode::NotFound
                            | ErrorCode::Locked
                    ) =>
                {
                    let why = format!("{}: {}", u.name, e.message());
                    return Ok(Pushed::Rejected(why, moved));
                }
                Err(e) => return Err(self.git(format!("push to {url}: update {}", u.name))(e)),
            }
        }
        Ok(Pushed::Done)
    }

    /// Over the network the server compares and swaps each ref against the
    /// value it advertised; the negotiation callback makes that value the
    /// one our commit was built on, else the push is rejected before it is
    /// sent. Rejections come back either from libgit2's own fast-forward
    /// check, from that callback, or from the server's report.
    fn push_remote(
        &self,
        repo: &Repository,
        url: &str,
        updates: &[RefUpdate],
    ) -> Result<Pushed, StatusError> {
        let started = std::time::Instant::now();
        let mut remote = repo
            .remote_anonymous(url)
            .map_err(self.git(format!("remote {url}")))?;
        let rejected = Rc::new(RefCell::new(Vec::<String>::new()));
        let updated = Rc::new(RefCell::new(Vec::<String>::new()));
        let mut cb = crate::source::callbacks();
        let (sink, done) = (Rc::clone(&rejected), Rc::clone(&updated));
        cb.push_update_reference(move |name, status| {
            match status {
                Some(why) => sink.borrow_mut().push(format!("{name}: {why}")),
                None => done.borrow_mut().push(name.to_string()),
            }
            Ok(())
        });
        let expected: HashMap<String, Oid> = updates
            .iter()
            .map(|u| (u.name.clone(), u.old.unwrap_or(Oid::ZERO_SHA1)))
            .collect();
        let moved = Rc::new(RefCell::new(Vec::<String>::new()));
        let sink = Rc::clone(&moved);
        cb.push_negotiation(move |proposed| {
            for p in proposed {
                let name = p.dst_refname().unwrap_or_default();
                if expected.get(name).is_some_and(|old| *old != p.src()) {
                    sink.borrow_mut()
                        .push(format!("{name}: moved on the remote to {}", p.src()));
                }
            }
            if sink.borrow().is_empty() {
                Ok(())
            } else {
                Err(git2::Error::from_str("the remote moved"))
            }
        });
        let mut opts = PushOptions::new();
        opts.remote_callbacks(cb);
        // Every core searches for deltas (libgit2's default is one thread).
        opts.packbuilder_parallelism(0);
        let specs: Vec<String> = updates.iter().map(|u| format!("{0}:{0}", u.name)).collect();
        match remote.push(&specs, Some(&mut opts)) {
            Ok(()) => {}
            Err(_) if !moved.borrow().is_empty() => {
                return Ok(Pushed::Rejected(moved.borrow().join("; "), Vec::new()))
            }
            Err(e) if e.code() == ErrorCode::NotFastForward => {
                return Ok(Pushed::Rejected(e.message().to_string(), Vec::new()))
            }
            Err(e) => {
                return Err(self.shallow(repo, url, &e).unwrap_or_else(|| {
                    self.git(format!("push to {url}"))(crate::source::remote_error(e, started))
                }))
            }
        }
        let rejected = rejected.borrow();
        if rejected.is_empty() {
            Ok(Pushed::Done)
        } else {
            Ok(Pushed::Rejected(rejected.join("; "), updated.take()))
        }
    }

    /// Sets this site's section (which starts with its plan marker line) of
    /// the plan note on `commit`, keeping other sites' sections, and pushes
    /// the notes ref for a mirror, rebuilding on the remote's notes when it
    /// moved. Returns whether anything was written.
    pub fn publish_plan_note(
        &self,
        commit: Oid,
        marker: &str,
        section: &str,
    ) -> Result<bool, StatusError> {
        let repo = self.open()?;
        let sig = Signature::now(AUTHOR_NAME, AUTHOR_EMAIL).map_err(self.git("signature"))?;
        let mut reason = String::new();
        let mut writing = None;
        let started = std::time::Instant::now();
        let mut attempts = 0;
        for attempt in 1..=MAX_ATTEMPTS {
            if attempt > 1 {
                if started.elapsed() >= MAX_RETRY_TIME {
                    break;
                }
                std::thread::sleep(retry_delay(attempt - 1));
            }
            attempts = attempt;
            let plan_ref = self.plan_notes_ref.as_str();
            let before = ref_id(&repo, plan_ref);
            let old = match repo.find_note(Some(plan_ref), commit) {
                Ok(n) => Some(String::from_utf8_lossy(n.message_bytes()).into_owned()),
                Err(e) if e.code() == ErrorCode::NotFound => None,
                Err(e) => return Err(self.git(format!("read plan note on {commit}"))(e)),
            };
            let new = merge_sections(old.as_deref(), marker, section);
            if old.as_deref() == Some(new.as_str()) && attempt == 1 {
                return Ok(false);
            }
            if writing.is_none() {
                writing = Some(self.writer_lock()?);
            }
            note(&repo, &sig, plan_ref, commit, &new, "plan")
                .map_err(self.git(format!("write plan note on {commit}")))?;
            let Some(url) = &self.remote else {
                return Ok(true);
            };
            let update = RefUpdate {
                name: plan_ref.to_string(),
                old: before,
                new: ref_id(&repo, plan_ref).ok_or_else(|| {
                    self.git(format!("read {plan_ref}"))(git2::Error::from_str(
                        "the note just written is gone",
                    ))
                })?,
            };
            match self.push(&repo, url, &[update], None) {
                Ok(Pushed::Done) => return Ok(true),
                Ok(Pushed::Rejected(why, _)) => {
                    reason = why;
                    self.fetch_specs(&repo, url, &[format!("+{plan_ref}:{plan_ref}")])?;
                }
                Err(e) => {
                    let _ = match before {
                        Some(id) => repo
                            .reference(plan_ref, id, true, "fermata: restore")
                            .map(drop),
                        None => repo.find_reference(plan_ref).and_then(|mut r| r.delete()),
                    };
                    return Err(e);
                }
            }
        }
        Err(StatusError::Rejected {
            branch: self.plan_notes_ref.clone(),
            target: self.remote.clone().unwrap_or_default(),
            attempts,
            reason,
        })
    }

    /// Replaces the mirror's status branch and notes with the remote's.
    fn fetch(&self, repo: &Repository, url: &str) -> Result<(), StatusError> {
        let branch = self.branch_ref();
        let notes = &self.notes_ref;
        self.fetch_specs(
            repo,
            url,
            &[format!("+{branch}:{branch}"), format!("+{notes}:{notes}")],
        )
    }

    fn fetch_specs(
        &self,
        repo: &Repository,
        url: &str,
        specs: &[String],
    ) -> Result<(), StatusError> {
        let mut remote = repo
            .remote_anonymous(url)
            .map_err(self.git(format!("remote {url}")))?;
        let mut opts = FetchOptions::new();
        // Pruned: a ref the remote does not have (yet) must not stay here
        // either, or an unpushed note of a rejected attempt would pass for
        // the remote's.
        opts.remote_callbacks(crate::source::callbacks())
            .prune(git2::FetchPrune::On)
            .download_tags(AutotagOption::None);
        let started = std::time::Instant::now();
        remote
            .fetch(specs, Some(&mut opts), None)
            .map_err(|e| crate::source::remote_error(e, started))
            .map_err(self.git(format!("fetch from {url}")))
    }

    /// Best effort: puts the mirror's refs back to what they were before a
    /// publish that failed, so the next pass publishes (and pushes) again.
    fn restore(&self, repo: &Repository, before: (Option<Oid>, Option<Oid>)) {
        for (name, id) in [
            (self.branch_ref(), before.0),
            (self.notes_ref.clone(), before.1),
        ] {
            let res = match id {
                Some(id) => repo
                    .reference(&name, id, true, "fermata: restore after failed push")
                    .map(drop),
                None => match repo.find_reference(&name) {
                    Ok(mut r) => r.delete(),
                    Err(_) => Ok(()),
                },
            };
            if let Err(e) = res {
                tracing::warn!(%name, error = %e, "could not restore ref after a failed status push");
            }
        }
    }
}

/// A commit reachable from a ref whose parent is missing, with that parent:
/// the sign of a history fetched from a shallow clone. Only walked after a
/// push failed on a missing object, and at most this many commits.
fn cut_history(repo: &Repository) -> Option<(Oid, Oid)> {
    const MAX_WALK: usize = 100_000;
    let mut todo: Vec<Oid> = repo
        .references()
        .ok()?
        .flatten()
        .filter_map(|r| r.peel_to_commit().ok().map(|c| c.id()))
        .collect();
    let mut seen = std::collections::HashSet::new();
    while let Some(id) = todo.pop() {
        if !seen.insert(id) || seen.len() > MAX_WALK {
            continue;
        }
        let Ok(commit) = repo.find_commit(id) else {
            continue;
        };
        for parent in commit.parent_ids() {
            match repo.find_commit(parent) {
                Ok(_) => todo.push(parent),
                Err(e) if e.code() == ErrorCode::NotFound => return Some((id, parent)),
                Err(_) => {}
            }
        }
    }
    None
}

/// The repository a `file://` URL (or a plain path) names, as libgit2's
/// local transport reads it: `file://[localhost]/path`, percent-decoded.
fn local_path(url: &str) -> Option<PathBuf> {
    let Some(rest) = url.strip_prefix("file://") else {
        let path = Path::new(url);
        return (!url.contains("://") && path.exists()).then(|| path.to_path_buf());
    };
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    let bytes = rest.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    use std::os::unix::ffi::OsStringExt;
    Some(PathBuf::from(std::ffi::OsString::from_vec(out)))
}

/// Writes into `to` every object reachable from `tip` that it lacks, in
/// post-order (an object after everything it points to), so an interrupted
/// copy never leaves an object whose children are missing. The walk stops at
/// objects `to` already has, trusting them to be complete, as git does.
fn copy_objects(from: &Repository, to: &Repository, tip: Oid) -> Result<(), git2::Error> {
    match copy_as_pack(from, to, tip) {
        Ok(()) => Ok(()),
        // A history the walk cannot follow (a shallow remote): one by one.
        Err(e) => {
            tracing::debug!(error = %e, "cannot send a pack; copying objects one by one");
            copy_loose(from, to, tip)
        }
    }
}

/// Updates of more statuses than this write their objects as one pack.
const LOOSE_UP_TO: usize = 64;

/// A status commit's new objects as the one pack written locally. A push
/// to a local remote whose branch holds the commit's parent writes the same
/// bytes there: the delta search, most of a large update's cost, runs once.
struct CommitPack {
    commit: Oid,
    parent: Option<Oid>,
    bytes: git2::Buf,
}

/// The memory libgit2's delta search may hold at once (`pack.windowMemory`)
/// while it packs status objects: a few status files and their delta
/// indexes, instead of git's window of ten objects. Status files of one
/// variation name sort side by side, so the nearest few find almost every
/// delta: at the opening of a window over 10,000 compositions the pack grew
/// 0.9% and the commit took 0.23 s instead of 0.39 s (`fermata-bench`;
/// 1 KiB: the same time, a pack 17% larger).
const STATUS_PACK_WINDOW_MEMORY: i64 = 8 * 1024;

/// Sets [`STATUS_PACK_WINDOW_MEMORY`] in fermata's own mirror unless it
/// already names one (someone's choice, kept). Only the mirror: a user's
/// repository's config is theirs. Best effort: without it, packing is
/// only slower (another writer may hold the config's lock).
fn limit_delta_window(mirror: &Repository) {
    const KEY: &str = "pack.windowMemory";
    let set = mirror.config().and_then(|mut c| match c.get_i64(KEY) {
        Ok(_) => Ok(()),
        Err(_) => c.set_i64(KEY, STATUS_PACK_WINDOW_MEMORY),
    });
    if let Err(e) = set {
        tracing::debug!(error = %e, "cannot limit the status pack's delta search");
    }
}

/// Moves the objects `commit` adds to its parent (all of which `mempack`
/// holds, or `repo` already did) into `repo`'s object database as one pack,
/// and empties `mempack`: the objects are on disk before a ref may name them.
fn write_pack(
    repo: &Repository,
    mempack: &git2::Mempack<'_>,
    commit: Oid,
    parent: Option<Oid>,
) -> Result<CommitPack, git2::Error> {
    let mut walk = repo.revwalk()?;
    walk.push(commit)?;
    if let Some(p) = parent {
        walk.hide(p)?;
    }
    let mut pack = repo.packbuilder()?;
    // Every core searches for deltas (libgit2's default is one thread).
    pack.set_threads(0);
    pack.insert_walk(&mut walk)?;
    let mut buf = git2::Buf::new();
    pack.write_buf(&mut buf)?;
    store_pack(repo, &buf)?;
    mempack.reset()?;
    Ok(CommitPack {
        commit,
        parent,
        bytes: buf,
    })
}

/// Writes a blob straight into the in-memory pack. `Repository::blob` first
/// asks every backend whether the object exists, and for one it does not
/// find, libgit2 rereads `objects/pack` (`git_odb_refresh`) before writing:
/// at a window's opening that was ten thousand directory reads (60,000
/// syscalls, 130 ms) for blobs that are new by construction (their status
/// changed). The mempack's own write skips that, and takes the id as
/// given: the same hash libgit2 computes. An existing blob written again
/// is harmless (the pack holds what the commit adds to its parent).
fn mempack_blob(mempack: &git2::Mempack<'_>, bytes: &[u8]) -> Result<Oid, git2::Error> {
    use git2::Binding as _;
    let oid = Oid::hash_object(ObjectType::Blob, bytes)?;
    let backend = mempack.raw();
    // SAFETY: `backend` is the mempack backend `mempack` borrows from its
    // object database, alive as long as `mempack` is; its `write` copies
    // `len` bytes from `bytes` and the id it is given. Nothing else uses
    // this mempack meanwhile: it belongs to this one status write, on this
    // thread.
    let rc = unsafe {
        let Some(write) = (*backend).write else {
            return Err(git2::Error::from_str(
                "the in-memory pack cannot be written",
            ));
        };
        write(
            backend,
            oid.raw(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libgit2_sys::GIT_OBJECT_BLOB,
        )
    };
    if rc < 0 {
        return Err(git2::Error::last_error(rc));
    }
    Ok(oid)
}

/// Puts the pack `from` indexed from `bytes` into `to` as it is, with its
/// index: hard links where both are on one file system (a pack never
/// changes, as `git clone --local` relies on), copies otherwise, each
/// renamed into place, the index last (it is what makes a pack seen). A
/// local push of the pack just written so costs two links, not a second
/// indexing (inflating and hashing every object again). Packs are named by
/// their trailing checksum, by git and libgit2 alike.
fn link_pack(from: &Repository, to: &Repository, bytes: &[u8]) -> std::io::Result<()> {
    let sum = bytes
        .len()
        .checked_sub(20)
        .map(|at| hex::encode(&bytes[at..]))
        .ok_or_else(|| std::io::Error::other("not a pack"))?;
    let (src, dst) = (
        from.path().join("objects").join("pack"),
        to.path().join("objects").join("pack"),
    );
    for ext in ["pack", "idx"] {
        let name = format!("pack-{sum}.{ext}");
        let tmp = dst.join(format!("tmp_fermata_{}_{name}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(src.join(&name), &tmp).is_err() {
            std::fs::copy(src.join(&name), &tmp)?;
        }
        std::fs::rename(&tmp, dst.join(&name))?;
    }
    Ok(())
}

/// Indexes a complete pack into `repo`'s object database.
fn store_pack(repo: &Repository, bytes: &[u8]) -> Result<(), git2::Error> {
    use std::io::Write;
    let odb = repo.odb()?;
    let mut writer = odb.packwriter()?;
    writer
        .write_all(bytes)
        .map_err(|e| git2::Error::from_str(&format!("writing the pack: {e}")))?;
    writer.commit()?;
    Ok(())
}

/// What the remote lacks of `tip`'s history, as one pack, the way a push
/// sends it: a status commit of 10,000 files is one file written into the
/// remote, not 10,000 loose objects (measured: the loose copy doubled a cold
/// pass of fermata-bench).
fn copy_as_pack(from: &Repository, to: &Repository, tip: Oid) -> Result<(), git2::Error> {
    use std::io::Write;
    let mut walk = from.revwalk()?;
    walk.push(tip)?;
    let local = from.odb()?;
    for r in to.references()?.flatten() {
        if let Some(id) = r.target().filter(|id| local.exists(*id)) {
            if from.find_commit(id).is_ok() {
                walk.hide(id)?;
            }
        }
    }
    let mut pack = from.packbuilder()?;
    pack.set_threads(0);
    pack.insert_walk(&mut walk)?;
    if pack.object_count() == 0 {
        return Ok(());
    }
    let odb = to.odb()?;
    let mut writer = odb.packwriter()?;
    let mut failed = None;
    pack.foreach(|chunk| match writer.write_all(chunk) {
        Ok(()) => true,
        Err(e) => {
            failed = Some(e);
            false
        }
    })?;
    if let Some(e) = failed {
        return Err(git2::Error::from_str(&format!("writing the pack: {e}")));
    }
    writer.commit()?;
    Ok(())
}

fn copy_loose(from: &Repository, to: &Repository, tip: Oid) -> Result<(), git2::Error> {
    let (src, dst) = (from.odb()?, to.odb()?);
    let mut seen = std::collections::HashSet::new();
    // (object, whether its children are already pushed)
    let mut stack = vec![(tip, false)];
    while let Some((id, expanded)) = stack.pop() {
        if expanded {
            let obj = src.read(id)?;
            dst.write(obj.kind(), obj.data())?;
            continue;
        }
        if !seen.insert(id) || dst.exists(id) {
            continue;
        }
        stack.push((id, true));
        match src.read_header(id)?.1 {
            ObjectType::Commit => {
                let c = from.find_commit(id)?;
                stack.push((c.tree_id(), false));
                stack.extend(c.parent_ids().map(|p| (p, false)));
            }
            ObjectType::Tree => {
                let t = from.find_tree(id)?;
                // Gitlinks (submodule commits) are not in this repository.
                stack.extend(
                    t.iter()
                        .filter(|e| e.kind() != Some(ObjectType::Commit))
                        .map(|e| (e.id(), false)),
                );
            }
            _ => {}
        }
    }
    Ok(())
}

/// Writes (or overwrites) the note on `commit` under `notes_ref` in a notes
/// commit whose message says fermata wrote it: libgit2 would leave "Notes
/// added by 'git_note_create' from libgit2" in `git log --all`. libgit2
/// has no message parameter, so its commit is reworded in place; the ref
/// moves from libgit2's commit to ours only if nothing moved it between.
fn note(
    repo: &Repository,
    sig: &Signature,
    notes_ref: &str,
    commit: Oid,
    content: &str,
    what: &str,
) -> Result<(), git2::Error> {
    repo.note(sig, sig, Some(notes_ref), commit, content, true)?;
    let written = repo.refname_to_id(notes_ref)?;
    let c = repo.find_commit(written)?;
    let short = commit.to_string();
    let message = format!("Notes added by fermata: {what} of {}\n", &short[..7]);
    let parents: Vec<_> = c.parents().collect();
    let parents: Vec<_> = parents.iter().collect();
    let ours = repo.commit(
        None,
        &c.author(),
        &c.committer(),
        &message,
        &c.tree()?,
        &parents,
    )?;
    repo.reference_matching(notes_ref, ours, true, written, "fermata: note")?;
    Ok(())
}

fn ref_id(repo: &Repository, name: &str) -> Option<Oid> {
    repo.find_reference(name).ok().and_then(|r| r.target())
}

/// The tree at `path` (slash-separated) under `tree`, if there is one.
fn subtree<'r>(
    repo: &'r Repository,
    tree: &Tree,
    path: &str,
) -> Result<Option<Tree<'r>>, git2::Error> {
    match tree.get_path(Path::new(path)) {
        Ok(e) if e.kind() == Some(ObjectType::Tree) => repo.find_tree(e.id()).map(Some),
        Ok(_) => Ok(None),
        Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn parse_status(data: &[u8]) -> Result<DeploymentStatus, String> {
    let s: DeploymentStatus = serde_yaml::from_slice(data).map_err(|e| e.to_string())?;
    if s.kind != "DeploymentStatus" {
        return Err(format!("kind is {:?}", s.kind));
    }
    Ok(s)
}

/// A name used as one path component and as a note line prefix.
fn is_label(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A commit subject and note line are one line: newlines become spaces.
fn one_line(s: &str) -> String {
    let line = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if line.is_empty() {
        "fermata status".to_string()
    } else {
        line
    }
}

/// The site a note line belongs to: `site-a: main@3f2a1c0: ...` is site-a's;
/// a line without such a prefix (summaries start `<branch>@<commit>:`) is
/// the site-less publisher's.
fn note_site(line: &str) -> Option<&str> {
    line.split_once(": ")
        .map(|(prefix, _)| prefix)
        .filter(|p| is_label(p))
}

/// One line per site: this site's line replaced (or added), the others kept;
/// the site-less line first, then by site name, so the note does not depend
/// on the order sites published in.
fn merge_note(old: Option<&str>, site: Option<&str>, summary: &str) -> String {
    let mut lines: Vec<String> = old
        .unwrap_or("")
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && note_site(l) != site)
        .map(str::to_string)
        .collect();
    lines.push(match site {
        Some(site) => format!("{site}: {summary}"),
        None => summary.to_string(),
    });
    lines.sort_by(|a, b| note_site(a).cmp(&note_site(b)));
    let mut note = lines.join("\n");
    note.push('\n');
    note
}

/// A note made of sections, each starting with its marker line: `marker`'s
/// section replaced (or added), the others kept, sorted by marker so the
/// note does not depend on the order sites wrote in.
fn merge_sections(old: Option<&str>, marker: &str, section: &str) -> String {
    let mut sections: Vec<(String, String)> = Vec::new();
    for line in old.unwrap_or("").lines() {
        if line.starts_with("<!-- fermata:plan:") {
            sections.push((line.to_string(), String::new()));
        } else if let Some((_, body)) = sections.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    sections.retain(|(m, _)| m != marker);
    let body = section
        .strip_prefix(marker)
        .unwrap_or(section)
        .trim_start_matches('\n');
    sections.push((marker.to_string(), body.to_string()));
    sections.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::new();
    for (m, body) in sections {
        out.push_str(&m);
        out.push('\n');
        out.push_str(body.trim_end());
        out.push_str("\n\n");
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_note_sections_merge_by_marker() {
        let a = "<!-- fermata:plan:a -->";
        let b = "<!-- fermata:plan:b -->";
        let one = merge_sections(None, b, &format!("{b}\nplan b1\n"));
        let two = merge_sections(Some(&one), a, &format!("{a}\nplan a1\n"));
        assert_eq!(two, format!("{a}\nplan a1\n\n{b}\nplan b1\n"));
        let three = merge_sections(Some(&two), b, &format!("{b}\nplan b2\n"));
        assert_eq!(three, format!("{a}\nplan a1\n\n{b}\nplan b2\n"));
        assert_eq!(
            merge_sections(Some(&three), b, &format!("{b}\nplan b2")),
            three
        );
    }

    #[test]
    fn note_lines_merge_by_site() {
        let a = merge_note(None, Some("site-a"), "main@1234567: 1 installed");
        assert_eq!(a, "site-a: main@1234567: 1 installed\n");
        let ab = merge_note(Some(&a), Some("site-b"), "main@1234567: 1 failed");
        assert_eq!(
            ab,
            "site-a: main@1234567: 1 installed\nsite-b: main@1234567: 1 failed\n"
        );
        let ab2 = merge_note(Some(&ab), Some("site-a"), "main@1234567: 1 staged");
        assert_eq!(
            ab2,
            "site-a: main@1234567: 1 staged\nsite-b: main@1234567: 1 failed\n"
        );
        let all = merge_note(Some(&ab2), None, "main@1234567: 2 installed");
        assert_eq!(
            all.lines().collect::<Vec<_>>(),
            [
                "main@1234567: 2 installed",
                "site-a: main@1234567: 1 staged",
                "site-b: main@1234567: 1 failed"
            ]
        );
        let again = merge_note(Some(&all), None, "main@1234567: 3 installed");
        assert!(again.starts_with("main@1234567: 3 installed\nsite-a"));
        assert_eq!(again.lines().count(), 3);
    }

    #[test]
    fn file_urls_name_local_paths() {
        assert_eq!(
            local_path("file:///srv/git/fleet.git"),
            Some(PathBuf::from("/srv/git/fleet.git"))
        );
        assert_eq!(
            local_path("file://localhost/srv/my%20fleet.git"),
            Some(PathBuf::from("/srv/my fleet.git"))
        );
        assert_eq!(local_path("file:///a%2"), Some(PathBuf::from("/a%2")));
        assert_eq!(local_path("https://git.example.com/fleet.git"), None);
        assert_eq!(local_path("git@git.example.com:fleet.git"), None);
    }

    #[test]
    fn retries_wait_a_random_time_under_a_doubling_cap() {
        for (attempt, cap) in [
            (1, 50),
            (2, 100),
            (3, 200),
            (6, 1600),
            (7, 2000),
            (40, 2000),
        ] {
            let waits: Vec<_> = (0..200).map(|_| retry_delay(attempt)).collect();
            assert!(
                waits.iter().all(|w| w.as_millis() <= cap),
                "attempt {attempt}: {waits:?}"
            );
            // Spread over the range, not all at once.
            let distinct: BTreeSet<_> = waits.iter().collect();
            assert!(distinct.len() > 10, "attempt {attempt}: {distinct:?}");
        }
    }

    #[test]
    fn change_subjects_name_a_few_and_count_many() {
        use State::*;
        let c = |id: &str, from, to| Change {
            id: id.into(),
            from,
            to,
        };
        let rows: Vec<(Vec<Change>, usize, &str)> = vec![
            (vec![], 4, "reconciled, 4 unchanged"),
            (vec![], 0, "reconciled"),
            (
                vec![c("line-control/vision", Some(Staged), Some(Installed))],
                11,
                "line-control/vision staged -> installed, 11 unchanged",
            ),
            (
                vec![
                    c("a/x", None, Some(Staged)),
                    c("a/y", Some(Installed), None),
                    c("a/z", Some(Installed), Some(Installed)),
                ],
                0,
                "a/x new -> staged, a/y removed, a/z installed (updated)",
            ),
            (
                vec![
                    c("a/1", Some(Staged), Some(Installed)),
                    c("a/2", Some(Staged), Some(Installed)),
                    c("a/3", Some(Staged), Some(Installed)),
                    c("a/4", Some(Installed), Some(Failed)),
                ],
                996,
                "3 staged -> installed, 1 installed -> failed, 996 unchanged",
            ),
        ];
        for (changes, unchanged, want) in rows {
            assert_eq!(describe_changes(&changes, unchanged), want);
        }
    }

    #[test]
    fn subjects_are_one_line() {
        assert_eq!(one_line("a\n b\r\n\nc"), "a b c");
        assert_eq!(one_line("  \n"), "fermata status");
    }

    #[test]
    fn labels() {
        assert!(is_label("site-a"));
        assert!(is_label("plant_1.x"));
        assert!(!is_label(""));
        assert!(!is_label(".."));
        assert!(!is_label("a/b"));
        assert!(!is_label("main@abc"));
    }

    #[test]
    fn status_branch_names() {
        let cases = [
            ("fermata/status", Ok("fermata/status")),
            ("refs/heads/fermata/status", Ok("fermata/status")),
            ("refs/heads/main", Ok("main")),
            ("refs/tags/v1", Err("not a branch")),
            ("refs/heads/refs/x", Err("not a branch")),
            ("refs/notes/fermata", Err("not a branch")),
            ("fermata..status", Err("not a valid branch name")),
            ("a b", Err("not a valid branch name")),
            ("", Err("not a valid branch name")),
            ("refs/heads/", Err("not a valid branch name")),
        ];
        for (given, want) in cases {
            match (branch_name(given), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{given:?}"),
                (Err(got), Err(want)) => assert!(got.starts_with(want), "{given:?}: {got}"),
                (got, want) => panic!("{given:?}: {got:?}, wanted {want:?}"),
            }
        }
    }
}
