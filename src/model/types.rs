//! The declarative kinds of a watched repository, exactly as users write them
//! (DESIGN.md section 1). Pure serde types: no I/O and no cross-references;
//! [`super::load`] validates and resolves them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `apiVersion` of every fermata object; other YAML is input or rendered output.
pub use super::wellknown::API_VERSION;

/// The kinds fermata reads, in the order they are resolved.
pub const KINDS: [&str; 7] = [
    "Site",
    "Target",
    "MaintenanceWindow",
    "Synthesizer",
    "Symphony",
    "Campaign",
    "Activation",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Object<S> {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: S,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SymphonySpec {
    pub target: Option<String>,
    pub window: Option<String>,
    #[serde(default)]
    pub rollout: Rollout,
    #[serde(default)]
    pub bindings: Vec<Binding>,
    #[serde(default)]
    pub synthesis_env: Vec<EnvVar>,
    /// Which sites the symphony is placed on; every site when absent.
    pub sites: Option<SiteSelectorSpec>,
    /// `auto` or `off` (the default): a string here so that a misspelt one
    /// gets a did-you-mean with file and line instead of serde's message.
    pub rollback: Option<String>,
    pub variations: Vec<Variation>,
}

/// A Kubernetes-style label selector over Sites, plus `names`. Every clause
/// given must hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SiteSelectorSpec {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<SiteRequirementSpec>,
    /// Only these sites; `[]` selects none.
    pub names: Option<Vec<String>>,
}

/// One `matchExpressions` entry. `operator` is a string here so that a
/// misspelt one gets a did-you-mean instead of serde's variant list.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteRequirementSpec {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

/// A place the fleet runs at (a plant, a store, a cluster): its labels
/// (`metadata.labels`) select it, its env reaches synthesis.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    #[serde(default)]
    pub env: Vec<EnvVar>,
}

/// How the compositions of a symphony are rolled out (Datum's instance control).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rollout {
    #[serde(default)]
    pub strategy: Strategy,
    /// At most this many compositions not Ready at once; StatefulSet's default of 1.
    #[serde(default = "one")]
    pub max_unavailable: u32,
}

fn one() -> u32 {
    1
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            strategy: Strategy::default(),
            max_unavailable: 1,
        }
    }
}

/// What a failed apply inside the window leads to (`spec.rollback`).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub enum RollbackPolicy {
    /// The failed state stays applied; status says failed.
    #[default]
    Off,
    /// Switch back to the previous applied state before the window closes.
    Auto,
}

impl RollbackPolicy {
    pub const ALL: &'static [&'static str] = &["auto", "off"];

    pub fn parse(s: &str) -> Option<RollbackPolicy> {
        match s {
            "auto" => Some(RollbackPolicy::Auto),
            "off" => Some(RollbackPolicy::Off),
            _ => None,
        }
    }
}

/// `OrderedReady` is the default, as for a StatefulSet: the safe choice for a
/// fleet is one composition at a time, in the order the user wrote.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum Strategy {
    #[default]
    OrderedReady,
    Parallel,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Variation {
    /// Defaults to the synthesizer's name; unique within the symphony.
    pub name: Option<String>,
    pub synthesizer: SynthesizerRef,
    #[serde(default)]
    pub synthesis_env: Vec<EnvVar>,
    #[serde(default)]
    pub bindings: Vec<Binding>,
    /// Additive merge onto the composition; `""` removes the key.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub target: Option<String>,
    pub window: Option<String>,
    #[serde(default)]
    pub scheduling_gates: Vec<SchedulingGate>,
    #[serde(default)]
    pub depends_on: Vec<Dependency>,
    #[serde(default)]
    pub optional: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthesizerRef {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    pub key: String,
    pub resource: ResourceRef,
}

/// An input object of the repository; `kind`/`apiVersion` only disambiguate.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceRef {
    pub name: String,
    pub namespace: Option<String>,
    pub kind: Option<String>,
    pub api_version: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulingGate {
    pub name: String,
}

/// `variation` names one in the same symphony, or `symphony/variation` another one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    pub variation: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthesizerSpec {
    /// A folder of YAML templates, relative to the file that defines the synthesizer.
    pub manifests: Option<String>,
    /// A KRM function: ResourceList on stdin, ResourceList on stdout.
    pub command: Option<Vec<String>>,
    /// `30s` when absent.
    pub timeout: Option<String>,
    #[serde(default)]
    pub artifacts: Vec<ArtifactSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactSpec {
    pub name: String,
    pub url: String,
    pub sha256: String,
    pub size: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWindowSpec {
    pub schedule: String,
    pub duration: String,
    /// An IANA zone; UTC when absent.
    pub timezone: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub directory: Option<DirectorySpec>,
    pub kubernetes: Option<KubernetesSpec>,
    /// The one Site this target exists at; at every site when absent.
    pub site: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DirectorySpec {
    pub path: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesSpec {
    /// A context of the kubeconfig; its current context when absent.
    pub context: Option<String>,
    /// Where namespaced resources without a namespace, and the inventory
    /// records, go; the context's namespace (or `default`) when absent.
    pub namespace: Option<String>,
    /// A kubeconfig file; `KUBECONFIG` or in-cluster when absent.
    pub kubeconfig: Option<String>,
    /// Server-side apply with `force`: take over fields another field
    /// manager owns instead of failing with a conflict.
    #[serde(default)]
    pub force_conflicts: bool,
    /// Container images pulled onto the nodes at stage (on by default).
    #[serde(default)]
    pub pre_pull: PrePullSpec,
    /// A PersistentVolumeClaim the composition's artifacts are written to
    /// at stage; none by default (artifacts stay in fermata's store).
    #[serde(default)]
    pub artifacts: Option<ClaimSpec>,
}

/// `spec.kubernetes.prePull`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrePullSpec {
    /// `false`: images are pulled when the workloads start, inside the window.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Images pulled at once on one node (at least 1); 2 when absent.
    #[serde(default)]
    pub max_per_node: Option<u32>,
}

fn yes() -> bool {
    true
}

impl Default for PrePullSpec {
    fn default() -> Self {
        PrePullSpec {
            enabled: true,
            max_per_node: None,
        }
    }
}

/// `spec.kubernetes.artifacts`: where and how artifacts reach the cluster.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClaimSpec {
    /// The PersistentVolumeClaim, in the target namespace; files go to
    /// `sha256/<digest>` in it.
    pub claim: String,
    /// fermata's `--listen` address as the cluster reaches it (e.g.
    /// `http://fermata.fermata.svc:8080`): Jobs download
    /// `<storeUrl>/artifacts/sha256/<digest>` from it.
    #[serde(default)]
    pub store_url: Option<String>,
    /// The Secret (in the target namespace) whose key `token` holds the
    /// bearer token of `--artifact-token-file`; `fermata-artifact-token`
    /// when absent.
    #[serde(default)]
    pub token_secret: Option<String>,
    /// Download from each artifact's own URL instead: the cluster can reach it.
    #[serde(default)]
    pub direct: bool,
    /// Image of the download Jobs (`sh`, `wget`, `sha256sum`, `mv`);
    /// `busybox:1.37` when absent.
    #[serde(default)]
    pub image: Option<String>,
}

/// A staged rollout across the fleet (DESIGN.md section 10): stages, each
/// doing one thing, chosen one after another by `next`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CampaignSpec {
    /// Advanced by `fermata run` on events; `false`: stepped, an external
    /// driver (CI) runs `fermata campaign step`.
    #[serde(default)]
    pub self_driving: bool,
    pub first_stage: String,
    /// How many activations of it may run at once (`1` queues them);
    /// unlimited when absent.
    pub concurrency: Option<u32>,
    pub stages: Vec<StageSpec>,
}

/// One stage: exactly one of `promote`, `approval`, `verify`, `wait`,
/// `revert` (a `promote` may be followed by `await` in the same stage),
/// then `next`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StageSpec {
    pub name: String,
    pub promote: Option<PromoteSpec>,
    /// `await`: the affected compositions reach a state at every site.
    #[serde(rename = "await")]
    pub await_: Option<AwaitSpec>,
    pub approval: Option<ApprovalSpec>,
    pub verify: Option<VerifySpec>,
    pub wait: Option<WaitSpec>,
    pub revert: Option<RevertSpec>,
    /// Fan a `promote` (+ `await`) out over its sites in batches.
    pub batch: Option<BatchSpec>,
    /// Executed by this site's agent (remote execution), not the driver.
    pub site: Option<String>,
    /// The first entry whose `when` (CEL over `inputs`, `outputs`, `sites`)
    /// holds, or that has none, names the next stage; none: finished.
    #[serde(default)]
    pub next: Vec<NextSpec>,
}

/// Set site values (`spec.env` of each selected Site) as one commit per batch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PromoteSpec {
    pub sites: SiteSelectorSpec,
    /// Values, each a template over `${inputs.NAME}`.
    pub set: BTreeMap<String, String>,
    /// Open a pull request through the configured forge instead of
    /// committing to the watched branch; merging it continues the stage.
    #[serde(default)]
    pub pull_request: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AwaitSpec {
    /// `installed` (the default), `staged` or `removed`.
    pub state: Option<String>,
    /// How long the sites may take (`8d`, `12h`), their windows included.
    pub timeout: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApprovalSpec {
    /// Distinct approvers needed.
    pub approvers: Option<u32>,
}

/// An HTTP probe or a command; with the stage's `site`, run by that site.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VerifySpec {
    pub http: Option<HttpProbeSpec>,
    pub command: Option<Vec<String>>,
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpProbeSpec {
    pub url: String,
    /// Expected status code (200 when absent).
    pub status: Option<u16>,
    /// A substring the body must contain.
    pub body: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WaitSpec {
    pub duration: String,
}

/// Restore the values a stage's promotes replaced, as a commit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RevertSpec {
    pub stage: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BatchSpec {
    /// Sites per batch: `10%` of the selection (rounded up) or a count.
    #[serde(deserialize_with = "count_or_share")]
    pub size: String,
    /// Failed sites tolerated before the fan-out stops: `2%` or a count;
    /// none when absent.
    #[serde(default, deserialize_with = "some_count_or_share")]
    pub failure_tolerance: Option<String>,
}

/// `5` or `"10%"`, read as text: YAML reads `size: 5` as a number, and a
/// user should not have to quote it.
fn count_or_share<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a count (`5`) or a share of the sites (`10%`)")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    d.deserialize_any(Visitor)
}

fn some_count_or_share<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    count_or_share(d).map(Some)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NextSpec {
    /// A CEL condition; absent: always.
    pub when: Option<String>,
    pub stage: String,
}

/// One run of a campaign with its inputs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ActivationSpec {
    pub campaign: String,
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
}
