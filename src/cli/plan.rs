//! `fermata plan`: the actions a pass would take now (Datum's instance
//! control), including those that will not run yet and why. Decides
//! everything, writes nothing: no target, no status, no state.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use super::run::{fetch_or_warn, RunArgs};
use super::Output;

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Plan this revision (a commit, tag or rev-parse expression) instead of
    /// the head of each branch, against what the targets hold.
    #[arg(long)]
    pub rev: Option<String>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

pub fn run(a: &PlanArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut r = a.run.reconciler()?;
        r.dry_run = true;
        r.revision = a.rev.clone();
        fetch_or_warn(&mut r).await;
        let reports = r.pass().await;
        match a.output {
            Output::Text => {
                for b in &reports {
                    let rev = b.revision.map(|r| r.short()).unwrap_or_else(|| "-".into());
                    println!("plan for {} @ {rev}", b.branch);
                    println!(
                        "  {:<32} {:<8} {:<22} {:<12} {:<16} STATE",
                        "COMPOSITION", "ACTION", "RUNS", "DIGEST", "WINDOW"
                    );
                    for row in &b.rows {
                        let Some(action) = row.action else { continue };
                        println!(
                            "  {:<32} {:<8} {:<22} {:<12} {:<16} {}",
                            row.id.to_string(),
                            format!("{action:?}"),
                            row.skipped
                                .as_deref()
                                .map(|s| format!("no: {s}"))
                                .unwrap_or_else(|| "now".into()),
                            row.digest.map(|d| d.short()).unwrap_or_else(|| "-".into()),
                            row.window.as_deref().unwrap_or("-"),
                            row.state.as_str(),
                        );
                    }
                    if b.rows.iter().all(|r| r.action.is_none()) {
                        println!("  (nothing to do)");
                    }
                    for e in &b.errors {
                        println!("  error: {e}");
                    }
                }
            }
            Output::Json => {
                let out: Vec<_> = reports
                    .iter()
                    .map(|b| {
                        json!({
                            "branch": b.branch,
                            "revision": b.revision.map(|r| r.to_string()),
                            "actions": b.rows.iter().filter(|r| r.action.is_some()).map(|r| json!({
                                "composition": r.id,
                                "action": r.action,
                                "skipped": r.skipped.is_some(),
                                "reason": r.skipped,
                                "digest": r.digest,
                                "window": r.window,
                                "state": r.state,
                            })).collect::<Vec<_>>(),
                            "errors": b.errors,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
        }
        let failed = reports.iter().any(|b| !b.errors.is_empty());
        Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    })
}
