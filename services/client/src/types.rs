//! The API's resources as this client reads them: only the fields its callers use, so a server
//! that adds fields keeps working with an older client.

use std::collections::BTreeMap;

use serde::Deserialize;

/// An RFC 9457 problem, as every error of the API is sent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Problem {
    /// Stable, e.g. `/problems/validation`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: Option<String>,
    #[serde(default)]
    pub errors: Vec<ProblemField>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProblemField {
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Cluster {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// pending, connected, stale or disconnected.
    pub status: String,
    #[serde(default)]
    pub agent_version: Option<String>,
    #[serde(default)]
    pub kubernetes_version: Option<String>,
    #[serde(default)]
    pub last_seen_at: Option<String>,
}

/// A created cluster and its one-time bootstrap token.
#[derive(Debug, Clone, Deserialize)]
pub struct Created {
    pub cluster: Cluster,
    pub bootstrap_token: CreatedToken,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CreatedToken {
    pub token: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Finding {
    pub check: String,
    pub severity: String,
    pub health: Option<String>,
    pub message: String,
    pub since: String,
    pub object: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClusterHealth {
    pub cluster_id: String,
    pub name: String,
    pub status: String,
    pub health: String,
    pub findings: Vec<Finding>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct HealthSummary {
    pub critical: u64,
    pub degraded: u64,
    pub expiring: u64,
    pub pending: u64,
    pub healthy: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FleetHealth {
    pub summary: HealthSummary,
    pub clusters: Vec<ClusterHealth>,
}
