//! A campaign's change to desired state as one Git commit on the watched
//! branch (invariant 12): files replaced in the tree of the commit the edit
//! was computed from, author and committer `fermata`, a subject saying what
//! was set where and trailers naming the activation, stage and batch.
//!
//! The branch moves by compare-and-swap from that commit: a push by someone
//! else in between is never overwritten, the caller reads again and retries.
//! The trailers are how a driver killed between committing and recording
//! its state finds the commit again ([`find_step`]) instead of making a
//! second one.
//!
//! Only the ref moves: a working tree or index where the branch is checked
//! out is left alone (fermata reads commits, not working trees). Nothing is
//! pushed here; for a mirror, the caller pushes the branch.
//!
//! Signing: SSH (`ssh-keygen -Y sign -n git`, git's own convention for
//! `gpg.format=ssh`) or OpenPGP (a detached binary signature, what
//! `gpg -bsa` makes for git, made in process with the `pgp` crate: no `gpg`
//! binary or agent), so sites under either signature policy accept the commit.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use git2::{build::TreeUpdateBuilder, ErrorCode, FileMode, Oid, Repository, Signature};
use pgp::composed::{ArmorOptions, Deserializable, DetachedSignature, SignedSecretKey};
use pgp::packet::{SignatureConfig, SignatureType, Subpacket, SubpacketData};
use pgp::types::{KeyDetails, KeyVersion, Password, SigningKey, Timestamp};
use wait_timeout::ChildExt;

/// Author and committer of campaign commits: the change is the campaign's,
/// not that of whoever runs the driver.
const AUTHOR_NAME: &str = "fermata";
const AUTHOR_EMAIL: &str = "fermata@localhost";

pub const TRAILER_ACTIVATION: &str = "Fermata-Activation";
pub const TRAILER_STAGE: &str = "Fermata-Stage";
pub const TRAILER_BATCH: &str = "Fermata-Batch";

/// How long `ssh-keygen` may take: a key that wants a passphrase would
/// otherwise wait on a terminal forever.
const SIGN_TIMEOUT: Duration = Duration::from_secs(30);

/// How campaign commits are signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signing {
    /// An SSH private key file without a passphrase.
    Ssh { key: PathBuf },
    /// An armored OpenPGP secret key without a passphrase, as
    /// `gpg --armor --export-secret-keys KEYID` writes it.
    Gpg { key: PathBuf },
}

const SSH_KEY_ARMOR: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
const PGP_KEY_ARMOR: &str = "-----BEGIN PGP PRIVATE KEY BLOCK-----";

impl Signing {
    /// The signing of a `--signing-key` file, told by its content so that
    /// one flag takes either kind. An OpenPGP key is loaded now, so that a
    /// passphrase or a key that cannot sign is refused before any commit.
    pub fn from_key_file(key: &Path) -> Result<Signing, CommitError> {
        let text = std::fs::read(key).map_err(|e| CommitError::Sign {
            key: key.display().to_string(),
            message: format!("cannot read it: {e}"),
        })?;
        let text = String::from_utf8_lossy(&text);
        let text = text.trim_start();
        if text.starts_with(SSH_KEY_ARMOR) {
            Ok(Signing::Ssh { key: key.into() })
        } else if text.starts_with(PGP_KEY_ARMOR) {
            pgp_signer(key)?;
            Ok(Signing::Gpg { key: key.into() })
        } else {
            Err(CommitError::Sign {
                key: key.display().to_string(),
                message: format!(
                    "neither an OpenSSH private key (`{SSH_KEY_ARMOR}`) nor an armored \
                     OpenPGP secret key (`{PGP_KEY_ARMOR}`, from `gpg --armor --export-secret-keys`)"
                ),
            })
        }
    }
}

/// One step of an activation: what the trailers of its commit name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step<'a> {
    pub activation: &'a str,
    pub stage: &'a str,
    /// Batch `n` of `m` (from 1) of a stage that fans out in batches.
    pub batch: Option<(usize, usize)>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("{repo}: {context}: {source}")]
    Git {
        repo: String,
        context: String,
        #[source]
        source: git2::Error,
    },
    #[error("branch {branch} moved from {expected} to {found} since the edit was computed; read it again and retry")]
    Moved {
        branch: String,
        expected: Oid,
        found: String,
    },
    #[error("{path:?}: not a file path inside the repository")]
    Path { path: String },
    #[error("signing with {key}: {message}")]
    Sign { key: String, message: String },
}

fn git(repo: &Path, context: impl Into<String>) -> impl FnOnce(git2::Error) -> CommitError {
    let repo = repo.display().to_string();
    let context = context.into();
    move |source| CommitError::Git {
        repo,
        context,
        source,
    }
}

/// The commit message of a step: `campaign A stage S[ batch n/m]: SUMMARY`
/// and the trailers [`find_step`] looks for.
pub fn message(step: &Step, summary: &str) -> String {
    let batch = step
        .batch
        .map(|(n, m)| format!(" batch {n}/{m}"))
        .unwrap_or_default();
    let mut out = format!(
        "campaign {} stage {}{batch}: {summary}\n\n{TRAILER_ACTIVATION}: {}\n{TRAILER_STAGE}: {}\n",
        step.activation, step.stage, step.activation, step.stage
    );
    if let Some((n, _)) = step.batch {
        out.push_str(&format!("{TRAILER_BATCH}: {n}\n"));
    }
    out
}

/// The summary of a promote: `set K=V, L=W on site-a, site-b`.
pub fn set_summary(values: &BTreeMap<String, String>, sites: &[String]) -> String {
    let set: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("set {} on {}", set.join(", "), sites.join(", "))
}

/// The summary of a revert: `restore K, L on site-a, site-b`.
pub fn restore_summary<'k>(keys: impl IntoIterator<Item = &'k String>, sites: &[String]) -> String {
    let keys: Vec<&str> = keys.into_iter().map(String::as_str).collect();
    format!("restore {} on {}", keys.join(", "), sites.join(", "))
}

/// The commit `branch` points at.
pub fn head(repo_dir: &Path, branch: &str) -> Result<Oid, CommitError> {
    let repo = Repository::open(repo_dir).map_err(git(repo_dir, "open"))?;
    branch_head(&repo, repo_dir, branch)
}

fn branch_head(repo: &Repository, repo_dir: &Path, branch: &str) -> Result<Oid, CommitError> {
    let name = format!("refs/heads/{branch}");
    repo.refname_to_id(&name)
        .map_err(git(repo_dir, format!("read {name}")))
}

/// The text of `path` at `commit`; `None` when no such file is there.
pub fn read_file(repo_dir: &Path, commit: Oid, path: &str) -> Result<Option<String>, CommitError> {
    let repo = Repository::open(repo_dir).map_err(git(repo_dir, "open"))?;
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(git(repo_dir, format!("read commit {commit}")))?;
    let entry = match tree.get_path(Path::new(path)) {
        Ok(e) => e,
        Err(e) if e.code() == ErrorCode::NotFound => return Ok(None),
        Err(e) => return Err(git(repo_dir, format!("find {path}"))(e)),
    };
    let blob = match entry.to_object(&repo).map(|o| o.into_blob()) {
        Ok(Ok(blob)) => blob,
        _ => return Ok(None),
    };
    Ok(Some(String::from_utf8_lossy(blob.content()).into_owned()))
}

/// Commits `edits` (path in the repository, new text) on `branch` as one
/// commit whose parent is `base`, the commit the edits were computed from,
/// and moves the branch to it only if it still points at `base`
/// ([`CommitError::Moved`] otherwise). A commit is made even when no file
/// changes, so that the step is recorded. Returns the new commit.
pub fn promote(
    repo_dir: &Path,
    branch: &str,
    base: Oid,
    edits: &[(String, String)],
    message: &str,
    signing: Option<&Signing>,
) -> Result<Oid, CommitError> {
    let repo = Repository::open(repo_dir).map_err(git(repo_dir, "open"))?;
    let parent = repo
        .find_commit(base)
        .map_err(git(repo_dir, format!("read commit {base}")))?;
    let base_tree = parent.tree().map_err(git(repo_dir, "read tree"))?;
    let mut update = TreeUpdateBuilder::new();
    for (path, text) in edits {
        if !valid_path(path) {
            return Err(CommitError::Path { path: path.clone() });
        }
        let blob = repo
            .blob(text.as_bytes())
            .map_err(git(repo_dir, format!("write {path}")))?;
        // An executable file stays executable.
        let mode = match base_tree.get_path(Path::new(path)) {
            Ok(e) if e.filemode() == i32::from(FileMode::BlobExecutable) => {
                FileMode::BlobExecutable
            }
            _ => FileMode::Blob,
        };
        update.upsert(path.as_str(), blob, mode);
    }
    let tree_id = update
        .create_updated(&repo, &base_tree)
        .map_err(git(repo_dir, "build tree"))?;
    let tree = repo
        .find_tree(tree_id)
        .map_err(git(repo_dir, "read tree"))?;
    let sig = Signature::now(AUTHOR_NAME, AUTHOR_EMAIL).map_err(git(repo_dir, "signature"))?;
    let commit = match signing {
        None => repo
            .commit(None, &sig, &sig, message, &tree, &[&parent])
            .map_err(git(repo_dir, "commit"))?,
        Some(signing) => {
            let buffer = repo
                .commit_create_buffer(&sig, &sig, message, &tree, &[&parent])
                .map_err(git(repo_dir, "commit"))?;
            let content = String::from_utf8_lossy(&buffer).into_owned();
            let signature = match signing {
                Signing::Ssh { key } => ssh_sign(key, content.as_bytes())?,
                Signing::Gpg { key } => pgp_sign(key, content.as_bytes())?,
            };
            repo.commit_signed(&content, &signature, Some("gpgsig"))
                .map_err(git(repo_dir, "commit"))?
        }
    };
    let name = format!("refs/heads/{branch}");
    let subject = message.lines().next().unwrap_or_default();
    let moved = repo.reference_matching(&name, commit, true, base, &format!("fermata: {subject}"));
    match moved {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.code(), ErrorCode::Modified | ErrorCode::NotFound) => {
            Err(CommitError::Moved {
                branch: branch.to_string(),
                expected: base,
                found: repo
                    .refname_to_id(&name)
                    .map_or_else(|_| "nothing (deleted)".into(), |o| o.to_string()),
            })
        }
        Err(e) => Err(git(repo_dir, format!("update {name}"))(e)),
    }
    .map(|_| commit)
}

/// A relative path of plain components: no `..`, no `.git`, no empty part.
fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.eq_ignore_ascii_case(".git"))
}

/// The newest of the last `limit` commits of `branch` (first parents) whose
/// trailers name this step; `batch` `None` matches commits without a batch.
pub fn find_step(
    repo_dir: &Path,
    branch: &str,
    activation: &str,
    stage: &str,
    batch: Option<usize>,
    limit: usize,
) -> Result<Option<Oid>, CommitError> {
    let repo = Repository::open(repo_dir).map_err(git(repo_dir, "open"))?;
    let head = branch_head(&repo, repo_dir, branch)?;
    let mut walk = repo.revwalk().map_err(git(repo_dir, "walk"))?;
    walk.simplify_first_parent()
        .map_err(git(repo_dir, "walk"))?;
    walk.push(head).map_err(git(repo_dir, "walk"))?;
    let batch = batch.map(|n| n.to_string());
    for oid in walk.take(limit) {
        let oid = oid.map_err(git(repo_dir, "walk"))?;
        let commit = repo
            .find_commit(oid)
            .map_err(git(repo_dir, format!("read commit {oid}")))?;
        let Ok(trailers) = git2::message_trailers_strs(commit.message().unwrap_or_default()) else {
            continue;
        };
        let mut found: BTreeMap<&str, &str> = BTreeMap::new();
        for (k, v) in trailers.iter() {
            found.entry(k).or_insert(v);
        }
        if found.get(TRAILER_ACTIVATION) == Some(&activation)
            && found.get(TRAILER_STAGE) == Some(&stage)
            && found.get(TRAILER_BATCH).copied() == batch.as_deref()
        {
            return Ok(Some(oid));
        }
    }
    Ok(None)
}

/// `ssh-keygen -Y sign -n git -f KEY` over `data`: the armored signature.
fn ssh_sign(key: &Path, data: &[u8]) -> Result<String, CommitError> {
    let fail = |message: String| CommitError::Sign {
        key: key.display().to_string(),
        message,
    };
    let mut child = Command::new("ssh-keygen")
        .args(["-Y", "sign", "-n", "git", "-f"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run ssh-keygen: {e}")))?;
    // Written and read on threads: a child that blocks on one pipe must not block us.
    let mut stdin = child.stdin.take();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || {
        if let Some(stdin) = stdin.as_mut() {
            let _ = stdin.write_all(&data);
        }
    });
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut out);
            }
            out
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = match child.wait_timeout(SIGN_TIMEOUT) {
        Ok(Some(status)) => status,
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!(
                "ssh-keygen did not finish within {}s (does the key want a passphrase?)",
                SIGN_TIMEOUT.as_secs()
            )));
        }
        Err(e) => return Err(fail(format!("waiting for ssh-keygen: {e}"))),
    };
    let _ = writer.join();
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    if !status.success() {
        return Err(fail(format!(
            "ssh-keygen failed ({status}): {}",
            String::from_utf8_lossy(&err).trim()
        )));
    }
    let armor = String::from_utf8(out).map_err(|_| fail("signature is not text".into()))?;
    if !armor.starts_with("-----BEGIN SSH SIGNATURE-----") {
        return Err(fail(format!("unexpected output {:?}", armor.trim())));
    }
    Ok(armor)
}

/// The key of an armored OpenPGP secret key file that signs: the newest
/// subkey bound for signing, else the primary key if it may sign (as gpg
/// chooses). A passphrase is refused: nothing could type it.
fn pgp_signer(key: &Path) -> Result<PgpSigner, CommitError> {
    let fail = |message: String| CommitError::Sign {
        key: key.display().to_string(),
        message,
    };
    let bytes = std::fs::read(key).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let (cert, _) = SignedSecretKey::from_armor_single(bytes.as_slice())
        .map_err(|e| fail(format!("not a readable OpenPGP secret key ({e})")))?;
    let may_sign = |sigs: &[pgp::packet::Signature]| sigs.iter().any(|s| s.key_flags().sign());
    let subkey = cert
        .secret_subkeys
        .iter()
        .filter(|s| may_sign(&s.signatures))
        .max_by_key(|s| s.key.created_at());
    let primary_signs = may_sign(&cert.details.direct_signatures)
        || cert.details.users.iter().any(|u| may_sign(&u.signatures));
    let signer = match subkey {
        Some(sub) => PgpSigner::Subkey(sub.key.clone()),
        None if primary_signs => PgpSigner::Primary(cert.primary_key.clone()),
        None => return Err(fail("no key in it may sign (no signing key flag)".into())),
    };
    let locked = match &signer {
        PgpSigner::Primary(k) => k.secret_params().is_encrypted(),
        PgpSigner::Subkey(k) => k.secret_params().is_encrypted(),
    };
    if locked {
        return Err(fail(
            "the key is protected by a passphrase; export one without (fermata cannot prompt)"
                .into(),
        ));
    }
    Ok(signer)
}

/// The secret key an OpenPGP signature is made with.
enum PgpSigner {
    Primary(pgp::packet::SecretKey),
    Subkey(pgp::packet::SecretSubkey),
}

/// A detached binary OpenPGP signature over `data`, ASCII armored: what
/// git stores in a commit's `gpgsig` header.
fn pgp_sign(key: &Path, data: &[u8]) -> Result<String, CommitError> {
    let fail = |message: String| CommitError::Sign {
        key: key.display().to_string(),
        message,
    };
    let signer = pgp_signer(key)?;
    let sig = match &signer {
        PgpSigner::Primary(k) => pgp_detached(k, data),
        PgpSigner::Subkey(k) => pgp_detached(k, data),
    }
    .map_err(|e| fail(format!("cannot sign ({e})")))?;
    DetachedSignature::new(sig)
        .to_armored_string(ArmorOptions::default())
        .map_err(|e| fail(format!("cannot armor the signature ({e})")))
}

/// The signature packet: issuer fingerprint and creation time hashed, the
/// key id unhashed for v4 keys (rPGP's and gpg's defaults); the key's own
/// preferred digest. The v6 salt comes from `rand`, already a dependency.
fn pgp_detached<K: SigningKey>(
    key: &K,
    data: &[u8],
) -> pgp::errors::Result<pgp::packet::Signature> {
    let hash = key.hash_alg();
    let mut config = match key.version() {
        KeyVersion::V6 => {
            let len = hash.salt_len().unwrap_or(32);
            let mut salt = vec![0u8; len];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut salt);
            SignatureConfig::v6_with_salt(SignatureType::Binary, key.algorithm(), hash, salt)
        }
        _ => SignatureConfig::v4(SignatureType::Binary, key.algorithm(), hash),
    };
    config.hashed_subpackets = vec![
        Subpacket::regular(SubpacketData::IssuerFingerprint(key.fingerprint()))?,
        Subpacket::regular(SubpacketData::SignatureCreationTime(Timestamp::now()))?,
    ];
    if key.version() <= KeyVersion::V4 {
        config.unhashed_subpackets = vec![Subpacket::regular(SubpacketData::IssuerKeyId(
            key.legacy_key_id(),
        ))?];
    }
    config.sign(key, &Password::empty(), data)
}
