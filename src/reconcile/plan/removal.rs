//! Whether a variation removed from its symphony may be deleted from its
//! target now (DESIGN.md section 5): pure.

use super::Reason;

/// What is known about one removal when deciding.
#[derive(Debug, Clone, Default)]
pub struct RemovalFacts {
    /// `OrderedReady`: a later variation of the symphony is still being removed.
    pub later_pending: bool,
    /// Compositions that still depend on it.
    pub held_by: Vec<String>,
    /// `None`: no window, always open.
    pub window_open: Option<bool>,
}

/// The decision, with the words status shows for a wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    Delete,
    Wait(Reason, String),
}

/// Deletes in reverse order first, then only once nothing depends on it,
/// then only inside its window: in that order, so status names what a
/// person can act on first.
pub fn decide_removal(f: &RemovalFacts) -> Removal {
    if f.later_pending {
        Removal::Wait(
            Reason::WaitingForReady,
            "a later variation is removed first".to_string(),
        )
    } else if !f.held_by.is_empty() {
        Removal::Wait(
            Reason::WaitingOnDependency,
            format!("held by {}", f.held_by.join(", ")),
        )
    } else if f.window_open == Some(false) {
        Removal::Wait(
            Reason::WindowClosed,
            "the removal waits for the window".to_string(),
        )
    } else {
        Removal::Delete
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let open = RemovalFacts {
            window_open: Some(true),
            ..RemovalFacts::default()
        };
        let cases = vec![
            ("open window", open.clone(), Removal::Delete),
            ("no window", RemovalFacts::default(), Removal::Delete),
            (
                "closed window",
                RemovalFacts {
                    window_open: Some(false),
                    ..open.clone()
                },
                Removal::Wait(
                    Reason::WindowClosed,
                    "the removal waits for the window".into(),
                ),
            ),
            (
                "a dependent holds it, before the window",
                RemovalFacts {
                    held_by: vec!["app/x".into(), "app/y".into()],
                    window_open: Some(false),
                    ..open.clone()
                },
                Removal::Wait(Reason::WaitingOnDependency, "held by app/x, app/y".into()),
            ),
            (
                "reverse order first",
                RemovalFacts {
                    later_pending: true,
                    held_by: vec!["app/x".into()],
                    ..open.clone()
                },
                Removal::Wait(
                    Reason::WaitingForReady,
                    "a later variation is removed first".into(),
                ),
            ),
        ];
        for (name, facts, want) in cases {
            assert_eq!(decide_removal(&facts), want, "{name}");
        }
    }
}
