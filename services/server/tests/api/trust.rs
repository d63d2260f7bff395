//! The organization's trust anchors and the issuers the gateway signs with them: uploads are
//! checked (each refusal its own problem type and field), keys are sealed and never returned,
//! and `SignIssuer` signs only for the calling agent's own open rotate-issuer command, only what
//! an issuer needs, only with its own organization's anchor.

use std::time::{Duration, SystemTime};

use meshfleet_agent::ClientConfig;
use meshfleet_agent_protocol::v1::SignIssuerRequest;
use meshfleet_pki::inspect::inspect;
use meshfleet_pki::mint::{self, CaProfile, LeafProfile};
use meshfleet_pki::pem::{certs_from_pem, fingerprint};
use meshfleet_pki::spiffe::WorkloadId;
use meshfleet_pki::verify::{check_issuer, TrustBundle};
use meshfleet_sim::pki::GatewayLink;
use meshfleet_sim::{synthetic_cluster, SharedCluster};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Row;
use tonic::Code;

use crate::gateway::{client, registered};
use crate::helpers::{assert_problem, Engine, Login, TestApp};
use crate::on_both_engines;

on_both_engines!(
    the_trust_domain_is_chosen_before_the_first_anchor,
    anchors_are_checked_sealed_and_never_show_their_key,
    issuers_are_signed_only_for_the_callers_own_open_rotation,
    a_rotation_runs_over_simulated_clusters_goes_on_without_one_excluded_and_aborts_from_retire,
);

const DAY: Duration = Duration::from_secs(86_400);

async fn set_trust_domain(app: &TestApp, access: &str, trust_domain: Value) -> (StatusCode, Value) {
    app.call(reqwest::Method::PUT, "/api/v1/trust-domain", Some(access), Some(json!({ "trust_domain": trust_domain }))).await
}

async fn the_trust_domain_is_chosen_before_the_first_anchor(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ops@example.com").await;
    let viewer = app.member(&owner, "viewer@example.com", "viewer").await;
    assert_eq!(app.get("/api/v1/trust-anchors", &owner.access).await.1["trust_domain"], "cluster.local");
    let (status, body) = set_trust_domain(&app, &viewer.access, json!("acme.example")).await;
    assert_problem(status, &body, 403, "forbidden", None);
    for bad in [json!(""), json!("Acme.example"), json!("acme example"), json!("acme/x"), json!("a".repeat(254)), json!(7)] {
        let (status, body) = set_trust_domain(&app, &owner.access, bad.clone()).await;
        assert!(status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::BAD_REQUEST, "{bad}: {status} {body}");
        assert_eq!(body["errors"][0]["field"], "trust_domain", "{bad}: {body}");
    }
    let (status, body) = set_trust_domain(&app, &owner.access, json!("prod.acme.example")).await;
    assert_eq!((status, body["trust_domain"].as_str()), (StatusCode::OK, Some("prod.acme.example")), "{body}");
    let (_, anchor) = app.post("/api/v1/trust-anchors", &owner.access, json!({})).await;
    assert_eq!(anchor["subject"], "CN=meshfleet trust anchor prod.acme.example", "anchors are made for it: {anchor}");
    let (status, body) = set_trust_domain(&app, &owner.access, json!("other.example")).await;
    assert_problem(status, &body, 409, "anchors-exist", Some("trust_domain"));
    assert_eq!(app.get("/api/v1/trust-anchors", &owner.access).await.1["trust_domain"], "prod.acme.example");
    let audit = app.get("/api/v1/audit", &owner.access).await.1.to_string();
    assert!(audit.contains("trust_domain.update"), "{audit}");
    // Another organization keeps its own.
    let other = app.owner("mallory@example.com").await;
    assert_eq!(app.get("/api/v1/trust-anchors", &other.access).await.1["trust_domain"], "cluster.local");
}

async fn upload(app: &TestApp, access: &str, cert: &str, key: &str) -> (StatusCode, Value) {
    app.post("/api/v1/trust-anchors/upload", access, json!({ "certificate_pem": cert, "private_key_pem": key })).await
}

async fn anchors_are_checked_sealed_and_never_show_their_key(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("pki@example.com").await;
    let (_, empty) = app.get("/api/v1/trust-anchors", &owner.access).await;
    assert_eq!(empty, json!({ "trust_domain": "cluster.local", "anchors": [] }));
    assert_eq!(app.get("/api/v1/certificates/next-expiry", &owner.access).await.1, json!({ "next": null }));

    // Every refusal names its reason and the input at fault.
    let good = mint::new_anchor(&CaProfile::new("ours", 365 * DAY)).unwrap();
    let other = mint::new_anchor(&CaProfile::new("other", DAY)).unwrap();
    let issuer = mint::new_issuer(&good, &CaProfile::new("an intermediate", DAY)).unwrap();
    let mut expired_profile = CaProfile::new("expired", DAY);
    (expired_profile.not_before, expired_profile.not_after) = (SystemTime::now() - 3 * DAY, SystemTime::now() - DAY);
    let expired = mint::new_anchor(&expired_profile).unwrap();
    let key = mint::new_key().unwrap();
    let leaf =
        mint::issue_leaf(&good.signer().unwrap(), &key, &LeafProfile::workload(&WorkloadId::new("td", "ns", "sa").unwrap(), SystemTime::now() + DAY)).unwrap();
    for (cert, key, kind, field) in [
        (good.cert_pem.as_str(), other.key_pem.as_str(), "key-mismatch", "private_key_pem"),
        (&leaf.pem(), &key.serialize_pem(), "not-a-ca", "certificate_pem"),
        (&issuer.cert_pem, &issuer.key_pem, "not-self-signed", "certificate_pem"),
        (&expired.cert_pem, &expired.key_pem, "expired", "certificate_pem"),
        ("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", &good.key_pem, "malformed-certificate", "certificate_pem"),
        (&good.cert_pem, "no key here", "malformed-key", "private_key_pem"),
    ] {
        let (status, body) = upload(&app, &owner.access, cert, key).await;
        assert_problem(status, &body, 422, kind, Some(field));
    }
    let viewer = app.member(&owner, "viewer@example.com", "viewer").await;
    let (status, _) = upload(&app, &viewer.access, &good.cert_pem, &good.key_pem).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, anchor) = upload(&app, &owner.access, &good.cert_pem, &good.key_pem).await;
    assert_eq!(status, StatusCode::CREATED, "{anchor}");
    assert_eq!((anchor["state"].as_str(), anchor["source"].as_str()), (Some("active"), Some("uploaded")));
    assert_eq!(anchor["fingerprint"], fingerprint(&good.cert_der));
    let (status, body) = app.post("/api/v1/trust-anchors", &owner.access, json!({})).await;
    assert_problem(status, &body, 409, "anchor-exists", None);
    let (status, body) = app.post("/api/v1/trust-anchors", &owner.access, json!({ "lifetime_days": 0 })).await;
    assert_problem(status, &body, 422, "validation", Some("lifetime_days"));

    // Listed with its certificate, never its key: not in the API, not in the database.
    let (_, listed) = app.get("/api/v1/trust-anchors", &owner.access).await;
    assert_eq!(listed["anchors"].as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains("PRIVATE KEY"));
    let key_body: String = good.key_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut conn = app.state.db.pool.acquire().await.unwrap();
    let sealed: String = sqlx::query("SELECT key_sealed FROM trust_anchors").fetch_one(&mut *conn).await.unwrap().try_get("key_sealed").unwrap();
    assert!(sealed.starts_with("v1.") && !sealed.contains("PRIVATE") && !sealed.contains(&key_body[..40]));
    drop(conn);
    let (_, audit) = app.get("/api/v1/audit", &owner.access).await;
    assert!(audit.to_string().contains("trust_anchor.uploaded"), "{audit}");

    // Another organization generates its own, with the service's defaults.
    let other_org = app.owner("other@example.com").await;
    let (status, generated) = app.post("/api/v1/trust-anchors", &other_org.access, json!({ "lifetime_days": 30 })).await;
    assert_eq!(status, StatusCode::CREATED, "{generated}");
    let cert = inspect(&certs_from_pem(generated["certificate_pem"].as_str().unwrap().as_bytes()).unwrap()[0]).unwrap();
    assert!(cert.is_ca && cert.subject.contains("meshfleet trust anchor cluster.local"));
    assert!((cert.not_after_unix - cert.not_before_unix - 30 * 86_400 - 60).abs() <= 1, "30 days (and the backdated minute)");
    let (_, mine) = app.get("/api/v1/trust-anchors", &owner.access).await;
    assert_eq!(mine, listed, "each organization sees only its own anchors");
    let (_, next) = app.get("/api/v1/certificates/next-expiry", &owner.access).await;
    assert_eq!((next["next"]["kind"].as_str(), next["next"]["fingerprint"].as_str()), (Some("trust-anchor"), anchor["fingerprint"].as_str()), "{next}");
}

async fn rotate_issuer(app: &TestApp, access: &str, cluster: &str) -> String {
    let (status, command) = app.post(&format!("/api/v1/clusters/{cluster}/commands"), access, json!({ "kind": "rotate-issuer" })).await;
    assert_eq!(status, StatusCode::CREATED, "{command}");
    command["id"].as_str().unwrap().to_owned()
}

/// A CSR for `key` asking for a CA with `path_len` and, when given, a SAN URI and a subject.
fn csr_asking(key: &meshfleet_pki::KeyPair, path_len: Option<u8>, uri: Option<&str>) -> Vec<u8> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, "root of everything");
    if let Some(n) = path_len {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(n));
    }
    if let Some(uri) = uri {
        params.subject_alt_names.push(rcgen::SanType::URI(uri.try_into().unwrap()));
    }
    params.serialize_request(key).unwrap().der().to_vec()
}

async fn issuers_are_signed_only_for_the_callers_own_open_rotation(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let (alice, bob) = (app.owner("alice@example.com").await, app.owner("bob@example.com").await);
    let (a_anchor, b_anchor) =
        (app.post("/api/v1/trust-anchors", &alice.access, json!({})).await.1, app.post("/api/v1/trust-anchors", &bob.access, json!({})).await.1);
    let (a_cluster, a_agent) = registered(&app, &alice, "a-prod").await;
    let (b_cluster, b_agent) = registered(&app, &bob, "b-prod").await;
    let a_command = rotate_issuer(&app, &alice.access, &a_cluster).await;
    let (_, ping) = app.post(&format!("/api/v1/clusters/{b_cluster}/commands"), &bob.access, json!({ "kind": "ping" })).await;
    let key = mint::new_key().unwrap();
    let sign = |id: &str, csr: Vec<u8>| SignIssuerRequest { command_id: id.into(), csr_der: csr };
    let good_csr = meshfleet_pki::csr::new_csr(&key).unwrap();

    // Bob's agent cannot use Alice's rotation, its own ping, a made-up id, or no certificate.
    let mut b = client(&app, Some(&b_agent)).await;
    for id in [a_command.as_str(), ping["id"].as_str().unwrap(), "0190a0b0-0000-7000-8000-000000000000", "not an id"] {
        let refused = b.sign_issuer(sign(id, good_csr.clone())).await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{id}: {refused:?}");
    }
    let anonymous = client(&app, None).await.sign_issuer(sign(&a_command, good_csr.clone())).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    // Alice's agent asking for more than an issuer is refused, and told why.
    let mut a = client(&app, Some(&a_agent)).await;
    let too_much = a.sign_issuer(sign(&a_command, csr_asking(&key, Some(1), None))).await.unwrap_err();
    assert_eq!(too_much.code(), Code::InvalidArgument);
    assert!(too_much.message().contains("path length"), "{}", too_much.message());
    let elsewhere = a.sign_issuer(sign(&a_command, csr_asking(&key, None, Some("spiffe://bank.example/ns/x")))).await.unwrap_err();
    assert_eq!(elsewhere.code(), Code::InvalidArgument);
    assert!(elsewhere.message().contains("trust domain"), "{}", elsewhere.message());

    // What it may have, the service decides: an issuer of path length 0 under Alice's anchor.
    let signed = a.sign_issuer(sign(&a_command, csr_asking(&key, Some(0), Some("spiffe://cluster.local/ns/x")))).await.unwrap().into_inner();
    assert_eq!(signed.anchor_fingerprint, a_anchor["fingerprint"].as_str().unwrap());
    let cert = inspect(&certs_from_pem(signed.issuer_pem.as_bytes()).unwrap()[0]).unwrap();
    assert!(cert.is_ca && cert.subject.contains(&format!("meshfleet issuer {a_cluster}")) && !cert.subject.contains("root of everything"), "{}", cert.subject);
    assert!(cert.sans.is_empty(), "no name from the CSR is copied: {:?}", cert.sans);
    let days = (cert.not_after_unix - cert.not_before_unix) as f64 / 86_400.0;
    assert!((days - 30.0).abs() < 0.01, "the default issuer lifetime, 30 days: {days}");
    let ours = TrustBundle::from_pem(signed.trust_bundle_pem.as_bytes()).unwrap();
    assert_eq!(ours.fingerprints(), [a_anchor["fingerprint"].as_str().unwrap()]);
    check_issuer(signed.issuer_pem.as_bytes(), key.serialize_pem().as_bytes(), &ours, SystemTime::now()).expect("a usable issuer under Alice's anchor");
    let theirs = TrustBundle::from_pem(b_anchor["certificate_pem"].as_str().unwrap().as_bytes()).unwrap();
    assert!(check_issuer(signed.issuer_pem.as_bytes(), key.serialize_pem().as_bytes(), &theirs, SystemTime::now()).is_err(), "not under Bob's");
    // An issuer of path length 0 signs leaves, never another CA.
    let sub = mint::CaMaterial::from_pem(&signed.issuer_pem, &key.serialize_pem()).unwrap();
    let nested = mint::new_issuer(&sub, &CaProfile::new("nested", DAY)).unwrap();
    let probe_key = mint::new_key().unwrap();
    let probe = mint::issue_leaf(
        &nested.signer().unwrap(),
        &probe_key,
        &LeafProfile::workload(&WorkloadId::new("cluster.local", "x", "y").unwrap(), SystemTime::now() + DAY),
    )
    .unwrap();
    let chain = [probe.der.clone(), nested.cert_der.clone(), certs_from_pem(signed.issuer_pem.as_bytes()).unwrap()[0].clone()];
    let now = rustls_pki_types::UnixTime::now();
    assert!(meshfleet_pki::verify::verify_chain(&chain[0], &chain[1..], ours.roots(), now).is_err(), "path length 0 holds");

    let (_, held) = app.get(&format!("/api/v1/clusters/{a_cluster}/certificates"), &alice.access).await;
    let record = &held["signed_by_service"];
    assert_eq!(
        (record["fingerprint"].as_str(), record["command_id"].as_str()),
        (Some(signed.issuer_fingerprint.as_str()), Some(a_command.as_str())),
        "{record}"
    );
    let (status, _) = app.get(&format!("/api/v1/clusters/{a_cluster}/certificates"), &bob.access).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, audit) = app.get("/api/v1/audit", &alice.access).await;
    assert!(audit.to_string().contains("issuer.sign"), "{audit}");

    // Signed at once, issuers are recorded together (one transaction of a few statements):
    // a refusal stays its own, and of two issuers for one cluster one record stands.
    let b_command = rotate_issuer(&app, &bob.access, &b_cluster).await;
    let b_csr = meshfleet_pki::csr::new_csr(&mint::new_key().unwrap()).unwrap();
    let (mut a2, mut b2) = (a.clone(), b.clone());
    let (first, second, bobs, stolen) = tokio::join!(
        a.sign_issuer(sign(&a_command, good_csr.clone())),
        a2.sign_issuer(sign(&a_command, good_csr.clone())),
        b.sign_issuer(sign(&b_command, b_csr)),
        b2.sign_issuer(sign(&a_command, good_csr.clone())),
    );
    let alices = [first.unwrap().into_inner().issuer_fingerprint, second.unwrap().into_inner().issuer_fingerprint];
    let bobs = bobs.unwrap().into_inner();
    assert_eq!(bobs.anchor_fingerprint, b_anchor["fingerprint"].as_str().unwrap());
    assert_eq!(stolen.unwrap_err().code(), Code::FailedPrecondition);
    let (_, held) = app.get(&format!("/api/v1/clusters/{a_cluster}/certificates"), &alice.access).await;
    let stands = held["signed_by_service"]["fingerprint"].as_str().unwrap_or_default().to_owned();
    assert!(alices.contains(&stands), "{stands} is one of {alices:?}");
    let (_, held) = app.get(&format!("/api/v1/clusters/{b_cluster}/certificates"), &bob.access).await;
    assert_eq!(held["signed_by_service"]["fingerprint"].as_str(), Some(bobs.issuer_fingerprint.as_str()), "{held}");
}

/// A simulated cluster connected to `app` as `name`: its client runs, linked so it answers the
/// certificate commands (it makes real keys and CSRs and checks what it gets back).
async fn simulated(app: &TestApp, owner: &Login, name: &str, seed: u64) -> (String, SharedCluster, meshfleet_agent::AgentHandle) {
    let created = app.create_cluster(owner, name, json!({})).await;
    let gateway = format!("https://{}", app.state_gateway());
    let ca = app.state.pki.gateway_ca_pem.clone();
    let identity = meshfleet_agent::register(&gateway, &ca, created["bootstrap_token"]["token"].as_str().unwrap(), "0.1.0-test").await.unwrap();
    let cluster = SharedCluster::new(synthetic_cluster(seed));
    let handle = meshfleet_agent::spawn(ClientConfig::new(&gateway, &ca), identity, std::sync::Arc::new(cluster.clone()));
    cluster.link(GatewayLink { reporter: handle.reporter(), state_path: None });
    assert!(handle.wait_until(Duration::from_secs(10), |s| s.connected && s.last_acked_seq > 0).await, "{name} connects");
    (created["cluster"]["id"].as_str().unwrap().to_owned(), cluster, handle)
}

/// Polls `path` until `done` holds for what it answers (20 s at most); returns the last answer.
async fn poll(app: &TestApp, access: &str, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..200 {
        let (_, body) = app.get(path, access).await;
        if done(&body) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} never got there: {}", app.get(path, access).await.1);
}

/// The demo fleet answers rotate-issuer and set-trust-bundle as the real agent does, so a whole
/// trust-anchor rotation runs over simulated clusters; one that never got an issuer from the
/// service refuses a bundle its issuer would not verify under, says so, and once an admin
/// excludes it the rotation finishes without it.
async fn a_rotation_runs_over_simulated_clusters_goes_on_without_one_excluded_and_aborts_from_retire(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ops@example.com").await;
    let mut fleet = Vec::new();
    for (i, name) in ["sim-a", "sim-b", "sim-c"].into_iter().enumerate() {
        fleet.push(simulated(&app, &owner, name, i as u64 + 11).await);
    }
    let first = app.post("/api/v1/trust-anchors", &owner.access, json!({})).await.1["fingerprint"].as_str().unwrap().to_owned();
    for (cluster, sim, _) in &fleet[..2] {
        let id = rotate_issuer(&app, &owner.access, cluster).await;
        let done = poll(&app, &owner.access, &format!("/api/v1/clusters/{cluster}/commands/{id}"), |c| {
            ["succeeded", "failed", "expired"].iter().any(|s| c["state"] == *s)
        })
        .await;
        assert_eq!((done["state"].as_str(), done["output"]["anchor_fingerprint"].as_str()), (Some("succeeded"), Some(first.as_str())), "{done}");
        assert_eq!(sim.lock().pki().issuer_anchor().as_deref(), Some(first.as_str()));
        // The simulated proxies moved to it, as the agent reports them.
        let certs = poll(&app, &owner.access, &format!("/api/v1/clusters/{cluster}/certificates"), |c| c["issuer"]["anchor_state"] == "active").await;
        assert_eq!(certs["signed_by_service"]["fingerprint"], done["output"]["issuer_fingerprint"], "{certs}");
        assert_eq!(certs["proxies"]["leaf_not_on_active_anchor"], 0, "{certs}");
    }

    let r = app.post("/api/v1/trust-anchors/rotations", &owner.access, json!({})).await.1;
    let (id, second) = (r["id"].as_str().unwrap().to_owned(), r["new_anchor_fingerprint"].as_str().unwrap().to_owned());
    let path = format!("/api/v1/trust-anchors/rotations/{id}");
    let unmanaged = fleet[2].0.clone();
    let progress_of = |r: &Value, cluster: &str| r["clusters"].as_array().unwrap().iter().find(|c| c["cluster_id"] == cluster).cloned().unwrap_or_default();
    let stuck = poll(&app, &owner.access, &path, |r| progress_of(r, &unmanaged)["state"] == "failed").await;
    assert!(progress_of(&stuck, &unmanaged)["message"].as_str().unwrap().contains("no issuer signed by the service"), "{stuck}");
    assert_eq!(stuck["phase"], "distribute", "a refusal holds the phase: {stuck}");
    let (status, _) = app.post(&format!("{path}/exclude"), &owner.access, json!({ "cluster_id": unmanaged })).await;
    assert_eq!(status, StatusCode::OK);
    let done = poll(&app, &owner.access, &path, |r| r["phase"] == "done").await;
    for (cluster, sim, _) in &fleet[..2] {
        assert_eq!(progress_of(&done, cluster)["state"], "done", "{done}");
        let pki = sim.lock().pki().clone();
        assert_eq!((pki.bundle_fingerprints(), pki.issuer_anchor()), (vec![second.clone()], Some(second.clone())), "moved to the new anchor alone");
    }
    assert_eq!(progress_of(&done, &unmanaged)["state"], "excluded");
    assert!(!fleet[2].1.lock().pki().is_managed(), "the excluded cluster was left as it was");

    // Aborted while the old anchor is leaving bundles: it comes back to every bundle first,
    // then issuers and bundles walk back as from reissue.
    let r = app.post("/api/v1/trust-anchors/rotations", &owner.access, json!({})).await.1;
    let path = format!("/api/v1/trust-anchors/rotations/{}", r["id"].as_str().unwrap());
    app.post(&format!("{path}/exclude"), &owner.access, json!({ "cluster_id": unmanaged })).await;
    let mut phase = Value::Null;
    for _ in 0..1000 {
        phase = app.get(&path, &owner.access).await.1["phase"].clone();
        if phase != "distribute" && phase != "reissue" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(phase, "retire", "caught in retire");
    let (status, aborted) = app.post(&format!("{path}/abort"), &owner.access, json!({})).await;
    assert_eq!((status, aborted["phase"].as_str()), (StatusCode::OK, Some("rollback_retire")), "{aborted}");
    let (status, again) = app.post(&format!("{path}/abort"), &owner.access, json!({})).await;
    assert_problem(status, &again, 409, "already-aborted", None);
    poll(&app, &owner.access, &path, |r| r["phase"] == "aborted").await;
    for (_, sim, _) in &fleet[..2] {
        let pki = sim.lock().pki().clone();
        assert_eq!((pki.bundle_fingerprints(), pki.issuer_anchor()), (vec![second.clone()], Some(second.clone())), "back on the anchor before the abort");
    }
    let anchors = app.get("/api/v1/trust-anchors", &owner.access).await.1;
    let active: Vec<&Value> = anchors["anchors"].as_array().unwrap().iter().filter(|a| a["state"] == "active").collect();
    assert_eq!((active.len(), active[0]["fingerprint"].as_str()), (1, Some(second.as_str())), "{anchors}");
    for (_, _, handle) in fleet {
        handle.shutdown().await;
    }
}
