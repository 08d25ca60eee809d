//! Remote execution (DESIGN.md section 10): a stage with `site: S` is run by
//! S's agent, not the driver. The agent finds such a stage in the
//! activation states on the status branch (its mirror fetches every
//! branch), runs the check where it is (a probe of a plant's local
//! service, a command on the plant's host) and writes the result to its own
//! status branch, `fermata/sites/S`, at `campaigns/<activation>/<stage>.yaml`,
//! keyed by when that run of the stage started; the driver reads it there.
//! So the driver needs no way into the site, and a site writes only its
//! own ref (invariant 11).

use std::collections::BTreeMap;
use std::path::Path;

use super::engine::RemoteResult;
use super::state::Phase;
use crate::model::campaign::Action;
use crate::model::Fleet;
use crate::status::{site_branch, StatusRepo};

/// Where a site's result for `stage` of `activation` is.
pub fn path(activation: &str, stage: &str) -> String {
    format!("campaigns/{activation}/{stage}.yaml")
}

/// The result site `site` wrote for `stage` of `activation`, if any.
pub fn result(
    repo: &git2::Repository,
    site: &str,
    activation: &str,
    stage: &str,
) -> Option<RemoteResult> {
    let spec = format!(
        "refs/heads/{}:{}",
        site_branch(site),
        path(activation, stage)
    );
    let blob = repo.revparse_single(&spec).ok()?;
    serde_yaml::from_slice(blob.as_blob()?.content()).ok()
}

/// What a site agent does after its pass: every running activation whose
/// current stage is a check for `site` without a result for this run of
/// it gets one, written to the site's branch. Returns the stages run.
pub fn run_for_site(
    git_dir: &Path,
    fleet: &Fleet,
    status_branch: &str,
    sites: &StatusRepo,
    site: &str,
) -> Result<Vec<String>, crate::status::StatusError> {
    let Ok(repo) = git2::Repository::open(git_dir) else {
        return Ok(Vec::new());
    };
    let mut files = BTreeMap::new();
    let mut ran = Vec::new();
    // One that cannot be read is the driver's to report, not this site's.
    for state in super::drive::read_states(&repo, status_branch)
        .into_iter()
        .flatten()
    {
        if state.phase != Phase::Running {
            continue;
        }
        let Some(stage) = state
            .stage
            .as_deref()
            .and_then(|s| fleet.campaigns.get(&state.campaign)?.stage(s))
        else {
            continue;
        };
        let (Action::Verify(check), Some(at)) = (&stage.action, &stage.site) else {
            continue;
        };
        let started = state.stages.get(&stage.name).and_then(|r| r.started);
        let Some(started) = started.filter(|_| at == site) else {
            continue;
        };
        let done = result(&repo, site, &state.activation, &stage.name);
        if done.is_some_and(|r| r.started == started) {
            continue;
        }
        let (passed, detail) = super::verify::check(check);
        tracing::info!(activation = %state.activation, stage = %stage.name, passed, %detail, "ran a campaign check for this site");
        let r = RemoteResult {
            started,
            passed,
            detail,
        };
        let yaml = serde_yaml::to_string(&r).unwrap_or_default();
        files.insert(path(&state.activation, &stage.name), yaml.into_bytes());
        ran.push(format!("{}/{}", state.activation, stage.name));
    }
    if !files.is_empty() {
        let message = format!("{site} ran campaign checks: {}\n", ran.join(", "));
        sites.publish_paths(&files, &message)?;
    }
    Ok(ran)
}
