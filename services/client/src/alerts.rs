//! Alerts (firing, pending, resolved) and silences, which mute matching alerts' notifications.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Client, Reply, Result};

/// Which alerts to list (`state` of `GET /api/v1/alerts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertFilter {
    /// Pending and firing.
    Open,
    Pending,
    Firing,
    Resolved,
    All,
}

impl AlertFilter {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertFilter::Open => "open",
            AlertFilter::Pending => "pending",
            AlertFilter::Firing => "firing",
            AlertFilter::Resolved => "resolved",
            AlertFilter::All => "all",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Alert {
    pub id: String,
    pub rule: String,
    pub cluster_id: String,
    pub object: String,
    pub severity: String,
    pub state: String,
    pub summary: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub starts_at: String,
    pub fired_at: Option<String>,
    #[serde(default)]
    pub silenced_by: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AlertPage {
    pub items: Vec<Alert>,
    pub next_cursor: Option<String>,
}

/// How a matcher compares a label's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchOp {
    #[serde(rename = "=")]
    Eq,
    #[serde(rename = "!=")]
    NotEq,
    /// Matches the regular expression, anchored at both ends.
    #[serde(rename = "=~")]
    Re,
    #[serde(rename = "!~")]
    NotRe,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
}

/// A silence to create: from `starts_at` (default now) to `ends_at`, both RFC 3339.
#[derive(Debug, Clone, Serialize)]
pub struct NewSilence {
    pub matchers: Vec<Matcher>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<String>,
    pub ends_at: String,
    pub comment: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<Matcher>,
    pub starts_at: String,
    pub ends_at: String,
    /// pending, active or expired.
    pub state: String,
    pub comment: String,
}

impl Client {
    /// The newest alerts in `filter` (`GET /api/v1/alerts`), one page of at most `limit`.
    pub async fn alerts(&self, filter: AlertFilter, limit: u32) -> Result<Reply<AlertPage>> {
        self.get_reply("list alerts", "/api/v1/alerts", &[("state", filter.as_str().to_owned()), ("limit", limit.to_string())]).await
    }

    /// Creates a silence (`POST /api/v1/silences`, admins).
    pub async fn create_silence(&self, silence: &NewSilence) -> Result<Reply<Silence>> {
        self.send("create silence", self.authed(self.http.post(self.url("/api/v1/silences"))).json(silence)).await
    }
}
