//! `fermata/fleet`: the fleet view committed, for people browsing the
//! repository: `summary.md` (a table, and the heatmap embedded as
//! `![fleet](fleet.svg)`), `fleet.svg` and `fleet.json` (the JSON of
//! `fermata fleet status --format json`). One commit per change: the
//! files are compared with the branch's tip first, and pushed with the
//! status branch's compare-and-swap and retries.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use git2::Oid;

use super::view::{aggregate, short, state_counts, FleetView};
use super::{read, svg, FleetError};
use crate::status::StatusRepo;

/// The branch the fleet view is committed to.
pub const FLEET_BRANCH: &str = "fermata/fleet";

/// Reads the fleet of `branch` from `git_dir` (the central reconciler's
/// repository or mirror, which its fetch keeps up to date with every
/// site's branch) and commits the view to [`FLEET_BRANCH`], pushed to
/// `remote` for a mirror. `None` when nothing changed.
pub fn publish(
    git_dir: &Path,
    remote: Option<String>,
    branch: &str,
    now: DateTime<Utc>,
    stale: Duration,
) -> Result<Option<Oid>, FleetError> {
    let input = read::read(git_dir, branch)?;
    let view = aggregate(&input, now, stale);
    let repo = StatusRepo::new(git_dir.to_path_buf(), remote, FLEET_BRANCH, None);
    Ok(repo.publish_files(&files(&view), &subject(&view))?)
}

/// The view's headline ([`FleetView::headline`]).
fn subject(view: &FleetView) -> String {
    view.headline()
}

/// The branch's files for `view`.
pub fn files(view: &FleetView) -> BTreeMap<String, Vec<u8>> {
    let mut json = serde_json::to_string_pretty(view).unwrap_or_default();
    json.push('\n');
    BTreeMap::from([
        ("summary.md".to_string(), summary_md(view).into_bytes()),
        ("fleet.svg".to_string(), svg::render(view).into_bytes()),
        ("fleet.json".to_string(), json.into_bytes()),
    ])
}

/// `summary.md`: the picture, then one row per site.
pub fn summary_md(view: &FleetView) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# fleet {} @ {}\n\n{} sites, {} at the newest commit, {} lagging.\n\n![fleet](fleet.svg)\n",
        view.branch,
        view.head.as_deref().map(short).unwrap_or_else(|| "-".into()),
        view.totals.sites,
        view.totals.at_head,
        view.totals.lagging
    );
    out.push_str("| site | reconciled | newest | states | lagging |\n|---|---|---|---|---|\n");
    for s in &view.sites {
        let why = s
            .lagging
            .iter()
            .map(|l| format!("{}: {}", l.reason.as_str(), l.message))
            .collect::<Vec<_>>()
            .join("; ");
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            cell(&s.site),
            s.reconciled
                .as_deref()
                .map(short)
                .unwrap_or_else(|| "-".into()),
            if s.at_head { "yes" } else { "no" },
            state_counts(&s.states),
            cell(&why)
        );
    }
    out
}
