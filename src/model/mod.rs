//! The object model of a watched repository: typed kinds ([`types`]), how
//! they are read and cross-checked ([`load`]), and the resolved [`Fleet`]
//! every later stage works on. No I/O beyond reading a [`Snapshot`].
//!
//! [`Snapshot`]: crate::source::Snapshot

pub mod campaign;
mod diag;
mod fleet;
mod ids;
pub mod load;
mod placement;
pub mod position;
mod site;
pub mod types;
pub mod wellknown;

pub use diag::{Diagnostic, Origin};
pub use fleet::{
    artifact_claim_path, Artifact, Bound, Composition, Fleet, MaintenanceWindow, Symphony,
    SynthKind, Synthesizer, Target, TargetKind,
};
pub use ids::{CompositionId, Digest};
pub use load::{load, Loaded};
pub use site::{
    check_label_key, check_label_value, Operator, Requirement, Site, SiteSelector, UnknownSite,
};
