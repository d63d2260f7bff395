//! End to end on Kubernetes: the real server, the fake Kubernetes API server holding a mesh and
//! enforcing the RBAC of the rendered install manifest, and the real agent using kube-rs.
//! Proxy admin endpoints are served by a tiny in-test HTTP server speaking the proxy's
//! Prometheus text (one per pod, on the pod's own loopback IP), not by meshfleet-proxy.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshfleet_agent::k8s::{self, AgentConfig};
use meshfleet_fake_kube::{Config, FakeKube, User};
use meshfleet_server::install::{self, InstallParams};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{Engine, Login, TestApp};

fn deployment(ns: &str, name: &str, replicas: i32, admin_port: u16) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [
                {"name": "app", "image": format!("example/{name}:1")},
                {"name": "meshfleet-proxy", "image": "meshfleet/proxy:0.1.0", "ports": [{"name": "admin", "containerPort": admin_port}]}]}}}})
}

/// Serves Linkerd-style proxy metrics on every running pod's IP; each scrape adds 10 inbound
/// requests (1 failing) with latencies in the 10-20 ms bucket.
fn serve_proxy_admins(kube: Arc<FakeKube>, port: u16) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut serving = HashSet::new();
        loop {
            for p in kube.list("v1", "Pod", None) {
                let Some(ip) = p.pointer("/status/podIP").and_then(Value::as_str).map(str::to_owned) else { continue };
                if !serving.insert(ip.clone()) {
                    continue;
                }
                let Ok(listener) = tokio::net::TcpListener::bind((ip.as_str(), port)).await else { continue };
                let scrapes = Arc::new(AtomicU64::new(0));
                tokio::spawn(async move {
                    while let Ok((mut sock, _)) = listener.accept().await {
                        let n = scrapes.fetch_add(1, Ordering::Relaxed) + 1;
                        let mut buf = [0u8; 2048];
                        let _ = sock.read(&mut buf).await;
                        let (req, fail) = (n * 10, n);
                        let body = format!(
                            "# TYPE request_total counter\nrequest_total{{direction=\"inbound\",tls=\"true\"}} {req}\nrequest_total{{direction=\"outbound\",tls=\"true\"}} 7\n\
                             response_total{{direction=\"inbound\",status_code=\"200\",classification=\"success\"}} {}\nresponse_total{{direction=\"inbound\",status_code=\"500\",classification=\"failure\"}} {fail}\n\
                             response_latency_ms_bucket{{direction=\"inbound\",le=\"10\"}} 0\nresponse_latency_ms_bucket{{direction=\"inbound\",le=\"20\"}} {req}\nresponse_latency_ms_bucket{{direction=\"inbound\",le=\"+Inf\"}} {req}\n",
                            req - fail
                        );
                        let resp = format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                        let _ = sock.write_all(resp.as_bytes()).await;
                    }
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

async fn within<F, Fut>(limit: Duration, check: F) -> Option<Duration>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn issuer_pem() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["identity.meshfleet.cluster.local".into()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "meshfleet issuer");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

struct Setup {
    app: TestApp,
    owner: Login,
    cluster: String,
    kube: Arc<FakeKube>,
    vars: HashMap<String, String>,
}

async fn setup(admin_port: u16) -> Setup {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let owner = app.owner("ops@example.com").await;
    let created = app.create_cluster(&owner, "prod-1", json!({})).await;
    let cluster = created["cluster"]["id"].as_str().unwrap().to_owned();
    let gateway = format!("https://{}", app.state_gateway());
    let ca = app.state.pki.gateway_ca_pem.clone();
    let manifest = install::render(&InstallParams {
        cluster_id: &cluster,
        cluster_name: "prod-1",
        org_id: &owner.org,
        bootstrap_token: created["bootstrap_token"]["token"].as_str().unwrap(),
        api_url: &app.base,
        gateway_address: &gateway,
        gateway_ca_pem: &ca,
        agent_image: "meshfleet/meshfleet-agent:test",
        mesh_namespace: "meshfleet",
    });
    let kube = Arc::new(FakeKube::start_with(Config { ready_delay: Duration::from_millis(200), bookmark_interval: Duration::from_secs(1), ..Config::default() }).await.unwrap());
    let applied = kube.apply_yaml(&manifest).unwrap();
    // The agent reads exactly the install Secret's keys (what `envFrom` gives it in a cluster).
    let secret = applied.iter().find(|o| o["kind"] == "Secret").unwrap();
    use base64::Engine as _;
    let mut vars: HashMap<String, String> = secret["data"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap()).unwrap())).collect();
    for (k, v) in [("MESHFLEET_POD_NAMESPACE", "meshfleet-system"), ("MESHFLEET_AGENT_LISTEN", "127.0.0.1:0"), ("MESHFLEET_SCRAPE_INTERVAL_MS", "500"), ("MESHFLEET_DEBOUNCE_MS", "100"), ("MESHFLEET_LEASE_DURATION_MS", "3000"), ("MESHFLEET_LEASE_RENEW_MS", "500")] {
        vars.insert(k.into(), v.into());
    }

    let (cert, key) = issuer_pem();
    for obj in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "meshfleet"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"meshfleet.io/inject": "enabled"}}}),
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}),
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-2"}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "meshfleet-controller", "namespace": "meshfleet"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "controller"}}, "template": {"metadata": {"labels": {"app": "controller"}}, "spec": {"containers": [{"name": "controller", "image": "meshfleet/controller:0.1.0"}]}}}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "meshfleet-issuer", "namespace": "meshfleet"}, "stringData": {"tls.crt": cert, "tls.key": key}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "meshfleet-trust-bundle", "namespace": "meshfleet"}, "data": {"ca-bundle.crt": cert}}),
        deployment("shop", "web", 2, admin_port),
        deployment("shop", "api", 1, admin_port),
    ] {
        kube.apply_yaml(&serde_yaml_ng::to_string(&obj).unwrap()).unwrap();
    }
    kube.enforce_rbac(true);
    kube.add_token("agent-sa-token", User::service_account(install::AGENT_NAMESPACE, "meshfleet-agent"));
    Setup { app, owner, cluster, kube, vars }
}

async fn start_agent(s: &Setup, pod: &str) -> k8s::Running {
    let mut vars = s.vars.clone();
    vars.insert("MESHFLEET_POD_NAME".into(), pod.into());
    let config = AgentConfig::from_vars(&vars).expect("the install Secret configures the agent");
    k8s::start(config, s.kube.client_for("agent-sa-token").await.unwrap()).await.unwrap()
}

fn pod_names(inv: &Value) -> HashSet<String> {
    inv["pods"].as_array().map(|a| a.iter().filter_map(|p| p["name"].as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

fn fake_meshed(kube: &FakeKube) -> HashSet<String> {
    kube.list("v1", "Pod", Some("shop")).iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_agent_inventory_metrics_identity_and_failover_under_the_install_rbac() {
    let port = 20_000 + (std::process::id() % 40_000) as u16;
    let s = setup(port).await;
    let _admins = serve_proxy_admins(s.kube.clone(), port);
    let inv_path = format!("/api/v1/clusters/{}/inventory", s.cluster);
    let inventory = || async { s.app.get(&inv_path, &s.owner.access).await.1 };
    assert!(within(Duration::from_secs(5), || async { fake_meshed(&s.kube).len() == 3 }).await.is_some(), "the mesh's pods exist");

    // First start: registers with the bootstrap token; the inventory shows within 5 s.
    let a = start_agent(&s, "meshfleet-agent-a").await;
    let took = within(Duration::from_secs(5), || async { let inv = inventory().await; pod_names(&inv) == fake_meshed(&s.kube) })
        .await
        .unwrap_or_else(|| panic!("inventory within 5 s; have {}", futures::executor::block_on(inventory())));
    let inv = inventory().await;
    let text = inv.to_string();
    assert!(text.contains("meshfleet issuer"), "certificate metadata: {inv}");
    assert!(!text.contains("PRIVATE KEY"), "no key material leaves the cluster");
    assert!(text.contains("Deployment/web"), "{inv}");
    let (_, c) = s.app.get(&format!("/api/v1/clusters/{}", s.cluster), &s.owner.access).await;
    assert_eq!(c["status"], "connected", "{c}");
    assert_eq!(c["kubernetes_version"], "v1.33.1");
    eprintln!("inventory visible after {took:?}");

    // Deleting a pod (and its replacement appearing) shows within 2 s.
    let victim = fake_meshed(&s.kube).into_iter().find(|n| n.starts_with("web-")).unwrap();
    s.kube.delete("v1", "Pod", "shop", &victim).unwrap();
    let took = within(Duration::from_secs(2), || async { !pod_names(&inventory().await).contains(&victim) }).await;
    assert!(took.is_some(), "deleted pod gone from the API within 2 s");
    let took = within(Duration::from_secs(3), || async { let want = fake_meshed(&s.kube); want.len() == 3 && pod_names(&inventory().await) == want }).await;
    assert!(took.is_some(), "replacement pod shows");

    // Golden metrics from the proxies' admin endpoints reach the API.
    let metrics_path = format!("/api/v1/clusters/{}/metrics", s.cluster);
    let took = within(Duration::from_secs(10), || async {
        let (_, m) = s.app.get(&metrics_path, &s.owner.access).await;
        m.as_array().is_some_and(|rows| rows.iter().any(|r| r["workload"] == "Deployment/web" && r["requests"].as_i64().unwrap_or(0) > 0 && r["failures"].as_i64().unwrap_or(0) > 0))
    })
    .await;
    assert!(took.is_some(), "metrics: {}", s.app.get(&metrics_path, &s.owner.access).await.1);

    // collect-diagnostics through the API.
    let (_, cmd) = s.app.post(&format!("/api/v1/clusters/{}/commands", s.cluster), &s.owner.access, json!({"kind": "collect-diagnostics"})).await;
    let cmd_path = format!("/api/v1/clusters/{}/commands/{}", s.cluster, cmd["id"].as_str().unwrap());
    assert!(within(Duration::from_secs(5), || async { s.app.get(&cmd_path, &s.owner.access).await.1["state"] == "succeeded" }).await.is_some());
    assert_eq!(s.app.get(&cmd_path, &s.owner.access).await.1["output"]["meshed_pods"], 3);

    // restart-workloads through the API: every meshed pod is replaced, under the manifest's RBAC.
    let before = fake_meshed(&s.kube);
    let (status, cmd) = s
        .app
        .post(&format!("/api/v1/clusters/{}/commands", s.cluster), &s.owner.access, json!({"kind": "restart-workloads", "params": {"namespace": "shop", "batch_size": 1}}))
        .await;
    assert_eq!(status.as_u16(), 201, "{cmd}");
    let cmd_path = format!("/api/v1/clusters/{}/commands/{}", s.cluster, cmd["id"].as_str().unwrap());
    let restarted = within(Duration::from_secs(60), || async { s.app.get(&cmd_path, &s.owner.access).await.1["state"] == "succeeded" }).await;
    assert!(restarted.is_some(), "restart-workloads: {}", s.app.get(&cmd_path, &s.owner.access).await.1);
    assert!(within(Duration::from_secs(10), || async { let now = fake_meshed(&s.kube); now.len() == 3 && now.is_disjoint(&before) }).await.is_some(), "every pod was replaced");

    // Restart: the bootstrap token is spent, so connecting again proves the stored identity.
    a.shutdown().await;
    let a = start_agent(&s, "meshfleet-agent-a").await;
    assert!(within(Duration::from_secs(10), || async { a.stats().is_some_and(|st| st.connected) }).await.is_some(), "restarted agent reconnects with its stored identity");

    // Failover: a second replica waits; when the leader dies it takes over within 15 s.
    let b = start_agent(&s, "meshfleet-agent-b").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(a.is_leader() && !b.is_leader(), "one leader");
    assert!(b.stats().is_none(), "only the leader connects");
    a.shutdown().await;
    let took = within(Duration::from_secs(15), || async { b.stats().is_some_and(|st| st.connected) }).await;
    assert!(took.is_some(), "the standby leads and connects within 15 s");
    eprintln!("failover took {took:?}");
    s.kube.delete("v1", "Pod", "shop", &fake_meshed(&s.kube).into_iter().next().unwrap()).unwrap();
    assert!(within(Duration::from_secs(5), || async { let want = fake_meshed(&s.kube); want.len() == 3 && pod_names(&inventory().await) == want }).await.is_some(), "the new leader reports changes");

    assert_eq!(s.kube.denials(), Vec::<String>::new(), "the agent stays within the install manifest's RBAC");
    b.shutdown().await;
}
