//! Output into a closed pipe (`fermata plan --markdown | head`): every
//! command that prints ends quietly, as `git log | head` does, never with a
//! panic.

mod util;

use std::process::{Command, Stdio};

use util::TestRepo;

/// Runs `fermata ARGS` with stdout a pipe nobody reads (its read end is
/// closed before fermata starts) and returns its exit status and stderr.
fn into_closed_pipe(state: &std::path::Path, args: &[&str]) -> (std::process::ExitStatus, String) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_fermata"))
        .args(args)
        .env("FERMATA_STATE_DIR", state)
        .env("FERMATA_NOW", "2026-11-21T02:30:00Z")
        .env("FERMATA_LOG", "error")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("fermata runs");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_command_that_prints_ends_quietly_on_a_closed_pipe() {
    let repo = TestRepo::new();
    util::minimal(&repo).write("window.yaml", util::SAT_WINDOW);
    repo.commit("one");
    let state = tempfile::tempdir().unwrap();
    let p = repo.path().to_str().unwrap();
    // A status branch for `status` to read.
    let run = util::run_once(state.path(), &repo, "2026-11-21T02:30:00Z");
    assert_eq!(run.code, 0, "{run:?}");

    let commands: [&[&str]; 8] = [
        &["plan", "--repo", p, "--branch", "main", "--markdown"],
        &["plan", "--repo", p, "--branch", "main"],
        &["status", "--repo", p, "--format", "margo"],
        &["status", "--repo", p],
        &["validate", "--repo", p],
        &["render", "--repo", p],
        &["windows", "--repo", p],
        &["run", "--once", "--repo", p, "--branch", "main"],
    ];
    for args in commands {
        let (status, stderr) = into_closed_pipe(state.path(), args);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?}: nothing on stderr");
        // As `git log | head` shows in a shell: 141, 128 + SIGPIPE.
        assert_eq!(status.code(), Some(141), "{args:?}: {status:?}");
    }
}
