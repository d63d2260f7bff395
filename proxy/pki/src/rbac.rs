//! RBAC rules for the manifests that install the mesh (`meshfleet-controller install`) and the
//! agent (the service's install manifest): one way to write a least-privilege rule.

use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef};

pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// `verbs` on `resources` of API `group`, only those named when `names` is not empty.
pub fn rule(group: &str, resources: &[&str], names: &[&str], verbs: &[&str]) -> PolicyRule {
    let list = |items: &[&str]| items.iter().map(|&s| String::from(s)).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(vec![group.into()]),
        resources: Some(list(resources)),
        resource_names: Some(list(names)).filter(|n| !n.is_empty()),
        verbs: list(verbs),
        non_resource_urls: None,
    }
}

/// A binding's reference to a `Role` or `ClusterRole`.
pub fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef { api_group: RBAC_GROUP.into(), kind: kind.into(), name: name.into() }
}
