//! Deciding, per composition, what a pass does: pure, no I/O, no clock.
//! The executor in [`super::pass`] only carries the decisions out.
//!
//! [`decide`] says whether to stage and whether an apply may start;
//! [`rollout`] is the symphony-wide accounting that feeds it (dependencies
//! Ready, `OrderedReady`, `maxUnavailable`); [`removal`] says whether a
//! removed variation may be deleted now; [`prune`] whether phase 1 of the
//! annotation protocol may write now; [`rollback`] whether a failed state
//! is switched back; [`settled`] whether a branch has nothing left to do
//! until its commit changes.

pub mod prune;
pub mod removal;
pub mod rollback;
pub mod rollout;
pub mod state;

use serde::Serialize;

use crate::model::Digest;

/// Why an apply does not run yet (Datum's skipped actions carry one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Reason {
    WindowClosed,
    GatePresent,
    WaitingOnDependency,
    WaitingForReady,
    /// Phase 1 of the annotation protocol is not complete in the symphony.
    PrunePending,
    /// `Parallel`: as many compositions as `maxUnavailable` are not Ready.
    MaxUnavailable,
    /// The target is still preparing the state (images pulling, artifacts
    /// being delivered): it is not staged, so it is not applied, even in
    /// an open window; the next pass stages it again.
    Staging,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::WindowClosed => "WindowClosed",
            Reason::GatePresent => "SchedulingGatesPresent",
            Reason::WaitingOnDependency => "WaitingOnDependency",
            Reason::WaitingForReady => "WaitingForReady",
            Reason::PrunePending => "WaitingForPrune",
            Reason::MaxUnavailable => "MaxUnavailable",
            Reason::Staging => "StagingInProgress",
        }
    }
}

/// What is known about one composition when deciding.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub desired: Option<Digest>,
    pub applied: Option<Digest>,
    pub staged: Option<Digest>,
    pub gated: bool,
    /// Annotations still to be removed somewhere in the symphony (phase 1):
    /// no composition of it may set any yet.
    pub pruning: bool,
    /// Every `dependsOn` composition is Ready.
    pub dependencies_ready: bool,
    /// Why the rollout strategy holds this one (`WaitingForReady` for
    /// `OrderedReady`, `MaxUnavailable` for `Parallel`), if it does.
    pub rollout_wait: Option<Reason>,
    /// `None`: no window, always open.
    pub window_open: Option<bool>,
    /// The digest a break-glass `apply-now` was given for, if any.
    pub override_digest: Option<Digest>,
}

/// What to do about the apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// The desired state is applied already.
    Done,
    /// Apply now; `overridden` when only a break-glass override allows it.
    Now {
        overridden: bool,
    },
    Wait(Reason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Stage first: the target holds the desired state neither staged nor applied.
    pub stage: bool,
    pub apply: Apply,
}

/// Staging never waits (that is its point); applying waits for gates, then
/// dependencies, then the rollout, then the window, in that order, so status
/// names what a person can act on first.
pub fn decide(f: &Facts) -> Option<Decision> {
    let desired = f.desired?;
    let stage = f.applied != Some(desired) && f.staged != Some(desired);
    let apply = if f.applied == Some(desired) {
        Apply::Done
    } else if f.gated {
        Apply::Wait(Reason::GatePresent)
    } else if f.pruning {
        Apply::Wait(Reason::PrunePending)
    } else if !f.dependencies_ready {
        Apply::Wait(Reason::WaitingOnDependency)
    } else if let Some(r) = f.rollout_wait {
        Apply::Wait(r)
    } else if f.window_open == Some(false) {
        if f.override_digest == Some(desired) {
            Apply::Now { overridden: true }
        } else {
            Apply::Wait(Reason::WindowClosed)
        }
    } else {
        Apply::Now { overridden: false }
    };
    Some(Decision { stage, apply })
}

/// What is known about a branch at the end of its pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct BranchFacts {
    /// Every composition is Ready, or held only by a gate a person must lift.
    pub compositions_done: bool,
    /// A composition is being removed (waits for its window, a dependent…).
    pub removing: bool,
    /// Writes wait for a window: orphan marks, removals from an old target.
    pub writes_pending: bool,
    /// Something failed to load, or cannot be read.
    pub load_errors: bool,
    /// The last fetch failed.
    pub fetch_failed: bool,
    /// Any other error of the pass.
    pub errors: bool,
}

/// Whether the branch has nothing left to do until its commit changes: its
/// next pass on the same revision may skip loading, rendering and reading
/// targets (a resync still comes). Anything waiting or failed must be
/// looked at again.
pub fn settled(f: &BranchFacts) -> bool {
    f.compositions_done
        && !f.removing
        && !f.writes_pending
        && !f.load_errors
        && !f.fetch_failed
        && !f.errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_only_when_nothing_waits_or_failed() {
        let done = BranchFacts {
            compositions_done: true,
            ..BranchFacts::default()
        };
        let cases = [
            ("all Ready", done, true),
            ("a composition not done", BranchFacts::default(), false),
            (
                "a removal waits",
                BranchFacts {
                    removing: true,
                    ..done
                },
                false,
            ),
            (
                "a write waits for its window",
                BranchFacts {
                    writes_pending: true,
                    ..done
                },
                false,
            ),
            (
                "a file cannot be read",
                BranchFacts {
                    load_errors: true,
                    ..done
                },
                false,
            ),
            (
                "the fetch failed",
                BranchFacts {
                    fetch_failed: true,
                    ..done
                },
                false,
            ),
            (
                "another error",
                BranchFacts {
                    errors: true,
                    ..done
                },
                false,
            ),
        ];
        for (name, facts, want) in cases {
            assert_eq!(settled(&facts), want, "{name}");
        }
    }

    fn d(n: u8) -> Option<Digest> {
        Some(Digest([n; 32]))
    }

    fn open() -> Facts {
        Facts {
            desired: d(2),
            applied: d(1),
            dependencies_ready: true,
            window_open: Some(true),
            ..Facts::default()
        }
    }

    #[test]
    fn table() {
        let now = Apply::Now { overridden: false };
        let cases: Vec<(&str, Facts, bool, Apply)> = vec![
            ("new state, window open", open(), true, now),
            (
                "already staged",
                Facts {
                    staged: d(2),
                    ..open()
                },
                false,
                now,
            ),
            (
                "applied",
                Facts {
                    applied: d(2),
                    ..open()
                },
                false,
                Apply::Done,
            ),
            (
                "no window",
                Facts {
                    window_open: None,
                    ..open()
                },
                true,
                now,
            ),
            (
                "window closed: stage only",
                Facts {
                    window_open: Some(false),
                    ..open()
                },
                true,
                Apply::Wait(Reason::WindowClosed),
            ),
            (
                "override for this digest",
                Facts {
                    window_open: Some(false),
                    override_digest: d(2),
                    staged: d(2),
                    ..open()
                },
                false,
                Apply::Now { overridden: true },
            ),
            (
                "override for another digest does not count",
                Facts {
                    window_open: Some(false),
                    override_digest: d(1),
                    ..open()
                },
                true,
                Apply::Wait(Reason::WindowClosed),
            ),
            (
                "gate",
                Facts {
                    gated: true,
                    ..open()
                },
                true,
                Apply::Wait(Reason::GatePresent),
            ),
            (
                "dependency",
                Facts {
                    dependencies_ready: false,
                    ..open()
                },
                true,
                Apply::Wait(Reason::WaitingOnDependency),
            ),
            (
                "rollout: ordered",
                Facts {
                    rollout_wait: Some(Reason::WaitingForReady),
                    ..open()
                },
                true,
                Apply::Wait(Reason::WaitingForReady),
            ),
            (
                "rollout: parallel, max unavailable",
                Facts {
                    rollout_wait: Some(Reason::MaxUnavailable),
                    ..open()
                },
                true,
                Apply::Wait(Reason::MaxUnavailable),
            ),
            (
                "gate is reported before a closed window",
                Facts {
                    gated: true,
                    window_open: Some(false),
                    ..open()
                },
                true,
                Apply::Wait(Reason::GatePresent),
            ),
        ];
        for (name, facts, stage, apply) in cases {
            assert_eq!(decide(&facts), Some(Decision { stage, apply }), "{name}");
        }
        assert_eq!(
            decide(&Facts::default()),
            None,
            "nothing rendered, nothing to decide"
        );
    }
}
