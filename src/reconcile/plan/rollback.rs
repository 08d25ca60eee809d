//! Whether a composition is switched back to its previous applied state
//! (issue 15 point 5): after a failed apply or health check inside its
//! window with `rollback: auto`, or by hand (`fermata rollback`); and
//! whether a state rolled back is held from being applied again.

use crate::model::types::RollbackPolicy;
use crate::model::Digest;

/// What went wrong with the desired state this pass, if anything a
/// rollback answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The apply itself failed (`ApplyFailed`).
    Apply,
    /// Applied, but not healthy within the health timeout (`HealthTimeout`).
    HealthTimeout,
}

/// What is known about one composition when deciding a rollback.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub policy: RollbackPolicy,
    pub failure: Option<Failure>,
    pub desired: Option<Digest>,
    pub applied: Option<Digest>,
    /// `None`: no window, always open.
    pub window_open: Option<bool>,
    /// The failed state was applied by `apply-now`, outside the window:
    /// undoing it is as allowed as doing it was.
    pub overridden: bool,
    /// The digest a `fermata rollback` was recorded for, if any.
    pub requested: Option<Digest>,
}

/// Whether to roll back now. By hand: when the state it was asked for is
/// the desired one and still applied (after that, nothing more to do).
/// Automatically: only with `rollback: auto`, for a failure of the desired
/// state, and only while the window is open (invariant 2: a rollback is an
/// apply too), so a failed state never outlasts the window it failed in.
pub fn roll_back(f: &Facts) -> bool {
    if f.requested.is_some() && f.requested == f.desired && f.applied == f.desired {
        return true;
    }
    f.policy == RollbackPolicy::Auto
        && f.failure.is_some()
        && f.desired.is_some()
        && (f.overridden || f.window_open != Some(false))
}

/// Whether `desired` stays held because it was rolled back: until a new
/// commit changes the desired digest, or `apply-now` is granted for it.
pub fn held(
    rolled_back: Option<Digest>,
    desired: Option<Digest>,
    override_digest: Option<Digest>,
) -> bool {
    rolled_back.is_some() && rolled_back == desired && override_digest != desired
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Option<Digest> {
        Some(Digest::of(&[n]))
    }

    #[test]
    fn roll_back_cases() {
        let auto_failed = Facts {
            policy: RollbackPolicy::Auto,
            failure: Some(Failure::Apply),
            desired: d(2),
            applied: d(1),
            window_open: Some(true),
            ..Facts::default()
        };
        let cases: Vec<(&str, Facts, bool)> = vec![
            (
                "auto, apply failed in the open window",
                auto_failed.clone(),
                true,
            ),
            (
                "auto, health timeout in the open window",
                Facts {
                    failure: Some(Failure::HealthTimeout),
                    applied: d(2),
                    ..auto_failed.clone()
                },
                true,
            ),
            (
                "auto, no window",
                Facts {
                    window_open: None,
                    ..auto_failed.clone()
                },
                true,
            ),
            (
                "auto, window closed: nothing is applied outside it",
                Facts {
                    window_open: Some(false),
                    ..auto_failed.clone()
                },
                false,
            ),
            (
                "auto, window closed, the failed apply was apply-now",
                Facts {
                    window_open: Some(false),
                    overridden: true,
                    ..auto_failed.clone()
                },
                true,
            ),
            (
                "off: the failed state stays",
                Facts {
                    policy: RollbackPolicy::Off,
                    ..auto_failed.clone()
                },
                false,
            ),
            (
                "auto, nothing failed",
                Facts {
                    failure: None,
                    ..auto_failed.clone()
                },
                false,
            ),
            (
                "by hand, the desired state applied",
                Facts {
                    policy: RollbackPolicy::Off,
                    failure: None,
                    applied: d(2),
                    requested: d(2),
                    window_open: Some(false),
                    ..auto_failed.clone()
                },
                true,
            ),
            (
                "by hand, done already (the previous state applied)",
                Facts {
                    policy: RollbackPolicy::Off,
                    failure: None,
                    applied: d(1),
                    requested: d(2),
                    ..auto_failed.clone()
                },
                false,
            ),
            (
                "by hand, for a state no longer desired",
                Facts {
                    policy: RollbackPolicy::Off,
                    failure: None,
                    desired: d(3),
                    applied: d(3),
                    requested: d(2),
                    ..auto_failed.clone()
                },
                false,
            ),
        ];
        for (name, facts, want) in cases {
            assert_eq!(roll_back(&facts), want, "{name}");
        }
    }

    #[test]
    fn held_cases() {
        let cases = [
            ("rolled back, still desired", d(2), d(2), None, true),
            (
                "a new commit changed the desired state",
                d(2),
                d(3),
                None,
                false,
            ),
            ("apply-now granted for it", d(2), d(2), d(2), false),
            ("apply-now for another state", d(2), d(2), d(5), true),
            ("nothing rolled back", None, d(2), None, false),
        ];
        for (name, rolled_back, desired, grant, want) in cases {
            assert_eq!(held(rolled_back, desired, grant), want, "{name}");
        }
    }
}
