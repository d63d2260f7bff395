//! Alerts and the organizations' changes to the built-in rules.

use std::collections::{BTreeMap, HashMap};

use sqlx::Row;

use super::{parse_col, word, Conn};
use crate::domain::alerting::AlertState;
use crate::domain::health::Severity;
use crate::domain::silences::Silence;
use crate::domain::{AlertId, ClusterId, OrgId};

#[derive(Debug, Clone)]
pub struct Alert {
    pub id: AlertId,
    pub org_id: OrgId,
    pub cluster_id: ClusterId,
    pub fingerprint: String,
    pub rule: String,
    pub object: String,
    pub severity: Severity,
    pub summary: String,
    pub labels: BTreeMap<String, String>,
    pub state: AlertState,
    pub starts_at: i64,
    pub fired_at: Option<i64>,
    pub cleared_at: Option<i64>,
    pub ends_at: Option<i64>,
    /// When its `alert.firing` was queued: None while pending, and while a silence mutes it.
    pub notified_at: Option<i64>,
}

impl Alert {
    /// The active silences that mute it now (none once it resolved): its `silenced_by`.
    pub fn muted_by<'s>(&self, silences: &'s [Silence], now: i64) -> Vec<&'s Silence> {
        if self.state == AlertState::Resolved {
            return vec![];
        }
        let labels = crate::domain::alerting::matchable_labels(&self.labels, &self.rule, self.severity);
        silences.iter().filter(|s| s.mutes(&labels, now)).collect()
    }
}

const COLUMNS: &str =
    "id, org_id, cluster_id, fingerprint, rule, object, severity, summary, labels, state, starts_at, fired_at, cleared_at, ends_at, notified_at";

/// One of our enums, stored as the word it serializes to.
fn from_row(r: &sqlx::any::AnyRow) -> Result<Alert, sqlx::Error> {
    Ok(Alert {
        id: parse_col(&r.try_get::<String, _>("id")?, "alerts.id")?,
        org_id: parse_col(&r.try_get::<String, _>("org_id")?, "alerts.org_id")?,
        cluster_id: parse_col(&r.try_get::<String, _>("cluster_id")?, "alerts.cluster_id")?,
        fingerprint: r.try_get("fingerprint")?,
        rule: r.try_get("rule")?,
        object: r.try_get("object")?,
        severity: word(r.try_get("severity")?, "alerts.severity")?,
        summary: r.try_get("summary")?,
        labels: serde_json::from_str(&r.try_get::<String, _>("labels")?).map_err(|e| sqlx::Error::Decode(e.into()))?,
        state: word(r.try_get("state")?, "alerts.state")?,
        starts_at: r.try_get("starts_at")?,
        fired_at: r.try_get("fired_at")?,
        cleared_at: r.try_get("cleared_at")?,
        ends_at: r.try_get("ends_at")?,
        notified_at: r.try_get("notified_at")?,
    })
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.alerts.insert", skip_all)]
pub async fn insert(conn: &mut Conn, a: &Alert, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("INSERT INTO alerts ({COLUMNS}, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"))
        .bind(a.id.to_string())
        .bind(a.org_id.to_string())
        .bind(a.cluster_id.to_string())
        .bind(&a.fingerprint)
        .bind(&a.rule)
        .bind(&a.object)
        .bind(a.severity.as_str())
        .bind(&a.summary)
        .bind(serde_json::to_string(&a.labels).expect("a string map always serializes"))
        .bind(a.state.as_str())
        .bind(a.starts_at)
        .bind(a.fired_at)
        .bind(a.cleared_at)
        .bind(a.ends_at)
        .bind(a.notified_at)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// Writes an alert's changed state, summary and times.
#[tracing::instrument(target = "meshfleet_traces", name = "store.alerts.update", skip_all)]
pub async fn update(conn: &mut Conn, a: &Alert, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE alerts SET state = $3, severity = $4, summary = $5, fired_at = $6, cleared_at = $7, ends_at = $8, notified_at = $9, updated_at = $10
         WHERE org_id = $1 AND id = $2",
    )
    .bind(a.org_id.to_string())
    .bind(a.id.to_string())
    .bind(a.state.as_str())
    .bind(a.severity.as_str())
    .bind(&a.summary)
    .bind(a.fired_at)
    .bind(a.cleared_at)
    .bind(a.ends_at)
    .bind(a.notified_at)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// The organization's pending and firing alerts.
#[tracing::instrument(target = "meshfleet_traces", name = "store.alerts.open_of_org", skip_all)]
pub async fn open_of_org(conn: &mut Conn, org: OrgId) -> Result<Vec<Alert>, sqlx::Error> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM alerts WHERE org_id = $1 AND state <> 'resolved'")).bind(org.to_string()).fetch_all(conn).await?;
    rows.iter().map(from_row).collect()
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.alerts.get", skip_all)]
pub async fn get(conn: &mut Conn, org: OrgId, id: AlertId) -> Result<Option<Alert>, sqlx::Error> {
    super::one_of_org(conn, "alerts", COLUMNS, org, id, from_row).await
}

/// Newest first (ids are time-ordered); `before` is the last id of the previous page.
#[tracing::instrument(target = "meshfleet_traces", name = "store.alerts.list", skip_all)]
pub async fn list(
    conn: &mut Conn,
    org: OrgId,
    states: &[AlertState],
    cluster: Option<ClusterId>,
    before: Option<AlertId>,
    limit: u32,
) -> Result<Vec<Alert>, sqlx::Error> {
    // The states are our own words, not user text, so they are safe to inline.
    let states = states.iter().map(|s| format!("'{}'", s.as_str())).collect::<Vec<_>>().join(", ");
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM alerts WHERE org_id = $1 AND state IN ({states}) AND ($2 = '' OR cluster_id = $2) AND ($3 = '' OR id < $3)
         ORDER BY id DESC LIMIT {limit}"
    ))
    .bind(org.to_string())
    .bind(cluster.map(|c| c.to_string()).unwrap_or_default())
    .bind(before.map(|b| b.to_string()).unwrap_or_default())
    .fetch_all(conn)
    .await?;
    rows.iter().map(from_row).collect()
}

/// Organizations with at least one cluster: those evaluation looks at.
#[tracing::instrument(target = "meshfleet_traces", name = "store.alerts.orgs_with_clusters", skip_all)]
pub async fn orgs_with_clusters(conn: &mut Conn) -> Result<Vec<OrgId>, sqlx::Error> {
    let rows = sqlx::query("SELECT DISTINCT org_id FROM clusters").fetch_all(conn).await?;
    rows.iter().map(|r| parse_col(&r.try_get::<String, _>("org_id")?, "clusters.org_id")).collect()
}

/// An organization's change to a built-in rule.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RuleChange {
    pub disabled: bool,
    pub severity: Option<Severity>,
    pub for_ms: Option<i64>,
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.alerts.rule_changes", skip_all)]
pub async fn rule_changes(conn: &mut Conn, org: OrgId) -> Result<HashMap<String, RuleChange>, sqlx::Error> {
    let rows = sqlx::query("SELECT rule, disabled_at, severity, for_ms FROM alert_rules WHERE org_id = $1").bind(org.to_string()).fetch_all(conn).await?;
    rows.iter()
        .map(|r| {
            let severity: Option<String> = r.try_get("severity")?;
            let change = RuleChange {
                disabled: r.try_get::<Option<i64>, _>("disabled_at")?.is_some(),
                severity: severity.map(|s| word(s, "alert_rules.severity")).transpose()?,
                for_ms: r.try_get("for_ms")?,
            };
            Ok((r.try_get("rule")?, change))
        })
        .collect()
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.alerts.set_rule", skip_all)]
pub async fn set_rule(conn: &mut Conn, org: OrgId, rule: &str, change: &RuleChange, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO alert_rules (org_id, rule, disabled_at, severity, for_ms, updated_at) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (org_id, rule) DO UPDATE SET disabled_at = $3, severity = $4, for_ms = $5, updated_at = $6",
    )
    .bind(org.to_string())
    .bind(rule)
    .bind(change.disabled.then_some(now))
    .bind(change.severity.map(Severity::as_str))
    .bind(change.for_ms)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes alerts that resolved before `cutoff`; returns how many.
#[tracing::instrument(target = "meshfleet_traces", name = "store.alerts.delete_resolved_before", skip_all)]
pub async fn delete_resolved_before(conn: &mut Conn, cutoff: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM alerts WHERE state = 'resolved' AND ends_at < $1").bind(cutoff).execute(conn).await?;
    Ok(done.rows_affected())
}

/// The last alert of each fingerprint that resolved: what a group tells its channels resolved.
#[tracing::instrument(target = "meshfleet_traces", name = "store.alerts.last_resolved", skip_all)]
pub async fn last_resolved(conn: &mut Conn, org: OrgId, fingerprints: &[&str]) -> Result<Vec<Alert>, sqlx::Error> {
    let mut found = Vec::new();
    for fingerprint in fingerprints {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM alerts WHERE org_id = $1 AND fingerprint = $2 AND state = 'resolved' ORDER BY ends_at DESC, id DESC LIMIT 1"
        ))
        .bind(org.to_string())
        .bind(*fingerprint)
        .fetch_optional(&mut *conn)
        .await?;
        found.extend(row.as_ref().map(from_row).transpose()?);
    }
    Ok(found)
}

/// Records that the firing of these open alerts was sent (the first time only).
#[tracing::instrument(target = "meshfleet_traces", name = "store.alerts.mark_notified", skip_all)]
pub async fn mark_notified(conn: &mut Conn, org: OrgId, ids: &[AlertId], now: i64) -> Result<(), sqlx::Error> {
    for id in ids {
        sqlx::query("UPDATE alerts SET notified_at = $3 WHERE org_id = $1 AND id = $2 AND notified_at IS NULL")
            .bind(org.to_string())
            .bind(id.to_string())
            .bind(now)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
