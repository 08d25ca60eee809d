//! `fermata rollback`: switches a composition back to the state applied
//! before its current one, by hand, and holds the current one from being
//! applied again until a commit changes it; recorded (who, why, when) like
//! `apply-now`, shown in its status as `failed`, reason `RolledBack`.

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use super::apply_now::{act, record_grants};
use super::run::{fetch_or_warn, print_reports, ReconcilerArgs, StateWriter};
use super::Accountable;
use crate::reconcile::requests::Request;
use crate::reconcile::Mode;
use crate::status::State;

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// `SYMPHONY` (every composition of it) or `SYMPHONY/VARIATION`.
    pub target: String,
    /// Why it is rolled back, and who asks.
    #[command(flatten)]
    pub by: Accountable,
    #[command(flatten)]
    pub run: ReconcilerArgs,
}

pub fn run(a: &RollbackArgs) -> anyhow::Result<ExitCode> {
    a.by.who()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut r = a.run.reconciler()?;
        let writer = StateWriter::take(&r.ctx.settings.state_dir)?;
        fetch_or_warn(&mut r).await;
        // A plan first: which desired state is the one applied (or failing)
        // now; the record is bound to that digest and nothing later.
        r.set_mode(Mode::Plan { revision: None });
        let reports = r.pass().await;
        r.set_mode(Mode::Reconcile);
        let recorded = record_grants(
            &r,
            &reports,
            &a.target,
            &a.by,
            |row| matches!(row.state, State::Installed | State::Failed),
            |composition, grant| Request::Rollback { composition, grant },
        )?;
        if recorded.is_empty() {
            print_reports(&reports, &r.ctx.settings.status_branch);
            bail!(
                "nothing installed or failed for {}: no rollback recorded",
                a.target
            );
        }
        // Failed, RolledBack is what was asked for: not an error here.
        act(
            &mut r,
            writer,
            &format!("rolling back: {}", recorded.join(", ")),
        )
        .await;
        Ok(ExitCode::SUCCESS)
    })
}
