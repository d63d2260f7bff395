//! Discovery served by the real controller against the fake API server: `Resolve` by Service
//! name or cluster IP answers the ready endpoints with their pods' identities and whether they
//! are meshed, streams changes, fills an unknown name when its Service appears, and refuses a
//! malformed target.

use std::time::Duration;

use meshfleet_fake_kube::FakeKube;
use meshfleet_mesh::destination::pb::{self, destination_client::DestinationClient};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Streaming;

use crate::support::*;

pub const SERVER_ID: &str = "spiffe://cluster.local/ns/api/sa/server";

/// A Deployment in `ns` whose pods run as `sa` on container port 8080 ("http"), meshed when
/// `meshed` (labelled as the injector labels the pods it gives a proxy).
pub fn deployment(ns: &str, name: &str, sa: &str, replicas: i64, meshed: bool) -> Value {
    let mut labels = json!({"app": name});
    if meshed {
        labels["meshfleet.io/proxy-version"] = json!(meshfleet_mesh::VERSION);
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": labels}, "spec": {"serviceAccountName": sa, "containers": [{"name": "app", "image": "app", "ports": [{"name": "http", "containerPort": 8080}]}]}},
        },
    })
}

/// A Service on port 80 selecting `app: name`, to the pods' "http" port.
pub fn service(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})
}

/// The fake API server and the real controller with discovery pointed at it.
pub async fn start() -> (FakeKube, Pki, Process) {
    let kube = FakeKube::start().await.unwrap();
    let pki = Pki::new();
    let kubeconfig = pki.path("kubeconfig");
    kube.write_kubeconfig(&kubeconfig, &kube.admin_token).unwrap();
    let controller = spawn_controller_with_env(&pki, &["--discovery"], &[("KUBECONFIG", &kubeconfig)]);
    (kube, pki, controller)
}

async fn resolve(client: &mut DestinationClient<Channel>, target: &str) -> Streaming<pb::Endpoints> {
    client.resolve(pb::ResolveRequest { target: target.into() }).await.unwrap().into_inner()
}

/// The next message within 10 s.
async fn next(stream: &mut Streaming<pb::Endpoints>) -> pb::Endpoints {
    tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("no update within 10 s").unwrap().unwrap()
}

/// Reads updates until one satisfies `done`.
async fn until(stream: &mut Streaming<pb::Endpoints>, done: impl Fn(&pb::Endpoints) -> bool) -> pb::Endpoints {
    loop {
        let msg = next(stream).await;
        if done(&msg) {
            return msg;
        }
    }
}

fn pod_ips(kube: &FakeKube, ns: &str, app: &str, ready_only: bool) -> Vec<String> {
    let ready = |p: &Value| p["status"]["conditions"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
    let mut ips: Vec<String> = kube
        .list("v1", "Pod", Some(ns))
        .iter()
        .filter(|p| p["metadata"]["labels"]["app"] == app && (!ready_only || ready(p)))
        .filter_map(|p| p["status"]["podIP"].as_str().map(|ip| format!("{ip}:8080")))
        .collect();
    ips.sort();
    ips
}

fn addresses(msg: &pb::Endpoints) -> Vec<String> {
    msg.endpoints.iter().map(|e| e.address.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_streams_ready_endpoints_with_identities_by_name_and_cluster_ip() {
    let (kube, pki, controller) = start().await;
    let mut client = DestinationClient::new(controller_channel(&controller, &pki.anchor));

    // Unknown yet: an empty set at once, filled when the Service and its pods appear.
    let mut by_name = resolve(&mut client, "web.api.svc.cluster.local:80").await;
    let first = next(&mut by_name).await;
    assert_eq!(first, pb::Endpoints { endpoints: vec![], exists: false });
    kube.apply(deployment("api", "web", "server", 2, true)).unwrap();
    kube.apply(service("api", "web")).unwrap();
    let two = until(&mut by_name, |m| m.endpoints.len() == 2).await;
    assert!(two.exists);
    assert_eq!(addresses(&two), pod_ips(&kube, "api", "web", true));
    for e in &two.endpoints {
        assert!(e.meshed, "{e:?}");
        assert_eq!(e.identity, SERVER_ID, "the pod's service account, as the identity service issues it");
        assert!(e.pod.starts_with("api/web-"), "{e:?}");
    }

    // The short forms and the cluster IP answer the same.
    let cluster_ip = kube.get("v1", "Service", "api", "web").unwrap()["spec"]["clusterIP"].as_str().unwrap().to_owned();
    for target in ["web.api:80".to_string(), "web.api.svc:80".into(), format!("{cluster_ip}:80")] {
        let mut s = resolve(&mut client, &target).await;
        assert_eq!(next(&mut s).await, two, "{target}");
    }
    // A pod IP resolves to that pod alone.
    let mut s = resolve(&mut client, &two.endpoints[0].address).await;
    assert_eq!(next(&mut s).await.endpoints, vec![two.endpoints[0].clone()]);
    // A port the Service does not have: known, but no endpoints.
    let mut s = resolve(&mut client, "web.api:81").await;
    assert_eq!(next(&mut s).await, pb::Endpoints { endpoints: vec![], exists: true });

    // Scaled up: the third endpoint streams in.
    kube.modify("apps/v1", "Deployment", "api", "web", |d| d["spec"]["replicas"] = json!(3)).unwrap();
    let three = until(&mut by_name, |m| m.endpoints.len() == 3).await;
    assert_eq!(addresses(&three), pod_ips(&kube, "api", "web", true));

    // A pod that stops being ready leaves the set (the simulated kubelet must leave it unready).
    let unready = three.endpoints[0].pod.split_once('/').unwrap().1.to_owned();
    kube.modify("v1", "Pod", "api", &unready, |p| {
        p["metadata"]["annotations"]["fake.meshfleet.io/never-ready"] = json!("true");
        p["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    })
    .unwrap();
    let two_again = until(&mut by_name, |m| m.endpoints.len() == 2).await;
    assert!(!two_again.endpoints.iter().any(|e| e.pod.ends_with(&unready)), "{two_again:?}");

    // Unmeshed pods: plain endpoints with no identity to expect.
    kube.apply(deployment("api", "db", "db", 1, false)).unwrap();
    kube.apply(service("api", "db")).unwrap();
    let mut db = resolve(&mut client, "db.api:80").await;
    let db = until(&mut db, |m| m.endpoints.len() == 1).await;
    assert!(!db.endpoints[0].meshed && db.endpoints[0].identity.is_empty(), "{db:?}");

    // The Service deleted: the set empties.
    kube.delete("v1", "Service", "api", "web").unwrap();
    let gone = until(&mut by_name, |m| !m.exists).await;
    assert!(gone.endpoints.is_empty());

    // Counted: the streams still open (by name, by pod IP, port 81 and db; the three of the
    // loop were dropped) and the sets sent.
    let m = metrics(&controller).await;
    assert_eq!(metric(&m, "destination_resolve_streams", &[]), 4.0, "{m}");
    assert!(metric(&m, "destination_updates_total", &[]) >= 10.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_target_is_an_invalid_argument() {
    let (_kube, pki, controller) = start().await;
    let mut client = DestinationClient::new(controller_channel(&controller, &pki.anchor));
    for target in ["", "web", "web.api", "web:80", "Web.api:80", "web.api:0", "a.b.c:80"] {
        let status = client.resolve(pb::ResolveRequest { target: target.into() }).await.err().unwrap_or_else(|| panic!("{target:?} accepted"));
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{target:?}: {status:?}");
    }
}

const CLIENT_ID: &str = "spiffe://cluster.local/ns/web/sa/client";

/// Requests each server proxy took from the client over mTLS.
async fn served(servers: &[(String, Process)]) -> Vec<f64> {
    let mut out = Vec::new();
    for (_, p) in servers {
        out.push(metric(&metrics(p).await, "request_total", &[("direction", "inbound"), ("tls", "true"), ("client_id", CLIENT_ID)]));
    }
    out
}

/// A client proxy whose only route is a Service name reaches the Service's three pods (a server
/// proxy on each pod IP, as the injector would run it), spreads requests over them, loses one
/// endpoint mid-traffic without a failed request, and keeps routing with the controller gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_proxy_balances_over_discovered_endpoints_and_survives_removal_and_controller_loss() {
    let (kube, pki, controller) = start().await;
    kube.apply(deployment("api", "web", "server", 3, true)).unwrap();
    kube.apply(service("api", "web")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ips = loop {
        let ips = pod_ips(&kube, "api", "web", true);
        if ips.len() == 3 {
            break ips;
        }
        assert!(std::time::Instant::now() < deadline, "pods never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let app = spawn_app().await;
    let mut servers: Vec<(String, Process)> =
        ips.iter().map(|addr| (addr.clone(), spawn_proxy(&pki, &controller, "tok-b", app, &[], &[&format!("--inbound-addr={addr}")]))).collect();
    let destination = format!("--destination={}", controller.addr("grpc"));
    let client = spawn_proxy(&pki, &controller, "tok-a", "127.0.0.1:1".parse().unwrap(), &["127.0.0.1:0=web.api.svc.cluster.local:80".into()], &[&destination]);
    wait_ready(&client).await;
    for (_, s) in &servers {
        wait_ready(s).await;
    }
    let url = format!("http://{}/", client.outbound(0));

    // Every endpoint takes a share of keep-alive traffic (balanced per request), over mTLS with
    // the client's identity.
    let (ok, failed) = drive(url.clone(), Duration::from_secs(2), true, 4).await;
    assert!(failed.is_empty() && ok > 20, "ok {ok}, failed {failed:?}");
    let spread = served(&servers).await;
    assert_eq!(spread.iter().sum::<f64>(), ok as f64, "every request reached a server proxy over mTLS as the client: {spread:?}");
    assert!(spread.iter().all(|n| *n >= ok as f64 / 10.0), "spread over all three: {spread:?}");

    // Mid-traffic, one pod stops being ready: its endpoint leaves, no request fails, and once
    // the change has reached the client nothing more goes there; then its proxy stops.
    let traffic = tokio::spawn(drive(url.clone(), Duration::from_secs(4), true, 4));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (gone_addr, _) = &servers[0];
    let gone_ip = gone_addr.trim_end_matches(":8080");
    let pod = kube.list("v1", "Pod", Some("api")).into_iter().find(|p| p["status"]["podIP"] == gone_ip).unwrap();
    kube.modify("v1", "Pod", "api", pod["metadata"]["name"].as_str().unwrap(), |p| {
        p["metadata"]["annotations"]["fake.meshfleet.io/never-ready"] = json!("true");
        p["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    })
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = served(&servers[..1]).await[0];
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(served(&servers[..1]).await[0], before, "no request went to the removed endpoint after the change");
    drop(servers.remove(0));
    let (ok, failed) = traffic.await.unwrap();
    assert!(failed.is_empty() && ok > 20, "ok {ok}, failed {failed:?}");

    // The controller gone: the last view keeps routing, new connections included.
    let remaining = served(&servers).await;
    drop(controller);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed) = drive(url.clone(), Duration::from_secs(2), false, 2).await;
    assert!(failed.is_empty() && ok > 10, "ok {ok}, failed {failed:?}");
    let after = served(&servers).await;
    assert!(after.iter().zip(&remaining).all(|(a, b)| a > b), "both remaining endpoints still serve: {remaining:?} -> {after:?}");
}
