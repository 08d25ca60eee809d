//! Phase 1 of the two-phase annotation protocol (DESIGN.md section 4):
//! whether a composition's annotations that its symphony no longer gives it
//! may be removed now. Pure; while any prune of a symphony is held, no
//! composition of it may take on new annotations (phase 2).

use chrono::{DateTime, Utc};

/// What is known about one composition's prune when deciding.
#[derive(Debug, Clone, Default)]
pub struct PruneFacts {
    /// The annotation keys it carries that it must give up.
    pub keys: Vec<String>,
    /// Its target is known and nothing failed before this step.
    pub writable: bool,
    /// Its window, if it has one: `(name, open now, next opening)`.
    pub window: Option<(String, bool, Option<DateTime<Utc>>)>,
    /// Whether this pass may write (not a plan, and the leader).
    pub may_write: bool,
}

/// The decision. A hold carries the words the symphony's other
/// compositions show while they wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prune {
    /// Nothing to remove (or nothing can be written to: its error shows).
    Nothing,
    /// Remove the keys now.
    Write,
    /// The window is closed: wait, and wake at its opening.
    WindowClosed {
        message: String,
        next: Option<DateTime<Utc>>,
    },
    /// A plan (or not the leader): the prune is what would happen, and
    /// phase 2 is held as it would be.
    Planned { message: String },
}

/// Inside the window, writing is allowed: write; else say what waits.
pub fn decide_prune(id: &str, f: &PruneFacts) -> Prune {
    if f.keys.is_empty() || !f.writable {
        return Prune::Nothing;
    }
    let keys = f.keys.join(", ");
    if let Some((name, false, next)) = &f.window {
        let when = next
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "never".into());
        return Prune::WindowClosed {
            message: format!(
                "{id} must first remove {keys} in its window {name} (next opening {when})"
            ),
            next: *next,
        };
    }
    if !f.may_write {
        return Prune::Planned {
            message: format!("{id} removes {keys} first"),
        };
    }
    Prune::Write
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let at = DateTime::parse_from_rfc3339("2026-11-28T02:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let base = PruneFacts {
            keys: vec!["owner".into()],
            writable: true,
            window: None,
            may_write: true,
        };
        let closed = Some(("sat".to_string(), false, Some(at)));
        let cases = vec![
            ("no window: write", base.clone(), Prune::Write),
            (
                "open window: write",
                PruneFacts {
                    window: Some(("sat".into(), true, None)),
                    ..base.clone()
                },
                Prune::Write,
            ),
            (
                "nothing to remove",
                PruneFacts {
                    keys: vec![],
                    window: closed.clone(),
                    ..base.clone()
                },
                Prune::Nothing,
            ),
            (
                "failed before: its own error shows",
                PruneFacts {
                    writable: false,
                    ..base.clone()
                },
                Prune::Nothing,
            ),
            (
                "closed window: wait for the opening",
                PruneFacts {
                    window: closed.clone(),
                    ..base.clone()
                },
                Prune::WindowClosed {
                    message: "shop/a must first remove owner in its window sat \
                              (next opening 2026-11-28T02:00:00+00:00)"
                        .into(),
                    next: Some(at),
                },
            ),
            (
                "closed window that never opens",
                PruneFacts {
                    window: Some(("never".into(), false, None)),
                    ..base.clone()
                },
                Prune::WindowClosed {
                    message: "shop/a must first remove owner in its window never \
                              (next opening never)"
                        .into(),
                    next: None,
                },
            ),
            (
                "a plan: held as it would be",
                PruneFacts {
                    keys: vec!["owner".into(), "tier".into()],
                    may_write: false,
                    ..base.clone()
                },
                Prune::Planned {
                    message: "shop/a removes owner, tier first".into(),
                },
            ),
            (
                "a plan in a closed window says the window",
                PruneFacts {
                    may_write: false,
                    window: closed,
                    ..base
                },
                Prune::WindowClosed {
                    message: "shop/a must first remove owner in its window sat \
                              (next opening 2026-11-28T02:00:00+00:00)"
                        .into(),
                    next: Some(at),
                },
            ),
        ];
        for (name, facts, want) in cases {
            assert_eq!(decide_prune("shop/a", &facts), want, "{name}");
        }
    }
}
