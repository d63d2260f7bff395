//! What the gateway refused of each cluster's agent (over rate, over a quota), per reason:
//! the source of the cluster's `throttled` findings. Written in bulk by the ingest path,
//! never on a report's transaction.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::ToSchema;

use super::Conn;
use crate::domain::{ClusterId, OrgId};

/// A quiet gap this long ends an episode: the next refusal starts a new `since`.
pub const EPISODE_GAP_MS: i64 = 10 * 60_000;

/// Refusals of one cluster for one reason, noted since the last write.
#[derive(Debug, Clone)]
pub struct Noted {
    pub org: OrgId,
    pub cluster: ClusterId,
    pub reason: &'static str,
    pub first_at: i64,
    pub last_at: i64,
    pub refused: u64,
}

/// Adds noted refusals to their findings.
#[tracing::instrument(target = "meshfleet_traces", name = "store.throttles.record", skip_all)]
pub async fn record(conn: &mut Conn, noted: &[Noted]) -> Result<(), sqlx::Error> {
    for n in noted {
        sqlx::query(
            "INSERT INTO cluster_throttles (cluster_id, org_id, reason, since, last_at, refused) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (cluster_id, reason) DO UPDATE SET
                 since = CASE WHEN cluster_throttles.last_at < excluded.since - $7 THEN excluded.since ELSE cluster_throttles.since END,
                 refused = CASE WHEN cluster_throttles.last_at < excluded.since - $7 THEN excluded.refused ELSE cluster_throttles.refused + excluded.refused END,
                 last_at = CASE WHEN excluded.last_at > cluster_throttles.last_at THEN excluded.last_at ELSE cluster_throttles.last_at END",
        )
        .bind(n.cluster.to_string())
        .bind(n.org.to_string())
        .bind(n.reason)
        .bind(n.first_at)
        .bind(n.last_at)
        .bind(i64::try_from(n.refused).unwrap_or(i64::MAX))
        .bind(EPISODE_GAP_MS)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A finding on a cluster: its agent is being refused for `reason`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Throttle {
    /// `rate_limited`, `reconnects`, `series`, `events_per_minute` or `bytes`.
    pub reason: String,
    /// When this episode of refusals began.
    pub since: chrono::DateTime<chrono::Utc>,
    /// The latest refusal.
    pub last_at: chrono::DateTime<chrono::Utc>,
    /// Messages, connections or items (metric windows, events) refused in this episode.
    pub refused: i64,
}

/// The cluster's episodes still going on at `now` (a refusal within the episode gap).
#[tracing::instrument(target = "meshfleet_traces", name = "store.throttles.current", skip_all)]
pub async fn current(conn: &mut Conn, org: OrgId, cluster: ClusterId, now: i64) -> Result<Vec<Throttle>, sqlx::Error> {
    let rows =
        sqlx::query("SELECT reason, since, last_at, refused FROM cluster_throttles WHERE org_id = $1 AND cluster_id = $2 AND last_at >= $3 ORDER BY reason")
            .bind(org.to_string())
            .bind(cluster.to_string())
            .bind(now - EPISODE_GAP_MS)
            .fetch_all(conn)
            .await?;
    rows.iter()
        .map(|r| {
            Ok(Throttle {
                reason: r.try_get("reason")?,
                since: crate::db::to_rfc3339(r.try_get("since")?),
                last_at: crate::db::to_rfc3339(r.try_get("last_at")?),
                refused: r.try_get("refused")?,
            })
        })
        .collect()
}
