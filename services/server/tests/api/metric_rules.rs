//! Custom metric rules: a rule over workloads' golden metrics raises one alert per workload it
//! covers whose metric breaches the threshold, waits its "for", resolves when the metric
//! recovers (here: the rule is changed), and is checked field by field.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::alert_delivery::{create_channel, verify, Receiver};
use crate::alerts::{alerts, by_rule, spawn};
use crate::health::troubled;
use crate::helpers::{assert_problem, Engine, TestApp};
use crate::on_both_engines;

on_both_engines!(
    a_metric_rule_alerts_per_workload_waits_its_for_and_resolves,
    metric_rules_are_checked_and_admin_only,
    workloads_that_miss_their_objectives_alert_until_an_override_excuses_them
);

async fn a_metric_rule_alerts_per_workload_waits_its_for_and_resolves(engine: Engine) {
    let app = spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let receiver = Receiver::start(&[]).await;
    let (_, secret) = create_channel(&app, &owner, &receiver.url).await;
    let errors = json!({ "name": "shop_errors", "namespace": "shop", "metric": "success_rate", "comparison": "<", "threshold": 0.95,
                         "for_seconds": 0, "severity": "critical" });
    let (status, rule) = app.post("/api/v1/metric-rules", &owner.access, errors.clone()).await;
    assert_eq!((status, rule["window_seconds"].as_i64(), rule["cluster_selector"].as_str()), (StatusCode::CREATED, Some(300), Some("")), "{rule}");
    let slow = json!({ "name": "slow_web", "workload": "Deployment/web", "metric": "latency_p99_ms", "comparison": ">", "threshold": 10 });
    assert_eq!(app.post("/api/v1/metric-rules", &owner.access, slow).await.0, StatusCode::CREATED);
    // Neither of these covers the cluster's workload.
    let prod_only =
        json!({ "name": "prod_errors", "cluster_selector": "env=prod", "metric": "success_rate", "comparison": "<", "threshold": 0.95, "for_seconds": 0 });
    assert_eq!(app.post("/api/v1/metric-rules", &owner.access, prod_only).await.0, StatusCode::CREATED);
    let billing = json!({ "name": "billing_errors", "namespace": "billing", "metric": "success_rate", "comparison": "<", "threshold": 0.95, "for_seconds": 0 });
    assert_eq!(app.post("/api/v1/metric-rules", &owner.access, billing).await.0, StatusCode::CREATED);

    // shop/Deployment/web answers 90% of 100 requests, p99 20 ms.
    troubled(&app, &owner).await;
    let open = alerts(&app, &owner, "", |a| by_rule(a, "shop_errors").is_some_and(|e| e["state"] == "firing") && by_rule(a, "slow_web").is_some()).await;
    let fired = by_rule(&open, "shop_errors").unwrap();
    assert_eq!((fired["object"].as_str(), fired["severity"].as_str()), (Some("shop/Deployment/web"), Some("critical")));
    assert_eq!(fired["summary"], "success_rate of shop/Deployment/web is 0.9 (< 0.95 over 5 min)");
    assert_eq!((fired["labels"]["namespace"].as_str(), fired["labels"]["workload"].as_str()), (Some("shop"), Some("Deployment/web")));
    assert_eq!(by_rule(&open, "slow_web").unwrap()["state"], "pending", "waits its default 60 s");
    assert!(by_rule(&open, "prod_errors").is_none() && by_rule(&open, "billing_errors").is_none(), "{open:?}");

    // Delivered, signed, like any alert.
    let event = receiver.event_about("shop_errors").await;
    assert!(verify(&secret, &event.0, &event.1));
    let body: Value = serde_json::from_str(&event.1).unwrap();
    assert_eq!((body["type"].as_str(), body["alert"]["rule"].as_str()), (Some("alert.firing"), Some("shop_errors")));

    // Past its "for", the latency alert fires.
    app.state.clock.advance(Duration::from_secs(61));
    alerts(&app, &owner, "", |a| by_rule(a, "slow_web").is_some_and(|s| s["state"] == "firing")).await;

    // With a threshold the workload meets, the condition clears; the alert resolves after the
    // resolve delay.
    let path = format!("/api/v1/metric-rules/{}", rule["id"].as_str().unwrap());
    let relaxed = json!({ "name": "shop_errors", "namespace": "shop", "metric": "success_rate", "comparison": "<", "threshold": 0.5, "for_seconds": 0 });
    let (status, replaced) = app.call(Method::PUT, &path, Some(&owner.access), Some(relaxed)).await;
    assert_eq!((status, replaced["threshold"].as_f64(), replaced["severity"].as_str()), (StatusCode::OK, Some(0.5), Some("warning")), "{replaced}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.state.clock.advance(Duration::from_secs(6));
    let resolved = alerts(&app, &owner, "?state=resolved", |a| by_rule(a, "shop_errors").is_some()).await;
    assert!(resolved[0]["ends_at"].is_string());

    // Deleting a rule resolves its alerts too.
    let (_, slow) = app.get("/api/v1/metric-rules", &owner.access).await;
    let slow_id = slow.as_array().unwrap().iter().find(|r| r["name"] == "slow_web").unwrap()["id"].as_str().unwrap().to_owned();
    let (status, _) = app.call(Method::DELETE, &format!("/api/v1/metric-rules/{slow_id}"), Some(&owner.access), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.state.clock.advance(Duration::from_secs(6));
    alerts(&app, &owner, "?state=resolved", |a| by_rule(a, "slow_web").is_some()).await;
}

async fn metric_rules_are_checked_and_admin_only(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let viewer = app.member(&owner, "vic@example.com", "viewer").await;
    let good = json!({ "name": "checkout_errors", "metric": "success_rate", "comparison": "<", "threshold": 0.99 });
    let (status, body) = app.post("/api/v1/metric-rules", &viewer.access, good.clone()).await;
    assert_problem(status, &body, 403, "forbidden", None);
    let (status, created) = app.post("/api/v1/metric-rules", &owner.access, good.clone()).await;
    assert_eq!((status, created["for_seconds"].as_i64(), created["severity"].as_str()), (StatusCode::CREATED, Some(60), Some("warning")));

    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body
    };
    let (status, body) = app.post("/api/v1/metric-rules", &owner.access, good.clone()).await;
    assert_problem(status, &body, 409, "name-taken", Some("name"));
    let cases = [
        (with("name", json!("agent")), "name"),
        (with("name", json!("Bad-Name")), "name"),
        (with("cluster_selector", json!("env in (prod")), "cluster_selector"),
        (with("threshold", json!(1.5)), "threshold"),
        (with("window_seconds", json!(90)), "window_seconds"),
        (with("for_seconds", json!(86_401)), "for_seconds"),
        (with("namespace", json!("")), "namespace"),
    ];
    for (mut body, field) in cases {
        // Each case wrong in one field only (the name is not taken either).
        if field != "name" {
            body["name"] = json!("other");
        }
        let (status, answer) = app.post("/api/v1/metric-rules", &owner.access, body).await;
        assert_problem(status, &answer, 422, "validation", Some(field));
    }
    let (status, body) = app.post("/api/v1/metric-rules", &owner.access, with("metric", json!("errors_per_hour"))).await;
    assert_problem(status, &body, 422, "validation", None);

    let (_, listed) = app.get("/api/v1/metric-rules", &viewer.access).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let (_, audit) = app.get("/api/v1/audit", &owner.access).await;
    assert!(audit.to_string().contains("metric_rule.create"));
}

async fn workloads_that_miss_their_objectives_alert_until_an_override_excuses_them(engine: Engine) {
    let app = spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let viewer = app.member(&owner, "vic@example.com", "viewer").await;
    let (_, defaults) = app.get("/api/v1/workload-objectives", &viewer.access).await;
    assert_eq!(defaults, json!({ "success_rate": 0.99, "latency_p99_ms": null, "overrides": [] }));
    // Without waiting their 5 minutes, so the test need not outlive the cluster's one minute of
    // metrics.
    for rule in ["workload_success_rate", "workload_latency"] {
        let (status, _) =
            app.call(Method::PUT, &format!("/api/v1/alert-rules/{rule}"), Some(&owner.access), Some(json!({ "enabled": true, "for_seconds": 0 }))).await;
        assert_eq!(status, StatusCode::OK);
    }
    let strict = json!({ "success_rate": 0.99, "latency_p99_ms": 10 });
    let (status, body) = app.call(Method::PUT, "/api/v1/workload-objectives", Some(&viewer.access), Some(strict.clone())).await;
    assert_problem(status, &body, 403, "forbidden", None);
    let (status, body) = app.call(Method::PUT, "/api/v1/workload-objectives", Some(&owner.access), Some(strict)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // shop/Deployment/web: 90% success, p99 20 ms.
    troubled(&app, &owner).await;
    let open = alerts(&app, &owner, "?state=firing", |a| by_rule(a, "workload_success_rate").is_some() && by_rule(a, "workload_latency").is_some()).await;
    let missed = by_rule(&open, "workload_success_rate").unwrap();
    assert_eq!((missed["object"].as_str(), missed["severity"].as_str()), (Some("shop/Deployment/web"), Some("warning")));
    assert_eq!(missed["summary"], "shop/Deployment/web answers 90.00% of requests, under its objective of 99.00%");
    assert_eq!(by_rule(&open, "workload_latency").unwrap()["summary"], "shop/Deployment/web has a p99 latency of 20 ms, over its objective of 10 ms");

    // An override for clusters without an `env` label excuses the success rate; the latency
    // objective it leaves out is still the default's.
    let excused = json!({ "success_rate": 0.99, "latency_p99_ms": 10, "overrides": [{ "cluster_selector": "!env", "success_rate": 0.5 }] });
    let (status, body) = app.call(Method::PUT, "/api/v1/workload-objectives", Some(&owner.access), Some(excused)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.state.clock.advance(Duration::from_secs(6));
    alerts(&app, &owner, "?state=resolved", |a| by_rule(a, "workload_success_rate").is_some()).await;
    let (_, firing) = app.get("/api/v1/alerts?state=firing", &owner.access).await;
    assert!(by_rule(firing["items"].as_array().unwrap(), "workload_latency").is_some(), "{firing}");

    for (body, field) in [
        (json!({ "success_rate": 1.5 }), "success_rate"),
        (json!({ "latency_p99_ms": 0 }), "latency_p99_ms"),
        (json!({ "overrides": [{ "cluster_selector": "env in (" }] }), "overrides[0].cluster_selector"),
    ] {
        let (status, answer) = app.call(Method::PUT, "/api/v1/workload-objectives", Some(&owner.access), Some(body)).await;
        assert_problem(status, &answer, 422, "validation", Some(field));
    }
}
