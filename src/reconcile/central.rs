//! Central mode (DESIGN.md section 9): `fermata run` without `--site` on a
//! repository with Site objects reconciles every site, one after another,
//! each exactly as that site's own agent would: the site's view of the
//! fleet, its own memory (`<state-dir>/sites/<site>/`), its own instance of
//! every site-less directory target (`<target-root>/<site>/`), its own
//! status branch. The sites share the source, the artifact store, the clock
//! and the lease: one process, one writer per ref still.

use std::collections::BTreeMap;

use super::context::Context;
use crate::report::BranchReport;
use crate::source::Revision;

/// The site agents (`A`: a reconciler) of a central reconciler.
pub(super) struct Central<A> {
    /// One per site seen, kept while the repository names the site.
    agents: BTreeMap<String, A>,
    /// The revision whose Sites were read last, and their names.
    read: Option<(Revision, Vec<String>)>,
}

impl<A> Default for Central<A> {
    fn default() -> Self {
        Central {
            agents: BTreeMap::new(),
            read: None,
        }
    }
}

impl<A> Central<A> {
    /// The sites `rev` names, read once per revision.
    pub(super) fn known(&self, rev: Revision) -> Option<&[String]> {
        match &self.read {
            Some((r, sites)) if *r == rev => Some(sites),
            _ => None,
        }
    }

    /// The sites read last, whatever the revision.
    pub(super) fn last(&self) -> Option<Vec<String>> {
        self.read.as_ref().map(|(_, s)| s.clone())
    }

    pub(super) fn remember(&mut self, rev: Revision, sites: Vec<String>) {
        // A site the repository no longer names is not reconciled (nor
        // undone: what it applied stays, as its own agent would leave it).
        self.agents.retain(|s, _| sites.contains(s));
        self.read = Some((rev, sites));
    }

    /// The agent of `site`, made on first use by `make`.
    pub(super) fn agent(&mut self, site: &str, make: impl FnOnce() -> A) -> &mut A {
        self.agents.entry(site.to_string()).or_insert_with(make)
    }

    pub(super) fn agents(&mut self) -> impl Iterator<Item = &mut A> {
        self.agents.values_mut()
    }
}

/// Where the agent of `site` keeps its memory (and the `ungate` and
/// `apply-now` records it acts on) under a central reconciler's state dir.
pub fn site_state_dir(state_dir: &std::path::Path, site: &str) -> std::path::PathBuf {
    state_dir.join("sites").join(site)
}

/// A site agent's context, from the central one: the same seams, with the
/// site's settings, targets and status sink.
pub(super) fn site_context(central: &Context, site: &str) -> Context {
    let mut settings = central.settings.clone();
    settings.site = Some(site.to_string());
    settings.state_dir = site_state_dir(&central.settings.state_dir, site);
    settings.target_root = central.settings.target_root.join(site);
    Context {
        targets: central
            .targets
            .at_site(site)
            .unwrap_or_else(|| central.targets.clone()),
        status: central.status.for_site(site),
        source: central.source.clone(),
        store: central.store.clone(),
        clock: central.clock.clone(),
        settings,
    }
}

/// Marks each report with the site it is of.
pub(super) fn of_site(site: &str, mut reports: Vec<BranchReport>) -> Vec<BranchReport> {
    for r in &mut reports {
        r.site = Some(site.to_string());
    }
    reports
}
