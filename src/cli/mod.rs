//! The command-line edge: flags in, exit codes out. Everything it does is a
//! call into the library; `anyhow` lives here and in `main.rs` only.

mod apply_now;
mod demo;
mod plan;
mod render;
mod run;
mod status;
mod ungate;
mod validate;
mod windows;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::model::{self, Loaded};
use crate::source::{GitSource, Snapshot, Source};

#[derive(Debug, Parser)]
#[command(
    name = "fermata",
    version,
    about = "A GitOps reconciler: stage on commit, apply in maintenance windows, report status in Git."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Reconcile: poll branches, stage every new commit, apply in windows, write status to Git.
    Run(run::RunArgs),
    /// The example fleet end to end in a fresh demo repository (does not touch this one).
    Demo(demo::DemoArgs),
    /// The actions a pass would take now, and why those that wait do; writes nothing.
    Plan(plan::PlanArgs),
    /// Break glass: apply what is staged for SYM[/VAR] now, outside its window.
    ApplyNow(apply_now::ApplyNowArgs),
    /// Lift a scheduling gate of SYM/VAR without a commit, recorded in its status.
    Ungate(ungate::UngateArgs),
    /// List maintenance windows, whether each is open, and its next openings.
    Windows(windows::WindowsArgs),
    /// Print the latest status from the status branch.
    Status(status::StatusArgs),
    /// Check every object of a revision; exit 1 with every error, one per line.
    Validate(validate::ValidateArgs),
    /// Print the rendered resources of each composition as a YAML stream.
    Render(render::RenderArgs),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// Which repository, revision and folder to read.
#[derive(Debug, Args)]
pub struct RepoArgs {
    /// A local repository (working tree or bare, read in place without checkout) or a URL
    /// (file://, https://, ssh://, git://) mirrored under the state directory.
    #[arg(long)]
    pub repo: String,
    /// Branch, tag, commit or any rev-parse expression.
    #[arg(long, default_value = "HEAD")]
    pub rev: String,
    /// Load objects only below this folder of the repository, like Flux's `path`.
    #[arg(long, default_value = "")]
    pub path: String,
    /// Where mirrors (and later, staged state) are kept.
    #[arg(long, env = "FERMATA_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

impl RepoArgs {
    pub fn state_dir(&self) -> PathBuf {
        default_state_dir(self.state_dir.clone())
    }

    /// Opens the source, resolves the revision and loads its fleet.
    pub fn load(&self) -> anyhow::Result<(Snapshot, Loaded)> {
        let source = GitSource::open(&self.repo, &self.state_dir())?;
        let rev = source.resolve(&self.rev)?;
        let snap = source.snapshot(rev)?;
        let loaded = model::load(&snap, &self.path);
        Ok((snap, loaded))
    }
}

/// `--state-dir`, else `$XDG_STATE_HOME/fermata`, else `~/.local/state/fermata`.
pub fn default_state_dir(given: Option<PathBuf>) -> PathBuf {
    if let Some(d) = given {
        return d;
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(x).join("fermata");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/state/fermata")
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Every command that talks to a remote gets bounded calls; `run` sets
    // its own from --git-timeout and --git-connect-timeout.
    crate::source::set_timeouts(crate::source::GitTimeouts::DEFAULT)?;
    match cli.command {
        Command::Run(a) => run::run(&a),
        Command::Demo(a) => demo::run(&a),
        Command::Plan(a) => plan::run(&a),
        Command::ApplyNow(a) => apply_now::run(&a),
        Command::Ungate(a) => ungate::run(&a),
        Command::Windows(a) => windows::run(&a),
        Command::Status(a) => status::run(&a),
        Command::Validate(a) => validate::run(&a),
        Command::Render(a) => render::run(&a),
    }
}

/// Who does something outside Git, and why: recorded in status.
#[derive(Debug, Clone, Args)]
pub struct Accountable {
    /// Why; recorded in status.
    #[arg(long)]
    pub reason: String,
    /// Who; `$USER` by default.
    #[arg(long)]
    pub who: Option<String>,
}

impl Accountable {
    /// The person, or an error when no reason is given: an action outside
    /// Git must say why in the status it leaves.
    pub fn who(&self) -> anyhow::Result<String> {
        if self.reason.trim().is_empty() {
            anyhow::bail!("--reason must say why");
        }
        Ok(self
            .who
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "unknown".into()))
    }
}

/// `1 target`, `2 targets`.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else if let Some(stem) = noun.strip_suffix('y') {
        format!("{n} {stem}ies")
    } else {
        format!("{n} {noun}s")
    }
}
