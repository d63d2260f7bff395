//! `meshfleet.agent.v1`: messages and the `AgentGateway` service, generated from
//! `proto/meshfleet/agent/v1/agent.proto` at build time.

pub mod commands;

pub mod v1 {
    tonic::include_proto!("meshfleet.agent.v1");
}

/// `meshfleet.agent.v1` as released before typed commands (`tests/frozen/`): what agents and
/// servers of that time encode and decode, for the tests that they still work with this one.
#[cfg(any(test, feature = "frozen"))]
#[doc(hidden)]
pub mod frozen {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/frozen/meshfleet.agent.v1.rs"));
    }
}

/// Messages larger than this are refused by both sides.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The SAN URI of an agent certificate.
pub fn agent_spiffe_id(org_id: &str, cluster_id: &str) -> String {
    format!("spiffe://meshfleet/org/{org_id}/cluster/{cluster_id}")
}

/// (org id, cluster id) from an agent certificate's SAN URI.
pub fn parse_agent_spiffe_id(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix("spiffe://meshfleet/org/")?;
    let (org, rest) = rest.split_once('/')?;
    let cluster = rest.strip_prefix("cluster/")?;
    (!org.is_empty() && !cluster.is_empty() && !cluster.contains('/')).then_some((org, cluster))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_round_trip() {
        let id = agent_spiffe_id("o1", "c1");
        assert_eq!(parse_agent_spiffe_id(&id), Some(("o1", "c1")));
        for bad in ["spiffe://meshfleet/org/o1", "spiffe://other/org/o/cluster/c", "spiffe://meshfleet/org//cluster/c", "spiffe://meshfleet/org/o/cluster/c/x"]
        {
            assert_eq!(parse_agent_spiffe_id(bad), None, "{bad}");
        }
    }
}
