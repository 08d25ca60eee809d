//! Container images pulled onto the nodes at stage, before the window
//! (issue 15 point 1), so an apply inside the window does not wait for a
//! registry, and a tag that does not exist fails the stage, not the window.
//!
//! How: short-lived pre-pull Pods, one per node per batch of images, pinned
//! to the node with `spec.nodeName` (no scheduler: the node is the one we
//! chose), `restartPolicy: Never`, every container `imagePullPolicy:
//! IfNotPresent` and `command: ["true"]`. This is kube-fledged's approach
//! (a Job per image and node), not OpenKruise's ImagePullJob (a daemon on
//! every node talking to the container runtime): it needs nothing installed
//! in the cluster, only the right to create Pods, and the kubelet reports
//! each pull in the Pod's status. Whether `true` exists in the image does
//! not matter: a pull has succeeded as soon as the container got past
//! waiting for its image (running, terminated with any code, or waiting for
//! a reason that comes after the pull, such as `CreateContainerError`); only
//! `ErrImagePull`, `ImagePullBackOff`, `InvalidImageName` and
//! `ErrImageNeverPull` are failures. Pods tolerate every taint, since the
//! node was chosen by the workload's own rules, and ask for almost nothing
//! (1m CPU, 8Mi memory).
//!
//! Which images: every container and init container of Pods, Deployments,
//! ReplicaSets, StatefulSets, DaemonSets, Jobs and CronJobs, on the nodes
//! that may run them: those the workload's `nodeSelector` and required node
//! affinity (`In`, `NotIn`, `Exists`, `DoesNotExist`, `Gt`, `Lt`) select,
//! that are schedulable (a DaemonSet ignores `spec.unschedulable`, as its
//! pods tolerate it) and carry no `NoSchedule`/`NoExecute` taint the
//! workload does not tolerate; and only where the node does not have it
//! yet (its `status.images`, names normalized as the kubelet does).
//!
//! At most `maxPerNode` images (default 2) are pulled on a node at once:
//! a new batch Pod starts on a node only for the room its running batches
//! leave. Pods are labelled with the composition and the digest they pull
//! for; once every image is present they are deleted, and Pods of another
//! digest (an older stage, a crash before cleanup) are deleted on the next
//! stage of the composition. A failed pull stays (the kubelet retries it
//! with back-off) and the stage fails naming the image and the node, until
//! it succeeds or the composition changes.
//!
//! Everything here is pure: the executor in [`super`] lists nodes and
//! Pods, creates and deletes what [`step`] says.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::model::Digest;

/// Label of pre-pull Pods: the composition label they pull for.
pub const PREPULL_LABEL: &str = "fermata.dev/prepull";
/// Label of pre-pull Pods: the first 16 hex digits of the state's digest.
pub const DIGEST_LABEL: &str = "fermata.dev/prepull-digest";
/// Default of `prePull.maxPerNode`.
pub const DEFAULT_MAX_PER_NODE: u32 = 2;

/// An image reference as the kubelet resolves it: `nginx` is
/// `docker.io/library/nginx:latest`, `me/app:1` is `docker.io/me/app:1`.
pub fn normalize_image(image: &str) -> String {
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    let (repo, tag) = match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t)),
        _ => (name, None),
    };
    let first = repo.split('/').next().unwrap_or_default();
    let registry =
        repo.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let repo = if registry {
        repo.to_string()
    } else if repo.contains('/') {
        format!("docker.io/{repo}")
    } else {
        format!("docker.io/library/{repo}")
    };
    match (tag, digest) {
        (_, Some(d)) => format!("{repo}@{d}"),
        (Some(t), None) => format!("{repo}:{t}"),
        (None, None) => format!("{repo}:latest"),
    }
}

/// A taint of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

/// A node as the choice of nodes needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    /// Normalized names of the images present.
    pub images: BTreeSet<String>,
}

impl Node {
    /// From a `v1` Node object.
    pub fn from_object(o: &Value) -> Node {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        Node {
            name: s(&o["metadata"]["name"]),
            labels: string_map(&o["metadata"]["labels"]),
            taints: o["spec"]["taints"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| Taint {
                    key: s(&t["key"]),
                    value: s(&t["value"]),
                    effect: s(&t["effect"]),
                })
                .collect(),
            unschedulable: o["spec"]["unschedulable"].as_bool().unwrap_or(false),
            images: o["status"]["images"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|i| i["names"].as_array().into_iter().flatten())
                .filter_map(Value::as_str)
                .map(normalize_image)
                .collect(),
        }
    }
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect()
}

/// One requirement of a node selector term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: String,
    pub values: Vec<String>,
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.key);
        let num = |x: &str| x.parse::<i64>().ok();
        match self.operator.as_str() {
            "In" => v.is_some_and(|v| self.values.contains(v)),
            "NotIn" => v.is_none_or(|v| !self.values.contains(v)),
            "Exists" => v.is_some(),
            "DoesNotExist" => v.is_none(),
            "Gt" => {
                matches!((v.and_then(|v| num(v)), self.values.first().and_then(|x| num(x))), (Some(a), Some(b)) if a > b)
            }
            "Lt" => {
                matches!((v.and_then(|v| num(v)), self.values.first().and_then(|x| num(x))), (Some(a), Some(b)) if a < b)
            }
            _ => false,
        }
    }
}

/// A toleration of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Toleration {
    pub key: String,
    pub operator: String,
    pub value: String,
    pub effect: String,
}

impl Toleration {
    fn tolerates(&self, t: &Taint) -> bool {
        (self.effect.is_empty() || self.effect == t.effect)
            && match self.operator.as_str() {
                "Exists" => self.key.is_empty() || self.key == t.key,
                _ => self.key == t.key && self.value == t.value,
            }
    }
}

/// The pod template of a rendered workload, as the choice of nodes needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Workload {
    /// Every container and init container image, as written.
    pub images: Vec<String>,
    pub node_selector: BTreeMap<String, String>,
    /// Required node affinity: any term, all of its requirements. Empty: none.
    pub affinity: Vec<Vec<Requirement>>,
    pub tolerations: Vec<Toleration>,
    /// A DaemonSet: its pods tolerate an unschedulable node.
    pub daemon: bool,
}

/// The pod spec of `object` if it is a workload (Pod, Deployment,
/// ReplicaSet, StatefulSet, DaemonSet, Job, CronJob).
pub fn workload_of(object: &Value) -> Option<Workload> {
    let kind = object["kind"].as_str()?;
    let av = object["apiVersion"].as_str()?;
    let spec = match (av, kind) {
        ("v1", "Pod") => &object["spec"],
        ("apps/v1", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet")
        | ("batch/v1", "Job") => &object["spec"]["template"]["spec"],
        ("batch/v1", "CronJob") => &object["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => return None,
    };
    let images = ["initContainers", "containers"]
        .iter()
        .flat_map(|f| spec[f].as_array().into_iter().flatten())
        .filter_map(|c| c["image"].as_str())
        .map(str::to_string)
        .collect();
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let affinity = spec["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|term| {
            term["matchExpressions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| Requirement {
                    key: s(&e["key"]),
                    operator: s(&e["operator"]),
                    values: e["values"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(s)
                        .collect(),
                })
                .collect()
        })
        .collect();
    let tolerations = spec["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| Toleration {
            key: s(&t["key"]),
            operator: t["operator"].as_str().unwrap_or("Equal").to_string(),
            value: s(&t["value"]),
            effect: s(&t["effect"]),
        })
        .collect();
    Some(Workload {
        images,
        node_selector: string_map(&spec["nodeSelector"]),
        affinity,
        tolerations,
        daemon: kind == "DaemonSet",
    })
}

/// Whether `w`'s pods may run on `node`.
pub fn may_run_on(w: &Workload, node: &Node) -> bool {
    if node.unschedulable && !w.daemon {
        return false;
    }
    if !w
        .node_selector
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v))
    {
        return false;
    }
    if !w.affinity.is_empty()
        && !w
            .affinity
            .iter()
            .any(|term| term.iter().all(|r| r.matches(&node.labels)))
    {
        return false;
    }
    node.taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| w.tolerations.iter().any(|tol| tol.tolerates(t)))
}

/// The images each node lacks, of the workloads that may run there.
pub fn missing(workloads: &[Workload], nodes: &[Node]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for w in workloads {
        for node in nodes.iter().filter(|n| may_run_on(w, n)) {
            for image in &w.images {
                if !node.images.contains(&normalize_image(image)) {
                    out.entry(node.name.clone())
                        .or_default()
                        .insert(image.clone());
                }
            }
        }
    }
    out
}

/// What the kubelet reports about one pre-pull container's image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pull {
    Pulling,
    Pulled,
    Failed(String),
}

/// A container status's meaning for its image.
pub fn pull_state(container_status: &Value) -> Pull {
    let state = &container_status["state"];
    if state.get("running").is_some() || state.get("terminated").is_some() {
        return Pull::Pulled;
    }
    let reason = state["waiting"]["reason"].as_str().unwrap_or_default();
    let message = state["waiting"]["message"].as_str().unwrap_or_default();
    match reason {
        "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" | "ErrImageNeverPull" => {
            Pull::Failed(if message.is_empty() {
                reason.to_string()
            } else {
                format!("{reason}: {message}")
            })
        }
        // Past the pull: the image is there, its container could not start.
        "CreateContainerError" | "CreateContainerConfigError" | "RunContainerError" => Pull::Pulled,
        _ => Pull::Pulling,
    }
}

/// A pre-pull Pod as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullPod {
    pub name: String,
    pub node: String,
    /// Its digest label.
    pub digest: String,
    /// Each image it pulls, with its state.
    pub images: Vec<(String, Pull)>,
}

impl PullPod {
    /// From a listed Pod (`None`: not one of ours, no node).
    pub fn from_object(o: &Value) -> Option<PullPod> {
        let name = o["metadata"]["name"].as_str()?.to_string();
        let node = o["spec"]["nodeName"].as_str()?.to_string();
        let digest = o["metadata"]["labels"][DIGEST_LABEL]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let statuses = o["status"]["containerStatuses"].as_array();
        let images = o["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let cname = c["name"].as_str().unwrap_or_default();
                let image = c["image"].as_str().unwrap_or_default().to_string();
                let state = statuses
                    .into_iter()
                    .flatten()
                    .find(|s| s["name"].as_str() == Some(cname))
                    .map(pull_state)
                    .unwrap_or(Pull::Pulling);
                (image, state)
            })
            .collect();
        Some(PullPod {
            name,
            node,
            digest,
            images,
        })
    }
}

/// A Pod to create: `images` on `node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPod {
    pub name: String,
    pub node: String,
    pub images: Vec<String>,
}

/// What to do next, and where the pulls stand.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Step {
    pub create: Vec<NewPod>,
    /// Pods to delete: of another digest, or all of this one once done.
    pub delete: Vec<String>,
    /// (node, image) still pulling or about to.
    pub pending: Vec<(String, String)>,
    /// (node, image, why) that failed.
    pub failed: Vec<(String, String, String)>,
}

impl Step {
    /// Every image is present on every node that needs it.
    pub fn done(&self) -> bool {
        self.pending.is_empty() && self.failed.is_empty()
    }
}

/// The digest label value of `digest`.
pub fn digest_label(digest: &Digest) -> String {
    digest.to_hex()[..16].to_string()
}

/// A stable name for the pod pulling `images` on `node` for `label`'s
/// state `digest`: a stage run again (after a crash) finds it again.
pub fn pod_name(label: &str, digest: &Digest, node: &str, images: &[String]) -> String {
    let key = format!(
        "{label}\n{}\n{node}\n{}",
        digest.to_hex(),
        images.join("\n")
    );
    format!(
        "fermata-pull-{}",
        &Digest::of(key.as_bytes()).to_hex()[..24]
    )
}

/// Given what each node lacks, the pods there are, and the bound per node:
/// which pods to create and delete, what is pending and what failed.
pub fn step(
    label: &str,
    digest: &Digest,
    missing: &BTreeMap<String, BTreeSet<String>>,
    pods: &[PullPod],
    max_per_node: u32,
) -> Step {
    let mut out = Step::default();
    let ours = digest_label(digest);
    let (current, stale): (Vec<&PullPod>, Vec<&PullPod>) =
        pods.iter().partition(|p| p.digest == ours);
    out.delete.extend(stale.iter().map(|p| p.name.clone()));
    for (node, images) in missing {
        let on_node: Vec<&&PullPod> = current.iter().filter(|p| &p.node == node).collect();
        let mut pulling = 0u32;
        let mut covered = BTreeSet::new();
        for p in &on_node {
            for (image, state) in &p.images {
                if !images.contains(image) {
                    continue;
                }
                covered.insert(image.clone());
                match state {
                    Pull::Pulled => {}
                    Pull::Pulling => {
                        pulling += 1;
                        out.pending.push((node.clone(), image.clone()));
                    }
                    Pull::Failed(why) => {
                        pulling += 1;
                        out.failed.push((node.clone(), image.clone(), why.clone()));
                    }
                }
            }
        }
        let todo: Vec<String> = images
            .iter()
            .filter(|i| !covered.contains(*i))
            .cloned()
            .collect();
        let room = max_per_node.max(1).saturating_sub(pulling) as usize;
        let batch: Vec<String> = todo.iter().take(room).cloned().collect();
        for image in &todo {
            out.pending.push((node.clone(), image.clone()));
        }
        if !batch.is_empty() {
            out.create.push(NewPod {
                name: pod_name(label, digest, node, &batch),
                node: node.clone(),
                images: batch,
            });
        }
    }
    out.pending.sort();
    out.pending.dedup();
    if out.done() {
        out.delete.extend(current.iter().map(|p| p.name.clone()));
    }
    out
}

/// The Pod object of `p`, in `namespace`, for composition `label`'s state
/// `digest`.
pub fn pod_object(p: &NewPod, namespace: &str, label: &str, digest: &Digest) -> Value {
    let containers: Vec<Value> = p
        .images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            json!({
                "name": format!("pull-{i}"),
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["true"],
                "resources": {"requests": {"cpu": "1m", "memory": "8Mi"},
                              "limits": {"memory": "8Mi"}},
            })
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": p.name,
            "namespace": namespace,
            "labels": {PREPULL_LABEL: label, DIGEST_LABEL: digest_label(digest)},
            "annotations": {"fermata.dev/prepull-images": p.images.join(",")},
        },
        "spec": {
            "nodeName": p.node,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": false,
            "tolerations": [{"operator": "Exists"}],
            "containers": containers,
        },
    })
}

/// What a failed step says: each image and node, and the kubelet's words.
pub fn failure_message(failed: &[(String, String, String)]) -> String {
    failed
        .iter()
        .map(|(node, image, why)| format!("image {image} cannot be pulled on node {node}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What a pending step says, for status.
pub fn pending_message(pending: &[(String, String)]) -> String {
    let images: BTreeSet<&str> = pending.iter().map(|(_, i)| i.as_str()).collect();
    let nodes: BTreeSet<&str> = pending.iter().map(|(n, _)| n.as_str()).collect();
    format!(
        "pulling {} on {} node(s): {}",
        images.into_iter().collect::<Vec<_>>().join(", "),
        nodes.len(),
        nodes.into_iter().collect::<Vec<_>>().join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_normalize_as_the_kubelet_does() {
        let cases = [
            ("nginx", "docker.io/library/nginx:latest"),
            ("nginx:1.27", "docker.io/library/nginx:1.27"),
            ("me/app:1", "docker.io/me/app:1"),
            ("ghcr.io/me/app", "ghcr.io/me/app:latest"),
            ("localhost:5000/app:2", "localhost:5000/app:2"),
            ("localhost/app", "localhost/app:latest"),
            ("nginx@sha256:abc", "docker.io/library/nginx@sha256:abc"),
            (
                "docker.io/library/nginx:1.27",
                "docker.io/library/nginx:1.27",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_image(input), want, "{input}");
        }
    }

    fn node(name: &str, labels: &[(&str, &str)], taints: &[(&str, &str)], images: &[&str]) -> Node {
        Node {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            taints: taints
                .iter()
                .map(|(k, e)| Taint {
                    key: k.to_string(),
                    value: String::new(),
                    effect: e.to_string(),
                })
                .collect(),
            unschedulable: false,
            images: images.iter().map(|i| normalize_image(i)).collect(),
        }
    }

    fn deployment(spec: Value) -> Value {
        let mut pod = json!({"containers": [{"name": "m", "image": "app:1"}],
                             "initContainers": [{"name": "i", "image": "init:1"}]});
        if let (Some(p), Some(extra)) = (pod.as_object_mut(), spec.as_object()) {
            for (k, v) in extra {
                p.insert(k.clone(), v.clone());
            }
        }
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
               "spec": {"template": {"spec": pod}}})
    }

    #[test]
    fn every_workload_kind_has_its_images() {
        let pod = |spec: Value| json!({"apiVersion": "v1", "kind": "Pod", "spec": spec});
        let c = json!({"containers": [{"name": "a", "image": "x:1"}]});
        let cases = [
            ("Pod", pod(c.clone()), Some(vec!["x:1"])),
            (
                "Deployment with init",
                deployment(json!({})),
                Some(vec!["init:1", "app:1"]),
            ),
            (
                "Job",
                json!({"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": c}}}),
                Some(vec!["x:1"]),
            ),
            (
                "CronJob",
                json!({"apiVersion": "batch/v1", "kind": "CronJob",
                "spec": {"jobTemplate": {"spec": {"template": {"spec": c}}}}}),
                Some(vec!["x:1"]),
            ),
            (
                "ConfigMap",
                json!({"apiVersion": "v1", "kind": "ConfigMap"}),
                None,
            ),
        ];
        for (name, object, want) in cases {
            let got = workload_of(&object).map(|w| w.images);
            let want = want.map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
            assert_eq!(got, want, "{name}");
        }
        let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "spec": {"template": {"spec": c}}});
        assert!(workload_of(&ds).is_some_and(|w| w.daemon));
    }

    #[test]
    fn nodes_follow_selector_affinity_schedulability_and_taints() {
        let gpu = node("gpu", &[("gpu", "yes"), ("zone", "a")], &[], &[]);
        let plain = node("plain", &[("zone", "b")], &[], &[]);
        let tainted = node(
            "tainted",
            &[("zone", "a")],
            &[("dedicated", "NoSchedule")],
            &[],
        );
        let soft = node("soft", &[("zone", "c")], &[("x", "PreferNoSchedule")], &[]);
        let mut cordoned = node("cordoned", &[("zone", "a")], &[], &[]);
        cordoned.unschedulable = true;
        let nodes = [gpu, plain, tainted, soft, cordoned];
        let on = |spec: Value| -> Vec<String> {
            let w = workload_of(&deployment(spec)).expect("workload");
            nodes
                .iter()
                .filter(|n| may_run_on(&w, n))
                .map(|n| n.name.clone())
                .collect()
        };
        let expr = |op: &str, key: &str, values: &[&str]| {
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [{"matchExpressions": [{"key": key, "operator": op, "values": values}]}]}}}})
        };
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            (
                "no rules: schedulable, untainted",
                json!({}),
                vec!["gpu", "plain", "soft"],
            ),
            (
                "nodeSelector",
                json!({"nodeSelector": {"gpu": "yes"}}),
                vec!["gpu"],
            ),
            ("In", expr("In", "zone", &["a", "b"]), vec!["gpu", "plain"]),
            (
                "NotIn",
                expr("NotIn", "zone", &["a"]),
                vec!["plain", "soft"],
            ),
            ("Exists", expr("Exists", "gpu", &[]), vec!["gpu"]),
            (
                "DoesNotExist",
                expr("DoesNotExist", "gpu", &[]),
                vec!["plain", "soft"],
            ),
            (
                "a toleration lets the tainted node in",
                json!({"tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]}),
                vec!["gpu", "plain", "tainted", "soft"],
            ),
            (
                "an Equal toleration of another value does not",
                json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "x"}]}),
                vec!["gpu", "plain", "soft"],
            ),
        ];
        for (name, spec, want) in cases {
            assert_eq!(on(spec), want, "{name}");
        }
        let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
            "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}}});
        let w = workload_of(&ds).expect("daemonset");
        assert!(
            may_run_on(&w, &nodes[4]),
            "a DaemonSet runs on a cordoned node"
        );
    }

    #[test]
    fn only_missing_images_are_wanted() {
        let nodes = [
            node("a", &[], &[], &["docker.io/library/app:1"]),
            node("b", &[], &[], &[]),
        ];
        let w = workload_of(&deployment(json!({}))).expect("workload");
        let got = missing(&[w], &nodes);
        let want: BTreeMap<String, BTreeSet<String>> = [
            ("a".to_string(), ["init:1".to_string()].into()),
            (
                "b".to_string(),
                ["app:1".to_string(), "init:1".to_string()].into(),
            ),
        ]
        .into();
        assert_eq!(got, want);
    }

    #[test]
    fn container_states_mean_pulled_pulling_or_failed() {
        let st = |state: Value| json!({"name": "pull-0", "state": state});
        let cases = [
            ("running", st(json!({"running": {}})), Pull::Pulled),
            (
                "terminated, any code",
                st(json!({"terminated": {"exitCode": 127}})),
                Pull::Pulled,
            ),
            (
                "creating",
                st(json!({"waiting": {"reason": "ContainerCreating"}})),
                Pull::Pulling,
            ),
            ("no status yet", json!({}), Pull::Pulling),
            (
                "create error: past the pull",
                st(json!({"waiting": {"reason": "CreateContainerError"}})),
                Pull::Pulled,
            ),
            (
                "pull error",
                st(json!({"waiting": {"reason": "ErrImagePull", "message": "not found"}})),
                Pull::Failed("ErrImagePull: not found".into()),
            ),
            (
                "back-off",
                st(json!({"waiting": {"reason": "ImagePullBackOff"}})),
                Pull::Failed("ImagePullBackOff".into()),
            ),
        ];
        for (name, status, want) in cases {
            assert_eq!(pull_state(&status), want, "{name}");
        }
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn steps_bound_pulls_per_node_and_clean_up() {
        let d = Digest::of(b"state");
        let other = Digest::of(b"older");
        let pod = |name: &str, node: &str, digest: &Digest, images: Vec<(&str, Pull)>| PullPod {
            name: name.into(),
            node: node.into(),
            digest: digest_label(digest),
            images: images
                .into_iter()
                .map(|(i, s)| (i.to_string(), s))
                .collect(),
        };
        let need: BTreeMap<String, BTreeSet<String>> =
            [("n1".to_string(), set(&["a", "b", "c"]))].into();

        // Nothing started: one pod with the first two images; all three pending.
        let s = step("shop.app", &d, &need, &[], 2);
        assert_eq!(s.create.len(), 1);
        assert_eq!(s.create[0].images, vec!["a", "b"]);
        assert_eq!(
            s.create[0].name,
            pod_name("shop.app", &d, "n1", &["a".into(), "b".into()])
        );
        assert_eq!(s.pending.len(), 3);
        assert!(s.delete.is_empty() && !s.done());

        // a pulled, b still pulling: room for one more, c.
        let p1 = pod(
            "p1",
            "n1",
            &d,
            vec![("a", Pull::Pulled), ("b", Pull::Pulling)],
        );
        let stale = pod("old", "n1", &other, vec![("z", Pull::Pulling)]);
        let s = step("shop.app", &d, &need, &[p1.clone(), stale], 2);
        assert_eq!(
            s.create
                .iter()
                .map(|p| p.images.clone())
                .collect::<Vec<_>>(),
            vec![vec!["c".to_string()]]
        );
        assert_eq!(
            s.delete,
            vec!["old".to_string()],
            "another digest's pod goes"
        );
        assert_eq!(
            s.pending,
            vec![("n1".into(), "b".into()), ("n1".into(), "c".into())]
        );

        // A failure is reported, named, and its pod kept (the kubelet retries).
        let bad = pod(
            "p2",
            "n1",
            &d,
            vec![("c", Pull::Failed("ErrImagePull: nope".into()))],
        );
        let p1done = pod(
            "p1",
            "n1",
            &d,
            vec![("a", Pull::Pulled), ("b", Pull::Pulled)],
        );
        let s = step("shop.app", &d, &need, &[p1done.clone(), bad], 2);
        assert_eq!(
            s.failed,
            vec![("n1".into(), "c".into(), "ErrImagePull: nope".into())]
        );
        assert!(s.create.is_empty() && s.delete.is_empty());
        assert_eq!(
            failure_message(&s.failed),
            "image c cannot be pulled on node n1: ErrImagePull: nope"
        );

        // All pulled: done, every pod of this digest deleted.
        let p2done = pod("p2", "n1", &d, vec![("c", Pull::Pulled)]);
        let s = step("shop.app", &d, &need, &[p1done, p2done], 2);
        assert!(s.done());
        assert_eq!(s.delete, vec!["p1".to_string(), "p2".to_string()]);

        // Nothing missing (present on the node): done at once, leftovers deleted.
        let s = step("shop.app", &d, &BTreeMap::new(), &[p1], 2);
        assert!(s.done() && s.create.is_empty());
        assert_eq!(s.delete, vec!["p1".to_string()]);
    }

    #[test]
    fn the_pod_is_pinned_tolerant_and_labelled() {
        let d = Digest::of(b"s");
        let p = NewPod {
            name: "fermata-pull-x".into(),
            node: "n1".into(),
            images: vec!["a:1".into(), "b:2".into()],
        };
        let o = pod_object(&p, "line", "shop.app", &d);
        assert_eq!(o["spec"]["nodeName"], json!("n1"));
        assert_eq!(o["spec"]["restartPolicy"], json!("Never"));
        assert_eq!(o["spec"]["tolerations"], json!([{"operator": "Exists"}]));
        assert_eq!(o["metadata"]["labels"][PREPULL_LABEL], json!("shop.app"));
        assert_eq!(
            o["metadata"]["labels"][DIGEST_LABEL],
            json!(digest_label(&d))
        );
        let c = &o["spec"]["containers"];
        assert_eq!(c[1]["image"], json!("b:2"));
        assert_eq!(c[1]["imagePullPolicy"], json!("IfNotPresent"));
        assert_eq!(c[1]["command"], json!(["true"]));
    }
}
