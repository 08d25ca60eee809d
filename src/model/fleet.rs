//! The resolved model: every reference checked, symphony-level defaults
//! merged into each variation. What synthesis, planning and status consume.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::types::{KubernetesSpec, RollbackPolicy, Rollout};
use super::{CompositionId, Diagnostic, Digest, Origin, Site, SiteSelector};
use crate::window::Window;

/// Everything a commit declares, minus what failed to load.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    pub symphonies: BTreeMap<String, Symphony>,
    pub synthesizers: BTreeMap<String, Synthesizer>,
    pub windows: BTreeMap<String, MaintenanceWindow>,
    pub targets: BTreeMap<String, Target>,
    /// The Site objects; empty for a repository without sites, which is one
    /// implicit site (see [`Fleet::has_sites`] and [`Fleet::site_view`]).
    pub sites: BTreeMap<String, Site>,
    /// Symphonies named in the repository that could not be loaded, with the
    /// reasons: they keep their last applied state, and status says why.
    pub failed: BTreeMap<String, Vec<Diagnostic>>,
    /// Sites named in the repository that could not be loaded, with the
    /// reasons: their agents hold what they applied rather than take the
    /// site for gone.
    pub failed_sites: BTreeMap<String, Vec<Diagnostic>>,
    /// Campaigns and activations (DESIGN.md section 10).
    pub campaigns: BTreeMap<String, super::campaign::Campaign>,
    pub activations: BTreeMap<String, super::campaign::Activation>,
    /// Campaigns and activations named in the repository that could not be
    /// loaded, with the reasons (an activation fails with its campaign):
    /// broken is not gone, so a running activation holds rather than ends.
    pub failed_campaigns: BTreeMap<String, Vec<Diagnostic>>,
    pub failed_activations: BTreeMap<String, Vec<Diagnostic>>,
}

impl Fleet {
    pub fn compositions(&self) -> impl Iterator<Item = &Composition> {
        self.symphonies.values().flat_map(|s| s.compositions.iter())
    }

    pub fn composition(&self, id: &CompositionId) -> Option<&Composition> {
        self.symphonies
            .get(&id.symphony)?
            .compositions
            .iter()
            .find(|c| c.id.variation == id.variation)
    }
}

#[derive(Debug, Clone)]
pub struct Symphony {
    pub name: String,
    pub origin: Origin,
    pub rollout: Rollout,
    /// `spec.rollback`: whether a failed apply is switched back by itself.
    pub rollback: RollbackPolicy,
    /// `spec.sites`: where it is placed; the default selects every site.
    pub sites: SiteSelector,
    /// In the order the variations were written: `OrderedReady` follows it.
    pub compositions: Vec<Composition>,
}

/// One variation of a symphony with symphony-level bindings and env merged in.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Composition {
    pub id: CompositionId,
    #[serde(skip)]
    pub origin: Origin,
    pub synthesizer: String,
    pub env: BTreeMap<String, String>,
    pub bindings: BTreeMap<String, Bound>,
    /// As written: a `""` value asks for the key's removal (two-phase protocol).
    pub annotations: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub target: String,
    pub window: Option<String>,
    pub scheduling_gates: Vec<String>,
    pub depends_on: Vec<CompositionId>,
    pub optional: bool,
    /// The site this composition is rendered for: set by
    /// [`Fleet::site_view`], `None` in a repository without sites (and in
    /// the whole-fleet view). Absent from the serialization when `None`, so
    /// a repository without sites hashes as it always did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<Site>,
}

impl Composition {
    /// The environment synthesis runs with: the site's env, overridden by
    /// the composition's own synthesisEnv (symphony and variation), so what
    /// the symphony's author wrote wins over a site value of the same name.
    pub fn synthesis_env(&self) -> BTreeMap<String, String> {
        let mut env = self
            .site
            .as_ref()
            .map(|s| s.env.clone())
            .unwrap_or_default();
        env.extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }
}

/// An input object a binding resolved to.
#[derive(Debug, Clone, Serialize)]
pub struct Bound {
    #[serde(skip)]
    pub origin: Origin,
    pub object: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct Synthesizer {
    pub name: String,
    /// Where its `manifests` or `command` is written: synthesis errors point there.
    pub origin: Origin,
    /// Folder of the file that defines it: relative paths start here.
    pub dir: String,
    pub kind: SynthKind,
    pub timeout: Duration,
    pub artifacts: Vec<Artifact>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SynthKind {
    /// Every YAML file of this repository folder, in path order, with `${VAR}` substituted.
    Manifests { dir: String },
    /// A KRM function, run in a temp copy of the synthesizer's folder.
    Command { argv: Vec<String> },
}

/// Where an artifact lies in a Kubernetes target's artifact claim, relative
/// to its root: what `${artifact.NAME.path}` expands to, and where the
/// delivery Job writes it.
pub fn artifact_claim_path(sha256: &Digest) -> String {
    format!("sha256/{}", sha256.to_hex())
}

/// A large file staged before the window and verified by digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Artifact {
    pub name: String,
    /// As written: an http(s):// or file:// URL, or a repository path.
    pub url: String,
    /// Set when `url` is a path: the file of the repository it names. Small
    /// artifacts (demos, tests, configuration bundles) can ship with the fleet.
    pub repo_path: Option<String>,
    pub sha256: Digest,
    pub size: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct MaintenanceWindow {
    pub origin: Origin,
    pub window: Window,
}

#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub origin: Origin,
    /// `spec.site`: the one site this target exists at; every site when `None`.
    pub site: Option<String>,
    pub kind: TargetKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TargetKind {
    Directory { path: String },
    Kubernetes(KubernetesSpec),
}
