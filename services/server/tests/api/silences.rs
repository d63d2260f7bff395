//! Silences: created, listed and expired with their states (expired ones stay visible), refused
//! with the offending field named, and honoured by evaluation: a muted alert notifies a real
//! receiver only once its silence ends, and a resolution while muted is not sent.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::alert_delivery::{create_channel, Receiver};
use crate::alerts::{alerts, by_rule, spawn};
use crate::health::troubled;
use crate::helpers::{assert_problem, rfc3339, Engine, Login, TestApp};
use crate::on_both_engines;

on_both_engines!(
    silences_are_created_listed_and_expired_and_stay_visible,
    invalid_silences_are_refused_naming_the_field,
    a_muted_alert_notifies_once_its_silence_is_expired,
    a_silence_that_runs_out_releases_the_firing_and_a_resolution_while_muted_is_not_sent,
    a_silence_is_edited_in_place_until_it_expires,
);

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;

async fn create(app: &TestApp, who: &Login, silence: Value) -> Value {
    let (status, body) = app.post("/api/v1/silences", &who.access, silence).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

async fn ids(app: &TestApp, who: &Login, query: &str) -> Vec<String> {
    let (status, body) = app.get(&format!("/api/v1/silences{query}"), &who.access).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["items"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect()
}

async fn expire(app: &TestApp, who: &Login, id: &str) -> (StatusCode, Value) {
    app.call(Method::DELETE, &format!("/api/v1/silences/{id}"), Some(&who.access), None).await
}

fn ms(time: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(time.as_str().unwrap()).unwrap().timestamp_millis()
}

async fn silences_are_created_listed_and_expired_and_stay_visible(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let viewer = app.member(&owner, "vic@example.com", "viewer").await;
    let now = app.state.clock.now_ms();
    let matchers = json!([
        { "name": "cluster", "op": "=", "value": "prod-eu-1" },
        { "name": "alertname", "op": "=~", "value": "agent|control_plane" },
    ]);
    let active = create(&app, &owner, json!({ "matchers": matchers, "ends_at": rfc3339(now + HOUR), "comment": "  upgrading the control plane " })).await;
    assert_eq!((active["state"].as_str(), active["comment"].as_str()), (Some("active"), Some("upgrading the control plane")), "{active}");
    assert_eq!(active["matchers"], matchers);
    assert_eq!((active["created_by"]["kind"].as_str(), active["created_by"]["name"].as_str()), (Some("user"), Some("ada@example.com")), "{active}");
    assert!((ms(&active["starts_at"]) - now).abs() < 5_000, "{active}");
    let pending = create(
        &app,
        &owner,
        json!({ "matchers": [{ "name": "severity", "op": "=~", "value": "warning|info" }], "starts_at": rfc3339(now + HOUR), "ends_at": rfc3339(now + 2 * HOUR), "comment": "night" }),
    )
    .await;
    assert_eq!(pending["state"], "pending");
    let (active_id, pending_id) = (active["id"].as_str().unwrap().to_owned(), pending["id"].as_str().unwrap().to_owned());

    // Everyone reads them, newest first; only admins make and expire them.
    assert_eq!(ids(&app, &viewer, "").await, [pending_id.as_str(), active_id.as_str()]);
    assert_eq!(ids(&app, &viewer, "?state=active").await, [active_id.as_str()]);
    assert_eq!(ids(&app, &viewer, "?state=pending").await, [pending_id.as_str()]);
    assert!(ids(&app, &viewer, "?state=expired").await.is_empty());
    let (status, one) = app.get(&format!("/api/v1/silences/{active_id}"), &viewer.access).await;
    assert_eq!((status, &one), (StatusCode::OK, &active));
    let (status, body) = app.post("/api/v1/silences", &viewer.access, json!({ "matchers": matchers, "ends_at": rfc3339(now + HOUR), "comment": "x" })).await;
    assert_problem(status, &body, 403, "forbidden", None);
    let (status, body) = expire(&app, &viewer, &active_id).await;
    assert_problem(status, &body, 403, "forbidden", None);
    let (status, body) = app.get(&format!("/api/v1/silences/{}", uuid::Uuid::now_v7()), &viewer.access).await;
    assert_problem(status, &body, 404, "not-found", None);

    // Expired, a silence stays visible; expiring it again changes nothing.
    let (status, body) = expire(&app, &owner, &active_id).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (_, one) = app.get(&format!("/api/v1/silences/{active_id}"), &viewer.access).await;
    assert_eq!(one["state"], "expired", "{one}");
    assert!(ms(&one["ends_at"]) <= app.state.clock.now_ms() && ms(&one["ends_at"]) >= now, "{one}");
    assert_eq!((&one["matchers"], &one["comment"], &one["starts_at"]), (&active["matchers"], &active["comment"], &active["starts_at"]));
    let (status, _) = expire(&app, &owner, &active_id).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, again) = app.get(&format!("/api/v1/silences/{active_id}"), &viewer.access).await;
    assert_eq!(again["ends_at"], one["ends_at"]);
    // A pending silence expires before it began.
    let (status, _) = expire(&app, &owner, &pending_id).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, one) = app.get(&format!("/api/v1/silences/{pending_id}"), &viewer.access).await;
    assert_eq!((one["state"].as_str(), &one["starts_at"]), (Some("expired"), &one["ends_at"]), "{one}");
    assert_eq!(ids(&app, &viewer, "?state=expired").await, [pending_id.as_str(), active_id.as_str()]);
    assert!(ids(&app, &viewer, "?state=active").await.is_empty());

    // Pages of one.
    let (_, page) = app.get("/api/v1/silences?limit=1", &viewer.access).await;
    assert_eq!(page["items"][0]["id"], pending_id.as_str());
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, next) = app.get(&format!("/api/v1/silences?limit=1&cursor={cursor}"), &viewer.access).await;
    assert_eq!((next["items"][0]["id"].as_str(), &next["next_cursor"]), (Some(active_id.as_str()), &Value::Null), "{next}");
    let (status, body) = app.get("/api/v1/silences?state=muted", &viewer.access).await;
    assert_problem(status, &body, 400, "bad-request", None);

    // Every change is audited, and nothing else.
    let (_, audit) = app.get("/api/v1/audit", &owner.access).await;
    let actions: Vec<(&str, &str)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target_kind"] == "silence")
        .map(|e| (e["action"].as_str().unwrap(), e["target_id"].as_str().unwrap()))
        .collect();
    let want = [("silence.expire", &pending_id), ("silence.expire", &active_id), ("silence.create", &pending_id), ("silence.create", &active_id)];
    assert_eq!(actions, want.map(|(a, id)| (a, id.as_str())));

    // A pending silence turns active when its start comes.
    let now = app.state.clock.now_ms();
    let later = create(
        &app,
        &owner,
        json!({ "matchers": [{ "name": "cluster", "op": "=", "value": "dev" }], "starts_at": rfc3339(now + MINUTE), "ends_at": rfc3339(now + HOUR), "comment": "later" }),
    )
    .await;
    assert_eq!(later["state"], "pending");
    app.state.clock.advance(Duration::from_secs(61));
    let (_, one) = app.get(&format!("/api/v1/silences/{}", later["id"].as_str().unwrap()), &viewer.access).await;
    assert_eq!(one["state"], "active");
}

async fn invalid_silences_are_refused_naming_the_field(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let now = app.state.clock.now_ms();
    let cluster = json!({ "name": "cluster", "op": "=", "value": "prod" });
    let with = |changes: Value| {
        let mut body = json!({ "matchers": [cluster], "ends_at": rfc3339(now + HOUR), "comment": "maintenance" });
        for (k, v) in changes.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let cases = [
        (with(json!({ "matchers": [{ "name": "cluster", "op": "==", "value": "prod" }] })), "matchers[0].op"),
        (with(json!({ "matchers": [cluster, { "name": "object", "op": "=~", "value": "Certificate/(issuer" }] })), "matchers[1].value"),
        (with(json!({ "matchers": [{ "name": "", "op": "=", "value": "prod" }] })), "matchers[0].name"),
        (with(json!({ "matchers": [] })), "matchers"),
        // Each would mute every alert, even those without the label.
        (with(json!({ "matchers": [{ "name": "env", "op": "=~", "value": ".*" }] })), "matchers"),
        (with(json!({ "matchers": [{ "name": "env", "op": "!=", "value": "prod" }, { "name": "team", "op": "=", "value": "" }] })), "matchers"),
        (with(json!({ "starts_at": rfc3339(now + 2 * HOUR), "ends_at": rfc3339(now + HOUR) })), "ends_at"),
        (with(json!({ "ends_at": rfc3339(now - MINUTE) })), "ends_at"),
        (with(json!({ "ends_at": rfc3339(now + 91 * 24 * HOUR) })), "ends_at"),
        (with(json!({ "ends_at": "tomorrow" })), "ends_at"),
        (with(json!({ "comment": " \n " })), "comment"),
        (json!({ "matchers": [cluster], "comment": "no end" }), "body"),
    ];
    for (body, field) in cases {
        let (status, problem) = app.post("/api/v1/silences", &owner.access, body.clone()).await;
        assert_problem(status, &problem, 422, "validation", Some(field));
        assert_eq!(problem["detail"].as_str().map(|d| d.starts_with(field)), Some(true), "{body} -> {problem}");
    }
    // Unknown fields are refused, at the top and inside a matcher.
    let (status, problem) = app.post("/api/v1/silences", &owner.access, with(json!({ "created_by": "someone else" }))).await;
    assert_problem(status, &problem, 422, "validation", Some("created_by"));
    let (status, problem) =
        app.post("/api/v1/silences", &owner.access, with(json!({ "matchers": [{ "name": "a", "op": "=", "value": "b", "regex": true }] }))).await;
    assert_problem(status, &problem, 422, "validation", Some("matchers[0].regex"));
    // Every problem of a request at once.
    let (status, problem) =
        app.post("/api/v1/silences", &owner.access, with(json!({ "matchers": [{ "name": "a", "op": "=~", "value": "(" }], "comment": "" }))).await;
    assert_problem(status, &problem, 422, "validation", Some("matchers[0].value"));
    assert_problem(status, &problem, 422, "validation", Some("comment"));
    let (_, listed) = app.get("/api/v1/silences", &owner.access).await;
    assert_eq!(listed["items"], json!([]), "a refused silence was stored");
}

/// Waits until the receiver got an event about `rule`.
async fn event_about(receiver: &Receiver, rule: &str) -> Value {
    serde_json::from_str(&receiver.event_about(rule).await.1).unwrap()
}

async fn a_muted_alert_notifies_once_its_silence_is_expired(engine: Engine) {
    let app = spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let receiver = Receiver::start(&[]).await;
    create_channel(&app, &owner, &receiver.url).await;
    let now = app.state.clock.now_ms();
    // Made before the cluster: the expiring issuer's alert fires muted from the start.
    let matchers = json!([{ "name": "cluster", "op": "=", "value": "troubled" }, { "name": "object", "op": "=~", "value": "Certificate/.+" }]);
    let silence = create(&app, &owner, json!({ "matchers": matchers, "ends_at": rfc3339(now + HOUR), "comment": "rotating the issuer" })).await;
    let silence_id = silence["id"].as_str().unwrap();
    troubled(&app, &owner).await;

    // (A workload objective's alert joins them once the reported minute is complete.)
    let open =
        alerts(&app, &owner, "", |a| by_rule(a, "control_plane").is_some() && by_rule(a, "certificate_expiry").is_some_and(|c| c["state"] == "firing")).await;
    let cert = by_rule(&open, "certificate_expiry").unwrap().clone();
    assert_eq!(cert["silenced_by"], json!([silence_id]), "{cert}");
    assert_eq!(by_rule(&open, "control_plane").unwrap()["silenced_by"], json!([]));
    let alert_path = format!("/api/v1/alerts/{}", cert["id"].as_str().unwrap());
    let (_, one) = app.get(&alert_path, &owner.access).await;
    assert_eq!(one["silenced_by"], json!([silence_id]));
    // Evaluation runs every 50 ms: a few rounds would have sent it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.received().is_empty(), "a muted alert was sent: {:?}", receiver.events());

    let (status, _) = expire(&app, &owner, silence_id).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let event: Value = serde_json::from_str(&got[0].1).unwrap();
    assert_eq!((event["type"].as_str(), event["alert"]["state"].as_str()), (Some("alert.firing"), Some("firing")), "{event}");
    assert_eq!(event["alert"]["fingerprint"], cert["fingerprint"]);
    assert_eq!(event["alert"]["starts_at"], cert["starts_at"], "the alert began when it began, not when it was sent");
    let (_, one) = app.get(&alert_path, &owner.access).await;
    assert_eq!((one["state"].as_str(), &one["silenced_by"]), (Some("firing"), &json!([])), "{one}");
}

async fn a_silence_that_runs_out_releases_the_firing_and_a_resolution_while_muted_is_not_sent(engine: Engine) {
    let app = spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let receiver = Receiver::start(&[]).await;
    create_channel(&app, &owner, &receiver.url).await;
    let now = app.state.clock.now_ms();
    let short = create(
        &app,
        &owner,
        json!({ "matchers": [{ "name": "alertname", "op": "=", "value": "certificate_expiry" }], "ends_at": rfc3339(now + 20_000), "comment": "a moment" }),
    )
    .await;
    let long = create(
        &app,
        &owner,
        json!({
            "matchers": [{ "name": "check", "op": "=", "value": "control_plane" }, { "name": "severity", "op": "=~", "value": "warning|info" }],
            "ends_at": rfc3339(now + HOUR),
            "comment": "replacing a node",
        }),
    )
    .await;
    troubled(&app, &owner).await;
    alerts(&app, &owner, "", |a| by_rule(a, "certificate_expiry").is_some_and(|c| c["state"] == "firing" && c["silenced_by"] == json!([short["id"]]))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.received().is_empty(), "a muted alert was sent: {:?}", receiver.events());

    // Past its end the short silence releases the certificate's firing; the control plane
    // fires meanwhile, muted by the long one.
    app.state.clock.advance(Duration::from_secs(31));
    let event = event_about(&receiver, "certificate_expiry").await;
    assert_eq!(event["type"], "alert.firing");
    let open = alerts(&app, &owner, "", |a| by_rule(a, "control_plane").is_some_and(|c| c["state"] == "firing")).await;
    assert_eq!(by_rule(&open, "control_plane").unwrap()["silenced_by"], json!([long["id"]]));
    assert_eq!(by_rule(&open, "certificate_expiry").unwrap()["silenced_by"], json!([]));
    let (_, short_now) = app.get(&format!("/api/v1/silences/{}", short["id"].as_str().unwrap()), &owner.access).await;
    assert_eq!(short_now["state"], "expired");

    // The muted control plane alert resolves (its rule turned off): its firing was never
    // sent, so neither is its resolution.
    let (status, _) = app.call(Method::PUT, "/api/v1/alert-rules/control_plane", Some(&owner.access), Some(json!({ "enabled": false }))).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.state.clock.advance(Duration::from_secs(6));
    alerts(&app, &owner, "?state=resolved", |a| by_rule(a, "control_plane").is_some()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let about_control_plane: Vec<Value> = receiver.events().into_iter().filter(|e| e["alert"]["rule"] == "control_plane").collect();
    assert!(about_control_plane.is_empty(), "{about_control_plane:?}");
    let about_cert: Vec<Value> = receiver.events().into_iter().filter(|e| e["alert"]["rule"] == "certificate_expiry").collect();
    assert_eq!(about_cert.len(), 1, "the released firing was sent once: {about_cert:?}");
}

async fn a_silence_is_edited_in_place_until_it_expires(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ada@example.com").await;
    let viewer = app.member(&owner, "vic@example.com", "viewer").await;
    let now = app.state.clock.now_ms();
    let matchers = json!([{ "name": "cluster", "op": "=", "value": "prod-eu-1" }]);
    let silence = create(&app, &owner, json!({ "matchers": matchers, "ends_at": rfc3339(now + HOUR), "comment": "upgrade" })).await;
    let path = format!("/api/v1/silences/{}", silence["id"].as_str().unwrap());
    app.state.clock.advance(Duration::from_secs(60));

    // Wider, longer, explained better; the start and the author stay.
    let edit =
        json!({ "matchers": [{ "name": "cluster", "op": "=~", "value": "prod-eu-.*" }], "ends_at": rfc3339(now + 2 * HOUR), "comment": "upgrade, all of eu" });
    let (status, body) = app.call(Method::PUT, &path, Some(&viewer.access), Some(edit.clone())).await;
    assert_problem(status, &body, 403, "forbidden", None);
    let (status, edited) = app.call(Method::PUT, &path, Some(&owner.access), Some(edit.clone())).await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!((&edited["id"], &edited["starts_at"], &edited["created_by"]), (&silence["id"], &silence["starts_at"], &silence["created_by"]));
    assert_eq!(
        (edited["matchers"][0]["op"].as_str(), edited["comment"].as_str(), edited["state"].as_str()),
        (Some("=~"), Some("upgrade, all of eu"), Some("active"))
    );
    assert_eq!(ms(&edited["ends_at"]), now + 2 * HOUR);
    assert!(ms(&edited["updated_at"]) > ms(&silence["updated_at"]));
    assert_eq!(app.get(&path, &viewer.access).await.1["comment"], "upgrade, all of eu");

    // Checked as on creation.
    let bad = json!({ "matchers": [{ "name": "cluster", "op": "=~", "value": "(eu" }], "ends_at": rfc3339(now + HOUR), "comment": "x" });
    let (status, body) = app.call(Method::PUT, &path, Some(&owner.access), Some(bad)).await;
    assert_problem(status, &body, 422, "validation", Some("matchers[0].value"));

    // Expired, it is history.
    expire(&app, &owner, silence["id"].as_str().unwrap()).await;
    let (status, body) = app.call(Method::PUT, &path, Some(&owner.access), Some(edit)).await;
    assert_problem(status, &body, 409, "silence-expired", None);
    let (_, audit) = app.get("/api/v1/audit", &owner.access).await;
    assert!(audit.to_string().contains("silence.update"));
}
