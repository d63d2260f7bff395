//! `meshfleet-controller install`: the manifest that runs the mesh's control plane in a cluster.
//! The namespace, the controller's ServiceAccount and least-privilege RBAC, its Deployment and
//! Services, and (when given or generated) the issuer Secret and trust-bundle ConfigMap it
//! watches. Built from k8s-openapi typed objects and serialized with serde_yaml_ng, never by
//! string templating, like the agent's install manifest (`services/server/src/install.rs`), and
//! with the same object names (`meshfleet_pki::names`).
//!
//! It renders only what the controller runs today: identity gRPC (TokenReview verifier, the
//! Kubernetes issuer source), its admin port and, with `--injector`, the proxy injector: its
//! serving Secret, Service port and MutatingWebhookConfiguration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference, WebhookClientConfig};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Namespace, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource, SecurityContext, Service, ServiceAccount, ServicePort,
    ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use meshfleet_pki::mint::{self, issue_leaf, new_key, CaMaterial, CaProfile, LeafProfile, Usage};
use meshfleet_pki::names::{self, CONTROLLER_DEPLOYMENT, ISSUER_CERT_KEY, ISSUER_KEY_KEY, ISSUER_SECRET, TRUST_BUNDLE, TRUST_BUNDLE_KEY};
use meshfleet_pki::rbac::{role_ref, rule};
use meshfleet_pki::verify::{check_issuer, TrustBundle};
use serde::Serialize;

/// The ClusterRole(Binding) for TokenReview, cluster-scoped, hence the longer name.
pub const TOKEN_REVIEW_ROLE: &str = "meshfleet-controller-tokenreview";
/// The admin Service (metrics, readiness).
pub const ADMIN_SERVICE: &str = "meshfleet-controller-admin";
pub const GRPC_PORT: i32 = 8080;
pub const ADMIN_PORT: i32 = 9990;
/// The proxy injector's HTTPS port (on the controller's Service) and its serving Secret.
pub const INJECTOR_PORT: i32 = 8443;
pub const INJECTOR_SECRET: &str = "meshfleet-injector-tls";
pub const INJECTOR_WEBHOOK: &str = "meshfleet-proxy-injector";
const INJECTOR_DIR: &str = "/var/run/meshfleet/injector";

/// `meshfleet-controller install`'s flags.
#[derive(Clone, Debug, clap::Args)]
pub struct InstallArgs {
    /// The mesh's namespace (created by the manifest).
    #[arg(long, default_value = names::MESH_NAMESPACE)]
    pub namespace: String,
    /// The mesh version: the controller image's tag and the `app.kubernetes.io/version` label.
    #[arg(long = "version", default_value = crate::VERSION)]
    pub mesh_version: String,
    /// The controller image [default: meshfleet/controller:<--version>].
    #[arg(long)]
    pub controller_image: Option<String>,
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Controller replicas (each follows the same Secret and ConfigMap; any can sign).
    #[arg(long, default_value_t = 1)]
    pub replicas: i32,
    /// The trust anchors (PEM): rendered as the trust-bundle ConfigMap.
    #[arg(long, conflicts_with = "dev_certs")]
    pub trust_anchors_file: Option<PathBuf>,
    /// The issuer certificate (PEM; certificates after the first are its chain), with
    /// --issuer-key-file: rendered as the issuer Secret. Needs --trust-anchors-file, which it
    /// must chain to.
    #[arg(long, requires_all = ["issuer_key_file", "trust_anchors_file"], conflicts_with = "dev_certs")]
    pub issuer_cert_file: Option<PathBuf>,
    #[arg(long, requires = "issuer_cert_file", conflicts_with = "dev_certs")]
    pub issuer_key_file: Option<PathBuf>,
    /// Generate a development trust anchor and issuer and render them (quick start only: the
    /// anchor's key is not kept, so this issuer can never be renewed from it).
    #[arg(long)]
    pub dev_certs: bool,
    /// Also install the proxy injector: a serving certificate for the controller's Service
    /// signed by a webhook CA made for it here (the API server's trust, not the mesh's: the
    /// webhook's caBundle), the injector port, a namespaces `get` rule and the
    /// MutatingWebhookConfiguration (failure policy Ignore).
    #[arg(long)]
    pub injector: bool,
    /// Also render the trust-bundle ConfigMap into this namespace (repeatable): injected pods
    /// mount it from their own namespace. The namespace must exist first; later changes to the
    /// bundle are not copied there.
    #[arg(long = "bundle-namespace", value_name = "NAMESPACE")]
    pub bundle_namespaces: Vec<String>,
}

/// The PEM the manifest carries, checked.
pub struct Material {
    /// The trust-bundle ConfigMap's contents.
    pub anchors_pem: Option<String>,
    /// The issuer Secret's (certificate chain, key).
    pub issuer: Option<(String, String)>,
    /// The injector's serving (certificate chain, key, CA bundle for the webhook), with --injector.
    pub injector: Option<(String, String, String)>,
}

impl InstallArgs {
    pub fn image(&self) -> String {
        self.controller_image.clone().unwrap_or_else(|| format!("meshfleet/controller:{}", self.mesh_version))
    }

    /// Reads and checks the anchors and issuer (or generates them for --dev-certs): anchors must
    /// parse, an issuer must match its key and chain to them. Every problem is a
    /// [`crate::ConfigError`].
    pub fn material(&self) -> anyhow::Result<Material> {
        let injector = if self.injector { Some(injector_cert(&self.namespace)?) } else { None };
        if self.dev_certs {
            let (anchor, issuer): (CaMaterial, CaMaterial) = super::dev_anchor_and_issuer()?;
            return Ok(Material { anchors_pem: Some(anchor.cert_pem), issuer: Some((issuer.cert_pem, issuer.key_pem)), injector });
        }
        let read = |flag: &str, path: &PathBuf| std::fs::read_to_string(path).map_err(|e| crate::ConfigError(vec![format!("{flag} {}: {e}", path.display())]));
        let anchors_pem = self.trust_anchors_file.as_ref().map(|p| read("--trust-anchors-file", p)).transpose()?;
        let bundle = match (&anchors_pem, &self.trust_anchors_file) {
            (Some(pem), Some(path)) => {
                Some(TrustBundle::from_pem(pem.as_bytes()).map_err(|e| crate::ConfigError(vec![format!("--trust-anchors-file {}: {e}", path.display())]))?)
            }
            _ => None,
        };
        let issuer = match (&self.issuer_cert_file, &self.issuer_key_file, &bundle) {
            (Some(cert), Some(key), Some(bundle)) => {
                let (cert_pem, key_pem) = (read("--issuer-cert-file", cert)?, read("--issuer-key-file", key)?);
                check_issuer(cert_pem.as_bytes(), key_pem.as_bytes(), bundle, SystemTime::now())
                    .map_err(|e| crate::ConfigError(vec![format!("--issuer-cert-file {} / --issuer-key-file {}: {e}", cert.display(), key.display())]))?;
                Some((cert_pem, key_pem))
            }
            _ => None,
        };
        Ok(Material { anchors_pem, issuer, injector })
    }
}

/// The injector's serving certificate: the controller Service's DNS names, signed by a webhook
/// CA made for it (as `linkerd install` makes its injector's), which is the webhook's caBundle.
/// Whoever renders the manifest again gets a new pair; the CA's key is not kept.
fn injector_cert(namespace: &str) -> anyhow::Result<(String, String, String)> {
    let ca = mint::new_anchor(&CaProfile::new("meshfleet proxy injector CA", std::time::Duration::from_secs(365 * 86400)))?;
    let key = new_key()?;
    let service = CONTROLLER_DEPLOYMENT;
    let hosts = vec![format!("{service}.{namespace}.svc"), format!("{service}.{namespace}.svc.cluster.local")];
    let now = SystemTime::now();
    let profile = LeafProfile {
        common_name: hosts[0].clone(),
        uris: Vec::new(),
        hosts,
        usage: Usage::Server,
        not_before: now - std::time::Duration::from_secs(300),
        not_after: now + std::time::Duration::from_secs(90 * 86400),
    };
    let leaf = issue_leaf(&ca.signer()?, &key, &profile)?;
    Ok((leaf.pem(), key.serialize_pem(), ca.cert_pem))
}

/// What the manifest leaves to the operator, for stderr: the objects it references but does
/// not render. Empty when it renders both.
pub fn prerequisites(args: &InstallArgs, m: &Material) -> Vec<String> {
    let ns = &args.namespace;
    let mut v = Vec::new();
    if m.issuer.is_none() {
        v.push(format!("the issuer Secret {ns}/{ISSUER_SECRET} (type kubernetes.io/tls, keys {ISSUER_CERT_KEY} and {ISSUER_KEY_KEY})"));
    }
    if m.anchors_pem.is_none() {
        v.push(format!("the trust-bundle ConfigMap {ns}/{TRUST_BUNDLE} (key {TRUST_BUNDLE_KEY})"));
    }
    v
}

/// The manifest: multi-document YAML ("---" separated).
///
/// The controller's only API calls: TokenReview `create` (cluster-scoped, so a ClusterRole),
/// `list`/`watch` of Services, Pods and EndpointSlices for discovery, and `list`/`watch` of the
/// issuer Secret and trust-bundle ConfigMap, by name (its watchers select
/// `metadata.name`, which RBAC authorizes against `resourceNames`). It reads no other Secret and
/// writes nothing.
pub fn render(args: &InstallArgs, m: &Material) -> String {
    let ns = args.namespace.as_str();
    let mut cluster_rules = vec![
        rule("authentication.k8s.io", &["tokenreviews"], &[], &["create"]),
        // Discovery mirrors every Service, EndpointSlice and Pod it may be asked to resolve.
        rule("", &["services", "pods"], &[], LIST_WATCH),
        rule("discovery.k8s.io", &["endpointslices"], &[], LIST_WATCH),
    ];
    if m.injector.is_some() {
        // The injector reads a pod's namespace for its meshfleet.io/inject annotation.
        cluster_rules.push(rule("", &["namespaces"], &[], &["get"]));
    }
    let mesh_rules = vec![rule("", &["secrets"], &[ISSUER_SECRET], LIST_WATCH), rule("", &["configmaps"], &[TRUST_BUNDLE], LIST_WATCH)];
    let mut namespace = Namespace { metadata: meta(args, ns, None), ..Default::default() };
    // The controller's pod meets the restricted Pod Security Standard; nothing in the mesh's
    // namespace needs more.
    namespace.metadata.labels.get_or_insert_default().insert("pod-security.kubernetes.io/enforce".into(), "restricted".into());
    let mut docs = vec![
        yaml(&namespace),
        yaml(&ServiceAccount { metadata: meta(args, CONTROLLER_DEPLOYMENT, Some(ns)), automount_service_account_token: Some(true), ..Default::default() }),
        yaml(&ClusterRole { metadata: meta(args, TOKEN_REVIEW_ROLE, None), rules: Some(cluster_rules), aggregation_rule: None }),
        yaml(&ClusterRoleBinding {
            metadata: meta(args, TOKEN_REVIEW_ROLE, None),
            role_ref: role_ref("ClusterRole", TOKEN_REVIEW_ROLE),
            subjects: Some(vec![subject(ns)]),
        }),
        yaml(&Role { metadata: meta(args, CONTROLLER_DEPLOYMENT, Some(ns)), rules: Some(mesh_rules) }),
        yaml(&RoleBinding {
            metadata: meta(args, CONTROLLER_DEPLOYMENT, Some(ns)),
            role_ref: role_ref("Role", CONTROLLER_DEPLOYMENT),
            subjects: Some(vec![subject(ns)]),
        }),
    ];
    if let Some(pem) = &m.anchors_pem {
        let data = string_map([(TRUST_BUNDLE_KEY, pem.as_str())]);
        for ns in std::iter::once(ns).chain(args.bundle_namespaces.iter().map(String::as_str)) {
            docs.push(yaml(&ConfigMap { metadata: meta(args, TRUST_BUNDLE, Some(ns)), data: Some(data.clone()), ..Default::default() }));
        }
    }
    if let Some((cert, key)) = &m.issuer {
        let data = [(ISSUER_CERT_KEY, cert), (ISSUER_KEY_KEY, key)].map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())));
        let secret =
            Secret { metadata: meta(args, ISSUER_SECRET, Some(ns)), type_: Some("kubernetes.io/tls".into()), data: Some(data.into()), ..Default::default() };
        docs.push(yaml(&secret));
    }
    if let Some((cert, key, _)) = &m.injector {
        let data = [(ISSUER_CERT_KEY, cert), (ISSUER_KEY_KEY, key)].map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())));
        let secret =
            Secret { metadata: meta(args, INJECTOR_SECRET, Some(ns)), type_: Some("kubernetes.io/tls".into()), data: Some(data.into()), ..Default::default() };
        docs.push(yaml(&secret));
    }
    let mut grpc = service(args, CONTROLLER_DEPLOYMENT, "grpc", GRPC_PORT);
    if m.injector.is_some() {
        if let Some(ports) = grpc.spec.as_mut().and_then(|s| s.ports.as_mut()) {
            ports.push(service_port("injector", INJECTOR_PORT));
        }
    }
    docs.extend([yaml(&grpc), yaml(&service(args, ADMIN_SERVICE, "admin", ADMIN_PORT)), yaml(&deployment(args, m.injector.is_some()))]);
    if let Some((_, _, ca)) = &m.injector {
        docs.push(yaml(&webhook(args, ca)));
    }
    docs.join("---\n")
}

const LIST_WATCH: &[&str] = &["list", "watch"];

fn yaml<T: Serialize>(obj: &T) -> String {
    serde_yaml_ng::to_string(obj).expect("k8s-openapi objects always serialize to YAML")
}

fn string_map<const N: usize>(pairs: [(&str, &str); N]) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect()
}

/// The recommended labels; the selector uses only the first (the others change on upgrade).
fn labels(args: &InstallArgs) -> BTreeMap<String, String> {
    string_map([
        ("app.kubernetes.io/name", CONTROLLER_DEPLOYMENT),
        ("app.kubernetes.io/component", "identity"),
        ("app.kubernetes.io/part-of", "meshfleet"),
        ("app.kubernetes.io/managed-by", "meshfleet-controller-install"),
        ("app.kubernetes.io/version", &args.mesh_version),
    ])
}

fn selector() -> BTreeMap<String, String> {
    string_map([("app.kubernetes.io/name", CONTROLLER_DEPLOYMENT)])
}

fn meta(args: &InstallArgs, name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta { name: Some(name.into()), namespace: namespace.map(Into::into), labels: Some(labels(args)), ..Default::default() }
}

fn subject(namespace: &str) -> Subject {
    Subject { api_group: None, kind: "ServiceAccount".into(), name: CONTROLLER_DEPLOYMENT.into(), namespace: Some(namespace.into()) }
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort { name: Some(name.into()), port, target_port: Some(IntOrString::String(name.into())), protocol: Some("TCP".into()), ..Default::default() }
}

/// The injector's webhook: every Pod CREATE outside the mesh's and the system namespaces goes to
/// the controller, which decides by annotation; an unreachable injector never blocks a pod.
fn webhook(args: &InstallArgs, ca_pem: &str) -> MutatingWebhookConfiguration {
    let excluded = vec![args.namespace.clone(), "kube-system".into(), "kube-public".into(), "kube-node-lease".into()];
    let not_in = LabelSelectorRequirement { key: "kubernetes.io/metadata.name".into(), operator: "NotIn".into(), values: Some(excluded) };
    let hook = MutatingWebhook {
        name: "inject.meshfleet.io".into(),
        admission_review_versions: vec!["v1".into()],
        client_config: WebhookClientConfig {
            ca_bundle: Some(ByteString(ca_pem.as_bytes().to_vec())),
            service: Some(ServiceReference {
                name: CONTROLLER_DEPLOYMENT.into(),
                namespace: args.namespace.clone(),
                path: Some("/inject".into()),
                port: Some(INJECTOR_PORT),
            }),
            url: None,
        },
        failure_policy: Some("Ignore".into()),
        side_effects: "None".into(),
        timeout_seconds: Some(5),
        reinvocation_policy: Some("Never".into()),
        namespace_selector: Some(LabelSelector { match_expressions: Some(vec![not_in]), match_labels: None }),
        rules: Some(vec![RuleWithOperations {
            api_groups: Some(vec!["".into()]),
            api_versions: Some(vec!["v1".into()]),
            operations: Some(vec!["CREATE".into()]),
            resources: Some(vec!["pods".into()]),
            scope: Some("Namespaced".into()),
        }]),
        ..Default::default()
    };
    MutatingWebhookConfiguration { metadata: meta(args, INJECTOR_WEBHOOK, None), webhooks: Some(vec![hook]) }
}

fn service(args: &InstallArgs, name: &str, port_name: &str, port: i32) -> Service {
    let port = service_port(port_name, port);
    let spec = ServiceSpec { type_: Some("ClusterIP".into()), selector: Some(selector()), ports: Some(vec![port]), ..Default::default() };
    Service { metadata: meta(args, name, Some(&args.namespace)), spec: Some(spec), status: None }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), value_from: None }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    let field_ref = ObjectFieldSelector { field_path: field_path.into(), api_version: None };
    EnvVar { name: name.into(), value_from: Some(EnvVarSource { field_ref: Some(field_ref), ..Default::default() }), value: None }
}

fn http_probe(path: &str) -> Probe {
    let get = HTTPGetAction { path: Some(path.into()), port: IntOrString::String("admin".into()), ..Default::default() };
    Probe { http_get: Some(get), ..Default::default() }
}

fn quantities(cpu: &str, memory: &str) -> Option<BTreeMap<String, Quantity>> {
    Some(BTreeMap::from([("cpu".into(), Quantity(cpu.into())), ("memory".into(), Quantity(memory.into()))]))
}

fn port(name: &str, container_port: i32) -> ContainerPort {
    ContainerPort { name: Some(name.into()), container_port, protocol: Some("TCP".into()), ..Default::default() }
}

/// The controller. Its configuration is the environment its flags read; the agent's
/// set-control-plane-version changes the first container's image tag.
fn deployment(args: &InstallArgs, injector: bool) -> Deployment {
    let mut container = Container {
        name: "controller".into(),
        image: Some(args.image()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec![format!("--service-account={CONTROLLER_DEPLOYMENT}")]),
        env: Some(vec![
            field_env("MESHFLEET_CONTROLLER_NAMESPACE", "metadata.namespace"),
            env("MESHFLEET_TRUST_DOMAIN", &args.trust_domain),
            env("MESHFLEET_TOKEN_VERIFIER", "kubernetes"),
            env("MESHFLEET_ISSUER_SOURCE", "kubernetes"),
            env("MESHFLEET_DISCOVERY", "true"),
            env("MESHFLEET_ISSUER_SECRET", ISSUER_SECRET),
            env("MESHFLEET_TRUST_BUNDLE_CONFIGMAP", TRUST_BUNDLE),
            env("MESHFLEET_CONTROLLER_GRPC_ADDR", &format!("0.0.0.0:{GRPC_PORT}")),
            env("MESHFLEET_CONTROLLER_ADMIN_ADDR", &format!("0.0.0.0:{ADMIN_PORT}")),
        ]),
        ports: Some(vec![port("grpc", GRPC_PORT), port("admin", ADMIN_PORT)]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
            ..Default::default()
        }),
        resources: Some(ResourceRequirements { requests: quantities("50m", "64Mi"), limits: quantities("1", "256Mi"), claims: None }),
        // Live once serving; ready only with a valid issuer and trust bundle.
        liveness_probe: Some(http_probe("/live")),
        readiness_probe: Some(http_probe("/ready")),
        ..Default::default()
    };
    let mut volumes = None;
    if injector {
        container.env.get_or_insert_default().extend([
            env("MESHFLEET_INJECTOR_ADDR", &format!("0.0.0.0:{INJECTOR_PORT}")),
            env("MESHFLEET_INJECTOR_CERT", &format!("{INJECTOR_DIR}/{ISSUER_CERT_KEY}")),
            env("MESHFLEET_INJECTOR_KEY", &format!("{INJECTOR_DIR}/{ISSUER_KEY_KEY}")),
            env("MESHFLEET_PROXY_VERSION", &args.mesh_version),
        ]);
        container.ports.get_or_insert_default().push(port("injector", INJECTOR_PORT));
        let mount = VolumeMount { name: "injector-tls".into(), mount_path: INJECTOR_DIR.into(), read_only: Some(true), ..Default::default() };
        container.volume_mounts = Some(vec![mount]);
        let secret = SecretVolumeSource { secret_name: Some(INJECTOR_SECRET.into()), ..Default::default() };
        volumes = Some(vec![Volume { name: "injector-tls".into(), secret: Some(secret), ..Default::default() }]);
    }
    let pod = PodSpec {
        volumes,
        service_account_name: Some(CONTROLLER_DEPLOYMENT.into()),
        automount_service_account_token: Some(true),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
            ..Default::default()
        }),
        containers: vec![container],
        ..Default::default()
    };
    Deployment {
        metadata: meta(args, CONTROLLER_DEPLOYMENT, Some(&args.namespace)),
        spec: Some(DeploymentSpec {
            replicas: Some(args.replicas),
            selector: LabelSelector { match_labels: Some(selector()), match_expressions: None },
            template: PodTemplateSpec { metadata: Some(ObjectMeta { labels: Some(labels(args)), ..Default::default() }), spec: Some(pod) },
            ..Default::default()
        }),
        status: None,
    }
}
