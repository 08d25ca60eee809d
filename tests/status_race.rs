//! Several sites publishing status to one origin at once, over `file://`
//! and over `git://` (issue 10.6): every real `fermata run --once` process
//! that says it committed
//! has its commit on the origin's status branch, and every site's status of
//! every round is there. A lost race is retried on the new tip, never taken
//! for a success.

mod util;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use util::{git, TestRepo};

const SITES: usize = 7;
const ROUNDS: usize = 3;

#[test]
fn concurrent_sites_lose_no_status_on_a_file_origin() {
    race(|origin| (format!("file://{}", origin.display()), None));
}

#[test]
fn concurrent_sites_lose_no_status_over_git_daemon() {
    race(|origin| {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let base = origin.parent().unwrap();
        let daemon = util::GitDaemon::start(base, port, true);
        (format!("git://127.0.0.1:{port}/origin.git"), Some(daemon))
    });
}

/// `SITES` processes per round, `ROUNDS` rounds, publishing to one origin
/// reached through the URL `serve` gives for it (and whatever keeps it served).
fn race(serve: impl FnOnce(&std::path::Path) -> (String, Option<util::GitDaemon>)) {
    let work = TestRepo::new();
    util::minimal(&work);
    work.commit("v1");
    let tmp = tempfile::tempdir().unwrap();
    let origin = util::bare_clone(work.path(), tmp.path(), "origin.git");
    let (url, _server) = serve(&origin);
    let states: Vec<_> = (0..SITES).map(|_| tempfile::tempdir().unwrap()).collect();

    let mut rounds = Vec::new();
    for round in 0..ROUNDS {
        // A new commit on the source branch each round (the first is the clone's).
        if round > 0 {
            work.write(
                "symphony.yaml",
                &util::SYMPHONY.replace("value: v1", &format!("value: v{}", round + 1)),
            );
            work.commit(&format!("round {round}"));
            work.git(&["push", "-q", origin.to_str().unwrap(), "main"]);
        }
        let commit = git(&origin, &["rev-parse", "main"]);
        let children: Vec<_> = states
            .iter()
            .enumerate()
            .map(|(i, state)| {
                let child = Command::new(env!("CARGO_BIN_EXE_fermata"))
                    .args(["run", "--once", "--repo", &url, "--branch", "main"])
                    .args(["--site", &format!("s{i}")])
                    .arg("--state-dir")
                    .arg(state.path())
                    .env("FERMATA_NOW", "2026-11-21T02:30:00Z")
                    .env_remove("FERMATA_LOG")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("fermata runs");
                (i, child)
            })
            .collect();
        let mut committed = BTreeMap::new();
        for (i, child) in children {
            let out = child.wait_with_output().expect("fermata ends");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "round {round} site s{i}: {:?}\n{stdout}\n{stderr}",
                out.status
            );
            let short = stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix("status: committed "))
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("round {round} site s{i} committed nothing:\n{stdout}"))
                .to_string();
            committed.insert(i, short);
        }
        // Every commit a process reported is on the origin's branch, not dangling.
        for (i, short) in &committed {
            let full = git(&origin, &["rev-parse", &format!("{short}^{{commit}}")]);
            let on_branch = Command::new("git")
                .current_dir(&origin)
                .args(["merge-base", "--is-ancestor", &full, "fermata/status"])
                .status()
                .unwrap();
            assert!(
                on_branch.success(),
                "round {round}: site s{i} reported {short}, which is not on the origin's status branch"
            );
        }
        rounds.push(commit);
    }

    // One status commit per site and round, each with the site's file for that round's commit.
    let log = git(
        &origin,
        &["log", "--format=%H %(trailers:key=Fermata-Source,valueonly,separator=)|%(trailers:key=Fermata-Site,valueonly,separator=)", "fermata/status"],
    );
    let mut seen: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for line in log.lines() {
        let (id, rest) = line.split_once(' ').unwrap();
        let (source, site) = rest.split_once('|').unwrap();
        seen.entry((source.trim().to_string(), site.trim().to_string()))
            .or_default()
            .push(id.to_string());
    }
    assert_eq!(
        log.lines().count(),
        SITES * ROUNDS,
        "one status commit per site and round:\n{log}"
    );
    for commit in &rounds {
        for i in 0..SITES {
            let key = (format!("main@{commit}"), format!("s{i}"));
            let ids = seen
                .get(&key)
                .unwrap_or_else(|| panic!("no status of {key:?}:\n{log}"));
            assert_eq!(ids.len(), 1, "{key:?}: {ids:?}");
            let file = git(
                &origin,
                &["show", &format!("{}:s{i}/main/shop/app.yaml", ids[0])],
            );
            assert!(file.contains(commit.as_str()), "{key:?}: {file}");
        }
        // The note beside each round's commit has every site's line.
        let note = git(&origin, &["notes", "--ref=fermata", "show", commit]);
        for i in 0..SITES {
            assert!(
                note.lines().any(|l| l.starts_with(&format!("s{i}: "))),
                "note on {commit} lacks s{i}:\n{note}"
            );
        }
    }
    assert_eq!(
        git(&origin, &["rev-list", "--merges", "fermata/status"]),
        ""
    );
}
