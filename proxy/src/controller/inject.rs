//! The proxy injector's decision: an AdmissionReview v1 request for a Pod in, the review's
//! response out (a base64 RFC 6902 JSON Patch adding the interception init step, the proxy as
//! a native sidecar, its identity token and trust anchors, a version label and annotation).
//!
//! Pure and total: anything it cannot understand is answered `allowed: true` with a warning, so
//! the injector never blocks a pod (the webhook's failure policy is Ignore for the same reason).

use base64::Engine;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, HTTPGetAction, Pod, Probe, ProjectedVolumeSource, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use meshfleet_pki::names::{TRUST_BUNDLE, TRUST_BUNDLE_KEY};

use crate::proxy::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Pod annotation (and namespace label or annotation): `enabled` injects, `disabled` opts a pod
/// out. The rule is `meshfleet_pki::names`' own, shared with the agent.
pub const INJECT_ANNOTATION: &str = meshfleet_pki::names::INJECT;
/// Pod annotation pinning the proxy version (an image tag).
pub const VERSION_ANNOTATION: &str = "meshfleet.io/proxy-version";
/// Annotation the injector sets: the injected proxy version.
pub const INJECTED_ANNOTATION: &str = "meshfleet.io/injected";
/// Label the injector sets: the injected proxy version.
pub const VERSION_LABEL: &str = "meshfleet.io/proxy-version";
pub const PROXY_CONTAINER: &str = "meshfleet-proxy";
pub const INIT_CONTAINER: &str = "meshfleet-init";
pub const TOKEN_VOLUME: &str = "meshfleet-identity-token";
pub const TRUST_VOLUME: &str = "meshfleet-trust-anchors";
/// The uid the proxy runs as; the init step exempts its traffic from interception.
pub const PROXY_UID: i64 = 2102;
/// Where the token and anchors are mounted; the token path is the proxy's default token file.
pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";
pub const TOKEN_FILE: &str = "meshfleet-identity";
pub const TRUST_DIR: &str = "/var/run/meshfleet/trust";
const TOKEN_EXPIRATION_SECS: i64 = 3600;

/// What the injector puts into pods.
#[derive(Clone, Debug)]
pub struct InjectConfig {
    /// The proxy image without a tag, e.g. `meshfleet/proxy`.
    pub proxy_image: String,
    /// The control plane's current proxy version (the image tag unless a pod pins one).
    pub proxy_version: String,
    /// The controller's gRPC address as the proxy dials it.
    pub controller_addr: String,
    /// The controller's SPIFFE identity, when the proxy should check it.
    pub controller_identity: Option<String>,
    pub trust_domain: String,
    /// The audience the controller's TokenReview verifier expects (`--token-audience`).
    pub token_audience: String,
}

/// AdmissionReview v1 (admission.k8s.io/v1), the parts the injector reads and writes.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<AdmissionRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<AdmissionResponse>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    pub uid: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub operation: Option<String>,
    #[serde(default)]
    pub object: Option<Value>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    pub uid: String,
    pub allowed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// Base64 of the JSON Patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// What happened to a request, for metrics (`injector_requests_total{result}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    Skipped,
    Error,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::Skipped => "skipped",
            Outcome::Error => "error",
        }
    }
}

/// Answers one AdmissionReview body. `namespace_injects` is whether the pod's namespace is
/// meshed (`meshfleet_pki::names::namespace_injects`): the server looks the namespace up, this
/// function only decides.
pub fn review(body: &[u8], config: &InjectConfig, namespace_injects: bool) -> (AdmissionReview, Outcome) {
    let (uid, result) = match serde_json::from_slice::<AdmissionReview>(body) {
        Err(e) => (String::new(), Err(format!("meshfleet injector: unreadable AdmissionReview: {e}"))),
        Ok(review) => match review.request {
            None => (String::new(), Err("meshfleet injector: AdmissionReview without a request".to_string())),
            Some(request) => {
                let result = decide(&request, config, namespace_injects);
                (request.uid, result)
            }
        },
    };
    let mut response = AdmissionResponse { uid, allowed: true, ..Default::default() };
    let outcome = match result {
        Ok(Some(ops)) => {
            response.patch_type = Some("JSONPatch".into());
            response.patch = Some(base64::engine::general_purpose::STANDARD.encode(Value::Array(ops).to_string()));
            Outcome::Injected
        }
        Ok(None) => Outcome::Skipped,
        Err(warning) => {
            response.warnings.push(warning);
            Outcome::Error
        }
    };
    let review = AdmissionReview { api_version: "admission.k8s.io/v1".into(), kind: "AdmissionReview".into(), request: None, response: Some(response) };
    (review, outcome)
}

/// The patch for one request: `Ok(None)` leaves the pod as it is, `Err` is a warning.
fn decide(request: &AdmissionRequest, config: &InjectConfig, namespace_injects: bool) -> Result<Option<Vec<Value>>, String> {
    let object = request.object.as_ref().ok_or("meshfleet injector: request without an object")?;
    if object.get("kind").and_then(Value::as_str) != Some("Pod") {
        return Err("meshfleet injector: the object is not a Pod".into());
    }
    let pod: Pod = serde_json::from_value(object.clone()).map_err(|e| format!("meshfleet injector: unreadable Pod: {e}"))?;
    let annotations = pod.metadata.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    let wanted = meshfleet_pki::names::pod_injects(annotation(INJECT_ANNOTATION), namespace_injects);
    let Some(spec) = pod.spec.as_ref() else { return Err("meshfleet injector: Pod without a spec".into()) };
    let present = spec.containers.iter().chain(spec.init_containers.iter().flatten()).any(|c| c.name == PROXY_CONTAINER);
    if !wanted || present {
        return Ok(None);
    }
    let version = match annotation(VERSION_ANNOTATION) {
        None => config.proxy_version.as_str(),
        Some(pinned) if valid_tag(pinned) => pinned,
        Some(pinned) => return Err(format!("meshfleet injector: {VERSION_ANNOTATION} {pinned:?} is not an image tag; not injected")),
    };
    let mut ops = Vec::new();
    // The init step first, then the proxy, ahead of the pod's own init containers: their
    // traffic is intercepted and meshed too (an inserted index shifts the others along).
    let init = to_value(&init_container(config, version));
    let proxy = to_value(&proxy_container(config, version));
    if spec.init_containers.as_ref().is_none_or(Vec::is_empty) {
        ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [init, proxy]}));
    } else {
        ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": init}));
        ops.push(json!({"op": "add", "path": "/spec/initContainers/1", "value": proxy}));
    }
    let volumes = [to_value(&token_volume(config)), to_value(&trust_volume())];
    if spec.volumes.as_ref().is_none_or(Vec::is_empty) {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes}));
    } else {
        ops.extend(volumes.into_iter().map(|v| json!({"op": "add", "path": "/spec/volumes/-", "value": v})));
    }
    add_to_map(&mut ops, "/metadata/labels", pod.metadata.labels.is_some(), VERSION_LABEL, version);
    add_to_map(&mut ops, "/metadata/annotations", pod.metadata.annotations.is_some(), INJECTED_ANNOTATION, version);
    Ok(Some(ops))
}

/// `add` on a map member (replacing it if present), or the whole map when there is none yet.
fn add_to_map(ops: &mut Vec<Value>, path: &str, exists: bool, key: &str, value: &str) {
    if exists {
        ops.push(json!({"op": "add", "path": format!("{path}/{}", escape(key)), "value": value}));
    } else {
        ops.push(json!({"op": "add", "path": path, "value": {key: value}}));
    }
}

/// RFC 6901 escaping of one reference token.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// An image tag per the OCI distribution spec: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    tag.len() <= 128
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn to_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn image(config: &InjectConfig, version: &str) -> String {
    format!("{}:{version}", config.proxy_image)
}

fn init_container(config: &InjectConfig, version: &str) -> Container {
    let args = [
        "init".to_string(),
        "--proxy-uid".into(),
        PROXY_UID.to_string(),
        "--inbound-port".into(),
        INBOUND_PORT.to_string(),
        "--outbound-port".into(),
        OUTBOUND_PORT.to_string(),
        // The kubelet probes the admin port directly.
        "--skip-inbound-ports".into(),
        ADMIN_PORT.to_string(),
    ];
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(image(config, version)),
        command: Some(vec!["meshfleet-proxy".into()]),
        args: Some(args.into()),
        security_context: Some(SecurityContext {
            // Writes the pod network namespace's nat rules, as root, with nothing else.
            capabilities: Some(Capabilities { add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]), drop: Some(vec!["ALL".into()]) }),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn proxy_container(config: &InjectConfig, version: &str) -> Container {
    let port = |name: &str, port: i32| ContainerPort { name: Some(name.into()), container_port: port, protocol: Some("TCP".into()), ..Default::default() };
    let env = |name: &str, value: String| EnvVar { name: name.into(), value: Some(value), ..Default::default() };
    let mut envs = vec![
        env("MESHFLEET_PROXY_CONTROLLER_ADDR", config.controller_addr.clone()),
        // Discovery is served on the same port: intercepted destinations resolve through it.
        env("MESHFLEET_PROXY_DESTINATION_ADDR", config.controller_addr.clone()),
        env("MESHFLEET_TRUST_DOMAIN", config.trust_domain.clone()),
        env("MESHFLEET_PROXY_TOKEN_FILE", format!("{TOKEN_DIR}/{TOKEN_FILE}")),
        env("MESHFLEET_PROXY_TRUST_ANCHORS", format!("{TRUST_DIR}/{TRUST_BUNDLE_KEY}")),
        env("MESHFLEET_PROXY_ADMIN_ADDR", format!("0.0.0.0:{ADMIN_PORT}")),
        env("MESHFLEET_PROXY_INBOUND_ADDR", format!("0.0.0.0:{INBOUND_PORT}")),
        // Redirected connections arrive on loopback; nothing else should reach this port.
        env("MESHFLEET_PROXY_OUTBOUND_INTERCEPT", format!("127.0.0.1:{OUTBOUND_PORT}")),
    ];
    if let Some(identity) = &config.controller_identity {
        envs.push(env("MESHFLEET_PROXY_CONTROLLER_IDENTITY", identity.clone()));
    }
    let mount = |name: &str, path: &str| VolumeMount { name: name.into(), mount_path: path.into(), read_only: Some(true), ..Default::default() };
    Container {
        name: PROXY_CONTAINER.into(),
        image: Some(image(config, version)),
        // A native sidecar: started before the app containers, stopped after them.
        restart_policy: Some("Always".into()),
        env: Some(envs),
        ports: Some(vec![port("proxy-inbound", INBOUND_PORT.into()), port("proxy-outbound", OUTBOUND_PORT.into()), port("proxy-admin", ADMIN_PORT.into())]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction { path: Some("/ready".into()), port: IntOrString::Int(ADMIN_PORT.into()), ..Default::default() }),
            period_seconds: Some(2),
            ..Default::default()
        }),
        volume_mounts: Some(vec![mount(TOKEN_VOLUME, TOKEN_DIR), mount(TRUST_VOLUME, TRUST_DIR)]),
        security_context: Some(SecurityContext {
            run_as_user: Some(PROXY_UID),
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The proxy's identity token: the pod's service account, for the controller's audience.
fn token_volume(config: &InjectConfig) -> Volume {
    let token = ServiceAccountTokenProjection {
        audience: Some(config.token_audience.clone()),
        expiration_seconds: Some(TOKEN_EXPIRATION_SECS),
        path: TOKEN_FILE.into(),
    };
    Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection { service_account_token: Some(token), ..Default::default() }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The trust anchors: the trust-bundle ConfigMap, which must exist in the pod's namespace.
fn trust_volume() -> Volume {
    Volume { name: TRUST_VOLUME.into(), config_map: Some(ConfigMapVolumeSource { name: TRUST_BUNDLE.into(), ..Default::default() }), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> InjectConfig {
        InjectConfig {
            proxy_image: "meshfleet/proxy".into(),
            proxy_version: "1.2.3".into(),
            controller_addr: "meshfleet-controller.meshfleet.svc:8080".into(),
            controller_identity: None,
            trust_domain: "cluster.local".into(),
            token_audience: "meshfleet-identity".into(),
        }
    }

    fn request(pod: Value) -> Vec<u8> {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "namespace": "shop", "operation": "CREATE", "object": pod}
        })
        .to_string()
        .into_bytes()
    }

    fn pod(annotations: Option<Value>) -> Value {
        let mut pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]}
        });
        if let Some(a) = annotations {
            pod["metadata"]["annotations"] = a;
        }
        pod
    }

    /// Runs the review and applies its patch (if any) to `pod`; checks the envelope.
    fn run(pod: &Value, namespace_injects: bool) -> (Value, AdmissionResponse, Outcome) {
        let (review, outcome) = super::review(&request(pod.clone()), &config(), namespace_injects);
        assert_eq!(review.api_version, "admission.k8s.io/v1");
        assert_eq!(review.kind, "AdmissionReview");
        let response = review.response.expect("a response");
        assert!(response.allowed);
        assert_eq!(response.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
        let mut patched = pod.clone();
        if let Some(patch) = &response.patch {
            assert_eq!(response.patch_type.as_deref(), Some("JSONPatch"));
            let bytes = base64::engine::general_purpose::STANDARD.decode(patch).expect("base64");
            let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("a JSON Patch");
            json_patch::patch(&mut patched, &patch).expect("the patch applies");
        } else {
            assert!(response.patch_type.is_none());
        }
        (patched, response, outcome)
    }

    fn names(pod: &Value, field: &str) -> Vec<String> {
        pod["spec"][field].as_array().map(|a| a.iter().map(|c| c["name"].as_str().unwrap().to_string()).collect()).unwrap_or_default()
    }

    fn init(pod: &Value, name: &str) -> Value {
        pod["spec"]["initContainers"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone()
    }

    #[test]
    fn injects_a_fresh_pod() {
        let original = pod(Some(json!({"meshfleet.io/inject": "enabled"})));
        let (patched, _, outcome) = run(&original, false);
        assert_eq!(outcome, Outcome::Injected);
        assert_eq!(names(&patched, "initContainers"), ["meshfleet-init", "meshfleet-proxy"]);
        assert_eq!(names(&patched, "containers"), ["app"]);
        assert_eq!(names(&patched, "volumes"), [TOKEN_VOLUME, TRUST_VOLUME]);
        assert_eq!(patched["metadata"]["labels"], json!({"meshfleet.io/proxy-version": "1.2.3"}));
        assert_eq!(patched["metadata"]["annotations"], json!({"meshfleet.io/inject": "enabled", "meshfleet.io/injected": "1.2.3"}));

        let init_step = init(&patched, "meshfleet-init");
        assert_eq!(init_step["image"], "meshfleet/proxy:1.2.3");
        assert_eq!(init_step["args"].as_array().unwrap()[0..3], [json!("init"), json!("--proxy-uid"), json!("2102")]);
        assert_eq!(init_step["securityContext"]["capabilities"]["add"], json!(["NET_ADMIN", "NET_RAW"]));

        let proxy = init(&patched, "meshfleet-proxy");
        assert_eq!(proxy["restartPolicy"], "Always");
        assert_eq!(proxy["image"], "meshfleet/proxy:1.2.3");
        assert_eq!(proxy["securityContext"]["runAsUser"], 2102);
        let ports: Vec<i64> = proxy["ports"].as_array().unwrap().iter().map(|p| p["containerPort"].as_i64().unwrap()).collect();
        assert_eq!(ports, [4143, 4140, 4191]);
        assert_eq!(proxy["readinessProbe"]["httpGet"], json!({"path": "/ready", "port": 4191}));
        let env = |name: &str| proxy["env"].as_array().unwrap().iter().find(|e| e["name"] == name).map(|e| e["value"].clone());
        assert_eq!(env("MESHFLEET_PROXY_CONTROLLER_ADDR"), Some(json!("meshfleet-controller.meshfleet.svc:8080")));
        assert_eq!(env("MESHFLEET_PROXY_DESTINATION_ADDR"), Some(json!("meshfleet-controller.meshfleet.svc:8080")));
        assert_eq!(env("MESHFLEET_PROXY_TOKEN_FILE"), Some(json!("/var/run/secrets/tokens/meshfleet-identity")));
        assert_eq!(env("MESHFLEET_PROXY_OUTBOUND_INTERCEPT"), Some(json!("127.0.0.1:4140")));
        assert_eq!(proxy["volumeMounts"][0], json!({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}));

        let token = &patched["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"];
        assert_eq!(token["audience"], "meshfleet-identity");
        assert_eq!(token["path"], TOKEN_FILE);
        // The result is still a Pod.
        serde_json::from_value::<Pod>(patched).expect("a valid Pod");
    }

    #[test]
    fn appends_to_existing_init_containers_volumes_and_labels() {
        let mut original = pod(Some(json!({"meshfleet.io/inject": "enabled"})));
        original["metadata"]["labels"] = json!({"app": "web"});
        original["spec"]["initContainers"] = json!([{"name": "migrate", "image": "migrate"}]);
        original["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
        let (patched, _, outcome) = run(&original, false);
        assert_eq!(outcome, Outcome::Injected);
        assert_eq!(names(&patched, "initContainers"), ["meshfleet-init", "meshfleet-proxy", "migrate"]);
        assert_eq!(names(&patched, "volumes"), ["data", TOKEN_VOLUME, TRUST_VOLUME]);
        assert_eq!(patched["metadata"]["labels"], json!({"app": "web", "meshfleet.io/proxy-version": "1.2.3"}));
        assert_eq!(patched["metadata"]["annotations"]["meshfleet.io/injected"], "1.2.3");
    }

    #[test]
    fn opt_out_wins_over_the_namespace() {
        let original = pod(Some(json!({"meshfleet.io/inject": "disabled"})));
        let (patched, response, outcome) = run(&original, true);
        assert_eq!(outcome, Outcome::Skipped);
        assert!(response.patch.is_none());
        assert_eq!(patched, original);
        // And without any annotation or namespace opt-in, nothing happens either.
        let (patched, _, outcome) = run(&pod(None), false);
        assert_eq!((outcome, patched), (Outcome::Skipped, pod(None)));
    }

    #[test]
    fn an_injected_pod_is_left_alone() {
        let original = pod(Some(json!({"meshfleet.io/inject": "enabled"})));
        let (once, _, _) = run(&original, false);
        let (twice, response, outcome) = run(&once, false);
        assert_eq!(outcome, Outcome::Skipped);
        assert!(response.patch.is_none());
        assert_eq!(twice, once);
    }

    #[test]
    fn a_pinned_version_is_used() {
        let original = pod(Some(json!({"meshfleet.io/inject": "enabled", "meshfleet.io/proxy-version": "1.1.0-rc.1"})));
        let (patched, _, outcome) = run(&original, false);
        assert_eq!(outcome, Outcome::Injected);
        assert_eq!(init(&patched, "meshfleet-proxy")["image"], "meshfleet/proxy:1.1.0-rc.1");
        assert_eq!(init(&patched, "meshfleet-init")["image"], "meshfleet/proxy:1.1.0-rc.1");
        assert_eq!(patched["metadata"]["labels"]["meshfleet.io/proxy-version"], "1.1.0-rc.1");
        assert_eq!(patched["metadata"]["annotations"]["meshfleet.io/injected"], "1.1.0-rc.1");

        // A pin that is not a tag is refused (with a warning), not injected with another version.
        let bad = pod(Some(json!({"meshfleet.io/inject": "enabled", "meshfleet.io/proxy-version": "1.0@sha256:x"})));
        let (patched, response, outcome) = run(&bad, false);
        assert_eq!((outcome, patched), (Outcome::Error, bad));
        assert_eq!(response.warnings.len(), 1);
    }

    #[test]
    fn the_namespace_can_enable_injection() {
        let (patched, _, outcome) = run(&pod(None), true);
        assert_eq!(outcome, Outcome::Injected);
        assert_eq!(names(&patched, "initContainers"), ["meshfleet-init", "meshfleet-proxy"]);
        assert_eq!(patched["metadata"]["annotations"], json!({"meshfleet.io/injected": "1.2.3"}));
    }

    #[test]
    fn malformed_requests_are_allowed_with_a_warning() {
        let bodies: Vec<Vec<u8>> = vec![
            b"not json".to_vec(),
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).to_string().into_bytes(),
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u"}}).to_string().into_bytes(),
            request(json!({"kind": "Service", "metadata": {"name": "web"}})),
            request(json!({"kind": "Pod", "metadata": {"name": "web"}, "spec": {"containers": "nope"}})),
            request(json!({"kind": "Pod", "metadata": {"name": "web", "annotations": {"meshfleet.io/inject": "enabled"}}})),
        ];
        for body in bodies {
            let (review, outcome) = super::review(&body, &config(), true);
            let response = review.response.expect("a response");
            assert!(response.allowed, "{}", String::from_utf8_lossy(&body));
            assert!(response.patch.is_none());
            assert_eq!(response.warnings.len(), 1);
            assert_eq!(outcome, Outcome::Error);
        }
    }

    #[test]
    fn escapes_map_keys() {
        assert_eq!(escape("meshfleet.io/proxy-version"), "meshfleet.io~1proxy-version");
        assert_eq!(escape("a~b/c"), "a~0b~1c");
    }
}
