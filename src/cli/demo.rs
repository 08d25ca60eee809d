//! `fermata demo`: the example fleet end to end, without touching this
//! repository: copy `examples/repo-layout` into a fresh Git repository under
//! a demo directory, run one pass on it, and say where to look.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;

use super::run::{exit_code, print_reports, ClockArgs, RunArgs};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo repository, state and targets go (recreated).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The fleet to copy.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/repo-layout"))]
    pub from: PathBuf,
    /// Then play the example's campaign through: activate it, step it,
    /// let the sites reconcile each promote, approve it, to the end.
    #[arg(long)]
    pub campaign: bool,
    #[command(flatten)]
    pub clock: ClockArgs,
}

/// Marks a directory as ours, so recreating it never deletes someone's files.
const MARKER: &str = ".fermata-demo";

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
    copy_tree(&a.from, &repo_dir).with_context(|| format!("copying {}", a.from.display()))?;
    let commit = commit_all(&repo_dir, "Example fleet from examples/repo-layout")?;
    outln!(
        "demo repository: {} (main @ {})",
        repo_dir.display(),
        &commit[..7]
    );

    // Parsed like a command line, so the demo gets every flag's default.
    #[derive(clap::Parser)]
    struct Demo {
        #[command(flatten)]
        run: RunArgs,
    }
    let repo = repo_dir.display().to_string();
    let state = dir.join("state").display().to_string();
    let targets = dir.join("targets").display().to_string();
    let mut argv = vec![
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
    let now = a.clock.now.map(|t| t.to_rfc3339());
    if let Some(now) = &now {
        argv.extend(["--now", now]);
    }
    let run = <Demo as clap::Parser>::try_parse_from(argv)?.run;
    let rt = tokio::runtime::Runtime::new()?;
    let clock = run.base.clock.clock();
    let (code, sites) = rt.block_on(async {
        let mut r = run.reconciler()?;
        let reports = r.pass().await;
        print_reports(&reports, &r.ctx.settings.status_branch);
        let sites: Vec<String> = reports.iter().filter_map(|b| b.site.clone()).collect();
        if a.campaign {
            play_campaign(&mut r, &repo_dir, clock.now()).await?;
        }
        anyhow::Ok((exit_code(&reports), sites))
    })?;
    let repo = repo_dir.display();
    outln!();
    if let Some(first) = sites.first() {
        // Central mode: every site on its own branch; the fleet at a glance.
        let (git_dir, branch) =
            crate::fleet::read::open(&repo.to_string(), &dir.join("state"), Some("main"))?;
        let view = crate::fleet::aggregate(
            &crate::fleet::read::read(&git_dir, &branch)?,
            clock.now(),
            crate::fleet::DEFAULT_STALE,
        );
        outln!("The fleet (fermata fleet status):");
        out!("{}", crate::fleet::view::table(&view));
        outln!();
        outln!("Where to look:");
        outln!(
            "  git -C {repo} log --oneline fermata/sites/{first}   # {first}'s deployment history"
        );
        outln!("  git -C {repo} log --notes='fermata-sites/*' -1 main  # every site's summary beside your commit");
        outln!("  git -C {repo} show fermata/sites/{first}:main/summary.md");
        outln!("  cargo run -- fleet status --repo {repo} --format svg > fleet.svg");
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
    outln!("  cargo run -- windows --repo {repo}               # when the waiting ones will apply");
    outln!(
        "  cargo run -- run --repo {repo} --state-dir {}/state --target-root {}/targets",
        dir.display(),
        dir.display()
    );
    Ok(code)
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

/// `git init -b main && git add -A && git commit`, with git2.
fn commit_all(dir: &Path, message: &str) -> anyhow::Result<String> {
    let mut opts = git2::RepositoryInitOptions::new();
    opts.initial_head("main");
    let repo = git2::Repository::init_opts(dir, &opts)?;
    let mut index = repo.index()?;
    index.add_all(["*"], git2::IndexAddOption::DEFAULT, None)?;
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let sig = git2::Signature::now("fermata demo", "demo@fermata.invalid")?;
    let oid = repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &[])?;
    Ok(oid.to_string())
}
