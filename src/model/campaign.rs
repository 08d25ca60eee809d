//! Campaigns and activations as the rest of fermata uses them (DESIGN.md
//! section 10): every reference checked, every duration parsed and every
//! CEL expression compiled by [`super::load`]. Pure values.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Origin, SiteSelector};

/// A staged rollout: its stages by name, and where it starts.
#[derive(Debug, Clone)]
pub struct Campaign {
    pub name: String,
    pub origin: Origin,
    pub self_driving: bool,
    pub first_stage: String,
    /// `Some(1)` queues activations; `None`: unlimited.
    pub concurrency: Option<u32>,
    /// In file order.
    pub stages: Vec<Stage>,
}

impl Campaign {
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }
}

#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    pub origin: Origin,
    pub action: Action,
    /// Fans a promote (and its await) out in batches.
    pub batch: Option<Batch>,
    /// Run by this site's agent (remote execution).
    pub site: Option<String>,
    pub next: Vec<Next>,
}

/// What a stage does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Set `set` (templates over `${inputs.NAME}`) in `spec.env` of every
    /// selected Site; then, with `await`, wait for its sites.
    Promote {
        sites: SiteSelector,
        set: BTreeMap<String, String>,
        pull_request: bool,
        await_: Option<Await>,
    },
    Approval {
        approvers: u32,
    },
    Verify(Verify),
    Wait {
        duration: Duration,
    },
    /// Restore what the promotes of `stage` replaced.
    Revert {
        stage: String,
    },
}

impl Action {
    /// The stage kind's name, as users write it.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Promote { .. } => "promote",
            Action::Approval { .. } => "approval",
            Action::Verify(_) => "verify",
            Action::Wait { .. } => "wait",
            Action::Revert { .. } => "revert",
        }
    }
}

/// Wait until every affected composition at every promoted site is in
/// `state` (`installed`, `staged` or `removed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Await {
    pub state: crate::status::State,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum Verify {
    Http {
        url: String,
        status: u16,
        body: Option<String>,
        timeout: Duration,
    },
    Command {
        argv: Vec<String>,
        timeout: Duration,
    },
}

/// How many sites: a share of the selection (rounded up) or a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Percent(u32),
    Count(usize),
}

impl Amount {
    /// Of `total` sites.
    pub fn of(self, total: usize) -> usize {
        match self {
            Amount::Percent(p) => (total * p as usize).div_ceil(100),
            Amount::Count(n) => n,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// Sites per batch (at least 1).
    pub size: Amount,
    /// Failed sites tolerated; past it the fan-out stops.
    pub failure_tolerance: Amount,
}

#[derive(Debug, Clone)]
pub struct Next {
    /// `None`: always.
    pub when: Option<Expr>,
    pub stage: String,
}

/// A CEL expression, compiled when loaded (so a syntax error is a load
/// error with its file and line), evaluated over `inputs`, `outputs` and
/// `sites` as JSON values.
#[derive(Debug, Clone)]
pub struct Expr {
    pub source: String,
}

/// One run of a campaign, as committed (`kind: Activation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    pub name: String,
    pub origin: Origin,
    pub campaign: String,
    pub inputs: BTreeMap<String, String>,
}

impl Expr {
    /// Placeholder until CEL evaluation lands (the loader's part).
    pub fn eval_bool(&self, _vars: &serde_json::Value) -> Result<bool, String> {
        Err(format!("{}: CEL is not evaluated yet", self.source))
    }
}
