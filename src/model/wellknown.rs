//! Every `fermata.dev/*` name fermata writes or reads, defined once: what
//! users put in their manifests and what tools read off a target are a
//! contract, and a key spelled in two modules drifts.

use std::collections::BTreeMap;

/// The `apiVersion` of fermata's own kinds.
pub const API_VERSION: &str = "fermata.dev/v1alpha1";

/// Annotation (and, on Kubernetes, label) naming the composition a
/// resource belongs to.
pub const COMPOSITION: &str = "fermata.dev/composition";

/// Annotation carrying the digest of the composition's desired state.
pub const DIGEST: &str = "fermata.dev/digest";

/// Annotation on a KRM function's `functionConfig`, and on what `fermata
/// render` prints of a site's view: the site it is rendered for.
pub const SITE: &str = "fermata.dev/site";

/// Annotation on a KRM function's `functionConfig`: the site's labels, as a
/// JSON object (an annotation value is a string).
pub const SITE_LABELS: &str = "fermata.dev/site-labels";

/// Annotation on an item of a KRM function's `ResourceList`: the binding
/// key it was bound under.
pub const BINDING: &str = "fermata.dev/binding";

/// Resource annotation `"KEY=VALUE"`: reconciled only while the composition
/// carries that annotation value, otherwise left exactly as it is (Eno).
pub const RECONCILE_WHEN: &str = "fermata.dev/reconcile-when";

/// Marks resources left in place when their symphony was removed (Eno).
pub const ORPHANED_FROM: &str = "fermata.dev/orphaned-from";

/// Variation annotation: Margo's `deploymentId` of its status, instead of
/// the one fermata derives (`src/status/ids.rs`): for an orchestrator that
/// already has an id for this deployment.
pub const DEPLOYMENT_ID: &str = "fermata.dev/deployment-id";

/// Type and label of a Kubernetes target's inventory record Secrets.
pub const INVENTORY: &str = "fermata.dev/inventory";

/// Whether a resource with `fermata.dev/reconcile-when: "KEY=VALUE"` is
/// reconciled by a composition carrying `annotations`. A malformed condition
/// never matches: the resource is left alone rather than fought over.
pub fn reconcile_when_matches(condition: &str, annotations: &BTreeMap<String, String>) -> bool {
    match condition.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => {
            annotations.get(k.trim()).map(String::as_str) == Some(v.trim())
        }
        _ => false,
    }
}
