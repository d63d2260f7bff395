//! The live inventory: kube-runtime watchers (list + watch, resuming from resourceVersions,
//! relisting after 410) feeding compact projections rather than full objects, because a
//! reflector's cache of 5,000 full Pods would cost more memory than the whole agent budget.
//! A relist replaces a table only when complete, so it never loses or duplicates entries.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};

use ::kube::core::PartialObjectMeta;
use ::kube::runtime::watcher::{self, watcher, Event};
use ::kube::runtime::WatchStreamExt;
use ::kube::{Api, Client, Resource, ResourceExt};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret};
use meshfleet_agent_protocol::v1;
use meshfleet_pki::names::{namespace_injects, pod_injects};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use super::certs;
use super::config::{AgentConfig, CONTROLLER_DEPLOYMENT, ISSUER_SECRET, TRUST_BUNDLE};
use super::proxy_identity::ProxyIdentity;
use super::telemetry::Telemetry;

/// A pod is meshed when it carries a container with this name: the injected native sidecar (an
/// init container with `restartPolicy: Always`) or, added by hand, a regular container.
pub const PROXY_CONTAINER: &str = "meshfleet-proxy";
/// A namespace with this label or annotation set to "enabled" is meshed even before it has a
/// meshed pod; a pod annotated "disabled" is left without the proxy. The injector's own rule
/// (`meshfleet_pki::names::namespace_injects`, `pod_injects`).
pub use meshfleet_pki::names::INJECT as INJECT_LABEL;
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
    /// Every pod not opted out of injection, meshed or not (metadata only): the meshed
    /// namespaces' pods missing from `pods` run without the proxy.
    pub pod_names: HashMap<String, ()>,
    /// Namespace name -> carries the inject label.
    pub namespaces: HashMap<String, bool>,
    pub nodes: HashMap<String, ()>,
    pub controller: HashMap<String, v1::ControlPlane>,
    pub issuer: HashMap<String, Vec<v1::CertificateInfo>>,
    pub trust: HashMap<String, Vec<v1::CertificateInfo>>,
    /// Kinds whose initial list has completed.
    pub synced: BTreeSet<&'static str>,
    /// Pod keys changed since the session's pump last took them, so a Delta costs O(changes)
    /// rather than O(pods); `all` after a relist, which may have changed anything.
    pub pod_changes: PodChanges,
}

#[derive(Default)]
pub struct PodChanges {
    pub keys: HashSet<String>,
    pub all: bool,
}

impl PodChanges {
    /// Records a changed pod key (`None`: the whole table was replaced) in a table of `size` pods.
    fn record(&mut self, key: Option<&str>, size: usize) {
        match key {
            Some(_) if self.all => {}
            Some(k) => {
                self.keys.insert(k.to_owned());
                // Nobody takes the changes on a standby replica: past the table's size a full
                // diff is as cheap, so the set stops growing there.
                if self.keys.len() > size.max(1024) {
                    self.all = true;
                    self.keys.clear();
                }
            }
            None => {
                self.all = true;
                self.keys.clear();
            }
        }
    }
}

/// What changed among the pods: everything (a full diff is needed), or these keys with their
/// current state (`None`: gone).
pub enum ChangedPods {
    All(HashMap<String, MeshedPod>),
    Some(Vec<(String, Option<MeshedPod>)>),
}

pub struct Inventory {
    state: Mutex<State>,
    pub changed: Notify,
    pub kubernetes_version: Mutex<String>,
}

pub const KINDS: &[&str] = &["pods", "pod_names", "namespaces", "nodes", "controller", "issuer", "trust"];

/// Pods named per namespace without the proxy (the count covers them all).
const UNINJECTED_EXAMPLES: usize = 10;

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
        let uninjected = uninjected_pods(&st);
        namespaces.extend(st.pods.values().map(|p| p.pod.namespace.as_str()));
        let mut certificates: Vec<v1::CertificateInfo> = st.issuer.values().chain(st.trust.values()).flatten().cloned().collect();
        certificates.sort_by(|a, b| (&a.role, &a.sha256_fingerprint).cmp(&(&b.role, &b.sha256_fingerprint)));
        v1::Inventory {
            kubernetes_version: self.kubernetes_version(),
            node_count: st.nodes.len() as u32,
            control_plane: st.controller.values().next().cloned(),
            namespaces: namespaces
                .into_iter()
                .map(|n| {
                    let (count, examples) = uninjected.get(n).cloned().unwrap_or_default();
                    v1::MeshedNamespace { name: n.to_owned(), pods_without_proxy: count, pods_without_proxy_examples: examples }
                })
                .collect(),
            pods: Vec::new(),
            certificates,
        }
    }

    pub fn pods(&self) -> HashMap<String, MeshedPod> {
        self.lock().pods.clone()
    }

    /// The pods changed since the previous call (all of them after a relist or `mark_all_pods_changed`).
    pub fn take_pod_changes(&self) -> ChangedPods {
        let mut st = self.lock();
        let changes = std::mem::take(&mut st.pod_changes);
        if changes.all {
            return ChangedPods::All(st.pods.clone());
        }
        let mut changed = Vec::with_capacity(changes.keys.len());
        for k in changes.keys {
            let p = st.pods.get(&k).cloned();
            changed.push((k, p));
        }
        ChangedPods::Some(changed)
    }

    /// Makes the next `take_pod_changes` return every pod (a new session starts from scratch).
    pub fn mark_all_pods_changed(&self) {
        let mut st = self.lock();
        st.pod_changes.all = true;
        st.pod_changes.keys.clear();
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

    /// Records what the proxies of pods (by uid) said about their identity. A pod whose
    /// identity changed is marked changed, so the next Delta carries it; a pod replaced or gone
    /// since it was read is left alone.
    pub fn set_proxy_identities(&self, read: Vec<(String, ProxyIdentity)>) {
        if read.is_empty() {
            return;
        }
        let mut st = self.lock();
        let by_uid: HashMap<String, ProxyIdentity> = read.into_iter().collect();
        let mut changed = Vec::new();
        for (k, p) in st.pods.iter_mut() {
            if let Some(id) = by_uid.get(&p.uid) {
                if id.clone().write_to(&mut p.pod) {
                    changed.push(k.clone());
                }
            }
        }
        if changed.is_empty() {
            return;
        }
        let size = st.pods.len();
        for k in &changed {
            st.pod_changes.record(Some(k), size);
        }
        drop(st);
        self.changed.notify_one();
    }
}

/// Per namespace with injection on: its pods without the proxy, counted, and the first names.
fn uninjected_pods(st: &State) -> HashMap<&str, (u32, Vec<String>)> {
    let mut out: HashMap<&str, (u32, Vec<String>)> = HashMap::new();
    for key in st.pod_names.keys().filter(|k| !st.pods.contains_key(*k)) {
        let Some((ns, name)) = key.split_once('/') else { continue };
        if st.namespaces.get(ns).copied().unwrap_or(false) {
            let (count, examples) = out.entry(ns).or_default();
            *count += 1;
            examples.push(name.to_owned());
        }
    }
    for (_, examples) in out.values_mut() {
        examples.sort_unstable();
        examples.truncate(UNINJECTED_EXAMPLES);
    }
    out
}

/// "namespace/name" for a namespaced object, the name alone for a cluster-scoped one: the
/// namespaces table is looked up by namespace name (`is_meshed_namespace`, `facts`).
fn key<K: Resource>(o: &K) -> String {
    match o.namespace() {
        Some(ns) => format!("{ns}/{}", o.name_any()),
        None => o.name_any(),
    }
}

/// Where a watcher keeps its projections, whether it records changed keys (pods only), and
/// what of a replaced projection it keeps (pods: what their proxy said, which the object does
/// not hold).
struct Table<P> {
    map: fn(&mut State) -> &mut HashMap<String, P>,
    changes: Option<fn(&mut State) -> &mut PodChanges>,
    keep: Option<fn(&P, &mut P)>,
}

impl<P> Table<P> {
    fn plain(map: fn(&mut State) -> &mut HashMap<String, P>) -> Table<P> {
        Table { map, changes: None, keep: None }
    }

    /// `None`: the whole table was replaced.
    fn changed(&self, st: &mut State, key: Option<&str>) {
        let Some(changes) = self.changes else { return };
        let size = (self.map)(st).len();
        changes(st).record(key, size);
    }

    /// Inserts `v` under `k`, keeping what `keep` says of the entry it replaces.
    fn insert(&self, st: &mut State, k: String, mut v: P) {
        let map = (self.map)(st);
        if let (Some(keep), Some(old)) = (self.keep, map.get(&k)) {
            keep(old, &mut v);
        }
        map.insert(k, v);
    }

    /// Replaces the whole table with a complete relist.
    fn replace(&self, st: &mut State, mut new: HashMap<String, P>) {
        let map = (self.map)(st);
        if let Some(keep) = self.keep {
            for (k, v) in new.iter_mut() {
                if let Some(old) = map.get(k) {
                    keep(old, v);
                }
            }
        }
        *map = new;
    }
}

impl Table<MeshedPod> {
    fn pods() -> Table<MeshedPod> {
        Table { map: |s| &mut s.pods, changes: Some(|s| &mut s.pod_changes), keep: Some(keep_proxy_identity) }
    }
}

/// A pod's update from the API server keeps what its proxy said until the proxy is read
/// again; a new pod under the same name (another uid) starts without it.
fn keep_proxy_identity(old: &MeshedPod, new: &mut MeshedPod) {
    if old.uid == new.uid {
        ProxyIdentity::of(&old.pod).write_to(&mut new.pod);
    }
}

/// Runs one watcher into one table until the process stops; errors are retried with backoff.
async fn reflect<K, P>(
    api: Api<K>,
    config: watcher::Config,
    kind: &'static str,
    inv: Arc<Inventory>,
    telemetry: Telemetry,
    table: Table<P>,
    project: impl Fn(&K) -> Option<P>,
) where
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
                    table.replace(&mut st, p);
                    table.changed(&mut st, None);
                }
                st.synced.insert(kind);
                drop(st);
                super::release_freed_memory();
                inv.changed.notify_one();
                continue;
            }
            Ok(Event::Apply(o)) => {
                let k = key(&o);
                match project(&o) {
                    Some(v) => table.insert(&mut st, k.clone(), v),
                    None => drop((table.map)(&mut st).remove(&k)),
                }
                table.changed(&mut st, Some(&k));
            }
            Ok(Event::Delete(o)) => {
                let k = key(&o);
                (table.map)(&mut st).remove(&k);
                table.changed(&mut st, Some(&k));
            }
            Err(e) => {
                tracing::warn!(kind, error = %e, "watch failed; retrying");
                continue;
            }
        }
        drop(st);
        inv.changed.notify_one();
    }
}

/// Pods per list page, below kube-rs' 500: a page of full Pods (5 KB of JSON each, several
/// times that decoded) is the agent's transient peak while it (re)lists.
const POD_PAGE: u32 = 100;

/// Starts every inventory watcher; they run until aborted.
pub fn spawn_watchers(client: Client, config: &AgentConfig, inv: Arc<Inventory>, telemetry: Telemetry) -> Vec<tokio::task::JoinHandle<()>> {
    let mesh = config.mesh_namespace.clone();
    let named = |n: &str| watcher::Config::default().fields(&format!("metadata.name={n}"));
    let t = telemetry;
    vec![
        tokio::spawn(reflect(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().page_size(POD_PAGE),
            "pods",
            inv.clone(),
            t.clone(),
            Table::pods(),
            meshed_pod,
        )),
        // Metadata only (names and annotations), so knowing every pod costs little.
        tokio::spawn(reflect(
            Api::<PartialObjectMeta<Pod>>::all(client.clone()),
            watcher::Config::default().page_size(POD_PAGE),
            "pod_names",
            inv.clone(),
            t.clone(),
            Table::plain(|s| &mut s.pod_names),
            // The pods the injector would mesh if their namespace is meshed (those that count).
            |p: &PartialObjectMeta<Pod>| pod_injects(p.annotations().get(INJECT_LABEL).map(String::as_str), true).then_some(()),
        )),
        tokio::spawn(reflect(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
            "namespaces",
            inv.clone(),
            t.clone(),
            Table::plain(|s| &mut s.namespaces),
            |n: &Namespace| Some(injected_namespace(n)),
        )),
        tokio::spawn(reflect(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            "nodes",
            inv.clone(),
            t.clone(),
            Table::plain(|s| &mut s.nodes),
            |_: &Node| Some(()),
        )),
        tokio::spawn(reflect(
            Api::<Deployment>::namespaced(client.clone(), &mesh),
            named(CONTROLLER_DEPLOYMENT),
            "controller",
            inv.clone(),
            t.clone(),
            Table::plain(|s| &mut s.controller),
            |d: &Deployment| Some(control_plane(d)),
        )),
        // The issuer Secret holds the issuer's private key: only `tls.crt`/`crt.pem` is read.
        tokio::spawn(reflect(
            Api::<Secret>::namespaced(client.clone(), &mesh),
            named(ISSUER_SECRET),
            "issuer",
            inv.clone(),
            t.clone(),
            Table::plain(|s| &mut s.issuer),
            |s: &Secret| {
                let data = s.data.as_ref()?;
                let pem = ["tls.crt", "crt.pem"].iter().find_map(|k| data.get(*k))?;
                Some(certs::describe("issuer", &pem.0))
            },
        )),
        tokio::spawn(reflect(
            Api::<ConfigMap>::namespaced(client, &mesh),
            named(TRUST_BUNDLE),
            "trust",
            inv,
            t,
            Table::plain(|s| &mut s.trust),
            |c: &ConfigMap| {
                let data = c.data.as_ref()?;
                Some(
                    data.iter()
                        .filter(|(k, _)| k.ends_with(".crt") || k.ends_with(".pem"))
                        .flat_map(|(_, v)| certs::describe("trust-anchor", v.as_bytes()))
                        .collect(),
                )
            },
        )),
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

fn injected_namespace(n: &Namespace) -> bool {
    namespace_injects(n.metadata.labels.as_ref(), n.metadata.annotations.as_ref())
}

fn meshed_pod(p: &Pod) -> Option<MeshedPod> {
    let spec = p.spec.as_ref()?;
    let sidecars = spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let proxy = spec.containers.iter().chain(sidecars).find(|c| c.name == PROXY_CONTAINER)?;
    let version = proxy.image.as_deref().and_then(|i| i.rsplit_once(':')).map(|(_, t)| t.to_owned()).unwrap_or_default();
    let admin_port = proxy
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("admin"))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(DEFAULT_ADMIN_PORT);
    let status = p.status.as_ref();
    // A native sidecar's status is among the init containers'.
    let statuses = || status.into_iter().flat_map(|s| s.container_statuses.iter().chain(s.init_container_statuses.iter()).flatten());
    let restarts: i32 = statuses().map(|c| c.restart_count).sum();
    let proxy_restarts = statuses().find(|c| c.name == PROXY_CONTAINER).map_or(0, |c| c.restart_count);
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
            ..Default::default()
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

#[cfg(test)]
mod tests;
