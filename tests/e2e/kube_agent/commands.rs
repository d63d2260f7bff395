//! Commands end to end: created through the API, executed by the agent against the fake API
//! server under the install manifest's RBAC, progress and results read back through the API.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meshfleet_agent::k8s;
use meshfleet_fake_kube::FakeKube;
use serde_json::{json, Value};

use super::{deployment, fake_meshed, finish, send_command, setup, start_connected_agent, within};

/// Deployments of `shop` restarted by the command `id`: name -> (restartedAt, rolled out).
fn restart_state(kube: &FakeKube, id: &str) -> BTreeMap<String, (String, bool)> {
    kube.list("apps/v1", "Deployment", Some("shop"))
        .into_iter()
        .filter(|d| d.pointer("/spec/template/metadata/annotations/meshfleet.io~1restarted-by").and_then(Value::as_str) == Some(id))
        .map(|d| {
            let at = d.pointer("/spec/template/metadata/annotations/kubectl.kubernetes.io~1restartedAt").and_then(Value::as_str).unwrap_or_default().to_owned();
            let typed: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(d.clone()).unwrap();
            (d["metadata"]["name"].as_str().unwrap().to_owned(), (at, k8s::commands::rolled_out(&typed)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_workloads_rolls_in_batches_within_max_unavailable_and_reports_progress() {
    let s = setup().await;
    for name in ["auth", "cart"] {
        s.kube.apply(deployment("shop", name, 1)).unwrap();
    }
    // `search` is down at first (its pod never gets ready), so with max_unavailable 0 nothing
    // may restart until it recovers.
    let mut search = deployment("shop", "search", 1);
    search["spec"]["template"]["metadata"]["annotations"] = json!({"fake.meshfleet.io/never-ready": "true"});
    s.kube.apply(search).unwrap();
    let unavailable = || {
        s.kube
            .list("apps/v1", "Deployment", Some("shop"))
            .iter()
            .filter(|d| d["status"]["unavailableReplicas"].as_i64() != Some(0))
            .map(|d| d["metadata"]["name"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert!(within(Duration::from_secs(5), || async { fake_meshed(&s.kube).len() == 6 && unavailable() == ["search"] }).await.is_some(), "{:?}", unavailable());
    let a = start_connected_agent(&s).await;

    let path = send_command(&s, "restart-workloads", json!({"namespace": "shop", "batch_size": 2, "max_unavailable": 0, "timeout_secs": 30})).await;
    let id = path.rsplit('/').next().unwrap().to_owned();
    // Watch the Deployments while the command runs: at most two restarting at once.
    let max_restarting = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (kube, id, max, stop) = (s.kube.clone(), id.clone(), max_restarting.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let now = restart_state(&kube, &id).values().filter(|(_, done)| !done).count();
                max.fetch_max(now, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(restart_state(&s.kube, &id), BTreeMap::new(), "nothing restarts while a selected workload is unavailable");
    let (_, c) = s.app.get(&path, &s.owner.access).await;
    assert_eq!((&c["state"], &c["progress"]), (&json!("running"), &json!(0)), "{c}");
    assert_eq!(c["message"], "waiting: 1 selected workloads in shop unavailable (max_unavailable 0)", "the command says why it waits");
    let recovered_at = k8s_openapi::jiff::Timestamp::now();
    s.kube.modify("apps/v1", "Deployment", "shop", "search", |d| d["spec"]["template"]["metadata"]["annotations"] = json!({})).unwrap();

    let (cmd, progress) = finish(&s, &path, Duration::from_secs(20)).await;
    stop.store(true, Ordering::Relaxed);
    monitor.await.unwrap();
    assert_eq!(cmd["state"], "succeeded", "{cmd}");
    assert_eq!((cmd["progress"].as_i64(), cmd["message"].as_str()), (Some(100), Some("restarted 5 workloads (0 already restarted by this command)")), "{cmd}");
    assert_eq!(
        cmd["output"]["restarted"],
        json!(["shop/deployment/api", "shop/deployment/auth", "shop/deployment/cart", "shop/deployment/search", "shop/deployment/web"]),
        "{cmd}"
    );
    // Batches of 2 of 5 workloads: progress 40 %, 80 %, then 100 % when done.
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "progress only grows: {progress:?}");
    assert_eq!(progress.iter().copied().filter(|p| *p > 0 && *p < 99).collect::<Vec<_>>(), vec![40, 80], "progress seen while running: {progress:?}");
    let state = restart_state(&s.kube, &id);
    let mut by_time: Vec<(&String, &String)> = state.iter().map(|(n, (at, _))| (at, n)).collect();
    by_time.sort();
    assert_eq!(by_time.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>(), ["api", "auth", "cart", "search", "web"], "restarted in order: {state:?}");
    for (at, name) in &by_time {
        let at: k8s_openapi::jiff::Timestamp = at.parse().unwrap();
        assert!(at > recovered_at, "{name} restarted only after every selected workload was available");
    }
    assert!(state.values().all(|(_, done)| *done), "all rolled out: {state:?}");
    assert_eq!(max_restarting.load(Ordering::Relaxed), 2, "batches of two restart together, never more");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_control_plane_version_rolls_the_controller_and_reports_through_the_commands_api() {
    let s = setup().await;
    let a = start_connected_agent(&s).await;
    let controller_pods = || s.kube.list("v1", "Pod", Some("meshfleet"));
    let before: HashSet<String> = controller_pods().iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(before.len(), 1);

    let path = send_command(&s, "set-control-plane-version", json!({"version": "0.2.0", "timeout_secs": 20})).await;
    let (cmd, _) = finish(&s, &path, Duration::from_secs(15)).await;
    assert_eq!((&cmd["state"], &cmd["message"]), (&json!("succeeded"), &json!("control plane at 0.2.0")), "{cmd}");
    assert_eq!(
        cmd["output"],
        json!({"image": "meshfleet/controller:0.2.0", "previous_image": "meshfleet/controller:0.1.0", "proxy_version": "0.2.0", "previous_proxy_version": "0.1.0"})
    );
    // Done means rolled out: the Deployment runs the new image on fresh, ready pods.
    let d = s.kube.get("apps/v1", "Deployment", "meshfleet", "meshfleet-controller").unwrap();
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "meshfleet/controller:0.2.0");
    // The injector the controller runs now injects the new proxy into restarted pods.
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["env"], json!([{"name": "MESHFLEET_PROXY_VERSION", "value": "0.2.0"}]));
    let pods = controller_pods();
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert!(!before.contains(pods[0]["metadata"]["name"].as_str().unwrap()), "the controller pod was replaced");
    assert_eq!(pods[0]["status"]["containerStatuses"][0]["image"], "meshfleet/controller:0.2.0");
    // The inventory in the API follows.
    let inv_path = format!("/api/v1/clusters/{}/inventory", s.cluster);
    let shown = within(Duration::from_secs(5), || async { s.app.get(&inv_path, &s.owner.access).await.1.to_string().contains("\"0.2.0\"") }).await;
    assert!(shown.is_some(), "control plane version in the inventory: {}", s.app.get(&inv_path, &s.owner.access).await.1);

    // Asking again for the version in place changes nothing and succeeds at once.
    let generation = d["metadata"]["generation"].clone();
    let path = send_command(&s, "set-control-plane-version", json!({"version": "0.2.0"})).await;
    let (cmd, _) = finish(&s, &path, Duration::from_secs(5)).await;
    assert_eq!(cmd["state"], "succeeded", "{cmd}");
    assert_eq!(s.kube.get("apps/v1", "Deployment", "meshfleet", "meshfleet-controller").unwrap()["metadata"]["generation"], generation);
    assert_eq!(s.kube.denials(), Vec::<String>::new());
    a.shutdown().await;
}
