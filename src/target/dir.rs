//! STUB: the directory target is being written; see the Target trait.

use std::path::PathBuf;

use async_trait::async_trait;

use super::{Desired, Observed, Outcome, StateGoal, Target, TargetError};
use crate::model::CompositionId;

/// The embedded default target: a directory tree per composition.
#[derive(Debug, Clone)]
pub struct DirectoryTarget {
    root: PathBuf,
}

impl DirectoryTarget {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirectoryTarget { root: root.into() }
    }
}

#[async_trait]
impl Target for DirectoryTarget {
    async fn apply(&self, _desired: &Desired, _goal: StateGoal) -> Result<Outcome, TargetError> {
        Err(TargetError::Invalid(format!(
            "{}: not implemented",
            self.root.display()
        )))
    }
    async fn get(&self, _id: &CompositionId) -> Result<Observed, TargetError> {
        Ok(Observed::default())
    }
    async fn delete(&self, _id: &CompositionId) -> Result<(), TargetError> {
        Ok(())
    }
    async fn list(&self) -> Result<Vec<CompositionId>, TargetError> {
        Ok(Vec::new())
    }
}
