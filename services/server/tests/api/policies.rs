//! Notification policies: alerts are routed by label matchers to channels (first match, unless
//! it continues), grouped by labels into one Alertmanager message per group, held for the
//! group interval, repeated while they fire, and told resolved inside their group.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::alert_delivery::{verify, Receiver};
use crate::alerts::{alerts, by_rule, spawn};
use crate::health::troubled;
use crate::helpers::{assert_problem, Engine, Login, TestApp};
use crate::on_both_engines;

on_both_engines!(policies_route_group_hold_repeat_and_resolve, policies_are_checked_admin_only_and_follow_their_channels);

async fn channel(app: &TestApp, who: &Login, kind: &str, name: &str, url: &str) -> (String, String) {
    let (status, body) = app.post("/api/v1/alert-channels", &who.access, json!({ "name": name, "kind": kind, "url": url })).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (body["id"].as_str().unwrap().to_owned(), body["secret"].as_str().unwrap().to_owned())
}

async fn rule(app: &TestApp, who: &Login, rule: &str, change: Value) {
    let (status, body) = app.call(Method::PUT, &format!("/api/v1/alert-rules/{rule}"), Some(&who.access), Some(change)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

fn bodies(r: &Receiver) -> Vec<Value> {
    r.received().iter().map(|(_, b)| serde_json::from_str(b).unwrap()).collect()
}

/// The rules (alertname) of an Alertmanager message's alerts with this status.
fn alertnames(message: &Value, status: &str) -> Vec<String> {
    let mut names: Vec<String> =
        message["alerts"].as_array().unwrap().iter().filter(|a| a["status"] == status).map(|a| a["labels"]["alertname"].as_str().unwrap().to_owned()).collect();
    names.sort();
    names
}

async fn policies_route_group_hold_repeat_and_resolve(engine: Engine) {
    let app = spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let (pager, team) = (Receiver::start(&[]).await, Receiver::start(&[]).await);
    let (pager_id, pager_secret) = channel(&app, &owner, "webhook", "pager", &pager.url).await;
    let (team_id, _) = channel(&app, &owner, "alertmanager", "team", &team.url).await;
    // Critical alerts page, one event each; everything else goes to the team, one message per
    // cluster, at most every 30 s, repeated every minute. (The test's timeline stays within
    // 3 minutes: the cluster's one minute of metrics must stay in the 5-minute health window.)
    let critical = json!({ "name": "page on critical", "matchers": [{ "name": "severity", "op": "=", "value": "critical" }], "channel_ids": [pager_id], "group_by": ["..."] });
    let (status, body) = app.post("/api/v1/notification-policies", &owner.access, critical).await;
    assert_eq!((status, body["position"].as_i64()), (StatusCode::CREATED, Some(0)), "{body}");
    let everything = json!({ "name": "team", "channel_ids": [team_id], "group_by": ["cluster"], "group_interval_seconds": 30, "repeat_interval_seconds": 60 });
    let (status, body) = app.post("/api/v1/notification-policies", &owner.access, everything).await;
    assert_eq!((status, body["position"].as_i64(), body["group_wait_seconds"].as_i64()), (StatusCode::CREATED, Some(1), Some(0)), "{body}");
    rule(&app, &owner, "control_plane", json!({ "enabled": true, "severity": "critical", "for_seconds": 0 })).await;
    rule(&app, &owner, "success_rate", json!({ "enabled": true, "severity": "warning" })).await;

    // The expiring issuer (warning) and the control plane (critical) fire at once; the success
    // rate waits its 60 s.
    troubled(&app, &owner).await;
    alerts(&app, &owner, "?state=firing", |a| a.len() == 2).await;
    let first = team.wait_for(1, Duration::from_secs(10)).await;
    let first: Value = serde_json::from_str(&first[0].1).unwrap();
    assert_eq!((first["status"].as_str(), first["receiver"].as_str()), (Some("firing"), Some("team")));
    assert_eq!(first["groupLabels"], json!({ "cluster": "troubled" }));
    assert_eq!(alertnames(&first, "firing"), ["certificate_expiry"], "the critical alert went to the pager only: {first}");
    let paged = pager.wait_for(1, Duration::from_secs(10)).await;
    let (headers, event) = &paged[0];
    assert!(verify(&pager_secret, headers, event), "a signed webhook");
    let event: Value = serde_json::from_str(event).unwrap();
    assert_eq!((event["type"].as_str(), event["alert"]["rule"].as_str()), (Some("alert.firing"), Some("control_plane")));

    // The success rate fires 60 s on: past the group interval, the team hears of the group
    // again, both alerts in one message.
    app.state.clock.advance(Duration::from_secs(61));
    alerts(&app, &owner, "?state=firing", |a| by_rule(a, "success_rate").is_some()).await;
    team.wait_for(2, Duration::from_secs(10)).await;
    let second = &bodies(&team)[1];
    assert_eq!(alertnames(second, "firing"), ["certificate_expiry", "success_rate"], "{second}");
    assert_eq!(second["commonLabels"]["cluster"], "troubled");

    // Unchanged, it is repeated after the repeat interval, and not before.
    app.state.clock.advance(Duration::from_secs(40));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(team.received().len(), 2, "repeated before its interval: {:?}", bodies(&team));
    app.state.clock.advance(Duration::from_secs(21));
    team.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(alertnames(&bodies(&team)[2], "firing"), ["certificate_expiry", "success_rate"]);

    // The certificate rule turned off, its alert resolves (after the 5 s resolve delay) and
    // the group tells it resolved beside the alert still firing, once the interval is past.
    rule(&app, &owner, "certificate_expiry", json!({ "enabled": false })).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.state.clock.advance(Duration::from_secs(6));
    alerts(&app, &owner, "?state=resolved", |a| by_rule(a, "certificate_expiry").is_some()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(team.received().len(), 3, "the change was told within the group interval");
    app.state.clock.advance(Duration::from_secs(25));
    team.wait_for(4, Duration::from_secs(10)).await;
    let fourth = &bodies(&team)[3];
    assert_eq!((alertnames(fourth, "firing"), alertnames(fourth, "resolved")), (vec!["success_rate".to_owned()], vec!["certificate_expiry".to_owned()]));
    assert_eq!(fourth["status"], "firing");

    // The pager heard only of the critical alert, once.
    let paged: Vec<Value> = bodies(&pager);
    assert_eq!(paged.len(), 1, "{paged:?}");
}

async fn policies_are_checked_admin_only_and_follow_their_channels(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let viewer = app.member(&owner, "vic@example.com", "viewer").await;
    let other = app.owner("eve@example.com").await;
    let (mine, _) = channel(&app, &owner, "webhook", "mine", "https://hooks.example.com/a").await;
    let (theirs, _) = channel(&app, &other, "webhook", "theirs", "https://hooks.example.com/b").await;
    let post = |who: &Login, body: Value| {
        let access = who.access.clone();
        let app = &app;
        async move { app.post("/api/v1/notification-policies", &access, body).await }
    };

    let (status, body) = post(&viewer, json!({ "name": "p", "channel_ids": [mine] })).await;
    assert_problem(status, &body, 403, "forbidden", None);
    // Another organization's channel is not one of ours.
    let (status, body) = post(&owner, json!({ "name": "p", "channel_ids": [theirs] })).await;
    assert_problem(status, &body, 422, "validation", Some("channel_ids[0]"));
    let cases = [
        (json!({ "name": "p", "channel_ids": [] }), "channel_ids"),
        (json!({ "name": " ", "channel_ids": [mine] }), "name"),
        (json!({ "name": "p", "channel_ids": [mine, mine] }), "channel_ids[1]"),
        (json!({ "name": "p", "channel_ids": [mine], "matchers": [{ "name": "env", "op": "=~", "value": "(prod" }] }), "matchers[0].value"),
        (json!({ "name": "p", "channel_ids": [mine], "group_by": ["...", "cluster"] }), "group_by"),
        (json!({ "name": "p", "channel_ids": [mine], "group_wait_seconds": 3601 }), "group_wait_seconds"),
        (json!({ "name": "p", "channel_ids": [mine], "group_interval_seconds": 0 }), "group_interval_seconds"),
        (json!({ "name": "p", "channel_ids": [mine], "group_interval_seconds": 600, "repeat_interval_seconds": 300 }), "repeat_interval_seconds"),
        (json!({ "name": "p", "channel_ids": [mine], "position": -1 }), "position"),
    ];
    for (body, field) in cases {
        let (status, answer) = post(&owner, body.clone()).await;
        assert_problem(status, &answer, 422, "validation", Some(field));
    }

    // Defaults, order, replace, delete.
    let (status, a) = post(&owner, json!({ "name": "a", "channel_ids": [mine] })).await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    assert_eq!(
        (&a["group_by"], &a["group_wait_seconds"], &a["group_interval_seconds"], &a["repeat_interval_seconds"], &a["continue"], &a["matchers"]),
        (&json!(["alertname", "cluster"]), &json!(0), &json!(300), &json!(14400), &json!(false), &json!([]))
    );
    let (_, first) = post(&owner, json!({ "name": "first", "channel_ids": [mine], "position": 0, "continue": true })).await;
    let (_, listed) = app.get("/api/v1/notification-policies", &viewer.access).await;
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "first"], "same position: creation order");
    let path = format!("/api/v1/notification-policies/{}", a["id"].as_str().unwrap());
    let (status, replaced) = app.call(Method::PUT, &path, Some(&owner.access), Some(json!({ "name": "renamed", "channel_ids": [mine], "position": 5 }))).await;
    assert_eq!((status, replaced["name"].as_str(), replaced["created_at"].as_str()), (StatusCode::OK, Some("renamed"), a["created_at"].as_str()), "{replaced}");
    let (_, listed) = app.get("/api/v1/notification-policies", &owner.access).await;
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["first", "renamed"]);
    let (_, none) = app.get("/api/v1/notification-policies", &other.access).await;
    assert_eq!(none, json!([]));

    // A deleted channel leaves the policies that named it.
    let (status, _) = app.call(Method::DELETE, &format!("/api/v1/alert-channels/{mine}"), Some(&owner.access), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, kept) = app.get(&path, &owner.access).await;
    assert_eq!(kept["channel_ids"], json!([]));

    let (status, _) = app.call(Method::DELETE, &path, Some(&owner.access), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = app.get(&path, &owner.access).await;
    assert_problem(status, &body, 404, "not-found", None);
    let (_, audit) = app.get("/api/v1/audit", &owner.access).await;
    let actions = audit.to_string();
    for action in ["notification_policy.create", "notification_policy.update", "notification_policy.delete"] {
        assert!(actions.contains(action), "{action} not audited");
    }
    assert!(first["id"].is_string());
}
