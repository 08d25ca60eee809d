//! OpenPGP signing of campaign commits: a promote signed with a secret key
//! exported by real `gpg` passes the project's OpenPGP verifier and
//! `git verify-commit`; `--signing-key` tells SSH from OpenPGP by content
//! and refuses a file that is neither, or a key with a passphrase, naming it.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;

use fermata::campaign::commit::{head, promote, CommitError, Signing};
use fermata::source::SignaturePolicy;
use util::TestRepo;

/// A `GNUPGHOME` of its own (gpg wants it private), its agent stopped on drop.
struct GnuPg {
    dir: tempfile::TempDir,
}

impl GnuPg {
    fn new() -> GnuPg {
        let dir = tempfile::tempdir().expect("GNUPGHOME");
        let mut perms = std::fs::metadata(dir.path()).expect("stat").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o700);
        std::fs::set_permissions(dir.path(), perms).expect("chmod");
        GnuPg { dir }
    }

    fn home(&self) -> &Path {
        self.dir.path()
    }

    /// `gpg --batch ARGS` with `passphrase`; panics on failure.
    fn gpg_with(&self, passphrase: &str, args: &[&str]) -> Vec<u8> {
        let out = Command::new("gpg")
            .env("GNUPGHOME", self.home())
            .args(["--batch", "--no-tty", "--pinentry-mode", "loopback"])
            .args(["--passphrase", passphrase])
            .args(args)
            .output()
            .expect("gpg runs");
        assert!(out.status.success(), "gpg {args:?}: {out:?}");
        out.stdout
    }

    fn gpg(&self, args: &[&str]) -> Vec<u8> {
        self.gpg_with("", args)
    }

    /// The fingerprint of the primary key of `uid`.
    fn fingerprint(&self, uid: &str) -> String {
        let listing =
            String::from_utf8_lossy(&self.gpg(&["--with-colons", "--list-keys", uid])).into_owned();
        listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').find(|f| !f.is_empty()))
            .expect("a fingerprint")
            .to_string()
    }

    /// `gpg --armor --export-secret-keys` of `uid` into `file`.
    fn export_secret(&self, passphrase: &str, uid: &str, file: &Path) {
        let armor = self.gpg_with(passphrase, &["--armor", "--export-secret-keys", uid]);
        std::fs::write(file, armor).expect("secret key file");
    }

    /// `gpg --export` (the public keyring `--trusted-keys` takes) into `file`.
    fn export_public(&self, file: &Path) {
        std::fs::write(file, self.gpg(&["--export"])).expect("keyring");
    }
}

impl Drop for GnuPg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home())
            .args(["--kill", "all"])
            .output();
    }
}

/// One commit on `main` signed with `signing`, editing a file.
fn signed_promote(repo: &TestRepo, signing: &Signing) -> git2::Oid {
    let base = head(repo.path(), "main").expect("head");
    let edits = [("signed.txt".to_string(), "signed\n".to_string())];
    promote(
        repo.path(),
        "main",
        base,
        &edits,
        "signed step",
        Some(signing),
    )
    .expect("promote")
}

#[test]
fn an_openpgp_signed_promote_passes_the_verifier_and_git() {
    // How the key signs: the primary key (ed25519, RSA), or a subkey bound
    // for signing under a certify-only primary (gpg then signs with the subkey).
    let cases: [(&str, &[&[&str]]); 3] = [
        (
            "ed25519 primary",
            &[&[
                "--quick-gen-key",
                "Ed <ed@fermata.invalid>",
                "ed25519",
                "sign",
                "never",
            ]],
        ),
        (
            "rsa primary",
            &[&[
                "--quick-gen-key",
                "Rsa <rsa@fermata.invalid>",
                "rsa2048",
                "sign",
                "never",
            ]],
        ),
        (
            "signing subkey",
            &[
                &[
                    "--quick-gen-key",
                    "Sub <sub@fermata.invalid>",
                    "ed25519",
                    "cert",
                    "never",
                ],
                &["--quick-add-key", "FPR", "ed25519", "sign", "never"],
            ],
        ),
    ];
    for (what, steps) in cases {
        let gnupg = GnuPg::new();
        let uid = steps[0][1];
        for args in steps {
            let fpr = if args.contains(&"FPR") {
                gnupg.fingerprint(uid)
            } else {
                String::new()
            };
            let args: Vec<&str> = args
                .iter()
                .map(|a| if *a == "FPR" { fpr.as_str() } else { a })
                .collect();
            gnupg.gpg(&args);
        }
        let key = gnupg.home().join("signing.asc");
        gnupg.export_secret("", uid, &key);
        let keyring = gnupg.home().join("trusted.gpg");
        gnupg.export_public(&keyring);

        let signing = Signing::from_key_file(&key).expect("an OpenPGP key");
        assert_eq!(signing, Signing::Gpg { key: key.clone() }, "{what}");
        let repo = TestRepo::example();
        let oid = signed_promote(&repo, &signing);

        let policy = SignaturePolicy::gpg_from_file(&keyring).expect("policy");
        let git = git2::Repository::open(repo.path()).expect("open");
        policy
            .verify(&git, oid, chrono::Utc::now())
            .unwrap_or_else(|e| panic!("{what}: the project's verifier refused it: {e}"));
        let out = Command::new("git")
            .current_dir(repo.path())
            .env("GNUPGHOME", gnupg.home())
            .args(["verify-commit", &oid.to_string()])
            .output()
            .expect("git runs");
        assert!(out.status.success(), "{what}: git verify-commit: {out:?}");

        // Not a signature git would accept from anyone else's keyring.
        let other = GnuPg::new();
        other.gpg(&[
            "--quick-gen-key",
            "Other <o@fermata.invalid>",
            "ed25519",
            "sign",
        ]);
        let other_ring = other.home().join("other.gpg");
        other.export_public(&other_ring);
        let refused = SignaturePolicy::gpg_from_file(&other_ring)
            .expect("policy")
            .verify(&git, oid, chrono::Utc::now());
        assert!(refused.is_err(), "{what}: signed by an unknown key");
    }
}

#[test]
fn an_ssh_key_file_is_told_apart_from_an_openpgp_one() {
    let dir = tempfile::tempdir().expect("dir");
    let key = dir.path().join("id_ed25519");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "fermata", "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen runs");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        Signing::from_key_file(&key).expect("an SSH key"),
        Signing::Ssh { key }
    );
}

/// The error `Signing::from_key_file` gives for a file holding `text`.
fn refusal(dir: &Path, name: &str, text: &[u8]) -> (PathBuf, String) {
    let file = dir.join(name);
    std::fs::write(&file, text).expect("write");
    let err = Signing::from_key_file(&file).expect_err("refused");
    assert!(matches!(err, CommitError::Sign { .. }), "{err}");
    (file, err.to_string())
}

#[test]
fn a_key_file_that_is_neither_kind_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().expect("dir");
    let gnupg = GnuPg::new();
    gnupg.gpg(&[
        "--quick-gen-key",
        "P <p@fermata.invalid>",
        "ed25519",
        "sign",
    ]);
    let public = gnupg.gpg(&["--armor", "--export"]);
    for (name, text, needle) in [
        ("notes.txt", b"just some text\n".as_slice(), "neither"),
        ("empty", b"".as_slice(), "neither"),
        // The public half is not a signing key.
        ("public.asc", public.as_slice(), "neither"),
        (
            "broken.asc",
            b"-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nnot base64 !!\n-----END PGP PRIVATE KEY BLOCK-----\n"
                .as_slice(),
            "not a readable OpenPGP secret key",
        ),
    ] {
        let (file, err) = refusal(dir.path(), name, text);
        assert!(err.contains(&file.display().to_string()), "{name}: {err}");
        assert!(err.contains(needle), "{name}: {err}");
    }
    let missing = dir.path().join("missing.asc");
    let err = Signing::from_key_file(&missing).expect_err("refused");
    assert!(err.to_string().contains("missing.asc"), "{err}");

    // The CLI refuses it before touching the repository.
    let repo = TestRepo::example();
    let before = head(repo.path(), "main").expect("head");
    let (bad, _) = refusal(dir.path(), "bad.key", b"hello\n");
    let out = Command::new(env!("CARGO_BIN_EXE_fermata"))
        .args(["campaign", "activate", "rollout", "--name", "a1", "--repo"])
        .arg(repo.path())
        .arg("--signing-key")
        .arg(&bad)
        .output()
        .expect("fermata runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr.contains("--signing-key"), "{stderr}");
    assert!(stderr.contains(&bad.display().to_string()), "{stderr}");
    assert_eq!(head(repo.path(), "main").expect("head"), before);
}

#[test]
fn a_passphrase_protected_openpgp_key_is_refused() {
    let gnupg = GnuPg::new();
    let uid = "Locked <locked@fermata.invalid>";
    gnupg.gpg_with(
        "s3cret",
        &["--quick-gen-key", uid, "ed25519", "sign", "never"],
    );
    let key = gnupg.home().join("locked.asc");
    gnupg.export_secret("s3cret", uid, &key);
    let err = Signing::from_key_file(&key).expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("passphrase"), "{text}");
    assert!(text.contains(&key.display().to_string()), "{text}");

    // Built by hand, the signing fails the same way and leaves the branch.
    let repo = TestRepo::example();
    let base = head(repo.path(), "main").expect("head");
    let signing = Signing::Gpg { key: key.clone() };
    let err = promote(repo.path(), "main", base, &[], "m", Some(&signing)).expect_err("refused");
    assert!(err.to_string().contains("passphrase"), "{err}");
    assert_eq!(head(repo.path(), "main").expect("head"), base);
}
