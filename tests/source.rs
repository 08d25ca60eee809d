//! Reading the repository out of Git: local path, bare repo, file:// URL, old commits.

mod util;

use util::{fermata, minimal, TestRepo};

#[test]
fn validates_the_example_fleet() {
    let repo = TestRepo::example();
    let run = fermata(&["validate", "--repo", repo.path().to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout.trim(),
        "ok: 3 symphonies, 4 compositions, 2 windows, 2 targets, 3 sites, 1 campaign, 0 activations"
    );
}

#[test]
fn reads_working_tree_bare_repo_and_file_url_alike() {
    let repo = TestRepo::new();
    minimal(&repo);
    repo.commit("one");
    let bare = tempfile::tempdir().unwrap();
    let bare_path = util::bare_clone(repo.path(), bare.path(), "r.git");
    let bare_path = bare_path.to_str().unwrap();
    let file_url = format!("file://{bare_path}");
    let mut digests = Vec::new();
    for r in [repo.path().to_str().unwrap(), bare_path, &file_url] {
        let run = fermata(&["render", "--repo", r, "--output", "json"]);
        assert_eq!(run.code, 0, "{r}: {run:?}");
        let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        digests.push(v["compositions"][0]["digest"].clone());
    }
    assert!(digests[0].is_string());
    assert_eq!(digests[0], digests[1]);
    assert_eq!(digests[1], digests[2]);
}

#[test]
fn reads_an_older_commit_without_checkout() {
    let repo = TestRepo::new();
    minimal(&repo);
    let old = repo.commit("v1");
    repo.write(
        "symphony.yaml",
        &util::SYMPHONY.replace("value: v1", "value: v2"),
    );
    repo.commit("v2");
    // A dirty working tree proves nothing is read from it.
    repo.write("symphony.yaml", "this: is: not: yaml");

    let at = |rev: &str| {
        let run = fermata(&[
            "render",
            "--repo",
            repo.path().to_str().unwrap(),
            "--rev",
            rev,
        ]);
        assert_eq!(run.code, 0, "{run:?}");
        run.stdout
    };
    assert!(at(&old).contains("tag: v1"));
    assert!(at("HEAD~1").contains("tag: v1"));
    assert!(at("main").contains("tag: v2"));
}

#[test]
fn mirrors_a_url_and_follows_new_commits_and_tags() {
    let repo = TestRepo::new();
    minimal(&repo);
    repo.commit("v1");
    repo.git(&["tag", "release-1"]);
    let state = tempfile::tempdir().unwrap();
    let render = |rev: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fermata"))
            .args(["render", "--repo", &repo.url(), "--rev", rev, "--state-dir"])
            .arg(state.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(render("main").contains("tag: v1"));
    repo.write(
        "symphony.yaml",
        &util::SYMPHONY.replace("value: v1", "value: v2"),
    );
    repo.commit("v2");
    let mirrors: Vec<_> = std::fs::read_dir(state.path().join("mirrors"))
        .unwrap()
        .collect();
    assert_eq!(mirrors.len(), 1, "one bare mirror per URL");
    // The mirror exists already; `render` reads it as fetched on creation,
    // so a fresh state dir is needed to see the new commit until `run` fetches.
    assert!(render("release-1").contains("tag: v1"));
}

#[test]
fn path_limits_loading_to_a_folder() {
    let repo = TestRepo::new();
    minimal(&repo);
    repo.write(
        "other/broken.yaml",
        "apiVersion: fermata.dev/v1alpha1\nkind: Nope\n",
    );
    repo.commit("two folders");
    let p = repo.path().to_str().unwrap();
    assert_eq!(fermata(&["validate", "--repo", p]).code, 1);
    let run = fermata(&["validate", "--repo", p, "--path", "synth"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout.trim(),
        "ok: 0 symphonies, 0 compositions, 0 windows, 0 targets"
    );
    let run = fermata(&["validate", "--repo", p, "--path", "nowhere"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("no folder"), "{run:?}");
}

#[test]
fn unknown_repository_or_revision_is_a_clear_error() {
    let run = fermata(&["validate", "--repo", "/nonexistent/repo"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("cannot open repository /nonexistent/repo"),
        "{run:?}"
    );
    let repo = TestRepo::new();
    minimal(&repo);
    repo.commit("one");
    let run = fermata(&[
        "validate",
        "--repo",
        repo.path().to_str().unwrap(),
        "--rev",
        "nope",
    ]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("revision \"nope\" not found"),
        "{run:?}"
    );
}

#[test]
fn a_mirror_whose_first_fetch_failed_is_completed_later() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/r.git", dir.path().display());
    let state = tempfile::tempdir().unwrap();
    let p = state.path();
    let run = util::fermata_at(
        p,
        &["validate", "--repo", &url],
        "2026-11-21T02:30:00Z",
        &[],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("cannot fetch"), "{run:?}");
    // The remote appears: the half-made mirror fetches it and adopts its
    // default branch, so `run` without --branch finds `main`.
    let repo = TestRepo::new();
    minimal(&repo);
    repo.commit("one");
    util::bare_clone(repo.path(), dir.path(), "r.git");
    let run = util::fermata_at(
        p,
        &["run", "--once", "--repo", &url],
        "2026-11-21T02:30:00Z",
        &[],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("branch main @"), "{run:?}");
}

#[test]
fn ref_locks_a_killed_fetch_left_in_the_mirror_do_not_stop_the_next_fetch() {
    let work = TestRepo::new();
    minimal(&work);
    work.commit("v1");
    let remotes = tempfile::tempdir().unwrap();
    let bare = util::bare_clone(work.path(), remotes.path(), "fleet.git");
    work.git(&["remote", "add", "origin", bare.to_str().unwrap()]);
    let url = format!("file://{}", bare.display());
    let state = tempfile::tempdir().unwrap();
    let run = || {
        util::fermata_at(
            state.path(),
            &["run", "--once", "--repo", &url, "--branch", "main"],
            "2026-11-21T03:00:00Z",
            &[],
        )
    };
    let first = run();
    assert_eq!(first.code, 0, "{first:?}");
    // What a kill -9 between git's lock and rename leaves in the mirror.
    let mirror = std::fs::read_dir(state.path().join("mirrors"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let stale = [
        mirror.join("refs/heads/main.lock"),
        mirror.join("packed-refs.lock"),
    ];
    for lock in &stale {
        std::fs::write(lock, "0000000000000000000000000000000000000000\n").unwrap();
    }
    work.write(
        "symphony.yaml",
        &util::SYMPHONY.replace("value: v1", "value: v2"),
    );
    work.commit("v2");
    work.git(&["push", "-q", "origin", "main"]);
    let out = run();
    assert_eq!(out.code, 0, "{out:?}");
    let current = state
        .path()
        .join("targets/site/shop/app/current/manifest.yaml");
    assert!(std::fs::read_to_string(current).unwrap().contains("v2"));
    for lock in &stale {
        assert!(!lock.exists(), "{} left", lock.display());
    }
}
