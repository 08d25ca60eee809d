//! Status in Git (DESIGN.md section 7, invariant 5): the status branch, its
//! notes, the push from a mirror, read back; inspected with the git CLI.

mod util;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use fermata::status::margo::DeploymentStatusManifest;
use fermata::status::{
    summarize, ComponentStatus, Condition, DeploymentStatus, State, StatusBody, StatusError,
    StatusErrorInfo, StatusMetadata, StatusRepo, StatusUpdate, WindowStatus,
};
use fermata::target::SourceRef;
use util::{git, TestRepo};

const BRANCH: &str = "fermata/status";

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("valid time")
}

fn status(id: &str, source: &SourceRef, state: State, t: i64) -> DeploymentStatus {
    DeploymentStatus {
        api_version: "fermata.dev/v1alpha1".into(),
        kind: "DeploymentStatus".into(),
        metadata: StatusMetadata {
            deployment_id: id.into(),
            composition: None,
            device_id: None,
            time_stamp: at(t),
        },
        source: source.clone(),
        status: StatusBody {
            state,
            digest: Some("sha256:abc".into()),
            applied: None,
            window: Some(WindowStatus {
                name: "weekend-night".into(),
                open: false,
                next_open: Some(at(86_400)),
            }),
            conditions: vec![Condition {
                r#type: "Ready".into(),
                status: "False".into(),
                reason: "WindowClosed".into(),
                message: "waiting for weekend-night".into(),
                last_transition_time: Some(at(t)),
            }],
            error: None,
            r#override: None,
            symphony: None,
            ungated: Vec::new(),
            components: vec![ComponentStatus {
                name: format!("apps/v1/Deployment/line/{}", id.replace('/', "-")),
                state,
                skipped: None,
                error: None,
            }],
        },
    }
}

/// Every time stamp moved to `t`: what a later pass with the same outcome produces.
fn restamp(mut s: DeploymentStatus, t: i64) -> DeploymentStatus {
    s.metadata.time_stamp = at(t);
    for c in &mut s.status.conditions {
        c.last_transition_time = Some(at(t));
    }
    s
}

fn update(source: &SourceRef, statuses: Vec<DeploymentStatus>) -> StatusUpdate {
    let summary = format!(
        "{}@{}: {}",
        source.branch,
        &source.commit[..7],
        summarize(&statuses)
    );
    let mut table = String::from("| composition | state |\n|---|---|\n");
    for s in &statuses {
        table.push_str(&format!(
            "| {} | {} |\n",
            s.metadata.deployment_id, s.status.state
        ));
    }
    let now = statuses
        .iter()
        .map(|s| s.metadata.time_stamp)
        .max()
        .unwrap_or_default();
    StatusUpdate {
        source: source.clone(),
        statuses,
        summary,
        table,
        now,
        windows: Default::default(),
    }
}

/// A repository with one commit on `main`; returns it and that commit.
fn source_repo() -> (TestRepo, SourceRef) {
    let repo = TestRepo::new();
    repo.write("README.md", "fleet\n");
    let commit = repo.commit("fleet");
    (
        repo,
        SourceRef {
            branch: "main".into(),
            commit,
        },
    )
}

fn in_place(repo: &TestRepo, site: Option<&str>) -> StatusRepo {
    StatusRepo::new(
        repo.path().join(".git"),
        None,
        BRANCH,
        site.map(str::to_string),
    )
}

fn files(dir: &Path, rev: &str) -> Vec<String> {
    git(dir, &["ls-tree", "-r", "--name-only", rev])
        .lines()
        .map(str::to_string)
        .collect()
}

fn show(dir: &Path, rev: &str, path: &str) -> String {
    git(dir, &["show", &format!("{rev}:{path}")])
}

fn note(dir: &Path, commit: &str) -> String {
    git(dir, &["notes", "--ref=fermata", "show", commit])
}

fn rev(dir: &Path, rev: &str) -> String {
    git(dir, &["rev-parse", rev])
}

#[test]
fn first_publish_creates_branch_tree_message_and_note() {
    let (repo, src) = source_repo();
    let statuses = vec![
        status("line-control/vision", &src, State::Staged, 0),
        status("line-control/db", &src, State::Installed, 0),
    ];
    let up = update(&src, statuses.clone());
    let id = in_place(&repo, None)
        .publish(&up)
        .expect("publish")
        .expect("a commit");
    let dir = repo.path();
    assert_eq!(rev(dir, BRANCH), id.to_string());
    assert_eq!(
        files(dir, BRANCH),
        [
            "main/line-control/db.yaml",
            "main/line-control/vision.yaml",
            "main/summary.md",
            "main/timeline.svg"
        ]
    );
    let vision: DeploymentStatus =
        serde_yaml::from_str(&show(dir, BRANCH, "main/line-control/vision.yaml")).unwrap();
    assert_eq!(vision, statuses[0]);
    assert_eq!(show(dir, BRANCH, "main/summary.md"), up.table.trim_end());
    let short = &src.commit[..7];
    assert_eq!(
        git(dir, &["log", "-1", "--format=%B", BRANCH]),
        format!(
            "main@{short}: line-control/vision new -> staged, line-control/db new -> installed\n\n\
             main@{short}: 1 installed, 1 staged\n\nFermata-Source: main@{}",
            src.commit
        )
    );
    // The notes commit says who wrote it, not libgit2's default message.
    assert_eq!(
        git(dir, &["log", "-1", "--format=%s", "refs/notes/fermata"]),
        format!("Notes added by fermata: status of {short}")
    );
    assert_eq!(
        git(dir, &["log", "-1", "--format=%an <%ae>|%cn <%ce>", BRANCH]),
        "fermata <fermata@localhost>|fermata <fermata@localhost>"
    );
    assert_eq!(
        git(
            dir,
            &[
                "log",
                "-1",
                "--format=%(trailers:key=Fermata-Source,valueonly)",
                BRANCH
            ]
        ),
        format!("main@{}", src.commit)
    );
    assert_eq!(git(dir, &["rev-list", "--count", BRANCH]), "1");
    let log = git(dir, &["log", "--notes=fermata", "-1", &src.commit]);
    assert!(
        log.contains(&format!(
            "Notes (fermata):\n    main@{short}: 1 installed, 1 staged"
        )),
        "{log}"
    );
    // Built without a checkout: the user's branch, index and tree are untouched.
    assert_eq!(git(dir, &["symbolic-ref", "HEAD"]), "refs/heads/main");
    assert_eq!(git(dir, &["status", "--porcelain"]), "");
}

#[test]
fn same_statuses_with_new_time_stamps_write_nothing() {
    let (repo, src) = source_repo();
    let sr = in_place(&repo, None);
    let first = vec![
        status("line-control/vision", &src, State::Staged, 0),
        status("line-control/db", &src, State::Installed, 0),
    ];
    sr.publish(&update(&src, first.clone())).unwrap().unwrap();
    let dir = repo.path();
    let tip = rev(dir, BRANCH);
    let notes = rev(dir, "refs/notes/fermata");
    let later: Vec<_> = first.into_iter().map(|s| restamp(s, 600)).collect();
    assert_eq!(sr.publish(&update(&src, later)).unwrap(), None);
    assert_eq!(rev(dir, BRANCH), tip);
    assert_eq!(rev(dir, "refs/notes/fermata"), notes);
    assert_eq!(
        git(dir, &["rev-list", "--count", "refs/notes/fermata"]),
        "1"
    );
}

#[test]
fn one_changed_status_is_one_commit_touching_only_its_file() {
    let (repo, src) = source_repo();
    let sr = in_place(&repo, None);
    let vision = status("line-control/vision", &src, State::Staged, 0);
    let db = status("line-control/db", &src, State::Installed, 0);
    sr.publish(&update(&src, vec![vision.clone(), db.clone()]))
        .unwrap()
        .unwrap();
    let dir = repo.path();
    let old = rev(dir, BRANCH);
    let old_db = show(dir, &old, "main/line-control/db.yaml");

    let mut vision2 = restamp(vision, 900);
    vision2.status.state = State::Installed;
    vision2.status.components[0].state = State::Installed;
    let new = sr
        .publish(&update(&src, vec![vision2, restamp(db, 900)]))
        .unwrap()
        .expect("a commit");
    assert_eq!(rev(dir, &format!("{BRANCH}^")), old);
    assert_eq!(new.to_string(), rev(dir, BRANCH));
    assert_eq!(
        git(dir, &["diff", "--name-only", &old, BRANCH]),
        "main/line-control/vision.yaml\nmain/summary.md\nmain/timeline.svg"
    );
    // The unchanged status keeps its bytes, old time stamp included.
    assert_eq!(show(dir, BRANCH, "main/line-control/db.yaml"), old_db);
    assert!(old_db.contains(&at(0).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
    let changed = show(dir, BRANCH, "main/line-control/vision.yaml");
    assert!(changed.contains(&at(900).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
    assert_eq!(
        git(dir, &["log", "-1", "--format=%s", BRANCH]),
        format!(
            "main@{}: line-control/vision staged -> installed, 1 unchanged",
            &src.commit[..7]
        )
    );
    // The note on the source commit is overwritten, not appended to.
    assert_eq!(
        note(dir, &src.commit),
        format!("main@{}: 2 installed", &src.commit[..7])
    );
}

#[test]
fn removed_composition_loses_its_file_and_other_branches_stay() {
    let (repo, src) = source_repo();
    let sr = in_place(&repo, None);
    let a = status("shop/web", &src, State::Installed, 0);
    let b = status("shop/db", &src, State::Installed, 0);
    sr.publish(&update(&src, vec![a.clone(), b]))
        .unwrap()
        .unwrap();
    // A branch whose name contains a slash, and extends `main`'s directory.
    let rel = SourceRef {
        branch: "main/next".into(),
        commit: src.commit.clone(),
    };
    let c = status("shop/web", &rel, State::Staged, 0);
    sr.publish(&update(&rel, vec![c])).unwrap().unwrap();
    let dir = repo.path();
    let before = rev(dir, BRANCH);

    sr.publish(&update(&src, vec![restamp(a, 60)]))
        .unwrap()
        .expect("a commit");
    assert_eq!(
        git(dir, &["diff", "--name-status", &before, BRANCH]),
        "D\tmain/shop/db.yaml\nM\tmain/summary.md"
    );
    assert_eq!(
        files(dir, BRANCH),
        [
            "main/next/shop/web.yaml",
            "main/next/summary.md",
            "main/next/timeline.svg",
            "main/shop/web.yaml",
            "main/summary.md",
            "main/timeline.svg"
        ]
    );
    // Removing every composition keeps the summary and the picture only.
    sr.publish(&update(&src, vec![]))
        .unwrap()
        .expect("a commit");
    assert_eq!(
        files(dir, BRANCH),
        [
            "main/next/shop/web.yaml",
            "main/next/summary.md",
            "main/next/timeline.svg",
            "main/summary.md",
            "main/timeline.svg"
        ]
    );
}

/// `s` as a site publishes it: with the site's Margo ids.
fn as_site(mut s: DeploymentStatus, site: &str) -> DeploymentStatus {
    s.for_site(site);
    s
}

fn refs(dir: &Path) -> Vec<String> {
    git(dir, &["for-each-ref", "--format=%(refname)"])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn two_sites_write_only_their_own_branch_and_notes_ref() {
    let (repo, src) = source_repo();
    let dir = repo.path();
    let site_a = in_place(&repo, Some("site-a"));
    let site_b = in_place(&repo, Some("site-b"));
    assert_eq!(site_a.branch(), "fermata/sites/site-a");
    let a = status("line-control/vision", &src, State::Installed, 0);
    let b = status("line-control/vision", &src, State::Failed, 0);
    site_a
        .publish(&update(&src, vec![a.clone()]))
        .unwrap()
        .unwrap();
    site_b
        .publish(&update(&src, vec![b.clone()]))
        .unwrap()
        .unwrap();
    // No shared ref at all: each site its branch and its notes.
    assert_eq!(
        refs(dir),
        [
            "refs/heads/fermata/sites/site-a",
            "refs/heads/fermata/sites/site-b",
            "refs/heads/main",
            "refs/notes/fermata-sites/site-a",
            "refs/notes/fermata-sites/site-b",
        ]
    );
    for branch in ["fermata/sites/site-a", "fermata/sites/site-b"] {
        assert_eq!(
            files(dir, branch),
            [
                "main/line-control/vision.yaml",
                "main/summary.md",
                "main/timeline.svg"
            ]
        );
    }
    let short = &src.commit[..7];
    assert_eq!(
        git(
            dir,
            &[
                "log",
                "-1",
                "--format=%s|%(trailers:key=Fermata-Site,valueonly)",
                "fermata/sites/site-b"
            ]
        ),
        format!("site-b main@{short}: line-control/vision new -> failed|site-b")
    );
    let b_tip = rev(dir, "fermata/sites/site-b");

    let mut a2 = restamp(a, 60);
    a2.status.state = State::Removing;
    site_a
        .publish(&update(&src, vec![a2.clone()]))
        .unwrap()
        .unwrap();
    assert_eq!(rev(dir, "fermata/sites/site-b"), b_tip);
    assert_eq!(
        git(
            dir,
            &[
                "diff",
                "--name-only",
                "fermata/sites/site-a^",
                "fermata/sites/site-a"
            ]
        ),
        "main/line-control/vision.yaml\nmain/summary.md\nmain/timeline.svg"
    );
    // One note per site, and `git log` shows them all side by side.
    let site_note = |site: &str| {
        git(
            dir,
            &[
                "notes",
                &format!("--ref=fermata-sites/{site}"),
                "show",
                &src.commit,
            ],
        )
    };
    assert_eq!(
        site_note("site-a"),
        format!("site-a main@{short}: 1 removing")
    );
    assert_eq!(
        site_note("site-b"),
        format!("site-b main@{short}: 1 failed")
    );
    let log = git(dir, &["log", "-1", "--notes=fermata-sites/*", "main"]);
    assert!(
        log.contains("Notes (fermata-sites/site-a):\n    site-a main@")
            && log.contains("Notes (fermata-sites/site-b):\n    site-b main@"),
        "{log}"
    );

    // Read back with the site's ids; the two sites' deploymentIds differ.
    let (read_a, read_b) = (site_a.read().unwrap(), site_b.read().unwrap());
    assert_eq!(read_a, vec![as_site(a2, "site-a")]);
    assert_eq!(read_b, vec![as_site(b, "site-b")]);
    for (read, site) in [(&read_a[0], "site-a"), (&read_b[0], "site-b")] {
        assert_eq!(read.composition(), "line-control/vision");
        assert_eq!(read.metadata.device_id.as_deref(), Some(site));
        assert_eq!(read.metadata.deployment_id.len(), 36, "{read:?}");
    }
    assert_ne!(
        read_a[0].metadata.deployment_id,
        read_b[0].metadata.deployment_id
    );
    let file = show(dir, "fermata/sites/site-a", "main/line-control/vision.yaml");
    assert!(
        file.contains(&format!(
            "deploymentId: {}\n  composition: line-control/vision\n  deviceId: site-a\n",
            read_a[0].metadata.deployment_id
        )),
        "{file}"
    );
    let margo = serde_json::to_value(DeploymentStatusManifest::from(&read_b[0])).unwrap();
    assert_eq!(margo["deviceId"], "site-b");
    assert_eq!(
        margo["deploymentId"],
        read_b[0].metadata.deployment_id.as_str()
    );
    // Without a site, fermata/status: nothing there.
    assert_eq!(in_place(&repo, None).read().unwrap(), vec![]);
}

#[test]
fn a_deployment_id_annotation_is_kept_and_old_layouts_still_read() {
    let (repo, src) = source_repo();
    let dir = repo.path();
    let mut chosen = status("line-control/vision", &src, State::Staged, 0);
    chosen.metadata = StatusMetadata::new(
        &"line-control/vision".parse().unwrap(),
        Some("wos-1234"),
        at(0),
    );
    let site = in_place(&repo, Some("site-a"));
    site.publish(&update(&src, vec![chosen.clone()]))
        .unwrap()
        .unwrap();
    let read = site.read().unwrap();
    assert_eq!(read[0].metadata.deployment_id, "wos-1234");
    assert_eq!(read[0].composition(), "line-control/vision");
    assert_eq!(read[0].metadata.device_id.as_deref(), Some("site-a"));
    // Site-less, the annotation too is kept, with the composition beside it.
    let plain = in_place(&repo, None);
    plain
        .publish(&update(&src, vec![chosen.clone()]))
        .unwrap()
        .unwrap();
    assert_eq!(plain.read().unwrap(), vec![chosen]);
    // A file as fermata wrote it before `composition` existed still reads.
    let old = show(dir, BRANCH, "main/line-control/vision.yaml").replace(
        "deploymentId: wos-1234\n  composition: line-control/vision\n",
        "deploymentId: line-control/vision\n",
    );
    let old_status: DeploymentStatus = serde_yaml::from_str(&old).unwrap();
    assert_eq!(old_status.composition(), "line-control/vision");
    assert_eq!(old_status.metadata.composition, None);
}

/// A bare remote of a source repository, and site-a's mirror of it,
/// whose status is pushed there.
struct Pushing {
    _upstream: TestRepo,
    src: SourceRef,
    tmp: tempfile::TempDir,
    remote: PathBuf,
    url: String,
    mirror_a: PathBuf,
    site_a: StatusRepo,
}

fn pushing() -> Pushing {
    let (upstream, src) = source_repo();
    let tmp = tempfile::tempdir().unwrap();
    let remote = util::bare_clone(upstream.path(), tmp.path(), "remote.git");
    let url = format!("file://{}", remote.display());
    let mirror_a = mirror_of(&remote, tmp.path(), "a.git");
    let site_a = StatusRepo::new(mirror_a.clone(), Some(url.clone()), BRANCH, None);
    Pushing {
        _upstream: upstream,
        src,
        tmp,
        remote,
        url,
        mirror_a,
        site_a,
    }
}

/// A bare "remote", and a mirror of it as fermata keeps one.
fn mirror_of(remote: &Path, into: &Path, name: &str) -> PathBuf {
    git(
        into,
        &["clone", "-q", "--mirror", remote.to_str().unwrap(), name],
    );
    into.join(name)
}

#[test]
fn mirror_pushes_and_rebases_on_a_moved_remote() {
    let p = pushing();
    let (src, tmp, remote, url) = (&p.src, &p.tmp, &p.remote, &p.url);
    let (mirror_a, site_a) = (&p.mirror_a, &p.site_a);
    let a = status("line-control/vision", src, State::Staged, 0);
    let first = site_a
        .publish(&update(src, vec![a.clone()]))
        .unwrap()
        .expect("a commit");
    assert_eq!(rev(remote, BRANCH), first.to_string());
    let short = &src.commit[..7];
    assert_eq!(note(remote, &src.commit), format!("main@{short}: 1 staged"));

    // Another writer (a second replica, from its own mirror) moves the
    // remote branch and notes.
    let mirror_b = mirror_of(remote, tmp.path(), "b.git");
    let site_b = StatusRepo::new(mirror_b, Some(url.clone()), BRANCH, None);
    let b = status("line-control/vision", src, State::Installed, 0);
    let b2 = status("shop/web", src, State::Installed, 0);
    let second = site_b
        .publish(&update(src, vec![b.clone(), b2.clone()]))
        .unwrap()
        .expect("a commit");
    assert_eq!(rev(remote, BRANCH), second.to_string());
    assert_eq!(
        note(remote, &src.commit),
        format!("main@{short}: 2 installed")
    );

    // site-a's mirror is behind: its push is rejected, rebuilt on the
    // remote tip and pushed again.
    assert_eq!(rev(mirror_a, BRANCH), first.to_string());
    let mut a2 = restamp(a, 60);
    a2.status.state = State::Removing;
    a2.status.components[0].state = State::Removing;
    let third = site_a
        .publish(&update(src, vec![a2.clone(), b2.clone()]))
        .unwrap()
        .expect("a commit");
    assert_eq!(rev(remote, BRANCH), third.to_string());
    assert_eq!(rev(mirror_a, BRANCH), third.to_string());
    assert_eq!(rev(remote, &format!("{BRANCH}^")), second.to_string());
    assert_eq!(git(remote, &["rev-list", "--count", BRANCH]), "3");
    assert_eq!(git(remote, &["rev-list", "--merges", BRANCH]), "");
    assert_eq!(
        files(remote, BRANCH),
        [
            "main/line-control/vision.yaml",
            "main/shop/web.yaml",
            "main/summary.md",
            "main/timeline.svg"
        ]
    );
    // Rebuilt on the remote's tip: only what differs from it was written.
    assert_eq!(
        git(
            remote,
            &["diff", "--name-only", &format!("{BRANCH}^"), BRANCH]
        ),
        "main/line-control/vision.yaml\nmain/summary.md\nmain/timeline.svg"
    );
    let a_file: DeploymentStatus =
        serde_yaml::from_str(&show(remote, BRANCH, "main/line-control/vision.yaml")).unwrap();
    assert_eq!(a_file, a2);
    assert_eq!(
        note(remote, &src.commit),
        format!("main@{short}: 1 installed, 1 removing")
    );
    assert_eq!(
        git(remote, &["rev-list", "--merges", "refs/notes/fermata"]),
        ""
    );
    // Nothing left unpushed in the mirror.
    assert_eq!(
        rev(mirror_a, "refs/notes/fermata"),
        rev(remote, "refs/notes/fermata")
    );
    // The user's branch on the remote is untouched.
    assert_eq!(rev(remote, "main"), src.commit);
}

#[test]
fn failed_push_leaves_the_mirror_as_it_was() {
    let (upstream, src) = source_repo();
    let tmp = tempfile::tempdir().unwrap();
    let mirror = mirror_of(upstream.path(), tmp.path(), "m.git");
    let gone = format!("file://{}", tmp.path().join("gone.git").display());
    let sr = StatusRepo::new(mirror.clone(), Some(gone), BRANCH, None);
    let up = update(&src, vec![status("shop/web", &src, State::Staged, 0)]);
    let err = sr.publish(&up).unwrap_err();
    assert!(matches!(err, StatusError::Git { .. }), "{err}");
    // No local status commit or note that the next pass would take as pushed.
    assert_eq!(
        git(
            &mirror,
            &["for-each-ref", "refs/heads/fermata", "refs/notes"]
        ),
        ""
    );
}

#[test]
fn refuses_to_write_to_the_watched_branch() {
    let (repo, src) = source_repo();
    let sr = StatusRepo::new(repo.path().join(".git"), None, "main", None);
    let up = update(&src, vec![status("shop/web", &src, State::Staged, 0)]);
    let err = sr.publish(&up).unwrap_err();
    assert!(matches!(err, StatusError::WatchedBranch { .. }), "{err}");
    assert!(err.to_string().contains("refusing"), "{err}");
    assert_eq!(rev(repo.path(), "main"), src.commit);
    assert_eq!(git(repo.path(), &["for-each-ref", "refs/notes"]), "");
}

#[test]
fn refuses_to_move_a_checked_out_status_branch() {
    let (repo, src) = source_repo();
    repo.git(&["checkout", "-q", "-b", BRANCH]);
    let up = update(&src, vec![status("shop/web", &src, State::Staged, 0)]);
    let err = in_place(&repo, None).publish(&up).unwrap_err();
    assert!(matches!(err, StatusError::CheckedOut { .. }), "{err}");
    assert_eq!(rev(repo.path(), BRANCH), src.commit);
}

#[test]
fn read_returns_what_was_published_and_converts_to_margo() {
    let (repo, src) = source_repo();
    let sr = in_place(&repo, None);
    assert_eq!(sr.read().unwrap(), vec![], "no branch yet");
    let mut failed = status("line-control/db", &src, State::Failed, 0);
    failed.status.error = Some(StatusErrorInfo {
        code: "ApplyFailed".into(),
        source: "target/plant-a".into(),
        message: "disk full".into(),
    });
    let staged = status("line-control/vision", &src, State::Staged, 0);
    let rel = SourceRef {
        branch: "release".into(),
        commit: src.commit.clone(),
    };
    let other = status("shop/web", &rel, State::Installed, 0);
    sr.publish(&update(&src, vec![staged.clone(), failed.clone()]))
        .unwrap()
        .unwrap();
    sr.publish(&update(&rel, vec![other.clone()]))
        .unwrap()
        .unwrap();
    let read = sr.read().unwrap();
    assert_eq!(read, vec![failed.clone(), staged.clone(), other]);

    let margo = serde_json::to_value(DeploymentStatusManifest::from(&read[1])).unwrap();
    assert_eq!(
        margo,
        serde_json::json!({
            "apiVersion": "deployment.margo/v1",
            "kind": "DeploymentStatusManifest",
            "deploymentId": "line-control/vision",
            "status": {"state": "pending"},
            "components": [{"name": "apps/v1/Deployment/line/line-control-vision", "state": "pending"}],
        })
    );
    let margo = serde_json::to_value(DeploymentStatusManifest::from(&read[0])).unwrap();
    assert_eq!(margo["status"]["state"], "failed");
    assert_eq!(
        margo["status"]["error"],
        serde_json::json!({"code": "ApplyFailed", "source": "target/plant-a", "message": "disk full"})
    );
    assert_eq!(margo["components"][0]["state"], "failed");
}

#[test]
fn unparseable_status_file_is_an_error_naming_it() {
    let (repo, src) = source_repo();
    let sr = in_place(&repo, None);
    sr.publish(&update(
        &src,
        vec![status("shop/web", &src, State::Staged, 0)],
    ))
    .unwrap()
    .unwrap();
    // Someone commits a broken file onto the status branch.
    let dir = repo.path();
    let blob = {
        let tmp = dir.join("broken.tmp");
        std::fs::write(&tmp, "state: [not, a, status").unwrap();
        let id = git(dir, &["hash-object", "-w", tmp.to_str().unwrap()]);
        std::fs::remove_file(tmp).unwrap();
        id
    };
    let index = dir.join(".git/tmp-index");
    let env_git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .current_dir(dir)
            .env("GIT_INDEX_FILE", &index)
            .args(["-c", "user.name=t", "-c", "user.email=t@t.invalid"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    env_git(&["read-tree", BRANCH]);
    env_git(&[
        "update-index",
        "--add",
        "--cacheinfo",
        &format!("100644,{blob},main/shop/broken.yaml"),
    ]);
    let tree = env_git(&["write-tree"]);
    let commit = env_git(&["commit-tree", &tree, "-p", BRANCH, "-m", "oops"]);
    git(
        dir,
        &["update-ref", &format!("refs/heads/{BRANCH}"), &commit],
    );

    let err = sr.read().unwrap_err();
    assert!(matches!(err, StatusError::BadStatusFile { .. }), "{err}");
    assert!(err.to_string().contains("main/shop/broken.yaml"), "{err}");
    // The next publish owns `main/`: the stray file goes, the status stays.
    sr.publish(&update(
        &src,
        vec![status("shop/web", &src, State::Staged, 9)],
    ))
    .unwrap()
    .expect("a commit");
    assert_eq!(
        files(dir, BRANCH),
        ["main/shop/web.yaml", "main/summary.md", "main/timeline.svg"]
    );
    assert_eq!(sr.read().unwrap().len(), 1);
}

#[test]
fn rebases_on_a_remote_branch_moved_without_notes() {
    let (upstream, src) = source_repo();
    let tmp = tempfile::tempdir().unwrap();
    let remote = util::bare_clone(upstream.path(), tmp.path(), "remote.git");
    let mirror = mirror_of(&remote, tmp.path(), "m.git");
    // Someone pushes a status branch by hand: no notes ref on the remote.
    upstream.git(&["checkout", "-q", "--orphan", "hand"]);
    upstream.git(&["rm", "-q", "-r", "--cached", "."]);
    upstream.write("site-x/NOTE.md", "hand-written\n");
    upstream.git(&["add", "site-x/NOTE.md"]);
    upstream.git(&["commit", "-q", "-m", "by hand"]);
    upstream.git(&[
        "push",
        "-q",
        remote.to_str().unwrap(),
        "hand:refs/heads/fermata/sites/site-a",
    ]);
    let branch = "fermata/sites/site-a";
    let hand = rev(&remote, branch);

    let sr = StatusRepo::new(
        mirror,
        Some(remote.to_str().unwrap().to_string()),
        BRANCH,
        Some("site-a".into()),
    );
    let id = sr
        .publish(&update(
            &src,
            vec![status("shop/web", &src, State::Staged, 0)],
        ))
        .unwrap()
        .expect("a commit");
    assert_eq!(rev(&remote, branch), id.to_string());
    assert_eq!(rev(&remote, &format!("{branch}^")), hand);
    assert_eq!(
        files(&remote, branch),
        [
            "main/shop/web.yaml",
            "main/summary.md",
            "main/timeline.svg",
            "site-x/NOTE.md"
        ]
    );
    assert_eq!(
        git(
            &remote,
            &["notes", "--ref=fermata-sites/site-a", "show", &src.commit]
        ),
        format!("site-a main@{}: 1 staged", &src.commit[..7])
    );
}

#[test]
fn ref_locks_left_by_a_killed_fermata_do_not_block_the_next_publish() {
    let (repo, src) = source_repo();
    let sr = in_place(&repo, None);
    sr.publish(&update(&src, vec![status("a/x", &src, State::Staged, 0)]))
        .unwrap()
        .expect("a commit");
    // What a kill -9 between git's lock and rename leaves behind.
    let git_dir = repo.path().join(".git");
    let stale = [
        git_dir.join("refs/heads/fermata/status.lock"),
        git_dir.join("refs/notes/fermata.lock"),
    ];
    for lock in &stale {
        std::fs::write(lock, "0000000000000000000000000000000000000000\n").unwrap();
    }
    let id = sr
        .publish(&update(
            &src,
            vec![status("a/x", &src, State::Installed, 1)],
        ))
        .expect("publish after a crash")
        .expect("a commit");
    assert_eq!(rev(repo.path(), BRANCH), id.to_string());
    assert!(note(repo.path(), &src.commit).contains("installed"));
    for lock in &stale {
        assert!(!lock.exists(), "{} left", lock.display());
    }
}

/// The pack files of a repository's object database.
fn packs(dir: &Path) -> usize {
    std::fs::read_dir(dir.join(".git/objects/pack"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".pack"))
            })
            .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_large_update_lands_as_one_pack_and_a_small_change_stays_loose() {
    let (repo, src) = source_repo();
    let sr = in_place(&repo, None);
    let dir = repo.path();
    let many: Vec<_> = (0..200)
        .map(|i| status(&format!("fleet/v{i:03}"), &src, State::Staged, 0))
        .collect();
    assert_eq!(packs(dir), 0);
    sr.publish(&update(&src, many.clone())).unwrap().unwrap();
    assert_eq!(packs(dir), 1, "200 new files: one pack");
    // The user's own repository: its config is left alone.
    assert_eq!(window_memory(dir), None);
    // Every file is readable from it, by git itself.
    assert_eq!(files(dir, BRANCH).len(), 200 + 2);
    git(dir, &["fsck", "--no-dangling"]);

    // One status of the 200 changes: loose objects, no second pack.
    let mut changed = many;
    changed[7].status.state = State::Installed;
    sr.publish(&update(&src, changed.clone())).unwrap().unwrap();
    assert_eq!(packs(dir), 1);
    assert!(show(dir, BRANCH, "main/fleet/v007.yaml").contains("installed"));
    // A large update again, on the one before: a second pack, and the
    // history kept (libgit2 drops a parent found through another handle).
    for s in &mut changed {
        s.status.state = State::Failed;
    }
    sr.publish(&update(&src, changed)).unwrap().unwrap();
    assert_eq!(packs(dir), 2);
    assert_eq!(git(dir, &["rev-list", "--count", BRANCH]), "3");
    git(dir, &["fsck", "--no-dangling"]);
}

/// `pack.windowMemory` as the repository's own config sets it.
fn window_memory(git_dir: &Path) -> Option<i64> {
    let config = git2::Repository::open(git_dir).unwrap().config().unwrap();
    let local = config.open_level(git2::ConfigLevel::Local).unwrap();
    local.get_i64("pack.windowMemory").ok()
}

/// The pack files in a bare repository's object database, by name (a
/// pack is named by its content).
fn pack_names(git_dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(git_dir.join("objects/pack"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".pack"))
        .collect()
}

#[test]
fn a_large_update_sends_the_pack_it_wrote_and_a_moved_remote_still_gets_every_object() {
    let p = pushing();
    let (src, remote) = (&p.src, &p.remote);
    let fleet = |state: State, t: i64| -> Vec<DeploymentStatus> {
        (0..200)
            .map(|i| status(&format!("fleet/v{i:03}"), src, state, t))
            .collect()
    };
    let new_packs = |dir: &Path, before: &std::collections::BTreeSet<String>| {
        pack_names(dir)
            .difference(before)
            .cloned()
            .collect::<Vec<_>>()
    };

    // First the whole fleet (no parent), then every file changed (on a
    // parent the remote holds): each time the remote receives the very
    // pack the mirror wrote, and git finds every object there.
    for (n, (state, t)) in [(State::Staged, 0), (State::Installed, 60)]
        .into_iter()
        .enumerate()
    {
        let (local_before, remote_before) = (pack_names(&p.mirror_a), pack_names(remote));
        let commit = p
            .site_a
            .publish(&update(src, fleet(state, t)))
            .unwrap()
            .expect("a commit");
        assert_eq!(rev(remote, BRANCH), commit.to_string());
        let written = new_packs(&p.mirror_a, &local_before);
        assert_eq!(written.len(), 1, "the status objects are one pack");
        // (The notes ref's few objects are sent beside it.)
        assert!(
            new_packs(remote, &remote_before).contains(&written[0]),
            "the remote holds the same pack"
        );
        // Linked, not indexed again: one file on one file system.
        let inode = |dir: &Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(dir.join("objects/pack").join(&written[0]))
                .unwrap()
                .ino()
        };
        assert_eq!(inode(&p.mirror_a), inode(remote), "{}", written[0]);
        git(remote, &["fsck", "--no-dangling"]);
        assert!(show(remote, BRANCH, "main/fleet/v123.yaml").contains(state.as_str()));
        // The history is kept: each commit on the one before.
        let count = git(remote, &["rev-list", "--count", BRANCH]);
        assert_eq!(count, (n + 1).to_string());
        // fermata's mirror packs with a small delta window.
        assert_eq!(window_memory(&p.mirror_a), Some(8 * 1024));
    }

    // Another writer moves the remote: site-a's pack is built on a parent
    // the remote no longer has at its tip. The push is rejected, rebuilt
    // on the remote's tip, and the remote still ends up complete.
    let mirror_b = mirror_of(remote, p.tmp.path(), "b.git");
    // A window someone chose for this mirror is kept.
    git(&mirror_b, &["config", "pack.windowMemory", "1m"]);
    let site_b = StatusRepo::new(mirror_b.clone(), Some(p.url.clone()), BRANCH, None);
    site_b
        .publish(&update(src, fleet(State::Removing, 120)))
        .unwrap()
        .expect("a commit");
    assert_eq!(window_memory(&mirror_b), Some(1024 * 1024));
    let last = p
        .site_a
        .publish(&update(src, fleet(State::Failed, 180)))
        .unwrap()
        .expect("a commit");
    assert_eq!(rev(remote, BRANCH), last.to_string());
    assert_eq!(git(remote, &["rev-list", "--count", BRANCH]), "4");
    git(remote, &["fsck", "--no-dangling"]);
    assert_eq!(files(remote, BRANCH).len(), 200 + 2);
    assert!(show(remote, BRANCH, "main/fleet/v042.yaml").contains("failed"));
}
