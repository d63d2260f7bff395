//! Channel kinds and what each receives: the body an `AlertEvent` renders to. Rendering is
//! done once, when a notification is queued, so every attempt sends the same bytes.

use serde::{Deserialize, Serialize};
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
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
        }
    }
}

impl std::str::FromStr for ChannelKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "webhook" => Ok(ChannelKind::Webhook),
            other => Err(format!("unknown channel kind {other:?}")),
        }
    }
}

/// The request body `kind` sends for `event` as message `message_id`. The event's `id` is
/// the message id, so the body and the `webhook-id` header agree.
pub fn render(kind: ChannelKind, event: &AlertEvent, message_id: &str) -> String {
    match kind {
        ChannelKind::Webhook => {
            let event = AlertEvent { id: message_id.to_owned(), ..event.clone() };
            serde_json::to_string(&event).expect("an event always serializes")
        }
    }
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
