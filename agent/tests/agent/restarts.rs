//! restart-workloads over every kind it restarts, against the fake API server's controllers:
//! Deployments, RollingUpdate StatefulSets and DaemonSets each restarted once (and not again
//! when the command is redelivered), a PodDisruptionBudget allowing no disruption holding the
//! restart until it allows one, and the pods it cannot restart safely listed, never touched.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshfleet_agent::k8s::commands::{Executor, RESTARTED_BY};
use meshfleet_agent::k8s::inventory::{spawn_watchers, Inventory};
use meshfleet_agent::k8s::Telemetry;
use meshfleet_agent::v1::{self, command::Body};
use meshfleet_fake_kube::{Config, FakeKube};
use serde_json::{json, Value};

use super::kube::{config, eventually, meshed_deployment};

fn pod_template(app: &str) -> Value {
    json!({"metadata": {"labels": {"app": app}}, "spec": {"containers": [
        {"name": "app", "image": format!("example/{app}:1")},
        {"name": "meshfleet-proxy", "image": "meshfleet/proxy:0.1.0", "ports": [{"name": "admin", "containerPort": 4191}]}]}})
}

fn statefulset(ns: &str, name: &str, replicas: i32, strategy: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": replicas, "serviceName": name, "selector": {"matchLabels": {"app": name}},
            "updateStrategy": {"type": strategy}, "template": pod_template(name)}})
}

fn daemonset(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"matchLabels": {"app": name}}, "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": pod_template(name)}})
}

/// A pod no workload controller owns: bare, or a Job's (`job`).
fn lone_pod(ns: &str, name: &str, job: Option<&str>) -> Value {
    let mut p =
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": name}}, "spec": pod_template(name)["spec"]});
    if let Some(job) = job {
        p["metadata"]["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": "job-uid-1", "controller": true}]);
    }
    p
}

/// Every pod of the namespace: name -> uid (a StatefulSet's replaced pod keeps its name).
fn pod_uids(kube: &FakeKube, ns: &str) -> BTreeMap<String, String> {
    kube.list("v1", "Pod", Some(ns))
        .iter()
        .map(|p| (p["metadata"]["name"].as_str().unwrap().to_owned(), p["metadata"]["uid"].as_str().unwrap().to_owned()))
        .collect()
}

fn ready_pods(kube: &FakeKube, ns: &str) -> usize {
    kube.list("v1", "Pod", Some(ns))
        .iter()
        .filter(|p| p["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True")))
        .count()
}

/// The executor, and the inventory's watchers (stopped when dropped).
struct Agent {
    exec: Arc<Executor>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.watchers.iter().for_each(|w| w.abort());
    }
}

async fn shop(kube: &FakeKube) -> Agent {
    kube.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"meshfleet.io/inject": "enabled"}}})).unwrap();
    let client = kube.client().await.unwrap();
    let inv = Inventory::new();
    let watchers = spawn_watchers(client.clone(), &config(), inv.clone(), Telemetry::new());
    assert!(eventually(Duration::from_secs(5), || inv.synced() && inv.is_meshed_namespace("shop")).await);
    Agent { exec: Arc::new(Executor { client, config: config(), inventory: inv, reporter: Mutex::new(None) }), watchers }
}

fn restart(batch_size: u32) -> Body {
    Body::RestartWorkloads(v1::RestartWorkloads { namespace: Some("shop".into()), batch_size: Some(batch_size), timeout_secs: Some(30), ..Default::default() })
}

fn output(result: &v1::CommandResult) -> Value {
    assert_eq!(result.state, v1::CommandState::Succeeded as i32, "{}", result.message);
    serde_json::from_str(&result.output_json).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_kind_is_restarted_once_and_pods_that_cannot_be_are_listed_untouched() {
    let kube = FakeKube::start_with(Config { ready_delay: Duration::from_millis(50), ..Config::default() }).await.unwrap();
    let agent = shop(&kube).await;
    let exec = &agent.exec;
    kube.apply(meshed_deployment("shop", "web", 2)).unwrap();
    kube.apply(statefulset("shop", "db", 3, "RollingUpdate")).unwrap();
    kube.apply(statefulset("shop", "cache", 1, "OnDelete")).unwrap();
    kube.apply(daemonset("shop", "logs")).unwrap();
    kube.apply(lone_pod("shop", "debug", None)).unwrap();
    kube.apply(lone_pod("shop", "migrate-x7k2p", Some("migrate"))).unwrap();
    // web 2, db 3, cache 1, logs 1 (one node), debug, migrate.
    assert!(eventually(Duration::from_secs(10), || ready_pods(&kube, "shop") == 9).await, "{:?}", pod_uids(&kube, "shop"));
    let before = pod_uids(&kube, "shop");

    let result = exec.execute("cmd-1".into(), restart(2)).await;
    let out = output(&result);
    assert_eq!(out["restarted"], json!(["shop/statefulset/db", "shop/daemonset/logs", "shop/deployment/web"]), "{out}");
    assert_eq!(result.message, "restarted 3 workloads (0 already restarted by this command); 3 pods need attention (not restarted)");
    let attention: Vec<(&str, &str)> =
        out["needs_attention"].as_array().unwrap().iter().map(|a| (a["pod"].as_str().unwrap(), a["kind"].as_str().unwrap())).collect();
    assert_eq!(attention, [("cache-0", "StatefulSet"), ("debug", "Pod"), ("migrate-x7k2p", "Job")], "{out}");
    assert!(out["needs_attention"].as_array().unwrap().iter().all(|a| a["namespace"] == "shop" && !a["reason"].as_str().unwrap().is_empty()));

    let after = pod_uids(&kube, "shop");
    for (name, uid) in &before {
        let untouched = ["cache-0", "debug", "migrate-x7k2p"].contains(&name.as_str());
        assert_eq!(after.get(name) == Some(uid), untouched, "{name}: {before:?} -> {after:?}");
    }
    assert_eq!(after.len(), 9, "{after:?}");
    for (kind, name) in [("Deployment", "web"), ("StatefulSet", "db"), ("DaemonSet", "logs")] {
        let w = kube.get("apps/v1", kind, "shop", name).unwrap();
        assert_eq!(w["spec"]["template"]["metadata"]["annotations"][RESTARTED_BY], "cmd-1", "{kind} {name}");
    }
    let db = kube.get("apps/v1", "StatefulSet", "shop", "db").unwrap();
    assert_eq!(db["status"]["currentRevision"], db["status"]["updateRevision"], "the StatefulSet finished its rollout: {db}");
    assert_eq!(kube.get("apps/v1", "StatefulSet", "shop", "cache").unwrap()["spec"]["template"]["metadata"].get("annotations"), None);

    // Redelivered (a reconnect, a new leader): nothing is restarted twice.
    let again = output(&exec.execute("cmd-1".into(), restart(2)).await);
    assert_eq!(again["restarted"], json!([]), "{again}");
    assert_eq!(again["skipped"].as_array().unwrap().len(), 3, "{again}");
    assert_eq!(pod_uids(&kube, "shop"), after, "no pod was replaced by the redelivery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disruption_budget_allowing_no_disruption_holds_the_restart_until_it_allows_one() {
    let kube = FakeKube::start_with(Config { ready_delay: Duration::from_millis(50), ..Config::default() }).await.unwrap();
    let agent = shop(&kube).await;
    let exec = &agent.exec;
    kube.apply(meshed_deployment("shop", "web", 2)).unwrap();
    kube.apply(json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}}))
        .unwrap();
    let pdb_status = || kube.get("policy/v1", "PodDisruptionBudget", "shop", "web").unwrap()["status"].clone();
    assert!(eventually(Duration::from_secs(5), || pdb_status()["currentHealthy"] == 2).await, "{}", pdb_status());
    assert_eq!(pdb_status()["disruptionsAllowed"], 0, "{}", pdb_status());
    let before = pod_uids(&kube, "shop");

    let running = tokio::spawn({
        let exec = exec.clone();
        async move { exec.execute("cmd-pdb".into(), restart(1)).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!running.is_finished());
    let web = kube.get("apps/v1", "Deployment", "shop", "web").unwrap();
    assert_eq!(web["spec"]["template"]["metadata"].get("annotations"), None, "not restarted while the budget allows no disruption");
    assert_eq!(pod_uids(&kube, "shop"), before);

    // One pod may go now: the restart goes ahead.
    kube.modify("policy/v1", "PodDisruptionBudget", "shop", "web", |b| b["spec"]["minAvailable"] = json!(1)).unwrap();
    let out = output(&tokio::time::timeout(Duration::from_secs(20), running).await.unwrap().unwrap());
    assert_eq!(out["restarted"], json!(["shop/deployment/web"]), "{out}");
    let after = pod_uids(&kube, "shop");
    assert!(after.keys().all(|p| !before.contains_key(p)) && after.len() == 2, "{before:?} -> {after:?}");
}

/// A budget that never allows a disruption: the command fails at its timeout, saying which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_that_never_allows_a_disruption_fails_the_restart_naming_it() {
    let kube = FakeKube::start_with(Config { ready_delay: Duration::from_millis(50), ..Config::default() }).await.unwrap();
    let agent = shop(&kube).await;
    let exec = &agent.exec;
    kube.apply(statefulset("shop", "db", 1, "RollingUpdate")).unwrap();
    kube.apply(json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "db", "namespace": "shop"},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "db"}}}}))
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || ready_pods(&kube, "shop") == 1).await);
    let command = Body::RestartWorkloads(v1::RestartWorkloads { namespace: Some("shop".into()), timeout_secs: Some(1), ..Default::default() });
    let result = exec.execute("cmd-never".into(), command).await;
    assert_eq!(result.state, v1::CommandState::Failed as i32, "{}", result.message);
    assert!(result.message.contains("PodDisruptionBudget shop/db allows no disruption (1 of 1 pods healthy, 1 required)"), "{}", result.message);
    assert_eq!(kube.get("apps/v1", "StatefulSet", "shop", "db").unwrap()["spec"]["template"]["metadata"].get("annotations"), None);
}

/// set-control-plane-version moves the controller's image and the proxy version its injector
/// injects together, so the data plane's restart that follows brings the new proxy; asked again,
/// it changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_version_moves_the_injected_proxy_version_with_it() {
    let kube = FakeKube::start_with(Config { ready_delay: Duration::from_millis(50), ..Config::default() }).await.unwrap();
    let agent = shop(&kube).await;
    kube.apply(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "meshfleet-controller", "namespace": "meshfleet"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "controller"}}, "template": {"metadata": {"labels": {"app": "controller"}},
            "spec": {"containers": [{"name": "controller", "image": "meshfleet/controller:0.1.0",
                "env": [{"name": "MESHFLEET_INJECTOR_ADDR", "value": "0.0.0.0:8443"}, {"name": "MESHFLEET_PROXY_VERSION", "value": "0.1.0"}]}]}}}}))
        .unwrap();
    let command = Body::SetControlPlaneVersion(v1::SetControlPlaneVersion { version: "0.2.0".into(), timeout_secs: Some(20) });
    let out = output(&agent.exec.execute("cmd-cp".into(), command.clone()).await);
    assert_eq!(
        out,
        json!({"image": "meshfleet/controller:0.2.0", "previous_image": "meshfleet/controller:0.1.0", "proxy_version": "0.2.0", "previous_proxy_version": "0.1.0"})
    );
    let d = kube.get("apps/v1", "Deployment", "meshfleet", "meshfleet-controller").unwrap();
    let container = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "meshfleet/controller:0.2.0");
    assert_eq!(
        container["env"],
        json!([{"name": "MESHFLEET_INJECTOR_ADDR", "value": "0.0.0.0:8443"}, {"name": "MESHFLEET_PROXY_VERSION", "value": "0.2.0"}]),
        "other settings kept"
    );
    let generation = d["metadata"]["generation"].clone();
    output(&agent.exec.execute("cmd-cp-again".into(), command).await);
    assert_eq!(kube.get("apps/v1", "Deployment", "meshfleet", "meshfleet-controller").unwrap()["metadata"]["generation"], generation, "nothing changed");
}
