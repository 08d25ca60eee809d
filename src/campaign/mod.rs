//! Campaigns (DESIGN.md section 10): staged rollouts across the fleet,
//! driven through Git. `state` is an activation's state as kept on the
//! status branch, `engine` decides its next step (pure), `drive` carries
//! steps out against a repository.

pub mod engine;
pub mod state;
