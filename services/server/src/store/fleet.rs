//! Read models for the dashboard: golden-metric summaries per cluster and per minute, and
//! proxy versions, computed in SQL over the rollups the gateway stores (after rolling up the
//! reports still pending, so nothing acknowledged is missing).

use std::collections::HashMap;

use sqlx::Row;

use super::metric_reports::{roll_up, Scope};
use super::{parse_col, Conn};
use crate::domain::{ClusterId, OrgId};
use crate::store::inventory::Facts;

/// Golden metrics of one cluster (or one minute of it) summed over its workloads.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Golden {
    pub requests: i64,
    pub failures: i64,
    /// The worst workload's p99 over the period.
    pub p99_ms: f64,
    /// Start (ms) of the earliest minute with data: how much time the totals cover.
    pub first_minute: i64,
}

impl Golden {
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| 1.0 - self.failures as f64 / self.requests as f64)
    }
}

/// Per-cluster totals of every cluster in the organization since `since` (ms).
#[tracing::instrument(target = "meshfleet_traces", name = "store.fleet.golden_since", skip_all)]
pub async fn golden_since(conn: &mut Conn, org: OrgId, since: i64) -> Result<HashMap<ClusterId, Golden>, sqlx::Error> {
    roll_up(conn, Scope::Org(org)).await?;
    let rows = sqlx::query(
        "SELECT cluster_id, CAST(SUM(requests) AS BIGINT) AS requests, CAST(SUM(failures) AS BIGINT) AS failures, MAX(latency_p99_ms) AS p99_ms, MIN(minute) AS first_minute
         FROM metric_rollups
         WHERE org_id = $1 AND minute >= $2 GROUP BY cluster_id",
    )
    .bind(org.to_string())
    .bind(since)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            let id = parse_col(&r.try_get::<String, _>("cluster_id")?, "metric_rollups.cluster_id")?;
            Ok((
                id,
                Golden {
                    requests: r.try_get("requests")?,
                    failures: r.try_get("failures")?,
                    p99_ms: r.try_get("p99_ms")?,
                    first_minute: r.try_get("first_minute")?,
                },
            ))
        })
        .collect()
}

/// Per-minute totals of one cluster since `since`, oldest first.
#[tracing::instrument(target = "meshfleet_traces", name = "store.fleet.golden_by_minute", skip_all)]
pub async fn golden_by_minute(conn: &mut Conn, org: OrgId, cluster: ClusterId, since: i64) -> Result<Vec<(i64, Golden)>, sqlx::Error> {
    roll_up(conn, Scope::Cluster(org, cluster)).await?;
    let rows = sqlx::query(
        "SELECT minute, CAST(SUM(requests) AS BIGINT) AS requests, CAST(SUM(failures) AS BIGINT) AS failures, MAX(latency_p99_ms) AS p99_ms FROM metric_rollups
         WHERE org_id = $1 AND cluster_id = $2 AND minute >= $3 GROUP BY minute ORDER BY minute",
    )
    .bind(org.to_string())
    .bind(cluster.to_string())
    .bind(since)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            let minute = r.try_get("minute")?;
            Ok((minute, Golden { requests: r.try_get("requests")?, failures: r.try_get("failures")?, p99_ms: r.try_get("p99_ms")?, first_minute: minute }))
        })
        .collect()
}

/// Totals of each of `clusters` over the minutes `from..=to`, in one roll-up and a query per
/// `rows_per_statement` clusters (a rollout's look asks for a whole wave at once); a cluster
/// without traffic gets zeros.
#[tracing::instrument(target = "meshfleet_traces", name = "store.fleet.golden_between_of", skip_all)]
pub async fn golden_between_of(conn: &mut Conn, org: OrgId, clusters: &[ClusterId], from: i64, to: i64) -> Result<HashMap<ClusterId, Golden>, sqlx::Error> {
    roll_up(conn, Scope::Org(org)).await?;
    let mut out: HashMap<ClusterId, Golden> = clusters.iter().map(|c| (*c, Golden::default())).collect();
    for chunk in clusters.chunks(super::rows_per_statement(conn, 1)) {
        let ids: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 4)).collect();
        let sql = format!(
            "SELECT cluster_id, CAST(SUM(requests) AS BIGINT) AS requests, CAST(SUM(failures) AS BIGINT) AS failures,
                    MAX(latency_p99_ms) AS p99_ms, MIN(minute) AS first_minute
             FROM metric_rollups WHERE org_id = $1 AND minute >= $2 AND minute <= $3 AND cluster_id IN ({}) GROUP BY cluster_id",
            ids.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(org.to_string()).bind(from).bind(to);
        for c in chunk {
            q = q.bind(c.to_string());
        }
        for r in q.fetch_all(&mut *conn).await? {
            let id = parse_col(&r.try_get::<String, _>("cluster_id")?, "metric_rollups.cluster_id")?;
            let golden = Golden {
                requests: r.try_get("requests")?,
                failures: r.try_get("failures")?,
                p99_ms: r.try_get("p99_ms")?,
                first_minute: r.try_get("first_minute")?,
            };
            out.insert(id, golden);
        }
    }
    Ok(out)
}

/// Per-minute totals of several clusters since `since`, oldest first, in one query.
#[tracing::instrument(target = "meshfleet_traces", name = "store.fleet.golden_by_minute_of", skip_all)]
pub async fn golden_by_minute_of(
    conn: &mut Conn,
    org: OrgId,
    clusters: &[ClusterId],
    since: i64,
) -> Result<HashMap<ClusterId, Vec<(i64, Golden)>>, sqlx::Error> {
    let mut out: HashMap<ClusterId, Vec<(i64, Golden)>> = HashMap::new();
    if clusters.is_empty() {
        return Ok(out);
    }
    roll_up(conn, Scope::Org(org)).await?;
    let list: Vec<String> = (0..clusters.len()).map(|i| format!("${}", i + 3)).collect();
    let sql = format!(
        "SELECT cluster_id, minute, CAST(SUM(requests) AS BIGINT) AS requests, CAST(SUM(failures) AS BIGINT) AS failures, MAX(latency_p99_ms) AS p99_ms
         FROM metric_rollups
         WHERE org_id = $1 AND minute >= $2 AND cluster_id IN ({}) GROUP BY cluster_id, minute ORDER BY cluster_id, minute",
        list.join(", ")
    );
    let mut q = sqlx::query(&sql).bind(org.to_string()).bind(since);
    for c in clusters {
        q = q.bind(c.to_string());
    }
    for r in q.fetch_all(conn).await? {
        let id = parse_col(&r.try_get::<String, _>("cluster_id")?, "metric_rollups.cluster_id")?;
        let minute = r.try_get("minute")?;
        out.entry(id)
            .or_default()
            .push((minute, Golden { requests: r.try_get("requests")?, failures: r.try_get("failures")?, p99_ms: r.try_get("p99_ms")?, first_minute: minute }));
    }
    Ok(out)
}

/// Cluster-wide facts of every cluster in the organization that reported an inventory.
#[tracing::instrument(target = "meshfleet_traces", name = "store.fleet.facts_of_org", skip_all)]
pub async fn facts_of_org(conn: &mut Conn, org: OrgId) -> Result<HashMap<ClusterId, Facts>, sqlx::Error> {
    let rows = sqlx::query("SELECT cluster_id, facts FROM cluster_inventory WHERE org_id = $1").bind(org.to_string()).fetch_all(conn).await?;
    rows.iter()
        .map(|r| {
            let id = parse_col(&r.try_get::<String, _>("cluster_id")?, "cluster_inventory.cluster_id")?;
            let json: String = r.try_get("facts")?;
            Ok((id, serde_json::from_str(&json).map_err(|e| sqlx::Error::Decode(e.into()))?))
        })
        .collect()
}

/// Pods per proxy version, per cluster, for the whole organization.
/// Each cluster's clock skew (ms), where its agent told.
#[tracing::instrument(target = "meshfleet_traces", name = "store.fleet.clock_skews_of_org", skip_all)]
pub async fn clock_skews_of_org(conn: &mut Conn, org: OrgId) -> Result<HashMap<ClusterId, i64>, sqlx::Error> {
    let rows =
        sqlx::query("SELECT id, clock_skew_ms FROM clusters WHERE org_id = $1 AND clock_skew_ms IS NOT NULL").bind(org.to_string()).fetch_all(conn).await?;
    rows.iter().map(|r| Ok((parse_col(&r.try_get::<String, _>("id")?, "clusters.id")?, r.try_get("clock_skew_ms")?))).collect()
}

#[tracing::instrument(target = "meshfleet_traces", name = "store.fleet.proxy_versions_of_org", skip_all)]
pub async fn proxy_versions_of_org(conn: &mut Conn, org: OrgId) -> Result<HashMap<ClusterId, Vec<(String, i64)>>, sqlx::Error> {
    let rows = sqlx::query("SELECT cluster_id, proxy_version, COUNT(*) AS pods FROM cluster_pods WHERE org_id = $1 GROUP BY cluster_id, proxy_version")
        .bind(org.to_string())
        .fetch_all(conn)
        .await?;
    let mut out: HashMap<ClusterId, Vec<(String, i64)>> = HashMap::new();
    for r in &rows {
        let id = parse_col(&r.try_get::<String, _>("cluster_id")?, "cluster_pods.cluster_id")?;
        out.entry(id).or_default().push((r.try_get("proxy_version")?, r.try_get("pods")?));
    }
    Ok(out)
}
