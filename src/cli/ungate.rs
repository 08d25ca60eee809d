//! `fermata ungate`: lift one scheduling gate of a composition without a
//! commit (an approval given elsewhere), recorded with who and why in its
//! status; then reconcile, so it applies if nothing else holds it. Beside
//! a running `fermata run` (which holds the state directory), it records
//! the lift and wakes that process instead.

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use super::run::{exit_code, fetch_or_warn, print_reports, ReconcilerArgs, StateWriter};
use super::Accountable;
use crate::model::{self, CompositionId};
use crate::reconcile::requests::Request;
use crate::status::Ungate;

#[derive(Debug, Args)]
pub struct UngateArgs {
    /// `SYMPHONY/VARIATION`.
    pub composition: CompositionId,
    /// The gate to lift, as named in `schedulingGates`.
    pub gate: String,
    /// Why it may go ahead, and who lifts it.
    #[command(flatten)]
    pub by: Accountable,
    #[command(flatten)]
    pub run: ReconcilerArgs,
}

pub fn run(a: &UngateArgs) -> anyhow::Result<ExitCode> {
    let who = a.by.who()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut r = a.run.reconciler()?;
        let writer = StateWriter::take(&r.ctx.settings.state_dir)?;
        fetch_or_warn(&mut r).await;
        let mut found = false;
        // Central mode: every site agent the composition is placed at
        // keeps its own records.
        let mut sites: Vec<String> = Vec::new();
        for branch in &r.ctx.settings.branches {
            let rev = r
                .ctx
                .source
                .resolve(&format!("refs/heads/{branch}"))
                .await?;
            let snap = r.ctx.source.snapshot(rev).await?;
            let loaded = model::load(&snap, &r.ctx.settings.path);
            if let Some(c) = loaded.fleet.composition(&a.composition) {
                found |= c.scheduling_gates.contains(&a.gate);
            }
            if r.ctx.settings.site.is_none() && loaded.fleet.has_sites() {
                for site in loaded.fleet.sites_of(&a.composition) {
                    if !sites.iter().any(|s| s == site) {
                        sites.push(site.to_string());
                    }
                }
            }
        }
        if !found {
            bail!(
                "{} has no scheduling gate {:?} on {}",
                a.composition,
                a.gate,
                r.ctx.settings.branches.join(", ")
            );
        }
        let now = r.ctx.clock.now();
        let request = Request::Ungate {
            composition: a.composition.to_string(),
            ungate: Ungate {
                gate: a.gate.clone(),
                who,
                why: a.by.reason.clone(),
                at: now,
            },
        };
        if sites.is_empty() {
            r.requests().record(&request)?;
        }
        for site in &sites {
            r.requests_of(Some(site)).record(&request)?;
        }
        match writer {
            StateWriter::Daemon(pid) => {
                StateWriter::wake(pid, &format!("{} gate {} lifted", a.composition, a.gate));
                Ok(ExitCode::SUCCESS)
            }
            StateWriter::This(_lock) => {
                r.unsettle();
                let reports = r.pass().await;
                print_reports(&reports, &r.ctx.settings.status_branch);
                Ok(exit_code(&reports))
            }
        }
    })
}
