//! fermata: a GitOps reconciler for fleets of edge sites.
//!
//! The crate is organised by concept, in the order data flows through it:
//! [`source`] reads a commit out of Git, [`model`] turns its YAML into typed,
//! resolved objects, [`synth`] renders each composition, [`window`] decides when
//! an apply may start, [`stage`] fetches artifacts before it, [`target`]
//! stages and applies, [`status`] reports back into Git, and [`cli`] is the
//! command-line edge. See `DESIGN.md`.

pub mod campaign;
pub mod cli;
pub mod errors;
pub mod fleet;
pub mod forge;
pub mod leader;
pub mod model;
pub mod reconcile;
pub mod report;
pub mod serve;
pub mod source;
pub mod stage;
pub mod status;
pub mod synth;
pub mod target;
pub mod window;
