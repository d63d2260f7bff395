//! The mesh's data plane for the Kubernetes end-to-end tests: the real `meshfleet-controller`
//! and one real `meshfleet-proxy` process per running meshed pod of the fake API server, its
//! admin endpoint on the pod's own loopback IP and admin port (where the agent scrapes it), its
//! inbound listener on the pod IP forwarding to an in-test app. An ingress proxy (not a pod)
//! sends traffic into the pods over mTLS. Processes are killed by their own pid on drop.
//! Started `upgradable`, the mesh follows Kubernetes the way versions move in a cluster: the
//! controller plays the version of its Deployment's image (restarted when it changes) and
//! injects its proxy version into new pods through the fake API server's admission, and each
//! sidecar plays its pod's proxy image tag (`Releases` can make one a deliberately bad one).

mod traffic;
mod versions;

pub use traffic::{Failure, Tally, Traffic};
use versions::{deployed, install_injector, proxy_of, tag, Launch};
pub use versions::{proxy_version, Controller, Releases};

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::Query;
use axum::http::StatusCode;
use meshfleet_fake_kube::FakeKube;
use serde_json::{json, Value};

/// The proxy's ports in a pod, as in a real cluster (each pod has its own IP).
pub const ADMIN_PORT: u16 = 4191;
pub const INBOUND_PORT: u16 = 4143;
const TRUST_DOMAIN: &str = "cluster.local";

/// The mesh binaries of this workspace, built (once per test process) into the target
/// directory this test binary runs from. Cargo makes only a package's own binaries available
/// to its tests, and `meshfleet-proxy` belongs to meshfleet-mesh; a fresh build is a no-op.
pub fn mesh_bin(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let _ = writeln!(std::io::stderr(), "building meshfleet-proxy and meshfleet-controller for the Kubernetes end-to-end tests (a no-op when fresh)");
        meshfleet_test_support::process::build_bins("meshfleet-mesh", &["meshfleet-proxy", "meshfleet-controller"])
    });
    dir.join(name)
}

/// A spawned mesh binary, killed (by its own pid) on drop.
pub struct Process {
    child: Child,
    pub addrs: Value,
}

impl Process {
    fn spawn(bin: &str, args: &[String], ready: &Path) -> Process {
        Self::spawn_with_env(bin, args, &[], ready)
    }

    fn spawn_with_env(bin: &str, args: &[String], env: &[(&str, &Path)], ready: &Path) -> Process {
        let log = std::env::var_os("TEST_LOG").is_some();
        let mut child = Command::new(mesh_bin(bin))
            .args(args)
            .envs(env.iter().copied())
            .arg("--ready-file")
            .arg(ready)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(if log { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(addrs) = std::fs::read_to_string(ready).ok().and_then(|t| serde_json::from_str(&t).ok()) {
                return Process { child, addrs };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{bin} exited early: {status} ({args:?})");
            }
            assert!(Instant::now() < deadline, "{bin} never became ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn addr(&self, key: &str) -> SocketAddr {
        self.addrs[key].as_str().unwrap().parse().unwrap()
    }

    pub fn outbound(&self, i: usize) -> SocketAddr {
        self.addrs["outbound"][i].as_str().unwrap().parse().unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One meshed pod's sidecar.
pub struct Sidecar {
    pub namespace: String,
    pub pod: String,
    /// The Deployment's `app` label, which is also its service account here.
    pub app: String,
    pub ip: String,
    /// The tag of its pod's proxy image: the version it plays.
    pub version: String,
    pub process: Process,
}

impl Sidecar {
    pub fn inbound(&self) -> String {
        format!("{}:{INBOUND_PORT}", self.ip)
    }

    pub fn identity(&self) -> String {
        format!("spiffe://{TRUST_DOMAIN}/ns/{}/sa/{}", self.namespace, self.app)
    }
}

/// The controller, a sidecar per running meshed pod (kept in step with the fake API server by a
/// background thread, like a kubelet starting and stopping containers) and the app behind them.
pub struct Mesh {
    pub dir: tempfile::TempDir,
    /// The controller's gRPC address, kept when its process is restarted at another version.
    grpc: SocketAddr,
    pub controller: Arc<Mutex<Controller>>,
    pub sidecars: Arc<Mutex<HashMap<String, Sidecar>>>,
    /// With `IssuerSource::Kubernetes`, the fake cluster whose trust ConfigMap a new ingress
    /// proxy starts from (as a pod mounting it would).
    bundle_from: Option<Arc<FakeKube>>,
    stop: Arc<AtomicBool>,
    kubelet: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.kubelet.take() {
            let _ = t.join();
        }
        self.sidecars.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Where the controller takes its issuer and trust bundle from.
pub enum IssuerSource {
    /// Files written from the development PKI (reloaded by polling).
    Files,
    /// The fake cluster's issuer Secret and trust ConfigMap, watched through the API server as
    /// the controller's own service account (`meshfleet/meshfleet-controller`), which the test
    /// grants reading exactly those two objects.
    Kubernetes,
}

/// An HTTP app behind every sidecar: `?status=N` answers N, `?sleep_ms=M` waits first.
async fn spawn_app() -> SocketAddr {
    async fn handle(Query(q): Query<HashMap<String, u64>>) -> (StatusCode, &'static str) {
        if let Some(ms) = q.get("sleep_ms") {
            tokio::time::sleep(Duration::from_millis(*ms)).await;
        }
        let status = q.get("status").and_then(|s| u16::try_from(*s).ok()).and_then(|s| StatusCode::from_u16(s).ok()).unwrap_or(StatusCode::OK);
        (status, "ok")
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(handle);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn token_of(namespace: &str, app: &str) -> String {
    format!("tok-{namespace}-{app}")
}

impl Mesh {
    /// Starts the controller with a fresh development PKI (its issuer and trust bundle are also
    /// written into the fake cluster's issuer Secret and trust ConfigMap, as an install would),
    /// and runs a sidecar for every running pod of `workloads` ((namespace, app) pairs).
    pub async fn start(kube: Arc<FakeKube>, workloads: &[(&str, &str)]) -> Mesh {
        Self::start_with(kube, workloads, IssuerSource::Files).await
    }

    pub async fn start_with(kube: Arc<FakeKube>, workloads: &[(&str, &str)], source: IssuerSource) -> Mesh {
        Self::launch(kube, workloads, source, None).await
    }

    /// A mesh whose versions follow the fake cluster (see the module's documentation): the
    /// controller plays its Deployment's version and injects the proxy into new pods of
    /// `workloads` that ask for it (`meshfleet.io/inject: enabled` on the pod), and `releases`
    /// says what a version's proxies do beyond reporting it.
    pub async fn upgradable(kube: Arc<FakeKube>, workloads: &[(&str, &str)], releases: Releases) -> Mesh {
        Self::launch(kube, workloads, IssuerSource::Files, Some(releases)).await
    }

    async fn launch(kube: Arc<FakeKube>, workloads: &[(&str, &str)], source: IssuerSource, releases: Option<Releases>) -> Mesh {
        // The first call may build the binaries: off the runtime's worker threads.
        tokio::task::spawn_blocking(|| mesh_bin("meshfleet-proxy")).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(mesh_bin("meshfleet-controller")).arg("dev-certs").arg(dir.path()).output().expect("dev-certs");
        assert!(out.status.success(), "dev-certs: {}", String::from_utf8_lossy(&out.stderr));
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        kube.apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "meshfleet-issuer", "namespace": "meshfleet"},
            "data": {"tls.crt": b64(&read("issuer.crt")), "tls.key": b64(&read("issuer.key"))}}))
            .unwrap();
        kube.apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "meshfleet-trust-bundle", "namespace": "meshfleet"}, "data": {"ca-bundle.crt": read("ca-bundle.crt")}})).unwrap();

        let mut tokens = serde_json::Map::new();
        for (ns, app) in workloads.iter().copied().chain([("ingress", "gateway")]) {
            tokens.insert(token_of(ns, app), json!({"namespace": ns, "serviceAccount": app}));
            std::fs::write(dir.path().join(token_of(ns, app)), token_of(ns, app)).unwrap();
        }
        std::fs::write(dir.path().join("tokens.json"), json!({ "tokens": tokens }).to_string()).unwrap();
        let path = |f: &str| dir.path().join(f).display().to_string();
        let mut args = vec![
            "--grpc-addr=127.0.0.1:0".into(),
            "--admin-addr=127.0.0.1:0".into(),
            "--verifier=file".into(),
            format!("--tokens-file={}", path("tokens.json")),
            format!("--issuer-cert={}", path("issuer.crt")),
            format!("--issuer-key={}", path("issuer.key")),
            format!("--trust-bundle={}", path("ca-bundle.crt")),
        ];
        let kubeconfig = dir.path().join("kubeconfig");
        let mut env = Vec::new();
        if let IssuerSource::Kubernetes = source {
            let token = "controller-sa-token";
            kube.add_token(token, meshfleet_fake_kube::User::service_account("meshfleet", "meshfleet-controller"));
            kube.apply(
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "meshfleet-controller", "namespace": "meshfleet"},
                "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["meshfleet-issuer"], "verbs": ["get", "list", "watch"]},
                          {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["meshfleet-trust-bundle"], "verbs": ["get", "list", "watch"]}]}),
            )
            .unwrap();
            kube.apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "meshfleet-controller", "namespace": "meshfleet"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "meshfleet-controller"},
                "subjects": [{"kind": "ServiceAccount", "name": "meshfleet-controller", "namespace": "meshfleet"}]}))
            .unwrap();
            kube.write_kubeconfig(&kubeconfig, token).unwrap();
            args.extend(["--issuer-source=kubernetes".into(), "--namespace=meshfleet".into()]);
            env.push(("KUBECONFIG", kubeconfig));
        }
        if releases.is_some() {
            install_injector(&kube, dir.path());
            args.extend([
                "--injector-addr=127.0.0.1:0".into(),
                format!("--injector-cert={}", path("injector.crt")),
                format!("--injector-key={}", path("injector.key")),
            ]);
            // No API access: pods ask for the proxy by their own annotation.
            env.push(("KUBECONFIG", dir.path().join("no-kubeconfig")));
        }
        let mut launch = Launch { args, env, dir: dir.path().to_owned(), starts: 0 };
        let playing = releases.as_ref().and_then(|_| deployed(&kube));
        let process = launch.spawn(&kube, playing.as_ref());
        let grpc = process.addr("grpc");
        let controller = Arc::new(Mutex::new(Controller { process, playing, launch }));

        let app = spawn_app().await;
        let sidecars: Arc<Mutex<HashMap<String, Sidecar>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let follows = releases.is_some();
        let base = SidecarArgs { dir: dir.path().to_owned(), controller: grpc, app, releases: releases.unwrap_or_default() };
        let bundle_from = matches!(source, IssuerSource::Kubernetes).then(|| kube.clone());
        let wanted: Vec<(String, String)> = workloads.iter().map(|(n, a)| (n.to_string(), a.to_string())).collect();
        let kubelet = {
            let (sidecars, stop, controller) = (sidecars.clone(), stop.clone(), controller.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if follows {
                        controller.lock().unwrap_or_else(|e| e.into_inner()).follow(&kube);
                    }
                    sync_sidecars(&kube, &wanted, &base, &sidecars);
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Mesh { dir, grpc, controller, sidecars, bundle_from, stop, kubelet: Some(kubelet) }
    }

    /// Waits until exactly `pods` sidecars run and each holds a certificate (/ready is 200).
    pub async fn wait_ready(&self, pods: usize) {
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let admins: Vec<String> = self.sidecars.lock().unwrap().values().map(|s| s.process.addr("admin").to_string()).collect();
            let mut ready = 0;
            for a in &admins {
                if http.get(format!("http://{a}/ready")).send().await.is_ok_and(|r| r.status().is_success()) {
                    ready += 1;
                }
            }
            if ready == pods && admins.len() == pods {
                return;
            }
            assert!(Instant::now() < deadline, "sidecars never became ready: {ready}/{pods} of {admins:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// (pod name, inbound address, identity) of each sidecar of `app`, sorted by pod name.
    pub fn pods_of(&self, app: &str) -> Vec<(String, String, String)> {
        let mut v: Vec<_> = self.sidecars.lock().unwrap().values().filter(|s| s.app == app).map(|s| (s.pod.clone(), s.inbound(), s.identity())).collect();
        v.sort();
        v
    }

    /// A proxy outside the cluster's pods (an ingress gateway with its own identity), with one
    /// outbound route per target `(inbound address, expected identity)`; waits for its
    /// certificate. Its outbound listeners are `outbound(i)`. With `IssuerSource::Kubernetes`
    /// it starts from the trust ConfigMap as it is now (it must trust the controller's current
    /// issuer, which may no longer be the development one), then follows the controller.
    pub async fn ingress(&self, targets: &[(String, String)]) -> Process {
        let bundle = match &self.bundle_from {
            Some(kube) => {
                let map = kube.get("v1", "ConfigMap", "meshfleet", "meshfleet-trust-bundle").expect("the trust ConfigMap");
                let file = self.dir.path().join(format!("ingress-{:x}.crt", rand::random::<u64>()));
                std::fs::write(&file, map["data"]["ca-bundle.crt"].as_str().unwrap()).unwrap();
                file
            }
            None => self.dir.path().join("ca-bundle.crt"),
        };
        self.gate().start(&bundle, targets).await
    }

    /// What starts ingress proxies, apart from the mesh (for traffic that outlives a borrow).
    fn gate(&self) -> Gate {
        Gate { dir: self.dir.path().to_owned(), grpc: self.grpc }
    }

    /// Continuous traffic into the mesh's pods: see `Traffic`.
    pub fn traffic(&self, kube: Arc<FakeKube>) -> Traffic {
        Traffic::start(kube, self.gate(), self.sidecars.clone())
    }

    /// The version the controller process reports (its admin `/version`).
    pub async fn controller_version(&self) -> String {
        let admin = self.controller.lock().unwrap().process.addr("admin");
        version_at(admin).await
    }
}

/// What an admin endpoint's `/version` says.
pub async fn version_at(admin: SocketAddr) -> String {
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build().unwrap();
    http.get(format!("http://{admin}/version")).send().await.unwrap().text().await.unwrap().trim().to_owned()
}

/// Starts ingress proxies: a proxy outside the cluster's pods (an ingress gateway with its own
/// identity) trusting the mesh's bundle.
#[derive(Clone)]
pub struct Gate {
    dir: PathBuf,
    grpc: SocketAddr,
}

impl Gate {
    /// An ingress with one outbound route per target `(inbound address, expected identity)`,
    /// trusting `bundle`; waits for its certificate. Its outbound listeners are `outbound(i)`.
    pub async fn start(&self, bundle: &Path, targets: &[(String, String)]) -> Process {
        let path = |f: &str| self.dir.join(f).display().to_string();
        let mut args = vec![
            "--admin-addr=127.0.0.1:0".to_string(),
            "--inbound-addr=127.0.0.1:0".to_string(),
            "--inbound-forward=127.0.0.1:1".to_string(),
            format!("--controller-addr={}", self.grpc),
            format!("--trust-anchors={}", bundle.display()),
            format!("--token-file={}", path(&token_of("ingress", "gateway"))),
        ];
        args.extend(targets.iter().map(|(addr, id)| format!("--outbound=127.0.0.1:0={addr}#{id}")));
        let ready = self.dir.join(format!("ingress-{:x}.ready", rand::random::<u64>()));
        let p = Process::spawn("meshfleet-proxy", &args, &ready);
        let url = format!("http://{}/ready", p.addr("admin"));
        let deadline = Instant::now() + Duration::from_secs(20);
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        while !http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
            assert!(Instant::now() < deadline, "the ingress proxy never got a certificate");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        p
    }
}

struct SidecarArgs {
    dir: PathBuf,
    controller: SocketAddr,
    app: SocketAddr,
    releases: Releases,
}

/// Starts a sidecar for each running pod of the wanted workloads that has none, and stops the
/// sidecars of pods that are gone or were given another IP.
fn sync_sidecars(kube: &FakeKube, wanted: &[(String, String)], base: &SidecarArgs, sidecars: &Mutex<HashMap<String, Sidecar>>) {
    // By pod uid: (namespace, pod, app, IP, proxy version).
    let mut live: HashMap<String, (String, String, String, String, String)> = HashMap::new();
    for (ns, app) in wanted {
        for p in kube.list("v1", "Pod", Some(ns)) {
            let labels_app = p.pointer("/metadata/labels/app").and_then(Value::as_str);
            let ip = p.pointer("/status/podIP").and_then(Value::as_str);
            if let (Some(a), Some(ip), Some(proxy)) = (labels_app, ip, proxy_of(&p)) {
                if a == app {
                    let uid = p.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_owned();
                    let version = proxy["image"].as_str().and_then(tag).unwrap_or_default();
                    live.insert(uid, (ns.clone(), p["metadata"]["name"].as_str().unwrap_or_default().to_owned(), app.clone(), ip.to_owned(), version));
                }
            }
        }
    }
    let mut map = sidecars.lock().unwrap_or_else(|e| e.into_inner());
    map.retain(|uid, s| live.get(uid).is_some_and(|l| l.3 == s.ip));
    for (uid, (ns, pod, app, ip, version)) in live {
        if map.contains_key(&uid) {
            continue;
        }
        let path = |f: &str| base.dir.join(f).display().to_string();
        let mut args = vec![
            format!("--admin-addr={ip}:{ADMIN_PORT}"),
            format!("--inbound-addr={ip}:{INBOUND_PORT}"),
            format!("--inbound-forward={}", base.app),
            format!("--controller-addr={}", base.controller),
            format!("--trust-anchors={}", path("ca-bundle.crt")),
            format!("--token-file={}", path(&token_of(&ns, &app))),
            "--drain-timeout-secs=1".into(),
        ];
        if !version.is_empty() {
            args.push(format!("--version-override={version}"));
        }
        args.extend(base.releases.args(&version).iter().cloned());
        let process = Process::spawn("meshfleet-proxy", &args, &base.dir.join(format!("{uid}.ready")));
        map.insert(uid, Sidecar { namespace: ns, pod, app, ip, version, process });
    }
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}
