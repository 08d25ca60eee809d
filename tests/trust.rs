//! `--verify-signatures ssh`: only commits signed by a key of the
//! allowed signers are staged or applied (DESIGN.md invariant 8). Real
//! commits, signed by `git commit -S` with real `ssh-keygen` keys.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;

use util::{git, TestRepo};

const NOW: &str = "2026-11-21T02:30:00Z";

/// A repository, a state dir, a trusted and an unknown key.
struct Setup {
    repo: TestRepo,
    state: tempfile::TempDir,
    keys: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let keys = tempfile::tempdir().expect("key dir");
        for name in ["trusted", "unknown"] {
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
                .arg(keys.path().join(name))
                .output()
                .expect("ssh-keygen runs");
            assert!(out.status.success(), "{out:?}");
        }
        let public = std::fs::read_to_string(keys.path().join("trusted.pub")).expect("pub");
        let public = public
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        std::fs::write(
            keys.path().join("allowed_signers"),
            format!("# who may deploy\ntest@fermata namespaces=\"git\" {public} test\n"),
        )
        .expect("allowed_signers");
        Setup {
            repo: TestRepo::new(),
            state: tempfile::tempdir().expect("state dir"),
            keys,
        }
    }

    fn key(&self, name: &str) -> PathBuf {
        self.keys.path().join(name)
    }

    /// Commits everything, signed with key `name`; returns the commit id.
    fn signed_commit(&self, name: &str, msg: &str) -> String {
        let key = self.key(name);
        let key = key.to_str().expect("utf-8 path");
        self.repo.git(&["add", "-A"]);
        let out = Command::new("git")
            .current_dir(self.repo.path())
            .args(["-c", "user.name=fermata-test"])
            .args(["-c", "user.email=test@fermata.invalid"])
            .args(["-c", "gpg.format=ssh", "-c", "commit.gpgsign=true"])
            .args(["-c", &format!("user.signingkey={key}")])
            .args(["commit", "-q", "-S", "--allow-empty", "-m", msg])
            .output()
            .expect("git runs");
        assert!(out.status.success(), "signed commit: {out:?}");
        self.repo.git(&["rev-parse", "HEAD"])
    }

    fn fleet(&self, tag: &str) -> &Self {
        util::minimal(&self.repo).write(
            "symphony.yaml",
            &util::SYMPHONY.replace("value: v1", &format!("value: {tag}")),
        );
        self
    }

    fn run(&self) -> util::Run {
        let signers = self.key("allowed_signers");
        util::fermata_at(
            self.state.path(),
            &[
                "run",
                "--once",
                "--repo",
                self.repo.path().to_str().expect("utf-8 path"),
                "--branch",
                "main",
                "--verify-signatures",
                "ssh",
                "--trusted-keys",
                signers.to_str().expect("utf-8 path"),
            ],
            NOW,
            &[],
        )
    }

    fn current(&self) -> Option<String> {
        let p = self.state.path().join("targets/site/shop/app/current");
        std::fs::read_to_string(p.join("manifest.yaml")).ok()
    }

    fn status(&self) -> String {
        git(
            self.repo.path(),
            &["show", "fermata/status:main/shop/app.yaml"],
        )
    }

    /// A trusted, applied `v1`: the state every refusal must leave alone.
    fn applied_v1(&self) {
        self.fleet("v1").signed_commit("trusted", "v1");
        let r = self.run();
        assert_eq!(r.code, 0, "{r:?}");
        assert!(r.stdout.contains("installed"), "{r:?}");
        assert!(self.current().is_some_and(|c| c.contains("tag: v1")));
    }

    /// The refusal of HEAD, as `run` and status show it.
    fn assert_refused(&self, r: &util::Run, needle: &str) {
        let head = git(self.repo.path(), &["rev-parse", "HEAD"]);
        assert_eq!(r.code, 1, "{r:?}");
        assert!(r.stdout.contains("UntrustedCommit"), "{r:?}");
        assert!(r.stdout.contains(needle), "{needle:?} missing: {r:?}");
        assert!(
            r.stdout.contains(&format!("error: commit {head} ")),
            "the error line names the commit: {r:?}"
        );
        assert!(
            self.current().is_some_and(|c| c.contains("tag: v1")),
            "the applied state stays"
        );
        let staged = self.state.path().join("targets/site/shop/app/staged");
        let staged = std::fs::read_to_string(staged.join("manifest.yaml")).unwrap_or_default();
        assert!(!staged.contains("tag: v2"), "nothing of it is staged");
        let status = self.status();
        assert!(status.contains("state: failed"), "{status}");
        assert!(status.contains("code: UntrustedCommit"), "{status}");
        assert!(status.contains(&head), "{status}");
        assert!(status.contains(needle), "{status}");
    }
}

/// `SHA256:...` of a public key file, as `ssh-keygen -l` prints it.
fn fingerprint(public: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(public)
        .output()
        .expect("ssh-keygen runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .nth(1)
        .expect("a fingerprint")
        .to_string()
}

#[test]
fn trusted_commit_applies_unsigned_one_is_refused() {
    let s = Setup::new();
    s.applied_v1();

    s.fleet("v2");
    s.repo.commit("unsigned v2");
    let r = s.run();
    s.assert_refused(&r, "is unsigned");

    // Signed again by the trusted key: it proceeds as without a policy.
    s.signed_commit("trusted", "v2, signed");
    let r = s.run();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(s.current().is_some_and(|c| c.contains("tag: v2")));
    assert!(s.status().contains("state: installed"));
}

#[test]
fn unknown_key_is_refused_naming_its_fingerprint() {
    let s = Setup::new();
    s.applied_v1();
    s.fleet("v2").signed_commit("unknown", "v2 by a stranger");
    let r = s.run();
    let seen = fingerprint(&s.key("unknown.pub"));
    assert!(seen.starts_with("SHA256:"), "{seen}");
    s.assert_refused(&r, &format!("signed by an unknown key: signer seen {seen}"));
}

#[test]
fn tampered_commit_is_refused_as_bad_signature() {
    let s = Setup::new();
    s.applied_v1();
    s.fleet("v2").signed_commit("trusted", "v2 as reviewed");
    // Same tree, same signature header, another message: the signature no
    // longer covers what the commit says.
    let raw = git(s.repo.path(), &["cat-file", "commit", "HEAD"]);
    assert!(raw.contains("-----BEGIN SSH SIGNATURE-----"), "{raw}");
    let forged = raw.replace("v2 as reviewed", "v2 as not reviewed") + "\n";
    let id = hash_commit(s.repo.path(), &forged);
    git(s.repo.path(), &["update-ref", "refs/heads/main", &id]);
    let r = s.run();
    s.assert_refused(&r, "has a bad signature");
}

#[test]
fn openpgp_signature_is_not_an_ssh_one() {
    let s = Setup::new();
    s.applied_v1();
    s.fleet("v2");
    s.repo.commit("v2");
    let raw = git(s.repo.path(), &["cat-file", "commit", "HEAD"]);
    let (headers, message) = raw.split_once("\n\n").expect("a commit");
    let forged = format!(
        "{headers}\ngpgsig -----BEGIN PGP SIGNATURE-----\n \n iQEzBAABCAAdFiEE\n -----END PGP SIGNATURE-----\n\n{message}\n"
    );
    let id = hash_commit(s.repo.path(), &forged);
    git(s.repo.path(), &["update-ref", "refs/heads/main", &id]);
    let r = s.run();
    s.assert_refused(&r, "carries an OpenPGP signature, not an SSH one");
}

#[test]
fn trusted_keys_are_required_and_checked() {
    let s = Setup::new();
    s.fleet("v1").signed_commit("trusted", "v1");
    let repo = s.repo.path().to_str().expect("utf-8 path");
    let r = util::fermata_at(
        s.state.path(),
        &[
            "run",
            "--once",
            "--repo",
            repo,
            "--verify-signatures",
            "ssh",
        ],
        NOW,
        &[],
    );
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--trusted-keys"), "{r:?}");

    let bad = s.keys.path().join("bad_signers");
    std::fs::write(&bad, "# header\ntest@fermata ssh-ed25519 notakey\n").expect("write");
    let r = util::fermata_at(
        s.state.path(),
        &[
            "run",
            "--once",
            "--repo",
            repo,
            "--verify-signatures",
            "ssh",
            "--trusted-keys",
            bad.to_str().expect("utf-8 path"),
        ],
        NOW,
        &[],
    );
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("bad_signers:2:"), "{r:?}");
    assert!(s.current().is_none(), "nothing applied");
}

/// Writes a raw commit object; returns its id.
fn hash_commit(repo: &Path, raw: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("git")
        .current_dir(repo)
        .args(["hash-object", "-t", "commit", "-w", "--stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("git runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(raw.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("git hash-object");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
