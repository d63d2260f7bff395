//! Alerts as channels receive them: the versioned event every notification carries
//! (`alert.firing`, `alert.resolved`, `alert.test`). Evaluation (`alerting::rules`) makes them;
//! delivery (`alerting::delivery`) renders them for each kind of channel and sends them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::health::Severity;
use super::{ClusterId, OrgId};

/// Version of the event's JSON shape; a change that could break a receiver makes a new one.
pub const EVENT_VERSION: &str = "1";

/// What happened to an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum EventType {
    #[serde(rename = "alert.firing")]
    Firing,
    #[serde(rename = "alert.resolved")]
    Resolved,
    /// Sent on request to check a channel; its alert is made up.
    #[serde(rename = "alert.test")]
    Test,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Firing => "alert.firing",
            EventType::Resolved => "alert.resolved",
            EventType::Test => "alert.test",
        }
    }
}

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = AlertState)]
pub enum AlertState {
    /// The condition holds but not yet for the rule's "for" duration: nothing is sent.
    Pending,
    Firing,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// The cluster an alert is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlertCluster {
    pub id: ClusterId,
    pub name: String,
}

/// An alert as an event carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlertBody {
    /// Stable across the alert's life: a hash of its rule and labels. PagerDuty's `dedup_key`.
    pub fingerprint: String,
    /// The rule that raised it (a built-in check name such as `agent`, or a custom rule's id).
    pub rule: String,
    pub severity: Severity,
    pub state: AlertState,
    /// One line for people.
    pub summary: String,
    /// `cluster`, `check`, `object`, `severity` and the cluster's own labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// When the condition began (RFC 3339).
    pub starts_at: chrono::DateTime<chrono::Utc>,
    /// When it resolved; absent while firing.
    pub ends_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The JSON document a webhook receives (and, rendered for them, Slack, PagerDuty and
/// Alertmanager receivers). Its `id` is the `webhook-id`: the same on every attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AlertEvent {
    /// `msg_` + a unique id; receivers de-duplicate on it.
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub version: String,
    /// When the event was made (RFC 3339).
    pub timestamp: chrono::DateTime<chrono::Utc>,
    pub org_id: OrgId,
    pub cluster: AlertCluster,
    pub alert: AlertBody,
    /// The cluster's page on the dashboard, when `public_url` is set.
    pub dashboard_url: Option<String>,
}
