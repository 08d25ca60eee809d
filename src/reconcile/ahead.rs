//! Rendering and staging ahead of the ordered roll out.
//!
//! A pass decides its compositions in list order: an apply waits for the
//! compositions before it in its symphony and for its dependencies
//! (DESIGN.md sections 4 and 6). Rendering and staging change nothing that
//! runs, so they need not wait: while the roll out waits on one
//! composition, the next `apply_concurrency` are rendered and staged as
//! tasks of their own, and the roll out takes each result when it comes to
//! that composition. Otherwise a symphony's variations stage one after
//! another, and a staging pass of 10,000 used one core of two.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::annotations;
use super::outcome::CompositionError;
use super::plan::Reason;
use crate::leader::Leadership;
use crate::model::{wellknown, Composition, CompositionId, Digest, Fleet};
use crate::report::ErrorCode;
use crate::source::{Snapshot, SourceRef};
use crate::stage::{ArtifactStore, StageError};
use crate::synth::{self, Rendered};
use crate::target::{Desired, Observed, StateGoal, Target};

/// The pass's artifact downloads, by digest: where each was stored, or why
/// not.
pub(super) type Fetched = BTreeMap<Digest, Result<PathBuf, StageError>>;

/// What one composition's rendering needs, owned.
pub(super) struct RenderJob {
    pub snap: Arc<Snapshot>,
    pub fleet: Arc<Fleet>,
    pub comp: Composition,
    pub limits: synth::Limits,
    pub target: Option<Arc<dyn Target>>,
    /// The annotations and labels the target holds for it.
    pub annotations: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

/// A rendering: the state to hold (annotations settled, `reconcile-when`
/// applied), every component it renders, and those left alone.
pub(super) struct RenderedState {
    pub state: Arc<Rendered>,
    pub components: Vec<String>,
    pub skipped: Vec<String>,
}

pub(super) type RenderOut = Result<RenderedState, CompositionError>;

impl RenderJob {
    pub async fn run(self) -> RenderOut {
        let RenderJob {
            snap,
            fleet,
            comp,
            limits,
            target,
            annotations,
            labels,
        } = self;
        let (fleet2, comp2) = (fleet.clone(), comp.clone());
        let result = tokio::task::spawn_blocking(move || {
            synth::render(&snap, &fleet2, &comp2, &limits)
                .map_err(|e| e.diagnostic(&fleet2, &comp2))
        })
        .await;
        let rendered = match result {
            Ok(Ok(r)) => r,
            Ok(Err(d)) => {
                return Err(CompositionError::new(
                    ErrorCode::RenderFailed,
                    format!("{}:{}", d.file, d.line.unwrap_or(0)),
                    d.message,
                ))
            }
            Err(e) => {
                return Err(CompositionError::new(
                    ErrorCode::RenderFailed,
                    comp.synthesizer.clone(),
                    e.to_string(),
                ))
            }
        };
        let ann = annotations::effective(&annotations, &comp.annotations);
        let labels = annotations::effective(&labels, &comp.labels);
        let needs_applied = rendered.resources.iter().any(|r| {
            r.object
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(wellknown::RECONCILE_WHEN))
                .and_then(|v| v.as_str())
                .is_some_and(|c| !wellknown::reconcile_when_matches(c, &ann))
        });
        let applied = match (&target, needs_applied) {
            (Some(t), true) => t.applied(&comp.id).await.map_err(|e| {
                CompositionError::new(
                    ErrorCode::TargetUnavailable,
                    comp.target.clone(),
                    e.to_string(),
                )
            })?,
            _ => None,
        };
        let (state, skipped) = annotations::finalize(&rendered, ann, labels, applied.as_ref());
        Ok(RenderedState {
            state: Arc::new(state),
            components: rendered
                .resources
                .iter()
                .map(|r| r.key.to_string())
                .collect(),
            skipped,
        })
    }
}

/// Where the store keeps each artifact of `rendered`, by name: fetched this
/// pass, or (staged before, now applying) already there. The URL and why of
/// the first that failed.
pub(super) fn artifact_files(
    store: &ArtifactStore,
    rendered: &Rendered,
    fetched: &Fetched,
) -> Result<BTreeMap<String, PathBuf>, (String, String)> {
    let mut files = BTreeMap::new();
    for a in &rendered.artifacts {
        let path = match fetched.get(&a.sha256) {
            Some(Ok(p)) => p.clone(),
            Some(Err(e)) => return Err((a.url.clone(), e.to_string())),
            None => store.path_of(&a.sha256),
        };
        files.insert(a.name.clone(), path);
    }
    Ok(files)
}

/// What a target write found, to be recorded on the composition's work.
#[derive(Default)]
pub(super) struct IoDone {
    pub waiting: Option<Reason>,
    pub waiting_message: Option<String>,
    pub observed: Option<Observed>,
    pub failed: Option<(ErrorCode, String)>,
}

/// Stages `desired`. `Err` with what to record when nothing more may be
/// done with it: the staging failed, or the target is still preparing it
/// (nothing may be applied yet, not even in an open window; what the
/// target holds is read).
pub(super) async fn stage(target: &dyn Target, desired: &Desired) -> Result<(), IoDone> {
    let id = &desired.rendered.id;
    let digest = desired.rendered.digest.short();
    match target.apply(desired, StateGoal::Stage).await {
        Err(e) => Err(IoDone {
            failed: Some((ErrorCode::StagingFailed, e.to_string())),
            ..IoDone::default()
        }),
        Ok(crate::target::Outcome {
            staging: Some(what),
            ..
        }) => {
            tracing::info!(composition = %id, %digest, waiting = %what, "staging");
            let done = IoDone {
                waiting: Some(Reason::Staging),
                waiting_message: Some(what),
                ..IoDone::default()
            };
            Err(observe(target, id, done).await)
        }
        Ok(_) => {
            tracing::info!(composition = %id, %digest, "staged");
            Ok(())
        }
    }
}

/// Adds what the target holds for `id` to `done`.
pub(super) async fn observe(target: &dyn Target, id: &CompositionId, mut done: IoDone) -> IoDone {
    match target.get(id).await {
        Ok(o) => done.observed = Some(o),
        Err(e) => done.failed = Some((ErrorCode::TargetUnavailable, e.to_string())),
    }
    done
}

/// A composition's rendering, then its staging if the target holds its
/// state neither applied nor staged.
pub(super) struct Job {
    pub render: RenderJob,
    /// `None`: render only (a pass that may not write).
    pub stage: Option<StageTo>,
}

/// Where a job stages, and against what.
pub(super) struct StageTo {
    pub target: Arc<dyn Target>,
    /// What the target held when the pass read it.
    pub applied: Option<Digest>,
    pub staged: Option<Digest>,
    pub source: SourceRef,
    pub store: ArtifactStore,
    pub fetched: Arc<Fetched>,
    /// Asked again right before the write, as before every write: the
    /// lease may have been lost since the job started.
    pub leadership: Leadership,
}

/// What a job came to.
pub(super) struct Done {
    pub render: RenderOut,
    /// What its staging found (see [`stage`]; once staged, what the target
    /// holds). `None` if it was not staged here: not needed, its artifacts
    /// failed, or this replica stopped leading (the roll out's own path
    /// reports those).
    pub staged: Option<IoDone>,
}

impl Job {
    pub async fn run(self) -> Done {
        let render = self.render.run().await;
        let staged = match (&render, self.stage) {
            (Ok(r), Some(to))
                if to.applied != Some(r.state.digest) && to.staged != Some(r.state.digest) =>
            {
                stage_to(r.state.clone(), to).await
            }
            _ => None,
        };
        Done { render, staged }
    }
}

async fn stage_to(state: Arc<Rendered>, to: StageTo) -> Option<IoDone> {
    let artifacts = artifact_files(&to.store, &state, &to.fetched).ok()?;
    if !to.leadership.is_leader() {
        return None;
    }
    let desired = Desired {
        rendered: state,
        source: to.source,
        artifacts,
    };
    let target = to.target.as_ref();
    Some(match stage(target, &desired).await {
        Err(done) => done,
        Ok(()) => observe(target, &desired.rendered.id, IoDone::default()).await,
    })
}
