//! The proxy injector served by the real controller: `POST /inject` over HTTPS answers
//! AdmissionReview v1 and counts what it did in `injector_requests_total`.

use std::time::{Duration, SystemTime};

use base64::Engine;
use meshfleet_pki::mint::{issue_leaf, new_key, LeafProfile, Usage};
use serde_json::{json, Value};

use crate::support::*;

/// A serving certificate for 127.0.0.1 and localhost from the test anchor, written as
/// injector.crt/injector.key.
pub fn injector_cert(pki: &Pki) {
    let key = new_key().unwrap();
    let profile = LeafProfile {
        common_name: String::new(),
        uris: Vec::new(),
        hosts: vec!["localhost".into(), "127.0.0.1".into()],
        usage: Usage::Server,
        not_before: SystemTime::now() - Duration::from_secs(60),
        not_after: SystemTime::now() + Duration::from_secs(3600),
    };
    let leaf = issue_leaf(&pki.anchor.signer().unwrap(), &key, &profile).unwrap();
    std::fs::write(pki.path("injector.crt"), leaf.pem()).unwrap();
    std::fs::write(pki.path("injector.key"), key.serialize_pem()).unwrap();
}

pub fn review(uid: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "namespace": "shop",
            "operation": "CREATE",
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "nginx"}]}
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_serves_the_injector_over_https() {
    let pki = Pki::new();
    injector_cert(&pki);
    let cert = format!("--injector-cert={}", pki.path("injector.crt").display());
    let key = format!("--injector-key={}", pki.path("injector.key").display());
    // No KUBECONFIG: the controller has no API client, so only pod annotations count.
    let controller = spawn_controller_with_env(
        &pki,
        &["--injector-addr=127.0.0.1:0", &cert, &key, "--proxy-image=example.test/meshfleet/proxy", "--proxy-version=9.9.9"],
        &[("KUBECONFIG", &pki.path("no-such-kubeconfig"))],
    );
    let url = format!("https://localhost:{}/inject", controller.addr("injector").port());
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.anchor.cert_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let post = |body: String| client.post(&url).header("content-type", "application/json").body(body).send();

    // Injected: a patch that adds the proxy at the configured version.
    let answer: Value = post(review("uid-1", json!({"meshfleet.io/inject": "enabled"})).to_string()).await.unwrap().json().await.unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], "uid-1");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD.decode(response["patch"].as_str().unwrap()).unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut pod = review("uid-1", json!({"meshfleet.io/inject": "enabled"}))["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    let proxy = pod["spec"]["initContainers"].as_array().unwrap().iter().find(|c| c["name"] == "meshfleet-proxy").unwrap().clone();
    assert_eq!(proxy["image"], "example.test/meshfleet/proxy:9.9.9");
    assert_eq!(pod["metadata"]["labels"]["meshfleet.io/proxy-version"], "9.9.9");
    let env = |name: &str| proxy["env"].as_array().unwrap().iter().find(|e| e["name"] == name).map(|e| e["value"].clone());
    assert_eq!(env("MESHFLEET_PROXY_CONTROLLER_ADDR"), Some(json!("meshfleet-controller.meshfleet.svc:8080")));
    assert_eq!(env("MESHFLEET_PROXY_CONTROLLER_IDENTITY"), Some(json!("spiffe://cluster.local/ns/meshfleet/sa/meshfleet-controller")));

    // Skipped: opted out, and no annotation at all.
    for annotations in [json!({"meshfleet.io/inject": "disabled"}), json!({})] {
        let answer: Value = post(review("uid-2", annotations).to_string()).await.unwrap().json().await.unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"].get("patch").is_none());
    }

    // Malformed: still allowed, with a warning.
    let answer: Value = post("{not json".into()).await.unwrap().json().await.unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["warnings"].as_array().unwrap().len(), 1);

    let m = metrics(&controller).await;
    assert_eq!(metric(&m, "injector_requests_total", &[("result", "injected")]), 1.0, "{m}");
    assert_eq!(metric(&m, "injector_requests_total", &[("result", "skipped")]), 2.0);
    assert_eq!(metric(&m, "injector_requests_total", &[("result", "error")]), 1.0);
}

#[test]
fn a_missing_injector_certificate_is_a_configuration_error() {
    let pki = Pki::new();
    let missing = format!("--injector-cert={}", pki.path("nope.crt").display());
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_meshfleet-controller"))
        .args(["--grpc-addr=127.0.0.1:0", "--admin-addr=127.0.0.1:0", "--verifier=file", "--injector-addr=127.0.0.1:0", &missing])
        .arg(format!("--tokens-file={}", pki.path("tokens.json").display()))
        .arg(format!("--issuer-cert={}", pki.path("issuer.crt").display()))
        .arg(format!("--issuer-key={}", pki.path("issuer.key").display()))
        .arg(format!("--trust-bundle={}", pki.path("bundle.crt").display()))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(64));
}
