//! What became of one composition in a pass, as a value. The table row is
//! built from it in one place ([`CompositionOutcome::row`]), and its error
//! is what the status file carries ([`CompositionError::info`]): the two
//! cannot say different things.

use super::plan::Reason;
use crate::model::{CompositionId, Digest};
use crate::report::{ActionKind, ErrorCode, Row};
use crate::status::{State, StatusErrorInfo};

/// Where a composition is in its life on a branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Desired by the commit (or held at its last applied state): staged,
    /// applied, waiting or failed.
    Active,
    /// Removed from its symphony, or moved to another target: being
    /// deleted where it was.
    Removing,
    /// Its symphony is gone: resources left in place and marked.
    Orphaned,
}

/// Why a composition failed: a code people and tools can match on, where
/// (a `file:line`, a target, a commit), and what was said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CompositionError {
    code: ErrorCode,
    /// Where: a `file:line`, a target, a commit (`source` in status).
    pub at: String,
    pub message: String,
}

impl CompositionError {
    pub fn new(code: ErrorCode, at: impl Into<String>, message: impl Into<String>) -> Self {
        CompositionError {
            code,
            at: at.into(),
            message: message.into(),
        }
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The status file's shape of it.
    pub fn info(&self) -> StatusErrorInfo {
        StatusErrorInfo {
            code: self.code.to_string(),
            source: self.at.clone(),
            message: self.message.clone(),
        }
    }
}

/// One composition's outcome of a pass.
#[derive(Debug, Clone)]
pub struct CompositionOutcome {
    pub id: CompositionId,
    pub phase: Phase,
    pub state: State,
    pub digest: Option<Digest>,
    pub window: Option<String>,
    pub error: Option<CompositionError>,
    /// Why it waits, if it does.
    pub waiting: Option<Reason>,
    /// What the row says when there is no error; empty: the waiting reason.
    pub message: String,
    /// What the pass did, or would do, about it.
    pub action: Option<ActionKind>,
}

impl CompositionOutcome {
    /// The table row: the error first, then the message, then the reason.
    pub fn row(&self) -> Row {
        let note = match &self.error {
            Some(e) => e.to_string(),
            None if !self.message.is_empty() => self.message.clone(),
            None => self.waiting.map(|r| r.to_string()).unwrap_or_default(),
        };
        // Why the action did not run (yet): an applied composition that is
        // not Ready holds the rollout; a failed removal did not wait.
        let skipped = match (self.phase, self.action) {
            (Phase::Active, Some(ActionKind::Wait)) => Some(Reason::WaitingForReady),
            (Phase::Active, Some(_)) => self.waiting,
            (Phase::Removing, _) if self.error.is_none() => self.waiting,
            _ => None,
        };
        Row {
            id: self.id.clone(),
            state: self.state,
            digest: self.digest,
            window: self.window.clone(),
            note,
            action: self.action,
            skipped: skipped.map(|r| r.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(phase: Phase) -> CompositionOutcome {
        CompositionOutcome {
            id: CompositionId::new("shop", "a"),
            phase,
            state: State::Staged,
            digest: None,
            window: Some("sat".into()),
            error: None,
            waiting: None,
            message: String::new(),
            action: None,
        }
    }

    #[test]
    fn rows_table() {
        let failed = CompositionError::new(ErrorCode::ApplyFailed, "line", "disk full");
        let cases: Vec<(&str, CompositionOutcome, &str, Option<&str>)> = vec![
            ("nothing to say", outcome(Phase::Active), "", None),
            (
                "waits for the window",
                CompositionOutcome {
                    waiting: Some(Reason::WindowClosed),
                    action: Some(ActionKind::Update),
                    ..outcome(Phase::Active)
                },
                "WindowClosed",
                Some("WindowClosed"),
            ),
            (
                "applied, not ready: the rollout waits for it",
                CompositionOutcome {
                    action: Some(ActionKind::Wait),
                    ..outcome(Phase::Active)
                },
                "",
                Some("WaitingForReady"),
            ),
            (
                "the error comes first",
                CompositionOutcome {
                    error: Some(failed.clone()),
                    message: "applied outside its window (apply-now)".into(),
                    waiting: Some(Reason::WindowClosed),
                    ..outcome(Phase::Active)
                },
                "ApplyFailed: disk full",
                None,
            ),
            (
                "a message before the reason",
                CompositionOutcome {
                    message: "applied outside its window (apply-now)".into(),
                    waiting: Some(Reason::WindowClosed),
                    ..outcome(Phase::Active)
                },
                "applied outside its window (apply-now)",
                None,
            ),
            (
                "a removal waiting for its window",
                CompositionOutcome {
                    message: "removing: WindowClosed".into(),
                    waiting: Some(Reason::WindowClosed),
                    action: Some(ActionKind::Delete),
                    ..outcome(Phase::Removing)
                },
                "removing: WindowClosed",
                Some("WindowClosed"),
            ),
            (
                "a failed removal did not wait",
                CompositionOutcome {
                    error: Some(CompositionError::new(
                        ErrorCode::DeleteFailed,
                        "line",
                        "busy",
                    )),
                    waiting: Some(Reason::WindowClosed),
                    action: Some(ActionKind::Delete),
                    ..outcome(Phase::Removing)
                },
                "DeleteFailed: busy",
                None,
            ),
            (
                "orphaned",
                CompositionOutcome {
                    message: "removed (orphaned)".into(),
                    ..outcome(Phase::Orphaned)
                },
                "removed (orphaned)",
                None,
            ),
        ];
        for (name, o, note, skipped) in cases {
            let row = o.row();
            assert_eq!(row.note, note, "{name}");
            assert_eq!(row.skipped.as_deref(), skipped, "{name}");
        }
        assert_eq!(failed.code(), ErrorCode::ApplyFailed);
        assert_eq!(failed.info().code, "ApplyFailed");
    }
}
