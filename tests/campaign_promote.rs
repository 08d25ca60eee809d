//! Campaign commits on real repositories: a promote edits only the intended
//! bytes of a Site file, names its step in trailers, never overwrites a
//! branch that moved, is found again after a restart, is undone byte for
//! byte by its restore, and an SSH-signed one passes the project's verifier.

mod util;

use std::collections::BTreeMap;

use fermata::campaign::commit::{
    find_step, head, message, promote, read_file, restore_summary, set_summary, CommitError,
    Signing, Step,
};
use fermata::campaign::edit::{restore, set_env};
use fermata::source::SignaturePolicy;
use git2::Oid;
use util::TestRepo;

const SITES: &str = "sites.yaml";

fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Sets `set` on `site` in sites.yaml of `main` as the canary stage of activation `act`.
fn promote_site(
    repo: &TestRepo,
    act: &str,
    site: &str,
    set: &BTreeMap<String, String>,
    signing: Option<&Signing>,
) -> (Oid, fermata::campaign::edit::Edited) {
    let base = head(repo.path(), "main").expect("head");
    let text = read_file(repo.path(), base, SITES)
        .expect("read")
        .expect("sites.yaml");
    let edited = set_env(&text, site, set).expect("edit");
    let step = Step {
        activation: act,
        stage: "canary",
        batch: Some((1, 2)),
    };
    let msg = message(&step, &set_summary(set, &[site.to_string()]));
    let oid = promote(
        repo.path(),
        "main",
        base,
        &[(SITES.to_string(), edited.text.clone())],
        &msg,
        signing,
    )
    .expect("promote");
    (oid, edited)
}

fn diff(repo: &TestRepo, oid: Oid) -> String {
    repo.git(&["show", "--format=", "--unified=0", &oid.to_string()])
}

#[test]
fn a_promote_commit_changes_only_the_values_and_names_its_step() {
    let repo = TestRepo::example();
    let before = repo.git(&["rev-parse", "main"]);
    let (oid, _) = promote_site(
        &repo,
        "vision-2026-12",
        "plant-a",
        &values(&[("INTERVAL", "30s"), ("VISION_MODEL", "v4")]),
        None,
    );
    assert_eq!(repo.git(&["rev-parse", "main"]), oid.to_string());
    assert_eq!(repo.git(&["rev-parse", "main^"]), before);
    let d = diff(&repo, oid);
    assert!(
        d.starts_with("diff --git a/sites.yaml b/sites.yaml\n"),
        "only sites.yaml changes: {d}"
    );
    assert_eq!(d.matches("diff --git").count(), 1, "{d}");
    let changed: Vec<&str> = d
        .lines()
        .filter(|l| l.starts_with(['+', '-']) && !l.starts_with("+++") && !l.starts_with("---"))
        .collect();
    assert_eq!(
        changed,
        [
            "-    - {name: INTERVAL, value: 15s}",
            "+    - {name: INTERVAL, value: \"30s\"}",
            "+    - {name: VISION_MODEL, value: \"v4\"}",
        ]
    );
    assert_eq!(
        repo.git(&[
            "show",
            "-s",
            "--format=%an <%ae>|%cn <%ce>",
            &oid.to_string()
        ]),
        "fermata <fermata@localhost>|fermata <fermata@localhost>"
    );
    assert_eq!(
        repo.git(&["show", "-s", "--format=%s", &oid.to_string()]),
        "campaign vision-2026-12 stage canary batch 1/2: set INTERVAL=30s, VISION_MODEL=v4 on plant-a"
    );
    assert_eq!(
        repo.git(&[
            "show",
            "-s",
            "--format=%(trailers:only,unfold)",
            &oid.to_string()
        ]),
        "Fermata-Activation: vision-2026-12\nFermata-Stage: canary\nFermata-Batch: 1"
    );
    // The fleet still loads, with the new value.
    let run = util::fermata(&["validate", "--repo", &repo.url()]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
}

#[test]
fn find_step_finds_the_commit_by_its_trailers() {
    let repo = TestRepo::example();
    let (oid, _) = promote_site(
        &repo,
        "act-1",
        "plant-b",
        &values(&[("INTERVAL", "5s")]),
        None,
    );
    repo.write("README.md", "later\n")
        .commit("someone else's commit");
    let find = |act: &str, stage: &str, batch: Option<usize>, limit: usize| {
        find_step(repo.path(), "main", act, stage, batch, limit).expect("find_step")
    };
    assert_eq!(find("act-1", "canary", Some(1), 10), Some(oid));
    assert_eq!(find("act-1", "canary", Some(2), 10), None, "another batch");
    assert_eq!(
        find("act-1", "canary", None, 10),
        None,
        "a step without batch"
    );
    assert_eq!(
        find("act-2", "canary", Some(1), 10),
        None,
        "another activation"
    );
    assert_eq!(find("act-1", "fleet", Some(1), 10), None, "another stage");
    assert_eq!(
        find("act-1", "canary", Some(1), 1),
        None,
        "beyond the limit"
    );
}

#[test]
fn a_branch_that_moved_is_not_overwritten() {
    let repo = TestRepo::example();
    let base = head(repo.path(), "main").expect("head");
    let text = read_file(repo.path(), base, SITES).unwrap().unwrap();
    let edited = set_env(&text, "plant-c", &values(&[("INTERVAL", "1s")])).unwrap();
    let moved = repo
        .write("README.md", "moved\n")
        .commit("a concurrent push");
    let err = promote(
        repo.path(),
        "main",
        base,
        &[(SITES.to_string(), edited.text)],
        "campaign a stage s: set INTERVAL=1s on plant-c\n",
        None,
    )
    .expect_err("the branch moved");
    assert!(matches!(err, CommitError::Moved { .. }), "{err}");
    assert!(err.to_string().contains(&moved), "{err}");
    assert_eq!(
        repo.git(&["rev-parse", "main"]),
        moved,
        "main is left alone"
    );
}

#[test]
fn a_restore_commit_gives_back_the_original_bytes() {
    let repo = TestRepo::example();
    let original = std::fs::read_to_string(repo.path().join(SITES)).unwrap();
    let (promoted, edited) = promote_site(
        &repo,
        "act",
        "plant-a",
        &values(&[("INTERVAL", "30s"), ("NEW", "x")]),
        None,
    );
    let text = read_file(repo.path(), promoted, SITES).unwrap().unwrap();
    let restored = restore(&text, "plant-a", &edited.replaced).expect("restore");
    let step = Step {
        activation: "act",
        stage: "rollback",
        batch: None,
    };
    let msg = message(
        &step,
        &restore_summary(edited.replaced.values.keys(), &["plant-a".to_string()]),
    );
    let oid = promote(
        repo.path(),
        "main",
        promoted,
        &[(SITES.to_string(), restored)],
        &msg,
        None,
    )
    .expect("restore commit");
    assert_eq!(
        read_file(repo.path(), oid, SITES).unwrap().unwrap(),
        original
    );
    assert_eq!(
        repo.git(&["diff", &format!("{promoted}^"), &oid.to_string()]),
        "",
        "the tree is the one before the promote"
    );
    assert_eq!(
        repo.git(&["show", "-s", "--format=%s", &oid.to_string()]),
        "campaign act stage rollback: restore INTERVAL, NEW on plant-a"
    );
    assert_eq!(
        find_step(repo.path(), "main", "act", "rollback", None, 5).unwrap(),
        Some(oid)
    );
}

#[test]
fn bad_paths_are_refused() {
    let repo = TestRepo::example();
    let base = head(repo.path(), "main").unwrap();
    for path in ["../x", "/etc/passwd", "a//b", ".git/config", ""] {
        let err = promote(
            repo.path(),
            "main",
            base,
            &[(path.to_string(), "x".into())],
            "m",
            None,
        )
        .expect_err(path);
        assert!(matches!(err, CommitError::Path { .. }), "{path}: {err}");
    }
}

#[test]
fn an_ssh_signed_promote_passes_the_signature_policy() {
    let repo = TestRepo::example();
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = util::ssh_key(keys.path(), "id_ed25519");
    let allowed = keys.path().join("allowed_signers");
    std::fs::write(&allowed, format!("fermata@localhost {public}\n")).unwrap();
    let signing = Signing::Ssh { key };
    let (oid, _) = promote_site(
        &repo,
        "act",
        "plant-a",
        &values(&[("A", "1")]),
        Some(&signing),
    );

    let policy = SignaturePolicy::ssh_from_file(&allowed).expect("policy");
    let git = git2::Repository::open(repo.path()).unwrap();
    policy
        .verify(&git, oid, chrono::Utc::now())
        .expect("the signed commit verifies");
    // git itself agrees.
    let config = format!("gpg.ssh.allowedSignersFile={}", allowed.display());
    util::git(
        repo.path(),
        &["-c", &config, "verify-commit", &oid.to_string()],
    );

    // The same promote unsigned is refused by that policy.
    let (unsigned, _) = promote_site(&repo, "act2", "plant-b", &values(&[("A", "1")]), None);
    assert!(policy.verify(&git, unsigned, chrono::Utc::now()).is_err());
}

#[test]
fn a_key_that_cannot_sign_is_a_clear_error() {
    let repo = TestRepo::example();
    let base = head(repo.path(), "main").unwrap();
    let signing = Signing::Ssh {
        key: repo.path().join("no-such-key"),
    };
    let err = promote(repo.path(), "main", base, &[], "m", Some(&signing)).unwrap_err();
    assert!(matches!(err, CommitError::Sign { .. }), "{err}");
    assert!(err.to_string().contains("no-such-key"), "{err}");
    assert_eq!(head(repo.path(), "main").unwrap(), base);
}
