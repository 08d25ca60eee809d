//! An activation's state as kept in Git (`campaigns/<activation>.yaml` on
//! the status branch, one commit per transition): everything a driver
//! needs to continue where another one stopped, so replaying it gives the
//! same decisions (invariant 12).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where an activation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// Behind another activation of a `concurrency: 1` campaign.
    Queued,
    Running,
    Succeeded,
    Failed,
}

/// One site's result in a stage (map-reduce: the per-site part).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "result")]
pub enum SiteResult {
    Pending,
    Succeeded,
    Failed { reason: String },
}

/// What a stage did and found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageRecord {
    pub started: Option<DateTime<Utc>>,
    pub finished: Option<DateTime<Utc>>,
    /// Promote: batches committed so far, each with its commit and sites.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batches: Vec<BatchRecord>,
    /// Per site: its result.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sites: BTreeMap<String, SiteResult>,
    /// The reduced outputs (`succeeded`, `failed`, `pending`, ...), what
    /// `next` conditions read.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, serde_json::Value>,
}

/// One promote commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchRecord {
    /// The commit on the watched branch that carries the promote; for a
    /// pull request not merged yet, the commit of its branch.
    pub commit: String,
    pub sites: Vec<String>,
    /// Per site, what the edit replaced (each key's value as it was
    /// written, or absent): what a revert restores byte for byte.
    pub replaced: BTreeMap<String, super::edit::Replaced>,
    /// `pullRequest: true`: the pull request the commit was proposed in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<u64>,
    /// The pull request was merged: `commit` is then its merge commit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub merged: bool,
}

/// Who approved a stage, and how it was established.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    pub stage: String,
    pub by: String,
    pub reason: String,
    /// The approval commit, or pull request.
    pub via: String,
    pub at: DateTime<Utc>,
}

/// An activation's whole state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivationState {
    pub activation: String,
    pub campaign: String,
    pub inputs: BTreeMap<String, String>,
    /// Transitions so far: each committed state has a new one.
    pub generation: u64,
    pub phase: Phase,
    /// The stage running (`None` once finished).
    pub stage: Option<String>,
    /// Per stage run, in order.
    #[serde(default)]
    pub stages: BTreeMap<String, StageRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<Approval>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started: DateTime<Utc>,
    pub updated: DateTime<Utc>,
}

impl ActivationState {
    pub fn new(
        activation: &str,
        campaign: &str,
        first_stage: &str,
        inputs: BTreeMap<String, String>,
        now: DateTime<Utc>,
    ) -> ActivationState {
        ActivationState {
            activation: activation.into(),
            campaign: campaign.into(),
            inputs,
            generation: 0,
            phase: Phase::Running,
            stage: Some(first_stage.into()),
            stages: BTreeMap::new(),
            approvals: Vec::new(),
            error: None,
            started: now,
            updated: now,
        }
    }

    /// The record of the running stage (created when it starts).
    pub fn current(&mut self, now: DateTime<Utc>) -> Option<&mut StageRecord> {
        let stage = self.stage.clone()?;
        let rec = self.stages.entry(stage).or_default();
        rec.started.get_or_insert(now);
        Some(rec)
    }

    /// The path of its file on the status branch.
    pub fn path(activation: &str) -> String {
        format!("campaigns/{activation}.yaml")
    }
}
