//! What a pass reports: per branch, a row per composition with its state,
//! the action taken or held and why, the errors, and for plans the diffs and
//! artifacts. Plain values, built by the reconciler and read by the command
//! line, the HTTP metrics, `summary.md` and pull request comments
//! ([`markdown`]), so none of those needs to know the reconciler.

pub mod markdown;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::model::{CompositionId, Digest};
use crate::source::Revision;
use crate::status::State;

/// What a pass did on one branch.
#[derive(Debug, Clone, Default)]
pub struct BranchReport {
    pub branch: String,
    /// The site it is of, in central mode (every site in one process).
    pub site: Option<String>,
    pub revision: Option<Revision>,
    /// Per composition: id, state, desired digest, and why it waits or failed.
    pub rows: Vec<Row>,
    /// Load errors of objects that are not compositions.
    pub errors: Vec<String>,
    pub status_commit: Option<git2::Oid>,
    /// The earliest opening of a window some staged composition waits for.
    pub next_window: Option<DateTime<Utc>>,
    /// Per symphony: Ready non-optional compositions, and how many there are.
    pub symphonies: Vec<(String, usize, usize)>,
    /// The windows of this pass's compositions, as each was when it was
    /// judged (for plans and `fermata_window_open`).
    pub windows: BTreeMap<String, WindowInfo>,
    /// Nothing was done: the revision was reconciled already.
    pub unchanged: bool,
    /// Plans only: per composition with an action, the target's diff and
    /// the artifacts its state needs.
    pub plans: BTreeMap<CompositionId, PlanDetail>,
}

/// A maintenance window as a plan shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowInfo {
    /// IANA zone name, e.g. `Europe/Berlin`.
    pub zone: String,
    pub open: bool,
    pub next_open: Option<DateTime<Utc>>,
}

/// What a plan (a dry run) found out about one composition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanDetail {
    /// The target's diff of what it holds against the desired state.
    pub diff: Option<String>,
    pub artifacts: Vec<PlannedArtifact>,
    /// Why it failed, as `file:line: message` where there is a place.
    pub error: Option<String>,
    /// The status error code of that failure (`RenderFailed`, `CommandNotRun`…).
    pub error_code: Option<String>,
}

impl PlanDetail {
    /// Whether the plan held back a `command:` synthesizer (the trust
    /// policy working, not a broken change).
    pub fn command_not_run(&self) -> bool {
        self.error_code.as_deref() == Some(COMMAND_NOT_RUN)
    }
}

/// The error code of a `command:` synthesizer not run for an untrusted head.
pub const COMMAND_NOT_RUN: &str = ErrorCode::CommandNotRun.as_str();

/// Why a composition failed: `error.code` in its status, one word a tool can
/// match on (the message says the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Its Target is not defined, or cannot be reached or read.
    TargetUnavailable,
    /// Another watched branch deploys it on the same target.
    TargetConflict,
    /// Synthesis failed.
    RenderFailed,
    /// A `command:` synthesizer was not run for a head not on a watched branch.
    CommandNotRun,
    /// An artifact could not be fetched or verified.
    ArtifactFailed,
    StagingFailed,
    ApplyFailed,
    DeleteFailed,
    /// Still unhealthy `--health-timeout` after the apply.
    HealthTimeout,
    /// Its apply failed (or timed out healthy) and the previous applied
    /// state was applied again (`rollback: auto`, `fermata rollback`): the
    /// message says why.
    RolledBack,
    /// Leadership was lost during the pass: nothing written.
    NotLeader,
    /// The commit fails the signature policy.
    UntrustedCommit,
    /// Its symphony failed to load.
    InvalidObject,
    /// A file that may define it cannot be read.
    UnreadableFile,
}

impl ErrorCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::TargetUnavailable => "TargetUnavailable",
            ErrorCode::TargetConflict => "TargetConflict",
            ErrorCode::RenderFailed => "RenderFailed",
            ErrorCode::CommandNotRun => "CommandNotRun",
            ErrorCode::ArtifactFailed => "ArtifactFailed",
            ErrorCode::StagingFailed => "StagingFailed",
            ErrorCode::ApplyFailed => "ApplyFailed",
            ErrorCode::DeleteFailed => "DeleteFailed",
            ErrorCode::HealthTimeout => "HealthTimeout",
            ErrorCode::RolledBack => "RolledBack",
            ErrorCode::NotLeader => "NotLeader",
            ErrorCode::UntrustedCommit => "UntrustedCommit",
            ErrorCode::InvalidObject => "InvalidObject",
            ErrorCode::UnreadableFile => "UnreadableFile",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedArtifact {
    pub name: String,
    pub url: String,
    pub size: Option<u64>,
    /// Already in the artifact store: nothing to download.
    pub stored: bool,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub id: CompositionId,
    pub state: State,
    pub digest: Option<Digest>,
    pub window: Option<String>,
    pub note: String,
    /// The action this pass took, or would take, about it.
    pub action: Option<ActionKind>,
    /// Why that action did not run (yet).
    pub skipped: Option<String>,
}

/// Datum's instance-control actions: what a pass does to a composition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ActionKind {
    Create,
    Update,
    Delete,
    /// Applied but not Ready: the rollout waits for it.
    Wait,
}

impl BranchReport {
    /// Wake the loop at `t` (a window some write waits for opens), unless
    /// something else wakes it earlier.
    pub fn wake_at(&mut self, t: DateTime<Utc>) {
        self.next_window = Some(self.next_window.map_or(t, |n| n.min(t)));
    }
}

impl Row {
    /// Whether a plan shows it as something happening (a create, update or
    /// delete, or an error), as opposed to unchanged: what a merged pull
    /// request is followed for until it has landed.
    pub fn changes(&self) -> bool {
        self.state == State::Failed
            || matches!(
                self.action,
                Some(ActionKind::Create | ActionKind::Update | ActionKind::Delete)
            )
    }
}

/// `summary.md`: what a person reads on the forge. A composition waiting
/// for its window shows the next opening in the window's zone and in UTC,
/// and how far off it is from `now` (the pass that wrote it): the relative
/// part is left out when deciding whether the file changed
/// ([`crate::status::same_summary`]), so it never makes a commit of its own.
pub fn table(report: &BranchReport, summary: &str, now: DateTime<Utc>) -> String {
    let mut t = format!("# {summary}\n\n");
    if report.rows.len() <= crate::status::timeline::MAX_ROWS {
        t.push_str(&format!(
            "![What was staged and applied when, the last {} days](timeline.svg)\n\n",
            crate::status::timeline::DAYS
        ));
    }
    t.push_str("| composition | state | digest | window | note |\n|---|---|---|---|---|\n");
    for r in &report.rows {
        let window = match (&r.window, r.note.starts_with(WINDOW_CLOSED)) {
            (Some(name), true) => match report.windows.get(name) {
                Some(info) => window_cell(name, info, now),
                None => name.clone(),
            },
            (w, _) => w.clone().unwrap_or_default(),
        };
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.id,
            r.state,
            r.digest.map(|d| d.short()).unwrap_or_default(),
            window,
            r.note.replace('|', "\\|"),
        ));
    }
    if !report.symphonies.is_empty() {
        t.push_str("\n| symphony | ready | ready compositions |\n|---|---|---|\n");
        for (name, ready, desired) in &report.symphonies {
            t.push_str(&format!(
                "| {name} | {} | {ready}/{desired} |\n",
                if ready == desired { "yes" } else { "no" }
            ));
        }
    }
    for e in &report.errors {
        t.push_str(&format!("\n- error: {}", e.replace('|', "\\|")));
    }
    t
}

/// The reason a composition waiting for its window reports.
const WINDOW_CLOSED: &str = "WindowClosed";

/// `weekend: opens Sat 28 Nov 02:00 CET (01:00 UTC, in 1d 9h)`.
fn window_cell(name: &str, info: &WindowInfo, now: DateTime<Utc>) -> String {
    let Some(next) = info.next_open else {
        return format!("{name}: never opens");
    };
    let utc = next.format("%H:%M UTC");
    let local = match info.zone.parse::<chrono_tz::Tz>() {
        Ok(tz) if tz != chrono_tz::UTC => next
            .with_timezone(&tz)
            .format("%a %d %b %H:%M %Z")
            .to_string(),
        _ => next.format("%a %d %b %H:%M UTC").to_string(),
    };
    let utc = if local.ends_with("UTC") {
        String::new()
    } else {
        format!("{utc}, ")
    };
    format!(
        "{name}: opens {local} ({utc}{})",
        crate::status::relative(next - now)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_window_cell_gives_zone_utc_and_distance() {
        let now = Utc.with_ymd_and_hms(2026, 11, 26, 10, 30, 0).unwrap();
        let next = Utc.with_ymd_and_hms(2026, 11, 28, 1, 0, 0).unwrap();
        let info = |zone: &str| WindowInfo {
            zone: zone.into(),
            open: false,
            next_open: Some(next),
        };
        assert_eq!(
            window_cell("weekend", &info("Europe/Berlin"), now),
            "weekend: opens Sat 28 Nov 02:00 CET (01:00 UTC, in 1d 14h)"
        );
        assert_eq!(
            window_cell("weekend", &info("UTC"), now),
            "weekend: opens Sat 28 Nov 01:00 UTC (in 1d 14h)"
        );
        let never = WindowInfo {
            next_open: None,
            ..info("UTC")
        };
        assert_eq!(window_cell("w", &never, now), "w: never opens");
    }
}
