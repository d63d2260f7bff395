//! The disruption controller: each PodDisruptionBudget's status from the pods it selects
//! (expected, healthy, the healthy it requires, and how many disruptions that allows), as
//! `kubectl get pdb` and an eviction would see it. It never evicts or deletes anything.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{json, Value};

use super::{int_or_percent, is_ready};
use crate::resources::find;
use crate::selectors::Selector;
use crate::store::{name_of, Store};

/// The status fields that decide; a write happens only when one of them changes.
const DECIDING: [&str; 5] = ["observedGeneration", "disruptionsAllowed", "currentHealthy", "desiredHealthy", "expectedPods"];

pub(super) fn reconcile(store: &Store) {
    let (pdbs, pods) = (find("policy", "v1", "poddisruptionbudgets").expect("registered"), find("", "v1", "pods").expect("registered"));
    for pdb in store.list(pdbs, None).0 {
        let ns = pdb["metadata"]["namespace"].as_str().unwrap_or("");
        // policy/v1: a null selector selects no pod, an empty one every pod of the namespace.
        let selector = pdb
            .pointer("/spec/selector")
            .filter(|s| !s.is_null())
            .and_then(|s| serde_json::from_value::<LabelSelector>(s.clone()).ok())
            .and_then(|s| Selector::from_label_selector(&s).ok());
        let selected: Vec<Value> = match &selector {
            Some(sel) => store.list(pods, Some(ns)).0.into_iter().filter(|p| sel.matches(p) && p.pointer("/metadata/deletionTimestamp").is_none()).collect(),
            None => Vec::new(),
        };
        let expected = selected.len() as i64;
        let healthy = selected.iter().filter(|p| is_ready(p)).count() as i64;
        let desired = match (pdb.pointer("/spec/minAvailable"), pdb.pointer("/spec/maxUnavailable")) {
            (Some(min), _) => int_or_percent(Some(min), expected, 0, true),
            (None, Some(max)) => (expected - int_or_percent(Some(max), expected, 0, true)).max(0),
            (None, None) => 0,
        };
        let allowed = (healthy - desired).max(0);
        let generation = pdb.pointer("/metadata/generation").cloned().unwrap_or(json!(1));
        let mut status = json!({
            "observedGeneration": generation, "disruptionsAllowed": allowed,
            "currentHealthy": healthy, "desiredHealthy": desired, "expectedPods": expected,
        });
        let old = pdb.get("status").cloned().unwrap_or(json!({}));
        if DECIDING.iter().all(|k| old.get(*k) == status.get(*k)) {
            continue;
        }
        let (sufficient, reason) = if allowed > 0 { ("True", "SufficientPods") } else { ("False", "InsufficientPods") };
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        status["conditions"] = json!([{"type": "DisruptionAllowed", "status": sufficient, "reason": reason, "message": "", "lastTransitionTime": now, "observedGeneration": generation}]);
        let _ = store.write(pdbs, ns, name_of(&pdb), |o| {
            let mut o = o.clone();
            o["status"] = status;
            Ok(o)
        });
    }
}
