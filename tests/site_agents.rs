//! Site agents through the real binary (DESIGN.md section 9, invariant 11):
//! `fermata run --site S` applies only what is placed on S, never writes a
//! target bound to another site, removes what a selector stops placing on
//! S, refuses an unknown site, and holds everything when its Site is gone.

mod util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use util::{fermata_at, minimal, TestRepo};

const NOW: &str = "2026-11-28T03:00:00Z";

fn sites(a_ring: &str) -> String {
    format!(
        "apiVersion: fermata.dev/v1alpha1
kind: Site
metadata: {{name: plant-a, labels: {{ring: {a_ring}, region: eu}}}}
spec: {{}}
---
apiVersion: fermata.dev/v1alpha1
kind: Site
metadata: {{name: plant-b, labels: {{ring: stable, region: eu}}}}
spec: {{}}
---
apiVersion: fermata.dev/v1alpha1
kind: Site
metadata: {{name: plant-c, labels: {{ring: stable, region: us}}}}
spec: {{}}
"
    )
}

/// `line` has an instance per site; `b-camera` exists only at plant-b, at
/// an absolute path every agent on this machine could reach.
fn targets(b_camera: &Path) -> String {
    format!(
        "apiVersion: fermata.dev/v1alpha1
kind: Target
metadata: {{name: line}}
spec:
  directory: {{path: line}}
---
apiVersion: fermata.dev/v1alpha1
kind: Target
metadata: {{name: b-camera}}
spec:
  site: plant-b
  directory: {{path: {}}}
",
        b_camera.display()
    )
}

fn symphony(name: &str, target: &str, sites: &str) -> String {
    format!(
        "apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {{name: {name}}}\nspec:\n  target: {target}\n{sites}  variations:\n    - name: app\n      synthesizer: {{name: app}}\n      synthesisEnv: [{{name: TAG, value: v1}}]\n"
    )
}

struct Fleet {
    repo: TestRepo,
    b_camera: tempfile::TempDir,
}

fn fleet() -> Fleet {
    let repo = TestRepo::new();
    let b_camera = tempfile::tempdir().unwrap();
    minimal(&repo)
        .remove("target.yaml")
        .write("sites.yaml", &sites("canary"))
        .write("targets.yaml", &targets(b_camera.path()))
        .write(
            "symphony.yaml",
            &symphony("eu", "line", "  sites: {matchLabels: {region: eu}}\n"),
        )
        .write(
            "canary.yaml",
            &symphony(
                "canary",
                "line",
                "  sites:\n    matchExpressions: [{key: ring, operator: In, values: [canary]}]\n",
            ),
        )
        .write(
            "camera.yaml",
            &symphony("camera", "b-camera", "  sites: {names: [plant-b]}\n"),
        );
    repo.commit("fleet");
    Fleet { repo, b_camera }
}

struct Agent {
    site: &'static str,
    state: tempfile::TempDir,
}

impl Agent {
    fn new(site: &'static str) -> Agent {
        Agent {
            site,
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn once(&self, repo: &TestRepo) -> util::Run {
        let p = repo.path().to_str().unwrap();
        fermata_at(
            self.state.path(),
            &[
                "run", "--once", "--repo", p, "--branch", "main", "--site", self.site,
            ],
            NOW,
            &[],
        )
    }

    fn line(&self, comp: &str) -> PathBuf {
        self.state.path().join("targets/line").join(comp)
    }

    /// The compositions applied on this site's `line`.
    fn applied(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sym in ["eu", "canary", "camera"] {
            if self.line(&format!("{sym}/app/current")).exists() {
                out.push(format!("{sym}/app"));
            }
        }
        out
    }
}

/// Every entry under `root` with its size, mtime and link target: what any
/// write would change.
fn tree(root: &Path) -> BTreeMap<PathBuf, (u64, i64, Option<PathBuf>)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        out.insert(
            p.clone(),
            (
                m.size(),
                m.mtime_nsec() + m.mtime() * 1_000_000_000,
                std::fs::read_link(&p).ok(),
            ),
        );
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
        }
    }
    out
}

#[test]
fn each_agent_applies_only_what_is_placed_on_its_site() {
    let f = fleet();
    // plant-b last: its camera is the one target any agent here could reach.
    let cases = [
        ("plant-c", vec![]),
        ("plant-a", vec!["eu/app", "canary/app"]),
        ("plant-b", vec!["eu/app"]),
    ];
    for (site, want) in cases {
        let agent = Agent::new(site);
        let run = agent.once(&f.repo);
        assert_eq!(run.code, 0, "{site}: {run:?}");
        assert_eq!(agent.applied(), want, "{site}: {run:?}");
        let camera = f.b_camera.path().join("camera/app/current").exists();
        assert_eq!(camera, site == "plant-b", "{site}: the bound target");
    }
}

#[test]
fn an_agent_never_writes_a_target_bound_to_another_site() {
    use std::os::unix::fs::PermissionsExt;
    let f = fleet();
    // plant-b's camera holds its deployment; then it is made read-only
    // (for a non-root run) and fingerprinted (for every run).
    let b = Agent::new("plant-b");
    assert_eq!(b.once(&f.repo).code, 0);
    assert!(f.b_camera.path().join("camera/app/current").exists());
    let before = tree(f.b_camera.path());
    std::fs::set_permissions(f.b_camera.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    // Every other site agent, also after the camera's symphony changes.
    f.repo.write(
        "camera.yaml",
        &symphony("camera", "b-camera", "  sites: {names: [plant-b]}\n")
            .replace("value: v1", "value: v2"),
    );
    f.repo.commit("camera v2");
    for site in ["plant-a", "plant-c"] {
        let run = Agent::new(site).once(&f.repo);
        assert_eq!(run.code, 0, "{site}: {run:?}");
        assert!(!run.stdout.contains("camera/app"), "{site}: {run:?}");
    }
    std::fs::set_permissions(f.b_camera.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        tree(f.b_camera.path()),
        before,
        "nothing written to plant-b's camera"
    );
}

#[test]
fn a_selector_that_stops_matching_removes_the_composition_at_that_site() {
    let f = fleet();
    let a = Agent::new("plant-a");
    assert_eq!(a.once(&f.repo).code, 0);
    assert_eq!(a.applied(), vec!["eu/app", "canary/app"]);
    f.repo.write("sites.yaml", &sites("stable"));
    f.repo.commit("plant-a leaves the canary ring");
    let run = a.once(&f.repo);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(a.applied(), vec!["eu/app"], "{run:?}");
    assert!(!a.line("canary/app").exists(), "removed, not orphaned");
}

#[test]
fn an_unknown_site_fails_at_start_with_a_suggestion() {
    let f = fleet();
    let run = Agent::new("plant-x").once(&f.repo);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("plant-x") && run.stderr.contains("did you mean"),
        "{run:?}"
    );
}

/// A Site renamed by mistake, or one that no longer loads, is not "nothing
/// is placed here": the agent refuses to start, and a pass (a daemon that
/// started before) holds everything it applied.
#[test]
fn a_site_gone_or_broken_holds_everything_it_applied() {
    let f = fleet();
    let a = Agent::new("plant-a");
    assert_eq!(a.once(&f.repo).code, 0);
    let p = f.repo.path().to_str().unwrap();
    let broken = [
        (
            "renamed",
            sites("canary").replace("plant-a", "plant-aa"),
            "did you mean \"plant-aa\"",
        ),
        (
            "invalid",
            sites("canary").replace("region: eu}}\nspec: {}", "region: eu}}\nspec: 7"),
            "Site \"plant-a\" is invalid",
        ),
        (
            "unreadable",
            sites("canary").replace("ring: canary", "ring: [canary"),
            "cannot be read",
        ),
    ];
    for (what, text, why) in broken {
        f.repo.write("sites.yaml", &text);
        f.repo.commit(what);
        // A pass: what a daemon started before would do.
        let plan = fermata_at(
            a.state.path(),
            &["plan", "--repo", p, "--branch", "main", "--site", "plant-a"],
            NOW,
            &[],
        );
        assert!(plan.stdout.contains(why), "{what}: {plan:?}");
        assert!(
            plan.stdout.contains("applying nothing, deleting nothing"),
            "{what}: {plan:?}"
        );
        // A start.
        let run = a.once(&f.repo);
        assert_ne!(run.code, 0, "{what}: {run:?}");
        assert_eq!(
            a.applied(),
            vec!["eu/app", "canary/app"],
            "{what}: nothing deleted"
        );
    }
}

/// Central mode: one `fermata run` without `--site` reconciles every site as
/// its agent would: a site-less directory target has an instance per site
/// under `<target-root>/<site>/`, a bound one is written once, and each
/// site's status goes to its own branch.
#[test]
fn central_mode_reconciles_every_site_on_its_own_instance_and_branch() {
    let f = fleet();
    let state = tempfile::tempdir().unwrap();
    let p = f.repo.path().to_str().unwrap();
    let central = ["run", "--once", "--repo", p, "--branch", "main"];
    let run = fermata_at(state.path(), &central, NOW, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let line = |site: &str, comp: &str| {
        state
            .path()
            .join("targets")
            .join(site)
            .join("line")
            .join(comp)
            .join("current")
            .exists()
    };
    let cases = [
        ("plant-a", vec!["eu/app", "canary/app"]),
        ("plant-b", vec!["eu/app"]),
        ("plant-c", vec![]),
    ];
    for (site, want) in cases {
        let got: Vec<&str> = ["eu/app", "canary/app", "camera/app"]
            .into_iter()
            .filter(|c| line(site, c))
            .collect();
        assert_eq!(got, want, "{site}: {run:?}");
        assert!(
            run.stdout.contains(&format!("site {site}: branch main")),
            "{run:?}"
        );
        let branch = f.repo.git(&[
            "rev-parse",
            "--verify",
            "-q",
            &format!("refs/heads/fermata/sites/{site}"),
        ]);
        assert!(!branch.trim().is_empty(), "{site}'s status branch");
    }
    assert!(f.b_camera.path().join("camera/app/current").exists());
    assert!(
        !state.path().join("targets/line").exists(),
        "no instance outside a site"
    );
    let heads = f.repo.git(&[
        "for-each-ref",
        "--format=%(objectname)",
        "refs/heads/fermata/",
    ]);
    // Again: nothing new to write anywhere.
    let again = fermata_at(state.path(), &central, NOW, &[]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(
        f.repo.git(&[
            "for-each-ref",
            "--format=%(objectname)",
            "refs/heads/fermata/"
        ]),
        heads,
        "{again:?}"
    );
}

/// A Site value a composition does not use renders it again (its inputs
/// changed) to the same state: its status keeps naming the commit that
/// last changed it, so a campaign awaiting a promote waits only for what
/// the promote changed.
#[test]
fn a_site_value_a_composition_does_not_use_keeps_its_source_commit() {
    let f = fleet();
    let a = Agent::new("plant-a");
    assert_eq!(a.once(&f.repo).code, 0);
    let first = f.repo.git(&["rev-parse", "HEAD"]).trim().to_string();
    f.repo.write(
        "sites.yaml",
        &sites("canary").replacen("spec: {}", "spec: {env: [{name: UNUSED, value: \"1\"}]}", 1),
    );
    f.repo.commit("a value nothing uses");
    assert_eq!(a.once(&f.repo).code, 0);
    let status = f
        .repo
        .git(&["show", "fermata/sites/plant-a:main/eu/app.yaml"]);
    assert!(status.contains(&format!("commit: {first}")), "{status}");
}
