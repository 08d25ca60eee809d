//! The fleet view (issue 13.4, DESIGN.md section 9) over a fleet made by
//! really running site agents against one bare origin:
//! - s1 at the newest commit, everything installed;
//! - s2 at the newest commit, `line/vision` failed (its artifact is a
//!   `file://` one and s2 has no `--artifact-root`);
//! - s3 reconciled the older commit and reported just now (behind);
//! - s4 reconciled the older commit and last reported three hours ago
//!   (its status commit re-dated: offline).

mod util;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use util::{git, TestRepo};

const AGENT_NOW: &str = "2026-11-21T02:30:00Z";

const MODEL_SYMPHONY: &str = "apiVersion: fermata.dev/v1alpha1
kind: Symphony
metadata: {name: line}
spec:
  variations:
    - name: vision
      synthesizer: {name: model}
      synthesisEnv: [{name: TAG, value: v1}]
";

struct Fleet {
    work: TestRepo,
    _remotes: tempfile::TempDir,
    origin: PathBuf,
    url: String,
    /// Where the `file://` artifact lives: the `--artifact-root` of sites that have it.
    root: tempfile::TempDir,
    old: String,
    new: String,
}

impl Fleet {
    /// The four sites of the module doc, reported to a fresh origin.
    fn new() -> Fleet {
        let root = tempfile::tempdir().unwrap();
        let weights = root.path().join("weights.bin");
        std::fs::write(&weights, b"model weights").unwrap();
        let sha = fermata::model::Digest::of(b"model weights").to_string();
        let work = TestRepo::new();
        util::minimal(&work)
            .write(
                "synth/model.yaml",
                &format!(
                    "apiVersion: fermata.dev/v1alpha1\nkind: Synthesizer\nmetadata: {{name: model}}\nspec:\n  manifests: ./manifests\n  artifacts:\n    - {{name: weights, url: \"file://{}\", sha256: {sha}}}\n",
                    weights.display()
                ),
            )
            .write("line.yaml", MODEL_SYMPHONY);
        let old = work.commit("v1");
        let remotes = tempfile::tempdir().unwrap();
        let origin = util::bare_clone(work.path(), remotes.path(), "origin.git");
        let url = format!("file://{}", origin.display());
        let mut fleet = Fleet {
            work,
            _remotes: remotes,
            origin,
            url,
            root,
            old,
            new: String::new(),
        };
        assert_eq!(fleet.agent("s3", true).code, 0);
        assert_eq!(fleet.agent("s4", true).code, 0);
        fleet.work.write(
            "symphony.yaml",
            &util::SYMPHONY.replace("value: v1", "value: v2"),
        );
        fleet.new = fleet.work.commit("v2");
        fleet
            .work
            .git(&["push", "-q", fleet.origin.to_str().unwrap(), "main"]);
        assert_eq!(fleet.agent("s1", true).code, 0);
        let s2 = fleet.agent("s2", false);
        assert_eq!(s2.code, 1, "s2 fails line/vision: {s2:?}");
        let three_hours_ago = chrono::Utc::now() - chrono::Duration::hours(3);
        fleet.redate("fermata/sites/s4", &three_hours_ago.to_rfc3339());
        fleet
    }

    /// `fermata run --once --site SITE` in a state dir of its own.
    fn agent(&self, site: &str, with_root: bool) -> util::Run {
        let state = tempfile::tempdir().unwrap();
        let mut args = vec!["run", "--once", "--repo", &self.url, "--branch", "main"];
        args.extend(["--site", site]);
        let root = self.root.path().to_str().unwrap();
        if with_root {
            args.extend(["--artifact-root", root]);
        }
        util::fermata_at(state.path(), &args, AGENT_NOW, &[])
    }

    /// The same tip commit, committed `when` instead: a site that stopped reporting.
    fn redate(&self, branch: &str, when: &str) {
        let message = git(&self.origin, &["log", "-1", "--format=%B", branch]);
        let tree = git(&self.origin, &["rev-parse", &format!("{branch}^{{tree}}")]);
        let mut args = vec!["commit-tree".to_string(), tree, "-m".into(), message];
        if let Ok(parent) = util_git_try(&self.origin, &["rev-parse", &format!("{branch}^")]) {
            args.extend(["-p".into(), parent]);
        }
        let out = Command::new("git")
            .current_dir(&self.origin)
            .args(&args)
            .env("GIT_COMMITTER_DATE", when)
            .env("GIT_COMMITTER_NAME", "fermata")
            .env("GIT_COMMITTER_EMAIL", "fermata@localhost")
            .env("GIT_AUTHOR_NAME", "fermata")
            .env("GIT_AUTHOR_EMAIL", "fermata@localhost")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        git(
            &self.origin,
            &["update-ref", &format!("refs/heads/{branch}"), &id],
        );
    }

    /// `fermata fleet status --repo ORIGIN` with `extra`, at the real "now"
    /// (status commits carry the real time), given as a fixed `--now`.
    fn status(&self, state: &Path, extra: &[&str]) -> util::Run {
        let now = chrono::Utc::now().to_rfc3339();
        let mut args = vec!["fleet", "status", "--repo", &self.url, "--now", &now];
        args.extend_from_slice(extra);
        util::fermata_at(state, &args, &now, &[])
    }
}

fn util_git_try(dir: &Path, args: &[&str]) -> Result<String, ()> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(())
    }
}

fn short(c: &str) -> &str {
    &c[..7]
}

#[test]
fn sites_push_only_their_own_refs() {
    let fleet = Fleet::new();
    let refs = git(&fleet.origin, &["for-each-ref", "--format=%(refname)"]);
    let want: BTreeSet<String> = ["s1", "s2", "s3", "s4"]
        .iter()
        .flat_map(|s| {
            [
                format!("refs/heads/fermata/sites/{s}"),
                format!("refs/notes/fermata-sites/{s}"),
            ]
        })
        .chain(["refs/heads/main".to_string()])
        .collect();
    assert_eq!(
        refs.lines().map(str::to_string).collect::<BTreeSet<_>>(),
        want
    );
    // One note per site beside the commit it reconciled, shown together.
    let log = git(
        &fleet.origin,
        &["log", "-1", "--notes=fermata-sites/*", &fleet.new],
    );
    for s in ["s1", "s2"] {
        assert!(
            log.contains(&format!("Notes (fermata-sites/{s}):\n    {s} main@")),
            "{log}"
        );
    }
    assert!(!log.contains("fermata-sites/s3"), "{log}");
}

#[test]
fn table_and_json_show_the_known_fleet() {
    let fleet = Fleet::new();
    let state = tempfile::tempdir().unwrap();
    let json = fleet.status(state.path(), &["--format", "json"]);
    assert_eq!(json.code, 0, "{json:?}");
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["branch"], "main");
    assert_eq!(v["head"], fleet.new.as_str());
    assert_eq!(
        v["compositions"],
        serde_json::json!(["line/vision", "shop/app"])
    );
    assert_eq!(v["totals"]["sites"], 4);
    assert_eq!(v["totals"]["atHead"], 1);
    assert_eq!(v["totals"]["lagging"], 3);
    let sites = v["sites"].as_array().unwrap();
    let names: Vec<_> = sites.iter().map(|s| s["site"].as_str().unwrap()).collect();
    assert_eq!(names, ["s1", "s2", "s3", "s4"]);
    let reasons = |i: usize| -> Vec<String> {
        sites[i]["lagging"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["reason"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(reasons(0), Vec::<String>::new());
    assert_eq!(reasons(1), ["failed"]);
    assert_eq!(reasons(2), ["behind"]);
    assert_eq!(reasons(3), ["offline", "behind"]);
    assert_eq!(sites[0]["atHead"], true);
    assert_eq!(sites[0]["states"], serde_json::json!({"installed": 2}));
    assert_eq!(
        sites[1]["states"],
        serde_json::json!({"installed": 1, "failed": 1})
    );
    for (i, commit) in [&fleet.new, &fleet.new, &fleet.old, &fleet.old]
        .iter()
        .enumerate()
    {
        assert_eq!(sites[i]["reconciled"], commit.as_str(), "{}", names[i]);
    }
    let failure = &sites[1]["lagging"][0];
    assert_eq!(failure["composition"], "line/vision");
    assert!(
        failure["message"]
            .as_str()
            .unwrap()
            .contains("--artifact-root"),
        "{failure}"
    );
    // The same desired state shows the same symphony digest at every site
    // that has it; the older commit another one.
    let digest = |i: usize, sym: &str| {
        sites[i]["symphonies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|y| y["name"] == sym)
            .map(|y| y["digest"].clone())
            .unwrap()
    };
    assert_eq!(digest(0, "shop"), digest(1, "shop"));
    assert_eq!(digest(2, "shop"), digest(3, "shop"));
    assert_ne!(digest(0, "shop"), digest(2, "shop"));
    // deploymentIds: one per (site, composition), all different, each with the site.
    let ids: BTreeSet<String> = sites
        .iter()
        .flat_map(|s| s["symphonies"].as_array().unwrap().iter())
        .flat_map(|y| y["compositions"].as_array().unwrap().iter())
        .map(|c| c["deploymentId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 8, "{ids:?}");

    let table = fleet.status(state.path(), &[]);
    assert_eq!(table.code, 0, "{table:?}");
    let lines = table.lines();
    assert_eq!(
        lines[0],
        format!(
            "fleet main @ {}: 4 sites, 1 at the newest commit, 3 lagging",
            short(&fleet.new)
        )
    );
    assert!(lines[1].starts_with("SITE "), "{table:?}");
    let row = |site: &str, sym: &str| {
        lines
            .iter()
            .find(|l| {
                let mut w = l.split_whitespace();
                w.next() == Some(site) && w.next() == Some(sym)
            })
            .unwrap_or_else(|| panic!("no row {site} {sym}:\n{}", table.stdout))
            .to_string()
    };
    assert_eq!(lines.len(), 2 + 8, "{}", table.stdout);
    let s1 = row("s1", "shop");
    assert!(
        s1.contains("1 installed") && s1.contains(short(&fleet.new)) && s1.contains(" yes "),
        "{s1}"
    );
    let s2 = row("s2", "line");
    assert!(s2.contains("1 failed") && s2.contains(" no "), "{s2}");
    assert!(s2.contains("failed: line/vision: "), "{s2}");
    let s3 = row("s3", "line");
    assert!(
        s3.contains(short(&fleet.old)) && s3.contains("behind: reconciled main@"),
        "{s3}"
    );
    let s4 = row("s4", "line");
    assert!(s4.contains("offline: no status since"), "{s4}");
}

#[test]
fn lagging_lists_offline_failed_and_behind_sites_with_why() {
    let fleet = Fleet::new();
    let state = tempfile::tempdir().unwrap();
    let out = fleet.status(state.path(), &["--lagging"]);
    assert_eq!(out.code, 0, "{out:?}");
    let rows: Vec<(String, String)> = out.lines()[2..]
        .iter()
        .map(|l| {
            let mut w = l.split_whitespace();
            (w.next().unwrap().to_string(), w.next().unwrap().to_string())
        })
        .collect();
    let want = [
        ("s2", "failed"),
        ("s3", "behind"),
        ("s4", "offline"),
        ("s4", "behind"),
    ];
    assert_eq!(
        rows,
        want.map(|(a, b)| (a.to_string(), b.to_string())),
        "{out:?}"
    );
    assert!(out.lines()[0].ends_with("3 of 4 sites lagging"), "{out:?}");
    let behind = format!(
        "reconciled main@{}, the newest is {}",
        short(&fleet.old),
        short(&fleet.new)
    );
    assert!(out.stdout.contains(&behind), "{out:?}");
    assert!(out.stdout.contains("(stale after 1h)"), "{out:?}");

    // A longer --stale: s4 is only behind.
    let lenient = fleet.status(
        state.path(),
        &["--lagging", "--stale", "4h", "--format", "json"],
    );
    let v: serde_json::Value = serde_json::from_str(&lenient.stdout).unwrap();
    let sites: Vec<_> = v["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["site"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sites, ["s2", "s3", "s4"]);
    assert_eq!(v["sites"][2]["lagging"][0]["reason"], "behind");
    assert_eq!(v["sites"][2]["lagging"].as_array().unwrap().len(), 1);
}

#[test]
fn svg_is_well_formed_with_one_cell_per_site_and_composition() {
    let fleet = Fleet::new();
    let state = tempfile::tempdir().unwrap();
    let out = fleet.status(state.path(), &["--format", "svg"]);
    assert_eq!(out.code, 0, "{out:?}");
    let doc = roxmltree::Document::parse(&out.stdout).expect("well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let cells: Vec<_> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("cell"))
        .collect();
    let pairs: Vec<(String, String)> = cells
        .iter()
        .map(|c| {
            (
                c.attribute("data-site").unwrap().to_string(),
                c.attribute("data-composition").unwrap().to_string(),
            )
        })
        .collect();
    let mut want = Vec::new();
    for s in ["s1", "s2", "s3", "s4"] {
        for c in ["line/vision", "shop/app"] {
            want.push((s.to_string(), c.to_string()));
        }
    }
    assert_eq!(pairs, want, "exactly one cell per (site, composition)");
    let state_of = |site: &str, comp: &str| {
        cells
            .iter()
            .find(|c| {
                c.attribute("data-site") == Some(site)
                    && c.attribute("data-composition") == Some(comp)
            })
            .and_then(|c| c.attribute("data-state"))
            .unwrap()
            .to_string()
    };
    assert_eq!(state_of("s1", "shop/app"), "installed");
    assert_eq!(state_of("s2", "line/vision"), "failed");
    // Every cell has a tooltip; the failed one says why.
    for c in &cells {
        let title = c
            .children()
            .find(|n| n.has_tag_name("title"))
            .expect("a <title>");
        assert!(title
            .text()
            .unwrap_or_default()
            .starts_with(c.attribute("data-site").unwrap()));
    }
    let failed = cells
        .iter()
        .find(|c| c.attribute("data-state") == Some("failed"))
        .unwrap();
    let tip = failed
        .children()
        .find(|n| n.has_tag_name("title"))
        .unwrap()
        .text()
        .unwrap();
    assert!(tip.contains("--artifact-root"), "{tip}");
    let legend = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("legend"))
        .count();
    assert!(legend >= 8, "a legend of every state");
}

#[test]
fn margo_lists_every_site_s_manifests_with_its_device() {
    let fleet = Fleet::new();
    let state = tempfile::tempdir().unwrap();
    let out = fleet.status(state.path(), &["--format", "margo"]);
    assert_eq!(out.code, 0, "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let m = v.as_array().unwrap();
    assert_eq!(m.len(), 8);
    let devices: Vec<_> = m.iter().map(|x| x["deviceId"].as_str().unwrap()).collect();
    assert_eq!(devices, ["s1", "s1", "s2", "s2", "s3", "s3", "s4", "s4"]);
    assert!(m.iter().all(|x| x["kind"] == "DeploymentStatusManifest"));
    let ids: BTreeSet<_> = m
        .iter()
        .map(|x| x["deploymentId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 8);
}

#[test]
fn publish_fleet_commits_once_per_change() {
    let fleet = Fleet::new();
    let central = tempfile::tempdir().unwrap();
    let now = chrono::Utc::now().to_rfc3339();
    let root = fleet.root.path().to_str().unwrap().to_string();
    let run = || {
        util::fermata_at(
            central.path(),
            &[
                "run",
                "--once",
                "--repo",
                &fleet.url,
                "--branch",
                "main",
                "--publish-fleet",
                "--artifact-root",
                &root,
            ],
            &now,
            &[],
        )
    };
    let first = run();
    assert_eq!(first.code, 0, "{first:?}");
    assert!(first.stdout.contains("fleet: committed "), "{first:?}");
    assert_eq!(
        git(&fleet.origin, &["ls-tree", "--name-only", "fermata/fleet"]),
        "fleet.json\nfleet.svg\nsummary.md"
    );
    let summary = git(&fleet.origin, &["show", "fermata/fleet:summary.md"]);
    assert!(summary.contains("![fleet](fleet.svg)"), "{summary}");
    assert!(summary.contains("| s2 | "), "{summary}");
    let json: serde_json::Value =
        serde_json::from_str(&git(&fleet.origin, &["show", "fermata/fleet:fleet.json"])).unwrap();
    assert_eq!(json["totals"]["sites"], 4);
    roxmltree::Document::parse(&git(&fleet.origin, &["show", "fermata/fleet:fleet.svg"]))
        .expect("well-formed svg");
    let subject = git(
        &fleet.origin,
        &["log", "-1", "--format=%s", "fermata/fleet"],
    );
    assert_eq!(
        subject,
        format!(
            "fleet main @ {}: 4 sites, 1 at the newest commit, 3 lagging",
            short(&fleet.new)
        )
    );

    // Nothing changed: no commit.
    let second = run();
    assert_eq!(second.code, 0, "{second:?}");
    assert!(!second.stdout.contains("fleet: committed"), "{second:?}");
    assert_eq!(
        git(&fleet.origin, &["rev-list", "--count", "fermata/fleet"]),
        "1"
    );

    // s3 catches up: one more commit.
    assert_eq!(fleet.agent("s3", true).code, 0);
    let third = run();
    assert!(third.stdout.contains("fleet: committed "), "{third:?}");
    assert_eq!(
        git(&fleet.origin, &["rev-list", "--count", "fermata/fleet"]),
        "2"
    );

    // Central only: with --site it is a usage error.
    let refused = util::fermata_at(
        central.path(),
        &[
            "run",
            "--once",
            "--repo",
            &fleet.url,
            "--site",
            "s1",
            "--publish-fleet",
        ],
        &now,
        &[],
    );
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("--publish-fleet"), "{refused:?}");
}
