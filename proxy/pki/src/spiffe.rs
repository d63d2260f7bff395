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

impl WorkloadId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self> {
        let whole = || format!("{trust_domain}/{namespace}/{service_account}");
        for part in [trust_domain, namespace, service_account] {
            let ok = !part.is_empty() && part.len() <= 253 && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
            if !ok {
                return Err(Error::Identity(whole()));
            }
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
