//! What a status says of a composition and of each of its components
//! (issue 16, point 7): decided from what the target reported, the error
//! and the health, so Margo's per-component states tell the truth. Pure.

use crate::model::Digest;
use crate::report::ErrorCode;
use crate::status::{ComponentStatus, State, StatusErrorInfo};
use crate::target::{Component, Health, StateFlag};

/// Everything the states depend on, as the pass left the composition.
#[derive(Debug, Clone, Copy)]
pub struct StateFacts<'a> {
    /// The error it failed with, with its code.
    pub error: Option<(ErrorCode, &'a StatusErrorInfo)>,
    /// The desired state's digest; none when it could not be rendered.
    pub desired: Option<Digest>,
    pub applied: Option<Digest>,
    pub staged: Option<Digest>,
    /// The target is still preparing the state (`Reason::Staging`).
    pub staging: bool,
    pub health: Option<&'a Health>,
    /// The applied state was healthy at an earlier pass: unhealthy now, it
    /// drifted or degraded, and is `installed` (its Ready condition says
    /// why), not `installing`.
    pub was_healthy: bool,
    /// The components to report: the rendering's, else the last one's.
    pub components: &'a [String],
    /// What the target reported per component (empty where not read).
    pub observed: &'a [Component],
}

/// Errors raised before anything of the desired state was applied: the
/// components stay where they were (Margo: `pending` if never installed).
fn before_install(code: ErrorCode) -> bool {
    !matches!(
        code,
        ErrorCode::ApplyFailed | ErrorCode::DeleteFailed | ErrorCode::HealthTimeout
    )
}

/// The composition's state and each component's (name, state, error),
/// `skipped` left to the caller.
pub fn states(f: &StateFacts<'_>) -> (State, Vec<ComponentStatus>) {
    let current = f.desired.is_some() && f.applied == f.desired;
    let state = if f.error.is_some() {
        State::Failed
    } else if current {
        match f.health {
            Some(Health::Healthy) => State::Installed,
            _ if f.was_healthy => State::Installed,
            // Applied, not healthy yet (or no reading yet).
            _ => State::Installing,
        }
    } else if f.staging {
        State::Staging
    } else if f.desired.is_some() && f.staged == f.desired {
        State::Staged
    } else {
        State::Pending
    };
    let flag = |name: &str| f.observed.iter().find(|c| c.name == name).map(|c| c.flag);
    // A target error that names a resource (`<component>: <message>`).
    let named = |name: &str| {
        f.error.and_then(|(_, e)| {
            e.message
                .strip_prefix(name)
                .filter(|rest| rest.starts_with(": "))
                .map(|_| e.clone())
        })
    };
    let any_named = f.components.iter().any(|c| named(c).is_some());
    let components = f
        .components
        .iter()
        .map(|name| {
            let runs = flag(name) == Some(StateFlag::Applied);
            let kept = if runs {
                State::Installed
            } else {
                State::Pending
            };
            let (state, error) = match (state, f.error) {
                // Nothing of it was applied: it stays as it was, with the
                // error where it names this component.
                (State::Failed, Some((code, _))) if before_install(code) => (kept, named(name)),
                (State::Failed, Some(_)) => match named(name) {
                    Some(e) => (State::Failed, Some(e)),
                    None if any_named => (kept, None),
                    // The composition's error says it.
                    None => (State::Failed, None),
                },
                (State::Installed | State::Installing, _) => match flag(name) {
                    Some(StateFlag::Staged) => (State::Staged, None),
                    _ => (state, None),
                },
                (other, _) => (other, None),
            };
            ComponentStatus {
                name: name.clone(),
                state,
                skipped: None,
                error,
            }
        })
        .collect();
    (state, components)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DB: &str = "apps/v1/Deployment/line/db";
    const WEB: &str = "v1/Service/line/web";

    fn d(n: u8) -> Option<Digest> {
        Some(Digest::of(&[n]))
    }

    fn info(message: &str) -> StatusErrorInfo {
        StatusErrorInfo {
            code: "X".into(),
            source: "t".into(),
            message: message.into(),
        }
    }

    fn applied(name: &str) -> Component {
        Component {
            name: name.into(),
            flag: StateFlag::Applied,
        }
    }

    /// What, the facts, the composition's state, the components' states,
    /// whether each carries an error.
    type Case<'a> = (&'a str, StateFacts<'a>, State, [State; 2], [bool; 2]);

    #[test]
    fn states_table() {
        use State::*;
        let names = [DB.to_string(), WEB.to_string()];
        let healthy = Health::Healthy;
        let unhealthy = Health::Unhealthy("0/1 ready".into());
        let unknown = Health::Unknown;
        let db_err = info(&format!("{DB}: admission webhook denied it"));
        let other_err = info("connection refused");
        let prefix_err = info(&format!("{DB}x: no"));
        let both = [applied(DB), applied(WEB)];
        let only_db = [applied(DB)];
        let base = StateFacts {
            error: None,
            desired: d(2),
            applied: None,
            staged: None,
            staging: false,
            health: None,
            was_healthy: false,
            components: &names,
            observed: &[],
        };
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("nothing yet", base, Pending, [Pending, Pending], [false, false]),
            ("staging", StateFacts { staging: true, ..base }, Staging, [Staging, Staging], [false, false]),
            ("staged", StateFacts { staged: d(2), ..base }, Staged, [Staged, Staged], [false, false]),
            ("applied, healthy", StateFacts { applied: d(2), health: Some(&healthy), observed: &both, ..base }, Installed, [Installed, Installed], [false, false]),
            ("applied, unhealthy", StateFacts { applied: d(2), health: Some(&unhealthy), observed: &both, ..base }, Installing, [Installing, Installing], [false, false]),
            ("healthy before, drifted now", StateFacts { applied: d(2), health: Some(&unhealthy), was_healthy: true, observed: &both, ..base }, Installed, [Installed, Installed], [false, false]),
            ("applied, no reading", StateFacts { applied: d(2), health: Some(&unknown), ..base }, Installing, [Installing, Installing], [false, false]),
            ("applied, no health", StateFacts { applied: d(2), ..base }, Installing, [Installing, Installing], [false, false]),
            ("render failed, never installed", StateFacts { error: Some((ErrorCode::RenderFailed, &other_err)), desired: None, ..base }, Failed, [Pending, Pending], [false, false]),
            ("artifact failed", StateFacts { error: Some((ErrorCode::ArtifactFailed, &other_err)), ..base }, Failed, [Pending, Pending], [false, false]),
            ("staging failed", StateFacts { error: Some((ErrorCode::StagingFailed, &other_err)), ..base }, Failed, [Pending, Pending], [false, false]),
            ("dry run refused db", StateFacts { error: Some((ErrorCode::StagingFailed, &db_err)), ..base }, Failed, [Pending, Pending], [true, false]),
            ("render failed, old state runs", StateFacts { error: Some((ErrorCode::RenderFailed, &other_err)), desired: None, applied: d(1), observed: &both, ..base }, Failed, [Installed, Installed], [false, false]),
            ("apply failed on db", StateFacts { error: Some((ErrorCode::ApplyFailed, &db_err)), observed: &only_db, applied: d(1), ..base }, Failed, [Failed, Pending], [true, false]),
            ("apply failed on db, web ran before", StateFacts { error: Some((ErrorCode::ApplyFailed, &db_err)), observed: &both, applied: d(1), ..base }, Failed, [Failed, Installed], [true, false]),
            ("apply failed, naming none", StateFacts { error: Some((ErrorCode::ApplyFailed, &other_err)), ..base }, Failed, [Failed, Failed], [false, false]),
            ("health timeout", StateFacts { error: Some((ErrorCode::HealthTimeout, &other_err)), applied: d(2), observed: &both, ..base }, Failed, [Failed, Failed], [false, false]),
            ("a prefix is not a name", StateFacts { error: Some((ErrorCode::ApplyFailed, &prefix_err)), ..base }, Failed, [Failed, Failed], [false, false]),
        ];
        for (what, facts, want, want_components, want_errors) in cases {
            let (state, components) = states(&facts);
            assert_eq!(state, want, "{what}");
            let got: Vec<State> = components.iter().map(|c| c.state).collect();
            assert_eq!(got, want_components, "{what}");
            let errs: Vec<bool> = components.iter().map(|c| c.error.is_some()).collect();
            assert_eq!(errs, want_errors, "{what}");
            let names: Vec<&str> = components.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(names, [DB, WEB], "{what}");
        }
    }

    #[test]
    fn a_named_component_carries_the_error() {
        let names = [DB.to_string(), WEB.to_string()];
        let e = info(&format!("{DB}: denied"));
        let (_, components) = states(&StateFacts {
            error: Some((ErrorCode::ApplyFailed, &e)),
            desired: d(2),
            applied: None,
            staged: d(2),
            staging: false,
            health: None,
            was_healthy: false,
            components: &names,
            observed: &[],
        });
        assert_eq!(components[0].error.as_ref(), Some(&e));
        assert_eq!(components[1].error, None);
    }
}
