//! libgit2's process-wide start, made cheap for a restart.
//!
//! libgit2 (built against OpenSSL for `https` remotes) creates its TLS
//! context when it starts, and `SSL_CTX_set_default_verify_paths` then
//! parses the whole CA bundle file: about 140 certificates, 19 ms of a
//! 24 ms restart measured by fermata-bench, paid before the first fetch even
//! of a `file://` remote. OpenSSL's other default, the hashed certificate
//! directory (`/etc/ssl/certs/<subject hash>.0`), is read lazily: one file
//! per issuer, when a server's certificate is verified. So when the user has
//! set neither `SSL_CERT_FILE` nor `SSL_CERT_DIR` and the system's
//! certificate directory has hashed names, libgit2 starts against that
//! directory alone, trusting the same system certificates. Afterwards the
//! environment is what git2 itself would have left (the bundle's path, found
//! by the same probe), so child processes see no difference.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// What libgit2 is started against, and what the environment holds after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// `SSL_CERT_FILE` and `SSL_CERT_DIR` while libgit2 starts.
    pub during: (PathBuf, PathBuf),
    /// `SSL_CERT_FILE` once it has started (the bundle git2 would have set).
    pub after: Option<PathBuf>,
}

/// Starts libgit2 (once per process; later calls do nothing). Call it
/// before any other thread runs: it sets environment variables.
pub fn start() {
    start_with(
        std::env::var_os(openssl_probe::ENV_CERT_FILE),
        std::env::var_os(openssl_probe::ENV_CERT_DIR),
        openssl_probe::probe(),
    );
}

/// [`start`] with the environment and the probe's result given: for tests,
/// which cannot change what the system holds.
pub fn start_with(
    file: Option<OsString>,
    dir: Option<OsString>,
    probed: openssl_probe::ProbeResult,
) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let plan = plan(
            file.is_some() || dir.is_some(),
            probed.cert_file,
            probed.cert_dir.filter(|d| hashed(d)),
        );
        if let Some(p) = &plan {
            std::env::set_var(openssl_probe::ENV_CERT_FILE, &p.during.0);
            std::env::set_var(openssl_probe::ENV_CERT_DIR, &p.during.1);
        }
        // The default already; called for libgit2's start, which reads the
        // variables above.
        git2::opts::enable_caching(true);
        // What git2 would have left: the bundle it found, or nothing.
        match plan.map(|p| p.after) {
            Some(Some(after)) => std::env::set_var(openssl_probe::ENV_CERT_FILE, after),
            Some(None) => std::env::remove_var(openssl_probe::ENV_CERT_FILE),
            None => {}
        }
    });
}

/// The decision, pure: the lazy start only when the user chose nothing and
/// a hashed directory exists. `/dev/null` stands for "no bundle": it exists
/// (the probe keeps what exists) and holds no certificate.
pub fn plan(user_set: bool, bundle: Option<PathBuf>, hashed_dir: Option<PathBuf>) -> Option<Start> {
    if user_set {
        return None;
    }
    let dir = hashed_dir?;
    Some(Start {
        during: (PathBuf::from("/dev/null"), dir),
        after: bundle,
    })
}

/// Whether `dir` holds OpenSSL's hashed names (`c_rehash`,
/// `update-ca-certificates`): eight hex digits, a dot, a number.
fn hashed(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            return false;
        };
        match name.split_once('.') {
            Some((hash, n)) => {
                hash.len() == 8
                    && hash.bytes().all(|b| b.is_ascii_hexdigit())
                    && !n.is_empty()
                    && n.bytes().all(|b| b.is_ascii_digit())
            }
            None => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lazy_start_only_when_the_user_chose_nothing_and_a_hashed_directory_exists() {
        let bundle = Some(PathBuf::from("/etc/ssl/cert.pem"));
        let dir = Some(PathBuf::from("/etc/ssl/certs"));
        let lazy = Some(Start {
            during: ("/dev/null".into(), "/etc/ssl/certs".into()),
            after: bundle.clone(),
        });
        let cases = [
            (false, bundle.clone(), dir.clone(), lazy),
            (true, bundle.clone(), dir.clone(), None),
            (false, bundle.clone(), None, None),
            (
                false,
                None,
                dir.clone(),
                Some(Start {
                    during: ("/dev/null".into(), "/etc/ssl/certs".into()),
                    after: None,
                }),
            ),
        ];
        for (user_set, bundle, dir, want) in cases {
            assert_eq!(
                plan(user_set, bundle.clone(), dir.clone()),
                want,
                "{user_set} {bundle:?} {dir:?}"
            );
        }
    }

    #[test]
    fn only_openssl_hashed_names_count() {
        let t = tempfile::tempdir().unwrap();
        assert!(!hashed(t.path()));
        std::fs::write(t.path().join("ca-certificates.crt"), "").unwrap();
        std::fs::write(t.path().join("0123abcd.pem"), "").unwrap();
        std::fs::write(t.path().join("0123abcd."), "").unwrap();
        std::fs::write(t.path().join("0123abc.0"), "").unwrap();
        assert!(!hashed(t.path()));
        std::fs::write(t.path().join("0123abCD.1"), "").unwrap();
        assert!(hashed(t.path()));
        assert!(!hashed(&t.path().join("missing")));
    }
}
