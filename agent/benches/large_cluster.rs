//! The agent watching a large cluster: its RSS and CPU with 5,000 meshed pods in 200 namespaces
//! and 10 pod changes a second, the time from a change in the Kubernetes API to the service's
//! HTTP API showing it, and the initial sync time. Goals (issue 5): under 60 MB RSS, under 5% of
//! a core at steady state, p99 change-to-API under 2 s.
//!
//! Run:   cargo bench -p meshfleet-agent --bench large_cluster
//!
//! Processes: the real `meshfleet-server` (SQLite in a temporary directory) and the real
//! `meshfleet-agent` run as their own processes, so their RSS (`VmRSS`) and CPU (utime+stime)
//! come from /proc. This process runs the fake Kubernetes API server (meshfleet-fake-kube, with
//! the install manifest's RBAC enforced), the churn driver, one HTTP endpoint on 0.0.0.0 that
//! answers every pod IP's proxy-admin `/metrics` scrape (keep-alive, like the proxy), and the
//! poller of the service's inventory API. The agent binary is built by cargo for this bench; the
//! server binary is built here with `cargo build --release -p meshfleet-server` (or taken from
//! `MESHFLEET_BENCH_SERVER_BIN`).
//!
//! Baseline, measured in the same run: the same agent binary, same server and same fake API
//! server with an empty mesh (control plane only, no meshed pod), over a window of the same
//! length. The agent's cost of watching the cluster is the difference. A window with 5,000 pods
//! and no churn separates holding the inventory (and scraping it) from following changes.
//!
//! Knobs: MESHFLEET_BENCH_PODS (5000), MESHFLEET_BENCH_NAMESPACES (200), MESHFLEET_BENCH_CHURN
//! (changes/s, 10), MESHFLEET_BENCH_SECS (window, 30), MESHFLEET_BENCH_POLL_MS (inventory poll
//! pause, 100), MESHFLEET_BENCH_SETTLE_SECS (after the initial sync, 15). Without `--bench`
//! (e.g. `cargo test --all-targets`) it runs a seconds-long smoke version.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine as _;
use meshfleet_fake_kube::{Config, FakeKube, User};
use meshfleet_test_support::process::{clock_ticks_per_sec, cpu_ticks};
use rand::seq::SliceRandom;
use serde::Deserialize;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Knobs

struct Knobs {
    pods: usize,
    namespaces: usize,
    churn: f64,
    window: Duration,
    poll: Duration,
    settle: Duration,
    smoke: bool,
}

fn env_num<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

impl Knobs {
    fn from_env() -> Knobs {
        let smoke = !std::env::args().any(|a| a == "--bench");
        let (pods, namespaces, secs, settle) = if smoke { (200, 10, 3, 2) } else { (5_000, 200, 30, 15) };
        Knobs {
            pods: env_num("MESHFLEET_BENCH_PODS").unwrap_or(pods),
            namespaces: env_num("MESHFLEET_BENCH_NAMESPACES").unwrap_or(namespaces),
            churn: env_num("MESHFLEET_BENCH_CHURN").unwrap_or(10.0),
            window: Duration::from_secs(env_num("MESHFLEET_BENCH_SECS").unwrap_or(secs)),
            poll: Duration::from_millis(env_num("MESHFLEET_BENCH_POLL_MS").unwrap_or(100)),
            settle: Duration::from_secs(env_num("MESHFLEET_BENCH_SETTLE_SECS").unwrap_or(settle)),
            smoke,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc

fn proc_status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").ok().map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

/// CPU and RSS of a set of processes over one window.
struct Window {
    start: Instant,
    ticks: Vec<(u32, u64)>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    /// Cores (1.0 = one core busy all the time).
    cpu: f64,
    rss_mb: f64,
}

impl Window {
    fn open(pids: &[u32]) -> Window {
        Window { start: Instant::now(), ticks: pids.iter().map(|p| (*p, cpu_ticks(*p))).collect() }
    }

    fn close(self) -> Vec<Usage> {
        let secs = self.start.elapsed().as_secs_f64();
        let hz = clock_ticks_per_sec();
        self.ticks
            .iter()
            .map(|(pid, t0)| Usage { cpu: (cpu_ticks(*pid).saturating_sub(*t0)) as f64 / hz / secs, rss_mb: proc_status_kb(*pid, "VmRSS:") as f64 / 1024.0 })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

struct Proc {
    name: &'static str,
    child: Child,
    pid: u32,
    output: meshfleet_test_support::process::Output,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command) -> anyhow::Result<Proc> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let pid = child.id();
        let output = meshfleet_test_support::process::Output::capture(&mut child);
        Ok(Proc { name, child, pid, output })
    }

    fn tail(&self) -> String {
        self.output.tail()
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("{} exited ({status}); its output:\n{}", self.name, self.tail());
        }
        Ok(())
    }

    /// SIGTERM to this one process (never its group), SIGKILL after 15 s.
    fn stop(&mut self) {
        meshfleet_test_support::process::terminate(&mut self.child, Duration::from_secs(15));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The server binary: `MESHFLEET_BENCH_SERVER_BIN`, or built now into this target directory.
fn server_binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("MESHFLEET_BENCH_SERVER_BIN") {
        return Ok(p.into());
    }
    // target/release/deps/large_cluster-<hash> -> target/release
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(|d| d.parent()).context("target directory")?.to_owned();
    let release = dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "meshfleet-server", "--bin", "meshfleet-server"]);
    if release {
        cmd.arg("--release");
    }
    eprintln!("building meshfleet-server ({})", if release { "release" } else { "debug" });
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build -p meshfleet-server failed");
    }
    Ok(dir.join("meshfleet-server"))
}

struct Server {
    proc: Proc,
    api: String,
    gateway: SocketAddr,
    _dir: tempfile::TempDir,
}

fn start_server(bin: &PathBuf) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let mut cmd = meshfleet_test_support::process::clean_command(bin);
    cmd.env("MESHFLEET_LISTEN", "127.0.0.1:0")
        .env("MESHFLEET_GATEWAY_LISTEN", "127.0.0.1:0")
        .env("MESHFLEET_DATA_DIR", dir.path())
        .env("MESHFLEET_LOG", std::env::var("MESHFLEET_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()));
    let proc = Proc::spawn("meshfleet-server", cmd)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut api, mut gateway) = (None, None);
    while api.is_none() || gateway.is_none() {
        let line = proc
            .output
            .stdout
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| anyhow::anyhow!("the server did not print its addresses within 60 s:\n{}", proc.tail()))?;
        if let Some(rest) = line.split("listening on http://").nth(1) {
            api = Some(format!("http://{}", rest.trim()));
        }
        if let Some(rest) = line.split("agent gateway (gRPC, mTLS) on ").nth(1) {
            gateway = rest.trim().parse::<SocketAddr>().ok();
        }
    }
    Ok(Server { proc, api: api.unwrap(), gateway: gateway.unwrap(), _dir: dir })
}

// ---------------------------------------------------------------------------------------------
// The cluster

/// A pod as a real cluster holds it: two containers (app + the injected proxy), probes,
/// resources, env, the projected service-account token volume and a managedFields entry, so
/// the agent decodes objects of a realistic size (about 5 KB of JSON).
fn pod(ns: &str, workload: &str, name: &str, admin_port: u16, ip: &str, ready: bool, restarts: i64) -> Value {
    let now = "2026-11-26T10:00:00Z";
    let cond = |t: &str| json!({"type": t, "status": if ready { "True" } else { "False" }, "lastTransitionTime": now});
    let status_of = |c: &str, image: &str, r: i64| {
        json!({"name": c, "image": image, "imageID": format!("docker.io/{image}@sha256:{}", "0".repeat(64)), "containerID": format!("containerd://{}", "1".repeat(64)),
            "ready": ready, "started": ready, "restartCount": r, "state": if ready { json!({"running": {"startedAt": now}}) } else { json!({"waiting": {"reason": "ContainerCreating"}}) }})
    };
    let app_image = format!("registry.example.com/{workload}:1.4.2");
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns, "generateName": format!("{workload}-"),
            "labels": {"app.kubernetes.io/name": workload, "app.kubernetes.io/part-of": "shop", "controller-revision-hash": format!("{workload}-7d9f8b6c5d"), "statefulset.kubernetes.io/pod-name": name},
            "annotations": {"meshfleet.io/inject": "enabled", "meshfleet.io/proxy-version": "0.1.0", "kubectl.kubernetes.io/default-container": "app", "prometheus.io/scrape": "true"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": workload, "uid": format!("{:032x}", workload.len() as u128 * 7919 + ns.len() as u128), "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": now, "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app.kubernetes.io/name": {}}, "f:ownerReferences": {".": {}}}, "f:spec": {"f:containers": {}, "f:dnsPolicy": {}, "f:restartPolicy": {}}}}],
        },
        "spec": {
            "nodeName": format!("node-{:02}", name.len() % 20), "serviceAccountName": workload, "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "terminationGracePeriodSeconds": 30,
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}, {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}, {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}, {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}],
            "containers": [
                {"name": "app", "image": app_image, "imagePullPolicy": "IfNotPresent", "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}, {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": format!("{workload}-db"), "key": "url"}}}],
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                    "livenessProbe": {"httpGet": {"path": "/live", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                    "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]},
                {"name": "meshfleet-proxy", "image": "meshfleet/proxy:0.1.0", "ports": [{"name": "admin", "containerPort": admin_port, "protocol": "TCP"}, {"name": "inbound", "containerPort": 4143, "protocol": "TCP"}],
                    "env": [{"name": "MESHFLEET_PROXY_IDENTITY_DIR", "value": "/var/run/meshfleet/identity"}, {"name": "MESHFLEET_PROXY_CONTROLLER", "value": "meshfleet-controller.meshfleet.svc:8086"}, {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}}],
                    "resources": {"requests": {"cpu": "10m", "memory": "20Mi"}, "limits": {"memory": "64Mi"}},
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": admin_port, "scheme": "HTTP"}, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                    "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]},
            ],
        },
        "status": {
            "phase": if ready { "Running" } else { "Pending" }, "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "127.0.0.1", "startTime": now, "qosClass": "Burstable",
            "conditions": [cond("Initialized"), cond("Ready"), cond("ContainersReady"), cond("PodScheduled")],
            "containerStatuses": [status_of("app", &app_image, 0), status_of("meshfleet-proxy", "meshfleet/proxy:0.1.0", restarts)],
        },
    })
}

/// Where a pod lives and what it is called: `workloads_per_ns` StatefulSets per namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PodKey {
    ns: String,
    workload: String,
    name: String,
}

fn layout(pods: usize, namespaces: usize) -> Vec<PodKey> {
    const WORKLOADS: &[&str] = &["web", "api", "cart", "search", "worker"];
    (0..pods)
        .map(|i| {
            let ns = i % namespaces;
            let in_ns = i / namespaces;
            let w = WORKLOADS[in_ns % WORKLOADS.len()];
            PodKey { ns: format!("team-{ns:03}"), workload: w.to_owned(), name: format!("{w}-{}", in_ns / WORKLOADS.len()) }
        })
        .collect()
}

fn issuer_pem() -> (String, String) {
    let ca = meshfleet_pki::mint::new_anchor(&meshfleet_pki::mint::CaProfile::new("meshfleet issuer", Duration::from_secs(365 * 86400))).unwrap();
    (ca.cert_pem, ca.key_pem)
}

/// Answers every proxy-admin scrape (any pod IP: the listener is on 0.0.0.0) with the proxy's
/// Prometheus text; counters grow with every scrape. HTTP/1.1 keep-alive, as the proxy's own
/// admin server.
/// `MESHFLEET_BENCH_SCRAPE_CLOSE=1` answers with `connection: close` instead (a diagnostic: how
/// much of the agent's RSS is its pool of idle scrape connections).
async fn serve_proxy_metrics(close: bool) -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await?;
    let port = listener.local_addr()?.port();
    let scrapes = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let n = scrapes.fetch_add(1, Ordering::Relaxed) + 1;
            async move {
                let (req, fail) = (n * 10, n);
                let connection = if close { "close" } else { "keep-alive" };
                let body = format!(
                    "# TYPE request_total counter\nrequest_total{{direction=\"inbound\",tls=\"true\"}} {req}\nrequest_total{{direction=\"outbound\",tls=\"true\"}} 7\n\
                     response_total{{direction=\"inbound\",status_code=\"200\",classification=\"success\"}} {}\nresponse_total{{direction=\"inbound\",status_code=\"500\",classification=\"failure\"}} {fail}\n\
                     response_latency_ms_bucket{{direction=\"inbound\",le=\"10\"}} 0\nresponse_latency_ms_bucket{{direction=\"inbound\",le=\"20\"}} {req}\nresponse_latency_ms_bucket{{direction=\"inbound\",le=\"+Inf\"}} {req}\n",
                    req - fail
                );
                ([(axum::http::header::CONNECTION, connection)], body)
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(port)
}

// ---------------------------------------------------------------------------------------------
// The service's API

#[derive(Deserialize)]
struct InvPod {
    namespace: String,
    name: String,
    ready: bool,
    restarts: u32,
}

#[derive(Deserialize)]
struct Inventory {
    updated_at: Option<String>,
    pods: Vec<InvPod>,
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
    cluster: String,
}

impl Api {
    async fn inventory(&self) -> anyhow::Result<Inventory> {
        let r = self.http.get(format!("{}/api/v1/clusters/{}/inventory", self.base, self.cluster)).bearer_auth(&self.token).send().await?.error_for_status()?;
        Ok(r.json().await?)
    }
}

async fn post(http: &reqwest::Client, url: String, token: Option<&str>, body: Value) -> anyhow::Result<Value> {
    let mut req = http.post(&url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("POST {url}: {status} {v}");
    }
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// Churn and change-to-API latency

#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Absent,
    Present { ready: bool, restarts: u32 },
}

struct Expect {
    key: (String, String),
    want: Want,
    at: Instant,
    op: &'static str,
}

#[derive(Default)]
struct Tracker {
    open: Vec<Expect>,
    done: Vec<(&'static str, Duration)>,
    /// Keys with an open expectation: the churn driver leaves them alone until it is seen.
    busy: std::collections::HashSet<(String, String)>,
    polls: Vec<Duration>,
}

impl Tracker {
    fn expect(&mut self, key: (String, String), want: Want, at: Instant, op: &'static str) {
        self.busy.insert(key.clone());
        self.open.push(Expect { key, want, at, op });
    }

    /// Checks the open expectations against one inventory response received at `at`.
    fn observe(&mut self, inv: &Inventory, at: Instant) {
        let pods: HashMap<(&str, &str), &InvPod> = inv.pods.iter().map(|p| ((p.namespace.as_str(), p.name.as_str()), p)).collect();
        let mut still = Vec::new();
        for e in self.open.drain(..) {
            let have = pods.get(&(e.key.0.as_str(), e.key.1.as_str()));
            let met = match e.want {
                Want::Absent => have.is_none(),
                Want::Present { ready, restarts } => have.is_some_and(|p| p.ready == ready && p.restarts == restarts),
            };
            if met && at > e.at {
                self.done.push((e.op, at - e.at));
                self.busy.remove(&e.key);
            } else {
                still.push(e);
            }
        }
        self.open = still;
    }
}

struct ChurnPod {
    key: PodKey,
    ip: String,
    present: bool,
    ready: bool,
    restarts: u32,
}

/// `rate` pod changes a second, round-robin over: delete a ready pod; create a deleted one again
/// (Pending, not ready: what a controller does at once); make a pending pod ready (the
/// kubelet); bump a proxy's restart count. Each change is one write to the fake API server and
/// one expectation, timed from the moment the write returned.
async fn churn(kube: Arc<FakeKube>, pods: Arc<Mutex<Vec<ChurnPod>>>, tracker: Arc<Mutex<Tracker>>, admin_port: u16, rate: f64, until: Instant) -> u64 {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut n, mut changes) = (0u64, 0u64);
    let mut rng = rand::thread_rng();
    while Instant::now() < until {
        tick.tick().await;
        let mut pods = pods.lock().unwrap();
        let busy = tracker.lock().unwrap().busy.clone();
        let free = |p: &ChurnPod| !busy.contains(&(p.key.ns.clone(), p.key.name.clone()));
        let wanted = ["delete", "create", "ready", "restart"][(n % 4) as usize];
        n += 1;
        let pick = |pred: &dyn Fn(&ChurnPod) -> bool, pods: &Vec<ChurnPod>, rng: &mut rand::rngs::ThreadRng| -> Option<usize> {
            let idx: Vec<usize> = pods.iter().enumerate().filter(|(_, p)| pred(p) && free(p)).map(|(i, _)| i).collect();
            idx.choose(rng).copied()
        };
        let mut op = wanted;
        let mut i = match wanted {
            "delete" | "restart" => pick(&|p| p.present && p.ready, &pods, &mut rng),
            "create" => pick(&|p| !p.present, &pods, &mut rng),
            _ => pick(&|p| p.present && !p.ready, &pods, &mut rng),
        };
        if i.is_none() {
            op = "restart";
            i = pick(&|p| p.present && p.ready, &pods, &mut rng);
        }
        let Some(i) = i else { continue };
        let p = &mut pods[i];
        let key = (p.key.ns.clone(), p.key.name.clone());
        let result = match op {
            "delete" => kube.delete("v1", "Pod", &p.key.ns, &p.key.name).map(|_| {
                p.present = false;
                Want::Absent
            }),
            "create" => kube.apply(pod(&p.key.ns, &p.key.workload, &p.key.name, admin_port, &p.ip, false, 0)).map(|_| {
                (p.present, p.ready, p.restarts) = (true, false, 0);
                Want::Present { ready: false, restarts: 0 }
            }),
            "ready" => kube.apply(pod(&p.key.ns, &p.key.workload, &p.key.name, admin_port, &p.ip, true, i64::from(p.restarts))).map(|_| {
                p.ready = true;
                Want::Present { ready: true, restarts: p.restarts }
            }),
            _ => kube.restart_container(&p.key.ns, &p.key.name, "meshfleet-proxy").map(|_| {
                p.restarts += 1;
                Want::Present { ready: true, restarts: p.restarts }
            }),
        };
        let at = Instant::now();
        match result {
            Ok(want) => {
                tracker.lock().unwrap().expect(key, want, at, op);
                changes += 1;
            }
            Err(e) => eprintln!("churn {op} {}/{}: {e}", p.key.ns, p.key.name),
        }
    }
    changes
}

/// Polls the inventory API back to back (with `pause` between requests) until `stop`.
async fn poll(api: Arc<Api>, tracker: Arc<Mutex<Tracker>>, pause: Duration, stop: Arc<std::sync::atomic::AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        if let Ok(inv) = api.inventory().await {
            let at = Instant::now();
            let mut t = tracker.lock().unwrap();
            t.polls.push(at - sent);
            t.observe(&inv, at);
        }
        tokio::time::sleep(pause).await;
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

// ---------------------------------------------------------------------------------------------
// The run

struct Agent {
    proc: Proc,
}

fn start_agent(vars: &HashMap<String, String>, kubeconfig: &std::path::Path, pod_name: &str) -> anyhow::Result<Agent> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meshfleet-agent"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("MESHFLEET_") || k.starts_with("KUBE") {
            cmd.env_remove(&k);
        }
    }
    cmd.envs(vars)
        .env("MESHFLEET_POD_NAME", pod_name)
        .env("KUBECONFIG", kubeconfig)
        .env("MESHFLEET_LOG", std::env::var("MESHFLEET_BENCH_AGENT_LOG").unwrap_or_else(|_| "warn".into()));
    Ok(Agent { proc: Proc::spawn("meshfleet-agent", cmd)? })
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, check: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    meshfleet_test_support::process::within(limit, check).await.ok_or_else(|| anyhow::anyhow!("{what}: not within {limit:?}"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

struct Row {
    phase: String,
    agent_fds: usize,
    agent: Usage,
    server: Usage,
    bench: Usage,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let knobs = Knobs::from_env();
    let run_started = Instant::now();
    eprintln!(
        "== agent watching a large cluster: {} pods in {} namespaces, churn {}/s, windows of {:?}{}",
        knobs.pods,
        knobs.namespaces,
        knobs.churn,
        knobs.window,
        if knobs.smoke { " (smoke)" } else { "" }
    );
    eprintln!("   load average at start: {}", loadavg());
    let server_bin = server_binary()?;
    let mut server = start_server(&server_bin)?;
    let http = reqwest::Client::builder().no_proxy().build()?;

    // An account, a cluster and its install manifest, through the API as a user would.
    let (email, password) = ("bench@example.com", "a long bench passphrase");
    post(&http, format!("{}/api/v1/signup", server.api), None, json!({"email": email, "password": password, "organization": "Bench"})).await?;
    let token = post(&http, format!("{}/api/v1/login", server.api), None, json!({"email": email, "password": password})).await?["access_token"]
        .as_str()
        .context("access_token")?
        .to_owned();
    let created = post(&http, format!("{}/api/v1/clusters", server.api), Some(&token), json!({"name": "large", "labels": {}})).await?;
    let cluster = created["cluster"]["id"].as_str().context("cluster id")?.to_owned();
    let manifest =
        http.get(format!("{}/api/v1/clusters/{cluster}/install.yaml", server.api)).bearer_auth(&token).send().await?.error_for_status()?.text().await?;
    let api = Arc::new(Api { http: http.clone(), base: server.api.clone(), token: token.clone(), cluster: cluster.clone() });

    // The fake API server, without its workload simulator: the churn driver is the kubelet and
    // the controllers here, so every change is timed exactly. (Each simulator pass deep-copies
    // every pod twice, which with 5,000 pods of 5 KB kept this process ~85% of a core busy even
    // at one pass a second, on a machine of 2 cores.) Bookmarks once a minute, as a real API server.
    let day = Duration::from_secs(24 * 3600);
    let kube =
        Arc::new(FakeKube::start_with(Config { ready_delay: day, sim_tick: day, bookmark_interval: Duration::from_secs(60), ..Config::default() }).await?);
    let applied = kube.apply_yaml(&manifest)?;
    let secret = applied.iter().find(|o| o["kind"] == "Secret").context("the manifest's Secret")?;
    let agent_ns = secret["metadata"]["namespace"].as_str().context("Secret namespace")?.to_owned();
    let mut vars: HashMap<String, String> = HashMap::new();
    for (k, v) in secret["data"].as_object().context("Secret data")? {
        vars.insert(k.clone(), String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or(""))?)?);
    }
    vars.insert("MESHFLEET_GATEWAY_ADDRESS".into(), format!("https://{}", server.gateway));
    vars.insert("MESHFLEET_POD_NAMESPACE".into(), agent_ns.clone());
    vars.insert("MESHFLEET_AGENT_LISTEN".into(), "127.0.0.1:0".into());
    let (cert, key) = issuer_pem();
    let mut setup = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "meshfleet"}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "meshfleet-controller", "namespace": "meshfleet"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "controller"}}, "template": {"metadata": {"labels": {"app": "controller"}}, "spec": {"containers": [{"name": "controller", "image": "meshfleet/controller:0.1.0"}]}}},
            "status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "meshfleet-issuer", "namespace": "meshfleet"}, "stringData": {"tls.crt": cert, "tls.key": key}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "meshfleet-trust-bundle", "namespace": "meshfleet"}, "data": {"ca-bundle.crt": cert}}),
    ];
    setup.extend((0..20).map(|i| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{i:02}"), "labels": {"kubernetes.io/hostname": format!("node-{i:02}")}}})));
    for obj in setup {
        kube.apply_yaml(&serde_yaml_ng::to_string(&obj)?)?;
    }
    kube.enforce_rbac(true);
    kube.add_token("agent-sa-token", User::service_account(&agent_ns, "meshfleet-agent"));
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig, "agent-sa-token")?;
    let scrape_close = std::env::var("MESHFLEET_BENCH_SCRAPE_CLOSE").is_ok_and(|v| v == "1");
    let admin_port = serve_proxy_metrics(scrape_close).await?;
    let bench_pid = std::process::id();
    let mut rows = Vec::new();

    // 1. Baseline: the agent with an empty mesh.
    eprintln!("-- baseline: empty mesh");
    let mut agent = start_agent(&vars, &kubeconfig, "meshfleet-agent-a")?;
    wait_for("the agent's first snapshot", Duration::from_secs(60), || async { api.inventory().await.is_ok_and(|i| i.updated_at.is_some()) })
        .await
        .map_err(|e| anyhow::anyhow!("{e}; agent output:\n{}", agent.proc.tail()))?;
    tokio::time::sleep(knobs.settle.min(Duration::from_secs(10))).await;
    let w = Window::open(&[agent.proc.pid, server.proc.pid, bench_pid]);
    tokio::time::sleep(knobs.window).await;
    let u = w.close();
    agent.proc.check_alive()?;
    rows.push(Row { phase: "baseline: empty mesh (control plane only)".into(), agent: u[0], server: u[1], bench: u[2], agent_fds: open_fds(agent.proc.pid) });
    let baseline_hwm = proc_status_kb(agent.proc.pid, "VmHWM:") as f64 / 1024.0;
    agent.proc.stop();

    // 2. The large cluster: namespaces and pods, every pod meshed and ready.
    let keys = layout(knobs.pods, knobs.namespaces);
    let seed_start = Instant::now();
    for n in 0..knobs.namespaces {
        kube.apply(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("team-{n:03}"), "labels": {"meshfleet.io/inject": "enabled"}}}),
        )?;
    }
    let mut churn_pods = Vec::with_capacity(keys.len());
    let mut json_bytes = 0usize;
    for k in keys {
        let ip = meshfleet_fake_kube::sim::next_pod_ip();
        let p = pod(&k.ns, &k.workload, &k.name, admin_port, &ip, true, 0);
        json_bytes += p.to_string().len();
        kube.apply(p)?;
        churn_pods.push(ChurnPod { key: k, ip, present: true, ready: true, restarts: 0 });
    }
    let avg_pod_bytes = json_bytes / churn_pods.len().max(1);
    eprintln!("   seeded {} pods ({} bytes of JSON each on average) in {:.1} s", churn_pods.len(), avg_pod_bytes, seed_start.elapsed().as_secs_f64());

    // 3. Initial sync: a fresh agent process (the identity is in its Secret) until the API
    // lists every pod. The first agent's Lease is removed so this one leads at once and the
    // figure is the sync, not a Lease expiry.
    eprintln!("-- initial sync");
    let _ = kube.delete("coordination.k8s.io/v1", "Lease", &agent_ns, "meshfleet-agent");
    let mut agent = start_agent(&vars, &kubeconfig, "meshfleet-agent-b")?;
    let want = churn_pods.len();
    let sync = wait_for("every pod in the API", Duration::from_secs(180), || async { api.inventory().await.is_ok_and(|i| i.pods.len() == want) })
        .await
        .map_err(|e| anyhow::anyhow!("{e}; agent output:\n{}", agent.proc.tail()))?;
    let sync_hwm = proc_status_kb(agent.proc.pid, "VmHWM:") as f64 / 1024.0;
    let sync_rss = proc_status_kb(agent.proc.pid, "VmRSS:") as f64 / 1024.0;
    let sync_cpu = cpu_ticks(agent.proc.pid) as f64 / clock_ticks_per_sec();
    eprintln!("   {want} pods in the API {:.1} s after the agent started", sync.as_secs_f64());
    tokio::time::sleep(knobs.settle).await;

    // 4. 5,000 pods, no churn.
    eprintln!("-- steady, no churn");
    let w = Window::open(&[agent.proc.pid, server.proc.pid, bench_pid]);
    tokio::time::sleep(knobs.window).await;
    let u = w.close();
    agent.proc.check_alive()?;
    rows.push(Row { phase: format!("{} pods, no churn", want), agent: u[0], server: u[1], bench: u[2], agent_fds: open_fds(agent.proc.pid) });

    // 5. 5,000 pods with churn, the API polled for every change.
    eprintln!("-- steady, churn {}/s", knobs.churn);
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let pods = Arc::new(Mutex::new(churn_pods));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = tokio::spawn(poll(api.clone(), tracker.clone(), knobs.poll, stop.clone()));
    // A poller-only window first: what polling costs the server and this process.
    let w = Window::open(&[agent.proc.pid, server.proc.pid, bench_pid]);
    tokio::time::sleep(knobs.window.min(Duration::from_secs(10))).await;
    let u = w.close();
    rows.push(Row { phase: format!("{} pods, no churn, API polled", want), agent: u[0], server: u[1], bench: u[2], agent_fds: open_fds(agent.proc.pid) });
    let w = Window::open(&[agent.proc.pid, server.proc.pid, bench_pid]);
    let until = Instant::now() + knobs.window;
    let changes = churn(kube.clone(), pods.clone(), tracker.clone(), admin_port, knobs.churn, until).await;
    let u = w.close();
    let churn_hwm = proc_status_kb(agent.proc.pid, "VmHWM:") as f64 / 1024.0;
    rows.push(Row {
        phase: format!("{} pods, churn {}/s, API polled", want, knobs.churn),
        agent: u[0],
        server: u[1],
        bench: u[2],
        agent_fds: open_fds(agent.proc.pid),
    });
    // Let the last changes arrive.
    let _ = wait_for("the last changes in the API", Duration::from_secs(10), || async { tracker.lock().unwrap().open.is_empty() }).await;
    stop.store(true, Ordering::Relaxed);
    let _ = poller.await;
    agent.proc.check_alive()?;
    agent.proc.stop();
    server.proc.stop();

    // Report.
    let t = tracker.lock().unwrap();
    let mut all: Vec<Duration> = t.done.iter().map(|(_, d)| *d).collect();
    all.sort();
    let mut polls = t.polls.clone();
    polls.sort();
    println!();
    println!(
        "meshfleet-agent watching a large cluster ({} pods in {} namespaces, {} B of JSON per pod; windows of {} s; load average now {}){}",
        want,
        knobs.namespaces,
        avg_pod_bytes,
        knobs.window.as_secs(),
        loadavg(),
        if scrape_close { "; scrapes answered with connection: close" } else { "" }
    );
    println!();
    println!("| phase | agent CPU (% of a core) | agent RSS MB | agent open files | server CPU % | server RSS MB | bench process CPU % (fake API server, churn, poller) |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.2} | {:.1} | {} | {:.1} | {:.1} | {:.1} |",
            r.phase,
            r.agent.cpu * 100.0,
            r.agent.rss_mb,
            r.agent_fds,
            r.server.cpu * 100.0,
            r.server.rss_mb,
            r.bench.cpu * 100.0
        );
    }
    println!();
    let base = &rows[0].agent;
    let steady = &rows[rows.len() - 1].agent;
    println!("agent peak RSS (VmHWM): baseline {baseline_hwm:.1} MB; after the initial sync {sync_hwm:.1} MB (RSS then {sync_rss:.1} MB, CPU spent starting and syncing {sync_cpu:.2} s); end of churn {churn_hwm:.1} MB");
    println!("initial sync: {want} pods in the API {:.1} s after the agent process started", sync.as_secs_f64());
    println!("watching cost over the baseline: +{:.2} points of a core, +{:.1} MB RSS", (steady.cpu - base.cpu) * 100.0, steady.rss_mb - base.rss_mb);
    println!();
    println!("change to API: {} changes made, {} seen, {} not seen within 10 s after the window", changes, t.done.len(), t.open.len());
    println!("| change | n | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    for op in ["delete", "create", "ready", "restart", "all"] {
        let mut d: Vec<Duration> = t.done.iter().filter(|(o, _)| op == "all" || *o == op).map(|(_, d)| *d).collect();
        d.sort();
        if d.is_empty() {
            continue;
        }
        println!("| {op} | {} | {} | {} | {} | {} |", d.len(), ms(pct(&d, 0.5)), ms(pct(&d, 0.9)), ms(pct(&d, 0.99)), ms(*d.last().unwrap()));
    }
    println!(
        "inventory API response time while polling (the resolution of the figures above): p50 {}, p99 {}, {} polls",
        ms(pct(&polls, 0.5)),
        ms(pct(&polls, 0.99)),
        polls.len()
    );
    println!();
    let p99 = pct(&all, 0.99);
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    println!("| goal | result |");
    println!("|---|---|");
    println!("| agent RSS under 60 MB | {:.1} MB (peak {:.1} MB): {} |", steady.rss_mb, churn_hwm.max(sync_hwm), verdict(steady.rss_mb < 60.0));
    println!(
        "| agent CPU under 5% of a core at steady state | {:.2}% with churn ({:.2}% baseline): {} |",
        steady.cpu * 100.0,
        base.cpu * 100.0,
        verdict(steady.cpu < 0.05)
    );
    println!("| p99 change-to-API under 2 s | {}: {} |", ms(p99), verdict(!all.is_empty() && t.open.is_empty() && p99 < Duration::from_secs(2)));
    println!();
    println!("whole run: {:.0} s", run_started.elapsed().as_secs_f64());
    Ok(())
}
