//! Channel kinds and what each receives: the body an `AlertEvent` renders to. Rendering is
//! done once, when a notification is queued, so every attempt sends the same bytes.

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
    let body = match kind {
        ChannelKind::Webhook => serde_json::to_value(AlertEvent { id: message_id.to_owned(), ..event.clone() }).expect("an event always serializes"),
        ChannelKind::Slack => slack(event),
        ChannelKind::Pagerduty => pagerduty(event),
        ChannelKind::Alertmanager => alertmanager(receiver, event),
    };
    body.to_string()
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

fn slack(event: &AlertEvent) -> Value {
    let link = event.dashboard_url.as_ref().map(|u| format!(" <{u}|Open in Meshfleet>")).unwrap_or_default();
    let context =
        format!("severity *{}* \u{2022} rule `{}` \u{2022} since {}", severity(event.alert.severity), event.alert.rule, event.alert.starts_at.to_rfc3339());
    json!({
        "text": title(event),
        "blocks": [
            { "type": "section", "text": { "type": "mrkdwn", "text": format!("*{}*{link}", title(event)) } },
            { "type": "context", "elements": [{ "type": "mrkdwn", "text": context }] },
        ],
    })
}

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

/// Alertmanager's webhook payload, version 4: one group holding the one alert.
fn alertmanager(receiver: &str, event: &AlertEvent) -> Value {
    let a = &event.alert;
    let status = if a.state == AlertState::Resolved { "resolved" } else { "firing" };
    let labels = crate::domain::alerting::matchable_labels(&a.labels, &a.rule, a.severity);
    let annotations = json!({ "summary": a.summary });
    // Alertmanager's zero time means "not ended".
    let ends_at = a.ends_at.map(|t| t.to_rfc3339()).unwrap_or_else(|| "0001-01-01T00:00:00Z".into());
    let url = event.dashboard_url.clone().unwrap_or_default();
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{}\", fingerprint=\"{}\"}}", a.rule, a.fingerprint),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": { "alertname": a.rule },
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": url,
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": a.starts_at.to_rfc3339(),
            "endsAt": ends_at,
            "generatorURL": url,
            "fingerprint": a.fingerprint,
        }],
    })
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
