//! What a reconciler is built from, once (in `cli/run.rs`; tests build it
//! with fakes): the seams to the outside world, as kube-runtime's `Context`.

use std::sync::Arc;

use super::Settings;
use crate::source::{GitSource, Source, SourceError};
use crate::stage::ArtifactStore;
use crate::status::{StatusRepo, StatusSink};
use crate::target::{LocalTargets, Targets};
use crate::window::Clock;

/// What a reconciler is built from, once (in `cli/run.rs`; tests build it
/// with fakes, kube-runtime's `Context`): the seams to the outside world.
#[derive(Clone)]
pub struct Context {
    pub settings: Settings,
    pub source: Arc<dyn Source>,
    /// Resolves Target definitions to targets.
    pub targets: Arc<dyn Targets>,
    pub store: ArtifactStore,
    pub status: Arc<dyn StatusSink>,
    pub clock: Arc<dyn Clock>,
}

impl Context {
    /// The real parts: the Git source (mirrored under the state directory
    /// for a URL), local targets, the artifact store, the status branch.
    /// No `--branch`: the one the repository's HEAD names.
    pub fn new(mut settings: Settings, clock: Arc<dyn Clock>) -> Result<Context, SetupError> {
        let git = GitSource::open(&settings.repo, &settings.state_dir)?;
        if settings.branches.is_empty() {
            let branch = git
                .default_branch()
                .ok_or_else(|| SetupError::NoDefaultBranch(settings.repo.clone()))?;
            settings.branches.push(branch);
        }
        let source: Arc<dyn Source> = Arc::new(git);
        let store =
            ArtifactStore::new(&settings.state_dir)?.with_file_roots(&settings.artifact_roots)?;
        let status = Arc::new(StatusRepo::new(
            source.git_dir().to_path_buf(),
            source.remote().map(str::to_string),
            settings.status_branch.clone(),
            settings.site.clone(),
        ));
        let targets = Arc::new(LocalTargets::new(
            settings.target_root.clone(),
            settings.health_timeout,
            clock.clone(),
        ));
        Ok(Context {
            settings,
            source,
            targets,
            store,
            status,
            clock,
        })
    }
}

/// Why a [`Context`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] crate::stage::StageError),
    #[error("{0}: no default branch; name one with --branch")]
    NoDefaultBranch(String),
}
