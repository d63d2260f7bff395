//! Agent certificates and the connection state of each cluster's agent.

use std::collections::{HashMap, HashSet};

use sqlx::Row;

use super::{parse_col, Conn};
use crate::domain::{ClusterId, OrgId};

#[tracing::instrument(target = "meshfleet_traces", name = "store.agents.insert_certificate", skip_all)]
pub async fn insert_certificate(conn: &mut Conn, serial: &str, org: OrgId, cluster: ClusterId, not_after: i64, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO agent_certificates (serial, org_id, cluster_id, not_after, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(serial)
        .bind(org.to_string())
        .bind(cluster.to_string())
        .bind(not_after)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// Of these (org, cluster, serial), those whose certificate is valid now (issued to that
/// cluster, unrevoked and unexpired, and the cluster still exists) with its expiry, in a few
/// statements however many there are.
#[tracing::instrument(target = "meshfleet_traces", name = "store.agents.valid_certificates", skip_all)]
pub async fn valid_certificates(
    conn: &mut Conn,
    open: &[(OrgId, ClusterId, String)],
    now: i64,
) -> Result<HashMap<(OrgId, ClusterId, String), i64>, sqlx::Error> {
    let asked: HashSet<&(OrgId, ClusterId, String)> = open.iter().collect();
    let mut valid = HashMap::new();
    for chunk in open.chunks(super::rows_per_statement(conn, 1)) {
        let serials = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "SELECT a.serial, a.org_id, a.cluster_id, a.not_after FROM agent_certificates a JOIN clusters c ON c.id = a.cluster_id
             WHERE a.revoked_at IS NULL AND a.not_after > $1 AND a.serial IN ({serials})"
        );
        let mut q = sqlx::query(&sql).bind(now);
        for (_, _, serial) in chunk {
            q = q.bind(serial);
        }
        for r in q.fetch_all(&mut *conn).await? {
            let org = parse_col(&r.try_get::<String, _>("org_id")?, "agent_certificates.org_id")?;
            let cluster = parse_col(&r.try_get::<String, _>("cluster_id")?, "agent_certificates.cluster_id")?;
            let key = (org, cluster, r.try_get::<String, _>("serial")?);
            // A serial is only valid for the organization and cluster it was issued to.
            if asked.contains(&key) {
                valid.insert(key, r.try_get::<i64, _>("not_after")?);
            }
        }
    }
    Ok(valid)
}

/// Revokes every certificate of the cluster's agent; it must register again.
#[tracing::instrument(target = "meshfleet_traces", name = "store.agents.revoke_all", skip_all)]
pub async fn revoke_all(conn: &mut Conn, org: OrgId, cluster: ClusterId, now: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("UPDATE agent_certificates SET revoked_at = $3 WHERE org_id = $1 AND cluster_id = $2 AND revoked_at IS NULL")
        .bind(org.to_string())
        .bind(cluster.to_string())
        .bind(now)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// `clock_skew`: the agent's clock minus ours (ms), when its Hello told; an agent that does not
/// tell leaves none.
#[tracing::instrument(target = "meshfleet_traces", name = "store.agents.mark_connected", skip_all)]
pub async fn mark_connected(
    conn: &mut Conn,
    cluster: ClusterId,
    session: &str,
    agent_version: &str,
    kubernetes_version: &str,
    clock_skew: Option<i64>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE clusters SET status = 'connected', agent_session = $2, last_seen_at = $3, agent_version = $4,
         kubernetes_version = CASE WHEN $5 = '' THEN kubernetes_version ELSE $5 END, clock_skew_ms = $6 WHERE id = $1",
    )
    .bind(cluster.to_string())
    .bind(session)
    .bind(now)
    .bind(agent_version)
    .bind(kubernetes_version)
    .bind(clock_skew)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks the agent gone, unless a newer stream (perhaps on another replica) took over.
#[tracing::instrument(target = "meshfleet_traces", name = "store.agents.mark_disconnected", skip_all)]
pub async fn mark_disconnected(conn: &mut Conn, cluster: ClusterId, session: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE clusters SET status = 'disconnected', last_seen_at = $3 WHERE id = $1 AND agent_session = $2")
        .bind(cluster.to_string())
        .bind(session)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// When an agent was last heard from, and its clock's skew (its clock minus ours, ms) as last told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seen {
    pub at: i64,
    pub clock_skew: Option<i64>,
}

/// Records when each cluster's agent was last heard from, and its clock skew when told, in
/// multi-row statements; a time never moves backwards (a late flush must not undo a newer
/// connect or disconnect), but a message heard in the very millisecond of the connect still
/// tells its skew.
#[tracing::instrument(target = "meshfleet_traces", name = "store.agents.touch_each", skip_all)]
pub async fn touch_each(conn: &mut Conn, seen: &[(ClusterId, Seen)]) -> Result<(), sqlx::Error> {
    for chunk in seen.chunks(super::rows_per_statement(conn, 3)) {
        // VALUES columns are column1, column2, ... on both engines; a NULL's type is stated.
        let sql = format!(
            "UPDATE clusters SET last_seen_at = v.column2, clock_skew_ms = COALESCE(CAST(v.column3 AS BIGINT), clusters.clock_skew_ms)
             FROM (VALUES {}) AS v
             WHERE clusters.id = v.column1 AND (clusters.last_seen_at IS NULL OR clusters.last_seen_at <= v.column2)",
            super::values_clause(chunk.len(), 3)
        );
        let mut q = sqlx::query(&sql);
        for (cluster, seen) in chunk {
            q = q.bind(cluster.to_string()).bind(seen.at).bind(seen.clock_skew);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}
