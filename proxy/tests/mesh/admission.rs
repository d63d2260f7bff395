//! The proxy injector end to end: the fake API server calls the real controller's webhook as
//! `install --dev-certs --injector` configures it (the MutatingWebhookConfiguration with its
//! caBundle, the serving certificate from its Secret), and its workload simulator creates a
//! Deployment's pods through it. A control-plane version change reaches pods at their next
//! restart; with the controller down, failurePolicy Ignore lets pods through unmeshed.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use meshfleet_fake_kube::FakeKube;
use meshfleet_mesh::controller::inject::{INIT_CONTAINER, INJECT_ANNOTATION, PROXY_CONTAINER, VERSION_LABEL};
use meshfleet_mesh::controller::install::{INJECTOR_PORT, INJECTOR_SECRET};
use meshfleet_pki::names::{CONTROLLER_DEPLOYMENT, MESH_NAMESPACE};
use serde_json::json;

use crate::install::{one, parse, rendered, secret_data};
use crate::support::*;

const WEBHOOK: &str = "inject.meshfleet.io";

/// A controller serving the injector with the manifest's certificate, at `version`, reading
/// namespaces from the fake API server; the controller's Service is routed to it.
fn controller_at(pki: &Pki, kube: &FakeKube, version: &str) -> Process {
    let (cert, key) = (format!("--injector-cert={}", pki.path("injector.crt").display()), format!("--injector-key={}", pki.path("injector.key").display()));
    let version = format!("--proxy-version={version}");
    let controller = spawn_controller_with_env(pki, &["--injector-addr=127.0.0.1:0", &cert, &key, &version], &[("KUBECONFIG", &pki.path("kubeconfig"))]);
    kube.route_service(MESH_NAMESPACE, CONTROLLER_DEPLOYMENT, INJECTOR_PORT, controller.addr("injector"));
    controller
}

fn ready(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn version_label(p: &Pod) -> Option<&str> {
    p.metadata.labels.as_ref().and_then(|l| l.get(VERSION_LABEL)).map(String::as_str)
}

/// Waits until the Deployment `web` has exactly `n` pods, all ready and carrying proxy `version`.
async fn web_pods_at(pods: &Api<Pod>, n: usize, version: &str) -> Vec<Pod> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let web: Vec<Pod> =
            pods.list(&Default::default()).await.unwrap().items.into_iter().filter(|p| p.metadata.labels.as_ref().is_some_and(|l| l["app"] == "web")).collect();
        if web.len() == n && web.iter().all(|p| ready(p) && version_label(p) == Some(version)) {
            return web;
        }
        let seen: Vec<_> = web.iter().map(|p| (p.metadata.name.clone().unwrap_or_default(), version_label(p).map(str::to_owned), ready(p))).collect();
        assert!(Instant::now() < deadline, "web never had {n} ready pods at {version}: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pod carries the proxy `version` as a native sidecar next to its own container.
fn assert_injected(p: &Pod, version: &str) {
    let spec = p.spec.as_ref().unwrap();
    let inits = spec.init_containers.as_ref().expect("init containers");
    let names: Vec<&str> = inits.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, [INIT_CONTAINER, PROXY_CONTAINER]);
    let proxy = &inits[1];
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"), "a native sidecar");
    assert_eq!(proxy.image.as_deref(), Some(format!("meshfleet/proxy:{version}").as_str()));
    assert_eq!(inits[0].image, proxy.image);
    assert_eq!(spec.containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["app"]);
    assert_eq!(version_label(p), Some(version));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_in_an_injected_namespace_get_the_control_planes_proxy() {
    let kube = FakeKube::start().await.unwrap();
    let docs = parse(&rendered(&["--dev-certs", "--injector"]));
    // Everything but the Services, which the fake API server does not serve (route_service
    // stands in for the controller's); the controller Deployment's own pods come from the
    // simulator, and the webhook's namespaceSelector must keep them away from the injector.
    for d in docs.iter().filter(|d| d["kind"] != "Service") {
        kube.apply_yaml(&serde_yaml_ng::to_string(d).unwrap()).unwrap();
    }
    assert_eq!(one(&docs, "MutatingWebhookConfiguration")["webhooks"][0]["name"], WEBHOOK);
    let pki = Pki::new();
    let secret = docs.iter().find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == INJECTOR_SECRET).unwrap();
    std::fs::write(pki.path("injector.crt"), secret_data(secret, "tls.crt")).unwrap();
    std::fs::write(pki.path("injector.key"), secret_data(secret, "tls.key")).unwrap();
    kube.write_kubeconfig(&pki.path("kubeconfig"), &kube.admin_token).unwrap();
    let controller = controller_at(&pki, &kube, "1.0.0");

    let client = kube.client().await.unwrap();
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": "shop", "annotations": {INJECT_ANNOTATION: "enabled"}}})).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    let web = json!({"metadata": {"name": "web"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "shop/web:1"}]}}}});
    deployments.create(&PostParams::default(), &serde_json::from_value(web).unwrap()).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    for p in web_pods_at(&pods, 2, "1.0.0").await {
        assert_injected(&p, "1.0.0");
    }
    // The controller's own pods (in the mesh's namespace) were never sent to it.
    let mesh_pods = Api::<Pod>::namespaced(client.clone(), MESH_NAMESPACE).list(&Default::default()).await.unwrap().items;
    assert!(!mesh_pods.is_empty() && mesh_pods.iter().all(|p| p.spec.as_ref().unwrap().init_containers.is_none()));
    let m = metrics(&controller).await;
    assert_eq!(metric(&m, "injector_requests_total", &[("result", "injected")]), 2.0, "{m}");
    assert_eq!(metric(&m, "injector_requests_total", &[("result", "skipped")]), 0.0, "{m}");

    // A namespace is meshed by the label as well as the annotation (the agent's rule too,
    // `meshfleet_pki::names::namespace_injects`); one with neither is not.
    for (name, meta) in [("labelled", json!({"labels": {INJECT_ANNOTATION: "enabled"}})), ("plain", json!({"labels": {"team": "shop"}}))] {
        let mut meta = meta;
        meta["name"] = json!(name);
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &serde_json::from_value(json!({"metadata": meta})).unwrap()).await.unwrap();
    }
    let bare =
        || serde_json::from_value::<Pod>(json!({"metadata": {"name": "bare"}, "spec": {"containers": [{"name": "app", "image": "shop/bare:1"}]}})).unwrap();
    let labelled = Api::<Pod>::namespaced(client.clone(), "labelled").create(&PostParams::default(), &bare()).await.unwrap();
    assert_injected(&labelled, "1.0.0");
    let plain = Api::<Pod>::namespaced(client.clone(), "plain").create(&PostParams::default(), &bare()).await.unwrap();
    assert!(plain.spec.as_ref().unwrap().init_containers.is_none() && version_label(&plain).is_none(), "{plain:?}");
    let m = metrics(&controller).await;
    assert_eq!(metric(&m, "injector_requests_total", &[("result", "injected")]), 3.0, "{m}");
    assert_eq!(metric(&m, "injector_requests_total", &[("result", "skipped")]), 1.0, "{m}");

    // A new control-plane version, then `kubectl rollout restart`: the new pods get it.
    drop(controller);
    let controller = controller_at(&pki, &kube, "2.0.0");
    // kubectl writes the time; any new value changes the pod template.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();
    let restarted = json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": now}}}}});
    deployments.patch("web", &PatchParams::default(), &Patch::Strategic(&restarted)).await.unwrap();
    for p in web_pods_at(&pods, 2, "2.0.0").await {
        assert_injected(&p, "2.0.0");
    }
    assert_eq!(metric(&metrics(&controller).await, "injector_requests_total", &[("result", "injected")]), 2.0);
    assert!(kube.webhook_fail_open().is_empty());

    // The controller down: failurePolicy Ignore lets a pod through without the proxy, and the
    // API server counts the call it skipped.
    drop(controller);
    let lone: Pod = serde_json::from_value(json!({"metadata": {"name": "lone"}, "spec": {"containers": [{"name": "app", "image": "shop/lone:1"}]}})).unwrap();
    let created = pods.create(&PostParams::default(), &lone).await.unwrap();
    assert!(created.spec.as_ref().unwrap().init_containers.is_none());
    assert_eq!(version_label(&created), None);
    let skipped = kube.webhook_fail_open();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].webhook, WEBHOOK);
    assert!(skipped[0].error.contains("failed to call webhook"), "{}", skipped[0].error);
}
