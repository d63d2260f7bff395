//! The names of the mesh's Kubernetes objects that other parts of Meshfleet look up: the mesh's
//! install (`meshfleet-controller install`), the controller's defaults, the agent and the agent's
//! install manifest all read them from here, so they cannot drift apart. (This crate is the one
//! every one of them already depends on.)

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
