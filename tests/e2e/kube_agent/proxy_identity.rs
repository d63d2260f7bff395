//! What each meshed pod's proxy trusts and presents, end to end: the agent reads the real
//! proxies' admin `/identity` and reports it with each pod, and a proxy's renewed leaf reaches
//! the service in a Delta. The server does not store these fields yet, so the test looks at
//! what the agent reported (`Running::reported_pods`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshfleet_agent::v1;
use meshfleet_pki::mint::{self, CaMaterial, CaProfile};
use meshfleet_pki::verify::TrustBundle;
use meshfleet_test_support::process::within;

use super::mesh::Mesh;
use super::*;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Writes a file so the controller's polling never reads half of it.
fn replace(path: &std::path::Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Every meshed pod reported, each with its proxy's bundle and a leaf chaining to `anchor`.
fn reported_with_identity(a: &k8s::Running, s: &Setup, anchor: &str) -> Option<Vec<v1::Pod>> {
    let pods = a.reported_pods()?;
    let names: HashSet<String> = pods.iter().map(|p| p.name.clone()).collect();
    let complete = names == fake_meshed(&s.kube)
        && pods.iter().all(|p| p.bundle_fingerprints == [anchor] && p.leaf_anchor_fingerprint == anchor && p.leaf_not_after_unix_ms > now_ms());
    complete.then_some(pods)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reports_what_each_proxy_trusts_and_presents_and_follows_renewals() {
    let s = setup().await;
    assert!(within(Duration::from_secs(5), || async { fake_meshed(&s.kube).len() == 3 }).await.is_some(), "the mesh's pods exist");
    let mesh = Mesh::start(s.kube.clone(), &[("shop", "web"), ("shop", "api")]).await;
    mesh.wait_ready(3).await;
    let a = start_connected_agent(&s).await;
    let read = |f: &str| std::fs::read_to_string(mesh.dir.path().join(f)).unwrap();
    let bundle = TrustBundle::from_pem(read("ca-bundle.crt").as_bytes()).unwrap().fingerprints();
    assert_eq!(bundle.len(), 1, "the dev bundle holds one anchor");
    let anchor = bundle[0].clone();

    let took = within(Duration::from_secs(10), || async { reported_with_identity(&a, &s, &anchor).is_some() }).await;
    let before = reported_with_identity(&a, &s, &anchor).unwrap_or_else(|| panic!("reported: {:#?}", a.reported_pods()));
    eprintln!("every pod reported with its proxy's identity after {took:?}");
    assert_eq!(
        a.inventory.snapshot().pods.iter().map(|p| (&p.name, &p.leaf_anchor_fingerprint)).collect::<Vec<_>>(),
        before.iter().map(|p| (&p.name, &p.leaf_anchor_fingerprint)).collect::<Vec<_>>(),
        "a Snapshot carries them too"
    );

    // A new issuer under the same anchor: the controller picks it up and every proxy renews its
    // leaf at once. Leaves count in whole seconds, so the renewed ones expire later.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let root = CaMaterial::from_pem(&read("anchor.crt"), &read("anchor.key")).unwrap();
    let issuer = mint::new_issuer(&root, &CaProfile::new("meshfleet dev issuer 2", Duration::from_secs(86400))).unwrap();
    replace(&mesh.dir.path().join("issuer.key"), &issuer.key_pem);
    replace(&mesh.dir.path().join("issuer.crt"), &issuer.cert_pem);
    let renewed = || {
        reported_with_identity(&a, &s, &anchor)
            .is_some_and(|now| now.iter().all(|p| before.iter().any(|b| b.name == p.name && p.leaf_not_after_unix_ms > b.leaf_not_after_unix_ms)))
    };
    let took = within(Duration::from_secs(15), || async { renewed() }).await;
    assert!(took.is_some(), "renewed leaves reported: before {before:#?}, now {:#?}", a.reported_pods());
    eprintln!("renewed leaves reported after {took:?}");
    assert_eq!(s.kube.denials(), Vec::<String>::new());
    a.shutdown().await;
}
