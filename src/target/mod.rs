//! Targets: where compositions are applied (DESIGN.md section 2).
//!
//! Every call carries a [`StateGoal`] (Eclipse Symphony's staging proposal):
//! `DryRun` only reports, `Stage` prepares everything beside what is applied
//! and never changes it, `Apply` switches to the staged state. [`Target::get`]
//! reports per component whether it is `Staged` or `Applied`.

pub mod dir;
pub mod kube;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::wellknown::ORPHANED_FROM;
use crate::model::{CompositionId, Digest, TargetKind};
pub use crate::source::SourceRef;
use crate::synth::Rendered;

pub use dir::DirectoryTarget;
pub use kube::KubernetesTarget;

/// What a target call should achieve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateGoal {
    /// Compute what would change; no side effect anywhere.
    DryRun,
    /// Prepare the desired state beside the applied one; never change what is applied.
    Stage,
    /// Make the desired state the applied one.
    Apply,
}

/// Whether a component is only staged or applied (current).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateFlag {
    Staged,
    Applied,
}

/// What a target is asked to hold for one composition.
#[derive(Debug, Clone)]
pub struct Desired {
    pub rendered: Arc<Rendered>,
    pub source: SourceRef,
    /// Verified artifact files in the store, by artifact name.
    pub artifacts: BTreeMap<String, PathBuf>,
}

/// One resource of a composition as the target holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// `apiVersion/kind/namespace/name`, as [`crate::synth::ResourceKey`] prints it.
    pub name: String,
    pub flag: StateFlag,
}

/// Whether what is applied runs as it should (the `Running` condition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Health {
    Healthy,
    Unhealthy(String),
    /// Still not healthy when the target's health timeout after the apply
    /// ran out: the composition has failed (status code `HealthTimeout`),
    /// until a later reading finds it healthy.
    Failed(String),
    /// Nothing applied yet.
    Unknown,
}

/// What a target holds for one composition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// Digest of the applied state, if any.
    pub applied: Option<Digest>,
    /// Digest of the staged state, if any (it may equal `applied`).
    pub staged: Option<Digest>,
    /// Components of the applied state (`Applied`) and of a staged state that
    /// is not applied yet (`Staged`), each once.
    pub components: Vec<Component>,
    pub health: Option<Health>,
    /// Annotations the applied state carries (the two-phase protocol reads them).
    pub annotations: BTreeMap<String, String>,
    /// Labels the applied state carries.
    pub labels: BTreeMap<String, String>,
    /// The branch and commit the applied state came from, where the target
    /// records it: which watched branch deployed what it holds, when
    /// `state.json` no longer says.
    pub source: Option<SourceRef>,
}

/// What a call changed, or with `DryRun` would change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Whether the target was (or would be) written.
    pub changed: bool,
    /// A human-readable diff of applied against desired, for plans (`DryRun`).
    pub diff: Option<String>,
    /// `Stage` only: what the target is still preparing (images pulling,
    /// artifacts being delivered). The state is not staged yet and must
    /// not be applied: stage it again on a later pass.
    pub staging: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{id}: state {digest} is not staged; stage it before applying")]
    NotStaged { id: CompositionId, digest: String },
    #[error("{0}")]
    Invalid(String),
    /// A Kubernetes API request failed: the resource and the API's message.
    #[error("{resource}: {message}")]
    Kubernetes { resource: String, message: String },
}

impl TargetError {
    pub fn io(path: impl fmt::Display, source: std::io::Error) -> Self {
        TargetError::Io {
            path: path.to_string(),
            source,
        }
    }
}

/// A composition to switch to the state it has staged: an item of
/// [`Target::apply_staged`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    pub id: CompositionId,
    pub digest: Digest,
    /// The commit the state comes from, for the target's history.
    pub source: SourceRef,
}

/// A change to the metadata of what is applied, with resources and
/// artifacts left as they are: the two-phase protocol's prune and the
/// orphan mark. A value, so a plan can show it and a test can compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataChange {
    /// The composition's annotations become exactly these.
    Annotations(BTreeMap<String, String>),
    /// Every resource stays in place, annotated as orphaned from
    /// `symphony`: nothing prunes or deletes it after this.
    Orphan { symphony: String },
}

impl MetadataChange {
    /// `applied` with this change made: what a target writes. Pure, so each
    /// target makes the same change.
    pub fn applied_to(&self, applied: Rendered) -> Result<Rendered, String> {
        let Rendered {
            id,
            resources,
            mut annotations,
            labels,
            artifacts,
            ..
        } = applied;
        let resources = match self {
            MetadataChange::Annotations(new) => {
                annotations = new.clone();
                resources
            }
            MetadataChange::Orphan { symphony } => {
                annotations.insert(ORPHANED_FROM.to_string(), symphony.clone());
                let mut out = Vec::with_capacity(resources.len());
                for res in resources {
                    let mut o = res.object;
                    if let Some(meta) = o
                        .get_mut("metadata")
                        .and_then(serde_json::Value::as_object_mut)
                    {
                        let ann = meta
                            .entry("annotations")
                            .or_insert_with(|| serde_json::json!({}));
                        if let Some(ann) = ann.as_object_mut() {
                            ann.insert(ORPHANED_FROM.into(), serde_json::json!(symphony));
                        }
                    }
                    out.push(crate::synth::Resource::new(o)?);
                }
                out
            }
        };
        Ok(Rendered::from_parts(
            id,
            resources,
            annotations,
            labels,
            artifacts,
        ))
    }
}

/// A place compositions are applied to. Held as `Arc<dyn Target>`; calls for
/// one composition are never concurrent, calls for different ones may be.
#[async_trait]
pub trait Target: Send + Sync + fmt::Debug {
    /// `Stage` and `Apply` are idempotent: a state already staged (applied)
    /// is not written again, and `Outcome::changed` says so.
    async fn apply(&self, desired: &Desired, goal: StateGoal) -> Result<Outcome, TargetError>;
    /// What the target holds for `id`. A target may trust what it wrote or
    /// verified before where a cheap check (a `stat`, as git's index does)
    /// shows nothing changed since; [`Target::verify`] checks in full.
    async fn get(&self, id: &CompositionId) -> Result<Observed, TargetError>;
    /// [`Target::get`], checking content in full whatever was verified
    /// before: a resync, so that what a cheap check cannot see (a rewrite
    /// that kept size and timestamps) does not stay.
    async fn verify(&self, id: &CompositionId) -> Result<Observed, TargetError> {
        self.get(id).await
    }
    /// [`Target::get`] of each of `ids` (with `full`, [`Target::verify`]),
    /// results in order, at most `limit` in flight. A target that reads
    /// its own disk reads them all in one go instead (a window's opening
    /// reads ten thousand).
    async fn read_all(
        &self,
        ids: &[CompositionId],
        full: bool,
        limit: usize,
    ) -> Vec<Result<Observed, TargetError>> {
        type Read<'a> = futures_util::future::BoxFuture<'a, (usize, Result<Observed, TargetError>)>;
        // Collected first: a stream holding the closure is not `Send`
        // enough for `async_trait` (a higher-ranked lifetime).
        let reads: Vec<Read<'_>> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| -> Read<'_> {
                Box::pin(async move {
                    let read = if full {
                        self.verify(id).await
                    } else {
                        self.get(id).await
                    };
                    (i, read)
                })
            })
            .collect();
        // Unordered: one slow read does not hold back the next `limit`.
        let reads = futures_util::StreamExt::buffer_unordered(
            futures_util::stream::iter(reads),
            limit.max(1),
        );
        let mut reads: Vec<_> = futures_util::StreamExt::collect(reads).await;
        reads.sort_by_key(|(i, _)| *i);
        reads.into_iter().map(|(_, read)| read).collect()
    }
    /// Whether [`Target::apply_staged`] switches staged states as a batch;
    /// if not, each composition is applied by its own `apply` call.
    fn switches_staged(&self) -> bool {
        false
    }
    /// Applies every item of `batch` (different compositions, none waiting
    /// for another) by switching to the state it has staged, as one unit of
    /// durability: the syncs a single apply makes are made once for the
    /// batch. A crash leaves each composition on its old state or its new
    /// one, each complete. Per item, in order: what the target holds now,
    /// or why it was not switched ([`TargetError::NotStaged`]: stage it
    /// first). Targets without batches refuse every item.
    async fn apply_staged(&self, batch: &[Switch]) -> Vec<Result<Observed, TargetError>> {
        batch
            .iter()
            .map(|s| {
                Err(TargetError::NotStaged {
                    id: s.id.clone(),
                    digest: s.digest.to_hex(),
                })
            })
            .collect()
    }
    /// Whether each `(id, digest)` is, by a cheap check only, exactly the
    /// applied state the target last wrote or verified in full (`false`:
    /// not known; read it with `get`). What lets a restart on an unchanged
    /// commit skip the pass. Default: never known.
    async fn unchanged(&self, applied: &[(CompositionId, Digest)]) -> Vec<bool> {
        vec![false; applied.len()]
    }
    /// The end of a pass: a target that keeps what it verified (for
    /// `unchanged` after a restart) writes it down now, once, not per call;
    /// one that collects garbage across compositions collects now.
    async fn checkpoint(&self) -> Result<(), TargetError> {
        Ok(())
    }
    /// Waits until every write this target reported done is durable. A
    /// target may return from [`Target::apply_staged`] once its switches
    /// are made and sync them in the background, so that the caller
    /// prepares its status meanwhile: status that says they are applied
    /// is published only after this. Default: durable on return.
    async fn durable(&self) -> Result<(), TargetError> {
        Ok(())
    }
    /// Makes the state applied before `failed` the applied one again (a
    /// failed apply or health check, DESIGN.md section 2 `rollback`); the
    /// digest applied now, or `None` when there is nothing to go back to.
    /// Idempotent: where `failed` is not (or no longer) applied, what is
    /// applied is the state before it, and stays (a target that may have
    /// applied part of `failed` writes that state again).
    async fn rollback(
        &self,
        id: &CompositionId,
        failed: &Digest,
    ) -> Result<Option<Digest>, TargetError> {
        let _ = failed;
        Err(TargetError::Invalid(format!(
            "{id}: this target cannot roll back"
        )))
    }
    /// Removes everything of `id` from the target; done when it returns Ok.
    async fn delete(&self, id: &CompositionId) -> Result<(), TargetError>;
    /// Every composition the target holds anything of.
    async fn list(&self) -> Result<Vec<CompositionId>, TargetError>;
    /// The applied state of `id` as the target holds it (artifacts by name,
    /// sha256 and size only): what is left in place when a symphony is
    /// deleted and its resources are orphaned.
    async fn applied(&self, id: &CompositionId) -> Result<Option<Rendered>, TargetError>;
    /// Makes `change` to what is applied for `id`, as one more applied state
    /// (atomic like any apply) that keeps the resources' content, the
    /// artifacts and the commit it was applied from. Nothing applied:
    /// nothing done (`changed: false`).
    async fn write_metadata(
        &self,
        id: &CompositionId,
        change: &MetadataChange,
    ) -> Result<Outcome, TargetError>;
}

/// Resolves a Target definition to the object that writes it. The
/// reconciler holds one (`Arc<dyn Targets>`) instead of building concrete
/// targets itself, so tests hand it fakes and decorators.
pub trait Targets: Send + Sync {
    /// What identifies where a target writes: two Target objects (or two
    /// names) for one directory or one cluster namespace are one target.
    fn key(&self, kind: &TargetKind) -> String;
    /// The target for `kind`, built once per key.
    fn get(&self, kind: &TargetKind) -> Arc<dyn Target>;
    /// The targets one site reconciles in central mode: there, a site-less
    /// directory target has an instance per site. `None`: these same ones
    /// (a cluster is one cluster wherever it is reached from).
    fn at_site(&self, _site: &str) -> Option<Arc<dyn Targets>> {
        None
    }
}

/// The real targets: directories (relative ones under a root) and
/// Kubernetes clusters.
pub struct LocalTargets {
    root: PathBuf,
    health_timeout: std::time::Duration,
    clock: Arc<dyn crate::window::Clock>,
    built: std::sync::Mutex<std::collections::HashMap<String, Arc<dyn Target>>>,
}

impl LocalTargets {
    /// `root`: where relative directory targets live; `health_timeout` and
    /// `clock`: how a Kubernetes target judges health after an apply.
    pub fn new(
        root: PathBuf,
        health_timeout: std::time::Duration,
        clock: Arc<dyn crate::window::Clock>,
    ) -> LocalTargets {
        LocalTargets {
            root,
            health_timeout,
            clock,
            built: Default::default(),
        }
    }

    fn directory(&self, path: &str) -> PathBuf {
        let p = PathBuf::from(path);
        if p.is_absolute() {
            p
        } else {
            self.root.join(p)
        }
    }
}

impl Targets for LocalTargets {
    fn key(&self, kind: &TargetKind) -> String {
        match kind {
            TargetKind::Directory { path } => {
                format!("directory:{}", self.directory(path).display())
            }
            TargetKind::Kubernetes(spec) => format!("kubernetes:{}", serde_json::json!(spec)),
        }
    }

    /// Relative directories under `<root>/<site>/`.
    fn at_site(&self, site: &str) -> Option<Arc<dyn Targets>> {
        Some(Arc::new(LocalTargets::new(
            self.root.join(site),
            self.health_timeout,
            self.clock.clone(),
        )))
    }

    fn get(&self, kind: &TargetKind) -> Arc<dyn Target> {
        let key = self.key(kind);
        let mut built = self
            .built
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        built
            .entry(key)
            .or_insert_with(|| match kind {
                TargetKind::Directory { path } => {
                    Arc::new(DirectoryTarget::new(self.directory(path)))
                }
                TargetKind::Kubernetes(spec) => Arc::new(KubernetesTarget::new(
                    spec.clone(),
                    self.health_timeout,
                    self.clock.clone(),
                )),
            })
            .clone()
    }
}
