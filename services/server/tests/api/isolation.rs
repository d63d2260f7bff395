//! Tenant isolation and roles, driven by the OpenAPI document so that a route added later is
//! covered without editing this file: every route that takes an id answers 404 to another
//! organization and changes nothing; every mutation answers 403 to a viewer.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{rfc3339, Engine, Login, TestApp};
use crate::on_both_engines;

on_both_engines!(another_organization_gets_404_and_changes_nothing, viewers_get_403_on_every_mutation);

/// Operations (method, path template) of the API, from its own OpenAPI document.
async fn operations(app: &TestApp) -> Vec<(Method, String)> {
    let spec: Value = app.client.get(format!("{}/api/openapi.json", app.base)).send().await.unwrap().json().await.unwrap();
    let mut ops = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            ops.push((method.to_uppercase().parse().unwrap(), path.clone()));
        }
    }
    assert!(ops.len() >= 15, "suspiciously few operations: {ops:?}");
    ops
}

/// A well-formed body for each mutation, so validation cannot answer before authorization.
fn body_for(method: &Method, path: &str) -> Option<Value> {
    match (method.as_str(), path) {
        ("POST", "/api/v1/clusters") => Some(json!({ "name": "intruder" })),
        ("PATCH", "/api/v1/clusters/{id}") => Some(json!({ "labels": { "owned": "yes" } })),
        ("POST", "/api/v1/members") => Some(json!({ "email": "mallory@example.com", "role": "viewer" })),
        ("PATCH", "/api/v1/members/{user_id}") => Some(json!({ "role": "viewer" })),
        ("POST", "/api/v1/tokens") => Some(json!({ "name": "x", "role": "viewer" })),
        ("POST", "/api/v1/clusters/{id}/commands") => Some(json!({ "kind": "ping" })),
        ("POST", "/api/v1/alert-channels") => Some(json!({ "name": "intruder", "kind": "webhook", "url": "https://hooks.example.com/x" })),
        ("PUT", "/api/v1/alert-rules/{rule}") => Some(json!({ "enabled": false })),
        ("PATCH", "/api/v1/alert-channels/{id}") => Some(json!({ "name": "pwned", "enabled": false })),
        // Well-formed is enough: the role is checked before the values.
        ("POST", "/api/v1/silences") | ("PUT", "/api/v1/silences/{id}") => {
            Some(json!({ "matchers": [{ "name": "cluster", "op": "=", "value": "victim-prod" }], "ends_at": "2099-01-01T00:00:00Z", "comment": "intruder" }))
        }
        ("POST", "/api/v1/notification-policies") | ("PUT", "/api/v1/notification-policies/{id}") => {
            Some(json!({ "name": "intruder", "channel_ids": ["0190a0b0-0000-7000-8000-000000000000"] }))
        }
        ("POST", "/api/v1/metric-rules") | ("PUT", "/api/v1/metric-rules/{id}") => {
            Some(json!({ "name": "intruder", "metric": "success_rate", "comparison": "<", "threshold": 0.5 }))
        }
        ("POST", "/api/v1/upgrade-policies") | ("PUT", "/api/v1/upgrade-policies/{id}") => Some(json!({ "name": "intruder" })),
        ("POST", "/api/v1/rollouts/plan") | ("POST", "/api/v1/rollouts") => Some(json!({ "target_version": "0.1.0" })),
        ("POST", "/api/v1/trust-anchors/upload") => Some(json!({ "certificate_pem": "x", "private_key_pem": "y" })),
        ("PUT", "/api/v1/trust-domain") => Some(json!({ "trust_domain": "intruder.example" })),
        ("POST", "/api/v1/trust-anchors/rotations/{id}/exclude") => Some(json!({ "cluster_id": "0190a0b0-0000-7000-8000-000000000000" })),
        ("POST", _) | ("PATCH", _) | ("PUT", _) => Some(json!({})),
        _ => None,
    }
}

/// Routes outside the organization's resources: sign-up, log-in and the caller's own session.
fn is_account_route(path: &str) -> bool {
    ["/api/v1/signup", "/api/v1/login", "/api/v1/token/refresh", "/api/v1/logout"].contains(&path)
}

struct Victim {
    owner: Login,
    cluster_id: String,
    command_id: String,
    token_id: String,
    user_id: String,
    channel_id: String,
    message_id: String,
    silence_id: String,
    policy_id: String,
    metric_rule_id: String,
    rotation_id: String,
    upgrade_policy_id: String,
    rollout_id: String,
}

async fn victim(app: &TestApp) -> Victim {
    let owner = app.owner("victim@example.com").await;
    let cluster = app.create_cluster(&owner, "victim-prod", json!({ "env": "prod" })).await;
    let (_, token) = app.post("/api/v1/tokens", &owner.access, json!({ "name": "automation", "role": "admin" })).await;
    let cluster_id = cluster["cluster"]["id"].as_str().unwrap().to_owned();
    let (_, command) = app.post(&format!("/api/v1/clusters/{cluster_id}/commands"), &owner.access, json!({ "kind": "ping" })).await;
    let admin = app.member(&owner, "victim-admin@example.com", "admin").await;
    let user_id = app.get("/api/v1/me", &admin.access).await.1["user"]["id"].as_str().unwrap().to_owned();
    let (_, channel) =
        app.post("/api/v1/alert-channels", &owner.access, json!({ "name": "on-call", "kind": "webhook", "url": "https://hooks.example.com/x" })).await;
    let channel_id = channel["id"].as_str().unwrap().to_owned();
    let (_, queued) = app.post(&format!("/api/v1/alert-channels/{channel_id}/test"), &owner.access, json!({})).await;
    let message_id = queued["message_id"].as_str().unwrap().to_owned();
    let ends_at = rfc3339(app.state.clock.now_ms() + 3_600_000);
    let matchers = json!([{ "name": "cluster", "op": "=", "value": "victim-prod" }]);
    let (status, silence) = app.post("/api/v1/silences", &owner.access, json!({ "matchers": matchers, "ends_at": ends_at, "comment": "maintenance" })).await;
    assert_eq!(status, StatusCode::CREATED, "{silence}");
    let (status, policy) = app.post("/api/v1/notification-policies", &owner.access, json!({ "name": "prod", "channel_ids": [channel_id] })).await;
    assert_eq!(status, StatusCode::CREATED, "{policy}");
    let rule = json!({ "name": "checkout_errors", "metric": "success_rate", "comparison": "<", "threshold": 0.99 });
    let (status, rule) = app.post("/api/v1/metric-rules", &owner.access, rule).await;
    assert_eq!(status, StatusCode::CREATED, "{rule}");
    let (status, anchor) = app.post("/api/v1/trust-anchors", &owner.access, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{anchor}");
    let (status, rotation) = app.post("/api/v1/trust-anchors/rotations", &owner.access, json!({})).await;
    assert_eq!(status, StatusCode::CREATED, "{rotation}");
    let (status, upgrade_policy) = app.post("/api/v1/upgrade-policies", &owner.access, json!({ "name": "prod nights", "selector": "env=prod" })).await;
    assert_eq!(status, StatusCode::CREATED, "{upgrade_policy}");
    // Its cluster never reported a version, so the rollout skips it (and is over at once).
    let (status, rollout) = app.post("/api/v1/rollouts", &owner.access, json!({ "target_version": env!("CARGO_PKG_VERSION") })).await;
    assert_eq!(status, StatusCode::CREATED, "{rollout}");
    Victim {
        owner,
        cluster_id,
        command_id: command["id"].as_str().unwrap().to_owned(),
        token_id: token["id"].as_str().unwrap().to_owned(),
        user_id,
        channel_id,
        message_id,
        silence_id: silence["id"].as_str().unwrap().to_owned(),
        policy_id: policy["id"].as_str().unwrap().to_owned(),
        metric_rule_id: rule["id"].as_str().unwrap().to_owned(),
        rotation_id: rotation["id"].as_str().unwrap().to_owned(),
        upgrade_policy_id: upgrade_policy["id"].as_str().unwrap().to_owned(),
        rollout_id: rollout["id"].as_str().unwrap().to_owned(),
    }
}

fn fill(path: &str, v: &Victim) -> String {
    let id = match path {
        p if p.starts_with("/api/v1/clusters/") => &v.cluster_id,
        p if p.starts_with("/api/v1/alert-channels/") => &v.channel_id,
        p if p.starts_with("/api/v1/silences/") => &v.silence_id,
        p if p.starts_with("/api/v1/notification-policies/") => &v.policy_id,
        p if p.starts_with("/api/v1/metric-rules/") => &v.metric_rule_id,
        p if p.starts_with("/api/v1/trust-anchors/rotations/") => &v.rotation_id,
        p if p.starts_with("/api/v1/upgrade-policies/") => &v.upgrade_policy_id,
        p if p.starts_with("/api/v1/rollouts/") => &v.rollout_id,
        _ => &v.token_id,
    };
    path.replace("{id}", id)
        .replace("{rule}", "proxy_versions")
        .replace("{user_id}", &v.user_id)
        .replace("{command_id}", &v.command_id)
        .replace("{message_id}", &v.message_id)
        .replace("{cluster_id}", &v.cluster_id)
        .replace("{action}", if path.contains("/clusters/") { "skip" } else { "pause" })
}

/// Everything the victim organization can see about itself, to compare before and after.
async fn snapshot(app: &TestApp, v: &Victim) -> Value {
    let mut state = json!({});
    let commands = format!("/api/v1/clusters/{}/commands", v.cluster_id);
    let paths = [
        "/api/v1/clusters",
        "/api/v1/members",
        "/api/v1/tokens",
        "/api/v1/alert-channels",
        "/api/v1/alert-rules",
        "/api/v1/silences",
        "/api/v1/notification-policies",
        "/api/v1/trust-anchors",
        "/api/v1/trust-anchors/rotations",
        "/api/v1/upgrade-policies",
        "/api/v1/rollouts",
        &commands,
    ];
    for path in paths {
        state[path] = app.get(path, &v.owner.access).await.1;
    }
    // Last-use times move when the victim itself reads; they are not what the attacker changes.
    for token in state["/api/v1/tokens"].as_array_mut().unwrap() {
        token["last_used_at"] = Value::Null;
    }
    // So does a rotation's progress: its job looks at the clusters every half second.
    for rotation in state["/api/v1/trust-anchors/rotations"].as_array_mut().unwrap() {
        rotation["updated_at"] = Value::Null;
        rotation["clusters"] = Value::Null;
    }
    // So do a channel's failures: its delivery job runs (hooks.example.com is unreachable here).
    for channel in state["/api/v1/alert-channels"].as_array_mut().unwrap() {
        channel["failing_since"] = Value::Null;
    }
    state
}

async fn another_organization_gets_404_and_changes_nothing(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let v = victim(&app).await;
    let attacker = app.owner("mallory@example.com").await;
    let before = snapshot(&app, &v).await;

    let mut checked = 0;
    for (method, template) in operations(&app).await {
        // A rule's name is not the victim's object: the attacker changes its own organization's
        // rule, and the snapshot shows the victim's rules unchanged.
        // The release catalog is no organization's: everyone reads it, operators write it.
        let global = ["/api/v1/alert-rules/", "/api/v1/releases/", "/api/v1/operator/"];
        if !template.contains('{') || global.iter().any(|g| template.starts_with(g)) {
            continue;
        }
        let path = fill(&template, &v);
        let (status, body) = app.call(method.clone(), &path, Some(&attacker.access), body_for(&method, &template)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {template} answered another organization: {body}");
        assert_eq!(body["type"], "/problems/not-found", "{method} {template}: {body}");
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} id routes checked");
    let (status, _) = app.call(Method::PUT, "/api/v1/alert-rules/proxy_versions", Some(&attacker.access), Some(json!({ "enabled": false }))).await;
    assert_eq!(status, StatusCode::OK, "the attacker's own rule");
    assert_eq!(snapshot(&app, &v).await, before, "the attacker changed the victim's data");

    // Lists and the audit log show only the attacker's own organization.
    let (_, clusters) = app.get("/api/v1/clusters", &attacker.access).await;
    assert_eq!(clusters["items"], json!([]));
    let (_, silences) = app.get("/api/v1/silences", &attacker.access).await;
    assert_eq!(silences["items"], json!([]));
    let (_, audit) = app.get("/api/v1/audit", &attacker.access).await;
    assert!(!audit.to_string().contains(&v.cluster_id));
    let (_, members) = app.get("/api/v1/members", &attacker.access).await;
    assert_eq!(members.as_array().unwrap().len(), 1);
    let (_, trust) = app.get("/api/v1/trust-anchors", &attacker.access).await;
    assert_eq!(trust["anchors"], json!([]));
}

async fn viewers_get_403_on_every_mutation(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let v = victim(&app).await;
    let viewer = app.member(&v.owner, "viewer@example.com", "viewer").await;
    let before = snapshot(&app, &v).await;

    let mut checked = 0;
    for (method, template) in operations(&app).await {
        // install.yaml is a GET that mints a bootstrap token: a mutation in disguise.
        let mutates = method != Method::GET || template.ends_with("/install.yaml");
        if !mutates || is_account_route(&template) {
            continue;
        }
        let path = fill(&template, &v);
        let (status, body) = app.call(method.clone(), &path, Some(&viewer.access), body_for(&method, &template)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {template} allowed a viewer: {body}");
        assert_eq!(body["type"], "/problems/forbidden");
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} mutations checked");
    assert_eq!(snapshot(&app, &v).await, before, "a viewer changed something");
}
