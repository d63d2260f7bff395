//! A fake Kubernetes API server for tests: real HTTP on 127.0.0.1, Kubernetes JSON, discovery,
//! list/watch with resourceVersions and bookmarks, 409/410 semantics, RBAC, fault injection,
//! mutating admission webhooks and a workload simulator; opt-in (root), a kubelet that runs pods
//! as real processes in network namespaces of their own (`kubelet.rs`), and a small kubectl
//! (`client.rs`). It exists so the agent and the mesh run against something honest; it must
//! never be used as a production API server.

mod admission;
pub mod client;
pub mod endpoints;
mod faults;
mod http;
mod kubelet;
mod patch;
pub mod rbac;
pub mod resources;
mod selectors;
pub mod sim;
mod store;
mod validate;
mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch as tokio_watch;
use tokio::task::JoinHandle;

pub use admission::FailOpen;
pub use faults::Fault;
pub use kubelet::KubeletConfig;
pub use rbac::User;
pub use store::StoreError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bind: {0}")]
    Bind(#[from] std::io::Error),
    #[error("unknown kind {api_version}/{kind}")]
    UnknownKind { api_version: String, kind: String },
    #[error("not a Kubernetes object: {0}")]
    Invalid(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("kube client: {0}")]
    Client(String),
    #[error("kubelet (it needs root, `ip` and `iptables`): {0}")]
    Kubelet(std::io::Error),
}

#[derive(Debug, Clone)]
pub struct Config {
    /// How long a new pod takes to become ready.
    pub ready_delay: Duration,
    pub bookmark_interval: Duration,
    pub sim_tick: Duration,
    /// Changes kept for resuming watches; older resourceVersions get 410 Gone.
    pub history: usize,
    pub addr: SocketAddr,
    /// Run pods for real (root only; see `kubelet.rs`). Off: every pod is simulated.
    pub kubelet: Option<KubeletConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ready_delay: Duration::from_millis(300),
            bookmark_interval: Duration::from_secs(2),
            sim_tick: Duration::from_millis(50),
            history: 50_000,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            kubelet: None,
        }
    }
}

pub(crate) struct Shared {
    pub(crate) store: store::Store,
    pub(crate) rbac: rbac::Rbac,
    pub(crate) faults: faults::Faults,
    pub(crate) admission: admission::Admission,
    pub(crate) config: Config,
    pub(crate) drop_watches: tokio_watch::Sender<u64>,
    pub(crate) cluster_ips: endpoints::ClusterIps,
    pub(crate) kubelet: Option<Arc<kubelet::Kubelet>>,
}

/// The running fake API server; stops when dropped.
pub struct FakeKube {
    pub url: String,
    pub addr: SocketAddr,
    /// A token in `system:masters`: allowed everything even when RBAC is enforced.
    pub admin_token: String,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(k) = &self.shared.kubelet {
            k.shutdown();
        }
    }
}

impl FakeKube {
    pub async fn start() -> Result<FakeKube> {
        Self::start_with(Config::default()).await
    }

    pub async fn start_with(config: Config) -> Result<FakeKube> {
        let admin_token = format!("admin-{:016x}", rand::random::<u64>());
        let (drop_watches, _) = tokio_watch::channel(0);
        let kubelet = match &config.kubelet {
            Some(k) => Some(Arc::new(kubelet::Kubelet::new(k.clone()).map_err(Error::Kubelet)?)),
            None => None,
        };
        let shared = Arc::new(Shared {
            store: store::Store::new(config.history),
            rbac: rbac::Rbac::new(&admin_token),
            faults: Default::default(),
            admission: Default::default(),
            config: config.clone(),
            drop_watches,
            cluster_ips: endpoints::ClusterIps::new(kubelet.as_ref().map(|k| k.service_prefix())),
            kubelet: kubelet.clone(),
        });
        let listener = tokio::net::TcpListener::bind(config.addr).await?;
        let addr = listener.local_addr()?;
        let app = http::router(shared.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "fake kube server stopped");
            }
        });
        let sim = tokio::spawn(sim::Simulator::new(shared.clone()).run(config.sim_tick));
        let mut tasks = vec![server, sim];
        if let Some(kubelet) = kubelet {
            // Pods reach the API server at the host's address on their network, same port if free.
            let gateway = kubelet.gateway();
            let for_pods = match tokio::net::TcpListener::bind((gateway, addr.port())).await {
                Ok(l) => l,
                Err(_) => tokio::net::TcpListener::bind((gateway, 0)).await?,
            };
            kubelet.set_api(for_pods.local_addr()?);
            let app = http::router(shared.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(for_pods, app).await {
                    tracing::error!(error = %e, "fake kube server for pods stopped");
                }
            }));
            tasks.push(tokio::spawn(kubelet.run(shared.clone())));
        }
        Ok(FakeKube { url: format!("http://{addr}"), addr, admin_token, shared, tasks })
    }

    /// A kubeconfig for this server that authenticates with `token`.
    pub fn kubeconfig(&self, token: &str) -> String {
        let doc = json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "default"}}],
        });
        serde_yaml_ng::to_string(&doc).unwrap_or_default()
    }

    pub fn write_kubeconfig(&self, path: &Path, token: &str) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig(token))
    }

    /// A kube-rs client for `token`, built from the kubeconfig, exactly as an agent would.
    pub async fn client_for(&self, token: &str) -> Result<kube::Client> {
        let kc = kube::config::Kubeconfig::from_yaml(&self.kubeconfig(token)).map_err(|e| Error::Client(e.to_string()))?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.map_err(|e| Error::Client(e.to_string()))?;
        kube::Client::try_from(config).map_err(|e| Error::Client(e.to_string()))
    }

    /// An admin client.
    pub async fn client(&self) -> Result<kube::Client> {
        self.client_for(&self.admin_token).await
    }

    // ---- RBAC ----

    /// Turns on authentication and RBAC: unknown tokens get 401, disallowed requests 403.
    pub fn enforce_rbac(&self, on: bool) {
        self.shared.rbac.set_enforce(on)
    }

    /// Maps a bearer token to a service account (or any user).
    pub fn add_token(&self, token: &str, user: User) {
        self.shared.rbac.add_token(token, user)
    }

    /// Every request RBAC refused so far, one line each.
    pub fn denials(&self) -> Vec<String> {
        self.shared.rbac.denials()
    }

    // ---- faults ----

    pub fn inject(&self, fault: Fault) {
        self.shared.faults.add(fault)
    }

    pub fn faults_fired(&self) -> Vec<(String, String, u16)> {
        self.shared.faults.fired()
    }

    /// Ends every open watch stream (clients must resume from their last resourceVersion).
    pub fn drop_watches(&self) {
        self.shared.drop_watches.send_modify(|n| *n += 1);
    }

    /// Forgets the change history: resuming watches get 410 Gone and must list again.
    pub fn compact(&self) {
        self.shared.store.compact()
    }

    // ---- admission webhooks ----

    /// Routes a webhook's `clientConfig.service` (`<name>.<namespace>.svc:<port>`) to `addr`:
    /// the fake has no Services or endpoints, so the test says where the Service's backend
    /// listens (call again to move it, e.g. after a restart on a new port).
    pub fn route_service(&self, namespace: &str, name: &str, port: i32, addr: SocketAddr) {
        self.shared.admission.route_service(namespace, name, port, addr)
    }

    /// Every webhook call that failed and was skipped under failurePolicy Ignore, in order.
    pub fn webhook_fail_open(&self) -> Vec<FailOpen> {
        self.shared.admission.fail_open()
    }

    // ---- objects (bypassing auth and admission webhooks, as an operator with etcd access would) ----

    fn res_of(obj: &Value) -> Result<usize> {
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        resources::by_kind(api_version, kind).ok_or_else(|| Error::UnknownKind { api_version: api_version.into(), kind: kind.into() })
    }

    /// Creates or replaces an object given as JSON (with apiVersion and kind).
    pub fn apply(&self, obj: Value) -> Result<Value> {
        let res = Self::res_of(&obj)?;
        validate::object(res, &obj).map_err(Error::Invalid)?;
        let ns = if resources::def(res).namespaced {
            obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_owned()
        } else {
            String::new()
        };
        let name = store::name_of(&obj).to_owned();
        match self.shared.store.get(res, &ns, &name) {
            None => Ok(self.shared.store.create(res, &ns, obj)?),
            Some(_) => {
                let mut obj = obj;
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                Ok(self.shared.store.update(res, &ns, &name, obj, false)?)
            }
        }
    }

    /// Applies typed objects (anything k8s-openapi serializes).
    pub fn apply_typed<T: serde::Serialize + k8s_openapi::Resource>(&self, obj: &T) -> Result<Value> {
        let mut v = serde_json::to_value(obj).map_err(|e| Error::Invalid(e.to_string()))?;
        v["apiVersion"] = json!(T::API_VERSION);
        v["kind"] = json!(T::KIND);
        self.apply(v)
    }

    /// Applies every document of a multi-document YAML manifest (e.g. an install manifest);
    /// Secret `stringData` is folded into `data` as the real API server does.
    pub fn apply_yaml(&self, yaml: &str) -> Result<Vec<Value>> {
        use serde::Deserialize;
        let mut out = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
            let v = Value::deserialize(doc).map_err(|e| Error::Invalid(e.to_string()))?;
            if v.is_null() {
                continue;
            }
            out.push(self.apply(fold_string_data(v))?);
        }
        Ok(out)
    }

    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let res = resources::by_kind(api_version, kind)?;
        self.shared.store.get(res, namespace, name)
    }

    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        resources::by_kind(api_version, kind).map(|r| self.shared.store.list(r, namespace).0).unwrap_or_default()
    }

    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Result<Value> {
        let res = resources::by_kind(api_version, kind).ok_or_else(|| Error::UnknownKind { api_version: api_version.into(), kind: kind.into() })?;
        Ok(self.shared.store.delete(res, namespace, name)?)
    }

    /// Read-modify-write of one object (no resourceVersion check), e.g. to bump a restart count.
    pub fn modify(&self, api_version: &str, kind: &str, namespace: &str, name: &str, f: impl FnOnce(&mut Value)) -> Result<Value> {
        let res = resources::by_kind(api_version, kind).ok_or_else(|| Error::UnknownKind { api_version: api_version.into(), kind: kind.into() })?;
        Ok(self.shared.store.write(res, namespace, name, |o| {
            let mut n = o.clone();
            f(&mut n);
            Ok(n)
        })?)
    }

    /// Increments the restart count of one container of a pod (a crash the kubelet restarted).
    pub fn restart_container(&self, namespace: &str, pod: &str, container: &str) -> Result<Value> {
        self.modify("v1", "Pod", namespace, pod, |p| {
            if let Some(statuses) = p.pointer_mut("/status/containerStatuses").and_then(Value::as_array_mut) {
                for s in statuses.iter_mut().filter(|s| s["name"] == container) {
                    s["restartCount"] = json!(s["restartCount"].as_i64().unwrap_or(0) + 1);
                }
            }
        })
    }

    /// The network namespace (under /var/run/netns) of a pod the kubelet runs.
    pub fn pod_netns(&self, namespace: &str, name: &str) -> Option<String> {
        let kubelet = self.shared.kubelet.as_ref()?;
        kubelet.pod_netns(namespace, name)
    }

    pub fn resource_version(&self) -> u64 {
        self.shared.store.current_rv()
    }
}

fn fold_string_data(mut v: Value) -> Value {
    if v.get("kind").and_then(Value::as_str) == Some("Secret") {
        if let Some(Value::Object(sd)) = v.as_object_mut().and_then(|m| m.remove("stringData")) {
            use base64::Engine;
            for (k, val) in sd {
                v["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(val.as_str().unwrap_or("").as_bytes()));
            }
        }
    }
    v
}
