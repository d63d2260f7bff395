//! Agent replicas against the fake API server (no gateway: sessions cannot start, which
//! leadership and readiness do not depend on): the Lease is released on graceful shutdown and
//! only expires after a crash, and each replica serves /metrics, /healthz and /readyz.

use std::time::{Duration, Instant};

use meshfleet_agent::k8s::{self, AgentConfig};
use meshfleet_fake_kube::{Config, FakeKube, Fault};
use serde_json::json;

use crate::kube::meshed_deployment;

fn replica(name: &str) -> AgentConfig {
    let vars = [
        ("MESHFLEET_GATEWAY_ADDRESS", "https://127.0.0.1:1"),
        ("MESHFLEET_GATEWAY_CA", "unused"),
        ("MESHFLEET_POD_NAME", name),
        ("MESHFLEET_POD_NAMESPACE", "meshfleet-system"),
        ("MESHFLEET_AGENT_LISTEN", "127.0.0.1:0"),
        ("MESHFLEET_LEASE_DURATION_MS", "3000"),
        ("MESHFLEET_LEASE_RENEW_MS", "200"),
    ];
    AgentConfig::from_vars(&vars.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()).unwrap()
}

async fn mesh() -> FakeKube {
    let kube = FakeKube::start_with(Config { ready_delay: Duration::from_millis(50), ..Config::default() }).await.unwrap();
    kube.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})).unwrap();
    kube.apply(meshed_deployment("shop", "web", 2)).unwrap();
    kube
}

async fn until(limit: Duration, f: impl Fn() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

fn holder(kube: &FakeKube) -> Option<String> {
    kube.get("coordination.k8s.io/v1", "Lease", "meshfleet-system", "meshfleet-agent")?["spec"]["holderIdentity"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_releases_the_lease_so_failover_is_immediate_and_a_crash_waits_for_expiry() {
    let kube = mesh().await;
    let a = k8s::start(replica("a"), kube.client().await.unwrap()).await.unwrap();
    assert!(until(Duration::from_secs(5), || a.is_leader()).await.is_some());
    let b = k8s::start(replica("b"), kube.client().await.unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!b.is_leader());

    // Graceful: the Lease is released, so b leads at its next attempt (renew 200 ms), far
    // sooner than the 3 s lease duration.
    let started = Instant::now();
    a.shutdown().await;
    let took = until(Duration::from_secs(5), || b.is_leader()).await.map(|_| started.elapsed());
    assert!(took.is_some_and(|t| t < Duration::from_secs(2)), "failover after a graceful shutdown: {took:?}");
    assert_eq!(holder(&kube).as_deref(), Some("b"));
    let lease = kube.get("coordination.k8s.io/v1", "Lease", "meshfleet-system", "meshfleet-agent").unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease}");

    // A crash (dropped without shutdown) releases nothing: the standby waits for the Lease to
    // expire, as it must, since it cannot tell a crash from a slow leader.
    let c = k8s::start(replica("c"), kube.client().await.unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    drop(b);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!c.is_leader(), "no takeover while the crashed leader's Lease is still valid");
    assert_eq!(holder(&kube).as_deref(), Some("b"));
    let took = until(Duration::from_secs(8), || c.is_leader()).await.map(|_| started.elapsed());
    assert!(took.is_some_and(|t| t >= Duration::from_millis(2500)), "takeover after expiry: {took:?}");
    // The last replica's shutdown leaves the Lease without a holder.
    c.shutdown().await;
    assert_eq!(holder(&kube), None);
}

async fn get(url: String) -> (u16, String) {
    let r = reqwest::Client::builder().no_proxy().build().unwrap().get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The value of an unlabelled sample in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_replica_serves_metrics_healthz_and_a_readyz_that_waits_for_the_inventory() {
    let kube = mesh().await;
    // The node list fails once, so the inventory cannot be complete for a while.
    kube.inject(Fault::once("list", "nodes", 500));
    let a = k8s::start(replica("a"), kube.client().await.unwrap()).await.unwrap();
    let base = format!("http://{}", a.http_addr);
    assert_eq!(get(format!("{base}/healthz")).await.0, 200);
    let (status, body) = get(format!("{base}/readyz")).await;
    assert_eq!((status, body.as_str()), (503, "inventory not synced"), "not ready before every watch has listed");
    let took = until(Duration::from_secs(10), || a.inventory.synced()).await;
    assert!(took.is_some());
    assert_eq!(get(format!("{base}/readyz")).await.0, 200);
    assert!(until(Duration::from_secs(5), || a.is_leader()).await.is_some());

    // A standby is ready too: readiness follows the inventory, not leadership or the gateway.
    let b = k8s::start(replica("b"), kube.client().await.unwrap()).await.unwrap();
    let b_base = format!("http://{}", b.http_addr);
    assert!(until(Duration::from_secs(5), || b.inventory.synced()).await.is_some());
    assert_eq!(get(format!("{b_base}/readyz")).await.0, 200);

    let (status, text) = get(format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert_eq!(sample(&text, "meshfleet_agent_leader"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "meshfleet_agent_meshed_pods"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "meshfleet_agent_gateway_connected"), Some(0.0), "no gateway here: {text}");
    assert!(text.contains(r#"meshfleet_agent_watch_events_total{kind="nodes",result="error"} 1"#), "the failed list is counted: {text}");
    assert!(text.contains(r#"meshfleet_agent_watch_events_total{kind="pods",result="ok"}"#), "{text}");
    let (_, standby) = get(format!("{b_base}/metrics")).await;
    assert_eq!(sample(&standby, "meshfleet_agent_leader"), Some(0.0), "{standby}");
    assert_eq!(sample(&standby, "meshfleet_agent_meshed_pods"), Some(2.0), "{standby}");
    b.shutdown().await;
    a.shutdown().await;
}
