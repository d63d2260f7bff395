//! Golden metrics match what was sent, and the admin endpoints answer as documented.

use std::time::Duration;

use meshfleet_pki::pem::{certs_from_pem, fingerprint};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_counters_equal_requests_by_status_class() {
    let mesh = Mesh::start(&[]).await;
    let plan = [(200u16, 7), (404, 3), (500, 4), (503, 2)];
    let client = reqwest::Client::new();
    for (code, n) in plan {
        for _ in 0..n {
            let r = client.get(mesh.url(&format!("/status/{code}"))).send().await.unwrap();
            assert_eq!(r.status().as_u16(), code);
        }
    }
    for (proxy, direction, peer_label) in [(&mesh.a, "outbound", "server_id"), (&mesh.b, "inbound", "client_id")] {
        let m = metrics(proxy).await;
        let d = ("direction", direction);
        assert_eq!(metric(&m, "request_total", &[d]), 16.0, "{direction}\n{m}");
        assert_eq!(metric(&m, "response_total", &[d, ("classification", "success")]), 10.0);
        assert_eq!(metric(&m, "response_total", &[d, ("classification", "failure")]), 6.0);
        for (code, n) in plan {
            assert_eq!(metric(&m, "response_total", &[d, ("status_code", &code.to_string())]), n as f64);
        }
        assert_eq!(metric(&m, "response_latency_ms_count", &[d]), 16.0);
        let peer = if direction == "inbound" { "spiffe://cluster.local/ns/web/sa/client" } else { "spiffe://cluster.local/ns/api/sa/server" };
        assert_eq!(metric(&m, "request_total", &[d, (peer_label, peer)]), 16.0, "peer identity label");
        assert!(metric(&m, "tcp_open_total", &[d]) >= 2.0);
        assert!(metric(&m, "tcp_read_bytes_total", &[d]) > 0.0);
        assert!(metric(&m, "tcp_write_bytes_total", &[d]) > 0.0);
        assert!(metric(&m, "tcp_open_connections", &[d]) >= 1.0, "keep-alive connection still open");
        assert!(metric(&m, "identity_cert_expiration_timestamp_seconds", &[]) > 1.7e9);
        assert!(metric(&m, "identity_cert_refresh_count", &[]) >= 1.0);
        assert_eq!(metric(&m, "proxy_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    }
    let m = metrics(&mesh.b).await;
    let allowed = metric(&m, "inbound_tcp_authz_allow_total", &[]);
    assert!(allowed >= 1.0);
    assert_eq!(allowed, metric(&m, "tcp_open_total", &[("direction", "inbound"), ("peer", "src")]), "every mTLS connection was authorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_identity_and_shutdown_drains() {
    let mut mesh = Mesh::start(&[]).await;
    let admin = mesh.a.addr("admin");
    let id: serde_json::Value = reqwest::get(format!("http://{admin}/identity")).await.unwrap().json().await.unwrap();
    assert_eq!(id["identity"], "spiffe://cluster.local/ns/web/sa/client");
    assert_eq!(id["issuer"], "CN=test issuer 1");
    assert_eq!(id["trust_bundle"]["anchors"].as_array().unwrap().len(), 1);
    assert!(id["not_after_unix"].as_i64().unwrap() > 1_700_000_000);
    // What it trusts: the bundle's anchors, and the issuer and anchor its leaf depends on.
    let anchor = fingerprint(&mesh.pki.anchor.cert_der);
    let issuer = fingerprint(&certs_from_pem(&std::fs::read(mesh.pki.path("issuer.crt")).unwrap()).unwrap()[0]);
    assert_eq!(id["bundle_fingerprints"], serde_json::json!([anchor]));
    let leaf = &id["leaf"];
    assert_eq!(leaf["issuer_fingerprint"], issuer.as_str());
    assert_eq!(leaf["anchor_fingerprint"], anchor.as_str());
    assert_eq!(leaf["not_after_unix"], id["not_after_unix"]);
    let now = meshfleet_pki::unix(std::time::SystemTime::now());
    assert!(leaf["not_before_unix"].as_i64().unwrap() <= now && now < leaf["not_after_unix"].as_i64().unwrap(), "{leaf}");
    assert_eq!(reqwest::get(format!("http://{admin}/live")).await.unwrap().status(), 200);
    assert_eq!(reqwest::get(format!("http://{admin}/version")).await.unwrap().text().await.unwrap().trim(), env!("CARGO_PKG_VERSION"));
    assert_eq!(reqwest::get(format!("http://{admin}/shutdown")).await.unwrap().status(), 405);

    // A request in flight when shutdown starts still completes (graceful drain).
    let slow = tokio::spawn(fresh_client().get(mesh.url("/sleep/700")).send());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = reqwest::Client::new();
    let resp = client.post(format!("http://{admin}/shutdown")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(slow.await.unwrap().unwrap().status(), 200, "in-flight request finished during drain");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = mesh.a.child.try_wait().unwrap() {
            assert!(status.success(), "clean exit after drain: {status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "proxy did not exit after /shutdown");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_until_the_proxy_holds_a_certificate() {
    let pki = Pki::new();
    let controller = spawn_controller(&pki, &[]);
    // An unknown token: the controller refuses, so the proxy never gets a certificate.
    std::fs::write(pki.path("tok-x"), "not-a-known-token").unwrap();
    let p = spawn_proxy(&pki, &controller, "tok-x", "127.0.0.1:1".parse().unwrap(), &[], &[]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = reqwest::get(format!("http://{}/ready", p.addr("admin"))).await.unwrap();
    assert_eq!(r.status(), 503);
    let cm = metrics(&controller).await;
    assert!(metric(&cm, "identity_cert_refused_total", &[("reason", "unauthenticated")]) >= 1.0, "{cm}");
    // Fixing the token file lets it in without a restart.
    std::fs::write(pki.path("tok-x"), "tok-a").unwrap();
    wait_ready(&p).await;
}
