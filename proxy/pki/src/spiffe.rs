//! Workload identities as SPIFFE ids: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// A workload identity. Only `parse()`/`new()` build one, so an invalid identity cannot reach
/// a certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Whether `name` may be a trust domain, namespace or service account in a workload identity:
/// 1 to 253 lowercase letters, digits, `-` and `.` (what Kubernetes names allow, and a subset of
/// what SPIFFE allows in a trust domain).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

impl WorkloadId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self> {
        if ![trust_domain, namespace, service_account].into_iter().all(valid_name) {
            return Err(Error::Identity(format!("{trust_domain}/{namespace}/{service_account}")));
        }
        Ok(Self { trust_domain: trust_domain.into(), namespace: namespace.into(), service_account: service_account.into() })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }
}

impl fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

impl FromStr for WorkloadId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Identity(s.to_string());
        let rest = s.strip_prefix("spiffe://").ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => Self::new(td, ns, sa).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_id_round_trips_and_rejects_junk() {
        let id: WorkloadId = "spiffe://cluster.local/ns/web/sa/frontend".parse().unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/web/sa/frontend");
        assert_eq!(id.trust_domain(), "cluster.local");
        for bad in ["", "spiffe://", "spiffe://td/ns/a/sa", "http://td/ns/a/sa/b", "spiffe://td/ns/A/sa/b", "spiffe://td/ns/a/sa/b/c"] {
            assert!(bad.parse::<WorkloadId>().is_err(), "{bad}");
        }
        assert!(WorkloadId::new("td", "", "sa").is_err());
    }
}
