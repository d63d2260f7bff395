//! The agent's Kubernetes side against the fake API server, through the real kube-rs client:
//! watches survive 410/500/dropped watches without losing or duplicating pods, and
//! restart-workloads rolls in batches and is idempotent by command id.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshfleet_agent::k8s::commands::{Executor, RESTARTED_BY};
use meshfleet_agent::k8s::inventory::{spawn_watchers, Inventory};
use meshfleet_agent::k8s::{AgentConfig, Telemetry};
use meshfleet_agent::v1::{self, command::Body};
use meshfleet_fake_kube::{Config, FakeKube, Fault};
use serde_json::{json, Value};

pub fn config() -> AgentConfig {
    let vars = [
        ("MESHFLEET_GATEWAY_ADDRESS", "https://127.0.0.1:1"),
        ("MESHFLEET_GATEWAY_CA", "unused"),
        ("MESHFLEET_POD_NAME", "agent-a"),
        ("MESHFLEET_POD_NAMESPACE", "meshfleet-system"),
        ("MESHFLEET_MESH_NAMESPACE", "meshfleet"),
        ("MESHFLEET_AGENT_LISTEN", "127.0.0.1:0"),
    ];
    AgentConfig::from_vars(&vars.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()).unwrap()
}

pub fn meshed_deployment(ns: &str, name: &str, replicas: i32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [
                {"name": "app", "image": format!("example/{name}:1")},
                {"name": "meshfleet-proxy", "image": "meshfleet/proxy:0.1.0", "ports": [{"name": "admin", "containerPort": 4191}]}]}}}})
}

pub async fn eventually(timeout: Duration, f: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    f()
}

fn fake_pods(kube: &FakeKube) -> Vec<String> {
    let mut v: Vec<String> = kube
        .list("v1", "Pod", None)
        .iter()
        .map(|p| format!("{}/{}", p["metadata"]["namespace"].as_str().unwrap(), p["metadata"]["name"].as_str().unwrap()))
        .collect();
    v.sort();
    v
}

fn agent_pods(inv: &Inventory) -> Vec<String> {
    let mut v: Vec<String> = inv.snapshot().pods.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_survive_410_500_and_dropped_watches_without_losing_or_duplicating_pods() {
    let kube = FakeKube::start_with(Config { ready_delay: Duration::from_millis(50), bookmark_interval: Duration::from_millis(200), ..Config::default() })
        .await
        .unwrap();
    kube.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})).unwrap();
    kube.apply(meshed_deployment("shop", "web", 3)).unwrap();
    let inv = Inventory::new();
    let telemetry = Telemetry::new();
    let _tasks = spawn_watchers(kube.client().await.unwrap(), &config(), inv.clone(), telemetry.clone());
    assert!(
        eventually(Duration::from_secs(5), || inv.synced() && agent_pods(&inv).len() == 3).await,
        "{:?} {:?} {}",
        agent_pods(&inv),
        inv.lock().synced,
        telemetry.render()
    );

    // A failed list, a 410 on the watch, a compaction, a dropped watch and pod churn between them.
    kube.inject(Fault::once("watch", "pods", 410));
    kube.inject(Fault::once("list", "pods", 500));
    kube.drop_watches();
    kube.modify("apps/v1", "Deployment", "shop", "web", |d| d["spec"]["replicas"] = json!(5)).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    kube.compact();
    kube.drop_watches();
    let victim = fake_pods(&kube)[0].split('/').nth(1).unwrap().to_owned();
    kube.delete("v1", "Pod", "shop", &victim).unwrap();
    // Two watchers list and watch pods (the meshed ones, and every pod's metadata): either may
    // meet the faults first, and the other then recovers on its own.
    let faults_met = || {
        let fired = kube.faults_fired();
        fired.iter().any(|f| f.2 == 410) && fired.iter().any(|f| f.2 == 500)
    };
    assert!(
        eventually(Duration::from_secs(10), || faults_met() && fake_pods(&kube).len() == 5 && agent_pods(&inv) == fake_pods(&kube)).await,
        "agent {:?} vs fake {:?}; faults {:?}",
        agent_pods(&inv),
        fake_pods(&kube),
        kube.faults_fired()
    );
    let snap = inv.snapshot();
    assert_eq!(snap.pods.iter().filter(|p| p.workload == "Deployment/web" && p.proxy_version == "0.1.0").count(), 5, "{snap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_workloads_rolls_in_batches_and_a_redelivered_command_does_not_restart_again() {
    let kube = FakeKube::start_with(Config { ready_delay: Duration::from_millis(100), ..Config::default() }).await.unwrap();
    kube.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})).unwrap();
    for name in ["a", "b", "c"] {
        kube.apply(meshed_deployment("shop", name, 2)).unwrap();
    }
    let client = kube.client().await.unwrap();
    let inv = Inventory::new();
    let _tasks = spawn_watchers(client.clone(), &config(), inv.clone(), Telemetry::new());
    assert!(eventually(Duration::from_secs(5), || inv.snapshot().pods.iter().filter(|p| p.ready).count() == 6).await);
    let before = fake_pods(&kube);
    let exec = Arc::new(Executor { client, config: config(), inventory: inv.clone(), reporter: Mutex::new(None) });
    let command = Body::RestartWorkloads(v1::RestartWorkloads { namespace: Some("shop".into()), batch_size: Some(2), ..Default::default() });

    let result = exec.execute("cmd-1".into(), command.clone()).await;
    assert_eq!(result.state, v1::CommandState::Succeeded as i32, "{}", result.message);
    let out: Value = serde_json::from_str(&result.output_json).unwrap();
    assert_eq!(out["restarted"].as_array().unwrap().len(), 3, "{out}");
    let after = fake_pods(&kube);
    assert_eq!(after.len(), 6);
    assert!(after.iter().all(|p| !before.contains(p)), "every pod was replaced: {before:?} -> {after:?}");
    for name in ["a", "b", "c"] {
        let d = kube.get("apps/v1", "Deployment", "shop", name).unwrap();
        assert_eq!(d["spec"]["template"]["metadata"]["annotations"][RESTARTED_BY], "cmd-1");
    }

    // Redelivery (e.g. after a reconnect or on a new leader): nothing restarts again.
    let second = exec.execute("cmd-1".into(), command).await;
    assert_eq!(second.state, v1::CommandState::Succeeded as i32);
    let out: Value = serde_json::from_str(&second.output_json).unwrap();
    assert_eq!((out["restarted"].as_array().unwrap().len(), out["skipped"].as_array().unwrap().len()), (0, 3), "{out}");
    assert_eq!(fake_pods(&kube), after, "no pod was replaced by the redelivery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_writes_are_read_again_and_retried() {
    let kube = FakeKube::start_with(Config { ready_delay: Duration::from_millis(50), ..Config::default() }).await.unwrap();
    kube.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})).unwrap();
    kube.apply(meshed_deployment("shop", "web", 1)).unwrap();
    kube.apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "meshfleet-agent-identity", "namespace": "meshfleet-system"}, "data": {"identity.json": "e30=", "note": "a2VlcA=="}})).unwrap();
    let client = kube.client().await.unwrap();
    let renewed = meshfleet_agent::Identity {
        org_id: "o".into(),
        cluster_id: "c".into(),
        chain_pem: "RENEWED CHAIN".into(),
        key_pem: "k".to_owned().into(),
        not_after_unix_ms: 1,
    };

    // The identity Secret is updated with its resourceVersion; two 409s (a concurrent writer)
    // are answered by reading it again, and other keys survive.
    kube.inject(Fault { verb: Some("update".into()), resource: Some("secrets".into()), status: 409, times: 2 });
    meshfleet_agent::k8s::save_identity(&client, "meshfleet-system", &renewed).await.expect("saved despite two conflicts");
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(client.clone(), "meshfleet-system");
    let data = api.get("meshfleet-agent-identity").await.unwrap().data.unwrap();
    assert_eq!(meshfleet_agent::Identity::from_json(&data["identity.json"].0).unwrap().chain_pem, "RENEWED CHAIN");
    assert_eq!(data["note"].0, b"keep", "the rest of the Secret is kept");
    assert_eq!(kube.faults_fired().iter().filter(|f| f.1 == "secrets" && f.2 == 409).count(), 2);

    // Why: a stale resourceVersion (the Secret changed between read and write) is refused with
    // 409 by the API server itself, which is what the retry answers.
    let mut stale = api.get("meshfleet-agent-identity").await.unwrap();
    kube.modify("v1", "Secret", "meshfleet-system", "meshfleet-agent-identity", |s| s["data"]["note"] = json!("Y2hhbmdlZA==")).unwrap();
    stale.data.as_mut().unwrap().insert("note".into(), k8s_openapi::ByteString(b"lost".to_vec()));
    let err = api.replace("meshfleet-agent-identity", &Default::default(), &stale).await.unwrap_err();
    assert!(meshfleet_agent::k8s::conflict::is_conflict(&err), "{err}");

    // Conflicts that never end are reported, not forced past.
    kube.inject(Fault { verb: Some("update".into()), resource: Some("secrets".into()), status: 409, times: 100 });
    let err = meshfleet_agent::k8s::save_identity(&client, "meshfleet-system", &renewed).await.unwrap_err();
    assert!(meshfleet_agent::k8s::conflict::is_conflict(&err), "{err}");
    let fired = kube.faults_fired().iter().filter(|f| f.1 == "secrets" && f.2 == 409).count();
    assert_eq!(fired, 2 + meshfleet_agent::k8s::conflict::ATTEMPTS as usize);

    // restart-workloads: a 409 on the Deployment patch is re-read and retried.
    let inv = Inventory::new();
    let _tasks = spawn_watchers(client.clone(), &config(), inv.clone(), Telemetry::new());
    assert!(eventually(Duration::from_secs(5), || inv.snapshot().pods.iter().filter(|p| p.ready).count() == 1).await);
    kube.inject(Fault { verb: Some("patch".into()), resource: Some("deployments".into()), status: 409, times: 2 });
    let exec = Arc::new(Executor { client, config: config(), inventory: inv.clone(), reporter: Mutex::new(None) });
    let command = Body::RestartWorkloads(v1::RestartWorkloads { namespace: Some("shop".into()), ..Default::default() });
    let result = exec.execute("cmd-409".into(), command).await;
    assert_eq!(result.state, v1::CommandState::Succeeded as i32, "{}", result.message);
    let out: Value = serde_json::from_str(&result.output_json).unwrap();
    assert_eq!(out["restarted"], json!(["shop/deployment/web"]), "{out}");
    assert_eq!(kube.faults_fired().iter().filter(|f| f.0 == "patch" && f.2 == 409).count(), 2);
}

/// A namespace labelled for injection is meshed before it has a meshed pod, so restart-workloads
/// restarts its Deployments (the restart that gives them their sidecars).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_labelled_for_injection_is_meshed_before_its_first_meshed_pod() {
    let kube = FakeKube::start_with(Config { ready_delay: Duration::from_millis(50), ..Config::default() }).await.unwrap();
    kube.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "payments", "labels": {"meshfleet.io/inject": "enabled"}}})).unwrap();
    kube.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "unmeshed"}})).unwrap();
    for ns in ["payments", "unmeshed"] {
        let mut d = meshed_deployment(ns, "ledger", 1);
        d["spec"]["template"]["spec"]["containers"].as_array_mut().unwrap().retain(|c| c["name"] == "app");
        kube.apply(d).unwrap();
    }
    let client = kube.client().await.unwrap();
    let inv = Inventory::new();
    let _tasks = spawn_watchers(client.clone(), &config(), inv.clone(), Telemetry::new());
    assert!(eventually(Duration::from_secs(5), || inv.synced()).await);
    let names: Vec<String> = inv.facts().namespaces.into_iter().map(|n| n.name).collect();
    assert_eq!(names, ["payments"], "meshed namespaces by name");
    assert!(inv.is_meshed_namespace("payments") && !inv.is_meshed_namespace("unmeshed"));
    assert!(inv.snapshot().pods.is_empty(), "no meshed pod yet");

    let exec = Arc::new(Executor { client, config: config(), inventory: inv.clone(), reporter: Mutex::new(None) });
    for ns in ["payments", "unmeshed"] {
        let command = Body::RestartWorkloads(v1::RestartWorkloads { namespace: Some(ns.into()), ..Default::default() });
        let result = exec.execute(format!("cmd-{ns}"), command).await;
        assert_eq!(result.state, v1::CommandState::Succeeded as i32, "{}", result.message);
        let out: Value = serde_json::from_str(&result.output_json).unwrap();
        let want = if ns == "payments" { json!(["payments/deployment/ledger"]) } else { json!([]) };
        assert_eq!(out["restarted"], want, "{ns}: {out}");
    }
    let restarted = kube.get("apps/v1", "Deployment", "payments", "ledger").unwrap();
    assert_eq!(restarted["spec"]["template"]["metadata"]["annotations"][RESTARTED_BY], "cmd-payments");
}
