//! Alert channels and the notification outbox, against a real HTTP receiver on 127.0.0.1:
//! signatures are checked with the `standardwebhooks` crate, not with the code that signs.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use meshfleet_server::domain::alerting::AlertEvent;
use meshfleet_server::domain::alerting::AlertState;
use meshfleet_server::domain::health::Severity;
use meshfleet_server::domain::{AlertId, ChannelId};
use meshfleet_server::store::alerts::Alert;
use meshfleet_server::store::{self, notifications};
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{self, assert_problem, postgres_url, Api, Engine, Login, TestApp, TestDb};
use crate::on_both_engines;
use crate::process::server;

on_both_engines!(
    a_test_event_arrives_signed_and_is_logged,
    during_rotation_both_secrets_verify,
    a_failing_receiver_gets_the_message_on_a_scheduled_retry,
    gone_disables_the_channel,
    an_admin_renames_repoints_and_pauses_a_channel,
    alerting_history_is_kept_for_alert_retention_days,
    retry_after_is_honoured,
    internal_targets_are_refused_on_create_and_at_send_time,
    redelivery_keeps_the_webhook_id,
    enqueue_queues_one_message_per_enabled_channel,
    slack_pagerduty_and_alertmanager_get_their_own_shapes,
    a_server_killed_before_delivering_loses_nothing,
    a_server_killed_between_sending_and_recording_resends_with_the_same_id,
    a_hanging_endpoint_does_not_delay_another,
    a_backlog_larger_than_one_claim_goes_out_in_one_run,
    one_channels_backlog_does_not_fill_a_claim,
    a_channel_failing_for_5_days_is_disabled,
);

/// A status to answer with, and a `Retry-After` value.
type Answer = (u16, Option<&'static str>);

/// What the receiver got: each request's headers and body.
#[derive(Clone, Default)]
pub(crate) struct Receiver {
    got: Arc<Mutex<Vec<(HeaderMap, String)>>>,
    /// Answers to give, in order; 200 once they run out. Status 0: never answer.
    answers: Arc<Mutex<VecDeque<Answer>>>,
    pub(crate) url: String,
}

impl Receiver {
    pub(crate) async fn start(answers: &[Answer]) -> Receiver {
        let mut r = Receiver { answers: Arc::new(Mutex::new(answers.iter().copied().collect())), ..Default::default() };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        r.url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (got, answers) = (r.got.clone(), r.answers.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| async move {
                got.lock().unwrap().push((headers, body));
                let (status, retry_after) = answers.lock().unwrap().pop_front().unwrap_or((200, None));
                if status == 0 {
                    std::future::pending::<()>().await;
                }
                let mut response = (StatusCode::from_u16(status).unwrap(), "receiver says hello").into_response();
                if let Some(secs) = retry_after {
                    response.headers_mut().insert("retry-after", secs.parse().unwrap());
                }
                response
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        r
    }

    /// What arrived so far.
    pub(crate) fn received(&self) -> Vec<(HeaderMap, String)> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `n` requests have arrived (and a little longer, to catch extras).
    pub(crate) async fn wait_for(&self, n: usize, within: Duration) -> Vec<(HeaderMap, String)> {
        let start = Instant::now();
        while self.got.lock().unwrap().len() < n {
            assert!(start.elapsed() < within, "the receiver got {} of {n} requests", self.got.lock().unwrap().len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.got.lock().unwrap().clone()
    }

    /// The events received so far, parsed.
    pub(crate) fn events(&self) -> Vec<serde_json::Value> {
        self.got.lock().unwrap().iter().map(|(_, body)| serde_json::from_str(body).unwrap()).collect()
    }

    /// Waits until an event about `rule` has arrived (others may come first: channels send in
    /// parallel) and returns it with its headers.
    pub(crate) async fn event_about(&self, rule: &str) -> (HeaderMap, String) {
        let start = Instant::now();
        loop {
            let got = self.got.lock().unwrap().clone();
            if let Some(e) = got.into_iter().find(|(_, body)| serde_json::from_str::<serde_json::Value>(body).is_ok_and(|e| e["alert"]["rule"] == rule)) {
                return e;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no event about {rule}; got {:?}", self.events());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A server that may deliver to 127.0.0.1, retrying on `schedule`.
async fn app(engine: Engine, schedule: &str) -> TestApp {
    let db = TestDb::new(engine).await;
    let schedule = schedule.to_owned();
    TestApp::spawn_with(db, move |c| {
        c.alert_webhook_allow = "127.0.0.1".parse().unwrap();
        c.alert_retry_schedule = schedule.split(',').map(|d| Duration::from_millis(d.trim_end_matches("ms").parse().unwrap())).collect();
    })
    .await
}

pub(crate) async fn create_channel(app: &TestApp, who: &Login, url: &str) -> (String, String) {
    create(app, who, json!({ "name": "on-call", "kind": "webhook", "url": url })).await
}

async fn create(app: &TestApp, who: &Login, channel: Value) -> (String, String) {
    let (status, body) = app.post("/api/v1/alert-channels", &who.access, channel).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (body["id"].as_str().unwrap().to_owned(), body["secret"].as_str().unwrap().to_owned())
}

async fn patch_channel(app: &TestApp, access: String, channel: String, body: Value) -> (StatusCode, Value) {
    app.call(Method::PATCH, &format!("/api/v1/alert-channels/{channel}"), Some(&access), Some(body)).await
}

async fn send_test(app: &TestApp, who: &Login, channel: &str) -> String {
    let (status, body) = app.post(&format!("/api/v1/alert-channels/{channel}/test"), &who.access, json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["message_id"].as_str().unwrap().to_owned()
}

pub(crate) fn verify(secret: &str, headers: &HeaderMap, body: &str) -> bool {
    standardwebhooks::Webhook::new(secret).unwrap().verify(body.as_bytes(), headers).is_ok()
}

async fn deliveries(app: &TestApp, who: &Login, channel: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/api/v1/alert-channels/{channel}/deliveries"), &who.access).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["items"].as_array().unwrap().clone()
}

/// Polls until `check` holds on the channel's delivery log.
async fn log_until(app: &TestApp, who: &Login, channel: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let log = deliveries(app, who, channel).await;
        if check(&log) {
            return log;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "delivery log never matched: {log:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_test_event_arrives_signed_and_is_logged(engine: Engine) {
    let app = app(engine, "0ms").await;
    let owner = app.owner("ops@example.com").await;
    let receiver = Receiver::start(&[]).await;
    let (channel, secret) = create_channel(&app, &owner, &receiver.url).await;
    assert!(secret.starts_with("whsec_"));
    let message_id = send_test(&app, &owner, &channel).await;

    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let (headers, body) = &got[0];
    assert!(verify(&secret, headers, body), "signature does not verify: {headers:?}");
    assert!(!verify(&meshfleet_server::alerting::signing::new_secret(), headers, body));
    assert_eq!(headers["webhook-id"], message_id.as_str());
    assert_eq!(headers["content-type"], "application/json");
    let event: Value = serde_json::from_str(body).unwrap();
    assert_eq!(event["id"], message_id.as_str());
    assert_eq!(event["type"], "alert.test");
    assert_eq!(event["version"], "1");
    assert_eq!(event["org_id"], owner.org.as_str());
    assert_eq!(event["alert"]["severity"], "info");

    let log = log_until(&app, &owner, &channel, |l| !l.is_empty()).await;
    assert_eq!(log[0]["message_id"], message_id.as_str());
    assert_eq!(log[0]["status_code"], 200);
    assert_eq!(log[0]["response_excerpt"], "receiver says hello");

    // The secret shows only on creation and on an explicit reveal.
    let (_, listed) = app.get("/api/v1/alert-channels", &owner.access).await;
    let (_, one) = app.get(&format!("/api/v1/alert-channels/{channel}"), &owner.access).await;
    let (_, audit) = app.get("/api/v1/audit", &owner.access).await;
    for shown in [&listed, &one, &audit] {
        assert!(!shown.to_string().contains(&secret[6..]), "secret leaked: {shown}");
        assert!(!shown.to_string().contains("/hook"), "full URL shown: {shown}");
    }
    assert_eq!(one["target"], "http://127.0.0.1");
    let (status, revealed) = app.post(&format!("/api/v1/alert-channels/{channel}/reveal-secret"), &owner.access, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(revealed["secret"], secret.as_str());
    let viewer = app.member(&owner, "viewer@example.com", "viewer").await;
    let (status, _) = app.post(&format!("/api/v1/alert-channels/{channel}/reveal-secret"), &viewer.access, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

async fn during_rotation_both_secrets_verify(engine: Engine) {
    let app = app(engine, "0ms").await;
    let owner = app.owner("ops@example.com").await;
    let receiver = Receiver::start(&[]).await;
    let (channel, old) = create_channel(&app, &owner, &receiver.url).await;
    let (status, rotated) = app.post(&format!("/api/v1/alert-channels/{channel}/rotate-secret"), &owner.access, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new = rotated["secret"].as_str().unwrap();
    assert_ne!(new, old);
    assert_eq!(rotated["previous_secret"], old.as_str());
    send_test(&app, &owner, &channel).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let (headers, body) = &got[0];
    assert_eq!(headers["webhook-signature"].to_str().unwrap().split(' ').count(), 2);
    assert!(verify(new, headers, body), "the new secret does not verify");
    assert!(verify(&old, headers, body), "the old secret does not verify during the overlap");
}

async fn a_failing_receiver_gets_the_message_on_a_scheduled_retry(engine: Engine) {
    let app = app(engine, "0ms,300ms,300ms").await;
    let owner = app.owner("ops@example.com").await;
    let receiver = Receiver::start(&[(500, None), (502, None)]).await;
    let (channel, secret) = create_channel(&app, &owner, &receiver.url).await;
    let message_id = send_test(&app, &owner, &channel).await;
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 3, "a delivered message was sent again");
    for (headers, body) in &got {
        assert_eq!(headers["webhook-id"], message_id.as_str());
        assert_eq!(body, &got[0].1, "the body changed between attempts");
        assert!(verify(&secret, headers, body));
    }
    let log = log_until(&app, &owner, &channel, |l| l.len() == 3).await;
    let codes: Vec<&Value> = log.iter().map(|a| &a["status_code"]).collect();
    assert_eq!(codes, [&json!(200), &json!(502), &json!(500)], "newest first");
    let (_, channel_now) = app.get(&format!("/api/v1/alert-channels/{channel}"), &owner.access).await;
    assert_eq!(channel_now["failing_since"], Value::Null);
    let metrics = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("meshfleet_alert_deliveries_total{outcome=\"retry\"} 2"), "{metrics}");
}

async fn gone_disables_the_channel(engine: Engine) {
    let app = app(engine, "0ms,100ms,100ms").await;
    let owner = app.owner("ops@example.com").await;
    let receiver = Receiver::start(&[(410, None)]).await;
    let (channel, _) = create_channel(&app, &owner, &receiver.url).await;
    send_test(&app, &owner, &channel).await;
    log_until(&app, &owner, &channel, |l| !l.is_empty()).await;
    let (_, now) = app.get(&format!("/api/v1/alert-channels/{channel}"), &owner.access).await;
    assert_eq!(now["enabled"], false, "{now}");
    assert!(now["disabled_reason"].as_str().unwrap().contains("410"));
    send_test(&app, &owner, &channel).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.got.lock().unwrap().len(), 1, "a disabled channel was sent to");

    // An admin turns it back on: the message held meanwhile goes out.
    let (status, now) = patch_channel(&app, owner.access.clone(), channel.clone(), json!({ "enabled": true })).await;
    assert_eq!(status, StatusCode::OK, "{now}");
    assert_eq!((now["enabled"].as_bool(), &now["disabled_reason"], &now["failing_since"]), (Some(true), &Value::Null, &Value::Null), "{now}");
    assert_eq!(receiver.wait_for(2, Duration::from_secs(10)).await.len(), 2);
}

async fn an_admin_renames_repoints_and_pauses_a_channel(engine: Engine) {
    let app = app(engine, "0ms").await;
    let owner = app.owner("ops@example.com").await;
    let viewer = app.member(&owner, "viewer@example.com", "viewer").await;
    let (first, second) = (Receiver::start(&[]).await, Receiver::start(&[]).await);
    let (channel, secret) = create_channel(&app, &owner, &first.url).await;
    let patch = |who: &Login, body: Value| patch_channel(&app, who.access.clone(), channel.clone(), body);

    let (status, body) = patch(&viewer, json!({ "enabled": false })).await;
    assert_problem(status, &body, 403, "forbidden", None);
    for (bad, field) in [
        (json!({ "url": "not a url" }), "url"),
        (json!({ "url": "http://169.254.169.254/latest" }), "url"),
        (json!({ "name": "" }), "name"),
        (json!({ "routing_key": "abc" }), "routing_key"),
    ] {
        let (status, body) = patch(&owner, bad.clone()).await;
        assert_problem(status, &body, 422, "validation", Some(field));
    }
    let (status, body) = patch(&owner, json!({ "secret": "mine" })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // Renamed and pointed at the second receiver: the next message goes there, still signed
    // with the channel's secret.
    let (status, body) = patch(&owner, json!({ "name": "pager", "url": second.url })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "pager");
    send_test(&app, &owner, &channel).await;
    let got = second.wait_for(1, Duration::from_secs(10)).await;
    assert!(verify(&secret, &got[0].0, &got[0].1));
    assert!(first.got.lock().unwrap().is_empty());

    // Paused by an admin: held, then sent when resumed.
    let (_, body) = patch(&owner, json!({ "enabled": false })).await;
    assert_eq!((body["enabled"].as_bool(), body["disabled_reason"].as_str()), (Some(false), Some("disabled by an admin")), "{body}");
    send_test(&app, &owner, &channel).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(second.got.lock().unwrap().len(), 1, "a paused channel was sent to");
    patch(&owner, json!({ "enabled": true })).await;
    assert_eq!(second.wait_for(2, Duration::from_secs(10)).await.len(), 2);

    let (_, audit) = app.get("/api/v1/audit", &owner.access).await;
    let updates = audit["items"].as_array().unwrap().iter().filter(|e| e["action"] == "alert_channel.update").count();
    assert_eq!(updates, 3, "{audit}");
}

async fn retry_after_is_honoured(engine: Engine) {
    // The schedule alone would wait an hour; the receiver asks for one second.
    let app = app(engine, "0ms,3600000ms").await;
    let owner = app.owner("ops@example.com").await;
    let receiver = Receiver::start(&[(429, Some("1"))]).await;
    let (channel, _) = create_channel(&app, &owner, &receiver.url).await;
    send_test(&app, &owner, &channel).await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[0].0["webhook-id"], got[1].0["webhook-id"]);
    let log = log_until(&app, &owner, &channel, |l| l.len() == 2).await;
    let at = |a: &Value| chrono::DateTime::parse_from_rfc3339(a["at"].as_str().unwrap()).unwrap();
    assert!(at(&log[0]) - at(&log[1]) >= chrono::Duration::milliseconds(950), "{log:?}");
}

async fn internal_targets_are_refused_on_create_and_at_send_time(engine: Engine) {
    let app = TestApp::spawn(engine).await;
    let owner = app.owner("ops@example.com").await;
    let receiver = Receiver::start(&[]).await;
    for url in [
        receiver.url.as_str(),
        "https://127.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://10.0.0.7/",
        "https://[::1]/",
        "ftp://example.com/",
    ] {
        let (status, body) = app.post("/api/v1/alert-channels", &owner.access, json!({ "name": "bad", "kind": "webhook", "url": url })).await;
        assert_problem(status, &body, 422, "validation", Some("url"));
    }
    // A name is only checked once resolved, at send time: localhost resolves to loopback.
    let port = receiver.url.split(':').nth(2).unwrap().split('/').next().unwrap();
    let (channel, _) = create_channel(&app, &owner, &format!("https://localhost:{port}/hook")).await;
    send_test(&app, &owner, &channel).await;
    let log = log_until(&app, &owner, &channel, |l| !l.is_empty()).await;
    assert_eq!(log[0]["status_code"], Value::Null);
    assert!(log[0]["error"].as_str().unwrap().contains("internal address"), "{log:?}");
    assert!(receiver.got.lock().unwrap().is_empty(), "the guard let a request through");
}

async fn redelivery_keeps_the_webhook_id(engine: Engine) {
    let app = app(engine, "0ms").await;
    let owner = app.owner("ops@example.com").await;
    let receiver = Receiver::start(&[]).await;
    let (channel, _) = create_channel(&app, &owner, &receiver.url).await;
    let message_id = send_test(&app, &owner, &channel).await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let (status, body) = app.post(&format!("/api/v1/alert-channels/{channel}/deliveries/{message_id}/redeliver"), &owner.access, json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[1].0["webhook-id"], message_id.as_str());
    assert_eq!(got[0].1, got[1].1);
    let (status, _) = app.post(&format!("/api/v1/alert-channels/{channel}/deliveries/msg_unknown/redeliver"), &owner.access, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn enqueue_queues_one_message_per_enabled_channel(engine: Engine) {
    let app = app(engine, "0ms").await;
    let owner = app.owner("ops@example.com").await;
    let (a, b) = (Receiver::start(&[]).await, Receiver::start(&[]).await);
    create_channel(&app, &owner, &a.url).await;
    create_channel(&app, &owner, &b.url).await;
    let other = app.owner("other@example.com").await;
    let c = Receiver::start(&[]).await;
    create_channel(&app, &other, &c.url).await;

    let org = owner.org.parse().unwrap();
    let mut event: AlertEvent = meshfleet_server::alerting::channels::test_event(org, chrono::Utc::now());
    event.event_type = meshfleet_server::domain::alerting::EventType::Firing;
    let mut tx = app.state.db.begin().await.unwrap();
    let queued = notifications::enqueue(&mut tx, org, &event, app.state.clock.now_ms()).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(queued, 2);
    let (got_a, got_b) = (a.wait_for(1, Duration::from_secs(10)).await, b.wait_for(1, Duration::from_secs(10)).await);
    assert_ne!(got_a[0].0["webhook-id"], got_b[0].0["webhook-id"], "message ids are per channel");
    let body: Value = serde_json::from_str(&got_a[0].1).unwrap();
    assert_eq!(body["type"], "alert.firing");
    assert_eq!(body["id"], got_a[0].0["webhook-id"].to_str().unwrap());
    assert!(c.got.lock().unwrap().is_empty(), "another organization's channel got the event");
}

/// A firing or resolved event as alert evaluation makes them.
fn event(org: &str, event_type: meshfleet_server::domain::alerting::EventType) -> AlertEvent {
    use meshfleet_server::domain::alerting::{AlertState, EventType};
    let mut event = meshfleet_server::alerting::channels::test_event(org.parse().unwrap(), chrono::Utc::now());
    event.event_type = event_type;
    event.alert.fingerprint = "f1ngerpr1nt".into();
    event.alert.rule = "agent".into();
    event.alert.severity = meshfleet_server::domain::health::Severity::Critical;
    event.alert.summary = "the agent is disconnected".into();
    event.dashboard_url = Some("https://meshfleet.example.com/clusters/example".into());
    if event_type == EventType::Resolved {
        event.alert.state = AlertState::Resolved;
        event.alert.ends_at = Some(chrono::Utc::now());
    }
    event
}

async fn slack_pagerduty_and_alertmanager_get_their_own_shapes(engine: Engine) {
    use meshfleet_server::domain::alerting::EventType;
    let app = app(engine, "0ms").await;
    let owner = app.owner("ops@example.com").await;
    let (slack, pd, am) = (Receiver::start(&[]).await, Receiver::start(&[]).await, Receiver::start(&[]).await);
    let (status, body) = app.post("/api/v1/alert-channels", &owner.access, json!({ "name": "pd", "kind": "pagerduty", "url": pd.url })).await;
    assert_problem(status, &body, 422, "validation", Some("routing_key"));
    create(&app, &owner, json!({ "name": "chat", "kind": "slack", "url": slack.url })).await;
    create(&app, &owner, json!({ "name": "pd", "kind": "pagerduty", "url": pd.url, "routing_key": "R0UT1NGKEY" })).await;
    create(&app, &owner, json!({ "name": "team-receiver", "kind": "alertmanager", "url": am.url })).await;

    let now = app.state.clock.now_ms();
    let mut tx = app.state.db.begin().await.unwrap();
    assert_eq!(notifications::enqueue(&mut tx, owner.org.parse().unwrap(), &event(&owner.org, EventType::Firing), now).await.unwrap(), 3);
    notifications::enqueue(&mut tx, owner.org.parse().unwrap(), &event(&owner.org, EventType::Resolved), now).await.unwrap();
    tx.commit().await.unwrap();
    let body = |r: &(HeaderMap, String)| serde_json::from_str::<Value>(&r.1).unwrap();

    let got = slack.wait_for(2, Duration::from_secs(10)).await;
    let firing = got.iter().map(body).find(|b| b["text"].as_str().unwrap().contains("[FIRING]")).unwrap();
    assert_eq!(firing["text"], "[FIRING] example: the agent is disconnected");
    assert_eq!(firing["blocks"][0]["type"], "section");
    assert!(firing["blocks"][0]["text"]["text"].as_str().unwrap().contains("<https://meshfleet.example.com/clusters/example|"));

    let got: Vec<Value> = pd.wait_for(2, Duration::from_secs(10)).await.iter().map(body).collect();
    let actions: Vec<&str> = got.iter().map(|b| b["event_action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"trigger") && actions.contains(&"resolve"), "{got:?}");
    for b in &got {
        assert_eq!(b["routing_key"], "R0UT1NGKEY");
        assert_eq!(b["dedup_key"], "f1ngerpr1nt");
    }
    let trigger = got.iter().find(|b| b["event_action"] == "trigger").unwrap();
    assert_eq!(trigger["payload"]["severity"], "critical");
    assert_eq!(trigger["payload"]["source"], "example");
    assert_eq!(trigger["links"][0]["href"], "https://meshfleet.example.com/clusters/example");

    let got: Vec<Value> = am.wait_for(2, Duration::from_secs(10)).await.iter().map(body).collect();
    let firing = got.iter().find(|b| b["status"] == "firing").unwrap();
    assert_eq!(firing["version"], "4");
    assert_eq!(firing["receiver"], "team-receiver");
    assert_eq!(firing["groupLabels"], json!({ "alertname": "agent" }));
    assert_eq!(firing["commonLabels"]["severity"], "critical");
    assert_eq!(firing["commonAnnotations"]["summary"], "the agent is disconnected");
    assert!(firing["groupKey"].is_string() && firing["externalURL"].is_string());
    let alert = &firing["alerts"][0];
    assert_eq!(alert["labels"]["alertname"], "agent");
    assert_eq!(alert["fingerprint"], "f1ngerpr1nt");
    assert_eq!(alert["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(alert["generatorURL"], "https://meshfleet.example.com/clusters/example");
    assert!(chrono::DateTime::parse_from_rfc3339(alert["startsAt"].as_str().unwrap()).is_ok());
    let resolved = got.iter().find(|b| b["status"] == "resolved").unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(resolved["alerts"][0]["endsAt"].as_str().unwrap()).is_ok());

    // The routing key and the receivers' URLs are secrets: never in reads, the outbox or the log.
    let (_, listed) = app.get("/api/v1/alert-channels", &owner.access).await;
    let (_, audit) = app.get("/api/v1/audit", &owner.access).await;
    let bodies: Vec<String> = sqlx::query_scalar("SELECT body FROM notifications").fetch_all(&app.state.db.pool).await.unwrap();
    for shown in [listed.to_string(), audit.to_string(), bodies.join("\n")] {
        assert!(!shown.contains("R0UT1NGKEY") && !shown.contains("/hook"), "secret shown: {shown}");
    }
}

/// A server process on `db` that may deliver to 127.0.0.1, with `roles`.
fn process(db: &TestDb, key: &str, name: &str, roles: &str) -> meshfleet_test_support::server::ServerProcess {
    let env = [("MESHFLEET_ROLES", roles), ("MESHFLEET_ALERT_WEBHOOK_ALLOW", "127.0.0.1"), ("MESHFLEET_ALERT_DELIVERY_TIMEOUT_MS", "2000")];
    server().replica(db, key, name, &env)
}

/// Queued, then the server is killed before anything could send it (it has no worker role);
/// the next server delivers it.
async fn a_server_killed_before_delivering_loses_nothing(engine: Engine) {
    let db = TestDb::new(engine).await;
    let key = meshfleet_server::secrets::Sealer::generate_key();
    let receiver = Receiver::start(&[]).await;
    let mut a = process(&db, &key, "a", "api");
    let api = Api::signup(&a.url(), "ops@example.com").await;
    let channel = api.post("/api/v1/alert-channels", json!({ "name": "on-call", "kind": "webhook", "url": receiver.url })).await;
    let message_id = api.post(&format!("/api/v1/alert-channels/{}/test", channel["id"].as_str().unwrap()), json!({})).await["message_id"].clone();
    a.kill();
    assert!(receiver.got.lock().unwrap().is_empty());

    let _b = process(&db, &key, "b", "api,worker");
    let got = receiver.wait_for(1, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0["webhook-id"], message_id.as_str().unwrap());
}

/// The receiver has the request but the server dies before recording the answer: the next
/// server sends it again, with the same id and body, once its claim has expired.
async fn a_server_killed_between_sending_and_recording_resends_with_the_same_id(engine: Engine) {
    let db = TestDb::new(engine).await;
    let key = meshfleet_server::secrets::Sealer::generate_key();
    let receiver = Receiver::start(&[(0, None)]).await;
    let mut a = process(&db, &key, "a", "api,worker");
    let api = Api::signup(&a.url(), "ops@example.com").await;
    let channel = api.post("/api/v1/alert-channels", json!({ "name": "on-call", "kind": "webhook", "url": receiver.url })).await;
    let channel = channel["id"].as_str().unwrap().to_owned();
    let message_id = api.post(&format!("/api/v1/alert-channels/{channel}/test"), json!({})).await["message_id"].clone();
    receiver.wait_for(1, Duration::from_secs(15)).await;
    a.kill();

    let b = process(&db, &key, "b", "api,worker");
    let got = receiver.wait_for(2, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 2, "sent more than once after the restart");
    for (headers, body) in &got {
        assert_eq!(headers["webhook-id"], message_id.as_str().unwrap());
        assert_eq!(body, &got[0].1);
    }
    let api = Api::login(&b.url(), "ops@example.com").await;
    let log = api.get(&format!("/api/v1/alert-channels/{channel}/deliveries")).await;
    assert_eq!(log["items"].as_array().unwrap().len(), 1, "{log}");
    assert_eq!(log["items"][0]["status_code"], 200);
}

/// 240 messages for 60 channels: more than one claim takes (100), and exactly what every
/// channel may have in flight (4), so one run of the delivery job sends them all.
async fn a_backlog_larger_than_one_claim_goes_out_in_one_run(engine: Engine) {
    // Without the worker role nothing but this test runs the delivery job.
    let app = TestApp::spawn_with(TestDb::new(engine).await, |c| {
        c.roles.worker = false;
        c.alert_webhook_allow = "127.0.0.1".parse().unwrap();
    })
    .await;
    let owner = app.owner("ops@example.com").await;
    let mut receivers = Vec::new();
    for i in 0..60 {
        let r = Receiver::start(&[]).await;
        create(&app, &owner, json!({ "name": format!("on-call-{i}"), "kind": "webhook", "url": r.url })).await;
        receivers.push(r);
    }
    let org = owner.org.parse().unwrap();
    let mut tx = app.state.db.begin().await.unwrap();
    for _ in 0..4 {
        let mut event = meshfleet_server::alerting::channels::test_event(org, chrono::Utc::now());
        event.event_type = meshfleet_server::domain::alerting::EventType::Firing;
        assert_eq!(notifications::enqueue(&mut tx, org, &event, app.state.clock.now_ms()).await.unwrap(), 60);
    }
    tx.commit().await.unwrap();

    meshfleet_server::alerting::delivery::run(app.state.clone()).await.unwrap();
    let received = || receivers.iter().map(|r| r.got.lock().unwrap().len()).sum::<usize>();
    let start = Instant::now();
    while received() < 240 && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(received(), 240, "one run sent only part of the backlog");
    assert!(receivers.iter().all(|r| r.got.lock().unwrap().len() == 4));
}

/// A claim takes at most a channel's in-flight limit of its messages: a backlog on one channel
/// (older than everything else) leaves room for the others'.
async fn one_channels_backlog_does_not_fill_a_claim(engine: Engine) {
    let app = TestApp::spawn_with(TestDb::new(engine).await, |c| c.roles.worker = false).await;
    let owner = app.owner("ops@example.com").await;
    let (backlogged, _) = create(&app, &owner, json!({ "name": "slow", "kind": "webhook", "url": "https://hooks.example.com/slow" })).await;
    let backlogged: ChannelId = backlogged.parse().unwrap();
    let org = owner.org.parse().unwrap();
    let mut tx = app.state.db.begin().await.unwrap();
    let channel = store::alert_channels::get(&mut tx, org, backlogged).await.unwrap().unwrap();
    let event = meshfleet_server::alerting::channels::test_event(org, chrono::Utc::now());
    for _ in 0..150 {
        notifications::enqueue_for(&mut tx, &channel, &event, app.state.clock.now_ms() - 60_000).await.unwrap();
    }
    tx.commit().await.unwrap();
    create(&app, &owner, json!({ "name": "fast", "kind": "webhook", "url": "https://hooks.example.com/fast" })).await;
    let mut tx = app.state.db.begin().await.unwrap();
    notifications::enqueue(&mut tx, org, &event, app.state.clock.now_ms()).await.unwrap();
    tx.commit().await.unwrap();

    let now = app.state.clock.now_ms();
    let mut tx = app.state.db.begin().await.unwrap();
    let claimed = notifications::claim(&mut tx, now, now + 60_000, &[], 4, 100).await.unwrap();
    tx.commit().await.unwrap();
    let of_backlogged = claimed.iter().filter(|n| n.channel_id == backlogged).count();
    assert_eq!((claimed.len(), of_backlogged), (5, 4), "4 of the backlog's 151 messages and the other channel's one: {claimed:?}");
}

async fn a_hanging_endpoint_does_not_delay_another(engine: Engine) {
    let app = app(engine, "0ms").await;
    let owner = app.owner("ops@example.com").await;
    let dead = Receiver::start(&[(0, None); 8]).await;
    let alive = Receiver::start(&[]).await;
    let (dead_channel, _) = create_channel(&app, &owner, &dead.url).await;
    let (alive_channel, _) = create_channel(&app, &owner, &alive.url).await;
    for _ in 0..8 {
        send_test(&app, &owner, &dead_channel).await;
    }
    dead.wait_for(4, Duration::from_secs(10)).await;
    let sent = Instant::now();
    send_test(&app, &owner, &alive_channel).await;
    alive.wait_for(1, Duration::from_secs(3)).await;
    assert!(sent.elapsed() < Duration::from_secs(3), "the live endpoint waited {:?}", sent.elapsed());
    assert_eq!(dead.got.lock().unwrap().len(), 4, "more than 4 sends in flight to one channel");
}

async fn a_channel_failing_for_5_days_is_disabled(engine: Engine) {
    let app = app(engine, "0ms,100ms,100ms,100ms").await;
    let owner = app.owner("ops@example.com").await;
    let receiver = Receiver::start(&[(500, None); 4]).await;
    let (channel, _) = create_channel(&app, &owner, &receiver.url).await;
    send_test(&app, &owner, &channel).await;
    log_until(&app, &owner, &channel, |l| !l.is_empty()).await;
    let (_, failing) = app.get(&format!("/api/v1/alert-channels/{channel}"), &owner.access).await;
    assert!(failing["failing_since"].is_string() && failing["enabled"] == true, "{failing}");
    app.state.clock.advance(Duration::from_secs(5 * 24 * 3600));
    let owner = app.login("ops@example.com").await;
    log_until(&app, &owner, &channel, |l| l.len() >= 2).await;
    let (_, now) = app.get(&format!("/api/v1/alert-channels/{channel}"), &owner.access).await;
    assert_eq!(now["enabled"], false, "{now}");
    assert_eq!(now["disabled_reason"], "every delivery failed for 5 days");
}

/// Three replicas on one PostgreSQL deliver a backlog together, each message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_deliver_each_message_once() {
    if postgres_url().is_none() {
        return;
    }
    let db = TestDb::new(Engine::Postgres).await;
    let key = meshfleet_server::secrets::Sealer::generate_key();
    let receiver = Receiver::start(&[]).await;
    let a = process(&db, &key, "a", "api");
    let api = Api::signup(&a.url(), "ops@example.com").await;
    let channel = api.post("/api/v1/alert-channels", json!({ "name": "on-call", "kind": "webhook", "url": receiver.url })).await;
    let path = format!("/api/v1/alert-channels/{}/test", channel["id"].as_str().unwrap());
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..150 {
        ids.insert(api.post(&path, json!({})).await["message_id"].as_str().unwrap().to_owned());
    }
    // Three replicas claim from the same outbox at once.
    let _workers = [process(&db, &key, "b", "worker"), process(&db, &key, "c", "worker"), process(&db, &key, "d", "worker")];
    receiver.wait_for(150, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got_ids: Vec<String> = receiver.got.lock().unwrap().iter().map(|(h, _)| h["webhook-id"].to_str().unwrap().to_owned()).collect();
    assert_eq!(got_ids.len(), 150, "some messages were sent twice");
    assert_eq!(got_ids.into_iter().collect::<std::collections::BTreeSet<_>>(), ids);
}

async fn alerting_history_is_kept_for_alert_retention_days(engine: Engine) {
    let app = app(engine, "0ms").await;
    let owner = app.owner("ops@example.com").await;
    let receiver = Receiver::start(&[]).await;
    let (channel, _) = create_channel(&app, &owner, &receiver.url).await;
    send_test(&app, &owner, &channel).await;
    log_until(&app, &owner, &channel, |l| !l.is_empty()).await;
    let now = app.state.clock.now_ms();
    let silence =
        json!({ "matchers": [{ "name": "cluster", "op": "=", "value": "prod" }], "ends_at": helpers::rfc3339(now + 60_000), "comment": "maintenance" });
    let (status, silence) = app.post("/api/v1/silences", &owner.access, silence).await;
    assert_eq!(status, StatusCode::CREATED, "{silence}");
    let (status, _) = app.call(Method::DELETE, &format!("/api/v1/silences/{}", silence["id"].as_str().unwrap()), Some(&owner.access), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let cluster = app.create_cluster(&owner, "prod", json!({})).await;
    let resolved = Alert {
        id: AlertId::new(),
        org_id: owner.org.parse().unwrap(),
        cluster_id: cluster["cluster"]["id"].as_str().unwrap().parse().unwrap(),
        fingerprint: "0123456789abcdef".into(),
        rule: "agent".into(),
        object: "Agent".into(),
        severity: Severity::Critical,
        summary: "agent disconnected".into(),
        labels: Default::default(),
        state: AlertState::Resolved,
        starts_at: now - 60_000,
        fired_at: Some(now - 60_000),
        cleared_at: Some(now - 10_000),
        ends_at: Some(now),
        notified_at: Some(now - 60_000),
    };
    store::alerts::insert(&mut app.state.db.pool.acquire().await.unwrap(), &resolved, now).await.unwrap();
    // A paused channel's notification stays pending: it is not history, whatever its age.
    patch_channel(&app, owner.access.clone(), channel.clone(), json!({ "enabled": false })).await;
    send_test(&app, &owner, &channel).await;

    // Within the 90 days: all kept.
    meshfleet_server::worker::retention(app.state.clone()).await.unwrap();
    let count = |table: &'static str| {
        let pool = app.state.db.pool.clone();
        async move { sqlx::query_scalar::<_, i64>(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(&pool).await.unwrap() }
    };
    let before = [count("alerts").await, count("notifications").await, count("delivery_attempts").await, count("silences").await];
    assert_eq!(before, [1, 2, 1, 1]);

    // 91 days on: the resolved alert, the sent message with its log and the expired silence go.
    app.state.clock.advance(Duration::from_secs(91 * 86_400));
    meshfleet_server::worker::retention(app.state.clone()).await.unwrap();
    let after = [count("alerts").await, count("notifications").await, count("delivery_attempts").await, count("silences").await];
    assert_eq!(after, [0, 1, 0, 0], "the held notification must stay");
}
