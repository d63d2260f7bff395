//! The controller's Kubernetes issuer source, against the fake API server in-process: the issuer
//! Secret and bundle ConfigMap are watched, a replaced Secret signs the next leaves within about a
//! second, a bad one is refused and counted once while the current issuer keeps signing, and a
//! new issuer or a changed ConfigMap reaches `WatchTrustBundle` streams.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use meshfleet_fake_kube::FakeKube;
use meshfleet_mesh::identity::pb::{self, identity_client::IdentityClient};
use meshfleet_pki::inspect::inspect;
use meshfleet_pki::mint::{self, CaMaterial, CaProfile};
use meshfleet_pki::pem::fingerprint;
use tonic::transport::Channel;

use crate::support::*;

const NS: &str = "meshfleet";

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.into()), namespace: Some(NS.into()), ..Default::default() }
}

/// A Secret as cert-manager writes one; `ca.crt` is not read, so it holds nothing useful here.
fn issuer_secret(cert: &CaMaterial, key: &CaMaterial) -> Secret {
    named_secret("meshfleet-issuer", cert, key)
}

fn named_secret(name: &str, cert: &CaMaterial, key: &CaMaterial) -> Secret {
    let data = [("tls.crt", cert.cert_pem.as_str()), ("tls.key", key.key_pem.as_str()), ("ca.crt", "ignored")];
    let data = data.map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())));
    Secret { metadata: meta(name), type_: Some("kubernetes.io/tls".into()), data: Some(BTreeMap::from(data)), ..Default::default() }
}

fn bundle_map(anchors: &[&CaMaterial]) -> ConfigMap {
    let pem: String = anchors.iter().map(|a| a.cert_pem.clone()).collect();
    ConfigMap { metadata: meta("meshfleet-trust-bundle"), data: Some(BTreeMap::from([("ca-bundle.crt".to_string(), pem)])), ..Default::default() }
}

/// The fake API server and a controller with `--issuer-source=kubernetes` pointed at it (no
/// issuer Secret or ConfigMap yet; another Secret it must not take for the issuer's).
async fn start() -> (FakeKube, Pki, Process, PathBuf) {
    let kube = FakeKube::start().await.unwrap();
    let pki = Pki::new();
    let foreign = mint::new_anchor(&CaProfile::new("foreign", YEAR)).unwrap();
    kube.apply_typed(&named_secret("another-tls", &foreign, &foreign)).unwrap();
    let kubeconfig = pki.path("kubeconfig");
    kube.write_kubeconfig(&kubeconfig, &kube.admin_token).unwrap();
    let controller = spawn_controller_with_env(&pki, &["--issuer-source=kubernetes", "--namespace=meshfleet"], &[("KUBECONFIG", &kubeconfig)]);
    (kube, pki, controller, kubeconfig)
}

async fn ready_status(controller: &Process) -> u16 {
    reqwest::get(format!("http://{}/ready", controller.addr("admin"))).await.unwrap().status().as_u16()
}

async fn wait_until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A gRPC client of the controller that trusts `anchor`, as a proxy would.
fn identity_client(controller: &Process, anchor: &CaMaterial) -> IdentityClient<Channel> {
    IdentityClient::new(controller_channel(controller, anchor))
}

/// A new leaf for "tok-a": the leaf's issuer name and the chain the controller sent with it.
async fn certify(client: &mut IdentityClient<Channel>) -> (String, Vec<Vec<u8>>) {
    let key = mint::new_key().unwrap();
    let req = pb::CertifyRequest { token: "tok-a".into(), csr_der: meshfleet_pki::csr::new_csr(&key).unwrap() };
    let resp = client.certify(req).await.unwrap().into_inner();
    (inspect(&resp.leaf_der).unwrap().issuer, resp.intermediates_der)
}

fn refused(text: &str, reason: &str) -> f64 {
    metric(text, "identity_issuer_reload_total", &[("result", "refused"), ("reason", reason)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_source_rotates_the_issuer_live_and_refuses_a_bad_secret() {
    let (kube, pki, controller, _kc) = start().await;
    // Not ready while the Secret is missing: nothing could be signed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ready_status(&controller).await, 503);
    let issuer1 = mint::new_issuer(&pki.anchor, &CaProfile::new("kube issuer 1", YEAR)).unwrap();
    kube.apply_typed(&issuer_secret(&issuer1, &issuer1)).unwrap();
    kube.apply_typed(&bundle_map(&[&pki.anchor])).unwrap();
    wait_until("controller never became ready", Duration::from_secs(10), async || ready_status(&controller).await == 200).await;
    let mut client = identity_client(&controller, &pki.anchor);
    assert_eq!(certify(&mut client).await.0, "CN=kube issuer 1");

    // A replaced Secret (same anchor) signs the next leaves within about a second.
    let issuer2 = mint::new_issuer(&pki.anchor, &CaProfile::new("kube issuer 2", YEAR)).unwrap();
    kube.apply_typed(&issuer_secret(&issuer2, &issuer2)).unwrap();
    let replaced = Instant::now();
    wait_until("leaves never moved to the new issuer", Duration::from_secs(5), async || certify(&mut client).await.0 == "CN=kube issuer 2").await;
    assert!(replaced.elapsed() < Duration::from_millis(1500), "took {:?}", replaced.elapsed());
    let (_, chain) = certify(&mut client).await;
    assert_eq!(chain, vec![issuer2.cert_der.to_vec()], "the chain sent with the leaf is the new issuer");

    // A key that is not the certificate's: refused, counted once, issuer 2 keeps signing.
    let other = mint::new_issuer(&pki.anchor, &CaProfile::new("kube issuer 3", YEAR)).unwrap();
    kube.apply_typed(&issuer_secret(&issuer2, &other)).unwrap();
    wait_until("bad Secret was not refused", Duration::from_secs(5), async || refused(&metrics(&controller).await, "key_mismatch") == 1.0).await;
    assert_eq!(certify(&mut client).await.0, "CN=kube issuer 2");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = metrics(&controller).await;
    assert_eq!(refused(&text, "key_mismatch"), 1.0, "a bad Secret left in place is counted once: {text}");
    assert_eq!(metric(&text, "identity_issuer_reload_total", &[("result", "accepted")]), 1.0, "{text}");
    assert_eq!(ready_status(&controller).await, 200, "a refused Secret does not make a serving controller unready");
    assert_eq!(certify(&mut client).await.0, "CN=kube issuer 2");

    // A deleted Secret is refused the same way: the pair in use stays.
    let before = refused(&metrics(&controller).await, "missing");
    kube.delete("v1", "Secret", NS, "meshfleet-issuer").unwrap();
    wait_until("deleted Secret was not refused", Duration::from_secs(5), async || refused(&metrics(&controller).await, "missing") == before + 1.0).await;
    assert_eq!(certify(&mut client).await.0, "CN=kube issuer 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_source_streams_a_changed_issuer_and_trust_bundle() {
    let (kube, pki, controller, _kc) = start().await;
    let issuer = mint::new_issuer(&pki.anchor, &CaProfile::new("kube issuer 1", YEAR)).unwrap();
    kube.apply_typed(&issuer_secret(&issuer, &issuer)).unwrap();
    kube.apply_typed(&bundle_map(&[&pki.anchor])).unwrap();
    wait_until("controller never became ready", Duration::from_secs(10), async || ready_status(&controller).await == 200).await;
    let mut client = identity_client(&controller, &pki.anchor);
    let mut stream = client.watch_trust_bundle(pb::WatchTrustBundleRequest {}).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.anchors_der, vec![pki.anchor.cert_der.to_vec()]);
    assert_eq!(first.issuer_fingerprint, fingerprint(&issuer.cert_der));

    // A new issuer with the same bundle is announced on the stream all the same.
    let issuer2 = mint::new_issuer(&pki.anchor, &CaProfile::new("kube issuer 2", YEAR)).unwrap();
    kube.apply_typed(&issuer_secret(&issuer2, &issuer2)).unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(3), stream.message()).await.expect("no announcement within 3 s").unwrap().unwrap();
    assert_eq!((msg.version.as_str(), msg.issuer_fingerprint), (first.version.as_str(), fingerprint(&issuer2.cert_der)));

    let next = mint::new_anchor(&CaProfile::new("next anchor", YEAR)).unwrap();
    kube.apply_typed(&bundle_map(&[&pki.anchor, &next])).unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(3), stream.message()).await.expect("no bundle within 3 s").unwrap().unwrap();
    assert_eq!(msg.anchors_der, vec![pki.anchor.cert_der.to_vec(), next.cert_der.to_vec()]);
    assert_ne!(msg.version, first.version);
}
