//! `fermata plan`: the actions a pass would take now (Datum's instance
//! control), including those that will not run yet and why. Decides
//! everything, writes nothing: no target, no status, no state.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use super::run::{fetch_or_warn, ReconcilerArgs};
use super::Output;
use crate::reconcile::{BranchReport, Mode};
use crate::report::markdown::{plan_markdown, PlanHeader};

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub run: ReconcilerArgs,
    /// Plan this revision (a commit, tag or rev-parse expression) instead of
    /// the head of each branch, against what the targets hold.
    #[arg(long)]
    pub rev: Option<String>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// After the table, what each action would change on its target (the
    /// target's dry-run diff); JSON output always carries it.
    #[arg(long)]
    pub diff: bool,
    /// Print the plan as the Markdown a pull request comment gets (the
    /// marker, actions, windows, artifacts, diffs, errors), e.g. for a CI
    /// job that posts it itself.
    #[arg(long, conflicts_with_all = ["output", "diff"])]
    pub markdown: bool,
}

pub fn run(a: &PlanArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut r = a.run.reconciler()?;
        r.set_mode(Mode::Plan {
            revision: a.rev.clone(),
        });
        fetch_or_warn(&mut r).await;
        let reports = r.pass().await;
        if a.markdown {
            let site = r.ctx.settings.site.clone().unwrap_or_else(|| "default".into());
            for b in &reports {
                let head = b.revision.map(|r| r.to_string()).unwrap_or_default();
                let header = PlanHeader {
                    site: &site,
                    head: &head,
                    base: &b.branch,
                    commands_blocked: false,
                    result: None,
                };
                outln!("{}", plan_markdown(&header, b));
            }
            return Ok(exit(&reports));
        }
        match a.output {
            Output::Text => {
                for b in &reports {
                    let rev = b.revision.map(|r| r.short()).unwrap_or_else(|| "-".into());
                    outln!("plan for {} @ {rev}", b.branch);
                    outln!(
                        "  {:<32} {:<8} {:<22} {:<12} {:<16} STATE",
                        "COMPOSITION", "ACTION", "RUNS", "DIGEST", "WINDOW"
                    );
                    for row in &b.rows {
                        let Some(action) = row.action else { continue };
                        outln!(
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
                        outln!("  (nothing to do)");
                    }
                    for e in &b.errors {
                        outln!("  error: {e}");
                    }
                    if a.diff {
                        for (id, p) in &b.plans {
                            if let Some(d) = &p.diff {
                                outln!("\n--- {id}\n{}", d.trim_end());
                            }
                        }
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
                                "diff": b.plans.get(&r.id).and_then(|p| p.diff.clone()),
                                "artifacts": b.plans.get(&r.id).map(|p| p.artifacts.iter().map(|x| json!({
                                    "name": x.name,
                                    "url": x.url,
                                    "size": x.size,
                                    "stored": x.stored,
                                })).collect::<Vec<_>>()).unwrap_or_default(),
                            })).collect::<Vec<_>>(),
                            "errors": b.errors,
                        })
                    })
                    .collect();
                outln!("{}", serde_json::to_string_pretty(&out)?);
            }
        }
        Ok(exit(&reports))
    })
}

fn exit(reports: &[BranchReport]) -> ExitCode {
    if reports.iter().any(|b| !b.errors.is_empty()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
