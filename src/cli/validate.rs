//! `fermata validate`: load and render a revision, report every problem.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use super::{count, Output, RepoArgs};
use crate::model::Diagnostic;
use crate::synth;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Only check the objects; do not run synthesizers.
    #[arg(long)]
    pub no_render: bool,
    #[command(flatten)]
    pub limits: super::LimitArgs,
}

pub fn run(a: &ValidateArgs) -> anyhow::Result<ExitCode> {
    let (snap, loaded) = a.repo.load()?;
    let fleet = &loaded.fleet;
    let mut errors = loaded.errors.clone();
    if !a.no_render {
        for comp in fleet.compositions() {
            if let Err(e) = synth::render(&snap, fleet, comp, &a.limits.limits()) {
                errors.push(e.diagnostic(fleet, comp));
            }
        }
    }
    let compositions = fleet.compositions().count();
    let summary = format!(
        "{}, {}, {}, {}",
        count(fleet.symphonies.len(), "symphony"),
        count(compositions, "composition"),
        count(fleet.windows.len(), "window"),
        count(fleet.targets.len(), "target"),
    );
    match a.repo.output {
        Output::Json => {
            let out = json!({
                "ok": errors.is_empty(),
                "revision": snap.revision.to_string(),
                "symphonies": fleet.symphonies.len(),
                "compositions": compositions,
                "windows": fleet.windows.len(),
                "targets": fleet.targets.len(),
                "errors": errors,
                "warnings": loaded.warnings,
            });
            outln!("{}", serde_json::to_string_pretty(&out)?);
        }
        Output::Text => {
            for w in &loaded.warnings {
                errln!("warning: {w}");
            }
            if errors.is_empty() {
                outln!("ok: {summary}");
            } else {
                print_errors(&errors);
            }
        }
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One error per line, `file:line: field: message`.
pub(super) fn print_errors(errors: &[Diagnostic]) {
    for e in errors {
        outln!("{e}");
    }
}
