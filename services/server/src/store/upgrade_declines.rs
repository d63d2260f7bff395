//! Upgrades the automatic policy will not propose again (`crate::rollouts::proposals`): a
//! cluster whose rollout to a version was rolled back, skipped or aborted.

use std::collections::HashSet;

use sqlx::Row;

use super::{parse_col, Conn};
use crate::domain::{ClusterId, OrgId, RolloutId};

/// Remembers that `cluster`'s upgrade to `version` was given up in `rollout`; a later decline
/// of the same upgrade replaces the reason.
#[tracing::instrument(target = "meshfleet_traces", name = "store.upgrade_declines.record", skip_all)]
pub async fn record(conn: &mut Conn, org: OrgId, cluster: ClusterId, version: &str, rollout: RolloutId, reason: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO upgrade_declines (cluster_id, org_id, version, rollout_id, reason, created_at) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (cluster_id, version) DO UPDATE SET rollout_id = excluded.rollout_id, reason = excluded.reason, created_at = excluded.created_at",
    )
    .bind(cluster.to_string())
    .bind(org.to_string())
    .bind(version)
    .bind(rollout.to_string())
    .bind(reason)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// The organization's declined upgrades, as (cluster, version).
#[tracing::instrument(target = "meshfleet_traces", name = "store.upgrade_declines.of_org", skip_all)]
pub async fn of_org(conn: &mut Conn, org: OrgId) -> Result<HashSet<(ClusterId, String)>, sqlx::Error> {
    let rows = sqlx::query("SELECT cluster_id, version FROM upgrade_declines WHERE org_id = $1").bind(org.to_string()).fetch_all(conn).await?;
    rows.iter().map(|r| Ok((parse_col(&r.try_get::<String, _>("cluster_id")?, "upgrade_declines.cluster_id")?, r.try_get::<String, _>("version")?))).collect()
}
