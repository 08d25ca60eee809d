//! `fermata rollback`: switches a composition back to the state applied
//! before its current one, by hand, and holds the current one from being
//! applied again until a commit changes it; recorded (who, why, when) like
//! `apply-now`, shown in its status as `failed`, reason `RolledBack`.

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use super::run::{fetch_or_warn, print_reports, ReconcilerArgs, StateWriter};
use super::Accountable;
use crate::reconcile::requests::Request;
use crate::reconcile::Mode;
use crate::status::{Override, State};

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
    let who = a.by.who()?;
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
        let now = r.ctx.clock.now();
        let mut recorded = Vec::new();
        for (site, row) in reports
            .iter()
            .flat_map(|b| b.rows.iter().map(move |row| (b.site.as_deref(), row)))
        {
            let matches = match a.target.split_once('/') {
                Some(_) => row.id.to_string() == a.target,
                None => row.id.symphony == a.target,
            };
            if matches && matches!(row.state, State::Installed | State::Failed) {
                if let Some(d) = row.digest {
                    r.requests_of(site).record(&Request::Rollback {
                        composition: row.id.to_string(),
                        grant: Override {
                            who: who.clone(),
                            why: a.by.reason.clone(),
                            at: now,
                            digest: d.to_hex(),
                        },
                    })?;
                    recorded.push(row.id.to_string());
                }
            }
        }
        if recorded.is_empty() {
            print_reports(&reports, &r.ctx.settings.status_branch);
            bail!(
                "nothing installed or failed for {}: no rollback recorded",
                a.target
            );
        }
        match writer {
            StateWriter::Daemon(pid) => {
                StateWriter::wake(pid, &format!("rolling back: {}", recorded.join(", ")));
                Ok(ExitCode::SUCCESS)
            }
            StateWriter::This(_lock) => {
                errln!("rolling back: {}", recorded.join(", "));
                r.unsettle();
                let reports = r.pass().await;
                print_reports(&reports, &r.ctx.settings.status_branch);
                // Failed, RolledBack is what was asked for: not an error here.
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}
