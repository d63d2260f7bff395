//! The distinct workloads (series) each cluster has reported metrics for, so the series quota
//! is checked against the database. Only the ingest writer adds series; retention forgets
//! series without rollups left.

use std::collections::BTreeSet;

use sqlx::Row;

use super::rollups::Window;
use super::Conn;
use crate::domain::{ClusterId, OrgId};

/// Keeps the windows of series the cluster already has, and of new series while the cluster
/// stays within `quota` series (registering them). Returns the windows kept and how many were
/// refused. Call inside the transaction that stores the windows.
pub async fn admit(conn: &mut Conn, org: OrgId, cluster: ClusterId, windows: &[Window], quota: u32, now: i64) -> Result<(Vec<Window>, usize), sqlx::Error> {
    // No more than `quota` series of one report can ever be kept: that bounds the work.
    let all: BTreeSet<(&str, &str)> = windows.iter().map(|w| (w.namespace.as_str(), w.workload.as_str())).collect();
    let wanted: Vec<(&str, &str)> = all.into_iter().take(quota as usize).collect();
    let mut known: BTreeSet<(&str, &str)> = BTreeSet::new();
    for chunk in wanted.chunks(super::rows_per_statement(conn, 2)) {
        let pairs = (0..chunk.len()).map(|i| format!("(${}, ${})", 2 * i + 2, 2 * i + 3)).collect::<Vec<_>>().join(", ");
        let sql = format!("SELECT namespace, workload FROM metric_series WHERE cluster_id = $1 AND (namespace, workload) IN (VALUES {pairs})");
        let mut q = sqlx::query(&sql).bind(cluster.to_string());
        for (ns, wl) in chunk {
            q = q.bind(*ns).bind(*wl);
        }
        for r in q.fetch_all(&mut *conn).await? {
            let (ns, wl): (String, String) = (r.try_get("namespace")?, r.try_get("workload")?);
            // Keep the borrowed key of `wanted`, which the found row equals.
            if let Some(k) = chunk.iter().find(|(n, w)| *n == ns && *w == wl) {
                known.insert(*k);
            }
        }
    }
    let new: Vec<(&str, &str)> = wanted.iter().filter(|k| !known.contains(*k)).copied().collect();
    if !new.is_empty() {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM metric_series WHERE cluster_id = $1").bind(cluster.to_string()).fetch_one(&mut *conn).await?;
        let room = usize::try_from(i64::from(quota) - count).unwrap_or(0);
        let admitted = &new[..new.len().min(room)];
        for chunk in admitted.chunks(super::rows_per_statement(conn, 5)) {
            let sql = format!(
                "INSERT INTO metric_series (cluster_id, org_id, namespace, workload, first_seen) VALUES {} ON CONFLICT DO NOTHING",
                super::values_clause(chunk.len(), 5)
            );
            let mut q = sqlx::query(&sql);
            for (ns, wl) in chunk {
                q = q.bind(cluster.to_string()).bind(org.to_string()).bind(*ns).bind(*wl).bind(now);
            }
            q.execute(&mut *conn).await?;
        }
        known.extend(admitted);
    }
    let (kept, refused): (Vec<&Window>, Vec<&Window>) = windows.iter().partition(|w| known.contains(&(w.namespace.as_str(), w.workload.as_str())));
    Ok((kept.into_iter().cloned().collect(), refused.len()))
}

/// Forgets series first seen before `cutoff` that have no rollups left (retention removed them).
pub async fn delete_unused(conn: &mut Conn, cutoff: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM metric_series WHERE first_seen < $1 AND NOT EXISTS (SELECT 1 FROM metric_rollups r
             WHERE r.cluster_id = metric_series.cluster_id AND r.namespace = metric_series.namespace AND r.workload = metric_series.workload)",
    )
    .bind(cutoff)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
