//! The long-running `fermata run`: a push to a local repository is applied
//! without waiting for the interval (notify), and SIGHUP fetches at once (over
//! `git daemon` on 127.0.0.1, which nothing watches). These wait for a real
//! process, so they poll with a deadline; nothing here depends on a clock.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use util::TestRepo;

/// Kills the process when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_run(repo: &str, state: &Path) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_fermata"))
        .args([
            "run",
            "--repo",
            repo,
            "--branch",
            "main",
            "--interval",
            "1h",
            "--state-dir",
        ])
        .arg(state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("fermata runs");
    Running(child)
}

/// Waits until `manifest` contains `want`, or panics after a generous deadline.
fn wait_for(manifest: &Path, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if std::fs::read_to_string(manifest).is_ok_and(|m| m.contains(want)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{} never contained {want:?}", manifest.display());
}

/// A bare repository holding the minimal fleet, and a clone to push from.
fn bare_with_clone() -> (tempfile::TempDir, PathBuf, TestRepo) {
    let work = TestRepo::new();
    util::minimal(&work);
    work.commit("v1");
    let dir = tempfile::tempdir().unwrap();
    let bare = util::bare_clone(work.path(), dir.path(), "r.git");
    work.git(&["remote", "add", "origin", bare.to_str().unwrap()]);
    (dir, bare, work)
}

fn push_v2(work: &TestRepo) {
    work.write(
        "symphony.yaml",
        &util::SYMPHONY.replace("value: v1", "value: v2"),
    );
    work.commit("v2");
    work.git(&["push", "-q", "origin", "main"]);
}

#[test]
fn a_push_to_a_local_repository_is_applied_without_waiting_for_the_interval() {
    let (_dir, bare, work) = bare_with_clone();
    let state = tempfile::tempdir().unwrap();
    let _run = spawn_run(bare.to_str().unwrap(), state.path());
    let manifest = state
        .path()
        .join("targets/site/shop/app/current/manifest.yaml");
    wait_for(&manifest, "tag: v1");
    push_v2(&work);
    // The interval is an hour: only the ref watcher can apply it in time.
    wait_for(&manifest, "tag: v2");
}

#[test]
fn sighup_fetches_at_once_over_git_daemon() {
    let (dir, _bare, work) = bare_with_clone();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _daemon = util::GitDaemon::start(dir.path(), port, false);
    let url = format!("git://127.0.0.1:{port}/r.git");
    let state = tempfile::tempdir().unwrap();
    let run = spawn_run(&url, state.path());
    let manifest = state
        .path()
        .join("targets/site/shop/app/current/manifest.yaml");
    wait_for(&manifest, "tag: v1");
    push_v2(&work);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.0.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for(&manifest, "tag: v2");
}
