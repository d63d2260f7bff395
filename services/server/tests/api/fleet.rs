//! Agents built on the real client library against real servers: a killed and restarted
//! server loses no acknowledged report and runs every command once; a command created on one
//! replica reaches an agent connected to another; and the demo fleet simulator.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use meshfleet_agent::{v1, Agent, AgentHandle, ClientConfig, Report};
use meshfleet_client::Client;
use secrecy::SecretString;
use serde_json::json;

use crate::helpers::{postgres_url, Api, Engine, TestApp, TestDb, PASSWORD};
use crate::process::server;

/// Counts executions per command id: the property under test is "exactly once".
#[derive(Default)]
struct CountingAgent {
    executed: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Agent for CountingAgent {
    fn kubernetes_version(&self) -> String {
        "v1.33.1".into()
    }

    fn snapshot(&self) -> v1::Inventory {
        v1::Inventory { kubernetes_version: "v1.33.1".into(), node_count: 1, ..Default::default() }
    }

    fn execute(&self, id: String, _command: v1::command::Body) -> BoxFuture<'static, v1::CommandResult> {
        self.executed.lock().unwrap().entry(id.clone()).or_insert((0, Instant::now())).0 += 1;
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            v1::CommandResult { command_id: id, state: v1::CommandState::Succeeded as i32, output_json: r#"{"pong":true}"#.into(), ..Default::default() }
        })
    }
}

/// Registers an agent for a new cluster and starts it, against `gateway` (default: the one in
/// the install manifest).
async fn start_agent(api: &Api, name: &str, gateway: Option<&str>) -> (String, AgentHandle, Arc<CountingAgent>) {
    let cluster = api.post("/api/v1/clusters", json!({ "name": name })).await["cluster"]["id"].as_str().unwrap().to_owned();
    let boot = Client::with_token(&api.base, SecretString::from(api.token.clone())).bootstrap(&cluster).await.unwrap();
    let address = gateway.map(|g| format!("https://{g}")).unwrap_or(boot.gateway_address);
    let identity = meshfleet_agent::register(&address, &boot.ca_pem, secrecy::ExposeSecret::expose_secret(&boot.token), "0.1.0-test").await.unwrap();
    let agent = Arc::new(CountingAgent::default());
    let config = ClientConfig {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(1000),
        heartbeat_interval: Duration::from_secs(1),
        ..ClientConfig::new(address, boot.ca_pem)
    };
    let handle = meshfleet_agent::spawn(config, identity, agent.clone());
    assert!(handle.wait_until(Duration::from_secs(10), |s| s.connected).await, "agent connects");
    (cluster, handle, agent)
}

pub(crate) fn window(start: i64, requests: u64) -> Report {
    Report::Metrics(v1::Metrics {
        window_start_unix_ms: start,
        window_end_unix_ms: start + 10_000,
        workloads: vec![v1::WorkloadMetrics {
            namespace: "shop".into(),
            workload: "Deployment/web".into(),
            requests,
            latency_p99_ms: 5.0,
            ..Default::default()
        }],
    })
}

pub(crate) async fn requests_stored(api: &Api, cluster: &str) -> i64 {
    let rollups = api.get(&format!("/api/v1/clusters/{cluster}/metrics?minutes=1440")).await;
    assert!(rollups["next_cursor"].is_null(), "one page holds them: {rollups}");
    rollups["items"].as_array().unwrap().iter().map(|r| r["requests"].as_i64().unwrap()).sum()
}

crate::on_both_engines!(a_killed_server_loses_no_acknowledged_report_and_runs_each_command_once);

async fn a_killed_server_loses_no_acknowledged_report_and_runs_each_command_once(engine: Engine) {
    let mut server = server().restartable(TestDb::new(engine).await, &[]);
    server.start();
    let api = Api::signup(&server.url(), "ada@example.com").await;
    let mut agents = Vec::new();
    for i in 0..3 {
        agents.push(start_agent(&api, &format!("c{i}"), None).await);
    }

    // Every agent streams a new metrics window every 40 ms throughout.
    let base = (chrono::Utc::now().timestamp_millis() / 60_000 - 60) * 60_000;
    let expected: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut drivers = Vec::new();
    for (cluster, handle, _) in &agents {
        let (reporter, cluster, expected, stop) = (handle.reporter(), cluster.clone(), expected.clone(), stop.clone());
        drivers.push(tokio::spawn(async move {
            for k in 0..i64::MAX {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                reporter.report(window(base + k * 10_000, (k + 1) as u64));
                *expected.lock().unwrap().entry(cluster.clone()).or_default() += k + 1;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut commands = Vec::new();
    for (cluster, _, _) in &agents {
        for kind in ["ping", "collect-diagnostics"] {
            commands.push((
                cluster.clone(),
                api.post(&format!("/api/v1/clusters/{cluster}/commands"), json!({ "kind": kind })).await["id"].as_str().unwrap().to_owned(),
            ));
        }
    }

    // SIGKILL mid-stream, a pause, and the same server again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.start();
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for d in drivers {
        d.await.unwrap();
    }

    let api = Api::login(&server.url(), "ada@example.com").await;
    for (cluster, handle, _) in &agents {
        let settled = handle.wait_until(Duration::from_secs(30), |s| s.connected && s.buffered == 0 && s.last_acked_seq == s.last_sent_seq).await;
        assert!(settled, "{cluster}: {:?}", handle.stats());
        assert!(handle.stats().sessions >= 2, "the agent reconnected");
        assert_eq!(handle.stats().dropped, 0);
        let want = expected.lock().unwrap()[cluster];
        assert_eq!(requests_stored(&api, cluster).await, want, "{cluster}: stored requests differ from what was acknowledged");
    }
    for (cluster, id) in &commands {
        let path = format!("/api/v1/clusters/{cluster}/commands/{id}");
        assert!(crate::gateway::eventually(|| async { api.get(&path).await["state"] == "succeeded" }).await, "{path}: {}", api.get(&path).await);
    }
    for (_, _, agent) in &agents {
        for (id, (count, _)) in agent.executed.lock().unwrap().iter() {
            assert_eq!(*count, 1, "command {id} executed {count} times");
        }
    }
    for (_, handle, _) in agents {
        handle.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_created_on_one_replica_reaches_an_agent_on_another_within_a_second() {
    if postgres_url().is_none() {
        return;
    }
    let db = TestDb::new(Engine::Postgres).await;
    let (a, b) = server().two_replicas(&db, &[]);
    let api_a = Api::signup(&a.url(), "ada@example.com").await;
    let (cluster, handle, agent) = start_agent(&api_a, "c1", b.gateway.as_deref()).await;

    let mut worst = Duration::ZERO;
    for _ in 0..3 {
        let created = Instant::now();
        let id = api_a.post(&format!("/api/v1/clusters/{cluster}/commands"), json!({ "kind": "ping" })).await["id"].as_str().unwrap().to_owned();
        let reached = loop {
            if let Some((_, at)) = agent.executed.lock().unwrap().get(&id) {
                break at.duration_since(created);
            }
            assert!(created.elapsed() < Duration::from_secs(5), "the command never reached the agent on replica B");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        worst = worst.max(reached);
    }
    assert!(worst < Duration::from_secs(1), "slowest cross-replica delivery took {worst:?}");
    // Replica A's API sees the results the agent sent to replica B.
    let (_, page) = (0, api_a.get(&format!("/api/v1/clusters/{cluster}/commands")).await);
    assert!(
        crate::gateway::eventually(|| async {
            api_a.get(&format!("/api/v1/clusters/{cluster}/commands")).await["items"].as_array().unwrap().iter().all(|c| c["state"] == "succeeded")
        })
        .await,
        "{page}"
    );
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_fleet_simulator_fills_the_dashboard_data() {
    let app = TestApp::spawn(Engine::Sqlite).await;
    let owner = app.owner("ada@example.com").await;
    let state_dir = tempfile::tempdir().unwrap();
    let config = meshfleet_sim::FleetConfig {
        api_url: app.base.clone(),
        auth: meshfleet_sim::Auth::Password { email: "ada@example.com".into(), password: SecretString::from(PASSWORD.to_owned()) },
        clusters: 3,
        prefix: "sim".into(),
        state_dir: state_dir.path().to_owned(),
        metrics_interval: Duration::from_millis(200),
        status_interval: Duration::from_secs(30),
        agent_version: "0.1.0-sim".into(),
        setup_concurrency: 3,
        bad_upgrade_share: 0.0,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let fleet = tokio::spawn(meshfleet_sim::run(config, async move {
        let _ = stop_rx.await;
    }));

    let connected = crate::gateway::eventually(|| async {
        let (_, page) = app.get("/api/v1/clusters?status=connected", &owner.access).await;
        page["items"].as_array().is_some_and(|items| items.len() == 3)
    })
    .await;
    if !connected && fleet.is_finished() {
        panic!("the simulator stopped: {:?}", fleet.await);
    }
    assert!(connected, "{}", app.get("/api/v1/clusters", &owner.access).await.1);
    let (_, page) = app.get("/api/v1/clusters", &owner.access).await;
    let cluster = page["items"][0]["id"].as_str().unwrap().to_owned();
    assert!(page["items"][0]["name"].as_str().unwrap().starts_with("sim-"));
    let has_data = crate::gateway::eventually(|| async {
        let inv = app.get(&format!("/api/v1/clusters/{cluster}/inventory"), &owner.access).await.1;
        let metrics = app.get(&format!("/api/v1/clusters/{cluster}/metrics"), &owner.access).await.1;
        inv["pods"].as_array().is_some_and(|p| !p.is_empty()) && metrics["items"].as_array().is_some_and(|m| !m.is_empty())
    })
    .await;
    assert!(has_data, "inventory and metrics arrive");
    let (_, ping) = app.post(&format!("/api/v1/clusters/{cluster}/commands"), &owner.access, json!({ "kind": "ping" })).await;
    let path = format!("/api/v1/clusters/{cluster}/commands/{}", ping["id"].as_str().unwrap());
    assert!(crate::gateway::eventually(|| async { app.get(&path, &owner.access).await.1["state"] == "succeeded" }).await);

    // An upgrade as a rollout runs it: the control plane, then every workload restarted, which
    // the simulated injector answers with the new proxy.
    for command in [
        json!({ "kind": "set-control-plane-version", "params": { "version": "0.2.0" } }),
        json!({ "kind": "restart-workloads", "params": { "batch_size": 5 } }),
    ] {
        let (status, sent) = app.post(&format!("/api/v1/clusters/{cluster}/commands"), &owner.access, command).await;
        assert_eq!(status, reqwest::StatusCode::CREATED, "{sent}");
        let path = format!("/api/v1/clusters/{cluster}/commands/{}", sent["id"].as_str().unwrap());
        assert!(
            crate::gateway::eventually(|| async { app.get(&path, &owner.access).await.1["state"] == "succeeded" }).await,
            "{}",
            app.get(&path, &owner.access).await.1
        );
    }
    let upgraded = crate::gateway::eventually(|| async {
        let up = app.get(&format!("/api/v1/clusters/{cluster}/upgrades"), &owner.access).await.1;
        let inv = app.get(&format!("/api/v1/clusters/{cluster}/inventory"), &owner.access).await.1;
        up["control_plane_version"] == "0.2.0" && inv["pods"].as_array().is_some_and(|p| p.iter().all(|p| p["proxy_version"] == "0.2.0"))
    })
    .await;
    assert!(upgraded, "{}", app.get(&format!("/api/v1/clusters/{cluster}/inventory"), &owner.access).await.1);

    let _ = stop_tx.send(());
    let status = fleet.await.unwrap().unwrap();
    assert_eq!((status.total, status.dropped), (3, 0), "{status}");
}
