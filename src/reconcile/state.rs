//! What fermata remembers between passes and across restarts, in
//! `<state-dir>/state.json`: the render cache, conditions' transition
//! times, which branch deploys what where (claims), and writes that wait
//! for a window (orphan marks, removals from an old target). What is
//! applied is always read back from the targets, and what was reported from
//! the status branch. Operator records live apart ([`super::requests`]),
//! where this file's rewrites cannot lose them; and the state directory has
//! one writer ([`StateLock`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use crate::model::{CompositionId, Digest};
use crate::status::{Override, Ungate};

/// A composition as one branch reconciles it: the key of everything
/// remembered about it. `branch:symphony/variation` on disk and in logs (a
/// branch name cannot hold a `:`), a value everywhere else.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordKey {
    pub branch: String,
    pub id: CompositionId,
}

impl RecordKey {
    pub fn new(branch: &str, id: &CompositionId) -> RecordKey {
        RecordKey {
            branch: branch.to_string(),
            id: id.clone(),
        }
    }
}

/// The entries of `branch` in a map keyed by [`RecordKey`], copied out so
/// the map can change while they are worked on.
pub fn of_branch<T: Clone>(map: &BTreeMap<RecordKey, T>, branch: &str) -> Vec<(RecordKey, T)> {
    map.iter()
        .filter(|(k, _)| k.branch == branch)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl std::fmt::Display for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.branch, self.id)
    }
}

impl std::str::FromStr for RecordKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (branch, id) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not of the form BRANCH:SYMPHONY/VARIATION"))?;
        Ok(RecordKey {
            branch: branch.to_string(),
            id: id.parse()?,
        })
    }
}

impl Serialize for RecordKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RecordKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A removed variation's last status, kept for a while (see
/// [`Persisted::removed`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RemovedStatus {
    /// When the delete was confirmed.
    pub at: chrono::DateTime<chrono::Utc>,
    pub status: crate::status::DeploymentStatus,
}

/// The persisted state of one fermata instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Persisted {
    /// Per `branch:symphony/variation`: the inputs last rendered and what they gave,
    /// so an unchanged composition costs no synthesis, even after a restart.
    #[serde(default)]
    pub renders: BTreeMap<RecordKey, RenderRecord>,
    /// Break-glass applies requested with `fermata apply-now`, by `symphony/variation`.
    #[serde(default)]
    pub overrides: BTreeMap<String, Override>,
    /// The last source revision reconciled, per branch.
    #[serde(default)]
    pub revisions: BTreeMap<String, String>,
    /// Scheduling gates lifted with `fermata ungate`, by `symphony/variation`;
    /// dropped once a commit no longer lists the gate.
    #[serde(default)]
    pub ungated: BTreeMap<String, Vec<Ungate>>,
    /// Per `branch:symphony/variation` and condition type: its status and
    /// since when, so `lastTransitionTime` says when it last changed.
    #[serde(default)]
    pub conditions: BTreeMap<RecordKey, BTreeMap<String, (String, chrono::DateTime<chrono::Utc>)>>,
    /// Per `branch:symphony/variation`, the digest of the applied state
    /// last seen healthy: one unhealthy after that has drifted or degraded
    /// (`installed`, Ready False), not `installing`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub healthy: BTreeMap<RecordKey, String>,
    /// `branch:symphony/variation` of compositions whose symphony was removed,
    /// with that symphony: their status stays `removed (orphaned)`.
    #[serde(default)]
    pub orphaned: BTreeMap<RecordKey, String>,
    /// `branch:symphony/variation` of orphaned compositions whose mark
    /// (`fermata.dev/orphaned-from`) is not written yet: a write to the
    /// applied state like any other, it waits for the composition's window.
    #[serde(default)]
    pub orphan_writes: BTreeMap<RecordKey, PendingWrite>,
    /// Removed variations, deleted from their targets: their last status,
    /// now `removed`, is kept on the status branch until the retention
    /// (`--removed-retention`) after `at` runs out, so a reader (a Margo
    /// WOS) sees the removal rather than a file that vanished.
    #[serde(default)]
    pub removed: BTreeMap<RecordKey, RemovedStatus>,
    /// Which branch deploys each composition on each target
    /// (`<target key>|<symphony/variation>` to branch): the first branch to
    /// claim it; another branch defining the same composition on the same
    /// target fails instead of overwriting it, pass after pass.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// Compositions moved to another target, by `branch:symphony/variation`:
    /// still deployed on the old one until that removal runs, in its window.
    #[serde(default)]
    pub retiring: BTreeMap<RecordKey, Retiring>,
    /// Pull requests planned, commit statuses posted, plan notes written.
    #[serde(default)]
    pub pulls: super::pulls::PullState,
    /// Per branch, the revision whose last pass left nothing to do: after a
    /// restart on it, a cheap check of the targets (`Target::unchanged`)
    /// stands in for the first pass.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settled: BTreeMap<String, String>,
    /// The revision last read for Sites, and the sites it named (none: a
    /// one-site repository): a restart on it need not read the commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sites_read: Option<(String, Vec<String>)>,
    /// Per `branch:symphony/variation`: the desired state `rollback: auto`
    /// switched away from, not applied again until a commit changes the
    /// desired digest (or `apply-now` is granted for it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rolled_back: BTreeMap<RecordKey, RolledBack>,
}

/// A state rolled back: which, when, why (the failure's message).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RolledBack {
    pub digest: Digest,
    pub at: chrono::DateTime<chrono::Utc>,
    pub cause: String,
}

/// A composition's deployment on a target it was moved away from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Retiring {
    /// The old Target's name and definition (it may be gone from the fleet).
    pub target: String,
    pub kind: crate::model::TargetKind,
    /// The old placement's window: the removal waits for it.
    pub window: Option<String>,
}

/// A write to a composition's target that waits for its window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingWrite {
    /// The Target (by name) that holds the composition.
    pub target: Option<String>,
    /// Its definition when last rendered (the Target may be gone since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<crate::model::TargetKind>,
    /// The window the write waits for; none: at once.
    pub window: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RenderRecord {
    /// SHA-256 of everything the desired state depends on: what synthesis
    /// reads, and what the composition carries once written.
    pub input_key: String,
    /// SHA-256 of what synthesis reads alone: unchanged, the composition
    /// need not be read from its target again until a resync.
    #[serde(default)]
    pub base_key: String,
    pub digest: Digest,
    /// Component names of the rendered state, for status.
    pub components: Vec<String>,
    /// The Target it was rendered for: where to look when its symphony later fails to load.
    #[serde(default)]
    pub target: Option<String>,
    /// The commit whose change produced this desired state: what its status
    /// names as source, so a commit rewrites only the statuses it changed.
    #[serde(default)]
    pub commit: Option<String>,
    /// Its window: a removal waits for it too.
    #[serde(default)]
    pub window: Option<String>,
    /// What it depends on (`symphony/variation`): while it is still applied,
    /// even with its symphony failing to load, those are not deleted.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Components left alone by `reconcile-when` in this state.
    #[serde(default)]
    pub skipped: Vec<String>,
    /// Its place among the variations: `OrderedReady` deletes in reverse.
    #[serde(default)]
    pub position: usize,
    /// Its Target's definition when rendered: a retarget removes it there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_kind: Option<crate::model::TargetKind>,
    /// The file that defined it: if that file later cannot be read, its
    /// status points there (and it keeps its applied state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

impl Persisted {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("state.json")
    }

    /// Loads the state; a missing file is a fresh start, an unreadable one is
    /// set aside (it is only a cache) rather than stopping the reconciler.
    pub fn load(state_dir: &Path) -> Persisted {
        Self::load_saved(state_dir).0
    }

    /// [`load`](Self::load), and the digest of the bytes read: what a save
    /// of the same state would compare against, without serializing it
    /// again at start (a restart of 10,000 compositions spent as long on
    /// that as on the load). Bytes that parse but would serialize
    /// differently cost one write, no more.
    pub fn load_saved(state_dir: &Path) -> (Persisted, Option<Digest>) {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(p) => (p, Some(Digest::of(&bytes))),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "state file unreadable; starting afresh");
                    let _ = std::fs::rename(&path, path.with_extension("json.bad"));
                    (Persisted::default(), None)
                }
            },
            Err(_) => (Persisted::default(), None),
        }
    }

    /// The file's content, and its digest: what decides whether to write.
    pub fn serialized(&self) -> std::io::Result<(Vec<u8>, Digest)> {
        // Compact: a cache read by fermata (10,000 compositions were 13 MB
        // pretty, half of it spaces, parsed at every start).
        let bytes = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        let digest = Digest::of(&bytes);
        Ok((bytes, digest))
    }

    /// Writes `bytes` (from [`serialized`](Self::serialized)) atomically:
    /// temp file, fsync, rename, so a kill -9 leaves the old or the new file.
    pub fn save(state_dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
        Self::save_with(state_dir, bytes, |f, b| {
            use std::io::Write;
            f.write_all(b)?;
            f.sync_all()
        })
    }

    /// [`save`](Self::save) with the write itself given: a failed write (a
    /// full disk) leaves no temp file behind, only the old state.
    fn save_with(
        state_dir: &Path,
        bytes: &[u8],
        write: impl FnOnce(&mut std::fs::File, &[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        std::fs::create_dir_all(state_dir)?;
        replace_file(&Self::path(state_dir), |f| write(f, bytes))
    }
}

/// Replaces the JSON file at `path` by one rename of a temp file that
/// `write` filled; a failed write leaves no temp file behind, only the old
/// file.
fn replace_file(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("json.tmp-{}", std::process::id()));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| write(&mut f))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_no_temp_file_and_the_old_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Persisted::default();
        p.revisions.insert("main".into(), "abc".into());
        Persisted::save(dir.path(), &p.serialized().unwrap().0).unwrap();
        let full = |_: &mut std::fs::File, _: &[u8]| {
            Err(std::io::Error::from_raw_os_error(28)) // ENOSPC
        };
        let err = Persisted::save_with(dir.path(), b"{}", full).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28));
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["state.json"], "no state.json.tmp-<pid> left");
        assert_eq!(Persisted::load(dir.path()), p, "the old state stays");
    }

    #[test]
    fn record_keys_keep_their_text_form_on_disk() {
        let k: RecordKey = "main:shop/app".parse().unwrap();
        assert_eq!(
            k,
            RecordKey::new("main", &CompositionId::new("shop", "app"))
        );
        assert_eq!(serde_json::to_string(&k).unwrap(), "\"main:shop/app\"");
        let mut p = Persisted::default();
        p.orphaned.insert(k.clone(), "shop".into());
        let text = String::from_utf8(p.serialized().unwrap().0).unwrap();
        assert!(text.contains("\"main:shop/app\":\"shop\""), "{text}");
        assert!("main".parse::<RecordKey>().is_err());
        assert!("main:shop".parse::<RecordKey>().is_err());
    }

    #[test]
    fn round_trips_and_survives_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Persisted::load(dir.path()), Persisted::default());
        let mut p = Persisted::default();
        p.revisions.insert("main".into(), "abc".into());
        Persisted::save(dir.path(), &p.serialized().unwrap().0).unwrap();
        assert_eq!(Persisted::load(dir.path()), p);
        std::fs::write(Persisted::path(dir.path()), b"{not json").unwrap();
        assert_eq!(Persisted::load(dir.path()), Persisted::default());
        assert!(dir.path().join("state.json.bad").exists());
    }
}

/// The one writer of a state directory (`fermata run`): two reconcilers on
/// one state directory would stage into the same trees and overwrite each
/// other's cache. An `flock` on `<state-dir>/fermata.lock`, which the kernel
/// drops when the process dies (a kill -9 leaves no stale lock); the file
/// holds the holder's pid, for the message of whoever finds it taken.
#[derive(Debug)]
pub struct StateLock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("state directory {} is in use by another fermata run ({}): one reconciler per state directory; stop it, or give this one its own --state-dir", dir.display(), pid.map(|p| format!("pid {p}")).unwrap_or_else(|| "pid unknown".into()))]
    Held { dir: PathBuf, pid: Option<u32> },
    #[error("cannot lock state directory {}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StateLock {
    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("fermata.lock")
    }

    /// Takes the lock at once, or says who holds it.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, LockError> {
        use nix::fcntl::{Flock, FlockArg};
        use std::io::{Seek, Write};
        let io = |source| LockError::Io {
            dir: state_dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(io)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(Self::path(state_dir))
            .map_err(io)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                lock.set_len(0).map_err(io)?;
                lock.rewind().map_err(io)?;
                write!(lock, "{}", std::process::id()).map_err(io)?;
                Ok(StateLock { _lock: lock })
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(LockError::Held {
                dir: state_dir.to_path_buf(),
                pid: Self::holder(state_dir),
            }),
            Err((_, e)) => Err(io(std::io::Error::from(e))),
        }
    }

    /// The pid the lock file names (the holder, while one holds it).
    pub fn holder(state_dir: &Path) -> Option<u32> {
        std::fs::read_to_string(Self::path(state_dir))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

#[cfg(test)]
mod lock_tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let held = StateLock::acquire(dir.path()).unwrap();
        match StateLock::acquire(dir.path()) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("second lock: {other:?}"),
        }
        drop(held);
        StateLock::acquire(dir.path()).expect("free again");
    }
}

/// What `state.json` gave at start: the state and the digest of its bytes.
type Loaded = (Persisted, Option<Digest>);

/// `state.json` as a fresh process loads it: parsed on a thread of its own
/// (10,000 compositions are 6.5 MB of JSON, most of a restart's time),
/// while the caller fetches. Every use derefs to the [`Persisted`], and the
/// first one waits for the load: nothing ever sees a half-loaded or empty
/// state in place of the real one (taking "untracked" compositions from an
/// empty state would delete them).
pub struct StateLoad {
    state: LoadState,
}

enum LoadState {
    /// Filled once by the loader thread (`None`: it panicked).
    Pending(Arc<OnceLock<Option<Loaded>>>),
    Ready(Box<Persisted>, Option<Digest>),
}

/// A reader of the state being loaded, for a task that needs it only to
/// read: it waits for the same load, and never holds up a writer for long.
#[derive(Clone)]
pub struct StateView(Arc<OnceLock<Option<Loaded>>>);

impl StateView {
    /// Waits for the load (blocking: call it off the runtime).
    pub fn wait(&self) -> &Persisted {
        &loaded(&self.0).0
    }
}

fn loaded(slot: &OnceLock<Option<Loaded>>) -> &Loaded {
    match slot.wait() {
        Some(l) => l,
        // As a joined thread's panic would: never an empty state instead.
        None => panic!("the thread loading state.json panicked"),
    }
}

impl StateLoad {
    /// Starts loading `<state_dir>/state.json` (as
    /// [`Persisted::load_saved`]: an unreadable file is set aside) on a
    /// thread of its own.
    pub fn start(state_dir: &Path) -> StateLoad {
        let slot = Arc::new(OnceLock::new());
        let (dir, fill) = (state_dir.to_path_buf(), slot.clone());
        let spawned = std::thread::Builder::new()
            .name("fermata-state-load".into())
            .spawn(move || {
                let load = std::panic::AssertUnwindSafe(|| Persisted::load_saved(&dir));
                let _ = fill.set(std::panic::catch_unwind(load).ok());
            });
        match spawned {
            Ok(_) => StateLoad {
                state: LoadState::Pending(slot),
            },
            Err(e) => {
                tracing::debug!(error = %e, "no thread for loading the state: loading it here");
                let (p, saved) = Persisted::load_saved(state_dir);
                StateLoad::ready(p, saved)
            }
        }
    }

    /// A state already in hand, with the digest of what is on disk.
    pub fn ready(p: Persisted, saved: Option<Digest>) -> StateLoad {
        StateLoad {
            state: LoadState::Ready(Box::new(p), saved),
        }
    }

    /// Whether the load is done (without waiting for it).
    pub fn is_ready(&self) -> bool {
        match &self.state {
            LoadState::Pending(slot) => slot.get().is_some(),
            LoadState::Ready(..) => true,
        }
    }

    /// A reader of the state for another task, while it still loads
    /// (`None`: loaded, read it here).
    pub fn view(&self) -> Option<StateView> {
        match &self.state {
            LoadState::Pending(slot) => Some(StateView(slot.clone())),
            LoadState::Ready(..) => None,
        }
    }

    /// The digest of what `state.json` holds (waits for the load).
    pub fn saved(&self) -> Option<Digest> {
        match &self.state {
            LoadState::Pending(slot) => loaded(slot).1,
            LoadState::Ready(_, saved) => *saved,
        }
    }

    /// `state.json` now holds what digests to `saved`.
    pub fn set_saved(&mut self, saved: Digest) {
        if let LoadState::Ready(_, d) = self.own() {
            *d = Some(saved);
        }
    }

    /// The state owned here: waits for the load, and takes it from the
    /// loader (a copy only while a reader still holds it).
    fn own(&mut self) -> &mut LoadState {
        if let LoadState::Pending(slot) = &self.state {
            // Waits, and panics here (before anything is replaced) if the
            // loader did.
            loaded(slot);
            let placeholder = LoadState::Ready(Box::default(), None);
            let LoadState::Pending(slot) = std::mem::replace(&mut self.state, placeholder) else {
                unreachable!("matched above")
            };
            let (p, saved) = match Arc::try_unwrap(slot) {
                Ok(cell) => cell.into_inner().flatten().expect("loaded above"),
                Err(shared) => loaded(&shared).clone(),
            };
            self.state = LoadState::Ready(Box::new(p), saved);
        }
        &mut self.state
    }
}

impl std::ops::Deref for StateLoad {
    type Target = Persisted;

    fn deref(&self) -> &Persisted {
        match &self.state {
            LoadState::Pending(slot) => &loaded(slot).0,
            LoadState::Ready(p, _) => p,
        }
    }
}

impl std::ops::DerefMut for StateLoad {
    fn deref_mut(&mut self) -> &mut Persisted {
        match self.own() {
            LoadState::Ready(p, _) => p,
            LoadState::Pending(_) => unreachable!("own() leaves the state ready"),
        }
    }
}

/// Which file a path named when it was looked at: a rename puts another
/// file (another inode) there, and a rewrite in place moves its size or
/// times. As git's index trusts a file by its `stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileId {
    pub fn of(path: &Path) -> std::io::Result<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path)?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Ok(FileId {
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }
}

/// The little a restart's first pass needs of `state.json`, in
/// `<state-dir>/state-head.json`: which branches were settled at which
/// revision, with nothing waiting to be written. Read at start in place
/// of the whole state (still loading, [`StateLoad`]), and trusted only
/// while `state.json` is the file it was written for: it is written after
/// `state.json`'s rename, so a crash between the two leaves a head naming
/// the old file, which is then ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// `state.json` as this head describes it.
    pub state: FileId,
    /// [`Persisted::settled`].
    pub settled: BTreeMap<String, String>,
    /// Branches with writes waiting for a window (orphan marks, removals
    /// from an old target): never settled by a glance.
    pub pending: std::collections::BTreeSet<String>,
    /// `state.json` still holds operator records of an older fermata
    /// (ungates, overrides), to be moved out.
    pub requests: bool,
    /// [`Persisted::sites_read`].
    #[serde(default)]
    pub sites_read: Option<(String, Vec<String>)>,
}

impl Head {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("state-head.json")
    }

    /// The head of `p`, which `state.json` holds as `state` says.
    pub fn of(p: &Persisted, state: FileId) -> Head {
        let pending = p.orphan_writes.keys().chain(p.retiring.keys());
        Head {
            state,
            settled: p.settled.clone(),
            pending: pending.map(|k| k.branch.clone()).collect(),
            requests: !p.ungated.is_empty() || !p.overrides.is_empty(),
            sites_read: p.sites_read.clone(),
        }
    }

    /// Writes the head of `p`, just saved as `state.json`: temp file and
    /// rename (a torn head would only be ignored, but need not be).
    pub fn save(state_dir: &Path, p: &Persisted) -> std::io::Result<()> {
        let head = Head::of(p, FileId::of(&Persisted::path(state_dir))?);
        let bytes = serde_json::to_vec(&head).map_err(std::io::Error::other)?;
        // Not synced: a head lost in a crash only makes a start wait.
        replace_file(&Self::path(state_dir), |f| {
            std::io::Write::write_all(f, &bytes)
        })
    }

    /// The head, if there is one, it reads, and `state.json` is still the
    /// file it was written for; `None` otherwise (then the whole state is
    /// waited for).
    pub fn load(state_dir: &Path) -> Option<Head> {
        let bytes = std::fs::read(Self::path(state_dir)).ok()?;
        let head: Head = match serde_json::from_slice(&bytes) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(error = %e, "state head unreadable: ignored");
                return None;
            }
        };
        let now = FileId::of(&Persisted::path(state_dir)).ok()?;
        if now != head.state {
            tracing::debug!(?now, was = ?head.state, "state head names another state.json: ignored");
            return None;
        }
        Some(head)
    }
}

impl Persisted {
    /// Saves `bytes` (the [`serialized`](Self::serialized) `self`) as
    /// `state.json`, then its [`Head`]. A head that cannot be written is
    /// only a slower next start.
    pub fn save_all(&self, state_dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
        Self::save(state_dir, bytes)?;
        if let Err(e) = Head::save(state_dir, self) {
            tracing::warn!(error = %e, "cannot write the state head: the next start waits for the whole state");
        }
        Ok(())
    }
}

#[cfg(test)]
mod head_tests {
    use super::*;

    fn settled_state() -> Persisted {
        let mut p = Persisted::default();
        p.settled.insert("main".into(), "abc".into());
        p.settled.insert("dev".into(), "def".into());
        let key: RecordKey = "dev:shop/app".parse().unwrap();
        p.orphan_writes.insert(
            key,
            PendingWrite {
                target: None,
                kind: None,
                window: None,
            },
        );
        p
    }

    fn save(dir: &Path, p: &Persisted) {
        p.save_all(dir, &p.serialized().unwrap().0).unwrap();
    }

    #[test]
    fn a_head_says_what_was_settled_and_what_waits() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Head::load(dir.path()), None, "no head yet");
        let p = settled_state();
        save(dir.path(), &p);
        let head = Head::load(dir.path()).expect("a fresh head is trusted");
        assert_eq!(head.settled, p.settled);
        assert_eq!(head.pending, ["dev".to_string()].into());
        assert!(!head.requests);
    }

    #[test]
    fn a_head_of_another_state_json_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &settled_state());
        // Rewritten in place, same size: the times (or inode) moved.
        let path = Persisted::path(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.reverse();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, &bytes).unwrap();
        // Its time moved (set explicitly: a clock tick may be coarser than
        // this test).
        let earlier = mtime - std::time::Duration::from_secs(1);
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(earlier).unwrap();
        assert_eq!(Head::load(dir.path()), None, "stale head trusted");
        // Gone: nothing to trust either.
        save(dir.path(), &settled_state());
        std::fs::remove_file(&path).unwrap();
        assert_eq!(Head::load(dir.path()), None);
    }

    #[test]
    fn a_crash_between_the_two_renames_leaves_a_head_that_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let before = settled_state();
        save(dir.path(), &before);
        // The next save renamed state.json, and died before the head.
        let mut after = before.clone();
        after.settled.insert("main".into(), "new".into());
        Persisted::save(dir.path(), &after.serialized().unwrap().0).unwrap();
        assert_eq!(
            Head::load(dir.path()),
            None,
            "the head of the old state.json"
        );
        assert_eq!(Persisted::load(dir.path()), after);
        save(dir.path(), &after);
        assert_eq!(Head::load(dir.path()).unwrap().settled, after.settled);
    }

    #[test]
    fn a_torn_or_garbage_head_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &settled_state());
        let path = Head::path(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert_eq!(Head::load(dir.path()), None, "torn");
        std::fs::write(&path, b"\0\xffnot json").unwrap();
        assert_eq!(Head::load(dir.path()), None, "garbage");
        std::fs::write(&path, b"{\"settled\":{}}").unwrap();
        assert_eq!(Head::load(dir.path()), None, "fields missing");
    }

    #[test]
    fn a_state_loaded_in_the_background_is_the_state_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let p = settled_state();
        save(dir.path(), &p);
        let mut load = StateLoad::start(dir.path());
        let view = load.view();
        assert_eq!(*load, p);
        let digest = p.serialized().unwrap().1;
        assert_eq!(load.saved(), Some(digest));
        assert_eq!(view.as_ref().map(|v| v.wait()), Some(&p));
        // Written while a reader holds it: the writer has its own copy.
        load.settled.clear();
        assert_eq!(view.unwrap().wait(), &p);
        assert!(load.settled.is_empty());
    }

    #[test]
    fn a_state_that_fails_to_parse_loads_as_today() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(Persisted::path(dir.path()), b"{not json").unwrap();
        let load = StateLoad::start(dir.path());
        assert_eq!(*load, Persisted::default(), "afresh");
        assert_eq!(load.saved(), None, "written at the next save");
        assert!(dir.path().join("state.json.bad").exists(), "set aside");
        assert!(!Persisted::path(dir.path()).exists());
        let fresh = StateLoad::start(tempfile::tempdir().unwrap().path());
        assert_eq!(*fresh, Persisted::default(), "none: a fresh start");
    }
}
