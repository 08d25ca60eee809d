//! Rollout accounting across a symphony (Datum's instance control): pure.
//!
//! Compositions are visited in order (dependencies first, then variation
//! order). [`Rollout::admit`] says, before a composition's apply, whether
//! its dependencies are Ready and whether the strategy holds it;
//! [`Rollout::observe`] records how it ended, for the ones after it. An
//! apply that is batched with others ends later: it is observed `InFlight`
//! when it joins the batch and [`Rollout::resolve`]d when the batch is done.

use std::collections::{HashMap, HashSet};

fn decrement(map: &mut HashMap<String, u32>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

use super::Reason;
use crate::model::types::Strategy;
use crate::model::CompositionId;

/// What the compositions visited so far in a pass left behind.
#[derive(Debug, Default)]
pub struct Rollout {
    ready: HashSet<CompositionId>,
    /// `OrderedReady`: per symphony, compositions not Ready yet.
    blocked: HashMap<String, u32>,
    /// `Parallel`: per symphony, compositions being applied or applied and not Ready.
    unavailable: HashMap<String, u32>,
}

/// What [`Rollout::admit`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    pub dependencies_ready: bool,
    /// Why the strategy holds it, if it does.
    pub wait: Option<Reason>,
}

/// How a composition ended its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ready,
    /// Not Ready, and unavailable: applied but not healthy, or being
    /// applied now (in a plan, every action that would run).
    InFlight,
    /// Not Ready and not being applied (waiting, failed, nothing applied).
    Held,
}

impl Rollout {
    pub fn admit(
        &self,
        id: &CompositionId,
        depends_on: &[CompositionId],
        strategy: Strategy,
        max_unavailable: u32,
    ) -> Admission {
        let sym = &id.symphony;
        let wait = match strategy {
            Strategy::OrderedReady => self
                .blocked
                .contains_key(sym)
                .then_some(Reason::WaitingForReady),
            Strategy::Parallel => (self.unavailable.get(sym).copied().unwrap_or(0)
                >= max_unavailable.max(1))
            .then_some(Reason::MaxUnavailable),
        };
        Admission {
            dependencies_ready: depends_on.iter().all(|d| self.ready.contains(d)),
            wait,
        }
    }

    pub fn observe(&mut self, id: &CompositionId, outcome: Outcome) {
        match outcome {
            Outcome::Ready => {
                self.ready.insert(id.clone());
            }
            Outcome::InFlight | Outcome::Held => {
                *self.blocked.entry(id.symphony.clone()).or_default() += 1;
                if outcome == Outcome::InFlight {
                    *self.unavailable.entry(id.symphony.clone()).or_default() += 1;
                }
            }
        }
    }

    /// How a composition observed `InFlight` (its apply batched) ended once
    /// the batch ran: as if it had been observed so in the first place.
    pub fn resolve(&mut self, id: &CompositionId, outcome: Outcome) {
        if outcome == Outcome::InFlight {
            return;
        }
        decrement(&mut self.unavailable, &id.symphony);
        if outcome == Outcome::Ready {
            decrement(&mut self.blocked, &id.symphony);
            self.ready.insert(id.clone());
        }
    }

    pub fn is_ready(&self, id: &CompositionId) -> bool {
        self.ready.contains(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> CompositionId {
        s.parse().unwrap()
    }

    /// (composition, strategy, maxUnavailable, dependencies, how it ends).
    type Step<'a> = (&'a str, Strategy, u32, &'a [&'a str], Outcome);

    /// Visits `steps` in order; returns what each was told.
    fn run(steps: &[Step]) -> Vec<Admission> {
        let mut r = Rollout::default();
        steps
            .iter()
            .map(|(c, strategy, max, deps, outcome)| {
                let deps: Vec<CompositionId> = deps.iter().map(|d| id(d)).collect();
                let a = r.admit(&id(c), &deps, *strategy, *max);
                r.observe(&id(c), *outcome);
                a
            })
            .collect()
    }

    const GO: Admission = Admission {
        dependencies_ready: true,
        wait: None,
    };

    #[test]
    fn table() {
        use Outcome::*;
        use Strategy::*;
        let held = |r| Admission {
            dependencies_ready: true,
            wait: Some(r),
        };
        let cases: Vec<(&str, Vec<Step>, Vec<Admission>)> = vec![
            (
                "ordered: the next only when the previous is Ready",
                vec![
                    ("s/a", OrderedReady, 1, &[], Ready),
                    ("s/b", OrderedReady, 1, &[], InFlight),
                    ("s/c", OrderedReady, 1, &[], Held),
                ],
                vec![GO, GO, held(Reason::WaitingForReady)],
            ),
            (
                "ordered: a held one holds the rest too",
                vec![
                    ("s/a", OrderedReady, 1, &[], Held),
                    ("s/b", OrderedReady, 1, &[], Held),
                ],
                vec![GO, held(Reason::WaitingForReady)],
            ),
            (
                "parallel: at most maxUnavailable in flight",
                vec![
                    ("s/a", Parallel, 2, &[], InFlight),
                    ("s/b", Parallel, 2, &[], InFlight),
                    ("s/c", Parallel, 2, &[], Held),
                    ("s/d", Parallel, 2, &[], Ready),
                ],
                vec![
                    GO,
                    GO,
                    held(Reason::MaxUnavailable),
                    held(Reason::MaxUnavailable),
                ],
            ),
            (
                "parallel: held ones do not count as unavailable",
                vec![
                    ("s/a", Parallel, 1, &[], Held),
                    ("s/b", Parallel, 1, &[], InFlight),
                ],
                vec![GO, GO],
            ),
            (
                "parallel: maxUnavailable 0 means 1",
                vec![
                    ("s/a", Parallel, 0, &[], InFlight),
                    ("s/b", Parallel, 0, &[], Ready),
                ],
                vec![GO, held(Reason::MaxUnavailable)],
            ),
            (
                "symphonies do not hold each other",
                vec![
                    ("s/a", OrderedReady, 1, &[], Held),
                    ("t/a", OrderedReady, 1, &[], Ready),
                ],
                vec![GO, GO],
            ),
            (
                "a dependency must be Ready first",
                vec![
                    ("db/a", Parallel, 5, &[], InFlight),
                    ("web/a", Parallel, 5, &["db/a"], Held),
                    ("db/b", Parallel, 5, &[], Ready),
                    ("web/b", Parallel, 5, &["db/b"], Ready),
                ],
                vec![
                    GO,
                    Admission {
                        dependencies_ready: false,
                        wait: None,
                    },
                    GO,
                    GO,
                ],
            ),
        ];
        for (name, steps, want) in cases {
            assert_eq!(run(&steps), want, "{name}");
        }
    }

    /// A batched apply observed `InFlight`, then resolved: afterwards the
    /// rollout admits exactly what it would had it been observed so at once.
    #[test]
    fn resolving_a_batched_apply_equals_observing_its_end() {
        use Outcome::*;
        use Strategy::*;
        let held = |r| Admission {
            dependencies_ready: true,
            wait: Some(r),
        };
        let not_ready = Admission {
            dependencies_ready: false,
            wait: None,
        };
        // (strategy, maxUnavailable, how the batched s/a ends, what s/b then
        // gets, what web/a depending on s/a gets)
        let cases = [
            (OrderedReady, 1, Ready, GO, GO),
            (
                OrderedReady,
                1,
                Held,
                held(Reason::WaitingForReady),
                not_ready,
            ),
            (
                OrderedReady,
                1,
                InFlight,
                held(Reason::WaitingForReady),
                not_ready,
            ),
            (Parallel, 1, Ready, GO, GO),
            (Parallel, 1, Held, GO, not_ready),
            (
                Parallel,
                1,
                InFlight,
                held(Reason::MaxUnavailable),
                not_ready,
            ),
        ];
        for (strategy, max, end, b, web) in cases {
            let (a, deps) = (id("s/a"), [id("s/a")]);
            let mut batched = Rollout::default();
            batched.observe(&a, InFlight);
            batched.resolve(&a, end);
            let mut direct = Rollout::default();
            direct.observe(&a, end);
            for r in [&batched, &direct] {
                let case = format!("{strategy:?} {max} {end:?}");
                assert_eq!(r.admit(&id("s/b"), &[], strategy, max), b, "{case}");
                assert_eq!(r.admit(&id("web/a"), &deps, strategy, max), web, "{case}");
            }
        }
    }
}
