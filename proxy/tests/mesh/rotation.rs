//! Rotation never fails a request: short-lived leaves renew under traffic, the issuer files are
//! replaced under traffic, proxies with long-lived leaves renew as soon as the controller
//! announces a new issuer, and a two-anchor bundle (pushed live) accepts peers of both anchors.

use std::time::{Duration, Instant};

use meshfleet_pki::mint::{self, CaProfile};
use meshfleet_pki::pem::fingerprint;

use crate::support::*;

async fn identity(p: &Process) -> serde_json::Value {
    reqwest::get(format!("http://{}/identity", p.addr("admin"))).await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_leaves_rotate_under_traffic_without_failures() {
    let mesh = Mesh::start(&["--leaf-lifetime-secs=3"]).await;
    let fresh = tokio::spawn(drive(mesh.url("/"), Duration::from_secs(8), false, 2));
    let pooled = tokio::spawn(drive(mesh.url("/"), Duration::from_secs(8), true, 1));
    let (ok1, f1) = fresh.await.unwrap();
    let (ok2, f2) = pooled.await.unwrap();
    assert!(f1.is_empty() && f2.is_empty(), "failures: {f1:?} {f2:?}");
    assert!(ok1 > 50 && ok2 > 50, "enough traffic: {ok1} {ok2}");
    for p in [&mesh.a, &mesh.b] {
        let refreshed = metric(&metrics(p).await, "identity_cert_refresh_count", &[]);
        assert!(refreshed >= 3.0, "leaf renewed repeatedly, got {refreshed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_files_replaced_under_traffic_without_failures() {
    let mesh = Mesh::start(&["--leaf-lifetime-secs=3"]).await;
    let traffic = tokio::spawn(drive(mesh.url("/"), Duration::from_secs(9), false, 2));
    let pooled = tokio::spawn(drive(mesh.url("/"), Duration::from_secs(9), true, 1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let next = mint::new_issuer(&mesh.pki.anchor, &CaProfile::new("test issuer 2", YEAR)).unwrap();
    mesh.pki.write_issuer(&next);

    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let (a, b) = (identity(&mesh.a).await, identity(&mesh.b).await);
        if a["issuer"] == "CN=test issuer 2" && b["issuer"] == "CN=test issuer 2" {
            break;
        }
        assert!(Instant::now() < deadline, "proxies never moved to the new issuer: {a} {b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, failed) = traffic.await.unwrap();
    let (ok2, failed2) = pooled.await.unwrap();
    assert!(failed.is_empty() && failed2.is_empty(), "failures: {failed:?} {failed2:?}");
    assert!(ok > 50 && ok2 > 50);
    let cm = metrics(&mesh.controller).await;
    assert!(metric(&cm, "identity_issuer_reload_total", &[("result", "accepted")]) >= 1.0, "{cm}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_renew_early_when_the_issuer_changes_without_failures_or_restarts() {
    // Day-long leaves: only the controller's announcement can move the proxies to the new issuer.
    let mut mesh = Mesh::start(&[]).await;
    let traffic = tokio::spawn(drive(mesh.url("/"), Duration::from_secs(5), false, 2));
    let pooled = tokio::spawn(drive(mesh.url("/"), Duration::from_secs(5), true, 1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let next = mint::new_issuer(&mesh.pki.anchor, &CaProfile::new("test issuer 2", YEAR)).unwrap();
    mesh.pki.write_issuer(&next);
    let replaced = Instant::now();

    let deadline = replaced + Duration::from_secs(3);
    loop {
        let (a, b) = (identity(&mesh.a).await, identity(&mesh.b).await);
        if a["issuer"] == "CN=test issuer 2" && b["issuer"] == "CN=test issuer 2" {
            break;
        }
        assert!(Instant::now() < deadline, "proxies did not renew early: {a} {b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for p in [&mesh.a, &mesh.b] {
        let leaf = &identity(p).await["leaf"];
        assert_eq!(leaf["issuer_fingerprint"], fingerprint(&next.cert_der).as_str());
        assert_eq!(leaf["anchor_fingerprint"], fingerprint(&mesh.pki.anchor.cert_der).as_str());
    }
    let (ok, failed) = traffic.await.unwrap();
    let (ok2, failed2) = pooled.await.unwrap();
    assert!(failed.is_empty() && failed2.is_empty(), "failures: {failed:?} {failed2:?}");
    assert!(ok > 50 && ok2 > 50, "enough traffic: {ok} {ok2}");
    for p in [&mut mesh.a, &mut mesh.b] {
        assert!(p.child.try_wait().unwrap().is_none(), "proxy restarted");
        // The leaf from start-up and the early renewal: nothing else renews a day-long leaf.
        assert_eq!(metric(&metrics(p).await, "identity_cert_refresh_count", &[]), 2.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_or_foreign_issuer_is_refused_and_the_current_one_kept() {
    let mesh = Mesh::start(&[]).await;
    let foreign = mint::new_anchor(&CaProfile::new("foreign", YEAR)).unwrap();
    mesh.pki.write_issuer(&mint::new_issuer(&foreign, &CaProfile::new("foreign issuer", YEAR)).unwrap());
    let url = format!("http://{}/metrics", mesh.controller.addr("admin"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let cm = reqwest::get(&url).await.unwrap().text().await.unwrap();
        if metric(&cm, "identity_issuer_reload_total", &[("result", "refused"), ("reason", "not_chained")]) >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "foreign issuer was not refused: {cm}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Still issuing from the old issuer: a new proxy gets a certificate and traffic flows.
    let c = spawn_proxy(&mesh.pki, &mesh.controller, "tok-a", mesh.app, &[], &[]);
    wait_ready(&c).await;
    assert_eq!(identity(&c).await["issuer"], "CN=test issuer 1");
    assert_eq!(get_status(mesh.url("/")).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_anchor_bundle_reaches_proxies_live_and_accepts_peers_from_both() {
    // Two controllers, each with an issuer from its own anchor.
    let (pki1, pki2) = (Pki::new(), Pki::new());
    pki2.write_bundle(&[&pki1.anchor, &pki2.anchor]);
    let (c1, c2) = (spawn_controller(&pki1, &[]), spawn_controller(&pki2, &[]));
    let app = spawn_app().await;
    let b = spawn_proxy(&pki2, &c2, "tok-b", app, &[], &[]);
    let a = client_proxy(&pki1, &c1, app, &b).await;
    let url = format!("http://{}/", a.outbound(0));

    // A trusts only anchor 1, so B (anchor 2) is refused.
    assert_eq!(get_status(&url).await, 502);

    // Publish {anchor 1, anchor 2} to controller 1: it reaches A without a restart.
    pki1.write_bundle(&[&pki1.anchor, &pki2.anchor]);
    let deadline = Instant::now() + Duration::from_secs(8);
    while identity(&a).await["trust_bundle"]["anchors"].as_array().unwrap().len() != 2 {
        assert!(Instant::now() < deadline, "bundle never reached proxy A");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = identity(&a).await;
    let (fp1, fp2) = (fingerprint(&pki1.anchor.cert_der), fingerprint(&pki2.anchor.cert_der));
    assert_eq!(id["bundle_fingerprints"], serde_json::json!([fp1, fp2]));
    assert_eq!(id["leaf"]["anchor_fingerprint"], fp1.as_str(), "A's leaf still chains to anchor 1");
    for _ in 0..5 {
        assert_eq!(get_status(&url).await, 200, "anchor-1 proxy -> anchor-2 proxy");
    }
    // And the other way round.
    let b_out = spawn_proxy(&pki2, &c2, "tok-b", app, &[format!("127.0.0.1:0={}", a.addr("inbound"))], &[]);
    wait_ready(&b_out).await;
    assert_eq!(get_status(format!("http://{}/", b_out.outbound(0))).await, 200, "anchor-2 proxy -> anchor-1 proxy");
    assert_eq!(metric(&metrics(&a).await, "identity_trust_bundle_updates_total", &[]), 1.0);
}
