//! The typed REST client (`meshfleet-client`) against the real server: what the simulator and,
//! later, the CLI rely on.

use std::collections::BTreeMap;

use meshfleet_client::{Client, Error};
use secrecy::{ExposeSecret, SecretString};

use crate::helpers::{Engine, TestApp};
use crate::on_both_engines;

on_both_engines!(the_client_signs_up_connects_clusters_and_reads_health);

async fn the_client_signs_up_connects_clusters_and_reads_health(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let password = SecretString::from("correct horse battery staple".to_owned());
    let client = Client::signup(&app.base, "ada@example.com", &password, "Acme").await.unwrap();
    let labels = BTreeMap::from([("env".to_owned(), "prod".to_owned())]);
    let created = client.create_cluster("prod-eu-1", &labels).await.unwrap();
    assert!(created.bootstrap_token.token.starts_with("mfb_"));
    assert_eq!((created.cluster.status.as_str(), &created.cluster.labels), ("pending", &labels));

    // Refusals carry the API's problem, with the offending field.
    match client.create_cluster("prod-eu-1", &labels).await {
        Err(Error::Api { status: 409, problem: Some(p), .. }) => {
            assert_eq!((p.kind.as_str(), p.errors[0].field.as_str()), ("/problems/name-taken", "name"), "{p:?}")
        }
        other => panic!("expected a 409 problem, got {:?}", other.map(|c| c.cluster.name)),
    }
    let wrong = Client::login(&app.base, "ada@example.com", &SecretString::from("not the password".to_owned())).await;
    assert!(matches!(wrong, Err(Error::Api { status: 401, .. })), "{:?}", wrong.err());

    let again = Client::login(&app.base, "ada@example.com", &password).await.unwrap();
    let listed = again.list_clusters().await.unwrap();
    assert_eq!(listed.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["prod-eu-1"]);
    let boot = again.bootstrap(&created.cluster.id).await.unwrap();
    assert!(boot.token.expose_secret().starts_with("mfb_") && boot.ca_pem.contains("BEGIN CERTIFICATE"), "{}", boot.gateway_address);

    let health = again.cluster_health(&created.cluster.id).await.unwrap();
    assert_eq!((health.health.as_str(), health.findings[0].check.as_str()), ("pending", "agent"));
    let fleet = again.fleet_health().await.unwrap();
    assert_eq!((fleet.summary.pending, fleet.clusters.len()), (1, 1));
}
