//! [`Source`] over git2: a local repository read in place, or a remote one
//! mirrored (bare) under the state directory.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use git2::{Cred, CredentialType, FetchOptions, ObjectType, Oid, RemoteCallbacks, Repository};

use super::{
    Entry, Revision, SignaturePolicy, Signer, Snapshot, Source, SourceError, UntrustedCommit,
    MAX_FILE_SIZE,
};

/// A git repository fermata reads from.
#[derive(Debug, Clone)]
pub struct GitSource {
    url: String,
    /// The repository read from: the user's own, or our bare mirror.
    git_dir: PathBuf,
    /// Set when `git_dir` is a mirror that [`Source::fetch`] updates from `url`.
    mirrored: bool,
}

/// Whether `repo` names a remote to mirror rather than a path to read in place.
pub(crate) fn is_url(repo: &str) -> bool {
    repo.contains("://") || (repo.contains('@') && repo.contains(':') && !Path::new(repo).exists())
}

impl GitSource {
    /// Opens a local repository (working tree or bare) in place, or mirrors a
    /// URL (file://, https://, ssh://, git://, scp-like `user@host:path`) into
    /// `state_dir/mirrors/`, fetching it once.
    pub fn open(repo: &str, state_dir: &Path) -> Result<GitSource, SourceError> {
        if !is_url(repo) {
            let r = Repository::open(repo).map_err(|source| SourceError::Open {
                url: repo.to_string(),
                source,
            })?;
            let git_dir = r.path().to_path_buf();
            return Ok(GitSource {
                url: repo.to_string(),
                git_dir,
                mirrored: false,
            });
        }
        let dir = state_dir.join("mirrors").join(format!(
            "{}.git",
            // The first 16 hex digits of the URL's SHA-256 (as model::Digest
            // would print it; source sits below model).
            &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(repo.as_bytes()))[..16]
        ));
        if !dir.join("HEAD").exists() {
            std::fs::create_dir_all(&dir).map_err(|source| SourceError::Mirror {
                url: repo.to_string(),
                path: dir.display().to_string(),
                source,
            })?;
            Repository::init_bare(&dir).map_err(|source| SourceError::Open {
                url: repo.to_string(),
                source,
            })?;
        }
        let src = GitSource {
            url: repo.to_string(),
            git_dir: dir,
            mirrored: true,
        };
        // Until a first fetch has brought any ref, the mirror is new: a
        // fetch that failed last time is retried and the remote's default
        // branch adopted then, not never.
        if local_refs(&src.repo()?).is_empty() {
            src.fetch()?;
            src.adopt_remote_head()?;
        }
        Ok(src)
    }

    /// The git directory read from (the user's own, or our mirror).
    pub fn git_dir(&self) -> &Path {
        &self.git_dir
    }

    /// The URL the mirror fetches from; `None` for a repository read in place.
    pub fn remote(&self) -> Option<&str> {
        self.mirrored.then_some(self.url.as_str())
    }

    /// The branch `HEAD` names (the remote's default branch for a mirror):
    /// what `run` watches when no `--branch` is given.
    pub fn default_branch(&self) -> Option<String> {
        let repo = self.repo().ok()?;
        let head = repo.find_reference("HEAD").ok()?;
        let target = head.symbolic_target().ok()??.to_string();
        target.strip_prefix("refs/heads/").map(str::to_string)
    }

    /// Whether `new` contains `old` (a fast-forward); `false` means history
    /// was rewritten, e.g. by a force-push.
    pub fn is_descendant(&self, new: Revision, old: Revision) -> bool {
        new == old
            || self
                .repo()
                .ok()
                .and_then(|r| r.graph_descendant_of(new.0, old.0).ok())
                .unwrap_or(false)
    }

    /// Makes commit `sha` available, fetching `refname` of the remote (a pull
    /// request's `refs/pull/N/head`) into `refs/fermata/...` of the mirror
    /// when it is not here yet. Never touches the mirrored branches.
    pub fn fetch_ref(&self, refname: &str, sha: &str) -> Result<Revision, SourceError> {
        let repo = self.repo()?;
        let have = |repo: &Repository| {
            Oid::from_str(sha)
                .ok()
                .filter(|id| repo.find_commit(*id).is_ok())
        };
        if let Some(id) = have(&repo) {
            return Ok(Revision(id));
        }
        if self.mirrored {
            let fetch_err = self.fetch_err(std::time::Instant::now());
            let local = format!(
                "refs/fermata/{}",
                refname.strip_prefix("refs/").unwrap_or(refname)
            );
            let mut remote = repo.remote_anonymous(&self.url).map_err(fetch_err)?;
            let _writing = self.lock_mirror()?;
            let mut opts = FetchOptions::new();
            opts.remote_callbacks(callbacks())
                .download_tags(git2::AutotagOption::None);
            remote
                .fetch(&[format!("+{refname}:{local}")], Some(&mut opts), None)
                .map_err(fetch_err)?;
        }
        have(&repo)
            .map(Revision)
            .ok_or_else(|| SourceError::Resolve {
                url: self.url.clone(),
                rev: format!("{sha} ({refname})"),
                source: git2::Error::from_str("commit not found after fetching the ref"),
            })
    }

    /// Every branch and its head commit.
    pub fn branches(&self) -> Result<Vec<(String, Revision)>, SourceError> {
        let repo = self.repo()?;
        Ok(local_refs(&repo)
            .into_iter()
            .filter_map(|(name, id)| {
                Some((name.strip_prefix("refs/heads/")?.to_string(), Revision(id)))
            })
            .collect())
    }

    /// The mirror's [`writer_lock`], clearing every ref lock a killed
    /// fermata left: only fermata writes a mirror's refs.
    fn lock_mirror(&self) -> Result<Flock<std::fs::File>, SourceError> {
        writer_lock(&self.git_dir, || ref_locks(&self.git_dir)).map_err(|source| {
            SourceError::Lock {
                url: self.url.clone(),
                path: self.git_dir.display().to_string(),
                source,
            }
        })
    }

    /// A git error while talking to the remote (in a call that started at
    /// `started`), as a [`SourceError`].
    fn fetch_err(
        &self,
        started: std::time::Instant,
    ) -> impl Fn(git2::Error) -> SourceError + Copy + '_ {
        move |source| SourceError::Fetch {
            url: self.url.clone(),
            source: remote_error(source, started),
        }
    }

    fn repo(&self) -> Result<Repository, SourceError> {
        Repository::open_bare(&self.git_dir)
            .or_else(|_| Repository::open(&self.git_dir))
            .map_err(|source| SourceError::Open {
                url: self.url.clone(),
                source,
            })
    }

    /// Points the mirror's HEAD at the remote's default branch, so `HEAD`
    /// means the same in the mirror as in a clone.
    fn adopt_remote_head(&self) -> Result<(), SourceError> {
        let repo = self.repo()?;
        let fetch_err = self.fetch_err(std::time::Instant::now());
        let mut remote = repo.remote_anonymous(&self.url).map_err(fetch_err)?;
        let conn = remote
            .connect_auth(git2::Direction::Fetch, Some(callbacks()), None)
            .map_err(fetch_err)?;
        let head = conn
            .default_branch()
            .ok()
            .and_then(|b| b.as_str().ok().map(str::to_string));
        drop(conn);
        if let Some(head) = head {
            if repo.find_reference(&head).is_ok() {
                repo.set_head(&head).map_err(fetch_err)?;
            }
        }
        Ok(())
    }
}

/// How long a remote may take to accept a connection, and to say anything
/// once connected, before a fetch or push fails: every transport (http,
/// https, git, ssh) of every remote call (the source's fetches, status and
/// note pushes, plan-note pushes). Without them a server that accepts and
/// then says nothing hangs the call, and with it the reconciler, forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GitTimeouts {
    /// TCP connect (`--git-connect-timeout`).
    pub connect: Duration,
    /// Any one read or write on the connection, TLS and SSH handshakes
    /// included (`--git-timeout`): a stall, not a slow transfer.
    pub read: Duration,
}

impl GitTimeouts {
    pub const DEFAULT: GitTimeouts = GitTimeouts {
        connect: Duration::from_secs(10),
        read: Duration::from_secs(30),
    };
}

impl Default for GitTimeouts {
    fn default() -> GitTimeouts {
        GitTimeouts::DEFAULT
    }
}

/// The timeouts in force, in milliseconds (connect, read), for messages.
static CONNECT_MS: AtomicU64 = AtomicU64::new(0);
static READ_MS: AtomicU64 = AtomicU64::new(0);

/// Sets libgit2's process-wide server timeouts. Call before any remote
/// operation starts (libgit2 reads them when it opens a connection; ssh
/// hands the read timeout to libssh2 for its blocking calls).
pub fn set_timeouts(t: GitTimeouts) -> Result<(), git2::Error> {
    let ms = |d: Duration| -> Result<std::ffi::c_int, git2::Error> {
        std::ffi::c_int::try_from(d.as_millis().max(1))
            .map_err(|_| git2::Error::from_str("git timeout too long"))
    };
    let (connect, read) = (ms(t.connect)?, ms(t.read)?);
    // SAFETY: libgit2 is initialised by git2 on first use (these functions
    // do it), and the options are plain ints read when a stream is created;
    // fermata sets them at start, before any remote call runs.
    unsafe {
        git2::opts::set_server_connect_timeout_in_milliseconds(connect)?;
        git2::opts::set_server_timeout_in_milliseconds(read)?;
    }
    CONNECT_MS.store(connect as u64, Ordering::Relaxed);
    READ_MS.store(read as u64, Ordering::Relaxed);
    Ok(())
}

/// A remote call's git error, with the timeout named when it is what ended
/// the call: libgit2 says "timed out" but not which setting, and through
/// OpenSSL a read that timed out is only "Resource temporarily unavailable".
pub(crate) fn remote_error(e: git2::Error, started: std::time::Instant) -> git2::Error {
    let (connect, read) = (
        CONNECT_MS.load(Ordering::Relaxed),
        READ_MS.load(Ordering::Relaxed),
    );
    if read == 0 {
        return e;
    }
    let msg = e.message();
    let lower = msg.to_ascii_lowercase();
    let said = e.code() == git2::ErrorCode::Timeout || lower.contains("timed out");
    let tls_stall = lower.contains("temporarily unavailable")
        && started.elapsed() >= Duration::from_millis(read.min(connect));
    if !said && !tls_stall {
        return e;
    }
    let human = |ms: u64| humantime::format_duration(Duration::from_millis(ms)).to_string();
    let which = if lower.contains("connect") {
        format!(
            "no connection within --git-connect-timeout {}",
            human(connect)
        )
    } else {
        format!("the server said nothing for --git-timeout {}", human(read))
    };
    git2::Error::new(e.code(), e.class(), format!("{msg} ({which})"))
}

/// The file of a git directory that [`writer_lock`] locks.
const WRITER_LOCK: &str = "fermata-writer.flock";

/// Taken by fermata before it writes refs of a git directory, held until the
/// write is done. The kernel releases it when the process dies, so while it
/// is held, a `.lock` file among `stale()` (refs only fermata writes) was
/// left by a fermata killed between git's lock and rename (a kill -9), and
/// is removed: without that, git refuses those refs forever and a restart
/// could never converge (invariant 7). Fermata processes sharing a
/// repository (sites) take turns through it.
pub(crate) fn writer_lock(
    git_dir: &Path,
    stale: impl FnOnce() -> Vec<PathBuf>,
) -> std::io::Result<Flock<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(git_dir.join(WRITER_LOCK))?;
    let lock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| std::io::Error::from(errno))?;
    for path in stale() {
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::warn!(path = %path.display(), "removed a ref lock left by an interrupted fermata")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(lock)
}

/// Every `*.lock` file of a mirror's refs (and `packed-refs.lock`): a
/// mirror's refs are written by fermata alone.
fn ref_locks(git_dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, out);
            } else if path.extension().is_some_and(|x| x == "lock") {
                out.push(path);
            }
        }
    }
    let mut out = vec![git_dir.join("packed-refs.lock"), git_dir.join("HEAD.lock")];
    walk(&git_dir.join("refs"), &mut out);
    out
}

/// The refs a mirror keeps: branches and tags, not peeled `^{}` entries.
fn mirrored_ref(name: &str) -> bool {
    (name.starts_with("refs/heads/") || name.starts_with("refs/tags/")) && !name.ends_with("^{}")
}

fn local_refs(repo: &Repository) -> BTreeMap<String, Oid> {
    let Ok(refs) = repo.references() else {
        return BTreeMap::new();
    };
    refs.flatten()
        .filter_map(|r| Some((r.name().ok()?.to_string(), r.target()?)))
        .filter(|(n, _)| mirrored_ref(n))
        .collect()
}

/// Credentials from the environment: an ssh agent or `FERMATA_SSH_KEY` for
/// ssh, `FERMATA_GIT_TOKEN` for https. Each kind is tried once, so a wrong
/// credential fails instead of looping inside libgit2. Shared with the status
/// branch's push and fetch.
pub(crate) fn callbacks() -> RemoteCallbacks<'static> {
    let mut cb = RemoteCallbacks::new();
    let tries = Cell::new(0u8);
    cb.credentials(move |_url, user, allowed| {
        tries.set(tries.get() + 1);
        if tries.get() > 3 {
            return Err(git2::Error::from_str("authentication failed"));
        }
        let user = user.unwrap_or("git");
        if allowed.contains(CredentialType::SSH_KEY) {
            if let Ok(key) = std::env::var("FERMATA_SSH_KEY") {
                return Cred::ssh_key(user, None, Path::new(&key), None);
            }
            return Cred::ssh_key_from_agent(user);
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            if let Ok(token) = std::env::var("FERMATA_GIT_TOKEN") {
                return Cred::userpass_plaintext(user, token.trim());
            }
        }
        Cred::default()
    });
    cb
}

impl GitSource {
    /// Updates the mirror from the remote (a local repository: nothing).
    /// Blocking: [`Source::fetch`] runs it off the async runtime.
    pub fn fetch(&self) -> Result<(), SourceError> {
        if !self.mirrored {
            return Ok(());
        }
        let repo = self.repo()?;
        let fetch_err = self.fetch_err(std::time::Instant::now());
        let mut remote = repo.remote_anonymous(&self.url).map_err(fetch_err)?;
        // Most polls find nothing new: compare the advertised refs with ours
        // first and stop there, as `git fetch` does, without a negotiation.
        {
            let conn = remote
                .connect_auth(git2::Direction::Fetch, Some(callbacks()), None)
                .map_err(fetch_err)?;
            let theirs: BTreeMap<String, Oid> = conn
                .list()
                .map_err(fetch_err)?
                .iter()
                .filter(|h| mirrored_ref(h.name()))
                .map(|h| (h.name().to_string(), h.oid()))
                .collect();
            if theirs == local_refs(&repo) {
                return Ok(());
            }
        }
        let _writing = self.lock_mirror()?;
        let mut opts = FetchOptions::new();
        opts.remote_callbacks(callbacks())
            .prune(git2::FetchPrune::On)
            .download_tags(git2::AutotagOption::All);
        remote
            .fetch(
                &["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
                Some(&mut opts),
                None,
            )
            .map_err(fetch_err)
    }

    /// Blocking; see [`Source::resolve`].
    pub fn resolve(&self, rev: &str) -> Result<Revision, SourceError> {
        let repo = self.repo()?;
        let err = |source| SourceError::Resolve {
            url: self.url.clone(),
            rev: rev.to_string(),
            source,
        };
        let obj = repo.revparse_single(rev).map_err(err)?;
        let commit = obj.peel_to_commit().map_err(err)?;
        Ok(Revision(commit.id()))
    }

    /// Blocking; see [`Source::snapshot`].
    pub fn snapshot(&self, rev: Revision) -> Result<Snapshot, SourceError> {
        let repo = self.repo()?;
        let err = |source| SourceError::Read {
            url: self.url.clone(),
            rev,
            source,
        };
        let tree = repo
            .find_commit(rev.0)
            .and_then(|c| c.tree())
            .map_err(err)?;
        read_tree(&repo, &tree, rev).map_err(err)
    }

    /// The files of the working tree as `git add --all` would commit them
    /// (ignored files left out, deleted ones gone), for `validate` as a
    /// pre-commit check; `None` for a bare repository or a mirror. Blobs
    /// are written to the object database, as `git stash create` does; the
    /// index file is never written, so what the user staged stays staged.
    /// The snapshot's revision is HEAD's commit (zero on an unborn branch).
    pub fn worktree_snapshot(&self) -> Result<Option<Snapshot>, SourceError> {
        if self.mirrored {
            return Ok(None);
        }
        let err = |source| SourceError::WorkTree {
            path: self.url.clone(),
            source,
        };
        let repo = Repository::open(&self.url).map_err(err)?;
        if repo.is_bare() {
            return Ok(None);
        }
        let head = repo
            .head()
            .ok()
            .and_then(|h| h.peel_to_commit().ok())
            .map(|c| Revision(c.id()))
            .unwrap_or(Revision(Oid::ZERO_SHA1));
        let mut index = repo.index().map_err(err)?;
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .map_err(err)?;
        index.update_all(["*"], None).map_err(err)?;
        let tree = index
            .write_tree()
            .and_then(|id| repo.find_tree(id))
            .map_err(err)?;
        read_tree(&repo, &tree, head).map(Some).map_err(err)
    }

    /// Blocking; see [`Source::verify`].
    pub fn verify(
        &self,
        rev: Revision,
        policy: &SignaturePolicy,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Signer, UntrustedCommit> {
        if matches!(policy, SignaturePolicy::None) {
            return Ok(Signer::Unchecked);
        }
        let repo = self.repo().map_err(|e| UntrustedCommit::Unreadable {
            commit: rev.0,
            reason: crate::errors::chain(&e),
        })?;
        policy.verify(&repo, rev.0, now)
    }
}

/// Every file of `tree`, read into memory (symlinks as their targets, files
/// over [`MAX_FILE_SIZE`] only by size).
fn read_tree(
    repo: &Repository,
    tree: &git2::Tree<'_>,
    rev: Revision,
) -> Result<Snapshot, git2::Error> {
    let mut blobs: Vec<(String, Oid, i32)> = Vec::new();
    let mut submodules = Vec::new();
    tree.walk(git2::TreeWalkMode::PreOrder, |dir, e| {
        if e.kind() == Some(ObjectType::Blob) {
            if let Ok(name) = e.name() {
                blobs.push((format!("{dir}{name}"), e.id(), e.filemode()));
            }
        } else if e.kind() == Some(ObjectType::Commit) {
            if let Ok(name) = e.name() {
                submodules.push(format!("{dir}{name}"));
            }
        }
        git2::TreeWalkResult::Ok
    })?;
    let odb = repo.odb()?;
    let mut entries = BTreeMap::new();
    for (path, oid, mode) in blobs {
        let (size, _) = odb.read_header(oid)?;
        let entry = if mode == 0o120000 {
            let blob = repo.find_blob(oid)?;
            Entry::Symlink {
                target: String::from_utf8_lossy(blob.content()).into_owned(),
            }
        } else if size as u64 > MAX_FILE_SIZE {
            Entry::Oversize { size: size as u64 }
        } else {
            let blob = repo.find_blob(oid)?;
            Entry::File {
                data: Arc::from(blob.content()),
                executable: mode == 0o100755,
            }
        };
        entries.insert(path, entry);
    }
    Ok(Snapshot::new(rev, entries).with_submodules(submodules))
}

/// Every git2 call runs on the blocking pool: a fetch that waits for the
/// network, or a walk of a large history, never stalls the runtime that
/// serves webhooks and health checks.
#[async_trait::async_trait]
impl Source for GitSource {
    fn url(&self) -> &str {
        &self.url
    }

    fn git_dir(&self) -> &Path {
        GitSource::git_dir(self)
    }

    fn remote(&self) -> Option<&str> {
        GitSource::remote(self)
    }

    async fn default_branch(&self) -> Option<String> {
        let me = self.clone();
        blocking(move || Ok(me.default_branch()))
            .await
            .ok()
            .flatten()
    }

    async fn is_descendant(&self, new: Revision, old: Revision) -> bool {
        let me = self.clone();
        blocking(move || Ok(me.is_descendant(new, old)))
            .await
            .unwrap_or(false)
    }

    async fn fetch_ref(&self, refname: &str, sha: &str) -> Result<Revision, SourceError> {
        let (me, refname, sha) = (self.clone(), refname.to_string(), sha.to_string());
        blocking(move || me.fetch_ref(&refname, &sha)).await
    }

    async fn branches(&self) -> Result<Vec<(String, Revision)>, SourceError> {
        let me = self.clone();
        blocking(move || me.branches()).await
    }

    async fn fetch(&self) -> Result<(), SourceError> {
        let me = self.clone();
        blocking(move || me.fetch()).await
    }

    async fn resolve(&self, rev: &str) -> Result<Revision, SourceError> {
        let (me, rev) = (self.clone(), rev.to_string());
        blocking(move || me.resolve(&rev)).await
    }

    async fn snapshot(&self, rev: Revision) -> Result<Snapshot, SourceError> {
        let me = self.clone();
        blocking(move || me.snapshot(rev)).await
    }

    async fn verify(
        &self,
        rev: Revision,
        policy: &SignaturePolicy,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Signer, UntrustedCommit> {
        let (me, policy) = (self.clone(), policy.clone());
        match tokio::task::spawn_blocking(move || me.verify(rev, &policy, now)).await {
            Ok(r) => r,
            Err(e) => Err(UntrustedCommit::Unreadable {
                commit: rev.0,
                reason: e.to_string(),
            }),
        }
    }
}

/// Runs `f` on the blocking pool; a panic there is a `Task` error, not a
/// crash of the caller.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SourceError> + Send + 'static,
) -> Result<T, SourceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SourceError::Task(e.to_string()))?
}
