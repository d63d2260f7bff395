//! The agent's configuration: defaults < environment (the install Secret's keys plus the pod's
//! downward-API variables). Every problem is reported at once; secrets never print.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Needed only for the first start; later starts load the identity from the Secret.
    pub bootstrap_token: Option<SecretString>,
    pub gateway_address: String,
    pub gateway_ca_pem: String,
    pub cluster_id: Option<String>,
    pub mesh_namespace: String,
    pub pod_name: String,
    pub pod_namespace: String,
    /// /metrics, /healthz, /readyz.
    pub listen: SocketAddr,
    pub scrape_interval: Duration,
    pub scrape_timeout: Duration,
    pub scrape_concurrency: usize,
    /// Changes are batched for this long before a Delta is sent.
    pub debounce: Duration,
    pub lease_duration: Duration,
    pub lease_renew: Duration,
}

pub const IDENTITY_SECRET: &str = "meshfleet-agent-identity";
pub const IDENTITY_KEY: &str = "identity.json";
pub const LEASE_NAME: &str = "meshfleet-agent";
// The mesh's objects, named where the mesh's own install (`meshfleet-controller install`) reads them.
pub const CONTROLLER_DEPLOYMENT: &str = meshfleet_pki::names::CONTROLLER_DEPLOYMENT;
pub const ISSUER_SECRET: &str = meshfleet_pki::names::ISSUER_SECRET;
pub const TRUST_BUNDLE: &str = meshfleet_pki::names::TRUST_BUNDLE;
/// The Role in a meshed namespace that lets restart-workloads patch its Deployments (the
/// install manifest renders it; see the README's RBAC section).
pub const RESTART_ROLE: &str = "meshfleet-agent-restart";

impl AgentConfig {
    /// Reads the configuration from variables (the process environment in the binary, a map in
    /// tests), collecting every problem.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<AgentConfig, Vec<String>> {
        let mut problems = Vec::new();
        let get = |k: &str| vars.get(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let mut required = |k: &str| {
            get(k).unwrap_or_else(|| {
                problems.push(format!("{k} is required"));
                String::new()
            })
        };
        let gateway_address = required("MESHFLEET_GATEWAY_ADDRESS");
        let gateway_ca_pem = required("MESHFLEET_GATEWAY_CA");
        let pod_name = required("MESHFLEET_POD_NAME");
        let pod_namespace = required("MESHFLEET_POD_NAMESPACE");
        let mut duration = |k: &str, default_ms: u64| match get(k).map(|v| v.parse::<u64>()) {
            None => Duration::from_millis(default_ms),
            Some(Ok(ms)) if ms > 0 => Duration::from_millis(ms),
            Some(_) => {
                problems.push(format!("{k} must be a positive number of milliseconds"));
                Duration::from_millis(default_ms)
            }
        };
        let scrape_interval = duration("MESHFLEET_SCRAPE_INTERVAL_MS", 10_000);
        let scrape_timeout = duration("MESHFLEET_SCRAPE_TIMEOUT_MS", 2_000);
        let debounce = duration("MESHFLEET_DEBOUNCE_MS", 200);
        let lease_duration = duration("MESHFLEET_LEASE_DURATION_MS", 10_000);
        let lease_renew = duration("MESHFLEET_LEASE_RENEW_MS", 2_000);
        let listen = match get("MESHFLEET_AGENT_LISTEN").unwrap_or_else(|| "0.0.0.0:9090".into()).parse() {
            Ok(a) => a,
            Err(_) => {
                problems.push("MESHFLEET_AGENT_LISTEN must be host:port".into());
                SocketAddr::from(([0, 0, 0, 0], 9090))
            }
        };
        if lease_renew >= lease_duration {
            problems.push("MESHFLEET_LEASE_RENEW_MS must be shorter than MESHFLEET_LEASE_DURATION_MS".into());
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(AgentConfig {
            bootstrap_token: get("MESHFLEET_BOOTSTRAP_TOKEN").map(SecretString::from),
            gateway_address,
            gateway_ca_pem,
            cluster_id: get("MESHFLEET_CLUSTER_ID"),
            mesh_namespace: get("MESHFLEET_MESH_NAMESPACE").unwrap_or_else(|| meshfleet_pki::names::MESH_NAMESPACE.into()),
            pod_name,
            pod_namespace,
            listen,
            scrape_interval,
            scrape_timeout,
            scrape_concurrency: 16,
            debounce,
            lease_duration,
            lease_renew,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_and_the_token_never_prints() {
        let errs = AgentConfig::from_vars(&HashMap::from([("MESHFLEET_SCRAPE_INTERVAL_MS".into(), "soon".into())])).unwrap_err();
        assert_eq!(errs.len(), 5, "{errs:?}");
        let vars: HashMap<String, String> = [
            ("MESHFLEET_GATEWAY_ADDRESS", "https://g:8443"),
            ("MESHFLEET_GATEWAY_CA", "PEM"),
            ("MESHFLEET_POD_NAME", "a-1"),
            ("MESHFLEET_POD_NAMESPACE", "meshfleet-system"),
            ("MESHFLEET_BOOTSTRAP_TOKEN", "TOPSECRET"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        let c = AgentConfig::from_vars(&vars).unwrap();
        assert!(!format!("{c:?}").contains("TOPSECRET"));
        assert_eq!(c.scrape_interval, Duration::from_secs(10));
    }
}
