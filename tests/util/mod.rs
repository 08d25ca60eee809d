//! Test harness: real git repositories in temp dirs, and the real binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A git repository with a working tree in its own temp dir.
pub struct TestRepo {
    pub dir: tempfile::TempDir,
}

impl TestRepo {
    pub fn new() -> TestRepo {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = TestRepo { dir };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    /// A repository holding a copy of `examples/repo-layout`, committed.
    pub fn example() -> TestRepo {
        let repo = TestRepo::new();
        copy_dir(&example_dir(), repo.path());
        repo.commit("example fleet");
        repo
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.path().display())
    }

    pub fn write(&self, rel: &str, content: &str) -> &Self {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, content).expect("write");
        self
    }

    pub fn remove(&self, rel: &str) -> &Self {
        let p = self.path().join(rel);
        if p.is_dir() {
            std::fs::remove_dir_all(p).expect("rm -r");
        } else {
            std::fs::remove_file(p).expect("rm");
        }
        self
    }

    /// Runs git in the repository; panics with its stderr on failure.
    pub fn git(&self, args: &[&str]) -> String {
        git(self.path(), args)
    }

    /// Commits everything; returns the commit id.
    pub fn commit(&self, msg: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", msg]);
        self.git(&["rev-parse", "HEAD"])
    }
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=fermata-test",
            "-c",
            "user.email=test@fermata.invalid",
        ])
        .args(["-c", "commit.gpgsign=false", "-c", "core.symlinks=true"])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `git clone --bare FROM INTO/NAME`; returns the new repository's path.
pub fn bare_clone(from: &Path, into: &Path, name: &str) -> PathBuf {
    git(
        into,
        &[
            "clone",
            "-q",
            "--bare",
            from.to_str().expect("utf-8 path"),
            name,
        ],
    );
    into.join(name)
}

pub fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/repo-layout")
}

pub fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let dest = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            std::fs::create_dir_all(&dest).expect("mkdir");
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).expect("copy");
        }
    }
}

/// The result of running the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout lines, for comparing error lists.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `fermata ARGS` with a private state dir.
pub fn fermata(args: &[&str]) -> Run {
    let state = tempfile::tempdir().expect("state dir");
    let out: Output = Command::new(env!("CARGO_BIN_EXE_fermata"))
        .args(args)
        .env("FERMATA_STATE_DIR", state.path())
        .env_remove("FERMATA_LOG")
        .output()
        .expect("fermata runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `fermata ARGS --state-dir STATE` at the fixed instant `now`, with `env`.
pub fn fermata_at(state: &Path, args: &[&str], now: &str, env: &[(&str, &str)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_fermata"))
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .env("FERMATA_NOW", now)
        .envs(env.iter().copied())
        .output()
        .expect("fermata runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// One pass of `fermata run` on branch `main` of `repo` at `now`.
pub fn run_once(state: &Path, repo: &TestRepo, now: &str) -> Run {
    let p = repo.path().to_str().expect("utf-8 path");
    fermata_at(
        state,
        &["run", "--once", "--repo", p, "--branch", "main"],
        now,
        &[],
    )
}

/// A window open on Saturdays 02:00-05:00 UTC (2026-11-21 is a Saturday).
pub const SAT_WINDOW: &str = "apiVersion: fermata.dev/v1alpha1
kind: MaintenanceWindow
metadata: {name: sat}
spec: {schedule: \"0 2 * * SAT\", duration: 3h, timezone: UTC}
";

/// A minimal valid fleet: one target, one manifests synthesizer, one symphony.
pub const TARGET: &str = "apiVersion: fermata.dev/v1alpha1
kind: Target
metadata: {name: site}
spec:
  directory: {path: site}
";

pub const SYNTH: &str = "apiVersion: fermata.dev/v1alpha1
kind: Synthesizer
metadata: {name: app}
spec:
  manifests: ./manifests
";

pub const MANIFEST: &str = "apiVersion: v1
kind: ConfigMap
metadata: {name: app, namespace: default}
data: {tag: \"${TAG}\"}
";

pub const SYMPHONY: &str = "apiVersion: fermata.dev/v1alpha1
kind: Symphony
metadata: {name: shop}
spec:
  variations:
    - synthesizer: {name: app}
      synthesisEnv: [{name: TAG, value: v1}]
";

/// Writes the minimal fleet into `repo` (not committed).
pub fn minimal(repo: &TestRepo) -> &TestRepo {
    repo.write("target.yaml", TARGET)
        .write("synth/app.yaml", SYNTH)
        .write("synth/manifests/cm.yaml", MANIFEST)
        .write("symphony.yaml", SYMPHONY)
}

/// `git daemon` serving the repositories under `base` on 127.0.0.1:`port`
/// (pushes too with `receive_pack`), stopped when dropped. The daemon
/// binary is started itself, not through `git daemon`: killing the `git`
/// wrapper would leave the daemon running after the test.
pub struct GitDaemon(std::process::Child);

impl GitDaemon {
    pub fn start(base: &Path, port: u16, receive_pack: bool) -> GitDaemon {
        let exec_path = Command::new("git")
            .arg("--exec-path")
            .output()
            .expect("git --exec-path");
        let exec_path = String::from_utf8_lossy(&exec_path.stdout)
            .trim()
            .to_string();
        let mut cmd = Command::new(Path::new(&exec_path).join("git-daemon"));
        cmd.args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"]);
        if receive_pack {
            cmd.arg("--enable=receive-pack");
        }
        let child = cmd
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("git daemon");
        let daemon = GitDaemon(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "git daemon did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        daemon
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A new ed25519 key `dir/name` without a passphrase (comment `name`), by
/// `ssh-keygen`: its private key file and its public key line.
pub fn ssh_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
    (key, public.trim().to_string())
}
