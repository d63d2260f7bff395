//! Golden metrics per workload per minute, and the events agents report. Events are written in
//! batches by the gateway's ingest path; metrics reach metric_rollups through
//! `metric_reports::roll_up`, which every reader here runs for its scope first. Both are
//! idempotent, so a resent report is a no-op.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;

use super::metric_reports::Scope;
use super::{values_clause, Conn};
use crate::domain::{ClusterId, OrgId};

/// One reporting window of one workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub org_id: OrgId,
    pub cluster_id: ClusterId,
    pub namespace: String,
    pub workload: String,
    pub start: i64,
    pub end: i64,
    pub requests: i64,
    pub failures: i64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

impl Window {
    pub fn minute(&self) -> i64 {
        self.start.div_euclid(60_000) * 60_000
    }
}

/// Weighted mean of a percentile over the minute's windows (an approximation: percentiles do
/// not add up, but weighting by requests keeps busy windows dominant).
fn merged(col: &str) -> String {
    format!(
        "{col} = CASE WHEN metric_rollups.requests + excluded.requests = 0 THEN excluded.{col} ELSE \
         (metric_rollups.{col} * metric_rollups.requests + excluded.{col} * excluded.requests) / (metric_rollups.requests + excluded.requests) END"
    )
}

/// Folds windows into their minutes. Windows of a workload do not overlap, so one that ends no
/// later than the minute's `last_window_end` was applied already (a resend) and changes
/// nothing. A key may appear once per statement, so callers pass windows with distinct keys.
/// (Writes rollups directly, e.g. to seed a benchmark; agents' reports go through
/// `metric_reports`.)
#[tracing::instrument(target = "meshfleet_traces", name = "store.rollups.add_windows", skip_all)]
pub async fn add_windows(conn: &mut Conn, windows: &[Window]) -> Result<(), sqlx::Error> {
    for chunk in windows.chunks(super::rows_per_statement(conn, 11)) {
        let sql = format!(
            "INSERT INTO metric_rollups (cluster_id, org_id, namespace, workload, minute, requests, failures,
                 latency_p50_ms, latency_p95_ms, latency_p99_ms, last_window_end)
             VALUES {} ON CONFLICT (cluster_id, namespace, workload, minute) DO UPDATE SET {}, {}, {},
                 requests = metric_rollups.requests + excluded.requests,
                 failures = metric_rollups.failures + excluded.failures,
                 last_window_end = excluded.last_window_end
             WHERE excluded.last_window_end > metric_rollups.last_window_end",
            values_clause(chunk.len(), 11),
            merged("latency_p50_ms"),
            merged("latency_p95_ms"),
            merged("latency_p99_ms"),
        );
        let mut q = sqlx::query(&sql);
        for w in chunk {
            q = q
                .bind(w.cluster_id.to_string())
                .bind(w.org_id.to_string())
                .bind(&w.namespace)
                .bind(&w.workload)
                .bind(w.minute())
                .bind(w.requests)
                .bind(w.failures)
                .bind(w.p50_ms)
                .bind(w.p95_ms)
                .bind(w.p99_ms)
                .bind(w.end);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MinuteRollup {
    pub namespace: String,
    pub workload: String,
    /// Start of the minute, Unix milliseconds.
    pub minute: i64,
    pub requests: i64,
    pub failures: i64,
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub latency_p99_ms: f64,
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.rollups.minutes_since", skip_all)]
pub async fn minutes_since(conn: &mut Conn, org: OrgId, cluster: ClusterId, since: i64) -> Result<Vec<MinuteRollup>, sqlx::Error> {
    minutes_page(conn, org, cluster, since, None, None).await
}

/// Where a page of minutes starts: after this (namespace, workload, minute).
pub type MinuteKey = (String, String, i64);

/// The cluster's minutes since `since` in (namespace, workload, minute) order, those after
/// `after` only, at most `limit` of them (keyset pagination).
#[tracing::instrument(target = "meshfleet_traces", name = "store.rollups.minutes_page", skip_all)]
pub async fn minutes_page(
    conn: &mut Conn,
    org: OrgId,
    cluster: ClusterId,
    since: i64,
    after: Option<&MinuteKey>,
    limit: Option<u32>,
) -> Result<Vec<MinuteRollup>, sqlx::Error> {
    super::metric_reports::roll_up(conn, Scope::Cluster(org, cluster)).await?;
    let sql = format!(
        "SELECT namespace, workload, minute, requests, failures, latency_p50_ms, latency_p95_ms, latency_p99_ms
         FROM metric_rollups WHERE org_id = $1 AND cluster_id = $2 AND minute >= $3 {} ORDER BY namespace, workload, minute {}",
        if after.is_some() { "AND (namespace, workload, minute) > ($4, $5, $6)" } else { "" },
        limit.map(|n| format!("LIMIT {n}")).unwrap_or_default(),
    );
    let mut q = sqlx::query(&sql).bind(org.to_string()).bind(cluster.to_string()).bind(since);
    if let Some((namespace, workload, minute)) = after {
        q = q.bind(namespace.clone()).bind(workload.clone()).bind(*minute);
    }
    let rows = q.fetch_all(conn).await?;
    rows.iter()
        .map(|r| {
            Ok(MinuteRollup {
                namespace: r.try_get("namespace")?,
                workload: r.try_get("workload")?,
                minute: r.try_get("minute")?,
                requests: r.try_get("requests")?,
                failures: r.try_get("failures")?,
                latency_p50_ms: r.try_get("latency_p50_ms")?,
                latency_p95_ms: r.try_get("latency_p95_ms")?,
                latency_p99_ms: r.try_get("latency_p99_ms")?,
            })
        })
        .collect()
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.rollups.delete_older_than", skip_all)]
pub async fn delete_older_than(conn: &mut Conn, cutoff: i64) -> Result<u64, sqlx::Error> {
    let metrics = sqlx::query("DELETE FROM metric_rollups WHERE minute < $1").bind(cutoff).execute(&mut *conn).await?;
    let events = sqlx::query("DELETE FROM cluster_events WHERE at < $1").bind(cutoff).execute(&mut *conn).await?;
    // Series whose rollups are all gone stop counting against the cluster's series quota.
    let series = super::metric_series::delete_unused(&mut *conn, cutoff).await?;
    let findings = sqlx::query("DELETE FROM cluster_throttles WHERE last_at < $1").bind(cutoff).execute(conn).await?;
    Ok(metrics.rows_affected() + events.rows_affected() + series + findings.rows_affected())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub id: String,
    /// Unix milliseconds.
    pub at: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub namespace: String,
    pub object: String,
    pub reason: String,
    pub message: String,
}

/// Stores events once each: a resent event (same id) is ignored.
#[tracing::instrument(target = "meshfleet_traces", name = "store.rollups.add_events", skip_all)]
pub async fn add_events(conn: &mut Conn, events: &[(OrgId, ClusterId, Event)]) -> Result<(), sqlx::Error> {
    for chunk in events.chunks(super::rows_per_statement(conn, 9)) {
        let sql = format!(
            "INSERT INTO cluster_events (cluster_id, org_id, id, at, type, namespace, object, reason, message)
             VALUES {} ON CONFLICT (cluster_id, id) DO NOTHING",
            values_clause(chunk.len(), 9)
        );
        let mut q = sqlx::query(&sql);
        for (org, cluster, e) in chunk {
            q = q
                .bind(cluster.to_string())
                .bind(org.to_string())
                .bind(&e.id)
                .bind(e.at)
                .bind(&e.kind)
                .bind(&e.namespace)
                .bind(&e.object)
                .bind(&e.reason)
                .bind(&e.message);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.rollups.recent_events", skip_all)]
pub async fn recent_events(conn: &mut Conn, org: OrgId, cluster: ClusterId, limit: u32) -> Result<Vec<Event>, sqlx::Error> {
    events_page(conn, org, cluster, None, limit).await
}

/// The cluster's events newest first, those after `before` = (at, id) in that order only, at
/// most `limit` of them (keyset pagination).
#[tracing::instrument(target = "meshfleet_traces", name = "store.rollups.events_page", skip_all)]
pub async fn events_page(conn: &mut Conn, org: OrgId, cluster: ClusterId, before: Option<(i64, &str)>, limit: u32) -> Result<Vec<Event>, sqlx::Error> {
    let sql = format!(
        "SELECT id, at, type, namespace, object, reason, message FROM cluster_events
         WHERE org_id = $1 AND cluster_id = $2 {} ORDER BY at DESC, id LIMIT {limit}",
        if before.is_some() { "AND (at < $3 OR (at = $3 AND id > $4))" } else { "" },
    );
    let mut q = sqlx::query(&sql).bind(org.to_string()).bind(cluster.to_string());
    if let Some((at, id)) = before {
        q = q.bind(at).bind(id.to_owned());
    }
    let rows = q.fetch_all(conn).await?;
    rows.iter()
        .map(|r| {
            Ok(Event {
                id: r.try_get("id")?,
                at: r.try_get("at")?,
                kind: r.try_get("type")?,
                namespace: r.try_get("namespace")?,
                object: r.try_get("object")?,
                reason: r.try_get("reason")?,
                message: r.try_get("message")?,
            })
        })
        .collect()
}
