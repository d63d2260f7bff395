//! Alert evaluation: the built-in rules raise alerts from the health findings through pending
//! -> firing -> resolved, honour each organization's rule changes, and stay in their tenant.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::alert_delivery::{create_channel, verify, Receiver};
use crate::health::troubled;
use crate::helpers::{assert_problem, Engine, Login, TestApp, TestDb};
use crate::on_both_engines;

on_both_engines!(
    findings_raise_alerts_that_fire_after_their_for_duration_and_resolve,
    rules_are_per_organization_and_admin_only,
    a_firing_alert_and_its_resolution_reach_a_signed_webhook
);

pub(crate) async fn alerts(app: &TestApp, who: &Login, query: &str, until: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut last = Value::Null;
    for _ in 0..200 {
        let (status, body) = app.get(&format!("/api/v1/alerts{query}"), &who.access).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let items = body["items"].as_array().unwrap().clone();
        if until(&items) {
            return items;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (_, all) = app.get("/api/v1/alerts?state=all", &who.access).await;
    panic!("/api/v1/alerts{query} never became what the test waits for; last: {last}; all: {all}");
}

pub(crate) fn by_rule<'a>(items: &'a [Value], rule: &str) -> Option<&'a Value> {
    items.iter().find(|a| a["rule"] == rule)
}

/// A server evaluating alerts every 50 ms and delivering to 127.0.0.1 at once.
pub(crate) async fn spawn(engine: Engine) -> TestApp {
    TestApp::spawn_with(TestDb::new(engine).await, |c| {
        c.alert_evaluation = Duration::from_millis(50);
        c.alert_resolve_delay = Duration::from_secs(5);
        // The tests move the clock past "for" durations; the agent must not turn stale meanwhile.
        c.stale_after = Duration::from_secs(600);
        c.disconnected_after = Duration::from_secs(1200);
        c.alert_webhook_allow = "127.0.0.1".parse().unwrap();
        c.alert_retry_schedule = vec![Duration::ZERO];
    })
    .await
}

/// Turns off the workload objectives' success-rate rule: the troubled cluster's one workload
/// misses the default 99% too, and these tests count the alerts of the cluster-level checks.
pub(crate) async fn without_workload_objectives(app: &TestApp, who: &Login) {
    let off = json!({ "enabled": false });
    let (status, body) = app.call(Method::PUT, "/api/v1/alert-rules/workload_success_rate", Some(&who.access), Some(off)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn findings_raise_alerts_that_fire_after_their_for_duration_and_resolve(engine: Engine) {
    let app = spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    without_workload_objectives(&app, &owner).await;
    let cluster = troubled(&app, &owner).await;

    // The expiring issuer fires at once (its rule waits 0 s); the success rate, the control
    // plane and the outdated proxy wait for their "for" durations (60 s, 30 s, 5 min).
    let open = alerts(&app, &owner, "", |a| a.len() == 4).await;
    let cert = by_rule(&open, "certificate_expiry").unwrap();
    assert_eq!(
        (cert["state"].as_str(), cert["severity"].as_str(), cert["object"].as_str()),
        (Some("firing"), Some("warning"), Some("Certificate/issuer")),
        "{cert}"
    );
    assert_eq!(cert["cluster_id"], cluster.as_str());
    assert_eq!(cert["labels"]["cluster"], "troubled");
    assert_eq!(cert["fingerprint"].as_str().unwrap().len(), 16);
    for rule in ["success_rate", "control_plane", "proxy_versions"] {
        assert_eq!(by_rule(&open, rule).unwrap()["state"], "pending", "{rule}: {open:?}");
    }
    // No alert is raised for a cluster still waiting for its agent.
    app.create_cluster(&owner, "waiting", json!({})).await;

    // Past the control plane's 30 s the pending alert fires, keeping its id and start.
    let before = by_rule(&open, "control_plane").unwrap().clone();
    app.state.clock.advance(Duration::from_secs(31));
    let open = alerts(&app, &owner, "", |a| by_rule(a, "control_plane").is_some_and(|c| c["state"] == "firing")).await;
    let after = by_rule(&open, "control_plane").unwrap();
    assert_eq!((&after["id"], &after["starts_at"]), (&before["id"], &before["starts_at"]));
    assert!(after["fired_at"].is_string());
    assert_eq!(open.len(), 4, "{open:?}");

    // Turning the certificate rule off clears its alert: it resolves after the resolve delay.
    let (status, body) = app.call(Method::PUT, "/api/v1/alert-rules/certificate_expiry", Some(&owner.access), Some(json!({ "enabled": false }))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["enabled"], false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, firing) = app.get("/api/v1/alerts?state=firing", &owner.access).await;
    assert!(by_rule(firing["items"].as_array().unwrap(), "certificate_expiry").is_some(), "resolved before the delay: {firing}");
    app.state.clock.advance(Duration::from_secs(6));
    let resolved = alerts(&app, &owner, "?state=resolved", |a| !a.is_empty()).await;
    assert_eq!(resolved.len(), 1);
    assert_eq!((resolved[0]["rule"].as_str(), resolved[0]["id"].as_str()), (Some("certificate_expiry"), cert["id"].as_str()));
    assert!(resolved[0]["ends_at"].is_string());
    let (status, one) = app.get(&format!("/api/v1/alerts/{}", cert["id"].as_str().unwrap()), &owner.access).await;
    assert_eq!((status, one["state"].as_str()), (StatusCode::OK, Some("resolved")));

    // Filters: by cluster, and a page of one with a cursor.
    let (_, page) = app.get(&format!("/api/v1/alerts?state=all&cluster_id={cluster}&limit=1"), &owner.access).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (status, next) = app.get(&format!("/api/v1/alerts?state=all&limit=1&cursor={cursor}"), &owner.access).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(next["items"][0]["id"], page["items"][0]["id"]);
}

async fn rules_are_per_organization_and_admin_only(engine: Engine) {
    let app = spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let viewer = app.member(&owner, "vic@example.com", "viewer").await;
    let other = app.owner("eve@example.com").await;
    without_workload_objectives(&app, &owner).await;
    troubled(&app, &owner).await;
    alerts(&app, &owner, "", |a| a.len() == 4).await;

    let (status, rules) = app.get("/api/v1/alert-rules", &viewer.access).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = rules.as_array().unwrap().iter().map(|r| r["rule"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "agent",
            "certificate_expiry",
            "success_rate",
            "control_plane",
            "proxy_versions",
            "clock_skew",
            "version_skew",
            "control_plane_version",
            "injection",
            "workload_success_rate",
            "workload_latency"
        ]
    );
    assert_eq!((rules[2]["enabled"].as_bool(), rules[2]["for_seconds"].as_u64()), (Some(true), Some(60)));

    let change = json!({ "enabled": true, "severity": "critical", "for_seconds": 0 });
    let (status, body) = app.call(Method::PUT, "/api/v1/alert-rules/proxy_versions", Some(&viewer.access), Some(change.clone())).await;
    assert_problem(status, &body, 403, "forbidden", None);
    let (status, body) = app.call(Method::PUT, "/api/v1/alert-rules/no_such_rule", Some(&owner.access), Some(change.clone())).await;
    assert_problem(status, &body, 404, "not-found", None);
    let (status, body) =
        app.call(Method::PUT, "/api/v1/alert-rules/proxy_versions", Some(&owner.access), Some(json!({ "enabled": true, "for_seconds": 86_401 }))).await;
    assert_problem(status, &body, 422, "validation", Some("for_seconds"));

    // Re-severitised and without a wait, the outdated proxies fire as critical.
    let (status, body) = app.call(Method::PUT, "/api/v1/alert-rules/proxy_versions", Some(&owner.access), Some(change)).await;
    assert_eq!((status, body["severity"].as_str(), body["for_seconds"].as_u64()), (StatusCode::OK, Some("critical"), Some(0)), "{body}");
    let open = alerts(&app, &owner, "", |a| by_rule(a, "proxy_versions").is_some_and(|p| p["state"] == "firing" && p["severity"] == "critical")).await;
    assert_eq!(open.len(), 4);

    // Another organization sees none of it and keeps the defaults.
    let (_, theirs) = app.get("/api/v1/alerts?state=all", &other.access).await;
    assert_eq!(theirs["items"], json!([]));
    let (status, body) = app.get(&format!("/api/v1/alerts/{}", open[0]["id"].as_str().unwrap()), &other.access).await;
    assert_problem(status, &body, 404, "not-found", None);
    let (_, their_rules) = app.get("/api/v1/alert-rules", &other.access).await;
    assert_eq!(their_rules[4]["severity"], Value::Null);
    assert_eq!(their_rules[4]["for_seconds"], 300);
}

async fn a_firing_alert_and_its_resolution_reach_a_signed_webhook(engine: Engine) {
    let app = spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let receiver = Receiver::start(&[]).await;
    let (_, secret) = create_channel(&app, &owner, &receiver.url).await;
    without_workload_objectives(&app, &owner).await;
    let cluster = troubled(&app, &owner).await;

    // The expiring issuer's alert fires at once; the others are pending, so nothing else is sent.
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let (headers, body) = &got[0];
    assert!(verify(&secret, headers, body), "the signature does not verify: {headers:?}");
    let event: Value = serde_json::from_str(body).unwrap();
    assert_eq!((event["type"].as_str(), event["version"].as_str()), (Some("alert.firing"), Some("1")), "{event}");
    assert_eq!(event["id"], headers["webhook-id"].to_str().unwrap());
    assert_eq!((event["cluster"]["id"].as_str(), event["cluster"]["name"].as_str()), (Some(cluster.as_str()), Some("troubled")));
    assert_eq!((event["alert"]["rule"].as_str(), event["alert"]["state"].as_str()), (Some("certificate_expiry"), Some("firing")));
    assert!(event["dashboard_url"].as_str().unwrap().ends_with(&format!("/clusters/{cluster}")), "{event}");
    let (_, open) = app.get("/api/v1/alerts?state=firing", &owner.access).await;
    assert_eq!(event["alert"]["fingerprint"], open["items"][0]["fingerprint"]);

    // Turned off, the rule's alert resolves after the resolve delay, and that is sent too.
    let (status, _) = app.call(Method::PUT, "/api/v1/alert-rules/certificate_expiry", Some(&owner.access), Some(json!({ "enabled": false }))).await;
    assert_eq!(status, StatusCode::OK);
    app.state.clock.advance(Duration::from_secs(6));
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let (headers, body) = &got[1];
    assert!(verify(&secret, headers, body));
    let resolved: Value = serde_json::from_str(body).unwrap();
    assert_eq!((resolved["type"].as_str(), resolved["alert"]["state"].as_str()), (Some("alert.resolved"), Some("resolved")), "{resolved}");
    assert_eq!(resolved["alert"]["fingerprint"], event["alert"]["fingerprint"]);
    assert!(resolved["alert"]["ends_at"].is_string());
    assert_ne!(resolved["id"], event["id"]);
}
