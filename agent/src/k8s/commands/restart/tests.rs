use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn pdb(selector: serde_json::Value, status: serde_json::Value) -> PodDisruptionBudget {
    serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "shop", "generation": 1}, "spec": {"selector": selector}, "status": status}))
        .unwrap()
}

#[test]
fn a_budget_selects_by_labels_and_expressions_and_a_null_selector_selects_nothing() {
    let web = labels(&[("app", "web"), ("tier", "front")]);
    let sel = |v: serde_json::Value| serde_json::from_value::<LabelSelector>(v).unwrap();
    assert!(selects(Some(&sel(json!({"matchLabels": {"app": "web"}}))), &web));
    assert!(!selects(Some(&sel(json!({"matchLabels": {"app": "db"}}))), &web));
    assert!(selects(Some(&sel(json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "edge"]}]}))), &web));
    assert!(!selects(Some(&sel(json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}))), &web));
    assert!(selects(Some(&sel(json!({"matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]}))), &web));
    assert!(selects(Some(&sel(json!({}))), &web), "an empty selector selects every pod");
    assert!(!selects(None, &web));
}

#[test]
fn a_budget_holds_the_restart_only_while_it_allows_no_disruption() {
    let web = labels(&[("app", "web")]);
    let counted = |allowed: i32| json!({"observedGeneration": 1, "disruptionsAllowed": allowed, "currentHealthy": 2, "desiredHealthy": 2, "expectedPods": 2});
    let held = blocking(&[pdb(json!({"matchLabels": {"app": "web"}}), counted(0))], &web);
    assert_eq!(held.as_deref(), Some("PodDisruptionBudget shop/web allows no disruption (2 of 2 pods healthy, 2 required)"));
    assert_eq!(blocking(&[pdb(json!({"matchLabels": {"app": "web"}}), counted(1))], &web), None);
    assert_eq!(blocking(&[pdb(json!({"matchLabels": {"app": "db"}}), counted(0))], &web), None, "another workload's budget");
    let stale = json!({"observedGeneration": 0, "disruptionsAllowed": 1, "currentHealthy": 2, "desiredHealthy": 1, "expectedPods": 2});
    assert!(blocking(&[pdb(json!({"matchLabels": {"app": "web"}}), stale)], &web).is_some_and(|w| w.contains("not yet counted")));
}

#[test]
fn bare_pods_jobs_and_on_delete_statefulsets_need_attention_and_rolled_pods_do_not() {
    let pod = |name: &str, owner: Option<(&str, &str)>, phase: &str| -> Pod {
        let refs = owner.map(|(kind, n)| json!([{"apiVersion": "v1", "kind": kind, "name": n, "uid": "u", "controller": true}]));
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "shop", "ownerReferences": refs}, "status": {"phase": phase}})).unwrap()
    };
    let on_delete: BTreeSet<(String, String)> = [("shop".to_owned(), "db".to_owned())].into();
    let kind = |p: &Pod| needs_attention(p, &on_delete).map(|a| a.kind);
    assert_eq!(kind(&pod("debug", None, "Running")).as_deref(), Some("Pod"));
    assert_eq!(kind(&pod("migrate-x", Some(("Job", "migrate")), "Running")).as_deref(), Some("Job"));
    assert_eq!(kind(&pod("migrate-y", Some(("Job", "migrate")), "Succeeded")), None, "a finished pod runs no proxy");
    assert_eq!(kind(&pod("db-0", Some(("StatefulSet", "db")), "Running")).as_deref(), Some("StatefulSet"));
    assert_eq!(kind(&pod("cache-0", Some(("StatefulSet", "cache")), "Running")), None, "a RollingUpdate StatefulSet is restarted");
    assert_eq!(kind(&pod("web-abc", Some(("ReplicaSet", "web-1")), "Running")), None);
}
