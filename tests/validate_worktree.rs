//! `fermata validate` as a pre-commit check: without `--rev` it reads the
//! working tree as `git add --all` would commit it, and leaves what the
//! user staged alone; `--rev` reads a commit.

mod util;

use util::{fermata, minimal, TestRepo};

fn validate(repo: &TestRepo, extra: &[&str]) -> util::Run {
    let p = repo.path().to_str().expect("utf-8 path");
    let mut args = vec!["validate", "--repo", p, "--no-render"];
    args.extend_from_slice(extra);
    fermata(&args)
}

/// The minimal symphony with a field no Symphony has, on line 6.
const BROKEN: &str = "apiVersion: fermata.dev/v1alpha1
kind: Symphony
metadata: {name: other}
spec:
  variations: [{synthesizer: {name: app}}]
  colour: blue
";

#[test]
fn an_uncommitted_error_fails_validate_and_the_commit_still_passes() {
    let repo = TestRepo::new();
    minimal(&repo).commit("valid");
    assert_eq!(validate(&repo, &[]).code, 0);

    repo.write("symphony.yaml", BROKEN);
    let run = validate(&repo, &[]);
    assert_eq!(run.code, 1, "the edit is checked: {run:?}");
    assert!(
        run.stdout.contains("symphony.yaml:6") && run.stdout.contains("colour"),
        "file, line and field of the edit: {run:?}"
    );
    let head = validate(&repo, &["--rev", "HEAD"]);
    assert_eq!(head.code, 0, "--rev reads the commit: {head:?}");
}

#[test]
fn untracked_files_count_ignored_and_deleted_ones_do_not() {
    let repo = TestRepo::new();
    minimal(&repo).commit("valid");

    repo.write("more/extra.yaml", BROKEN);
    assert_eq!(validate(&repo, &[]).code, 1, "an untracked file is read");

    repo.write(".gitignore", "more/\n");
    let run = validate(&repo, &[]);
    assert_eq!(run.code, 0, "an ignored file is not: {run:?}");

    // A committed broken file, deleted in the working tree, is gone.
    repo.remove(".gitignore");
    repo.commit("broken extra");
    assert_eq!(validate(&repo, &[]).code, 1);
    repo.remove("more/extra.yaml");
    let run = validate(&repo, &[]);
    assert_eq!(run.code, 0, "the deletion is seen: {run:?}");
    assert_eq!(validate(&repo, &["--rev", "HEAD"]).code, 1);
}

#[test]
fn the_index_is_left_as_the_user_staged_it() {
    let repo = TestRepo::new();
    minimal(&repo).commit("valid");
    repo.write("symphony.yaml", BROKEN);
    repo.write("new.yaml", "# nothing yet\n");
    repo.git(&["add", "new.yaml"]);
    let before = repo.git(&["status", "--porcelain"]);
    validate(&repo, &[]);
    assert_eq!(repo.git(&["status", "--porcelain"]), before);
    assert!(before.contains(" M symphony.yaml") && before.contains("A  new.yaml"));
}

#[test]
fn a_bare_repository_is_read_at_head() {
    let repo = TestRepo::new();
    minimal(&repo).commit("valid");
    let bare = tempfile::tempdir().expect("temp dir");
    let bare = util::bare_clone(repo.path(), bare.path(), "fleet.git");
    let run = fermata(&[
        "validate",
        "--repo",
        bare.to_str().expect("utf-8"),
        "--no-render",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
}

/// The hooks pre-commit runs are the command line this file tests: their
/// `entry`, run in a repository with a broken edit, fails.
#[test]
fn the_shipped_pre_commit_hooks_run_validate_on_the_working_tree() {
    let hooks: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/.pre-commit-hooks.yaml"
        ))
        .expect("read .pre-commit-hooks.yaml"),
    )
    .expect(".pre-commit-hooks.yaml is YAML");
    let hooks = hooks.as_sequence().expect("a list of hooks");
    assert!(!hooks.is_empty());
    let repo = TestRepo::new();
    minimal(&repo).commit("valid");
    repo.write("symphony.yaml", BROKEN);
    for hook in hooks {
        let id = hook["id"].as_str().expect("id");
        assert_eq!(hook["pass_filenames"].as_bool(), Some(false), "{id}");
        let entry: Vec<&str> = hook["entry"].as_str().expect("entry").split(' ').collect();
        assert_eq!(entry[0], "fermata", "{id}");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fermata"))
            .args(&entry[1..])
            .current_dir(repo.path())
            .output()
            .expect("fermata runs");
        assert_eq!(out.status.code(), Some(1), "{id} fails on the broken edit");
        assert!(String::from_utf8_lossy(&out.stdout).contains("symphony.yaml:6"));
    }
}
