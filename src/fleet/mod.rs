//! The fleet view (DESIGN.md section 9): every site's status branch
//! (`fermata/sites/<site>`) read at once and reduced to sites x
//! compositions, for `fermata fleet status` and for `fermata/fleet`, which
//! a central `fermata run --publish-fleet` keeps up to date.
//!
//! Reading is `read` (Git in, [`FleetInput`] out), deciding is `view`
//! (pure: input and time in, [`FleetView`] out), drawing is `svg`, and
//! `publish` commits the result.

mod publish;
pub mod read;
pub mod svg;
pub mod view;

pub use publish::{files, publish, summary_md, FLEET_BRANCH};
pub use view::{aggregate, FleetInput, FleetView, SiteReport};

use crate::status::StatusError;

/// `--stale`'s default: a lagging site that has not reported for this long
/// is offline (also what `run --publish-fleet` uses).
pub const DEFAULT_STALE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Why the fleet could not be read or published.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{repo}: {context}")]
    Git {
        repo: String,
        context: String,
        #[source]
        source: git2::Error,
    },
    #[error("cannot create the fleet cache of {repo} at {path}")]
    Cache {
        repo: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{repo}: no default branch; name one with --branch")]
    NoBranch { repo: String },
    #[error(transparent)]
    Status(#[from] StatusError),
}
