//! Campaigns (DESIGN.md section 10): staged rollouts across the fleet whose
//! every change to desired state is a Git commit. `edit` sets Site values in
//! a file's text byte for byte; `commit` writes them as one commit on the
//! watched branch and finds it again after a restart.

pub mod commit;
pub mod edit;
