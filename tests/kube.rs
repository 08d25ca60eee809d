//! The Kubernetes target against a faithful fake API server
//! (`util/kube_fake.rs`): server-side apply, staging by dry run, prune,
//! inventory, health, and `fermata run --once` end to end.

#[path = "util/kube_fake.rs"]
mod kube_fake;
mod util;
