//! Staging: everything that can be done before the window. Artifacts are
//! fetched into a content-addressed store, verified, and kept by digest.

mod artifacts;

pub use artifacts::{ArtifactStore, StageError};
