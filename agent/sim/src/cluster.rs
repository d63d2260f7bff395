//! One synthetic cluster: a seeded, self-consistent inventory that evolves (pods restart or are
//! replaced, warnings happen) and golden metrics that drift with occasional dips. Deterministic
//! for a seed, so tests and benchmarks can reproduce a fleet.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use futures::future::BoxFuture;
use meshfleet_agent_protocol::v1::{self, command::Body, CommandResult, CommandState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use meshfleet_agent::client::{now_ms, unsupported};
use meshfleet_agent::{Agent, Report};

use crate::pki::{GatewayLink, MeshPki};

pub const CURRENT_PROXY_VERSION: &str = "0.1.0";
const OUTDATED_PROXY_VERSIONS: &[&str] = &["0.0.9", "0.0.8"];
const KUBERNETES_VERSIONS: &[&str] = &["v1.31.4", "v1.32.2", "v1.33.1"];
const NAMESPACES: &[&str] = &["shop", "payments", "platform", "identity", "media", "analytics"];
const WORKLOADS: &[&str] =
    &["web", "api", "checkout", "cart", "catalog", "search", "auth", "orders", "inventory", "shipping", "email", "reviews", "frontend", "gateway"];
const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Clone)]
struct Workload {
    namespace: String,
    name: String,
    base_rps: f64,
    base_p50_ms: f64,
    phase: f64,
    /// Remaining windows of a success-rate dip, and its depth.
    dip: (u32, f64),
}

/// A simulated cluster; implements [`Agent`] (wrap it in [`SharedCluster`] to let it evolve
/// while a client runs).
#[derive(Debug, Clone)]
pub struct SyntheticCluster {
    rng: StdRng,
    seed: u64,
    kubernetes_version: String,
    node_count: u32,
    control_plane: v1::ControlPlane,
    namespaces: Vec<String>,
    /// Pods of a meshed namespace that run without the proxy (created while the injector was
    /// down, say): (namespace, name).
    uninjected: Vec<(String, String)>,
    workloads: Vec<Workload>,
    pods: Vec<v1::Pod>,
    /// The made-up anchor and issuer a cluster starts with, until the service signs an issuer.
    certificates: Vec<v1::CertificateInfo>,
    pki: MeshPki,
    last_metrics_ms: Option<i64>,
    started_ms: i64,
    events: u64,
    /// The control plane's version at start, and whether a move away from it goes badly: the
    /// workloads whose proxies run another version fail a share of their requests.
    first_version: String,
    bad_upgrades: bool,
    /// The restart command that last restarted each workload (namespace, name), so a
    /// redelivered command restarts nothing twice.
    restarted_by: BTreeMap<(String, String), String>,
}

/// The share of requests a workload fails while a bad upgrade has reached its proxies.
pub const BAD_UPGRADE_FAILURES: f64 = 0.3;

/// A synthetic cluster for `seed`: 1-3 meshed namespaces, 3-10 workloads of 2-5 pods each.
pub fn synthetic_cluster(seed: u64) -> SyntheticCluster {
    let mut rng = StdRng::seed_from_u64(seed);
    let now = now_ms();
    let mut namespaces: Vec<String> = NAMESPACES.iter().map(|s| s.to_string()).collect();
    shuffle(&mut rng, &mut namespaces);
    namespaces.truncate(rng.gen_range(1..=3));
    let mut names: Vec<&str> = WORKLOADS.to_vec();
    shuffle(&mut rng, &mut names);
    let mut workloads = Vec::new();
    let mut pods = Vec::new();
    for name in names.into_iter().take(rng.gen_range(3..=10)) {
        let namespace = namespaces[rng.gen_range(0..namespaces.len())].clone();
        let w = Workload {
            namespace,
            name: name.to_owned(),
            base_rps: rng.gen_range(5.0..400.0),
            base_p50_ms: rng.gen_range(2.0..40.0),
            phase: rng.gen_range(0.0..std::f64::consts::TAU),
            dip: (0, 0.0),
        };
        let hash = random_hex(&mut rng, 10);
        // A few workloads run an outdated proxy, as after a partial upgrade.
        let outdated = rng.gen_bool(0.15);
        for _ in 0..rng.gen_range(2..=5) {
            let version = if outdated { OUTDATED_PROXY_VERSIONS[rng.gen_range(0..OUTDATED_PROXY_VERSIONS.len())] } else { CURRENT_PROXY_VERSION };
            pods.push(new_pod(&mut rng, &w, &hash, version));
        }
        workloads.push(w);
    }
    let replicas = if rng.gen_bool(0.8) { 3 } else { 1 };
    let control_plane = v1::ControlPlane {
        version: CURRENT_PROXY_VERSION.into(),
        replicas,
        ready_replicas: if rng.gen_bool(0.95) { replicas } else { replicas - 1 },
        components: vec![v1::Component { name: "meshfleet-controller".into(), version: CURRENT_PROXY_VERSION.into(), ready: true }],
    };
    let trust_domain = format!("sim-{seed}.meshfleet.local");
    // Some issuers expire soon, so the fleet view has something to warn about.
    let issuer_left = if rng.gen_bool(0.15) { rng.gen_range(DAY_MS..7 * DAY_MS) } else { rng.gen_range(20 * DAY_MS..60 * DAY_MS) };
    let certificates = vec![
        v1::CertificateInfo {
            role: "trust-anchor".into(),
            subject: "CN=meshfleet trust anchor".into(),
            sans: vec![],
            not_before_unix_ms: now - 200 * DAY_MS,
            not_after_unix_ms: now + rng.gen_range(100..3000) * DAY_MS,
            sha256_fingerprint: random_hex(&mut rng, 64),
        },
        v1::CertificateInfo {
            role: "issuer".into(),
            subject: format!("CN=identity.{trust_domain}"),
            sans: vec![format!("identity.{trust_domain}")],
            not_before_unix_ms: now + issuer_left - 90 * DAY_MS,
            not_after_unix_ms: now + issuer_left,
            sha256_fingerprint: random_hex(&mut rng, 64),
        },
    ];
    let anchor = certificates[0].sha256_fingerprint.clone();
    for p in &mut pods {
        present_leaf(&mut rng, p, std::slice::from_ref(&anchor), &anchor, now);
    }
    // From a generator of their own, so clusters without them are what they were before.
    let mut extra = StdRng::seed_from_u64(seed ^ 0x1_0000_0000);
    let uninjected = if extra.gen_bool(0.1) {
        (0..extra.gen_range(1..=3)).map(|_| (namespaces[0].clone(), format!("batch-{}", random_hex(&mut extra, 5)))).collect()
    } else {
        Vec::new()
    };
    SyntheticCluster {
        kubernetes_version: KUBERNETES_VERSIONS[rng.gen_range(0..KUBERNETES_VERSIONS.len())].into(),
        node_count: rng.gen_range(3..=12),
        control_plane,
        namespaces,
        uninjected,
        workloads,
        pods,
        certificates,
        pki: MeshPki::default(),
        last_metrics_ms: None,
        started_ms: now,
        events: 0,
        first_version: CURRENT_PROXY_VERSION.into(),
        bad_upgrades: false,
        restarted_by: BTreeMap::new(),
        seed,
        rng,
    }
}

impl SyntheticCluster {
    pub fn inventory(&self) -> v1::Inventory {
        v1::Inventory { pods: self.pods.clone(), ..self.facts() }
    }

    /// Everything but the pods: what a Delta's `facts` carries.
    fn facts(&self) -> v1::Inventory {
        v1::Inventory {
            kubernetes_version: self.kubernetes_version.clone(),
            node_count: self.node_count,
            control_plane: Some(self.control_plane.clone()),
            namespaces: self
                .namespaces
                .iter()
                .map(|n| {
                    let uninjected: Vec<String> = self.uninjected.iter().filter(|(ns, _)| ns == n).map(|(_, pod)| pod.clone()).collect();
                    v1::MeshedNamespace { name: n.clone(), pods_without_proxy: uninjected.len() as u32, pods_without_proxy_examples: uninjected }
                })
                .collect(),
            pods: Vec::new(),
            certificates: if self.pki.is_managed() { self.pki.certificates() } else { self.certificates.clone() },
        }
    }

    /// Takes on a PKI (signed by the service, or as saved before a restart): the proxies pick the
    /// new bundle up and renew their leaves at once, as the controller asks them to. Returns the
    /// Delta that reports it.
    pub fn adopt(&mut self, pki: MeshPki, now_ms: i64) -> v1::Delta {
        self.pki = pki;
        let (bundle, anchor) = self.trust();
        for p in &mut self.pods {
            present_leaf(&mut self.rng, p, &bundle, &anchor, now_ms);
        }
        v1::Delta { upserted_pods: self.pods.clone(), removed_pods: Vec::new(), facts: Some(self.facts()) }
    }

    pub fn pki(&self) -> &MeshPki {
        &self.pki
    }

    /// Golden metrics per workload for the window since the previous call (10 s the first
    /// time): traffic follows a slow wave plus noise; success rates sit at 99.x % with
    /// occasional dips that also raise latency.
    pub fn next_metrics(&mut self, now_ms: i64) -> v1::Metrics {
        let start = self.last_metrics_ms.filter(|s| *s < now_ms).unwrap_or(now_ms - 10_000);
        self.last_metrics_ms = Some(now_ms);
        let secs = (now_ms - start) as f64 / 1000.0;
        let t = (now_ms - self.started_ms) as f64 / 1000.0;
        let rng = &mut self.rng;
        let (pods, first_version, bad) = (&self.pods, &self.first_version, &self.bad_upgrades);
        let workloads = self
            .workloads
            .iter_mut()
            .map(|w| {
                if w.dip.0 == 0 && rng.gen_bool(0.01) {
                    w.dip = (rng.gen_range(1..=6), rng.gen_range(0.02..0.15));
                }
                let dip = if w.dip.0 > 0 {
                    w.dip.0 -= 1;
                    w.dip.1
                } else {
                    0.0
                };
                let wave = 1.0 + 0.3 * (t / 600.0 + w.phase).sin();
                let rps = w.base_rps * wave * rng.gen_range(0.9..1.1);
                let requests = (rps * secs).round().max(0.0) as u64;
                let upgraded = |p: &&v1::Pod| p.namespace == w.namespace && p.workload == format!("Deployment/{}", w.name) && p.proxy_version != *first_version;
                let broken = if *bad && pods.iter().any(|p| upgraded(&p)) { BAD_UPGRADE_FAILURES } else { 0.0 };
                let failure_rate = rng.gen_range(0.0005..0.008) + dip + broken;
                let failures = ((requests as f64) * failure_rate).round() as u64;
                let slow = 1.0 + dip * 10.0;
                let p50 = w.base_p50_ms * slow * rng.gen_range(0.85..1.15);
                let p95 = p50 * rng.gen_range(2.0..3.0);
                v1::WorkloadMetrics {
                    namespace: w.namespace.clone(),
                    workload: format!("Deployment/{}", w.name),
                    requests,
                    failures: failures.min(requests),
                    latency_p50_ms: round2(p50),
                    latency_p95_ms: round2(p95),
                    latency_p99_ms: round2(p95 * rng.gen_range(1.5..2.5)),
                }
            })
            .collect();
        v1::Metrics { window_start_unix_ms: start, window_end_unix_ms: now_ms, workloads }
    }

    /// Occasionally a pod restarts (its proxy restarts with it) or is replaced.
    pub fn next_delta(&mut self, now_ms: i64) -> Option<(v1::Delta, v1::Events)> {
        if self.pods.is_empty() || !self.rng.gen_bool(0.05) {
            return None;
        }
        let i = self.rng.gen_range(0..self.pods.len());
        if self.rng.gen_bool(0.5) {
            let pod = &mut self.pods[i];
            pod.restarts += 1;
            // A restarted proxy asks for a fresh leaf.
            pod.leaf_not_after_unix_ms = now_ms + DAY_MS;
            let pod = pod.clone();
            let event = self.event(now_ms, "ProxyRestart", &pod.namespace, &format!("Pod/{}", pod.name), "Restarted", "proxy container restarted");
            Some((v1::Delta { upserted_pods: vec![pod], ..Default::default() }, v1::Events { events: vec![event] }))
        } else {
            let old = self.pods.remove(i);
            let hash = old.name.rsplit('-').nth(1).unwrap_or("0").to_owned();
            let w = self.workloads.iter().find(|w| old.workload == format!("Deployment/{}", w.name)).cloned()?;
            let mut new = new_pod(&mut self.rng, &w, &hash, &old.proxy_version);
            let (bundle, anchor) = self.trust();
            present_leaf(&mut self.rng, &mut new, &bundle, &anchor, now_ms);
            self.pods.push(new.clone());
            let event = self.event(now_ms, "Normal", &old.namespace, &format!("Pod/{}", old.name), "Killing", "replaced after node drain");
            let removed = vec![v1::PodRef { namespace: old.namespace, name: old.name }];
            Some((v1::Delta { upserted_pods: vec![new], removed_pods: removed, facts: None }, v1::Events { events: vec![event] }))
        }
    }

    /// What the cluster's proxies trust (the bundle's fingerprints) and the anchor their leaves
    /// chain to.
    fn trust(&self) -> (Vec<String>, String) {
        if self.pki.is_managed() {
            return (self.pki.bundle_fingerprints(), self.pki.issuer_anchor().unwrap_or_default());
        }
        let anchor = self.certificates.iter().find(|c| c.role == "trust-anchor").map(|c| c.sha256_fingerprint.clone()).unwrap_or_default();
        (vec![anchor.clone()], anchor)
    }

    /// Occasional Warning events (failed probes, back-off).
    pub fn next_warnings(&mut self, now_ms: i64) -> Option<v1::Events> {
        if self.pods.is_empty() || !self.rng.gen_bool(0.03) {
            return None;
        }
        let pod = self.pods[self.rng.gen_range(0..self.pods.len())].clone();
        let (reason, message) = if self.rng.gen_bool(0.5) {
            ("Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 503")
        } else {
            ("BackOff", "Back-off restarting failed container app")
        };
        Some(v1::Events { events: vec![self.event(now_ms, "Warning", &pod.namespace, &format!("Pod/{}", pod.name), reason, message)] })
    }

    fn event(&mut self, now_ms: i64, kind: &str, namespace: &str, object: &str, reason: &str, message: &str) -> v1::Event {
        self.events += 1;
        v1::Event {
            // Unique per simulated cluster and stable across resends.
            id: format!("sim-{}-{}-{}", self.seed, self.started_ms, self.events),
            at_unix_ms: now_ms,
            r#type: kind.into(),
            namespace: namespace.into(),
            object: object.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// Makes moves away from the starting version go badly (see `BAD_UPGRADE_FAILURES`).
    pub fn with_bad_upgrades(mut self, bad: bool) -> SyntheticCluster {
        self.bad_upgrades = bad;
        self
    }

    /// set-control-plane-version: the controller runs `version` (ready at once). Returns the
    /// Delta that reports it and the command's output.
    fn set_control_plane_version(&mut self, version: &str) -> (v1::Delta, serde_json::Value) {
        let previous = std::mem::replace(&mut self.control_plane.version, version.to_owned());
        for c in &mut self.control_plane.components {
            c.version = version.to_owned();
        }
        let output = serde_json::json!({ "image": format!("meshfleet/controller:{version}"), "previous_image": format!("meshfleet/controller:{previous}") });
        (v1::Delta { facts: Some(self.facts()), ..Default::default() }, output)
    }

    /// restart-workloads as the agent runs it: each selected Deployment's pods replaced by new
    /// ones, which the injector gives the control plane's proxy version. `selector` matches
    /// `app=<name>` only. Workloads this command restarted already are left alone.
    fn restart_workloads(&mut self, id: &str, p: &v1::RestartWorkloads, now_ms: i64) -> (v1::Delta, serde_json::Value) {
        let app = p.selector.as_deref().map(|s| s.trim().strip_prefix("app=").unwrap_or(s).to_owned());
        let chosen: Vec<Workload> = self
            .workloads
            .iter()
            .filter(|w| p.namespace.as_ref().is_none_or(|ns| *ns == w.namespace) && app.as_ref().is_none_or(|a| *a == w.name))
            .cloned()
            .collect();
        let (mut delta, mut restarted, mut skipped) = (v1::Delta::default(), Vec::new(), Vec::new());
        let (bundle, anchor) = self.trust();
        for w in chosen {
            let key = (w.namespace.clone(), w.name.clone());
            if self.restarted_by.get(&key).is_some_and(|by| by == id) {
                skipped.push(format!("{}/deployment/{}", w.namespace, w.name));
                continue;
            }
            self.restarted_by.insert(key, id.to_owned());
            let workload = format!("Deployment/{}", w.name);
            let (old, kept): (Vec<v1::Pod>, Vec<v1::Pod>) =
                std::mem::take(&mut self.pods).into_iter().partition(|p| p.namespace == w.namespace && p.workload == workload);
            self.pods = kept;
            let hash = random_hex(&mut self.rng, 10);
            for gone in &old {
                let mut new = new_pod(&mut self.rng, &w, &hash, &self.control_plane.version);
                present_leaf(&mut self.rng, &mut new, &bundle, &anchor, now_ms);
                delta.removed_pods.push(v1::PodRef { namespace: gone.namespace.clone(), name: gone.name.clone() });
                delta.upserted_pods.push(new.clone());
                self.pods.push(new);
            }
            restarted.push(format!("{}/deployment/{}", w.namespace, w.name));
        }
        // Its workloads are all Deployments: no pod needs attention.
        let output = serde_json::json!({ "restarted": restarted, "skipped": skipped, "batch_size": p.batch_size.unwrap_or(1), "needs_attention": [] });
        (delta, output)
    }

    /// Answers `ping` and `collect-diagnostics`; the kinds that change a cluster need the
    /// gateway to report what changed: [`SharedCluster`] answers them.
    pub fn run_command(&self, id: &str, command: &Body) -> CommandResult {
        let output = match command {
            Body::Ping(_) => serde_json::json!({ "pong": true, "at": now_ms() }),
            Body::CollectDiagnostics(_) => self.diagnostics(),
            Body::RestartWorkloads(_) | Body::SetControlPlaneVersion(_) | Body::RotateIssuer(_) | Body::SetTrustBundle(_) => {
                return CommandResult { command_id: id.into(), ..unsupported(command.kind()) }
            }
        };
        CommandResult {
            command_id: id.into(),
            state: CommandState::Succeeded as i32,
            output_json: output.to_string(),
            progress_percent: 100,
            ..Default::default()
        }
    }

    fn diagnostics(&self) -> serde_json::Value {
        let mut versions: BTreeMap<&str, u32> = BTreeMap::new();
        for p in &self.pods {
            *versions.entry(p.proxy_version.as_str()).or_default() += 1;
        }
        serde_json::json!({
            "simulated": true,
            "kubernetes_version": self.kubernetes_version,
            "node_count": self.node_count,
            "namespaces": self.namespaces,
            "workloads": self.workloads.len(),
            "pods": self.pods.len(),
            "ready_pods": self.pods.iter().filter(|p| p.ready).count(),
            "proxy_versions": versions,
            "control_plane": { "version": self.control_plane.version, "replicas": self.control_plane.replicas, "ready_replicas": self.control_plane.ready_replicas },
            "certificates": self.certificates.iter().map(|c| serde_json::json!({ "role": c.role, "not_after_unix_ms": c.not_after_unix_ms })).collect::<Vec<_>>(),
        })
    }
}

impl Agent for SyntheticCluster {
    fn kubernetes_version(&self) -> String {
        self.kubernetes_version.clone()
    }
    fn snapshot(&self) -> v1::Inventory {
        self.inventory()
    }
    fn execute(&self, id: String, command: Body) -> BoxFuture<'static, CommandResult> {
        let result = self.run_command(&id, &command);
        Box::pin(async move { result })
    }
}

/// A synthetic cluster that keeps evolving while a client reports for it; once linked to its
/// client ([`SharedCluster::link`]) it also answers rotate-issuer and set-trust-bundle.
#[derive(Clone)]
pub struct SharedCluster {
    cluster: Arc<Mutex<SyntheticCluster>>,
    link: Arc<OnceLock<GatewayLink>>,
}

impl SharedCluster {
    pub fn new(cluster: SyntheticCluster) -> Self {
        SharedCluster { cluster: Arc::new(Mutex::new(cluster)), link: Arc::default() }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, SyntheticCluster> {
        self.cluster.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets the cluster reach the gateway through its client (set once, after `spawn`).
    pub fn link(&self, link: GatewayLink) {
        let _ = self.link.set(link);
    }

    /// The link to the gateway. It is set right after the client is spawned, long before a
    /// command can arrive over its first session; a cluster never linked answers as an agent
    /// without the command's kind.
    async fn linked(&self) -> Option<&GatewayLink> {
        for _ in 0..100 {
            if self.link.get().is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.link.get()
    }

    /// set-control-plane-version or restart-workloads: the change is reported (a Delta) before
    /// the command's result, as the real agent's inventory watch reports it.
    async fn change_versions(&self, id: String, command: Body) -> CommandResult {
        let Some(link) = self.linked().await else { return CommandResult { command_id: id, ..unsupported(command.kind()) } };
        let (delta, message, output) = {
            let mut cluster = self.lock();
            match &command {
                Body::SetControlPlaneVersion(p) if p.version.is_empty() => {
                    return CommandResult { command_id: id, state: CommandState::Failed as i32, message: "invalid version \"\"".into(), ..Default::default() };
                }
                Body::SetControlPlaneVersion(p) => {
                    let (delta, output) = cluster.set_control_plane_version(&p.version);
                    (delta, format!("control plane at {}", p.version), output)
                }
                Body::RestartWorkloads(p) => {
                    let (delta, output) = cluster.restart_workloads(&id, p, now_ms());
                    let n = output["restarted"].as_array().map_or(0, Vec::len);
                    (delta, format!("restarted {n} workloads"), output)
                }
                _ => return cluster.run_command(&id, &command),
            }
        };
        link.reporter.report(Report::Delta(delta));
        CommandResult { command_id: id, state: CommandState::Succeeded as i32, message, output_json: output.to_string(), progress_percent: 100 }
    }

    /// rotate-issuer or set-trust-bundle, as the real agent runs them; the new PKI is saved
    /// (when the link says where) and reported before the command's result.
    async fn change_pki(&self, id: String, command: Body) -> CommandResult {
        let Some(link) = self.linked().await else { return CommandResult { command_id: id, ..unsupported(command.kind()) } };
        let current = self.lock().pki().clone();
        let changed = match &command {
            // Redelivered after the agent restarted: it was done, do not sign twice.
            Body::RotateIssuer(_) if current.rotated_by() == id => Ok((current.clone(), current.issuer_output())),
            Body::RotateIssuer(_) => current.rotate_issuer(link, &id).await,
            Body::SetTrustBundle(p) => current.set_trust_bundle(&p.bundle_pem).map(|pki| {
                let output = serde_json::json!({ "bundle_fingerprints": pki.bundle_fingerprints() });
                (pki, output)
            }),
            _ => return self.lock().run_command(&id, &command),
        };
        let saved = changed.and_then(|(pki, output)| match &link.state_path {
            Some(path) => pki.save(path).map(|_| (pki, output)).map_err(|e| format!("saving the cluster's PKI: {e}")),
            None => Ok((pki, output)),
        });
        match saved {
            Ok((pki, output)) => {
                let delta = self.lock().adopt(pki, now_ms());
                link.reporter.report(Report::Delta(delta));
                let message = if matches!(command, Body::RotateIssuer(_)) { "issuer rotated" } else { "trust bundle set" };
                CommandResult {
                    command_id: id,
                    state: CommandState::Succeeded as i32,
                    message: message.into(),
                    output_json: output.to_string(),
                    progress_percent: 100,
                }
            }
            Err(message) => CommandResult { command_id: id, state: CommandState::Failed as i32, message, ..Default::default() },
        }
    }
}

impl Agent for SharedCluster {
    fn kubernetes_version(&self) -> String {
        self.lock().kubernetes_version.clone()
    }
    fn snapshot(&self) -> v1::Inventory {
        self.lock().inventory()
    }
    fn execute(&self, id: String, command: Body) -> BoxFuture<'static, CommandResult> {
        match command {
            Body::RotateIssuer(_) | Body::SetTrustBundle(_) => {
                let this = self.clone();
                Box::pin(async move { this.change_pki(id, command).await })
            }
            Body::SetControlPlaneVersion(_) | Body::RestartWorkloads(_) => {
                let this = self.clone();
                Box::pin(async move { this.change_versions(id, command).await })
            }
            other => self.lock().execute(id, other),
        }
    }
}

fn new_pod(rng: &mut StdRng, w: &Workload, hash: &str, version: &str) -> v1::Pod {
    let ready = rng.gen_bool(0.97);
    v1::Pod {
        namespace: w.namespace.clone(),
        name: format!("{}-{}-{}", w.name, hash, random_hex(rng, 5)),
        workload: format!("Deployment/{}", w.name),
        proxy_version: version.into(),
        ready,
        restarts: if rng.gen_bool(0.1) { rng.gen_range(1..4) } else { 0 },
        phase: "Running".into(),
        ..Default::default()
    }
}

/// The pod's proxy trusts `bundle` and presents a 24-hour leaf chaining to `anchor`, renewed at
/// some point of its life.
fn present_leaf(rng: &mut StdRng, pod: &mut v1::Pod, bundle: &[String], anchor: &str, now_ms: i64) {
    pod.bundle_fingerprints = bundle.to_vec();
    pod.leaf_anchor_fingerprint = anchor.to_owned();
    pod.leaf_not_after_unix_ms = now_ms + rng.gen_range(HOUR_MS..=DAY_MS);
}

fn random_hex(rng: &mut StdRng, len: usize) -> String {
    (0..len).map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap_or('0')).collect()
}

fn shuffle<T>(rng: &mut StdRng, items: &mut [T]) {
    rand::seq::SliceRandom::shuffle(items, rng);
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests;
