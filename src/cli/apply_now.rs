//! `fermata apply-now`: break glass. Applies what is staged for a composition
//! outside its window, once, and records who and why in its status.

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use super::run::{exit_code, fetch_or_warn, print_reports, ReconcilerArgs, StateWriter};
use super::Accountable;
use crate::reconcile::requests::Request;
use crate::reconcile::{BranchReport, Mode, Reconciler};
use crate::report::ErrorCode;
use crate::report::Row;
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
    a.by.who()?;
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
        let granted = record_grants(
            &r,
            &reports,
            &a.target,
            &a.by,
            |row| {
                // A rolled-back state is staged too, only held: apply-now
                // lifts the hold (the row's note starts with its error code).
                let rolled_back = row.state == State::Failed
                    && row.note.starts_with(&format!("{}:", ErrorCode::RolledBack));
                row.state == State::Staged || rolled_back
            },
            |composition, grant| Request::ApplyNow { composition, grant },
        )?;
        if granted.is_empty() {
            print_reports(&reports, &r.ctx.settings.status_branch);
            bail!(
                "nothing staged and waiting for {}: no override recorded",
                a.target
            );
        }
        let reports = act(
            &mut r,
            writer,
            &format!("applying outside the window: {}", granted.join(", ")),
        )
        .await;
        Ok(reports.map_or(ExitCode::SUCCESS, |reports| exit_code(&reports)))
    })
}

/// Records one request per composition of `reports` that `target` (`SYM`
/// or `SYM/VAR`) names and `eligible` accepts, bound to its digest now and
/// kept where its site's agent reads it; returns those compositions.
pub(super) fn record_grants(
    r: &Reconciler,
    reports: &[BranchReport],
    target: &str,
    by: &Accountable,
    eligible: impl Fn(&Row) -> bool,
    request: impl Fn(String, Override) -> Request,
) -> anyhow::Result<Vec<String>> {
    let who = by.who()?;
    let now = r.ctx.clock.now();
    let mut recorded = Vec::new();
    for (site, row) in reports
        .iter()
        .flat_map(|b| b.rows.iter().map(move |row| (b.site.as_deref(), row)))
    {
        let named = match target.split_once('/') {
            Some(_) => row.id.to_string() == target,
            None => row.id.symphony == target,
        };
        let Some(d) = row.digest.filter(|_| named && eligible(row)) else {
            continue;
        };
        let grant = Override {
            who: who.clone(),
            why: by.reason.clone(),
            at: now,
            digest: d.to_hex(),
        };
        r.requests_of(site)
            .record(&request(row.id.to_string(), grant))?;
        recorded.push(row.id.to_string());
    }
    Ok(recorded)
}

/// Acts on what was just recorded: wakes the daemon that holds the state
/// directory, or (none does) reconciles at once and returns that pass.
pub(super) async fn act(
    r: &mut Reconciler,
    writer: StateWriter,
    what: &str,
) -> Option<Vec<BranchReport>> {
    match writer {
        StateWriter::Daemon(pid) => {
            StateWriter::wake(pid, what);
            None
        }
        StateWriter::This(_lock) => {
            errln!("{what}");
            r.unsettle();
            let reports = r.pass().await;
            print_reports(&reports, &r.ctx.settings.status_branch);
            Some(reports)
        }
    }
}
