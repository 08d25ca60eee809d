//! `fermata fleet status`: every site's status branch at once (DESIGN.md
//! section 9), as a table, JSON, Margo manifests or an SVG heatmap.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

use super::default_state_dir;
use super::run::ClockArgs;
use crate::fleet::{aggregate, read, svg, view};
use crate::status::margo::DeploymentStatusManifest;

#[derive(Debug, Args)]
pub struct FleetArgs {
    #[command(subcommand)]
    pub command: FleetCommand,
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Every site's status of a branch: states, digests, who is at the newest commit, who lags and why.
    Status(FleetStatusArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// Sites x symphonies: counts per state, digest, commit reached, failures.
    Table,
    /// The fleet view as JSON (documented in src/fleet/view.rs).
    Json,
    /// Every site's Margo DeploymentStatusManifests, with deviceId.
    Margo,
    /// A heatmap, sites x compositions coloured by state.
    Svg,
}

#[derive(Debug, Args)]
pub struct FleetStatusArgs {
    /// A local repository (read in place) or a URL (fetched into a cache under the state directory).
    #[arg(long, env = "FERMATA_REPO")]
    pub repo: String,
    /// The watched branch to compare with; the repository's default branch when absent.
    #[arg(long)]
    pub branch: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Only the sites not at the newest commit, each with why.
    #[arg(long)]
    pub lagging: bool,
    /// A lagging site whose newest status commit is older than this is offline.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub stale: Duration,
    /// Where the fetch cache of a URL lives.
    #[arg(long, env = "FERMATA_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// How long a Git server may stay silent before the fetch fails.
    #[arg(long, env = "FERMATA_GIT_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub git_timeout: Duration,
    /// How long connecting to a Git server may take before the fetch fails.
    #[arg(long, env = "FERMATA_GIT_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub git_connect_timeout: Duration,
    #[command(flatten)]
    pub clock: ClockArgs,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::window::parse_duration(s).map_err(|e| e.to_string())
}

pub fn run(a: &FleetArgs) -> anyhow::Result<ExitCode> {
    match &a.command {
        FleetCommand::Status(s) => status(s),
    }
}

fn status(a: &FleetStatusArgs) -> anyhow::Result<ExitCode> {
    crate::source::set_timeouts(crate::source::GitTimeouts {
        connect: a.git_connect_timeout,
        read: a.git_timeout,
    })
    .context("--git-timeout, --git-connect-timeout")?;
    let state_dir = default_state_dir(a.state_dir.clone());
    let (git_dir, branch) = read::open(&a.repo, &state_dir, a.branch.as_deref())?;
    let input = read::read(&git_dir, &branch)?;
    let mut fleet = aggregate(&input, a.clock.clock().now(), a.stale);
    if a.lagging {
        fleet = fleet.lagging_only();
    }
    match a.format {
        Format::Table if a.lagging => out!("{}", view::lagging_table(&fleet)),
        Format::Table => out!("{}", view::table(&fleet)),
        Format::Json => outln!("{}", serde_json::to_string_pretty(&fleet)?),
        Format::Svg => out!("{}", svg::render(&fleet)),
        Format::Margo => {
            let shown: std::collections::BTreeSet<&str> =
                fleet.sites.iter().map(|s| s.site.as_str()).collect();
            let mut sites: Vec<_> = input
                .sites
                .iter()
                .filter(|s| shown.contains(s.site.as_str()))
                .collect();
            sites.sort_by(|a, b| a.site.cmp(&b.site));
            let manifests: Vec<DeploymentStatusManifest> = sites
                .into_iter()
                .flat_map(|site| {
                    site.statuses.iter().map(move |s| {
                        let mut m = DeploymentStatusManifest::from(s);
                        m.device_id.get_or_insert_with(|| site.site.clone());
                        m
                    })
                })
                .collect();
            outln!("{}", serde_json::to_string_pretty(&manifests)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
