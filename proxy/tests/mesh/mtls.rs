//! mTLS between proxies: what crosses the wire is TLS, plaintext and foreign peers are refused.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshfleet_mesh::tls::{client_config, mesh_server_name};
use meshfleet_pki::mint::{self, CaProfile, LeafProfile};
use meshfleet_pki::spiffe::WorkloadId;
use meshfleet_pki::verify::TrustBundle;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_between_proxies_are_tls_and_requests_arrive() {
    let pki = Pki::new();
    let controller = spawn_controller(&pki, &[]);
    let app = spawn_app().await;
    let b = spawn_proxy(&pki, &controller, "tok-b", app, &[], &[]);
    let (tap, seen) = spawn_tap(b.addr("inbound")).await;
    let a = spawn_proxy(&pki, &controller, "tok-a", app, &[format!("127.0.0.1:0={tap}#spiffe://cluster.local/ns/api/sa/server")], &[]);
    wait_ready(&a).await;
    wait_ready(&b).await;

    let marker = "plaintext-marker-7f3a9c";
    let resp = fresh_client().post(format!("http://{}/echo", a.outbound(0))).body(marker).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), marker, "the app's echo came back through the mesh");

    let wire = seen.lock().unwrap().clone();
    assert!(wire.len() > 100, "traffic crossed the tap");
    assert_eq!(wire[0], 0x16, "first byte on the wire is a TLS handshake record");
    assert!(!wire.windows(marker.len()).any(|w| w == marker.as_bytes()), "payload never appears in clear");
    assert!(!wire.windows(4).any(|w| w == b"HTTP"), "no HTTP framing in clear");

    // The server side saw the client's identity.
    let m = metrics(&b).await;
    assert_eq!(metric(&m, "request_total", &[("direction", "inbound"), ("client_id", "spiffe://cluster.local/ns/web/sa/client")]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_client_to_inbound_is_refused_and_counted() {
    let mesh = Mesh::start(&[]).await;
    let mut tcp = TcpStream::connect(mesh.b.addr("inbound")).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "no response to plaintext: {:?}", String::from_utf8_lossy(&buf));
    let m = metrics(&mesh.b).await;
    assert_eq!(metric(&m, "inbound_tcp_authz_deny_total", &[("reason", "plaintext")]), 1.0);
    assert_eq!(metric(&m, "request_total", &[]), 0.0, "nothing reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_with_certificate_from_another_ca_is_refused_and_counted() {
    let mesh = Mesh::start(&[]).await;
    // A client that trusts B's anchor but holds a leaf from a CA outside B's bundle.
    let foreign = mint::new_anchor(&CaProfile::new("foreign anchor", YEAR)).unwrap();
    let foreign_issuer = mint::new_issuer(&foreign, &CaProfile::new("foreign issuer", YEAR)).unwrap();
    let key = mint::new_key().unwrap();
    let id = WorkloadId::new("cluster.local", "web", "client").unwrap();
    let leaf =
        mint::issue_leaf(&foreign_issuer.signer().unwrap(), &key, &LeafProfile::workload(&id, SystemTime::now() + Duration::from_secs(600))).unwrap().der;
    let bundle = TrustBundle::from_pem(mesh.pki.anchor.cert_pem.as_bytes()).unwrap();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = client_config(&bundle, None, Some((vec![leaf, foreign_issuer.cert_der.clone()], key_der)), &[]).unwrap();

    let tcp = TcpStream::connect(mesh.b.addr("inbound")).await.unwrap();
    let result = async {
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(mesh_server_name(), tcp).await?;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    }
    .await;
    // Refused during or right after the handshake: an error, or at most an empty read.
    if let Ok(buf) = result {
        assert!(buf.is_empty(), "foreign peer got a response: {:?}", String::from_utf8_lossy(&buf));
    }
    let m = metrics(&mesh.b).await;
    assert_eq!(metric(&m, "inbound_tcp_authz_deny_total", &[("reason", "untrusted_peer")]), 1.0, "{m}");
    assert_eq!(metric(&m, "request_total", &[]), 0.0);

    // A mesh peer still gets through afterwards.
    assert_eq!(get_status(mesh.url("/")).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_refuses_other_identities() {
    let pki = Pki::new();
    let controller = spawn_controller(&pki, &[]);
    let app = spawn_app().await;
    let b = spawn_proxy(&pki, &controller, "tok-b", app, &[], &["--allow-identity=spiffe://cluster.local/ns/other/sa/only"]);
    let a = client_proxy(&pki, &controller, app, &b).await;
    assert_eq!(get_status(format!("http://{}/", a.outbound(0))).await, 502, "the refused hop surfaces as a gateway error");
    let m = metrics(&b).await;
    assert!(metric(&m, "inbound_tcp_authz_deny_total", &[("reason", "not_allowed"), ("client_id", "spiffe://cluster.local/ns/web/sa/client")]) >= 1.0, "{m}");
}

/// TLS without a client certificate: refused by default, admitted in `unauthenticated` mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_certificate_is_admitted_only_in_unauthenticated_mode() {
    let pki = Pki::new();
    let controller = spawn_controller(&pki, &[]);
    let app = spawn_app().await;
    let strict = spawn_proxy(&pki, &controller, "tok-b", app, &[], &[]);
    let lenient = spawn_proxy(&pki, &controller, "tok-b", app, &[], &["--inbound-auth=unauthenticated"]);
    wait_ready(&strict).await;
    wait_ready(&lenient).await;
    let bundle = TrustBundle::from_pem(pki.anchor.cert_pem.as_bytes()).unwrap();
    let config = Arc::new(client_config(&bundle, None, None, &[]).unwrap());
    let get = |addr| {
        let config = config.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            let mut tls = tokio_rustls::TlsConnector::from(config).connect(mesh_server_name(), tcp).await?;
            tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
            let mut buf = Vec::new();
            tls.read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).to_string())
        }
    };
    let refused = get(strict.addr("inbound")).await.unwrap_or_default();
    assert!(refused.is_empty(), "strict inbound answered: {refused}");
    let m = metrics(&strict).await;
    assert_eq!(metric(&m, "inbound_tcp_authz_deny_total", &[("reason", "no_client_cert")]), 1.0, "{m}");
    let admitted = get(lenient.addr("inbound")).await.unwrap();
    assert!(admitted.starts_with("HTTP/1.1 200"), "lenient inbound: {admitted}");
    let m = metrics(&lenient).await;
    assert_eq!(metric(&m, "request_total", &[("direction", "inbound"), ("client_id", "")]), 1.0);
}
