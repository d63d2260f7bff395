//! Three replicas on PostgreSQL behind a TCP balancer, restarted one at a time (SIGTERM, SIGKILL,
//! SIGTERM) while simulated agents report, commands are sent, alerts fire and a rollout runs:
//! agents reconnect through the balancer, no acknowledged report is lost, no command runs
//! twice, no alert event is delivered under two ids, the rollout finishes. PostgreSQL only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use meshfleet_agent::{v1, Agent, AgentHandle, ClientConfig};
use meshfleet_client::Client;
use meshfleet_sim::pki::GatewayLink;
use meshfleet_sim::{synthetic_cluster, SharedCluster};
use meshfleet_test_support::balancer::Balancer;
use meshfleet_test_support::process::within;
use meshfleet_test_support::server::FixedReplica;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use crate::alert_delivery::Receiver;
use crate::fleet::{requests_stored, window};
use crate::helpers::{postgres_url, Api, Engine, TestDb};
use crate::process::server;

/// Agents whose every metrics window is counted; two more go away to fire alerts, and three
/// run the simulator's own reports and are upgraded by the rollout.
const REPORTERS: usize = 20;
const VICTIMS: usize = 2;
const RING: usize = 3;

/// A simulated cluster that counts how often each command id was executed.
#[derive(Clone)]
struct Counted {
    cluster: SharedCluster,
    executed: Arc<Mutex<HashMap<String, u32>>>,
}

impl Agent for Counted {
    fn kubernetes_version(&self) -> String {
        self.cluster.kubernetes_version()
    }

    fn snapshot(&self) -> v1::Inventory {
        self.cluster.snapshot()
    }

    fn execute(&self, id: String, command: v1::command::Body) -> BoxFuture<'static, v1::CommandResult> {
        *self.executed.lock().unwrap().entry(id.clone()).or_default() += 1;
        self.cluster.execute(id, command)
    }
}

struct SimAgent {
    id: String,
    name: String,
    handle: AgentHandle,
    agent: Counted,
}

/// A new cluster named `name` with its agent registered and connected through the balancer's
/// gateway address, which the install manifest must name.
async fn start_agent(api: &Api, gateway: &str, name: String, labels: Value, seed: u64) -> SimAgent {
    let id = api.post("/api/v1/clusters", json!({ "name": name, "labels": labels })).await["cluster"]["id"].as_str().unwrap().to_owned();
    let boot = Client::with_token(&api.base, SecretString::from(api.token.clone())).bootstrap(&id).await.unwrap();
    assert_eq!(boot.gateway_address, format!("https://{gateway}"), "agents are told to dial the balancer");
    let identity = meshfleet_agent::register(&boot.gateway_address, &boot.ca_pem, boot.token.expose_secret(), "meshfleet-sim/0.1.0").await.unwrap();
    let agent = Counted { cluster: SharedCluster::new(synthetic_cluster(seed)), executed: Arc::default() };
    let config = ClientConfig {
        agent_version: "meshfleet-sim/0.1.0".into(),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        heartbeat_interval: Duration::from_secs(1),
        ..ClientConfig::new(&boot.gateway_address, &boot.ca_pem)
    };
    let handle = meshfleet_agent::spawn(config, identity, Arc::new(agent.clone()));
    agent.cluster.link(GatewayLink { reporter: handle.reporter(), state_path: None });
    assert!(handle.wait_until(Duration::from_secs(20), |s| s.connected).await, "{name} connects: {:?}", handle.stats());
    SimAgent { id, name, handle, agent }
}

/// An API call through the balancer that may meet a replica going down: Err instead of a panic.
async fn call(http: &reqwest::Client, token: &str, method: reqwest::Method, url: String, body: Option<Value>) -> Result<Value, String> {
    let mut request = http.request(method, url).bearer_auth(token).timeout(Duration::from_secs(5));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{status}: {body}"))
    }
}

/// Connection changes of every watched agent, sampled every 10 ms: (when, agent, connected).
type Transitions = Arc<Mutex<Vec<(Instant, usize, bool)>>>;

fn watch_connections(handles: Vec<meshfleet_agent::Reporter>, stop: Arc<AtomicBool>) -> (Transitions, tokio::task::JoinHandle<()>) {
    let transitions: Transitions = Arc::default();
    let log = transitions.clone();
    let task = tokio::spawn(async move {
        let mut last: Vec<bool> = handles.iter().map(|h| h.stats().connected).collect();
        while !stop.load(Ordering::Relaxed) {
            for (i, h) in handles.iter().enumerate() {
                let now = h.stats().connected;
                if now != last[i] {
                    log.lock().unwrap().push((Instant::now(), i, now));
                    last[i] = now;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    (transitions, task)
}

/// For each agent that lost its connection within 3 s of a replica going down at `stop`, the
/// time from `stop` to its next connection.
fn reconnect_times(transitions: &[(Instant, usize, bool)], stop: Instant) -> Vec<Duration> {
    let mut agents: BTreeMap<usize, Option<Duration>> = BTreeMap::new();
    for &(at, agent, connected) in transitions.iter().filter(|t| t.0 >= stop) {
        match (connected, agents.get(&agent)) {
            (false, None) if at < stop + Duration::from_secs(3) => {
                agents.insert(agent, None);
            }
            (true, Some(None)) => {
                agents.insert(agent, Some(at - stop));
            }
            _ => {}
        }
    }
    agents.into_values().map(|t| t.expect("an agent that lost its connection got it back")).collect()
}

async fn commands_of(api: &Api, cluster: &str) -> Vec<String> {
    api.get(&format!("/api/v1/clusters/{cluster}/commands")).await["items"].as_array().unwrap().iter().map(|c| c["kind"].as_str().unwrap().to_owned()).collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_three_replicas_loses_nothing() {
    if postgres_url().is_none() {
        eprintln!("rolling_restart: SKIPPED (PostgreSQL only): set MESHFLEET_TEST_POSTGRES_URL to run it");
        return;
    }
    let db = TestDb::new(Engine::Postgres).await;
    let sealing_key = meshfleet_server::secrets::Sealer::generate_key();
    let catalog = db.dir.path().join("catalog.yaml");
    std::fs::write(&catalog, "releases:\n- {version: 0.2.0, released_on: 2026-12-01}\n").unwrap();
    let mut replicas: Vec<FixedReplica> = ["a", "b", "c"].into_iter().map(FixedReplica::new).collect();
    let api_lb = Balancer::start(replicas.iter().map(|r| ([127, 0, 0, 1], r.api).into()).collect()).await;
    let gateway_lb = Balancer::start(replicas.iter().map(|r| ([127, 0, 0, 1], r.gateway).into()).collect()).await;
    let (public_url, gateway_address) = (format!("http://{}", api_lb.addr), format!("https://{}", gateway_lb.addr));
    let catalog = catalog.to_str().unwrap().to_owned();
    let env = [
        ("MESHFLEET_PUBLIC_URL", public_url.as_str()),
        ("MESHFLEET_GATEWAY_ADDRESS", gateway_address.as_str()),
        ("MESHFLEET_JOB_LEASE_MS", "2000"),
        ("MESHFLEET_JOB_LEASE_RENEW_MS", "500"),
        ("MESHFLEET_ALERT_WEBHOOK_ALLOW", "127.0.0.1"),
        ("MESHFLEET_ALERT_EVALUATION_MS", "200"),
        ("MESHFLEET_ALERT_RETRY_SCHEDULE", "0s,1s,1s,1s"),
        ("MESHFLEET_ALERT_DELIVERY_TIMEOUT_MS", "2000"),
        ("MESHFLEET_STALE_AFTER_SECS", "3"),
        ("MESHFLEET_DISCONNECTED_AFTER_SECS", "6"),
        ("MESHFLEET_RELEASE_CATALOG", catalog.as_str()),
    ];
    for r in &mut replicas {
        r.start(&server(), &db, &sealing_key, &env);
    }

    let api = Api::signup(&public_url, "ada@example.com").await;
    let receiver = Receiver::start(&[]).await;
    let channel = api.post("/api/v1/alert-channels", json!({ "name": "on-call", "kind": "webhook", "url": receiver.url })).await;
    let test_path = format!("{public_url}/api/v1/alert-channels/{}/test", channel["id"].as_str().unwrap());
    let gateway = gateway_lb.addr.to_string();
    let group = |prefix: &'static str, n: usize, labels: Value, seed: u64| {
        let (api, gateway) = (&api, &gateway);
        futures::future::join_all((0..n).map(move |i| start_agent(api, gateway, format!("{prefix}-{i:02}"), labels.clone(), seed + i as u64)))
    };
    let reporters = group("r", REPORTERS, json!({ "role": "reporter" }), 0).await;
    let mut victims = group("victim", VICTIMS, json!({ "role": "victim" }), 100).await;
    let ring = group("ring", RING, json!({ "ring": "canary" }), 200).await;

    // Reporters send numbered metrics windows every 150 ms; the rest run the simulator's reports.
    let stop = Arc::new(AtomicBool::new(false));
    let base = (chrono::Utc::now().timestamp_millis() / 60_000 - 60) * 60_000;
    let expected: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let mut drivers = Vec::new();
    for a in &reporters {
        let (reporter, cluster, expected, stop) = (a.handle.reporter(), a.id.clone(), expected.clone(), stop.clone());
        drivers.push(tokio::spawn(async move {
            for k in 0..i64::MAX {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                reporter.report(window(base + k * 10_000, (k + 1) as u64));
                *expected.lock().unwrap().entry(cluster.clone()).or_default() += k + 1;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }));
    }
    // The ring reports on until its rollout is over: its gates measure traffic after each step.
    let (sim_stop, sim_stopped) = tokio::sync::watch::channel(false);
    let mut sims = Vec::new();
    for a in victims.iter().chain(&ring) {
        sims.push(tokio::spawn(meshfleet_sim::drive(a.handle.reporter(), a.agent.cluster.clone(), Duration::from_millis(300), sim_stopped.clone())));
    }
    for a in &ring {
        let path = format!("/api/v1/clusters/{}/metrics", a.id);
        assert!(within(Duration::from_secs(30), || async { api.get(&path).await["items"].as_array().is_some_and(|m| !m.is_empty()) }).await.is_some());
    }

    let rollout = api
        .post(
            "/api/v1/rollouts",
            json!({ "target_version": "0.2.0", "selector": "ring=canary",
                    "settings": { "verify_seconds": 2, "soak_seconds": 0, "gates": { "max_success_rate_drop_points": 10, "max_p99_increase_percent": 10000 } } }),
        )
        .await;
    let rollout = format!("{public_url}/api/v1/rollouts/{}", rollout["id"].as_str().unwrap());
    let rollout_started = Instant::now();

    // Commands to the reporters and test alerts, through the balancer, all along the restarts.
    let http = reqwest::Client::new();
    let commands_acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let tests_acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let failed_calls = Arc::new(Mutex::new(Vec::<String>::new()));
    let senders = {
        let (http, token, stop, commands, tests, failed) =
            (http.clone(), api.token.clone(), stop.clone(), commands_acked.clone(), tests_acked.clone(), failed_calls.clone());
        let clusters: Vec<String> = reporters.iter().map(|a| a.id.clone()).collect();
        let (public_url, test_path) = (public_url.clone(), test_path.clone());
        tokio::spawn(async move {
            for k in 0usize.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let cluster = &clusters[k % clusters.len()];
                let url = format!("{public_url}/api/v1/clusters/{cluster}/commands");
                match call(&http, &token, reqwest::Method::POST, url, Some(json!({ "kind": "ping" }))).await {
                    Ok(c) => commands.lock().unwrap().push((cluster.clone(), c["id"].as_str().unwrap().to_owned())),
                    Err(e) => failed.lock().unwrap().push(format!("command: {e}")),
                }
                if k % 2 == 0 {
                    match call(&http, &token, reqwest::Method::POST, test_path.clone(), Some(json!({}))).await {
                        Ok(m) => tests.lock().unwrap().push(m["message_id"].as_str().unwrap().to_owned()),
                        Err(e) => failed.lock().unwrap().push(format!("test alert: {e}")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let watched: Vec<_> = reporters.iter().chain(&ring).map(|a| a.handle.reporter()).collect();
    let (transitions, watcher) = watch_connections(watched, stop.clone());

    // The victims go away (their "agent" alerts fire during the restarts); then each replica in
    // turn is stopped, left down a moment and started again on the same ports.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for v in victims.drain(..) {
        v.handle.shutdown().await;
    }
    let mut stops = Vec::new();
    for (i, graceful) in [(0, true), (1, false), (2, true)] {
        let at = Instant::now();
        replicas[i].stop(graceful.then_some(Duration::from_secs(10)));
        stops.push((at, replicas[i].name, if graceful { "SIGTERM" } else { "SIGKILL" }));
        tokio::time::sleep(Duration::from_millis(500)).await;
        replicas[i].start(&server(), &db, &sealing_key, &env);
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
    stop.store(true, Ordering::Relaxed);
    senders.await.unwrap();
    for d in drivers {
        d.await.unwrap();
    }
    watcher.await.unwrap();

    // Reconnect times: from a replica's stop to each of its agents connected again.
    let transitions = transitions.lock().unwrap().clone();
    let mut times = Vec::new();
    for &(at, name, signal) in &stops {
        let mut these = reconnect_times(&transitions, at);
        these.sort();
        if let Some(max) = these.last() {
            eprintln!(
                "rolling restart: replica {name} ({signal}): {} agents reconnected, p50 {:?}, max {max:?} after the stop",
                these.len(),
                percentile(&these, 0.5)
            );
        }
        times.extend(these);
    }
    times.sort();
    assert!(!times.is_empty(), "no agent lost its connection: were the replicas restarted?");
    let (p50, max) = (percentile(&times, 0.5), *times.last().unwrap());
    eprintln!("rolling restart: {} agent reconnects over 3 replica restarts; p50 {p50:?}, max {max:?} from the stop", times.len());
    assert!(max < Duration::from_secs(10), "an agent took {max:?} to reconnect");

    // No acknowledged report lost: every window the reporters sent is stored, once.
    for a in &reporters {
        let settled = a.handle.wait_until(Duration::from_secs(30), |s| s.connected && s.buffered == 0 && s.last_acked_seq == s.last_sent_seq).await;
        assert!(settled, "{}: {:?}", a.name, a.handle.stats());
        assert_eq!(a.handle.stats().dropped, 0, "{}", a.name);
        let want = expected.lock().unwrap()[&a.id];
        assert_eq!(requests_stored(&api, &a.id).await, want, "{}: stored requests differ from what was acknowledged", a.name);
    }

    // Every command the API created (acknowledged or not) succeeded, and ran once.
    let commands_acked = commands_acked.lock().unwrap().clone();
    let mut commands = 0;
    for a in &reporters {
        let path = format!("/api/v1/clusters/{}/commands?limit=100", a.id);
        let done = within(Duration::from_secs(30), || async { api.get(&path).await["items"].as_array().unwrap().iter().all(|c| c["state"] == "succeeded") })
            .await
            .is_some();
        assert!(done, "{}: {}", a.name, api.get(&path).await);
        let listed: BTreeSet<String> = api.get(&path).await["items"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect();
        for (_, id) in commands_acked.iter().filter(|(c, _)| *c == a.id) {
            assert!(listed.contains(id), "{}: acknowledged command {id} is not listed", a.name);
        }
        let executed = a.agent.executed.lock().unwrap().clone();
        for id in &listed {
            assert_eq!(executed.get(id), Some(&1), "{}: command {id} executed {:?} times", a.name, executed.get(id));
        }
        commands += listed.len();
    }

    // Alerts: every acknowledged test message and each victim's "agent" alert arrive; an event
    // arrives under one webhook id however often it is delivered.
    let tests_acked = tests_acked.lock().unwrap().clone();
    let victim_names: Vec<String> = (0..VICTIMS).map(|i| format!("victim-{i:02}")).collect();
    let arrived = within(Duration::from_secs(30), || async {
        let events = receiver.events();
        let ids: BTreeSet<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
        let fired =
            |name: &String| events.iter().any(|e| e["type"] == "alert.firing" && e["alert"]["rule"] == "agent" && e["alert"]["labels"]["cluster"] == *name);
        tests_acked.iter().all(|id| ids.contains(id.as_str())) && victim_names.iter().all(fired)
    })
    .await
    .is_some();
    let received = receiver.received();
    assert!(arrived, "expected {} test messages and the victims' alerts; got {:?}", tests_acked.len(), receiver.events());
    let mut ids_per_event: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (headers, body) in &received {
        let e: Value = serde_json::from_str(body).unwrap();
        assert_eq!(headers["webhook-id"].to_str().unwrap(), e["id"].as_str().unwrap());
        if e["type"] != "alert.test" {
            let key = format!("{} {} {}", e["type"], e["alert"]["fingerprint"], e["alert"]["starts_at"]);
            ids_per_event.entry(key).or_default().insert(e["id"].as_str().unwrap().to_owned());
        }
    }
    for (event, ids) in &ids_per_event {
        assert_eq!(ids.len(), 1, "{event} was delivered under several ids: {ids:?}");
    }
    // A replica going away is not an agent going away: the agents that reconnected raise none.
    let away: Vec<String> = receiver
        .events()
        .iter()
        .filter(|e| e["alert"]["rule"] == "agent" && !victim_names.iter().any(|v| e["alert"]["labels"]["cluster"] == *v))
        .map(|e| format!("{} {} {}", e["type"], e["alert"]["labels"]["cluster"], e["alert"]["summary"]))
        .collect();
    assert!(away.is_empty(), "the restarts raised agent alerts: {away:?}");
    let distinct: BTreeSet<&str> = received.iter().map(|(h, _)| h["webhook-id"].to_str().unwrap()).collect();

    // The rollout finishes, each cluster upgraded once.
    let done = within(Duration::from_secs(60), || async {
        call(&http, &api.token, reqwest::Method::GET, rollout.clone(), None).await.is_ok_and(|r| r["state"] == "completed")
    })
    .await
    .is_some();
    let state = call(&http, &api.token, reqwest::Method::GET, rollout.clone(), None).await;
    assert!(done, "the rollout did not finish: {state:?}");
    let rollout_took = rollout_started.elapsed();
    let _ = sim_stop.send(true);
    for s in sims {
        s.await.unwrap();
    }
    for a in &ring {
        let kinds = commands_of(&api, &a.id).await;
        assert_eq!(kinds, ["restart-workloads", "set-control-plane-version"], "{}: no step sent twice", a.name);
        assert!(a.agent.executed.lock().unwrap().values().all(|&n| n == 1), "{}: a step ran twice", a.name);
    }

    let failed = failed_calls.lock().unwrap().clone();
    let reports: u64 = reporters.iter().map(|a| a.handle.stats().last_acked_seq).sum();
    eprintln!(
        "rolling restart: {reports} reports acknowledged to the reporters, all stored; {commands} commands ({} acknowledged), {} test alerts acknowledged, {} deliveries of {} distinct messages, {} API calls failed during restarts: {:?}; the rollout took {rollout_took:?} (the restarts ~15 s)",
        commands_acked.len(),
        tests_acked.len(),
        received.len(),
        distinct.len(),
        failed.len(),
        failed.iter().take(3).collect::<Vec<_>>()
    );
    for a in reporters.into_iter().chain(ring) {
        a.handle.shutdown().await;
    }
}
