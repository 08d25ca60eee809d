//! `fermata campaign ...`: drive, inspect and approve campaign activations
//! (DESIGN.md section 10) in a repository read and written in place, so a
//! CI job (GitHub Actions, Jenkins) can drive a rollout in stepped mode and
//! carry its state between systems: it lives in Git.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};

use super::run::ClockArgs;
use crate::campaign::commit::Signing;
use crate::campaign::drive::{self, Driver, Outcome};
use crate::campaign::state::ActivationState;
use crate::source::{GitSource, SignaturePolicy};

#[derive(Debug, Args)]
pub struct CampaignArgs {
    #[command(subcommand)]
    pub command: CampaignCommand,
}

#[derive(Debug, Subcommand)]
pub enum CampaignCommand {
    /// Run the current stage of an activation until it finishes or must
    /// wait; commit the state; print it as JSON. Exit 0 advanced (or
    /// finished), 3 waiting, 1 failed.
    Step(StepArgs),
    /// Every activation and where it is.
    List(ListArgs),
    /// One activation's state.
    Show(ShowArgs),
    /// Approve an activation's approval stage, as a commit on the watched
    /// branch (signed with --signing-key where a signature policy holds).
    Approve(ApproveArgs),
    /// Start an activation of a campaign, as a committed Activation.
    Activate(ActivateArgs),
}

/// Where the campaign lives.
#[derive(Debug, Clone, Args)]
pub struct Where {
    /// A local repository (a working tree or a bare one), read and written
    /// in place; or a URL, mirrored under --state-dir, fetched before each
    /// step and pushed to (compare-and-swap) after each commit.
    #[arg(long, env = "FERMATA_REPO")]
    pub repo: String,
    /// Where a URL's mirror lives.
    #[arg(long, env = "FERMATA_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The watched branch: campaigns, Sites and promotes.
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// Where activation states are kept (`campaigns/<activation>.yaml`).
    #[arg(long, default_value = "fermata/status")]
    pub status_branch: String,
    #[command(flatten)]
    pub clock: ClockArgs,
}

/// How commits are signed and approvals checked.
#[derive(Debug, Clone, Args)]
pub struct Keys {
    /// Sign campaign commits with this key: an OpenSSH private key
    /// (ssh-keygen -Y sign) or an armored OpenPGP secret key, without a passphrase.
    #[arg(long)]
    pub signing_key: Option<PathBuf>,
    /// An allowed_signers file: approvals count only when signed by one of its keys.
    #[arg(long)]
    pub trusted_keys: Option<PathBuf>,
}

impl Keys {
    fn signing(&self) -> anyhow::Result<Option<Signing>> {
        self.signing_key
            .as_deref()
            .map(Signing::from_key_file)
            .transpose()
            .context("--signing-key")
    }

    fn trust(&self) -> anyhow::Result<SignaturePolicy> {
        match &self.trusted_keys {
            Some(f) => SignaturePolicy::ssh_from_file(f).context("--trusted-keys"),
            None => Ok(SignaturePolicy::None),
        }
    }
}

#[derive(Debug, Args)]
pub struct StepArgs {
    pub activation: String,
    #[command(flatten)]
    pub at: Where,
    #[command(flatten)]
    pub keys: Keys,
    /// Where promotes with `pullRequest: true` open their pull requests.
    #[command(flatten)]
    pub forge: crate::forge::ForgeArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub at: Where,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    pub activation: String,
    #[command(flatten)]
    pub at: Where,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    pub activation: String,
    /// Why it may go on (recorded with the approval).
    #[arg(long)]
    pub reason: String,
    /// The stage approved; the activation's current one when absent.
    #[arg(long)]
    pub stage: Option<String>,
    /// Who approves (`$USER` when absent); under --trusted-keys the key
    /// that signed is recorded beside it.
    #[arg(long)]
    pub who: Option<String>,
    /// Propose the approval as a pull request instead: merging it (by a
    /// reviewer, on the forge) approves, and who merged it is recorded.
    #[arg(long)]
    pub pull_request: bool,
    /// The forge the pull request goes to.
    #[command(flatten)]
    pub forge: crate::forge::ForgeArgs,
    #[command(flatten)]
    pub at: Where,
    #[command(flatten)]
    pub keys: Keys,
}

#[derive(Debug, Args)]
pub struct ActivateArgs {
    pub campaign: String,
    /// The activation's name.
    #[arg(long)]
    pub name: String,
    /// `key=value`, repeatable.
    #[arg(long = "input", value_parser = parse_input)]
    pub inputs: Vec<(String, String)>,
    #[command(flatten)]
    pub at: Where,
    #[command(flatten)]
    pub keys: Keys,
}

fn parse_input(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected key=value"))
}

impl Where {
    /// The repository worked on: the one given, or the mirror of a URL.
    fn open(&self) -> anyhow::Result<(PathBuf, Option<GitSource>)> {
        if !crate::source::is_url(&self.repo) {
            return Ok((PathBuf::from(&self.repo), None));
        }
        let state = super::default_state_dir(self.state_dir.clone());
        let mirror = GitSource::open(&self.repo, &state).context("--repo")?;
        Ok((mirror.git_dir().to_path_buf(), Some(mirror)))
    }
}

fn driver(at: &Where, keys: &Keys) -> anyhow::Result<Driver> {
    let (repo, mirror) = at.open()?;
    Ok(Driver {
        repo,
        branch: at.branch.clone(),
        status_branch: at.status_branch.clone(),
        signing: keys.signing()?,
        trust: keys.trust()?,
        forge: None,
        mirror,
    })
}

pub fn run(a: &CampaignArgs) -> anyhow::Result<ExitCode> {
    match &a.command {
        CampaignCommand::Step(s) => step(s),
        CampaignCommand::List(l) => list(l),
        CampaignCommand::Show(s) => show(s),
        CampaignCommand::Approve(p) => approve(p),
        CampaignCommand::Activate(p) => activate(p),
    }
}

fn step(a: &StepArgs) -> anyhow::Result<ExitCode> {
    let mut d = driver(&a.at, &a.keys)?;
    d.forge = a.forge.build().context("--forge")?;
    let now = a.at.clock.clock().now();
    let (outcome, state) = d.step(&a.activation, now)?;
    let (word, why, code) = match &outcome {
        Outcome::Advanced => ("advanced", None, 0),
        Outcome::Finished => ("finished", None, 0),
        Outcome::Waiting(why, _) => ("waiting", Some(why.as_str()), 3),
        Outcome::Failed(why) => ("failed", Some(why.as_str()), 1),
    };
    let outputs: BTreeMap<&String, &BTreeMap<String, serde_json::Value>> =
        state.stages.iter().map(|(k, r)| (k, &r.outputs)).collect();
    let json = serde_json::json!({
        "activation": state.activation,
        "campaign": state.campaign,
        "outcome": word,
        "why": why,
        "stage": state.stage,
        "phase": state.phase,
        "generation": state.generation,
        "outputs": outputs,
    });
    outln!("{}", serde_json::to_string_pretty(&json)?);
    Ok(ExitCode::from(code))
}

fn list(a: &ListArgs) -> anyhow::Result<ExitCode> {
    let states = driver(
        &a.at,
        &Keys {
            signing_key: None,
            trusted_keys: None,
        },
    )?
    .states()?;
    match a.format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&states)?),
        Format::Table => {
            outln!(
                "{:<24} {:<20} {:<10} {:<16} GEN",
                "ACTIVATION",
                "CAMPAIGN",
                "PHASE",
                "STAGE"
            );
            for s in &states {
                outln!(
                    "{:<24} {:<20} {:<10} {:<16} {}",
                    s.activation,
                    s.campaign,
                    format!("{:?}", s.phase).to_lowercase(),
                    s.stage.as_deref().unwrap_or("-"),
                    s.generation
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show(a: &ShowArgs) -> anyhow::Result<ExitCode> {
    let d = driver(
        &a.at,
        &Keys {
            signing_key: None,
            trusted_keys: None,
        },
    )?;
    let Some(s) = d.state(&a.activation)? else {
        bail!(
            "no recorded state for activation {} on {}",
            a.activation,
            a.at.status_branch
        );
    };
    match a.format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&s)?),
        Format::Table => print_state(&s),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_state(s: &ActivationState) {
    outln!(
        "activation {} of campaign {}: {:?}, stage {}, generation {}",
        s.activation,
        s.campaign,
        s.phase,
        s.stage.as_deref().unwrap_or("-"),
        s.generation
    );
    if let Some(e) = &s.error {
        outln!("  error: {e}");
    }
    for (name, r) in &s.stages {
        let outputs = serde_json::to_string(&r.outputs).unwrap_or_default();
        outln!(
            "  {name:<16} {} batches, finished {}, outputs {outputs}",
            r.batches.len(),
            r.finished
                .map(|t| t.to_rfc3339())
                .unwrap_or_else(|| "-".into())
        );
        for (site, result) in &r.sites {
            outln!("    {site:<20} {result:?}");
        }
    }
    for a in &s.approvals {
        outln!(
            "  approved {} by {} ({}): {}",
            a.stage,
            a.by,
            a.via,
            a.reason
        );
    }
}

fn approve(a: &ApproveArgs) -> anyhow::Result<ExitCode> {
    let d = driver(&a.at, &a.keys)?;
    let stage = match &a.stage {
        Some(s) => s.clone(),
        None => d
            .state(&a.activation)?
            .and_then(|s| s.stage)
            .with_context(|| {
                format!(
                    "activation {} has no current stage: name one with --stage",
                    a.activation
                )
            })?,
    };
    let who = match &a.who {
        Some(w) => w.clone(),
        None => std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
    };
    let (repo, mirror) = a.at.open()?;
    if let Some(m) = &mirror {
        m.fetch()?;
    }
    if a.pull_request {
        let Some(forge) = a.forge.build().context("--forge")? else {
            bail!(
                "--pull-request needs --forge github|gitea|gitlab (with --forge-repo and a token)"
            );
        };
        let n = drive::propose_approval(
            (&repo, mirror.as_ref().and_then(|m| m.remote())),
            &a.at.branch,
            (&a.activation, &stage),
            &who,
            &a.reason,
            (a.keys.signing()?.as_ref(), forge.as_ref()),
        )?;
        outln!(
            "approval of {}/{stage} proposed in pull request #{n}: merging it approves",
            a.activation
        );
        return Ok(ExitCode::SUCCESS);
    }
    let id = drive::approve(
        (&repo, mirror.as_ref().and_then(|m| m.remote())),
        &a.at.branch,
        (&a.activation, &stage),
        &who,
        &a.reason,
        a.keys.signing()?.as_ref(),
    )?;
    outln!(
        "approved {}/{stage}: commit {}",
        a.activation,
        &id.to_string()[..7]
    );
    Ok(ExitCode::SUCCESS)
}

fn activate(a: &ActivateArgs) -> anyhow::Result<ExitCode> {
    crate::model::load::check_name(&a.name).map_err(|m| anyhow::anyhow!("--name: {m}"))?;
    let inputs: BTreeMap<String, String> = a.inputs.iter().cloned().collect();
    let (repo, mirror) = a.at.open()?;
    if let Some(m) = &mirror {
        m.fetch()?;
    }
    let id = drive::activate(
        (&repo, mirror.as_ref().and_then(|m| m.remote())),
        &a.at.branch,
        (&a.campaign, &a.name),
        &inputs,
        a.keys.signing()?.as_ref(),
    )?;
    outln!(
        "activation {} of {}: commit {}",
        a.name,
        a.campaign,
        &id.to_string()[..7]
    );
    Ok(ExitCode::SUCCESS)
}
