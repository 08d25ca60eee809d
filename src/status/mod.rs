//! Status in Git (DESIGN.md section 7): Margo's DeploymentStatus per
//! composition, committed to a status branch, so `git log` of that branch is
//! the deployment history.

mod git;
pub mod ids;
pub mod margo;
pub mod northbound;
mod summary;
pub mod timeline;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::CompositionId;
use crate::source::SourceRef;

pub use git::{
    branch_name, site_branch, site_notes_ref, site_plan_notes_ref, StatusError, StatusRepo,
    StatusUpdate, NOTES_REF, PLAN_NOTES_REF, SITE_BRANCH_PREFIX, SITE_NOTES_PREFIX,
    SITE_PLAN_NOTES_PREFIX,
};
pub use summary::{relative, same_summary};

/// Blocks until what a status update claims is durable (see
/// [`StatusSink::publish_when`]).
pub type Durable = Box<dyn FnOnce() + Send>;

/// Where a reconciler reports: held as `Arc<dyn StatusSink>`, so the
/// reconciler does not know it is Git (tests may record instead). Async:
/// [`StatusRepo`] runs its git2 work on the blocking pool.
#[async_trait::async_trait]
pub trait StatusSink: Send + Sync {
    /// Commits `update` if any status differs (time stamps aside); the new
    /// commit, or `None` when nothing was written (invariant 5).
    async fn publish(&self, update: StatusUpdate) -> Result<Option<git2::Oid>, StatusError>;
    /// [`StatusSink::publish`], but nothing becomes visible before
    /// `durable` has returned, while the update is prepared meanwhile: the
    /// statuses may claim writes a target still syncs.
    async fn publish_when(
        &self,
        update: StatusUpdate,
        durable: Durable,
    ) -> Result<Option<git2::Oid>, StatusError> {
        tokio::task::spawn_blocking(durable)
            .await
            .map_err(|e| StatusError::Task(e.to_string()))?;
        self.publish(update).await
    }
    /// Sets this site's section of the plan note on `commit`; whether
    /// anything was written.
    async fn publish_plan_note(
        &self,
        commit: git2::Oid,
        marker: &str,
        section: &str,
    ) -> Result<bool, StatusError>;
    /// Where `site` reports, in central mode: its own refs.
    fn for_site(&self, site: &str) -> Arc<dyn StatusSink>;
}

#[async_trait::async_trait]
impl StatusSink for StatusRepo {
    async fn publish(&self, update: StatusUpdate) -> Result<Option<git2::Oid>, StatusError> {
        StatusSink::publish_when(self, update, Box::new(|| ())).await
    }

    async fn publish_when(
        &self,
        update: StatusUpdate,
        durable: Durable,
    ) -> Result<Option<git2::Oid>, StatusError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.publish_when(&update, durable))
            .await
            .map_err(|e| StatusError::Task(e.to_string()))?
    }

    async fn publish_plan_note(
        &self,
        commit: git2::Oid,
        marker: &str,
        section: &str,
    ) -> Result<bool, StatusError> {
        let (me, marker, section) = (self.clone(), marker.to_string(), section.to_string());
        tokio::task::spawn_blocking(move || me.publish_plan_note(commit, &marker, &section))
            .await
            .map_err(|e| StatusError::Task(e.to_string()))?
    }

    fn for_site(&self, site: &str) -> Arc<dyn StatusSink> {
        Arc::new(self.of_site(site))
    }
}

/// A composition's (or component's) state: Margo's values plus `staging`/`staged`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Staging,
    Staged,
    Installing,
    Installed,
    Failed,
    Removing,
    Removed,
}

impl State {
    /// failed > removing > installing > staging > staged > pending > installed > removed.
    pub fn severity(self) -> u8 {
        match self {
            State::Failed => 7,
            State::Removing => 6,
            State::Installing => 5,
            State::Staging => 4,
            State::Staged => 3,
            State::Pending => 2,
            State::Installed => 1,
            State::Removed => 0,
        }
    }

    /// The overall state of several components: the most severe one.
    pub fn most_severe(states: impl IntoIterator<Item = State>) -> Option<State> {
        states.into_iter().max_by_key(|s| s.severity())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Staging => "staging",
            State::Staged => "staged",
            State::Installing => "installing",
            State::Installed => "installed",
            State::Failed => "failed",
            State::Removing => "removing",
            State::Removed => "removed",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status file of one composition, `<branch>/<symphony>/<variation>.yaml`
/// on the status branch (a site's own branch for a site).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatus {
    pub api_version: String,
    pub kind: String,
    pub metadata: StatusMetadata,
    pub source: SourceRef,
    pub status: StatusBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusMetadata {
    /// Margo's id of the deployment. `symphony/variation` for a site-less
    /// status without a `fermata.dev/deployment-id` annotation (what it
    /// always was, so such files stay byte for byte the same); otherwise
    /// that annotation's value, or for a site [`ids::deployment_id`].
    pub deployment_id: String,
    /// `symphony/variation` whenever `deploymentId` is something else: what
    /// fermata itself keys statuses on ([`DeploymentStatus::composition`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub composition: Option<String>,
    /// The site (Margo's device) that reported it; none without `--site`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// When this status was last changed; not part of the comparison that
    /// decides whether to commit, or every pass would commit.
    pub time_stamp: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusBody {
    pub state: State,
    /// Digest of the desired state this status is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Digest of what the target has applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowStatus>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StatusErrorInfo>,
    /// A break-glass apply outside the window, with who and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#override: Option<Override>,
    /// Its symphony's readiness (Eno's rule): Ready when every non-optional
    /// composition is Ready at the current source commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symphony: Option<SymphonyReadiness>,
    /// Scheduling gates lifted with `fermata ungate`, with who and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ungated: Vec<Ungate>,
    #[serde(default)]
    pub components: Vec<ComponentStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowStatus {
    pub name: String,
    pub open: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_open: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    pub r#type: String,
    /// `"True"`, `"False"` or `"Unknown"`, as Kubernetes conditions.
    pub status: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusErrorInfo {
    pub code: String,
    pub source: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    pub who: String,
    pub why: String,
    pub at: DateTime<Utc>,
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymphonyReadiness {
    pub name: String,
    pub ready: bool,
    /// Non-optional compositions that are Ready.
    pub ready_compositions: usize,
    /// Non-optional compositions.
    pub desired: usize,
}

/// A scheduling gate lifted outside Git (`fermata ungate`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ungate {
    pub gate: String,
    pub who: String,
    pub why: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentStatus {
    pub name: String,
    pub state: State,
    /// Why fermata leaves it alone, e.g. `reconcile-when`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Why this component failed, where the error names it (a Kubernetes
    /// apply error on its resource); absent otherwise, so files without
    /// one stay as they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StatusErrorInfo>,
}

impl StatusMetadata {
    /// The metadata of composition `id`'s status, its Margo id overridden
    /// by `annotated` (the variation's `fermata.dev/deployment-id`), if set.
    /// The site's ids are added by the publisher ([`DeploymentStatus::for_site`]).
    pub fn new(id: &CompositionId, annotated: Option<&str>, now: DateTime<Utc>) -> StatusMetadata {
        let composition = id.to_string();
        match annotated {
            Some(given) => StatusMetadata {
                deployment_id: given.to_string(),
                composition: Some(composition),
                device_id: None,
                time_stamp: now,
            },
            None => StatusMetadata {
                deployment_id: composition,
                composition: None,
                device_id: None,
                time_stamp: now,
            },
        }
    }
}

impl DeploymentStatus {
    /// `symphony/variation`, whatever Margo's `deploymentId` is: the key of
    /// this status in fermata (its path, its record). Files written before
    /// `metadata.composition` existed have it as `deploymentId`.
    pub fn composition(&self) -> &str {
        self.metadata
            .composition
            .as_deref()
            .unwrap_or(&self.metadata.deployment_id)
    }

    /// Gives the status the ids of a site's report: `deviceId` the site,
    /// `composition` set, and `deploymentId` derived for (site, branch,
    /// composition) unless the variation's annotation chose it. Idempotent.
    pub fn for_site(&mut self, site: &str) {
        let composition = self.composition().to_string();
        if self.metadata.composition.is_none() {
            self.metadata.deployment_id =
                ids::deployment_id(site, &self.source.branch, &composition);
        }
        self.metadata.composition = Some(composition);
        self.metadata.device_id = Some(site.to_string());
    }

    /// Equal but for the time stamp: what decides whether a commit is due.
    pub fn same_as(&self, other: &DeploymentStatus) -> bool {
        let mut a = self.clone();
        a.metadata.time_stamp = other.metadata.time_stamp;
        strip_times(&mut a);
        let mut b = other.clone();
        strip_times(&mut b);
        a == b
    }
}

impl DeploymentStatus {
    /// A digest of the status without its times: equal fingerprints mean
    /// [`same_as`](Self::same_as), without parsing the other side again.
    pub fn fingerprint(&self) -> crate::model::Digest {
        let mut s = self.clone();
        s.metadata.time_stamp = DateTime::<Utc>::UNIX_EPOCH;
        strip_times(&mut s);
        crate::model::Digest::of(&serde_json::to_vec(&s).unwrap_or_default())
    }
}

fn strip_times(s: &mut DeploymentStatus) {
    for c in &mut s.status.conditions {
        c.last_transition_time = None;
    }
}

/// Counts by state, least severe first: `12 installed, 3 staged, 1 failed`.
pub fn summarize<'a>(statuses: impl IntoIterator<Item = &'a DeploymentStatus>) -> String {
    let mut counts: BTreeMap<u8, (State, usize)> = BTreeMap::new();
    for s in statuses {
        let st = s.status.state;
        counts.entry(st.severity()).or_insert((st, 0)).1 += 1;
    }
    if counts.is_empty() {
        return "no compositions".to_string();
    }
    counts
        .values()
        .map(|(st, n)| format!("{n} {st}"))
        .collect::<Vec<_>>()
        .join(", ")
}
