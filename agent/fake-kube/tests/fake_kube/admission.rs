//! Mutating admission webhooks called by the fake API server over real TLS: the patch applied
//! (HTTP creates and the simulator's pods alike), namespace and object selectors, the failure
//! policy with the webhook down, timeouts, the caBundle as the only trust, and denials.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use meshfleet_fake_kube::FakeKube;
use meshfleet_pki::mint::{self, CaMaterial, CaProfile, LeafProfile, Usage};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

type Answer = Arc<dyn Fn(&Value) -> Value + Send + Sync>;

/// A webhook over HTTPS on 127.0.0.1 with a certificate for `localhost` and `hooks.test.svc`
/// from its own CA. It records each AdmissionReview request and answers `answer(request)` (the
/// response without its uid) after `delay`.
struct Webhook {
    addr: SocketAddr,
    ca: CaMaterial,
    seen: Arc<Mutex<Vec<Value>>>,
    task: JoinHandle<()>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Webhook {
    async fn start(delay: Duration, answer: impl Fn(&Value) -> Value + Send + Sync + 'static) -> Webhook {
        let ca = mint::new_anchor(&CaProfile::new("webhook test CA", Duration::from_secs(3600))).unwrap();
        let key = mint::new_key().unwrap();
        let profile = LeafProfile {
            common_name: String::new(),
            uris: Vec::new(),
            hosts: vec!["localhost".into(), "hooks.test.svc".into()],
            usage: Usage::Server,
            not_before: SystemTime::now() - Duration::from_secs(60),
            not_after: SystemTime::now() + Duration::from_secs(3600),
        };
        let leaf = mint::issue_leaf(&ca.signer().unwrap(), &key, &profile).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer: Answer = Arc::new(answer);
        let (record, app) = (seen.clone(), axum::Router::new());
        let app = app.route(
            "/mutate",
            axum::routing::post(move |axum::Json(review): axum::Json<Value>| {
                let (record, answer) = (record.clone(), answer.clone());
                async move {
                    record.lock().unwrap().push(review["request"].clone());
                    tokio::time::sleep(delay).await;
                    let mut response = answer(&review["request"]);
                    response["uid"] = review["request"]["uid"].clone();
                    axum::Json(json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TowerToHyperService::new(app);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, service) = (acceptor.clone(), service.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tls), service).await;
                    }
                });
            }
        });
        Webhook { addr, ca, seen, task }
    }

    /// A webhook that labels every object `mutated: "yes"`.
    async fn labelling() -> Webhook {
        Webhook::start(Duration::ZERO, |request| {
            let op = match request.pointer("/object/metadata/labels") {
                Some(_) => json!({"op": "add", "path": "/metadata/labels/mutated", "value": "yes"}),
                None => json!({"op": "add", "path": "/metadata/labels", "value": {"mutated": "yes"}}),
            };
            let patch = base64::engine::general_purpose::STANDARD.encode(json!([op]).to_string());
            json!({"allowed": true, "patchType": "JSONPatch", "patch": patch})
        })
        .await
    }

    fn url_config(&self) -> Value {
        json!({"url": format!("https://localhost:{}/mutate", self.addr.port()), "caBundle": ca_bundle(&self.ca)})
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

fn ca_bundle(ca: &CaMaterial) -> String {
    base64::engine::general_purpose::STANDARD.encode(&ca.cert_pem)
}

/// A MutatingWebhookConfiguration with one webhook for pod CREATE; `extra` overrides its fields.
fn configuration(name: &str, client_config: Value, extra: Value) -> Value {
    let mut hook = json!({
        "name": format!("{name}.hooks.test"), "clientConfig": client_config, "admissionReviewVersions": ["v1"], "sideEffects": "None",
        "failurePolicy": "Fail", "timeoutSeconds": 5,
        "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}],
    });
    for (k, v) in extra.as_object().unwrap() {
        hook[k] = v.clone();
    }
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration", "metadata": {"name": name}, "webhooks": [hook]})
}

fn pod(name: &str, labels: Value) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "spec": {"containers": [{"name": "app", "image": "app:1"}]}})).unwrap()
}

fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.labels.as_ref().and_then(|l| l.get(key)).map(String::as_str)
}

async fn pods_of(kube: &FakeKube, namespace: &str) -> Api<Pod> {
    Api::namespaced(kube.client().await.unwrap(), namespace)
}

/// The API error of a refused create: (code, reason, message).
async fn refused(pods: &Api<Pod>, p: &Pod) -> (u16, String, String) {
    match pods.create(&PostParams::default(), p).await {
        Err(kube::Error::Api(e)) => (e.code, e.reason.clone(), e.message.clone()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// An address nothing listens on.
async fn dead_addr() -> SocketAddr {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap()
}

async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "app", "image": "app:1"}]}}}}))
    .unwrap()
}

#[tokio::test]
async fn a_webhooks_patch_is_applied_to_api_and_simulator_pods() {
    let kube = FakeKube::start().await.unwrap();
    let hook = Webhook::labelling().await;
    kube.apply(configuration("label", hook.url_config(), json!({}))).unwrap();
    let pods = pods_of(&kube, "shop").await;

    let created = pods.create(&PostParams::default(), &pod("web", json!({"app": "web"}))).await.unwrap();
    assert_eq!(label(&created, "mutated"), Some("yes"));
    assert_eq!(label(&created, "app"), Some("web"));
    assert_eq!(label(&pods.get("web").await.unwrap(), "mutated"), Some("yes"), "what is stored is the patched pod");
    let request = hook.seen.lock().unwrap()[0].clone();
    assert_eq!(request["operation"], "CREATE");
    assert_eq!((&request["namespace"], &request["name"]), (&json!("shop"), &json!("web")));
    assert_eq!(request["kind"], json!({"group": "", "version": "v1", "kind": "Pod"}));
    assert_eq!(request["resource"], json!({"group": "", "version": "v1", "resource": "pods"}));
    assert_eq!((&request["object"]["kind"], &request["object"]["metadata"]["namespace"]), (&json!("Pod"), &json!("shop")));
    assert_eq!((&request["userInfo"]["username"], &request["dryRun"]), (&json!("admin"), &json!(false)));
    assert_eq!(request["uid"].as_str().unwrap().len(), 36);

    // The simulator creates a Deployment's pods through the same path, as the ReplicaSet controller.
    Api::<Deployment>::namespaced(kube.client().await.unwrap(), "shop").create(&PostParams::default(), &deployment("api", 2)).await.unwrap();
    let list = eventually("the deployment's pods", async || {
        let items = pods.list(&Default::default()).await.unwrap().items;
        let api: Vec<Pod> = items.into_iter().filter(|p| label(p, "app") == Some("api")).collect();
        (api.len() == 2).then_some(api)
    })
    .await;
    assert!(list.iter().all(|p| label(p, "mutated") == Some("yes")), "{list:?}");
    let last = hook.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last["userInfo"]["username"], "system:serviceaccount:kube-system:replicaset-controller");
    assert_eq!(hook.calls(), 3);
    assert!(kube.webhook_fail_open().is_empty());
}

#[tokio::test]
async fn a_service_reference_is_called_at_its_route_by_its_dns_name() {
    let kube = FakeKube::start().await.unwrap();
    let hook = Webhook::labelling().await;
    let service = json!({"service": {"namespace": "test", "name": "hooks", "port": 8443, "path": "/mutate"}, "caBundle": ca_bundle(&hook.ca)});
    kube.apply(configuration("label", service, json!({}))).unwrap();
    let pods = pods_of(&kube, "default").await;
    // Not routed yet: no endpoints, a failed call, and the policy is Fail.
    let (code, _, message) = refused(&pods, &pod("a", json!({}))).await;
    assert_eq!(code, 500);
    assert!(message.contains("no endpoints available for service"), "{message}");

    kube.route_service("test", "hooks", 8443, hook.addr);
    let created = pods.create(&PostParams::default(), &pod("b", json!({}))).await.unwrap();
    assert_eq!(label(&created, "mutated"), Some("yes"));
}

#[tokio::test]
async fn namespace_and_object_selectors_choose_the_pods_sent() {
    let kube = FakeKube::start().await.unwrap();
    let hook = Webhook::labelling().await;
    for (ns, labels) in [("meshed", json!({"mesh": "on"})), ("plain", json!({}))] {
        kube.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}})).unwrap();
    }
    let selectors = json!({
        "namespaceSelector": {"matchLabels": {"mesh": "on"}, "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}]},
        "objectSelector": {"matchExpressions": [{"key": "skip", "operator": "DoesNotExist"}]},
    });
    kube.apply(configuration("label", hook.url_config(), selectors)).unwrap();
    let client = kube.client().await.unwrap();
    let create = async |ns: &str, name: &str, labels: Value| {
        Api::<Pod>::namespaced(client.clone(), ns).create(&PostParams::default(), &pod(name, labels)).await.unwrap()
    };
    assert_eq!(label(&create("meshed", "in", json!({})).await, "mutated"), Some("yes"));
    assert_eq!(label(&create("meshed", "skipped", json!({"skip": "true"})).await, "mutated"), None);
    assert_eq!(label(&create("plain", "other-ns", json!({})).await, "mutated"), None);
    // A namespace with no object has only its name label: no match either.
    assert_eq!(label(&create("nowhere", "no-ns", json!({})).await, "mutated"), None);
    assert_eq!(hook.calls(), 1, "only the selected pod reaches the webhook");
}

#[tokio::test]
async fn the_failure_policy_decides_when_the_webhook_is_down() {
    let kube = FakeKube::start().await.unwrap();
    let ca = mint::new_anchor(&CaProfile::new("webhook test CA", Duration::from_secs(3600))).unwrap();
    let down = json!({"url": format!("https://localhost:{}/mutate", dead_addr().await.port()), "caBundle": ca_bundle(&ca)});
    kube.apply(configuration("down", down.clone(), json!({"failurePolicy": "Ignore"}))).unwrap();
    let pods = pods_of(&kube, "default").await;
    let created = pods.create(&PostParams::default(), &pod("through", json!({}))).await.unwrap();
    assert_eq!(label(&created, "mutated"), None);
    let skipped = kube.webhook_fail_open();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].webhook, "down.hooks.test");
    assert!(skipped[0].error.contains("failed calling webhook \"down.hooks.test\""), "{}", skipped[0].error);

    kube.apply(configuration("down", down, json!({"failurePolicy": "Fail"}))).unwrap();
    let (code, reason, message) = refused(&pods, &pod("refused", json!({}))).await;
    assert_eq!((code, reason.as_str()), (500, "InternalError"));
    assert!(message.starts_with("Internal error occurred: failed calling webhook \"down.hooks.test\": failed to call webhook: Post"), "{message}");
    assert!(pods.get_opt("refused").await.unwrap().is_none());

    // The simulator's creates are refused too: the ReplicaSet says why and has no pods, and it
    // retries, so pods appear once the webhook may be skipped.
    Api::<Deployment>::namespaced(kube.client().await.unwrap(), "default").create(&PostParams::default(), &deployment("api", 1)).await.unwrap();
    let rss: Api<ReplicaSet> = Api::namespaced(kube.client().await.unwrap(), "default");
    let condition = eventually("a ReplicaFailure condition", async || {
        let rs = rss.list(&Default::default()).await.unwrap().items.pop()?;
        rs.status?.conditions?.into_iter().find(|c| c.type_ == "ReplicaFailure")
    })
    .await;
    assert_eq!(condition.reason.as_deref(), Some("FailedCreate"));
    assert!(condition.message.as_deref().unwrap_or("").contains("failed calling webhook"), "{condition:?}");
    assert_eq!(pods.list(&Default::default()).await.unwrap().items.len(), 1, "only the pod created under Ignore");
    let mut config = kube.get("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", "", "down").unwrap();
    config["webhooks"][0]["failurePolicy"] = json!("Ignore");
    kube.apply(config).unwrap();
    eventually("the deployment's pod", async || (pods.list(&Default::default()).await.unwrap().items.len() == 2).then_some(())).await;
}

#[tokio::test]
async fn a_slow_webhook_times_out_after_its_timeout_seconds() {
    let kube = FakeKube::start().await.unwrap();
    let hook = Webhook::start(Duration::from_secs(5), |_| json!({"allowed": true})).await;
    kube.apply(configuration("slow", hook.url_config(), json!({"timeoutSeconds": 1}))).unwrap();
    let pods = pods_of(&kube, "default").await;
    let started = Instant::now();
    let (code, _, message) = refused(&pods, &pod("slow", json!({}))).await;
    let took = started.elapsed();
    assert_eq!(code, 500);
    assert!(message.contains("context deadline exceeded"), "{message}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "timed out after {took:?}");
    assert_eq!(hook.calls(), 1, "the webhook was called");
}

#[tokio::test]
async fn the_webhook_is_trusted_only_through_its_ca_bundle() {
    let kube = FakeKube::start().await.unwrap();
    let hook = Webhook::labelling().await;
    let other = mint::new_anchor(&CaProfile::new("another CA", Duration::from_secs(3600))).unwrap();
    let pods = pods_of(&kube, "default").await;
    for (name, ca_bundle) in
        [("wrong", json!(ca_bundle(&other))), ("none", Value::Null), ("garbage", json!(base64::engine::general_purpose::STANDARD.encode("not PEM")))]
    {
        let mut client_config = hook.url_config();
        client_config["caBundle"] = ca_bundle;
        kube.apply(configuration("hook", client_config, json!({}))).unwrap();
        let (code, _, message) = refused(&pods, &pod(name, json!({}))).await;
        assert_eq!(code, 500, "{name}");
        assert!(message.contains("certificate"), "{name}: {message}");
    }
    assert_eq!(hook.calls(), 0, "no request crossed an untrusted connection");
    // With its own CA the same webhook works.
    kube.apply(configuration("hook", hook.url_config(), json!({}))).unwrap();
    assert_eq!(label(&pods.create(&PostParams::default(), &pod("trusted", json!({}))).await.unwrap(), "mutated"), Some("yes"));
}

#[tokio::test]
async fn a_denial_or_a_bad_answer_refuses_the_create() {
    let kube = FakeKube::start().await.unwrap();
    let pods = pods_of(&kube, "default").await;
    let deny = Webhook::start(Duration::ZERO, |_| json!({"allowed": false, "status": {"code": 403, "message": "pods need an owner"}})).await;
    kube.apply(configuration("deny", deny.url_config(), json!({"failurePolicy": "Ignore"}))).unwrap();
    let (code, _, message) = refused(&pods, &pod("denied", json!({}))).await;
    assert_eq!((code, message.as_str()), (403, "admission webhook \"deny.hooks.test\" denied the request: pods need an owner"));
    kube.delete("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", "", "deny").unwrap();

    // A patch that does not apply is an internal error even under Ignore.
    let bad = Webhook::start(Duration::ZERO, |_| {
        let patch = base64::engine::general_purpose::STANDARD.encode(json!([{"op": "remove", "path": "/spec/nothing"}]).to_string());
        json!({"allowed": true, "patchType": "JSONPatch", "patch": patch})
    })
    .await;
    kube.apply(configuration("bad", bad.url_config(), json!({"failurePolicy": "Ignore"}))).unwrap();
    let (code, _, message) = refused(&pods, &pod("bad-patch", json!({}))).await;
    assert_eq!(code, 500);
    assert!(message.contains("bad patch"), "{message}");

    // A patch that makes the pod invalid is refused by validation after admission.
    let breaks = Webhook::start(Duration::ZERO, |_| {
        let patch = base64::engine::general_purpose::STANDARD.encode(json!([{"op": "replace", "path": "/spec/containers", "value": "none"}]).to_string());
        json!({"allowed": true, "patchType": "JSONPatch", "patch": patch})
    })
    .await;
    kube.apply(configuration("bad", breaks.url_config(), json!({}))).unwrap();
    assert_eq!(refused(&pods, &pod("invalid", json!({}))).await.0, 422);
    assert!(pods.list(&Default::default()).await.unwrap().items.is_empty());
}
