//! The fake API server through the real kube-rs client: 409 on a stale update, RBAC 403 with
//! named-resource list rules, a watch by name (what the mesh controller runs on its issuer
//! Secret), and rolling updates within maxSurge/maxUnavailable; mutating admission webhooks in
//! `admission`.

mod admission;
mod kubelet;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use meshfleet_fake_kube::{Config, FakeKube, User};
use serde_json::json;

#[tokio::test]
async fn stale_updates_conflict_and_rbac_denies_what_is_not_granted() {
    let kube = FakeKube::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(kube.client().await.unwrap(), "default");
    let created = cms.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "x"}, "data": {"a": "1"}})).unwrap()).await.unwrap();
    let mut newer = created.clone();
    newer.data = Some([("a".to_string(), "2".to_string())].into());
    cms.replace("x", &PostParams::default(), &newer).await.unwrap();
    let err = cms.replace("x", &PostParams::default(), &created).await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(ref e) if e.code == 409), "{err}");

    let secrets = secrets_of_one_name(&kube, "mine", "v").await;
    assert_eq!(secrets.get("mine").await.unwrap().data.unwrap()["k"].0, b"v");
    assert_eq!(secrets.list(&ListParams::default().fields("metadata.name=mine")).await.unwrap().items.len(), 1);
    assert!(matches!(secrets.list(&ListParams::default()).await, Err(kube::Error::Api(e)) if e.code == 403));
    assert!(matches!(secrets.get("other").await, Err(kube::Error::Api(e)) if e.code == 403));
    assert_eq!(kube.denials().len(), 2);
    let anonymous: Api<Secret> = Api::namespaced(kube.client_for("nope").await.unwrap(), "default");
    assert!(matches!(anonymous.get("mine").await, Err(kube::Error::Api(e)) if e.code == 401));
}

#[tokio::test]
async fn a_template_change_rolls_pods_within_max_surge_and_max_unavailable() {
    let kube = FakeKube::start_with(Config { ready_delay: Duration::from_millis(150), ..Config::default() }).await.unwrap();
    let client = kube.client().await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d = json!({"metadata": {"name": "web"}, "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
        "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "web:1"}]}}}});
    deployments.create(&PostParams::default(), &serde_json::from_value(d).unwrap()).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let ready = |p: &Pod| p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    for _ in 0..100 {
        if pods.list(&Default::default()).await.unwrap().items.iter().filter(|p| ready(p)).count() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "web:2"}]}}}});
    deployments.patch("web", &PatchParams::default(), &Patch::Strategic(&patch)).await.unwrap();
    let (mut max_total, mut min_ready, mut done) = (0, usize::MAX, false);
    for _ in 0..200 {
        let items = pods.list(&Default::default()).await.unwrap().items;
        max_total = max_total.max(items.len());
        min_ready = min_ready.min(items.iter().filter(|p| ready(p)).count());
        let images_v2 = items.iter().filter(|p| ready(p) && p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("web:2")).count();
        if images_v2 == 4 && items.len() == 4 {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(done, "the rollout completes");
    assert!(max_total <= 5, "maxSurge 1: at most 5 pods, saw {max_total}");
    assert!(min_ready >= 3, "maxUnavailable 1: at least 3 ready, saw {min_ready}");
    let d = deployments.get("web").await.unwrap();
    assert_eq!(d.spec.unwrap().template.spec.unwrap().containers[0].image.as_deref(), Some("web:2"));
}

#[tokio::test]
async fn lists_page_with_limit_and_continue_and_reflectors_see_every_object() {
    use futures::{StreamExt, TryStreamExt};
    use kube::runtime::watcher::{self, watcher, Event};

    let kube = FakeKube::start().await.unwrap();
    let cm = |ns: &str, name: String| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": {"k": "v"}});
    for i in 0..25 {
        kube.apply(cm("a", format!("cm-{i:02}"))).unwrap();
        kube.apply(cm("b", format!("cm-{i:02}"))).unwrap();
    }
    let client = kube.client().await.unwrap();
    let in_a: Api<ConfigMap> = Api::namespaced(client.clone(), "a");

    // Pages of 10 in key order; every page reports the first page's resourceVersion, and a
    // change made while paging is replayed by a watch from it.
    let first = in_a.list(&ListParams::default().limit(10)).await.unwrap();
    let list_rv = first.metadata.resource_version.clone().unwrap();
    assert_eq!(first.items.len(), 10);
    kube.apply(
        cm("a", "cm-00".into())
            .as_object()
            .cloned()
            .map(|mut o| {
                o.insert("data".into(), json!({"k": "changed"}));
                serde_json::Value::Object(o)
            })
            .unwrap(),
    )
    .unwrap();
    let (mut names, mut token) = (first.items.iter().map(|c| c.metadata.name.clone().unwrap()).collect::<Vec<_>>(), first.metadata.continue_.clone());
    let mut pages = 1;
    while let Some(t) = token.filter(|t| !t.is_empty()) {
        let page = in_a.list(&ListParams::default().limit(10).continue_token(&t)).await.unwrap();
        assert_eq!(page.metadata.resource_version.as_deref(), Some(list_rv.as_str()), "one list, one resourceVersion");
        names.extend(page.items.iter().map(|c| c.metadata.name.clone().unwrap()));
        token = page.metadata.continue_.clone();
        pages += 1;
    }
    assert_eq!(pages, 3);
    assert_eq!(names, (0..25).map(|i| format!("cm-{i:02}")).collect::<Vec<_>>(), "no object twice, none missing, none from namespace b");
    let mut replay = in_a.watch(&kube::api::WatchParams::default().timeout(1), &list_rv).await.unwrap().boxed();
    let ev = replay.try_next().await.unwrap().expect("the change made while paging is replayed");
    assert!(matches!(ev, kube::api::WatchEvent::Modified(ref c) if c.data.as_ref().unwrap()["k"] == "changed"));

    // Limit 0 is no limit; a continue token older than the history is 410 Expired.
    assert_eq!(in_a.list(&ListParams::default().limit(0)).await.unwrap().items.len(), 25);
    let stale = in_a.list(&ListParams::default().limit(5)).await.unwrap().metadata.continue_.unwrap();
    kube.apply(cm("a", "cm-99".into())).unwrap();
    kube.compact();
    let err = in_a.list(&ListParams::default().limit(5).continue_token(&stale)).await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(ref e) if e.code == 410), "{err}");
    let err = in_a.list(&ListParams::default().limit(5).continue_token("not-a-token")).await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(ref e) if e.code == 400), "{err}");

    // A reflector listing 7 at a time across namespaces gets all 51 exactly once.
    let all: Api<ConfigMap> = Api::all(client);
    let mut stream = watcher(all, watcher::Config::default().page_size(7)).boxed();
    let mut seen = std::collections::BTreeSet::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("the initial list completes").unwrap().unwrap() {
            Event::InitApply(c) => assert!(seen.insert((c.metadata.namespace.unwrap(), c.metadata.name.unwrap())), "each object once"),
            Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(seen.len(), 51);
}

#[tokio::test]
async fn a_watch_by_name_sees_only_that_object_with_rbac_for_that_name() {
    use futures::StreamExt;
    use kube::runtime::watcher::{self, watcher, Event};
    let kube = FakeKube::start().await.unwrap();
    let secrets = secrets_of_one_name(&kube, "other", "other").await;
    let mut stream = watcher(secrets, watcher::Config::default().fields("metadata.name=mine")).boxed();
    let mut next = async || tokio::time::timeout(Duration::from_secs(5), stream.next()).await.expect("an event").unwrap().unwrap();
    assert!(matches!(next().await, Event::Init));
    assert!(matches!(next().await, Event::InitDone), "nothing named mine yet");
    let secret = |v: &str| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "mine", "namespace": "default"}, "stringData": {"k": v}});
    kube.apply_yaml(&serde_json::to_string(&secret("1")).unwrap()).unwrap();
    kube.apply_yaml(
        &serde_json::to_string(
            &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "other", "namespace": "default"}, "stringData": {"k": "changed"}}),
        )
        .unwrap(),
    )
    .unwrap();
    kube.apply_yaml(&serde_json::to_string(&secret("2")).unwrap()).unwrap();
    kube.delete("v1", "Secret", "default", "mine").unwrap();
    let data = |s: &Secret| s.data.as_ref().unwrap()["k"].0.clone();
    assert!(matches!(next().await, Event::Apply(s) if data(&s) == b"1"));
    assert!(matches!(next().await, Event::Apply(s) if data(&s) == b"2"), "the change to `other` is not sent");
    assert!(matches!(next().await, Event::Delete(s) if s.metadata.name.as_deref() == Some("mine")));
    assert!(kube.denials().is_empty(), "{:?}", kube.denials());
}

/// With RBAC enforced, the Secrets API of a service account allowed get, list and watch on the
/// Secret `mine` only; `present` is created beside it (holding `k: value`).
async fn secrets_of_one_name(kube: &FakeKube, present: &str, value: &str) -> Api<Secret> {
    kube.apply_yaml(&format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: r, namespace: default}}
rules:
- {{apiGroups: [""], resources: [secrets], resourceNames: [mine], verbs: [get, list, watch]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: r, namespace: default}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: r}}
subjects: [{{kind: ServiceAccount, name: sa, namespace: default}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: {present}, namespace: default}}
stringData: {{k: {value}}}
"#
    ))
    .unwrap();
    kube.enforce_rbac(true);
    kube.add_token("sa-token", User::service_account("default", "sa"));
    Api::namespaced(kube.client_for("sa-token").await.unwrap(), "default")
}
