//! The mesh's issuer run by the service, end to end: the organization's trust anchor made
//! through the API, a rotate-issuer command whose key is made by the real agent in the fake
//! cluster and signed by the gateway, the real controller picking the new issuer up through the
//! API server, real proxies renewing early, and the `issuer-rotation` job doing it again by
//! itself at half the issuer's lifetime. Traffic flows through the mesh all along: not one
//! request may fail, and no proxy restarts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meshfleet_pki::pem::{certs_from_pem, fingerprint};
use meshfleet_pki::verify::TrustBundle;
use meshfleet_test_support::process::within;
use serde_json::{json, Value};

use super::mesh::{IssuerSource, Mesh};
use super::*;

mod two_clusters;

fn decode(v: &Value) -> String {
    use base64::Engine as _;
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or_default()).unwrap()).unwrap()
}

/// The issuer in the fake cluster's Secret (fingerprint, PEM) and the anchors of its bundle.
fn in_cluster(kube: &FakeKube) -> (String, String, Vec<String>) {
    let secret = kube.get("v1", "Secret", "meshfleet", "meshfleet-issuer").unwrap();
    let pem = decode(&secret["data"]["tls.crt"]);
    let issuer = fingerprint(&certs_from_pem(pem.as_bytes()).unwrap()[0]);
    let map = kube.get("v1", "ConfigMap", "meshfleet", "meshfleet-trust-bundle").unwrap();
    let bundle = TrustBundle::from_pem(map["data"]["ca-bundle.crt"].as_str().unwrap().as_bytes()).unwrap();
    (issuer, pem, bundle.fingerprints())
}

/// What a proxy's admin `/identity` says of one field of its leaf (`anchor_fingerprint`,
/// `issuer_fingerprint`); None without a leaf or, for the anchor, if it chains to none now.
async fn leaf_field(admin: std::net::SocketAddr, field: &str) -> Option<String> {
    let id: Value = reqwest::get(format!("http://{admin}/identity")).await.unwrap().json().await.unwrap();
    id["leaf"][field].as_str().map(str::to_owned)
}

/// `leaf_field` of each sidecar of the mesh.
async fn leaves(mesh: &Mesh, field: &str) -> Vec<Option<String>> {
    let admins: Vec<std::net::SocketAddr> = mesh.sidecars.lock().unwrap().values().map(|s| s.process.addr("admin")).collect();
    let mut out = Vec::new();
    for a in admins {
        out.push(leaf_field(a, field).await);
    }
    out
}

/// The anchor each sidecar's leaf chains to, as its admin `/identity` says.
async fn leaf_anchors(mesh: &Mesh) -> Vec<Option<String>> {
    leaves(mesh, "anchor_fingerprint").await
}

/// Requests through the mesh from an ingress proxy to every pod, until stopped: (sent, failed).
struct Traffic {
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ingress: super::mesh::Process,
}

impl Traffic {
    /// One request at a time, from an ingress proxy of the mesh to each of its pods in turn.
    async fn start(mesh: &Mesh) -> Traffic {
        Self::between(mesh, mesh, 1).await
    }

    /// `tasks` concurrent loops of requests, one at a time each, from an ingress proxy of `from`
    /// to each pod of `to` in turn (over mTLS to the pod's identity): within one cluster, or
    /// across two whose proxies trust the same anchors.
    async fn between(from: &Mesh, to: &Mesh, tasks: usize) -> Traffic {
        let targets: Vec<(String, String)> = to.pods_of("web").into_iter().chain(to.pods_of("api")).map(|(_, inbound, id)| (inbound, id)).collect();
        let ingress = from.ingress(&targets).await;
        let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let outs: Arc<Vec<std::net::SocketAddr>> = Arc::new((0..targets.len()).map(|i| ingress.outbound(i)).collect());
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap();
        let tasks = (0..tasks)
            .map(|t| {
                let (sent, failed, outs, http) = (sent.clone(), failed.clone(), outs.clone(), http.clone());
                tokio::spawn(async move {
                    for i in t.. {
                        let out = outs[i % outs.len()];
                        let res = http.get(format!("http://{out}/t")).send().await;
                        sent.fetch_add(1, Ordering::Relaxed);
                        let ok = res.as_ref().is_ok_and(|r| r.status().is_success());
                        if !ok && failed.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("a request through {out} failed: {:?}", res.map(|r| r.status()));
                        }
                    }
                })
            })
            .collect();
        Traffic { sent, failed, tasks, ingress }
    }

    /// The requests sent so far.
    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops it: (sent, failed).
    fn stop(self) -> (u64, u64) {
        for t in &self.tasks {
            t.abort();
        }
        (self.sent.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

fn pids(mesh: &Mesh) -> Vec<u32> {
    let mut p: Vec<u32> = mesh.sidecars.lock().unwrap().values().map(|s| s.process.pid()).collect();
    p.sort();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_signs_each_cluster_issuer_and_rotates_it_by_itself_with_no_failed_request() {
    // An issuer lives 90 s (plus the minute it is backdated): due again 15 s after signing.
    let s = setup_with(|c| {
        c.issuer_lifetime = Duration::from_secs(90);
        c.issuer_rotation_check = Duration::from_millis(300);
    })
    .await;
    let mesh = Mesh::start_with(s.kube.clone(), &[("shop", "web"), ("shop", "api")], IssuerSource::Kubernetes).await;
    mesh.wait_ready(3).await;
    let before = pids(&mesh);
    let a = start_connected_agent(&s).await;
    let (dev_issuer, _, dev_bundle) = in_cluster(&s.kube);

    // Without an anchor there is nothing to sign with: refused when asked, not failed later.
    let path = format!("/api/v1/clusters/{}/commands", s.cluster);
    let (status, problem) = s.app.post(&path, &s.owner.access, json!({"kind": "rotate-issuer"})).await;
    assert_eq!((status.as_u16(), problem["type"].as_str()), (409, Some("/problems/no-trust-anchor")), "{problem}");
    let (status, anchor) = s.app.post("/api/v1/trust-anchors", &s.owner.access, json!({})).await;
    assert_eq!(status.as_u16(), 201, "{anchor}");
    let org_anchor = anchor["fingerprint"].as_str().unwrap().to_owned();
    assert!(!anchor.to_string().contains("PRIVATE KEY"));

    // Traffic through the mesh all along: the ingress proxy to every pod, one request at a time.
    let traffic = Traffic::start(&mesh).await;

    // An admin asks: the agent makes the key, the gateway signs it with the organization's anchor.
    let command = send_command(&s, "rotate-issuer", json!({})).await;
    let (done, _) = finish(&s, &command, Duration::from_secs(20)).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let signed = done["output"]["issuer_fingerprint"].as_str().unwrap().to_owned();
    assert_eq!(done["output"]["anchor_fingerprint"], org_anchor);
    let (issuer, issuer_pem, bundle) = in_cluster(&s.kube);
    assert_eq!(issuer, signed, "the Secret holds the issuer the service signed");
    assert_ne!(issuer, dev_issuer);
    assert!(dev_bundle.iter().chain([&org_anchor]).all(|f| bundle.contains(f)), "the bundle grew, it lost nothing: {bundle:?}");
    let record = s.app.get(&format!("/api/v1/clusters/{}/certificates", s.cluster), &s.owner.access).await.1["signed_by_service"].clone();
    assert_eq!((record["fingerprint"].as_str(), record["anchor_fingerprint"].as_str()), (Some(signed.as_str()), Some(org_anchor.as_str())), "{record}");
    assert_eq!(record["certificate_pem"].as_str(), Some(issuer_pem.as_str()));

    // The controller takes it from the API server and the proxies renew at once: every leaf
    // chains to the organization's anchor within seconds, not at their next renewal.
    let moved = within(Duration::from_secs(15), || async { leaf_anchors(&mesh).await.iter().all(|f| f.as_deref() == Some(org_anchor.as_str())) }).await;
    assert!(moved.is_some(), "leaves chain to {org_anchor}: {:?}", leaf_anchors(&mesh).await);
    eprintln!("proxies on the service-signed issuer after {moved:?}");

    // The agent reports the new issuer; once half its lifetime is left the job asks for another.
    let next = within(Duration::from_secs(40), || async { in_cluster(&s.kube).0 != signed }).await;
    assert!(next.is_some(), "the issuer-rotation job signed a new issuer by itself");
    let audit = s.app.get("/api/v1/audit", &s.owner.access).await.1.to_string();
    assert!(audit.contains("issuer-rotation") && audit.contains("issuer.sign") && audit.contains("trust_anchor.generated"), "{audit}");
    let (rotated, _, _) = in_cluster(&s.kube);
    let settled = within(Duration::from_secs(15), || async {
        let record = s.app.get(&format!("/api/v1/clusters/{}/certificates", s.cluster), &s.owner.access).await.1["signed_by_service"].clone();
        record["fingerprint"] == rotated.as_str() && leaf_anchors(&mesh).await.iter().all(|f| f.as_deref() == Some(org_anchor.as_str()))
    })
    .await;
    assert!(settled.is_some());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (sent, failed) = traffic.stop();
    eprintln!("{sent} requests through two issuer rotations, {failed} failed");
    assert!(sent > 100, "traffic flowed: {sent}");
    assert_eq!(failed, 0, "no request failed during the rotations");
    assert_eq!(pids(&mesh), before, "no proxy restarted");
    assert_eq!(s.kube.denials(), Vec::<String>::new(), "within the install's RBAC");
    a.shutdown().await;
}

/// Polls the rotation until its phase is `want`; returns it.
async fn rotation_reaches(s: &Setup, id: &str, want: &str, limit: Duration) -> Value {
    let path = format!("/api/v1/trust-anchors/rotations/{id}");
    let got = within(limit, || async { s.app.get(&path, &s.owner.access).await.1["phase"] == want }).await;
    let r = s.app.get(&path, &s.owner.access).await.1;
    assert!(got.is_some(), "rotation never reached {want}: {r}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trust_anchor_rotation_and_an_aborted_one_fail_no_request_and_restart_no_proxy() {
    let s = setup().await;
    let mesh = Mesh::start_with(s.kube.clone(), &[("shop", "web"), ("shop", "api")], IssuerSource::Kubernetes).await;
    mesh.wait_ready(3).await;
    let before = pids(&mesh);
    let a = start_connected_agent(&s).await;
    // Started on the development bundle, the ingress proxy follows every change from here on.
    let traffic = Traffic::start(&mesh).await;
    // The cluster joins the organization's anchor first (its issuer signed by it).
    let first = s.app.post("/api/v1/trust-anchors", &s.owner.access, json!({})).await.1["fingerprint"].as_str().unwrap().to_owned();
    let command = send_command(&s, "rotate-issuer", json!({})).await;
    assert_eq!(finish(&s, &command, Duration::from_secs(20)).await.0["state"], "succeeded");
    let joined = within(Duration::from_secs(15), || async { leaf_anchors(&mesh).await.iter().all(|f| f.as_deref() == Some(first.as_str())) }).await;
    assert!(joined.is_some(), "{:?}", leaf_anchors(&mesh).await);

    // A full rotation: distribute, reissue, retire, with the agent's reports as the gate.
    let started = std::time::Instant::now();
    let (status, r) = s.app.post("/api/v1/trust-anchors/rotations", &s.owner.access, json!({})).await;
    assert_eq!(status.as_u16(), 201, "{r}");
    let (id, second) = (r["id"].as_str().unwrap().to_owned(), r["new_anchor_fingerprint"].as_str().unwrap().to_owned());
    let (status, busy) = s.app.post("/api/v1/trust-anchors/rotations", &s.owner.access, json!({})).await;
    assert_eq!((status.as_u16(), busy["type"].as_str()), (409, Some("/problems/rotation-in-progress")));
    let done = rotation_reaches(&s, &id, "done", Duration::from_secs(60)).await;
    eprintln!("a full trust-anchor rotation took {:?}", started.elapsed());
    assert_eq!(done["clusters"][0]["state"], "done", "{done}");
    let (_, _, bundle) = in_cluster(&s.kube);
    assert_eq!(bundle, std::slice::from_ref(&second), "the old anchor left the bundle");
    assert!(leaf_anchors(&mesh).await.iter().all(|f| f.as_deref() == Some(second.as_str())), "every leaf chains to the new anchor");
    let anchors = s.app.get("/api/v1/trust-anchors", &s.owner.access).await.1;
    let state_of = |fp: &str| anchors["anchors"].as_array().unwrap().iter().find(|a| a["fingerprint"] == fp).map(|a| a["state"].clone());
    assert_eq!((state_of(&first), state_of(&second)), (Some(json!("inactive")), Some(json!("active"))), "the old anchor kept, inactive: {anchors}");
    // What the cluster holds, as the API tells it once the agent has reported.
    let path = format!("/api/v1/clusters/{}/certificates", s.cluster);
    let settled = within(Duration::from_secs(10), || async {
        let c = s.app.get(&path, &s.owner.access).await.1;
        c["bundle"].as_array().is_some_and(|b| b.len() == 1 && b[0]["fingerprint"] == second.as_str())
            && c["issuer"]["anchor_state"] == "active"
            && c["proxies"]["reporting"] == 3
            && c["proxies"]["leaf_not_on_active_anchor"] == 0
            && c["proxies"]["bundle_without_active_anchor"] == 0
    })
    .await;
    assert!(settled.is_some(), "{}", s.app.get(&path, &s.owner.access).await.1);
    let next = s.app.get("/api/v1/certificates/next-expiry", &s.owner.access).await.1;
    assert_eq!(next["next"]["kind"], "proxy-leaf", "day-long leaves expire first: {next}");

    // Another one, aborted once issuers are moving: back to the anchor it came from.
    let r = s.app.post("/api/v1/trust-anchors/rotations", &s.owner.access, json!({ "lifetime_days": 90 })).await.1;
    let (id, third) = (r["id"].as_str().unwrap().to_owned(), r["new_anchor_fingerprint"].as_str().unwrap().to_owned());
    rotation_reaches(&s, &id, "reissue", Duration::from_secs(30)).await;
    let (status, aborted) = s.app.post(&format!("/api/v1/trust-anchors/rotations/{id}/abort"), &s.owner.access, json!({})).await;
    assert_eq!(status.as_u16(), 200, "{aborted}");
    let aborted = rotation_reaches(&s, &id, "aborted", Duration::from_secs(60)).await;
    assert_eq!(aborted["paused"], false);
    let (_, _, bundle) = in_cluster(&s.kube);
    assert_eq!(bundle, std::slice::from_ref(&second), "the aborted anchor left the bundle");
    let back = within(Duration::from_secs(10), || async { leaf_anchors(&mesh).await.iter().all(|f| f.as_deref() == Some(second.as_str())) }).await;
    assert!(back.is_some(), "every leaf chains to the anchor before the abort: {:?}", leaf_anchors(&mesh).await);
    let anchors = s.app.get("/api/v1/trust-anchors", &s.owner.access).await.1;
    let active: Vec<&Value> = anchors["anchors"].as_array().unwrap().iter().filter(|a| a["state"] == "active").collect();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["fingerprint"], second.as_str());
    assert!(anchors.to_string().contains(&third));

    tokio::time::sleep(Duration::from_millis(300)).await;
    let (sent, failed) = traffic.stop();
    eprintln!("{sent} requests through a trust-anchor rotation and an aborted one, {failed} failed");
    assert!(sent > 100, "traffic flowed: {sent}");
    assert_eq!(failed, 0, "no request failed");
    assert_eq!(pids(&mesh), before, "no proxy restarted");
    let audit = s.app.get("/api/v1/audit", &s.owner.access).await.1.to_string();
    assert!(audit.contains("trust_anchor.rotation.start") && audit.contains("trust_anchor.rotation.abort") && audit.contains("trust_anchor.rotation.phase"));
    assert_eq!(s.kube.denials(), Vec::<String>::new(), "within the install's RBAC");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_goes_on_where_it_was_after_the_server_restarts_during_distribute() {
    let mut s = setup().await;
    let mesh = Mesh::start_with(s.kube.clone(), &[("shop", "web"), ("shop", "api")], IssuerSource::Kubernetes).await;
    mesh.wait_ready(3).await;
    let before = pids(&mesh);
    let a = start_connected_agent(&s).await;
    let traffic = Traffic::start(&mesh).await;
    s.app.post("/api/v1/trust-anchors", &s.owner.access, json!({})).await;
    let command = send_command(&s, "rotate-issuer", json!({})).await;
    assert_eq!(finish(&s, &command, Duration::from_secs(20)).await.0["state"], "succeeded");

    // The server stops the moment the rotation is in distribute, and comes back on the same
    // addresses with the same database and sealing key, as a restarted replica would.
    let r = s.app.post("/api/v1/trust-anchors/rotations", &s.owner.access, json!({})).await.1;
    let (id, new) = (r["id"].as_str().unwrap().to_owned(), r["new_anchor_fingerprint"].as_str().unwrap().to_owned());
    assert_eq!(r["phase"], "distribute");
    let stopped = std::time::Instant::now();
    s.restart().await;
    rotation_reaches(&s, &id, "done", Duration::from_secs(60)).await;
    eprintln!("the rotation finished {:?} after the server stopped", stopped.elapsed());
    let moved = within(Duration::from_secs(10), || async { leaf_anchors(&mesh).await.iter().all(|f| f.as_deref() == Some(new.as_str())) }).await;
    assert!(moved.is_some(), "every leaf chains to the new anchor: {:?}", leaf_anchors(&mesh).await);
    assert_eq!(in_cluster(&s.kube).2, std::slice::from_ref(&new));
    // One command per phase: nothing was sent twice across the restart.
    let commands = s.app.get(&format!("/api/v1/clusters/{}/commands?limit=500", s.cluster), &s.owner.access).await.1;
    let by_rotation: Vec<&str> =
        commands["items"].as_array().unwrap().iter().filter(|c| c["created_by"] == "service:anchor-rotation").map(|c| c["kind"].as_str().unwrap()).collect();
    assert_eq!(by_rotation, ["set-trust-bundle", "rotate-issuer", "set-trust-bundle"].iter().rev().copied().collect::<Vec<_>>(), "newest first");

    let (sent, failed) = traffic.stop();
    eprintln!("{sent} requests through a rotation with a server restart, {failed} failed");
    assert_eq!(failed, 0, "no request failed");
    assert_eq!(pids(&mesh), before, "no proxy restarted");
    a.shutdown().await;
}
