//! Automatic upgrades (`meshfleet_server::rollouts::proposals`): a cluster whose upgrade policy
//! turns automatic is proposed into a rollout to the newest release on its channel, once while
//! that rollout is open; aborted, that release is never proposed to it again (its events say
//! so), while a newer one added through the operator API is.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Digest;

use crate::helpers::{Engine, Login, TestApp, TestDb};
use crate::on_both_engines;
use crate::rollouts::{report, rollout_until, until};

on_both_engines!(automatic_clusters_are_proposed_their_newest_release_and_an_aborted_one_never_again);

const OPERATOR_TOKEN: &str = "op-7c1e9a42d05b38";

async fn rollouts(app: &TestApp, owner: &Login) -> Vec<Value> {
    let (status, list) = app.get("/api/v1/rollouts", &owner.access).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list.as_array().unwrap().clone()
}

async fn events(app: &TestApp, owner: &Login, cluster: &str) -> Vec<Value> {
    let (_, ev) = app.get(&format!("/api/v1/clusters/{cluster}/events"), &owner.access).await;
    ev["items"].as_array().unwrap().clone()
}

async fn automatic_clusters_are_proposed_their_newest_release_and_an_aborted_one_never_again(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.yaml");
    std::fs::write(&catalog, "releases:\n- {version: 2.0.0, released_on: 2026-11-01}\n- {version: 2.1.0, released_on: 2026-12-01}\n").unwrap();
    let app = TestApp::spawn_with(TestDb::new(engine).await, |c| {
        c.release_catalog = Some(catalog.clone());
        c.operator_token_sha256 = Some(sha2::Sha256::digest(OPERATOR_TOKEN).into());
        c.upgrade_proposals = Duration::from_millis(100);
        // These agents send no heartbeats; they must not turn stale during the test.
        c.stale_after = Duration::from_secs(600);
        c.disconnected_after = Duration::from_secs(1200);
    })
    .await;
    let owner = app.owner("ada@example.com").await;
    let mut streams = Vec::new();
    let mut ids = Vec::new();
    for name in ["auto-1", "by-hand"] {
        let (id, agent) = crate::gateway::registered(&app, &owner, name).await;
        let mut stream = crate::gateway::Stream::open(&app, &agent).await.unwrap();
        report(&mut stream, "2.0.0", "2.0.0").await;
        streams.push(stream);
        ids.push(id);
    }
    let auto = ids[0].clone();
    let (status, _) = app.call(Method::PATCH, &format!("/api/v1/clusters/{auto}"), Some(&owner.access), Some(json!({ "labels": { "ring": "auto" } }))).await;
    assert_eq!(status, StatusCode::OK);

    // Manual: nothing is proposed, however many looks pass.
    let (status, policy) = app.post("/api/v1/upgrade-policies", &owner.access, json!({ "name": "fleet", "selector": "ring=auto" })).await;
    assert_eq!(status, StatusCode::CREATED, "{policy}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(rollouts(&app, &owner).await.is_empty());

    // Automatic, with 2.1.0 in the catalog already: proposed, by the policy, that cluster only.
    let pid = policy["id"].as_str().unwrap();
    let (status, body) = app
        .call(
            Method::PUT,
            &format!("/api/v1/upgrade-policies/{pid}"),
            Some(&owner.access),
            Some(json!({ "name": "fleet", "selector": "ring=auto", "mode": "automatic" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let proposed = until("a rollout proposed", 30, async || rollouts(&app, &owner).await.first().cloned()).await;
    assert_eq!((proposed["target_version"].as_str(), proposed["created_by"].as_str()), (Some("2.1.0"), Some("automatic policy")), "{proposed}");
    assert_eq!(proposed["selector"], "ring=auto");
    let clusters: Vec<&str> = proposed["clusters"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(clusters, [auto.as_str()], "{proposed}");
    let id = proposed["id"].as_str().unwrap().to_owned();
    let (_, audit) = app.get("/api/v1/audit?limit=50", &owner.access).await;
    let start = audit["items"].as_array().unwrap().iter().find(|e| e["action"] == "rollout.start").cloned().unwrap_or_default();
    assert_eq!((start["actor_kind"].as_str(), start["actor_id"].as_str()), (Some("service"), Some("automatic policy")), "{audit}");

    // It runs like any other; its step is in the cluster's events. The agent here does not
    // answer commands, so the cluster stays in its control-plane step.
    rollout_until(&app, &owner, &id, "the upgrade under way", |r| r["clusters"][0]["phase"] == "control_plane").await;
    let ev = events(&app, &owner, &auto).await;
    let step = ev.iter().find(|e| e["reason"] == "RolloutControlPlane").unwrap_or_else(|| panic!("{ev:?}"));
    assert_eq!((step["type"].as_str(), step["object"].as_str()), (Some("Normal"), Some(format!("rollout/{id}").as_str())));
    assert!(step["message"].as_str().unwrap().contains("control plane to 2.1.0"), "{step}");
    // Open, it is not proposed a second time.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(rollouts(&app, &owner).await.len(), 1);

    // Aborted: 2.1.0 is not proposed to it again, and its events say so.
    let (status, aborted) = app.call(Method::POST, &format!("/api/v1/rollouts/{id}/abort"), Some(&owner.access), None).await;
    assert_eq!(status, StatusCode::OK, "{aborted}");
    let ev = events(&app, &owner, &auto).await;
    let gone = ev.iter().find(|e| e["reason"] == "RolloutAborted").unwrap_or_else(|| panic!("{ev:?}"));
    assert_eq!(gone["type"], "Warning");
    assert!(gone["message"].as_str().unwrap().contains("2.1.0 will not be proposed to it again automatically"), "{gone}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rollouts(&app, &owner).await.len(), 1, "the aborted release is not proposed again");

    // A newer release from the operator API is proposed.
    let (status, added) = app.post("/api/v1/operator/releases", OPERATOR_TOKEN, json!({ "version": "2.2.0", "released_on": "2026-12-03" })).await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    let newer = until("2.2.0 proposed", 30, async || rollouts(&app, &owner).await.into_iter().find(|r| r["target_version"] == "2.2.0")).await;
    let clusters: Vec<&str> = newer["clusters"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(clusters, [auto.as_str()], "{newer}");
    assert_eq!(newer["clusters"][0]["hops"], json!(["2.2.0"]));
    // The manual cluster was never in one.
    for r in rollouts(&app, &owner).await {
        assert!(r["clusters"].as_array().unwrap().iter().all(|c| c["id"] != ids[1].as_str()), "{r}");
    }
}
