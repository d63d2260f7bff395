//! A kubelet that runs pods for real (root only, opt-in through `Config::kubelet`): a pod whose
//! containers it can all run becomes processes in a network namespace of its own (a veth pair,
//! its /32 routed from the host, as a routed CNI does) and a mount namespace of its own (its
//! volumes, an /etc/hosts naming the Services); the pod's status follows the processes. It also
//! plays kube-proxy (DNAT from cluster IPs to ready endpoints). Pods it cannot run stay with the
//! simulator. Everything it creates on the host goes when the `FakeKube` is dropped.

mod container;
mod net;
mod volumes;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::resources::find;
use crate::store::{name_of, namespace_of};
use crate::Shared;
use container::{Container, Probe};
pub(crate) use net::Net;

/// How often processes are reaped, probes run and statuses written.
const TICK: Duration = Duration::from_millis(200);
/// Readiness probes run this often, whatever `periodSeconds` says, so tests stay quick.
const PROBE_PERIOD: Duration = Duration::from_secs(1);
/// A container that exited is started again after this long (no exponential backoff).
const RESTART_DELAY: Duration = Duration::from_secs(1);
/// When the `FakeKube` is dropped, processes get this long after SIGTERM (not their pod's
/// grace period: a test's teardown should not wait 30 s).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Default)]
pub struct KubeletConfig {
    /// Image repository (the image without its tag or digest, e.g. `meshfleet/proxy`) ->
    /// the executable that stands for its entrypoint. Its directory stands for the image's
    /// `PATH`: a `command` naming a file there runs that file.
    pub images: HashMap<String, PathBuf>,
    /// Container output goes to `<log_dir>/<namespace>_<pod>_<container>.log`.
    pub log_dir: PathBuf,
}

impl KubeletConfig {
    /// What a container runs: `command` (a host path, a file of the image's directory or a
    /// program on this process's `PATH`) followed by `args`, or the image's executable with
    /// `args`. None when neither applies.
    pub fn entrypoint(&self, container: &Value) -> Option<(PathBuf, Vec<String>)> {
        let strings = |field: &str| -> Vec<String> {
            container.get(field).and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect()).unwrap_or_default()
        };
        let image = self.images.get(repository(container.get("image").and_then(Value::as_str).unwrap_or("")));
        let (command, args) = (strings("command"), strings("args"));
        match command.split_first() {
            Some((first, rest)) => {
                let path = if first.contains('/') {
                    PathBuf::from(first)
                } else {
                    let image_dir = image.and_then(|e| e.parent()).map(|d| d.join(first)).filter(|p| p.is_file());
                    image_dir.or_else(|| on_path(first))?
                };
                Some((path, rest.iter().cloned().chain(args).collect()))
            }
            None => Some((image?.clone(), args)),
        }
    }

    /// Whether every container of the pod (init containers included) can be run here.
    pub fn can_run(&self, pod: &Value) -> bool {
        let containers: Vec<&Value> =
            ["containers", "initContainers"].iter().flat_map(|f| pod.pointer(&format!("/spec/{f}")).and_then(Value::as_array).into_iter().flatten()).collect();
        !containers.is_empty() && containers.iter().all(|c| self.entrypoint(c).is_some())
    }
}

/// `registry:5000/team/app:1.2@sha256:...` -> `registry:5000/team/app`.
fn repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(program)).find(|p| p.is_file())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A pod this kubelet runs.
struct PodRun {
    namespace: String,
    name: String,
    /// The pod as it was when started (pods are immutable where it matters).
    pod: Value,
    ip: Ipv4Addr,
    netns: String,
    dir: PathBuf,
    init: Vec<Container>,
    main: Vec<Container>,
    /// How many init containers completed (or, for sidecars, started).
    initialized: usize,
    started_at: String,
    /// Set once the pod is deleted: SIGTERM was sent, SIGKILL follows at this instant.
    kill_at: Option<Instant>,
}

impl PodRun {
    fn containers(&self) -> impl Iterator<Item = &Container> {
        self.init.iter().chain(&self.main)
    }

    fn containers_mut(&mut self) -> impl Iterator<Item = &mut Container> {
        self.init.iter_mut().chain(self.main.iter_mut())
    }

    fn status(&self, host_ip: Ipv4Addr) -> Value {
        let initialized = self.initialized == self.init.len();
        let ready = initialized && self.init.iter().filter(|c| c.sidecar).chain(&self.main).all(|c| c.ready);
        let condition = |kind: &str, ok: bool| json!({"type": kind, "status": if ok { "True" } else { "False" }, "lastTransitionTime": self.started_at});
        let ip = self.ip.to_string();
        // Every app container exited and none is restarted (restartPolicy Never or OnFailure).
        let policy = self.pod.pointer("/spec/restartPolicy").and_then(Value::as_str).unwrap_or("Always");
        let exits: Option<Vec<i32>> = self.main.iter().map(|c| c.last_exit.filter(|_| !c.running())).collect();
        let phase = match exits {
            _ if !initialized => "Pending",
            Some(codes) if codes.iter().all(|c| *c == 0) && policy != "Always" => "Succeeded",
            Some(_) if policy == "Never" => "Failed",
            _ => "Running",
        };
        json!({
            "phase": phase,
            "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": host_ip.to_string(), "startTime": self.started_at,
            "conditions": [condition("PodScheduled", true), condition("Initialized", initialized), condition("ContainersReady", ready), condition("Ready", ready)],
            "initContainerStatuses": self.init.iter().map(Container::status).collect::<Vec<_>>(),
            "containerStatuses": self.main.iter().map(Container::status).collect::<Vec<_>>(),
        })
    }
}

struct State {
    net: Net,
    pods: HashMap<String, PodRun>,
    /// Pods that could not start yet (a missing ConfigMap, ...): uid -> why.
    waiting: HashMap<String, String>,
    /// Each pod's service-account token (uid -> token), minted once: a waiting pod retries.
    tokens: HashMap<String, String>,
    /// What the Services look like in /etc/hosts and the DNAT rules, to rewrite on change only.
    hosts: String,
    rules: Vec<Vec<String>>,
}

/// The kubelet's handle: `run` drives it, `shutdown` (called when the `FakeKube` drops) stops
/// every pod and removes what it made on the host.
pub(crate) struct Kubelet {
    config: KubeletConfig,
    state: Mutex<State>,
    /// The API server's address as pods reach it (their kubeconfig's server).
    api: Mutex<Option<SocketAddr>>,
}

impl Kubelet {
    pub fn new(config: KubeletConfig) -> std::io::Result<Kubelet> {
        std::fs::create_dir_all(&config.log_dir)?;
        let net = Net::create()?;
        let state = State { net, pods: HashMap::new(), waiting: HashMap::new(), tokens: HashMap::new(), hosts: String::new(), rules: Vec::new() };
        Ok(Kubelet { config, state: Mutex::new(state), api: Mutex::new(None) })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The host's address on the pod network (pods' gateway), and the Service range.
    pub fn gateway(&self) -> Ipv4Addr {
        self.lock().net.gateway()
    }

    pub fn service_prefix(&self) -> [u8; 3] {
        self.lock().net.services
    }

    pub fn set_api(&self, addr: SocketAddr) {
        *self.api.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
    }

    pub fn config(&self) -> &KubeletConfig {
        &self.config
    }

    pub fn pod_netns(&self, namespace: &str, name: &str) -> Option<String> {
        self.lock().pods.values().find(|r| r.namespace == namespace && r.name == name && r.kill_at.is_none()).map(|r| r.netns.clone())
    }

    pub async fn run(self: Arc<Self>, shared: Arc<Shared>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.step(&shared);
            self.probe().await;
        }
    }

    /// Starts new pods, advances init containers, restarts exited containers, stops deleted
    /// pods, writes statuses and keeps /etc/hosts and the Service rules current.
    fn step(&self, shared: &Shared) {
        let pods_res = find("", "v1", "pods").expect("registered");
        let (pods, _) = shared.store.list(pods_res, None);
        let mut state = self.lock();
        let live: HashMap<&str, &Value> = pods.iter().map(|p| (uid(p), p)).collect();
        for (id, run) in state.pods.iter_mut() {
            if !live.contains_key(id.as_str()) && run.kill_at.is_none() {
                let grace = run.pod.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_u64).unwrap_or(30);
                run.containers().for_each(|c| c.signal(libc::SIGTERM));
                run.kill_at = Some(Instant::now() + Duration::from_secs(grace));
            }
        }
        state.waiting.retain(|id, _| live.contains_key(id.as_str()));
        let State { tokens, pods: runs, .. } = &mut *state;
        tokens.retain(|id, _| live.contains_key(id.as_str()) || runs.contains_key(id));
        let new: Vec<&Value> = pods.iter().filter(|p| !state.pods.contains_key(uid(p)) && self.config.can_run(p)).collect();
        for pod in new {
            match self.start(shared, &mut state, pod) {
                Ok(run) => {
                    state.waiting.remove(uid(pod));
                    state.pods.insert(uid(pod).to_owned(), run);
                }
                Err(why) => {
                    if state.waiting.insert(uid(pod).to_owned(), why.clone()).as_ref() != Some(&why) {
                        tracing::warn!(pod = name_of(pod), namespace = namespace_of(pod), "cannot start the pod yet: {why}");
                    }
                    let _ = shared.store.write(pods_res, namespace_of(pod), name_of(pod), |old| {
                        let mut new = old.clone();
                        new["status"] = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"},
                            {"type": "Ready", "status": "False", "reason": "ContainerCreating", "message": why}]});
                        Ok(new)
                    });
                }
            }
        }
        let host_ip = state.net.gateway();
        let mut gone = Vec::new();
        for (id, run) in state.pods.iter_mut() {
            run.containers_mut().for_each(Container::reap);
            if let Some(kill_at) = run.kill_at {
                if run.containers().all(|c| !c.running()) || Instant::now() >= kill_at {
                    gone.push(id.clone());
                }
                continue;
            }
            self.advance(run);
            let status = run.status(host_ip);
            let _ = shared.store.write(pods_res, &run.namespace, &run.name, |old| {
                let mut new = old.clone();
                new["status"] = status;
                if new.pointer("/spec/nodeName").is_none() {
                    new["spec"]["nodeName"] = json!("fake-node-1");
                }
                Ok(new)
            });
        }
        for id in gone {
            if let Some(run) = state.pods.remove(&id) {
                stop(&mut state.net, run, Duration::ZERO);
            }
        }
        self.sync_services(shared, &mut state);
    }

    /// Runs the init containers in order (a sidecar counts once started), then the app
    /// containers; restarts what exited, after `RESTART_DELAY`.
    fn advance(&self, run: &mut PodRun) {
        let due = |c: &Container| c.restart_at.is_none_or(|t| Instant::now() >= t);
        while run.initialized < run.init.len() {
            let i = run.initialized;
            let c = &run.init[i];
            if c.running() && !c.sidecar {
                return;
            }
            if c.last_exit == Some(0) && !c.sidecar {
                run.initialized += 1;
                continue;
            }
            if !c.running() {
                if !due(c) {
                    return;
                }
                self.spawn(run, true, i);
            }
            if !run.init[i].sidecar {
                return;
            }
            run.initialized += 1;
        }
        for i in 0..run.init.len() {
            if run.init[i].sidecar && !run.init[i].running() && due(&run.init[i]) {
                self.spawn(run, true, i);
            }
        }
        let policy = run.pod.pointer("/spec/restartPolicy").and_then(Value::as_str).unwrap_or("Always").to_owned();
        for i in 0..run.main.len() {
            let c = &run.main[i];
            let again = match c.last_exit {
                None => true,
                Some(code) => policy == "Always" || (policy == "OnFailure" && code != 0),
            };
            if !c.running() && again && due(c) {
                self.spawn(run, false, i);
            }
        }
    }

    fn spawn(&self, run: &mut PodRun, init: bool, i: usize) {
        let c = if init { &run.init[i] } else { &run.main[i] };
        let result = volumes::spawn(&self.config, &run.pod, &c.spec, &run.netns, &run.dir, run.ip);
        let c = if init { &mut run.init[i] } else { &mut run.main[i] };
        if c.last_exit.is_some() || c.child.is_some() {
            c.restarts += 1;
        }
        c.started_at = now();
        c.restart_at = Some(Instant::now() + RESTART_DELAY);
        match result {
            Ok(child) => {
                c.child = Some(child);
                c.message = None;
            }
            Err(e) => {
                tracing::warn!(pod = %run.name, container = %c.name, "cannot start the container: {e}");
                c.last_exit = Some(127);
                c.message = Some(format!("cannot start: {e}"));
            }
        }
    }

    fn start(&self, shared: &Shared, state: &mut State, pod: &Value) -> Result<PodRun, String> {
        let api = self.api.lock().unwrap_or_else(|e| e.into_inner()).ok_or("the API server has no address for pods yet")?;
        let dir = state.net.dir.join(uid(pod));
        let token = state.tokens.entry(uid(pod).to_owned()).or_insert_with(|| volumes::mint_token(shared, pod)).clone();
        volumes::prepare(shared, pod, &dir, api, &token).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&dir);
        })?;
        let (netns, ip) = state.net.add_pod().map_err(|e| format!("pod network: {e}"))?;
        if let Err(e) = volumes::write_hosts(&dir, &state.hosts, ip, name_of(pod)) {
            state.net.remove_pod(&netns, ip);
            return Err(format!("/etc/hosts: {e}"));
        }
        let list = |f: &str| pod.pointer(&format!("/spec/{f}")).and_then(Value::as_array).cloned().unwrap_or_default();
        tracing::info!(pod = name_of(pod), namespace = namespace_of(pod), %ip, "starting the pod");
        Ok(PodRun {
            namespace: namespace_of(pod).to_owned(),
            name: name_of(pod).to_owned(),
            pod: pod.clone(),
            ip,
            netns,
            dir,
            init: list("initContainers").iter().map(|c| Container::new(c, true)).collect(),
            main: list("containers").iter().map(|c| Container::new(c, false)).collect(),
            initialized: 0,
            started_at: now(),
            kill_at: None,
        })
    }

    /// Rewrites every pod's /etc/hosts when the Services change, and the DNAT rules from
    /// cluster IPs to ready endpoints when those change.
    fn sync_services(&self, shared: &Shared, state: &mut State) {
        let services = shared.store.list(find("", "v1", "services").expect("registered"), None).0;
        let slices = shared.store.list(find("discovery.k8s.io", "v1", "endpointslices").expect("registered"), None).0;
        let (hosts, rules) = net::service_view(&services, &slices);
        if hosts != state.hosts {
            for run in state.pods.values() {
                let _ = volumes::write_hosts(&run.dir, &hosts, run.ip, &run.name);
            }
            state.hosts = hosts;
        }
        if rules != state.rules {
            if let Err(e) = state.net.set_service_rules(&rules) {
                tracing::warn!("Service rules: {e}");
            }
            state.rules = rules;
        }
    }

    /// Runs the readiness probes that are due (outside the lock) and records their results.
    async fn probe(&self) {
        let due: Vec<(String, usize, Probe)> = {
            let mut state = self.lock();
            let mut due = Vec::new();
            for (id, run) in state.pods.iter_mut().filter(|(_, r)| r.kill_at.is_none()) {
                let ip = run.ip;
                for (i, c) in run.containers_mut().enumerate() {
                    if !c.running() {
                        continue;
                    }
                    match Probe::of(&c.spec, ip) {
                        None => c.ready = true,
                        Some(p) if c.probed_at.is_none_or(|t| t.elapsed() >= PROBE_PERIOD) => {
                            c.probed_at = Some(Instant::now());
                            due.push((id.clone(), i, p));
                        }
                        Some(_) => {}
                    }
                }
            }
            due
        };
        if due.is_empty() {
            return;
        }
        let results = futures::future::join_all(due.into_iter().map(|(id, i, p)| async move { (id, i, p.passes().await) })).await;
        let mut state = self.lock();
        for (id, i, ok) in results {
            if let Some(c) = state.pods.get_mut(&id).and_then(|r| r.containers_mut().nth(i)) {
                c.ready = ok && c.running();
            }
        }
    }

    /// Stops every pod (SIGTERM, SIGKILL after `SHUTDOWN_GRACE`) and removes the namespaces,
    /// links, routes, rules and files this kubelet made.
    pub fn shutdown(&self) {
        let mut state = self.lock();
        let runs: Vec<PodRun> = state.pods.drain().map(|(_, r)| r).collect();
        for run in &runs {
            run.containers().for_each(|c| c.signal(libc::SIGTERM));
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        for run in runs {
            stop(&mut state.net, run, deadline.saturating_duration_since(Instant::now()));
        }
        state.net.remove();
    }
}

/// Waits up to `grace` for the pod's processes, kills what is left, then removes its network
/// namespace and files.
fn stop(net: &mut Net, mut run: PodRun, grace: Duration) {
    let deadline = Instant::now() + grace;
    while run.containers().any(Container::running) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        run.containers_mut().for_each(Container::reap);
    }
    for c in run.containers_mut() {
        c.signal(libc::SIGKILL);
        if let Some(mut child) = c.child.take() {
            let _ = child.wait();
        }
    }
    tracing::info!(pod = %run.name, namespace = %run.namespace, "stopped the pod");
    net.remove_pod(&run.netns, run.ip);
    let _ = std::fs::remove_dir_all(&run.dir);
}

fn uid(v: &Value) -> &str {
    v.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("")
}

/// The log file of one container.
pub(crate) fn log_path(config: &KubeletConfig, pod: &Value, container: &str) -> PathBuf {
    config.log_dir.join(format!("{}_{}_{container}.log", namespace_of(pod), name_of(pod)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_map_by_repository_and_commands_resolve_in_the_image_first() {
        assert_eq!(repository("meshfleet/proxy:1.2.3"), "meshfleet/proxy");
        assert_eq!(repository("registry:5000/team/app"), "registry:5000/team/app");
        assert_eq!(repository("app@sha256:abc"), "app");
        let dir = std::env::temp_dir();
        let exe = dir.join(format!("mfk-test-{}", std::process::id()));
        std::fs::write(&exe, "").unwrap();
        let config = KubeletConfig { images: HashMap::from([("meshfleet/proxy".into(), exe.clone())]), log_dir: dir.clone() };
        let name = exe.file_name().unwrap().to_str().unwrap();
        let (path, args) = config.entrypoint(&json!({"image": "meshfleet/proxy:9", "command": [name], "args": ["init"]})).unwrap();
        assert_eq!((path, args), (exe.clone(), vec!["init".to_string()]));
        assert_eq!(config.entrypoint(&json!({"image": "meshfleet/proxy", "args": ["-v"]})).unwrap(), (exe.clone(), vec!["-v".to_string()]));
        assert_eq!(config.entrypoint(&json!({"image": "other", "command": ["sh", "-c", "true"]})).unwrap().1, ["-c", "true"]);
        assert!(config.entrypoint(&json!({"image": "other"})).is_none());
        assert!(!config.can_run(&json!({"spec": {"containers": [{"image": "meshfleet/proxy"}], "initContainers": [{"image": "nginx"}]}})));
        std::fs::remove_file(exe).unwrap();
    }
}
