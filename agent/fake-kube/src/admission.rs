//! Mutating admission as a real API server runs it on CREATE (from the HTTP API and from the
//! workload simulator alike): the webhooks of the stored MutatingWebhookConfigurations whose
//! rules and namespace/object selectors match are called in turn (configurations by name) with
//! an AdmissionReview v1 over HTTPS that trusts only their caBundle, and their JSON Patches are
//! applied one after the other. A call that fails is skipped under failurePolicy Ignore (and
//! recorded) or refuses the create under Fail; a denial always refuses. It never writes the
//! store: callers create what it returns. Not modelled: reinvocation, matchConditions (a hook
//! with any is a failed call), other operations than CREATE, validating webhooks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::rbac::User;
use crate::resources::{def, find, Res, ResourceDef};
use crate::selectors::Selector;
use crate::store::name_of;
use crate::Shared;

const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";
const DEFAULT_TIMEOUT_SECS: i32 = 10;
/// The API server's bounds on `timeoutSeconds`.
const TIMEOUT_RANGE: (i32, i32) = (1, 30);
/// The label the real API server sets on every Namespace (since 1.21); selectors rely on it.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A refused create: the Kubernetes Status the API answers with.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

impl Refusal {
    fn internal(message: impl std::fmt::Display) -> Refusal {
        Refusal { code: 500, reason: "InternalError".into(), message: format!("Internal error occurred: {message}") }
    }
}

/// A webhook call that failed and was skipped because its failurePolicy is Ignore (what a real
/// API server counts in `apiserver_admission_webhook_fail_open_count`).
#[derive(Debug, Clone, PartialEq)]
pub struct FailOpen {
    pub webhook: String,
    pub error: String,
}

/// How one webhook call went wrong.
enum HookError {
    /// It could not be called or answered nonsense: its failurePolicy decides.
    Calling(String),
    /// It (or what it answered) refuses the request, whatever the failurePolicy.
    Refused(Refusal),
}

#[derive(Default)]
pub(crate) struct Admission {
    /// Where `clientConfig.service` webhooks listen. Without the kubelet no pod really serves a
    /// Service, so a test routes `<name>.<namespace>.svc:<port>` to an address it controls
    /// (`FakeKube::route_service`); with it, an unrouted Service's ready endpoint is called. TLS
    /// still verifies the Service's DNS name, as a real API server does. A Service with neither
    /// is a failed call ("no endpoints available").
    routes: Mutex<HashMap<(String, String, i32), SocketAddr>>,
    fail_open: Mutex<Vec<FailOpen>>,
}

impl Admission {
    pub fn route_service(&self, namespace: &str, name: &str, port: i32, addr: SocketAddr) {
        self.routes.lock().unwrap_or_else(|e| e.into_inner()).insert((namespace.into(), name.into(), port), addr);
    }

    fn route(&self, namespace: &str, name: &str, port: i32) -> Option<SocketAddr> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner()).get(&(namespace.into(), name.into(), port)).copied()
    }

    pub fn fail_open(&self) -> Vec<FailOpen> {
        self.fail_open.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Runs the mutating webhooks for the CREATE of `object` (a `res` in `namespace`) by `user`;
/// returns the object to store, or why the create is refused.
pub(crate) async fn admit(shared: &Shared, res: Res, namespace: &str, mut object: Value, user: &User) -> Result<Value, Refusal> {
    let d = def(res);
    // A real API server never calls webhooks on webhook configurations (nor could it be fixed
    // if they broke it).
    if d.group == "admissionregistration.k8s.io" {
        return Ok(object);
    }
    let configs_res = find("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations").expect("registered");
    // In name order: the store keeps objects sorted by key.
    let (configs, _) = shared.store.list(configs_res, None);
    if configs.is_empty() {
        return Ok(object);
    }
    // The object as the webhook sees it, with its type and namespace filled in.
    object["apiVersion"] = json!(d.api_version());
    object["kind"] = json!(d.kind);
    if d.namespaced {
        object["metadata"]["namespace"] = json!(namespace);
    }
    let namespace_obj = d.namespaced.then(|| namespace_for_selectors(shared, namespace));
    for config in configs {
        // Every stored configuration passed the same typed check on write.
        let Ok(config) = serde_json::from_value::<MutatingWebhookConfiguration>(config) else { continue };
        for hook in config.webhooks.unwrap_or_default() {
            let namespace_obj = if d.kind == "Namespace" { Some(&object) } else { namespace_obj.as_ref() };
            let result = match hook_matches(&hook, d, &object, namespace_obj) {
                Ok(false) => continue,
                Ok(true) => call(shared, &hook, d, namespace, &object, user).await,
                Err(e) => Err(HookError::Refused(Refusal::internal(format!("webhook {:?}: {e}", hook.name)))),
            };
            match result {
                Ok(patched) => object = patched,
                Err(HookError::Refused(refusal)) => return Err(refusal),
                Err(HookError::Calling(error)) => {
                    let error = format!("failed calling webhook {:?}: {error}", hook.name);
                    if hook.failure_policy.as_deref() != Some("Ignore") {
                        tracing::warn!(%error, "failed calling webhook, failing closed");
                        return Err(Refusal::internal(error));
                    }
                    tracing::warn!(%error, "failed calling webhook, failing open");
                    shared.admission.fail_open.lock().unwrap_or_else(|e| e.into_inner()).push(FailOpen { webhook: hook.name.clone(), error });
                }
            }
        }
    }
    Ok(object)
}

/// The Namespace as selectors see it: its labels plus the name label the real API server adds.
fn namespace_for_selectors(shared: &Shared, namespace: &str) -> Value {
    let ns_res = find("", "v1", "namespaces").expect("registered");
    let mut labels = shared.store.get(ns_res, "", namespace).and_then(|n| n.pointer("/metadata/labels").cloned()).unwrap_or(json!({}));
    labels[NAMESPACE_NAME_LABEL] = json!(namespace);
    json!({"metadata": {"name": namespace, "labels": labels}})
}

fn hook_matches(hook: &MutatingWebhook, d: &ResourceDef, object: &Value, namespace: Option<&Value>) -> Result<bool, String> {
    if !hook.rules.iter().flatten().any(|r| rule_matches(r, d)) {
        return Ok(false);
    }
    if let (Some(selector), Some(ns)) = (&hook.namespace_selector, namespace) {
        if !Selector::from_label_selector(selector).map_err(|e| format!("namespaceSelector: {e}"))?.matches(ns) {
            return Ok(false);
        }
    }
    match &hook.object_selector {
        Some(selector) => Ok(Selector::from_label_selector(selector).map_err(|e| format!("objectSelector: {e}"))?.matches(object)),
        None => Ok(true),
    }
}

/// A rule for CREATE of this resource, as the API server's rule matcher reads it: `*` matches
/// any group, version or resource, `x/*` a resource with any subresource (and itself).
fn rule_matches(rule: &RuleWithOperations, d: &ResourceDef) -> bool {
    let has = |list: &Option<Vec<String>>, want: &str| list.iter().flatten().any(|x| x == "*" || x == want);
    let resource = rule.resources.iter().flatten().any(|r| {
        let (res, sub) = r.split_once('/').unwrap_or((r, ""));
        (res == "*" || res == d.plural) && (sub == "*" || sub.is_empty())
    });
    let scope = match rule.scope.as_deref() {
        Some("Cluster") => !d.namespaced,
        Some("Namespaced") => d.namespaced,
        _ => true,
    };
    has(&rule.operations, "CREATE") && has(&rule.api_groups, d.group) && has(&rule.api_versions, d.version) && resource && scope
}

/// The parts of an AdmissionReview v1 response the API server acts on.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewResponse {
    uid: String,
    allowed: bool,
    #[serde(default)]
    status: Option<StatusResult>,
    #[serde(default)]
    patch: Option<String>,
    #[serde(default)]
    patch_type: Option<String>,
}

#[derive(Deserialize, Default)]
struct StatusResult {
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

async fn call(shared: &Shared, hook: &MutatingWebhook, d: &ResourceDef, namespace: &str, object: &Value, user: &User) -> Result<Value, HookError> {
    if !hook.admission_review_versions.iter().any(|v| v == "v1") {
        return Err(HookError::Calling("the webhook does not accept AdmissionReview v1".into()));
    }
    if hook.match_conditions.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err(HookError::Calling("matchConditions are not supported by the fake API server".into()));
    }
    let secs = hook.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECS).clamp(TIMEOUT_RANGE.0, TIMEOUT_RANGE.1);
    let timeout = Duration::from_secs(secs as u64);
    let (url, client) = endpoint(shared, hook, timeout).map_err(HookError::Calling)?;
    let uid = new_uid();
    let gvk = json!({"group": d.group, "version": d.version, "kind": d.kind});
    let gvr = json!({"group": d.group, "version": d.version, "resource": d.plural});
    let review = json!({
        "apiVersion": REVIEW_API_VERSION, "kind": "AdmissionReview",
        "request": {
            "uid": uid, "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
            "name": name_of(object), "namespace": namespace, "operation": "CREATE",
            "userInfo": {"username": user.name, "groups": user.groups},
            "object": object, "oldObject": null, "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    });
    // The API server tells the webhook its deadline in the query, as here.
    let url = format!("{url}{}timeout={secs}s", if url.contains('?') { '&' } else { '?' });
    let calling = |e: reqwest::Error| {
        let cause = if e.is_timeout() { "context deadline exceeded".to_owned() } else { error_chain(&e) };
        HookError::Calling(format!("failed to call webhook: Post {url:?}: {cause}"))
    };
    let answer = client.post(&url).json(&review).send().await.map_err(calling)?;
    let code = answer.status();
    let body = answer.bytes().await.map_err(calling)?;
    if !code.is_success() {
        return Err(HookError::Calling(format!("failed to call webhook: the server responded with the status code {}", code.as_u16())));
    }
    let invalid = |why: String| HookError::Calling(format!("received invalid webhook response: {why}"));
    let answer: Value = serde_json::from_slice(&body).map_err(|e| invalid(e.to_string()))?;
    let (api_version, kind) = (answer["apiVersion"].as_str().unwrap_or(""), answer["kind"].as_str().unwrap_or(""));
    if (api_version, kind) != (REVIEW_API_VERSION, "AdmissionReview") {
        return Err(invalid(format!("expected webhook response of {REVIEW_API_VERSION}, Kind=AdmissionReview, got {api_version}, Kind={kind}")));
    }
    let response: ReviewResponse = match answer.get("response") {
        Some(r) => serde_json::from_value(r.clone()).map_err(|e| invalid(e.to_string()))?,
        None => return Err(invalid("webhook response was absent".into())),
    };
    if response.uid != uid {
        return Err(invalid(format!("expected response.uid={uid:?}, got {:?}", response.uid)));
    }
    if !response.allowed {
        return Err(HookError::Refused(denied(&hook.name, response.status.unwrap_or_default())));
    }
    let Some(patch) = response.patch.filter(|p| !p.is_empty()) else { return Ok(object.clone()) };
    match response.patch_type.as_deref() {
        Some("JSONPatch") => {}
        None => return Err(invalid("webhook returned response.patch but not response.patchType".into())),
        Some(other) => return Err(HookError::Calling(format!("unsupported patch type {other:?}"))),
    }
    // A patch that does not decode or apply is an internal error whatever the failure policy.
    let bad_patch = |e: String| HookError::Refused(Refusal::internal(format!("webhook {:?} returned a bad patch: {e}", hook.name)));
    let bytes = base64::engine::general_purpose::STANDARD.decode(patch).map_err(|e| bad_patch(e.to_string()))?;
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).map_err(|e| bad_patch(e.to_string()))?;
    let mut patched = object.clone();
    json_patch::patch(&mut patched, &patch).map_err(|e| bad_patch(e.to_string()))?;
    Ok(patched)
}

/// The webhook's URL and an HTTPS client for it that trusts only its caBundle (no caBundle: no
/// trust at all; the fake has no system roots to fall back on).
fn endpoint(shared: &Shared, hook: &MutatingWebhook, timeout: Duration) -> Result<(String, reqwest::Client), String> {
    let config = &hook.client_config;
    let mut builder = reqwest::Client::builder().https_only(true).tls_built_in_root_certs(false).no_proxy().timeout(timeout);
    if let Some(ca) = &config.ca_bundle {
        for cert in reqwest::Certificate::from_pem_bundle(&ca.0).map_err(|e| format!("invalid caBundle: {e}"))? {
            builder = builder.add_root_certificate(cert);
        }
    }
    let url = match (&config.url, &config.service) {
        (Some(url), None) => url.clone(),
        (None, Some(service)) => {
            let port = service.port.unwrap_or(443);
            let host = format!("{}.{}.svc", service.name, service.namespace);
            let routed = shared.admission.route(&service.namespace, &service.name, port);
            // With the kubelet on, Services have real endpoints to call.
            let routed =
                routed.or_else(|| shared.kubelet.as_ref().and_then(|_| crate::endpoints::backend(&shared.store, &service.namespace, &service.name, port)));
            let addr = routed.ok_or_else(|| format!("service \"{}/{}\" port {port}: no endpoints available for service", service.namespace, service.name))?;
            builder = builder.resolve(&host, addr);
            // The connection goes to the routed address (the URL's port is what the client dials).
            format!("https://{host}:{}{}", addr.port(), service.path.as_deref().unwrap_or(""))
        }
        _ => return Err("clientConfig needs exactly one of url and service".into()),
    };
    let client = builder.build().map_err(|e| format!("building the webhook client: {e}"))?;
    Ok((url, client))
}

/// A denial as the API server reports it: the webhook's code (at least 400) and message.
fn denied(webhook: &str, status: StatusResult) -> Refusal {
    let by = format!("admission webhook {webhook:?} denied the request");
    let message = match (status.message.filter(|m| !m.is_empty()), &status.reason) {
        (Some(m), _) => format!("{by}: {m}"),
        (None, Some(r)) if !r.is_empty() => format!("{by}: {r}"),
        _ => format!("{by} without explanation"),
    };
    let code = status.code.filter(|c| *c >= 400).unwrap_or(400);
    let reason = status.reason.filter(|r| !r.is_empty()).unwrap_or_else(|| if code == 400 { "BadRequest".into() } else { "Forbidden".into() });
    Refusal { code, reason, message }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A random UUID (version 4 layout), as the API server gives each request.
fn new_uid() -> String {
    let h = format!("{:032x}", (rand::random::<u128>() & !(0xf << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62));
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(v: Value) -> RuleWithOperations {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn rules_match_as_the_api_server_reads_them() {
        let pods = def(crate::resources::pods());
        let namespaces = def(find("", "v1", "namespaces").unwrap());
        let pod_rule = json!({"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]});
        assert!(rule_matches(&rule(pod_rule.clone()), pods));
        assert!(!rule_matches(&rule(pod_rule), namespaces));
        assert!(rule_matches(&rule(json!({"apiGroups": ["*"], "apiVersions": ["*"], "operations": ["*"], "resources": ["*/*"]})), pods));
        assert!(rule_matches(&rule(json!({"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods/*"]})), pods));
        assert!(!rule_matches(&rule(json!({"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["pods"]})), pods));
        assert!(!rule_matches(&rule(json!({"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]})), pods));
        assert!(!rule_matches(&rule(json!({"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods/status"]})), pods));
        let scoped = |scope: &str| rule(json!({"apiGroups": ["*"], "apiVersions": ["*"], "operations": ["CREATE"], "resources": ["*"], "scope": scope}));
        assert!(rule_matches(&scoped("Namespaced"), pods) && !rule_matches(&scoped("Cluster"), pods));
        assert!(rule_matches(&scoped("Cluster"), namespaces) && !rule_matches(&scoped("Namespaced"), namespaces));
    }

    #[test]
    fn denials_keep_the_webhooks_message_and_an_error_code() {
        let r = denied("a.example", StatusResult { code: Some(403), reason: None, message: Some("no root".into()) });
        assert_eq!(r, Refusal { code: 403, reason: "Forbidden".into(), message: "admission webhook \"a.example\" denied the request: no root".into() });
        let r = denied("a.example", StatusResult { code: Some(200), ..Default::default() });
        assert_eq!((r.code, r.message.as_str()), (400, "admission webhook \"a.example\" denied the request without explanation"));
    }

    #[test]
    fn uids_look_like_uuids() {
        let u = new_uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
        assert_ne!(u, new_uid());
    }
}
