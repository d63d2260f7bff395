//! `meshfleet-controller install`: the manifest's objects and names, least-privilege RBAC, the
//! `--dev-certs` issuer chaining to its anchor, clear errors for bad PEM, and the real controller
//! run as the manifest configures it, with only the permissions it grants, against the fake API
//! server. CI validates the rendered manifest (the artifact `mesh-install.yaml`) with
//! kubernetes-validate --strict.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use meshfleet_fake_kube::{FakeKube, User};
use meshfleet_mesh::destination::pb::destination_client::DestinationClient;
use meshfleet_mesh::identity::pb::{self, identity_client::IdentityClient};
use meshfleet_pki::mint::{self, CaProfile};
use meshfleet_pki::names;
use meshfleet_pki::verify::{check_issuer, TrustBundle};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_meshfleet-controller");

fn install(args: &[&str]) -> Output {
    Command::new(BIN).arg("install").args(args).output().expect("run meshfleet-controller install")
}

pub fn rendered(args: &[&str]) -> String {
    let out = install(args);
    assert!(out.status.success(), "install {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Deserializes into the k8s-openapi type (which checks apiVersion/kind and field types).
fn typed<T: DeserializeOwned + Serialize>(doc: serde_yaml_ng::Value) -> Value {
    let obj: T = serde_yaml_ng::from_value(doc).unwrap_or_else(|e| panic!("{e}"));
    serde_json::to_value(obj).unwrap()
}

/// The manifest's documents, each checked against its kind's type; any other kind fails.
pub fn parse(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|de| {
            let doc = serde_yaml_ng::Value::deserialize(de).expect("valid YAML document");
            match doc["kind"].as_str().expect("document has a kind") {
                "Namespace" => typed::<Namespace>(doc),
                "ServiceAccount" => typed::<ServiceAccount>(doc),
                "ClusterRole" => typed::<ClusterRole>(doc),
                "ClusterRoleBinding" => typed::<ClusterRoleBinding>(doc),
                "Role" => typed::<Role>(doc),
                "RoleBinding" => typed::<RoleBinding>(doc),
                "Secret" => typed::<Secret>(doc),
                "ConfigMap" => typed::<ConfigMap>(doc),
                "Service" => typed::<Service>(doc),
                "Deployment" => typed::<Deployment>(doc),
                "MutatingWebhookConfiguration" => typed::<MutatingWebhookConfiguration>(doc),
                other => panic!("unexpected kind {other}"),
            }
        })
        .collect()
}

fn kinds_and_names(docs: &[Value]) -> Vec<(String, String)> {
    docs.iter().map(|d| (d["kind"].as_str().unwrap().to_owned(), d["metadata"]["name"].as_str().unwrap().to_owned())).collect()
}

pub fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let mut it = docs.iter().filter(|d| d["kind"] == kind);
    let first = it.next().unwrap_or_else(|| panic!("no {kind}"));
    assert!(it.next().is_none(), "more than one {kind}");
    first
}

fn save_artifact(name: &str, contents: &str) {
    let dir = std::env::var_os("MESHFLEET_TEST_ARTIFACTS").map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("meshfleet-test-artifacts"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), contents).unwrap();
}

/// A Secret's data value, decoded.
pub fn secret_data(secret: &Value, key: &str) -> Vec<u8> {
    let secret: Secret = serde_json::from_value(secret.clone()).unwrap();
    secret.data.unwrap().remove(key).unwrap_or_else(|| panic!("no {key}")).0
}

#[test]
fn install_renders_the_control_plane_with_least_privilege_rbac() {
    let yaml = rendered(&["--dev-certs"]);
    save_artifact("mesh-install.yaml", &yaml);
    let docs = parse(&yaml);
    let ns = names::MESH_NAMESPACE;
    let expected = [
        ("Namespace", ns),
        ("ServiceAccount", "meshfleet-controller"),
        ("ClusterRole", "meshfleet-controller-tokenreview"),
        ("ClusterRoleBinding", "meshfleet-controller-tokenreview"),
        ("Role", "meshfleet-controller"),
        ("RoleBinding", "meshfleet-controller"),
        ("ConfigMap", "meshfleet-trust-bundle"),
        ("Secret", "meshfleet-issuer"),
        ("Service", "meshfleet-controller"),
        ("Service", "meshfleet-controller-admin"),
        ("Deployment", "meshfleet-controller"),
    ];
    assert_eq!(kinds_and_names(&docs), expected.map(|(k, n)| (k.to_owned(), n.to_owned())));
    // Everything namespaced is in the mesh's namespace, and every object carries the labels.
    for d in &docs {
        if !["Namespace", "ClusterRole", "ClusterRoleBinding"].contains(&d["kind"].as_str().unwrap()) {
            assert_eq!(d["metadata"]["namespace"], ns, "{}", d["kind"]);
        }
        let labels = &d["metadata"]["labels"];
        for k in ["name", "part-of", "version", "component", "managed-by"] {
            assert!(labels[format!("app.kubernetes.io/{k}")].is_string(), "{} lacks {k}", d["kind"]);
        }
        assert_eq!(labels["app.kubernetes.io/part-of"], "meshfleet");
        assert_eq!(labels["app.kubernetes.io/version"], meshfleet_mesh::VERSION);
    }

    // RBAC: TokenReview create and discovery's list/watch cluster-wide; list/watch of the two
    // objects by name; no wildcard.
    assert_eq!(
        one(&docs, "ClusterRole")["rules"],
        json!([
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["services", "pods"], "verbs": ["list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
        ])
    );
    let rules = one(&docs, "Role")["rules"].as_array().unwrap().clone();
    assert_eq!(
        rules,
        [
            json!({"apiGroups": [""], "resources": ["secrets"], "resourceNames": [names::ISSUER_SECRET], "verbs": ["list", "watch"]}),
            json!({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [names::TRUST_BUNDLE], "verbs": ["list", "watch"]}),
        ]
    );
    assert!(!yaml.contains("'*'") && !yaml.contains("\"*\""), "no wildcard anywhere");
    let subject = json!([{"kind": "ServiceAccount", "name": "meshfleet-controller", "namespace": ns}]);
    for kind in ["ClusterRoleBinding", "RoleBinding"] {
        assert_eq!(one(&docs, kind)["subjects"], subject, "{kind}");
    }

    // The Deployment: the image of this version, configured for Kubernetes, locked down.
    let d = one(&docs, "Deployment");
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "meshfleet-controller");
    let c = &pod["containers"][0];
    assert_eq!(c["image"], format!("meshfleet/controller:{}", meshfleet_mesh::VERSION));
    let env: Vec<(String, Value)> = c["env"].as_array().unwrap().iter().map(|e| (e["name"].as_str().unwrap().to_owned(), e["value"].clone())).collect();
    for (k, v) in [
        ("MESHFLEET_TOKEN_VERIFIER", "kubernetes"),
        ("MESHFLEET_ISSUER_SOURCE", "kubernetes"),
        ("MESHFLEET_DISCOVERY", "true"),
        ("MESHFLEET_TRUST_DOMAIN", "cluster.local"),
    ] {
        assert!(env.contains(&(k.to_owned(), json!(v))), "{k}={v} in {env:?}");
    }
    let sc = &c["securityContext"];
    assert_eq!((&sc["runAsNonRoot"], &sc["readOnlyRootFilesystem"], &sc["allowPrivilegeEscalation"]), (&json!(true), &json!(true), &json!(false)));
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(c["readinessProbe"]["httpGet"], json!({"path": "/ready", "port": "admin"}));
    assert_eq!(c["livenessProbe"]["httpGet"], json!({"path": "/live", "port": "admin"}));
    assert!(c["resources"]["limits"]["memory"].is_string());

    // --dev-certs: an issuer that chains to the rendered anchor, as the controller will check it.
    let secret = one(&docs, "Secret");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let bundle = TrustBundle::from_pem(one(&docs, "ConfigMap")["data"][names::TRUST_BUNDLE_KEY].as_str().unwrap().as_bytes()).unwrap();
    let (cert, key) = (secret_data(secret, names::ISSUER_CERT_KEY), secret_data(secret, names::ISSUER_KEY_KEY));
    check_issuer(&cert, &key, &bundle, SystemTime::now()).expect("the dev issuer chains to the dev anchor");
}

#[test]
fn install_flags_set_version_image_namespace_and_trust_domain() {
    let docs = parse(&rendered(&["--version=0.2.0", "--namespace=mesh", "--trust-domain=example.org", "--replicas=2", "--controller-image=reg.example/ctl:x"]));
    // Without certificates the Secret and ConfigMap are only referenced.
    assert!(docs.iter().all(|d| d["kind"] != "Secret" && d["kind"] != "ConfigMap"));
    let d = one(&docs, "Deployment");
    assert_eq!((&d["metadata"]["namespace"], &d["spec"]["replicas"]), (&json!("mesh"), &json!(2)));
    assert_eq!(d["metadata"]["labels"]["app.kubernetes.io/version"], "0.2.0");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "reg.example/ctl:x");
    assert!(c["env"].as_array().unwrap().contains(&json!({"name": "MESHFLEET_TRUST_DOMAIN", "value": "example.org"})));
    assert_eq!(one(&docs, "RoleBinding")["subjects"][0]["namespace"], "mesh");
    let docs = parse(&rendered(&["--version=0.2.0"]));
    assert_eq!(one(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"], "meshfleet/controller:0.2.0");

    // The referenced objects are named on stderr.
    let err = String::from_utf8(install(&[]).stderr).unwrap();
    assert!(err.contains("meshfleet/meshfleet-issuer") && err.contains("meshfleet/meshfleet-trust-bundle") && err.contains("must exist"), "{err}");
}

#[test]
fn install_renders_the_trust_bundle_into_workload_namespaces_too() {
    let docs = parse(&rendered(&["--dev-certs", "--bundle-namespace=shop", "--bundle-namespace=web"]));
    let bundles: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "meshfleet-trust-bundle").collect();
    let namespaces: Vec<&str> = bundles.iter().map(|d| d["metadata"]["namespace"].as_str().unwrap()).collect();
    assert_eq!(namespaces, ["meshfleet", "shop", "web"]);
    assert!(bundles.iter().all(|d| d["data"] == bundles[0]["data"] && d["data"]["ca-bundle.crt"].as_str().is_some_and(|p| p.contains("BEGIN CERTIFICATE"))));
    // The controller's RBAC does not grow: it reads only its own namespace's copy.
    assert_eq!(one(&docs, "Role")["metadata"]["namespace"], "meshfleet");
}

#[test]
fn install_refuses_bad_pem_and_mismatched_keys_clearly() {
    let pki = Pki::new();
    let other = mint::new_anchor(&CaProfile::new("other", YEAR)).unwrap();
    let dir = pki.path("");
    let write = |name: &str, s: &str| {
        std::fs::write(dir.join(name), s).unwrap();
        dir.join(name).display().to_string()
    };
    let issuer = mint::new_issuer(&pki.anchor, &CaProfile::new("issuer", YEAR)).unwrap();
    let (anchors, cert, key) = (write("a.pem", &pki.anchor.cert_pem), write("i.crt", &issuer.cert_pem), write("i.key", &issuer.key_pem));
    let (garbage, other_key, other_anchor) = (write("bad.pem", "not PEM\n"), write("o.key", &other.key_pem), write("o.pem", &other.cert_pem));
    let ok = rendered(&["--trust-anchors-file", &anchors, "--issuer-cert-file", &cert, "--issuer-key-file", &key]);
    assert_eq!(parse(&ok).iter().filter(|d| d["kind"] == "Secret" || d["kind"] == "ConfigMap").count(), 2);
    for (args, says) in [
        (vec!["--trust-anchors-file", &garbage], "--trust-anchors-file"),
        (vec!["--trust-anchors-file", &anchors, "--issuer-cert-file", &garbage, "--issuer-key-file", &key], "--issuer-cert-file"),
        (vec!["--trust-anchors-file", &anchors, "--issuer-cert-file", &cert, "--issuer-key-file", &other_key], "does not match"),
        (vec!["--trust-anchors-file", &other_anchor, "--issuer-cert-file", &cert, "--issuer-key-file", &key], "--issuer-cert-file"),
    ] {
        let out = install(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(says) && !err.contains("panicked"), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "nothing is rendered on an error");
    }
}

/// The controller as the Deployment configures it (its environment and arguments), on local
/// ports, against `kubeconfig`.
fn spawn_as_deployed(deployment: &Value, pki: &Pki, kubeconfig: &Path) -> Process {
    let c = &deployment["spec"]["template"]["spec"]["containers"][0];
    let namespace = deployment["metadata"]["namespace"].as_str().unwrap();
    let mut envs: Vec<(String, PathBuf)> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.namespace") => namespace,
                Some(other) => panic!("unexpected fieldRef {other}"),
                None => e["value"].as_str().unwrap(),
            };
            (e["name"].as_str().unwrap().to_owned(), PathBuf::from(value))
        })
        .filter(|(k, _)| !k.ends_with("_ADDR"))
        .collect();
    envs.push(("KUBECONFIG".into(), kubeconfig.to_owned()));
    let envs: Vec<(&str, &Path)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_path())).collect();
    let mut args: Vec<String> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect();
    args.extend(["--grpc-addr=127.0.0.1:0".into(), "--admin-addr=127.0.0.1:0".into()]);
    spawn(BIN, &args, &envs, &pki.path("deployed.ready"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_controller_runs_with_only_the_manifests_permissions() {
    let yaml = rendered(&["--dev-certs"]);
    let kube = FakeKube::start().await.unwrap();
    // Applied as a cluster would; discovery then lists and watches with the manifest's RBAC.
    let docs: Vec<Value> = parse(&yaml);
    for d in &docs {
        kube.apply_yaml(&serde_yaml_ng::to_string(d).unwrap()).unwrap();
    }
    // A Secret in the namespace the controller must not (and cannot) read.
    kube.apply_yaml("apiVersion: v1\nkind: Secret\nmetadata: {name: other, namespace: meshfleet}\nstringData: {k: v}\n").unwrap();
    kube.enforce_rbac(true);
    kube.add_token("controller-sa-token", User::service_account(names::MESH_NAMESPACE, names::CONTROLLER_DEPLOYMENT));
    let pki = Pki::new();
    let kubeconfig = pki.path("kubeconfig");
    kube.write_kubeconfig(&kubeconfig, "controller-sa-token").unwrap();

    let controller = spawn_as_deployed(one(&docs, "Deployment"), &pki, &kubeconfig);
    let ready = format!("http://{}/ready", controller.addr("admin"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(&ready).await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "the controller never became ready; denials: {:?}", kube.denials());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Certify goes through TokenReview: an unknown token is answered "unauthenticated" by the API
    // server (a denied TokenReview would make it "unavailable").
    let anchors = one(&docs, "ConfigMap")["data"][names::TRUST_BUNDLE_KEY].as_str().unwrap().to_owned();
    let bundle = TrustBundle::from_pem(anchors.as_bytes()).unwrap();
    let server_id = "spiffe://cluster.local/ns/meshfleet/sa/meshfleet-controller".to_string();
    let tls = Arc::new(meshfleet_mesh::tls::client_config(&bundle, Some(server_id), None, &[b"h2"]).unwrap());
    let channel = meshfleet_mesh::identity::channel(&controller.addr("grpc").to_string(), Arc::new(move || tls.clone())).unwrap();
    let key = mint::new_key().unwrap();
    let req = pb::CertifyRequest { token: "not-a-service-account-token".into(), csr_der: meshfleet_pki::csr::new_csr(&key).unwrap() };
    let status = IdentityClient::new(channel.clone()).certify(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
    // Discovery reads Services (and slices and pods) cluster-wide: it knows its own Service.
    let target = format!("{}.{}.svc.cluster.local:{}", names::CONTROLLER_DEPLOYMENT, names::MESH_NAMESPACE, meshfleet_mesh::controller::install::GRPC_PORT);
    let resolve = meshfleet_mesh::destination::pb::ResolveRequest { target };
    let mut answers = DestinationClient::new(channel).resolve(resolve).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), answers.message()).await;
    assert!(first.is_ok_and(|m| m.unwrap().unwrap().exists), "discovery lists Services with the manifest's RBAC; denials: {:?}", kube.denials());
    assert_eq!(kube.denials(), Vec::<String>::new(), "the manifest grants everything the controller asks for");
}

/// `--injector`: the serving Secret, the Service port, the namespaces rule, the controller's
/// injector flags and the webhook; and the rendered certificate really serves the Service's
/// name to a client trusting only the webhook's caBundle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_injector_renders_the_webhook_and_a_working_certificate() {
    let yaml = rendered(&["--dev-certs", "--injector", "--version=0.3.0"]);
    save_artifact("mesh-install-injector.yaml", &yaml);
    save_artifact("mesh-install-injector.yaml", &yaml);
    let docs = parse(&yaml);
    let names_of = kinds_and_names(&docs);
    assert!(names_of.contains(&("Secret".into(), "meshfleet-injector-tls".into())), "{names_of:?}");
    let webhook = one(&docs, "MutatingWebhookConfiguration");
    assert!(webhook["metadata"].get("namespace").is_none());
    let hook = &webhook["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(hook["timeoutSeconds"], 5);
    assert_eq!(hook["clientConfig"]["service"], json!({"name": "meshfleet-controller", "namespace": "meshfleet", "path": "/inject", "port": 8443}));
    assert_eq!(hook["rules"][0]["resources"], json!(["pods"]));
    assert_eq!(hook["rules"][0]["operations"], json!(["CREATE"]));
    let excluded = &hook["namespaceSelector"]["matchExpressions"][0];
    assert_eq!((&excluded["operator"], &excluded["values"][0]), (&json!("NotIn"), &json!("meshfleet")));
    let grpc = docs.iter().find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "meshfleet-controller").unwrap();
    assert!(grpc["spec"]["ports"].as_array().unwrap().iter().any(|p| p["name"] == "injector" && p["port"] == 8443));
    let rules = &one(&docs, "ClusterRole")["rules"];
    assert!(rules.as_array().unwrap().iter().any(|r| r["resources"] == json!(["namespaces"]) && r["verbs"] == json!(["get"])), "{rules}");
    let c = &one(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    let env = c["env"].as_array().unwrap();
    assert!(env.contains(&json!({"name": "MESHFLEET_INJECTOR_ADDR", "value": "0.0.0.0:8443"})));
    assert!(env.contains(&json!({"name": "MESHFLEET_PROXY_VERSION", "value": "0.3.0"})));
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/var/run/meshfleet/injector");

    // The Secret's certificate, served by a real controller, verifies against the caBundle
    // under the Service's DNS name.
    let pki = Pki::new();
    let secret = docs.iter().find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == "meshfleet-injector-tls").unwrap();
    std::fs::write(pki.path("injector.crt"), secret_data(secret, "tls.crt")).unwrap();
    std::fs::write(pki.path("injector.key"), secret_data(secret, "tls.key")).unwrap();
    let cert = format!("--injector-cert={}", pki.path("injector.crt").display());
    let key = format!("--injector-key={}", pki.path("injector.key").display());
    let controller = spawn_controller_with_env(&pki, &["--injector-addr=127.0.0.1:0", &cert, &key], &[("KUBECONFIG", &pki.path("no-such-kubeconfig"))]);
    let ca: k8s_openapi::ByteString = serde_json::from_value(hook["clientConfig"]["caBundle"].clone()).unwrap();
    let host = "meshfleet-controller.meshfleet.svc";
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca.0).unwrap())
        .resolve(host, controller.addr("injector"))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u1", "object": {"kind": "Pod"}}});
    let url = format!("https://{host}:{}/inject", controller.addr("injector").port());
    let answer: Value = client.post(url).json(&review).send().await.unwrap().json().await.unwrap();
    assert_eq!(answer["response"]["uid"], "u1");
    assert_eq!(answer["response"]["allowed"], true);

    // Without --dev-certs too: the webhook's CA is made for it, whatever the mesh's anchors are.
    let out = install(&["--injector"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let docs = parse(&String::from_utf8(out.stdout).unwrap());
    let secret = docs.iter().find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == "meshfleet-injector-tls").expect("the serving Secret");
    let hook = one(&docs, "MutatingWebhookConfiguration");
    let ca: k8s_openapi::ByteString = serde_json::from_value(hook["webhooks"][0]["clientConfig"]["caBundle"].clone()).unwrap();
    let leaf = meshfleet_pki::pem::certs_from_pem(&secret_data(secret, "tls.crt")).unwrap().remove(0);
    let roots = meshfleet_pki::verify::TrustBundle::from_pem(&ca.0).unwrap();
    let now = rustls::pki_types::UnixTime::now();
    assert!(meshfleet_pki::verify::verify_chain(&leaf, &[], roots.roots(), now).is_ok(), "the serving certificate chains to the caBundle");
}
