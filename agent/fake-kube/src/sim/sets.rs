//! The StatefulSet and DaemonSet controllers: pods from the template, labelled with the
//! template's revision, replaced on a template change as the real controllers do (a
//! StatefulSet's highest ordinal first, one at a time, above its partition; a DaemonSet's
//! within its maxUnavailable) or, under `OnDelete`, only when someone deletes them.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{int_or_percent, is_ready, owner_ref, random_suffix, Simulator};
use crate::rbac::User;
use crate::resources::find;
use crate::store::name_of;

/// The pod label naming the template revision a pod was made from (as the real controllers set).
const REVISION: &str = "controller-revision-hash";

fn revision(name: &str, template: &Value) -> String {
    format!("{name}-{}", hex::encode(&Sha256::digest(template.to_string().as_bytes())[..5]))
}

fn revision_of(pod: &Value) -> Option<&str> {
    pod.pointer("/metadata/labels")?.get(REVISION)?.as_str()
}

fn on_delete(set: &Value) -> bool {
    set.pointer("/spec/updateStrategy/type").and_then(Value::as_str) == Some("OnDelete")
}

/// A pod of `set` from its template, with `name` and the revision label.
fn pod_from(set: &Value, kind: &str, name: String, rev: &str, extra_labels: Value) -> Value {
    let template = set.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let mut meta = template.get("metadata").cloned().unwrap_or(json!({}));
    meta["name"] = json!(name);
    meta["labels"][REVISION] = json!(rev);
    if let Some(extra) = extra_labels.as_object() {
        for (k, v) in extra {
            meta["labels"][k] = v.clone();
        }
    }
    meta["ownerReferences"] = owner_ref(kind, set);
    json!({"metadata": meta, "spec": template.get("spec").cloned().unwrap_or(json!({"containers": []})), "status": {"phase": "Pending"}})
}

impl Simulator {
    fn write_status(&self, plural: &str, ns: &str, name: &str, status: Value) {
        let _ = self.shared.store.write(find("apps", "v1", plural).expect("registered"), ns, name, |o| {
            let mut o = o.clone();
            o["status"] = status;
            Ok(o)
        });
    }

    pub(super) async fn statefulset(&mut self, set: &Value) {
        let shared = self.shared.clone();
        let store = &shared.store;
        let pods_res = find("", "v1", "pods").expect("registered");
        let ns = set["metadata"]["namespace"].as_str().unwrap_or("").to_owned();
        let name = name_of(set).to_owned();
        let update = revision(&name, set.pointer("/spec/template").unwrap_or(&Value::Null));
        let desired = set.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1).max(0);
        let partition = set.pointer("/spec/updateStrategy/rollingUpdate/partition").and_then(Value::as_i64).unwrap_or(0);
        let ordinal = |p: &Value| name_of(p).strip_prefix(&format!("{name}-")).and_then(|o| o.parse::<i64>().ok());
        let mut pods = self.owned(pods_res, &ns, set);
        pods.sort_by_key(|p| ordinal(p).unwrap_or(i64::MAX));
        let all_ready = pods.iter().all(is_ready);
        // OrderedReady: one change at a time, each only once every other pod is ready.
        if let Some(extra) = pods.iter().rev().find(|p| ordinal(p).is_none_or(|o| o >= desired)) {
            if all_ready {
                let _ = store.delete(pods_res, &ns, name_of(extra));
            }
        } else if let Some(missing) = (0..desired).find(|i| !pods.iter().any(|p| ordinal(p) == Some(*i))) {
            if pods.iter().filter(|p| ordinal(p) < Some(missing)).all(is_ready) {
                let pod = pod_from(
                    set,
                    "StatefulSet",
                    format!("{name}-{missing}"),
                    &update,
                    json!({"statefulset.kubernetes.io/pod-name": format!("{name}-{missing}")}),
                );
                let controller = User::service_account("kube-system", "statefulset-controller");
                let _ = self.create_pod(&ns, pod, &controller).await;
            }
        } else if !on_delete(set) && all_ready {
            // Rolling update: the highest ordinal not at the update revision, above the partition.
            if let Some(stale) = pods.iter().rev().find(|p| ordinal(p).is_some_and(|o| o >= partition) && revision_of(p) != Some(update.as_str())) {
                let _ = store.delete(pods_res, &ns, name_of(stale));
            }
        }
        let pods = self.owned(pods_res, &ns, set);
        let updated = pods.iter().filter(|p| revision_of(p) == Some(update.as_str())).count() as i64;
        let ready = pods.iter().filter(|p| is_ready(p)).count() as i64;
        // The current revision moves to the update revision once every pod runs it.
        let current = if updated == desired && pods.len() as i64 == desired {
            update.clone()
        } else {
            set.pointer("/status/currentRevision")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| pods.iter().find_map(|p| revision_of(p).map(str::to_owned)))
                .unwrap_or_else(|| update.clone())
        };
        let current_replicas = pods.iter().filter(|p| revision_of(p) == Some(current.as_str())).count();
        let status = json!({
            "observedGeneration": set.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
            "replicas": pods.len(), "readyReplicas": ready, "availableReplicas": ready,
            "currentReplicas": current_replicas, "updatedReplicas": updated,
            "currentRevision": current, "updateRevision": update,
        });
        self.write_status("statefulsets", &ns, &name, status);
    }

    pub(super) async fn daemonset(&mut self, ds: &Value) {
        let shared = self.shared.clone();
        let store = &shared.store;
        let pods_res = find("", "v1", "pods").expect("registered");
        let ns = ds["metadata"]["namespace"].as_str().unwrap_or("").to_owned();
        let name = name_of(ds).to_owned();
        let update = revision(&name, ds.pointer("/spec/template").unwrap_or(&Value::Null));
        let mut nodes: Vec<String> = store.list(find("", "v1", "nodes").expect("registered"), None).0.iter().map(|n| name_of(n).to_owned()).collect();
        if nodes.is_empty() {
            // The simulated kubelet's one node, where it places every pod.
            nodes.push("fake-node-1".into());
        }
        let desired = nodes.len() as i64;
        let max_unavailable = match ds.pointer("/spec/updateStrategy/rollingUpdate/maxUnavailable") {
            None => 1,
            v => int_or_percent(v, desired, 0, true).max(1),
        };
        let node_of = |p: &Value| p.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("fake-node-1").to_owned();
        let pods = self.owned(pods_res, &ns, ds);
        // One pod per node: extras and pods on nodes that are gone are deleted.
        let mut seen = std::collections::HashSet::new();
        for p in &pods {
            if !nodes.contains(&node_of(p)) || !seen.insert(node_of(p)) {
                let _ = store.delete(pods_res, &ns, name_of(p));
            }
        }
        let pods = self.owned(pods_res, &ns, ds);
        if !on_delete(ds) {
            let mut unavailable = nodes.iter().filter(|n| !pods.iter().any(|p| node_of(p) == **n && is_ready(p))).count() as i64;
            for p in pods.iter().filter(|p| revision_of(p) != Some(update.as_str())) {
                // An unready old pod goes at once; a ready one only within maxUnavailable.
                if !is_ready(p) || unavailable < max_unavailable {
                    if is_ready(p) {
                        unavailable += 1;
                    }
                    let _ = store.delete(pods_res, &ns, name_of(p));
                }
            }
        }
        let pods = self.owned(pods_res, &ns, ds);
        let controller = User::service_account("kube-system", "daemon-set-controller");
        for node in nodes.iter().filter(|n| !pods.iter().any(|p| node_of(p) == **n)) {
            let mut pod = pod_from(ds, "DaemonSet", format!("{name}-{}", random_suffix()), &update, json!({}));
            pod["spec"]["nodeName"] = json!(node);
            let _ = self.create_pod(&ns, pod, &controller).await;
        }
        let pods = self.owned(pods_res, &ns, ds);
        let ready = pods.iter().filter(|p| is_ready(p)).count() as i64;
        let updated = pods.iter().filter(|p| revision_of(p) == Some(update.as_str())).count();
        let status = json!({
            "observedGeneration": ds.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
            "desiredNumberScheduled": desired, "currentNumberScheduled": pods.len(), "numberMisscheduled": 0,
            "numberReady": ready, "numberAvailable": ready, "numberUnavailable": (desired - ready).max(0),
            "updatedNumberScheduled": updated,
        });
        self.write_status("daemonsets", &ns, &name, status);
    }
}
