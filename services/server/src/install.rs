//! Renders the install manifest a customer applies to connect a cluster: the
//! in-cluster agent's namespace, least-privilege RBAC, bootstrap Secret and Deployment.
//! It must never build YAML by string templating or grant the agent more than it needs.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, Namespace, ObjectFieldSelector,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret, SecretEnvSource, SecurityContext, ServiceAccount,
    Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meshfleet_pki::rbac::{role_ref, rule};
use serde::Serialize;

/// Inputs for one cluster's install manifest.
pub struct InstallParams<'a> {
    pub cluster_id: &'a str,      // uuid string
    pub cluster_name: &'a str,    // DNS-1123 label
    pub org_id: &'a str,          // uuid string
    pub bootstrap_token: &'a str, // secret, single-use
    pub api_url: &'a str,         // e.g. "http://127.0.0.1:8080"
    pub gateway_address: &'a str, // e.g. "https://127.0.0.1:8443"
    pub gateway_ca_pem: &'a str,  // the CA the agent pins for the gateway
    pub agent_image: &'a str,     // e.g. "meshfleet/meshfleet-agent:0.1.0"
    pub mesh_namespace: &'a str,  // namespace where the mesh control plane lives
    /// Namespaces opted into the mesh at render time: each gets the restart Role. Namespaces
    /// opted in later get it from the README's snippet (the same objects).
    pub meshed_namespaces: &'a [&'a str],
}

/// Namespace the agent runs in.
pub const AGENT_NAMESPACE: &str = "meshfleet-system";
/// The Role (and RoleBinding) in each meshed namespace that lets restart-workloads work there.
pub const RESTART_ROLE: &str = "meshfleet-agent-restart";

const AGENT_NAME: &str = "meshfleet-agent";
const MESH_ROLE_NAME: &str = "meshfleet-agent-mesh";
const BOOTSTRAP_SECRET: &str = "meshfleet-agent-bootstrap";
const CLUSTER_ID_ANNOTATION: &str = "meshfleet.io/cluster-id";
// The mesh's objects, as the agent and the mesh's own install name them.
const CONTROLLER_DEPLOYMENT: &str = meshfleet_pki::names::CONTROLLER_DEPLOYMENT;
const ISSUER_SECRET: &str = meshfleet_pki::names::ISSUER_SECRET;
const TRUST_BUNDLE: &str = meshfleet_pki::names::TRUST_BUNDLE;
const IDENTITY_SECRET: &str = "meshfleet-agent-identity";
const LEASE_NAME: &str = "meshfleet-agent";

/// Namespaces the manifest puts objects in but does not create: the mesh's (its own install
/// creates it) and the meshed ones. Creating them here would make `kubectl delete -f` of the
/// agent delete the mesh and the applications, so they are a documented prerequisite (README).
pub fn prerequisite_namespaces<'a>(p: &InstallParams<'a>) -> Vec<&'a str> {
    let mut v = vec![p.mesh_namespace];
    v.extend(p.meshed_namespaces.iter().copied().filter(|ns| *ns != p.mesh_namespace && *ns != AGENT_NAMESPACE));
    v
}

/// Multi-document YAML ("---" separated), built from k8s-openapi typed objects
/// (so it is structurally valid), serialized with serde_yaml_ng.
///
/// Every rule names the agent feature that uses it (the README's RBAC table says the same).
/// The agent can read what the inventory shows, but writes only: the control plane's own
/// Deployment (by name), Deployments in namespaces opted into the mesh (restart), and its
/// own identity Secret and Lease. It can change no workload in kube-system or any namespace
/// not opted in, and read no Secret but its own and the issuer's.
pub fn render(p: &InstallParams) -> String {
    let (sys, mesh) = (Some(AGENT_NAMESPACE), Some(p.mesh_namespace));
    let cluster_rules = vec![
        // Inventory: meshed pods, namespaces labelled for injection, node count.
        rule("", &["pods", "namespaces", "nodes"], &[], LIST_WATCH),
        // Events: Warning events of meshed namespaces.
        rule("", &["events"], &[], LIST_WATCH),
        // restart-workloads: selects the workloads it restarts (in every meshed namespace
        // when it names none), gates each batch on their availability and waits for their
        // rollouts; set-control-plane-version reads the controller and waits for its rollout.
        // Read only: their pod templates are readable in the pods anyway.
        rule("apps", RESTARTED_KINDS, &[], &["get", "list"]),
        // restart-workloads: holds a workload's restart while a PodDisruptionBudget of its
        // pods allows no disruption (the pods it lists as needing attention come from the
        // pods list above).
        rule("policy", &["poddisruptionbudgets"], &[], &["list"]),
    ];
    let mesh_rules = vec![
        // Inventory: the control plane's version (a watch by name; the list is above).
        rule("apps", &["deployments"], &[CONTROLLER_DEPLOYMENT], &["watch"]),
        // set-control-plane-version: the new image on the controller, and nothing else.
        rule("apps", &["deployments"], &[CONTROLLER_DEPLOYMENT], &["patch"]),
        // Inventory: the issuer certificate and the trust anchors (list/watch by name).
        rule("", &["secrets"], &[ISSUER_SECRET], LIST_WATCH),
        rule("", &["configmaps"], &[TRUST_BUNDLE], LIST_WATCH),
        // rotate-issuer: the bundle, then the new issuer (key made in the cluster). Both exist
        // once the mesh is installed; `create` could not be narrowed to their names.
        rule("", &["secrets"], &[ISSUER_SECRET], &["get", "update"]),
        rule("", &["configmaps"], &[TRUST_BUNDLE], &["get", "update"]),
    ];
    let agent_rules = vec![
        // Identity: loaded at start, the renewed certificate stored.
        rule("", &["secrets"], &[IDENTITY_SECRET], &["get", "update"]),
        // Registration stores the identity. Kubernetes cannot restrict `create` by
        // resourceNames (the name is not part of its authorization), so it is unnamed.
        rule("", &["secrets"], &[], &["create"]),
        // Leader election: read and renew the Lease; the first replica creates it (unnamed).
        rule("coordination.k8s.io", &["leases"], &[LEASE_NAME], &["get", "update"]),
        rule("coordination.k8s.io", &["leases"], &[], &["create"]),
    ];
    let mut docs = vec![
        yaml(&Namespace { metadata: meta(AGENT_NAMESPACE, None, Some(p.cluster_id)), ..Default::default() }),
        yaml(&ServiceAccount { metadata: meta(AGENT_NAME, sys, None), automount_service_account_token: Some(true), ..Default::default() }),
        yaml(&ClusterRole { metadata: meta(AGENT_NAME, None, None), rules: Some(cluster_rules), aggregation_rule: None }),
        yaml(&ClusterRoleBinding {
            metadata: meta(AGENT_NAME, None, None),
            role_ref: role_ref("ClusterRole", AGENT_NAME),
            subjects: Some(vec![agent_subject()]),
        }),
        yaml(&Role { metadata: meta(MESH_ROLE_NAME, mesh, None), rules: Some(mesh_rules) }),
        yaml(&role_binding(MESH_ROLE_NAME, p.mesh_namespace)),
        yaml(&Role { metadata: meta(AGENT_NAME, sys, None), rules: Some(agent_rules) }),
        yaml(&role_binding(AGENT_NAME, AGENT_NAMESPACE)),
    ];
    for ns in p.meshed_namespaces {
        let (role, binding) = restart_rbac(ns);
        docs.extend([yaml(&role), yaml(&binding)]);
    }
    docs.extend([yaml(&bootstrap_secret(p)), yaml(&deployment(p))]);
    docs.join("---\n")
}

/// The Role and RoleBinding that let restart-workloads work in one meshed namespace: a restart
/// patches the pod template's annotations of the kinds it restarts, and RBAC cannot narrow
/// `patch` to fields, so the grant is confined to namespaces their owners opted into the mesh.
pub fn restart_rbac(namespace: &str) -> (Role, RoleBinding) {
    let role = Role { metadata: meta(RESTART_ROLE, Some(namespace), None), rules: Some(vec![rule("apps", RESTARTED_KINDS, &[], &["patch"])]) };
    (role, role_binding(RESTART_ROLE, namespace))
}

const LIST_WATCH: &[&str] = &["list", "watch"];

/// The workload kinds restart-workloads restarts.
const RESTARTED_KINDS: &[&str] = &["deployments", "statefulsets", "daemonsets"];

fn yaml<T: Serialize>(obj: &T) -> String {
    serde_yaml_ng::to_string(obj).expect("k8s-openapi objects always serialize to YAML")
}

fn string_map<const N: usize>(pairs: [(&str, &str); N]) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect()
}

fn labels() -> BTreeMap<String, String> {
    string_map([
        ("app.kubernetes.io/name", AGENT_NAME),
        ("app.kubernetes.io/part-of", "meshfleet"),
        ("app.kubernetes.io/managed-by", "meshfleet"),
        ("app.kubernetes.io/version", env!("CARGO_PKG_VERSION")),
    ])
}

fn meta(name: &str, namespace: Option<&str>, cluster_id: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        labels: Some(labels()),
        annotations: cluster_id.map(|id| string_map([(CLUSTER_ID_ANNOTATION, id)])),
        ..Default::default()
    }
}

fn agent_subject() -> Subject {
    Subject { api_group: None, kind: "ServiceAccount".into(), name: AGENT_NAME.into(), namespace: Some(AGENT_NAMESPACE.into()) }
}

fn role_binding(role: &str, namespace: &str) -> RoleBinding {
    RoleBinding { metadata: meta(role, Some(namespace), None), role_ref: role_ref("Role", role), subjects: Some(vec![agent_subject()]) }
}

fn bootstrap_secret(p: &InstallParams) -> Secret {
    Secret {
        metadata: meta(BOOTSTRAP_SECRET, Some(AGENT_NAMESPACE), None),
        type_: Some("Opaque".into()),
        string_data: Some(string_map([
            ("MESHFLEET_BOOTSTRAP_TOKEN", p.bootstrap_token),
            ("MESHFLEET_API_URL", p.api_url),
            ("MESHFLEET_GATEWAY_ADDRESS", p.gateway_address),
            ("MESHFLEET_GATEWAY_CA", p.gateway_ca_pem),
            ("MESHFLEET_CLUSTER_ID", p.cluster_id),
            ("MESHFLEET_ORG_ID", p.org_id),
            ("MESHFLEET_MESH_NAMESPACE", p.mesh_namespace),
        ])),
        ..Default::default()
    }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    let field_ref = ObjectFieldSelector { field_path: field_path.into(), api_version: None };
    let value_from = EnvVarSource { field_ref: Some(field_ref), ..Default::default() };
    EnvVar { name: name.into(), value_from: Some(value_from), value: None }
}

fn http_probe(path: &str) -> Probe {
    let port = IntOrString::String("http".into());
    let get = HTTPGetAction { path: Some(path.into()), port, ..Default::default() };
    Probe { http_get: Some(get), ..Default::default() }
}

fn quantities(cpu: &str, memory: &str) -> Option<BTreeMap<String, Quantity>> {
    let q = |v: &str| Quantity(v.into());
    Some(BTreeMap::from([("cpu".into(), q(cpu)), ("memory".into(), q(memory))]))
}

fn deployment(p: &InstallParams) -> Deployment {
    let secret_ref = SecretEnvSource { name: BOOTSTRAP_SECRET.into(), optional: None };
    let container = Container {
        name: "agent".into(),
        image: Some(p.agent_image.into()),
        image_pull_policy: Some("IfNotPresent".into()),
        env_from: Some(vec![EnvFromSource { secret_ref: Some(secret_ref), ..Default::default() }]),
        env: Some(vec![field_env("MESHFLEET_POD_NAME", "metadata.name"), field_env("MESHFLEET_POD_NAMESPACE", "metadata.namespace")]),
        ports: Some(vec![ContainerPort { name: Some("http".into()), container_port: 9090, protocol: Some("TCP".into()), ..Default::default() }]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
            ..Default::default()
        }),
        resources: Some(ResourceRequirements { requests: quantities("50m", "64Mi"), limits: quantities("500m", "256Mi"), claims: None }),
        liveness_probe: Some(http_probe("/healthz")),
        readiness_probe: Some(http_probe("/readyz")),
        // The root filesystem is read-only; /tmp is the only writable path.
        volume_mounts: Some(vec![VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..Default::default() }]),
        ..Default::default()
    };
    let seccomp = SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None };
    let pod = PodSpec {
        service_account_name: Some(AGENT_NAME.into()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            fs_group: Some(65532),
            seccomp_profile: Some(seccomp),
            ..Default::default()
        }),
        containers: vec![container],
        volumes: Some(vec![Volume { name: "tmp".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() }]),
        ..Default::default()
    };
    // The selector is immutable, so it must not include the version label.
    let selector = string_map([("app.kubernetes.io/name", AGENT_NAME)]);
    let pod_meta = ObjectMeta { labels: Some(labels()), ..Default::default() };
    Deployment {
        metadata: meta(AGENT_NAME, Some(AGENT_NAMESPACE), Some(p.cluster_id)),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector { match_labels: Some(selector), match_expressions: None },
            template: PodTemplateSpec { metadata: Some(pod_meta), spec: Some(pod) },
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;
    use serde::Deserialize;
    use serde_json::{json, Value};

    const TOKEN: &str = "mft_bootstrap_0123456789";

    fn params(token: &str) -> InstallParams<'_> {
        InstallParams {
            cluster_id: "6f1c2d7e-8a9b-4c3d-9e0f-112233445566",
            cluster_name: "prod-eu-1",
            org_id: "0a1b2c3d-4e5f-4a6b-8c7d-8e9f00112233",
            bootstrap_token: token,
            api_url: "http://127.0.0.1:8080",
            gateway_address: "https://127.0.0.1:8443",
            gateway_ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            agent_image: "meshfleet/meshfleet-agent:0.1.0",
            mesh_namespace: "meshfleet",
            meshed_namespaces: &["shop", "payments"],
        }
    }

    /// Deserializes into the k8s-openapi type (which checks apiVersion/kind and
    /// field types), then re-serializes to JSON for convenient assertions.
    fn typed<T: DeserializeOwned + Serialize>(doc: serde_yaml_ng::Value) -> Value {
        let obj: T = serde_yaml_ng::from_value(doc).unwrap_or_else(|e| panic!("{e}"));
        serde_json::to_value(obj).expect("k8s object serializes to JSON")
    }

    /// Splits the manifest into YAML documents; panics on any unknown kind.
    fn parse(yaml: &str) -> Vec<Value> {
        serde_yaml_ng::Deserializer::from_str(yaml)
            .map(|de| {
                let doc = serde_yaml_ng::Value::deserialize(de).expect("valid YAML document");
                let kind = doc["kind"].as_str().expect("document has a kind").to_owned();
                match kind.as_str() {
                    "Namespace" => typed::<Namespace>(doc),
                    "ServiceAccount" => typed::<ServiceAccount>(doc),
                    "ClusterRole" => typed::<ClusterRole>(doc),
                    "ClusterRoleBinding" => typed::<ClusterRoleBinding>(doc),
                    "Role" => typed::<Role>(doc),
                    "RoleBinding" => typed::<RoleBinding>(doc),
                    "Secret" => typed::<Secret>(doc),
                    "Deployment" => typed::<Deployment>(doc),
                    other => panic!("unexpected kind {other}"),
                }
            })
            .collect()
    }

    fn of_kind<'a>(docs: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> {
        docs.iter().filter(move |d| d["kind"] == kind)
    }

    #[test]
    fn objects_in_apply_order_with_labels_and_annotations() {
        let docs = parse(&render(&params(TOKEN)));
        let got: Vec<Value> = docs.iter().map(|d| json!([d["kind"], d["metadata"]["name"], d["metadata"]["namespace"]])).collect();
        let (agent, sys, mesh) = ("meshfleet-agent", "meshfleet-system", "meshfleet");
        let restart = "meshfleet-agent-restart";
        assert_eq!(
            Value::from(got),
            json!([
                ["Namespace", sys, null],
                ["ServiceAccount", agent, sys],
                ["ClusterRole", agent, null],
                ["ClusterRoleBinding", agent, null],
                ["Role", "meshfleet-agent-mesh", mesh],
                ["RoleBinding", "meshfleet-agent-mesh", mesh],
                ["Role", agent, sys],
                ["RoleBinding", agent, sys],
                ["Role", restart, "shop"],
                ["RoleBinding", restart, "shop"],
                ["Role", restart, "payments"],
                ["RoleBinding", restart, "payments"],
                ["Secret", "meshfleet-agent-bootstrap", sys],
                ["Deployment", agent, sys],
            ])
        );
        let labels = json!({
            "app.kubernetes.io/name": "meshfleet-agent", "app.kubernetes.io/part-of": "meshfleet",
            "app.kubernetes.io/managed-by": "meshfleet", "app.kubernetes.io/version": env!("CARGO_PKG_VERSION"),
        });
        let annotations = json!({ "meshfleet.io/cluster-id": params(TOKEN).cluster_id });
        for d in &docs {
            let (kind, meta) = (&d["kind"], &d["metadata"]);
            assert_eq!(meta["labels"], labels, "{kind}");
            let annotated = kind == "Namespace" || kind == "Deployment";
            assert_eq!(annotated, meta["annotations"] == annotations, "{kind}");
        }
    }

    /// The rules of the Role or ClusterRole `name` in `namespace` (None: cluster-scoped).
    fn rules_of(docs: &[Value], name: &str, namespace: Option<&str>) -> Value {
        let kind = if namespace.is_some() { "Role" } else { "ClusterRole" };
        let role = of_kind(docs, kind)
            .find(|r| r["metadata"]["name"] == name && r["metadata"]["namespace"].as_str() == namespace)
            .unwrap_or_else(|| panic!("{kind} {name} in {namespace:?}"));
        role["rules"].clone()
    }

    #[test]
    fn rbac_grants_exactly_what_the_agent_uses() {
        let docs = parse(&render(&params(TOKEN)));
        let rule = |group: &str, resources: &[&str], names: &[&str], verbs: &[&str]| {
            let mut r = json!({"apiGroups": [group], "resources": resources, "verbs": verbs});
            if !names.is_empty() {
                r["resourceNames"] = json!(names);
            }
            r
        };
        let lw = ["list", "watch"];
        // Cluster-wide: reads only, no Secrets, no writes at all.
        assert_eq!(
            rules_of(&docs, "meshfleet-agent", None),
            json!([
                rule("", &["pods", "namespaces", "nodes"], &[], &lw),
                rule("", &["events"], &[], &lw),
                rule("apps", &["deployments", "statefulsets", "daemonsets"], &[], &["get", "list"]),
                rule("policy", &["poddisruptionbudgets"], &[], &["list"]),
            ])
        );
        // The mesh's namespace: the controller Deployment (by name) is the one patched there.
        assert_eq!(
            rules_of(&docs, "meshfleet-agent-mesh", Some("meshfleet")),
            json!([
                rule("apps", &["deployments"], &["meshfleet-controller"], &["watch"]),
                rule("apps", &["deployments"], &["meshfleet-controller"], &["patch"]),
                rule("", &["secrets"], &["meshfleet-issuer"], &lw),
                rule("", &["configmaps"], &["meshfleet-trust-bundle"], &lw),
                rule("", &["secrets"], &["meshfleet-issuer"], &["get", "update"]),
                rule("", &["configmaps"], &["meshfleet-trust-bundle"], &["get", "update"]),
            ])
        );
        // The agent's own namespace: its identity Secret and its Lease.
        assert_eq!(
            rules_of(&docs, "meshfleet-agent", Some("meshfleet-system")),
            json!([
                rule("", &["secrets"], &["meshfleet-agent-identity"], &["get", "update"]),
                rule("", &["secrets"], &[], &["create"]),
                rule("coordination.k8s.io", &["leases"], &["meshfleet-agent"], &["get", "update"]),
                rule("coordination.k8s.io", &["leases"], &[], &["create"]),
            ])
        );
        // Each namespace opted in: the restart's patch, and only there.
        for ns in ["shop", "payments"] {
            assert_eq!(rules_of(&docs, RESTART_ROLE, Some(ns)), json!([rule("apps", &["deployments", "statefulsets", "daemonsets"], &[], &["patch"])]));
        }
        let patch_anywhere = docs
            .iter()
            .filter(|d| d["kind"] == "ClusterRole")
            .flat_map(|r| r["rules"].as_array().expect("rules"))
            .any(|r| r["verbs"].as_array().expect("verbs").iter().any(|v| v != "get" && v != "list" && v != "watch"));
        assert!(!patch_anywhere, "no cluster-wide write");
        let roles = of_kind(&docs, "ClusterRole").chain(of_kind(&docs, "Role"));
        assert!(!roles.map(|r| r.to_string()).any(|r| r.contains('*')), "no wildcard");

        let subjects = json!([{"kind": "ServiceAccount", "name": "meshfleet-agent", "namespace": "meshfleet-system"}]);
        let bindings: Vec<&Value> = of_kind(&docs, "ClusterRoleBinding").chain(of_kind(&docs, "RoleBinding")).collect();
        assert_eq!(bindings.len(), 5);
        for b in bindings {
            assert_eq!(b["subjects"], subjects);
            assert_eq!(b["roleRef"]["name"], b["metadata"]["name"]);
            assert_eq!(b["roleRef"]["apiGroup"], meshfleet_pki::rbac::RBAC_GROUP);
        }
    }

    #[test]
    fn every_namespace_used_is_created_by_the_manifest_or_a_documented_prerequisite() {
        let p = params(TOKEN);
        let docs = parse(&render(&p));
        let created: Vec<&str> = of_kind(&docs, "Namespace").map(|n| n["metadata"]["name"].as_str().expect("name")).collect();
        let mut used: Vec<&str> = docs.iter().filter_map(|d| d["metadata"]["namespace"].as_str()).filter(|ns| !created.contains(ns)).collect();
        used.sort();
        used.dedup();
        let mut prerequisites = prerequisite_namespaces(&p);
        prerequisites.sort();
        assert_eq!(used, prerequisites);
        // ... and the README says so where it describes the manifest.
        let readme = include_str!("../../../README.md").split_whitespace().collect::<Vec<_>>().join(" ");
        let said = "the mesh's namespace and every namespace listed in `meshed_namespaces` must exist";
        assert!(readme.contains(said), "README: {said}");
    }

    /// The README's snippet for opting a namespace in later is the objects the manifest
    /// renders for the namespaces it is given (labels aside).
    #[test]
    fn the_readme_snippet_for_opting_a_namespace_in_is_what_the_manifest_renders() {
        let readme = include_str!("../../../README.md");
        let after = readme.split("<!-- restart-rbac").nth(1).expect("README marks the snippet");
        let block = after.split("```yaml\n").nth(1).and_then(|b| b.split("```").next()).expect("a yaml block follows");
        let snippet = parse(block);
        let (role, binding) = restart_rbac("payments");
        let rendered = parse(&format!("{}---\n{}", yaml(&role), yaml(&binding)));
        assert_eq!(snippet.len(), 2);
        for (mut a, mut b) in snippet.into_iter().zip(rendered) {
            for v in [&mut a, &mut b] {
                v["metadata"].as_object_mut().expect("metadata").remove("labels");
            }
            assert_eq!(a, b);
        }
    }

    #[test]
    fn secret_carries_token_verbatim_even_with_yaml_special_characters() {
        let tokens = [TOKEN, r#"a: b # "c'"#, "---\n...\n", " &x *x !t |>", "true", "0x1F", ""];
        for token in tokens {
            let docs = parse(&render(&params(token)));
            assert_eq!(docs.len(), 14, "document count for {token:?}");
            let secret = of_kind(&docs, "Secret").next().expect("Secret");
            assert_eq!(secret["type"], "Opaque");
            assert_eq!(
                secret["stringData"],
                json!({
                    "MESHFLEET_BOOTSTRAP_TOKEN": token,
                    "MESHFLEET_API_URL": "http://127.0.0.1:8080",
                    "MESHFLEET_GATEWAY_ADDRESS": "https://127.0.0.1:8443",
                    "MESHFLEET_GATEWAY_CA": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                    "MESHFLEET_CLUSTER_ID": "6f1c2d7e-8a9b-4c3d-9e0f-112233445566",
                    "MESHFLEET_ORG_ID": "0a1b2c3d-4e5f-4a6b-8c7d-8e9f00112233",
                    "MESHFLEET_MESH_NAMESPACE": "meshfleet",
                })
            );
        }
    }

    #[test]
    fn deployment_is_hardened() {
        let docs = parse(&render(&params(TOKEN)));
        let spec = &of_kind(&docs, "Deployment").next().expect("Deployment")["spec"];
        assert_eq!(spec["replicas"], 1);
        let selector = json!({"matchLabels": {"app.kubernetes.io/name": "meshfleet-agent"}});
        assert_eq!(spec["selector"], selector);
        let pod = &spec["template"]["spec"];
        assert_eq!(spec["template"]["metadata"]["labels"]["app.kubernetes.io/name"], "meshfleet-agent");
        assert_eq!(pod["serviceAccountName"], "meshfleet-agent");
        assert_eq!(
            pod["securityContext"],
            json!({
                "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            })
        );
        assert_eq!(pod["volumes"], json!([{"name": "tmp", "emptyDir": {}}]));
        let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
        assert_eq!(
            pod["containers"],
            json!([{
                "name": "agent",
                "image": "meshfleet/meshfleet-agent:0.1.0",
                "imagePullPolicy": "IfNotPresent",
                "envFrom": [{"secretRef": {"name": "meshfleet-agent-bootstrap"}}],
                "env": [
                    {"name": "MESHFLEET_POD_NAME", "valueFrom": field("metadata.name")},
                    {"name": "MESHFLEET_POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
                ],
                "ports": [{"name": "http", "containerPort": 9090, "protocol": "TCP"}],
                "securityContext": {
                    "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                    "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]},
                },
                "resources": {
                    "requests": {"cpu": "50m", "memory": "64Mi"},
                    "limits": {"cpu": "500m", "memory": "256Mi"},
                },
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}},
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }])
        );
    }
}
