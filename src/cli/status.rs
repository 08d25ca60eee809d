//! `fermata status`: the latest status from the status branch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use super::default_state_dir;
use crate::source::GitSource;
use crate::status::margo::DeploymentStatusManifest;
use crate::status::StatusRepo;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Yaml,
    Json,
    /// Margo's DeploymentStatusManifest JSON, one per composition.
    Margo,
    /// `timeline.svg` of `--branch`: what was staged and applied when.
    Svg,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long)]
    pub repo: String,
    /// The status branch to read (default fermata/status).
    #[arg(long, value_parser = crate::status::branch_name)]
    pub status_branch: Option<String>,
    /// Read this site's own branch, fermata/sites/SITE.
    #[arg(long)]
    pub site: Option<String>,
    #[arg(long, env = "FERMATA_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// With `--format svg`: the watched branch whose history to draw (the
    /// repository's default branch when absent).
    #[arg(long)]
    pub branch: Option<String>,
    #[command(flatten)]
    pub clock: super::run::ClockArgs,
}

pub fn run(a: &StatusArgs) -> anyhow::Result<ExitCode> {
    let branch = super::status_branch(a.status_branch.as_deref(), a.site.as_deref())?;
    let source = GitSource::open(&a.repo, &default_state_dir(a.state_dir.clone()))?;
    source.fetch()?;
    let repo = StatusRepo::new(
        source.git_dir().to_path_buf(),
        source.remote().map(str::to_string),
        branch,
        a.site.clone(),
    );
    if let Format::Svg = a.format {
        let branch = match &a.branch {
            Some(b) => b.clone(),
            None => source.default_branch().unwrap_or_else(|| "main".into()),
        };
        let now = a.clock.clock().now();
        let t = repo.timeline(&branch, now, windows(&source, &branch, now))?;
        out!("{}", crate::status::timeline::render(&t));
        return Ok(ExitCode::SUCCESS);
    }
    let statuses = repo.read()?;
    match a.format {
        Format::Table => {
            outln!(
                "{:<10} {:<32} {:<10} {:<12} {:<9} NOTE",
                "BRANCH",
                "COMPOSITION",
                "STATE",
                "COMMIT",
                "WINDOW"
            );
            for s in &statuses {
                let note = s
                    .status
                    .error
                    .as_ref()
                    .map(|e| format!("{}: {}", e.code, e.message))
                    .or_else(|| {
                        s.status
                            .conditions
                            .iter()
                            .find(|c| c.r#type == "Ready" && c.status != "True")
                            .map(|c| c.reason.clone())
                    })
                    .unwrap_or_default();
                outln!(
                    "{:<10} {:<32} {:<10} {:<12} {:<9} {}",
                    s.source.branch,
                    s.composition(),
                    s.status.state.as_str(),
                    &s.source.commit.get(..7).unwrap_or(&s.source.commit),
                    s.status
                        .window
                        .as_ref()
                        .map(|w| if w.open { "open" } else { "closed" })
                        .unwrap_or("-"),
                    note
                );
            }
        }
        Format::Yaml => {
            for s in &statuses {
                out!("---\n{}", serde_yaml::to_string(s)?);
            }
        }
        Format::Json => outln!("{}", serde_json::to_string_pretty(&statuses)?),
        Format::Svg => {}
        Format::Margo => {
            let m: Vec<DeploymentStatusManifest> = statuses
                .iter()
                .map(DeploymentStatusManifest::from)
                .collect();
            outln!("{}", serde_json::to_string_pretty(&m)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The openings of `branch`'s windows over the picture's span; none when
/// the branch cannot be read (the picture is still drawn).
fn windows(
    source: &GitSource,
    branch: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> crate::status::timeline::Openings {
    let Ok(snap) = source
        .resolve(&format!("refs/heads/{branch}"))
        .and_then(|rev| source.snapshot(rev))
    else {
        return Default::default();
    };
    let fleet = crate::model::load(&snap, "").fleet;
    crate::status::timeline::openings(fleet.windows.iter().map(|(n, mw)| (n, &mw.window)), now)
}
