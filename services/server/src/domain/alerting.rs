//! Alerts as channels receive them: the versioned event every notification carries
//! (`alert.firing`, `alert.resolved`, `alert.test`). Evaluation (`alerting::rules`) makes them;
//! delivery (`alerting::delivery`) renders them for each kind of channel and sends them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::health::Severity;
use super::{ClusterId, OrgId};

/// Version of the event's JSON shape; a change that could break a receiver makes a new one.
pub const EVENT_VERSION: &str = "1";

/// What happened to an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = AlertEventType)]
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

/// A built-in rule: alerts on one health check's findings (`health::Finding::check`).
#[derive(Debug, Clone, Copy)]
pub struct BuiltinRule {
    pub name: &'static str,
    pub description: &'static str,
    /// How long a finding must hold before its alert fires, unless the organization says
    /// otherwise. Zero where the check already waits (an agent turns stale only after
    /// `agent_stale_ms` of silence).
    pub default_for_ms: i64,
}

/// The built-in rules, on for every organization until it turns one off.
pub const BUILTIN_RULES: [BuiltinRule; 11] = [
    BuiltinRule { name: "agent", description: "The cluster's agent is stale or disconnected", default_for_ms: 0 },
    BuiltinRule { name: "certificate_expiry", description: "A mesh certificate expired or expires within the warning period", default_for_ms: 0 },
    BuiltinRule { name: "success_rate", description: "The cluster's success rate is under the health thresholds", default_for_ms: 60_000 },
    BuiltinRule { name: "control_plane", description: "Control plane replicas are not ready", default_for_ms: 30_000 },
    BuiltinRule { name: "proxy_versions", description: "Proxies run another version than the control plane", default_for_ms: 300_000 },
    BuiltinRule { name: "clock_skew", description: "The cluster's clock is further from the service's than health_clock_skew_secs", default_for_ms: 60_000 },
    BuiltinRule {
        name: "version_skew",
        description: "Proxies run a version more than one major version from the control plane's, which the mesh does not support",
        default_for_ms: 0,
    },
    BuiltinRule {
        name: "control_plane_version",
        description: "The control plane runs a version the release catalog does not hold (the service cannot plan its upgrades) or has yanked",
        default_for_ms: 0,
    },
    BuiltinRule {
        name: "injection",
        description: "Pods in a namespace with injection on run without the proxy (created while the injector was down, or before injection was on)",
        default_for_ms: 60_000,
    },
    BuiltinRule {
        name: "workload_success_rate",
        description: "A workload's success rate over 5 minutes is under its objective (workload objectives)",
        default_for_ms: 300_000,
    },
    BuiltinRule {
        name: "workload_latency",
        description: "A workload's p99 latency over 5 minutes is over its objective (workload objectives)",
        default_for_ms: 300_000,
    },
];

pub fn builtin_rule(name: &str) -> Option<&'static BuiltinRule> {
    BUILTIN_RULES.iter().find(|r| r.name == name)
}

/// The alert's identity over its life: its rule, cluster and object, hashed as Alertmanager
/// shows fingerprints (16 hex digits).
pub fn fingerprint(rule: &str, cluster: ClusterId, object: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new().chain_update(rule).chain_update([0]).chain_update(cluster.to_string()).chain_update([0]).chain_update(object).finalize();
    hex::encode(&digest[..8])
}

/// An alert's labels as silences match them and an Alertmanager receiver gets them: its own
/// (the cluster's labels, `cluster`, `check`, `object`) with `alertname` (the rule) and
/// `severity`.
pub fn matchable_labels(labels: &BTreeMap<String, String>, rule: &str, severity: Severity) -> BTreeMap<String, String> {
    let mut labels = labels.clone();
    labels.insert("alertname".into(), rule.to_owned());
    labels.insert("severity".into(), severity.as_str().to_owned());
    labels
}

/// An open (pending or firing) alert as evaluation remembers it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Open {
    pub state: AlertState,
    pub starts_at: i64,
    /// Since when its condition no longer holds (a firing alert waits `resolve_delay` before it
    /// resolves, so a flapping condition does not notify on every flap).
    pub cleared_at: Option<i64>,
}

/// What one evaluation does to one alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to record.
    Keep,
    /// A new alert, firing at once when its "for" duration is zero.
    Open { firing: bool },
    /// A pending alert's condition held for its "for" duration.
    Fire,
    /// The condition stopped holding; the alert resolves if it stays so.
    Clear,
    /// The condition holds again before the alert resolved.
    Unclear,
    /// Resolved. Its channels hear of it if they were told it fired (`alerting::routing`).
    Resolve,
}

/// The alert state machine: pending -> firing -> resolved, with a "for" duration before firing
/// and a resolve delay before resolving.
pub fn step(open: Option<&Open>, holds: bool, since: i64, now: i64, for_ms: i64, resolve_delay_ms: i64) -> Step {
    match (open, holds) {
        (None, false) => Step::Keep,
        (None, true) => Step::Open { firing: now - since >= for_ms },
        (Some(a), true) => match (a.state, a.cleared_at) {
            (_, Some(_)) => Step::Unclear,
            (AlertState::Pending, None) if now - a.starts_at >= for_ms => Step::Fire,
            _ => Step::Keep,
        },
        (Some(a), false) => match (a.state, a.cleared_at) {
            (AlertState::Pending, _) => Step::Resolve,
            (_, None) if resolve_delay_ms > 0 => Step::Clear,
            (_, Some(at)) if now - at < resolve_delay_ms => Step::Keep,
            _ => Step::Resolve,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOR: i64 = 60_000;
    const DELAY: i64 = 10_000;

    fn open(state: AlertState, starts_at: i64, cleared_at: Option<i64>) -> Open {
        Open { state, starts_at, cleared_at }
    }

    #[test]
    fn an_alert_waits_its_for_duration_before_firing() {
        assert_eq!(step(None, true, 0, 0, FOR, DELAY), Step::Open { firing: false });
        let pending = open(AlertState::Pending, 0, None);
        assert_eq!(step(Some(&pending), true, 0, FOR - 1, FOR, DELAY), Step::Keep);
        assert_eq!(step(Some(&pending), true, 0, FOR, FOR, DELAY), Step::Fire);
        // A condition that began long before it was seen fires at once.
        assert_eq!(step(None, true, 0, FOR, FOR, DELAY), Step::Open { firing: true });
        assert_eq!(step(None, true, 5, 5, 0, DELAY), Step::Open { firing: true });
    }

    #[test]
    fn a_pending_alert_that_clears_goes_silently() {
        assert_eq!(step(Some(&open(AlertState::Pending, 0, None)), false, 0, 10, FOR, DELAY), Step::Resolve);
    }

    #[test]
    fn a_flapping_condition_does_not_resolve_and_refire() {
        let firing = open(AlertState::Firing, 0, None);
        assert_eq!(step(Some(&firing), false, 0, 100, FOR, DELAY), Step::Clear);
        let cleared = open(AlertState::Firing, 0, Some(100));
        assert_eq!(step(Some(&cleared), false, 0, 100 + DELAY - 1, FOR, DELAY), Step::Keep);
        assert_eq!(step(Some(&cleared), true, 0, 100 + DELAY - 1, FOR, DELAY), Step::Unclear);
        assert_eq!(step(Some(&cleared), false, 0, 100 + DELAY, FOR, DELAY), Step::Resolve);
        // Without a delay a firing alert resolves at once.
        assert_eq!(step(Some(&firing), false, 0, 100, FOR, 0), Step::Resolve);
    }

    #[test]
    fn fingerprints_are_stable_and_distinct() {
        let c = ClusterId(uuid::Uuid::nil());
        assert_eq!(fingerprint("agent", c, "Agent"), fingerprint("agent", c, "Agent"));
        assert_ne!(fingerprint("agent", c, "Agent"), fingerprint("agent", c, "Agen"));
        assert_ne!(fingerprint("ab", c, "c"), fingerprint("a", c, "bc"));
        assert_eq!(fingerprint("agent", c, "Agent").len(), 16);
    }
}
