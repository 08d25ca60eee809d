//! A faithful FAKE Kubernetes API server for tests: no real kube-apiserver
//! can run on this machine (no etcd, no container runtime, no network but
//! loopback), so this in-process axum server on 127.0.0.1 speaks the
//! Kubernetes API conventions for what fermata's client (kube-rs) sends, and
//! tests point kube-rs at it through a kubeconfig they write ([`FakeKube::kubeconfig`]).
//!
//! Implemented, to the API conventions:
//! - discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/{group}`,
//!   `/apis/{group}/{version}` for v1 (namespaces, configmaps, secrets,
//!   services, serviceaccounts, pods), apps/v1 (deployments, statefulsets,
//!   daemonsets), batch/v1 (jobs), coordination.k8s.io/v1 (leases),
//!   apiextensions.k8s.io/v1 (customresourcedefinitions); a created CRD adds
//!   its kind (each served version, its scope, a `/status` subresource when
//!   declared) at once, as if Established immediately; deleting it removes
//!   the kind and its objects;
//! - GET, LIST (also across namespaces) with `labelSelector` (`=`, `==`,
//!   `!=`, `key`, `!key`, `in`, `notin`) and `fieldSelector` on
//!   `metadata.name`/`metadata.namespace`;
//! - server-side apply (`PATCH` with `application/apply-patch+yaml`):
//!   `fieldManager` required, `managedFields` per manager (`FieldsV1`),
//!   a 409 Conflict naming the other manager and the field when it owns a
//!   field the apply sets to another value (unless `force=true`, which takes
//!   the field over), shared ownership on equal values, fields a manager no
//!   longer sends removed unless another manager owns them, a no-op apply
//!   writes nothing (no new resourceVersion);
//! - `POST` create (409 AlreadyExists), `PUT` replace (409 Conflict on a stale
//!   `resourceVersion`, 404 when absent), `DELETE` (404 NotFound; a
//!   Namespace takes its objects with it, a CRD its custom resources),
//!   JSON merge patch (`application/merge-patch+json`, e.g. Leases), and the
//!   `/status` subresource (PUT, merge patch, apply);
//! - `dryRun=All` on every write: the answer the write would give, nothing
//!   stored, no resourceVersion consumed;
//! - `resourceVersion` from one counter bumped by every write, `uid`,
//!   `creationTimestamp`, `generation` (bumped on changes outside metadata
//!   and status, for apps, batch and custom resources), `status` of
//!   resources with a status subresource ignored on the main resource;
//! - a namespaced object in a missing namespace: 404; invalid objects
//!   (name, label and annotation syntax, ConfigMap and Secret keys and size
//!   (Secret `data` is base64: decoded for the size, refused if not), workload
//!   selectors and containers, Job restartPolicy, CRD names): 422 Invalid;
//!   a ConfigMap data value that is not a string: 400, as the decoder says;
//! - every error is a `kind: Status` body with `reason`, `code`, `message`.
//!
//! Simulated controllers and nodes (the FAKE decides what a kubelet or the
//! Job controller would report; no container ever runs):
//! - Nodes (cluster-scoped) exist only as the test adds them
//!   ([`FakeKube::add_node`]: labels, taints, `spec.unschedulable`, the
//!   images present in `status.images`);
//! - a Pod bound to a node (`spec.nodeName`, or the first node its
//!   `nodeSelector` matches) gets a status from its images: present or
//!   pullable -> each container Running (`restartPolicy: Always`) or
//!   Terminated `Completed`, and a pulled image joins the node's images; an
//!   image the test marked unpullable ([`FakeKube::unpullable`]) -> Waiting
//!   `ErrImagePull` (then `ImagePullBackOff` on the next request) with a
//!   message naming the image; one marked slow ([`FakeKube::slow`]) ->
//!   Waiting `ContainerCreating` until [`FakeKube::release`]. A Pod no node
//!   matches stays Pending, `Unschedulable`;
//! - a Job is run by the rule the test registered for its name prefix
//!   ([`FakeKube::on_job`]), on a thread of its own (a rule may do real
//!   I/O, such as the artifact download `tests/kube_staging.rs` registers),
//!   then marked Complete or Failed with the rule's message;
//!   [`FakeKube::settle`] waits for every rule started so far; without a
//!   rule a Job keeps no status, as without a controller;
//! - a PersistentVolumeClaim is Bound at once; what a rule writes to a claim
//!   goes to a directory of the fake's ([`FakeKube::claim_dir`]);
//! - [`FakeKube::set_latency`] delays every request, for benchmarks.
//!
//! The test's handle ([`FakeKube`]) reads and changes the store directly
//! (`object`, `objects` for byte-for-byte snapshots, `update`, `set_status`
//! as a controller would), counts writes that were not dry runs
//! (`writes`), logs every request (`requests`) and injects failures
//! (`fail_writes`).
//!
//! Not implemented (fermata does not send them): watch, strategic merge
//! patch and JSON patch (415), `deletecollection`, `generateName`,
//! finalizers and graceful deletion (deletes are immediate), controllers
//! (a Deployment's status moves only when a test sets it), defaulting of
//! workload fields, OpenAPI schema validation of custom resources, field
//! validation of unknown fields, authentication. Lists are atomic for
//! ownership (the real server merges some by key, such as containers by
//! `name`): ownership is as fine-grained as map keys.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// A running fake API server; stopped when dropped.
pub struct FakeKube {
    addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    /// What the pods' volumes and claims hold (see [`FakeKube::claim_dir`]).
    volumes: Arc<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: String,
}

impl Logged {
    pub fn dry_run(&self) -> bool {
        self.query.get("dryRun").is_some_and(|v| v == "All")
    }

    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }
}

impl FakeKube {
    /// Starts the server on its own thread and runtime, so that sync tests,
    /// async tests and child processes can all talk to it.
    pub fn start() -> FakeKube {
        let volumes = Arc::new(tempfile::tempdir().expect("fake volumes"));
        let store = Arc::new(Mutex::new(Store::new()));
        {
            let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
            s.me = Arc::downgrade(&store);
            s.volumes = volumes.path().to_path_buf();
        }
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = store.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("fake runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind 127.0.0.1:0");
                addr_tx
                    .send(listener.local_addr().expect("local addr"))
                    .expect("send addr");
                let app = axum::Router::new()
                    .fallback(handle)
                    .layer(axum::extract::DefaultBodyLimit::max(8 << 20))
                    .with_state(shared);
                tokio::select! {
                    r = axum::serve(listener, app) => r.expect("serve"),
                    _ = stopped => {}
                }
            });
        });
        let addr = addr_rx.recv().expect("fake server address");
        FakeKube {
            addr,
            store,
            volumes,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig whose `context` points at this server with
    /// `namespace` as its default namespace (and is the current context).
    pub fn kubeconfig(&self, path: &Path, context: &str, namespace: &str) {
        let text = format!(
            "apiVersion: v1
kind: Config
clusters:
  - name: fake
    cluster: {{server: \"{url}\"}}
users:
  - name: fake
    user: {{}}
contexts:
  - name: {context}
    context: {{cluster: fake, user: fake, namespace: {namespace}}}
current-context: {context}
",
            url = self.url()
        );
        std::fs::write(path, text).expect("write kubeconfig");
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stored object, as a GET would return it.
    pub fn object(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let s = self.lock();
        let t = s.type_of(api_version, kind)?;
        s.objects.get(&t.key(namespace, name)).cloned()
    }

    /// Every stored object by `group/plural/namespace/name`: compare two
    /// snapshots to prove that nothing changed, byte for byte.
    pub fn objects(&self) -> BTreeMap<String, Value> {
        self.lock()
            .objects
            .iter()
            .map(|(k, v)| (format!("{}/{}/{}/{}", k.0, k.1, k.2, k.3), v.clone()))
            .collect()
    }

    /// Changes a stored object in place, as a controller would, with a new
    /// resourceVersion. Panics if it does not exist.
    pub fn update(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        edit: impl FnOnce(&mut Value),
    ) {
        let mut s = self.lock();
        let t = s.type_of(api_version, kind).expect("known kind");
        let key = t.key(namespace, name);
        s.revision += 1;
        let rv = s.revision.to_string();
        let obj = s.objects.get_mut(&key).expect("object exists");
        edit(obj);
        obj["metadata"]["resourceVersion"] = json!(rv);
    }

    /// Sets an object's `status` (a controller's job), with a new resourceVersion.
    pub fn set_status(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        status: Value,
    ) {
        self.update(api_version, kind, namespace, name, |o| o["status"] = status);
    }

    /// Writes received that were not dry runs (whether they succeeded or not).
    pub fn writes(&self) -> usize {
        self.lock()
            .log
            .iter()
            .filter(|r| r.is_write() && !r.dry_run())
            .count()
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.lock().log.clone()
    }

    /// The last resourceVersion handed out.
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    /// Makes writes (not dry runs) to paths containing `path` fail with a
    /// 500 after `skip` of them went through, `count` times: a crash of the
    /// client between two writes, as the server sees it.
    pub fn fail_writes(&self, path: &str, skip: usize, count: usize) {
        self.lock().faults.push(Fault {
            path: path.to_string(),
            skip,
            count,
        });
    }

    /// Adds a node: `labels`, `taints` (a JSON array, as `spec.taints`),
    /// `unschedulable`, and the images present on it (`status.images`).
    pub fn add_node(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        taints: Value,
        unschedulable: bool,
        images: &[&str],
    ) {
        let mut s = self.lock();
        let t = s.type_of("v1", "Node").expect("nodes are served");
        let labels: Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .chain([("kubernetes.io/hostname".to_string(), json!(name))])
            .collect();
        let obj = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints, "unschedulable": unschedulable},
            "status": {"images": images.iter().map(|i| json!({"names": [i], "sizeBytes": 1000})).collect::<Vec<_>>()},
        });
        let obj = s.stamp_new(&t, obj, false);
        s.objects.insert(t.key(None, name), obj);
    }

    /// Stores a new object as a create would (a namespaced one in its
    /// `metadata.namespace`): what an operator set up beforehand.
    pub fn create(&self, obj: Value) {
        let mut s = self.lock();
        let av = obj["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let t = s.type_of(&av, &kind).expect("known kind");
        let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = t.key(ns.as_deref(), &name);
        let obj = s.stamp_new(&t, obj, false);
        s.objects.insert(key.clone(), obj);
        s.after_write(&t, &key);
    }

    /// The images present on a node, as its `status.images` names them.
    pub fn node_images(&self, node: &str) -> BTreeSet<String> {
        let s = self.lock();
        s.objects
            .get(&(String::new(), "nodes".into(), String::new(), node.into()))
            .map(node_image_names)
            .unwrap_or_default()
    }

    /// Pulls of `image` fail (`ErrImagePull`, then `ImagePullBackOff`).
    pub fn unpullable(&self, image: &str) {
        self.lock().unpullable.insert(normalize_image(image));
    }

    /// Pulls of `image` stay in `ContainerCreating` until [`FakeKube::release`].
    pub fn slow(&self, image: &str) {
        self.lock().slow.insert(normalize_image(image));
    }

    /// A slow image's pulls complete (at the next request).
    pub fn release(&self, image: &str) {
        let mut s = self.lock();
        s.slow.remove(&normalize_image(image));
        s.run_kubelets();
    }

    /// Jobs whose name starts with `prefix` are run by `rule`: `Ok` marks
    /// the Job Complete, `Err(message)` Failed with that message.
    pub fn on_job(
        &self,
        prefix: &str,
        rule: impl Fn(&JobRun) -> Result<(), String> + Send + Sync + 'static,
    ) {
        self.lock()
            .job_rules
            .push((prefix.to_string(), Arc::new(rule)));
    }

    /// Waits until every Job rule started so far has finished and its Job
    /// has its status.
    pub fn settle(&self) {
        loop {
            let running = std::mem::take(&mut self.lock().running_jobs);
            if running.is_empty() {
                return;
            }
            for t in running {
                let _ = t.join();
            }
        }
    }

    /// Where the claim `claim` of `namespace` keeps its files.
    pub fn claim_dir(&self, namespace: &str, claim: &str) -> std::path::PathBuf {
        claim_path(self.volumes.path(), namespace, claim)
    }

    /// Every request waits this long before it is served.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }
}

#[derive(Debug)]
struct Fault {
    path: String,
    skip: usize,
    count: usize,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A kind the server serves.
#[derive(Debug, Clone)]
struct ResourceType {
    group: String,
    version: String,
    kind: String,
    plural: String,
    namespaced: bool,
    /// Has a `/status` subresource: `status` is ignored on the main resource.
    status: bool,
    /// `metadata.generation` is maintained.
    generation: bool,
    /// The CRD that defines it.
    crd: Option<String>,
}

type Key = (String, String, String, String);

impl ResourceType {
    fn builtin(
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        namespaced: bool,
        status: bool,
    ) -> Self {
        ResourceType {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced,
            status,
            generation: matches!(group, "apps" | "batch" | "apiextensions.k8s.io"),
            crd: None,
        }
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `configmaps` or `deployments.apps`, as messages name a resource.
    fn resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn key(&self, namespace: Option<&str>, name: &str) -> Key {
        (
            self.group.clone(),
            self.plural.clone(),
            if self.namespaced {
                namespace.unwrap_or_default().to_string()
            } else {
                String::new()
            },
            name.to_string(),
        )
    }
}

struct Store {
    types: Vec<ResourceType>,
    objects: BTreeMap<Key, Value>,
    revision: u64,
    uids: u64,
    log: Vec<Logged>,
    faults: Vec<Fault>,
    /// The store itself, for Job rules run on their own threads.
    me: Weak<Mutex<Store>>,
    volumes: std::path::PathBuf,
    latency: Duration,
    unpullable: BTreeSet<String>,
    /// Slow images not released yet.
    slow: BTreeSet<String>,
    job_rules: Vec<(String, JobRule)>,
    running_jobs: Vec<std::thread::JoinHandle<()>>,
}

impl Store {
    fn new() -> Store {
        use ResourceType as T;
        let types = vec![
            T::builtin("", "v1", "Namespace", "namespaces", false, true),
            T::builtin("", "v1", "ConfigMap", "configmaps", true, false),
            T::builtin("", "v1", "Secret", "secrets", true, false),
            T::builtin("", "v1", "Service", "services", true, true),
            T::builtin("", "v1", "ServiceAccount", "serviceaccounts", true, false),
            T::builtin("", "v1", "Pod", "pods", true, true),
            T::builtin("", "v1", "Node", "nodes", false, true),
            T::builtin(
                "",
                "v1",
                "PersistentVolumeClaim",
                "persistentvolumeclaims",
                true,
                true,
            ),
            T::builtin("apps", "v1", "Deployment", "deployments", true, true),
            T::builtin("apps", "v1", "StatefulSet", "statefulsets", true, true),
            T::builtin("apps", "v1", "DaemonSet", "daemonsets", true, true),
            T::builtin("batch", "v1", "Job", "jobs", true, true),
            T::builtin("batch", "v1", "CronJob", "cronjobs", true, true),
            T::builtin("coordination.k8s.io", "v1", "Lease", "leases", true, false),
            T::builtin(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
                "customresourcedefinitions",
                false,
                true,
            ),
        ];
        let mut s = Store {
            types,
            objects: BTreeMap::new(),
            revision: 0,
            uids: 0,
            log: Vec::new(),
            faults: Vec::new(),
            me: Weak::new(),
            volumes: std::path::PathBuf::new(),
            latency: Duration::ZERO,
            unpullable: BTreeSet::new(),
            slow: BTreeSet::new(),
            job_rules: Vec::new(),
            running_jobs: Vec::new(),
        };
        for ns in ["default", "kube-system", "kube-public"] {
            let t = s.types[0].clone();
            let obj = s.stamp_new(
                &t,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                false,
            );
            s.objects.insert(t.key(None, ns), obj);
        }
        s
    }

    fn type_of(&self, api_version: &str, kind: &str) -> Option<ResourceType> {
        let (group, version) = split_api_version(api_version);
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.kind == kind)
            .cloned()
    }

    fn type_by_plural(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    fn next_uid(&mut self) -> String {
        self.uids += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.uids)
    }

    /// Server-set metadata of a new object; consumes a resourceVersion
    /// unless it is a dry run.
    fn stamp_new(&mut self, t: &ResourceType, mut obj: Value, dry_run: bool) -> Value {
        let uid = self.next_uid();
        let meta = meta_mut(&mut obj);
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now()));
        if t.generation {
            meta.insert("generation".into(), json!(1));
        }
        if dry_run {
            meta.remove("resourceVersion");
        } else {
            self.revision += 1;
            meta.insert("resourceVersion".into(), json!(self.revision.to_string()));
        }
        if t.kind == "Namespace" {
            let name = obj["metadata"]["name"].clone();
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
            obj["status"] = json!({"phase": "Active"});
        }
        obj
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        self.objects
            .contains_key(&(String::new(), "namespaces".into(), String::new(), ns.into()))
    }

    /// The kinds a CRD serves, as discovery will list them.
    fn crd_types(crd: &Value) -> Vec<ResourceType> {
        let spec = &crd["spec"];
        let group = spec["group"].as_str().unwrap_or_default();
        let name = crd["metadata"]["name"].as_str().unwrap_or_default();
        spec["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["served"].as_bool().unwrap_or(false))
            .map(|v| ResourceType {
                group: group.into(),
                version: v["name"].as_str().unwrap_or_default().into(),
                kind: spec["names"]["kind"].as_str().unwrap_or_default().into(),
                plural: spec["names"]["plural"].as_str().unwrap_or_default().into(),
                namespaced: spec["scope"].as_str() != Some("Cluster"),
                status: v["subresources"]["status"].is_object(),
                generation: true,
                crd: Some(name.into()),
            })
            .collect()
    }

    /// Keeps derived state in step after a write of `obj` of type `t`.
    fn after_write(&mut self, t: &ResourceType, key: &Key) {
        let name = key.3.as_str();
        match t.kind.as_str() {
            "Pod" => self.run_kubelets(),
            "Job" => self.start_job(key),
            "PersistentVolumeClaim" => {
                if let Some(o) = self.objects.get_mut(key) {
                    if o["status"]["phase"].as_str() != Some("Bound") {
                        o["status"] = json!({"phase": "Bound"});
                    }
                }
            }
            _ => {}
        }
        if t.kind == "CustomResourceDefinition" {
            self.types.retain(|x| x.crd.as_deref() != Some(name));
            let key = t.key(None, name);
            if let Some(crd) = self.objects.get(&key).cloned() {
                self.types.extend(Store::crd_types(&crd));
            }
        }
    }

    /// Removes an object and what goes with it.
    fn remove(&mut self, t: &ResourceType, key: &Key) {
        self.objects.remove(key);
        if t.kind == "Namespace" {
            let ns = key.3.clone();
            self.objects.retain(|k, _| k.2 != ns);
        }
        if t.kind == "CustomResourceDefinition" {
            let name = key.3.clone();
            let gone: Vec<ResourceType> = self
                .types
                .iter()
                .filter(|x| x.crd.as_deref() == Some(name.as_str()))
                .cloned()
                .collect();
            self.types
                .retain(|x| x.crd.as_deref() != Some(name.as_str()));
            self.objects
                .retain(|k, _| !gone.iter().any(|g| g.group == k.0 && g.plural == k.1));
        }
        self.revision += 1;
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata").and_then(Value::as_object_mut) {
        Some(m) => m,
        None => unreachable!("metadata was just made a map"),
    }
}

// ---------------------------------------------------------------------------
// Errors: a `kind: Status` body, as every API error is.

#[derive(Debug)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Value,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: Value::Null,
        }
    }

    fn not_found(t: &ResourceType, name: &str) -> Self {
        ApiError {
            details: json!({"name": name, "group": t.group, "kind": t.plural}),
            ..ApiError::new(
                404,
                "NotFound",
                format!("{} \"{name}\" not found", t.resource()),
            )
        }
    }

    fn namespace_not_found(ns: &str) -> Self {
        ApiError {
            details: json!({"name": ns, "kind": "namespaces"}),
            ..ApiError::new(404, "NotFound", format!("namespaces \"{ns}\" not found"))
        }
    }

    fn no_resource() -> Self {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    fn stale(t: &ResourceType, name: &str) -> Self {
        ApiError {
            details: json!({"name": name, "group": t.group, "kind": t.plural}),
            ..ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been \
                     modified; please apply your changes to the latest version and try again",
                    t.resource()
                ),
            )
        }
    }

    fn invalid(t: &ResourceType, name: &str, causes: Vec<(String, String)>) -> Self {
        let kind = if t.group.is_empty() {
            t.kind.clone()
        } else {
            format!("{}.{}", t.kind, t.group)
        };
        let list: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let message = if list.len() == 1 {
            format!("{kind} \"{name}\" is invalid: {}", list[0])
        } else {
            format!("{kind} \"{name}\" is invalid: [{}]", list.join(", "))
        };
        ApiError {
            details: json!({
                "name": name, "group": t.group, "kind": t.kind,
                "causes": causes.iter().map(|(f, m)| json!({
                    "reason": "FieldValueInvalid", "message": m, "field": f,
                })).collect::<Vec<_>>(),
            }),
            ..ApiError::new(422, "Invalid", message)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !self.details.is_null() {
            body["details"] = self.details;
        }
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, axum::Json(body)).into_response()
    }
}

type Answer = Result<(StatusCode, Value), ApiError>;

fn ok(v: Value) -> Answer {
    Ok((StatusCode::OK, v))
}

// ---------------------------------------------------------------------------
// Routing.

async fn handle(
    State(store): State<Arc<Mutex<Store>>>,
    method: Method,
    uri: Uri,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let latency = store.lock().unwrap_or_else(|e| e.into_inner()).latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
    s.run_kubelets();
    s.log.push(Logged {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: query.clone(),
        content_type: content_type.clone(),
    });
    let logged = s.log.last().cloned();
    if let Some(l) = logged.filter(|l| l.is_write() && !l.dry_run()) {
        if let Some(f) = s
            .faults
            .iter_mut()
            .find(|f| f.count > 0 && l.path.contains(&f.path))
        {
            if f.skip > 0 {
                f.skip -= 1;
            } else {
                f.count -= 1;
                return ApiError::new(500, "InternalError", "injected fault").into_response();
            }
        }
    }
    let answer = route(
        &mut s,
        &method,
        uri.path(),
        &query,
        &content_type,
        &body,
        &headers,
    );
    match answer {
        Ok((code, v)) => (code, axum::Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// A request for objects of a kind.
struct Target {
    t: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn route(
    s: &mut Store,
    method: &Method,
    path: &str,
    query: &BTreeMap<String, String>,
    content_type: &str,
    body: &[u8],
    headers: &HeaderMap,
) -> Answer {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let get = method == Method::GET;
    match segs.as_slice() {
        ["version"] if get => ok(json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0-fermata-fake",
            "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc",
            "platform": "linux/amd64",
        })),
        ["api"] if get => ok(json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
        })),
        ["api", "v1"] if get => ok(resource_list(s, "", "v1")),
        ["apis"] if get => ok(json!({
            "kind": "APIGroupList", "apiVersion": "v1",
            "groups": groups(s).iter().map(|(g, vs)| group_json(g, vs)).collect::<Vec<_>>(),
        })),
        ["apis", g] if get => match groups(s).get(*g) {
            Some(vs) => ok(group_json(g, vs)),
            None => Err(ApiError::no_resource()),
        },
        ["apis", g, v] if get => {
            if s.types.iter().any(|t| t.group == *g && t.version == *v) {
                ok(resource_list(s, g, v))
            } else {
                Err(ApiError::no_resource())
            }
        }
        ["api", "v1", rest @ ..] => {
            let target = parse_target(s, "", "v1", rest)?;
            serve(s, method, target, query, content_type, body, headers)
        }
        ["apis", g, v, rest @ ..] if !rest.is_empty() => {
            let target = parse_target(s, g, v, rest)?;
            serve(s, method, target, query, content_type, body, headers)
        }
        _ => Err(ApiError::no_resource()),
    }
}

fn parse_target(s: &Store, group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let namespaced = rest.len() >= 3
        && rest[0] == "namespaces"
        && s.type_by_plural(group, version, rest[2])
            .is_some_and(|t| t.namespaced);
    let (namespace, rest) = if namespaced {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    let t = s
        .type_by_plural(group, version, rest[0])
        .ok_or_else(ApiError::no_resource)?;
    if rest.len() > 3 || (namespace.is_none() && t.namespaced && rest.len() > 1) {
        return Err(ApiError::no_resource());
    }
    let subresource = rest.get(2).map(|x| x.to_string());
    if subresource
        .as_deref()
        .is_some_and(|x| x != "status" || !t.status)
    {
        return Err(ApiError::no_resource());
    }
    Ok(Target {
        t,
        namespace,
        name: rest.get(1).map(|x| x.to_string()),
        subresource,
    })
}

/// Groups and their versions, in the order they are served.
fn groups(s: &Store) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in s.types.iter().filter(|t| !t.group.is_empty()) {
        let vs = out.entry(t.group.clone()).or_default();
        if !vs.contains(&t.version) {
            vs.push(t.version.clone());
        }
    }
    out
}

fn group_json(g: &str, versions: &[String]) -> Value {
    let gv = |v: &String| json!({"groupVersion": format!("{g}/{v}"), "version": v});
    json!({
        "kind": "APIGroup", "apiVersion": "v1", "name": g,
        "versions": versions.iter().map(gv).collect::<Vec<_>>(),
        "preferredVersion": versions.first().map(gv).unwrap_or(Value::Null),
    })
}

fn resource_list(s: &Store, group: &str, version: &str) -> Value {
    let verbs = [
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ];
    let mut resources = Vec::new();
    for t in s
        .types
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        resources.push(json!({
            "name": t.plural, "singularName": t.kind.to_lowercase(), "namespaced": t.namespaced,
            "kind": t.kind, "verbs": verbs,
        }));
        if t.status {
            resources.push(json!({
                "name": format!("{}/status", t.plural), "singularName": "",
                "namespaced": t.namespaced, "kind": t.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn serve(
    s: &mut Store,
    method: &Method,
    target: Target,
    query: &BTreeMap<String, String>,
    content_type: &str,
    body: &[u8],
    headers: &HeaderMap,
) -> Answer {
    let dry_run = match query.get("dryRun").map(String::as_str) {
        None => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid dry run option: {other:?}; the only valid value is \"All\""
            )))
        }
    };
    let user_agent = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('/').next())
        .filter(|v| !v.is_empty())
        .unwrap_or("unknown")
        .to_string();
    let manager = query.get("fieldManager").cloned();
    let name = target.name.clone();
    match (method.as_str(), name) {
        ("GET", Some(name)) => get(s, &target, &name),
        ("GET", None) => {
            if query
                .get("watch")
                .is_some_and(|w| w == "true" || w == "1")
            {
                return Err(ApiError::new(
                    405,
                    "MethodNotAllowed",
                    "watch is not implemented by the fake API server",
                ));
            }
            list(s, &target, query)
        }
        ("POST", None) if target.subresource.is_none() => {
            let obj = parse_body(body, content_type)?;
            let manager = manager.unwrap_or(user_agent);
            create(s, &target, obj, &manager, dry_run)
        }
        ("PUT", Some(name)) => {
            let obj = parse_body(body, content_type)?;
            let manager = manager.unwrap_or(user_agent);
            replace(s, &target, &name, obj, &manager, dry_run)
        }
        ("PATCH", Some(name)) => match content_type {
            "application/apply-patch+yaml" => {
                let manager = manager.ok_or_else(|| {
                    ApiError::bad_request(
                        "PATCH requests with apply content type must specify a fieldManager",
                    )
                })?;
                let force = query.get("force").is_some_and(|f| f == "true");
                let obj = parse_body(body, content_type)?;
                apply(s, &target, &name, obj, &manager, force, dry_run)
            }
            "application/merge-patch+json" => {
                let patch = parse_body(body, content_type)?;
                let manager = manager.unwrap_or(user_agent);
                merge_patch(s, &target, &name, patch, &manager, dry_run)
            }
            other => Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("the body of the request was in an unknown format - accepted media types include: application/apply-patch+yaml, application/merge-patch+json (the fake does not implement {other:?})"),
            )),
        },
        ("DELETE", Some(name)) if target.subresource.is_none() => {
            delete(s, &target, &name, dry_run)
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )),
    }
}

fn parse_body(body: &[u8], content_type: &str) -> Result<Value, ApiError> {
    let v: Value = if content_type.contains("yaml") {
        serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))?
    };
    if !v.is_object() {
        return Err(ApiError::bad_request("the body must be an object"));
    }
    Ok(v)
}

/// The object with the request's apiVersion, as the server converts it.
fn versioned(t: &ResourceType, mut obj: Value) -> Value {
    obj["apiVersion"] = json!(t.api_version());
    obj["kind"] = json!(t.kind);
    obj
}

fn get(s: &Store, target: &Target, name: &str) -> Answer {
    let key = target.t.key(target.namespace.as_deref(), name);
    match s.objects.get(&key) {
        Some(obj) => ok(versioned(&target.t, obj.clone())),
        None => Err(ApiError::not_found(&target.t, name)),
    }
}

fn list(s: &Store, target: &Target, query: &BTreeMap<String, String>) -> Answer {
    let selector = match query.get("labelSelector").filter(|q| !q.is_empty()) {
        Some(q) => parse_selector(q)
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?,
        None => Vec::new(),
    };
    let mut fields: Vec<(String, String, bool)> = Vec::new();
    for term in query
        .get("fieldSelector")
        .map(|f| f.split(',').filter(|t| !t.is_empty()).collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let (k, v, eq) = if let Some((k, v)) = term.split_once("!=") {
            (k, v, false)
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (k, v, true)
        } else {
            return Err(ApiError::bad_request(format!(
                "invalid field selector {term:?}"
            )));
        };
        if k != "metadata.name" && k != "metadata.namespace" {
            return Err(ApiError::bad_request(format!(
                "field label not supported: {k}"
            )));
        }
        fields.push((k.to_string(), v.to_string(), eq));
    }
    let t = &target.t;
    let items: Vec<Value> = s
        .objects
        .iter()
        .filter(|(k, _)| k.0 == t.group && k.1 == t.plural)
        .filter(|(k, _)| target.namespace.as_ref().is_none_or(|ns| &k.2 == ns))
        .map(|(_, o)| o)
        .filter(|o| {
            let labels = o["metadata"]["labels"].as_object();
            selector.iter().all(|r| r.matches(labels))
        })
        .filter(|o| {
            fields.iter().all(|(k, v, eq)| {
                let field = k.trim_start_matches("metadata.");
                (o["metadata"][field].as_str().unwrap_or_default() == v) == *eq
            })
        })
        .map(|o| {
            let mut o = o.clone();
            if let Some(m) = o.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
            o
        })
        .collect();
    ok(json!({
        "kind": format!("{}List", t.kind),
        "apiVersion": t.api_version(),
        "metadata": {"resourceVersion": s.revision.to_string()},
        "items": items,
    }))
}

/// Name and namespace of a body against the URL.
fn check_identity(
    t: &ResourceType,
    target: &Target,
    obj: &mut Value,
    url_name: Option<&str>,
) -> Result<String, ApiError> {
    let av = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    if !av.is_empty() && (av != t.api_version() || (!kind.is_empty() && kind != t.kind)) {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            t.api_version()
        )));
    }
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if let Some(url) = url_name {
        if !name.is_empty() && name != url {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({name}) does not match the name on the URL ({url})"
            )));
        }
        meta_mut(obj).insert("name".into(), json!(url));
    }
    let body_ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
    if t.namespaced {
        let ns = target.namespace.clone().unwrap_or_default();
        if body_ns.as_ref().is_some_and(|b| !b.is_empty() && *b != ns) {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        meta_mut(obj).insert("namespace".into(), json!(ns));
    } else {
        meta_mut(obj).remove("namespace");
    }
    Ok(obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

fn require_namespace(s: &Store, target: &Target) -> Result<(), ApiError> {
    match &target.namespace {
        Some(ns) if target.t.namespaced && !s.namespace_exists(ns) => {
            Err(ApiError::namespace_not_found(ns))
        }
        _ => Ok(()),
    }
}

/// Drops what a client may not set: server-populated metadata, and `status`
/// where it is a subresource.
fn strip_server_fields(t: &ResourceType, obj: &mut Value, keep_status: bool) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in [
            "uid",
            "creationTimestamp",
            "generation",
            "managedFields",
            "selfLink",
            "deletionTimestamp",
        ] {
            m.remove(f);
        }
    }
    if t.status && !keep_status {
        if let Some(o) = obj.as_object_mut() {
            o.remove("status");
        }
    }
}

fn create(s: &mut Store, target: &Target, mut obj: Value, manager: &str, dry_run: bool) -> Answer {
    let t = target.t.clone();
    let name = check_identity(&t, target, &mut obj, None)?;
    strip_server_fields(&t, &mut obj, false);
    meta_mut(&mut obj).remove("resourceVersion");
    obj = versioned(&t, obj);
    validate(&t, &name, &obj)?;
    require_namespace(s, target)?;
    let key = t.key(target.namespace.as_deref(), &name);
    if s.objects.contains_key(&key) {
        return Err(ApiError {
            details: json!({"name": name, "group": t.group, "kind": t.plural}),
            ..ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", t.resource()),
            )
        });
    }
    let fields = leaves(&tracked(&t, &obj));
    let mut obj = s.stamp_new(&t, obj, dry_run);
    write_managed(
        &mut obj,
        &[Managed {
            manager: manager.into(),
            operation: "Update".into(),
            api_version: t.api_version(),
            time: now(),
            fields,
            subresource: None,
        }],
    );
    if !dry_run {
        s.objects.insert(key.clone(), obj.clone());
        s.after_write(&t, &key);
    }
    Ok((StatusCode::CREATED, obj))
}

fn replace(
    s: &mut Store,
    target: &Target,
    name: &str,
    mut obj: Value,
    manager: &str,
    dry_run: bool,
) -> Answer {
    let t = target.t.clone();
    check_identity(&t, target, &mut obj, Some(name))?;
    let key = t.key(target.namespace.as_deref(), name);
    let Some(live) = s.objects.get(&key).cloned() else {
        return Err(ApiError::not_found(&t, name));
    };
    if let Some(rv) = obj["metadata"]["resourceVersion"].as_str() {
        if rv
            != live["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
        {
            return Err(ApiError::stale(&t, name));
        }
    }
    let status_only = target.subresource.is_some();
    let new = if status_only {
        let mut new = live.clone();
        new["status"] = obj["status"].clone();
        new
    } else {
        strip_server_fields(&t, &mut obj, false);
        let mut new = versioned(&t, obj);
        keep_server_fields(&t, &live, &mut new);
        new
    };
    validate(&t, name, &new)?;
    store_update(
        s,
        &t,
        key,
        &live,
        new,
        manager,
        "Update",
        status_only,
        dry_run,
    )
}

fn merge_patch(
    s: &mut Store,
    target: &Target,
    name: &str,
    patch: Value,
    manager: &str,
    dry_run: bool,
) -> Answer {
    let t = target.t.clone();
    let key = t.key(target.namespace.as_deref(), name);
    let Some(live) = s.objects.get(&key).cloned() else {
        return Err(ApiError::not_found(&t, name));
    };
    if let Some(rv) = patch["metadata"]["resourceVersion"].as_str() {
        if rv
            != live["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
        {
            return Err(ApiError::stale(&t, name));
        }
    }
    let status_only = target.subresource.is_some();
    let mut new = live.clone();
    if status_only {
        let mut status = live["status"].clone();
        merge(&mut status, &patch["status"]);
        new["status"] = status;
    } else {
        let mut patch = patch;
        strip_server_fields(&t, &mut patch, false);
        if let Some(m) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("name");
            m.remove("namespace");
            m.remove("resourceVersion");
        }
        merge(&mut new, &patch);
    }
    validate(&t, name, &new)?;
    store_update(
        s,
        &t,
        key,
        &live,
        new,
        manager,
        "Update",
        status_only,
        dry_run,
    )
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Some(t) = target.as_object_mut() {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Copies what the server owns from the live object into a replacement.
fn keep_server_fields(t: &ResourceType, live: &Value, new: &mut Value) {
    let m = meta_mut(new);
    for f in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
        match live["metadata"].get(f) {
            Some(v) => {
                m.insert(f.into(), v.clone());
            }
            None => {
                m.remove(f);
            }
        }
    }
    if t.status {
        match live.get("status") {
            Some(st) => new["status"] = st.clone(),
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    }
}

/// Stores an update of `live` (ownership as an `Update` by `manager`: it
/// takes every field it changed), with a new resourceVersion if anything
/// changed at all.
#[allow(clippy::too_many_arguments)]
fn store_update(
    s: &mut Store,
    t: &ResourceType,
    key: Key,
    live: &Value,
    mut new: Value,
    manager: &str,
    operation: &str,
    status_only: bool,
    dry_run: bool,
) -> Answer {
    let old_fields = leaves(&tracked(t, live));
    let new_fields = leaves(&tracked(t, &new));
    let changed: BTreeSet<FieldPath> = new_fields
        .iter()
        .filter(|p| get_path(live, p) != get_path(&new, p))
        .cloned()
        .collect();
    let mut managed = read_managed(live);
    for m in &mut managed {
        m.fields.retain(|f| {
            !changed.iter().any(|c| overlaps(c, f)) && new_fields.iter().any(|n| overlaps(n, f))
        });
    }
    let sub = status_only.then(|| "status".to_string());
    if !changed.is_empty() {
        let entry = managed
            .iter_mut()
            .find(|m| m.manager == manager && m.operation == operation && m.subresource == sub);
        match entry {
            Some(e) => {
                e.fields.extend(changed.iter().cloned());
                e.time = now();
            }
            None => managed.push(Managed {
                manager: manager.into(),
                operation: operation.into(),
                api_version: t.api_version(),
                time: now(),
                fields: changed.clone(),
                subresource: sub,
            }),
        }
    }
    managed.retain(|m| !m.fields.is_empty());
    let _ = old_fields;
    finish_write(s, t, key, live, &mut new, managed, dry_run)
}

/// Sets generation, managedFields and resourceVersion, and stores `new`
/// unless nothing changed or it is a dry run.
fn finish_write(
    s: &mut Store,
    t: &ResourceType,
    key: Key,
    live: &Value,
    new: &mut Value,
    managed: Vec<Managed>,
    dry_run: bool,
) -> Answer {
    if t.generation && spec_of(live) != spec_of(new) {
        let g = live["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        meta_mut(new).insert("generation".into(), json!(g));
    }
    write_managed(new, &managed);
    let unchanged = without_times(live) == without_times(new);
    if unchanged {
        return ok(live.clone());
    }
    if !dry_run {
        s.revision += 1;
        meta_mut(new).insert("resourceVersion".into(), json!(s.revision.to_string()));
        s.objects.insert(key.clone(), new.clone());
        s.after_write(t, &key);
    }
    ok(new.clone())
}

/// The object without metadata and status: what `generation` counts.
fn spec_of(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        for f in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(f);
        }
    }
    o
}

/// An object with the managedFields timestamps blanked: a write that changes
/// only those is a no-op, and the server does not store it.
fn without_times(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(list) = o["metadata"]
        .get_mut("managedFields")
        .and_then(Value::as_array_mut)
    {
        for m in list {
            if let Some(m) = m.as_object_mut() {
                m.remove("time");
            }
        }
    }
    o
}

fn delete(s: &mut Store, target: &Target, name: &str, dry_run: bool) -> Answer {
    let t = target.t.clone();
    let key = t.key(target.namespace.as_deref(), name);
    if !s.objects.contains_key(&key) {
        return Err(ApiError::not_found(&t, name));
    }
    let uid = s.objects[&key]["metadata"]["uid"].clone();
    if !dry_run {
        s.remove(&t, &key);
    }
    ok(json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
        "details": {"name": name, "group": t.group, "kind": t.plural, "uid": uid},
    }))
}

// ---------------------------------------------------------------------------
// Server-side apply.

/// A field: the map keys from the root to it.
type FieldPath = Vec<String>;

#[derive(Debug, Clone)]
struct Managed {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    fields: BTreeSet<FieldPath>,
    subresource: Option<String>,
}

/// The part of an object whose fields have owners: not apiVersion, kind,
/// name, namespace or server-set metadata.
fn tracked(t: &ResourceType, obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
        if t.status {
            // Owned through the status subresource, tracked there.
        }
    }
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in [
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
            "selfLink",
            "deletionTimestamp",
        ] {
            m.remove(f);
        }
    }
    o
}

/// Leaf fields: scalars and (atomic) lists; maps are walked, empty maps and
/// nulls own nothing.
fn leaves(v: &Value) -> BTreeSet<FieldPath> {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    path.push(k.clone());
                    walk(x, path, out);
                    path.pop();
                }
            }
            Value::Null => {}
            _ => {
                if !path.is_empty() {
                    out.insert(path.clone());
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// One field contains the other (or they are the same).
fn overlaps(a: &FieldPath, b: &FieldPath) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

fn get_path<'a>(v: &'a Value, p: &[String]) -> Option<&'a Value> {
    p.iter().try_fold(v, |v, k| v.as_object()?.get(k))
}

fn set_path(v: &mut Value, p: &[String], x: Value) {
    let mut cur = v;
    for k in &p[..p.len().saturating_sub(1)] {
        if !cur.get(k).is_some_and(Value::is_object) {
            cur[k.as_str()] = json!({});
        }
        cur = &mut cur[k.as_str()];
    }
    if let Some(last) = p.last() {
        cur[last.as_str()] = x;
    }
}

/// Removes a field, and the maps that it leaves empty.
fn remove_path(v: &mut Value, p: &[String]) {
    let Some((first, rest)) = p.split_first() else {
        return;
    };
    let Some(m) = v.as_object_mut() else {
        return;
    };
    if rest.is_empty() {
        m.remove(first);
        return;
    }
    if let Some(child) = m.get_mut(first) {
        remove_path(child, rest);
        if child.as_object().is_some_and(|c| c.is_empty()) {
            m.remove(first);
        }
    }
}

/// `FieldsV1`: `{"f:data": {"f:key": {}}}`.
fn fields_v1(fields: &BTreeSet<FieldPath>) -> Value {
    let mut root = json!({});
    for p in fields {
        let mut cur = &mut root;
        for k in p {
            let key = format!("f:{k}");
            if !cur.get(&key).is_some_and(Value::is_object) {
                cur[key.as_str()] = json!({});
            }
            cur = &mut cur[key.as_str()];
        }
    }
    root
}

fn parse_fields_v1(v: &Value) -> BTreeSet<FieldPath> {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        let Some(m) = v.as_object() else { return };
        let children: Vec<_> = m.iter().filter(|(k, _)| k.starts_with("f:")).collect();
        if children.is_empty() && !path.is_empty() {
            out.insert(path.clone());
        }
        for (k, x) in children {
            path.push(k[2..].to_string());
            walk(x, path, out);
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

fn read_managed(obj: &Value) -> Vec<Managed> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| Managed {
            manager: m["manager"].as_str().unwrap_or_default().into(),
            operation: m["operation"].as_str().unwrap_or_default().into(),
            api_version: m["apiVersion"].as_str().unwrap_or_default().into(),
            time: m["time"].as_str().unwrap_or_default().into(),
            fields: parse_fields_v1(&m["fieldsV1"]),
            subresource: m["subresource"].as_str().map(str::to_string),
        })
        .collect()
}

fn write_managed(obj: &mut Value, managed: &[Managed]) {
    let list: Vec<Value> = managed
        .iter()
        .map(|m| {
            let mut e = json!({
                "manager": m.manager, "operation": m.operation, "apiVersion": m.api_version,
                "time": m.time, "fieldsType": "FieldsV1", "fieldsV1": fields_v1(&m.fields),
            });
            if let Some(sub) = &m.subresource {
                e["subresource"] = json!(sub);
            }
            e
        })
        .collect();
    if list.is_empty() {
        meta_mut(obj).remove("managedFields");
    } else {
        meta_mut(obj).insert("managedFields".into(), json!(list));
    }
}

fn apply(
    s: &mut Store,
    target: &Target,
    name: &str,
    mut obj: Value,
    manager: &str,
    force: bool,
    dry_run: bool,
) -> Answer {
    let t = target.t.clone();
    if obj["apiVersion"].as_str().unwrap_or_default().is_empty()
        || obj["kind"].as_str().unwrap_or_default().is_empty()
    {
        return Err(ApiError::bad_request(
            "apiVersion and kind must be set in an apply patch",
        ));
    }
    check_identity(&t, target, &mut obj, Some(name))?;
    let status_only = target.subresource.is_some();
    let key = t.key(target.namespace.as_deref(), name);
    let live = s.objects.get(&key).cloned();
    if live.is_none() {
        require_namespace(s, target)?;
    }
    if let (Some(rv), Some(live)) = (obj["metadata"]["resourceVersion"].as_str(), &live) {
        if rv
            != live["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
        {
            return Err(ApiError::stale(&t, name));
        }
    }
    let Some(live) = live else {
        if status_only {
            return Err(ApiError::not_found(&t, name));
        }
        // An apply of a new object creates it, owned by this manager.
        strip_server_fields(&t, &mut obj, false);
        meta_mut(&mut obj).remove("resourceVersion");
        let obj = versioned(&t, obj);
        validate(&t, name, &obj)?;
        let fields = leaves(&tracked(&t, &obj));
        let mut obj = s.stamp_new(&t, obj, dry_run);
        write_managed(
            &mut obj,
            &[Managed {
                manager: manager.into(),
                operation: "Apply".into(),
                api_version: t.api_version(),
                time: now(),
                fields,
                subresource: None,
            }],
        );
        if !dry_run {
            s.objects.insert(key.clone(), obj.clone());
            s.after_write(&t, &key);
        }
        return Ok((StatusCode::CREATED, obj));
    };

    // What this apply sets: the main resource without status where that is
    // a subresource, or only status through /status.
    let mut applied = tracked(&t, &obj);
    if let Some(m) = applied.as_object_mut() {
        if status_only {
            m.retain(|k, _| k == "status");
        } else if t.status {
            m.remove("status");
        }
    }
    let sub = status_only.then(|| "status".to_string());
    let in_scope = |p: &FieldPath| {
        (p.first().map(String::as_str) == Some("status")) == status_only || !t.status
    };
    let new_fields = leaves(&applied);
    let mut managed = read_managed(&live);

    // Conflicts: another manager owns a field this apply sets to another value.
    let mut conflicts: Vec<(String, FieldPath)> = Vec::new();
    for m in &managed {
        if m.manager == manager && m.operation == "Apply" && m.subresource == sub {
            continue;
        }
        for p in &new_fields {
            if m.fields.iter().any(|f| overlaps(f, p))
                && get_path(&live, p) != get_path(&applied, p)
            {
                conflicts.push((m.manager.clone(), p.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(m, p)| {
                json!({
                    "reason": "FieldManagerConflict",
                    "message": format!("conflict with \"{m}\" using {}", t.api_version()),
                    "field": format!(".{}", p.join(".")),
                })
            })
            .collect();
        let message = if conflicts.len() == 1 {
            format!(
                "Apply failed with 1 conflict: conflict with \"{}\" using {}: .{}",
                conflicts[0].0,
                t.api_version(),
                conflicts[0].1.join(".")
            )
        } else {
            format!(
                "Apply failed with {} conflicts: {}",
                conflicts.len(),
                conflicts
                    .iter()
                    .map(|(m, p)| format!(
                        "conflict with \"{m}\" using {}: .{}",
                        t.api_version(),
                        p.join(".")
                    ))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        };
        return Err(ApiError {
            details: json!({"name": name, "group": t.group, "kind": t.plural, "causes": causes}),
            ..ApiError::new(409, "Conflict", message)
        });
    }
    // Forced: the conflicting fields change owner.
    for (owner, p) in &conflicts {
        for m in managed.iter_mut().filter(|m| &m.manager == owner) {
            m.fields.retain(|f| !overlaps(f, p));
        }
    }

    let mut new = live.clone();
    for p in &new_fields {
        if let Some(x) = get_path(&applied, p) {
            set_path(&mut new, p, x.clone());
        }
    }
    // Empty maps the apply names exist afterwards, owned by nobody.
    ensure_maps(&mut new, &applied);

    // Fields this manager applied before and no longer sends go, unless
    // another manager owns them.
    let before: BTreeSet<FieldPath> = managed
        .iter()
        .find(|m| m.manager == manager && m.operation == "Apply" && m.subresource == sub)
        .map(|m| m.fields.clone())
        .unwrap_or_default();
    for p in before.iter().filter(|p| in_scope(p)) {
        if new_fields.iter().any(|n| overlaps(n, p)) {
            continue;
        }
        let owned_elsewhere = managed.iter().any(|m| {
            !(m.manager == manager && m.operation == "Apply" && m.subresource == sub)
                && m.fields.iter().any(|f| overlaps(f, p))
        });
        if !owned_elsewhere {
            remove_path(&mut new, p);
        }
    }
    match managed
        .iter_mut()
        .find(|m| m.manager == manager && m.operation == "Apply" && m.subresource == sub)
    {
        Some(m) => {
            if m.fields != new_fields {
                m.time = now();
            }
            m.fields = new_fields;
        }
        None => managed.push(Managed {
            manager: manager.into(),
            operation: "Apply".into(),
            api_version: t.api_version(),
            time: now(),
            fields: new_fields,
            subresource: sub,
        }),
    }
    managed.retain(|m| !m.fields.is_empty());
    validate(&t, name, &new)?;
    finish_write(s, &t, key, &live, &mut new, managed, dry_run)
}

fn ensure_maps(target: &mut Value, applied: &Value) {
    if let (Some(t), Some(a)) = (target.as_object_mut(), applied.as_object()) {
        for (k, v) in a {
            if let Some(am) = v.as_object() {
                let entry = t.entry(k.clone()).or_insert_with(|| json!({}));
                if entry.is_object() && !am.is_empty() {
                    ensure_maps(entry, v);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Validation: what the real server checks of what fermata sends.

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// `(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?`, at most 63 characters.
fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_qualified_part(s)
}

fn is_qualified_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A label or annotation key: `[prefix/]name`.
fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_qualified_part(name),
        None => is_qualified_part(s),
    }
}

fn validate(t: &ResourceType, name: &str, obj: &Value) -> Result<(), ApiError> {
    let mut causes: Vec<(String, String)> = Vec::new();
    let mut bad = |f: &str, m: String| causes.push((f.to_string(), m));
    let meta = &obj["metadata"];
    let name_ok = match t.kind.as_str() {
        "Namespace" | "Service" => is_dns_label(name),
        _ => is_dns_subdomain(name),
    };
    if name.is_empty() {
        bad(
            "metadata.name",
            "Required value: name or generateName is required".into(),
        );
    } else if !name_ok {
        bad(
            "metadata.name",
            format!("Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
        );
    }
    for (k, v) in meta["labels"].as_object().into_iter().flatten() {
        if !is_qualified_name(k) {
            bad("metadata.labels", format!("Invalid value: \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
        match v.as_str() {
            Some(v) if is_label_value(v) => {}
            Some(v) => bad("metadata.labels", format!("Invalid value: \"{v}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character, and at most 63 characters")),
            None => return Err(ApiError::bad_request(format!("json: cannot unmarshal {v} into Go struct field ObjectMeta.metadata.labels of type string"))),
        }
    }
    let mut size = 0;
    for (k, v) in meta["annotations"].as_object().into_iter().flatten() {
        if !is_qualified_name(k) {
            bad("metadata.annotations", format!("Invalid value: \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
        match v.as_str() {
            Some(v) => size += k.len() + v.len(),
            None => return Err(ApiError::bad_request(format!("json: cannot unmarshal {v} into Go struct field ObjectMeta.metadata.annotations of type string"))),
        }
    }
    if size > 256 * 1024 {
        bad(
            "metadata.annotations",
            "Too long: must have at most 262144 bytes".into(),
        );
    }
    let spec = &obj["spec"];
    match (t.group.as_str(), t.kind.as_str()) {
        ("", "ConfigMap") | ("", "Secret") => {
            let mut total = 0;
            for field in ["data", "binaryData", "stringData"] {
                for (k, v) in obj[field].as_object().into_iter().flatten() {
                    let key_ok = !k.is_empty()
                        && k.len() <= 253
                        && k.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                    if !key_ok {
                        bad(&format!("{field}[{k}]"), format!("Invalid value: \"{k}\": a valid config key must consist of alphanumeric characters, '-', '_' or '.'"));
                    }
                    let binary = field == "binaryData" || (t.kind == "Secret" && field == "data");
                    match v.as_str() {
                        Some(v) if binary => match base64_len(v) {
                            Ok(n) => total += k.len() + n,
                            Err(at) => return Err(ApiError::bad_request(format!("illegal base64 data at input byte {at}"))),
                        },
                        Some(v) => total += k.len() + v.len(),
                        None => return Err(ApiError::bad_request(format!("json: cannot unmarshal {} into Go struct field {}.{field} of type string", json_type(v), t.kind))),
                    }
                }
            }
            if total > 1024 * 1024 {
                bad("[]", "Too long: must have at most 1048576 bytes".into());
            }
        }
        ("apps", _) => {
            let selector = &spec["selector"];
            if !selector.is_object() {
                bad("spec.selector", "Required value".into());
            } else {
                let want = selector["matchLabels"].as_object();
                let have = spec["template"]["metadata"]["labels"].as_object();
                let matches = want.is_some_and(|w| {
                    !w.is_empty()
                        && w.iter()
                            .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
                });
                if !matches {
                    bad(
                        "spec.template.metadata.labels",
                        format!(
                            "Invalid value: {}: `selector` does not match template `labels`",
                            spec["template"]["metadata"]["labels"]
                        ),
                    );
                }
            }
            containers(&spec["template"]["spec"], "spec.template.spec", &mut bad);
        }
        ("batch", "Job") => {
            let pod = &spec["template"]["spec"];
            containers(pod, "spec.template.spec", &mut bad);
            match pod["restartPolicy"].as_str() {
                Some("Never") | Some("OnFailure") => {}
                Some(p) => bad(
                    "spec.template.spec.restartPolicy",
                    format!(
                        "Unsupported value: \"{p}\": supported values: \"OnFailure\", \"Never\""
                    ),
                ),
                None => bad(
                    "spec.template.spec.restartPolicy",
                    "Required value: valid values: \"OnFailure\", \"Never\"".into(),
                ),
            }
        }
        ("", "Pod") => containers(spec, "spec", &mut bad),
        ("", "Service") => {
            let headless = spec["clusterIP"].as_str() == Some("None")
                || spec["type"].as_str() == Some("ExternalName");
            let ports = spec["ports"].as_array();
            if !headless && ports.is_none_or(|p| p.is_empty()) {
                bad("spec.ports", "Required value".into());
            }
            for (i, p) in ports.into_iter().flatten().enumerate() {
                if !p["port"].as_u64().is_some_and(|n| (1..=65535).contains(&n)) {
                    bad(
                        &format!("spec.ports[{i}].port"),
                        format!(
                            "Invalid value: {}: must be between 1 and 65535, inclusive",
                            p["port"]
                        ),
                    );
                }
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            let group = spec["group"].as_str().unwrap_or_default();
            let plural = spec["names"]["plural"].as_str().unwrap_or_default();
            if group.is_empty() {
                bad("spec.group", "Required value".into());
            }
            if plural.is_empty() {
                bad("spec.names.plural", "Required value".into());
            }
            if spec["names"]["kind"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
            {
                bad("spec.names.kind", "Required value".into());
            }
            if !matches!(spec["scope"].as_str(), Some("Namespaced") | Some("Cluster")) {
                bad(
                    "spec.scope",
                    "Unsupported value: supported values: \"Cluster\", \"Namespaced\"".into(),
                );
            }
            let versions = spec["versions"].as_array();
            let storage = versions
                .into_iter()
                .flatten()
                .filter(|v| v["storage"].as_bool() == Some(true))
                .count();
            if versions.is_none_or(|v| v.is_empty()) {
                bad(
                    "spec.versions",
                    "Invalid value: must have exactly one version marked as storage version".into(),
                );
            } else if storage != 1 {
                bad("spec.versions", format!("Invalid value: must have exactly one version marked as storage version, status.storedVersions[{storage}]"));
            }
            if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
                bad(
                    "metadata.name",
                    format!(
                        "Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"
                    ),
                );
            }
        }
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(t, name, causes))
    }
}

/// The decoded length of standard base64 text, or the offset of the first
/// byte that is not base64.
fn base64_len(s: &str) -> Result<usize, usize> {
    let b = s.as_bytes();
    let pad = b.iter().rev().take_while(|&&c| c == b'=').count();
    if pad > 2 {
        return Err(b.len() - pad);
    }
    if let Some(at) = b[..b.len() - pad]
        .iter()
        .position(|c| !(c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/'))
    {
        return Err(at);
    }
    if !b.len().is_multiple_of(4) {
        return Err(b.len());
    }
    Ok(b.len() / 4 * 3 - pad)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Number(_) => "number",
        Value::Bool(_) => "bool",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
        _ => "value",
    }
}

fn containers(pod: &Value, at: &str, bad: &mut impl FnMut(&str, String)) {
    let list = pod["containers"].as_array();
    if list.is_none_or(|c| c.is_empty()) {
        bad(&format!("{at}.containers"), "Required value".into());
    }
    for (i, c) in list.into_iter().flatten().enumerate() {
        if c["name"].as_str().unwrap_or_default().is_empty() {
            bad(
                &format!("{at}.containers[{i}].name"),
                "Required value".into(),
            );
        }
        if c["image"].as_str().unwrap_or_default().is_empty() {
            bad(
                &format!("{at}.containers[{i}].image"),
                "Required value".into(),
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Simulated kubelets, Job controller and claims: the FAKE decides.

/// What a Job rule decides from: the Job, its first container's command and
/// environment (`secretKeyRef`s resolved from the store when the Job was
/// created), and where its claim mounts are on disk.
#[derive(Debug, Clone)]
pub struct JobRun {
    pub job: Value,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Mount path in the container -> the claim's directory.
    pub mounts: BTreeMap<String, std::path::PathBuf>,
}

impl JobRun {
    /// The host path of `path` inside the container, through its mounts.
    pub fn host_path(&self, path: &str) -> Option<std::path::PathBuf> {
        self.mounts
            .iter()
            .filter(|(m, _)| {
                path == m.as_str() || path.starts_with(&format!("{}/", m.trim_end_matches('/')))
            })
            .max_by_key(|(m, _)| m.len())
            .map(|(m, dir)| dir.join(path[m.len()..].trim_start_matches('/')))
    }
}

type JobRule = Arc<dyn Fn(&JobRun) -> Result<(), String> + Send + Sync>;

fn claim_path(root: &Path, namespace: &str, claim: &str) -> std::path::PathBuf {
    let dir = root.join(namespace).join(claim);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// An image reference as the kubelet resolves it: `nginx` is
/// `docker.io/library/nginx:latest`.
fn normalize_image(image: &str) -> String {
    let (name, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    let (repo, tag) = match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t)),
        _ => (name, None),
    };
    let first = repo.split('/').next().unwrap_or_default();
    let repo = if repo.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost")
    {
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

fn node_image_names(node: &Value) -> BTreeSet<String> {
    node["status"]["images"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["names"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

impl Store {
    fn nodes(&self) -> Vec<(Key, Value)> {
        self.objects
            .iter()
            .filter(|(k, _)| k.0.is_empty() && k.1 == "nodes")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The node a pod runs on: its `nodeName`, else the first node its
    /// `nodeSelector` matches (the scheduler binds it there).
    fn bind(&self, pod: &Value) -> Option<String> {
        if let Some(n) = pod["spec"]["nodeName"].as_str() {
            return Some(n.to_string());
        }
        let selector = pod["spec"]["nodeSelector"].as_object();
        self.nodes().into_iter().find_map(|(k, node)| {
            let labels = node["metadata"]["labels"].as_object();
            let fits = selector
                .into_iter()
                .flatten()
                .all(|(lk, lv)| labels.and_then(|l| l.get(lk)) == Some(lv));
            (fits && node["spec"]["unschedulable"].as_bool() != Some(true)).then(|| k.3.clone())
        })
    }

    /// Every pod not finished gets the status its node's kubelet would
    /// report, as the FAKE decides from the images (see the module doc).
    /// A fake without nodes has no kubelets: pods keep what tests set.
    fn run_kubelets(&mut self) {
        if self.nodes().is_empty() {
            return;
        }
        let pods: Vec<Key> = self
            .objects
            .keys()
            .filter(|k| k.0.is_empty() && k.1 == "pods")
            .cloned()
            .collect();
        for key in pods {
            let pod = self.objects[&key].clone();
            if matches!(
                pod["status"]["phase"].as_str(),
                Some("Succeeded" | "Failed")
            ) {
                continue;
            }
            let Some(node) = self.bind(&pod) else {
                let status = json!({"phase": "Pending", "conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": "0/N nodes are available: no node matches the pod"}]});
                self.set_pod_status(&key, None, status);
                continue;
            };
            let node_key = (
                String::new(),
                "nodes".to_string(),
                String::new(),
                node.clone(),
            );
            let Some(node_obj) = self.objects.get(&node_key).cloned() else {
                let status = json!({"phase": "Pending"});
                self.set_pod_status(&key, Some(&node), status);
                continue;
            };
            let present: BTreeSet<String> = node_image_names(&node_obj)
                .iter()
                .map(|n| normalize_image(n))
                .collect();
            let restart = pod["spec"]["restartPolicy"].as_str().unwrap_or("Always");
            let previous = |name: &str| {
                pod["status"]["containerStatuses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["name"].as_str() == Some(name))
                    .and_then(|c| c["state"]["waiting"]["reason"].as_str())
                    .map(str::to_string)
            };
            let mut pulled = Vec::new();
            let mut statuses = Vec::new();
            let (mut waiting, mut running) = (false, false);
            let containers = pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(pod["spec"]["containers"].as_array().into_iter().flatten());
            for c in containers {
                let name = c["name"].as_str().unwrap_or_default();
                let image = c["image"].as_str().unwrap_or_default();
                let norm = normalize_image(image);
                let state = if present.contains(&norm)
                    || (!self.unpullable.contains(&norm) && !self.slow.contains(&norm))
                {
                    if !present.contains(&norm) {
                        pulled.push(norm.clone());
                    }
                    if restart == "Always" {
                        running = true;
                        json!({"running": {"startedAt": now()}})
                    } else {
                        json!({"terminated": {"exitCode": 0, "reason": "Completed"}})
                    }
                } else if self.unpullable.contains(&norm) {
                    waiting = true;
                    if previous(name)
                        .is_some_and(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
                    {
                        json!({"waiting": {"reason": "ImagePullBackOff",
                            "message": format!("Back-off pulling image \"{image}\": ErrImagePull: {image}: not found")}})
                    } else {
                        json!({"waiting": {"reason": "ErrImagePull",
                            "message": format!("failed to pull and unpack image \"{norm}\": {norm}: not found")}})
                    }
                } else {
                    waiting = true;
                    json!({"waiting": {"reason": "ContainerCreating"}})
                };
                statuses.push(json!({"name": name, "image": image, "ready": state.get("running").is_some(), "state": state}));
            }
            let phase = if waiting {
                "Pending"
            } else if running {
                "Running"
            } else {
                "Succeeded"
            };
            if !pulled.is_empty() {
                if let Some(n) = self.objects.get_mut(&node_key) {
                    let list = n["status"]["images"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let mut list = list;
                    for p in pulled {
                        list.push(json!({"names": [p], "sizeBytes": 1000}));
                    }
                    n["status"]["images"] = json!(list);
                }
            }
            let status = json!({"phase": phase, "containerStatuses": statuses});
            self.set_pod_status(&key, Some(&node), status);
        }
    }

    fn set_pod_status(&mut self, key: &Key, node: Option<&str>, status: Value) {
        let Some(pod) = self.objects.get(key) else {
            return;
        };
        let mut new = pod.clone();
        if let Some(n) = node {
            new["spec"]["nodeName"] = json!(n);
        }
        new["status"] = status;
        if new != *pod {
            self.revision += 1;
            new["metadata"]["resourceVersion"] = json!(self.revision.to_string());
            self.objects.insert(key.clone(), new);
        }
    }

    /// A new Job is run by its rule on a thread of its own.
    fn start_job(&mut self, key: &Key) {
        let Some(job) = self.objects.get(key).cloned() else {
            return;
        };
        if job["status"]["startTime"].is_string() {
            return;
        }
        let Some(rule) = self
            .job_rules
            .iter()
            .find(|(prefix, _)| key.3.starts_with(prefix.as_str()))
            .map(|(_, r)| r.clone())
        else {
            return;
        };
        if let Some(o) = self.objects.get_mut(key) {
            o["status"] = json!({"startTime": now(), "active": 1});
        }
        let ns = key.2.clone();
        let pod = &job["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let mut env = BTreeMap::new();
        for e in container["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap_or_default().to_string();
            if let Some(v) = e["value"].as_str() {
                env.insert(name, v.to_string());
            } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
                let secret = self.objects.get(&(
                    String::new(),
                    "secrets".into(),
                    ns.clone(),
                    r.get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .into(),
                ));
                let key = r.get("key").and_then(Value::as_str).unwrap_or_default();
                if let Some(v) = secret
                    .and_then(|s| s["data"][key].as_str())
                    .and_then(base64_decode)
                {
                    env.insert(name, v);
                }
            }
        }
        let mut mounts = BTreeMap::new();
        for v in pod["volumes"].as_array().into_iter().flatten() {
            let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() else {
                continue;
            };
            let vname = v["name"].as_str().unwrap_or_default();
            for m in container["volumeMounts"].as_array().into_iter().flatten() {
                if m["name"].as_str() == Some(vname) {
                    let path = m["mountPath"].as_str().unwrap_or_default().to_string();
                    mounts.insert(path, claim_path(&self.volumes, &ns, claim));
                }
            }
        }
        let run = JobRun {
            job: job.clone(),
            command: container["command"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(container["args"].as_array().into_iter().flatten())
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            env,
            mounts,
        };
        let me = self.me.clone();
        let key = key.clone();
        let thread = std::thread::spawn(move || {
            let result = rule(&run);
            let Some(store) = me.upgrade() else {
                return;
            };
            let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
            s.revision += 1;
            let rv = s.revision.to_string();
            let Some(o) = s.objects.get_mut(&key) else {
                return;
            };
            o["status"] = match result {
                Ok(()) => json!({"startTime": o["status"]["startTime"], "succeeded": 1,
                    "completionTime": now(),
                    "conditions": [{"type": "Complete", "status": "True"}]}),
                Err(message) => json!({"startTime": o["status"]["startTime"], "failed": 1,
                    "conditions": [{"type": "Failed", "status": "True",
                        "reason": "BackoffLimitExceeded", "message": message}]}),
            };
            o["metadata"]["resourceVersion"] = json!(rv);
        });
        self.running_jobs.push(thread);
    }
}

fn base64_decode(s: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------
// Label selectors.

#[derive(Debug, PartialEq)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl Requirement {
    fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        match self {
            Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEq(k, v) => get(k) != Some(v.as_str()),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
        }
    }
}

/// `a=b,c==d,e!=f,g,!h,i in (x,y),j notin (z)`.
fn parse_selector(q: &str) -> Result<Vec<Requirement>, String> {
    // Split on commas outside parentheses.
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in q.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&q[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&q[start..]);
    let key = |k: &str| {
        let k = k.trim();
        if is_qualified_name(k) {
            Ok(k.to_string())
        } else {
            Err(format!("invalid label key {k:?}"))
        }
    };
    let value = |v: &str| {
        let v = v.trim();
        if is_label_value(v) {
            Ok(v.to_string())
        } else {
            Err(format!("invalid label value {v:?}"))
        }
    };
    let set = |rest: &str| -> Result<Vec<String>, String> {
        let rest = rest.trim();
        let inner = rest
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| format!("expected a parenthesized set, found {rest:?}"))?;
        inner.split(',').map(value).collect()
    };
    let mut out = Vec::new();
    for term in terms {
        let term = term.trim();
        if term.is_empty() {
            return Err("empty requirement".into());
        }
        let words: Vec<&str> = term.splitn(2, char::is_whitespace).collect();
        let r = if let Some((k, v)) = term.split_once("!=") {
            Requirement::NotEq(key(k)?, value(v)?)
        } else if let Some((k, v)) = term.split_once("==") {
            Requirement::Eq(key(k)?, value(v)?)
        } else if let Some((k, v)) = term.split_once('=') {
            Requirement::Eq(key(k)?, value(v)?)
        } else if let Some(k) = term.strip_prefix('!') {
            Requirement::NotExists(key(k)?)
        } else if words.len() == 2 {
            let rest = words[1].trim_start();
            if let Some(r) = rest.strip_prefix("notin") {
                Requirement::NotIn(key(words[0])?, set(r)?)
            } else if let Some(r) = rest.strip_prefix("in") {
                Requirement::In(key(words[0])?, set(r)?)
            } else {
                return Err(format!("unknown operator in {term:?}"));
            }
        } else {
            Requirement::Exists(key(term)?)
        };
        out.push(r);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// The fake's own tests, through kube-rs: the client fermata uses.

#[cfg(test)]
mod self_test {
    use super::*;
    use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
    use kube::core::GroupVersionKind;
    use kube::discovery::{self, Scope};

    async fn client(fake: &FakeKube) -> kube::Client {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kubeconfig");
        fake.kubeconfig(&path, "fake", "default");
        let kc = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        kube::Client::try_from(config).expect("client")
    }

    fn api_error(e: kube::Error) -> kube::core::Status {
        match e {
            kube::Error::Api(r) => *r,
            other => panic!("not an API error: {other}"),
        }
    }

    async fn dynamic(
        client: &kube::Client,
        av: &str,
        kind: &str,
        ns: Option<&str>,
    ) -> Api<DynamicObject> {
        let (g, v) = split_api_version(av);
        let (ar, caps) = discovery::pinned_kind(client, &GroupVersionKind::gvk(g, v, kind))
            .await
            .expect("discovered");
        match (caps.scope, ns) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
            (Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &ar),
            (Scope::Cluster, _) => Api::all_with(client.clone(), &ar),
        }
    }

    fn obj(v: Value) -> DynamicObject {
        serde_json::from_value(v).expect("dynamic object")
    }

    #[test]
    fn selectors_parse_and_match() {
        let r = parse_selector("a=b,c==d,e!=f,g,!h,i in (x, y),j notin (z)").expect("parses");
        assert_eq!(r.len(), 7);
        let labels = json!({"a": "b", "c": "d", "g": "1", "i": "y"});
        assert!(r.iter().all(|r| r.matches(labels.as_object())));
        let other = json!({"a": "b", "c": "d", "g": "1", "i": "y", "h": "x"});
        assert!(!r.iter().all(|r| r.matches(other.as_object())));
        assert!(parse_selector("a in x").is_err());
        assert!(parse_selector("bad key!=x").is_err());
    }

    #[tokio::test]
    async fn discovery_apply_conflicts_dry_run_and_errors() {
        let fake = FakeKube::start();
        let c = client(&fake).await;
        let v = c.apiserver_version().await.expect("version");
        assert_eq!(v.major, "1");
        let groups = c.list_api_groups().await.expect("groups");
        assert!(groups.groups.iter().any(|g| g.name == "apps"));

        let cms = dynamic(&c, "v1", "ConfigMap", Some("default")).await;
        let cm = |data: Value| {
            obj(json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "cm", "labels": {"app": "x"}}, "data": data}))
        };
        // SSA creates, with managedFields for the manager.
        let ssa = PatchParams::apply("fermata");
        let made = cms
            .patch("cm", &ssa, &Patch::Apply(cm(json!({"a": "1", "b": "2"}))))
            .await
            .expect("apply creates");
        let rv1 = made.metadata.resource_version.clone().expect("rv");
        let mf = made.metadata.managed_fields.clone().expect("managed");
        assert_eq!(mf[0].manager.as_deref(), Some("fermata"));
        assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
        // A no-op apply writes nothing.
        let same = cms
            .patch("cm", &ssa, &Patch::Apply(cm(json!({"a": "1", "b": "2"}))))
            .await
            .expect("no-op apply");
        assert_eq!(
            same.metadata.resource_version.as_deref(),
            Some(rv1.as_str())
        );
        // Another manager changing a field it does not own... conflicts.
        let err = cms
            .patch(
                "cm",
                &PatchParams::apply("kubectl"),
                &Patch::Apply(cm(json!({"a": "9"}))),
            )
            .await
            .map(|_| ())
            .map_err(api_error)
            .expect_err("conflict");
        assert_eq!(err.code, 409);
        assert!(
            err.message.contains("conflict with \"fermata\"") && err.message.contains(".data.a"),
            "{}",
            err.message
        );
        // ... unless forced, which takes the field over.
        cms.patch(
            "cm",
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(cm(json!({"a": "9"}))),
        )
        .await
        .expect("forced");
        // Dropping a field fermata still owns alone removes it; one now owned
        // by kubectl stays.
        let after = cms
            .patch("cm", &ssa, &Patch::Apply(cm(json!({}))))
            .await
            .expect("apply without data");
        assert_eq!(after.data["data"], json!({"a": "9"}));

        // dryRun=All changes nothing, not even the resourceVersion.
        let before = fake.objects();
        let writes = fake.writes();
        let dry = cms
            .patch(
                "cm",
                &PatchParams::apply("fermata").dry_run(),
                &Patch::Apply(cm(json!({"z": "1"}))),
            )
            .await
            .expect("dry run");
        assert_eq!(dry.data["data"]["z"], json!("1"));
        assert_eq!(fake.objects(), before);
        assert_eq!(fake.writes(), writes);

        // Lists by label selector.
        let found = cms
            .list(&ListParams::default().labels("app=x"))
            .await
            .expect("list");
        assert_eq!(found.items.len(), 1);
        let none = cms
            .list(&ListParams::default().labels("app notin (x)"))
            .await
            .expect("list");
        assert!(none.items.is_empty());

        // POST of an existing name, PUT with a stale resourceVersion, DELETE of a missing one.
        let dup = cms
            .create(&PostParams::default(), &cm(json!({})))
            .await
            .map_err(api_error);
        assert_eq!(dup.map(|_| ()).expect_err("exists").reason, "AlreadyExists");
        let mut stale = cm(json!({}));
        stale.metadata.resource_version = Some(rv1);
        let e = cms
            .replace("cm", &PostParams::default(), &stale)
            .await
            .map_err(api_error);
        assert_eq!(e.map(|_| ()).expect_err("stale").code, 409);
        cms.delete("cm", &DeleteParams::default())
            .await
            .expect("deleted");
        let e = cms
            .delete("cm", &DeleteParams::default())
            .await
            .map_err(api_error);
        assert_eq!(e.map(|_| ()).expect_err("gone").code, 404);

        // Invalid: a bad label value; a missing namespace.
        let bad = obj(json!({"apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": {"name": "bad", "labels": {"x": "a b"}}}));
        let e = cms
            .patch("bad", &ssa, &Patch::Apply(bad))
            .await
            .map_err(api_error);
        let e = e.map(|_| ()).expect_err("invalid");
        assert_eq!(
            (e.code, e.reason.as_str()),
            (422, "Invalid"),
            "{}",
            e.message
        );
        let elsewhere = dynamic(&c, "v1", "ConfigMap", Some("nowhere")).await;
        let e = elsewhere
            .patch("cm", &ssa, &Patch::Apply(cm(json!({}))))
            .await
            .map_err(api_error);
        assert_eq!(e.map(|_| ()).expect_err("no namespace").code, 404);
    }

    #[tokio::test]
    async fn a_crd_adds_its_kind_and_leases_merge_patch() {
        let fake = FakeKube::start();
        let c = client(&fake).await;
        let crds = dynamic(
            &c,
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            None,
        )
        .await;
        let crd = obj(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                     "names": {"plural": "widgets", "kind": "Widget"},
                     "versions": [{"name": "v1", "served": true, "storage": true,
                                   "subresources": {"status": {}}}]},
        }));
        crds.patch(
            "widgets.example.com",
            &PatchParams::apply("fermata"),
            &Patch::Apply(crd),
        )
        .await
        .expect("crd");
        let widgets = dynamic(&c, "example.com/v1", "Widget", Some("default")).await;
        let w = obj(json!({"apiVersion": "example.com/v1", "kind": "Widget",
                           "metadata": {"name": "w"}, "spec": {"size": 1}}));
        let made = widgets
            .patch("w", &PatchParams::apply("fermata"), &Patch::Apply(w))
            .await
            .expect("cr");
        assert_eq!(made.metadata.generation, Some(1));
        fake.set_status(
            "example.com/v1",
            "Widget",
            Some("default"),
            "w",
            json!({"ready": true}),
        );
        assert_eq!(
            widgets.get("w").await.expect("get").data["status"]["ready"],
            json!(true)
        );

        let leases = dynamic(&c, "coordination.k8s.io/v1", "Lease", Some("default")).await;
        let lease = obj(
            json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                               "metadata": {"name": "leader"}, "spec": {"holderIdentity": "a"}}),
        );
        leases
            .create(&PostParams::default(), &lease)
            .await
            .expect("lease");
        let patched = leases
            .patch(
                "leader",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"holderIdentity": "b"}})),
            )
            .await
            .expect("merge patch");
        assert_eq!(patched.data["spec"]["holderIdentity"], json!("b"));
    }
}
