//! The fleet simulator: synthetic clusters that behave like real meshed clusters (inventory,
//! drifting golden metrics, pod churn, warnings, commands) and the driver that runs many real
//! gateway clients for them in one process. Shared by `meshfleet-sim` and the benchmarks.

mod cluster;
mod fleet;
pub mod pki;

pub use cluster::{synthetic_cluster, SharedCluster, SyntheticCluster};
pub use fleet::{drive, run, Auth, FleetConfig, FleetStatus};

/// Where the simulator keeps agent identities (private keys) unless told otherwise: the user's
/// state directory, never the working folder, where they could end up in a commit.
/// `$XDG_STATE_HOME/meshfleet-sim`, else `$HOME/.local/state/meshfleet-sim` (the XDG default);
/// relative values are ignored, as the XDG spec asks. `var` reads the environment.
pub fn default_state_dir(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<std::path::PathBuf> {
    let absolute = |name| var(name).map(std::path::PathBuf::from).filter(|p| p.is_absolute());
    let base = absolute("XDG_STATE_HOME").or_else(|| Some(absolute("HOME")?.join(".local/state")))?;
    Some(base.join("meshfleet-sim"))
}

/// Errors of the simulator (API calls, the install manifest, registration, state files).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Api(#[from] meshfleet_client::Error),
    #[error(transparent)]
    Agent(#[from] meshfleet_agent::Error),
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::default_state_dir;

    fn dir(vars: &[(&str, &str)]) -> Option<PathBuf> {
        default_state_dir(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.into()))
    }

    #[test]
    fn identities_go_to_the_users_state_directory() {
        assert_eq!(dir(&[("HOME", "/home/ada")]), Some(PathBuf::from("/home/ada/.local/state/meshfleet-sim")));
        assert_eq!(dir(&[("HOME", "/home/ada"), ("XDG_STATE_HOME", "/srv/state")]), Some(PathBuf::from("/srv/state/meshfleet-sim")));
        // A relative XDG_STATE_HOME is invalid per the spec; nothing lands in the working folder.
        assert_eq!(dir(&[("HOME", "/home/ada"), ("XDG_STATE_HOME", "state")]), Some(PathBuf::from("/home/ada/.local/state/meshfleet-sim")));
        assert_eq!(dir(&[("HOME", "")]), None);
        assert_eq!(dir(&[]), None);
    }
}
