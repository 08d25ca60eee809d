//! The content-addressed artifact store.
//!
//! Layout under `<state_dir>/artifacts/`:
//! - `sha256/<hex>`: verified files only. A file gets there by one rename, after it
//!   was fsynced and its SHA-256 (and size, when declared) checked, so the store
//!   never holds a file under a digest it does not hash to, whenever the process
//!   dies (DESIGN.md, invariant 7).
//! - `partial/<hex>`: a download in progress, never trusted: the next fetch
//!   re-hashes it and resumes with an HTTP `Range` request.
//!
//! Artifacts are keyed by digest, not by name or URL: however many compositions
//! name the same content, it is fetched once, and once stored it is never fetched
//! again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use futures_util::{stream, StreamExt};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use reqwest::header::{HeaderMap, CONTENT_RANGE, RANGE};
use reqwest::{StatusCode, Url};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use crate::model::{Artifact, Digest};
use crate::source::Snapshot;

/// Distinct digests downloaded at once: enough to fill a link, few enough not
/// to thrash a small edge disk.
const PARALLEL: usize = 4;

/// HTTP attempts per fetch. A new attempt is made at once only when the last
/// one made progress (or had to drop a bad prefix), so a flaky link finishes a
/// large file within one pass while a dead server fails fast.
const MAX_ATTEMPTS: usize = 5;

const BUF_SIZE: usize = 64 * 1024;

/// Why an artifact is not in the store. Every message names the artifact and
/// its URL and is complete on its own (causes are rendered inline, not chained),
/// because it ends up in `status.error.message`.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Only the declared digest: the one computed would let a commit learn
    /// the digest of any file fermata can read (status is pushed), and then
    /// declare it to have the file copied.
    #[error("artifact {name:?} ({url}): does not match the declared sha256 {expected}")]
    Sha256Mismatch {
        name: String,
        url: String,
        expected: Digest,
    },
    /// Only the declared size, for the same reason.
    #[error("artifact {name:?} ({url}): does not match the declared size of {expected} bytes")]
    SizeMismatch {
        name: String,
        url: String,
        expected: u64,
    },
    #[error("artifact {name:?} ({url}): HTTP {status}")]
    HttpStatus {
        name: String,
        url: String,
        status: StatusCode,
    },
    /// `place` says where it was looked for when the URL alone does not (a
    /// repository path is resolved against the synthesizer's folder); else empty.
    #[error("artifact {name:?} ({url}): file not found{place}")]
    NotFound {
        name: String,
        url: String,
        place: String,
    },
    /// Connection, interrupted transfer, unreadable file, local I/O: `cause` holds the chain.
    #[error("artifact {name:?} ({url}): {cause}")]
    Fetch {
        name: String,
        url: String,
        cause: String,
    },
    /// A `file://` URL outside every `--artifact-root`. Such a file is never
    /// read, so nothing of it (digest, size, even whether it exists) can
    /// reach status, which is pushed.
    #[error("artifact {name:?} ({url}): refused: {reason}")]
    Refused {
        name: String,
        url: String,
        reason: String,
    },
    /// An `--artifact-root` that cannot be resolved.
    #[error("artifact root {}: {cause}", path.display())]
    Root { path: PathBuf, cause: String },
    /// The store itself (not one artifact) cannot be used.
    #[error("artifact store {}: {cause}", path.display())]
    Store { path: PathBuf, cause: String },
}

/// Content-addressed artifact store under the state directory. Clones share
/// the HTTP client and the per-digest locks.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
    client: reqwest::Client,
    /// One lock per digest, so that concurrent `fetch_all` calls of this process
    /// never write the same partial file and the second finds the first's result.
    locks: Arc<Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>>,
    /// Progress bars when stderr is a terminal; otherwise progress goes to the log.
    bars: Option<MultiProgress>,
    /// Bytes written into the store since start (`fermata_artifact_bytes_total`).
    written: Arc<std::sync::atomic::AtomicU64>,
    /// The folders `file://` artifacts may come from, canonical.
    file_roots: Vec<PathBuf>,
}

impl ArtifactStore {
    /// Opens (creating if needed) the store under `<state_dir>/artifacts`.
    pub fn new(state_dir: &Path) -> Result<ArtifactStore, StageError> {
        let root = state_dir.join("artifacts");
        for dir in ["sha256", "partial"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(|e| StageError::Store {
                path: path.clone(),
                cause: format!("cannot create the directory: {e}"),
            })?;
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("fermata/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            // Between two reads, not for the whole body: large files take long.
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| StageError::Store {
                path: root.clone(),
                cause: format!(
                    "cannot set up the HTTP client: {}",
                    crate::errors::chain(&e)
                ),
            })?;
        Ok(ArtifactStore {
            root,
            client,
            locks: Arc::default(),
            bars: io::stderr().is_terminal().then(MultiProgress::new),
            written: Arc::default(),
            file_roots: Vec::new(),
        })
    }

    /// Lets `file://` artifacts come from under `roots` (`--artifact-root`),
    /// resolved now (symlinks included) so a file's resolved path can be
    /// compared with them. With none, `file://` artifacts are refused.
    pub fn with_file_roots(mut self, roots: &[PathBuf]) -> Result<ArtifactStore, StageError> {
        self.file_roots = roots
            .iter()
            .map(|r| {
                fs::canonicalize(r).map_err(|e| StageError::Root {
                    path: r.clone(),
                    cause: e.to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(self)
    }

    /// Why `path` may not be read, if it may not: it must lie under a root
    /// as written (checked before touching the file system, so a refusal
    /// does not even tell whether the file exists) and as resolved.
    fn refusal(&self, path: &Path) -> Option<String> {
        if self.file_roots.is_empty() {
            return Some(
                "file:// artifacts are read only under an --artifact-root, and no --artifact-root is configured"
                    .into(),
            );
        }
        let plain = path.components().all(|c| {
            matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Normal(_)
            )
        });
        if !plain || !self.file_roots.iter().any(|r| path.starts_with(r)) {
            return Some(format!(
                "it is not under any --artifact-root ({})",
                self.roots_shown()
            ));
        }
        None
    }

    fn roots_shown(&self) -> String {
        self.file_roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Bytes downloaded (or copied) into the store by this process so far.
    pub fn bytes_written(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where the verified file of `digest` lives (whether or not it is there yet).
    pub fn path_of(&self, digest: &Digest) -> PathBuf {
        self.root.join("sha256").join(digest.to_hex())
    }

    fn partial_of(&self, digest: &Digest) -> PathBuf {
        self.root.join("partial").join(digest.to_hex())
    }

    /// Whether the verified file of `digest` is in the store (without re-hashing it).
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path_of(digest).is_file()
    }

    /// Fetches every distinct artifact once (by digest), at most [`PARALLEL`] at a
    /// time; a digest already in the store costs no request. When several
    /// artifacts share a digest their sources are tried in order until one
    /// yields the content, and the first error is reported if none does.
    pub async fn fetch_all(
        &self,
        artifacts: &[Artifact],
        snap: &Snapshot,
    ) -> BTreeMap<Digest, Result<PathBuf, StageError>> {
        let mut by_digest: BTreeMap<Digest, Vec<&Artifact>> = BTreeMap::new();
        for a in artifacts {
            by_digest.entry(a.sha256).or_default().push(a);
        }
        stream::iter(by_digest)
            .map(|(digest, sources)| async move {
                let result = self.fetch_digest(&digest, &sources, snap).await;
                (digest, result)
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await
    }

    /// Re-hashes the stored file of `digest`: `Ok(false)` if it is missing or does
    /// not hash to its name. A corrupt file (bit rot, someone editing the state
    /// directory) is removed, so the store keeps invariant 7 and the next fetch
    /// downloads it again. Blocking: large files take a while to hash.
    pub fn verify(&self, digest: &Digest) -> Result<bool, StageError> {
        let path = self.path_of(digest);
        let store_err = |e: io::Error| StageError::Store {
            path: path.clone(),
            cause: format!("cannot verify: {e}"),
        };
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(store_err(e)),
        };
        let (hasher, _) = hash_reader(&mut file, |_| Ok(())).map_err(store_err)?;
        drop(file);
        let got = finish(hasher);
        if got == *digest {
            return Ok(true);
        }
        tracing::warn!(path = %path.display(), %got, "stored artifact does not hash to its name; removing it");
        remove_if_exists(&path).map_err(store_err)?;
        Ok(false)
    }

    /// Removes partial downloads not written to for `age`: they belong to
    /// artifacts no longer wanted (a wanted one is resumed on the next pass).
    /// Downloads in progress in this process are left alone. Returns how many
    /// were removed.
    pub fn clean_partials_older_than(&self, age: Duration) -> Result<usize, StageError> {
        let dir = self.root.join("partial");
        let store_err = |e: io::Error| StageError::Store {
            path: dir.clone(),
            cause: format!("cannot clean partial downloads: {e}"),
        };
        let now = SystemTime::now();
        let mut removed = 0;
        for entry in fs::read_dir(&dir).map_err(store_err)? {
            let entry = entry.map_err(store_err)?;
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .map_err(store_err)?;
            if now.duration_since(modified).unwrap_or_default() < age {
                continue;
            }
            // Hold the digest's lock while removing, so no fetch resumes it meanwhile.
            let lock = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Digest>().ok())
                .map(|d| self.lock_for(&d));
            let _guard = match &lock {
                Some(l) => match l.try_lock() {
                    Ok(g) => Some(g),
                    Err(_) => continue,
                },
                None => None,
            };
            remove_if_exists(&entry.path()).map_err(store_err)?;
            removed += 1;
        }
        Ok(removed)
    }

    fn lock_for(&self, digest: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(locks.entry(*digest).or_default())
    }

    async fn fetch_digest(
        &self,
        digest: &Digest,
        sources: &[&Artifact],
        snap: &Snapshot,
    ) -> Result<PathBuf, StageError> {
        let lock = self.lock_for(digest);
        let _guard = lock.lock().await;
        let dest = self.path_of(digest);
        if dest.is_file() {
            return Ok(dest);
        }
        let mut tried = BTreeSet::new();
        let mut first_err = None;
        for a in sources {
            if !tried.insert(a.repo_path.as_deref().unwrap_or(&a.url)) {
                continue;
            }
            tracing::info!(artifact = %a.name, url = %a.url, digest = %digest.short(), "fetching artifact");
            match self.fetch_one(a, snap).await {
                Ok(path) => {
                    tracing::info!(artifact = %a.name, digest = %digest.short(), "artifact stored");
                    return Ok(path);
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or_else(|| StageError::Store {
            path: dest,
            cause: "no source to fetch from".into(),
        }))
    }

    async fn fetch_one(&self, a: &Artifact, snap: &Snapshot) -> Result<PathBuf, StageError> {
        if let Some(path) = &a.repo_path {
            return self.fetch_repo(a, path, snap).await;
        }
        let url = Url::parse(&a.url).map_err(|e| fetch_err(a, format!("invalid URL: {e}")))?;
        match url.scheme() {
            "http" | "https" => self.fetch_http(a, &url).await,
            "file" => self.fetch_file(a, &url).await,
            s => Err(fetch_err(
                a,
                format!("cannot fetch {s}:// URLs (only http, https and file)"),
            )),
        }
    }

    /// A file of the repository: already in memory (and small), so it is
    /// checked before anything is written.
    async fn fetch_repo(
        &self,
        a: &Artifact,
        path: &str,
        snap: &Snapshot,
    ) -> Result<PathBuf, StageError> {
        let data = snap.read(path).ok_or_else(|| StageError::NotFound {
            name: a.name.clone(),
            url: a.url.clone(),
            place: format!(" in the repository at {}: {path}", snap.revision.short()),
        })?;
        check_size(a, data.len() as u64)?;
        check_digest(a, Digest::of(data))?;
        let data = data.to_vec();
        self.written
            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let partial = self.partial_of(&a.sha256);
        let dest = self.path_of(&a.sha256);
        let a2 = a.clone();
        blocking(a, move || {
            fs::write(&partial, &data).map_err(|e| io_err(&a2, "cannot write", &partial, e))?;
            install(&a2, &partial, &dest)
        })
        .await
    }

    /// A local file: copied (hashing as it goes) rather than resumed.
    async fn fetch_file(&self, a: &Artifact, url: &Url) -> Result<PathBuf, StageError> {
        let src = url
            .to_file_path()
            .map_err(|()| fetch_err(a, "not a local file path"))?;
        let refused = |reason: String| StageError::Refused {
            name: a.name.clone(),
            url: a.url.clone(),
            reason,
        };
        if let Some(reason) = self.refusal(&src) {
            return Err(refused(reason));
        }
        let partial = self.partial_of(&a.sha256);
        let dest = self.path_of(&a.sha256);
        let mut progress = Progress::new(self.bars.as_ref(), &a.name, a.size, 0);
        progress.count_into(self.written.clone());
        let a2 = a.clone();
        let roots = self.file_roots.clone();
        blocking(a, move || {
            let a = &a2;
            // Non-blocking: opening a FIFO must not wait for a writer.
            let mut input = fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
                .open(&src)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::NotFound => StageError::NotFound {
                        name: a.name.clone(),
                        url: a.url.clone(),
                        place: String::new(),
                    },
                    _ => io_err(a, "cannot open", &src, e),
                })?;
            // What was opened, symlinks resolved: checked on the open file,
            // so a link swapped in after a check cannot lead elsewhere.
            let opened = fs::read_link(format!("/proc/self/fd/{}", input.as_raw_fd()))
                .map_err(|e| io_err(a, "cannot resolve", &src, e))?;
            if !roots.iter().any(|r| opened.starts_with(r)) {
                return Err(StageError::Refused {
                    name: a.name.clone(),
                    url: a.url.clone(),
                    reason: "it is a symlink leading outside every --artifact-root".into(),
                });
            }
            let meta = input
                .metadata()
                .map_err(|e| io_err(a, "cannot stat", &src, e))?;
            if !meta.is_file() {
                return Err(fetch_err(a, format!("{} is not a file", src.display())));
            }
            // Before copying: a wrong size is known from the metadata alone.
            check_size(a, meta.len())?;
            let mut out =
                File::create(&partial).map_err(|e| io_err(a, "cannot create", &partial, e))?;
            let copied = hash_reader(&mut input, |chunk| {
                out.write_all(chunk)?;
                progress.advance(chunk.len() as u64);
                Ok(())
            });
            drop(out);
            let checked = copied
                .map_err(|e| {
                    fetch_err(
                        a,
                        format!(
                            "cannot copy {} to {}: {e}",
                            src.display(),
                            partial.display()
                        ),
                    )
                })
                .and_then(|(hasher, len)| {
                    check_size(a, len)?;
                    check_digest(a, finish(hasher))
                });
            if let Err(e) = checked {
                let _ = remove_if_exists(&partial);
                return Err(e);
            }
            progress.finish();
            install(a, &partial, &dest)
        })
        .await
    }

    /// Downloads into `partial/<hex>`, resuming what an earlier attempt left.
    async fn fetch_http(&self, a: &Artifact, url: &Url) -> Result<PathBuf, StageError> {
        let mut last = None;
        for _ in 0..MAX_ATTEMPTS {
            match self.http_attempt(a, url).await {
                Ok(path) => return Ok(path),
                Err(Failed::Fatal(e)) => return Err(e),
                Err(Failed::Retry(e)) => {
                    tracing::warn!("{e}; trying again");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| fetch_err(a, "no download attempt was made")))
    }

    async fn http_attempt(&self, a: &Artifact, url: &Url) -> Result<PathBuf, Failed> {
        let partial = self.partial_of(&a.sha256);
        let dest = self.path_of(&a.sha256);
        let prefix = {
            let (partial, digest, size) = (partial.clone(), a.sha256, a.size);
            let a2 = a.clone();
            blocking(a, move || {
                read_prefix(&partial, &digest, size)
                    .map_err(|e| io_err(&a2, "cannot read", &partial, e))
            })
            .await
            .map_err(Failed::Fatal)?
        };
        let Some((mut hasher, mut have)) = prefix else {
            // A complete partial: the last run died between download and rename.
            let a2 = a.clone();
            return blocking(a, move || install(&a2, &partial, &dest))
                .await
                .map_err(Failed::Fatal);
        };

        let mut request = self.client.get(url.clone());
        if have > 0 {
            tracing::info!(artifact = %a.name, from = have, "resuming download");
            request = request.header(RANGE, format!("bytes={have}-"));
        }
        let response = request.send().await.map_err(|e| {
            Failed::Fatal(fetch_err(
                a,
                format!("request failed: {}", crate::errors::chain(&e.without_url())),
            ))
        })?;
        let drop_partial = |e: StageError| {
            let _ = fs::remove_file(&partial);
            e
        };
        let append = match response.status() {
            StatusCode::PARTIAL_CONTENT if have > 0 => {
                let (start, total) = content_range(response.headers());
                if start != Some(have) {
                    return Err(Failed::Retry(drop_partial(fetch_err(
                        a,
                        format!("asked for bytes {have}- but the server sent another range; starting over"),
                    ))));
                }
                if let (Some(expected), Some(got)) = (a.size, total) {
                    if expected != got {
                        return Err(Failed::Fatal(drop_partial(size_err(a))));
                    }
                }
                true
            }
            StatusCode::OK => {
                if let (Some(expected), Some(got)) = (a.size, response.content_length()) {
                    if expected != got {
                        return Err(Failed::Fatal(drop_partial(size_err(a))));
                    }
                }
                if have > 0 {
                    tracing::info!(artifact = %a.name, "server ignored the range; starting over");
                }
                hasher = Sha256::new();
                have = 0;
                false
            }
            StatusCode::RANGE_NOT_SATISFIABLE if have > 0 => {
                return Err(Failed::Retry(drop_partial(fetch_err(
                    a,
                    format!("the server cannot resume at byte {have} (HTTP 416); starting over"),
                ))));
            }
            status => {
                return Err(Failed::Fatal(StageError::HttpStatus {
                    name: a.name.clone(),
                    url: a.url.clone(),
                    status,
                }))
            }
        };
        let from = have;

        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&partial)
            .await
            .map_err(|e| Failed::Fatal(io_err(a, "cannot open", &partial, e)))?;
        let mut progress = Progress::new(self.bars.as_ref(), &a.name, a.size, have);
        progress.count_into(self.written.clone());
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    // Keep what arrived: the next attempt re-hashes and resumes it.
                    let _ = file.flush().await;
                    let e = fetch_err(
                        a,
                        format!(
                            "download interrupted after {have} bytes: {}",
                            crate::errors::chain(&e.without_url())
                        ),
                    );
                    return Err(if have > from {
                        Failed::Retry(e)
                    } else {
                        Failed::Fatal(e)
                    });
                }
            };
            let len = chunk.len() as u64;
            if let Some(size) = a.size {
                if have + len > size {
                    drop(file);
                    return Err(Failed::Fatal(drop_partial(fetch_err(
                        a,
                        format!("the server sent more than the declared size of {size} bytes"),
                    ))));
                }
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| Failed::Fatal(io_err(a, "cannot write", &partial, e)))?;
            hasher.update(&chunk);
            have += len;
            progress.advance(len);
        }
        file.flush()
            .await
            .map_err(|e| Failed::Fatal(io_err(a, "cannot write", &partial, e)))?;
        drop(file);
        if let Some(size) = a.size {
            if have < size {
                // The server ended the body early without an error: resumable too.
                let e = fetch_err(a, format!("download ended after {have} of {size} bytes"));
                return Err(if have > from {
                    Failed::Retry(e)
                } else {
                    Failed::Fatal(e)
                });
            }
        }
        if let Err(e) = check_digest(a, finish(hasher)) {
            let e = drop_partial(e);
            // After a resume the kept prefix may be what is wrong (the file
            // changed on the server between attempts): one more try from byte 0.
            return Err(if from > 0 {
                Failed::Retry(e)
            } else {
                Failed::Fatal(e)
            });
        }
        progress.finish();
        let a2 = a.clone();
        blocking(a, move || install(&a2, &partial, &dest))
            .await
            .map_err(Failed::Fatal)
    }
}

/// How an HTTP attempt ended without a stored file.
enum Failed {
    /// Worth another request at once: progress was made, or a bad prefix was dropped.
    Retry(StageError),
    Fatal(StageError),
}

/// Hashes what an earlier attempt left in `partial`. `None` when it is already
/// the complete, right file; a partial that cannot be a prefix of it (too long,
/// or full length with the wrong hash) is removed.
fn read_prefix(
    partial: &Path,
    digest: &Digest,
    size: Option<u64>,
) -> io::Result<Option<(Sha256, u64)>> {
    let mut file = match File::open(partial) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some((Sha256::new(), 0))),
        Err(e) => return Err(e),
    };
    if size.is_some_and(|s| file.metadata().is_ok_and(|m| m.len() > s)) {
        drop(file);
        remove_if_exists(partial)?;
        return Ok(Some((Sha256::new(), 0)));
    }
    let (hasher, len) = hash_reader(&mut file, |_| Ok(()))?;
    drop(file);
    if len > 0 && size.is_none_or(|s| s == len) && finish(hasher.clone()) == *digest {
        return Ok(None);
    }
    if size == Some(len) {
        remove_if_exists(partial)?;
        return Ok(Some((Sha256::new(), 0)));
    }
    Ok(Some((hasher, len)))
}

/// Moves a checked partial into the store: fsync the data first, so that what
/// is visible under the digest after a crash is the whole file, then rename
/// (atomic), then fsync the directory so the rename itself survives.
fn install(a: &Artifact, partial: &Path, dest: &Path) -> Result<PathBuf, StageError> {
    File::open(partial)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(a, "cannot sync", partial, e))?;
    fs::rename(partial, dest).map_err(|e| {
        fetch_err(
            a,
            format!(
                "cannot move {} to {}: {e}",
                partial.display(),
                dest.display()
            ),
        )
    })?;
    if let Some(dir) = dest.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(a, "cannot sync", dir, e))?;
    }
    Ok(dest.to_path_buf())
}

/// Reads `r` to the end, hashing every chunk and handing it to `each`.
fn hash_reader(
    r: &mut impl Read,
    mut each: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<(Sha256, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF_SIZE];
    let mut len = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok((hasher, len)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        each(&buf[..n])?;
        len += n as u64;
    }
}

fn finish(hasher: Sha256) -> Digest {
    Digest(hasher.finalize().into())
}

fn check_size(a: &Artifact, got: u64) -> Result<(), StageError> {
    match a.size {
        Some(expected) if expected != got => Err(size_err(a)),
        _ => Ok(()),
    }
}

fn check_digest(a: &Artifact, got: Digest) -> Result<(), StageError> {
    if got == a.sha256 {
        return Ok(());
    }
    Err(StageError::Sha256Mismatch {
        name: a.name.clone(),
        url: a.url.clone(),
        expected: a.sha256,
    })
}

fn size_err(a: &Artifact) -> StageError {
    StageError::SizeMismatch {
        name: a.name.clone(),
        url: a.url.clone(),
        expected: a.size.unwrap_or_default(),
    }
}

fn fetch_err(a: &Artifact, cause: impl Into<String>) -> StageError {
    StageError::Fetch {
        name: a.name.clone(),
        url: a.url.clone(),
        cause: cause.into(),
    }
}

fn io_err(a: &Artifact, action: &str, path: &Path, e: io::Error) -> StageError {
    fetch_err(a, format!("{action} {}: {e}", path.display()))
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Runs blocking file work (hashing, copying, fsync) off the async workers.
async fn blocking<T: Send + 'static>(
    a: &Artifact,
    f: impl FnOnce() -> Result<T, StageError> + Send + 'static,
) -> Result<T, StageError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(fetch_err(a, format!("internal error: {e}"))))
}

/// `bytes START-END/TOTAL` of a 206 response: (START, TOTAL), each if readable.
fn content_range(headers: &HeaderMap) -> (Option<u64>, Option<u64>) {
    let Some(value) = headers.get(CONTENT_RANGE).and_then(|v| v.to_str().ok()) else {
        return (None, None);
    };
    let Some(range) = value.trim().strip_prefix("bytes ") else {
        return (None, None);
    };
    let (span, total) = range.split_once('/').unwrap_or((range, "*"));
    let start = span
        .split_once('-')
        .and_then(|(s, _)| s.trim().parse().ok());
    (start, total.trim().parse().ok())
}

/// Progress of one transfer: a bar on a terminal, otherwise a log line for every
/// further 10 %, or every 5 s when that comes first (or the size is unknown).
struct Progress {
    name: String,
    total: Option<u64>,
    done: u64,
    bar: Option<ProgressBar>,
    logged_tenths: u64,
    logged_at: Instant,
    /// The store's running total of bytes written.
    counter: Option<Arc<std::sync::atomic::AtomicU64>>,
}

const LOG_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    fn new(bars: Option<&MultiProgress>, name: &str, total: Option<u64>, done: u64) -> Progress {
        let bar = bars.map(|bars| {
            let (bar, template) = match total {
                Some(t) => (
                    ProgressBar::new(t),
                    "{msg:24!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                ),
                None => (
                    ProgressBar::new_spinner(),
                    "{msg:24!} {spinner} {bytes} {bytes_per_sec}",
                ),
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(name.to_string());
            bar.set_position(done);
            bars.add(bar)
        });
        Progress {
            name: name.to_string(),
            total,
            done,
            bar,
            logged_tenths: tenths(done, total),
            logged_at: Instant::now(),
            counter: None,
        }
    }

    fn count_into(&mut self, counter: Arc<std::sync::atomic::AtomicU64>) {
        self.counter = Some(counter);
    }

    fn advance(&mut self, n: u64) {
        self.done += n;
        if let Some(c) = &self.counter {
            c.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(bar) = &self.bar {
            bar.set_position(self.done);
            return;
        }
        let now = tenths(self.done, self.total);
        if now > self.logged_tenths || self.logged_at.elapsed() >= LOG_EVERY {
            match self.total {
                Some(total) => tracing::info!(
                    artifact = %self.name,
                    bytes = self.done,
                    total,
                    "downloading: {}%",
                    self.done.saturating_mul(100) / total.max(1)
                ),
                None => tracing::info!(artifact = %self.name, bytes = self.done, "downloading"),
            }
            self.logged_tenths = now;
            self.logged_at = Instant::now();
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    /// A failed transfer's bar goes too: the error is reported on its own.
    fn drop(&mut self) {
        self.finish();
    }
}

fn tenths(done: u64, total: Option<u64>) -> u64 {
    match total {
        Some(t) if t > 0 => done.saturating_mul(10) / t,
        _ => 0,
    }
}
