//! The command-line edge: flags in, exit codes out. Everything it does is a
//! call into the library; `anyhow` lives here and in `main.rs` only.
//!
//! Commands print with [`outln!`]/[`out!`] (stdout) and [`errln!`]
//! (stderr), never `println!`, which panics on a closed pipe.

/// `println!` for what a command prints; see [`out`].
macro_rules! outln {
    () => {
        $crate::cli::out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for what a command prints; see [`out`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::out(format_args!($($arg)*))
    };
}

/// `eprintln!` for what a command reports; see [`err`].
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::err(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod apply_now;
mod campaign;
mod completions;
mod demo;
mod fleet;
mod plan;
mod render;
mod rollback;
mod run;
mod status;
mod ungate;
mod validate;
mod windows;

use std::borrow::Cow;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::model::{self, Loaded};
use crate::source::{GitSource, Snapshot};

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
    Run(Box<run::RunArgs>),
    /// The example fleet end to end in a fresh demo repository (does not touch this one).
    Demo(demo::DemoArgs),
    /// The actions a pass would take now, and why those that wait do; writes nothing.
    Plan(plan::PlanArgs),
    /// Break glass: apply what is staged for SYM[/VAR] now, outside its window.
    ApplyNow(apply_now::ApplyNowArgs),
    /// Switch SYM[/VAR] back to its previous applied state and hold the current one.
    Rollback(rollback::RollbackArgs),
    /// Lift a scheduling gate of SYM/VAR without a commit, recorded in its status.
    Ungate(ungate::UngateArgs),
    /// List maintenance windows, whether each is open, and its next openings.
    Windows(windows::WindowsArgs),
    /// Print the latest status from the status branch.
    Status(status::StatusArgs),
    /// The fleet: every site's status branch at once.
    Fleet(fleet::FleetArgs),
    /// Campaigns: staged rollouts across the fleet, stepped by CI or by hand.
    Campaign(campaign::CampaignArgs),
    /// Check every object of a revision; exit 1 with every error, one per line.
    Validate(validate::ValidateArgs),
    /// Print the rendered resources of each composition as a YAML stream.
    Render(render::RenderArgs),
    /// A completion script for a shell, on stdout.
    Completions(completions::CompletionsArgs),
    /// The man page, on stdout (roff).
    Man,
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
    /// Branch, tag, commit or any rev-parse expression. Without it, a
    /// working tree is read as `git add --all` would commit it (so the
    /// command serves as a pre-commit check), a bare repository or URL at HEAD.
    #[arg(long)]
    pub rev: Option<String>,
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
        let snap = match &self.rev {
            Some(rev) => source.snapshot(source.resolve(rev)?)?,
            None => match source.worktree_snapshot()? {
                Some(snap) => snap,
                None => source.snapshot(source.resolve("HEAD")?)?,
            },
        };
        let loaded = model::load(&snap, &self.path);
        Ok((snap, loaded))
    }
}

/// What a render may cost, for every command that renders (`run`, `plan`,
/// `validate`, `render`), so `validate` fails exactly where `run` would.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Most a `command:` synthesizer may print on stdout (e.g. 64MiB, 500KB);
    /// past it the command is killed and its composition fails.
    #[arg(
        long,
        env = "FERMATA_MAX_RENDER_OUTPUT",
        value_name = "SIZE",
        default_value = "64MiB",
        value_parser = parse_size
    )]
    pub max_render_output: u64,
}

impl LimitArgs {
    pub fn limits(&self) -> crate::synth::Limits {
        crate::synth::Limits {
            max_output: self.max_render_output,
        }
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    match s.parse::<bytesize::ByteSize>() {
        Ok(b) if b.as_u64() > 0 => Ok(b.as_u64()),
        Ok(_) => Err("must be more than 0 bytes".into()),
        Err(e) => Err(format!("{s:?}: {e} (e.g. 64MiB, 500KB)")),
    }
}

/// Writes a command's output to stdout. Into a closed pipe (`fermata plan |
/// head`) the process ends at once, quietly, with status 141 (128 + SIGPIPE),
/// what a shell shows for `git log | head`. SIGPIPE itself stays ignored, as
/// the Rust runtime sets it: restoring its default for the whole process
/// would let a `command:` synthesizer that closes its stdin, or a git
/// transport, kill fermata instead of failing one call.
pub fn out(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        err(format_args!("error: cannot write the output: {e}\n"));
        std::process::exit(2);
    }
}

/// Writes to stderr; when even that fails there is nowhere left to say so.
pub fn err(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = std::io::stderr().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
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
        Command::Rollback(a) => rollback::run(&a),
        Command::Ungate(a) => ungate::run(&a),
        Command::Windows(a) => windows::run(&a),
        Command::Status(a) => status::run(&a),
        Command::Fleet(a) => fleet::run(&a),
        Command::Campaign(a) => campaign::run(&a),
        Command::Validate(a) => validate::run(&a),
        Command::Render(a) => render::run(&a),
        Command::Completions(a) => completions::completions(&a),
        Command::Man => completions::man(),
    }
}

/// The status branch of `--status-branch` and `--site`: a site's is always
/// its own `fermata/sites/<site>` (no two sites may write one branch), so
/// another branch named beside `--site` is refused rather than ignored; the
/// default `fermata/status` (a chart sets it always) is let through.
pub fn status_branch(given: Option<&str>, site: Option<&str>) -> anyhow::Result<String> {
    const DEFAULT: &str = "fermata/status";
    match (given, site) {
        (None, None) => Ok(DEFAULT.to_string()),
        (Some(b), None) => Ok(b.to_string()),
        (given, Some(site)) => {
            crate::model::load::check_name(site).map_err(|m| anyhow::anyhow!("--site: {m}"))?;
            let own = crate::status::site_branch(site);
            match given {
                Some(b) if b != DEFAULT && b != own => anyhow::bail!(
                    "--status-branch {b} with --site {site}: a site's status goes to its own branch {own}; leave --status-branch out"
                ),
                _ => Ok(own),
            }
        }
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

/// A fleet as one site sees it (`None`: a repository without sites).
pub type SiteView<'a> = (Option<String>, Cow<'a, model::Fleet>);

/// `--site S` of `validate` and `render`: one site's view of the fleet.
#[derive(Debug, Clone, Args)]
pub struct SiteArgs {
    /// Only what is placed at this Site, with its site values substituted.
    #[arg(long, value_name = "SITE")]
    pub site: Option<String>,
}

impl SiteArgs {
    /// The views to check or render, each with the site it is for: the one
    /// `--site` names; else, with Site objects, every site's in name order;
    /// else the fleet itself. An unknown `--site` is an error (did you mean),
    /// as is `--site` on a repository without Site objects.
    pub fn views<'a>(&self, fleet: &'a model::Fleet) -> anyhow::Result<Vec<SiteView<'a>>> {
        if let Some(site) = &self.site {
            let view = fleet
                .site_view(site)
                .map_err(|e| anyhow::anyhow!("--site {site}: {e}"))?;
            return Ok(vec![(Some(site.clone()), Cow::Owned(view))]);
        }
        if !fleet.has_sites() {
            return Ok(vec![(None, Cow::Borrowed(fleet))]);
        }
        fleet
            .sites
            .keys()
            .map(|s| Ok((Some(s.clone()), Cow::Owned(fleet.site_view(s)?))))
            .collect()
    }
}
