//! `fermata ungate`: lift one scheduling gate of a composition without a
//! commit (an approval given elsewhere), recorded with who and why in its
//! status; then reconcile, so it applies if nothing else holds it.

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use super::run::{exit_code, fetch_or_warn, print_reports, RunArgs};
use super::Accountable;
use crate::model::{self, CompositionId};
use crate::source::Source;
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
    pub run: RunArgs,
}

pub fn run(a: &UngateArgs) -> anyhow::Result<ExitCode> {
    let who = a.by.who()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut r = a.run.reconciler()?;
        fetch_or_warn(&mut r).await;
        let mut found = false;
        for branch in &r.settings.branches {
            let rev = r.source.resolve(&format!("refs/heads/{branch}"))?;
            let snap = r.source.snapshot(rev)?;
            let loaded = model::load(&snap, &r.settings.path);
            if let Some(c) = loaded.fleet.composition(&a.composition) {
                found |= c.scheduling_gates.contains(&a.gate);
            }
        }
        if !found {
            bail!(
                "{} has no scheduling gate {:?} on {}",
                a.composition,
                a.gate,
                r.settings.branches.join(", ")
            );
        }
        let now = r.clock.now();
        let lifted = r
            .persisted
            .ungated
            .entry(a.composition.to_string())
            .or_default();
        lifted.retain(|u| u.gate != a.gate);
        lifted.push(Ungate {
            gate: a.gate.clone(),
            who,
            why: a.by.reason.clone(),
            at: now,
        });
        r.unsettle();
        let reports = r.pass().await;
        print_reports(&reports, &r.settings.status_branch);
        Ok(exit_code(&reports))
    })
}
