//! `--verify-signatures ssh|gpg`: only commits signed by a key of the
//! allowed signers or the keyring are staged or applied (DESIGN.md
//! invariant 8). Real commits, signed by `git commit -S` with real
//! `ssh-keygen` keys and real `gpg` keys (each in its own `GNUPGHOME`).

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
        self.run_with("ssh", &self.key("allowed_signers"))
    }

    /// One pass with `--verify-signatures FORMAT --trusted-keys KEYS`.
    fn run_with(&self, format: &str, keys: &Path) -> util::Run {
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
                format,
                "--trusted-keys",
                keys.to_str().expect("utf-8 path"),
            ],
            NOW,
            &[],
        )
    }

    /// The `GNUPGHOME` of gpg identity `name`, made on first use; `gpg.conf`
    /// lines (e.g. `faked-system-time`) go in only then.
    fn gnupg_home(&self, name: &str, conf: &str) -> PathBuf {
        let home = self.keys.path().join(format!("gnupg-{name}"));
        if !home.exists() {
            std::fs::create_dir(&home).expect("GNUPGHOME");
            let mut perms = std::fs::metadata(&home).expect("stat").permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o700);
            std::fs::set_permissions(&home, perms).expect("chmod");
            std::fs::write(home.join("gpg.conf"), conf).expect("gpg.conf");
        }
        home
    }

    /// `gpg --batch ARGS` in the home of `name`; panics on failure.
    fn gpg(&self, name: &str, args: &[&str]) -> Vec<u8> {
        let out = Command::new("gpg")
            .env("GNUPGHOME", self.gnupg_home(name, ""))
            .args(["--batch", "--no-tty", "--passphrase", "", "--pinentry-mode"])
            .args(["loopback"])
            .args(args)
            .output()
            .expect("gpg runs");
        assert!(out.status.success(), "gpg {args:?}: {out:?}");
        out.stdout
    }

    /// A new key in the home of `name` (`ALGO USAGE EXPIRE`, as for
    /// `gpg --quick-gen-key`); returns its fingerprint.
    fn gpg_key(&self, name: &str, uid: &str, spec: [&str; 3]) -> String {
        self.gpg(name, &["--quick-gen-key", uid, spec[0], spec[1], spec[2]]);
        let listing =
            String::from_utf8_lossy(&self.gpg(name, &["--with-colons", "--list-keys", uid]))
                .into_owned();
        fingerprints(&listing)[0].clone()
    }

    /// A keyring file of the public keys of these identities' homes:
    /// `gpg --export` of each, or `--armor --export`, one after the other.
    fn keyring(&self, file: &str, names: &[&str], armor: bool) -> PathBuf {
        let mut bytes = Vec::new();
        for name in names {
            let args: &[&str] = if armor {
                &["--armor", "--export"]
            } else {
                &["--export"]
            };
            bytes.extend(self.gpg(name, args));
        }
        let path = self.keys.path().join(file);
        std::fs::write(&path, bytes).expect("keyring");
        path
    }

    /// Commits everything, signed by gpg with `key` of identity `name`.
    fn gpg_commit(&self, name: &str, key: &str, msg: &str) -> String {
        self.repo.git(&["add", "-A"]);
        let out = Command::new("git")
            .current_dir(self.repo.path())
            .env("GNUPGHOME", self.gnupg_home(name, ""))
            .args(["-c", "user.name=fermata-test"])
            .args(["-c", "user.email=test@fermata.invalid"])
            .args(["-c", "gpg.format=openpgp", "-c", "gpg.program=gpg"])
            .args(["-c", &format!("user.signingkey={key}")])
            .args(["commit", "-q", "-S", "--allow-empty", "-m", msg])
            .output()
            .expect("git runs");
        assert!(out.status.success(), "gpg-signed commit: {out:?}");
        self.repo.git(&["rev-parse", "HEAD"])
    }

    /// A trusted, applied `v1` under the OpenPGP policy.
    fn gpg_applied_v1(&self, name: &str, key: &str, keyring: &Path) {
        self.fleet("v1").gpg_commit(name, key, "v1");
        let r = self.run_with("gpg", keyring);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(r.stdout.contains("installed"), "{r:?}");
        assert!(self.current().is_some_and(|c| c.contains("tag: v1")));
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

impl Drop for Setup {
    /// gpg starts an agent per home: stop them with the test.
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.keys.path()) else {
            return;
        };
        for home in entries.flatten().map(|e| e.path()) {
            if home.join("gpg.conf").exists() {
                let _ = Command::new("gpgconf")
                    .env("GNUPGHOME", &home)
                    .args(["--kill", "all"])
                    .output();
            }
        }
    }
}

/// The `fpr` records of `gpg --with-colons` output, in order.
fn fingerprints(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.strip_prefix("fpr:"))
        .filter_map(|l| l.split(':').find(|f| !f.is_empty()))
        .map(str::to_string)
        .collect()
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

// --- OpenPGP: `--verify-signatures gpg` --------------------------------------

const ALICE: &str = "Alice Deployer <alice@fermata.invalid>";

#[test]
fn gpg_trusted_commit_applies_unsigned_and_ssh_ones_are_refused() {
    let s = Setup::new();
    let alice = s.gpg_key("alice", ALICE, ["ed25519", "sign", "never"]);
    let keyring = s.keyring("trusted.gpg", &["alice"], false);
    s.gpg_applied_v1("alice", &alice, &keyring);

    s.fleet("v2");
    s.repo.commit("unsigned v2");
    let r = s.run_with("gpg", &keyring);
    s.assert_refused(&r, "is unsigned");

    // A valid SSH signature is still not an OpenPGP one.
    s.signed_commit("trusted", "v2, ssh-signed");
    let r = s.run_with("gpg", &keyring);
    s.assert_refused(&r, "carries an SSH signature, not an OpenPGP one");

    s.gpg_commit("alice", &alice, "v2, signed");
    let r = s.run_with("gpg", &keyring);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(s.current().is_some_and(|c| c.contains("tag: v2")));
    assert!(s.status().contains("state: installed"));

    // And an OpenPGP signature under the SSH policy.
    s.fleet("v3").gpg_commit("alice", &alice, "v3");
    let r = s.run();
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stdout
            .contains("carries an OpenPGP signature, not an SSH one"),
        "{r:?}"
    );
    assert!(s.current().is_some_and(|c| c.contains("tag: v2")));
}

#[test]
fn gpg_unknown_key_is_refused_naming_it() {
    let s = Setup::new();
    let alice = s.gpg_key("alice", ALICE, ["ed25519", "sign", "never"]);
    let mallory = s.gpg_key(
        "mallory",
        "Mallory <mallory@fermata.invalid>",
        ["ed25519", "sign", "never"],
    );
    let keyring = s.keyring("trusted.asc", &["alice"], true);
    s.gpg_applied_v1("alice", &alice, &keyring);
    s.fleet("v2")
        .gpg_commit("mallory", &mallory, "v2 by a stranger");
    let r = s.run_with("gpg", &keyring);
    // The fingerprint ends with the key ID gpg shows (`using EDDSA key ...`).
    s.assert_refused(
        &r,
        &format!("signed by an unknown key: signer seen {mallory} (not in the trusted keys)"),
    );
    assert!(
        !r.stdout.contains("Mallory"),
        "the keyring does not know it: {r:?}"
    );
}

#[test]
fn gpg_tampered_commit_is_refused_as_bad_signature() {
    let s = Setup::new();
    let alice = s.gpg_key("alice", ALICE, ["ed25519", "sign", "never"]);
    let keyring = s.keyring("trusted.gpg", &["alice"], false);
    s.gpg_applied_v1("alice", &alice, &keyring);
    s.fleet("v2").gpg_commit("alice", &alice, "v2 as reviewed");
    // Same signature header, another tree: the signature no longer covers
    // what the commit deploys.
    let raw = git(s.repo.path(), &["cat-file", "commit", "HEAD"]);
    assert!(raw.contains("-----BEGIN PGP SIGNATURE-----"), "{raw}");
    let reviewed = git(s.repo.path(), &["rev-parse", "HEAD^{tree}"]);
    s.fleet("v2-evil");
    s.repo.git(&["add", "-A"]);
    let evil = git(s.repo.path(), &["write-tree"]);
    let forged = raw.replace(&reviewed, &evil) + "\n";
    let id = hash_commit(s.repo.path(), &forged);
    git(s.repo.path(), &["update-ref", "refs/heads/main", &id]);
    let r = s.run_with("gpg", &keyring);
    s.assert_refused(&r, "has a bad signature: does not match the commit");
    assert!(!s.current().is_some_and(|c| c.contains("v2-evil")));
}

#[test]
fn gpg_keyrings_with_several_keys_armored_and_binary() {
    let s = Setup::new();
    // Two keys in one home: one armored block holds both.
    let alice = s.gpg_key("team", ALICE, ["ed25519", "sign", "never"]);
    let rob = s.gpg_key(
        "team",
        "Rob RSA <rob@fermata.invalid>",
        ["rsa2048", "sign", "never"],
    );
    let carol = s.gpg_key(
        "carol",
        "Carol <carol@fermata.invalid>",
        ["ed25519", "sign", "never"],
    );
    let armored = s.keyring("team.asc", &["team", "carol"], true);
    let text = std::fs::read_to_string(&armored).expect("armored keyring");
    assert_eq!(text.matches("BEGIN PGP PUBLIC KEY BLOCK").count(), 2);
    let binary = s.keyring("team.gpg", &["team", "carol"], false);

    s.gpg_applied_v1("team", &alice, &armored);
    for (i, (home, key)) in [("team", &rob), ("carol", &carol), ("team", &alice)]
        .into_iter()
        .enumerate()
    {
        for keyring in [&binary, &armored] {
            let tag = format!(
                "v{}-{}",
                i + 2,
                keyring.extension().and_then(|e| e.to_str()).unwrap_or("")
            );
            s.fleet(&tag).gpg_commit(home, key, &tag);
            let r = s.run_with("gpg", keyring);
            assert_eq!(r.code, 0, "{tag} by {key}: {r:?}");
            assert!(
                s.current()
                    .is_some_and(|c| c.contains(&format!("tag: {tag}"))),
                "{r:?}"
            );
        }
    }
}

#[test]
fn gpg_signing_subkey_counts_as_its_primary_key() {
    let s = Setup::new();
    // A certify-only primary key, as `gpg --full-gen-key` makes by default,
    // signing through its subkey.
    let primary = s.gpg_key("alice", ALICE, ["ed25519", "cert", "never"]);
    s.gpg(
        "alice",
        &["--quick-add-key", &primary, "ed25519", "sign", "never"],
    );
    let listing =
        String::from_utf8_lossy(&s.gpg("alice", &["--with-colons", "--list-keys"])).into_owned();
    let subkey = fingerprints(&listing)[1].clone();
    assert_ne!(subkey, primary);
    let keyring = s.keyring("trusted.gpg", &["alice"], false);
    s.gpg_applied_v1("alice", &primary, &keyring);
    let raw = git(s.repo.path(), &["cat-file", "commit", "HEAD"]);
    assert!(raw.contains("gpgsig"), "{raw}");

    // Forcing the primary (`KEY!`) fails to sign at all: it may only certify.
    s.fleet("v2");
    s.repo.git(&["add", "-A"]);
    let out = Command::new("git")
        .current_dir(s.repo.path())
        .env("GNUPGHOME", s.gnupg_home("alice", ""))
        .args([
            "-c",
            "gpg.program=gpg",
            "-c",
            &format!("user.signingkey={primary}!"),
        ])
        .args(["commit", "-q", "-S", "-m", "v2 by the primary"])
        .output()
        .expect("git runs");
    assert!(
        !out.status.success(),
        "gpg signs with a certify-only key: {out:?}"
    );
}

#[test]
fn gpg_revoked_and_expired_keys_are_refused() {
    let s = Setup::new();
    let alice = s.gpg_key("alice", ALICE, ["ed25519", "sign", "never"]);
    // Created in 2020 and valid for a day: long expired at NOW.
    s.gnupg_home("old", "faked-system-time 20200101T000000\n");
    let old = s.gpg_key(
        "old",
        "Old Key <old@fermata.invalid>",
        ["ed25519", "sign", "1d"],
    );
    let revoked = s.gpg_key(
        "gone",
        "Gone Key <gone@fermata.invalid>",
        ["ed25519", "sign", "never"],
    );
    let before = s.keyring("before.gpg", &["alice", "old", "gone"], false);
    s.gpg_applied_v1("alice", &alice, &before);

    s.fleet("v2")
        .gpg_commit("old", &old, "v2 by an expired key");
    let r = s.run_with("gpg", &before);
    s.assert_refused(
        &r,
        &format!("is signed by {old} (Old Key <old@fermata.invalid>), which expired at 2020-01-0"),
    );

    // Signed while valid, revoked since (gpg's own revocation certificate).
    s.fleet("v2")
        .gpg_commit("gone", &revoked, "v2 by a key revoked later");
    let r = s.run_with("gpg", &before);
    assert_eq!(r.code, 0, "valid until the keyring says otherwise: {r:?}");
    let cert = s
        .gnupg_home("gone", "")
        .join(format!("openpgp-revocs.d/{revoked}.rev"));
    let cert = std::fs::read_to_string(cert).expect("revocation certificate");
    let cert = cert.replace(
        ":-----BEGIN PGP PUBLIC KEY BLOCK-----",
        "-----BEGIN PGP PUBLIC KEY BLOCK-----",
    );
    let file = s.keys.path().join("gone.rev");
    std::fs::write(&file, cert).expect("write");
    s.gpg("gone", &["--import", file.to_str().expect("utf-8 path")]);
    let after = s.keyring("after.gpg", &["alice", "old", "gone"], false);
    // The same commit, checked anew (a new process) against the keyring
    // that knows: refused, and what it applied stays.
    let r = s.run_with("gpg", &after);
    assert_eq!(r.code, 1, "{r:?}");
    let why = format!("is signed by {revoked} (Gone Key <gone@fermata.invalid>), which is revoked");
    assert!(r.stdout.contains(&why), "{r:?}");
    assert!(s.status().contains("code: UntrustedCommit"));
    assert!(s.current().is_some_and(|c| c.contains("tag: v2")));
}

#[test]
fn gpg_sha1_signature_is_refused() {
    let s = Setup::new();
    let alice = s.gpg_key("alice", ALICE, ["ed25519", "sign", "never"]);
    s.gnupg_home("sha1", "digest-algo SHA1\n");
    let old = s.gpg_key(
        "sha1",
        "Old Habits <old@fermata.invalid>",
        ["rsa2048", "sign", "never"],
    );
    let keyring = s.keyring("trusted.gpg", &["alice", "sha1"], false);
    s.gpg_applied_v1("alice", &alice, &keyring);
    s.fleet("v2").gpg_commit("sha1", &old, "v2, SHA-1");
    let r = s.run_with("gpg", &keyring);
    s.assert_refused(&r, "has a bad signature: made with the weak digest SHA1");
}

#[test]
fn gpg_keyring_is_checked_at_start() {
    let s = Setup::new();
    s.fleet("v1").signed_commit("trusted", "v1");
    for (name, content, needle) in [
        (
            "garbage.asc",
            &b"not a keyring\n"[..],
            "garbage.asc: not an OpenPGP public keyring",
        ),
        ("empty.gpg", &b""[..], "empty.gpg: no OpenPGP public keys"),
        (
            "allowed_signers",
            &b"test@fermata ssh-ed25519 AAAA\n"[..],
            "allowed_signers: not an OpenPGP public keyring",
        ),
    ] {
        let file = s.keys.path().join(name);
        if name != "allowed_signers" {
            std::fs::write(&file, content).expect("write");
        }
        let r = s.run_with("gpg", &file);
        assert_eq!(r.code, 2, "{name}: {r:?}");
        assert!(r.stderr.contains("--trusted-keys"), "{r:?}");
        assert!(r.stderr.contains(needle), "{needle:?} missing: {r:?}");
    }
    // A secret key export is not a keyring to trust with.
    let alice = s.gpg_key("alice", ALICE, ["ed25519", "sign", "never"]);
    let secret = s.gpg("alice", &["--armor", "--export-secret-keys", &alice]);
    let file = s.keys.path().join("secret.asc");
    std::fs::write(&file, secret).expect("write");
    let r = s.run_with("gpg", &file);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains("secret.asc: not an OpenPGP public keyring"),
        "{r:?}"
    );
    assert!(s.current().is_none(), "nothing applied");
}
