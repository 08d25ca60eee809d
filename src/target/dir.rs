//! The directory target: each composition is a directory tree, staged beside
//! what is applied and applied by one atomic symlink rename (DESIGN.md
//! section 2; invariants 1, 4 and 7).
//!
//! Under the root, per composition `<symphony>/<variation>/`:
//!
//! ```text
//! current -> .fermata/states/<digest>          the applied state (absent: nothing applied)
//! staged  -> .fermata/states/<digest>          the last staged state (may equal current)
//! .fermata/states/<digest>/manifest.yaml       the resources, one YAML stream, canonical order
//! .fermata/states/<digest>/composition.yaml    id, digest, source, annotations, labels,
//!                                              artifacts, components, manifest checksum
//! .fermata/states/<digest>/artifacts/<name>    hard link into the artifact store
//! .fermata/applied                             last applied digests, oldest first
//! .fermata/next    -> .fermata/states/<digest>  a spare pointer to the staged state,
//!                                              renamed over `current` by the switch
//! .fermata/tmp/                                work in progress: anything here is a leftover
//! ```
//!
//! Crash safety rests on one rule: every change becomes visible through a
//! single `rename` (a state dir built under `tmp/`, a symlink created under
//! `tmp/`, the history file), and everything not yet renamed lives under
//! `tmp/`. So a state dir exists complete or not at all, `current` always
//! names one complete state, and after a kill -9 the only debris is under
//! `tmp/`, which every `Stage`/`Apply`/`delete` clears first. Error paths do
//! no cleanup of their own: a failed call leaves what a crash at that point
//! would, and the next call recovers the same way.
//!
//! A window's opening only switches, so staging prepares everything the
//! switch would create: `next` is made beside `staged`, and the switch
//! renames it over `current` (no new file). The history is appended to, not
//! rewritten (a torn last line is skipped when read), and trimmed to
//! [`KEEP_APPLIED`] by the next stage; a batch of switches deletes nothing
//! either: the states it makes old are collected by the composition's next
//! stage or apply.
//!
//! Durability (power loss) is bought once per switch, not per file: a
//! staged state need not survive a power loss until something switches to
//! it (a lost or torn one fails its check and is staged again), so staging
//! writes without syncs; a switch syncs the file system (`syncfs`) before
//! its renames, then once more after them (a batch of switches,
//! [`Target::apply_staged`], shares both syncs). A batch returns before
//! its second sync ends, which [`Target::durable`] waits for: the
//! reconciler prepares status meanwhile and publishes it after.
//!
//! What was written or checked in full is remembered by `stat` (size,
//! times, inode, as git's index does): a state whose files still stat the
//! same is not read again, and `.fermata-index` at the root keeps that
//! across restarts, so a restart on an unchanged commit stats instead of
//! reading ([`Target::unchanged`]). What `stat` cannot see (a rewrite that
//! kept size and times) is caught by [`Target::verify`], which the
//! reconciler runs on every resync.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Component as PathPart, Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{
    Component, Desired, Health, MetadataChange, Observed, Outcome, SourceRef, StateFlag, StateGoal,
    Switch, Target, TargetError,
};
use crate::model::{Artifact, CompositionId, Digest};
use crate::synth::{Rendered, Resource};

/// How many applied states are kept (the current one included), for rollback.
pub const KEEP_APPLIED: usize = 3;

const META: &str = ".fermata";
const STATES: &str = "states";
const TMP: &str = "tmp";
const HISTORY: &str = "applied";
const CURRENT: &str = "current";
/// Relative to the composition's dir, like `current`, so that renaming it
/// there keeps its target right.
const NEXT: &str = ".fermata/next";
const STAGED: &str = "staged";
const MANIFEST: &str = "manifest.yaml";
const RECORD: &str = "composition.yaml";
const ARTIFACTS: &str = "artifacts";

/// The embedded default target: a directory tree per composition.
///
/// One process owns a root: calls for one composition must not overlap
/// (the [`Target`] contract), calls for different compositions may.
#[derive(Debug, Clone)]
pub struct DirectoryTarget {
    root: PathBuf,
    faults: Faults,
    verified: Verified,
    seen: std::sync::Arc<std::sync::Mutex<Seen>>,
    /// The `syncfs` still running after batches of switches, which
    /// [`Target::durable`] waits for.
    syncing: Syncing,
}

/// A batch of switches returns once its renames are made and syncs them in
/// the background: the caller prepares its status meanwhile (at a window's
/// opening over 10,000 compositions the sync took a quarter of a second).
type Syncing = std::sync::Arc<std::sync::Mutex<Vec<PendingSync>>>;

/// One batch's `syncfs`, running.
type PendingSync = tokio::task::JoinHandle<Result<(), TargetError>>;

/// Artifact files already hashed, by what `stat` says of them (device,
/// inode, size, modification time; not the change time, which every new
/// hard link to a shared artifact moves): like git's index, a file is
/// hashed again only when it may have changed, so `Running` checks every
/// artifact's content without reading gigabytes on every pass.
type Verified =
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<(u64, u64, u64, i64, i64), Digest>>>;

/// What `stat` says of a file: device, inode, size, modification and
/// change times (the change time moves with any write, even one that set
/// the modification time back).
type StatKey = (u64, u64, u64, i64, i64, i64, i64);

fn stat_key(m: &fs::Metadata) -> StatKey {
    use std::os::unix::fs::MetadataExt;
    (
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    )
}

/// The index file at the root: the state dirs written or checked in full,
/// with what their files' `stat` said then.
const INDEX: &str = ".fermata-index";

/// State dirs known complete, by path: the artifacts they hold and the
/// fingerprint of their files' `stat` when they were written or checked.
#[derive(Debug, Default)]
struct Seen {
    /// Whether `.fermata-index` was read yet (lazily, on first use).
    loaded: bool,
    /// Changed since the index was last written.
    dirty: bool,
    states: std::collections::HashMap<PathBuf, SeenState>,
    /// The records of those state dirs this process wrote or read, in
    /// memory only: valid exactly while the entry in `states` is (its
    /// fingerprint covers the record file), and spare a YAML parse per
    /// composition at every look (a window's opening looks twice).
    records: std::collections::HashMap<PathBuf, Record>,
    /// Compositions whose `tmp/` this process left empty: their `recover`
    /// has nothing to clear and skips its `readdir` (one per composition
    /// at a window's opening). Dropped for a composition by every new name
    /// under its `tmp/` ([`Site::tmp_path`]) and by its delete; a crash of
    /// an earlier process is covered, as the set starts empty.
    clean_tmp: std::collections::HashSet<PathBuf>,
}

/// One line of `.fermata-index`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SeenState {
    /// The state dir, relative to the root.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    state: String,
    artifacts: Vec<String>,
    fingerprint: Digest,
}

/// The fingerprint of a state dir's files' `stat`: its record, manifest
/// and artifacts (named by the record).
fn fingerprint(dir: &Path, artifacts: &[String]) -> io::Result<Digest> {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    let files = [RECORD, MANIFEST]
        .iter()
        .map(|f| dir.join(f))
        .chain(artifacts.iter().map(|a| dir.join(ARTIFACTS).join(a)));
    for path in files {
        let (dev, ino, size, mt, mtn, ct, ctn) = stat_key(&fs::symlink_metadata(path)?);
        for n in [dev, ino, size] {
            h.update(n.to_le_bytes());
        }
        for n in [mt, mtn, ct, ctn] {
            h.update(n.to_le_bytes());
        }
    }
    Ok(Digest(h.finalize().into()))
}

impl Seen {
    fn load(&mut self, root: &Path) {
        if self.loaded {
            return;
        }
        self.loaded = true;
        let Ok(text) = fs::read_to_string(root.join(INDEX)) else {
            return;
        };
        // Only a cache: a line that does not parse (a torn write) is skipped.
        for line in text.lines() {
            if let Ok(mut s) = serde_json::from_str::<SeenState>(line) {
                let dir = root.join(std::mem::take(&mut s.state));
                if dir.starts_with(root) && !s.state.contains("..") {
                    self.states.insert(dir, s);
                }
            }
        }
    }

    fn save(&mut self, root: &Path) -> Result<(), TargetError> {
        if !self.dirty {
            return Ok(());
        }
        let mut text = String::new();
        for (dir, s) in &self.states {
            let Ok(rel) = dir.strip_prefix(root) else {
                continue;
            };
            let line = SeenState {
                state: rel.to_string_lossy().into_owned(),
                ..s.clone()
            };
            if let Ok(json) = serde_json::to_string(&line) {
                text.push_str(&json);
                text.push('\n');
            }
        }
        // No sync: a lost or torn index only costs a full read.
        let path = root.join(INDEX);
        let tmp = root.join(format!("{INDEX}.tmp-{}", std::process::id()));
        fs::write(&tmp, text)
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(io_err(&path))?;
        self.dirty = false;
        Ok(())
    }
}

impl DirectoryTarget {
    /// Nothing is touched until the first call; crash leftovers of a
    /// composition are cleared by its first `Stage`, `Apply` or `delete`
    /// (reads and `DryRun` never write, not even to clean up).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirectoryTarget {
            root: root.into(),
            faults: Faults::default(),
            verified: Verified::default(),
            seen: Default::default(),
            syncing: Syncing::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn syncing(&self) -> std::sync::MutexGuard<'_, Vec<PendingSync>> {
        self.syncing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The composition's directory, once its id is known to be one path
    /// component each: ids are DNS labels upstream, this keeps a bad one from
    /// ever naming a path outside the root.
    fn site(&self, id: &CompositionId) -> Result<Site, TargetError> {
        for part in [&id.symphony, &id.variation] {
            if part.is_empty() || part.starts_with('.') || part.contains(['/', '\\', '\0']) {
                return Err(TargetError::Invalid(format!(
                    "composition id {:?}/{:?}: each part must be a non-empty name, \
                     not starting with '.' and without '/'",
                    id.symphony, id.variation
                )));
            }
        }
        Ok(Site {
            id: id.clone(),
            dir: self.root.join(&id.symphony).join(&id.variation),
            root: self.root.clone(),
            faults: self.faults.clone(),
            verified: self.verified.clone(),
            seen: self.seen.clone(),
            full: false,
        })
    }

    /// A handle on the same root whose calls stop dead after `steps` mutating
    /// file-system steps, as a kill -9 there would (tests of invariant 7).
    #[cfg(test)]
    pub(crate) fn crashing_after(&self, steps: usize) -> DirectoryTarget {
        DirectoryTarget {
            root: self.root.clone(),
            faults: Faults {
                left: Some(std::sync::Arc::new(steps.into())),
            },
            verified: self.verified.clone(),
            seen: self.seen.clone(),
            syncing: self.syncing.clone(),
        }
    }
}

#[async_trait]
impl Target for DirectoryTarget {
    /// `Apply` stages implicitly (same call) when the state is not staged
    /// yet, so a crash between a stage and its apply still converges; after
    /// `Apply`, `staged` and `current` name the same state.
    async fn apply(&self, desired: &Desired, goal: StateGoal) -> Result<Outcome, TargetError> {
        let site = self.site(&desired.rendered.id)?;
        let desired = desired.clone();
        blocking(move || site.run(&desired, goal)).await
    }

    async fn get(&self, id: &CompositionId) -> Result<Observed, TargetError> {
        let site = self.site(id)?;
        blocking(move || site.observe()).await
    }

    async fn verify(&self, id: &CompositionId) -> Result<Observed, TargetError> {
        let site = Site {
            full: true,
            ..self.site(id)?
        };
        blocking(move || site.observe()).await
    }

    /// On every core, in one blocking task: a `spawn_blocking` per read
    /// made a window opening's 10,000 reads take 0.19 s, not 0.14 s.
    async fn read_all(
        &self,
        ids: &[CompositionId],
        full: bool,
        _limit: usize,
    ) -> Vec<Result<Observed, TargetError>> {
        let sites: Vec<_> = ids
            .iter()
            .map(|id| self.site(id).map(|site| Site { full, ..site }))
            .collect();
        let n = ids.len();
        let read = move || crate::par::map(sites, |site| site?.observe());
        match tokio::task::spawn_blocking(read).await {
            Ok(results) => results,
            Err(e) => (0..n).map(|_| Err(task_failed(&e))).collect(),
        }
    }

    fn switches_staged(&self) -> bool {
        true
    }

    async fn apply_staged(&self, batch: &[Switch]) -> Vec<Result<Observed, TargetError>> {
        let items: Vec<_> = batch
            .iter()
            .map(|s| (self.site(&s.id), s.clone()))
            .collect();
        let (root, n) = (self.root.clone(), batch.len());
        match tokio::task::spawn_blocking(move || switch_all(&root, items)).await {
            Ok((results, sync)) => {
                if sync {
                    let root = self.root.clone();
                    let syncing = tokio::task::spawn_blocking(move || sync_fs(&root));
                    self.syncing().push(syncing);
                }
                results
            }
            Err(e) => (0..n).map(|_| Err(task_failed(&e))).collect(),
        }
    }

    /// Waits for the `syncfs` of every batch of switches made so far.
    async fn durable(&self) -> Result<(), TargetError> {
        let pending = std::mem::take(&mut *self.syncing());
        let mut result = Ok(());
        for syncing in pending {
            let done = syncing.await.unwrap_or_else(|e| Err(task_failed(&e)));
            if done.is_err() && result.is_ok() {
                result = done;
            }
        }
        result
    }

    async fn unchanged(&self, applied: &[(CompositionId, Digest)]) -> Vec<bool> {
        let sites: Vec<_> = applied
            .iter()
            .map(|(id, d)| self.site(id).map(|s| (s, *d)))
            .collect();
        let n = applied.len();
        tokio::task::spawn_blocking(move || {
            sites
                .into_iter()
                .map(|s| s.is_ok_and(|(site, d)| site.unchanged(&d)))
                .collect()
        })
        .await
        .unwrap_or_else(|_| vec![false; n])
    }

    async fn checkpoint(&self) -> Result<(), TargetError> {
        let (root, seen) = (self.root.clone(), self.seen.clone());
        blocking(move || {
            let mut seen = seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            seen.load(&root);
            if !root.is_dir() {
                return Ok(());
            }
            seen.save(&root)
        })
        .await
    }

    /// Switches `current` back to the newest complete state of the history
    /// before `failed` (the last [`KEEP_APPLIED`] are kept for this), with
    /// the durability of any switch. `staged` keeps naming `failed`: it is
    /// still staged, only no longer applied.
    async fn rollback(
        &self,
        id: &CompositionId,
        failed: &Digest,
    ) -> Result<Option<Digest>, TargetError> {
        let site = self.site(id)?;
        let failed = *failed;
        blocking(move || site.rollback(&failed)).await
    }

    async fn delete(&self, id: &CompositionId) -> Result<(), TargetError> {
        let site = self.site(id)?;
        blocking(move || site.delete()).await
    }

    async fn applied(&self, id: &CompositionId) -> Result<Option<Rendered>, TargetError> {
        let site = self.site(id)?;
        blocking(move || site.applied()).await
    }

    async fn list(&self) -> Result<Vec<CompositionId>, TargetError> {
        let root = self.root.clone();
        blocking(move || list(&root)).await
    }

    async fn write_metadata(
        &self,
        id: &CompositionId,
        change: &MetadataChange,
    ) -> Result<Outcome, TargetError> {
        let site = self.site(id)?;
        let change = change.clone();
        blocking(move || {
            let changed = site.write_metadata(&change)?;
            if let Err(e) = site.gc() {
                tracing::warn!(composition = %site.id, error = %e, "state garbage collection failed");
            }
            Ok(Outcome {
                changed,
                diff: None,
                staging: None,
            })
        })
        .await
    }
}

/// Runs file work off the async executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TargetError> + Send + 'static,
) -> Result<T, TargetError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| task_failed(&e))?
}

/// A blocking task that panicked or was cancelled.
fn task_failed(e: &tokio::task::JoinError) -> TargetError {
    TargetError::io("directory target task", io::Error::other(e.to_string()))
}

/// Test-only crash simulation: once the armed number of mutating steps has
/// run, every further step fails, so nothing after that point happens.
#[derive(Debug, Clone, Default)]
struct Faults {
    #[cfg(test)]
    left: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
}

impl Faults {
    /// Called before every mutating file-system step.
    fn step(&self) -> Result<(), TargetError> {
        #[cfg(test)]
        if let Some(left) = &self.left {
            use std::sync::atomic::Ordering::SeqCst;
            if left
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_err()
            {
                return Err(TargetError::Invalid("simulated crash".into()));
            }
        }
        Ok(())
    }
}

/// `composition.yaml`: what a state dir holds, so that it can be checked
/// for completeness and compared without parsing the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    id: CompositionId,
    digest: Digest,
    /// The commit that first staged this state; an identical render from a
    /// later commit has the same digest and reuses the dir (no write).
    source: SourceRef,
    annotations: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    artifacts: Vec<ArtifactRecord>,
    manifest_sha256: Digest,
    /// Each resource's name and the SHA-256 of its canonical JSON, in
    /// manifest order: lets `get` and plans tell changed resources apart.
    components: Vec<ComponentRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ArtifactRecord {
    name: String,
    sha256: Digest,
    size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ComponentRecord {
    name: String,
    sha256: Digest,
}

fn component_records(r: &Rendered) -> Vec<ComponentRecord> {
    r.resources
        .iter()
        .map(|res| ComponentRecord {
            name: res.key.to_string(),
            sha256: Digest::of(res.object.to_string().as_bytes()),
        })
        .collect()
}

/// What `current` or `staged` is.
enum Pointer {
    Absent,
    State(Digest),
    /// Not a symlink into `states/` (changed by hand): described.
    Foreign(String),
}

/// What `states/<digest>` is.
enum StateCheck {
    Missing,
    Complete(Box<Record>),
    Broken(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TargetError + '_ {
    move |e| TargetError::io(path.display(), e)
}

/// Tolerates the entry being gone already: removal is idempotent.
fn gone(r: io::Result<()>, path: &Path) -> Result<(), TargetError> {
    match r {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(TargetError::io(path.display(), e)),
        _ => Ok(()),
    }
}

/// Makes a rename or unlink in `dir` durable (power loss, not only kill -9).
fn sync_dir(dir: &Path) -> Result<(), TargetError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir))
}

/// Makes everything written on the file system holding `dir` durable, in
/// one call: what a switch needs of the states it switches to, however
/// many, written unsynced by staging.
fn sync_fs(dir: &Path) -> Result<(), TargetError> {
    #[cfg(target_os = "linux")]
    {
        let f = File::open(dir).map_err(io_err(dir))?;
        nix::unistd::syncfs(&f).map_err(|e| TargetError::io(dir.display(), e.into()))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        nix::unistd::sync();
        Ok(())
    }
}

/// Up to this many switches sync the files they need one by one; more
/// sync the whole file system at once. `syncfs` also flushes whatever else
/// is dirty on it (a neighbour's build), which one composition's few
/// files should not wait for; ten thousand should.
const SYNC_FILES_UP_TO: usize = 8;

/// How a batch of `n` switches makes its states durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// fsync of each state's files and dirs, then of each renamed entry's dir.
    Files,
    /// One `syncfs` before the renames, one after.
    FileSystem,
}

fn durability(n: usize) -> Durability {
    if n <= SYNC_FILES_UP_TO {
        Durability::Files
    } else {
        Durability::FileSystem
    }
}

/// [`Target::apply_staged`]: every item's state checked complete, one
/// sync, every switch (and history line), one more sync, then what each
/// holds. An item that fails fails alone; a failed sync fails every item
/// that would have switched after it (nothing is switched unsynced).
/// `true` beside the results: the sync after the switches is the caller's
/// to run (a `syncfs`, which [`Target::durable`] waits for).
fn switch_all(
    root: &Path,
    items: Vec<(Result<Site, TargetError>, Switch)>,
) -> (Vec<Result<Observed, TargetError>>, bool) {
    let started = std::time::Instant::now();
    let mut laps = Vec::new();
    let mut results: Vec<Option<Result<Observed, TargetError>>> = Vec::new();
    let mut ready = Vec::new();
    let prepared = crate::par::map(items, |(site, switch)| {
        let site = site?;
        let record = site.prepare_switch(&switch.digest)?;
        Ok((site, record, switch))
    });
    for (i, prepared) in prepared.into_iter().enumerate() {
        results.push(None);
        match prepared {
            Ok((site, record, switch)) => ready.push((i, site, record, switch)),
            Err(e) => results[i] = Some(Err(e)),
        }
    }
    laps.push(started.elapsed());
    let how = durability(ready.len());
    let synced = match how {
        _ if ready.is_empty() => Ok(()),
        Durability::FileSystem => sync_fs(root),
        Durability::Files => ready
            .iter()
            .try_for_each(|(_, site, record, s)| site.sync_state(&s.digest, record)),
    };
    laps.push(started.elapsed());
    let mut switched = Vec::new();
    if let Err(e) = &synced {
        for (i, site, _, _) in ready {
            results[i] = Some(Err(TargetError::Invalid(format!(
                "{}: not switched: syncing the staged states failed: {e}",
                site.id
            ))));
        }
    } else {
        let done = crate::par::map(ready, |(i, site, record, switch)| {
            let done = site.switch_to(&switch.digest, &switch.source);
            (i, site, record, switch.digest, done)
        });
        for (i, site, record, digest, done) in done {
            match done {
                Ok(_) => switched.push((i, site, record, digest)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
    }
    laps.push(started.elapsed());
    let sync_after = !switched.is_empty() && how == Durability::FileSystem;
    if !switched.is_empty() && how == Durability::Files {
        let synced = switched
            .iter()
            .try_for_each(|(_, site, _, _)| site.sync_pointers());
        if let Err(e) = synced {
            // Switched, only perhaps not durably: said, not undone.
            tracing::warn!(error = %e, "syncing after a batch of switches failed");
        }
        laps.push(started.elapsed());
    }
    tracing::debug!(
        switched = switched.len(),
        ?how,
        // Until: checked, synced, switched (and synced again, file by file).
        ?laps,
        "batch of switches done"
    );
    // Nothing is collected here: deleting belongs to staging, not to the
    // window (the next stage or apply of each composition collects).
    for (i, site, record, digest) in switched {
        tracing::info!(composition = %site.id, digest = %digest.short(), "applied");
        results[i] = Some(Ok(applied_observed(digest, record)));
    }
    let results = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(TargetError::Invalid("not switched".into()))))
        .collect();
    (results, sync_after)
}

/// What a composition holds right after a switch to `record`'s state.
fn applied_observed(digest: Digest, record: Record) -> Observed {
    let source = Some(record.source).filter(|s| !s.branch.is_empty());
    Observed {
        applied: Some(digest),
        staged: Some(digest),
        components: record
            .components
            .into_iter()
            .map(|c| Component {
                name: c.name,
                flag: StateFlag::Applied,
            })
            .collect(),
        health: Some(Health::Healthy),
        annotations: record.annotations,
        labels: record.labels,
        source,
    }
}

/// The digest a pointer target names, if it is exactly `.fermata/states/<hex>`.
fn parse_pointer(target: &Path) -> Option<Digest> {
    let parts: Vec<_> = target.components().collect();
    match parts.as_slice() {
        [PathPart::Normal(m), PathPart::Normal(s), PathPart::Normal(d)]
            if *m == META && *s == STATES =>
        {
            let hex = d.to_str()?;
            hex.parse::<Digest>().ok().filter(|d| d.to_hex() == hex)
        }
        _ => None,
    }
}

/// `.fermata/applied` as read.
struct HistoryFile {
    /// The lines that parse, oldest first.
    lines: Vec<(Digest, String)>,
    /// Whether the text ends where a line does (not after a torn append),
    /// so an append knows to start a line first.
    ends_line: bool,
    /// Whether every line parsed.
    whole: bool,
}

/// One composition's directory and the file work on it; all blocking.
struct Site {
    id: CompositionId,
    dir: PathBuf,
    /// The target's root: the file system a switch syncs, the index's place.
    root: PathBuf,
    faults: Faults,
    verified: Verified,
    seen: std::sync::Arc<std::sync::Mutex<Seen>>,
    /// Check every state's content, whatever `stat` says ([`Target::verify`]).
    full: bool,
}

impl Site {
    fn meta(&self) -> PathBuf {
        self.dir.join(META)
    }

    fn states(&self) -> PathBuf {
        self.meta().join(STATES)
    }

    fn tmp(&self) -> PathBuf {
        self.meta().join(TMP)
    }

    fn state(&self, digest: &Digest) -> PathBuf {
        self.states().join(digest.to_hex())
    }

    /// A fresh name under `tmp/`, where everything is work in progress.
    fn tmp_path(&self, what: &str) -> PathBuf {
        self.seen().clean_tmp.remove(&self.dir);
        self.tmp()
            .join(format!("{what}.{:016x}", rand::random::<u64>()))
    }

    fn step(&self) -> Result<(), TargetError> {
        self.faults.step()
    }

    fn run(&self, desired: &Desired, goal: StateGoal) -> Result<Outcome, TargetError> {
        if goal == StateGoal::DryRun {
            return self.dry_run(&desired.rendered);
        }
        self.recover()?;
        let changed = match goal {
            StateGoal::Apply => self.apply(desired)?,
            _ => self.stage(desired, goal)?,
        };
        // Also after a no-op: only then does a restart after a crash inside
        // the collection converge. It writes only when there is garbage, so
        // an unchanged state still costs no write. Like `recover`, it is
        // housekeeping and does not count as `changed`; a failure is logged,
        // not returned: the call did what it was asked, and the next one
        // collects again.
        match self.gc() {
            // Done without error: whatever either put under `tmp/` was
            // renamed away or removed.
            Ok(()) => {
                self.seen().clean_tmp.insert(self.dir.clone());
            }
            Err(e) => {
                tracing::warn!(composition = %self.id, error = %e, "state garbage collection failed")
            }
        }
        Ok(Outcome {
            changed,
            diff: None,
            staging: None,
        })
    }

    /// Clears what an interrupted call left under `tmp/`: half-built state
    /// dirs, temp symlinks and history files, states being discarded.
    fn recover(&self) -> Result<(), TargetError> {
        if self.seen().clean_tmp.contains(&self.dir) {
            return Ok(());
        }
        let tmp = self.tmp();
        let entries = match fs::read_dir(&tmp) {
            Ok(entries) => Some(entries),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(TargetError::io(tmp.display(), e)),
        };
        for entry in entries.into_iter().flatten() {
            let entry = entry.map_err(io_err(&tmp))?;
            let path = entry.path();
            let is_dir = entry.file_type().map_err(io_err(&path))?.is_dir();
            tracing::info!(path = %path.display(), "removing the leftover of an interrupted write");
            self.step()?;
            if is_dir {
                gone(fs::remove_dir_all(&path), &path)?;
            } else {
                gone(fs::remove_file(&path), &path)?;
            }
        }
        self.seen().clean_tmp.insert(self.dir.clone());
        Ok(())
    }

    fn ensure_dirs(&self) -> Result<(), TargetError> {
        self.step()?;
        for dir in [self.states(), self.tmp()] {
            // A concurrent delete of the last sibling variation may remove
            // the (then empty) symphony dir between mkdirs: try again.
            let mut tries = 0;
            loop {
                match fs::create_dir_all(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 3 => tries += 1,
                    Err(e) => return Err(TargetError::io(dir.display(), e)),
                }
            }
        }
        Ok(())
    }

    fn pointer(&self, name: &str) -> Result<Pointer, TargetError> {
        let path = self.dir.join(name);
        let target = match fs::read_link(&path) {
            Ok(target) => target,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Pointer::Absent),
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                return Ok(Pointer::Foreign(format!(
                    "{} is not a symlink",
                    path.display()
                )))
            }
            Err(e) => return Err(TargetError::io(path.display(), e)),
        };
        Ok(match parse_pointer(&target) {
            Some(digest) => Pointer::State(digest),
            None => Pointer::Foreign(format!(
                "{} points to {}, not to a state",
                path.display(),
                target.display()
            )),
        })
    }

    fn points_to(&self, name: &str, digest: &Digest) -> Result<bool, TargetError> {
        Ok(matches!(self.pointer(name)?, Pointer::State(d) if d == *digest))
    }

    fn check_state(&self, digest: &Digest) -> Result<StateCheck, TargetError> {
        let dir = self.state(digest);
        match fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(StateCheck::Missing),
            Err(e) => Err(TargetError::io(dir.display(), e)),
            Ok(m) if !m.is_dir() => Ok(StateCheck::Broken(format!(
                "{} is not a directory",
                dir.display()
            ))),
            Ok(_) => {
                if !self.full {
                    if let Some(record) = self.known(&dir, digest) {
                        return Ok(StateCheck::Complete(Box::new(record)));
                    }
                }
                // Stat before and after the read, as git does: a file
                // changed meanwhile is not remembered as checked.
                let before = self.seen_state(&dir, None);
                Ok(match self.verify(&dir, digest) {
                    Ok(record) => {
                        if let Some(before) = before {
                            self.remember(&dir, &record, Some(before));
                        }
                        StateCheck::Complete(Box::new(record))
                    }
                    Err(reason) => {
                        self.forget(&dir);
                        StateCheck::Broken(reason)
                    }
                })
            }
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.load(&self.root);
        seen
    }

    /// The fingerprint of `dir`'s files now, with the artifacts the index
    /// (or `record`) names; `None` where one cannot be stat'ed.
    fn seen_state(&self, dir: &Path, record: Option<&Record>) -> Option<SeenState> {
        let artifacts = match record {
            Some(r) => r.artifacts.iter().map(|a| a.name.clone()).collect(),
            None => {
                let known = self.seen().states.get(dir).map(|s| s.artifacts.clone());
                match known {
                    Some(a) => a,
                    None => self
                        .read_record(dir)
                        .ok()?
                        .artifacts
                        .into_iter()
                        .map(|a| a.name)
                        .collect(),
                }
            }
        };
        let fingerprint = fingerprint(dir, &artifacts).ok()?;
        Some(SeenState {
            state: String::new(),
            artifacts,
            fingerprint,
        })
    }

    /// Whether `dir` stats as it did when it was last written or checked.
    fn stats_as_seen(&self, dir: &Path) -> bool {
        let Some(known) = self.seen().states.get(dir).cloned() else {
            return false;
        };
        fingerprint(dir, &known.artifacts).is_ok_and(|f| f == known.fingerprint)
    }

    /// The record of a state dir that stats as it did when it was last
    /// written or checked in full: no content read but the record's.
    fn known(&self, dir: &Path, digest: &Digest) -> Option<Record> {
        let record = self.seen_record(dir)?;
        (record.digest == *digest && record.id == self.id).then_some(record)
    }

    /// The record of a state dir that stats as it did when it was last
    /// written or checked, from memory where this process has it.
    fn seen_record(&self, dir: &Path) -> Option<Record> {
        if !self.stats_as_seen(dir) {
            return None;
        }
        let cached = self.seen().records.get(dir).cloned();
        match cached {
            Some(r) => Some(r),
            None => {
                // Read after the stat matched: a write in between moves the
                // stat, so the next look does not trust this copy.
                let r = self.read_record(dir).ok()?;
                self.seen().records.insert(dir.to_path_buf(), r.clone());
                Some(r)
            }
        }
    }

    /// Remembers `dir` as checked (or written) with `record`, if its files
    /// still stat as `before` (taken before the check), or at all.
    fn remember(&self, dir: &Path, record: &Record, before: Option<SeenState>) {
        let Some(now) = self.seen_state(dir, Some(record)) else {
            return;
        };
        if before.is_some_and(|b| b.fingerprint != now.fingerprint) {
            return;
        }
        let mut seen = self.seen();
        if seen.states.get(dir) != Some(&now) {
            seen.states.insert(dir.to_path_buf(), now);
            seen.dirty = true;
        }
        seen.records.insert(dir.to_path_buf(), record.clone());
    }

    fn forget(&self, dir: &Path) {
        let mut seen = self.seen();
        seen.records.remove(dir);
        if seen.states.remove(dir).is_some() {
            seen.dirty = true;
        }
    }

    /// `Target::unchanged` for this composition: `current` names `digest`
    /// and its files stat as they did when written or checked.
    fn unchanged(&self, digest: &Digest) -> bool {
        matches!(self.pointer(CURRENT), Ok(Pointer::State(d)) if d == *digest)
            && self.stats_as_seen(&self.state(digest))
    }

    fn read_record(&self, dir: &Path) -> Result<Record, String> {
        let path = dir.join(RECORD);
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Checks a state dir against its own record: right id and digest,
    /// manifest checksum, every artifact present with its recorded size.
    /// Whether an artifact file hashes to its digest (cached by `stat`).
    fn verify_content(
        &self,
        path: &Path,
        meta: &fs::Metadata,
        want: &Digest,
    ) -> Result<(), String> {
        let (dev, ino, size, mtime, mtime_nsec, _, _) = stat_key(meta);
        let key = (dev, ino, size, mtime, mtime_nsec);
        let known = (!self.full)
            .then(|| self.verified.lock().ok().and_then(|v| v.get(&key).copied()))
            .flatten();
        let got = match known {
            Some(d) => d,
            None => {
                use sha2::Digest as _;
                let mut hasher = sha2::Sha256::new();
                let mut file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
                io::copy(&mut file, &mut hasher).map_err(|e| format!("{}: {e}", path.display()))?;
                let d = Digest(hasher.finalize().into());
                if let Ok(mut v) = self.verified.lock() {
                    v.insert(key, d);
                }
                d
            }
        };
        if got != *want {
            return Err(format!(
                "{}: content does not hash to its sha256 {}",
                path.display(),
                want.short()
            ));
        }
        Ok(())
    }

    fn verify(&self, dir: &Path, digest: &Digest) -> Result<Record, String> {
        let record = self.read_record(dir)?;
        if record.digest != *digest || record.id != self.id {
            return Err(format!(
                "{}: records {} of {}, expected {} of {}",
                dir.join(RECORD).display(),
                record.digest.short(),
                record.id,
                digest.short(),
                self.id
            ));
        }
        let path = dir.join(MANIFEST);
        let manifest = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if Digest::of(&manifest) != record.manifest_sha256 {
            return Err(format!(
                "{}: content differs from its recorded SHA-256",
                path.display()
            ));
        }
        for a in &record.artifacts {
            check_artifact_name(&a.name)?;
            let path = dir.join(ARTIFACTS).join(&a.name);
            match fs::metadata(&path) {
                Ok(m) if m.is_file() && m.len() == a.size => {
                    self.verify_content(&path, &m, &a.sha256)?
                }
                Ok(m) if m.is_file() => {
                    return Err(format!(
                        "{}: {} bytes, recorded {}",
                        path.display(),
                        m.len(),
                        a.size
                    ))
                }
                Ok(_) => return Err(format!("{}: not a file", path.display())),
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
        Ok(record)
    }

    /// Makes `states/<digest>` exist complete and points `staged` at it;
    /// whether anything was written. Never changes `current` (invariant 1):
    /// not the pointer, and not the dir it names.
    fn stage(&self, desired: &Desired, goal: StateGoal) -> Result<bool, TargetError> {
        let digest = desired.rendered.digest;
        let mut changed = false;
        match self.check_state(&digest)? {
            StateCheck::Complete(_) => {}
            StateCheck::Missing => {
                let (built, record) = self.build_state(desired)?;
                self.install(&built, &digest, &record)?;
                changed = true;
            }
            StateCheck::Broken(reason) => {
                if goal == StateGoal::Stage && self.points_to(CURRENT, &digest)? {
                    return Err(TargetError::Invalid(format!(
                        "{}: applied state {} is damaged ({reason}); staging never changes \
                         what is applied: apply it again to repair it",
                        self.id,
                        digest.short()
                    )));
                }
                tracing::warn!(composition = %self.id, digest = %digest.short(), %reason,
                    "replacing a damaged state");
                // Build first: the damaged dir is gone only for one rename.
                let (built, record) = self.build_state(desired)?;
                self.discard(&self.state(&digest))?;
                self.install(&built, &digest, &record)?;
                changed = true;
            }
        }
        if !self.points_to(STAGED, &digest)? {
            self.switch(STAGED, &digest)?;
            changed = true;
        }
        // What the switch will rename over `current`; not a change anyone
        // sees (only the switch reads it).
        if !self.points_to(CURRENT, &digest)? && !self.points_to(NEXT, &digest)? {
            self.switch(NEXT, &digest)?;
        }
        // And the history file the switch appends to (empty: nothing applied).
        let history = self.meta().join(HISTORY);
        if !history.exists() {
            self.step()?;
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&history)
            {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(TargetError::io(history.display(), e)),
            }
        }
        Ok(changed)
    }

    /// Stages (if needed) and switches `current` by one rename, then records
    /// the apply; whether anything was written. The staged state is made
    /// durable (one `syncfs`) before the switch, the switch after it.
    fn apply(&self, desired: &Desired) -> Result<bool, TargetError> {
        let digest = desired.rendered.digest;
        let mut changed = self.stage(desired, StateGoal::Apply)?;
        if !self.points_to(CURRENT, &digest)? || self.history_behind(&digest)? {
            let record = self
                .read_record(&self.state(&digest))
                .map_err(TargetError::Invalid)?;
            self.sync_state(&digest, &record)?;
            changed |= self.switch_to(&digest, &desired.source)?;
            self.sync_pointers()?;
        }
        Ok(changed)
    }

    /// Makes a state written unsynced durable: its files, its dirs, its
    /// entry in `states/`.
    fn sync_state(&self, digest: &Digest, record: &Record) -> Result<(), TargetError> {
        let dir = self.state(digest);
        let fsync = |p: &Path| File::open(p).and_then(|f| f.sync_all()).map_err(io_err(p));
        fsync(&dir.join(RECORD))?;
        fsync(&dir.join(MANIFEST))?;
        if !record.artifacts.is_empty() {
            for a in &record.artifacts {
                fsync(&dir.join(ARTIFACTS).join(&a.name))?;
            }
            sync_dir(&dir.join(ARTIFACTS))?;
        }
        sync_dir(&dir)?;
        sync_dir(&self.states())
    }

    /// Makes the renames of a switch durable: `current`, `staged`, history.
    fn sync_pointers(&self) -> Result<(), TargetError> {
        let history = self.meta().join(HISTORY);
        match File::open(&history) {
            Ok(f) => f.sync_data().map_err(io_err(&history))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(TargetError::io(history.display(), e)),
        }
        sync_dir(&self.dir)?;
        sync_dir(&self.meta())
    }

    /// Whether the history's newest entry is not `digest`.
    fn history_behind(&self, digest: &Digest) -> Result<bool, TargetError> {
        Ok(self.history()?.last().map(|(d, _)| d) != Some(digest))
    }

    /// What a batched switch to `digest` needs first: leftovers cleared,
    /// the state complete. Writes nothing else.
    fn prepare_switch(&self, digest: &Digest) -> Result<Record, TargetError> {
        self.recover()?;
        match self.check_state(digest)? {
            StateCheck::Complete(record) => Ok(*record),
            StateCheck::Missing | StateCheck::Broken(_) => Err(TargetError::NotStaged {
                id: self.id.clone(),
                digest: digest.to_hex(),
            }),
        }
    }

    /// Points `staged` and `current` at the complete state `digest` and
    /// records the apply, syncing nothing (the caller syncs before and
    /// after); whether anything was written.
    fn switch_to(&self, digest: &Digest, source: &SourceRef) -> Result<bool, TargetError> {
        let mut changed = false;
        if !self.points_to(STAGED, digest)? {
            self.switch(STAGED, digest)?;
            changed = true;
        }
        let previous = match self.pointer(CURRENT)? {
            Pointer::State(d) => Some(d),
            _ => None,
        };
        if previous != Some(*digest) {
            if self.points_to(NEXT, digest)? {
                // Prepared by the stage: one rename, nothing created.
                let (next, dest) = (self.dir.join(NEXT), self.dir.join(CURRENT));
                self.step()?;
                fs::rename(&next, &dest).map_err(io_err(&dest))?;
            } else {
                self.switch(CURRENT, digest)?;
            }
            tracing::debug!(composition = %self.id, digest = %digest.short(), "switched");
            changed = true;
        }
        // A crash between a switch and its history write leaves the history
        // behind `current`: the previous state is caught up with this one.
        let file = self.history_file()?;
        let (old, clean) = (file.lines, file.ends_line);
        let mut history = old.clone();
        let mut behind = false;
        if let Some(p) = previous.filter(|p| p != digest) {
            behind |= catch_up(&mut history, p, || self.history_line(&p, None));
        }
        behind |= catch_up(&mut history, *digest, || {
            self.history_line(digest, Some(source))
        });
        if behind {
            match history.strip_prefix(old.as_slice()) {
                Some(new) => self.append_history(new, clean)?,
                None => self.write_history(&history)?,
            }
            changed = true;
        }
        Ok(changed)
    }

    /// [`Target::rollback`]. The history loses `failed` first, by its one
    /// rename, then `current` switches: a crash between the two leaves
    /// `current` on `failed`, and the next call (which a restart makes,
    /// the reconciler having not recorded the rollback yet) finds the same
    /// previous state and finishes the switch.
    fn rollback(&self, failed: &Digest) -> Result<Option<Digest>, TargetError> {
        self.recover()?;
        let current = match self.pointer(CURRENT)? {
            Pointer::State(d) => d,
            Pointer::Absent => return Ok(None),
            Pointer::Foreign(why) => {
                return Err(TargetError::Invalid(format!(
                    "{}: cannot roll back: {why}",
                    self.id
                )))
            }
        };
        if current != *failed {
            // The failed apply never switched, or was rolled back already.
            return Ok(Some(current));
        }
        let mut history = self.history()?;
        history.retain(|(d, _)| d != failed);
        let (previous, record) = loop {
            let Some((d, _)) = history.last() else {
                return Ok(None);
            };
            let d = *d;
            match self.check_state(&d)? {
                StateCheck::Complete(record) => break (d, *record),
                StateCheck::Missing | StateCheck::Broken(_) => {
                    tracing::warn!(composition = %self.id, digest = %d.short(),
                        "previous state missing or damaged: rolling back past it");
                    history.pop();
                }
            }
        };
        self.write_history(&history)?;
        self.sync_state(&previous, &record)?;
        self.switch(CURRENT, &previous)?;
        self.sync_pointers()?;
        if let Err(e) = self.gc() {
            tracing::warn!(composition = %self.id, error = %e, "state garbage collection failed");
        }
        tracing::info!(composition = %self.id, from = %failed.short(), to = %previous.short(), "rolled back");
        Ok(Some(previous))
    }

    /// Writes a complete state dir under `tmp/` and returns its path and its
    /// record. Input is checked before anything is written.
    fn build_state(&self, desired: &Desired) -> Result<(PathBuf, Record), TargetError> {
        let r = &desired.rendered;
        let mut sources = Vec::new();
        for a in &r.artifacts {
            check_artifact_name(&a.name)
                .map_err(|e| TargetError::Invalid(format!("{}: {e}", self.id)))?;
            let src = desired.artifacts.get(&a.name).ok_or_else(|| {
                TargetError::Invalid(format!(
                    "{}: artifact {:?} is not in the store",
                    self.id, a.name
                ))
            })?;
            let meta = fs::metadata(src).map_err(io_err(src))?;
            if !meta.is_file() || a.size.is_some_and(|size| size != meta.len()) {
                return Err(TargetError::Invalid(format!(
                    "{}: artifact {:?}: {} is not a file of the expected size",
                    self.id,
                    a.name,
                    src.display()
                )));
            }
            sources.push((
                src,
                ArtifactRecord {
                    name: a.name.clone(),
                    sha256: a.sha256,
                    size: meta.len(),
                },
            ));
        }
        let manifest = r.manifest_yaml();
        let record = Record {
            id: r.id.clone(),
            digest: r.digest,
            source: desired.source.clone(),
            annotations: r.annotations.clone(),
            labels: r.labels.clone(),
            artifacts: sources.iter().map(|(_, a)| a.clone()).collect(),
            manifest_sha256: Digest::of(manifest.as_bytes()),
            components: component_records(r),
        };
        let text = serde_yaml::to_string(&record).map_err(|e| {
            TargetError::Invalid(format!("{}: cannot write {RECORD}: {e}", self.id))
        })?;

        self.ensure_dirs()?;
        let dir = self.tmp_path("state");
        self.step()?;
        fs::create_dir(&dir).map_err(io_err(&dir))?;
        self.write_file(&dir.join(MANIFEST), manifest.as_bytes())?;
        if !sources.is_empty() {
            let artifacts = dir.join(ARTIFACTS);
            self.step()?;
            fs::create_dir(&artifacts).map_err(io_err(&artifacts))?;
            for (src, a) in &sources {
                self.link_or_copy(src, &artifacts.join(&a.name))?;
            }
        }
        self.write_file(&dir.join(RECORD), text.as_bytes())?;
        Ok((dir, record))
    }

    /// Renames a built state dir into place: the moment it exists. Not
    /// synced: a switch to it syncs first. Remembered as checked, with the
    /// record `build_state` wrote (not read back: these are its bytes).
    fn install(&self, built: &Path, digest: &Digest, record: &Record) -> Result<(), TargetError> {
        let dest = self.state(digest);
        self.step()?;
        fs::rename(built, &dest).map_err(io_err(&dest))?;
        self.remember(&dest, record, None);
        Ok(())
    }

    /// Writes without a sync: nothing written here counts until a switch,
    /// which syncs the file system first.
    fn write_file(&self, path: &Path, bytes: &[u8]) -> Result<(), TargetError> {
        self.step()?;
        File::create(path)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(io_err(path))
    }

    /// A hard link shares the store's verified bytes at no cost; across
    /// filesystems (or where links are refused) a copy does the same job.
    fn link_or_copy(&self, src: &Path, dest: &Path) -> Result<(), TargetError> {
        self.step()?;
        if let Err(e) = fs::hard_link(src, dest) {
            tracing::debug!(src = %src.display(), error = %e, "cannot hard-link the artifact, copying it");
            fs::copy(src, dest).map_err(io_err(src))?;
        }
        Ok(())
    }

    /// Points `name` at a state by one rename of a fresh symlink over it, so
    /// a reader sees the old state or the new one, never neither or a mix.
    /// Not synced: callers switching `current` sync around it.
    fn switch(&self, name: &str, digest: &Digest) -> Result<(), TargetError> {
        self.ensure_dirs()?;
        let tmp = self.tmp_path(name.rsplit('/').next().unwrap_or(name));
        let target = Path::new(META).join(STATES).join(digest.to_hex());
        self.step()?;
        std::os::unix::fs::symlink(&target, &tmp).map_err(io_err(&tmp))?;
        let dest = self.dir.join(name);
        self.step()?;
        fs::rename(&tmp, &dest).map_err(io_err(&dest))
    }

    /// Removes a state dir without it ever being seen half-deleted: renamed
    /// into `tmp/` first, so a crash leaves only a leftover there.
    fn discard(&self, path: &Path) -> Result<(), TargetError> {
        self.forget(path);
        let trash = self.tmp_path("discard");
        self.step()?;
        fs::rename(path, &trash).map_err(io_err(path))?;
        let is_dir = fs::symlink_metadata(&trash)
            .map_err(io_err(&trash))?
            .is_dir();
        self.step()?;
        if is_dir {
            gone(fs::remove_dir_all(&trash), &trash)
        } else {
            gone(fs::remove_file(&trash), &trash)
        }
    }

    /// The applied history, oldest first: each digest with its line (which
    /// also says when and from which commit, for people).
    fn history(&self) -> Result<Vec<(Digest, String)>, TargetError> {
        Ok(self.history_file()?.lines)
    }

    fn history_file(&self) -> Result<HistoryFile, TargetError> {
        let path = self.meta().join(HISTORY);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(HistoryFile {
                    lines: Vec::new(),
                    ends_line: true,
                    whole: true,
                })
            }
            Err(e) => return Err(TargetError::io(path.display(), e)),
        };
        let parse = |line: &str| -> Option<(Digest, String)> {
            let digest = line.split_whitespace().next()?.parse().ok()?;
            Some((digest, line.to_string()))
        };
        let lines: Vec<_> = text.lines().filter_map(parse).collect();
        Ok(HistoryFile {
            whole: lines.len() == text.lines().count(),
            ends_line: text.is_empty() || text.ends_with('\n'),
            lines,
        })
    }

    /// Adds lines to the history in place: no file created, as a switch at
    /// a window's opening should. Not synced (the switch's sync covers it).
    fn append_history(&self, lines: &[(Digest, String)], clean: bool) -> Result<(), TargetError> {
        let mut text = String::new();
        if !clean {
            text.push('\n');
        }
        for (_, line) in lines {
            text.push_str(line);
            text.push('\n');
        }
        let path = self.meta().join(HISTORY);
        self.step()?;
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(io_err(&path))
    }

    /// `<digest> <branch>@<commit> <recorded at>`: the digest is what
    /// counts, the rest is for people. The source is read from the state's
    /// record when not given (a late catch-up).
    fn history_line(&self, digest: &Digest, source: Option<&SourceRef>) -> String {
        let recorded = source
            .cloned()
            .or_else(|| self.read_record(&self.state(digest)).ok().map(|r| r.source));
        let from = recorded.map_or("unknown".to_string(), |s| {
            format!("{}@{}", s.branch, s.commit)
        });
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        format!("{digest} {from} {now}")
    }

    /// Rewrites the history by one rename, keeping the last [`KEEP_APPLIED`].
    fn write_history(&self, history: &[(Digest, String)]) -> Result<(), TargetError> {
        let skip = history.len().saturating_sub(KEEP_APPLIED);
        let mut text = String::new();
        for (_, line) in &history[skip..] {
            text.push_str(line);
            text.push('\n');
        }
        self.ensure_dirs()?;
        let tmp = self.tmp_path(HISTORY);
        self.write_file(&tmp, text.as_bytes())?;
        let dest = self.meta().join(HISTORY);
        self.step()?;
        fs::rename(&tmp, &dest).map_err(io_err(&dest))
    }

    /// Removes every state except the last [`KEEP_APPLIED`] applied and the
    /// ones `current` and `staged` name. A pointer it cannot read stops it:
    /// it never guesses what is in use.
    fn gc(&self) -> Result<(), TargetError> {
        let mut pointers = Vec::new();
        for name in [CURRENT, STAGED] {
            match self.pointer(name)? {
                Pointer::Absent => pointers.push(None),
                Pointer::State(d) => pointers.push(Some(d)),
                Pointer::Foreign(why) => {
                    tracing::warn!(composition = %self.id, "not collecting old states: {why}");
                    return Ok(());
                }
            }
        }
        // Appends (at switches) grow the history, and a torn one leaves a
        // line that does not parse: trimmed here, off the window.
        let file = self.history_file()?;
        let mut history = file.lines;
        if history.len() > KEEP_APPLIED || !file.whole {
            self.write_history(&history)?;
        }
        // `current` is the newest applied state even where a crash kept it
        // out of the history file.
        if let Some(current) = pointers[0] {
            catch_up(&mut history, current, String::new);
        }
        let mut keep: BTreeSet<String> = history
            .iter()
            .rev()
            .take(KEEP_APPLIED)
            .map(|(d, _)| d.to_hex())
            .collect();
        keep.extend(pointers.iter().flatten().map(Digest::to_hex));
        let states = self.states();
        for entry in fs::read_dir(&states).map_err(io_err(&states))? {
            let entry = entry.map_err(io_err(&states))?;
            if entry.file_name().to_str().is_some_and(|n| keep.contains(n)) {
                continue;
            }
            self.discard(&entry.path())?;
        }
        Ok(())
    }

    /// The plan for `desired`: whether `current` differs, and how.
    fn dry_run(&self, desired: &Rendered) -> Result<Outcome, TargetError> {
        let mut notes = Vec::new();
        let applied = match self.pointer(CURRENT)? {
            Pointer::State(d) => Some(d),
            Pointer::Absent => None,
            Pointer::Foreign(why) => {
                notes.push(why);
                None
            }
        };
        if applied == Some(desired.digest) {
            return Ok(Outcome {
                changed: false,
                diff: None,
                staging: None,
            });
        }
        let (record, manifest) = match applied {
            None => (None, String::new()),
            Some(d) => {
                let dir = self.state(&d);
                let record = self
                    .read_record(&dir)
                    .map_err(|e| notes.push(format!("applied state unreadable: {e}")))
                    .ok();
                let path = dir.join(MANIFEST);
                let manifest = fs::read_to_string(&path)
                    .map_err(|e| notes.push(format!("{}: {e}", path.display())))
                    .unwrap_or_default();
                (record, manifest)
            }
        };
        let diff = plan_diff(
            &self.id,
            applied,
            record.as_ref(),
            &manifest,
            desired,
            &notes,
        );
        Ok(Outcome {
            changed: true,
            diff: Some(diff),
            staging: None,
        })
    }

    /// What is applied and staged. Components: those of the applied state
    /// are `Applied`, except that a staged state (other than the applied)
    /// flags its new and changed components `Staged`; each name once,
    /// sorted. Components the staged state drops stay `Applied` until the
    /// apply removes them.
    fn observe(&self) -> Result<Observed, TargetError> {
        let mut problems = Vec::new();
        let applied = match self.pointer(CURRENT)? {
            Pointer::State(d) => Some(d),
            Pointer::Absent => None,
            Pointer::Foreign(why) => {
                problems.push(why);
                None
            }
        };
        let staged = match self.pointer(STAGED)? {
            Pointer::State(d) => Some(d),
            Pointer::Absent => None,
            Pointer::Foreign(why) => {
                tracing::warn!(composition = %self.id, "{why}");
                None
            }
        };
        let mut flags: BTreeMap<String, StateFlag> = BTreeMap::new();
        let mut applied_components = BTreeMap::new();
        let mut carried = (BTreeMap::new(), BTreeMap::new());
        let mut source = None;
        if let Some(d) = applied {
            match self.check_state(&d)? {
                StateCheck::Complete(record) => {
                    carried = (record.annotations.clone(), record.labels.clone());
                    // States rewritten before metadata writes kept it say ''.
                    source = Some(record.source.clone()).filter(|s| !s.branch.is_empty());
                    for c in record.components {
                        flags.insert(c.name.clone(), StateFlag::Applied);
                        applied_components.insert(c.name, c.sha256);
                    }
                }
                StateCheck::Missing => {
                    problems.push(format!("applied state {} is missing", d.short()))
                }
                StateCheck::Broken(why) => problems.push(why),
            }
        }
        if let Some(d) = staged.filter(|d| Some(*d) != applied) {
            let dir = self.state(&d);
            let record = self
                .seen_record(&dir)
                .map_or_else(|| self.read_record(&dir), Ok);
            if let Ok(record) = record {
                for c in record.components {
                    if applied_components.get(&c.name) != Some(&c.sha256) {
                        flags.insert(c.name, StateFlag::Staged);
                    }
                }
            }
        }
        let health = if !problems.is_empty() {
            Health::Unhealthy(problems.join("; "))
        } else if applied.is_some() {
            Health::Healthy
        } else {
            Health::Unknown
        };
        Ok(Observed {
            applied,
            staged,
            components: flags
                .into_iter()
                .map(|(name, flag)| Component { name, flag })
                .collect(),
            health: Some(health),
            annotations: carried.0,
            labels: carried.1,
            source,
        })
    }

    /// The applied state rebuilt from `composition.yaml` and `manifest.yaml`.
    fn applied(&self) -> Result<Option<Rendered>, TargetError> {
        let Pointer::State(digest) = self.pointer(CURRENT)? else {
            return Ok(None);
        };
        let dir = self.state(&digest);
        let record = self.read_record(&dir).map_err(TargetError::Invalid)?;
        let path = dir.join(MANIFEST);
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        let mut resources = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc)
                .map_err(|e| TargetError::Invalid(format!("{}: {e}", path.display())))?;
            if value.is_null() {
                continue;
            }
            let object = serde_json::to_value(&value)
                .map_err(|e| TargetError::Invalid(format!("{}: {e}", path.display())))?;
            resources.push(
                Resource::new(object)
                    .map_err(|e| TargetError::Invalid(format!("{}: {e}", path.display())))?,
            );
        }
        let artifacts = record
            .artifacts
            .iter()
            .map(|a| Artifact {
                name: a.name.clone(),
                url: String::new(),
                repo_path: None,
                sha256: a.sha256,
                size: Some(a.size),
            })
            .collect();
        Ok(Some(Rendered::from_parts(
            record.id,
            resources,
            record.annotations,
            record.labels,
            artifacts,
        )))
    }

    /// Applies a copy of the applied state with `change` made: its
    /// artifacts linked from the applied state dir, its record keeping the
    /// commit it came from. Whether anything was written.
    fn write_metadata(&self, change: &MetadataChange) -> Result<bool, TargetError> {
        self.recover()?;
        let Pointer::State(digest) = self.pointer(CURRENT)? else {
            return Ok(false);
        };
        let dir = self.state(&digest);
        let record = self.read_record(&dir).map_err(TargetError::Invalid)?;
        let Some(applied) = self.applied()? else {
            return Ok(false);
        };
        let edited = change
            .applied_to(applied)
            .map_err(|e| TargetError::Invalid(format!("{}: {e}", self.id)))?;
        if edited.digest == digest {
            return Ok(false);
        }
        let artifacts = record
            .artifacts
            .iter()
            .map(|a| (a.name.clone(), dir.join(ARTIFACTS).join(&a.name)))
            .collect();
        let desired = Desired {
            rendered: std::sync::Arc::new(edited),
            source: record.source,
            artifacts,
        };
        self.apply(&desired)
    }

    /// Unlinks `current` first (what is applied disappears at once), then
    /// removes the whole dir, then the symphony dir if that left it empty.
    fn delete(&self) -> Result<(), TargetError> {
        {
            let mut seen = self.seen();
            let before = seen.states.len();
            seen.states.retain(|dir, _| !dir.starts_with(&self.dir));
            seen.records.retain(|dir, _| !dir.starts_with(&self.dir));
            seen.clean_tmp.remove(&self.dir);
            seen.dirty |= seen.states.len() != before;
        }
        let current = self.dir.join(CURRENT);
        if fs::symlink_metadata(&current).is_ok_and(|m| !m.is_dir()) {
            self.step()?;
            gone(fs::remove_file(&current), &current)?;
            sync_dir(&self.dir)?;
        }
        self.step()?;
        gone(fs::remove_dir_all(&self.dir), &self.dir)?;
        if let Some(symphony) = self.dir.parent() {
            self.step()?;
            match fs::remove_dir(symphony) {
                Err(e)
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
                    ) =>
                {
                    return Err(TargetError::io(symphony.display(), e));
                }
                _ => {}
            }
        }
        tracing::info!(composition = %self.id, "deleted");
        Ok(())
    }
}

/// Makes `digest` the newest history entry (once) unless it is already;
/// whether the history changed.
fn catch_up(
    history: &mut Vec<(Digest, String)>,
    digest: Digest,
    line: impl FnOnce() -> String,
) -> bool {
    if history.last().map(|(d, _)| *d) == Some(digest) {
        return false;
    }
    history.retain(|(d, _)| *d != digest);
    history.push((digest, line()));
    true
}

fn check_artifact_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err(format!("artifact name {name:?} is not a file name"));
    }
    Ok(())
}

/// Every `<symphony>/<variation>` with a `.fermata` dir, sorted.
fn list(root: &Path) -> Result<Vec<CompositionId>, TargetError> {
    let mut out = Vec::new();
    for (symphony, sym_path) in subdirs(root)? {
        for (variation, var_path) in subdirs(&sym_path)? {
            if fs::symlink_metadata(var_path.join(META)).is_ok_and(|m| m.is_dir()) {
                out.push(CompositionId::new(symphony.clone(), variation));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The subdirectories of `dir` that can be id parts (UTF-8, not hidden).
fn subdirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, TargetError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TargetError::io(dir.display(), e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let is_dir = entry.file_type().map_err(io_err(dir))?.is_dir();
        if let (true, Ok(name)) = (is_dir, entry.file_name().into_string()) {
            if !name.starts_with('.') {
                out.push((name, entry.path()));
            }
        }
    }
    Ok(out)
}

/// A plan: a resource-level summary (`+` added, `~` changed, `-` removed),
/// annotation, label and artifact changes, then a unified diff of the
/// applied `manifest.yaml` against the desired one.
fn plan_diff(
    id: &CompositionId,
    applied: Option<Digest>,
    record: Option<&Record>,
    applied_manifest: &str,
    desired: &Rendered,
    notes: &[String],
) -> String {
    let mut out = String::new();
    let from = applied.map_or("nothing applied".to_string(), |d| {
        format!("applied {}", d.short())
    });
    let _ = writeln!(out, "{id}: {from} -> desired {}", desired.digest.short());
    for note in notes {
        let _ = writeln!(out, "  note: {note}");
    }
    let old: BTreeMap<&str, &Digest> = record
        .map(|r| {
            r.components
                .iter()
                .map(|c| (c.name.as_str(), &c.sha256))
                .collect()
        })
        .unwrap_or_default();
    let new_components = component_records(desired);
    let new: BTreeMap<&str, &Digest> = new_components
        .iter()
        .map(|c| (c.name.as_str(), &c.sha256))
        .collect();
    let names: BTreeSet<&str> = old.keys().chain(new.keys()).copied().collect();
    for name in names {
        let mark = match (old.get(name), new.get(name)) {
            (None, Some(_)) => '+',
            (Some(_), None) => '-',
            (Some(a), Some(b)) if a != b => '~',
            _ => continue,
        };
        let _ = writeln!(out, "  {mark} {name}");
    }
    let empty = BTreeMap::new();
    let (old_ann, old_lab) = record.map_or((&empty, &empty), |r| (&r.annotations, &r.labels));
    let _ = map_diff(&mut out, "annotations", old_ann, &desired.annotations);
    let _ = map_diff(&mut out, "labels", old_lab, &desired.labels);
    let old_art: BTreeMap<String, String> = record
        .map(|r| {
            r.artifacts
                .iter()
                .map(|a| (a.name.clone(), a.sha256.short()))
                .collect()
        })
        .unwrap_or_default();
    let new_art: BTreeMap<String, String> = desired
        .artifacts
        .iter()
        .map(|a| (a.name.clone(), a.sha256.short()))
        .collect();
    let _ = map_diff(&mut out, "artifacts", &old_art, &new_art);
    let manifest = desired.manifest_yaml();
    let text = similar::TextDiff::from_lines(applied_manifest, manifest.as_str());
    let _ = write!(
        out,
        "{}",
        text.unified_diff()
            .context_radius(3)
            .header("applied/manifest.yaml", "desired/manifest.yaml")
    );
    out
}

/// `  annotations: + k=v, ~ k=v, - k`, or nothing when equal; whether
/// anything differs. Both targets' plans print metadata this way.
pub(super) fn map_diff(
    out: &mut String,
    what: &str,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> bool {
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let changes: Vec<String> = keys
        .into_iter()
        .filter_map(|k| match (old.get(k), new.get(k)) {
            (None, Some(v)) => Some(format!("+ {k}={v}")),
            (Some(_), None) => Some(format!("- {k}")),
            (Some(a), Some(b)) if a != b => Some(format!("~ {k}={b}")),
            _ => None,
        })
        .collect();
    if changes.is_empty() {
        return false;
    }
    let _ = writeln!(out, "  {what}: {}", changes.join(", "));
    true
}

#[cfg(test)]
mod tests;
