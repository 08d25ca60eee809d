//! The Kubernetes target: a composition's resources applied to a cluster by
//! server-side apply (DESIGN.md section 2), staged by a server-side dry run.
//!
//! Two field managers write every resource, so that each can drop a field
//! by no longer sending it (an apply with a partial object would drop
//! ownership of, and so delete, whatever it leaves out):
//! - `fermata` applies the rendered object, with the inventory label
//!   `fermata.dev/composition: <symphony>.<variation>` (see
//!   [`composition_label`]) and the annotation `fermata.dev/composition`,
//!   but without the composition's own annotations and labels;
//! - `fermata-metadata` applies only `metadata.annotations` (the
//!   composition's annotations and `fermata.dev/digest`) and
//!   `metadata.labels` (the composition's labels): the two-phase protocol's
//!   writes, where removing a key really removes it.
//!
//! Per composition a Secret `fermata-<label>` (type `fermata.dev/inventory`,
//! labelled `fermata.dev/inventory`) in the target namespace records the
//! applied state (digest, time, the `Rendered` as JSON, the inventory of
//! resources it manages) and the staged digest: it is what `get`,
//! `applied`, `list` and prune read. A Secret, not a ConfigMap, because it
//! holds every applied object, Secrets included (Helm keeps releases in
//! Secrets for the same reason); both are limited to 1 MiB.
//! Prune never deletes a resource the composition's `reconcile-when` leaves
//! alone, one annotated `fermata.dev/orphaned-from`, or one another
//! composition has taken over (its `fermata.dev/composition` annotation).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiResource, Scope};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::dir::map_diff;
use super::{
    Component, Desired, Health, MetadataChange, Observed, Outcome, SourceRef, StateFlag, StateGoal,
    Target, TargetError,
};
use crate::model::types::KubernetesSpec;
use crate::model::wellknown::{
    reconcile_when_matches, COMPOSITION as COMPOSITION_LABEL, INVENTORY, ORPHANED_FROM,
    RECONCILE_WHEN,
};
use crate::model::{Artifact, CompositionId, Digest};
use crate::synth::{Rendered, Resource, COMPOSITION_ANNOTATION, DIGEST_ANNOTATION};
use crate::window::Clock;

pub mod deliver;
pub mod prepull;

/// Type of the inventory record Secrets.
pub const RECORD_TYPE: &str = INVENTORY;
/// Label of the inventory records; its value is the composition's label.
pub const INVENTORY_LABEL: &str = INVENTORY;
/// Field manager of the rendered objects.
pub const FIELD_MANAGER: &str = "fermata";
/// Field manager of the composition's annotations and labels.
pub const METADATA_MANAGER: &str = "fermata-metadata";
/// What a Secret may hold (keys and decoded values together).
const RECORD_LIMIT: usize = 1024 * 1024;
/// How long an apply waits for a kind its own CRD just defined to be served.
const CRD_WAIT: Duration = Duration::from_secs(10);

/// The value of the `fermata.dev/composition` label for `id`: label values
/// cannot hold `/`, so `<symphony>.<variation>` when both parts are DNS
/// labels and it fits 63 characters (a valid label value and name part),
/// otherwise `h-` and 40 hex digits of the SHA-256 of the id (no `.`, so the
/// two forms never collide).
pub fn composition_label(id: &CompositionId) -> String {
    let readable = format!("{}.{}", id.symphony, id.variation);
    let dns_label = |s: &str| crate::model::load::check_name(s).is_ok();
    if readable.len() <= 63 && dns_label(&id.symphony) && dns_label(&id.variation) {
        readable
    } else {
        let hex = Digest::of(id.to_string().as_bytes()).to_hex();
        format!("h-{}", &hex[..40])
    }
}

/// A composition's resources on one cluster, in one default namespace.
pub struct KubernetesTarget {
    spec: KubernetesSpec,
    health_timeout: Duration,
    clock: Arc<dyn Clock>,
    /// Connected on first use, so a bad kubeconfig fails the compositions
    /// of this target (as `TargetUnavailable`), not the whole pass.
    conn: tokio::sync::OnceCell<Conn>,
    /// Discovered kinds by (group, version, kind); misses are not cached, so
    /// a kind a CRD adds later resolves.
    kinds: Mutex<HashMap<(String, String, String), Kind>>,
    /// Staged digests whose record could not be written yet (the target
    /// namespace does not exist before the first apply creates it).
    staged: Mutex<HashMap<CompositionId, Staged>>,
    /// The state whose dry run passed while its images or artifacts are
    /// still being prepared: not dry-run again on every pass.
    validated: Mutex<HashMap<CompositionId, Digest>>,
    /// The artifacts of stages delivering now (from their first delivery
    /// step until their record is written): garbage collection keeps them.
    delivering: Mutex<HashMap<CompositionId, Vec<Digest>>>,
    /// A state was recorded since the claim's garbage was last collected:
    /// collected once at the pass's end ([`Target::checkpoint`]), since each
    /// collection lists every inventory record of the namespace.
    gc_due: AtomicBool,
}

/// The digests a claim's ledger records (none before the first delivery).
async fn ledger_keys(
    ledgers: &Api<ConfigMap>,
    ns: &str,
    ledger: &str,
) -> Result<BTreeSet<String>, TargetError> {
    match ledgers.get_opt(ledger).await {
        Ok(cm) => Ok(cm
            .and_then(|c| c.data)
            .map(|d| d.into_keys().collect())
            .unwrap_or_default()),
        Err(e) => Err(kube_err(format!("ConfigMap {ns}/{ledger}"), &e)),
    }
}

struct Conn {
    client: kube::Client,
    namespace: String,
}

#[derive(Debug, Clone)]
struct Kind {
    ar: ApiResource,
    namespaced: bool,
}

impl fmt::Debug for KubernetesTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubernetesTarget")
            .field("spec", &self.spec)
            .field("health_timeout", &self.health_timeout)
            .finish_non_exhaustive()
    }
}

/// `apiVersion/kind/namespace/name` of a live object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ref {
    api_version: String,
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    name: String,
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/", self.api_version, self.kind)?;
        if let Some(ns) = &self.namespace {
            write!(f, "{ns}/")?;
        }
        f.write_str(&self.name)
    }
}

impl Ref {
    /// Applied first, pruned last: CRDs, then Namespaces, then the rest.
    fn rank(&self) -> u8 {
        rank(&self.api_version, &self.kind)
    }
}

fn rank(api_version: &str, kind: &str) -> u8 {
    match (api_version.split('/').next(), kind) {
        (Some("apiextensions.k8s.io"), "CustomResourceDefinition") => 0,
        (Some("v1"), "Namespace") => 1,
        _ => 2,
    }
}

/// The claim's GC Jobs not finished: the digests they remove.
#[derive(Debug, Default)]
struct GcJobs {
    running: BTreeSet<Digest>,
    failed: BTreeSet<Digest>,
}

/// The inventory record, as the Secret's data holds it.
#[derive(Debug, Clone, Default)]
struct Record {
    applied: Option<AppliedState>,
    staged: Option<Staged>,
    /// What an apply in progress may have created beyond the applied
    /// inventory: written before it creates anything, cleared when it is
    /// recorded, so a crash in between leaves nothing unknown to prune.
    pending: Vec<Ref>,
    /// The applied state before `applied`, what [`Target::rollback`]
    /// applies again. Dropped where it would not fit in the Secret.
    previous: Option<AppliedState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppliedState {
    digest: Digest,
    /// When its resources were last written (not for a metadata-only
    /// change): the health timeout counts from here.
    at: DateTime<Utc>,
    source: SourceRef,
    annotations: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    resources: Vec<AppliedResource>,
    artifacts: Vec<ArtifactRecord>,
    /// What prune and delete may remove: applied, not orphaned.
    inventory: Vec<Ref>,
}

impl AppliedState {
    /// The object as applied of the live resource `live`.
    fn object_of(&self, live: &Ref) -> Option<&Value> {
        self.resources
            .iter()
            .find(|x| x.live.as_ref() == Some(live))
            .map(|x| &x.object)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppliedResource {
    /// As rendered: what `applied` returns.
    object: Value,
    /// Where it lives; absent if it was never applied from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    live: Option<Ref>,
    /// SHA-256 of the body last applied under [`FIELD_MANAGER`]: an equal
    /// body is not sent again (only the metadata apply runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<Digest>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ArtifactRecord {
    name: String,
    sha256: Digest,
    size: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Staged {
    digest: Digest,
    /// Each resource's name and the SHA-256 of its object.
    components: Vec<(String, Digest)>,
    /// Its artifacts, which garbage collection keeps; absent in a record
    /// written before they were listed (then nothing is collected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    artifacts: Option<Vec<Digest>>,
}

fn component_sha(object: &Value) -> Digest {
    Digest::of(object.to_string().as_bytes())
}

/// One desired resource, resolved against the cluster.
struct Planned<'a> {
    res: &'a Resource,
    live: Ref,
    /// Not served yet: defined by a CRD of this same state.
    kind: Option<Kind>,
    /// Its `reconcile-when` is not matched: not patched at all.
    skipped: bool,
    orphaned: bool,
}

/// Kinds the CRDs of a state define: (group, version, kind) -> namespaced.
fn crd_kinds(r: &Rendered) -> HashMap<(String, String, String), bool> {
    let mut out = HashMap::new();
    for res in r
        .resources
        .iter()
        .filter(|x| rank(&x.key.api_version, &x.key.kind) == 0)
    {
        let spec = &res.object["spec"];
        let group = spec["group"].as_str().unwrap_or_default();
        let kind = spec["names"]["kind"].as_str().unwrap_or_default();
        let namespaced = spec["scope"].as_str() != Some("Cluster");
        for v in spec["versions"].as_array().into_iter().flatten() {
            if let Some(version) = v["name"].as_str() {
                out.insert((group.into(), version.into(), kind.into()), namespaced);
            }
        }
    }
    out
}

fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

fn annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

/// Whether the composition (carrying `annotations`) leaves `object` alone.
fn left_alone(object: &Value, annotations: &BTreeMap<String, String>) -> bool {
    annotation(object, RECONCILE_WHEN).is_some_and(|c| !reconcile_when_matches(c, annotations))
}

fn take_map(m: &mut Map<String, Value>, key: &str) -> Map<String, Value> {
    match m.remove(key) {
        Some(Value::Object(o)) => o,
        _ => Map::new(),
    }
}

fn put_map(m: &mut Map<String, Value>, key: &str, v: Map<String, Value>) {
    if !v.is_empty() {
        m.insert(key.into(), Value::Object(v));
    }
}

/// What [`FIELD_MANAGER`] applies: the rendered object in its namespace,
/// with the inventory label (not on an orphaned resource: nothing may ever
/// prune it) and the composition annotation, without the keys the
/// composition's annotations and labels set (those are the metadata
/// manager's) and without the digest annotation.
fn full_body(
    object: &Value,
    namespace: Option<&str>,
    id: &CompositionId,
    annotations: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> Value {
    let orphaned = annotation(object, ORPHANED_FROM).is_some();
    let mut o = object.clone();
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        match namespace {
            Some(ns) => {
                meta.insert("namespace".into(), json!(ns));
            }
            None => {
                meta.remove("namespace");
            }
        }
        let mut l = take_map(meta, "labels");
        for k in labels.keys() {
            l.remove(k);
        }
        l.remove(COMPOSITION_LABEL);
        if !orphaned {
            l.insert(COMPOSITION_LABEL.into(), json!(composition_label(id)));
        }
        put_map(meta, "labels", l);
        let mut a = take_map(meta, "annotations");
        for k in annotations.keys() {
            a.remove(k);
        }
        a.remove(DIGEST_ANNOTATION);
        a.insert(COMPOSITION_ANNOTATION.into(), json!(id.to_string()));
        put_map(meta, "annotations", a);
    }
    o
}

/// What [`METADATA_MANAGER`] applies: the composition's annotations (with
/// the digest) and labels, nothing else. Never the keys the body sets (the
/// composition annotation and label): the two managers must not disagree.
fn metadata_body(
    object: &Value,
    namespace: Option<&str>,
    annotations: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
    digest: &Digest,
) -> Value {
    let mut a: Map<String, Value> = annotations
        .iter()
        .filter(|(k, _)| k.as_str() != COMPOSITION_ANNOTATION)
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    a.insert(DIGEST_ANNOTATION.into(), json!(digest.to_hex()));
    let mut meta = Map::new();
    meta.insert("name".into(), object["metadata"]["name"].clone());
    if let Some(ns) = namespace {
        meta.insert("namespace".into(), json!(ns));
    }
    meta.insert("annotations".into(), Value::Object(a));
    let l: Map<String, Value> = labels
        .iter()
        .filter(|(k, _)| k.as_str() != COMPOSITION_LABEL)
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    put_map(&mut meta, "labels", l);
    json!({
        "apiVersion": object["apiVersion"],
        "kind": object["kind"],
        "metadata": meta,
    })
}

/// Both bodies in one object: what the resource looks like after both
/// applies (a dry run of a resource that does not exist yet sends this).
fn combined(body: &Value, meta: &Value) -> Value {
    let mut out = body.clone();
    for field in ["annotations", "labels"] {
        if let Some(extra) = meta["metadata"][field].as_object() {
            if let Some(m) = out.get_mut("metadata").and_then(Value::as_object_mut) {
                let mut merged = take_map(m, field);
                for (k, v) in extra {
                    merged.insert(k.clone(), v.clone());
                }
                put_map(m, field, merged);
            }
        }
    }
    out
}

/// An object without what the server populates, for diffs.
fn strip_server_fields(mut o: Value) -> Value {
    if let Some(m) = o.as_object_mut() {
        m.remove("status");
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            for f in [
                "managedFields",
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "generation",
                "selfLink",
            ] {
                meta.remove(f);
            }
        }
    }
    o
}

fn yaml(v: &Value) -> String {
    serde_yaml::to_string(v).unwrap_or_default()
}

/// The API's words for a failed request, with its reason and code.
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(r) => format!("{} ({} {})", r.message, r.code, r.reason),
        other => other.to_string(),
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(r) if r.code == code)
}

fn kube_err(resource: impl fmt::Display, e: &kube::Error) -> TargetError {
    let mut message = api_message(e);
    if is_status(e, 409) && message.contains("conflict with") {
        message.push_str(
            "; another field manager owns these fields: set `forceConflicts: true` on the \
             Target to take them over",
        );
    }
    TargetError::Kubernetes {
        resource: resource.to_string(),
        message,
    }
}

/// The health of one live object, as `kubectl rollout status` and the
/// usual conditions judge it: `Err` says why it is not healthy (yet).
pub fn health_of(object: &Value) -> Result<(), String> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    let spec = &object["spec"];
    let status = &object["status"];
    let int = |v: &Value| v.as_i64().unwrap_or(0);
    let generation = int(&object["metadata"]["generation"]);
    let observed = int(&status["observedGeneration"]);
    let condition = |t: &str| {
        status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"].as_str() == Some(t))
    };
    let is_true = |c: Option<&Value>| c.is_some_and(|c| c["status"].as_str() == Some("True"));
    match (api_version, kind) {
        ("apps/v1", "Deployment") => {
            if generation > observed {
                return Err("waiting for the rollout to be observed".into());
            }
            if condition("Progressing")
                .is_some_and(|c| c["reason"].as_str() == Some("ProgressDeadlineExceeded"))
            {
                return Err("exceeded its progress deadline".into());
            }
            let replicas = spec["replicas"].as_i64().unwrap_or(1);
            let updated = int(&status["updatedReplicas"]);
            let total = int(&status["replicas"]);
            let available = int(&status["availableReplicas"]);
            if updated < replicas {
                return Err(format!(
                    "{updated} out of {replicas} new replicas have been updated"
                ));
            }
            if total > updated {
                return Err(format!(
                    "{} old replicas are pending termination",
                    total - updated
                ));
            }
            if available < updated {
                return Err(format!(
                    "{available} of {updated} updated replicas are available"
                ));
            }
            Ok(())
        }
        ("apps/v1", "StatefulSet") => {
            if generation > observed {
                return Err("waiting for the rollout to be observed".into());
            }
            let replicas = spec["replicas"].as_i64().unwrap_or(1);
            let ready = int(&status["readyReplicas"]);
            if ready < replicas {
                return Err(format!("{ready} of {replicas} pods are ready"));
            }
            if spec["updateStrategy"]["type"].as_str() == Some("OnDelete") {
                return Ok(());
            }
            let partition = int(&spec["updateStrategy"]["rollingUpdate"]["partition"]);
            if partition > 0 {
                let updated = int(&status["updatedReplicas"]);
                if updated < replicas - partition {
                    return Err(format!(
                        "{updated} of {} partitioned pods have been updated",
                        replicas - partition
                    ));
                }
                return Ok(());
            }
            if status["updateRevision"] != status["currentRevision"] {
                return Err("waiting for the rolling update to complete".into());
            }
            Ok(())
        }
        ("apps/v1", "DaemonSet") => {
            if generation > observed {
                return Err("waiting for the rollout to be observed".into());
            }
            let desired = int(&status["desiredNumberScheduled"]);
            let updated = int(&status["updatedNumberScheduled"]);
            let available = int(&status["numberAvailable"]);
            if updated < desired {
                return Err(format!(
                    "{updated} out of {desired} new pods have been updated"
                ));
            }
            if available < desired {
                return Err(format!(
                    "{available} of {desired} updated pods are available"
                ));
            }
            Ok(())
        }
        ("batch/v1", "Job") => {
            if is_true(condition("Complete")) {
                Ok(())
            } else if let Some(c) = condition("Failed").filter(|c| is_true(Some(c))) {
                Err(format!(
                    "failed: {} {}",
                    c["reason"].as_str().unwrap_or_default(),
                    c["message"].as_str().unwrap_or_default()
                )
                .trim_end()
                .to_string())
            } else {
                Err("not complete yet".into())
            }
        }
        ("v1", "Pod") => {
            let phase = status["phase"].as_str().unwrap_or("Pending");
            if phase == "Succeeded" || is_true(condition("Ready")) {
                Ok(())
            } else {
                Err(format!("not ready (phase {phase})"))
            }
        }
        _ => match condition("Ready") {
            None => Ok(()),
            Some(c) if is_true(Some(c)) => Ok(()),
            Some(c) => Err(format!(
                "Ready is {}{}",
                c["status"].as_str().unwrap_or("Unknown"),
                c["message"]
                    .as_str()
                    .filter(|m| !m.is_empty())
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            )),
        },
    }
}

impl KubernetesTarget {
    /// Nothing is contacted until the first call. A resource not healthy
    /// `health_timeout` after its apply (by `clock`) fails the composition.
    pub fn new(
        spec: KubernetesSpec,
        health_timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> KubernetesTarget {
        KubernetesTarget {
            spec,
            health_timeout,
            clock,
            conn: tokio::sync::OnceCell::new(),
            kinds: Mutex::new(HashMap::new()),
            staged: Mutex::new(HashMap::new()),
            validated: Mutex::new(HashMap::new()),
            delivering: Mutex::new(HashMap::new()),
            gc_due: AtomicBool::new(false),
        }
    }

    /// The kubeconfig file and context when given (`KUBECONFIG` or
    /// `~/.kube/config` with a context alone), otherwise `Config::infer`
    /// (KUBECONFIG, then in-cluster). The namespace is the spec's, else the
    /// context's, else `default`.
    async fn conn(&self) -> Result<&Conn, TargetError> {
        self.conn
            .get_or_try_init(|| async {
                let what = match (&self.spec.kubeconfig, &self.spec.context) {
                    (Some(p), Some(c)) => format!("kubeconfig {p}, context {c}"),
                    (Some(p), None) => format!("kubeconfig {p}"),
                    (None, Some(c)) => format!("kubeconfig context {c}"),
                    (None, None) => "kubeconfig (inferred)".to_string(),
                };
                let fail = |message: String| TargetError::Kubernetes {
                    resource: what.clone(),
                    message,
                };
                let options = kube::config::KubeConfigOptions {
                    context: self.spec.context.clone(),
                    ..Default::default()
                };
                let config = match (&self.spec.kubeconfig, &self.spec.context) {
                    (Some(path), _) => {
                        let kc = kube::config::Kubeconfig::read_from(path)
                            .map_err(|e| fail(e.to_string()))?;
                        kube::Config::from_custom_kubeconfig(kc, &options)
                            .await
                            .map_err(|e| fail(e.to_string()))?
                    }
                    (None, Some(_)) => kube::Config::from_kubeconfig(&options)
                        .await
                        .map_err(|e| fail(e.to_string()))?,
                    (None, None) => kube::Config::infer()
                        .await
                        .map_err(|e| fail(e.to_string()))?,
                };
                let namespace = self
                    .spec
                    .namespace
                    .clone()
                    .unwrap_or_else(|| config.default_namespace.clone());
                let client = kube::Client::try_from(config).map_err(|e| fail(e.to_string()))?;
                Ok(Conn { client, namespace })
            })
            .await
    }

    /// The served kind of `apiVersion`/`kind`, or None when the cluster
    /// does not serve it (yet).
    async fn kind(&self, api_version: &str, kind: &str) -> Result<Option<Kind>, TargetError> {
        let (group, version) = split_api_version(api_version);
        let key = (group.to_string(), version.to_string(), kind.to_string());
        if let Some(k) = self.lock_kinds().get(&key) {
            return Ok(Some(k.clone()));
        }
        let conn = self.conn().await?;
        let gvk = GroupVersionKind::gvk(group, version, kind);
        match kube::discovery::pinned_kind(&conn.client, &gvk).await {
            Ok((ar, caps)) => {
                let k = Kind {
                    ar,
                    namespaced: caps.scope == Scope::Namespaced,
                };
                self.lock_kinds().insert(key, k.clone());
                Ok(Some(k))
            }
            Err(kube::Error::Discovery(_)) => Ok(None),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(kube_err(format!("discovery of {api_version} {kind}"), &e)),
        }
    }

    fn lock_kinds(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String, String), Kind>> {
        self.kinds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_validated(&self) -> std::sync::MutexGuard<'_, HashMap<CompositionId, Digest>> {
        self.validated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_delivering(&self) -> std::sync::MutexGuard<'_, HashMap<CompositionId, Vec<Digest>>> {
        self.delivering
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_staged(&self) -> std::sync::MutexGuard<'_, HashMap<CompositionId, Staged>> {
        self.staged.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn api(&self, conn: &Conn, kind: &Kind, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace.filter(|_| kind.namespaced) {
            Some(ns) => Api::namespaced_with(conn.client.clone(), ns, &kind.ar),
            None => Api::all_with(conn.client.clone(), &kind.ar),
        }
    }

    fn records(&self, conn: &Conn) -> Api<Secret> {
        Api::namespaced(conn.client.clone(), &conn.namespace)
    }

    fn record_name(id: &CompositionId) -> String {
        format!("fermata-{}", composition_label(id))
    }

    async fn read_record(&self, id: &CompositionId) -> Result<Option<Record>, TargetError> {
        let conn = self.conn().await?;
        let name = Self::record_name(id);
        let where_ = || format!("inventory record Secret {}/{name}", conn.namespace);
        let secret = match self.records(conn).get_opt(&name).await {
            Ok(secret) => secret,
            Err(e) => return Err(kube_err(where_(), &e)),
        };
        let Some(secret) = secret else {
            return Ok(None);
        };
        let data = record_data(&secret);
        if data.get("composition") != Some(&id.to_string()) {
            return Err(TargetError::Invalid(format!(
                "{}: records composition {:?}, not {id}",
                where_(),
                data.get("composition").cloned().unwrap_or_default()
            )));
        }
        let at = where_();
        Ok(Some(Record {
            applied: parse_field(&data, "applied.json", &at)?,
            staged: parse_field(&data, "staged.json", &at)?,
            pending: parse_field(&data, "pending.json", &at)?.unwrap_or_default(),
            previous: parse_field(&data, "previous.json", &at)?,
        }))
    }

    /// The record as a Secret; refused over the Secret size limit.
    fn record_object(
        &self,
        id: &CompositionId,
        record: &Record,
        namespace: &str,
    ) -> Result<Value, TargetError> {
        let mut data = BTreeMap::new();
        data.insert("composition".to_string(), id.to_string());
        if let Some(a) = &record.applied {
            data.insert("applied".into(), a.digest.to_hex());
            data.insert(
                "appliedAt".into(),
                a.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            );
            data.insert("applied.json".into(), to_json(a)?);
        }
        if let Some(s) = &record.staged {
            data.insert("staged".into(), s.digest.to_hex());
            data.insert("staged.json".into(), to_json(s)?);
        }
        if !record.pending.is_empty() {
            data.insert("pending.json".into(), to_json(&record.pending)?);
        }
        let size_of = |data: &BTreeMap<String, String>| -> usize {
            data.iter().map(|(k, v)| k.len() + v.len()).sum()
        };
        if let Some(p) = &record.previous {
            let previous = to_json(p)?;
            if size_of(&data) + previous.len() <= RECORD_LIMIT {
                data.insert("previous.json".into(), previous);
            } else {
                tracing::warn!(composition = %id, "the previous applied state does not fit in the inventory record: it cannot be rolled back to");
            }
        }
        let size = size_of(&data);
        if size > RECORD_LIMIT {
            return Err(TargetError::Invalid(format!(
                "{id}: the inventory record (Secret {namespace}/{}) would hold {size} bytes, \
                 over the 1 MiB (1048576 bytes) limit of a Secret: split the composition",
                Self::record_name(id)
            )));
        }
        let label = composition_label(id);
        let data: BTreeMap<String, ByteString> = data
            .into_iter()
            .map(|(k, v)| (k, ByteString(v.into_bytes())))
            .collect();
        Ok(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "type": RECORD_TYPE,
            "metadata": {
                "name": Self::record_name(id),
                "namespace": namespace,
                "labels": {INVENTORY_LABEL: label},
                "annotations": {COMPOSITION_ANNOTATION: id.to_string()},
            },
            // Base64, as ByteString serializes.
            "data": data,
        }))
    }

    /// Writes the record (ours alone, so forced). The inner result is the
    /// API's answer, for callers that tolerate a missing namespace.
    async fn try_write_record(
        &self,
        id: &CompositionId,
        record: &Record,
    ) -> Result<Result<(), kube::Error>, TargetError> {
        let conn = self.conn().await?;
        let object = self.record_object(id, record, &conn.namespace)?;
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        Ok(self
            .records(conn)
            .patch(&Self::record_name(id), &pp, &Patch::Apply(object))
            .await
            .map(|_| ()))
    }

    async fn write_record(&self, id: &CompositionId, record: &Record) -> Result<(), TargetError> {
        self.try_write_record(id, record)
            .await?
            .map_err(|e| kube_err(format!("inventory record of {id}"), &e))
    }

    /// The target namespace holds the inventory records: it must exist, or
    /// come with the state, before anything is written.
    async fn check_namespace(&self, planned: &[Planned<'_>]) -> Result<(), TargetError> {
        let conn = self.conn().await?;
        let ns = Ref {
            api_version: "v1".into(),
            kind: "Namespace".into(),
            namespace: None,
            name: conn.namespace.clone(),
        };
        if planned.iter().any(|p| p.live == ns) {
            return Ok(());
        }
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(conn.client.clone());
        match namespaces.get_opt(&ns.name).await {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => {}
            // Namespaces are cluster-scoped: a namespaced Role cannot read
            // them. The record's own write says it if the namespace is missing.
            Err(e) if is_status(&e, 403) => return Ok(()),
            Err(e) => return Err(kube_err(&ns, &e)),
        }
        Err(TargetError::Kubernetes {
            resource: ns.to_string(),
            message: "the target namespace does not exist; it holds the inventory record of \
                      each composition: create it, or render it in the composition"
                .into(),
        })
    }

    /// The Namespaces `planned` creates that do not exist yet: what is in
    /// them cannot be checked by a dry run before the apply.
    async fn missing_namespaces(
        &self,
        planned: &[Planned<'_>],
    ) -> Result<BTreeSet<String>, TargetError> {
        let mut out = BTreeSet::new();
        for p in planned.iter().filter(|p| p.live.rank() == 1) {
            if self.get_live(&p.live).await?.is_none() {
                out.insert(p.live.name.clone());
            }
        }
        Ok(out)
    }

    /// Resolves every resource of `r` in apply order (CRDs, Namespaces, the
    /// rest). Kinds the state's own CRDs define may be unserved yet: they
    /// resolve once those CRDs are applied.
    async fn plan<'a>(&self, r: &'a Rendered) -> Result<Vec<Planned<'a>>, TargetError> {
        let conn = self.conn().await?;
        let defined = crd_kinds(r);
        let mut out = Vec::with_capacity(r.resources.len());
        for res in &r.resources {
            let (group, version) = split_api_version(&res.key.api_version);
            let kind = self.kind(&res.key.api_version, &res.key.kind).await?;
            let namespaced = match &kind {
                Some(k) => k.namespaced,
                None => match defined.get(&(group.into(), version.into(), res.key.kind.clone())) {
                    Some(n) => *n,
                    None => {
                        return Err(TargetError::Kubernetes {
                            resource: res.key.to_string(),
                            message: format!(
                                "the cluster does not serve kind {} of {} (is its CRD installed?)",
                                res.key.kind, res.key.api_version
                            ),
                        })
                    }
                },
            };
            let namespace = namespaced.then(|| {
                res.key
                    .namespace
                    .clone()
                    .unwrap_or_else(|| conn.namespace.clone())
            });
            out.push(Planned {
                live: Ref {
                    api_version: res.key.api_version.clone(),
                    kind: res.key.kind.clone(),
                    namespace,
                    name: res.key.name.clone(),
                },
                res,
                kind,
                skipped: left_alone(&res.object, &r.annotations),
                orphaned: annotation(&res.object, ORPHANED_FROM).is_some(),
            });
        }
        out.sort_by_key(|p| p.live.rank());
        Ok(out)
    }

    fn bodies(&self, p: &Planned<'_>, r: &Rendered) -> (Value, Value) {
        let ns = p.live.namespace.as_deref();
        (
            full_body(&p.res.object, ns, &r.id, &r.annotations, &r.labels),
            metadata_body(&p.res.object, ns, &r.annotations, &r.labels, &r.digest),
        )
    }

    fn patch_params(&self, manager: &str, force: bool, dry_run: bool) -> PatchParams {
        let mut pp = PatchParams::apply(manager);
        if force {
            pp = pp.force();
        }
        if dry_run {
            pp = pp.dry_run();
        }
        pp
    }

    /// The applies of one resource: the body when it changed (or is new),
    /// then the metadata. A dry run of a new resource sends both as one
    /// object, since a dry-run create is not there for the second request.
    /// Returns whether the body was sent.
    async fn apply_one(
        &self,
        p: &Planned<'_>,
        r: &Rendered,
        previous: Option<&AppliedResource>,
        dry_run: bool,
    ) -> Result<bool, TargetError> {
        let Some(kind) = &p.kind else {
            return Ok(false);
        };
        let conn = self.conn().await?;
        let api = self.api(conn, kind, p.live.namespace.as_deref());
        let (body, meta) = self.bodies(p, r);
        let force = self.spec.force_conflicts;
        let known = previous.is_some_and(|a| a.live.as_ref() == Some(&p.live) && a.body.is_some());
        let body_changed = !known || previous.and_then(|a| a.body) != Some(component_sha(&body));
        let name = &p.live.name;
        if dry_run && !known {
            let exists = match api.get_opt(name).await {
                Ok(o) => o.is_some(),
                Err(e) => return Err(kube_err(&p.live, &e)),
            };
            if !exists {
                let pp = self.patch_params(FIELD_MANAGER, force, true);
                api.patch(name, &pp, &Patch::Apply(combined(&body, &meta)))
                    .await
                    .map_err(|e| kube_err(&p.live, &e))?;
                return Ok(true);
            }
        }
        if body_changed {
            let pp = self.patch_params(FIELD_MANAGER, force, dry_run);
            api.patch(name, &pp, &Patch::Apply(&body))
                .await
                .map_err(|e| kube_err(&p.live, &e))?;
        }
        let pp = self.patch_params(METADATA_MANAGER, false, dry_run);
        api.patch(name, &pp, &Patch::Apply(&meta))
            .await
            .map_err(|e| kube_err(&p.live, &e))?;
        Ok(body_changed)
    }

    async fn get_live(&self, r: &Ref) -> Result<Option<Value>, TargetError> {
        let Some(kind) = self.kind(&r.api_version, &r.kind).await? else {
            return Ok(None);
        };
        let conn = self.conn().await?;
        let api = self.api(conn, &kind, r.namespace.as_deref());
        match api.get_opt(&r.name).await {
            Ok(Some(o)) => Ok(Some(to_value(&o))),
            Ok(None) => Ok(None),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(kube_err(r, &e)),
        }
    }

    /// Whether the live object of `r` may be deleted by composition `id`:
    /// it exists, is not orphaned, and no other composition took it over.
    async fn deletable(&self, r: &Ref, id: &CompositionId) -> Result<bool, TargetError> {
        let Some(live) = self.get_live(r).await? else {
            return Ok(false);
        };
        if annotation(&live, ORPHANED_FROM).is_some() {
            return Ok(false);
        }
        let owner = annotation(&live, COMPOSITION_ANNOTATION);
        Ok(owner.is_none_or(|o| o == id.to_string()))
    }

    async fn delete_live(&self, r: &Ref) -> Result<(), TargetError> {
        let Some(kind) = self.kind(&r.api_version, &r.kind).await? else {
            return Ok(());
        };
        let conn = self.conn().await?;
        let api = self.api(conn, &kind, r.namespace.as_deref());
        match api.delete(&r.name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(kube_err(r, &e)),
        }
    }

    /// The applied state `apply` would record (before `at` and the bodies
    /// actually sent are known).
    fn applied_state(
        &self,
        desired: &Desired,
        planned: &[Planned<'_>],
        previous: Option<&AppliedState>,
        inventory: Vec<Ref>,
        at: DateTime<Utc>,
    ) -> AppliedState {
        let r = &desired.rendered;
        let old: HashMap<String, &AppliedResource> = previous
            .map(|a| {
                a.resources
                    .iter()
                    .filter_map(|x| {
                        Some((Resource::new(x.object.clone()).ok()?.key.to_string(), x))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let by_key: HashMap<String, &Planned<'_>> =
            planned.iter().map(|p| (p.res.key.to_string(), p)).collect();
        let resources = r
            .resources
            .iter()
            .map(|res| {
                let key = res.key.to_string();
                match by_key.get(&key) {
                    Some(p) if p.skipped => AppliedResource {
                        object: res.object.clone(),
                        live: old.get(&key).and_then(|a| a.live.clone()),
                        body: old.get(&key).and_then(|a| a.body),
                    },
                    Some(p) => AppliedResource {
                        object: res.object.clone(),
                        live: Some(p.live.clone()),
                        body: Some(component_sha(&self.bodies(p, r).0)),
                    },
                    None => AppliedResource {
                        object: res.object.clone(),
                        live: None,
                        body: None,
                    },
                }
            })
            .collect();
        AppliedState {
            digest: r.digest,
            at,
            source: desired.source.clone(),
            annotations: r.annotations.clone(),
            labels: r.labels.clone(),
            resources,
            artifacts: r
                .artifacts
                .iter()
                .map(|a| ArtifactRecord {
                    name: a.name.clone(),
                    sha256: a.sha256,
                    size: a.size,
                })
                .collect(),
            inventory,
        }
    }

    fn staged_of(r: &Rendered) -> Staged {
        Staged {
            digest: r.digest,
            components: r
                .resources
                .iter()
                .map(|x| (x.key.to_string(), component_sha(&x.object)))
                .collect(),
            artifacts: Some(r.artifacts.iter().map(|a| a.sha256).collect()),
        }
    }

    /// The inventory after applying `planned`: what it applies (not
    /// orphaned), what it leaves alone that was managed before.
    fn inventory_of(planned: &[Planned<'_>], previous: Option<&AppliedState>) -> Vec<Ref> {
        let before: BTreeSet<&Ref> = previous
            .map(|a| a.inventory.iter().collect())
            .unwrap_or_default();
        planned
            .iter()
            .filter(|p| !p.orphaned && (!p.skipped || before.contains(&p.live)))
            .map(|p| p.live.clone())
            .collect()
    }

    async fn stage(&self, desired: &Desired) -> Result<Outcome, TargetError> {
        let r = &desired.rendered;
        let existing = self.read_record(&r.id).await?;
        let first = existing.is_none();
        let record = existing.unwrap_or_default();
        let staged = match &record.staged {
            Some(s) => Some(s.digest),
            None => self.lock_staged().get(&r.id).map(|s| s.digest),
        };
        if staged == Some(r.digest) {
            return Ok(Outcome::default());
        }
        if self.lock_validated().get(&r.id) != Some(&r.digest) {
            self.validate(desired, &record, first).await?;
            self.lock_validated().insert(r.id.clone(), r.digest);
        }
        if let Some(waiting) = self.prepare(desired).await? {
            return Ok(Outcome {
                changed: true,
                diff: None,
                staging: Some(waiting),
            });
        }
        self.lock_validated().remove(&r.id);
        let staged = Self::staged_of(r);
        let record = Record {
            staged: Some(staged.clone()),
            ..record
        };
        match self.try_write_record(&r.id, &record).await? {
            Ok(()) => {
                self.lock_staged().remove(&r.id);
            }
            Err(e) if is_status(&e, 404) => {
                tracing::debug!(composition = %r.id, "target namespace missing: the stage is kept in memory");
                self.lock_staged().insert(r.id.clone(), staged);
            }
            Err(e) => return Err(kube_err(format!("inventory record of {}", r.id), &e)),
        }
        // The record (or the in-memory stage) lists the artifacts now.
        self.lock_delivering().remove(&r.id);
        Ok(Outcome {
            changed: true,
            ..Outcome::default()
        })
    }

    /// The server-side dry run of every resource, and the record an apply
    /// would write checked against the Secret limit: what can be refused
    /// before the window is refused now.
    async fn validate(
        &self,
        desired: &Desired,
        record: &Record,
        first: bool,
    ) -> Result<(), TargetError> {
        let r = &desired.rendered;
        let planned = self.plan(r).await?;
        if first {
            self.check_namespace(&planned).await?;
        }
        let previous = record.applied.as_ref();
        // The record an apply would write must fit: refuse now, not in the window.
        let conn = self.conn().await?;
        let after = Record {
            applied: Some(self.applied_state(
                desired,
                &planned,
                previous,
                Self::inventory_of(&planned, previous),
                self.clock.now(),
            )),
            staged: Some(Self::staged_of(r)),
            pending: Vec::new(),
            previous: None,
        };
        self.record_object(&r.id, &after, &conn.namespace)?;
        let missing = self.missing_namespaces(&planned).await?;
        for p in planned.iter().filter(|p| !p.skipped) {
            if p.live
                .namespace
                .as_ref()
                .is_some_and(|ns| missing.contains(ns))
            {
                continue;
            }
            let prev = previous.and_then(|a| {
                a.resources
                    .iter()
                    .find(|x| x.live.as_ref() == Some(&p.live))
            });
            self.apply_one(p, r, prev, true).await?;
        }
        Ok(())
    }

    /// What staging does on the cluster beyond the dry run: images pulled
    /// onto the nodes ([`prepull`]), artifacts written to the claim. What
    /// it still waits for, if anything.
    async fn prepare(&self, desired: &Desired) -> Result<Option<String>, TargetError> {
        let mut waiting = Vec::new();
        waiting.extend(self.pre_pull(&desired.rendered).await?);
        waiting.extend(self.deliver(&desired.rendered).await?);
        Ok((!waiting.is_empty()).then(|| waiting.join("; ")))
    }

    /// One step of the delivery of artifacts to the claim (see
    /// [`deliver`]): records and deletes Jobs that completed, fails on one
    /// that failed, starts the missing ones. `Some`: still delivering.
    async fn deliver(&self, r: &Rendered) -> Result<Option<String>, TargetError> {
        let Some(spec) = &self.spec.artifacts else {
            return Ok(None);
        };
        if r.artifacts.is_empty() {
            return Ok(None);
        }
        self.lock_delivering()
            .insert(r.id.clone(), r.artifacts.iter().map(|a| a.sha256).collect());
        let conn = self.conn().await?;
        let ns = &conn.namespace;
        let gc = self.follow_gc(conn, spec).await?;
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(conn.client.clone(), ns);
        match claims.get_opt(&spec.claim).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(TargetError::Kubernetes {
                    resource: format!("PersistentVolumeClaim {ns}/{}", spec.claim),
                    message: "does not exist: the Target's artifacts go to this claim; create it"
                        .into(),
                })
            }
            Err(e) => {
                return Err(kube_err(
                    format!("PersistentVolumeClaim {ns}/{}", spec.claim),
                    &e,
                ))
            }
        }
        let ledgers: Api<ConfigMap> = Api::namespaced(conn.client.clone(), ns);
        let ledger = deliver::ledger_name(&spec.claim);
        // What a failed GC Job may have removed is fetched again (a whole
        // file is kept); what a running one removes is waited for.
        let delivered = ledger_keys(&ledgers, ns, &ledger).await?;
        let jobs: Api<Job> = Api::namespaced(conn.client.clone(), ns);
        let pods: Api<Pod> = Api::namespaced(conn.client.clone(), ns);
        let mut waiting = Vec::new();
        let mut failures = Vec::new();
        let mut collecting = Vec::new();
        for a in r
            .artifacts
            .iter()
            .filter(|a| !delivered.contains(&a.sha256.to_hex()) || gc.failed.contains(&a.sha256))
        {
            if gc.running.contains(&a.sha256) {
                collecting.push(a.name.clone());
                continue;
            }
            let name = deliver::job_name(&spec.claim, &a.sha256);
            let job = jobs
                .get_opt(&name)
                .await
                .map_err(|e| kube_err(format!("Job {ns}/{name}"), &e))?;
            let Some(job) = job else {
                let object = deliver::job_object(spec, a, ns).map_err(TargetError::Invalid)?;
                let job: Job = serde_json::from_value(object)
                    .map_err(|e| TargetError::Invalid(format!("Job {name}: {e}")))?;
                match jobs.create(&PostParams::default(), &job).await {
                    Ok(_) => {
                        tracing::info!(composition = %r.id, artifact = %a.name, claim = %spec.claim, "delivering")
                    }
                    Err(e) if is_status(&e, 409) => {}
                    Err(e) => return Err(kube_err(format!("Job {ns}/{name}"), &e)),
                }
                waiting.push(a.name.clone());
                continue;
            };
            match Self::job_state(&pods, &job).await {
                deliver::JobState::Running => waiting.push(a.name.clone()),
                deliver::JobState::Failed(why) => {
                    failures.push(deliver::failure_message(a, &spec.claim, &why));
                }
                deliver::JobState::Done => {
                    self.record_delivered(&ledgers, &ledger, a).await?;
                    match jobs.delete(&name, &DeleteParams::background()).await {
                        Ok(_) => {}
                        Err(e) if is_status(&e, 404) => {}
                        Err(e) => return Err(kube_err(format!("Job {ns}/{name}"), &e)),
                    }
                    tracing::info!(composition = %r.id, artifact = %a.name, claim = %spec.claim, "delivered");
                }
            }
        }
        if !failures.is_empty() {
            return Err(TargetError::Kubernetes {
                resource: format!("artifacts of {}", r.id),
                message: failures.join("; "),
            });
        }
        let mut says = Vec::new();
        if !waiting.is_empty() {
            says.push(format!(
                "delivering artifact(s) {} to claim {}",
                waiting.join(", "),
                spec.claim
            ));
        }
        if !collecting.is_empty() {
            says.push(format!(
                "artifact(s) {} wait for the garbage collection on claim {} to end",
                collecting.join(", "),
                spec.claim
            ));
        }
        Ok((!says.is_empty()).then(|| says.join("; ")))
    }

    /// Where `job` stands, with its pods' termination messages.
    async fn job_state(pods: &Api<Pod>, job: &Job) -> deliver::JobState {
        let name = job.metadata.name.clone().unwrap_or_default();
        let job_value = serde_json::to_value(job).unwrap_or(Value::Null);
        let own_pods: Vec<Value> = match pods
            .list(&ListParams::default().labels(&format!("job-name={name}")))
            .await
        {
            Ok(list) => list
                .items
                .iter()
                .filter_map(|p| serde_json::to_value(p).ok())
                .collect(),
            Err(_) => Vec::new(),
        };
        deliver::job_state(&job_value, &own_pods)
    }

    /// Follows the claim's GC Jobs (see [`deliver`]): one that completed
    /// has its digests removed from the ledger and is deleted; one that
    /// failed is logged and kept. What the others remove, or may have.
    async fn follow_gc(
        &self,
        conn: &Conn,
        spec: &crate::model::types::ClaimSpec,
    ) -> Result<GcJobs, TargetError> {
        let ns = &conn.namespace;
        let jobs: Api<Job> = Api::namespaced(conn.client.clone(), ns);
        let pods: Api<Pod> = Api::namespaced(conn.client.clone(), ns);
        let ledgers: Api<ConfigMap> = Api::namespaced(conn.client.clone(), ns);
        let ledger = deliver::ledger_name(&spec.claim);
        let lp = ListParams::default().labels(&format!("{}={}", deliver::GC_LABEL, spec.claim));
        let list = jobs
            .list(&lp)
            .await
            .map_err(|e| kube_err(format!("GC Jobs of claim {ns}/{}", spec.claim), &e))?;
        let mut out = GcJobs::default();
        for job in &list.items {
            let name = job.metadata.name.clone().unwrap_or_default();
            let value = serde_json::to_value(job).unwrap_or(Value::Null);
            let Some(digests) = deliver::gc_job_digests(&value) else {
                tracing::warn!(job = %name, claim = %spec.claim, "a GC Job without a list of digests: left alone");
                continue;
            };
            match Self::job_state(&pods, job).await {
                deliver::JobState::Running => out.running.extend(digests),
                deliver::JobState::Failed(why) => {
                    tracing::warn!(job = %name, claim = %spec.claim, "garbage collection failed (the files stay recorded; it is tried again when the Job expires): {why}");
                    out.failed.extend(digests);
                }
                deliver::JobState::Done => {
                    let patch = deliver::forget_patch(&digests);
                    match ledgers
                        .patch(&ledger, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if is_status(&e, 404) => {}
                        Err(e) => return Err(kube_err(format!("ConfigMap {ns}/{ledger}"), &e)),
                    }
                    match jobs.delete(&name, &DeleteParams::background()).await {
                        Ok(_) => {}
                        Err(e) if is_status(&e, 404) => {}
                        Err(e) => return Err(kube_err(format!("Job {ns}/{name}"), &e)),
                    }
                    tracing::info!(claim = %spec.claim, removed = digests.len(), "garbage collected");
                }
            }
        }
        Ok(out)
    }

    /// What the claim must keep ([`deliver::keep_set`]), read now: every
    /// inventory record of the namespace, the stages in memory, the
    /// deliveries under way. `None`: unknown, collect nothing.
    async fn keep_set(
        &self,
        conn: &Conn,
        spec: &crate::model::types::ClaimSpec,
    ) -> Result<Option<BTreeSet<Digest>>, TargetError> {
        let ns = &conn.namespace;
        let lp = ListParams::default().labels(INVENTORY_LABEL);
        let list = self
            .records(conn)
            .list(&lp)
            .await
            .map_err(|e| kube_err(format!("inventory records in namespace {ns}"), &e))?;
        let mut records = Vec::new();
        for secret in &list.items {
            let data = record_data(secret);
            let at = format!(
                "inventory record Secret {ns}/{}",
                secret.metadata.name.clone().unwrap_or_default()
            );
            let digests = |s: Option<AppliedState>| -> Vec<Digest> {
                s.map(|a| a.artifacts.iter().map(|x| x.sha256).collect())
                    .unwrap_or_default()
            };
            let staged: Option<Staged> = parse_field(&data, "staged.json", &at)?;
            records.push(deliver::RecordArtifacts {
                applied: digests(parse_field(&data, "applied.json", &at)?),
                previous: digests(parse_field(&data, "previous.json", &at)?),
                staged_unknown: staged.as_ref().is_some_and(|s| s.artifacts.is_none()),
                staged: staged.and_then(|s| s.artifacts).unwrap_or_default(),
            });
        }
        for s in self.lock_staged().values() {
            records.push(deliver::RecordArtifacts {
                staged: s.artifacts.clone().unwrap_or_default(),
                staged_unknown: s.artifacts.is_none(),
                ..Default::default()
            });
        }
        let mut busy: Vec<Digest> = self.lock_delivering().values().flatten().copied().collect();
        let jobs: Api<Job> = Api::namespaced(conn.client.clone(), ns);
        let lp = ListParams::default().labels(&format!("{}={}", deliver::JOB_LABEL, spec.claim));
        let fetching = jobs
            .list(&lp)
            .await
            .map_err(|e| kube_err(format!("delivery Jobs of claim {ns}/{}", spec.claim), &e))?;
        busy.extend(fetching.items.iter().filter_map(|j| {
            j.metadata
                .annotations
                .as_ref()?
                .get("fermata.dev/sha256")?
                .parse::<Digest>()
                .ok()
        }));
        Ok(deliver::keep_set(&records, busy))
    }

    /// Starts the removal of the claim's garbage, when no GC Job runs:
    /// the keep set is read last, right before the Job is created, and no
    /// digest in it is ever in the Job. Not waited for.
    async fn collect_garbage(&self) -> Result<(), TargetError> {
        let Some(spec) = &self.spec.artifacts else {
            return Ok(());
        };
        let conn = self.conn().await?;
        let ns = &conn.namespace;
        if !self.follow_gc(conn, spec).await?.running.is_empty() {
            return Ok(());
        }
        let ledgers: Api<ConfigMap> = Api::namespaced(conn.client.clone(), ns);
        let ledger = deliver::ledger_name(&spec.claim);
        let recorded = ledger_keys(&ledgers, ns, &ledger).await?;
        if recorded.is_empty() {
            return Ok(());
        }
        let Some(keep) = self.keep_set(conn, spec).await? else {
            tracing::debug!(claim = %spec.claim, "a staged state does not list its artifacts: nothing is collected");
            return Ok(());
        };
        let garbage = deliver::garbage(&recorded, &keep);
        if garbage.is_empty() {
            return Ok(());
        }
        let name = deliver::gc_job_name(&spec.claim, &garbage);
        let job: Job = serde_json::from_value(deliver::gc_job_object(spec, &garbage, ns))
            .map_err(|e| TargetError::Invalid(format!("Job {name}: {e}")))?;
        let jobs: Api<Job> = Api::namespaced(conn.client.clone(), ns);
        match jobs.create(&PostParams::default(), &job).await {
            Ok(_) => {
                tracing::info!(claim = %spec.claim, job = %name, digests = garbage.len(), "collecting garbage")
            }
            // The same garbage's Job is there (failed, kept until it expires).
            Err(e) if is_status(&e, 409) => {}
            Err(e) => return Err(kube_err(format!("Job {ns}/{name}"), &e)),
        }
        Ok(())
    }

    /// [`Self::collect_garbage`], best effort: it never fails the caller.
    async fn collect_garbage_logged(&self) {
        if let Err(e) = self.collect_garbage().await {
            tracing::warn!("garbage collection of the artifact claim: {e}");
        }
    }

    /// Adds `a` to the claim's ledger, by merge patch: other keys stay.
    async fn record_delivered(
        &self,
        ledgers: &Api<ConfigMap>,
        ledger: &str,
        a: &crate::model::Artifact,
    ) -> Result<(), TargetError> {
        let size = a.size.map(|s| s.to_string()).unwrap_or_default();
        let patch = json!({"data": {a.sha256.to_hex(): size}});
        let where_ = || format!("ConfigMap {ledger}");
        match ledgers
            .patch(ledger, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(kube_err(where_(), &e)),
        }
        let cm: ConfigMap = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": ledger, "labels": {deliver::JOB_LABEL: "ledger"}},
            "data": {a.sha256.to_hex(): size},
        }))
        .map_err(|e| TargetError::Invalid(format!("{}: {e}", where_())))?;
        match ledgers.create(&PostParams::default(), &cm).await {
            Ok(_) => Ok(()),
            // Another composition created it first: add to it.
            Err(e) if is_status(&e, 409) => ledgers
                .patch(ledger, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
                .map_err(|e| kube_err(where_(), &e)),
            Err(e) => Err(kube_err(where_(), &e)),
        }
    }

    /// Every pre-pull Pod of `id`, whatever digest it pulled for.
    async fn delete_pull_pods(&self, id: &CompositionId) -> Result<(), TargetError> {
        let conn = self.conn().await?;
        let pods_api: Api<Pod> = Api::namespaced(conn.client.clone(), &conn.namespace);
        let lp = ListParams::default().labels(&format!(
            "{}={}",
            prepull::PREPULL_LABEL,
            composition_label(id)
        ));
        let pods = match pods_api.list(&lp).await {
            Ok(list) => list.items,
            Err(e) if is_status(&e, 404) || is_status(&e, 403) => return Ok(()),
            Err(e) => return Err(kube_err(format!("pre-pull Pods of {id}"), &e)),
        };
        for name in pods.iter().filter_map(|p| p.metadata.name.as_deref()) {
            match pods_api.delete(name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) => {}
                Err(e) => return Err(kube_err(format!("pre-pull Pod {name}"), &e)),
            }
        }
        Ok(())
    }

    /// One step of the pre-pull (see [`prepull`]): cleans up, fails on a
    /// pull that failed, starts the next batches. `Some`: still pulling.
    async fn pre_pull(&self, r: &Rendered) -> Result<Option<String>, TargetError> {
        if !self.spec.pre_pull.enabled {
            return Ok(None);
        }
        let workloads: Vec<prepull::Workload> = r
            .resources
            .iter()
            .filter(|x| !left_alone(&x.object, &r.annotations))
            .filter_map(|x| prepull::workload_of(&x.object))
            .collect();
        let conn = self.conn().await?;
        let label = composition_label(&r.id);
        let pods_api: Api<Pod> = Api::namespaced(conn.client.clone(), &conn.namespace);
        let where_pods = || format!("pre-pull Pods in namespace {}", conn.namespace);
        let lp = ListParams::default().labels(&format!("{}={label}", prepull::PREPULL_LABEL));
        let pods: Vec<prepull::PullPod> = match pods_api.list(&lp).await {
            Ok(list) => list
                .items
                .iter()
                .filter_map(|p| prepull::PullPod::from_object(&serde_json::to_value(p).ok()?))
                .collect(),
            Err(e) if is_status(&e, 404) => Vec::new(),
            Err(e) => return Err(kube_err(where_pods(), &e)),
        };
        if workloads.is_empty() && pods.is_empty() {
            return Ok(None);
        }
        let nodes: Vec<prepull::Node> = if workloads.is_empty() {
            Vec::new()
        } else {
            let nodes_api: Api<Node> = Api::all(conn.client.clone());
            match nodes_api.list(&ListParams::default()).await {
                Ok(list) => list
                    .items
                    .iter()
                    .filter_map(|n| serde_json::to_value(n).ok())
                    .map(|n| prepull::Node::from_object(&n))
                    .collect(),
                Err(e) => {
                    let mut err = kube_err("nodes", &e);
                    if let TargetError::Kubernetes { message, .. } = &mut err {
                        message.push_str(
                            "; pre-pulling images needs `list` on nodes: grant it, or set \
                             `prePull: {enabled: false}` on the Target",
                        );
                    }
                    return Err(err);
                }
            }
        };
        let missing = prepull::missing(&workloads, &nodes);
        let max = self
            .spec
            .pre_pull
            .max_per_node
            .unwrap_or(prepull::DEFAULT_MAX_PER_NODE);
        let step = prepull::step(&label, &r.digest, &missing, &pods, max);
        for name in &step.delete {
            match pods_api.delete(name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) => {}
                Err(e) => return Err(kube_err(format!("pre-pull Pod {name}"), &e)),
            }
        }
        if !step.failed.is_empty() {
            return Err(TargetError::Kubernetes {
                resource: format!("pre-pull of {}", r.id),
                message: prepull::failure_message(&step.failed),
            });
        }
        for p in &step.create {
            let object = prepull::pod_object(p, &conn.namespace, &label, &r.digest);
            let pod: Pod = serde_json::from_value(object)
                .map_err(|e| TargetError::Invalid(format!("pre-pull Pod {}: {e}", p.name)))?;
            match pods_api.create(&PostParams::default(), &pod).await {
                Ok(_) => {
                    tracing::info!(composition = %r.id, node = %p.node, images = %p.images.join(","), "pre-pulling");
                }
                Err(e) if is_status(&e, 409) => {}
                // The namespace comes with the composition: nothing can be
                // pulled in it before the apply creates it.
                Err(e) if is_status(&e, 404) => {
                    tracing::debug!(composition = %r.id, "target namespace missing: images are pulled at apply");
                    return Ok(None);
                }
                Err(e) => return Err(kube_err(format!("pre-pull Pod {}", p.name), &e)),
            }
        }
        Ok((!step.done()).then(|| prepull::pending_message(&step.pending)))
    }

    async fn apply_now(&self, desired: &Desired) -> Result<Outcome, TargetError> {
        let r = &desired.rendered;
        let id = &r.id;
        let existing = self.read_record(id).await?;
        let first = existing.is_none();
        let record = existing.unwrap_or_default();
        let prev = record.applied.as_ref();
        if prev.is_some_and(|a| a.digest == r.digest) && record.pending.is_empty() {
            if record.staged.as_ref().is_some_and(|s| s.digest == r.digest) {
                return Ok(Outcome::default());
            }
            let record = Record {
                staged: Some(Self::staged_of(r)),
                ..record.clone()
            };
            self.write_record(id, &record).await?;
            return Ok(Outcome {
                changed: true,
                ..Outcome::default()
            });
        }
        let mut planned = self.plan(r).await?;
        if first {
            self.check_namespace(&planned).await?;
        }
        let find_prev = |p: &Planned<'_>| {
            prev.and_then(|a| {
                a.resources
                    .iter()
                    .find(|x| x.live.as_ref() == Some(&p.live))
            })
        };
        // The final record must fit: refused before any write.
        let conn = self.conn().await?;
        let inventory = Self::inventory_of(&planned, prev);
        let check = Record {
            applied: Some(self.applied_state(
                desired,
                &planned,
                prev,
                inventory.clone(),
                self.clock.now(),
            )),
            staged: Some(Self::staged_of(r)),
            pending: Vec::new(),
            previous: None,
        };
        self.record_object(id, &check, &conn.namespace)?;

        let mut wrote = false;
        // CRDs and Namespaces first: then the kinds of those CRDs resolve,
        // and the namespaces (the record's too) exist.
        for p in planned.iter().filter(|p| p.live.rank() < 2 && !p.skipped) {
            wrote |= self.apply_one(p, r, find_prev(p), false).await?;
        }
        if planned.iter().any(|p| p.live.rank() == 0 && !p.skipped) {
            self.lock_kinds().clear();
            self.resolve_new_kinds(&mut planned).await?;
        }
        // Before anything else is created, the record lists it: a crash from
        // here on leaves every resource known to prune and delete.
        let known: BTreeSet<&Ref> = prev
            .map(|a| a.inventory.iter())
            .into_iter()
            .flatten()
            .chain(record.pending.iter())
            .collect();
        let mut pending: Vec<Ref> = record.pending.clone();
        pending.extend(inventory.iter().filter(|x| !known.contains(x)).cloned());
        if pending.len() > record.pending.len() {
            let rec = Record {
                pending,
                ..record.clone()
            };
            self.write_record(id, &rec).await?;
        }
        for p in planned.iter().filter(|p| p.live.rank() == 2 && !p.skipped) {
            wrote |= self.apply_one(p, r, find_prev(p), false).await?;
        }

        // Prune what was managed (or pending) and is no longer desired.
        let keep: BTreeSet<&Ref> = planned.iter().map(|p| &p.live).collect();
        let mut gone: Vec<&Ref> = known
            .iter()
            .copied()
            .filter(|x| !keep.contains(x))
            .collect();
        gone.sort_by_key(|x| std::cmp::Reverse(x.rank()));
        let mut retained: Vec<Ref> = Vec::new();
        for old in gone {
            let object = prev.and_then(|a| a.object_of(old));
            if object.is_some_and(|o| left_alone(o, &r.annotations)) {
                retained.push(old.clone());
                continue;
            }
            if self.deletable(old, id).await? {
                self.delete_live(old).await?;
                wrote = true;
                tracing::info!(composition = %id, resource = %old, "pruned");
            }
        }
        let mut inventory = inventory;
        inventory.extend(retained);
        inventory.sort();
        inventory.dedup();
        // A metadata-only change does not restart the health timeout.
        let at = match prev {
            Some(a) if !wrote => a.at,
            _ => self.clock.now(),
        };
        let previous = match prev {
            Some(a) if a.digest != r.digest => Some(a.clone()),
            _ => record.previous.clone(),
        };
        let record = Record {
            applied: Some(self.applied_state(desired, &planned, prev, inventory, at)),
            staged: Some(Self::staged_of(r)),
            pending: Vec::new(),
            previous,
        };
        self.write_record(id, &record).await?;
        self.lock_staged().remove(id);
        tracing::info!(composition = %id, digest = %r.digest.short(), "applied");
        Ok(Outcome {
            changed: true,
            ..Outcome::default()
        })
    }

    /// After its CRDs are applied, the kinds they define must be served
    /// before their objects can be sent: bounded wait for discovery.
    async fn resolve_new_kinds(&self, planned: &mut [Planned<'_>]) -> Result<(), TargetError> {
        let deadline = tokio::time::Instant::now() + CRD_WAIT;
        for p in planned.iter_mut().filter(|p| p.kind.is_none()) {
            loop {
                if let Some(k) = self.kind(&p.live.api_version, &p.live.kind).await? {
                    p.kind = Some(k);
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(TargetError::Kubernetes {
                        resource: p.live.to_string(),
                        message: format!(
                            "kind {} of {} is still not served {}s after its CRD was applied",
                            p.live.kind,
                            p.live.api_version,
                            CRD_WAIT.as_secs()
                        ),
                    });
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        Ok(())
    }

    /// A plan: per resource `+` created, `~` changed (with a field-level
    /// diff of live against what a dry-run apply returns), `-` pruned,
    /// `=` left alone by `reconcile-when`. Writes nothing.
    async fn dry_run(&self, desired: &Desired) -> Result<Outcome, TargetError> {
        let r = &desired.rendered;
        let record = self.read_record(&r.id).await?.unwrap_or_default();
        let prev = record.applied.as_ref();
        if prev.is_some_and(|a| a.digest == r.digest) {
            return Ok(Outcome::default());
        }
        let planned = self.plan(r).await?;
        let mut out = String::new();
        let from = prev.map_or("nothing applied".to_string(), |a| {
            format!("applied {}", a.digest.short())
        });
        let _ = writeln!(out, "{}: {from} -> desired {}", r.id, r.digest.short());
        let mut diffs = String::new();
        let mut changed = prev.is_none();
        let missing = self.missing_namespaces(&planned).await?;
        for p in &planned {
            if p.skipped {
                let _ = writeln!(out, "  = {} (left alone: reconcile-when)", p.live);
                continue;
            }
            let live = match &p.kind {
                Some(_) => self.get_live(&p.live).await?,
                None => None,
            };
            let (body, meta) = self.bodies(p, r);
            let predicted = match (&p.kind, &live) {
                (Some(kind), Some(_)) => {
                    let conn = self.conn().await?;
                    let api = self.api(conn, kind, p.live.namespace.as_deref());
                    let pp = self.patch_params(FIELD_MANAGER, self.spec.force_conflicts, true);
                    let o = api
                        .patch(&p.live.name, &pp, &Patch::Apply(&body))
                        .await
                        .map_err(|e| kube_err(&p.live, &e))?;
                    overlay_metadata(to_value(&o), prev, &meta)
                }
                (Some(kind), None)
                    if !p
                        .live
                        .namespace
                        .as_ref()
                        .is_some_and(|ns| missing.contains(ns)) =>
                {
                    let conn = self.conn().await?;
                    let api = self.api(conn, kind, p.live.namespace.as_deref());
                    let pp = self.patch_params(FIELD_MANAGER, self.spec.force_conflicts, true);
                    let o = api
                        .patch(&p.live.name, &pp, &Patch::Apply(combined(&body, &meta)))
                        .await
                        .map_err(|e| kube_err(&p.live, &e))?;
                    to_value(&o)
                }
                // Its kind or namespace comes with this state: as sent.
                _ => combined(&body, &meta),
            };
            let old_text = live
                .clone()
                .map(strip_server_fields)
                .map(|v| yaml(&v))
                .unwrap_or_default();
            let new_text = yaml(&strip_server_fields(predicted));
            let mark = match &live {
                None => '+',
                Some(_) if old_text != new_text => '~',
                Some(_) => continue,
            };
            changed = true;
            let _ = writeln!(out, "  {mark} {}", p.live);
            let name = p.live.to_string();
            let text = similar::TextDiff::from_lines(&old_text, &new_text);
            let _ = write!(
                diffs,
                "{}",
                text.unified_diff()
                    .context_radius(3)
                    .header(&format!("live/{name}"), &format!("desired/{name}"))
            );
        }
        let keep: BTreeSet<&Ref> = planned.iter().map(|p| &p.live).collect();
        for old in prev.map(|a| a.inventory.iter()).into_iter().flatten() {
            if keep.contains(old) {
                continue;
            }
            let object = prev.and_then(|a| a.object_of(old));
            if object.is_some_and(|o| left_alone(o, &r.annotations)) {
                let _ = writeln!(out, "  = {old} (left alone: reconcile-when)");
            } else if self.deletable(old, &r.id).await? {
                changed = true;
                let _ = writeln!(out, "  - {old}");
            }
        }
        let empty = BTreeMap::new();
        let (old_ann, old_lab) = prev.map_or((&empty, &empty), |a| (&a.annotations, &a.labels));
        changed |= map_diff(&mut out, "annotations", old_ann, &r.annotations);
        changed |= map_diff(&mut out, "labels", old_lab, &r.labels);
        out.push_str(&diffs);
        Ok(Outcome {
            changed,
            diff: Some(out),
            staging: None,
        })
    }

    async fn observe(&self, id: &CompositionId) -> Result<Observed, TargetError> {
        let record = self.read_record(id).await?.unwrap_or_default();
        let staged = record
            .staged
            .clone()
            .or_else(|| self.lock_staged().get(id).cloned());
        let Some(applied) = record.applied else {
            return Ok(Observed {
                staged: staged.as_ref().map(|s| s.digest),
                components: staged
                    .iter()
                    .flat_map(|s| s.components.iter())
                    .map(|(name, _)| Component {
                        name: name.clone(),
                        flag: StateFlag::Staged,
                    })
                    .collect(),
                health: Some(Health::Unknown),
                ..Observed::default()
            });
        };
        let mut flags: BTreeMap<String, StateFlag> = BTreeMap::new();
        let mut shas: HashMap<String, Digest> = HashMap::new();
        for a in &applied.resources {
            if let Ok(res) = Resource::new(a.object.clone()) {
                flags.insert(res.key.to_string(), StateFlag::Applied);
                shas.insert(res.key.to_string(), component_sha(&a.object));
            }
        }
        if let Some(s) = staged.as_ref().filter(|s| s.digest != applied.digest) {
            for (name, sha) in &s.components {
                if shas.get(name) != Some(sha) {
                    flags.insert(name.clone(), StateFlag::Staged);
                }
            }
        }
        let health = self.health(id, &applied).await?;
        Ok(Observed {
            applied: Some(applied.digest),
            staged: staged.map(|s| s.digest),
            components: flags
                .into_iter()
                .map(|(name, flag)| Component { name, flag })
                .collect(),
            health: Some(health),
            annotations: applied.annotations,
            labels: applied.labels,
            source: Some(applied.source).filter(|s| !s.branch.is_empty()),
        })
    }

    /// Every managed resource by its kind's rule; past the timeout since
    /// the apply, not healthy is failed.
    async fn health(
        &self,
        id: &CompositionId,
        applied: &AppliedState,
    ) -> Result<Health, TargetError> {
        let managed: BTreeSet<&Ref> = applied.inventory.iter().collect();
        let mut problems = Vec::new();
        for a in &applied.resources {
            let Some(live_ref) = a.live.as_ref().filter(|l| managed.contains(l)) else {
                continue;
            };
            match self.get_live(live_ref).await? {
                None => problems.push(format!("{live_ref}: not found")),
                Some(live) => {
                    if annotation(&live, COMPOSITION_ANNOTATION)
                        .is_some_and(|o| o != id.to_string())
                    {
                        continue;
                    }
                    if let Err(why) = health_of(&live) {
                        problems.push(format!("{live_ref}: {why}"));
                    }
                }
            }
        }
        if problems.is_empty() {
            return Ok(Health::Healthy);
        }
        let message = problems.join("; ");
        let waited = self.clock.now().signed_duration_since(applied.at);
        let timeout =
            chrono::TimeDelta::from_std(self.health_timeout).unwrap_or(chrono::TimeDelta::MAX);
        if waited >= timeout {
            Ok(Health::Failed(format!(
                "not healthy {} after the apply at {}: {message}",
                humantime::format_duration(self.health_timeout),
                applied
                    .at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )))
        } else {
            Ok(Health::Unhealthy(message))
        }
    }

    async fn remove(&self, id: &CompositionId) -> Result<(), TargetError> {
        self.lock_staged().remove(id);
        self.lock_validated().remove(id);
        self.lock_delivering().remove(id);
        self.delete_pull_pods(id).await?;
        let Some(record) = self.read_record(id).await? else {
            return Ok(());
        };
        let mut inventory: Vec<Ref> = record.applied.map(|a| a.inventory).unwrap_or_default();
        inventory.extend(record.pending);
        inventory.sort();
        inventory.dedup();
        inventory.sort_by_key(|x| std::cmp::Reverse(x.rank()));
        for r in &inventory {
            if self.deletable(r, id).await? {
                self.delete_live(r).await?;
            }
        }
        let conn = self.conn().await?;
        match self
            .records(conn)
            .delete(&Self::record_name(id), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(kube_err(format!("inventory record of {id}"), &e)),
        }
        tracing::info!(composition = %id, "deleted");
        Ok(())
    }
}

/// A dry-run result with the composition's metadata as the metadata apply
/// will leave it: the previous composition keys gone, the new ones set.
fn overlay_metadata(mut o: Value, prev: Option<&AppliedState>, meta: &Value) -> Value {
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        for (field, old) in [
            ("annotations", prev.map(|a| &a.annotations)),
            ("labels", prev.map(|a| &a.labels)),
        ] {
            let mut map = take_map(m, field);
            for k in old.into_iter().flat_map(|o| o.keys()) {
                map.remove(k);
            }
            if field == "annotations" {
                map.remove(DIGEST_ANNOTATION);
            }
            for (k, v) in meta["metadata"][field].as_object().into_iter().flatten() {
                map.insert(k.clone(), v.clone());
            }
            put_map(m, field, map);
        }
    }
    o
}

fn to_value(o: &DynamicObject) -> Value {
    serde_json::to_value(o).unwrap_or(Value::Null)
}

/// A record's data as text (what is not UTF-8 is not ours: left out).
fn record_data(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
        .collect()
}

fn parse_field<T: serde::de::DeserializeOwned>(
    data: &BTreeMap<String, String>,
    key: &str,
    at: &str,
) -> Result<Option<T>, TargetError> {
    data.get(key)
        .map(|text| {
            serde_json::from_str(text)
                .map_err(|e| TargetError::Invalid(format!("{at}: {key}: {e}")))
        })
        .transpose()
}

fn to_json<T: Serialize>(v: &T) -> Result<String, TargetError> {
    serde_json::to_string(v).map_err(|e| TargetError::Invalid(format!("inventory record: {e}")))
}

#[async_trait]
impl Target for KubernetesTarget {
    /// `Stage` validates by a server-side dry run and records the staged
    /// digest; `Apply` applies (CRDs and Namespaces first), prunes and
    /// records; `DryRun` only reads and dry-runs.
    async fn apply(&self, desired: &Desired, goal: StateGoal) -> Result<Outcome, TargetError> {
        let out = match goal {
            StateGoal::DryRun => return self.dry_run(desired).await,
            StateGoal::Stage => self.stage(desired).await?,
            StateGoal::Apply => self.apply_now(desired).await?,
        };
        // A state recorded: what no state needs any more can go, at the
        // pass's end.
        if out.changed && out.staging.is_none() {
            self.gc_due.store(true, Ordering::Relaxed);
        }
        Ok(out)
    }

    async fn checkpoint(&self) -> Result<(), TargetError> {
        if self.gc_due.swap(false, Ordering::Relaxed) {
            self.collect_garbage_logged().await;
        }
        Ok(())
    }

    async fn get(&self, id: &CompositionId) -> Result<Observed, TargetError> {
        self.observe(id).await
    }

    async fn delete(&self, id: &CompositionId) -> Result<(), TargetError> {
        self.remove(id).await?;
        self.collect_garbage_logged().await;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<CompositionId>, TargetError> {
        let conn = self.conn().await?;
        let lp = ListParams::default().labels(INVENTORY_LABEL);
        let list = self.records(conn).list(&lp).await.map_err(|e| {
            kube_err(
                format!("inventory records in namespace {}", conn.namespace),
                &e,
            )
        })?;
        let mut out: Vec<CompositionId> = list
            .items
            .iter()
            .filter_map(|secret| record_data(secret).get("composition")?.parse().ok())
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn applied(&self, id: &CompositionId) -> Result<Option<Rendered>, TargetError> {
        Ok(self.applied_with_source(id).await?.map(|(r, _)| r))
    }

    async fn rollback(
        &self,
        id: &CompositionId,
        failed: &Digest,
    ) -> Result<Option<Digest>, TargetError> {
        self.roll_back(id, failed).await
    }

    /// Applies the applied state with `change` made, under the commit it
    /// came from. Only annotations changed: only the metadata apply runs
    /// (the bodies are unchanged, see [`AppliedResource::body`]).
    async fn write_metadata(
        &self,
        id: &CompositionId,
        change: &MetadataChange,
    ) -> Result<Outcome, TargetError> {
        let Some((applied, source)) = self.applied_with_source(id).await? else {
            return Ok(Outcome::default());
        };
        let digest = applied.digest;
        let edited = change
            .applied_to(applied)
            .map_err(|e| TargetError::Invalid(format!("{id}: {e}")))?;
        if edited.digest == digest {
            return Ok(Outcome::default());
        }
        let desired = Desired {
            rendered: Arc::new(edited),
            source,
            artifacts: BTreeMap::new(),
        };
        self.apply_now(&desired).await
    }
}

impl KubernetesTarget {
    /// The applied state as its inventory record holds it, with the commit
    /// it was applied from.
    async fn applied_with_source(
        &self,
        id: &CompositionId,
    ) -> Result<Option<(Rendered, SourceRef)>, TargetError> {
        let Some(a) = self.read_record(id).await?.and_then(|r| r.applied) else {
            return Ok(None);
        };
        Self::rendered_of(id, a).map(Some)
    }

    /// A state as the inventory record holds it, rendered again.
    fn rendered_of(
        id: &CompositionId,
        a: AppliedState,
    ) -> Result<(Rendered, SourceRef), TargetError> {
        let mut resources = Vec::with_capacity(a.resources.len());
        for x in a.resources {
            resources.push(
                Resource::new(x.object)
                    .map_err(|e| TargetError::Invalid(format!("{id}: inventory record: {e}")))?,
            );
        }
        let artifacts = a
            .artifacts
            .into_iter()
            .map(|x| Artifact {
                name: x.name,
                url: String::new(),
                repo_path: None,
                sha256: x.sha256,
                size: x.size,
            })
            .collect();
        let rendered =
            Rendered::from_parts(id.clone(), resources, a.annotations, a.labels, artifacts);
        Ok((rendered, a.source))
    }

    /// [`Target::rollback`]: the previous state from the inventory record,
    /// applied again (where `failed` is not the applied one, the applied
    /// one is: the failed apply may have written part of its resources).
    /// Then the record forgets `failed` as a previous state, so a second
    /// rollback does not return to it.
    async fn roll_back(
        &self,
        id: &CompositionId,
        failed: &Digest,
    ) -> Result<Option<Digest>, TargetError> {
        let Some(record) = self.read_record(id).await? else {
            return Ok(None);
        };
        let back = match record.applied {
            Some(a) if a.digest == *failed => record.previous,
            applied => applied,
        };
        let Some(back) = back else {
            return Ok(None);
        };
        let (rendered, source) = Self::rendered_of(id, back)?;
        let digest = rendered.digest;
        let desired = Desired {
            rendered: Arc::new(rendered),
            source,
            artifacts: BTreeMap::new(),
        };
        self.apply_now(&desired).await?;
        if let Some(mut record) = self.read_record(id).await? {
            if record
                .previous
                .as_ref()
                .is_some_and(|p| p.digest == *failed)
            {
                record.previous = None;
                self.write_record(id, &record).await?;
            }
        }
        tracing::info!(composition = %id, from = %failed.short(), to = %digest.short(), "rolled back");
        Ok(Some(digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_readable_when_they_can_be() {
        let id = CompositionId::new("line-control", "vision");
        assert_eq!(composition_label(&id), "line-control.vision");
        let long = CompositionId::new("a".repeat(40), "b".repeat(30));
        let l = composition_label(&long);
        assert!(
            l.starts_with("h-") && l.len() == 42 && !l.contains('.'),
            "{l}"
        );
        assert_eq!(l, composition_label(&long), "stable");
        let odd = CompositionId::new("Sym_1", "v");
        assert!(composition_label(&odd).starts_with("h-"));
    }

    #[test]
    fn the_body_leaves_composition_metadata_to_the_metadata_manager() {
        let id = CompositionId::new("shop", "app");
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "labels": {"tier": "x", "keep": "1"},
                         "annotations": {"owner": "rendered", "fermata.dev/digest": "old"}},
            "data": {"a": "1"}});
        let ann: BTreeMap<String, String> = [("owner".to_string(), "comp".to_string())].into();
        let lab: BTreeMap<String, String> = [("tier".to_string(), "edge".to_string())].into();
        let body = full_body(&obj, Some("ns"), &id, &ann, &lab);
        assert_eq!(body["metadata"]["namespace"], json!("ns"));
        assert_eq!(
            body["metadata"]["labels"],
            json!({"keep": "1", "fermata.dev/composition": "shop.app"})
        );
        assert_eq!(
            body["metadata"]["annotations"],
            json!({"fermata.dev/composition": "shop/app"})
        );
        let d = Digest::of(b"x");
        let meta = metadata_body(&obj, Some("ns"), &ann, &lab, &d);
        assert_eq!(
            meta,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
                "name": "c", "namespace": "ns",
                "annotations": {"owner": "comp", "fermata.dev/digest": d.to_hex()},
                "labels": {"tier": "edge"}}})
        );
        let orphan = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "annotations": {ORPHANED_FROM: "shop"}}});
        let body = full_body(&orphan, None, &id, &BTreeMap::new(), &BTreeMap::new());
        assert!(body["metadata"].get("labels").is_none(), "{body}");
        assert!(body["metadata"].get("namespace").is_none());
    }

    fn deployment(generation: i64, replicas: i64, status: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "d", "generation": generation},
               "spec": {"replicas": replicas}, "status": status})
    }

    #[test]
    fn deployments_are_healthy_when_rolled_out() {
        assert!(health_of(&deployment(2, 1, json!({"observedGeneration": 1}))).is_err());
        let e = health_of(&deployment(
            1,
            3,
            json!({"observedGeneration": 1, "updatedReplicas": 1, "replicas": 1}),
        ));
        assert_eq!(e, Err("1 out of 3 new replicas have been updated".into()));
        let e = health_of(&deployment(
            1,
            2,
            json!({"observedGeneration": 1, "updatedReplicas": 2, "replicas": 3, "availableReplicas": 2}),
        ));
        assert_eq!(e, Err("1 old replicas are pending termination".into()));
        let e = health_of(&deployment(
            1,
            2,
            json!({"observedGeneration": 1, "updatedReplicas": 2, "replicas": 2, "availableReplicas": 1}),
        ));
        assert_eq!(e, Err("1 of 2 updated replicas are available".into()));
        let ok = health_of(&deployment(
            1,
            2,
            json!({"observedGeneration": 1, "updatedReplicas": 2, "replicas": 2, "availableReplicas": 2}),
        ));
        assert_eq!(ok, Ok(()));
        let stuck = deployment(
            1,
            1,
            json!({"observedGeneration": 1, "conditions": [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}),
        );
        assert_eq!(
            health_of(&stuck),
            Err("exceeded its progress deadline".into())
        );
    }

    #[test]
    fn statefulsets_daemonsets_jobs_pods_and_ready_conditions() {
        let sts = |status: Value| {
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"generation": 1}, "spec": {"replicas": 2}, "status": status})
        };
        assert!(health_of(&sts(json!({"observedGeneration": 1, "readyReplicas": 1}))).is_err());
        assert!(
            health_of(&sts(json!({"observedGeneration": 1, "readyReplicas": 2,
            "currentRevision": "a", "updateRevision": "b"})))
            .is_err()
        );
        assert!(
            health_of(&sts(json!({"observedGeneration": 1, "readyReplicas": 2,
            "currentRevision": "b", "updateRevision": "b"})))
            .is_ok()
        );
        let ds = |status: Value| {
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"generation": 1}, "status": status})
        };
        assert!(health_of(&ds(
            json!({"observedGeneration": 1, "desiredNumberScheduled": 2,
            "updatedNumberScheduled": 2, "numberAvailable": 1})
        ))
        .is_err());
        assert!(health_of(&ds(
            json!({"observedGeneration": 1, "desiredNumberScheduled": 2,
            "updatedNumberScheduled": 2, "numberAvailable": 2})
        ))
        .is_ok());
        let job = |conds: Value| json!({"apiVersion": "batch/v1", "kind": "Job", "status": {"conditions": conds}});
        assert_eq!(health_of(&job(json!([]))), Err("not complete yet".into()));
        assert!(health_of(&job(json!([{"type": "Complete", "status": "True"}]))).is_ok());
        assert_eq!(
            health_of(&job(
                json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}])
            )),
            Err("failed: BackoffLimitExceeded".into())
        );
        let pod = |status: Value| json!({"apiVersion": "v1", "kind": "Pod", "status": status});
        assert!(health_of(&pod(
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]})
        ))
        .is_err());
        assert!(health_of(&pod(
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]})
        ))
        .is_ok());
        assert!(health_of(&pod(json!({"phase": "Succeeded"}))).is_ok());
        let cr = |status: Value| json!({"apiVersion": "example.com/v1", "kind": "Widget", "status": status});
        assert!(
            health_of(&cr(json!({}))).is_ok(),
            "no Ready condition: healthy once applied"
        );
        assert_eq!(
            health_of(&cr(
                json!({"conditions": [{"type": "Ready", "status": "False", "message": "warming up"}]})
            )),
            Err("Ready is False: warming up".into())
        );
        assert!(health_of(&cr(
            json!({"conditions": [{"type": "Ready", "status": "True"}]})
        ))
        .is_ok());
    }
}
