//! Several sites publishing status to one origin at once, over `file://`
//! and over `git://` (issues 10.6 and 13.3): every real `fermata run --once`
//! process that says it committed has its commit on its own site's branch
//! `fermata/sites/<site>`, every site's status of every round is there,
//! and since no two sites share a ref, no push is ever rejected: N sites
//! cost N pushes.

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
            assert!(
                !stderr.contains("rejected"),
                "round {round} site s{i}: a push was rejected, but no other site writes its refs:\n{stderr}"
            );
            let short = stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix("status: committed "))
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("round {round} site s{i} committed nothing:\n{stdout}"))
                .to_string();
            committed.insert(i, short);
        }
        // Every commit a process reported is on its site's branch on the origin.
        for (i, short) in &committed {
            let full = git(&origin, &["rev-parse", &format!("{short}^{{commit}}")]);
            let on_branch = Command::new("git")
                .current_dir(&origin)
                .args([
                    "merge-base",
                    "--is-ancestor",
                    &full,
                    &format!("fermata/sites/s{i}"),
                ])
                .status()
                .unwrap();
            assert!(
                on_branch.success(),
                "round {round}: site s{i} reported {short}, which is not on its branch on the origin"
            );
        }
        rounds.push(commit);
    }

    // One status commit per site and round on the site's own branch, each
    // with the site's file for that round's commit, and nothing shared.
    assert_eq!(
        git(
            &origin,
            &[
                "for-each-ref",
                "refs/heads/fermata/status",
                "refs/notes/fermata"
            ]
        ),
        ""
    );
    for i in 0..SITES {
        let branch = format!("fermata/sites/s{i}");
        let log = git(
            &origin,
            &[
                "log",
                "--format=%H %(trailers:key=Fermata-Source,valueonly,separator=)",
                &branch,
            ],
        );
        let sources: Vec<(&str, &str)> = log.lines().map(|l| l.split_once(' ').unwrap()).collect();
        let want: Vec<String> = rounds.iter().rev().map(|c| format!("main@{c}")).collect();
        assert_eq!(
            sources
                .iter()
                .map(|(_, s)| s.trim().to_string())
                .collect::<Vec<_>>(),
            want,
            "{branch}: one status commit per round:\n{log}"
        );
        for ((id, _), commit) in sources.iter().zip(rounds.iter().rev()) {
            let file = git(&origin, &["show", &format!("{id}:main/shop/app.yaml")]);
            assert!(file.contains(commit.as_str()), "{branch}: {file}");
            assert!(
                file.contains(&format!("deviceId: s{i}")),
                "{branch}: {file}"
            );
        }
        // Each round's commit carries the site's note, in the site's notes ref.
        for commit in &rounds {
            let note = git(
                &origin,
                &[
                    "notes",
                    &format!("--ref=fermata-sites/s{i}"),
                    "show",
                    commit,
                ],
            );
            assert!(
                note.starts_with(&format!("s{i} main@")),
                "s{i} on {commit}: {note}"
            );
        }
        assert_eq!(git(&origin, &["rev-list", "--merges", &branch]), "");
    }
}

/// Issue 13's reproduction: 30 site agents at once on one commit of one
/// `file://` origin. Before per-site branches, 17 of 30 lost their status.
#[test]
fn thirty_sites_at_once_each_land_on_their_own_branch() {
    const N: usize = 30;
    let work = TestRepo::new();
    util::minimal(&work);
    let commit = work.commit("v1");
    let tmp = tempfile::tempdir().unwrap();
    let origin = util::bare_clone(work.path(), tmp.path(), "origin.git");
    let url = format!("file://{}", origin.display());
    let states: Vec<_> = (0..N).map(|_| tempfile::tempdir().unwrap()).collect();
    let children: Vec<_> = states
        .iter()
        .enumerate()
        .map(|(i, state)| {
            Command::new(env!("CARGO_BIN_EXE_fermata"))
                .args(["run", "--once", "--repo", &url, "--branch", "main"])
                .args(["--site", &format!("s{i}")])
                .arg("--state-dir")
                .arg(state.path())
                .env("FERMATA_NOW", "2026-11-21T02:30:00Z")
                .env_remove("FERMATA_LOG")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("fermata runs")
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().expect("fermata ends");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "s{i}: {stderr}");
        assert!(!stderr.contains("still rejected"), "s{i}: {stderr}");
        assert!(!stderr.contains("rejected"), "s{i} had to retry: {stderr}");
    }
    let branches = git(
        &origin,
        &[
            "for-each-ref",
            "--format=%(refname:short)",
            "refs/heads/fermata/sites",
        ],
    );
    assert_eq!(branches.lines().count(), N, "{branches}");
    for i in 0..N {
        let branch = format!("fermata/sites/s{i}");
        assert_eq!(
            git(&origin, &["rev-list", "--count", &branch]),
            "1",
            "{branch}"
        );
        let file = git(&origin, &["show", &format!("{branch}:main/shop/app.yaml")]);
        assert!(file.contains(&commit), "{branch}: {file}");
        git(
            &origin,
            &[
                "notes",
                &format!("--ref=fermata-sites/s{i}"),
                "show",
                &commit,
            ],
        );
    }
}
