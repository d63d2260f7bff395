//! Channel kinds and what each receives: the body an `AlertEvent` renders to. Rendering is
//! done once, when a notification is queued, so every attempt sends the same bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::domain::alerting::{AlertBody, AlertCluster, AlertEvent, AlertState, EventType, EVENT_VERSION};
use crate::domain::health::Severity;
use crate::domain::{ClusterId, OrgId};

/// How a channel is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = AlertChannelKind)]
pub enum ChannelKind {
    /// A signed (Standard Webhooks) POST of the versioned alert event.
    Webhook,
    /// A Slack incoming webhook (text and blocks); its URL is the secret.
    Slack,
    /// PagerDuty Events API v2: trigger and resolve, `dedup_key` = the alert's fingerprint.
    Pagerduty,
    /// An Alertmanager webhook receiver (payload version 4).
    Alertmanager,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
            ChannelKind::Slack => "slack",
            ChannelKind::Pagerduty => "pagerduty",
            ChannelKind::Alertmanager => "alertmanager",
        }
    }
}

impl std::str::FromStr for ChannelKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [ChannelKind::Webhook, ChannelKind::Slack, ChannelKind::Pagerduty, ChannelKind::Alertmanager]
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown channel kind {s:?}"))
    }
}

/// Where PagerDuty's Events API v2 takes events, when a channel names no URL.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// The request body `kind` sends for `event` as message `message_id` to the channel named
/// `receiver`. A webhook's event carries the message id as its `id`, so the body and the
/// `webhook-id` header agree. A PagerDuty body leaves `routing_key` empty: the key is a
/// secret, sealed with the channel and filled in only when sending (`with_routing_key`).
pub fn render(kind: ChannelKind, receiver: &str, event: &AlertEvent, message_id: &str) -> String {
    match kind {
        ChannelKind::Webhook => {
            serde_json::to_value(AlertEvent { id: message_id.to_owned(), ..event.clone() }).expect("an event always serializes").to_string()
        }
        ChannelKind::Pagerduty => pagerduty(event).to_string(),
        ChannelKind::Slack | ChannelKind::Alertmanager => {
            let a = &event.alert;
            let labels = BTreeMap::from([("alertname".to_owned(), a.rule.clone())]);
            let key = format!("{{}}:{{alertname=\"{}\", fingerprint=\"{}\"}}", a.rule, a.fingerprint);
            render_group(kind, receiver, &Group { key, labels: &labels, alerts: std::slice::from_ref(event) })
        }
    }
}

/// Alerts notified together: a group of a notification policy (or one alert alone).
pub struct Group<'a> {
    /// Alertmanager's `groupKey`: the route and the group's labels.
    pub key: String,
    /// The values of the route's `group_by` labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Each alert's event, firing ones first; its type says firing or resolved.
    pub alerts: &'a [AlertEvent],
}

/// What Slack and Alertmanager receivers get for a group: one message for all its alerts.
/// Webhooks and PagerDuty take one event per alert (`render`).
pub fn render_group(kind: ChannelKind, receiver: &str, group: &Group) -> String {
    match kind {
        ChannelKind::Slack => slack(group),
        ChannelKind::Alertmanager => alertmanager(receiver, group),
        ChannelKind::Webhook | ChannelKind::Pagerduty => unreachable!("webhooks and PagerDuty take each alert alone"),
    }
    .to_string()
}

/// The stored PagerDuty body with the channel's routing key in it.
pub fn with_routing_key(body: &str, routing_key: &str) -> Result<String, serde_json::Error> {
    let mut value: Value = serde_json::from_str(body)?;
    value["routing_key"] = json!(routing_key);
    Ok(value.to_string())
}

fn title(event: &AlertEvent) -> String {
    let state = match event.event_type {
        EventType::Resolved => "RESOLVED",
        EventType::Firing => "FIRING",
        EventType::Test => "TEST",
    };
    format!("[{state}] {}: {}", event.cluster.name, event.alert.summary)
}

/// Also PagerDuty's severity names (it has `error` too, which nothing maps to).
fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

fn slack(group: &Group) -> Value {
    let line = |event: &AlertEvent| {
        let link = event.dashboard_url.as_ref().map(|u| format!(" <{u}|Open in Meshfleet>")).unwrap_or_default();
        format!("*{}*{link}", title(event))
    };
    let context = |event: &AlertEvent| {
        let a = &event.alert;
        format!("severity *{}* \u{2022} rule `{}` \u{2022} since {}", severity(a.severity), a.rule, a.starts_at.to_rfc3339())
    };
    if let [event] = group.alerts {
        return json!({
            "text": title(event),
            "blocks": [
                { "type": "section", "text": { "type": "mrkdwn", "text": line(event) } },
                { "type": "context", "elements": [{ "type": "mrkdwn", "text": context(event) }] },
            ],
        });
    }
    let firing = group.alerts.iter().filter(|e| e.event_type != EventType::Resolved).count();
    let state = if firing > 0 { format!("FIRING:{firing}") } else { "RESOLVED".to_owned() };
    let labels: Vec<String> = group.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let text = format!("[{state}] {}", labels.join(" "));
    let mut blocks = vec![json!({ "type": "section", "text": { "type": "mrkdwn", "text": format!("*{text}*") } })];
    // Slack takes at most 50 blocks: two per alert after the header, the rest summed up.
    for event in group.alerts.iter().take(SLACK_ALERTS) {
        blocks.push(json!({ "type": "section", "text": { "type": "mrkdwn", "text": line(event) } }));
        blocks.push(json!({ "type": "context", "elements": [{ "type": "mrkdwn", "text": context(event) }] }));
    }
    if group.alerts.len() > SLACK_ALERTS {
        let more = format!("and {} more", group.alerts.len() - SLACK_ALERTS);
        blocks.push(json!({ "type": "context", "elements": [{ "type": "mrkdwn", "text": more }] }));
    }
    json!({ "text": text, "blocks": blocks })
}

/// Alerts shown one by one in a Slack message.
const SLACK_ALERTS: usize = 20;

fn pagerduty(event: &AlertEvent) -> Value {
    let action = if event.event_type == EventType::Resolved { "resolve" } else { "trigger" };
    let severity = severity(event.alert.severity);
    let links: Vec<Value> = event.dashboard_url.iter().map(|u| json!({ "href": u, "text": "Open in Meshfleet" })).collect();
    json!({
        "routing_key": "",
        "event_action": action,
        "dedup_key": event.alert.fingerprint,
        "payload": {
            "summary": title(event),
            "source": event.cluster.name,
            "severity": severity,
            "timestamp": event.alert.starts_at.to_rfc3339(),
            "component": event.alert.rule,
            "custom_details": event.alert.labels,
        },
        "links": links,
    })
}

/// Alertmanager's webhook payload, version 4.
fn alertmanager(receiver: &str, group: &Group) -> Value {
    let alerts: Vec<(BTreeMap<String, String>, &AlertEvent)> =
        group.alerts.iter().map(|e| (crate::domain::alerting::matchable_labels(&e.alert.labels, &e.alert.rule, e.alert.severity), e)).collect();
    let firing = group.alerts.iter().any(|e| e.event_type != EventType::Resolved);
    let status = |resolved: bool| if resolved { "resolved" } else { "firing" };
    let annotations = |e: &AlertEvent| BTreeMap::from([("summary".to_owned(), e.alert.summary.clone())]);
    let url = group.alerts.iter().find_map(|e| e.dashboard_url.clone()).unwrap_or_default();
    let items: Vec<Value> = alerts
        .iter()
        .map(|(labels, e)| {
            let a = &e.alert;
            // Alertmanager's zero time means "not ended".
            let ends_at = a.ends_at.map(|t| t.to_rfc3339()).unwrap_or_else(|| "0001-01-01T00:00:00Z".into());
            json!({
                "status": status(e.event_type == EventType::Resolved),
                "labels": labels,
                "annotations": annotations(e),
                "startsAt": a.starts_at.to_rfc3339(),
                "endsAt": ends_at,
                "generatorURL": e.dashboard_url.clone().unwrap_or_default(),
                "fingerprint": a.fingerprint,
            })
        })
        .collect();
    json!({
        "version": "4",
        "groupKey": group.key,
        "truncatedAlerts": 0,
        "status": status(!firing),
        "receiver": receiver,
        "groupLabels": group.labels,
        "commonLabels": common(alerts.iter().map(|(labels, _)| labels.clone())),
        "commonAnnotations": common(group.alerts.iter().map(annotations)),
        "externalURL": url,
        "alerts": items,
    })
}

/// The labels (or annotations) every one of `maps` has, with the same value.
fn common(mut maps: impl Iterator<Item = BTreeMap<String, String>>) -> BTreeMap<String, String> {
    let first = maps.next().unwrap_or_default();
    maps.fold(first, |acc, m| acc.into_iter().filter(|(k, v)| m.get(k) == Some(v)).collect())
}

/// The made-up event `POST /alert-channels/{id}/test` sends: an `alert.test` about a cluster
/// named `example`, so a receiver can be checked without a real alert.
pub fn test_event(org: OrgId, now: chrono::DateTime<chrono::Utc>) -> AlertEvent {
    let labels = [("cluster", "example"), ("check", "test"), ("severity", "info")].into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    AlertEvent {
        id: String::new(),
        event_type: EventType::Test,
        version: EVENT_VERSION.to_owned(),
        timestamp: now,
        org_id: org,
        cluster: AlertCluster { id: ClusterId(uuid::Uuid::nil()), name: "example".into() },
        alert: AlertBody {
            fingerprint: "test".into(),
            rule: "test".into(),
            severity: Severity::Info,
            state: AlertState::Firing,
            summary: "A test notification from Meshfleet".into(),
            labels,
            starts_at: now,
            ends_at: None,
        },
        dashboard_url: None,
    }
}
