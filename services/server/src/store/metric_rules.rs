//! Custom metric rules and workload objectives of an organization, and the per-workload samples
//! they are judged on.

use std::collections::HashMap;

use sqlx::Row;

use super::metric_reports::{roll_up, Scope};
use super::{parse_col, word, Conn};
use crate::domain::metric_rules::{MetricRule, Sample};
use crate::domain::objectives::Objectives;
use crate::domain::{ClusterId, MetricRuleId, OrgId};

const COLUMNS: &str =
    "id, org_id, name, cluster_selector, namespace, workload, metric, comparison, threshold, window_ms, for_ms, severity, enabled, created_at, updated_at";

fn from_row(r: &sqlx::any::AnyRow) -> Result<MetricRule, sqlx::Error> {
    let selector: String = r.try_get("cluster_selector")?;
    let parsed = selector.parse().map_err(|_| sqlx::Error::Decode(format!("bad value in column metric_rules.cluster_selector: {selector:?}").into()))?;
    Ok(MetricRule {
        id: parse_col(&r.try_get::<String, _>("id")?, "metric_rules.id")?,
        org_id: parse_col(&r.try_get::<String, _>("org_id")?, "metric_rules.org_id")?,
        name: r.try_get("name")?,
        cluster_selector: (selector, parsed),
        namespace: r.try_get("namespace")?,
        workload: r.try_get("workload")?,
        metric: parse_col(&r.try_get::<String, _>("metric")?, "metric_rules.metric")?,
        comparison: parse_col(&r.try_get::<String, _>("comparison")?, "metric_rules.comparison")?,
        threshold: r.try_get("threshold")?,
        window_ms: r.try_get("window_ms")?,
        for_ms: r.try_get("for_ms")?,
        severity: word(r.try_get("severity")?, "metric_rules.severity")?,
        enabled: r.try_get::<i64, _>("enabled")? != 0,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// Inserts the rule, or replaces the one with its id. A name taken by another rule of the
/// organization fails on the unique index.
#[tracing::instrument(target = "meshfleet_traces", name = "store.metric_rules.upsert", skip_all)]
pub async fn upsert(conn: &mut Conn, rule: &MetricRule) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM metric_rules WHERE org_id = $1 AND id = $2").bind(rule.org_id.to_string()).bind(rule.id.to_string()).execute(&mut *conn).await?;
    sqlx::query(&format!("INSERT INTO metric_rules ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"))
        .bind(rule.id.to_string())
        .bind(rule.org_id.to_string())
        .bind(&rule.name)
        .bind(&rule.cluster_selector.0)
        .bind(rule.namespace.clone())
        .bind(rule.workload.clone())
        .bind(rule.metric.as_str())
        .bind(rule.comparison.as_str())
        .bind(rule.threshold)
        .bind(rule.window_ms)
        .bind(rule.for_ms)
        .bind(rule.severity.as_str())
        .bind(i64::from(rule.enabled))
        .bind(rule.created_at)
        .bind(rule.updated_at)
        .execute(conn)
        .await?;
    Ok(())
}

/// By name.
#[tracing::instrument(target = "meshfleet_traces", name = "store.metric_rules.list", skip_all)]
pub async fn list(conn: &mut Conn, org: OrgId) -> Result<Vec<MetricRule>, sqlx::Error> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM metric_rules WHERE org_id = $1 ORDER BY name")).bind(org.to_string()).fetch_all(conn).await?;
    rows.iter().map(from_row).collect()
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.metric_rules.get", skip_all)]
pub async fn get(conn: &mut Conn, org: OrgId, id: MetricRuleId) -> Result<Option<MetricRule>, sqlx::Error> {
    super::one_of_org(conn, "metric_rules", COLUMNS, org, id, from_row).await
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.metric_rules.delete", skip_all)]
pub async fn delete(conn: &mut Conn, org: OrgId, id: MetricRuleId) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM metric_rules WHERE org_id = $1 AND id = $2").bind(org.to_string()).bind(id.to_string()).execute(conn).await?;
    Ok(done.rows_affected() == 1)
}

/// Each workload of the organization over the complete minutes in `[from, to)`: traffic summed,
/// latency percentiles as requests-weighted means of the minutes' (as the rollups merge them).
#[tracing::instrument(target = "meshfleet_traces", name = "store.metric_rules.samples", skip_all)]
pub async fn samples(conn: &mut Conn, org: OrgId, from: i64, to: i64) -> Result<HashMap<(ClusterId, String, String), Sample>, sqlx::Error> {
    roll_up(conn, Scope::Org(org)).await?;
    let weighted = |col: &str| format!("CASE WHEN SUM(requests) = 0 THEN 0.0 ELSE SUM({col} * requests) / SUM(requests) END AS {col}");
    let rows = sqlx::query(&format!(
        "SELECT cluster_id, namespace, workload, CAST(SUM(requests) AS BIGINT) AS requests, CAST(SUM(failures) AS BIGINT) AS failures, {}, {}, {}
         FROM metric_rollups WHERE org_id = $1 AND minute >= $2 AND minute < $3 GROUP BY cluster_id, namespace, workload",
        weighted("latency_p50_ms"),
        weighted("latency_p95_ms"),
        weighted("latency_p99_ms"),
    ))
    .bind(org.to_string())
    .bind(from)
    .bind(to)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            let cluster = parse_col(&r.try_get::<String, _>("cluster_id")?, "metric_rollups.cluster_id")?;
            let key = (cluster, r.try_get("namespace")?, r.try_get("workload")?);
            let sample = Sample {
                requests: r.try_get("requests")?,
                failures: r.try_get("failures")?,
                p50_ms: r.try_get("latency_p50_ms")?,
                p95_ms: r.try_get("latency_p95_ms")?,
                p99_ms: r.try_get("latency_p99_ms")?,
            };
            Ok((key, sample))
        })
        .collect()
}

/// The organization's workload objectives; the defaults until it sets its own.
#[tracing::instrument(target = "meshfleet_traces", name = "store.metric_rules.objectives", skip_all)]
pub async fn objectives(conn: &mut Conn, org: OrgId) -> Result<Objectives, sqlx::Error> {
    let row = sqlx::query("SELECT document FROM workload_objectives WHERE org_id = $1").bind(org.to_string()).fetch_optional(conn).await?;
    Ok(row.as_ref().map(|r| super::json_col(r, "document")).transpose()?.unwrap_or_default())
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.metric_rules.set_objectives", skip_all)]
pub async fn set_objectives(conn: &mut Conn, org: OrgId, objectives: &Objectives, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO workload_objectives (org_id, document, updated_at) VALUES ($1, $2, $3)
         ON CONFLICT (org_id) DO UPDATE SET document = $2, updated_at = $3",
    )
    .bind(org.to_string())
    .bind(serde_json::to_string(objectives).expect("objectives always serialize"))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}
