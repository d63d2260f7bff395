//! Fleet health as data: `GET /api/v1/clusters/{id}/health` and `GET /api/v1/fleet/health`
//! give the findings the dashboard's overview shows, with the thresholds from the settings.

use std::time::Duration;

use meshfleet_agent_protocol::v1::{self, agent_message::Body};
use reqwest::StatusCode;
use serde_json::Value;

use crate::gateway::{metrics, msg, pod, registered, snapshot, Stream};
use crate::helpers::{Engine, Login, TestApp, TestDb};
use crate::on_both_engines;

on_both_engines!(
    findings_are_served_worst_first_with_when_they_began,
    thresholds_are_settings,
    proxies_two_major_versions_behind_are_critical,
    a_cluster_clock_away_from_the_service_is_a_finding,
);

const DAY_MS: i64 = 86_400_000;

/// A connected cluster whose issuer expires in two days, with one of two controller replicas
/// ready, one outdated proxy, and a success rate of 90% (the last report after the minute).
pub(crate) async fn troubled(app: &TestApp, owner: &Login) -> String {
    let (cluster, id) = registered(app, owner, "troubled").await;
    let mut stream = Stream::open(app, &id).await.unwrap();
    let now = app.state.clock.now_ms();
    let Body::Snapshot(mut s) = snapshot(vec![pod("shop", "web-1", "Deployment/web", "0.1.0"), pod("shop", "web-2", "Deployment/web", "0.0.9")]) else {
        unreachable!()
    };
    let inventory = s.inventory.as_mut().unwrap();
    inventory.control_plane = Some(v1::ControlPlane { version: "0.1.0".into(), replicas: 2, ready_replicas: 1, components: vec![] });
    inventory.certificates[0].not_after_unix_ms = now + 2 * DAY_MS;
    stream.report(Body::Snapshot(s)).await;
    let minute = (now / 60_000) * 60_000;
    let last = stream.report(metrics(minute - 60_000, 100, 10)).await;
    stream.acked(last).await;
    std::mem::forget(stream); // stays connected for the rest of the test
    cluster
}

async fn health(app: &TestApp, who: &Login, path: &str, until: impl Fn(&Value) -> bool) -> Value {
    // Heard-from times are written once a second: a loaded machine can take several.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        let (status, body) = app.get(path, &who.access).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if until(&body) {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} never became what the test waits for");
}

async fn findings_are_served_worst_first_with_when_they_began(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let viewer = app.member(&owner, "vic@example.com", "viewer").await;
    let cluster = troubled(&app, &owner).await;
    app.create_cluster(&owner, "waiting", serde_json::json!({})).await;

    let path = format!("/api/v1/clusters/{cluster}/health");
    let h = health(&app, &viewer, &path, |h| h["findings"].as_array().is_some_and(|f| f.len() == 4)).await;
    assert_eq!((h["name"].as_str(), h["status"].as_str(), h["health"].as_str()), (Some("troubled"), Some("connected"), Some("critical")), "{h}");
    let found: Vec<(&str, &str, &str, Value)> = h["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["check"].as_str().unwrap(), f["severity"].as_str().unwrap(), f["object"].as_str().unwrap(), f["health"].clone()))
        .collect();
    assert_eq!(
        found,
        [
            ("success_rate", "critical", "Cluster", Value::from("critical")),
            ("control_plane", "warning", "ControlPlane", Value::from("degraded")),
            ("certificate_expiry", "warning", "Certificate/issuer", Value::from("expiring")),
            ("proxy_versions", "info", "Proxies", Value::Null),
        ],
        "{h}"
    );
    assert_eq!(h["findings"][0]["message"], "success rate 90.0%");
    assert_eq!(h["findings"][3]["message"], "1 of 2 proxies are not at the control plane's 0.1.0");
    // An expiring certificate's finding began when it entered the warning period (7 days).
    let since = chrono::DateTime::parse_from_rfc3339(h["findings"][2]["since"].as_str().unwrap()).unwrap().timestamp_millis();
    let not_after = app.state.clock.now_ms() + 2 * DAY_MS;
    assert!((since - (not_after - 7 * DAY_MS)).abs() < 60_000, "{h}");
    assert!(h["findings"][2]["message"].as_str().unwrap().starts_with("the issuer certificate expires in 1 d 23 h"), "{h}");

    let (_, fleet) = app.get("/api/v1/fleet/health", &viewer.access).await;
    assert_eq!(fleet["summary"], serde_json::json!({ "critical": 1, "degraded": 0, "expiring": 0, "pending": 1, "healthy": 0 }), "{fleet}");
    let names: Vec<&str> = fleet["clusters"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["troubled", "waiting"], "{fleet}");
    assert_eq!(fleet["clusters"][1]["findings"][0]["message"], "no agent connected yet");

    // The dashboard shows the same deciding finding.
    let session = app.dashboard_session("ada@example.com").await;
    let page = app.page(&session.cookie, "/fleet").await;
    assert!(page.contains("success rate 90.0%"), "{page}");

    // Another organization's cluster, or none at all: 404, as for every cluster route.
    let mallory = app.owner("mallory@example.com").await;
    let (status, _) = app.get(&path, &mallory.access).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app.get(&format!("/api/v1/clusters/{}/health", uuid::Uuid::now_v7()), &owner.access).await;
    crate::helpers::assert_problem(status, &body, 404, "not-found", None);
    let (_, theirs) = app.get("/api/v1/fleet/health", &mallory.access).await;
    assert_eq!(theirs["clusters"], serde_json::json!([]), "{theirs}");
}

async fn thresholds_are_settings(engine: Engine) {
    let db = TestDb::new(engine).await;
    // 90% is only degraded when critical starts below 80%; a 1-day warning ignores the issuer.
    let app = TestApp::spawn_with(db, |c| {
        c.health.critical_below = 0.8;
        c.health.expiry_warning = Duration::from_secs(86_400);
    })
    .await;
    let owner = app.owner("ada@example.com").await;
    let cluster = troubled(&app, &owner).await;
    let path = format!("/api/v1/clusters/{cluster}/health");
    let h = health(&app, &owner, &path, |h| h["findings"].as_array().is_some_and(|f| f.len() == 3)).await;
    assert_eq!(h["health"], "degraded", "{h}");
    let checks: Vec<&str> = h["findings"].as_array().unwrap().iter().map(|f| f["check"].as_str().unwrap()).collect();
    assert_eq!(checks, ["success_rate", "control_plane", "proxy_versions"], "{h}");
}

async fn proxies_two_major_versions_behind_are_critical(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let (cluster, id) = registered(&app, &owner, "skewed").await;
    let mut stream = Stream::open(&app, &id).await.unwrap();
    let pods = vec![
        pod("shop", "web-1", "Deployment/web", "v2.3.0"),
        pod("shop", "web-2", "Deployment/web", "0.9.1"),
        pod("shop", "web-3", "Deployment/web", "1.8.0"),
    ];
    let Body::Snapshot(mut s) = snapshot(pods) else { unreachable!() };
    s.inventory.as_mut().unwrap().control_plane = Some(v1::ControlPlane { version: "2.3.0".into(), replicas: 1, ready_replicas: 1, components: vec![] });
    let last = stream.report(Body::Snapshot(s)).await;
    stream.acked(last).await;

    let path = format!("/api/v1/clusters/{cluster}/health");
    let h = health(&app, &owner, &path, |h| h["health"] == "critical").await;
    let skew = h["findings"].as_array().unwrap().iter().find(|f| f["check"] == "version_skew").unwrap_or_else(|| panic!("{h}"));
    assert_eq!((skew["severity"].as_str(), skew["object"].as_str()), (Some("critical"), Some("Proxies")), "{h}");
    assert_eq!(skew["message"], "1 proxy runs a version more than one major version from the control plane's 2.3.0 (as far as 0.9.1)");

    // The built-in rule fires at once (its "for" is 0 s).
    for _ in 0..100 {
        let (_, alerts) = app.get("/api/v1/alerts?state=firing", &owner.access).await;
        if alerts["items"].as_array().unwrap().iter().any(|a| a["rule"] == "version_skew" && a["severity"] == "critical") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no firing version_skew alert");
}

async fn a_cluster_clock_away_from_the_service_is_a_finding(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let (cluster, id) = registered(&app, &owner, "drifting").await;
    let stream = Stream::open(&app, &id).await.unwrap();
    let path = format!("/api/v1/clusters/{cluster}/health");
    let skew = |h: &Value| h["findings"].as_array().and_then(|f| f.iter().find(|f| f["check"] == "clock_skew").cloned());
    let heartbeat = |sent_at_unix_ms: i64| msg(0, Body::Heartbeat(v1::Heartbeat { sent_at_unix_ms }));

    // The agent's clock runs five minutes ahead; its heartbeat says so.
    stream.tx.send(heartbeat(app.state.clock.now_ms() + 300_000)).await.unwrap();
    let h = health(&app, &owner, &path, |h| skew(h).is_some()).await;
    let found = skew(&h).unwrap();
    assert_eq!((found["severity"].as_str(), found["health"].as_str(), found["object"].as_str()), (Some("warning"), Some("degraded"), Some("Clock")), "{h}");
    let message = found["message"].as_str().unwrap();
    // 300 s less the message's transit time.
    let secs: i64 = message.strip_prefix("the cluster's clock is ").and_then(|m| m.strip_suffix(" s ahead of the service's")).unwrap().parse().unwrap();
    assert!((295..=300).contains(&secs), "{message}");

    // Within the threshold (60 s) is no finding; the latest heartbeat is what counts.
    stream.tx.send(heartbeat(app.state.clock.now_ms() - 20_000)).await.unwrap();
    let h = health(&app, &owner, &path, |h| skew(h).is_none()).await;
    assert_eq!(h["health"], "healthy", "{h}");
    // Behind by two minutes.
    stream.tx.send(heartbeat(app.state.clock.now_ms() - 120_000)).await.unwrap();
    let h = health(&app, &owner, &path, |h| skew(h).is_some()).await;
    assert!(skew(&h).unwrap()["message"].as_str().unwrap().ends_with(" s behind the service's"), "{h}");
    std::mem::forget(stream);
}
