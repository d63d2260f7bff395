//! The workload simulator: a Deployment controller (one ReplicaSet per pod template, rolling
//! updates within maxSurge/maxUnavailable, or Recreate), a ReplicaSet controller, a "kubelet"
//! that makes pods ready after a delay with a loopback pod IP (all pods but those the real
//! kubelet runs, when it is on), and owner-reference garbage
//! collection. Pods are created through the mutating admission webhooks, as the real
//! ReplicaSet controller's are; a refused create is reported on the ReplicaSet and retried.
//! StatefulSets and DaemonSets roll out as their controllers do (`sim/sets.rs`), and
//! PodDisruptionBudgets get the disruption controller's status (`sim/disruption.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::rbac::User;
use crate::resources::find;
use crate::store::{name_of, Store};
use crate::{admission, validate, Shared};

mod disruption;
mod sets;

/// Pods with this annotation set to "true" never become ready (to simulate a broken rollout).
pub const NEVER_READY: &str = "fake.meshfleet.io/never-ready";

static POD_IPS: AtomicU32 = AtomicU32::new(0);

/// How long the ReplicaSet controller waits before retrying a refused pod create.
const CREATE_RETRY: Duration = Duration::from_secs(1);

/// A loopback address per pod (all of 127/8 reaches this host on Linux), so tests can serve a
/// pod's ports on its own IP. Spread by process id so parallel test binaries do not collide.
pub fn next_pod_ip() -> String {
    let n = POD_IPS.fetch_add(1, Ordering::Relaxed);
    let a = 10 + ((std::process::id() % 60) * 4 + n / 65_025) % 240;
    format!("127.{a}.{}.{}", (n / 255) % 255, n % 255 + 1)
}

fn uid(v: &Value) -> &str {
    v.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("")
}

fn controller_uid(v: &Value) -> Option<&str> {
    v.pointer("/metadata/ownerReferences")?.as_array()?.iter().find(|o| o.get("controller") == Some(&json!(true)))?.get("uid")?.as_str()
}

pub(crate) fn is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn int_or_percent(v: Option<&Value>, total: i64, default_pct: i64, round_up: bool) -> i64 {
    let pct = |p: i64| if round_up { (p * total + 99) / 100 } else { p * total / 100 };
    match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0).max(0),
        Some(Value::String(s)) => s.trim_end_matches('%').parse::<i64>().map(pct).unwrap_or(0).max(0),
        _ => pct(default_pct),
    }
}

fn random_suffix() -> String {
    (0..5).map(|_| (b'a' + rand::random::<u8>() % 26) as char).collect()
}

fn owner_ref(kind: &str, owner: &Value) -> Value {
    json!([{"apiVersion": "apps/v1", "kind": kind, "name": name_of(owner), "uid": uid(owner), "controller": true, "blockOwnerDeletion": true}])
}

pub(crate) struct Simulator {
    shared: Arc<Shared>,
    born: HashMap<String, Instant>,
    seen_rv: u64,
    /// When a refused pod create is due for a retry.
    retry_at: Option<Instant>,
}

impl Simulator {
    pub fn new(shared: Arc<Shared>) -> Simulator {
        Simulator { shared, born: HashMap::new(), seen_rv: 0, retry_at: None }
    }

    pub async fn run(mut self, tick: Duration) {
        let mut t = tokio::time::interval(tick);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            t.tick().await;
            self.step().await;
        }
    }

    /// One reconcile pass over everything; cheap when nothing changed, no pod is pending and no
    /// refused create is due for a retry.
    pub async fn step(&mut self) {
        let shared = self.shared.clone();
        let store = &shared.store;
        let rv = store.current_rv();
        let retry_due = self.retry_at.is_some_and(|t| t <= Instant::now());
        if rv == self.seen_rv && self.born.is_empty() && !retry_due {
            return;
        }
        if retry_due {
            self.retry_at = None;
        }
        self.kubelet();
        for d in store.list(find("apps", "v1", "deployments").expect("registered"), None).0 {
            self.deployment(&d);
        }
        for rs in store.list(find("apps", "v1", "replicasets").expect("registered"), None).0 {
            self.replicaset(&rs).await;
        }
        for s in store.list(find("apps", "v1", "statefulsets").expect("registered"), None).0 {
            self.statefulset(&s).await;
        }
        for ds in store.list(find("apps", "v1", "daemonsets").expect("registered"), None).0 {
            self.daemonset(&ds).await;
        }
        disruption::reconcile(store);
        self.collect_garbage();
        crate::endpoints::reconcile(store, &shared.cluster_ips);
        // The rv from before this pass: if the pass wrote anything, the next one runs again
        // and sees it (a pass that changes nothing ends the cascade).
        self.seen_rv = rv;
    }

    fn kubelet(&mut self) {
        let store: &Store = &self.shared.store;
        let pods = find("", "v1", "pods").expect("registered");
        let delay = self.shared.config.ready_delay;
        let (all, _) = store.list(pods, None);
        let mut pending = HashMap::new();
        let real = self.shared.kubelet.as_ref().map(|k| k.config());
        for p in all.iter().filter(|p| !is_ready(p)) {
            // The real kubelet's pods: their status is what their processes do.
            if real.is_some_and(|k| k.can_run(p)) {
                continue;
            }
            if p.pointer(&format!("/metadata/annotations/{}", NEVER_READY.replace('/', "~1"))).and_then(Value::as_str) == Some("true") {
                continue;
            }
            let id = uid(p).to_owned();
            let born = self.born.get(&id).copied().unwrap_or_else(Instant::now);
            if born.elapsed() < delay {
                pending.insert(id, born);
                continue;
            }
            let _ = store.write(pods, p["metadata"]["namespace"].as_str().unwrap_or(""), name_of(p), |old| {
                let mut new = old.clone();
                let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                let containers = old.pointer("/spec/containers").and_then(Value::as_array).cloned().unwrap_or_default();
                let statuses: Vec<Value> = containers
                    .iter()
                    .map(|c| json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": true, "started": true, "restartCount": 0, "state": {"running": {"startedAt": now}}}))
                    .collect();
                let ip = old.pointer("/status/podIP").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(next_pod_ip);
                new["status"] = json!({
                    "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "127.0.0.1", "startTime": now,
                    "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}, {"type": "ContainersReady", "status": "True", "lastTransitionTime": now}],
                    "containerStatuses": statuses,
                });
                if new.pointer("/spec/nodeName").is_none() {
                    new["spec"]["nodeName"] = json!("fake-node-1");
                }
                Ok(new)
            });
        }
        self.born = pending;
    }

    fn owned(&self, res: usize, ns: &str, owner: &Value) -> Vec<Value> {
        let owner_uid = uid(owner);
        self.shared.store.list(res, Some(ns)).0.into_iter().filter(|o| controller_uid(o) == Some(owner_uid)).collect()
    }

    fn deployment(&mut self, d: &Value) {
        let store = &self.shared.store;
        let (rss_res, pods_res) = (find("apps", "v1", "replicasets").expect("registered"), find("", "v1", "pods").expect("registered"));
        let ns = d["metadata"]["namespace"].as_str().unwrap_or("").to_owned();
        let name = name_of(d).to_owned();
        let template = d.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let hash = hex::encode(&Sha256::digest(template.to_string().as_bytes())[..5]);
        let rs_name = format!("{name}-{hash}");
        let rss = self.owned(rss_res, &ns, d);
        if !rss.iter().any(|r| name_of(r) == rs_name) {
            let mut t = template.clone();
            t["metadata"]["labels"]["pod-template-hash"] = json!(hash);
            let mut selector = d.pointer("/spec/selector").cloned().unwrap_or(json!({}));
            selector["matchLabels"]["pod-template-hash"] = json!(hash);
            let rs = json!({"metadata": {"name": rs_name, "labels": t["metadata"]["labels"], "ownerReferences": owner_ref("Deployment", d)}, "spec": {"replicas": 0, "selector": selector, "template": t}});
            let _ = store.create(rss_res, &ns, rs);
            return; // next pass sees it
        }
        let desired = d.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1).max(0);
        let strategy = d.pointer("/spec/strategy");
        let recreate = strategy.and_then(|s| s.get("type")).and_then(Value::as_str) == Some("Recreate");
        let ru = strategy.and_then(|s| s.get("rollingUpdate"));
        let surge = int_or_percent(ru.and_then(|r| r.get("maxSurge")), desired, 25, true);
        let mut unavail = int_or_percent(ru.and_then(|r| r.get("maxUnavailable")), desired, 25, false);
        if surge == 0 && unavail == 0 {
            unavail = 1;
        }
        let pods_of = |rs: &Value| self.owned(pods_res, &ns, rs);
        let spec_replicas = |rs: &Value| rs.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0);
        let new_rs = rss.iter().find(|r| name_of(r) == rs_name).cloned().unwrap_or(json!({}));
        let olds: Vec<&Value> = rss.iter().filter(|r| name_of(r) != rs_name).collect();
        let new_pods = pods_of(&new_rs);
        let old_pods: Vec<Value> = olds.iter().flat_map(|r| pods_of(r)).collect();
        let ready_total = new_pods.iter().chain(&old_pods).filter(|p| is_ready(p)).count() as i64;
        let new_unready = new_pods.iter().filter(|p| !is_ready(p)).count() as i64;
        let total_spec: i64 = rss.iter().map(spec_replicas).sum();
        let mut new_replicas = spec_replicas(&new_rs);
        let scale = |rs: &Value, n: i64| {
            let _ = store.write(rss_res, &ns, name_of(rs), |o| {
                let mut o = o.clone();
                o["spec"]["replicas"] = json!(n);
                Ok(o)
            });
        };
        if recreate {
            for o in &olds {
                scale(o, 0);
            }
            if old_pods.is_empty() {
                new_replicas = desired;
            }
        } else {
            if new_replicas < desired {
                let room = desired + surge - total_spec;
                if room > 0 {
                    new_replicas = desired.min(new_replicas + room);
                }
            }
            new_replicas = new_replicas.min(desired);
            // Kubernetes' rule: scale old ReplicaSets down by at most
            // allPods - minAvailable - unavailable pods of the new ReplicaSet.
            let mut budget = (total_spec.max(ready_total) - (desired - unavail) - new_unready).max(0);
            for o in &olds {
                let have = spec_replicas(o);
                let unready_here = pods_of(o).iter().filter(|p| !is_ready(p)).count() as i64;
                let cut = have.min(unready_here + budget);
                budget -= (cut - unready_here).max(0);
                if cut > 0 {
                    scale(o, have - cut);
                }
            }
        }
        if new_replicas != spec_replicas(&new_rs) {
            scale(&new_rs, new_replicas);
        }
        let all = new_pods.len() as i64 + old_pods.len() as i64;
        let status = json!({
            "observedGeneration": d.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
            "replicas": all, "updatedReplicas": new_pods.len(), "readyReplicas": ready_total,
            "availableReplicas": ready_total, "unavailableReplicas": (desired - ready_total).max(0),
        });
        let _ = store.write(find("apps", "v1", "deployments").expect("registered"), &ns, &name, |o| {
            let mut o = o.clone();
            o["status"] = status;
            Ok(o)
        });
    }

    async fn replicaset(&mut self, rs: &Value) {
        let shared = self.shared.clone();
        let store = &shared.store;
        let pods_res = find("", "v1", "pods").expect("registered");
        let ns = rs["metadata"]["namespace"].as_str().unwrap_or("").to_owned();
        let want = rs.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1).max(0) as usize;
        let mut pods = self.owned(pods_res, &ns, rs);
        let template = rs.pointer("/spec/template").cloned().unwrap_or(json!({}));
        // The identity the real ReplicaSet controller creates pods as.
        let controller = User::service_account("kube-system", "replicaset-controller");
        let mut refused = None;
        for _ in pods.len()..want {
            let mut meta = template.get("metadata").cloned().unwrap_or(json!({}));
            meta["name"] = json!(format!("{}-{}", name_of(rs), random_suffix()));
            meta["ownerReferences"] = owner_ref("ReplicaSet", rs);
            let pod = json!({"metadata": meta, "spec": template.get("spec").cloned().unwrap_or(json!({"containers": []})), "status": {"phase": "Pending"}});
            if let Err(message) = self.create_pod(&ns, pod, &controller).await {
                refused = Some(message);
                break;
            }
        }
        if refused.is_some() {
            self.retry_at = Some(Instant::now() + CREATE_RETRY);
        }
        if pods.len() > want {
            // Unready first, then the newest.
            pods.sort_by_key(|p| {
                (
                    is_ready(p),
                    std::cmp::Reverse(p.pointer("/metadata/resourceVersion").and_then(Value::as_str).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)),
                )
            });
            for p in pods.iter().take(pods.len() - want) {
                let _ = store.delete(pods_res, &ns, name_of(p));
            }
        }
        let pods = self.owned(pods_res, &ns, rs);
        let ready = pods.iter().filter(|p| is_ready(p)).count();
        let mut status = json!({"replicas": pods.len(), "readyReplicas": ready, "availableReplicas": ready, "observedGeneration": rs.pointer("/metadata/generation").cloned().unwrap_or(json!(1))});
        // As the real controller reports a failed create: a ReplicaFailure condition, kept (with
        // its first transition time) until a pass creates what it must.
        if let Some(message) = refused {
            let since = rs
                .pointer("/status/conditions/0/lastTransitionTime")
                .cloned()
                .unwrap_or_else(|| json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
            status["conditions"] =
                json!([{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": message, "lastTransitionTime": since}]);
        }
        let _ = store.write(find("apps", "v1", "replicasets").expect("registered"), &ns, name_of(rs), |o| {
            let mut o = o.clone();
            o["status"] = status;
            Ok(o)
        });
    }

    /// Creates a pod as a workload controller (`controller`) does: through the mutating
    /// admission webhooks and validation; the refusal's message when it is not created.
    pub(crate) async fn create_pod(&mut self, ns: &str, pod: Value, controller: &User) -> Result<(), String> {
        let shared = self.shared.clone();
        let pods_res = find("", "v1", "pods").expect("registered");
        let pod = admission::admit(&shared, pods_res, ns, pod, controller).await.map_err(|r| r.message)?;
        validate::object(pods_res, &pod).map_err(|e| format!("Pod is invalid: {e}"))?;
        if let Ok(p) = shared.store.create(pods_res, ns, pod) {
            self.born.insert(uid(&p).to_owned(), Instant::now());
        }
        Ok(())
    }

    /// Deletes ReplicaSets and pods whose controlling owner is gone (cascading delete).
    fn collect_garbage(&mut self) {
        let store = &self.shared.store;
        let kinds = [find("apps", "v1", "replicasets").expect("registered"), find("", "v1", "pods").expect("registered")];
        let owners: [&[&str]; 2] = [&["deployments"], &["replicasets", "statefulsets", "daemonsets"]];
        for (res, owner_plurals) in kinds.into_iter().zip(owners) {
            let mut live: HashMap<&str, std::collections::HashSet<String>> = HashMap::new();
            for plural in owner_plurals {
                let owner_res = find("apps", "v1", plural).expect("registered");
                live.insert(crate::resources::def(owner_res).kind, store.list(owner_res, None).0.iter().map(|o| uid(o).to_owned()).collect());
            }
            for o in store.list(res, None).0 {
                let kind = o.pointer("/metadata/ownerReferences/0/kind").and_then(Value::as_str);
                if let (Some(owner), Some(uids)) = (controller_uid(&o), kind.and_then(|k| live.get(k))) {
                    if !uids.contains(owner) {
                        let _ = store.delete(res, o["metadata"]["namespace"].as_str().unwrap_or(""), name_of(&o));
                    }
                }
            }
        }
    }
}
