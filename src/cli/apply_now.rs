//! `fermata apply-now`: break glass. Applies what is staged for a composition
//! outside its window, once, and records who and why in its status.

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use super::run::{exit_code, fetch_or_warn, print_reports, ReconcilerArgs, StateWriter};
use super::Accountable;
use crate::reconcile::requests::Request;
use crate::reconcile::Mode;
use crate::report::ErrorCode;
use crate::status::{Override, State};

#[derive(Debug, Args)]
pub struct ApplyNowArgs {
    /// `SYMPHONY` (every composition of it) or `SYMPHONY/VARIATION`.
    pub target: String,
    /// Why the window is bypassed, and who asks.
    #[command(flatten)]
    pub by: Accountable,
    #[command(flatten)]
    pub run: ReconcilerArgs,
}

pub fn run(a: &ApplyNowArgs) -> anyhow::Result<ExitCode> {
    let who = a.by.who()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut r = a.run.reconciler()?;
        let writer = StateWriter::take(&r.ctx.settings.state_dir)?;
        fetch_or_warn(&mut r).await;
        // First a pass: it stages whatever is new, so the override is bound
        // to the digest that is staged now and nothing later. Beside a
        // running daemon, a plan of it: the daemon stages.
        if let StateWriter::Daemon(_) = writer {
            r.set_mode(Mode::Plan { revision: None });
        }
        let reports = r.pass().await;
        r.set_mode(Mode::Reconcile);
        let now = r.ctx.clock.now();
        let mut granted = Vec::new();
        for (site, row) in reports
            .iter()
            .flat_map(|b| b.rows.iter().map(move |row| (b.site.as_deref(), row)))
        {
            let matches = match a.target.split_once('/') {
                Some(_) => row.id.to_string() == a.target,
                None => row.id.symphony == a.target,
            };
            // A rolled-back state is staged too, only held: apply-now
            // lifts the hold (the row's note starts with its error code).
            let rolled_back = row.state == State::Failed
                && row.note.starts_with(&format!("{}:", ErrorCode::RolledBack));
            if matches && (row.state == State::Staged || rolled_back) {
                if let Some(d) = row.digest {
                    r.requests_of(site).record(&Request::ApplyNow {
                        composition: row.id.to_string(),
                        grant: Override {
                            who: who.clone(),
                            why: a.by.reason.clone(),
                            at: now,
                            digest: d.to_hex(),
                        },
                    })?;
                    granted.push(row.id.to_string());
                }
            }
        }
        if granted.is_empty() {
            print_reports(&reports, &r.ctx.settings.status_branch);
            bail!(
                "nothing staged and waiting for {}: no override recorded",
                a.target
            );
        }
        match writer {
            StateWriter::Daemon(pid) => {
                StateWriter::wake(
                    pid,
                    &format!("applying outside the window: {}", granted.join(", ")),
                );
                Ok(ExitCode::SUCCESS)
            }
            StateWriter::This(_lock) => {
                errln!("applying outside the window: {}", granted.join(", "));
                r.unsettle();
                let reports = r.pass().await;
                print_reports(&reports, &r.ctx.settings.status_branch);
                Ok(exit_code(&reports))
            }
        }
    })
}
