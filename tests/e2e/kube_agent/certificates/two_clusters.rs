//! Issue 13's proof across clusters: two clusters of one organization, each its own fake API
//! server with the real agent, the real controller and real proxies. A client in cluster A calls
//! servers in cluster B (A's ingress proxy to B's sidecars, over mTLS to B's identities), and a
//! pair inside each cluster does the same at home, hundreds of requests a second all along,
//! through a full trust-anchor rotation, then an issuer rotation of both clusters, then an
//! anchor rotation aborted while issuers are moving. Not one request may fail and no proxy
//! restarts: each step keeps every proxy of both clusters trusting the anchor the other side's
//! leaves chain to.

use std::time::Instant;

use super::*;

/// The anchor each proxy's leaf chains to: every sidecar of the meshes and every ingress proxy
/// sending the traffic.
async fn all_leaf_anchors(meshes: &[&Mesh], traffic: &[Traffic]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for m in meshes {
        out.extend(leaf_anchors(m).await);
    }
    for t in traffic {
        out.push(leaf_field(t.ingress.addr("admin"), "anchor_fingerprint").await);
    }
    out
}

/// Waits until every proxy's leaf chains to `anchor`; returns how long it took.
async fn all_on(meshes: &[&Mesh], traffic: &[Traffic], anchor: &str, limit: Duration) -> Duration {
    match within(limit, || async { all_leaf_anchors(meshes, traffic).await.iter().all(|f| f.as_deref() == Some(anchor)) }).await {
        Some(took) => took,
        None => panic!("every leaf chains to {anchor}: {:?}", all_leaf_anchors(meshes, traffic).await),
    }
}

/// Sends rotate-issuer to each cluster at once and waits for each to succeed; returns the
/// issuers signed, one per cluster, after checking they chain to `anchor`.
async fn rotate_issuers(s: &Setup, clusters: &[&Cluster], anchor: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for c in clusters {
        paths.push(send_command_in(s, c, "rotate-issuer", json!({})).await);
    }
    let mut signed = Vec::new();
    for (c, path) in clusters.iter().zip(&paths) {
        let (done, _) = finish(s, path, Duration::from_secs(60)).await;
        assert_eq!((&done["state"], done["output"]["anchor_fingerprint"].as_str()), (&json!("succeeded"), Some(anchor)), "{done}");
        let issuer = done["output"]["issuer_fingerprint"].as_str().unwrap().to_owned();
        assert_eq!(in_cluster(&c.kube).0, issuer, "the cluster's Secret holds the issuer the service signed");
        signed.push(issuer);
    }
    signed
}

/// Waits until the rotation is `done`; asserts every cluster of `clusters` (and no other) got
/// there, and each cluster's bundle holds only the new anchor. Returns the new anchor.
async fn full_rotation(s: &Setup, clusters: &[&Cluster]) -> String {
    let (status, r) = s.app.post("/api/v1/trust-anchors/rotations", &s.owner.access, json!({})).await;
    assert_eq!(status.as_u16(), 201, "{r}");
    let (id, new) = (r["id"].as_str().unwrap().to_owned(), r["new_anchor_fingerprint"].as_str().unwrap().to_owned());
    let done = rotation_reaches(s, &id, "done", Duration::from_secs(180)).await;
    let mut states: Vec<(String, String)> =
        done["clusters"].as_array().unwrap().iter().map(|c| (c["cluster_id"].as_str().unwrap().to_owned(), c["state"].as_str().unwrap().to_owned())).collect();
    states.sort();
    let mut want: Vec<(String, String)> = clusters.iter().map(|c| (c.cluster.clone(), "done".to_owned())).collect();
    want.sort();
    assert_eq!(states, want, "both clusters did every phase: {done}");
    for c in clusters {
        assert_eq!(in_cluster(&c.kube).2, std::slice::from_ref(&new), "the old anchor left {}'s bundle", c.cluster);
    }
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_of_one_organization_rotate_anchors_and_issuers_with_no_failed_request_within_or_across_them() {
    let s = setup().await;
    let b = join_cluster(&s.app, &s.owner, "prod-2").await;
    let clusters: [&Cluster; 2] = [&s.home, &b];
    let workloads = [("shop", "web"), ("shop", "api")];
    let mesh_a = Mesh::start_with(s.kube.clone(), &workloads, IssuerSource::Kubernetes).await;
    let mesh_b = Mesh::start_with(b.kube.clone(), &workloads, IssuerSource::Kubernetes).await;
    mesh_a.wait_ready(3).await;
    mesh_b.wait_ready(3).await;
    let meshes = [&mesh_a, &mesh_b];
    let agent_a = start_connected_agent(&s).await;
    let agent_b = start_connected_agent_in(&s, &b).await;

    // Each cluster starts on its own development PKI. Both join the organization's anchor (their
    // issuers signed by it): from then on each trusts the leaves of the other.
    let (status, anchor) = s.app.post("/api/v1/trust-anchors", &s.owner.access, json!({})).await;
    assert_eq!(status.as_u16(), 201, "{anchor}");
    let first = anchor["fingerprint"].as_str().unwrap().to_owned();
    rotate_issuers(&s, &clusters, &first).await;
    all_on(&meshes, &[], &first, Duration::from_secs(30)).await;

    // Traffic all along: A's ingress proxy to B's pods (across), and each cluster's own
    // ingress proxy to its own pods, several requests in flight on each.
    let traffic = [Traffic::between(&mesh_a, &mesh_b, 4).await, Traffic::between(&mesh_a, &mesh_a, 2).await, Traffic::between(&mesh_b, &mesh_b, 2).await];
    all_on(&meshes, &traffic, &first, Duration::from_secs(30)).await;
    let before: Vec<Vec<u32>> = meshes.iter().map(|m| pids(m)).collect();
    let started = Instant::now();

    // A full anchor rotation: distribute, reissue, retire, each phase gated on both clusters.
    let t = Instant::now();
    let second = full_rotation(&s, &clusters).await;
    let anchor_rotation = t.elapsed();
    all_on(&meshes, &traffic, &second, Duration::from_secs(30)).await;
    eprintln!("a full trust-anchor rotation of both clusters took {anchor_rotation:?}");

    // An issuer rotation of both clusters at once: new issuers under the same anchor, every
    // sidecar's leaf moves to its cluster's new issuer.
    let t = Instant::now();
    let issuers = rotate_issuers(&s, &clusters, &second).await;
    for (mesh, issuer) in meshes.iter().zip(&issuers) {
        let moved = within(Duration::from_secs(30), || async { leaves(mesh, "issuer_fingerprint").await.iter().all(|f| f.as_ref() == Some(issuer)) }).await;
        assert!(moved.is_some(), "every leaf is signed by {issuer}: {:?}", leaves(mesh, "issuer_fingerprint").await);
    }
    let issuer_rotation = t.elapsed();
    all_on(&meshes, &traffic, &second, Duration::from_secs(30)).await;
    eprintln!("an issuer rotation of both clusters took {issuer_rotation:?}");

    // Another anchor rotation, aborted once issuers are moving: back to the anchor before it.
    let t = Instant::now();
    let r = s.app.post("/api/v1/trust-anchors/rotations", &s.owner.access, json!({})).await.1;
    let (id, third) = (r["id"].as_str().unwrap().to_owned(), r["new_anchor_fingerprint"].as_str().unwrap().to_owned());
    rotation_reaches(&s, &id, "reissue", Duration::from_secs(90)).await;
    let (status, aborted) = s.app.post(&format!("/api/v1/trust-anchors/rotations/{id}/abort"), &s.owner.access, json!({})).await;
    assert_eq!(status.as_u16(), 200, "{aborted}");
    let aborted = rotation_reaches(&s, &id, "aborted", Duration::from_secs(180)).await;
    let aborted_rotation = t.elapsed();
    assert_eq!(aborted["clusters"].as_array().map(Vec::len), Some(2), "{aborted}");
    all_on(&meshes, &traffic, &second, Duration::from_secs(30)).await;
    eprintln!("an anchor rotation aborted in reissue took {aborted_rotation:?} to be back");

    // Where it ends: every proxy's leaf, ingress proxies included, on the anchor before the
    // aborted rotation, which is alone in both bundles; the aborted one kept but inactive.
    all_on(&meshes, &traffic, &second, Duration::from_secs(30)).await;
    for c in clusters {
        assert_eq!(in_cluster(&c.kube).2, std::slice::from_ref(&second), "{}'s bundle is the active anchor alone", c.cluster);
    }
    let anchors = s.app.get("/api/v1/trust-anchors", &s.owner.access).await.1;
    let active: Vec<&Value> = anchors["anchors"].as_array().unwrap().iter().filter(|a| a["state"] == "active").collect();
    assert_eq!(active.iter().map(|a| &a["fingerprint"]).collect::<Vec<_>>(), [&json!(second)], "{anchors}");
    assert!(anchors.to_string().contains(&third));

    let (elapsed, sent_across) = (started.elapsed(), traffic[0].sent());
    let (mut sent, mut failed) = (0, 0);
    for t in traffic {
        let (n, f) = t.stop();
        (sent, failed) = (sent + n, failed + f);
    }
    eprintln!(
        "{sent} requests ({sent_across} across the clusters) in {elapsed:?}, {:.0}/s, through both anchor rotations and the issuer rotation: {failed} failed",
        sent as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(failed, 0, "no request failed, within or across the clusters");
    assert!(sent > 600 && sent_across > 200, "traffic flowed: {sent} ({sent_across} across)");
    assert_eq!(meshes.iter().map(|m| pids(m)).collect::<Vec<_>>(), before, "no proxy restarted");
    for c in clusters {
        assert_eq!(c.kube.denials(), Vec::<String>::new(), "{} stays within the install's RBAC", c.cluster);
    }
    agent_a.shutdown().await;
    agent_b.shutdown().await;
}
