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
    #[command(flatten)]
    pub site: super::SiteArgs,
}

/// Without `--site` on a repository with Site objects, every composition is
/// rendered at every site it is placed on: a site's values can break a
/// render that works elsewhere.
pub fn run(a: &ValidateArgs) -> anyhow::Result<ExitCode> {
    let (snap, loaded) = a.repo.load()?;
    let views = a.site.views(&loaded.fleet)?;
    // With --site, the counts are that site's.
    let fleet = match (&a.site.site, views.first()) {
        (Some(_), Some((_, view))) => view.as_ref(),
        _ => &loaded.fleet,
    };
    let mut errors = loaded.errors.clone();
    if !a.no_render {
        for (_, view) in &views {
            for comp in view.compositions() {
                if let Err(e) = synth::render(&snap, view, comp, &a.limits.limits()) {
                    errors.push(e.diagnostic(view, comp));
                }
            }
        }
    }
    let compositions = fleet.compositions().count();
    let mut summary = format!(
        "{}, {}, {}, {}",
        count(fleet.symphonies.len(), "symphony"),
        count(compositions, "composition"),
        count(fleet.windows.len(), "window"),
        count(fleet.targets.len(), "target"),
    );
    match &a.site.site {
        Some(site) => summary = format!("site {site}: {summary}"),
        None if fleet.has_sites() => {
            summary.push_str(&format!(", {}", count(fleet.sites.len(), "site")))
        }
        None => {}
    }
    // Only when there are any: a repository without campaigns reads as before.
    if !fleet.campaigns.is_empty() || !fleet.activations.is_empty() {
        summary.push_str(&format!(
            ", {}, {}",
            count(fleet.campaigns.len(), "campaign"),
            count(fleet.activations.len(), "activation")
        ));
    }
    match a.repo.output {
        Output::Json => {
            let mut out = json!({
                "ok": errors.is_empty(),
                "revision": snap.revision.to_string(),
                "symphonies": fleet.symphonies.len(),
                "compositions": compositions,
                "windows": fleet.windows.len(),
                "targets": fleet.targets.len(),
                "errors": errors,
                "warnings": loaded.warnings,
            });
            if fleet.has_sites() {
                out["sites"] = json!(fleet.sites.len());
            }
            if !fleet.campaigns.is_empty() || !fleet.activations.is_empty() {
                out["campaigns"] = json!(fleet.campaigns.len());
                out["activations"] = json!(fleet.activations.len());
            }
            if let Some(site) = &a.site.site {
                out["site"] = json!(site);
            }
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
