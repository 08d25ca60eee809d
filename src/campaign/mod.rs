//! Campaigns (DESIGN.md section 10): staged rollouts across the fleet whose
//! every change to desired state is a Git commit. `state` is an
//! activation's state as kept on the status branch; `engine` decides its
//! next step (pure); `edit` sets Site values in a file's text byte for
//! byte; `commit` writes them as one commit on the watched branch and finds
//! it again after a restart; `drive` carries the steps out, `verify` runs a verify stage's check.

pub mod commit;
pub mod drive;
pub mod edit;
pub mod engine;
pub mod remote;
pub mod state;
pub mod verify;
