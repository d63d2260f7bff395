//! Continuous traffic into a mesh's pods while they are restarted, sent as a load balancer that
//! follows readiness would: each request goes to the next pod that exists and is ready in the
//! fake cluster and whose sidecar holds a certificate, over mTLS through an ingress proxy of its
//! own. Every request is tallied by the proxy version that served it; failures name their pod.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshfleet_fake_kube::FakeKube;

use super::{Gate, Process, Sidecar};

/// How often the set of pods is looked at again, and the pause between requests.
const REFRESH: Duration = Duration::from_millis(100);
const PACE: Duration = Duration::from_millis(10);

/// Traffic under way; `stop` ends it and returns its tally.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Tally>,
}

#[derive(Debug, Default)]
pub struct Tally {
    pub sent: usize,
    /// By the serving proxy's version: (requests, failures).
    pub by_version: BTreeMap<String, (usize, usize)>,
    pub failed: Vec<Failure>,
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub uid: String,
    pub pod: String,
    pub version: String,
    pub error: String,
}

impl Traffic {
    pub(super) fn start(kube: Arc<FakeKube>, gate: Gate, sidecars: Arc<Mutex<HashMap<String, Sidecar>>>) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run(kube, gate, sidecars, stop.clone()));
        Traffic { stop, task }
    }

    pub async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// One pod's way in.
struct Route {
    namespace: String,
    pod: String,
    version: String,
    ingress: Process,
}

async fn run(kube: Arc<FakeKube>, gate: Gate, sidecars: Arc<Mutex<HashMap<String, Sidecar>>>, stop: Arc<AtomicBool>) -> Tally {
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap();
    let mut routes: BTreeMap<String, Route> = BTreeMap::new();
    let mut tally = Tally::default();
    let mut next = 0usize;
    let mut refreshed: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        if refreshed.is_none_or(|t| t.elapsed() >= REFRESH) {
            refresh(&gate, &sidecars, &mut routes, &http).await;
            refreshed = Some(Instant::now());
        }
        let serving: Vec<&String> = routes.iter().filter(|(uid, r)| serves(&kube, uid, r)).map(|(uid, _)| uid).collect();
        if serving.is_empty() {
            tokio::time::sleep(PACE).await;
            continue;
        }
        let uid = serving[next % serving.len()].clone();
        next += 1;
        let route = &routes[&uid];
        let error = match http.get(format!("http://{}/shop", route.ingress.outbound(0))).send().await {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("status {}", r.status())),
            Err(e) => Some(e.to_string()),
        };
        tally.sent += 1;
        let counts = tally.by_version.entry(route.version.clone()).or_default();
        counts.0 += 1;
        if let Some(error) = error {
            counts.1 += 1;
            tally.failed.push(Failure { uid, pod: route.pod.clone(), version: route.version.clone(), error });
        }
        tokio::time::sleep(PACE).await;
    }
    tally
}

/// The pod still exists (not replaced by one of the same name) and is ready.
fn serves(kube: &FakeKube, uid: &str, r: &Route) -> bool {
    kube.get("v1", "Pod", &r.namespace, &r.pod).is_some_and(|p| {
        p["metadata"]["uid"] == uid
            && p.pointer("/status/conditions").and_then(|c| c.as_array()).is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
    })
}

/// Drops the routes of sidecars that are gone; adds one for each new sidecar once it holds a
/// certificate.
async fn refresh(gate: &Gate, sidecars: &Mutex<HashMap<String, Sidecar>>, routes: &mut BTreeMap<String, Route>, http: &reqwest::Client) {
    type Seen = (String, String, String, String, String, String, SocketAddr);
    let current: Vec<Seen> = sidecars
        .lock()
        .unwrap()
        .iter()
        .map(|(uid, s)| (uid.clone(), s.namespace.clone(), s.pod.clone(), s.version.clone(), s.inbound(), s.identity(), s.process.addr("admin")))
        .collect();
    routes.retain(|uid, _| current.iter().any(|c| &c.0 == uid));
    for (uid, namespace, pod, version, inbound, identity, admin) in current {
        if routes.contains_key(&uid) || !http.get(format!("http://{admin}/ready")).send().await.is_ok_and(|r| r.status().is_success()) {
            continue;
        }
        let ingress = gate.start(&gate.dir.join("ca-bundle.crt"), &[(inbound, identity)]).await;
        routes.insert(uid, Route { namespace, pod, version, ingress });
    }
}
