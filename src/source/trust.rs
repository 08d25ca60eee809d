//! Which commits may be staged or applied (DESIGN.md invariant 8): a commit
//! must carry either an SSH signature, in the `git` namespace, by a key of an
//! OpenSSH `allowed_signers` file, as `git verify-commit` with
//! `gpg.format=ssh` and `gpg.ssh.allowedSignersFile` would require, or an
//! OpenPGP signature by a key of a keyring (see [`gpg`]).
//!
//! Verification is done here, in process, with the `ssh-key` and `pgp`
//! crates: no `ssh-keygen`, `gpg` or `git` binary is needed on the host that
//! applies.

mod gpg;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use git2::{Oid, Repository};
use ssh_key::{HashAlg, PublicKey, SshSig};

pub use gpg::Keyring;

/// The namespace git signs commits in (`ssh-keygen -Y sign -n git`).
const GIT_NAMESPACE: &str = "git";

/// What a commit must satisfy to be loaded at all.
#[derive(Debug, Clone, Default)]
pub enum SignaturePolicy {
    /// Every commit is accepted (the default: nothing configured).
    #[default]
    None,
    /// An SSH signature by one of these keys, for namespace `git`.
    Ssh { allowed_signers: Vec<AllowedSigner> },
    /// An OpenPGP signature by a key of this keyring (shared: the policy is
    /// cloned for every check).
    Gpg { keyring: Arc<Keyring> },
}

/// One line of an `allowed_signers` file.
#[derive(Debug, Clone)]
pub struct AllowedSigner {
    /// The principals the line names (e.g. `dev@example.com`), as written.
    pub principals: Vec<String>,
    /// `namespaces="..."` patterns, when the line restricts them.
    pub namespaces: Option<Vec<String>>,
    pub key: PublicKey,
}

impl AllowedSigner {
    /// Whether the line lets its key sign in `namespace`; no restriction means any.
    fn allows(&self, namespace: &str) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|ns| ns.iter().any(|p| glob(p, namespace)))
    }
}

/// Who signed an accepted commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    /// No policy is configured: nothing was checked.
    Unchecked,
    /// A key of the allowed signers.
    Ssh {
        principals: Vec<String>,
        fingerprint: String,
    },
    /// A key of the OpenPGP keyring.
    Gpg {
        /// The primary key's fingerprint (upper-case hex, as gpg shows it).
        fingerprint: String,
        /// Its primary user id (`Name <mail>`), when it has one.
        user_id: Option<String>,
        /// The subkey's fingerprint, when a subkey signed.
        subkey: Option<String>,
    },
}

/// The key that signed a refused commit, as far as the signature tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignerSeen {
    Ssh {
        /// `SHA256:...`, as `ssh-keygen -l` prints it.
        fingerprint: String,
        /// Set when the key is listed, but not for namespace `git`.
        principal: Option<String>,
    },
    Gpg {
        /// The issuer's fingerprint (upper-case hex; a v4 fingerprint ends
        /// with the key ID), or `key ID ...` when the signature names no
        /// fingerprint.
        key: String,
        /// The user id of its certificate, when the key is in the keyring.
        user_id: Option<String>,
        in_keyring: bool,
    },
}

impl fmt::Display for SignerSeen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignerSeen::Ssh {
                fingerprint,
                principal: Some(p),
            } => write!(
                f,
                "{fingerprint} ({p}, not allowed for namespace {GIT_NAMESPACE:?})"
            ),
            SignerSeen::Ssh {
                fingerprint,
                principal: None,
            } => write!(f, "{fingerprint} (not in the allowed signers)"),
            SignerSeen::Gpg {
                key,
                in_keyring: false,
                ..
            } => write!(f, "{key} (not in the trusted keys)"),
            SignerSeen::Gpg {
                key,
                user_id: Some(u),
                ..
            } => write!(f, "{key} ({u})"),
            SignerSeen::Gpg { key, .. } => write!(f, "{key}"),
        }
    }
}

/// Why a commit does not pass the policy. Every case refuses the commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UntrustedCommit {
    #[error("commit {commit} is unsigned")]
    Unsigned { commit: Oid },
    /// E.g. an SSH signature under `--verify-signatures gpg`.
    #[error("commit {commit} carries an {kind} signature, not an {expected} one")]
    WrongFormat {
        commit: Oid,
        kind: &'static str,
        expected: &'static str,
    },
    #[error("commit {commit} has a bad signature: {reason}")]
    BadSignature { commit: Oid, reason: String },
    #[error("commit {commit} is signed by an unknown key: signer seen {signer}")]
    UnknownSigner { commit: Oid, signer: SignerSeen },
    /// The key is trusted, but may not sign now: revoked, expired, or not
    /// a signing key.
    #[error("commit {commit} is signed by {signer}, which {reason}")]
    UnusableKey {
        commit: Oid,
        signer: SignerSeen,
        reason: String,
    },
    /// The commit or its repository cannot be read: it cannot be trusted either.
    #[error("cannot check the signature of commit {commit}: {reason}")]
    Unreadable { commit: Oid, reason: String },
}

/// An `allowed_signers` file or a keyring that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read {file}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Line {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{file}: not an OpenPGP public keyring ({message}); export one with `gpg --export KEYID` or `gpg --armor --export KEYID`")]
    Keyring { file: String, message: String },
    #[error("{file}: no {what} (every commit would be refused)")]
    Empty { file: String, what: &'static str },
}

impl SignaturePolicy {
    /// The SSH policy of an `allowed_signers` file.
    pub fn ssh_from_file(path: &Path) -> Result<SignaturePolicy, TrustError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TrustError::Read {
            file: file.clone(),
            source,
        })?;
        let allowed_signers = parse_allowed_signers(&text, &file)?;
        if allowed_signers.is_empty() {
            return Err(TrustError::Empty {
                file,
                what: "allowed signers",
            });
        }
        Ok(SignaturePolicy::Ssh { allowed_signers })
    }

    /// The OpenPGP policy of a keyring file: `gpg --export`, binary or
    /// armored, one key or several.
    pub fn gpg_from_file(path: &Path) -> Result<SignaturePolicy, TrustError> {
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| TrustError::Read {
            file: file.clone(),
            source,
        })?;
        let keyring = Keyring::parse(&bytes).map_err(|message| TrustError::Keyring {
            file: file.clone(),
            message,
        })?;
        if keyring.is_empty() {
            return Err(TrustError::Empty {
                file,
                what: "OpenPGP public keys",
            });
        }
        Ok(SignaturePolicy::Gpg {
            keyring: Arc::new(keyring),
        })
    }

    /// Checks `commit` against the policy; `Ok` means it may be loaded.
    /// `now` is when key expiry is judged, as `git verify-commit` judges it.
    pub fn verify(
        &self,
        repo: &Repository,
        commit: Oid,
        now: DateTime<Utc>,
    ) -> Result<Signer, UntrustedCommit> {
        let expected = match self {
            SignaturePolicy::None => return Ok(Signer::Unchecked),
            SignaturePolicy::Ssh { .. } => "SSH",
            SignaturePolicy::Gpg { .. } => "OpenPGP",
        };
        let (signature, signed) = match repo.extract_signature(&commit, None) {
            Ok(x) => x,
            Err(e) if e.code() == git2::ErrorCode::NotFound && repo.find_commit(commit).is_ok() => {
                return Err(UntrustedCommit::Unsigned { commit })
            }
            Err(e) => {
                return Err(UntrustedCommit::Unreadable {
                    commit,
                    reason: e.message().to_string(),
                })
            }
        };
        let armor = String::from_utf8_lossy(&signature);
        let armor = armor.trim_start();
        let kind = if armor.starts_with("-----BEGIN SSH SIGNATURE-----") {
            "SSH"
        } else if armor.starts_with("-----BEGIN PGP SIGNATURE-----") {
            "OpenPGP"
        } else if armor.starts_with("-----BEGIN SIGNED MESSAGE-----") {
            "X.509"
        } else {
            "unknown"
        };
        if kind != expected {
            return Err(UntrustedCommit::WrongFormat {
                commit,
                kind,
                expected,
            });
        }
        match self {
            SignaturePolicy::None => Ok(Signer::Unchecked),
            SignaturePolicy::Ssh { allowed_signers } => {
                verify_ssh(allowed_signers, commit, armor, &signed)
            }
            SignaturePolicy::Gpg { keyring } => gpg::verify(keyring, commit, armor, &signed, now),
        }
    }
}

/// An SSH signature (`ssh-keygen -Y sign -n git`) by one of `allowed_signers`.
fn verify_ssh(
    allowed_signers: &[AllowedSigner],
    commit: Oid,
    armor: &str,
    signed: &[u8],
) -> Result<Signer, UntrustedCommit> {
    let bad = |reason: String| UntrustedCommit::BadSignature { commit, reason };
    let sig = SshSig::from_pem(armor.as_bytes()).map_err(|e| bad(e.to_string()))?;
    if sig.namespace() != GIT_NAMESPACE {
        return Err(bad(format!(
            "made for namespace {:?}, not {GIT_NAMESPACE:?}",
            sig.namespace()
        )));
    }
    let key = PublicKey::from(sig.public_key().clone());
    // Checked before trust: an unverified signature proves no signer.
    key.verify(GIT_NAMESPACE, signed, &sig)
        .map_err(|e| bad(format!("does not match the commit ({e})")))?;
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    let listed: Vec<&AllowedSigner> = allowed_signers
        .iter()
        .filter(|a| a.key.key_data() == key.key_data())
        .collect();
    match listed.iter().find(|a| a.allows(GIT_NAMESPACE)) {
        Some(a) => Ok(Signer::Ssh {
            principals: a.principals.clone(),
            fingerprint,
        }),
        None => Err(UntrustedCommit::UnknownSigner {
            commit,
            signer: SignerSeen::Ssh {
                fingerprint,
                principal: listed.first().map(|a| a.principals.join(",")),
            },
        }),
    }
}

/// Parses an OpenSSH `allowed_signers` file (`ssh-keygen(1)`, section
/// ALLOWED SIGNERS): `principals [options] keytype base64key [comment]`.
/// `file` names it in errors.
pub fn parse_allowed_signers(text: &str, file: &str) -> Result<Vec<AllowedSigner>, TrustError> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |message: String| TrustError::Line {
            file: file.to_string(),
            line: n + 1,
            message,
        };
        out.push(parse_line(line).map_err(err)?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<AllowedSigner, String> {
    let fields = split_fields(line)?;
    let principals = fields.first().ok_or("no principals")?;
    let principals: Vec<String> = unquote(principals)
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    if principals.is_empty() {
        return Err("no principals".to_string());
    }
    // The options field is optional: whatever stands where the key type
    // would is taken as options when it is not a key type.
    let (options, rest) = match fields.get(1) {
        Some(f) if !is_key_type(f) => (Some(f.as_str()), &fields[2..]),
        _ => (None, fields.get(1..).unwrap_or_default()),
    };
    let (Some(kind), Some(data)) = (rest.first(), rest.get(1)) else {
        return Err("expected `principals [options] keytype base64key [comment]`".to_string());
    };
    let key = PublicKey::from_openssh(&format!("{kind} {data}"))
        .map_err(|e| format!("invalid {kind} key: {e}"))?;
    let mut namespaces = None;
    for opt in options.map(split_options).unwrap_or_default() {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n.to_ascii_lowercase(), Some(unquote(v))),
            None => (opt.to_ascii_lowercase(), None),
        };
        match (name.as_str(), value) {
            ("namespaces", Some(v)) => {
                namespaces = Some(v.split(',').map(str::to_string).collect());
            }
            ("namespaces", None) => return Err("namespaces needs a value".to_string()),
            // Ignoring these would trust more than the file says: refused
            // until they are implemented.
            ("cert-authority" | "valid-after" | "valid-before", _) => {
                return Err(format!("option {name} is not supported yet"));
            }
            _ => {}
        }
    }
    Ok(AllowedSigner {
        principals,
        namespaces,
        key,
    })
}

fn is_key_type(s: &str) -> bool {
    s.starts_with("ssh-") || s.starts_with("ecdsa-sha2-") || s.starts_with("sk-")
}

/// Whitespace-separated fields; whitespace inside double quotes does not split.
fn split_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    fields.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote".to_string());
    }
    if !cur.is_empty() {
        fields.push(cur);
    }
    Ok(fields)
}

/// Comma-separated options; commas inside double quotes do not split.
fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().filter(|o| !o.is_empty()).collect()
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

/// OpenSSH's pattern match: `*` any run, `?` one character.
fn glob(pattern: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(c) if *c == '?' || *c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti";

    fn parse(text: &str) -> Result<Vec<AllowedSigner>, TrustError> {
        parse_allowed_signers(text, "allowed_signers")
    }

    #[test]
    fn good_lines_comments_and_blank_lines() {
        let text = format!(
            "# trusted deployers\n\n\
             dev@example.com {KEY} laptop\n\
             a@x,b@x namespaces=\"git,file\" {KEY}\n\
             \"ops team@x\" cert-ok,namespaces=\"file\" {KEY} comment with spaces\n"
        );
        let signers = parse(&text).expect("parses");
        assert_eq!(signers.len(), 3);
        assert_eq!(signers[0].principals, vec!["dev@example.com"]);
        assert!(signers[0].namespaces.is_none() && signers[0].allows("git"));
        assert_eq!(signers[1].principals, vec!["a@x", "b@x"]);
        assert_eq!(
            signers[1].namespaces.as_deref(),
            Some(&["git".to_string(), "file".to_string()][..])
        );
        assert!(signers[1].allows("git"));
        assert_eq!(signers[2].principals, vec!["ops team@x"]);
        assert!(
            !signers[2].allows("git"),
            "namespaces=\"file\" excludes git"
        );
        assert_eq!(
            signers[0].key.fingerprint(HashAlg::Sha256).to_string(),
            signers[1].key.fingerprint(HashAlg::Sha256).to_string()
        );
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        for (text, needle) in [
            (format!("# ok\n{KEY}\n"), "allowed_signers:2:"),
            (
                "dev@x ssh-ed25519 AAAAnotbase64!\n".to_string(),
                "allowed_signers:1: invalid ssh-ed25519 key",
            ),
            ("\n\ndev@x\n".to_string(), "allowed_signers:3: expected"),
            (
                format!("dev@x namespaces=\"git {KEY}\n"),
                "allowed_signers:1: unterminated quote",
            ),
            (
                format!("dev@x cert-authority {KEY}\n"),
                "allowed_signers:1: option cert-authority is not supported",
            ),
            (
                format!("dev@x valid-before=\"20300101\" {KEY}\n"),
                "not supported",
            ),
        ] {
            let e = parse(&text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(needle), "{text:?}: {e:?} lacks {needle:?}");
        }
    }

    #[test]
    fn namespace_patterns() {
        assert!(glob("git", "git"));
        assert!(glob("g*", "git"));
        assert!(glob("?it", "git"));
        assert!(glob("*", "git"));
        assert!(!glob("file", "git"));
        assert!(!glob("gi", "git"));
        assert!(!glob("git?", "git"));
    }

    #[test]
    fn empty_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("allowed_signers");
        std::fs::write(&p, "# nobody\n").expect("write");
        let e = SignaturePolicy::ssh_from_file(&p)
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("no allowed signers")));
    }

    #[test]
    fn keyring_files_name_themselves_in_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = |name: &str, content: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, content).expect("write");
            SignaturePolicy::gpg_from_file(&p)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let e = error("empty.gpg", b"");
        assert!(
            e.ends_with("empty.gpg: no OpenPGP public keys (every commit would be refused)"),
            "{e}"
        );
        let e = error("signers", b"dev@x ssh-ed25519 AAAA\n");
        assert!(
            e.contains("signers: not an OpenPGP public keyring ("),
            "{e}"
        );
        assert!(e.contains("gpg --export"), "{e}");
        let e = SignaturePolicy::gpg_from_file(&dir.path().join("missing.gpg"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("cannot read") && e.contains("missing.gpg"),
            "{e}"
        );
    }

    #[test]
    fn signers_seen_say_what_is_known() {
        let unknown = SignerSeen::Gpg {
            key: "ABCD".to_string(),
            user_id: None,
            in_keyring: false,
        };
        assert_eq!(unknown.to_string(), "ABCD (not in the trusted keys)");
        let known = SignerSeen::Gpg {
            key: "ABCD".to_string(),
            user_id: Some("Dev <dev@x>".to_string()),
            in_keyring: true,
        };
        assert_eq!(known.to_string(), "ABCD (Dev <dev@x>)");
        let wrong = UntrustedCommit::WrongFormat {
            commit: Oid::ZERO_SHA1,
            kind: "SSH",
            expected: "OpenPGP",
        };
        assert!(wrong
            .to_string()
            .ends_with("carries an SSH signature, not an OpenPGP one"));
    }
}
