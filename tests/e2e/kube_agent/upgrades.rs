//! Mesh upgrades end to end (issue 15): rollouts run by the `meshfleet-server` binary (a child
//! process, which one scenario kills mid-rollout), carried out by the real agent against the fake API server, on a mesh of real controller and proxy processes that play
//! the version Kubernetes gives them (`Mesh::upgradable`): 0.1.0 runs, 0.2.0 is a good next and
//! 0.3.0 a bad one whose proxies fail half of their requests. Traffic flows through the proxies
//! the whole time; the gates judge what the agent scraped from them. A request that fails other
//! than by 0.3.0's design must have gone to a pod that was replaced since (its restart caused
//! it); each scenario prints its count. Run: `cargo test -p meshfleet-e2e --test e2e --
//! kube_agent::upgrades --nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshfleet_agent::k8s;
use meshfleet_fake_kube::FakeKube;
use meshfleet_test_support::app::{ApiClient, Engine, Login};
use serde_json::{json, Value};

use super::mesh::{self, Mesh, Releases, Tally, Traffic};
use super::{join_cluster, setup_binary, start_connected_agent_in, within, Cluster, Setup};

const CATALOG: &str = "releases:\n- {version: 0.2.0, released_on: 2026-12-01}\n- {version: 0.3.0, released_on: 2026-12-02}\n";
const WORKLOADS: &[(&str, &str)] = &[("shop", "web"), ("shop", "api")];

/// What the releases do beyond reporting their version: 0.3.0's proxies fail half of the
/// requests they receive.
fn releases() -> Releases {
    Releases::default().with("0.3.0", &["--test-fail-share=0.5"])
}

/// One cluster with its mesh following it, its agent and the traffic into its pods.
struct Fleet {
    cluster: Cluster,
    mesh: Mesh,
    traffic: Option<Traffic>,
    agent: k8s::Running,
}

/// The setup's organization, on the server binary over `engine` with extra settings `env`, with
/// `clusters` clusters (prod-1, prod-2, ...) at 0.1.0, each with its mesh's pods injected by its
/// controller, its agent connected, traffic flowing and its golden metrics already in the API (a
/// gate's baseline); the server reads `CATALOG` from the directory returned, kept for the test's
/// length.
async fn fleet(clusters: usize, engine: Engine, env: &[(&str, &str)]) -> (Setup, Vec<Fleet>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.yaml");
    std::fs::write(&catalog, CATALOG).unwrap();
    let catalog = catalog.display().to_string();
    let s = setup_binary(engine, &[&[("MESHFLEET_RELEASE_CATALOG", catalog.as_str())], env].concat()).await;
    let mut fleet = Vec::new();
    for i in 0..clusters {
        let cluster = if i == 0 { s.home.clone() } else { join_cluster(&s.app, &s.owner, &format!("prod-{}", i + 1)).await };
        let mesh = Mesh::upgradable(cluster.kube.clone(), WORKLOADS, releases()).await;
        // The workloads ask the injector for their proxy rather than carrying one.
        for (ns, name) in WORKLOADS {
            cluster
                .kube
                .modify("apps/v1", "Deployment", ns, name, |d| {
                    let template = &mut d["spec"]["template"];
                    template["metadata"]["annotations"] = json!({"meshfleet.io/inject": "enabled"});
                    template["spec"]["containers"].as_array_mut().unwrap().retain(|c| c["name"] != "meshfleet-proxy");
                })
                .unwrap();
        }
        assert_eq!(at_version(&cluster.kube, "0.1.0").await.len(), 3, "the injected pods");
        mesh.wait_ready(3).await;
        let agent = start_connected_agent_in(&s, &cluster).await;
        let traffic = Some(mesh.traffic(cluster.kube.clone()));
        fleet.push(Fleet { cluster, mesh, traffic, agent });
    }
    for f in &fleet {
        let path = format!("/api/v1/clusters/{}/metrics", f.cluster.cluster);
        let seen = within(Duration::from_secs(20), || async {
            s.app.get(&path, &s.owner.access).await.1["items"].as_array().is_some_and(|i| i.iter().any(|r| r["requests"].as_i64() > Some(0)))
        })
        .await;
        assert!(seen.is_some(), "traffic in the golden metrics: {}", s.app.get(&path, &s.owner.access).await.1);
    }
    (s, fleet, dir)
}

/// The meshed pods of `shop` by name with their proxy version, once all three run `version` in
/// the fake cluster.
async fn at_version(kube: &FakeKube, version: &str) -> BTreeMap<String, String> {
    let pods = || -> BTreeMap<String, String> {
        kube.list("v1", "Pod", Some("shop"))
            .iter()
            .map(|p| (p["metadata"]["name"].as_str().unwrap().to_owned(), mesh::proxy_version(p).unwrap_or_default()))
            .collect()
    };
    let ok = within(Duration::from_secs(30), || async { pods().len() == 3 && pods().values().all(|v| v == version) }).await;
    assert!(ok.is_some(), "pods at {version}: {:?}", pods());
    pods()
}

/// The versions the running sidecars and the controller report themselves.
async fn reported(m: &Mesh) -> (String, BTreeSet<String>) {
    let admins: Vec<_> = m.sidecars.lock().unwrap().values().map(|s| s.process.addr("admin")).collect();
    let mut proxies = BTreeSet::new();
    for a in admins {
        proxies.insert(mesh::version_at(a).await);
    }
    (m.controller_version().await, proxies)
}

/// The cluster is at `version` everywhere: its controller Deployment and process, every pod's
/// proxy and sidecar process, and what the API shows.
async fn assert_at(s: &Setup, f: &Fleet, version: &str) {
    at_version(&f.cluster.kube, version).await;
    f.mesh.wait_ready(3).await;
    let d = f.cluster.kube.get("apps/v1", "Deployment", "meshfleet", "meshfleet-controller").unwrap();
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], format!("meshfleet/controller:{version}"));
    assert_eq!(reported(&f.mesh).await, (version.to_owned(), BTreeSet::from([version.to_owned()])), "what the processes report");
    let id = &f.cluster.cluster;
    let shown = within(Duration::from_secs(10), || async {
        let inv = s.app.get(&format!("/api/v1/clusters/{id}/inventory"), &s.owner.access).await.1;
        let cp = s.app.get(&format!("/api/v1/clusters/{id}/upgrades"), &s.owner.access).await.1["control_plane_version"].clone();
        cp == version && inv["pods"].as_array().is_some_and(|p| p.len() == 3 && p.iter().all(|p| p["proxy_version"] == version))
    })
    .await;
    assert!(shown.is_some(), "the API shows {id} at {version}: {}", s.app.get(&format!("/api/v1/clusters/{id}/inventory"), &s.owner.access).await.1);
}

/// A rollout to `version` restarting `restart_batch` Deployments of a namespace at once.
fn rollout_request(version: &str, restart_batch: u32) -> Value {
    json!({ "target_version": version, "settings": {
        "waves": { "canary_count": 1, "batch_percent": 100 }, "verify_seconds": 3, "soak_seconds": 1, "restart_batch": restart_batch,
        // The gates judge the success rate; latency on a shared test machine is noise.
        "gates": { "max_success_rate_drop_points": 10, "max_p99_increase_percent": 10000 } } })
}

async fn start_rollout(app: &ApiClient, owner: &Login, version: &str, restart_batch: u32) -> String {
    let (status, started) = app.post("/api/v1/rollouts", &owner.access, rollout_request(version, restart_batch)).await;
    assert_eq!(status.as_u16(), 201, "{started}");
    started["id"].as_str().unwrap().to_owned()
}

/// Polls the rollout until `done`; returns it and every distinct list of cluster phases seen.
async fn rollout_until(app: &ApiClient, owner: &Login, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> (Value, Vec<Vec<String>>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen: Vec<Vec<String>> = Vec::new();
    loop {
        let (_, r) = app.get(&format!("/api/v1/rollouts/{id}"), &owner.access).await;
        let phases: Vec<String> = r["clusters"].as_array().into_iter().flatten().map(|c| c["phase"].as_str().unwrap_or_default().to_owned()).collect();
        if seen.last() != Some(&phases) {
            seen.push(phases);
        }
        if done(&r) {
            return (r, seen);
        }
        assert!(Instant::now() < deadline, "{what}: not within 90 s: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The kinds of a cluster's commands, newest first.
async fn commands_of(app: &ApiClient, owner: &Login, cluster: &str) -> Vec<(String, String)> {
    let (_, page) = app.get(&format!("/api/v1/clusters/{cluster}/commands"), &owner.access).await;
    page["items"].as_array().unwrap().iter().map(|c| (c["kind"].as_str().unwrap().to_owned(), c["id"].as_str().unwrap().to_owned())).collect()
}

fn kinds(commands: &[(String, String)]) -> Vec<&str> {
    commands.iter().map(|(k, _)| k.as_str()).collect()
}

/// The reasons of the cluster's rollout events, newest first.
async fn rollout_events(app: &ApiClient, owner: &Login, cluster: &str) -> Vec<String> {
    let (_, ev) = app.get(&format!("/api/v1/clusters/{cluster}/events?limit=100"), &owner.access).await;
    ev["items"].as_array().unwrap().iter().filter_map(|e| e["reason"].as_str().filter(|r| r.starts_with("Rollout")).map(str::to_owned)).collect()
}

/// Stops the cluster's traffic and checks that every failed request was sent to a pod that has
/// since been replaced (so a restart of the pod caused it); prints the tally.
async fn stop_traffic(f: &mut Fleet, name: &str) -> Tally {
    let tally = f.traffic.take().unwrap().stop().await;
    let live: BTreeSet<String> = f.cluster.kube.list("v1", "Pod", Some("shop")).iter().map(|p| p["metadata"]["uid"].as_str().unwrap().to_owned()).collect();
    let bad_on_purpose = |f: &&mesh::Failure| f.version == "0.3.0" && f.error == "status 503 Service Unavailable";
    let restarts: Vec<&mesh::Failure> = tally.failed.iter().filter(|f| !bad_on_purpose(f)).collect();
    eprintln!(
        "{name}: {} requests through the proxies by version (requests, failed): {:?}; failed otherwise than by 0.3.0 on purpose: {restarts:?}",
        tally.sent, tally.by_version
    );
    for failure in restarts {
        assert!(!live.contains(&failure.uid), "{name}: a request to {} failed, and it was not restarted: {failure:?}", failure.pod);
    }
    tally
}

/// The end of a scenario: no agent was refused anything its RBAC does not grant, and the
/// agents stop.
async fn finish(fleet: Vec<Fleet>) {
    for f in &fleet {
        assert_eq!(f.cluster.kube.denials(), Vec::<String>::new());
    }
    for f in fleet {
        f.agent.shutdown().await;
    }
}

/// The shop Deployments whose pod template carries a restart stamp (none does before the
/// rollout).
fn restarted(kube: &FakeKube) -> BTreeSet<String> {
    kube.list("apps/v1", "Deployment", Some("shop"))
        .iter()
        .filter(|d| d.pointer("/spec/template/metadata/annotations/kubectl.kubernetes.io~1restartedAt").is_some())
        .map(|d| d["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Watches the shop Deployments' `restartedAt` stamps while it runs: each stamp is one restart.
struct Stamps {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Stamps {
    fn watch(kube: Arc<FakeKube>) -> Stamps {
        let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(BTreeMap::<String, BTreeSet<String>>::new())));
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for d in kube.list("apps/v1", "Deployment", Some("shop")) {
                        if let Some(at) = d.pointer("/spec/template/metadata/annotations/kubectl.kubernetes.io~1restartedAt").and_then(Value::as_str) {
                            seen.lock().unwrap().entry(d["metadata"]["name"].as_str().unwrap().to_owned()).or_default().insert(at.to_owned());
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Stamps { stop, seen, thread }
    }

    fn stop(self) -> BTreeMap<String, BTreeSet<String>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        Arc::try_unwrap(self.seen).unwrap().into_inner().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_a_bad_next_version_is_rolled_back_on_its_canary_and_the_second_cluster_is_never_touched() {
    let started = Instant::now();
    let (s, mut fleet, _catalog) = fleet(2, Engine::Sqlite, &[]).await;
    let second_pods: BTreeSet<String> =
        fleet[1].cluster.kube.list("v1", "Pod", Some("shop")).iter().map(|p| p["metadata"]["uid"].as_str().unwrap().to_owned()).collect();
    let second_controller = fleet[1].cluster.kube.get("apps/v1", "Deployment", "meshfleet", "meshfleet-controller").unwrap();

    let id = start_rollout(&s.app, &s.owner, "0.3.0", 2).await;
    let (paused, phases) = rollout_until(&s.app, &s.owner, &id, "the bad canary rolled back", |r| r["clusters"][0]["phase"] == "rolled_back").await;
    let (canary, second) = (&paused["clusters"][0], &paused["clusters"][1]);
    assert_eq!((canary["wave"].as_u64(), second["wave"].as_u64()), (Some(0), Some(1)), "{paused}");
    // Which cluster the plan made the canary is its business; follow it.
    if canary["id"] != fleet[0].cluster.cluster.as_str() {
        fleet.swap(0, 1);
    }
    assert_eq!(paused["state"], "paused", "{paused}");
    // The failed gate is named, with what it measured.
    let reason = paused["reason"].as_str().unwrap();
    let name = canary["name"].as_str().unwrap();
    assert!(reason.starts_with(&format!("{name}: gate failed: success rate fell")) && reason.ends_with("rolled back"), "{reason}");
    assert!(canary["measured"]["success_rate"].as_f64().unwrap() < 0.8 && canary["baseline"]["success_rate"].as_f64().unwrap() > 0.99, "{canary}");
    assert!(phases.iter().all(|p| p[1] == "pending"), "the second cluster never left pending: {phases:?}");
    let steps: Vec<&str> = phases.iter().map(|p| p[0].as_str()).skip_while(|p| *p == "pending").collect();
    assert_eq!(steps, ["control_plane", "data_plane", "verifying", "rolling_back", "restoring_workloads", "rolled_back"], "the canary's steps");
    assert_eq!(
        rollout_events(&s.app, &s.owner, &fleet[0].cluster.cluster).await,
        ["RolloutRolledBack", "RolloutRollingBack", "RolloutGateFailed", "RolloutVerifying", "RolloutDataPlane", "RolloutControlPlane"]
    );

    // The canary is back at 0.1.0 everywhere, after its proxies ran 0.3.0 and failed requests.
    assert_at(&s, &fleet[0], "0.1.0").await;
    assert_eq!(
        kinds(&commands_of(&s.app, &s.owner, &fleet[0].cluster.cluster).await),
        ["restart-workloads", "set-control-plane-version", "restart-workloads", "set-control-plane-version"]
    );

    // The rollout stays paused and the second cluster untouched: no command, the same pods, the
    // same controller Deployment and process.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, later) = s.app.get(&format!("/api/v1/rollouts/{id}"), &s.owner.access).await;
    assert_eq!((&later["state"], &later["clusters"][1]["phase"]), (&json!("paused"), &json!("pending")), "{later}");
    assert_eq!(commands_of(&s.app, &s.owner, &fleet[1].cluster.cluster).await, Vec::<(String, String)>::new());
    let now: BTreeSet<String> =
        fleet[1].cluster.kube.list("v1", "Pod", Some("shop")).iter().map(|p| p["metadata"]["uid"].as_str().unwrap().to_owned()).collect();
    assert_eq!(now, second_pods, "the second cluster's pods were never restarted");
    assert_eq!(fleet[1].cluster.kube.get("apps/v1", "Deployment", "meshfleet", "meshfleet-controller").unwrap(), second_controller);
    assert_at(&s, &fleet[1], "0.1.0").await;

    let bad = stop_traffic(&mut fleet[0], "canary prod-1").await;
    let (requests, failed) = bad.by_version.get("0.3.0").copied().unwrap_or_default();
    assert!(requests > 20 && failed * 10 > requests * 3, "0.3.0 failed about half of its requests: {failed} of {requests}");
    let second_tally = stop_traffic(&mut fleet[1], "untouched prod-2").await;
    assert!(second_tally.sent > 100 && second_tally.failed.is_empty(), "{second_tally:?}");
    finish(fleet).await;
    eprintln!("bad next version scenario took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_a_good_next_version_upgrades_two_clusters_under_continuous_traffic() {
    let started = Instant::now();
    let (s, mut fleet, _catalog) = fleet(2, Engine::Sqlite, &[]).await;
    let id = start_rollout(&s.app, &s.owner, "0.2.0", 2).await;
    let (done, phases) = rollout_until(&s.app, &s.owner, &id, "the rollout completes", |r| r["state"] == "completed").await;
    assert_eq!((done["clusters"][0]["name"].as_str(), done["clusters"][0]["wave"].as_u64()), (Some("prod-1"), Some(0)), "{done}");
    // Waves: the second cluster starts only once the canary is done.
    assert!(phases.iter().all(|p| p[1] == "pending" || p[0] == "done"), "{phases:?}");
    for (i, f) in fleet.iter().enumerate() {
        let c = &done["clusters"][i];
        assert_eq!(c["phase"], "done", "{c}");
        assert!(c["measured"]["requests"].as_i64() > Some(0), "the gates saw traffic after the restart: {c}");
        // Control plane, then data plane, each one command.
        assert_eq!(kinds(&commands_of(&s.app, &s.owner, &f.cluster.cluster).await), ["restart-workloads", "set-control-plane-version"]);
        assert_eq!(
            rollout_events(&s.app, &s.owner, &f.cluster.cluster).await,
            ["RolloutGatesPassed", "RolloutVerifying", "RolloutDataPlane", "RolloutControlPlane"]
        );
        assert_at(&s, f, "0.2.0").await;
    }
    for (i, f) in fleet.iter_mut().enumerate() {
        let tally = stop_traffic(f, &format!("prod-{}", i + 1)).await;
        assert!(tally.by_version.get("0.1.0").is_some_and(|c| c.0 > 50) && tally.by_version.get("0.2.0").is_some_and(|c| c.0 > 50), "{tally:?}");
        // Three pods replaced; a request in flight on one when it goes is all that may fail.
        assert!(tally.failed.len() <= 3, "failed requests beyond the restarts: {tally:?}");
        eprintln!("prod-{}: {} failed of {} requests during the upgrade", i + 1, tally.failed.len(), tally.sent);
    }
    finish(fleet).await;
    eprintln!("good upgrade of two clusters took {:?}", started.elapsed());
}

meshfleet_test_support::on_both_engines!(upgrades_the_server_killed_during_a_data_plane_phase_finishes_without_restarting_a_workload_twice);

/// The server binary is killed (SIGKILL) while the cluster's restart-workloads command runs, its
/// first batch (one Deployment) under way and its second not begun, and started again on the
/// same addresses, database and sealing key. The agent reconnects by itself and reports the
/// step's result; the restarted server takes the rollout's job over once the dead process's
/// lease lapses and carries on where it was.
async fn upgrades_the_server_killed_during_a_data_plane_phase_finishes_without_restarting_a_workload_twice(engine: Engine) {
    let started = Instant::now();
    // A 3 s job lease (15 s by default): the restarted server takes the rollout over sooner.
    let (mut s, mut fleet, _catalog) = fleet(1, engine, &[("MESHFLEET_JOB_LEASE_MS", "3000"), ("MESHFLEET_JOB_LEASE_RENEW_MS", "1000")]).await;
    let kube = fleet[0].cluster.kube.clone();
    let stamps = Stamps::watch(kube.clone());
    // One Deployment at a time: the command's second batch waits for its first to roll out.
    let id = start_rollout(&s.app, &s.owner, "0.2.0", 1).await;
    rollout_until(&s.app, &s.owner, &id, "the data-plane phase", |r| r["clusters"][0]["phase"] == "data_plane").await;
    let begun = within(Duration::from_secs(60), || async { !restarted(&kube).is_empty() }).await;
    assert!(begun.is_some(), "the restart-workloads command never restarted a Deployment");
    let at_kill = restarted(&kube);
    let killed = Instant::now();
    s.kill_and_start(Duration::from_millis(500)).await;
    assert_eq!(at_kill.len(), 1, "killed between the batches: one Deployment restarting, the other not yet: {at_kill:?}");
    eprintln!("killed {:?} into the scenario with {at_kill:?} restarting; the new server announced itself {:?} later", killed - started, killed.elapsed());

    let (done, phases) = rollout_until(&s.app, &s.owner, &id, "the rollout finishes after the kill", |r| r["state"] == "completed").await;
    eprintln!("the rollout completed {:?} after the kill", killed.elapsed());
    assert_eq!(done["clusters"][0]["phase"], "done", "{done}");
    assert!(phases.iter().all(|p| p[0] != "rolling_back"), "{phases:?}");
    let cluster = &fleet[0].cluster.cluster;
    let commands = commands_of(&s.app, &s.owner, cluster).await;
    assert_eq!(kinds(&commands), ["restart-workloads", "set-control-plane-version"], "each step sent once");
    let (_, restart) = s.app.get(&format!("/api/v1/clusters/{cluster}/commands/{}", commands[0].1), &s.owner.access).await;
    assert_eq!(restart["state"], "succeeded", "the agent's result reached the restarted server: {restart}");
    assert_eq!(rollout_events(&s.app, &s.owner, cluster).await, ["RolloutGatesPassed", "RolloutVerifying", "RolloutDataPlane", "RolloutControlPlane"]);
    let agent = fleet[0].agent.stats();
    assert!(agent.as_ref().is_some_and(|st| st.connected && st.sessions >= 2), "the agent reconnected by itself: {agent:?}");
    assert_at(&s, &fleet[0], "0.2.0").await;
    // Each workload restarted once, by the step's one command.
    let restarts = stamps.stop();
    assert_eq!(restarts.iter().map(|(d, at)| (d.as_str(), at.len())).collect::<Vec<_>>(), [("api", 1), ("web", 1)], "{restarts:?}");
    for name in ["api", "web"] {
        let d = kube.get("apps/v1", "Deployment", "shop", name).unwrap();
        assert_eq!(d["spec"]["template"]["metadata"]["annotations"]["meshfleet.io/restarted-by"], commands[0].1.as_str(), "{d}");
    }
    let tally = stop_traffic(&mut fleet[0], "prod-1 (server killed)").await;
    // Three pods replaced; a request in flight on one when it goes is all that may fail.
    assert!(tally.failed.len() <= 3, "failed requests beyond the restarts: {tally:?}");
    eprintln!("server killed scenario: {} failed of {} requests; took {:?}", tally.failed.len(), tally.sent, started.elapsed());
    finish(fleet).await;
}
