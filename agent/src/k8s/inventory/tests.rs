use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

fn pod(name: &str) -> MeshedPod {
    MeshedPod {
        pod: v1::Pod { namespace: "shop".into(), name: name.into(), ..Default::default() },
        uid: format!("uid-{name}"),
        ip: None,
        admin_port: DEFAULT_ADMIN_PORT,
        proxy_restarts: 0,
    }
}

#[test]
fn cluster_scoped_objects_are_keyed_by_name_and_namespaced_ones_by_namespace_and_name() {
    let ns = Namespace { metadata: ObjectMeta { name: Some("payments".into()), ..Default::default() }, ..Default::default() };
    let p = Pod { metadata: ObjectMeta { name: Some("web-1".into()), namespace: Some("payments".into()), ..Default::default() }, ..Default::default() };
    assert_eq!((key(&ns), key(&p)), ("payments".to_owned(), "payments/web-1".to_owned()));
}

#[test]
fn the_pump_gets_changed_pods_only_and_everything_after_a_relist() {
    let inv = Inventory::new();
    let table = Table::pods();
    {
        let mut st = inv.lock();
        st.pods.insert("shop/a".into(), pod("a"));
        st.pods.insert("shop/b".into(), pod("b"));
        table.changed(&mut st, None);
    }
    assert!(matches!(inv.take_pod_changes(), ChangedPods::All(p) if p.len() == 2), "a relist changes everything");
    {
        let mut st = inv.lock();
        st.pods.remove("shop/a");
        table.changed(&mut st, Some("shop/a"));
    }
    let ChangedPods::Some(changed) = inv.take_pod_changes() else { panic!("one change is not a relist") };
    assert_eq!(changed, vec![("shop/a".to_owned(), None)]);
    assert!(matches!(inv.take_pod_changes(), ChangedPods::Some(c) if c.is_empty()), "taken once");
    // Nobody taking them (a standby): the set stops growing past the table's size.
    for i in 0..2000 {
        table.changed(&mut inv.lock(), Some(&format!("shop/p{i}")));
    }
    assert!(inv.lock().pod_changes.keys.len() <= 1024);
    assert!(matches!(inv.take_pod_changes(), ChangedPods::All(_)));
}

fn identity(anchor: &str, not_after_ms: i64) -> ProxyIdentity {
    ProxyIdentity { bundle_fingerprints: vec![anchor.into()], leaf_anchor_fingerprint: anchor.into(), leaf_not_after_unix_ms: not_after_ms }
}

#[test]
fn a_changed_proxy_identity_changes_its_pod_only_and_survives_the_pods_updates() {
    let inv = Inventory::new();
    let table = Table::pods();
    for name in ["a", "b"] {
        table.insert(&mut inv.lock(), format!("shop/{name}"), pod(name));
    }
    let _ = inv.take_pod_changes();
    inv.set_proxy_identities(vec![("uid-a".into(), identity("aa", 1)), ("uid-b".into(), identity("bb", 1))]);
    let ChangedPods::Some(mut changed) = inv.take_pod_changes() else { panic!("not a relist") };
    changed.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(changed.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["shop/a", "shop/b"]);
    assert_eq!(changed[0].1.as_ref().unwrap().pod.leaf_anchor_fingerprint, "aa");

    // b renewed its leaf; a said the same again; a pod gone since its read is ignored.
    inv.set_proxy_identities(vec![("uid-a".into(), identity("aa", 1)), ("uid-b".into(), identity("bb", 2)), ("uid-gone".into(), identity("cc", 1))]);
    let ChangedPods::Some(changed) = inv.take_pod_changes() else { panic!("not a relist") };
    assert_eq!(changed.len(), 1);
    assert_eq!((changed[0].0.as_str(), changed[0].1.as_ref().unwrap().pod.leaf_not_after_unix_ms), ("shop/b", 2));

    // An update from the API server (and a relist) keeps what the proxy said; a new pod
    // under the same name does not inherit it.
    table.insert(&mut inv.lock(), "shop/a".into(), MeshedPod { proxy_restarts: 1, ..pod("a") });
    table.replace(&mut inv.lock(), HashMap::from([("shop/a".to_owned(), pod("a")), ("shop/b".to_owned(), MeshedPod { uid: "uid-b2".into(), ..pod("b") })]));
    let pods = inv.pods();
    assert_eq!(ProxyIdentity::of(&pods["shop/a"].pod), identity("aa", 1));
    assert_eq!(ProxyIdentity::of(&pods["shop/b"].pod), ProxyIdentity::default());
    assert_eq!(inv.snapshot().pods.iter().find(|p| p.name == "a").map(|p| p.bundle_fingerprints.clone()), Some(vec!["aa".to_owned()]));
}

/// What the injector makes: the proxy as a native sidecar (an init container that restarts
/// always), its status among the init containers'. A plain init container of that name is not one.
#[test]
fn an_injected_native_sidecar_makes_a_meshed_pod() {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "web-1", "namespace": "shop" },
        "spec": {
            "initContainers": [
                { "name": "meshfleet-init", "image": "ghcr.io/meshfleet/proxy:1.4.0" },
                { "name": "meshfleet-proxy", "image": "ghcr.io/meshfleet/proxy:1.4.0", "restartPolicy": "Always",
                  "ports": [{ "name": "admin", "containerPort": 4191 }] }
            ],
            "containers": [{ "name": "app", "image": "web:1" }]
        },
        "status": {
            "phase": "Running",
            "conditions": [{ "type": "Ready", "status": "True" }],
            "initContainerStatuses": [{ "name": "meshfleet-proxy", "restartCount": 2, "ready": true, "image": "x", "imageID": "", "started": true }],
            "containerStatuses": [{ "name": "app", "restartCount": 1, "ready": true, "image": "x", "imageID": "" }]
        }
    }))
    .unwrap();
    let meshed = meshed_pod(&pod).expect("a native sidecar is the proxy");
    assert_eq!((meshed.pod.proxy_version.as_str(), meshed.pod.ready, meshed.pod.restarts, meshed.proxy_restarts), ("1.4.0", true, 3, 2));

    let mut plain = pod.clone();
    plain.spec.as_mut().unwrap().init_containers.as_mut().unwrap()[1].restart_policy = None;
    assert!(meshed_pod(&plain).is_none(), "an init container that runs to completion is no sidecar");
}

#[test]
fn a_namespace_is_meshed_by_its_inject_annotation_or_label() {
    let ns = |labels: &[(&str, &str)], annotations: &[(&str, &str)]| {
        let map = |kv: &[(&str, &str)]| Some(kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        Namespace {
            metadata: ObjectMeta { name: Some("shop".into()), labels: map(labels), annotations: map(annotations), ..Default::default() },
            ..Default::default()
        }
    };
    assert!(injected_namespace(&ns(&[], &[(INJECT_LABEL, "enabled")])));
    assert!(injected_namespace(&ns(&[(INJECT_LABEL, "enabled")], &[])));
    assert!(!injected_namespace(&ns(&[], &[(INJECT_LABEL, "disabled")])));
    assert!(!injected_namespace(&ns(&[], &[])));
}
