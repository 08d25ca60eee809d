//! Placement (DESIGN.md section 9): which compositions belong to which site.
//! Pure: a site's view is computed from the fleet alone, so a site agent, the
//! central mode, `validate --site` and `render --site` all agree.
//!
//! A composition is placed on site S when its symphony's `spec.sites`
//! selects S and its target is site-less (each site has its own instance of
//! it) or bound to S (`spec.site: S`). A repository without Site objects is
//! one implicit site: [`Fleet::has_sites`] is false and nothing is filtered.

use super::load::closest;
use super::{Composition, CompositionId, Fleet, Site, Symphony, UnknownSite};

impl Fleet {
    /// Whether the repository defines Site objects. Without them there is one
    /// implicit site, and everything is as before sites existed.
    pub fn has_sites(&self) -> bool {
        !self.sites.is_empty() || !self.failed_sites.is_empty()
    }

    /// The Site named `name`, or why there is none (with a did-you-mean).
    pub fn site(&self, name: &str) -> Result<&Site, UnknownSite> {
        if !self.has_sites() {
            return Err(UnknownSite::NoSites { name: name.into() });
        }
        if let Some(why) = self.failed_sites.get(name) {
            return Err(UnknownSite::Invalid {
                name: name.into(),
                why: why
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
        self.sites.get(name).ok_or_else(|| UnknownSite::Unknown {
            name: name.into(),
            suggestion: closest(name, self.sites.keys().map(String::as_str)).map(str::to_string),
        })
    }

    /// What site `name` reconciles: the fleet as seen from there.
    ///
    /// - `symphonies`: **every** symphony, each with only its compositions
    ///   placed at the site, possibly none. A symphony that is not placed at
    ///   the site is still in the repository, so what it had there is a
    ///   removed variation (deleted in its window), never an orphan as for a
    ///   symphony deleted from the repository.
    /// - each kept composition carries the site in [`Composition::site`],
    ///   whose values synthesis substitutes.
    /// - `targets`: only the site-less ones and those bound to this site, so
    ///   nothing in the view can reach another site's target (invariant 11).
    /// - synthesizers, windows, sites and `failed` are kept as they are.
    ///
    /// Applying it twice gives the same view.
    pub fn site_view(&self, name: &str) -> Result<Fleet, UnknownSite> {
        let site = self.site(name)?;
        let symphonies = self
            .symphonies
            .iter()
            .map(|(k, sym)| {
                let compositions = sym
                    .compositions
                    .iter()
                    .filter(|c| self.placed(sym, c, site))
                    .map(|c| Composition {
                        site: Some(site.clone()),
                        ..c.clone()
                    })
                    .collect();
                let sym = Symphony {
                    compositions,
                    ..sym.clone()
                };
                (k.clone(), sym)
            })
            .collect();
        let targets = self
            .targets
            .iter()
            .filter(|(_, t)| t.site.as_deref().is_none_or(|s| s == name))
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        Ok(Fleet {
            symphonies,
            synthesizers: self.synthesizers.clone(),
            windows: self.windows.clone(),
            targets,
            sites: self.sites.clone(),
            failed: self.failed.clone(),
            failed_sites: self.failed_sites.clone(),
            campaigns: self.campaigns.clone(),
            activations: self.activations.clone(),
            failed_campaigns: self.failed_campaigns.clone(),
            failed_activations: self.failed_activations.clone(),
        })
    }

    /// The sites composition `id` is placed on, in name order; empty when it
    /// is placed nowhere, and when the repository has no sites.
    pub fn sites_of(&self, id: &CompositionId) -> Vec<&str> {
        let Some(sym) = self.symphonies.get(&id.symphony) else {
            return Vec::new();
        };
        let Some(comp) = sym.compositions.iter().find(|c| c.id == *id) else {
            return Vec::new();
        };
        self.sites
            .values()
            .filter(|s| self.placed(sym, comp, s))
            .map(|s| s.name.as_str())
            .collect()
    }

    /// The placement rule, for one composition and one site.
    fn placed(&self, sym: &Symphony, comp: &Composition, site: &Site) -> bool {
        sym.sites.matches(site)
            && self
                .targets
                .get(&comp.target)
                .and_then(|t| t.site.as_deref())
                .is_none_or(|s| s == site.name)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::types::Rollout;
    use crate::model::{Origin, SiteSelector, Target, TargetKind};

    fn origin() -> Origin {
        Origin {
            file: "f.yaml".into(),
            line: 1,
        }
    }

    fn site(name: &str, ring: &str) -> Site {
        Site {
            name: name.into(),
            origin: origin(),
            labels: [("ring".to_string(), ring.to_string())].into(),
            env: BTreeMap::new(),
        }
    }

    fn target(name: &str, site: Option<&str>) -> Target {
        Target {
            name: name.into(),
            origin: origin(),
            site: site.map(str::to_string),
            kind: TargetKind::Directory { path: name.into() },
        }
    }

    fn comp(symphony: &str, variation: &str, target: &str) -> Composition {
        Composition {
            id: CompositionId::new(symphony, variation),
            origin: origin(),
            synthesizer: "app".into(),
            env: BTreeMap::new(),
            bindings: BTreeMap::new(),
            annotations: BTreeMap::new(),
            labels: BTreeMap::new(),
            target: target.into(),
            window: None,
            scheduling_gates: vec![],
            depends_on: vec![],
            optional: false,
            site: None,
        }
    }

    fn symphony(name: &str, sites: SiteSelector, comps: Vec<Composition>) -> Symphony {
        Symphony {
            name: name.into(),
            origin: origin(),
            rollout: Rollout::default(),
            rollback: Default::default(),
            sites,
            compositions: comps,
        }
    }

    fn canary() -> SiteSelector {
        SiteSelector {
            match_labels: [("ring".to_string(), "canary".to_string())].into(),
            ..Default::default()
        }
    }

    /// Sites a (canary), b and c (stable); targets `line` (everywhere) and
    /// `a-only` (bound to a).
    fn fleet() -> Fleet {
        let mut f = Fleet::default();
        for s in [
            site("a", "canary"),
            site("b", "stable"),
            site("c", "stable"),
        ] {
            f.sites.insert(s.name.clone(), s);
        }
        for t in [target("line", None), target("a-only", Some("a"))] {
            f.targets.insert(t.name.clone(), t);
        }
        let syms = [
            symphony(
                "everywhere",
                SiteSelector::default(),
                vec![comp("everywhere", "app", "line")],
            ),
            symphony("canary", canary(), vec![comp("canary", "app", "line")]),
            symphony(
                "named",
                SiteSelector {
                    names: Some(["c".to_string()].into()),
                    ..Default::default()
                },
                vec![comp("named", "app", "line")],
            ),
            symphony(
                "bound",
                SiteSelector::default(),
                vec![
                    comp("bound", "local", "line"),
                    comp("bound", "pinned", "a-only"),
                ],
            ),
        ];
        for s in syms {
            f.symphonies.insert(s.name.clone(), s);
        }
        f
    }

    fn ids(f: &Fleet) -> Vec<String> {
        f.compositions().map(|c| c.id.to_string()).collect()
    }

    #[test]
    fn placement_table() {
        let f = fleet();
        let cases = [
            (
                "a",
                vec![
                    "bound/local",
                    "bound/pinned",
                    "canary/app",
                    "everywhere/app",
                ],
            ),
            ("b", vec!["bound/local", "everywhere/app"]),
            ("c", vec!["bound/local", "everywhere/app", "named/app"]),
        ];
        for (site, want) in cases {
            let view = f.site_view(site).unwrap();
            assert_eq!(ids(&view), want, "site {site}");
            assert!(view
                .compositions()
                .all(|c| c.site.as_ref().map(|s| s.name.as_str()) == Some(site)));
            // Every symphony stays: one not placed here is a removal here, not an orphan.
            assert_eq!(view.symphonies.len(), 4, "site {site}");
            assert_eq!(
                view.site_view(site).unwrap().compositions().count(),
                want.len(),
                "idempotent"
            );
        }
    }

    #[test]
    fn a_view_holds_no_target_of_another_site() {
        let f = fleet();
        let b = f.site_view("b").unwrap();
        assert_eq!(b.targets.keys().collect::<Vec<_>>(), ["line"]);
        let a = f.site_view("a").unwrap();
        assert_eq!(a.targets.keys().collect::<Vec<_>>(), ["a-only", "line"]);
    }

    #[test]
    fn sites_of_lists_where_a_composition_runs() {
        let f = fleet();
        let cases = [
            ("everywhere/app", vec!["a", "b", "c"]),
            ("canary/app", vec!["a"]),
            ("named/app", vec!["c"]),
            ("bound/pinned", vec!["a"]),
            ("nope/app", vec![]),
        ];
        for (id, want) in cases {
            assert_eq!(f.sites_of(&id.parse().unwrap()), want, "{id}");
        }
    }

    #[test]
    fn unknown_sites_suggest_and_no_sites_says_so() {
        let f = fleet();
        assert_eq!(
            f.site_view("d").unwrap_err(),
            UnknownSite::Unknown {
                name: "d".into(),
                suggestion: Some("a".into())
            }
        );
        assert_eq!(
            f.site_view("plant-zzz").unwrap_err(),
            UnknownSite::Unknown {
                name: "plant-zzz".into(),
                suggestion: None
            }
        );
        let mut none = fleet();
        none.sites.clear();
        assert!(!none.has_sites());
        assert_eq!(
            none.site_view("a").unwrap_err(),
            UnknownSite::NoSites { name: "a".into() }
        );
        assert!(none.sites_of(&"everywhere/app".parse().unwrap()).is_empty());
    }
}
