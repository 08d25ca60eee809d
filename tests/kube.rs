//! The Kubernetes target against a faithful fake API server
//! (`util/kube_fake.rs`): server-side apply, staging by dry run, prune,
//! inventory, health, and `fermata run --once` end to end.

#[path = "util/kube_fake.rs"]
mod kube_fake;
mod util;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fermata::model::types::KubernetesSpec;
use fermata::model::wellknown::ORPHANED_FROM;
use fermata::model::CompositionId;
use fermata::synth::{Rendered, Resource};
use fermata::target::{
    Desired, Health, KubernetesTarget, MetadataChange, SourceRef, StateGoal, Target,
};
use fermata::window::FixedClock;
use kube_fake::FakeKube;
use serde_json::{json, Value};
use util::{git, run_once, TestRepo, SYNTH};

const T0: &str = "2026-11-21T02:30:00Z";

/// A fake cluster, a kubeconfig for it and a fixed clock.
struct Cluster {
    fake: FakeKube,
    dir: tempfile::TempDir,
    clock: Arc<FixedClock>,
}

impl Cluster {
    fn new() -> Cluster {
        let fake = FakeKube::start();
        let dir = tempfile::tempdir().expect("tempdir");
        fake.kubeconfig(&dir.path().join("kubeconfig"), "fake", "default");
        Cluster {
            fake,
            dir,
            clock: Arc::new(FixedClock::new(at(T0))),
        }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn target(&self, force: bool) -> KubernetesTarget {
        self.target_in("default", force)
    }

    fn target_in(&self, namespace: &str, force: bool) -> KubernetesTarget {
        let spec = KubernetesSpec {
            context: Some("fake".into()),
            namespace: Some(namespace.into()),
            kubeconfig: Some(self.kubeconfig().display().to_string()),
            force_conflicts: force,
            ..KubernetesSpec::default()
        };
        KubernetesTarget::new(spec, Duration::from_secs(600), self.clock.clone())
    }

    /// A kube-rs client of another field manager (a person with kubectl).
    async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig()).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        kube::Client::try_from(config).expect("client")
    }

    fn cm(&self, name: &str) -> Option<Value> {
        self.fake.object("v1", "ConfigMap", Some("default"), name)
    }

    async fn configmaps(&self) -> kube::Api<kube::api::DynamicObject> {
        kube::Api::namespaced_with(
            self.client().await,
            "default",
            &kube::discovery::ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
        )
    }

    /// Every object but the inventory records.
    fn workload(&self) -> BTreeMap<String, Value> {
        let mut all = self.fake.objects();
        all.retain(|k, _| !k.starts_with("/secrets/default/fermata-"));
        all
    }
}

fn at(t: &str) -> DateTime<Utc> {
    t.parse().expect("instant")
}

fn id() -> CompositionId {
    CompositionId::new("shop", "app")
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn state(objects: Vec<Value>, annotations: &[(&str, &str)]) -> Desired {
    let resources = objects
        .into_iter()
        .map(|o| Resource::new(o).expect("valid resource"))
        .collect();
    let rendered = Rendered::from_parts(id(), resources, map(annotations), map(&[]), vec![]);
    Desired {
        rendered: Arc::new(rendered),
        source: SourceRef {
            branch: "main".into(),
            commit: "0".repeat(40),
        },
        artifacts: BTreeMap::new(),
    }
}

fn cm(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data})
}

fn deployment(name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "main", "image": "nginx:1.27"}]}},
        },
    })
}

fn managers(obj: &Value) -> Vec<(String, String)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["manager"].as_str().unwrap_or_default().to_string(),
                m["operation"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The inventory record Secret and its data, decoded.
fn record(c: &Cluster) -> (Value, BTreeMap<String, String>) {
    let secret = c
        .fake
        .object("v1", "Secret", Some("default"), "fermata-shop.app")
        .expect("inventory record");
    (secret.clone(), decoded(&secret))
}

fn decoded(secret: &Value) -> BTreeMap<String, String> {
    let typed: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(secret.clone()).expect("a Secret");
    typed
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).expect("utf-8")))
        .collect()
}

#[tokio::test]
async fn apply_is_server_side_with_inventory_label_and_annotations() {
    let c = Cluster::new();
    let t = c.target(false);
    let d = state(
        vec![cm("settings", json!({"a": "1"})), deployment("web")],
        &[("team", "line")],
    );
    let out = t.apply(&d, StateGoal::Apply).await.expect("applied");
    assert!(out.changed);

    let web = c
        .fake
        .object("apps/v1", "Deployment", Some("default"), "web")
        .expect("deployment created in the target namespace");
    assert_eq!(
        web["metadata"]["labels"]["fermata.dev/composition"],
        json!("shop.app")
    );
    let ann = &web["metadata"]["annotations"];
    assert_eq!(ann["fermata.dev/composition"], json!("shop/app"));
    assert_eq!(ann["fermata.dev/digest"], json!(d.rendered.digest.to_hex()));
    assert_eq!(
        ann["team"],
        json!("line"),
        "composition annotations land too"
    );
    let m = managers(&web);
    assert!(m.contains(&("fermata".into(), "Apply".into())), "{m:?}");
    assert!(
        m.contains(&("fermata-metadata".into(), "Apply".into())),
        "{m:?}"
    );
    assert_eq!(m.len(), 2, "no other manager: {m:?}");
    let patches: Vec<_> = c
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/deployments/web"))
        .collect();
    assert!(patches
        .iter()
        .all(|r| r.content_type == "application/apply-patch+yaml"));
    assert!(patches
        .iter()
        .any(|r| r.query.get("fieldManager").map(String::as_str) == Some("fermata")));

    let (rec, data) = record(&c);
    assert_eq!(
        rec["metadata"]["labels"]["fermata.dev/inventory"],
        json!("shop.app")
    );
    assert_eq!(rec["type"], json!("fermata.dev/inventory"));
    assert_eq!(data["applied"], d.rendered.digest.to_hex());
    assert_eq!(data["composition"], "shop/app");
    let o = t.get(&id()).await.expect("get");
    assert_eq!(o.applied, Some(d.rendered.digest));
    assert_eq!(o.staged, Some(d.rendered.digest));
    assert_eq!(o.annotations, map(&[("team", "line")]));
    assert_eq!(t.list().await.expect("list"), vec![id()]);
    let back = t.applied(&id()).await.expect("applied").expect("some");
    assert_eq!(
        back.digest, d.rendered.digest,
        "applied() gives back the same state"
    );

    // Invariant 5: the same state again writes nothing.
    let writes = c.fake.writes();
    let again = t.apply(&d, StateGoal::Apply).await.expect("again");
    assert!(!again.changed);
    assert_eq!(c.fake.writes(), writes);
}

#[tokio::test]
async fn stage_is_a_dry_run_that_changes_nothing_applied() {
    let c = Cluster::new();
    let t = c.target(false);
    let v1 = state(
        vec![cm("settings", json!({"a": "1"})), deployment("web")],
        &[],
    );
    t.apply(&v1, StateGoal::Apply).await.expect("v1");
    let before = c.workload();
    let (_, rec_before) = record(&c);
    let writes = c.fake.writes();
    let requests = c.fake.requests().len();

    let mut web2 = deployment("web");
    web2["spec"]["replicas"] = json!(5);
    let v2 = state(vec![cm("settings", json!({"a": "2"})), web2], &[]);
    let out = t.apply(&v2, StateGoal::Stage).await.expect("staged");
    assert!(out.changed);

    assert_eq!(
        c.workload(),
        before,
        "every applied object byte-for-byte unchanged"
    );
    let (_, rec) = record(&c);
    assert_eq!(
        rec["applied.json"], rec_before["applied.json"],
        "the record's applied state is unchanged"
    );
    assert_eq!(rec["staged"], v2.rendered.digest.to_hex());
    assert_eq!(
        c.fake.writes(),
        writes + 1,
        "one write: the staged digest in the record"
    );
    let sent = &c.fake.requests()[requests..];
    assert!(
        sent.iter()
            .filter(|r| r.method == "PATCH" && !r.path.contains("/fermata-"))
            .all(|r| r.dry_run()),
        "every resource request is a dry run: {sent:?}"
    );
    let o = t.get(&id()).await.expect("get");
    assert_eq!(o.applied, Some(v1.rendered.digest));
    assert_eq!(o.staged, Some(v2.rendered.digest));

    // Staged already: nothing is sent again.
    let writes = c.fake.writes();
    assert!(!t.apply(&v2, StateGoal::Stage).await.expect("again").changed);
    assert_eq!(c.fake.writes(), writes);
}

#[tokio::test]
async fn a_stage_validation_error_names_the_resource_and_the_api_message() {
    let c = Cluster::new();
    let t = c.target(false);
    let mut bad = deployment("web");
    bad["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("selector");
    let err = t
        .apply(&state(vec![bad], &[]), StateGoal::Stage)
        .await
        .expect_err("invalid");
    let msg = err.to_string();
    assert!(msg.starts_with("apps/v1/Deployment/default/web: "), "{msg}");
    assert!(msg.contains("spec.selector: Required value"), "{msg}");
    assert!(msg.contains("422 Invalid"), "{msg}");
    assert!(c
        .fake
        .object("apps/v1", "Deployment", Some("default"), "web")
        .is_none());
    assert_eq!(c.fake.writes(), 0, "a failed stage writes nothing");
}

#[tokio::test]
async fn a_missing_target_namespace_is_refused_before_any_write() {
    let c = Cluster::new();
    let t = c.target_in("line", false);
    let d = state(vec![cm("a", json!({}))], &[]);
    for goal in [StateGoal::Stage, StateGoal::Apply] {
        let err = t.apply(&d, goal).await.expect_err("no namespace");
        let msg = err.to_string();
        assert!(
            msg.starts_with("v1/Namespace/line: the target namespace does not exist"),
            "{msg}"
        );
    }
    assert_eq!(c.fake.writes(), 0);
    // Rendered with the state, it is created first.
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "line"}});
    t.apply(&state(vec![cm("a", json!({})), ns], &[]), StateGoal::Apply)
        .await
        .expect("applied");
    assert!(c
        .fake
        .object("v1", "ConfigMap", Some("line"), "a")
        .is_some());
}

#[tokio::test]
async fn prune_deletes_what_the_rendering_dropped() {
    let c = Cluster::new();
    let t = c.target(false);
    let v1 = state(vec![cm("a", json!({})), cm("b", json!({}))], &[]);
    t.apply(&v1, StateGoal::Apply).await.expect("v1");
    assert!(c.cm("b").is_some());
    let v2 = state(vec![cm("a", json!({"x": "1"}))], &[]);
    t.apply(&v2, StateGoal::Apply).await.expect("v2");
    assert!(c.cm("b").is_none(), "pruned");
    assert_eq!(c.cm("a").expect("a")["data"]["x"], json!("1"));
    let o = t.get(&id()).await.expect("get");
    assert_eq!(o.components.len(), 1);
}

#[tokio::test]
async fn an_apply_interrupted_before_its_record_still_prunes_later() {
    let c = Cluster::new();
    let t = c.target(false);
    t.apply(&state(vec![cm("a", json!({}))], &[]), StateGoal::Apply)
        .await
        .expect("v1");
    // The pending record goes through, the final one does not: as a crash
    // after `b` was created but before the apply was recorded.
    c.fake.fail_writes("/secrets/fermata-shop.app", 1, 1);
    let v2 = state(vec![cm("a", json!({})), cm("b", json!({}))], &[]);
    let err = t
        .apply(&v2, StateGoal::Apply)
        .await
        .expect_err("interrupted");
    assert!(err.to_string().contains("injected fault"), "{err}");
    assert!(c.cm("b").is_some(), "created before the interruption");
    let o = t.get(&id()).await.expect("get");
    assert_ne!(
        o.applied,
        Some(v2.rendered.digest),
        "not recorded as applied"
    );
    // The next state drops `b`: it is pruned although never recorded applied.
    t.apply(
        &state(vec![cm("a", json!({"x": "1"}))], &[]),
        StateGoal::Apply,
    )
    .await
    .expect("v3");
    assert!(c.cm("b").is_none(), "pending resources are pruned too");
    let (_, rec) = record(&c);
    assert!(!rec.contains_key("pending.json"), "cleared once recorded");
}

#[tokio::test]
async fn reconcile_when_leaves_resources_alone() {
    let c = Cluster::new();
    let t = c.target(false);
    let handed = |value: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "handed", "annotations": {"fermata.dev/reconcile-when": "owner=true"}},
               "data": {"v": value}})
    };
    // Not carrying owner=true: never applied from here.
    let v0 = state(vec![cm("mine", json!({})), handed("0")], &[]);
    t.apply(&v0, StateGoal::Apply).await.expect("v0");
    assert!(c.cm("handed").is_none(), "not matched: not created");
    // Carrying it: applied.
    let v1 = state(
        vec![cm("mine", json!({})), handed("1")],
        &[("owner", "true")],
    );
    t.apply(&v1, StateGoal::Apply).await.expect("v1");
    assert_eq!(c.cm("handed").expect("applied")["data"]["v"], json!("1"));
    // No longer carrying it: a changed rendering is not patched...
    let rv = c.cm("handed").expect("there")["metadata"]["resourceVersion"].clone();
    let v2 = state(vec![cm("mine", json!({})), handed("2")], &[]);
    t.apply(&v2, StateGoal::Apply).await.expect("v2");
    let live = c.cm("handed").expect("still there");
    assert_eq!(live["data"]["v"], json!("1"));
    assert_eq!(
        live["metadata"]["resourceVersion"], rv,
        "not even its metadata"
    );
    // ... and dropping it from the rendering does not prune it.
    let v3 = state(vec![cm("mine", json!({"x": "1"}))], &[]);
    t.apply(&v3, StateGoal::Apply).await.expect("v3");
    assert!(c.cm("handed").is_some(), "left alone, not pruned");
}

#[tokio::test]
async fn orphaned_resources_lose_the_label_and_are_never_pruned_or_deleted() {
    let c = Cluster::new();
    let t = c.target(false);
    let v1 = state(vec![cm("a", json!({"k": "v"}))], &[]);
    t.apply(&v1, StateGoal::Apply).await.expect("v1");
    // What the reconciler's orphaning writes: each resource and the
    // composition annotated with the symphony it came from.
    let orphan = MetadataChange::Orphan {
        symphony: "shop".into(),
    };
    let out = t.write_metadata(&id(), &orphan).await.expect("orphaned");
    assert!(out.changed);
    let live = c.cm("a").expect("left in place");
    assert!(
        live["metadata"]["labels"]
            .get("fermata.dev/composition")
            .is_none(),
        "inventory label gone: {live}"
    );
    assert_eq!(
        live["metadata"]["annotations"][ORPHANED_FROM],
        json!("shop")
    );
    assert_eq!(live["data"]["k"], json!("v"));
    let (_, rec) = record(&c);
    let applied: Value = serde_json::from_str(&rec["applied.json"]).expect("parse");
    assert_eq!(
        applied["inventory"],
        json!([]),
        "the record no longer lists it"
    );
    assert_eq!(
        applied["source"],
        json!({"branch": "main", "commit": "0".repeat(40)}),
        "the commit it was applied from is kept"
    );
    // An empty state would prune everything managed: nothing is.
    t.apply(&state(vec![], &[]), StateGoal::Apply)
        .await
        .expect("empty");
    assert!(c.cm("a").is_some(), "orphaned: not pruned");
    t.delete(&id()).await.expect("delete");
    assert!(c.cm("a").is_some(), "orphaned: not deleted");
    assert!(
        c.fake
            .object("v1", "Secret", Some("default"), "fermata-shop.app")
            .is_none(),
        "the record is gone"
    );
    t.delete(&id())
        .await
        .expect("deleting what is gone is fine");
}

#[tokio::test]
async fn delete_removes_the_resources_and_the_record() {
    let c = Cluster::new();
    let t = c.target(false);
    t.apply(
        &state(vec![cm("a", json!({})), deployment("web")], &[]),
        StateGoal::Apply,
    )
    .await
    .expect("applied");
    // One already gone by hand: a 404 is fine.
    c.configmaps()
        .await
        .delete("a", &Default::default())
        .await
        .expect("deleted by hand");
    t.delete(&id()).await.expect("delete");
    assert!(c
        .fake
        .object("apps/v1", "Deployment", Some("default"), "web")
        .is_none());
    assert!(c
        .fake
        .object("v1", "Secret", Some("default"), "fermata-shop.app")
        .is_none());
    assert!(t.list().await.expect("list").is_empty());
    assert_eq!(t.get(&id()).await.expect("get").applied, None);
}

#[tokio::test]
async fn a_metadata_only_change_keeps_the_spec_and_removes_a_pruned_key() {
    let c = Cluster::new();
    let t = c.target(false);
    let objects = || vec![cm("a", json!({"k": "v"})), deployment("web")];
    t.apply(
        &state(objects(), &[("keep", "1"), ("gone", "1")]),
        StateGoal::Apply,
    )
    .await
    .expect("v1");
    let from = c.fake.requests().len();
    // Phase 1 of the two-phase protocol: the same resources, one key less.
    let keep = MetadataChange::Annotations(map(&[("keep", "1")]));
    t.write_metadata(&id(), &keep).await.expect("pruned key");
    let patches: Vec<_> = c.fake.requests()[from..]
        .iter()
        .filter(|r| r.method == "PATCH" && !r.path.contains("/fermata-"))
        .cloned()
        .collect();
    assert_eq!(patches.len(), 2, "{patches:?}");
    assert!(
        patches
            .iter()
            .all(|r| r.query.get("fieldManager").map(String::as_str) == Some("fermata-metadata")),
        "only the metadata apply runs: {patches:?}"
    );
    let web = c
        .fake
        .object("apps/v1", "Deployment", Some("default"), "web")
        .expect("web");
    assert_eq!(web["spec"]["replicas"], json!(2), "spec kept");
    assert_eq!(
        web["spec"]["template"]["spec"]["containers"][0]["image"],
        json!("nginx:1.27")
    );
    let ann = &web["metadata"]["annotations"];
    assert!(ann.get("gone").is_none(), "removed key removed: {ann}");
    assert_eq!(ann["keep"], json!("1"));
    assert_eq!(c.cm("a").expect("a")["data"]["k"], json!("v"));
}

fn health_at(o: &fermata::target::Observed) -> Health {
    o.health.clone().expect("health")
}

#[tokio::test]
async fn health_follows_rollouts_jobs_pods_and_ready_conditions() {
    let c = Cluster::new();
    let t = c.target(false);
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate"},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
                 "containers": [{"name": "m", "image": "busybox"}]}}}});
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"},
        "spec": {"containers": [{"name": "p", "image": "busybox"}]}});
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "widgets", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "subresources": {"status": {}}}]}});
    let widget = json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w"}, "spec": {"size": 1}});
    let d = state(vec![deployment("web"), job, pod, crd, widget], &[]);
    t.apply(&d, StateGoal::Apply).await.expect("applied");
    let Health::Unhealthy(why) = health_at(&t.get(&id()).await.expect("get")) else {
        panic!("nothing has a status yet")
    };
    assert!(
        why.contains("apps/v1/Deployment/default/web: waiting for the rollout"),
        "{why}"
    );
    assert!(
        why.contains("batch/v1/Job/default/migrate: not complete yet"),
        "{why}"
    );
    assert!(why.contains("v1/Pod/default/probe: not ready"), "{why}");
    assert!(
        !why.contains("Widget"),
        "no Ready condition: healthy once applied: {why}"
    );

    let ns = Some("default");
    c.fake.set_status(
        "apps/v1",
        "Deployment",
        ns,
        "web",
        json!({
        "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}),
    );
    c.fake.set_status(
        "batch/v1",
        "Job",
        ns,
        "migrate",
        json!({"conditions": [{"type": "Complete", "status": "True"}]}),
    );
    c.fake.set_status(
        "v1",
        "Pod",
        ns,
        "probe",
        json!({"phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}]}),
    );
    c.fake.set_status(
        "example.com/v1",
        "Widget",
        ns,
        "w",
        json!({"conditions": [{"type": "Ready", "status": "False", "message": "warming up"}]}),
    );
    let Health::Unhealthy(why) = health_at(&t.get(&id()).await.expect("get")) else {
        panic!("two still not healthy")
    };
    assert!(
        why.contains("web: 1 of 2 updated replicas are available"),
        "{why}"
    );
    assert!(
        why.contains("Widget/default/w: Ready is False: warming up"),
        "{why}"
    );
    assert!(!why.contains("migrate") && !why.contains("probe"), "{why}");

    c.fake.set_status(
        "apps/v1",
        "Deployment",
        ns,
        "web",
        json!({
        "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
    );
    c.fake.set_status(
        "example.com/v1",
        "Widget",
        ns,
        "w",
        json!({"conditions": [{"type": "Ready", "status": "True"}]}),
    );
    assert_eq!(
        health_at(&t.get(&id()).await.expect("get")),
        Health::Healthy
    );
}

#[tokio::test]
async fn not_healthy_past_the_timeout_is_failed_with_the_reason() {
    let c = Cluster::new();
    let t = c.target(false);
    t.apply(&state(vec![deployment("web")], &[]), StateGoal::Apply)
        .await
        .expect("applied");
    c.clock.advance(Duration::from_secs(599));
    assert!(matches!(
        health_at(&t.get(&id()).await.expect("get")),
        Health::Unhealthy(_)
    ));
    c.clock.advance(Duration::from_secs(1));
    let Health::Failed(why) = health_at(&t.get(&id()).await.expect("get")) else {
        panic!("past the timeout")
    };
    assert!(
        why.starts_with("not healthy 10m after the apply at 2026-11-21T02:30:00Z: "),
        "{why}"
    );
    assert!(
        why.contains("apps/v1/Deployment/default/web: waiting for the rollout"),
        "{why}"
    );
    // A metadata-only change does not restart the clock; healthy is healthy.
    c.fake.set_status(
        "apps/v1",
        "Deployment",
        Some("default"),
        "web",
        json!({
        "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
    );
    assert_eq!(
        health_at(&t.get(&id()).await.expect("get")),
        Health::Healthy
    );
}

#[tokio::test]
async fn a_conflict_names_the_other_manager_unless_forced() {
    let c = Cluster::new();
    let cms = c.configmaps().await;
    let theirs: kube::api::DynamicObject =
        serde_json::from_value(cm("shared", json!({"level": "debug"}))).expect("object");
    cms.patch(
        "shared",
        &kube::api::PatchParams::apply("kubectl"),
        &kube::api::Patch::Apply(theirs),
    )
    .await
    .expect("kubectl applied");

    let d = state(vec![cm("shared", json!({"level": "info"}))], &[]);
    let err = c
        .target(false)
        .apply(&d, StateGoal::Apply)
        .await
        .expect_err("conflict");
    let msg = err.to_string();
    assert!(msg.starts_with("v1/ConfigMap/default/shared: "), "{msg}");
    assert!(
        msg.contains("conflict with \"kubectl\"") && msg.contains(".data.level"),
        "{msg}"
    );
    assert!(msg.contains("forceConflicts"), "{msg}");
    assert_eq!(c.cm("shared").expect("cm")["data"]["level"], json!("debug"));

    c.target(true)
        .apply(&d, StateGoal::Apply)
        .await
        .expect("forced");
    let live = c.cm("shared").expect("cm");
    assert_eq!(live["data"]["level"], json!("info"));
    assert!(managers(&live).contains(&("fermata".into(), "Apply".into())));
}

#[tokio::test]
async fn a_crd_and_its_custom_resources_in_one_composition() {
    let c = Cluster::new();
    let t = c.target(false);
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.example.com"},
        "spec": {"group": "example.com", "scope": "Cluster",
                 "names": {"plural": "gadgets", "kind": "Gadget"},
                 "versions": [{"name": "v1", "served": true, "storage": true}]}});
    let gadget = json!({"apiVersion": "example.com/v1", "kind": "Gadget",
        "metadata": {"name": "g"}, "spec": {"on": true}});
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "line"}});
    let in_ns = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": "line"}, "data": {}});
    let d = state(vec![gadget, crd, in_ns, ns], &[]);
    // Staging cannot check what needs a CRD or namespace of this same state:
    // it checks the rest and changes nothing.
    t.apply(&d, StateGoal::Stage).await.expect("staged");
    assert!(c.fake.object("v1", "Namespace", None, "line").is_none());
    let plan = t.apply(&d, StateGoal::DryRun).await.expect("plan");
    let diff = plan.diff.expect("diff");
    assert!(diff.contains("+ example.com/v1/Gadget/g"), "{diff}");
    t.apply(&d, StateGoal::Apply).await.expect("applied");
    assert!(c
        .fake
        .object("example.com/v1", "Gadget", None, "g")
        .is_some());
    assert!(c
        .fake
        .object("v1", "ConfigMap", Some("line"), "c")
        .is_some());
    let order: Vec<String> = c
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" && !r.dry_run() && !r.path.contains("/fermata-"))
        .map(|r| r.path)
        .collect();
    assert!(order[0].contains("customresourcedefinitions"), "{order:?}");
    assert!(
        order.iter().position(|p| p.ends_with("/namespaces/line"))
            < order.iter().position(|p| p.contains("/gadgets/")),
        "{order:?}"
    );
    assert_eq!(
        health_at(&t.get(&id()).await.expect("get")),
        Health::Healthy
    );
}

#[tokio::test]
async fn dry_run_diffs_live_against_the_servers_answer_and_writes_nothing() {
    let c = Cluster::new();
    let t = c.target(false);
    t.apply(
        &state(
            vec![cm("a", json!({"x": "1"})), cm("old", json!({}))],
            &[("k", "1")],
        ),
        StateGoal::Apply,
    )
    .await
    .expect("v1");
    let before = c.fake.objects();
    let writes = c.fake.writes();
    let d = state(
        vec![cm("a", json!({"x": "2"})), cm("new", json!({}))],
        &[("k", "2")],
    );
    let out = t.apply(&d, StateGoal::DryRun).await.expect("plan");
    assert!(out.changed);
    let diff = out.diff.expect("diff");
    assert!(diff.contains("  ~ v1/ConfigMap/default/a"), "{diff}");
    assert!(diff.contains("  + v1/ConfigMap/default/new"), "{diff}");
    assert!(diff.contains("  - v1/ConfigMap/default/old"), "{diff}");
    assert!(diff.contains("annotations: ~ k=2"), "{diff}");
    assert!(
        diff.contains("-  x: '1'") && diff.contains("+  x: '2'"),
        "{diff}"
    );
    assert!(
        diff.contains("-    k: '1'") && diff.contains("+    k: '2'"),
        "{diff}"
    );
    for server in [
        "managedFields",
        "resourceVersion",
        "uid",
        "creationTimestamp",
    ] {
        assert!(!diff.contains(server), "{server} stripped: {diff}");
    }
    assert_eq!(c.fake.objects(), before, "no write of any kind");
    assert_eq!(c.fake.writes(), writes);
}

#[tokio::test]
async fn a_record_over_the_configmap_limit_is_refused_before_any_write() {
    let c = Cluster::new();
    let t = c.target(false);
    let big = "x".repeat(600 * 1024);
    let d = state(
        vec![cm("a", json!({"blob": big})), cm("b", json!({"blob": big}))],
        &[],
    );
    let err = t.apply(&d, StateGoal::Stage).await.expect_err("too big");
    assert!(err.to_string().contains("over the 1 MiB"), "{err}");
    let err = t.apply(&d, StateGoal::Apply).await.expect_err("too big");
    assert!(err.to_string().contains("over the 1 MiB"), "{err}");
    assert_eq!(c.fake.writes(), 0);
}

// ---------------------------------------------------------------------------
// `fermata run --once`, the real binary, against the fake.

fn kube_fleet(repo: &TestRepo, kubeconfig: &std::path::Path, manifests: &str) {
    let target = format!(
        "apiVersion: fermata.dev/v1alpha1
kind: Target
metadata: {{name: site}}
spec:
  kubernetes: {{kubeconfig: {}, context: fake, namespace: line}}
",
        kubeconfig.display()
    );
    repo.write("target.yaml", &target)
        .write("synth/app.yaml", SYNTH)
        .write("synth/manifests/all.yaml", manifests)
        .write(
            "symphony.yaml",
            "apiVersion: fermata.dev/v1alpha1
kind: Symphony
metadata: {name: shop}
spec:
  variations:
    - synthesizer: {name: app}
      synthesisEnv: [{name: TAG, value: v1}]
      annotations: {team: line}
",
        );
}

const NS_AND_CM: &str = "apiVersion: v1
kind: Namespace
metadata: {name: line}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: app}
data: {tag: \"${TAG}\"}
";

fn status(repo: &TestRepo) -> serde_yaml::Value {
    let text = git(repo.path(), &["show", "fermata/status:main/shop/app.yaml"]);
    serde_yaml::from_str(&text).expect("status yaml")
}

#[test]
fn a_kubernetes_target_spec_is_checked_field_by_field() {
    let repo = TestRepo::new();
    repo.write(
        "target.yaml",
        "apiVersion: fermata.dev/v1alpha1
kind: Target
metadata: {name: a}
spec:
  kubernetes: {context: c, namespace: n, kubeconfig: /k, forceConflicts: true}
---
apiVersion: fermata.dev/v1alpha1
kind: Target
metadata: {name: b}
spec:
  kubernetes: {forceConflict: true}
",
    );
    repo.commit("targets");
    let run = util::fermata(&[
        "validate",
        "--repo",
        repo.path().to_str().expect("utf-8"),
        "--no-render",
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.lines().len(), 1, "only b is wrong: {run:?}");
    assert!(
        run.stdout.contains("unknown field `forceConflict`")
            && run.stdout.contains("`forceConflicts`"),
        "{run:?}"
    );
}

#[test]
fn staging_settings_of_a_kubernetes_target_are_checked_with_file_and_line() {
    let repo = TestRepo::new();
    repo.write(
        "target.yaml",
        "apiVersion: fermata.dev/v1alpha1
kind: Target
metadata: {name: a}
spec:
  kubernetes:
    prePull: {maxPerNode: 0}
---
apiVersion: fermata.dev/v1alpha1
kind: Target
metadata: {name: b}
spec:
  kubernetes:
    artifacts: {claim: Models_1, direct: true}
---
apiVersion: fermata.dev/v1alpha1
kind: Target
metadata: {name: c}
spec:
  kubernetes:
    artifacts: {claim: models}
---
apiVersion: fermata.dev/v1alpha1
kind: Target
metadata: {name: d}
spec:
  kubernetes:
    artifacts: {claim: models, storeUrl: \"ftp://x\"}
---
apiVersion: fermata.dev/v1alpha1
kind: Target
metadata: {name: ok}
spec:
  kubernetes:
    prePull: {maxPerNode: 4}
    artifacts: {claim: models, storeUrl: \"http://fermata.fermata:8080\"}
",
    );
    repo.commit("targets");
    let run = util::fermata(&[
        "validate",
        "--repo",
        repo.path().to_str().expect("utf-8"),
        "--no-render",
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    let lines = run.lines();
    assert_eq!(lines.len(), 4, "{run:?}");
    let expect = [
        "target.yaml:6: spec.kubernetes.prePull.maxPerNode: must be at least 1",
        "target.yaml:13: spec.kubernetes.artifacts.claim: \"Models_1\" is not a PersistentVolumeClaim name",
        "target.yaml:20: spec.kubernetes.artifacts: set `storeUrl`",
        "target.yaml:27: spec.kubernetes.artifacts.storeUrl: \"ftp://x\" is not an http:// or https:// URL",
    ];
    for want in expect {
        assert!(lines.iter().any(|l| l.contains(want)), "{want} in {run:?}");
    }
}

#[test]
fn run_once_installs_on_kubernetes() {
    let c = Cluster::new();
    let repo = TestRepo::new();
    kube_fleet(&repo, &c.kubeconfig(), NS_AND_CM);
    repo.commit("kubernetes fleet");
    let state_dir = tempfile::tempdir().expect("state");
    let run = run_once(state_dir.path(), &repo, T0);
    assert_eq!(run.code, 0, "{run:?}");
    let st = status(&repo);
    assert_eq!(st["status"]["state"].as_str(), Some("installed"), "{st:?}");
    let cm = c
        .fake
        .object("v1", "ConfigMap", Some("line"), "app")
        .expect("the fake holds the ConfigMap");
    assert_eq!(cm["data"]["tag"], json!("v1"));
    assert_eq!(cm["metadata"]["annotations"]["team"], json!("line"));
    assert!(c.fake.object("v1", "Namespace", None, "line").is_some());
    assert!(c
        .fake
        .object("v1", "Secret", Some("line"), "fermata-shop.app")
        .is_some());

    // Invariant 5 across processes: an unchanged commit writes nothing.
    let writes = c.fake.writes();
    let run = run_once(state_dir.path(), &repo, T0);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(c.fake.writes(), writes);

    // A removed variation's resources are deleted from the cluster.
    repo.write(
        "symphony.yaml",
        "apiVersion: fermata.dev/v1alpha1
kind: Symphony
metadata: {name: shop}
spec:
  variations:
    - name: other
      synthesizer: {name: app}
      synthesisEnv: [{name: TAG, value: v2}]
",
    );
    repo.commit("rename the variation");
    let run = run_once(state_dir.path(), &repo, T0);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(c
        .fake
        .object("v1", "Secret", Some("line"), "fermata-shop.app")
        .is_none());
    assert!(c
        .fake
        .object("v1", "Secret", Some("line"), "fermata-shop.other")
        .is_some());
    // What both render was handed over, not deleted with the old one.
    let cm = c
        .fake
        .object("v1", "ConfigMap", Some("line"), "app")
        .expect("kept");
    assert_eq!(cm["data"]["tag"], json!("v2"));
    let ann = &cm["metadata"]["annotations"];
    assert_eq!(ann["fermata.dev/composition"], json!("shop/other"));
    assert!(
        ann.get("team").is_none(),
        "the old composition's annotation is gone: {ann}"
    );
    assert!(c.fake.object("v1", "Namespace", None, "line").is_some());
}

#[test]
fn run_once_reports_a_staging_failure_and_a_health_timeout() {
    let c = Cluster::new();
    let repo = TestRepo::new();
    let deployment = |selector: &str| {
        format!(
            "apiVersion: v1
kind: Namespace
metadata: {{name: line}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: default}}
spec:
{selector}  template:
    metadata: {{labels: {{app: web}}}}
    spec: {{containers: [{{name: main, image: \"nginx:${{TAG}}\"}}]}}
"
        )
    };
    kube_fleet(&repo, &c.kubeconfig(), &deployment(""));
    repo.commit("a deployment without selector");
    let state_dir = tempfile::tempdir().expect("state");
    let run = run_once(state_dir.path(), &repo, T0);
    assert_eq!(run.code, 1, "{run:?}");
    let st = status(&repo);
    assert_eq!(st["status"]["state"].as_str(), Some("failed"), "{st:?}");
    assert_eq!(
        st["status"]["error"]["code"].as_str(),
        Some("StagingFailed")
    );
    let msg = st["status"]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        msg.contains("apps/v1/Deployment/default/web")
            && msg.contains("spec.selector: Required value"),
        "{msg}"
    );
    assert!(
        c.fake.object("v1", "Namespace", None, "line").is_none(),
        "nothing applied"
    );
    // Nothing applied: every component stays pending; the one the dry
    // run refused carries the error.
    let components = st["status"]["components"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    assert_eq!(components.len(), 2, "{st:?}");
    for c in &components {
        assert_eq!(c["state"].as_str(), Some("pending"), "{c:?}");
        let named = c["name"].as_str() == Some("apps/v1/Deployment/default/web");
        assert_eq!(c["error"].is_mapping(), named, "{c:?}");
    }

    kube_fleet(
        &repo,
        &c.kubeconfig(),
        &deployment("  selector: {matchLabels: {app: web}}\n"),
    );
    repo.commit("with a selector");
    let run = run_once(state_dir.path(), &repo, T0);
    assert_eq!(run.code, 0, "{run:?}");
    let st = status(&repo);
    // Applied, not healthy yet: installing (issue 16 point 7; it said
    // `installed` with Ready False before).
    assert_eq!(st["status"]["state"].as_str(), Some("installing"), "{st:?}");
    assert!(c
        .fake
        .object("apps/v1", "Deployment", Some("default"), "web")
        .is_some());

    // No controller moves it: 11 minutes later it has failed.
    let run = run_once(state_dir.path(), &repo, "2026-11-21T02:41:00Z");
    assert_eq!(run.code, 1, "{run:?}");
    let st = status(&repo);
    assert_eq!(st["status"]["state"].as_str(), Some("failed"), "{st:?}");
    assert_eq!(
        st["status"]["error"]["code"].as_str(),
        Some("HealthTimeout")
    );
    let msg = st["status"]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        msg.starts_with("not healthy 10m after the apply at 2026-11-21T02:30:00Z")
            && msg.contains("waiting for the rollout"),
        "{msg}"
    );

    // Once it rolls out, it is installed and Ready again.
    c.fake.set_status(
        "apps/v1",
        "Deployment",
        Some("default"),
        "web",
        json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}),
    );
    let run = run_once(state_dir.path(), &repo, "2026-11-21T02:42:00Z");
    assert_eq!(run.code, 0, "{run:?}");
    let st = status(&repo);
    assert_eq!(st["status"]["state"].as_str(), Some("installed"), "{st:?}");
}

#[test]
fn a_health_timeout_with_rollback_auto_applies_the_previous_state_again() {
    let c = Cluster::new();
    let repo = TestRepo::new();
    let manifests = "apiVersion: v1
kind: Namespace
metadata: {name: line}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: main, image: \"nginx:${TAG}\"}]}
";
    kube_fleet(&repo, &c.kubeconfig(), manifests);
    let symphony = |tag: &str| {
        format!("apiVersion: fermata.dev/v1alpha1\nkind: Symphony\nmetadata: {{name: shop}}\nspec:\n  rollback: auto\n  variations:\n    - synthesizer: {{name: app}}\n      synthesisEnv: [{{name: TAG, value: {tag}}}]\n")
    };
    let image = || {
        c.fake
            .object("apps/v1", "Deployment", Some("default"), "web")
            .expect("deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
            .clone()
    };
    repo.write("symphony.yaml", &symphony("v1"));
    repo.commit("v1");
    let state_dir = tempfile::tempdir().expect("state");
    let run = run_once(state_dir.path(), &repo, T0);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(image(), json!("nginx:v1"));

    repo.write("symphony.yaml", &symphony("v2"));
    repo.commit("v2");
    let run = run_once(state_dir.path(), &repo, "2026-11-21T02:31:00Z");
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(image(), json!("nginx:v2"));

    // No controller moves it: 11 minutes later its health check timed out,
    // and v1 is applied again.
    let run = run_once(state_dir.path(), &repo, "2026-11-21T02:42:00Z");
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(image(), json!("nginx:v1"), "rolled back on the cluster");
    let st = status(&repo);
    assert_eq!(st["status"]["state"].as_str(), Some("failed"), "{st:?}");
    assert_eq!(st["status"]["error"]["code"].as_str(), Some("RolledBack"));
    let msg = st["status"]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        msg.starts_with("HealthTimeout: not healthy 10m after the apply"),
        "the cause: {msg}"
    );
    assert_ne!(st["status"]["applied"], st["status"]["digest"], "{st:?}");

    // Not applied again in a later pass.
    run_once(state_dir.path(), &repo, "2026-11-21T02:50:00Z");
    assert_eq!(image(), json!("nginx:v1"));
    assert_eq!(
        status(&repo)["status"]["error"]["code"].as_str(),
        Some("RolledBack")
    );
}
