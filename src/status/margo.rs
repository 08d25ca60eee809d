//! Margo's `DeploymentStatusManifest`, for a Margo workload orchestration
//! server (`fermata status --format margo`).

use serde::Serialize;

use super::{DeploymentStatus, State, StatusErrorInfo};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatusManifest {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub deployment_id: String,
    /// The site that reports it (a site agent's `--site`); absent without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    pub status: MargoStatus,
    pub components: Vec<MargoComponent>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MargoStatus {
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<MargoError>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MargoError {
    pub code: String,
    pub source: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct MargoComponent {
    pub name: String,
    pub state: &'static str,
    /// Why this component failed, where the error names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<MargoError>,
}

impl From<&StatusErrorInfo> for MargoError {
    fn from(e: &StatusErrorInfo) -> Self {
        MargoError {
            code: e.code.clone(),
            source: e.source.clone(),
            message: e.message.clone(),
        }
    }
}

/// Margo knows no staging: a staged composition is still `pending` there.
fn margo_state(s: State) -> &'static str {
    match s {
        State::Pending | State::Staging | State::Staged => "pending",
        other => other.as_str(),
    }
}

impl From<&DeploymentStatus> for DeploymentStatusManifest {
    fn from(s: &DeploymentStatus) -> Self {
        DeploymentStatusManifest {
            api_version: "deployment.margo/v1",
            kind: "DeploymentStatusManifest",
            deployment_id: s.metadata.deployment_id.clone(),
            device_id: s.metadata.device_id.clone(),
            status: MargoStatus {
                state: margo_state(s.status.state),
                error: s.status.error.as_ref().map(MargoError::from),
            },
            components: s
                .status
                .components
                .iter()
                .map(|c| MargoComponent {
                    name: c.name.clone(),
                    state: margo_state(c.state),
                    error: c.error.as_ref().map(MargoError::from),
                })
                .collect(),
        }
    }
}
