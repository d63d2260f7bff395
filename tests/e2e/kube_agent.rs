//! End to end on Kubernetes: the real server, the fake Kubernetes API server holding a mesh
//! (the controller Deployment, meshed workloads) and enforcing the RBAC of the rendered install
//! manifest, and the real agent using kube-rs. Where golden metrics are the point, the meshed
//! pods' admin endpoints are real `meshfleet-proxy` processes carrying real mTLS traffic
//! (`mesh`); elsewhere nothing listens there and the agent's scrapes simply fail.

mod certificates;
mod commands;
mod mesh;
mod proxy_identity;
mod rbac;
mod upgrades;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshfleet_agent::k8s::{self, AgentConfig};
use meshfleet_fake_kube::{Config, FakeKube, User};
use meshfleet_server::install;
use meshfleet_test_support::app::{ApiClient, Engine, Login, TestApp, TestDb};
use meshfleet_test_support::process::within;
use meshfleet_test_support::server::{Restartable, ServerBin};
use serde_json::{json, Value};

fn deployment(ns: &str, name: &str, replicas: i32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"serviceAccountName": name, "containers": [
                {"name": "app", "image": format!("example/{name}:1")},
                {"name": "meshfleet-proxy", "image": "meshfleet/proxy:0.1.0", "ports": [{"name": "admin", "containerPort": mesh::ADMIN_PORT}]}]}}}})
}

fn issuer_pem() -> (String, String) {
    let ca = meshfleet_pki::mint::new_anchor(&meshfleet_pki::mint::CaProfile::new("meshfleet issuer", Duration::from_secs(365 * 86400))).unwrap();
    (ca.cert_pem, ca.key_pem)
}

struct Setup {
    /// The server's API, at the same address across restarts.
    app: ApiClient,
    owner: Login,
    /// The organization's first cluster; its fields read as the setup's own (`s.kube`).
    home: Cluster,
    server: Server,
}

/// The server under test: in this process (`None` only while it restarts), or its binary as a
/// child process, which a test can kill.
enum Server {
    InProcess(Option<TestApp>),
    Binary(Restartable),
}

impl Setup {
    /// Stops the in-process server and starts it again on the same addresses, database and
    /// sealing key, as a restarted replica comes back (`TestApp::restart`).
    async fn restart(&mut self) {
        let Server::InProcess(app) = &mut self.server else { panic!("a graceful restart of the in-process server") };
        let restarted = app.take().expect("the server runs").restart().await;
        *app = Some(restarted);
    }

    /// The server binary: SIGKILL now (it ends mid-whatever, its leases held), then the same
    /// server again after `down`. Returns once the new process announces its addresses.
    async fn kill_and_start(&mut self, down: Duration) {
        let Server::Binary(server) = &mut self.server else { panic!("a kill needs the server binary") };
        server.kill();
        tokio::time::sleep(down).await;
        // Starting blocks until it announces itself; the agents and the traffic run on meanwhile.
        tokio::task::block_in_place(|| server.start());
    }
}

/// One cluster of the test's organization: its id, the fake API server holding it (with the
/// install manifest applied and its RBAC enforced) and its agent's settings.
#[derive(Clone)]
struct Cluster {
    cluster: String,
    kube: Arc<FakeKube>,
    vars: HashMap<String, String>,
}

impl std::ops::Deref for Setup {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.home
    }
}

async fn setup() -> Setup {
    setup_with(|_| {}).await
}

async fn setup_with(tweak: impl FnOnce(&mut meshfleet_server::config::Config)) -> Setup {
    let app = TestApp::spawn_with(TestDb::new(Engine::Sqlite).await, tweak).await;
    setup_on(app.api.clone(), Server::InProcess(Some(app))).await
}

/// The setup with the `meshfleet-server` binary over `engine`, with extra MESHFLEET_* settings.
async fn setup_binary(engine: Engine, env: &[(&str, &str)]) -> Setup {
    let bin = tokio::task::spawn_blocking(ServerBin::built).await.unwrap();
    let mut server = bin.restartable(TestDb::new(engine).await, env);
    tokio::task::block_in_place(|| server.start());
    setup_on(ApiClient::new(server.url()), Server::Binary(server)).await
}

async fn setup_on(app: ApiClient, server: Server) -> Setup {
    let owner = app.owner("ops@example.com").await;
    let home = join_cluster(&app, &owner, "prod-1").await;
    Setup { app, owner, home, server }
}

/// Creates a cluster of `owner`'s organization through the API and a fake API server for it
/// holding a mesh (the controller Deployment, shop/web with two pods, shop/api with one), with
/// the cluster's install manifest from the API (shop meshed) applied and its RBAC enforced.
async fn join_cluster(app: &ApiClient, owner: &Login, name: &str) -> Cluster {
    let created = app.create_cluster(owner, name, json!({})).await;
    let cluster = created["cluster"]["id"].as_str().unwrap().to_owned();
    let (status, manifest) = app.get(&format!("/api/v1/clusters/{cluster}/install.yaml?meshed_namespaces=shop"), &owner.access).await;
    let Value::String(manifest) = manifest else { panic!("install.yaml: {status} {manifest}") };
    assert_eq!(status.as_u16(), 200, "{manifest}");
    let kube = Arc::new(
        FakeKube::start_with(Config { ready_delay: Duration::from_millis(200), bookmark_interval: Duration::from_secs(1), ..Config::default() }).await.unwrap(),
    );
    let applied = kube.apply_yaml(&manifest).unwrap();
    // The agent reads exactly the install Secret's keys (what `envFrom` gives it in a cluster).
    let secret = applied.iter().find(|o| o["kind"] == "Secret").unwrap();
    use base64::Engine as _;
    let mut vars: HashMap<String, String> = secret["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap()).unwrap()))
        .collect();
    for (k, v) in [
        ("MESHFLEET_POD_NAMESPACE", "meshfleet-system"),
        ("MESHFLEET_AGENT_LISTEN", "127.0.0.1:0"),
        ("MESHFLEET_SCRAPE_INTERVAL_MS", "500"),
        ("MESHFLEET_DEBOUNCE_MS", "100"),
        ("MESHFLEET_LEASE_DURATION_MS", "3000"),
        ("MESHFLEET_LEASE_RENEW_MS", "500"),
    ] {
        vars.insert(k.into(), v.into());
    }

    let (cert, key) = issuer_pem();
    for obj in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "meshfleet"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"meshfleet.io/inject": "enabled"}}}),
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}),
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-2"}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "meshfleet-controller", "namespace": "meshfleet"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "controller"}}, "template": {"metadata": {"labels": {"app": "controller"}}, "spec": {"containers": [{"name": "controller", "image": "meshfleet/controller:0.1.0",
                "env": [{"name": "MESHFLEET_PROXY_VERSION", "value": "0.1.0"}]}]}}}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "meshfleet-issuer", "namespace": "meshfleet"}, "stringData": {"tls.crt": cert, "tls.key": key}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "meshfleet-trust-bundle", "namespace": "meshfleet"}, "data": {"ca-bundle.crt": cert}}),
        deployment("shop", "web", 2),
        deployment("shop", "api", 1),
    ] {
        kube.apply_yaml(&serde_yaml_ng::to_string(&obj).unwrap()).unwrap();
    }
    kube.enforce_rbac(true);
    kube.add_token("agent-sa-token", User::service_account(install::AGENT_NAMESPACE, "meshfleet-agent"));
    // The fake's simulator makes the Deployments' pods on its next tick: an agent connected
    // before then (the gateway answers in milliseconds) would find and report none of them.
    let replicas: i64 = kube.list("apps/v1", "Deployment", None).iter().map(|d| d["spec"]["replicas"].as_i64().unwrap_or(1)).sum();
    let made = within(Duration::from_secs(10), || async { kube.list("v1", "Pod", None).len() as i64 == replicas }).await;
    assert!(made.is_some(), "the fake made the setup's pods: {:?}", kube.list("v1", "Pod", None));
    Cluster { cluster, kube, vars }
}

async fn start_agent(c: &Cluster, pod: &str) -> k8s::Running {
    let mut vars = c.vars.clone();
    vars.insert("MESHFLEET_POD_NAME".into(), pod.into());
    let config = AgentConfig::from_vars(&vars).expect("the install Secret configures the agent");
    k8s::start(config, c.kube.client_for("agent-sa-token").await.unwrap()).await.unwrap()
}

/// Starts the agent and waits until it is connected and the API shows every meshed pod.
async fn start_connected_agent(s: &Setup) -> k8s::Running {
    start_connected_agent_in(s, s).await
}

/// `start_connected_agent` for another cluster `c` of the setup's organization.
async fn start_connected_agent_in(s: &Setup, c: &Cluster) -> k8s::Running {
    let a = start_agent(c, "meshfleet-agent-a").await;
    let path = format!("/api/v1/clusters/{}/inventory", c.cluster);
    let shown = within(Duration::from_secs(10), || async {
        a.stats().is_some_and(|st| st.connected) && pod_names(&s.app.get(&path, &s.owner.access).await.1) == fake_meshed(&c.kube)
    })
    .await;
    assert!(shown.is_some(), "agent connected and inventory shown: {}", s.app.get(&path, &s.owner.access).await.1);
    a
}

fn pod_names(inv: &Value) -> HashSet<String> {
    inv["pods"].as_array().map(|a| a.iter().filter_map(|p| p["name"].as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

fn fake_meshed(kube: &FakeKube) -> HashSet<String> {
    kube.list("v1", "Pod", Some("shop")).iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_owned()).collect()
}

/// Creates a command through the API; returns its path.
async fn send_command(s: &Setup, kind: &str, params: Value) -> String {
    send_command_in(s, s, kind, params).await
}

/// `send_command` to another cluster `c` of the setup's organization.
async fn send_command_in(s: &Setup, c: &Cluster, kind: &str, params: Value) -> String {
    let (status, cmd) = s.app.post(&format!("/api/v1/clusters/{}/commands", c.cluster), &s.owner.access, json!({"kind": kind, "params": params})).await;
    assert_eq!(status.as_u16(), 201, "{cmd}");
    format!("/api/v1/clusters/{}/commands/{}", c.cluster, cmd["id"].as_str().unwrap())
}

/// Polls a command until it leaves pending/running; returns it and every progress value seen
/// while it ran.
async fn finish(s: &Setup, path: &str, limit: Duration) -> (Value, Vec<i64>) {
    let deadline = Instant::now() + limit;
    let mut progress = Vec::new();
    loop {
        let (_, c) = s.app.get(path, &s.owner.access).await;
        match c["state"].as_str() {
            Some("running") => {
                let p = c["progress"].as_i64().unwrap_or(0);
                if progress.last() != Some(&p) {
                    progress.push(p);
                }
            }
            Some("pending" | "delivered") => {}
            _ => return (c, progress),
        }
        assert!(Instant::now() < deadline, "command still {}: {c}", c["state"]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_agent_inventory_identity_and_failover_under_the_install_rbac() {
    let s = setup().await;
    let inv_path = format!("/api/v1/clusters/{}/inventory", s.cluster);
    let inventory = || async { s.app.get(&inv_path, &s.owner.access).await.1 };
    assert!(within(Duration::from_secs(5), || async { fake_meshed(&s.kube).len() == 3 }).await.is_some(), "the mesh's pods exist");

    // First start: registers with the bootstrap token; the inventory shows within 5 s.
    let a = start_agent(&s, "meshfleet-agent-a").await;
    let took = within(Duration::from_secs(5), || async {
        let inv = inventory().await;
        pod_names(&inv) == fake_meshed(&s.kube)
    })
    .await
    .unwrap_or_else(|| panic!("inventory within 5 s; have {}", futures::executor::block_on(inventory())));
    let inv = inventory().await;
    let text = inv.to_string();
    assert!(text.contains("meshfleet issuer"), "certificate metadata: {inv}");
    assert!(!text.contains("PRIVATE KEY"), "no key material leaves the cluster");
    assert!(text.contains("Deployment/web"), "{inv}");
    assert_eq!(inv["facts"]["pods_without_proxy"], json!([]), "every pod of shop is meshed: {inv}");

    // Injection coverage: a pod without the proxy in a namespace with injection on is counted
    // and named, and is a health finding; one opted out, or elsewhere, is not.
    let bare = |ns: &str, name: &str, annotations: Value| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "batch:1"}]}})
    };
    for pod in
        [bare("shop", "batch-1", json!({})), bare("shop", "opted-out", json!({"meshfleet.io/inject": "disabled"})), bare("default", "elsewhere", json!({}))]
    {
        s.kube.apply(pod).unwrap();
    }
    let coverage = json!([{"namespace": "shop", "pods": 1, "examples": ["batch-1"]}]);
    let covered = within(Duration::from_secs(5), || async { inventory().await["facts"]["pods_without_proxy"] == coverage }).await;
    assert!(covered.is_some(), "coverage within 5 s: {}", inventory().await);
    let (_, health) = s.app.get(&format!("/api/v1/clusters/{}/health", s.cluster), &s.owner.access).await;
    let finding = health["findings"].as_array().and_then(|f| f.iter().find(|f| f["check"] == "injection").cloned());
    assert_eq!(finding.as_ref().map(|f| (&f["object"], &f["severity"])), Some((&json!("Namespace/shop"), &json!("warning"))), "{health}");
    for (ns, name) in [("shop", "batch-1"), ("shop", "opted-out"), ("default", "elsewhere")] {
        s.kube.delete("v1", "Pod", ns, name).unwrap();
    }
    assert!(
        within(Duration::from_secs(5), || async { inventory().await["facts"]["pods_without_proxy"] == json!([]) }).await.is_some(),
        "a deleted pod leaves the count"
    );
    let (_, c) = s.app.get(&format!("/api/v1/clusters/{}", s.cluster), &s.owner.access).await;
    assert_eq!(c["status"], "connected", "{c}");
    assert_eq!(c["kubernetes_version"], "v1.33.1");
    eprintln!("inventory visible after {took:?}");

    // Deleting a pod (and its replacement appearing) shows within 2 s.
    let victim = fake_meshed(&s.kube).into_iter().find(|n| n.starts_with("web-")).unwrap();
    s.kube.delete("v1", "Pod", "shop", &victim).unwrap();
    let took = within(Duration::from_secs(2), || async { !pod_names(&inventory().await).contains(&victim) }).await;
    assert!(took.is_some(), "deleted pod gone from the API within 2 s");
    let took = within(Duration::from_secs(3), || async {
        let want = fake_meshed(&s.kube);
        want.len() == 3 && pod_names(&inventory().await) == want
    })
    .await;
    assert!(took.is_some(), "replacement pod shows");

    // collect-diagnostics through the API.
    let path = send_command(&s, "collect-diagnostics", json!({})).await;
    let (cmd, _) = finish(&s, &path, Duration::from_secs(5)).await;
    assert_eq!((&cmd["state"], &cmd["output"]["meshed_pods"]), (&json!("succeeded"), &json!(3)), "{cmd}");

    // Restart: the bootstrap token is spent, so connecting again proves the stored identity.
    a.shutdown().await;
    let a = start_agent(&s, "meshfleet-agent-a").await;
    assert!(
        within(Duration::from_secs(10), || async { a.stats().is_some_and(|st| st.connected) }).await.is_some(),
        "restarted agent reconnects with its stored identity"
    );

    // Failover: a second replica waits; the leader's graceful shutdown releases the Lease, so
    // the standby leads and is connected within 2 s (not after the 3 s lease duration).
    let b = start_agent(&s, "meshfleet-agent-b").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(a.is_leader() && !b.is_leader(), "one leader");
    assert!(b.stats().is_none(), "only the leader connects");
    let started = Instant::now();
    a.shutdown().await;
    let took = within(Duration::from_secs(10), || async { b.stats().is_some_and(|st| st.connected) }).await.map(|_| started.elapsed());
    assert!(took.is_some_and(|t| t < Duration::from_secs(2)), "the standby leads and connects within 2 s of a graceful shutdown: {took:?}");
    eprintln!("failover after a graceful shutdown took {took:?}");
    let lease = s.kube.get("coordination.k8s.io/v1", "Lease", "meshfleet-system", "meshfleet-agent").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "meshfleet-agent-b", "{lease}");
    s.kube.delete("v1", "Pod", "shop", &fake_meshed(&s.kube).into_iter().next().unwrap()).unwrap();
    assert!(
        within(Duration::from_secs(5), || async {
            let want = fake_meshed(&s.kube);
            want.len() == 3 && pod_names(&inventory().await) == want
        })
        .await
        .is_some(),
        "the new leader reports changes"
    );

    assert_eq!(s.kube.denials(), Vec::<String>::new(), "the agent stays within the install manifest's RBAC");
    b.shutdown().await;
}

/// Sums of the API's per-minute rollups of one workload: (requests, failures, rows).
fn totals(rows: &Value, workload: &str) -> (i64, i64, Vec<Value>) {
    let rows: Vec<Value> = rows["items"].as_array().into_iter().flatten().filter(|r| r["namespace"] == "shop" && r["workload"] == workload).cloned().collect();
    (rows.iter().map(|r| r["requests"].as_i64().unwrap_or(0)).sum(), rows.iter().map(|r| r["failures"].as_i64().unwrap_or(0)).sum(), rows)
}

/// The highest of a latency column over the rows that carried requests.
fn latency(rows: &[Value], col: &str) -> f64 {
    rows.iter().filter(|r| r["requests"].as_i64().unwrap_or(0) > 0).map(|r| r[col].as_f64().unwrap_or(0.0)).fold(0.0, f64::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_proxy_traffic_shows_as_golden_metrics_of_the_right_workloads() {
    let s = setup().await;
    assert!(within(Duration::from_secs(5), || async { fake_meshed(&s.kube).len() == 3 }).await.is_some(), "the mesh's pods exist");
    let mesh = mesh::Mesh::start(s.kube.clone(), &[("shop", "web"), ("shop", "api")]).await;
    mesh.wait_ready(3).await;
    let a = start_connected_agent(&s).await;
    let inv = s.app.get(&format!("/api/v1/clusters/{}/inventory", s.cluster), &s.owner.access).await.1;
    assert!(inv.to_string().contains("meshfleet dev issuer"), "the issuer the real controller signs with: {inv}");

    // The first scrape of a proxy is only a baseline: wait for two full rounds over all three.
    let ok = || a.telemetry.scrapes.with_label_values(&["ok"]).get();
    let ok0 = ok();
    assert!(within(Duration::from_secs(5), || async { ok() >= ok0 + 6 }).await.is_some(), "the agent scrapes the proxies: {}", a.telemetry.render());

    // Real traffic over mTLS: an ingress proxy -> each pod's sidecar (inbound) -> the app.
    let (web, api) = (mesh.pods_of("web"), mesh.pods_of("api"));
    assert_eq!((web.len(), api.len()), (2, 1));
    let targets: Vec<(String, String)> = web.iter().chain(&api).map(|(_, inbound, id)| (inbound.clone(), id.clone())).collect();
    let ingress = mesh.ingress(&targets).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = |addr: std::net::SocketAddr, query: &'static str, want: u16| {
        let http = http.clone();
        async move { http.get(format!("http://{addr}/shop?{query}")).send().await.map(|r| r.status().as_u16() == want).unwrap_or(false) }
    };
    // web: 12 + 8 fast successes on its two pods, one at a time; api: 20 successes and 10
    // server errors, concurrently, each taking 60 ms in the app.
    let mut sent = Vec::new();
    for (i, n) in [(0, 12), (1, 8)] {
        for _ in 0..n {
            sent.push(get(ingress.outbound(i), "", 200).await);
        }
    }
    let api_calls =
        (0..30).map(|i| if i % 3 == 0 { get(ingress.outbound(2), "sleep_ms=60&status=500", 500) } else { get(ingress.outbound(2), "sleep_ms=60", 200) });
    sent.extend(futures::future::join_all(api_calls).await);
    assert!(sent.iter().all(|ok| *ok), "every request went through the mesh with the app's status");

    // They show in the API as golden metrics of the right workloads, exactly once.
    let metrics_path = format!("/api/v1/clusters/{}/metrics", s.cluster);
    let expected = |m: &Value| {
        (totals(m, "Deployment/web").0, totals(m, "Deployment/web").1, totals(m, "Deployment/api").0, totals(m, "Deployment/api").1) == (20, 0, 30, 10)
    };
    let took = within(Duration::from_secs(10), || async { expected(&s.app.get(&metrics_path, &s.owner.access).await.1) }).await;
    assert!(took.is_some(), "metrics: {}", s.app.get(&metrics_path, &s.owner.access).await.1);
    eprintln!("real proxy traffic visible as golden metrics after {took:?}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let m = s.app.get(&metrics_path, &s.owner.access).await.1;
    assert!(expected(&m), "later scrapes add nothing (no double counting): {m}");
    let (api_requests, api_failures, api_rows) = totals(&m, "Deployment/api");
    let success_rate = 1.0 - api_failures as f64 / api_requests as f64;
    assert!((success_rate - 2.0 / 3.0).abs() < 1e-9, "api success rate {success_rate}");
    // Every api request spent at least 60 ms in the app, so all its percentiles lie above
    // Linkerd's 50 ms bucket bound (how far above depends on the machine's load); web's
    // requests are fast.
    let api_latency: Vec<f64> = ["latency_p50_ms", "latency_p95_ms", "latency_p99_ms"].iter().map(|c| latency(&api_rows, c)).collect();
    assert!(api_latency[0] > 50.0 && api_latency[0] <= api_latency[1] && api_latency[1] <= api_latency[2], "api p50/p95/p99 {api_latency:?}: {m}");
    let (_, _, web_rows) = totals(&m, "Deployment/web");
    let web_p50 = latency(&web_rows, "latency_p50_ms");
    assert!(web_p50 > 0.0 && web_p50 < 50.0, "web p50: {m}");
    assert!(!m.to_string().contains("Deployment/controller"), "only meshed workloads: {m}");
    assert_eq!(s.kube.denials(), Vec::<String>::new());
    a.shutdown().await;
}

fn event(ns: &str, name: &str, kind: &str, reason: &str, object: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": ns}, "type": kind, "reason": reason,
        "message": format!("{reason} on {object}"), "count": 1, "involvedObject": {"kind": "Pod", "name": object, "namespace": ns},
        "lastTimestamp": "2025-01-01T00:00:00Z"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warning_events_and_proxy_restarts_are_visible_through_the_events_api() {
    let s = setup().await;
    s.kube.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "unmeshed"}})).unwrap();
    let a = start_connected_agent(&s).await;
    let pod = fake_meshed(&s.kube).into_iter().find(|n| n.starts_with("api-")).unwrap();
    // A restart counts from the restart count the leader's session saw first (its baseline);
    // give its first debounced pass time to run.
    tokio::time::sleep(Duration::from_millis(500)).await;

    s.kube.apply(event("shop", "e1", "Warning", "BackOff", &pod)).unwrap();
    s.kube.apply(event("shop", "e2", "Normal", "Pulled", &pod)).unwrap();
    s.kube.apply(event("unmeshed", "e3", "Warning", "FailedMount", "x-1")).unwrap();
    s.kube.restart_container("shop", &pod, "meshfleet-proxy").unwrap();
    s.kube.restart_container("shop", &pod, "app").unwrap();

    let path = format!("/api/v1/clusters/{}/events", s.cluster);
    let reasons = || async {
        let (_, e) = s.app.get(&path, &s.owner.access).await;
        let mut r: Vec<String> = e["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                format!(
                    "{} {} {} {}",
                    e["type"].as_str().unwrap_or(""),
                    e["namespace"].as_str().unwrap_or(""),
                    e["object"].as_str().unwrap_or(""),
                    e["reason"].as_str().unwrap_or("")
                )
            })
            .collect();
        r.sort();
        r
    };
    let want = vec![format!("ProxyRestart shop Pod/{pod} ProxyRestarted"), format!("Warning shop Pod/{pod} BackOff")];
    let took = within(Duration::from_secs(5), || async { reasons().await == want }).await;
    assert!(took.is_some(), "events: {:?}", reasons().await);
    // Normal events, warnings outside meshed namespaces and app-container restarts are not sent;
    // nothing arrives twice.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(reasons().await, want);
    assert_eq!(s.kube.denials(), Vec::<String>::new());
    a.shutdown().await;
}
