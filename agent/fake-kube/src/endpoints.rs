//! The EndpointSlice controller a real cluster runs (kube-controller-manager's): every Service
//! with a selector gets a cluster IP if it has none and `discovery.k8s.io/v1` EndpointSlices,
//! labelled `kubernetes.io/service-name`, listing its pods' IPs with readiness and a pod
//! `targetRef`. It only writes slices it manages and Services' `spec.clusterIP`.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::resources::find;
use crate::sim::is_ready;
use crate::store::{name_of, namespace_of, Store};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// A real controller caps a slice at 100 endpoints (its --max-endpoints-per-slice default).
const MAX_PER_SLICE: usize = 100;

static SERVICE_IPS: AtomicU32 = AtomicU32::new(0);

/// A cluster IP in 127.254/16, a range `sim::next_pod_ip` never hands to pods. Nothing listens
/// on it: proxies resolve it to endpoints, as kube-proxy's rules would.
pub fn next_cluster_ip() -> String {
    let n = SERVICE_IPS.fetch_add(1, Ordering::Relaxed);
    format!("127.254.{}.{}", (n / 254) % 256, n % 254 + 1)
}

/// Where cluster IPs come from: 127.254/16 (`next_cluster_ip`), or with the kubelet on, its
/// Service range, which pods route to the host and the kubelet's DNAT rules serve.
pub(crate) struct ClusterIps {
    prefix: Option<[u8; 3]>,
    next: AtomicU32,
}

impl ClusterIps {
    pub fn new(prefix: Option<[u8; 3]>) -> ClusterIps {
        ClusterIps { prefix, next: AtomicU32::new(0) }
    }

    fn next(&self) -> String {
        match self.prefix {
            None => next_cluster_ip(),
            Some([a, b, c]) => format!("{a}.{b}.{c}.{}", self.next.fetch_add(1, Ordering::Relaxed) % 254 + 1),
        }
    }
}

/// The address behind port `port` of a Service, as a real API server reaches a webhook's
/// Service: a ready endpoint from its slices (the first one).
pub(crate) fn backend(store: &Store, ns: &str, name: &str, port: i32) -> Option<std::net::SocketAddr> {
    let svc = store.get(res("", "services"), ns, name)?;
    let svc_port = svc.pointer("/spec/ports")?.as_array()?.iter().find(|p| p["port"].as_i64() == Some(port.into()))?;
    let port_name = svc_port.get("name").and_then(Value::as_str).unwrap_or("");
    store
        .list(res("discovery.k8s.io", "endpointslices"), Some(ns))
        .0
        .iter()
        .filter(|s| s.pointer("/metadata/labels").and_then(|l| l.get(SERVICE_NAME_LABEL)) == Some(&json!(name)))
        .find_map(|s| {
            let target =
                s.get("ports")?.as_array()?.iter().find(|p| p.get("name").and_then(Value::as_str).unwrap_or("") == port_name)?.get("port")?.as_u64()?;
            let ip =
                s.get("endpoints")?.as_array()?.iter().find(|e| e.pointer("/conditions/ready") == Some(&json!(true)))?.pointer("/addresses/0")?.as_str()?;
            Some(std::net::SocketAddr::new(ip.parse().ok()?, target as u16))
        })
}

/// One pass: cluster IPs for Services that lack one, then the slices every selector implies;
/// slices whose Service is gone or lost its selector are deleted. Writes that change nothing
/// are no-ops in the store, so a steady cluster produces no events.
pub(crate) fn reconcile(store: &Store, cluster_ips: &ClusterIps) {
    let (services, slices, pods) = (res("", "services"), res("discovery.k8s.io", "endpointslices"), res("", "pods"));
    let services_now = store.list(services, None).0;
    // Clusters without selecting Services (most tests, the agent's benches) pay no pod listing.
    let selecting = services_now.iter().any(|s| s.pointer("/spec/selector").and_then(Value::as_object).is_some_and(|m| !m.is_empty()));
    let all_pods = if selecting { store.list(pods, None).0 } else { Vec::new() };
    let mut wanted = HashSet::new();
    for svc in services_now {
        let ns = namespace_of(&svc).to_owned();
        if svc.pointer("/spec/clusterIP").and_then(Value::as_str).is_none_or(str::is_empty) {
            let _ = store.write(services, &ns, name_of(&svc), |o| {
                let mut o = o.clone();
                let ip = cluster_ips.next();
                o["spec"]["clusterIPs"] = json!([ip]);
                o["spec"]["clusterIP"] = json!(ip);
                Ok(o)
            });
        }
        let Some(selector) = svc.pointer("/spec/selector").and_then(Value::as_object).filter(|s| !s.is_empty()) else { continue };
        let selected = all_pods.iter().filter(|p| namespace_of(p) == ns && selects(selector, p) && pod_ip(p).is_some());
        for slice in slices_for(&svc, selected) {
            let name = name_of(&slice).to_owned();
            wanted.insert((ns.clone(), name.clone()));
            if store.get(slices, &ns, &name).is_none() {
                let _ = store.create(slices, &ns, slice);
            } else {
                let _ = store.write(slices, &ns, &name, |o| {
                    let mut o = o.clone();
                    for field in ["addressType", "endpoints", "ports"] {
                        o[field] = slice[field].clone();
                    }
                    Ok(o)
                });
            }
        }
    }
    for slice in store.list(slices, None).0 {
        let managed = slice.pointer(&format!("/metadata/labels/{}", MANAGED_BY_LABEL.replace('/', "~1"))).and_then(Value::as_str) == Some(MANAGED_BY);
        if managed && !wanted.contains(&(namespace_of(&slice).to_owned(), name_of(&slice).to_owned())) {
            let _ = store.delete(slices, namespace_of(&slice), name_of(&slice));
        }
    }
}

fn res(group: &str, plural: &str) -> usize {
    find(group, "v1", plural).expect("registered")
}

fn selects(selector: &Map<String, Value>, pod: &Value) -> bool {
    let labels = pod.pointer("/metadata/labels");
    selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

fn pod_ip(pod: &Value) -> Option<&str> {
    pod.pointer("/status/podIP").and_then(Value::as_str).filter(|ip| !ip.is_empty())
}

/// The pod's port for a Service port's `targetPort`: a number as is, a name looked up among
/// the pod's container ports (None when the pod has no such port: it is left out, as upstream).
fn target_port(port: &Value, pod: &Value) -> Option<i64> {
    match port.get("targetPort") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(name)) => pod
            .pointer("/spec/containers")?
            .as_array()?
            .iter()
            .flat_map(|c| c.get("ports").and_then(Value::as_array).into_iter().flatten())
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name))?
            .get("containerPort")?
            .as_i64(),
        _ => port.get("port")?.as_i64(),
    }
}

/// The slices one Service implies: pods grouped by the ports their named targetPorts resolve
/// to (one port list per slice, as upstream), at most `MAX_PER_SLICE` endpoints each, named
/// after the Service and a hash of the group so the same pods map to the same slice.
fn slices_for<'a>(svc: &Value, pods: impl Iterator<Item = &'a Value>) -> Vec<Value> {
    let svc_ports = svc.pointer("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut groups: BTreeMap<String, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    for pod in pods {
        let ports: Vec<Value> = svc_ports
            .iter()
            .filter_map(|p| {
                let port = target_port(p, pod)?;
                Some(json!({"name": p.get("name").and_then(Value::as_str).unwrap_or(""), "protocol": p.get("protocol").and_then(Value::as_str).unwrap_or("TCP"), "port": port}))
            })
            .collect();
        let ready = is_ready(pod);
        let endpoint = json!({
            "addresses": [pod_ip(pod)],
            "conditions": {"ready": ready, "serving": ready, "terminating": false},
            "nodeName": pod.pointer("/spec/nodeName").cloned().unwrap_or(json!("fake-node-1")),
            "targetRef": {"kind": "Pod", "namespace": namespace_of(pod), "name": name_of(pod), "uid": pod.pointer("/metadata/uid").cloned().unwrap_or(Value::Null)},
        });
        let group = groups.entry(Value::Array(ports.clone()).to_string()).or_insert_with(|| (ports, Vec::new()));
        group.1.push(endpoint);
    }
    let svc_name = name_of(svc);
    let owner =
        json!([{"apiVersion": "v1", "kind": "Service", "name": svc_name, "uid": svc.pointer("/metadata/uid"), "controller": true, "blockOwnerDeletion": true}]);
    let mut out = Vec::new();
    for (key, (ports, mut endpoints)) in groups {
        endpoints.sort_by(|a, b| a["targetRef"]["name"].as_str().cmp(&b["targetRef"]["name"].as_str()));
        for (i, chunk) in endpoints.chunks(MAX_PER_SLICE).enumerate() {
            let hash = hex::encode(&Sha256::digest(format!("{key}/{i}").as_bytes())[..3]);
            out.push(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {
                    "name": format!("{svc_name}-{hash}"),
                    "labels": {SERVICE_NAME_LABEL: svc_name, MANAGED_BY_LABEL: MANAGED_BY},
                    "ownerReferences": owner,
                },
                "addressType": "IPv4", "endpoints": chunk, "ports": ports,
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, ListParams};
    use kube::runtime::{reflector, watcher, WatchStreamExt};
    use serde_json::json;
    use tokio_stream::StreamExt;

    use crate::FakeKube;

    fn deployment(name: &str, replicas: i64) -> serde_json::Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "apps"},
            "spec": {
                "replicas": replicas, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {"serviceAccountName": name, "containers": [{"name": "app", "image": "web", "ports": [{"name": "http", "containerPort": 8080}]}]}},
            },
        })
    }

    async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Ready pods' (ip, port, pod name) in the reflector's slices of `svc`.
    fn ready_endpoints(store: &reflector::Store<EndpointSlice>, svc: &str) -> Vec<(String, i32, String)> {
        let mut out = Vec::new();
        for s in store.state().iter().filter(|s| s.metadata.labels.as_ref().and_then(|l| l.get(super::SERVICE_NAME_LABEL)).map(String::as_str) == Some(svc)) {
            let port = s.ports.as_ref().and_then(|p| p.first()).and_then(|p| p.port).unwrap_or(0);
            for e in s.endpoints.iter().filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true)) {
                out.push((e.addresses[0].clone(), port, e.target_ref.as_ref().and_then(|r| r.name.clone()).unwrap_or_default()));
            }
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn services_get_a_cluster_ip_and_slices_follow_their_ready_pods_through_kube_rs() {
        let kube = FakeKube::start().await.unwrap();
        let client = kube.client().await.unwrap();
        kube.apply(deployment("web", 2)).unwrap();
        kube.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "apps"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}))
            .unwrap();
        // A Service without a selector gets an IP but no slices (its endpoints are someone else's).
        kube.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "external", "namespace": "apps"}, "spec": {"ports": [{"port": 443}]}}))
            .unwrap();

        let (reader, writer) = reflector::store();
        let slices = Api::<EndpointSlice>::all(client.clone());
        let stream = reflector(writer, watcher(slices, watcher::Config::default())).applied_objects();
        let task = tokio::spawn(async move {
            tokio::pin!(stream);
            while stream.next().await.is_some() {}
        });
        let pods = wait_for("two ready endpoints", || Some(ready_endpoints(&reader, "web")).filter(|e| e.len() == 2)).await;
        for (ip, port, pod) in &pods {
            let p = kube.get("v1", "Pod", "apps", pod).expect("the targetRef names a pod");
            assert_eq!(p["status"]["podIP"], json!(ip));
            assert!(ip.starts_with("127."), "{ip}");
            assert_eq!(*port, 8080, "the named targetPort resolved to the container port");
        }
        let services: Api<Service> = Api::namespaced(client.clone(), "apps");
        let web = services.get("web").await.unwrap();
        let ip = web.spec.unwrap().cluster_ip.unwrap();
        assert!(ip.starts_with("127.254."), "{ip}");
        let external = services.get("external").await.unwrap();
        let other = external.spec.unwrap().cluster_ip.unwrap();
        assert!(other.starts_with("127.254.") && other != ip, "{other} next to {ip}");
        let listed = Api::<EndpointSlice>::namespaced(client, "apps").list(&ListParams::default().labels("kubernetes.io/service-name=external")).await.unwrap();
        assert!(listed.items.is_empty());

        // Scaling up adds a ready endpoint; deleting a pod removes it (its replacement follows).
        kube.modify("apps/v1", "Deployment", "apps", "web", |d| d["spec"]["replicas"] = json!(3)).unwrap();
        wait_for("a third endpoint", || Some(ready_endpoints(&reader, "web")).filter(|e| e.len() == 3)).await;
        let gone = pods[0].2.clone();
        kube.delete("v1", "Pod", "apps", &gone).unwrap();
        wait_for("the deleted pod's endpoint dropped", || Some(ready_endpoints(&reader, "web")).filter(|e| !e.iter().any(|(_, _, p)| *p == gone))).await;

        // Deleting the Service deletes its slices.
        kube.delete("v1", "Service", "apps", "web").unwrap();
        wait_for("slices deleted with their Service", || reader.state().is_empty().then_some(())).await;
        task.abort();
    }
}
