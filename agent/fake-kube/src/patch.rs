//! Patch semantics. JSON merge patch (RFC 7386) exactly; strategic merge patch as merge patch
//! plus merge-by-`name` for the lists the agent patches (containers, env, ports, volumes ...),
//! which is what strategic merge does for those fields. `$patch` directives are not supported.

use serde_json::Value;

/// Lists merged by their items' `name` under strategic merge (Kubernetes' patchMergeKey=name).
const MERGE_BY_NAME: &[&str] = &["containers", "initContainers", "ephemeralContainers", "env", "ports", "volumes", "volumeMounts", "imagePullSecrets"];

pub fn merge(target: &mut Value, patch: &Value) {
    apply(target, patch, false)
}

pub fn strategic(target: &mut Value, patch: &Value) {
    apply(target, patch, true)
}

fn apply(target: &mut Value, patch: &Value, strategic: bool) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (t.get_mut(k), v) {
            (Some(Value::Array(old)), Value::Array(new)) if strategic && MERGE_BY_NAME.contains(&k.as_str()) => {
                for item in new {
                    let name = item.get("name");
                    match old.iter_mut().find(|o| name.is_some() && o.get("name") == name) {
                        Some(o) => apply(o, item, true),
                        None => old.push(item.clone()),
                    }
                }
            }
            (Some(slot), Value::Object(_)) => apply(slot, v, strategic),
            _ => {
                let mut fresh = Value::Null;
                apply(&mut fresh, v, strategic);
                t.insert(k.clone(), if v.is_object() { fresh } else { v.clone() });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_containers_by_name_and_merge_replaces_lists() {
        let base = json!({"spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}], "x": 1}});
        let patch = json!({"spec": {"containers": [{"name": "b", "image": "b:2"}], "x": null}});
        let mut s = base.clone();
        strategic(&mut s, &patch);
        assert_eq!(s, json!({"spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:2"}]}}));
        let mut m = base;
        merge(&mut m, &patch);
        assert_eq!(m, json!({"spec": {"containers": [{"name": "b", "image": "b:2"}]}}));
    }
}
