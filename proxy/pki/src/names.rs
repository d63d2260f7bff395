//! The names of the mesh's Kubernetes objects that other parts of Meshfleet look up: the mesh's
//! install (`meshfleet-controller install`), the controller's defaults, the agent and the agent's
//! install manifest all read them from here, so they cannot drift apart. (This crate is the one
//! every one of them already depends on.) Also the one rule for which namespaces and pods are
//! meshed ([`namespace_injects`], [`pod_injects`]), which the injector and the agent share.

use std::collections::BTreeMap;

/// The mesh's namespace (`--namespace` of the controller and its install).
pub const MESH_NAMESPACE: &str = "meshfleet";
/// The controller's Deployment, ServiceAccount and Service.
pub const CONTROLLER_DEPLOYMENT: &str = "meshfleet-controller";
/// The issuer Secret (type `kubernetes.io/tls`).
pub const ISSUER_SECRET: &str = "meshfleet-issuer";
/// The issuer Secret's certificate key (PEM; certificates after the first are its chain).
pub const ISSUER_CERT_KEY: &str = "tls.crt";
/// The issuer Secret's private-key key (PEM).
pub const ISSUER_KEY_KEY: &str = "tls.key";
/// The trust-bundle ConfigMap.
pub const TRUST_BUNDLE: &str = "meshfleet-trust-bundle";
/// The trust-bundle ConfigMap's key: the anchors, PEM.
pub const TRUST_BUNDLE_KEY: &str = "ca-bundle.crt";

/// Namespace label or annotation, and pod annotation: `enabled` meshes, and a pod's `disabled`
/// opts it out (see [`namespace_injects`] and [`pod_injects`]).
pub const INJECT: &str = "meshfleet.io/inject";

/// Whether a namespace is meshed: its label or its annotation [`INJECT`] is `enabled`. The
/// injector gives its new pods the proxy by this rule, and the agent counts its pods that run
/// without one by it. Either form counts: a label is what `kubectl label` and webhook selectors
/// use, an annotation what the injector read first.
pub fn namespace_injects(labels: Option<&BTreeMap<String, String>>, annotations: Option<&BTreeMap<String, String>>) -> bool {
    [labels, annotations].into_iter().flatten().any(|m| m.get(INJECT).is_some_and(|v| v == "enabled"))
}

/// Whether a pod gets the proxy, from its own [`INJECT`] annotation (`disabled` always wins,
/// `enabled` injects in any namespace) and else its namespace's [`namespace_injects`].
pub fn pod_injects(pod_annotation: Option<&str>, namespace_injects: bool) -> bool {
    match pod_annotation {
        Some("disabled") => false,
        Some("enabled") => true,
        _ => namespace_injects,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_namespace_is_meshed_by_its_label_or_its_annotation() {
        let on = map(&[(INJECT, "enabled")]);
        let (off, other) = (map(&[(INJECT, "disabled")]), map(&[("team", "shop")]));
        assert!(namespace_injects(Some(&on), None));
        assert!(namespace_injects(None, Some(&on)));
        assert!(namespace_injects(Some(&off), Some(&on)));
        assert!(!namespace_injects(Some(&off), Some(&other)));
        assert!(!namespace_injects(Some(&other), None));
        assert!(!namespace_injects(None, None));
        assert!(!namespace_injects(Some(&map(&[(INJECT, "Enabled")])), None), "the value is exact");
    }

    #[test]
    fn a_pods_own_annotation_wins_over_its_namespace() {
        assert!(!pod_injects(Some("disabled"), true));
        assert!(pod_injects(Some("enabled"), false));
        assert!(pod_injects(None, true) && pod_injects(Some("yes"), true));
        assert!(!pod_injects(None, false));
    }
}
