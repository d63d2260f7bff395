//! The live inventory: kube-runtime watchers (list + watch, resuming from resourceVersions,
//! relisting after 410) feeding compact projections rather than full objects, because a
//! reflector's cache of 5,000 full Pods would cost more memory than the whole agent budget.
//! A relist replaces a table only when complete, so it never loses or duplicates entries.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};

use ::kube::runtime::watcher::{self, watcher, Event};
use ::kube::runtime::WatchStreamExt;
use ::kube::{Api, Client, Resource, ResourceExt};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret};
use meshfleet_agent_proto::v1;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::certs;
use super::config::{AgentConfig, CONTROLLER_DEPLOYMENT, ISSUER_SECRET, TRUST_BUNDLE};
use super::telemetry::Telemetry;

/// A pod is meshed when it carries a container with this name (the injected sidecar).
pub const PROXY_CONTAINER: &str = "meshfleet-proxy";
/// A namespace with this label set to "enabled" is meshed even before it has a meshed pod.
pub const INJECT_LABEL: &str = "meshfleet.io/inject";
/// The proxy's admin port when its container does not name a port "admin".
pub const DEFAULT_ADMIN_PORT: u16 = 4191;

#[derive(Debug, Clone, PartialEq)]
pub struct MeshedPod {
    pub pod: v1::Pod,
    pub uid: String,
    pub ip: Option<String>,
    pub admin_port: u16,
    pub proxy_restarts: u32,
}

#[derive(Default)]
pub struct State {
    pub pods: HashMap<String, MeshedPod>,
    /// Namespace name -> carries the inject label.
    pub namespaces: HashMap<String, bool>,
    pub nodes: HashMap<String, ()>,
    pub controller: HashMap<String, v1::ControlPlane>,
    pub issuer: HashMap<String, Vec<v1::CertificateInfo>>,
    pub trust: HashMap<String, Vec<v1::CertificateInfo>>,
    /// Kinds whose initial list has completed.
    pub synced: BTreeSet<&'static str>,
}

pub struct Inventory {
    state: Mutex<State>,
    pub changed: Notify,
    pub kubernetes_version: Mutex<String>,
}

pub const KINDS: &[&str] = &["pods", "namespaces", "nodes", "controller", "issuer", "trust"];

impl Inventory {
    pub fn new() -> Arc<Inventory> {
        Arc::new(Inventory { state: Mutex::new(State::default()), changed: Notify::new(), kubernetes_version: Mutex::new(String::new()) })
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn synced(&self) -> bool {
        self.lock().synced.len() == KINDS.len()
    }

    pub fn kubernetes_version(&self) -> String {
        self.kubernetes_version.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Everything but the pods: what a Delta's `facts` carries.
    pub fn facts(&self) -> v1::Inventory {
        let st = self.lock();
        let mut namespaces: BTreeSet<&str> = st.namespaces.iter().filter(|(_, inject)| **inject).map(|(n, _)| n.as_str()).collect();
        namespaces.extend(st.pods.values().map(|p| p.pod.namespace.as_str()));
        let mut certificates: Vec<v1::CertificateInfo> = st.issuer.values().chain(st.trust.values()).flatten().cloned().collect();
        certificates.sort_by(|a, b| (&a.role, &a.sha256_fingerprint).cmp(&(&b.role, &b.sha256_fingerprint)));
        v1::Inventory {
            kubernetes_version: self.kubernetes_version(),
            node_count: st.nodes.len() as u32,
            control_plane: st.controller.values().next().cloned(),
            namespaces: namespaces.into_iter().map(|n| v1::MeshedNamespace { name: n.to_owned() }).collect(),
            pods: Vec::new(),
            certificates,
        }
    }

    pub fn pods(&self) -> HashMap<String, MeshedPod> {
        self.lock().pods.clone()
    }

    pub fn snapshot(&self) -> v1::Inventory {
        let mut inv = self.facts();
        let mut pods: Vec<v1::Pod> = self.lock().pods.values().map(|p| p.pod.clone()).collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        inv.pods = pods;
        inv
    }

    pub fn is_meshed_namespace(&self, ns: &str) -> bool {
        let st = self.lock();
        st.namespaces.get(ns).copied().unwrap_or(false) || st.pods.values().any(|p| p.pod.namespace == ns)
    }
}

fn key<K: Resource>(o: &K) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

/// Runs one watcher into one table until the process stops; errors are retried with backoff.
async fn reflect<K, P>(api: Api<K>, config: watcher::Config, kind: &'static str, inv: Arc<Inventory>, telemetry: Telemetry, table: fn(&mut State) -> &mut HashMap<String, P>, project: impl Fn(&K) -> Option<P>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut pending: Option<HashMap<String, P>> = None;
    while let Some(event) = stream.next().await {
        telemetry.watch_event(kind, event.is_ok());
        let mut st = inv.lock();
        match event {
            Ok(Event::Init) => pending = Some(HashMap::new()),
            Ok(Event::InitApply(o)) => {
                if let (Some(p), Some(v)) = (pending.as_mut(), project(&o)) {
                    p.insert(key(&o), v);
                }
            }
            Ok(Event::InitDone) => {
                if let Some(p) = pending.take() {
                    *table(&mut st) = p;
                }
                st.synced.insert(kind);
            }
            Ok(Event::Apply(o)) => match project(&o) {
                Some(v) => drop(table(&mut st).insert(key(&o), v)),
                None => drop(table(&mut st).remove(&key(&o))),
            },
            Ok(Event::Delete(o)) => drop(table(&mut st).remove(&key(&o))),
            Err(e) => {
                tracing::warn!(kind, error = %e, "watch failed; retrying");
                continue;
            }
        }
        drop(st);
        inv.changed.notify_one();
    }
}

/// Starts every inventory watcher; they run until aborted.
pub fn spawn_watchers(client: Client, config: &AgentConfig, inv: Arc<Inventory>, telemetry: Telemetry) -> Vec<tokio::task::JoinHandle<()>> {
    let mesh = config.mesh_namespace.clone();
    let named = |n: &str| watcher::Config::default().fields(&format!("metadata.name={n}"));
    let t = telemetry;
    vec![
        tokio::spawn(reflect(Api::<Pod>::all(client.clone()), watcher::Config::default(), "pods", inv.clone(), t.clone(), |s| &mut s.pods, meshed_pod)),
        tokio::spawn(reflect(Api::<Namespace>::all(client.clone()), watcher::Config::default(), "namespaces", inv.clone(), t.clone(), |s| &mut s.namespaces, |n: &Namespace| {
            Some(n.labels().get(INJECT_LABEL).is_some_and(|v| v == "enabled"))
        })),
        tokio::spawn(reflect(Api::<Node>::all(client.clone()), watcher::Config::default(), "nodes", inv.clone(), t.clone(), |s| &mut s.nodes, |_: &Node| Some(()))),
        tokio::spawn(reflect(Api::<Deployment>::namespaced(client.clone(), &mesh), named(CONTROLLER_DEPLOYMENT), "controller", inv.clone(), t.clone(), |s| &mut s.controller, |d: &Deployment| Some(control_plane(d)))),
        // The issuer Secret holds the issuer's private key: only `tls.crt`/`crt.pem` is read.
        tokio::spawn(reflect(Api::<Secret>::namespaced(client.clone(), &mesh), named(ISSUER_SECRET), "issuer", inv.clone(), t.clone(), |s| &mut s.issuer, |s: &Secret| {
            let data = s.data.as_ref()?;
            let pem = ["tls.crt", "crt.pem"].iter().find_map(|k| data.get(*k))?;
            Some(certs::describe("issuer", &pem.0))
        })),
        tokio::spawn(reflect(Api::<ConfigMap>::namespaced(client, &mesh), named(TRUST_BUNDLE), "trust", inv, t, |s| &mut s.trust, |c: &ConfigMap| {
            let data = c.data.as_ref()?;
            Some(data.iter().filter(|(k, _)| k.ends_with(".crt") || k.ends_with(".pem")).flat_map(|(_, v)| certs::describe("trust-anchor", v.as_bytes())).collect())
        })),
    ]
}

/// "Deployment/web" for a pod owned by ReplicaSet "web-<pod-template-hash>": the hash is the
/// pod's own label, so no ReplicaSet watch (and its memory) is needed to find the Deployment.
pub fn workload_of(p: &Pod) -> String {
    let Some(owner) = p.owner_references().iter().find(|o| o.controller == Some(true)) else { return format!("Pod/{}", p.name_any()) };
    if owner.kind == "ReplicaSet" {
        if let Some(hash) = p.labels().get("pod-template-hash") {
            if let Some(d) = owner.name.strip_suffix(&format!("-{hash}")) {
                return format!("Deployment/{d}");
            }
        }
    }
    format!("{}/{}", owner.kind, owner.name)
}

fn meshed_pod(p: &Pod) -> Option<MeshedPod> {
    let spec = p.spec.as_ref()?;
    let proxy = spec.containers.iter().find(|c| c.name == PROXY_CONTAINER)?;
    let version = proxy.image.as_deref().and_then(|i| i.rsplit_once(':')).map(|(_, t)| t.to_owned()).unwrap_or_default();
    let admin_port = proxy.ports.iter().flatten().find(|p| p.name.as_deref() == Some("admin")).and_then(|p| u16::try_from(p.container_port).ok()).unwrap_or(DEFAULT_ADMIN_PORT);
    let status = p.status.as_ref();
    let statuses = status.and_then(|s| s.container_statuses.as_ref());
    let restarts: i32 = statuses.iter().flat_map(|s| s.iter()).map(|c| c.restart_count).sum();
    let proxy_restarts = statuses.iter().flat_map(|s| s.iter()).find(|c| c.name == PROXY_CONTAINER).map_or(0, |c| c.restart_count);
    let ready = status.and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    Some(MeshedPod {
        pod: v1::Pod {
            namespace: p.namespace().unwrap_or_default(),
            name: p.name_any(),
            workload: workload_of(p),
            proxy_version: version,
            ready,
            restarts: restarts.max(0) as u32,
            phase: status.and_then(|s| s.phase.clone()).unwrap_or_default(),
        },
        uid: p.uid().unwrap_or_default(),
        ip: status.and_then(|s| s.pod_ip.clone()),
        admin_port,
        proxy_restarts: proxy_restarts.max(0) as u32,
    })
}

fn control_plane(d: &Deployment) -> v1::ControlPlane {
    let image = d.spec.as_ref().and_then(|s| s.template.spec.as_ref()).and_then(|s| s.containers.first()).and_then(|c| c.image.clone()).unwrap_or_default();
    let version = image.rsplit_once(':').map(|(_, t)| t.to_owned()).unwrap_or_default();
    let status = d.status.as_ref();
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as u32;
    let ready_replicas = status.and_then(|s| s.ready_replicas).unwrap_or(0).max(0) as u32;
    v1::ControlPlane {
        version: version.clone(),
        replicas,
        ready_replicas,
        components: vec![v1::Component { name: CONTROLLER_DEPLOYMENT.into(), version, ready: replicas > 0 && ready_replicas >= replicas }],
    }
}
