//! The kinds the fake API server knows, and the discovery documents kube-rs reads.
//! Adding a kind here makes it listable, watchable and writable; nothing else is served.

use serde_json::{json, Value};

#[derive(Debug)]
pub struct ResourceDef {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

impl ResourceDef {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const fn r(group: &'static str, plural: &'static str, kind: &'static str, namespaced: bool) -> ResourceDef {
    ResourceDef { group, version: "v1", plural, kind, namespaced }
}

/// Index into this table identifies a resource everywhere in the crate.
pub static RESOURCES: &[ResourceDef] = &[
    r("", "namespaces", "Namespace", false),
    r("", "nodes", "Node", false),
    r("", "pods", "Pod", true),
    r("", "secrets", "Secret", true),
    r("", "configmaps", "ConfigMap", true),
    r("", "events", "Event", true),
    r("", "serviceaccounts", "ServiceAccount", true),
    r("", "services", "Service", true),
    r("discovery.k8s.io", "endpointslices", "EndpointSlice", true),
    r("apps", "deployments", "Deployment", true),
    r("apps", "replicasets", "ReplicaSet", true),
    r("apps", "daemonsets", "DaemonSet", true),
    r("apps", "statefulsets", "StatefulSet", true),
    r("coordination.k8s.io", "leases", "Lease", true),
    r("policy", "poddisruptionbudgets", "PodDisruptionBudget", true),
    r("rbac.authorization.k8s.io", "roles", "Role", true),
    r("rbac.authorization.k8s.io", "rolebindings", "RoleBinding", true),
    r("rbac.authorization.k8s.io", "clusterroles", "ClusterRole", false),
    r("rbac.authorization.k8s.io", "clusterrolebindings", "ClusterRoleBinding", false),
    r("authentication.k8s.io", "tokenreviews", "TokenReview", false),
    r("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "MutatingWebhookConfiguration", false),
];

pub type Res = usize;

pub fn find(group: &str, version: &str, plural: &str) -> Option<Res> {
    RESOURCES.iter().position(|d| d.group == group && d.version == version && d.plural == plural)
}

pub fn by_kind(api_version: &str, kind: &str) -> Option<Res> {
    RESOURCES.iter().position(|d| d.api_version() == api_version && d.kind == kind)
}

pub fn def(res: Res) -> &'static ResourceDef {
    &RESOURCES[res]
}

pub fn pods() -> Res {
    find("", "v1", "pods").unwrap_or(0)
}

fn groups() -> Vec<&'static str> {
    let mut g: Vec<&str> = RESOURCES.iter().map(|d| d.group).filter(|g| !g.is_empty()).collect();
    g.dedup();
    g.sort();
    g.dedup();
    g
}

pub fn api_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})
}

pub fn api_group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|g| {
            let gv = json!({"groupVersion": format!("{g}/v1"), "version": "v1"});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// The APIResourceList of one group version, or None if the group is unknown.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let defs: Vec<&ResourceDef> = RESOURCES.iter().filter(|d| d.group == group && d.version == version).collect();
    if defs.is_empty() {
        return None;
    }
    let resources: Vec<Value> = defs
        .iter()
        .map(|d| {
            let verbs: &[&str] = if d.kind == "TokenReview" { &["create"] } else { &["create", "delete", "get", "list", "patch", "update", "watch"] };
            json!({"name": d.plural, "singularName": d.kind.to_lowercase(), "namespaced": d.namespaced, "kind": d.kind, "verbs": verbs})
        })
        .collect();
    let gv = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}
