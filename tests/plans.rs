//! Plans of commits that are not on a watched branch: `--plan-branches`
//! notes (the Git-native fallback for hosts without a forge API) and the
//! rule that such heads never run `command:` synthesizers unless
//! `--trust-pr-commands`. Real repositories, the real binary.

mod util;

use util::{fermata_at, TestRepo};

const NOW: &str = "2026-11-21T03:00:00Z";

/// A command synthesizer that leaves a file behind when it runs.
fn command_symphony(repo: &TestRepo, sentinel: &std::path::Path) {
    repo.write(
        "tool/synth.yaml",
        &format!(
            "apiVersion: fermata.dev/v1alpha1\nkind: Synthesizer\nmetadata: {{name: tool}}\nspec:\n  command: [\"sh\", \"-c\", \"touch {}; printf 'kind: ResourceList\\\\nitems: [{{apiVersion: v1, kind: ConfigMap, metadata: {{name: t}}}}]\\\\n'\"]\n",
            sentinel.display()
        ),
    )
    .write(
        "tool/symphony.yaml",
        "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {name: tool}\nspec:\n  variations:\n    - synthesizer: {name: tool}\n",
    );
}

fn run(state: &std::path::Path, repo: &str, extra: &[&str]) -> util::Run {
    let mut args = vec![
        "run",
        "--once",
        "--repo",
        repo,
        "--branch",
        "main",
        "--plan-branches",
        "preview/*",
    ];
    args.extend_from_slice(extra);
    fermata_at(state, &args, NOW, &[])
}

#[test]
fn plan_branch_gets_a_note_and_its_commands_never_run() {
    let repo = TestRepo::new();
    util::minimal(&repo);
    repo.commit("fleet");
    let state = tempfile::tempdir().unwrap();
    let path = repo.path().to_str().unwrap().to_string();
    let first = run(state.path(), &path, &[]);
    assert_eq!(first.code, 0, "{first:?}");

    let sentinel_dir = tempfile::tempdir().unwrap();
    let sentinel = sentinel_dir.path().join("command-ran");
    repo.git(&["checkout", "-q", "-b", "preview/tag-v2"]);
    repo.write(
        "symphony.yaml",
        &util::SYMPHONY.replace("value: v1", "value: v2"),
    );
    command_symphony(&repo, &sentinel);
    let head = repo.commit("v2 and a tool");
    repo.git(&["checkout", "-q", "main"]);

    let out = run(state.path(), &path, &[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        !sentinel.exists(),
        "a branch that is not watched ran a command"
    );
    let note = repo.git(&["notes", "--ref=fermata-plan", "show", &head]);
    assert!(note.starts_with("<!-- fermata:plan:default -->"), "{note}");
    assert!(
        note.contains(&format!("`{}` against `main`", &head[..7])),
        "{note}"
    );
    assert!(note.contains("| update |"), "{note}");
    assert!(
        note.contains("+  tag: v2") || note.contains("+    tag: v2"),
        "{note}"
    );
    assert!(note.contains("CommandNotRun"), "{note}");
    assert!(note.contains("**not run**"), "{note}");
    // The plan staged nothing: the target still holds only v1.
    let targets = state.path().join("targets/site");
    let held = std::process::Command::new("grep")
        .args(["-r", "v2"])
        .arg(&targets)
        .output()
        .unwrap();
    assert!(held.stdout.is_empty(), "plan wrote to the target");

    // Nothing new on the branch: no new note commit.
    let notes_before = repo.git(&["rev-parse", "refs/notes/fermata-plan"]);
    let again = run(state.path(), &path, &[]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(
        repo.git(&["rev-parse", "refs/notes/fermata-plan"]),
        notes_before
    );

    // Trusted: the command runs for the plan, and the plan shows its resource.
    let trusted_state = tempfile::tempdir().unwrap();
    let trusted = run(trusted_state.path(), &path, &["--trust-pr-commands"]);
    assert_eq!(trusted.code, 0, "{trusted:?}");
    assert!(
        sentinel.exists(),
        "--trust-pr-commands did not run the command"
    );
    let note = repo.git(&["notes", "--ref=fermata-plan", "show", &head]);
    assert!(!note.contains("CommandNotRun"), "{note}");
    assert!(note.contains("| `tool/"), "{note}");
}

#[test]
fn plan_notes_are_pushed_to_a_mirrored_remote_per_site() {
    let work = TestRepo::new();
    util::minimal(&work);
    work.commit("fleet");
    work.git(&["branch", "preview/a"]);
    work.git(&["checkout", "-q", "preview/a"]);
    work.write(
        "symphony.yaml",
        &util::SYMPHONY.replace("value: v1", "value: v3"),
    );
    let head = work.commit("v3");
    work.git(&["checkout", "-q", "main"]);
    let remotes = tempfile::tempdir().unwrap();
    let bare = util::bare_clone(work.path(), remotes.path(), "fleet.git");
    let url = format!("file://{}", bare.display());
    for site in ["plant-b", "plant-a"] {
        let state = tempfile::tempdir().unwrap();
        let out = run(state.path(), &url, &["--site", site]);
        assert_eq!(out.code, 0, "{out:?}");
    }
    // Each site's plan in its own notes ref: no two sites push one ref.
    for (site, other) in [("plant-a", "plant-b"), ("plant-b", "plant-a")] {
        let note = util::git(
            &bare,
            &[
                "notes",
                &format!("--ref=fermata-plan-sites/{site}"),
                "show",
                &head,
            ],
        );
        assert!(
            note.starts_with(&format!("<!-- fermata:plan:{site} -->")),
            "{note}"
        );
        assert!(!note.contains(other), "{note}");
        assert_eq!(note.matches("fermata plan for site").count(), 1, "{note}");
    }
    let shared = util::git(&bare, &["for-each-ref", "refs/notes/fermata-plan"]);
    assert_eq!(shared, "", "the site-less plan notes ref is not written");
}

#[test]
fn plan_lists_every_validation_error_with_file_and_line() {
    let repo = TestRepo::new();
    util::minimal(&repo);
    repo.commit("fleet");
    repo.git(&["checkout", "-q", "-b", "preview/broken"]);
    repo.write(
        "broken.yaml",
        "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {name: broken}\nspec:\n  window: nightly\n  variations:\n    - synthesizer: {name: app}\n",
    );
    let head = repo.commit("broken symphony");
    repo.git(&["checkout", "-q", "main"]);
    let state = tempfile::tempdir().unwrap();
    let path = repo.path().to_str().unwrap().to_string();
    let out = run(state.path(), &path, &[]);
    assert_eq!(out.code, 0, "the plan's errors are not main's: {out:?}");
    let note = repo.git(&["notes", "--ref=fermata-plan", "show", &head]);
    assert!(note.contains("#### Errors"), "{note}");
    let line = note
        .lines()
        .find(|l| l.starts_with("broken.yaml:5: spec.window:"))
        .unwrap_or_else(|| panic!("no file:line: field error in\n{note}"));
    assert!(line.contains("nightly"), "{line}");
}

#[test]
fn fermata_plan_shows_diffs_and_the_comment_markdown() {
    let repo = TestRepo::new();
    util::minimal(&repo);
    repo.commit("fleet");
    let state = tempfile::tempdir().unwrap();
    let path = repo.path().to_str().unwrap().to_string();
    assert_eq!(run(state.path(), &path, &[]).code, 0);
    repo.write(
        "symphony.yaml",
        &util::SYMPHONY.replace("value: v1", "value: v2"),
    );
    repo.commit("v2");
    let plan = |extra: &[&str]| {
        let mut args = vec!["plan", "--repo", &path, "--branch", "main"];
        args.extend_from_slice(extra);
        fermata_at(state.path(), &args, NOW, &[])
    };
    let text = plan(&["--diff"]);
    assert_eq!(text.code, 0, "{text:?}");
    assert!(text.stdout.contains("--- shop/app"), "{text:?}");
    assert!(
        text.stdout.contains("-  tag: v1") && text.stdout.contains("+  tag: v2"),
        "{text:?}"
    );
    let json = plan(&["--output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let diff = v[0]["actions"][0]["diff"].as_str().unwrap_or_default();
    assert!(diff.contains("+  tag: v2"), "{v}");
    let md = plan(&["--markdown"]);
    assert_eq!(md.code, 0, "{md:?}");
    assert!(
        md.stdout.starts_with("<!-- fermata:plan:default -->"),
        "{md:?}"
    );
    assert!(md.stdout.contains("| `shop/app` | update |"), "{md:?}");
    // Planning wrote nothing: the target still holds v1.
    let current = state
        .path()
        .join("targets/site/shop/app/current/manifest.yaml");
    assert!(std::fs::read_to_string(current).unwrap().contains("v1"));
}
