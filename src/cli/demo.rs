//! `fermata demo`: the example fleet end to end, without touching this
//! repository. The example (`examples/repo-layout`) is embedded in the
//! binary, so the demo works from any directory, an installed binary and
//! the container image included. It plays a short story with its own clock:
//! commit A is staged while the window is closed, installed when it opens;
//! commit B moves an annotation between two variations (Eno's two-phase
//! protocol, pass by pass); a gate is lifted with `ungate`; then the
//! history is in `git log` of a status branch.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use chrono::{DateTime, TimeZone, Utc};
use clap::Args;

use super::run::{exit_code, print_reports, ClockArgs, RunArgs};
use crate::model::CompositionId;
use crate::reconcile::requests::Request;
use crate::reconcile::Reconciler;
use crate::report::BranchReport;
use crate::status::Ungate;
use crate::window::{Clock, FixedClock};

/// `examples/repo-layout`, compiled in.
static EXAMPLE: include_dir::Dir<'static> =
    include_dir::include_dir!("$CARGO_MANIFEST_DIR/examples/repo-layout");

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo repository, state and targets go (recreated).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Copy this fleet instead of the embedded example, and run one pass
    /// of it (the story needs the example's windows and variations).
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// Then play the example's campaign through: activate it, step it,
    /// let the sites reconcile each promote, approve it, to the end.
    #[arg(long)]
    pub campaign: bool,
    /// Pause between scenes until Enter (on a terminal).
    #[arg(long)]
    pub step: bool,
    #[command(flatten)]
    pub clock: ClockArgs,
}

/// Marks a directory as ours, so recreating it never deletes someone's files.
const MARKER: &str = ".fermata-demo";

/// The story's first instant when `--now` is not given: a Thursday
/// morning, both example windows closed.
const STORY_START: (i32, u32, u32, u32) = (2026, 11, 26, 10);

/// The site the story follows (the other two reconcile alongside).
const SITE: &str = "plant-a";

pub fn run(a: &DemoArgs) -> anyhow::Result<ExitCode> {
    let dir = a
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("fermata-demo"));
    if dir.exists() {
        if !dir.join(MARKER).exists() {
            bail!(
                "{} exists and is not a fermata demo directory; choose another --dir",
                dir.display()
            );
        }
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let repo_dir = dir.join("repo");
    std::fs::create_dir_all(&repo_dir)?;
    std::fs::write(dir.join(MARKER), "")?;
    match &a.from {
        Some(from) => {
            copy_tree(from, &repo_dir).with_context(|| format!("copying {}", from.display()))?
        }
        None => extract(&EXAMPLE, &repo_dir).context("writing the embedded example")?,
    }
    let story = a.from.is_none();
    let start = a.clock.now.unwrap_or_else(|| {
        let (y, m, d, h) = STORY_START;
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0)
            .single()
            .unwrap_or_else(Utc::now)
    });
    let clock = Arc::new(FixedClock::new(if story {
        start
    } else {
        a.clock.now.unwrap_or_else(Utc::now)
    }));
    let show = Show {
        step: a.step && std::io::stdin().is_terminal(),
        me: invocation(),
    };
    let commit = commit_all(&repo_dir, "A: the example fleet")?;

    // Parsed like a command line, so the demo gets every flag's default.
    #[derive(clap::Parser)]
    struct Demo {
        #[command(flatten)]
        run: RunArgs,
    }
    let repo = repo_dir.display().to_string();
    let state = dir.join("state").display().to_string();
    let targets = dir.join("targets").display().to_string();
    let argv = [
        "demo",
        "--repo",
        &repo,
        "--branch",
        "main",
        "--state-dir",
        &state,
        "--target-root",
        &targets,
        "--once",
    ];
    let run = <Demo as clap::Parser>::try_parse_from(argv)?.run;
    let rt = tokio::runtime::Runtime::new()?;
    let (code, sites) = rt.block_on(async {
        let mut r = run.reconciler()?;
        r.ctx.clock = clock.clone();
        let reports = if story {
            play(&mut r, &show, &clock, &repo_dir, &dir, &commit).await?
        } else {
            outln!("demo repository: {repo} (main @ {})", &commit[..7]);
            let reports = r.pass().await;
            print_reports(&reports, &r.ctx.settings.status_branch);
            reports
        };
        let sites: Vec<String> = reports.iter().filter_map(|b| b.site.clone()).collect();
        if a.campaign {
            play_campaign(&mut r, &repo_dir, clock.now()).await?;
        }
        anyhow::Ok((exit_code(&reports), sites))
    })?;
    outln!();
    hints(&show.me, &dir, &repo_dir, &sites, clock.now())?;
    Ok(code)
}

/// How the demo prints and paces its scenes.
struct Show {
    step: bool,
    /// `fermata` or `cargo run --`: the way this binary was started.
    me: String,
}

impl Show {
    fn scene(&self, n: usize, at: DateTime<Utc>, title: &str) {
        if self.step && n > 1 {
            out!("\n[Enter] for scene {n} ");
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        }
        outln!();
        outln!("== {n}. {} | {title}", at.format("%a %d %b %H:%M UTC"));
    }
}

/// `cargo run --` when this binary is a cargo build (in `debug/` or
/// `release/` of a cargo target directory, which cargo marks with
/// `CACHEDIR.TAG`, whatever `CARGO_TARGET_DIR` says), else its own name:
/// hints must work as printed.
fn invocation() -> String {
    let exe = std::env::current_exe().ok();
    let built = exe.as_ref().and_then(|p| p.parent()).is_some_and(|dir| {
        dir.file_name()
            .is_some_and(|n| n == "debug" || n == "release")
            && dir
                .parent()
                .is_some_and(|target| target.join("CACHEDIR.TAG").exists())
    });
    if built {
        "cargo run --".to_string()
    } else {
        exe.and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "fermata".to_string())
    }
}

/// The story, scene by scene; returns the last pass's reports.
async fn play(
    r: &mut Reconciler,
    show: &Show,
    clock: &FixedClock,
    repo: &Path,
    dir: &Path,
    commit: &str,
) -> anyhow::Result<Vec<BranchReport>> {
    let snap = crate::source::GitSource::open(&repo.display().to_string(), &dir.join("state"))?;
    let loaded = crate::model::load(&snap.snapshot(snap.resolve("HEAD")?)?, "");
    let opening = |window: &str, after: DateTime<Utc>| {
        loaded
            .fleet
            .windows
            .get(window)
            .and_then(|w| w.window.state_at(after).next_open)
    };

    show.scene(1, clock.now(), "commit A: the example fleet, three plants");
    outln!(
        "demo repository: {} (main @ {})",
        repo.display(),
        &commit[..7]
    );
    outln!(
        "Every commit is rendered and staged at once; applies wait for each composition's window."
    );
    let reports = r.pass().await;
    print_site(&reports, SITE);
    outln!("(plant-b and plant-c reconciled too: `git log fermata/sites/plant-b`)");

    let Some(weekend) = opening("weekend-night", clock.now()) else {
        bail!("the example has no window weekend-night");
    };
    clock.set(weekend + chrono::Duration::minutes(5));
    show.scene(
        2,
        clock.now(),
        "the window weekend-night opens: A is installed",
    );
    outln!("No new commit: the staged states are switched in, db first (vision depends on it).");
    let reports = r.pass().await;
    print_site(&reports, SITE);

    clock.set(clock.now() + chrono::Duration::minutes(10));
    show.scene(
        3,
        clock.now(),
        "commit B: annotation migrate.example/owner moves from vision to db",
    );
    let b = move_annotation(repo)?;
    outln!(
        "main @ {}: the annotation leaves line-control/vision and goes to line-control/db.",
        &b[..7]
    );
    outln!("Two phases (Eno): phase 1 removes the key from what vision has applied (a metadata");
    outln!("write, in the window); until that is done no composition of line-control may apply,");
    outln!("so the key is never on both at once. The plan:");
    let (vision, db) = (
        CompositionId::new("line-control", "vision"),
        CompositionId::new("line-control", "db"),
    );
    // What the pass will do, and in which order: a plan first.
    r.set_mode(crate::reconcile::Mode::Plan { revision: None });
    r.unsettle();
    let plan = r.pass().await;
    r.set_mode(crate::reconcile::Mode::Reconcile);
    outln!("  $ {} plan ...   (writes nothing)", show.me);
    for row in plan
        .iter()
        .filter(|b| b.site.as_deref() == Some(SITE))
        .flat_map(|b| &b.rows)
        .filter(|row| row.id.symphony == "line-control")
    {
        outln!(
            "    {:<22} {:<8} {}",
            row.id.to_string(),
            row.action
                .map(|a| format!("{a:?}"))
                .unwrap_or_else(|| "-".into()),
            row.skipped
                .as_deref()
                .map(|s| format!("waits: {s}"))
                .unwrap_or_else(|| "now".into())
        );
    }
    // Until a pass changes nothing more at the site.
    for pass in 1..=4 {
        r.unsettle();
        let reports = r.pass().await;
        let commit = reports
            .iter()
            .find(|b| b.site.as_deref() == Some(SITE))
            .and_then(|b| b.status_commit);
        outln!(
            "  pass {pass}: vision {:<28} db {:<28} {}",
            annotations(dir, "cameras", &vision),
            annotations(dir, "line", &db),
            commit
                .map(|c| format!("status {}", &c.to_string()[..7]))
                .unwrap_or_else(|| "nothing left to do".into())
        );
        if commit.is_none() {
            break;
        }
    }

    clock.set(clock.now() + chrono::Duration::minutes(10));
    show.scene(
        4,
        clock.now(),
        "a gate lifted: dashboards/grafana was held for approval",
    );
    let grafana = CompositionId::new("dashboards", "grafana");
    let request = Request::Ungate {
        composition: grafana.to_string(),
        ungate: Ungate {
            gate: "approval".into(),
            who: "demo".into(),
            why: "change board approved".into(),
            at: clock.now(),
        },
    };
    for site in loaded.fleet.sites_of(&grafana) {
        r.requests_of(Some(site)).record(&request)?;
    }
    outln!(
        "  $ {} ungate dashboards/grafana approval --reason 'change board approved' ...",
        show.me
    );
    r.unsettle();
    let reports = r.pass().await;
    print_site(&reports, SITE);
    if let Some(nightly) = opening("nightly", clock.now()) {
        clock.set(nightly + chrono::Duration::minutes(5));
        outln!();
        outln!(
            "{}: the window nightly opens (America/Chicago)",
            clock.now().format("%a %d %b %H:%M UTC")
        );
        r.unsettle();
        let reports = r.pass().await;
        print_site(&reports, SITE);
        return Ok(reports);
    }
    Ok(reports)
}

/// The story's edit for commit B, on the example's own line-control.yaml.
fn move_annotation(repo: &Path) -> anyhow::Result<String> {
    let path = repo.join("symphonies/line-control.yaml");
    let text = std::fs::read_to_string(&path)?;
    let line = "      annotations: {migrate.example/owner: \"true\"}\n";
    let db = "      synthesisEnv: [{name: STORAGE, value: 20Gi}]\n";
    if !text.contains(line) || !text.contains(db) {
        bail!(
            "{}: not the example's line-control symphony",
            path.display()
        );
    }
    // `""` removes a key (an absent one is left as it is).
    let gone = "      annotations: {migrate.example/owner: \"\"}\n";
    let moved = text
        .replacen(line, gone, 1)
        .replacen(db, &format!("{db}{line}"), 1);
    std::fs::write(&path, moved)?;
    commit_all(repo, "B: db owns the migration now")
}

/// `{migrate.example/owner=true}` of the composition's applied state in the
/// demo's directory target, as the target holds it now.
fn annotations(dir: &Path, target: &str, id: &CompositionId) -> String {
    let record = dir
        .join("targets")
        .join(SITE)
        .join(target)
        .join(&id.symphony)
        .join(&id.variation)
        .join("current/composition.yaml");
    let Ok(text) = std::fs::read_to_string(&record) else {
        return "(not applied)".into();
    };
    let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_default();
    let pairs: Vec<String> = v["annotations"]
        .as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{}={}", k.as_str().unwrap_or(""), v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    format!("{{{}}}", pairs.join(", "))
}

fn print_site(reports: &[BranchReport], site: &str) {
    let of_site: Vec<BranchReport> = reports
        .iter()
        .filter(|b| b.site.as_deref() == Some(site))
        .cloned()
        .collect();
    print_reports(&of_site, "");
}

/// Where to look, as commands that work the way this binary was run.
fn hints(
    me: &str,
    dir: &Path,
    repo_dir: &Path,
    sites: &[String],
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let repo = repo_dir.display();
    if let Some(first) = sites.first() {
        // Central mode: every site on its own branch; the fleet at a glance.
        let (git_dir, branch) =
            crate::fleet::read::open(&repo.to_string(), &dir.join("state"), Some("main"))?;
        let view = crate::fleet::aggregate(
            &crate::fleet::read::read(&git_dir, &branch)?,
            now,
            crate::fleet::DEFAULT_STALE,
        );
        outln!("The fleet ({me} fleet status):");
        out!("{}", crate::fleet::view::table(&view));
        let log = std::process::Command::new("git")
            .arg("-C")
            .arg(repo_dir)
            .args(["log", "--oneline", &format!("fermata/sites/{first}")])
            .output()?;
        outln!();
        outln!("The deployment history (git log --oneline fermata/sites/{first}):");
        out!("{}", String::from_utf8_lossy(&log.stdout));
        outln!();
        outln!("Where to look:");
        outln!(
            "  git -C {repo} log --oneline fermata/sites/{first}   # {first}'s deployment history"
        );
        outln!("  git -C {repo} log --notes='fermata-sites/*' -1 main  # every site's summary beside your commit");
        outln!("  git -C {repo} show fermata/sites/{first}:main/summary.md");
        outln!("The picture of what was staged and applied when (timeline.svg, embedded in summary.md):");
        outln!("  git -C {repo} show fermata/sites/{first}:main/timeline.svg > timeline.svg");
        outln!(
            "  {me} status --repo {repo} --site {first} --format svg --now {} > timeline.svg",
            now.to_rfc3339()
        );
        outln!("  {me} fleet status --repo {repo} --format svg > fleet.svg");
    } else {
        outln!("Where to look:");
        outln!("  git -C {repo} log --oneline fermata/status        # the deployment history");
        outln!(
            "  git -C {repo} log --notes=fermata -1 main        # the summary beside your commit"
        );
        outln!("  git -C {repo} show fermata/status:main/summary.md");
    }
    outln!(
        "  ls -l {}/targets/*/*/                          # staged/ and current/ per composition",
        dir.display()
    );
    outln!("  {me} windows --repo {repo}               # when the waiting ones will apply");
    outln!(
        "  {me} run --repo {repo} --state-dir {}/state --target-root {}/targets",
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// Writes the embedded `dir` below `to`; files starting with `#!` are made
/// executable (the archive keeps no modes; a `command:` synthesizer must run).
fn extract(dir: &include_dir::Dir<'_>, to: &Path) -> anyhow::Result<()> {
    for file in dir.files() {
        let dest = to.join(file.path());
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&dest, file.contents())?;
        if file.contents().starts_with(b"#!") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    for sub in dir.dirs() {
        extract(sub, to)?;
    }
    Ok(())
}

/// The example's campaign, start to end: each step as `fermata campaign
/// step` would take it, each promote reconciled by a central pass.
async fn play_campaign(
    r: &mut crate::reconcile::Reconciler,
    repo: &Path,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    use crate::campaign::drive::{Driver, Outcome};
    const NAME: &str = "collector-0-116";
    let driver = Driver {
        repo: repo.to_path_buf(),
        branch: "main".into(),
        status_branch: r.ctx.settings.status_branch.clone(),
        signing: None,
        trust: crate::source::SignaturePolicy::None,
        forge: None,
        mirror: None,
    };
    outln!();
    outln!("Campaign collector-rollout: COLLECTOR_VERSION 0.115.0 -> 0.116.0, canary first.");
    let inputs = std::collections::BTreeMap::from([("version".to_string(), "0.116.0".to_string())]);
    crate::campaign::drive::activate(
        (repo, None),
        "main",
        ("collector-rollout", NAME),
        &inputs,
        None,
    )?;
    outln!("  $ fermata campaign activate collector-rollout --name {NAME} --input version=0.116.0");
    for _ in 0..16 {
        let (outcome, state) = driver.step(NAME, now)?;
        let stage = state.stage.clone().unwrap_or_else(|| "-".into());
        outln!("  $ fermata campaign step {NAME}    -> {outcome:?} (stage {stage})");
        match outcome {
            Outcome::Finished => break,
            Outcome::Failed(why) => anyhow::bail!("the campaign failed: {why}"),
            Outcome::Advanced => continue,
            Outcome::Waiting(why, _) if why.contains("approval") => {
                let who = (NAME, stage.as_str());
                crate::campaign::drive::approve(
                    (repo, None),
                    "main",
                    who,
                    "demo",
                    "the canary looks good",
                    None,
                )?;
                outln!("  $ fermata campaign approve {NAME} --reason 'the canary looks good'");
            }
            Outcome::Waiting(..) => {
                // The sites reconcile what was promoted.
                r.unsettle();
                let reports = r.pass().await;
                let lines: Vec<String> = reports
                    .iter()
                    .filter(|b| b.status_commit.is_some())
                    .map(|b| format!("{} reported", b.site.clone().unwrap_or_default()))
                    .collect();
                outln!(
                    "  (a pass of fermata run: {})",
                    if lines.is_empty() {
                        "nothing new".into()
                    } else {
                        lines.join(", ")
                    }
                );
            }
        }
    }
    let log = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["log", "--oneline", "-8", "main"])
        .output()?;
    outln!();
    outln!("What the campaign committed (git log --oneline main):");
    out!("{}", String::from_utf8_lossy(&log.stdout));
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        let ty = entry.file_type()?;
        if ty.is_dir() {
            std::fs::create_dir_all(&dest)?;
            copy_tree(&entry.path(), &dest)?;
        } else if ty.is_file() {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

/// `git init -b main` (once), `git add -A && git commit`, with git2.
fn commit_all(dir: &Path, message: &str) -> anyhow::Result<String> {
    let mut opts = git2::RepositoryInitOptions::new();
    opts.initial_head("main");
    let repo = git2::Repository::init_opts(dir, &opts)?;
    let mut index = repo.index()?;
    index.add_all(["*"], git2::IndexAddOption::DEFAULT, None)?;
    index.update_all(["*"], None)?;
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let sig = git2::Signature::now("fermata demo", "demo@fermata.invalid")?;
    let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
    let parents: Vec<_> = parent.iter().collect();
    let oid = repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)?;
    Ok(oid.to_string())
}
