//! The fleet simulator: synthetic clusters that behave like real meshed clusters (inventory,
//! drifting golden metrics, pod churn, warnings, commands) and the driver that runs many real
//! gateway clients for them in one process. Shared by `meshfleet-sim` and the benchmarks.

mod api;
mod cluster;
mod fleet;

pub use api::{ApiClient, Bootstrap, ClusterRef};
pub use cluster::{synthetic_cluster, SharedCluster, SyntheticCluster};
pub use fleet::{drive, run, Auth, FleetConfig, FleetStatus};

/// Errors of the simulator (API calls, the install manifest, registration, state files).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("HTTP request to the API failed")]
    Http(#[from] reqwest::Error),
    #[error("{what}: the API answered {status}: {body}")]
    Api { what: String, status: u16, body: String },
    #[error("install manifest: {0}")]
    Manifest(String),
    #[error(transparent)]
    Agent(#[from] crate::Error),
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
}
